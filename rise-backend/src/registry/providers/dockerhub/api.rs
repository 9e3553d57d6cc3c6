//! The Docker Hub API calls Rise makes, and their wire types.
//!
//! Shapes come from Docker's public documentation (no Docker Hub runs in Rise's test
//! environment; the tests use a fake built from the same documents,
//! `tests/it/support/fake_dockerhub.rs`):
//! - Create access token (sign-in): `POST /v2/auth/token`, body `identifier` (a user name for a
//!   password or personal access token) and `secret`; 200 `{"access_token": JWT}`, a bearer
//!   token that "expires in 10 minutes"; 401 on bad credentials
//!   (<https://docs.docker.com/reference/api/hub/latest/operations/AuthCreateAccessToken.md>).
//!   `POST /v2/users/login` is deprecated in its favour and not used.
//! - Create organization access token: `POST /v2/orgs/{name}/access-tokens` with the bearer
//!   JWT, body `createOrgAccessTokenRequest` = `label` (required), `description`, `resources`
//!   (at least one `{type: TYPE_REPO | TYPE_ORG, path, scopes}`; a `TYPE_REPO` path is an
//!   existing `org/repo`, or a glob such as `org/*`), `expires_at` (date-time; null or absent:
//!   never expires); 201 `createOrgAccessTokenResponse` = `id`, `label`, `is_active`,
//!   `created_at`, `expires_at`, `last_used_at`, `resources`, `token`; 400, 401, 403, 404
//!   (<https://docs.docker.com/reference/api/hub/latest/operations/postV2OrgsByNameAccessTokens.md>,
//!   <https://docs.docker.com/reference/api/hub/latest/schemas/createOrgAccessTokenRequest.md>,
//!   <https://docs.docker.com/reference/api/hub/latest/schemas/orgAccessTokenResource.md>).
//!   Repository scope values are `scope-image-pull`, `scope-image-push` (includes pull), ...
//!   (<https://docs.docker.com/security/access-tokens/reference/>); older API examples show
//!   `repo-pull`, which Docker Hub does not accept (docker/docs#24406, fixed in #24443).
//! - List organization access tokens: `GET /v2/orgs/{name}/access-tokens?page=&page_size=`;
//!   200 `{total, next, previous, results: [orgAccessToken]}` where `orgAccessToken` = `id`,
//!   `label`, `created_by`, `is_active`, `created_at`, `expires_at`, `last_used_at`.
//! - Get / delete one: `GET` and `DELETE /v2/orgs/{org_name}/access-tokens/{access_token_id}`;
//!   GET 200 `getOrgAccessTokenResponse` (the above plus `resources`), DELETE 204; both 401,
//!   403, 404
//!   (<https://docs.docker.com/reference/api/hub/latest/operations/deleteV2OrgsByOrgNameAccessTokensByAccessTokenId.md>).
//! - Errors: `{"errinfo": {...}, "detail": "...", "message": "..."}` (`error`/`Error`) or, for
//!   input validation, `{"fields": {...}, "text": "..."}` (`ValueError`). Rate limiting: 429
//!   with `X-Retry-After` (a Unix timestamp), per the API reference's "Rate Limiting" section.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::registry::ProviderError;
use crate::registry::providers::artifactory::redact_for_log;
use crate::registry::providers::upstream;

pub(super) const LOGIN_OPERATION: &str = "Docker Hub sign-in";
pub(super) const CREATE_OPERATION: &str = "Docker Hub create access token";
pub(super) const DELETE_OPERATION: &str = "Docker Hub delete access token";
pub(super) const GET_OPERATION: &str = "Docker Hub read access token";
pub(super) const LIST_OPERATION: &str = "Docker Hub list access tokens";
/// Page size for listing; the API documents no maximum, 100 is the largest Docker Hub
/// documents for its other paginated endpoints.
pub(super) const PAGE_SIZE: usize = 100;
/// Replies are small (a page of 100 tokens is a few tens of KiB); anything bigger is not a reply
/// Rise can use.
const MAX_BODY: usize = 1024 * 1024;
/// The documented lifetime of the sign-in JWT, used when its `exp` cannot be read.
pub(super) const JWT_DOCUMENTED_LIFETIME: Duration = Duration::from_secs(600);

/// The rate-limited variant of an operation's name, so a 429 reads as such where the HTTP layer
/// names the operation.
fn rate_limited(operation: &'static str) -> &'static str {
    match operation {
        LOGIN_OPERATION => "Docker Hub sign-in (rate limited by Docker Hub)",
        CREATE_OPERATION => "Docker Hub create access token (rate limited by Docker Hub)",
        DELETE_OPERATION => "Docker Hub delete access token (rate limited by Docker Hub)",
        GET_OPERATION => "Docker Hub read access token (rate limited by Docker Hub)",
        LIST_OPERATION => "Docker Hub list access tokens (rate limited by Docker Hub)",
        _ => "Docker Hub API (rate limited by Docker Hub)",
    }
}

/// `POST /v2/auth/token`'s body. Built only inside [`HubClient::sign_in`], where the secret is
/// exposed to the endpoint it belongs to.
#[derive(Serialize)]
struct SignIn<'a> {
    identifier: &'a str,
    secret: &'a str,
}

#[derive(Deserialize)]
struct SignInReply {
    access_token: SecretString,
}

/// A sign-in JWT and when it stops working.
pub(super) struct HubJwt {
    pub token: SecretString,
    pub expires_at: SystemTime,
}

/// `createOrgAccessTokenRequest`.
#[derive(Debug, Serialize)]
pub(super) struct CreateOat<'a> {
    pub label: &'a str,
    pub description: &'a str,
    pub resources: Vec<Resource>,
    /// RFC 3339, whole seconds, UTC.
    pub expires_at: String,
}

/// `orgAccessTokenResource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `createOrgAccessTokenResponse`. `token` is the only secret.
#[derive(Deserialize)]
pub(super) struct CreatedOat {
    pub id: String,
    pub token: SecretString,
    /// Null means the token never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// What Docker Hub says the token reaches; absent means unconfirmed.
    #[serde(default)]
    pub resources: Option<Vec<Resource>>,
}

/// `orgAccessToken` (list and get replies), the fields Rise reads.
#[derive(Debug, Deserialize)]
pub(super) struct OatInfo {
    pub id: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `getOrgAccessTokensResponse`.
#[derive(Debug, Deserialize)]
pub(super) struct OatPage {
    #[serde(default)]
    pub results: Vec<OatInfo>,
    #[serde(default)]
    pub next: Option<String>,
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    Now,
    /// 404: already gone (or never existed).
    NotFound,
}

/// One reply, before it is interpreted.
pub(super) struct Reply {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// A client for one Docker Hub API URL and organization.
#[derive(Debug, Clone)]
pub(super) struct HubClient {
    http: reqwest::Client,
    base: Url,
    organization: String,
    timeout: Duration,
}

impl HubClient {
    pub fn new(
        base: &Url,
        organization: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let http =
            upstream::http_client(connect_timeout, timeout, reqwest::header::HeaderMap::new())
                .map_err(ProviderError::Misconfigured)?;
        Ok(Self {
            http,
            base: base.clone(),
            organization: organization.to_owned(),
            timeout,
        })
    }

    /// `POST /v2/auth/token` with `identifier` and `secret`.
    pub async fn sign_in(
        &self,
        identifier: &str,
        secret: &SecretString,
    ) -> Result<HubJwt, ProviderError> {
        let url = self.url(&["v2", "auth", "token"])?;
        let sent_at = SystemTime::now();
        // The single place Rise's own secret is exposed: to the endpoint it belongs to.
        let body = SignIn {
            identifier,
            secret: secret.expose_secret(),
        };
        let builder = self.http.post(url).json(&body);
        let reply = self.send(LOGIN_OPERATION, builder).await?;
        let secrets = [secret.expose_secret()];
        if reply.status != StatusCode::OK {
            return Err(status_error(LOGIN_OPERATION, &reply, &secrets));
        }
        let parsed: SignInReply = parse_json(LOGIN_OPERATION, &reply)?;
        if parsed.access_token.expose_secret().trim().is_empty() {
            return Err(ProviderError::Upstream {
                operation: LOGIN_OPERATION,
                detail: "HTTP 200 without an access_token".into(),
            });
        }
        let expires_at = jwt_expiry(parsed.access_token.expose_secret())
            .unwrap_or(sent_at + JWT_DOCUMENTED_LIFETIME);
        Ok(HubJwt {
            token: parsed.access_token,
            expires_at,
        })
    }

    /// `POST /v2/orgs/{organization}/access-tokens`; the raw reply.
    pub async fn create(
        &self,
        jwt: &SecretString,
        body: &CreateOat<'_>,
    ) -> Result<Reply, ProviderError> {
        let url = self.url(&["v2", "orgs", &self.organization, "access-tokens"])?;
        self.send(
            CREATE_OPERATION,
            bearer(self.http.post(url), jwt).json(body),
        )
        .await
    }

    /// `GET /v2/orgs/{organization}/access-tokens?page=&page_size=`; the raw reply.
    pub async fn list(&self, jwt: &SecretString, page: usize) -> Result<Reply, ProviderError> {
        let mut url = self.url(&["v2", "orgs", &self.organization, "access-tokens"])?;
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("page_size", &PAGE_SIZE.to_string());
        self.send(LIST_OPERATION, bearer(self.http.get(url), jwt))
            .await
    }

    /// `GET` or `DELETE /v2/orgs/{organization}/access-tokens/{id}`; the raw reply.
    pub async fn one(
        &self,
        method: Method,
        jwt: &SecretString,
        id: &str,
    ) -> Result<Reply, ProviderError> {
        let operation = if method == Method::DELETE {
            DELETE_OPERATION
        } else {
            GET_OPERATION
        };
        let url = self.url(&["v2", "orgs", &self.organization, "access-tokens", id])?;
        self.send(operation, bearer(self.http.request(method, url), jwt))
            .await
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ProviderError::Misconfigured("api_url cannot have a path".into()))?;
            path.pop_if_empty();
            // Each segment is percent-encoded: an id or name can never leave its segment.
            path.extend(segments);
        }
        Ok(url)
    }

    /// One Docker Hub API call, timed for `rise_upstream_request_duration_seconds` whatever its
    /// outcome.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<Reply, ProviderError> {
        let reply =
            upstream::exchange("dockerhub", operation, self.timeout, MAX_BODY, builder).await?;
        Ok(Reply {
            status: reply.status,
            retry_after: retry_after(&reply.headers),
            body: reply.body,
        })
    }
}

fn bearer(builder: reqwest::RequestBuilder, jwt: &SecretString) -> reqwest::RequestBuilder {
    // reqwest marks the Authorization header sensitive.
    builder.bearer_auth(jwt.expose_secret())
}

/// `X-Retry-After` (documented, a Unix timestamp) or the standard `Retry-After`.
fn retry_after(headers: &HeaderMap) -> Option<String> {
    ["x-retry-after", "retry-after"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(40).collect())
    })
}

/// A 2xx body as `T`. The body is never put in the error: on success it may hold a secret.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    reply: &Reply,
) -> Result<T, ProviderError> {
    serde_json::from_slice(&reply.body)
        .map_err(|e| upstream::malformed(operation, reply.status, &e, reply.body.len()))
}

/// A non-success reply as a [`ProviderError`]: 401/403 mean Rise's own identity is wrong or too
/// weak (the operator must act); 429 is Docker Hub's rate limit; anything else is the upstream
/// failing. The body is summarised for the log, redacted, never returned to callers.
pub(super) fn status_error(
    operation: &'static str,
    reply: &Reply,
    secrets: &[&str],
) -> ProviderError {
    let summary = summarise_error_body(&reply.body, secrets);
    let status = reply.status;
    let detail = format!("HTTP {status}: {summary}");
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if operation == LOGIN_OPERATION => {
            ProviderError::Misconfigured(format!(
                "{operation} refused Rise's credential ({detail}); check username and password (or access_token); where the organization enforces SSO, Docker Hub requires a personal access token instead of a password"
            ))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Misconfigured(format!(
            "{operation} refused Rise's identity ({detail}); the user must be an owner of the organization (or hold a role with the \"Manage organization access tokens\" permission), and organization access tokens need a Docker Team or Business subscription; Docker Hub may refuse sign-ins made with a personal access token here (\"token issued from personal access token is not allowed\"): use the account's password"
        )),
        StatusCode::TOO_MANY_REQUESTS => ProviderError::Upstream {
            operation: rate_limited(operation),
            detail: format!(
                "Docker Hub rate limit reached (HTTP 429{}): {summary}",
                reply
                    .retry_after
                    .as_deref()
                    .map(|r| format!(", retry after {r}"))
                    .unwrap_or_default()
            ),
        },
        _ => ProviderError::Upstream { operation, detail },
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    fields: Option<serde_json::Value>,
}

/// `message; detail; text; fields` from a Docker Hub error body, or the redacted raw text.
fn summarise_error_body(body: &[u8], secrets: &[&str]) -> String {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let parts: Vec<String> = parsed
        .iter()
        .flat_map(|b| {
            [
                b.message.clone(),
                b.detail.clone(),
                b.text.clone(),
                b.fields
                    .as_ref()
                    .filter(|f| !f.is_null() && f.as_object().is_none_or(|o| !o.is_empty()))
                    .map(|f| format!("fields {f}")),
            ]
        })
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if parts.is_empty() {
        let text = String::from_utf8_lossy(body);
        return format!("unrecognised body {:?}", redact_for_log(&text, secrets));
    }
    redact_for_log(&parts.join("; "), secrets)
}

/// The `exp` claim of a JWT, read without verification: it only decides how long Rise reuses
/// the token, and Docker Hub is what enforces it.
fn jwt_expiry(jwt: &str) -> Option<SystemTime> {
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    // An `exp` beyond what a time can hold is as good as none: the documented lifetime applies.
    UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp))
}

/// An RFC 3339 date-time as Docker Hub writes it (`2023-05-20T00:54:18Z`, optionally with a
/// fraction, or a `+00:00` offset).
pub(super) fn parse_time(value: &str) -> Option<SystemTime> {
    let v = value.trim();
    let v = v
        .strip_suffix("+00:00")
        .map(|s| format!("{s}Z"))
        .unwrap_or_else(|| v.to_owned());
    humantime::parse_rfc3339_weak(v.trim_end_matches('Z')).ok()
}

/// Organization access token ids are UUIDs; anything else is refused before it reaches a URL.
pub(super) fn valid_token_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &[u8]) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            retry_after: None,
            body: body.to_vec(),
        }
    }

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let s = summarise_error_body(
            br#"{"errinfo":{},"message":"permission denied for hunter2"}"#,
            &["hunter2"],
        );
        assert_eq!(s, "permission denied for [REDACTED]");
        let s = summarise_error_body(
            br#"{"fields":{"resources":["invalid scope"]},"text":"bad input"}"#,
            &[],
        );
        assert_eq!(s, r#"bad input; fields {"resources":["invalid scope"]}"#);
        let s = summarise_error_body(b"<html>502 hunter2</html>", &["hunter2"]);
        assert!(
            s.starts_with("unrecognised body") && !s.contains("hunter2"),
            "{s}"
        );
    }

    #[test]
    fn statuses_map_to_operator_upstream_or_rate_limit() {
        let e = status_error(LOGIN_OPERATION, &reply(401, b"{}"), &[]);
        assert!(
            matches!(&e, ProviderError::Misconfigured(m) if m.contains("check username")),
            "{e:?}"
        );
        let e = status_error(CREATE_OPERATION, &reply(403, b"{}"), &[]);
        assert!(
            matches!(&e, ProviderError::Misconfigured(m) if m.contains("owner of the organization")),
            "{e:?}"
        );
        let mut limited = reply(429, br#"{"detail":"Rate limit exceeded"}"#);
        limited.retry_after = Some("1764331200".into());
        let e = status_error(CREATE_OPERATION, &limited, &[]);
        match &e {
            ProviderError::Upstream { operation, detail } => {
                assert!(operation.contains("rate limited"), "{operation}");
                assert!(
                    detail.contains("retry after 1764331200") && detail.contains("Rate limit"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        let e = status_error(CREATE_OPERATION, &reply(500, b""), &[]);
        assert!(
            matches!(e, ProviderError::Upstream { operation, .. } if operation == CREATE_OPERATION)
        );
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"u","exp":1764331200}"#);
        let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        assert_eq!(
            jwt_expiry(&jwt),
            Some(UNIX_EPOCH + Duration::from_secs(1_764_331_200))
        );
        assert_eq!(jwt_expiry("opaque"), None);
        let absurd = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":18446744073709551615}"#);
        assert_eq!(jwt_expiry(&format!("e30.{absurd}.sig")), None);
    }

    #[test]
    fn times_parse_in_the_documented_forms() {
        let t = UNIX_EPOCH + Duration::from_secs(1_653_008_058);
        assert_eq!(parse_time("2022-05-20T00:54:18Z"), Some(t));
        assert_eq!(parse_time("2022-05-20T00:54:18+00:00"), Some(t));
        let f = parse_time("2022-05-20T00:54:18.504110Z").expect("fraction");
        assert!(f > t && f < t + Duration::from_secs(1));
        assert_eq!(parse_time("tomorrow"), None);
    }

    #[test]
    fn token_ids() {
        assert!(valid_token_id("a7a5ef25-8889-43a0-8cc7-f2a94268e861"));
        for bad in ["", "..", "a/b", "a?b", "%2F", &"x".repeat(129)] {
            assert!(!valid_token_id(bad), "{bad:?}");
        }
    }
}
