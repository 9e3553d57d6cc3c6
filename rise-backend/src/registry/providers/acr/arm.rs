//! The Microsoft Entra ID and Azure Resource Manager calls the ACR provider makes, their wire
//! types, and ARM's long-running-operation protocol.
//!
//! Shapes come from Microsoft's public documentation (no Azure runs in Rise's test environment;
//! the tests use a fake built from the same documents):
//! - Entra ID client credentials grant: `POST {authority}/{tenant}/oauth2/v2.0/token`, form
//!   `client_id`, `client_secret`, `scope=<ARM audience>/.default` (`https://management.azure.com`
//!   in Azure's public cloud, `https://management.usgovcloudapi.net` in Azure Government: each
//!   cloud's ARM accepts only tokens for its own audience),
//!   `grant_type=client_credentials`; 200 `{token_type, expires_in, access_token}`; errors
//!   `{error, error_description, error_codes}` with 400 (bad request, unknown tenant) or 401
//!   (`invalid_client`) ("Microsoft identity platform and the OAuth 2.0 client credentials
//!   flow", <https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow>).
//! - Scope Maps - Create: `PUT .../registries/{registry}/scopeMaps/{name}?api-version=2023-07-01`,
//!   body `{"properties": {"description", "actions": [...]}}`; 200, or 201 with an
//!   `Azure-AsyncOperation` header (<https://learn.microsoft.com/rest/api/containerregistry/scope-maps/create>).
//!   A 409 Conflict ("the request cannot be processed due to a conflict", as Tokens - Create
//!   documents) is tried again a few times: the PUT is idempotent.
//! - Tokens - Create: `PUT .../tokens/{name}` (5-50 of `[a-zA-Z0-9-]`), body
//!   `{"properties": {"scopeMapId", "status"}}`; 200, or 201 with `Azure-AsyncOperation`
//!   (<https://learn.microsoft.com/rest/api/containerregistry/tokens/create>).
//! - Registries - Generate Credentials: `POST .../registries/{registry}/generateCredentials`,
//!   body `{"tokenId", "name": "password1"|"password2", "expiry"}`; 200
//!   `{"username", "passwords": [{"name", "value", "expiry"}]}`, or 202 with a `Location` to
//!   poll (<https://learn.microsoft.com/rest/api/containerregistry/registries/generate-credentials>).
//! - Tokens - Delete: 200, 202 with `Location`, or 204
//!   (<https://learn.microsoft.com/rest/api/containerregistry/tokens/delete>); Tokens - List:
//!   `GET .../tokens`, `{"value": [...], "nextLink"}`.
//! - Errors: `{"error": {"code", "message"}}`; long-running operations: the
//!   `Azure-AsyncOperation` URL answers `{"status": "InProgress"|"Succeeded"|"Failed"|"Canceled"}`,
//!   a `Location` URL answers 202 until done, both may carry `Retry-After` ("Track asynchronous
//!   Azure operations", <https://learn.microsoft.com/azure/azure-resource-manager/management/async-operations>).
//!   The request and response examples are those of the `2023-07-01` specification in
//!   `Azure/azure-rest-api-specs` (`ScopeMapCreate.json`, `TokenCreate.json`, `TokenDelete.json`,
//!   `RegistryGenerateCredentials.json`).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{parse_rfc3339, rfc3339};
use crate::registry::ProviderError;
use crate::registry::providers::artifactory::redact_for_log;
use crate::registry::providers::upstream::{self, Reply};
use crate::secrets::Secret;

pub(super) const ENTRA_OPERATION: &str = "Entra ID token request";
pub(super) const SCOPE_MAP_OPERATION: &str = "ACR scope map update";
pub(super) const TOKEN_OPERATION: &str = "ACR token create";
pub(super) const GENERATE_OPERATION: &str = "ACR generate credentials";
pub(super) const DELETE_OPERATION: &str = "ACR token delete";
pub(super) const LIST_OPERATION: &str = "ACR token list";

/// Replies are small; anything bigger is not a reply Rise can use.
const MAX_BODY: usize = 256 * 1024;
/// Entra tokens are refreshed this long before they expire (or at half their life if shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Bounds on the wait between two polls of a long-running operation.
const MIN_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(10);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How often a PUT answered 409 Conflict is tried again.
const CONFLICT_RETRIES: usize = 3;

/// ARM's error code when a registry holds as many tokens (or scope maps) as its SKU allows.
const QUOTA_EXCEEDED: &str = "QuotaExceeded";

/// A failed create-or-replace: the registry's SKU limit, which Rise may make room under, or any
/// other failure.
#[derive(Debug)]
pub enum PutError {
    /// ARM answered `QuotaExceeded`; nothing was created.
    QuotaExceeded(ProviderError),
    Failed(ProviderError),
}

impl From<ProviderError> for PutError {
    fn from(e: ProviderError) -> Self {
        Self::Failed(e)
    }
}

impl From<PutError> for ProviderError {
    fn from(e: PutError) -> Self {
        match e {
            PutError::QuotaExceeded(e) | PutError::Failed(e) => e,
        }
    }
}

/// What ARM needs to know about Rise's identity and the registry.
pub(super) struct ArmSettings {
    pub authority: Url,
    pub management: Url,
    /// The scope asked of Entra ID: ARM's audience + `/.default`.
    pub scope: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub subscription_id: String,
    pub resource_group: String,
    pub registry_name: String,
    pub api_version: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub operation_timeout: Duration,
}

/// An Entra ID access token for ARM, shared by every call until shortly before it expires.
#[derive(Debug)]
struct CachedToken {
    token: SecretString,
    refresh_at: Instant,
}

/// A client for one registry's ARM resources. Its `Debug` shows no secret.
#[derive(Debug)]
pub(super) struct ArmClient {
    http: reqwest::Client,
    token_url: Url,
    management: Url,
    scope: String,
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerRegistry/registries/{name}`.
    registry_id: String,
    api_version: String,
    client_id: String,
    client_secret: Secret,
    timeout: Duration,
    operation_timeout: Duration,
    /// Held while a token is fetched, so concurrent callers wait for one fetch (single flight).
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

#[derive(Deserialize)]
struct EntraTokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Provisioned {
    #[serde(default)]
    properties: Option<ProvisioningProperties>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProvisioningProperties {
    #[serde(default)]
    provisioning_state: Option<String>,
}

/// A scope map as ARM describes it.
#[derive(Debug, Deserialize)]
pub(super) struct ScopeMapResource {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub properties: Option<ScopeMapProperties>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ScopeMapProperties {
    #[serde(default)]
    pub actions: Vec<String>,
}

/// A token as ARM describes it (passwords are never part of it).
#[derive(Debug, Deserialize)]
pub(super) struct TokenResource {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub properties: Option<TokenProperties>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenProperties {
    #[serde(default)]
    pub scope_map_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Deserialize)]
struct GenerateCredentialsResult {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    passwords: Vec<GeneratedPasswordItem>,
}

#[derive(Deserialize)]
struct GeneratedPasswordItem {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    expiry: Option<String>,
}

/// The password ACR generated for a token, with the expiry ACR reports for it.
pub(super) struct GeneratedPassword {
    pub username: Option<String>,
    pub value: SecretString,
    pub expiry: SystemTime,
}

#[derive(Deserialize)]
struct TokenList {
    #[serde(default)]
    value: Vec<NamedResource>,
    #[serde(default, rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct NamedResource {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct AsyncOperationStatus {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<ArmErrorDetail>,
}

#[derive(Deserialize)]
struct ArmErrorBody {
    error: ArmErrorDetail,
}

#[derive(Deserialize)]
struct ArmErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct EntraErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Who answered a failed call: the remedy differs.
#[derive(Clone, Copy)]
enum Service {
    Entra,
    Arm,
}

impl ArmClient {
    pub fn new(settings: ArmSettings) -> Result<Self, String> {
        let mut token_url = settings.authority.clone();
        token_url
            .path_segments_mut()
            .map_err(|()| "authority_url cannot be a base URL".to_owned())?
            .pop_if_empty()
            .extend([settings.tenant_id.as_str(), "oauth2", "v2.0", "token"]);
        let registry_id = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerRegistry/registries/{}",
            settings.subscription_id, settings.resource_group, settings.registry_name
        );
        let http = upstream::http_client(
            settings.connect_timeout,
            settings.request_timeout,
            reqwest::header::HeaderMap::new(),
        )?;
        Ok(Self {
            http,
            token_url,
            management: settings.management,
            scope: settings.scope,
            registry_id,
            api_version: settings.api_version,
            client_id: settings.client_id,
            client_secret: settings.client_secret,
            timeout: settings.request_timeout,
            operation_timeout: settings.operation_timeout,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The ARM resource id of a child of the registry, e.g. `scopeMaps`/`name`.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    pub fn child_id(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.registry_id)
    }

    /// Create or replace a scope map; the final resource, once provisioned.
    pub async fn put_scope_map(
        &self,
        name: &str,
        actions: &[String],
        description: &str,
    ) -> Result<ScopeMapResource, ProviderError> {
        let body = json!({"properties": {"description": description, "actions": actions}});
        let url = self.resource_url(&self.child_id("scopeMaps", name))?;
        Ok(self.put_resource(SCOPE_MAP_OPERATION, url, &body).await?)
    }

    /// Create a token bound to `scope_map_id`; the final resource, once provisioned.
    pub async fn put_token(
        &self,
        name: &str,
        scope_map_id: &str,
    ) -> Result<TokenResource, PutError> {
        let body = json!({"properties": {"scopeMapId": scope_map_id, "status": "enabled"}});
        let url = self.resource_url(&self.child_id("tokens", name))?;
        self.put_resource(TOKEN_OPERATION, url, &body).await
    }

    /// Generate `password1` of a token, expiring at `expiry`.
    pub async fn generate_password1(
        &self,
        token_id: &str,
        expiry: SystemTime,
    ) -> Result<GeneratedPassword, ProviderError> {
        let op = GENERATE_OPERATION;
        let url = self.resource_url(&format!("{}/generateCredentials", self.registry_id))?;
        let body = json!({"tokenId": token_id, "name": "password1", "expiry": rfc3339(expiry)});
        let deadline = Instant::now() + self.operation_timeout;
        let reply = self.call(op, Method::POST, url, Some(&body)).await?;
        let final_body = match reply.status {
            StatusCode::OK => reply.body,
            StatusCode::ACCEPTED => {
                let location = self.poll_url(op, &reply.headers, "location")?;
                let wait = retry_after(&reply.headers);
                match self.poll_location(op, location, wait, deadline).await? {
                    Some(body) => body,
                    None => {
                        return Err(upstream(
                            op,
                            "the operation ended without credentials".into(),
                        ));
                    }
                }
            }
            other => return Err(self.status_error(op, Service::Arm, other, &reply.body, &[])),
        };
        // Never put this body in an error: it holds the password.
        let parsed: GenerateCredentialsResult = parse(op, &final_body)?;
        let Some(item) = parsed
            .passwords
            .into_iter()
            .find(|p| p.name.as_deref() == Some("password1"))
        else {
            return Err(upstream(op, "HTTP 200 without password1".into()));
        };
        let value = item
            .value
            .filter(|v| !v.expose_secret().is_empty())
            .ok_or_else(|| upstream(op, "HTTP 200 without a value for password1".into()))?;
        let expiry = item
            .expiry
            .as_deref()
            .and_then(parse_rfc3339)
            .ok_or_else(|| {
                upstream(
                    op,
                    "HTTP 200 without a readable expiry for password1".into(),
                )
            })?;
        Ok(GeneratedPassword {
            username: parsed.username,
            value,
            expiry,
        })
    }

    /// Delete a token; deleting one that does not exist succeeds.
    pub async fn delete_token(&self, name: &str) -> Result<(), ProviderError> {
        let op = DELETE_OPERATION;
        let url = self.resource_url(&self.child_id("tokens", name))?;
        let deadline = Instant::now() + self.operation_timeout;
        let reply = self.call(op, Method::DELETE, url, None).await?;
        match reply.status {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            StatusCode::ACCEPTED => {
                let location = self.poll_url(op, &reply.headers, "location")?;
                let wait = retry_after(&reply.headers);
                self.poll_location(op, location, wait, deadline)
                    .await
                    .map(|_| ())
            }
            other => Err(self.status_error(op, Service::Arm, other, &reply.body, &[])),
        }
    }

    /// Names of the registry's tokens, following `nextLink` for at most `max_pages` pages.
    pub async fn list_tokens(&self, max_pages: usize) -> Result<Vec<String>, ProviderError> {
        let op = LIST_OPERATION;
        let mut url = self.resource_url(&format!("{}/tokens", self.registry_id))?;
        let mut names = Vec::new();
        for _ in 0..max_pages {
            let reply = self.call(op, Method::GET, url, None).await?;
            if reply.status != StatusCode::OK {
                return Err(self.status_error(op, Service::Arm, reply.status, &reply.body, &[]));
            }
            let page: TokenList = parse(op, &reply.body)?;
            names.extend(page.value.into_iter().filter_map(|t| t.name));
            match page.next_link.filter(|l| !l.is_empty()) {
                Some(next) => url = self.same_origin(op, &next)?,
                None => break,
            }
        }
        Ok(names)
    }

    /// PUT a resource and wait for it to be provisioned: 200/201 with `provisioningState`
    /// `Succeeded` is final; otherwise the `Azure-AsyncOperation` URL is polled and the
    /// resource read again, or, without that header, the resource is polled itself.
    async fn put_resource<T: DeserializeOwned>(
        &self,
        op: &'static str,
        url: Url,
        body: &Value,
    ) -> Result<T, PutError> {
        let deadline = Instant::now() + self.operation_timeout;
        let mut reply = self.call(op, Method::PUT, url.clone(), Some(body)).await?;
        // 409: another operation on the resource is running (e.g. another Rise replica writing
        // the same scope map). The PUT is idempotent: wait and try again, within the deadline.
        // Not when the registry is full: waiting does not make room.
        for _ in 0..CONFLICT_RETRIES {
            if reply.status != StatusCode::CONFLICT || is_quota_exceeded(&reply.body) {
                break;
            }
            self.sleep_before_poll(op, retry_after(&reply.headers), deadline)
                .await?;
            reply = self.call(op, Method::PUT, url.clone(), Some(body)).await?;
        }
        if !matches!(reply.status, StatusCode::OK | StatusCode::CREATED) {
            let e = self.status_error(op, Service::Arm, reply.status, &reply.body, &[]);
            return Err(if is_quota_exceeded(&reply.body) {
                PutError::QuotaExceeded(e)
            } else {
                PutError::Failed(e)
            });
        }
        let state = serde_json::from_slice::<Provisioned>(&reply.body)
            .ok()
            .and_then(|p| p.properties)
            .and_then(|p| p.provisioning_state);
        let final_body = match (reply.status, state.as_deref()) {
            (_, Some(s)) if s.eq_ignore_ascii_case("Succeeded") => reply.body,
            (_, Some(s)) if is_failed(s) => {
                return Err(upstream(op, format!("provisioningState {s}")).into());
            }
            // 200 without a state: the resource as it is.
            (StatusCode::OK, None) => reply.body,
            _ if !reply.headers.contains_key("azure-asyncoperation") => {
                // ARM's rule without an operation header: poll the resource itself until its
                // provisioningState is terminal.
                self.poll_resource(op, url, retry_after(&reply.headers), deadline)
                    .await?
            }
            _ => {
                let status_url = self.poll_url(op, &reply.headers, "azure-asyncoperation")?;
                let wait = retry_after(&reply.headers);
                self.poll_async_operation(op, status_url, wait, deadline)
                    .await?;
                let reply = self.call(op, Method::GET, url, None).await?;
                if reply.status != StatusCode::OK {
                    return Err(self
                        .status_error(op, Service::Arm, reply.status, &reply.body, &[])
                        .into());
                }
                reply.body
            }
        };
        Ok(parse(op, &final_body)?)
    }

    /// GET a resource until its `provisioningState` is `Succeeded` (its body) or failed, or
    /// `deadline`.
    async fn poll_resource(
        &self,
        op: &'static str,
        url: Url,
        mut wait: Option<Duration>,
        deadline: Instant,
    ) -> Result<Vec<u8>, ProviderError> {
        loop {
            self.sleep_before_poll(op, wait, deadline).await?;
            let reply = self.call(op, Method::GET, url.clone(), None).await?;
            // A resource just created can read 404 for a moment: still provisioning.
            if reply.status == StatusCode::NOT_FOUND {
                continue;
            }
            if reply.status != StatusCode::OK {
                return Err(self.status_error(op, Service::Arm, reply.status, &reply.body, &[]));
            }
            let state = serde_json::from_slice::<Provisioned>(&reply.body)
                .ok()
                .and_then(|p| p.properties)
                .and_then(|p| p.provisioning_state);
            match state.as_deref() {
                Some(s) if s.eq_ignore_ascii_case("Succeeded") => return Ok(reply.body),
                Some(s) if is_failed(s) => {
                    return Err(upstream(op, format!("provisioningState {s}")));
                }
                // No state at all: the resource as it is.
                None => return Ok(reply.body),
                // The PUT's Retry-After holds until a poll names another.
                Some(_) => wait = retry_after(&reply.headers).or(wait),
            }
        }
    }

    /// Poll an `Azure-AsyncOperation` URL until the operation succeeds, fails or `deadline`.
    async fn poll_async_operation(
        &self,
        op: &'static str,
        url: Url,
        mut wait: Option<Duration>,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        loop {
            self.sleep_before_poll(op, wait, deadline).await?;
            let reply = self.call(op, Method::GET, url.clone(), None).await?;
            if reply.status != StatusCode::OK {
                return Err(self.status_error(op, Service::Arm, reply.status, &reply.body, &[]));
            }
            let status: AsyncOperationStatus = parse(op, &reply.body)?;
            match status.status.as_deref() {
                Some(s) if s.eq_ignore_ascii_case("Succeeded") => return Ok(()),
                Some(s) if is_failed(s) => {
                    let detail = status
                        .error
                        .map(|e| describe_arm_error(&e, &[]))
                        .unwrap_or_default();
                    return Err(upstream(op, format!("operation {s}: {detail}")));
                }
                Some(_) => wait = retry_after(&reply.headers),
                None => return Err(upstream(op, "operation status without a status".into())),
            }
        }
    }

    /// Poll a `Location` URL: 202 while running; 200 (with the result, if any) or 204 when done.
    async fn poll_location(
        &self,
        op: &'static str,
        url: Url,
        mut wait: Option<Duration>,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, ProviderError> {
        loop {
            self.sleep_before_poll(op, wait, deadline).await?;
            let reply = self.call(op, Method::GET, url.clone(), None).await?;
            match reply.status {
                StatusCode::ACCEPTED => wait = retry_after(&reply.headers),
                StatusCode::OK => return Ok(Some(reply.body).filter(|b| !b.is_empty())),
                StatusCode::NO_CONTENT => return Ok(None),
                other => {
                    return Err(self.status_error(op, Service::Arm, other, &reply.body, &[]));
                }
            }
        }
    }

    async fn sleep_before_poll(
        &self,
        op: &'static str,
        wait: Option<Duration>,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        let wait = wait.unwrap_or(DEFAULT_POLL).clamp(MIN_POLL, MAX_POLL);
        if Instant::now() + wait > deadline {
            return Err(ProviderError::Timeout {
                operation: op,
                after: self.operation_timeout,
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// An Entra ID access token for ARM: the cached one, or a fresh one fetched by exactly one
    /// caller while the others wait.
    async fn arm_token(&self) -> Result<SecretString, ProviderError> {
        // Waiting behind a fetch is bounded like the fetch itself, so a hanging Entra ID does
        // not make queued callers wait one timeout each.
        let mut cached = tokio::time::timeout(self.timeout, self.cached.lock())
            .await
            .map_err(|_| ProviderError::Timeout {
                operation: ENTRA_OPERATION,
                after: self.timeout,
            })?;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let secret = self.client_secret.current().await;
        let form = [
            ("client_id", self.client_id.as_str()),
            // The single place the client secret is exposed: to the tenant's token endpoint.
            ("client_secret", secret.expose_secret()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let op = ENTRA_OPERATION;
        let reply = self
            .send(op, self.http.post(self.token_url.clone()).form(&form))
            .await?;
        if reply.status != StatusCode::OK {
            return Err(self.status_error(
                op,
                Service::Entra,
                reply.status,
                &reply.body,
                &[secret.expose_secret()],
            ));
        }
        let parsed: EntraTokenResponse = parse(op, &reply.body)?;
        if parsed.access_token.expose_secret().is_empty() {
            return Err(upstream(op, "HTTP 200 without an access_token".into()));
        }
        let lifetime = match parsed.expires_in {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .map(super::super::upstream::cache_lifetime)
        .ok_or_else(|| upstream(op, "HTTP 200 without a usable expires_in".into()))?;
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        *cached = Some(CachedToken {
            token: parsed.access_token.clone(),
            refresh_at: Instant::now() + lifetime - margin,
        });
        Ok(parsed.access_token)
    }

    /// One authenticated ARM call. A 401 drops the cached Entra token, so the next call asks
    /// for a new one.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Reply, ProviderError> {
        let token = self.arm_token().await?;
        // The single place the ARM token is exposed: to the configured management endpoint.
        let mut builder = self
            .http
            .request(method, url)
            .bearer_auth(token.expose_secret());
        if let Some(body) = body {
            builder = builder.json(body);
        }
        let reply = self.send(op, builder).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            *self.cached.lock().await = None;
        }
        Ok(reply)
    }

    /// One HTTP exchange, timed for `rise_upstream_request_duration_seconds` whatever its outcome.
    async fn send(
        &self,
        op: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<Reply, ProviderError> {
        upstream::exchange("acr", op, self.timeout, MAX_BODY, builder).await
    }

    /// `management` + `path` + `?api-version=...`.
    fn resource_url(&self, path: &str) -> Result<Url, ProviderError> {
        let mut url = self.management.clone();
        // Under the management URL's own path, if it has one (a proxy prefix).
        let prefix = self.management.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}{path}"));
        url.query_pairs_mut()
            .clear()
            .append_pair("api-version", &self.api_version);
        Ok(url)
    }

    /// A polling URL from a response header; it must point at the configured management
    /// endpoint, or the ARM token would be sent elsewhere.
    fn poll_url(
        &self,
        op: &'static str,
        headers: &HeaderMap,
        name: &str,
    ) -> Result<Url, ProviderError> {
        let raw = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                upstream(
                    op,
                    format!("long-running operation without a {name} header"),
                )
            })?;
        self.same_origin(op, raw)
    }

    fn same_origin(&self, op: &'static str, raw: &str) -> Result<Url, ProviderError> {
        let url = Url::parse(raw)
            .map_err(|_| upstream(op, "ARM answered with an unreadable URL".into()))?;
        let same = url.scheme() == self.management.scheme()
            && url.host_str() == self.management.host_str()
            && url.port_or_known_default() == self.management.port_or_known_default();
        if !same {
            return Err(upstream(
                op,
                format!(
                    "ARM pointed at {}, not the management endpoint; refusing to send it a token",
                    url.host_str().unwrap_or("?")
                ),
            ));
        }
        Ok(url)
    }

    /// 401/403 (and Entra's 400, and ARM's 404 for a missing registry) mean the operator must
    /// act: [`ProviderError::Misconfigured`], naming what to check. Anything else is the
    /// upstream failing. The body is summarised for the log, redacted, never returned.
    fn status_error(
        &self,
        op: &'static str,
        service: Service,
        status: StatusCode,
        body: &[u8],
        secrets: &[&str],
    ) -> ProviderError {
        let detail = format!("HTTP {status}: {}", summarise_error_body(body, secrets));
        match (service, status) {
            (
                Service::Entra,
                StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
            ) => ProviderError::Misconfigured(format!(
                "{op} refused Rise's client credentials ({detail}); check tenant_id, client_id and client_secret (is the secret expired?)"
            )),
            (Service::Arm, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                ProviderError::Misconfigured(format!(
                    "{op} refused Rise's identity ({detail}); its app registration needs, on registry {}, a role with Microsoft.ContainerRegistry/registries/scopeMaps/{{read,write}}, tokens/{{read,write,delete}}, generateCredentials/action and their operationStatuses/read (see the acr provider documentation)",
                    self.registry_id
                ))
            }
            (Service::Arm, StatusCode::NOT_FOUND) => ProviderError::Misconfigured(format!(
                "{op}: ARM does not know {} ({detail}); check subscription_id, resource_group and registry_name",
                self.registry_id
            )),
            _ => upstream(op, detail),
        }
    }
}

fn upstream(operation: &'static str, detail: String) -> ProviderError {
    ProviderError::Upstream { operation, detail }
}

/// Whether an ARM error body carries [`QUOTA_EXCEEDED`] (its HTTP status is not documented).
fn is_quota_exceeded(body: &[u8]) -> bool {
    serde_json::from_slice::<ArmErrorBody>(body).is_ok_and(|b| {
        b.error
            .code
            .is_some_and(|c| c.eq_ignore_ascii_case(QUOTA_EXCEEDED))
    })
}

fn is_failed(state: &str) -> bool {
    ["Failed", "Canceled", "Cancelled"]
        .iter()
        .any(|s| state.eq_ignore_ascii_case(s))
}

/// Parse a JSON reply. The error names where parsing stopped, never the body (it may hold a
/// token or a password).
fn parse<T: DeserializeOwned>(op: &'static str, body: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| {
        upstream(
            op,
            format!(
                "malformed body ({:?} at line {}, column {}; {} bytes)",
                e.classify(),
                e.line(),
                e.column(),
                body.len()
            ),
        )
    })
}

/// `Retry-After` in seconds, if given.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn describe_arm_error(e: &ArmErrorDetail, secrets: &[&str]) -> String {
    redact_for_log(
        &format!(
            "{}: {}",
            e.code.as_deref().unwrap_or("?"),
            e.message.as_deref().unwrap_or("")
        ),
        secrets,
    )
}

/// `code: message` from an ARM or Entra error body, or the redacted raw text.
fn summarise_error_body(body: &[u8], secrets: &[&str]) -> String {
    if let Ok(arm) = serde_json::from_slice::<ArmErrorBody>(body) {
        return describe_arm_error(&arm.error, secrets);
    }
    if let Ok(entra) = serde_json::from_slice::<EntraErrorBody>(body) {
        return redact_for_log(
            &format!(
                "{}: {}",
                entra.error,
                entra.error_description.as_deref().unwrap_or("")
            ),
            secrets,
        );
    }
    format!(
        "unrecognised body {:?}",
        redact_for_log(&String::from_utf8_lossy(body), secrets)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let arm = br#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' with secret hunter2 does not have authorization"}}"#;
        let s = summarise_error_body(arm, &["hunter2"]);
        assert_eq!(
            s,
            "AuthorizationFailed: The client 'x' with secret [REDACTED] does not have authorization"
        );
        let entra = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#;
        assert_eq!(
            summarise_error_body(entra, &[]),
            "invalid_client: AADSTS7000215: Invalid client secret provided."
        );
        let html = b"<html>oops hunter2</html>";
        let s = summarise_error_body(html, &["hunter2"]);
        assert!(
            s.starts_with("unrecognised body") && !s.contains("hunter2"),
            "{s}"
        );
    }

    fn client(management: &str) -> ArmClient {
        ArmClient::new(ArmSettings {
            authority: Url::parse("https://login.example").expect("url"),
            management: Url::parse(management).expect("url"),
            scope: "https://management.azure.com/.default".into(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: Secret::plain(SecretString::from("s".to_owned())),
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            resource_group: "rg".into(),
            registry_name: "reg".into(),
            api_version: "2023-07-01".into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            operation_timeout: Duration::from_secs(1),
        })
        .expect("client")
    }

    #[test]
    fn urls_stay_on_the_configured_endpoints() {
        let c = client("https://arm.example/proxy/");
        assert_eq!(
            c.token_url.as_str(),
            "https://login.example/t/oauth2/v2.0/token"
        );
        assert_eq!(
            c.resource_url(&c.child_id("tokens", "x"))
                .expect("url")
                .as_str(),
            "https://arm.example/proxy/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/reg/tokens/x?api-version=2023-07-01"
        );
        let op = "op";
        assert!(
            c.same_origin(
                op,
                "https://arm.example/x/operationStatuses/1?api-version=1"
            )
            .is_ok()
        );
        for elsewhere in [
            "https://evil.example/operationStatuses/1",
            "http://arm.example/operationStatuses/1",
            "https://arm.example:8443/operationStatuses/1",
            "/relative",
        ] {
            let e = c.same_origin(op, elsewhere).expect_err(elsewhere);
            assert!(
                matches!(e, ProviderError::Upstream { .. }),
                "{elsewhere}: {e:?}"
            );
        }
        let mut h = HeaderMap::new();
        assert!(c.poll_url(op, &h, "location").is_err(), "missing header");
        h.insert(
            "location",
            "https://evil.example/x".parse().expect("header"),
        );
        assert!(c.poll_url(op, &h, "location").is_err());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "3".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", "soon".parse().expect("header"));
        assert_eq!(retry_after(&h), None);
    }
}
