//! Docker Hub (`type = "dockerhub"`): one organization access token (OAT) per request, limited
//! to one repository of the organization with pull (and push), expiring with the request's
//! lifetime, minted and deleted through the Docker Hub API.
//!
//! Tested against a fake Docker Hub built from Docker's public documentation
//! (`tests/it/support/fake_dockerhub.rs`), never against Docker Hub: the request and response
//! shapes are in `dockerhub/api.rs`, with the pages they come from. The behaviour relied on here
//! comes from "Organization access tokens"
//! (<https://docs.docker.com/security/access-tokens/organization-access-tokens/>: owners
//! manage OATs, Team/Business only, 10/100 tokens per organization, expiry at most a year
//! ahead, `docker login` with the organization name), the "Access token reference"
//! (<https://docs.docker.com/security/access-tokens/reference/>: scope values) and the Docker
//! Hub API reference (<https://docs.docker.com/reference/api/hub/latest/>: sign-in, the
//! org-access-tokens operations, rate limiting).
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "dockerhub"
//! organization = "myorg"            # images are docker.io/myorg/<repository>
//! username = "rise-admin"           # an owner of the organization (see below)
//! password = "..."                  # or password_file, RISE_REGISTRY__PASSWORD, or an
//!                                   # aws-secretsmanager: reference
//! # access_token = "dckr_pat_..."   # instead of password: a personal access token of that user
//! # max_ttl = "12h"                 # longest lifetime handed out; at most 365 days
//! # label_prefix = "rise"           # OAT labels: "<prefix> <registry>/<project> <request id>"
//! # delete_expired = true           # delete Rise's expired OATs (see below)
//! # cleanup_interval = "10m"
//! # api_url = "https://hub.docker.com"
//! # registry_host = "docker.io"     # what clients log in to and pull/push from
//! # request_timeout = "10s" ; connect_timeout = "5s"
//! # secret_refresh_interval = "5m"  # re-read of aws-secretsmanager: references
//! # insecure_http = true            # allow an http:// api_url; tests only
//! ```
//!
//! # What callers get
//!
//! Each request creates an OAT (`POST /v2/orgs/{organization}/access-tokens`) with one resource
//! `{type: TYPE_REPO, path: <organization>/<repository>, scopes}`: `scope-image-pull` for pull,
//! plus `scope-image-push` for push (Docker's scope reference; push includes pull), and
//! `expires_at` = now + the request's TTL, rounded *down* to whole seconds so it is never
//! longer than asked. The caller logs in to `registry_host` (default `docker.io`, the registry
//! part of every Docker Hub image reference; the Docker CLI files a `docker.io` login under its
//! Docker Hub entry, `https://index.docker.io/v1/`) with the organization's name as the user
//! name, as Docker documents for OATs, and the OAT as the password. The
//! repository path in the response is `<organization>/<repository>`; a repository name with a
//! `/` is refused (Docker Hub repositories are one level below their namespace).
//!
//! # What is scoped
//!
//! `repository_scoped: true` only when Docker Hub's reply echoes exactly the one repository
//! resource and no scope beyond those asked for. A reply naming other resources or more scopes
//! (a glob path, push for a pull request) is deleted and refused; one without `resources` cannot
//! prove the restriction and is reported as unscoped with `granted_actions` pull and push, and
//! logged. Not a restriction Rise can add: a public repository is pullable by anyone, with or
//! without the token; keep repositories that must stay closed private.
//!
//! # Rise's own Docker Hub identity
//!
//! Rise signs in with `POST /v2/auth/token` (`identifier` = `username`, `secret` = the password
//! or personal access token) and reuses the returned JWT, shared by all requests, until a
//! minute before its `exp` (Docker documents 10 minutes); one sign-in at a time refreshes it,
//! and a 401 on an OAT call drops it and retries once with a fresh one. Creating and deleting
//! OATs needs an organization owner (or company owner, or a custom role with "Manage
//! organization access tokens") and a Docker Team or Business subscription. An OAT cannot be
//! used here: OATs carry no scope to manage OATs. Use a dedicated owner account with a strong
//! password kept in a secret store. Docker Hub refuses passwords where the organization
//! enforces SSO (then only a personal access token signs in), and public reports show it
//! refusing PAT-issued JWTs on management endpoints ("token issued from personal access token
//! is not allowed"); this was not verified against Docker Hub, and Rise turns such a 403 into a
//! configuration error saying so.
//!
//! # Lifetime, revocation, cleanup
//!
//! Docker Hub enforces `expires_at` (`expiry_enforced: true`). Rise reads the expiry from the
//! reply: a token Docker Hub says never expires, or that outlives `max_ttl`, is deleted and
//! refused; one that lives longer than asked (but within `max_ttl`) is handed out with its
//! real expiry and a warning in the log. OATs are not refreshable: clients ask Rise again.
//! `revocable: true`: [`RegistryProvider::revoke`] reads the token
//! (`GET .../access-tokens/{id}`), refuses one whose label is not Rise's, and deletes it
//! (`DELETE .../access-tokens/{id}`); an unknown id counts as already revoked.
//!
//! Expired and deactivated OATs count toward the organization's limit (10 on Docker Team, 100
//! on Docker Business) until deleted. So Rise, at most every `cleanup_interval` and in the
//! background after a request, lists the organization's OATs (at most 10 pages of 100) and
//! deletes at most 100 whose label starts with `"<label_prefix> <registry name>/"` and whose
//! `expires_at` has passed; it stops at the first failure and tries again on a later request.
//! When a create fails with a 4xx that may be the limit, Rise sweeps at once (creates refused
//! together share one sweep) and, if the sweep deleted anything, retries the create once. Still, a Team organization holds at most 10 live OATs:
//! size `max_ttl` and request rates for that, or use Docker Business.
//!
//! # Failures
//!
//! Every call is bounded by `connect_timeout` and `request_timeout`. Timeouts are
//! [`ProviderError::Timeout`] (504); 401/403 from Docker Hub are
//! [`ProviderError::Misconfigured`] (502) naming what is likely wrong; 429 (Docker Hub's API
//! rate limit) is [`ProviderError::Upstream`] whose operation says "rate limited by Docker
//! Hub", with `X-Retry-After` in the logged detail; other statuses and malformed replies are
//! [`ProviderError::Upstream`] (502). Upstream bodies are summarised with secrets redacted and
//! only ever logged. The password, the sign-in JWT and every OAT are [`SecretString`]s: they
//! appear in no log, error or `Debug` output.

mod api;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use self::api::{CreateOat, CreatedOat, Deleted, HubClient, OatInfo, OatPage, Reply, Resource};
use crate::config::lenient;
use crate::registry::providers::account;
use crate::registry::providers::sweeper::{self, Schedule, Sweep, SweepReport};
use crate::registry::providers::upstream;
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
    RepositoryName,
};
use crate::secrets::{Secret, SecretSource};

/// The `[registry]` table with `type = "dockerhub"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerhubConfig {
    /// The Docker Hub organization (namespace) whose repositories Rise hands out.
    pub organization: String,
    /// An owner of the organization, used only to manage OATs; never handed out.
    #[serde(default)]
    pub username: Option<String>,
    /// The user's password: a value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Instead of `password`: a personal access token of the user.
    #[serde(default)]
    pub access_token: Option<SecretSource>,
    #[serde(default = "defaults::api_url")]
    pub api_url: String,
    /// What clients log in to; images are `<registry_host>/<organization>/<repository>`.
    #[serde(default = "defaults::registry_host")]
    pub registry_host: String,
    /// The first word of every OAT label Rise writes; cleanup only touches such tokens.
    #[serde(default = "defaults::label_prefix")]
    pub label_prefix: String,
    #[serde(default = "defaults::yes", deserialize_with = "lenient::bool")]
    pub delete_expired: bool,
    #[serde(default = "defaults::cleanup_interval", with = "humantime_serde")]
    pub cleanup_interval: Duration,
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
    /// Allow an `http://` API URL: credentials then cross the network in clear text.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, max_ttl, request_timeout, secret_refresh_interval, yes,
    };
    use std::time::Duration;

    pub fn api_url() -> String {
        "https://hub.docker.com".into()
    }
    pub fn registry_host() -> String {
        "docker.io".into()
    }
    pub fn label_prefix() -> String {
        "rise".into()
    }
    pub fn cleanup_interval() -> Duration {
        Duration::from_secs(600)
    }
}

/// Docker Home lets an OAT expire at most one year ahead.
const MAX_TTL_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Docker documents up to 200 characters for an OAT's description.
const MAX_DESCRIPTION_LEN: usize = 200;
/// No limit is documented for labels; personal access token labels allow 100, so Rise stays
/// within that.
const MAX_LABEL_LEN: usize = 100;
/// The sign-in JWT is renewed this long before its expiry.
const JWT_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Bounds of one cleanup sweep.
const SWEEP_MAX_PAGES: usize = 10;
const SWEEP_MAX_DELETES: usize = 100;
/// Slack for clock skew when comparing Docker Hub's expiry with the requested one.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

pub const SCOPE_PULL: &str = "scope-image-pull";
pub const SCOPE_PUSH: &str = "scope-image-push";

/// The Docker Hub provider. Holds its secrets; its `Debug` shows none of them.
#[derive(Debug)]
pub struct DockerhubProvider {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The registry's configured name, for log lines.
    name: String,
    organization: String,
    registry_host: String,
    label_prefix: String,
    username: String,
    secret: Secret,
    client: HubClient,
    max_ttl: Duration,
    delete_expired: bool,
    /// The shared sign-in JWT; the async lock makes one sign-in at a time.
    jwt: tokio::sync::Mutex<Option<CachedJwt>>,
    /// When Rise's expired tokens are deleted (only with `delete_expired`).
    schedule: Schedule,
}

#[derive(Debug)]
struct CachedJwt {
    token: SecretString,
    /// When Rise stops using it (its expiry less [`JWT_REFRESH_MARGIN`]).
    renew_at: Instant,
}

impl DockerhubProvider {
    /// Validate `config` and build the provider; `aws-secretsmanager:` references are read now.
    /// No upstream call is made until the first request.
    pub async fn from_config(name: &str, config: &DockerhubConfig) -> anyhow::Result<Self> {
        Ok(Self::build(name, config).await?)
    }

    async fn build(name: &str, config: &DockerhubConfig) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let organization = config.organization.trim();
        validate_organization(organization).map_err(bad)?;
        let api_url = parse_api_url(&config.api_url, config.insecure_http).map_err(bad)?;
        let registry_host = config.registry_host.trim();
        validate_registry_host(registry_host).map_err(bad)?;
        validate_label_prefix(&config.label_prefix).map_err(bad)?;
        if config.label_prefix.len() + name.len() + 2 > MAX_LABEL_LEN / 2 {
            // Cleanup and revocation recognise Rise's tokens by "<prefix> <name>/": it must
            // survive the label's truncation with room for the project.
            return Err(bad(format!(
                "label_prefix and the registry name together must be at most {} characters",
                MAX_LABEL_LEN / 2 - 2
            )));
        }
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("cleanup_interval", config.cleanup_interval),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
        ])
        .map_err(bad)?;
        if config.max_ttl > MAX_TTL_LIMIT {
            return Err(bad(
                "max_ttl must be at most 365 days: Docker Hub lets an organization access token expire at most one year ahead".into(),
            ));
        }
        let (username, secret) = credential(name, config).await?;
        let client = HubClient::new(
            &api_url,
            organization,
            config.connect_timeout,
            config.request_timeout,
        )
        .map_err(|e| bad(e.to_string()))?;
        tracing::info!(
            registry = %name,
            organization,
            "dockerhub registry mints one repository-scoped, expiring organization access token per request"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                organization: organization.to_owned(),
                registry_host: registry_host.to_owned(),
                label_prefix: config.label_prefix.clone(),
                username,
                secret,
                client,
                max_ttl: config.max_ttl,
                delete_expired: config.delete_expired,
                jwt: tokio::sync::Mutex::new(None),
                schedule: Schedule::new(config.cleanup_interval),
            }),
        })
    }

    /// Delete Rise's expired OATs now (what happens in the background every
    /// `cleanup_interval`). Waits for a sweep already running to finish first.
    pub async fn sweep_expired(&self) -> SweepReport {
        sweeper::sweep_now(&*self.shared).await
    }
}

#[async_trait]
impl RegistryProvider for DockerhubProvider {
    fn kind(&self) -> &'static str {
        "dockerhub"
    }

    fn registry_url(&self) -> String {
        self.shared.registry_host.clone()
    }

    fn repository_path(&self, repository: &RepositoryName) -> String {
        format!("{}/{}", self.shared.organization, repository.as_str())
    }

    fn max_ttl(&self) -> Duration {
        self.shared.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let result = self.shared.issue(request).await;
        if result.is_ok() && self.shared.delete_expired {
            sweeper::sweep_soon(&self.shared);
        }
        super::warn_if_not_issued(self.kind(), &self.shared.name, request, &result);
        result
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        let result = self.shared.revoke(credential_id).await;
        match &result {
            Ok(()) => tracing::info!(
                registry = %self.shared.name,
                token_id = credential_id,
                "dockerhub organization access token revoked"
            ),
            Err(e) => tracing::warn!(
                registry = %self.shared.name,
                token_id = %credential_id.chars().take(40).collect::<String>(),
                error = %e,
                "dockerhub organization access token not revoked"
            ),
        }
        result
    }
}

impl Shared {
    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let repository = request.repository.as_str();
        if repository.contains('/') {
            return Err(ProviderError::Unsupported(format!(
                "Docker Hub repositories are one name below the organization; {repository:?} has a '/'"
            )));
        }
        let path = format!("{}/{}", self.organization, repository);
        let ttl = request.ttl.min(self.max_ttl);
        // Whole seconds, rounded down: never longer than asked.
        let requested_expiry = floor_to_second(SystemTime::now() + ttl);
        let scopes = scopes_for(request.actions);
        let label = upstream::truncate(
            &format!(
                "{} {}/{} {}",
                self.label_prefix, self.name, request.project, request.request_id
            ),
            MAX_LABEL_LEN,
        );
        let description = upstream::truncate(
            &format!(
                "Rise {}/{} ({}) for {} of issuer {}, request {}",
                request.registry,
                request.project,
                request.actions,
                request.principal.subject,
                request.principal.issuer,
                request.request_id
            ),
            MAX_DESCRIPTION_LEN,
        );
        let body = CreateOat {
            label: &label,
            description: &description,
            resources: vec![Resource {
                kind: "TYPE_REPO".into(),
                path: path.clone(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            }],
            expires_at: crate::audit::rfc3339_seconds(requested_expiry),
        };
        let created = self.create(&body).await?;
        let expires_at = self.check_expiry(&created, requested_expiry).await?;
        // A reply that names other resources or scopes than asked got more: taken back.
        // One that names none cannot prove the restriction: reported unscoped.
        let repository_scoped = match created.resources.as_deref() {
            None | Some([]) => false,
            Some(resources) if confirms_scope(Some(resources), &path, &scopes) => true,
            Some(resources) => {
                let granted = resources
                    .iter()
                    .map(|r| format!("{} {} {}", r.kind, r.path, r.scopes.join(",")))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(self
                    .take_back(
                        &created.id,
                        format!(
                            "Docker Hub minted a token for {:?} where {path} ({}) was asked",
                            upstream::truncate(&granted, 200),
                            scopes.join(",")
                        ),
                    )
                    .await);
            }
        };
        if !repository_scoped {
            tracing::warn!(
                registry = %self.name,
                request_id = %request.request_id,
                requested = %path,
                "Docker Hub did not confirm the repository restriction; reporting the token as not repository-scoped"
            );
        }
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            // Docker documents the organization name as the user name for an OAT.
            username: self.organization.clone(),
            password: created.token,
            expires_at,
            repository: path,
            granted_actions: if repository_scoped {
                request.actions
            } else {
                Actions::PUSH_PULL
            },
            repository_scoped,
            revocable: true,
            expiry_enforced: true,
            credential_id: Some(created.id),
        })
    }

    /// Create the OAT; after a 4xx that may be the organization's token limit, sweep Rise's
    /// expired tokens and, if any went (or another sweep finished meanwhile), try once more.
    async fn create(&self, body: &CreateOat<'_>) -> Result<CreatedOat, ProviderError> {
        let mut swept = false;
        loop {
            let seen = sweeper::sweep_mark(self);
            let reply = self
                .call(api::CREATE_OPERATION, |client, jwt| {
                    let body = &body;
                    async move { client.create(&jwt, body).await }
                })
                .await?;
            if matches!(reply.status, StatusCode::CREATED | StatusCode::OK) {
                let created: CreatedOat = api::parse_json(api::CREATE_OPERATION, &reply)?;
                if created.token.expose_secret().trim().is_empty()
                    || !api::valid_token_id(&created.id)
                {
                    return Err(ProviderError::Upstream {
                        operation: api::CREATE_OPERATION,
                        detail: format!("HTTP {} without a usable token or id", reply.status),
                    });
                }
                return Ok(created);
            }
            let may_be_limit =
                matches!(reply.status, StatusCode::BAD_REQUEST | StatusCode::CONFLICT);
            if may_be_limit && self.delete_expired && !swept {
                swept = true;
                // Another request's sweep, if one finished since this create was sent.
                let swept = sweeper::sweep_unless_done_since(self, seen).await;
                if swept.report.deleted > 0 {
                    tracing::info!(registry = %self.name, deleted = swept.report.deleted, own_sweep = swept.own, "retrying the create after deleting expired organization access tokens");
                    continue;
                }
            }
            let mut e = api::status_error(api::CREATE_OPERATION, &reply, &[]);
            if let ProviderError::Upstream { detail, .. } = &mut e
                && may_be_limit
            {
                detail.push_str(" (a repository that does not exist in the organization, or the organization's limit on access tokens: 10 on Docker Team, 100 on Docker Business, expired ones included until deleted)");
            }
            return Err(e);
        }
    }

    /// The expiry to report, from Docker Hub's reply. A token that never expires or outlives
    /// the request is deleted and refused.
    async fn check_expiry(
        &self,
        created: &CreatedOat,
        requested: SystemTime,
    ) -> Result<SystemTime, ProviderError> {
        let granted = created.expires_at.as_deref().map(api::parse_time);
        let problem = match granted {
            None => "Docker Hub minted a token that never expires".to_owned(),
            Some(None) => "Docker Hub replied with an unreadable expires_at".to_owned(),
            Some(Some(at)) if at > requested + EXPIRY_SLACK => format!(
                "Docker Hub minted a token expiring at {}, later than the {} asked for",
                crate::audit::rfc3339_seconds(at),
                crate::audit::rfc3339_seconds(requested)
            ),
            Some(Some(at)) => return Ok(at),
        };
        Err(self.take_back(&created.id, problem).await)
    }

    /// Delete the token just minted, because of `problem`; the error to return.
    async fn take_back(&self, id: &str, problem: String) -> ProviderError {
        let deleted = self.delete(id).await;
        ProviderError::Upstream {
            operation: api::CREATE_OPERATION,
            detail: format!(
                "{problem} (id {id}); {}",
                match deleted {
                    Ok(_) => "it was deleted".to_owned(),
                    Err(e) => format!("deleting it failed, delete it by hand: {e}"),
                }
            ),
        }
    }

    async fn revoke(&self, id: &str) -> Result<(), ProviderError> {
        if !api::valid_token_id(id) {
            return Err(ProviderError::Unsupported(format!(
                "{:?} is not a Docker Hub access token id",
                id.chars().take(40).collect::<String>()
            )));
        }
        let reply = self
            .call(api::GET_OPERATION, |client, jwt| async move {
                client.one(Method::GET, &jwt, id).await
            })
            .await?;
        match reply.status {
            StatusCode::OK => {}
            // Already deleted (or never existed): nothing can use it.
            StatusCode::NOT_FOUND => return Ok(()),
            _ => return Err(api::status_error(api::GET_OPERATION, &reply, &[])),
        }
        let info: OatInfo = api::parse_json(api::GET_OPERATION, &reply)?;
        if !self.is_rise_label(info.label.as_deref()) {
            return Err(ProviderError::Unsupported(format!(
                "access token {id} of organization {} was not created by this Rise registry (its label does not start with \"{}\"); delete it in Docker Home if it must go",
                self.organization,
                self.own_label_start()
            )));
        }
        self.delete(id).await.map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<Deleted, ProviderError> {
        let reply = self
            .call(api::DELETE_OPERATION, |client, jwt| async move {
                client.one(Method::DELETE, &jwt, id).await
            })
            .await?;
        match reply.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Deleted::Now),
            StatusCode::NOT_FOUND => Ok(Deleted::NotFound),
            _ => Err(api::status_error(api::DELETE_OPERATION, &reply, &[])),
        }
    }

    /// One authenticated call with the shared JWT; a 401 drops the JWT and retries once with a
    /// fresh sign-in (Docker Hub may end a JWT before its `exp`).
    async fn call<'a, F, Fut>(
        &'a self,
        operation: &'static str,
        f: F,
    ) -> Result<Reply, ProviderError>
    where
        F: Fn(&'a HubClient, SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<Reply, ProviderError>> + 'a,
    {
        let jwt = self.jwt().await?;
        let reply = f(&self.client, jwt.clone()).await?;
        if reply.status != StatusCode::UNAUTHORIZED {
            return Ok(reply);
        }
        tracing::debug!(registry = %self.name, operation, "Docker Hub refused the cached sign-in; signing in again");
        self.forget_jwt(&jwt).await;
        let jwt = self.jwt().await?;
        f(&self.client, jwt).await
    }

    /// The shared sign-in JWT, signing in when there is none or it is about to expire. Callers
    /// wait on one sign-in rather than each making their own.
    async fn jwt(&self) -> Result<SecretString, ProviderError> {
        let mut cached = self.jwt.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let secret = self.secret.current().await;
        let signed_in = self.client.sign_in(&self.username, &secret).await?;
        let token = signed_in.token.clone();
        *cached = Some(CachedJwt {
            token: signed_in.token,
            renew_at: Instant::now() + jwt_use_for(signed_in.expires_at, SystemTime::now()),
        });
        Ok(token)
    }

    /// Drop `used` from the cache unless another caller already replaced it.
    async fn forget_jwt(&self, used: &SecretString) {
        let mut cached = self.jwt.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == used.expose_secret())
        {
            *cached = None;
        }
    }

    fn own_label_start(&self) -> String {
        format!("{} {}/", self.label_prefix, self.name)
    }

    fn is_rise_label(&self, label: Option<&str>) -> bool {
        label.is_some_and(|l| l.starts_with(&self.own_label_start()))
    }
}

impl Sweep for Shared {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// List Rise's OATs and delete the expired ones, within the sweep's bounds.
    async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let now = SystemTime::now();
        let mut expired = Vec::new();
        for page in 1..=SWEEP_MAX_PAGES {
            let listed = self
                .call(api::LIST_OPERATION, |client, jwt| async move {
                    client.list(&jwt, page).await
                })
                .await
                .and_then(|reply| {
                    if reply.status == StatusCode::OK {
                        api::parse_json::<OatPage>(api::LIST_OPERATION, &reply)
                    } else {
                        Err(api::status_error(api::LIST_OPERATION, &reply, &[]))
                    }
                });
            let listed = match listed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(registry = %self.name, error = %e, "cleanup of expired organization access tokens stopped");
                    return report;
                }
            };
            for token in &listed.results {
                if !self.is_rise_label(token.label.as_deref()) {
                    continue;
                }
                match token.expires_at.as_deref().and_then(api::parse_time) {
                    Some(at) if at <= now && api::valid_token_id(&token.id) => {
                        expired.push(token.id.clone());
                    }
                    _ => report.kept += 1,
                }
            }
            if listed.next.as_deref().is_none_or(str::is_empty) || listed.results.is_empty() {
                break;
            }
        }
        for id in expired.iter().take(SWEEP_MAX_DELETES) {
            match self.delete(id).await {
                Ok(_) => report.deleted += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(registry = %self.name, token_id = %id, error = %e, "expired organization access token not deleted");
                    if matches!(
                        e,
                        ProviderError::Timeout { .. } | ProviderError::Misconfigured(_)
                    ) {
                        break;
                    }
                }
            }
        }
        if report.deleted > 0 || report.failed > 0 {
            tracing::info!(
                registry = %self.name,
                deleted = report.deleted,
                failed = report.failed,
                kept = report.kept,
                "cleanup of expired organization access tokens"
            );
        }
        report
    }
}

/// `pull` -> `scope-image-pull`; `push` adds `scope-image-push` (which includes pull; both are
/// sent so the reply can be checked against exactly what was asked).
fn scopes_for(actions: Actions) -> Vec<&'static str> {
    if actions.contains(Action::Push) {
        vec![SCOPE_PULL, SCOPE_PUSH]
    } else {
        vec![SCOPE_PULL]
    }
}

/// True when the reply's resources are exactly one repository resource for `path` whose
/// scopes are among `asked` and still grant the strongest one asked.
fn confirms_scope(resources: Option<&[Resource]>, path: &str, asked: &[&str]) -> bool {
    let [only] = resources.unwrap_or_default() else {
        return false;
    };
    let strongest = asked.last().copied().unwrap_or(SCOPE_PULL);
    only.kind == "TYPE_REPO"
        && only.path == path
        && !only.scopes.is_empty()
        && only.scopes.iter().all(|s| asked.contains(&s.as_str()))
        && only.scopes.iter().any(|s| s == strongest)
}

fn floor_to_second(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

async fn credential(
    name: &str,
    config: &DockerhubConfig,
) -> Result<(String, Secret), ProviderError> {
    let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
    let username = account::username(
        name,
        config.username.as_deref(),
        &format!("an owner of organization {}", config.organization.trim()),
    )
    .map_err(bad)?;
    let (key, source) = match (&config.password, &config.access_token) {
        (Some(p), None) => ("password", Some(p)),
        (None, Some(t)) => ("access_token", Some(t)),
        (Some(_), Some(_)) => {
            return Err(bad("give one of password and access_token, not both".into()));
        }
        (None, None) => ("password", None),
    };
    let env_prefix = account::env_prefix(name);
    let secret = account::secret(
        name,
        key,
        source,
        config.secret_refresh_interval,
        &format!(" (or access_token / {env_prefix}ACCESS_TOKEN for a personal access token)"),
    )
    .await
    .map_err(bad)?;
    Ok((username, secret))
}

/// Docker Hub's API URL: https (unless `insecure_http`), a host, no credentials, no query.
fn parse_api_url(raw: &str, insecure_http: bool) -> Result<Url, String> {
    let url = upstream::endpoint_url(
        "api_url",
        raw,
        insecure_http,
        Some("https://hub.docker.com"),
    )?;
    Ok(url)
}

/// Docker Hub namespaces: lowercase letters and digits, with `-`, `_` or `.` inside.
fn validate_organization(org: &str) -> Result<(), String> {
    let ok = !org.is_empty()
        && org.len() <= 255
        && org.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && org
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "organization {:?} must be a Docker Hub namespace: lowercase letters and digits (and '-', '_', '.')",
            org.chars().take(80).collect::<String>()
        ))
    }
}

/// A host with an optional port, as it appears in an image reference.
fn validate_registry_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "registry_host {:?} must be a host name (and port), e.g. docker.io",
            host.chars().take(80).collect::<String>()
        ))
    }
}

fn validate_label_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 20
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("label_prefix must be 1-20 letters, digits, '-', '_' or '.'".into())
    }
}

/// How long a sign-in JWT expiring at `expires_at` is used from `now`: until
/// [`JWT_REFRESH_MARGIN`] before its `exp`. That `exp` is read unverified, so a far-future one
/// is held at most as long as any upstream token.
fn jwt_use_for(expires_at: SystemTime, now: SystemTime) -> Duration {
    let remaining = expires_at.duration_since(now).unwrap_or_default();
    upstream::cache_lifetime(remaining.as_secs()).saturating_sub(JWT_REFRESH_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> DockerhubConfig {
        toml::from_str(toml_text).expect("valid test config")
    }

    async fn provider(toml_text: &str) -> Result<DockerhubProvider, String> {
        DockerhubProvider::build("default", &config(toml_text))
            .await
            .map_err(|e| e.to_string())
    }

    const BASE: &str = "organization = \"myorg\"\nusername = \"owner\"\n";

    #[test]
    fn a_sign_in_is_used_until_shortly_before_its_exp_and_never_past_a_day() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(jwt_use_for(now + hour, now), hour - JWT_REFRESH_MARGIN);
        assert_eq!(jwt_use_for(now, now), Duration::ZERO);
        assert_eq!(jwt_use_for(now - hour, now), Duration::ZERO);
        // An unverified `exp` years away buys no more than a day.
        let years = Duration::from_secs(10 * 365 * 24 * 3600);
        assert_eq!(
            jwt_use_for(now + years, now),
            upstream::LONGEST_TOKEN_CACHE - JWT_REFRESH_MARGIN
        );
    }

    #[tokio::test]
    async fn defaults_and_repository_path() {
        let p = provider(&format!("{BASE}password = \"pw\"\n"))
            .await
            .expect("valid");
        assert_eq!(p.registry_url(), "docker.io");
        assert_eq!(p.max_ttl(), Duration::from_secs(12 * 3600));
        let repo = RepositoryName::parse("my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "myorg/my-app");
        assert_eq!(p.kind(), "dockerhub");
    }

    #[tokio::test]
    async fn configuration_errors_name_what_to_set() {
        for (extra, part) in [
            ("", "RISE_REGISTRY__PASSWORD"),
            ("password = \"\"\n", "password is empty"),
            ("access_token = \" \"\n", "access_token is empty"),
            ("password = \"p\"\naccess_token = \"t\"\n", "not both"),
            ("password = \"p\"\nmax_ttl = \"0s\"\n", "max_ttl"),
            ("password = \"p\"\nmax_ttl = \"400days\"\n", "365 days"),
            (
                "password = \"p\"\napi_url = \"http://127.0.0.1:1\"\n",
                "clear text",
            ),
            ("password = \"p\"\nlabel_prefix = \"a b\"\n", "label_prefix"),
            (
                "password = \"p\"\nregistry_host = \"https://docker.io\"\n",
                "registry_host",
            ),
        ] {
            let e = provider(&format!("{BASE}{extra}")).await.expect_err(extra);
            assert!(e.contains(part), "{extra:?}: {e}");
        }
        let e = provider("organization = \"MyOrg\"\nusername = \"u\"\npassword = \"p\"\n")
            .await
            .expect_err("uppercase");
        assert!(e.contains("organization"), "{e}");
        let e = provider("organization = \"myorg\"\npassword = \"p\"\n")
            .await
            .expect_err("no user");
        assert!(e.contains("RISE_REGISTRY__USERNAME"), "{e}");
        let e = DockerhubProvider::build(
            "hub",
            &config("organization = \"myorg\"\nusername = \"u\"\n"),
        )
        .await
        .expect_err("named registry")
        .to_string();
        assert!(e.contains("RISE_REGISTRIES__HUB__PASSWORD"), "{e}");
        let e = DockerhubProvider::build(
            "a-registry-name-so-long-that-labels-would-lose-it",
            &config(&format!("{BASE}password = \"p\"\n")),
        )
        .await
        .expect_err("long name")
        .to_string();
        assert!(e.contains("label_prefix and the registry name"), "{e}");
    }

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let p = provider(&format!("{BASE}password = \"hunter2-password\"\n"))
            .await
            .expect("valid");
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2-password"), "{shown}");
        let c = config(&format!("{BASE}access_token = \"dckr_pat_secretvalue\"\n"));
        assert!(!format!("{c:?}").contains("dckr_pat_secretvalue"));
    }

    #[test]
    fn create_body_is_the_documented_shape() {
        let body = CreateOat {
            label: "rise default/my-app req-1",
            description: "Rise default/my-app (pull,push) for alice",
            resources: vec![Resource {
                kind: "TYPE_REPO".into(),
                path: "myorg/my-app".into(),
                scopes: scopes_for(Actions::PUSH_PULL)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            }],
            expires_at: crate::audit::rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(1_653_008_058),
            )
            .to_string(),
        };
        assert_eq!(
            serde_json::to_value(&body).expect("json"),
            serde_json::json!({
                "label": "rise default/my-app req-1",
                "description": "Rise default/my-app (pull,push) for alice",
                "resources": [{
                    "type": "TYPE_REPO",
                    "path": "myorg/my-app",
                    "scopes": ["scope-image-pull", "scope-image-push"],
                }],
                "expires_at": "2022-05-20T00:54:18Z",
            })
        );
        assert_eq!(scopes_for(Actions::PULL), vec![SCOPE_PULL]);
    }

    #[test]
    fn scope_confirmation() {
        let r = |path: &str, scopes: &[&str]| Resource {
            kind: "TYPE_REPO".into(),
            path: path.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        };
        let push = [SCOPE_PULL, SCOPE_PUSH];
        let pull = [SCOPE_PULL];
        assert!(confirms_scope(Some(&[r("o/a", &push)]), "o/a", &push));
        // Push alone includes pull.
        assert!(confirms_scope(
            Some(&[r("o/a", &[SCOPE_PUSH])]),
            "o/a",
            &push
        ));
        assert!(confirms_scope(Some(&[r("o/a", &pull)]), "o/a", &pull));
        assert!(!confirms_scope(None, "o/a", &pull));
        assert!(!confirms_scope(Some(&[]), "o/a", &pull));
        assert!(!confirms_scope(Some(&[r("o/*", &pull)]), "o/a", &pull));
        assert!(!confirms_scope(Some(&[r("o/a", &push)]), "o/a", &pull));
        assert!(!confirms_scope(Some(&[r("o/a", &pull)]), "o/a", &push));
        assert!(!confirms_scope(
            Some(&[r("o/a", &pull), r("o/b", &pull)]),
            "o/a",
            &pull
        ));
        let mut org = r("o/a", &pull);
        org.kind = "TYPE_ORG".into();
        assert!(!confirms_scope(Some(&[org]), "o/a", &pull));
    }

    #[test]
    fn expiry_is_rounded_down() {
        let t = UNIX_EPOCH + Duration::from_millis(1_653_008_058_999);
        assert_eq!(
            floor_to_second(t),
            UNIX_EPOCH + Duration::from_secs(1_653_008_058)
        );
    }
}

/// Docker Hub configurations through the real configuration loader.
#[cfg(test)]
mod seed_config_tests {
    use super::*;
    use crate::config::Config;
    use crate::config::test_support::{load, value};
    use crate::registry::providers::ProviderConfig;
    use crate::registry::providers::test_support::{assert_typo_named, secret_file};

    fn dockerhub(c: &Config) -> &DockerhubConfig {
        match &c.registry {
            Some(ProviderConfig::Dockerhub(d)) => d,
            other => panic!("expected a dockerhub registry, got {other:?}"),
        }
    }

    const TEXT: &str = "[registry]\ntype = \"dockerhub\"\norganization = \"myorg\"\n";

    #[tokio::test]
    async fn credentials_from_the_environment() {
        let c = load(
            TEXT,
            &[
                ("RISE_REGISTRY__USERNAME", "owner"),
                ("RISE_REGISTRY__PASSWORD", "from-vault"),
                ("RISE_REGISTRY__MAX_TTL", "2h"),
                ("RISE_REGISTRY__DELETE_EXPIRED", "false"),
            ],
        )
        .expect("loads with env credentials");
        let d = dockerhub(&c);
        assert_eq!(d.username.as_deref(), Some("owner"));
        assert_eq!(value(d.password.as_ref()), Some("from-vault"));
        assert_eq!(d.max_ttl, Duration::from_secs(7200));
        assert!(!d.delete_expired);
        assert_eq!(d.api_url, "https://hub.docker.com");
        let p = DockerhubProvider::from_config("default", d)
            .await
            .expect("valid provider");
        assert_eq!(p.registry_url(), "docker.io");
        assert_eq!(
            c.registry.as_ref().map(ProviderConfig::kind),
            Some("dockerhub")
        );
        // Without the password the provider says which variable to set.
        let c = load(TEXT, &[("RISE_REGISTRY__USERNAME", "owner")]).expect("loads");
        let e = DockerhubProvider::from_config("default", dockerhub(&c))
            .await
            .expect_err("no password")
            .to_string();
        assert!(e.contains("RISE_REGISTRY__PASSWORD"), "{e}");
    }

    #[test]
    fn secrets_from_files() {
        let (_secret, line) = secret_file("access_token", "pat-from-file\n");
        let text = format!("{TEXT}username = \"owner\"\n{line}");
        let c = load(&text, &[]).expect("loads");
        let d = dockerhub(&c);
        assert_eq!(value(d.access_token.as_ref()), Some("pat-from-file"));
        assert!(d.password.is_none());
    }

    #[test]
    fn typo_names_the_key() {
        assert_typo_named(TEXT, "pasword", "secret-x");
    }
}
