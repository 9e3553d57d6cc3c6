//! GitHub Container Registry (`type = "ghcr"`): per-request GitHub App installation tokens
//! restricted to one GitHub repository and the Packages permission, or (clearly flagged) a
//! configured personal access token (classic) handed out as is.
//!
//! Tested against a fake GitHub REST API built from GitHub's public documentation
//! (`tests/it/support/fake_ghcr.rs`), never against GitHub or ghcr.io: the request and response
//! shapes are in `ghcr/api.rs`, with the pages they come from.
//!
//! # What GitHub documents, and what Rise therefore promises
//!
//! - "Working with the Container registry", section "Authenticating to the Container registry"
//!   (<https://docs.github.com/en/packages/working-with-a-github-packages-registry/working-with-the-container-registry>):
//!   "GitHub Packages only supports authentication using a personal access token (classic)";
//!   in GitHub Actions workflows the `GITHUB_TOKEN` also works. Clients log in with
//!   `docker login ghcr.io -u USERNAME` and the token; `read:packages` pulls, `write:packages`
//!   pushes. "About permissions for GitHub Packages"
//!   (<https://docs.github.com/en/packages/learn-github-packages/about-permissions-for-github-packages>)
//!   adds that container packages have granular permissions, scoped to a user or an
//!   organization, and may be linked to a repository whose access they then inherit.
//! - GitHub does **not** document GitHub App installation tokens as accepted by ghcr.io, nor how
//!   ghcr.io would apply an installation token's repository restriction. A GitHub Support
//!   answer that Packages does not accept App tokens is quoted in
//!   <https://github.com/snok/container-retention-policy/issues/94> (see also the
//!   documentation request <https://github.com/github/docs/issues/9547>); public reports
//!   disagree with each other (a push reported to work with user name `x-access-token`:
//!   <https://github.com/Logflare/logflare/pull/3622>; a pull of a repository-linked package
//!   that is denied: <https://github.com/jikig-ai/soleur/issues/6073>). Verify `mode = "app"`
//!   against your own packages before relying on it.
//!
//! So Rise promises no more than GitHub documents:
//!
//! - `mode = "app"`: each request mints an installation token with `repositories = [<the
//!   project's GitHub repository>]` and `permissions = {packages: read}` (pull) or `{packages:
//!   write}` (push). GitHub enforces that restriction for its REST API; a reply that echoes
//!   anything wider (another repository, every repository, another permission, a higher level)
//!   is revoked at once and refused. The credential is still reported `repository_scoped:
//!   false`: ghcr.io's handling of App tokens is undocumented, and one GitHub repository may be
//!   linked to several packages. `granted_actions` is what GitHub echoes (`read` = pull, `write`
//!   = pull and push).
//! - `mode = "static"`: the configured classic PAT and its owner's user name go to every
//!   caller. It reaches everything its scopes and its user reach (a classic PAT cannot be
//!   limited to one package or repository), does not expire by Rise's doing and cannot be
//!   revoked by Rise:
//!   `repository_scoped: false`, `revocable: false`, `expiry_enforced: false`, and the reported
//!   expiry is nominal. Rise logs this at start-up; the HTTP layer warns callers.
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "ghcr"
//! owner = "acme"                   # the organization or user owning the packages
//!
//! # mode = "app" (the default when app_id or private_key is set)
//! app_id = "123456"                # the App's application ID or client ID (the JWT's `iss`)
//! installation_id = 7654321        # the App's installation on `owner`
//! private_key_file = "/run/secrets/rise-ghcr-app.pem"   # or private_key = "..."
//! github_repository = "{repository}"   # the repository a project's package is linked to
//!
//! # mode = "static" (the default when token is set)
//! # username = "acme-bot"          # the PAT's owner
//! # token_file = "/run/secrets/ghcr-classic-pat"
//! ```
//!
//! `private_key` and `token` may also be `aws-secretsmanager:<name-or-arn>[#json-key]`
//! references (see [`crate::secrets`]), re-read every `secret_refresh_interval` (5m).
//!
//! Other keys: `app_username` (the user name clients log in with in app mode, default
//! `x-access-token`: GitHub's documented user name for installation tokens over HTTPS Git,
//! <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/authenticating-as-a-github-app-installation>;
//! ghcr.io does not document one), `api_url` (default `https://api.github.com`; GitHub
//! Enterprise Server: `https://HOST/api/v3`), `registry_host` (default `ghcr.io`; GHES:
//! `containers.HOST`), `max_ttl` (default and, in app mode, at most 1h), `request_timeout`
//! (10s), `connect_timeout` (5s), `insecure_http` (allow an `http://` `api_url`; tests only).
//!
//! `github_repository` may use `{project}` and `{repository}` (the project's repository name);
//! the result must be a GitHub repository name (letters, digits, `-`, `_`, `.`), so a nested
//! repository name such as `team/app` needs a template without `{repository}`. Images are
//! `<registry_host>/<owner, lowercased>/<repository>`.
//!
//! # Lifetime, refresh, revocation
//!
//! GitHub's installation tokens expire one hour after they are created, and GitHub offers no
//! shorter lifetime. Rise reports GitHub's `expires_at` (and `expiry_enforced: true`) when the
//! request's TTL covers it (within a minute, counted on Rise's clock from before the call; an
//! `expires_at` later than GitHub's documented hour, e.g. from clock skew, is taken as GitHub
//! says and cut to the TTL like any other). When the caller asked for less, Rise keeps the
//! token in memory (a [`SecretString`], never written anywhere) and revokes it at the asked
//! time with `DELETE /installation/token`, retrying briefly; the credential then reports the
//! asked expiry with `expiry_enforced: false`, because that end is Rise's doing, not
//! GitHub's: if Rise stops or restarts first, or GitHub cannot be reached, the token lives on
//! until GitHub's own expiry, one hour at most after it was minted.
//!
//! Rise does not keep these in-memory tokens in any store, so the scheduled revocations of one
//! replica are invisible to others and die with it; nothing else about a minted token is kept
//! (the audit log records the issue, not the token).
//!
//! Tokens are not refreshable: clients ask Rise again. GitHub revokes an installation token
//! only when presented with the token itself, and Rise stores no minted token, so
//! [`RegistryProvider::revoke`] (`rise-backend grants revoke --credential`) is unsupported and
//! `revocable` is false. To cut every token off at once, suspend the App's installation: GitHub
//! then blocks the App from the account's resources
//! (<https://docs.github.com/en/apps/maintaining-github-apps/suspending-a-github-app-installation>).
//!
//! # Least-privilege GitHub setup
//!
//! Register a GitHub App used by Rise only, with the repository permission Packages (read and
//! write) and nothing else (GitHub adds Metadata: read to every App); install it on `owner` for
//! only the repositories whose packages Rise hands out; keep its private key in a secret store,
//! and rotate it (GitHub allows several keys per App). Link each package to its repository.
//! For static mode, create a dedicated machine user with access to the packages only, and a
//! classic PAT with `read:packages` (and `write:packages` for pushes) and an expiry.
//!
//! # Failures
//!
//! Every call is bounded (`connect_timeout`, `request_timeout`). Timeouts are
//! [`ProviderError::Timeout`] (504). GitHub's 401 (JWT refused), 403 (forbidden), 404 (no such
//! installation) and 422 (repository or permission not in the installation) are
//! [`ProviderError::Misconfigured`] (502) naming what to check; rate limits, other statuses and
//! malformed replies are [`ProviderError::Upstream`] (502). Upstream bodies are summarised with
//! secrets redacted and only ever logged. The private key, the App JWT and minted tokens are
//! [`SecretString`]s: they appear in no log, error or `Debug` output.

mod api;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use self::api::{CreateTokenBody, GitHubClient, InstallationToken};
use crate::config::lenient;
use crate::registry::providers::{account, upstream};
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
};
use crate::secrets::{Secret, SecretResolver, SecretSource};

/// The `[registry]` table with `type = "ghcr"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GhcrConfig {
    /// The organization or user that owns the packages (`ghcr.io/<owner>/...`).
    pub owner: String,
    /// Default: `app` with `app_id`/`private_key`, `static` with `token`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The App's application ID or client ID (a number or a string).
    #[serde(default, deserialize_with = "string_or_number")]
    pub app_id: Option<String>,
    #[serde(default, deserialize_with = "optional_u64")]
    pub installation_id: Option<u64>,
    /// The App's private key (PEM). A value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub private_key: Option<SecretSource>,
    /// Template of the GitHub repository a project's package is linked to.
    #[serde(default = "defaults::github_repository")]
    pub github_repository: String,
    #[serde(default = "defaults::app_username")]
    pub app_username: String,
    /// Static mode: the login of the PAT's owner.
    #[serde(default)]
    pub username: Option<String>,
    /// Static mode: a personal access token (classic). A value or an `aws-secretsmanager:`
    /// reference.
    #[serde(default)]
    pub token: Option<SecretSource>,
    #[serde(default = "defaults::api_url")]
    pub api_url: String,
    #[serde(default = "defaults::registry_host")]
    pub registry_host: String,
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Allow an `http://` `api_url`: the App JWT and tokens then cross the network in clear.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

/// How callers get credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Mint a GitHub App installation token per request.
    App,
    /// Hand out the configured personal access token (classic).
    Static,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, request_timeout, secret_refresh_interval,
    };
    use std::time::Duration;

    pub fn github_repository() -> String {
        "{repository}".into()
    }
    pub fn app_username() -> String {
        "x-access-token".into()
    }
    pub fn api_url() -> String {
        "https://api.github.com".into()
    }
    pub fn registry_host() -> String {
        "ghcr.io".into()
    }
    pub fn max_ttl() -> Duration {
        super::TOKEN_LIFETIME
    }
}

/// GitHub's installation token lifetime, which it does not let callers shorten.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A token GitHub ends at most this long after the asked TTL is left to expire on its own.
const EXPIRY_GRACE: Duration = Duration::from_secs(60);
/// Retries of a scheduled revocation (after the first attempt), and the pause before each.
const REVOKE_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
];
/// A permission every GitHub App holds (read-only), harmless when echoed back.
const METADATA_PERMISSION: &str = "metadata";
const PACKAGES_PERMISSION: &str = "packages";

/// The GHCR provider. Holds its secrets; its `Debug` shows none of them.
#[derive(Debug)]
pub struct GhcrProvider {
    /// The registry's configured name, for log lines and errors.
    name: String,
    /// `owner` lowercased, as image references need it.
    image_owner: String,
    registry_host: String,
    max_ttl: Duration,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    App(AppMinter),
    Static { username: String, token: Secret },
}

#[derive(Debug)]
struct AppMinter {
    app_id: String,
    installation_id: u64,
    private_key: Secret,
    repository_template: String,
    username: String,
    api: GitHubClient,
}

impl GhcrProvider {
    /// Validate `config` and build the provider; `aws-secretsmanager:` references are read now,
    /// with the AWS SDK's default credential chain. `name` is the registry's configured name.
    pub async fn from_config(name: &str, config: &GhcrConfig) -> anyhow::Result<Self> {
        let resolver = account::resolver_for(
            config.secret_refresh_interval,
            [&config.private_key, &config.token].into_iter().flatten(),
        )
        .await;
        Ok(Self::with_secrets(name, config, &resolver).await?)
    }

    /// As [`from_config`](Self::from_config), reading references with `secrets`.
    pub async fn with_secrets(
        name: &str,
        config: &GhcrConfig,
        secrets: &SecretResolver,
    ) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let owner = config.owner.trim();
        if !valid_owner(owner) {
            return Err(bad(format!(
                "owner {:?} is not a GitHub user or organization name (1-39 letters, digits and single '-' inside)",
                upstream::truncate(owner, 60)
            )));
        }
        let registry_host = config.registry_host.trim();
        if !valid_host(registry_host) {
            return Err(bad(format!(
                "registry_host {:?} must be a host name with an optional port, such as ghcr.io",
                upstream::truncate(registry_host, 80)
            )));
        }
        let api_base = parse_api_url(&config.api_url, config.insecure_http).map_err(bad)?;
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
        ])
        .map_err(bad)?;
        let app_keys = config.app_id.is_some()
            || config.installation_id.is_some()
            || config.private_key.is_some();
        let static_keys = config.token.is_some() || config.username.is_some();
        let mode = match (config.mode, app_keys, static_keys) {
            (_, true, true) => {
                return Err(bad(
                    "give either a GitHub App (app_id, installation_id, private_key) or a static token (username, token), not both"
                        .into(),
                ));
            }
            (Some(mode), _, _) => mode,
            (None, true, false) => Mode::App,
            (None, false, true) => Mode::Static,
            (None, false, false) => {
                return Err(bad(
                    "configure a GitHub App (app_id, installation_id, private_key or private_key_file) or mode = \"static\" with username and token"
                        .into(),
                ));
            }
        };
        let resolve = |key: &'static str, value: &Option<SecretSource>| {
            let value = value.clone();
            async move {
                let Some(source) = value else {
                    return Err(bad(format!(
                        "{key} is required in {} mode (or {key}_file, or {}{})",
                        mode_name(mode),
                        account::env_prefix(name),
                        key.to_ascii_uppercase()
                    )));
                };
                account::resolve_nonblank(secrets, key, &source, "")
                    .await
                    .map_err(bad)
            }
        };
        let backend = match mode {
            Mode::App => {
                if static_keys {
                    return Err(bad(
                        "username and token belong to mode = \"static\"; an App mints its own tokens"
                            .into(),
                    ));
                }
                let app_id = config
                    .app_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| bad("app_id is required in app mode".into()))?;
                // Client IDs of older Apps have a dot (`Iv1.8a61f9b3a7aba766`).
                if !app_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.')
                    || app_id.len() > 64
                {
                    return Err(bad(
                        "app_id must be the App's application ID or client ID (letters, digits and dots)"
                            .into(),
                    ));
                }
                let installation_id = config
                    .installation_id
                    .filter(|id| *id > 0)
                    .ok_or_else(|| {
                        bad("installation_id is required in app mode (the App's installation on owner)".into())
                    })?;
                let private_key = resolve("private_key", &config.private_key).await?;
                // Sign once now, so a wrong key stops the start, not the first request.
                api::sign_app_jwt(app_id, &private_key.current().await, SystemTime::now())
                    .map_err(bad)?;
                validate_repository_template(&config.github_repository).map_err(bad)?;
                if config.app_username.trim().is_empty() {
                    return Err(bad("app_username must not be empty".into()));
                }
                if config.max_ttl > TOKEN_LIFETIME {
                    return Err(bad(
                        "max_ttl cannot exceed 1h in app mode: GitHub's installation tokens live one hour"
                            .into(),
                    ));
                }
                let api =
                    GitHubClient::new(api_base, config.connect_timeout, config.request_timeout)?;
                Backend::App(AppMinter {
                    app_id: app_id.to_owned(),
                    installation_id,
                    private_key,
                    repository_template: config.github_repository.clone(),
                    username: config.app_username.trim().to_owned(),
                    api,
                })
            }
            Mode::Static => {
                if app_keys {
                    return Err(bad(
                        "app_id, installation_id and private_key belong to mode = \"app\"".into(),
                    ));
                }
                let username = config
                    .username
                    .as_deref()
                    .map(str::trim)
                    .filter(|u| valid_owner(u))
                    .ok_or_else(|| {
                        bad(format!(
                            "username (the GitHub login owning the token) is required in static mode (or {}USERNAME)",
                            account::env_prefix(name)
                        ))
                    })?
                    .to_owned();
                let token = resolve("token", &config.token).await?;
                Backend::Static { username, token }
            }
        };
        let provider = Self {
            name: name.to_owned(),
            image_owner: owner.to_ascii_lowercase(),
            registry_host: registry_host.to_owned(),
            max_ttl: config.max_ttl,
            backend,
        };
        provider.log_posture();
        Ok(provider)
    }

    fn log_posture(&self) {
        match &self.backend {
            Backend::Static { .. } => tracing::warn!(
                registry = %self.name,
                "ghcr registry in static mode: callers receive the configured personal access token, which is not limited to one repository, does not expire by Rise's doing (the reported expiry is nominal) and cannot be revoked by Rise"
            ),
            Backend::App(_) => tracing::warn!(
                registry = %self.name,
                "ghcr registry in app mode: tokens are restricted by GitHub to one repository and the Packages permission, but GitHub documents only personal access tokens (classic) and GITHUB_TOKEN for ghcr.io; credentials are reported as not repository-scoped"
            ),
        }
    }

    fn issue_static(
        &self,
        username: &str,
        token: SecretString,
        path: String,
        ttl: Duration,
    ) -> IssuedCredential {
        IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: username.to_owned(),
            password: token,
            // Nominal: the token itself does not end then (see the module documentation).
            expires_at: SystemTime::now() + ttl,
            repository: path,
            granted_actions: Actions::PUSH_PULL,
            repository_scoped: false,
            revocable: false,
            expiry_enforced: false,
            credential_id: None,
        }
    }

    async fn issue_app(
        &self,
        app: &AppMinter,
        request: &CredentialRequest,
        path: String,
        ttl: Duration,
    ) -> Result<IssuedCredential, ProviderError> {
        let repository = expand_repository(&app.repository_template, request)
            .map_err(|m| ProviderError::Unsupported(format!("registry {}: {m}", self.name)))?;
        let level = if request.actions.contains(Action::Push) {
            "write"
        } else {
            "read"
        };
        let jwt = api::sign_app_jwt(
            &app.app_id,
            &app.private_key.current().await,
            SystemTime::now(),
        )
        .map_err(|m| ProviderError::Misconfigured(format!("registry {}: {m}", self.name)))?;
        let body = CreateTokenBody {
            repositories: [repository.as_str()],
            permissions: BTreeMap::from([(PACKAGES_PERMISSION, level)]),
        };
        // GitHub counts the hour from its own issue time, after this instant: deadlines counted
        // from here are never later than the caller may have.
        let sent_at = SystemTime::now();
        let minted = app
            .api
            .create_installation_token(&jwt, app.installation_id, &body)
            .await?;
        let checked = check_reply(&minted, &repository, level, sent_at);
        let (granted_actions, github_expiry) = match checked {
            Ok(ok) => ok,
            Err(why) => {
                let revoked = app.api.revoke_installation_token(&minted.token).await;
                tracing::warn!(
                    registry = %self.name,
                    request_id = %request.request_id,
                    repository = %repository,
                    reason = %why,
                    revoked = revoked.is_ok(),
                    "GitHub returned an installation token other than asked for; it is not handed out"
                );
                return Err(ProviderError::Upstream {
                    operation: api::CREATE_OPERATION,
                    detail: format!(
                        "registry {}: {why}; {}",
                        self.name,
                        match revoked {
                            Ok(()) => "the token was revoked".to_owned(),
                            Err(e) => format!(
                                "revoking it failed ({e}); it expires by itself within an hour"
                            ),
                        }
                    ),
                });
            }
        };
        let deadline = sent_at + ttl;
        let (expires_at, expiry_enforced) = if github_expiry <= deadline + EXPIRY_GRACE {
            (github_expiry, true)
        } else {
            self.schedule_revocation(app, minted.token.clone(), deadline, github_expiry, request);
            (deadline, false)
        };
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: app.username.clone(),
            password: minted.token,
            expires_at,
            repository: path,
            granted_actions,
            // GitHub restricts the token to one repository, but does not document how ghcr.io
            // applies that restriction (see the module documentation).
            repository_scoped: false,
            revocable: false,
            expiry_enforced,
            credential_id: None,
        })
    }

    /// Revoke `token` at `deadline`, in the background; retried a few times while GitHub would
    /// still accept it. Lost when the process ends: the token then lives until `github_expiry`.
    fn schedule_revocation(
        &self,
        app: &AppMinter,
        token: SecretString,
        deadline: SystemTime,
        github_expiry: SystemTime,
        request: &CredentialRequest,
    ) {
        let api = app.api.clone();
        let registry = self.name.clone();
        let request_id = request.request_id.clone();
        tokio::spawn(async move {
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            let mut delays = REVOKE_RETRY_DELAYS.iter();
            loop {
                match api.revoke_installation_token(&token).await {
                    Ok(()) => {
                        tracing::info!(%registry, %request_id, "installation token revoked at the requested expiry");
                        return;
                    }
                    Err(e) => match delays.next() {
                        Some(delay) if SystemTime::now() + *delay < github_expiry => {
                            tracing::warn!(%registry, %request_id, error = %e, "revoking an installation token failed; retrying");
                            tokio::time::sleep(*delay).await;
                        }
                        _ => {
                            tracing::error!(%registry, %request_id, error = %e, "revoking an installation token failed; it lives until GitHub's own expiry");
                            return;
                        }
                    },
                }
            }
        });
    }
}

#[async_trait]
impl RegistryProvider for GhcrProvider {
    fn kind(&self) -> &'static str {
        "ghcr"
    }

    fn registry_url(&self) -> String {
        self.registry_host.clone()
    }

    fn repository_path(&self, repository: &crate::registry::RepositoryName) -> String {
        format!("{}/{}", self.image_owner, repository.as_str())
    }

    fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let path = self.repository_path(&request.repository);
        let ttl = request.ttl.min(self.max_ttl);
        let result = match &self.backend {
            Backend::Static { username, token } => {
                Ok(self.issue_static(username, token.current().await, path, ttl))
            }
            Backend::App(app) => self.issue_app(app, request, path, ttl).await,
        };
        super::warn_if_not_issued(self.kind(), &self.name, request, &result);
        result
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        let _ = credential_id;
        Err(ProviderError::Unsupported(match &self.backend {
            Backend::App(_) => format!(
                "registry {}: ghcr installation tokens cannot be revoked by Rise: GitHub revokes one only when presented with the token itself, and Rise keeps none; each expires within an hour of issue (suspend the App's installation to cut every token off)",
                self.name
            ),
            Backend::Static { .. } => format!(
                "registry {}: the static personal access token is shared by every caller; revoke or rotate it in GitHub's settings",
                self.name
            ),
        }))
    }
}

/// What the reply grants, or why it cannot be handed out: the actions its `packages` level
/// allows and GitHub's expiry. Only `packages` (at most the asked level), `metadata: read` and
/// exactly the asked repository are accepted.
fn check_reply(
    minted: &InstallationToken,
    repository: &str,
    asked_level: &str,
    sent_at: SystemTime,
) -> Result<(Actions, SystemTime), String> {
    let Some(permissions) = &minted.permissions else {
        return Err("the reply does not say which permissions the token has".into());
    };
    let mut granted = None;
    for (name, level) in permissions {
        match (name.as_str(), level.as_str()) {
            (PACKAGES_PERMISSION, "read") => granted = Some(Actions::PULL),
            (PACKAGES_PERMISSION, "write") if asked_level == "write" => {
                granted = Some(Actions::PUSH_PULL);
            }
            (METADATA_PERMISSION, "read") => {}
            (name, level) => {
                return Err(format!(
                    "the token has permission {}: {}, beyond packages: {asked_level}",
                    upstream::truncate(name, 40),
                    upstream::truncate(level, 40)
                ));
            }
        }
    }
    let Some(granted) = granted else {
        return Err("the token has no packages permission".into());
    };
    if minted.repository_selection.as_deref() == Some("all") {
        return Err("the token reaches every repository of the installation".into());
    }
    match minted.repositories.as_deref() {
        Some([only]) if only.name.eq_ignore_ascii_case(repository) => {}
        Some(list) => {
            return Err(format!(
                "the token reaches {} repositories, not only {repository}",
                list.len()
            ));
        }
        None => return Err("the reply does not say which repositories the token reaches".into()),
    }
    let expires_at = humantime::parse_rfc3339(minted.expires_at.trim()).map_err(|_| {
        format!(
            "expires_at {:?} is not an RFC 3339 time",
            upstream::truncate(&minted.expires_at, 40)
        )
    })?;
    if expires_at <= sent_at {
        return Err("the token is already expired".into());
    }
    Ok((granted, expires_at))
}

/// The GitHub repository for `request`: the template with `{project}` and `{repository}`
/// replaced, which must be a GitHub repository name.
fn expand_repository(template: &str, request: &CredentialRequest) -> Result<String, String> {
    let name = template
        .replace("{project}", request.project.as_str())
        .replace("{repository}", request.repository.as_str());
    if valid_repository_name(&name) {
        Ok(name)
    } else {
        Err(format!(
            "{:?} (github_repository for project {}) is not a GitHub repository name: letters, digits, '-', '_' and '.' only; set github_repository to a template that gives one",
            upstream::truncate(&name, 120),
            request.project
        ))
    }
}

fn validate_repository_template(template: &str) -> Result<(), String> {
    let rest = template
        .replace("{project}", "")
        .replace("{repository}", "");
    let ok = !template.trim().is_empty()
        && template.len() <= 100
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("github_repository must be a GitHub repository name (letters, digits, '-', '_', '.') with the placeholders {project} and {repository}".into())
    }
}

fn valid_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// GitHub logins: 1-39 letters, digits and hyphens, no leading, trailing or double hyphen.
fn valid_owner(owner: &str) -> bool {
    !owner.is_empty()
        && owner.len() <= 39
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !owner.starts_with('-')
        && !owner.ends_with('-')
        && !owner.contains("--")
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `api_url` as a base ending in `/`; `http://` only with `insecure_http`.
fn parse_api_url(raw: &str, insecure_http: bool) -> Result<Url, String> {
    let mut url = upstream::endpoint_url(
        "api_url",
        raw,
        insecure_http,
        Some("https://api.github.com"),
    )?;
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::App => "app",
        Mode::Static => "static",
    }
}

/// A number or a string (TOML writes `app_id = 123`; an environment variable gives a string).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(u64),
        S(String),
    }
    Ok(Some(match V::deserialize(d)? {
        V::N(n) => n.to_string(),
        V::S(s) => s,
    }))
}

fn optional_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(u64),
        S(String),
    }
    match V::deserialize(d)? {
        V::N(n) => Ok(Some(n)),
        V::S(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("expected a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use secrecy::ExposeSecret;

    use super::*;
    use crate::auth::Principal;
    use crate::registry::{ProjectName, RepositoryName};

    /// One RSA key for every test in this module: generating one takes a while.
    pub(super) fn test_key_pem() -> &'static str {
        static PEM: OnceLock<String> = OnceLock::new();
        PEM.get_or_init(|| {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
                .expect("RSA key generation")
                .serialize_pem()
        })
    }

    fn config(text: &str) -> GhcrConfig {
        toml::from_str(text).expect("valid test config")
    }

    async fn provider(text: &str) -> Result<GhcrProvider, String> {
        GhcrProvider::from_config("default", &config(text))
            .await
            .map_err(|e| e.to_string())
    }

    fn app_config(extra: &str) -> String {
        format!(
            "owner = \"Acme\"\napp_id = 42\ninstallation_id = 7\nprivate_key = '''{}'''\n{extra}",
            test_key_pem()
        )
    }

    fn request(project: &str, repository: &str, actions: Actions) -> CredentialRequest {
        CredentialRequest {
            request_id: "req-1".into(),
            principal: Arc::new(Principal {
                issuer: "local".into(),
                issuer_url: "rise-local".into(),
                subject: "alice".into(),
                groups: vec![],
                claims: serde_json::Map::new(),
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            }),
            project: ProjectName::parse(project).expect("project"),
            registry: "default".into(),
            repository: RepositoryName::parse(repository).expect("repository"),
            actions,
            ttl: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn app_mode_defaults_and_paths() {
        let p = provider(&app_config("")).await.expect("valid");
        assert_eq!(p.registry_url(), "ghcr.io");
        assert_eq!(p.max_ttl(), Duration::from_secs(3600));
        let repo = RepositoryName::parse("my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "acme/my-app");
        let Backend::App(app) = &p.backend else {
            panic!("app mode expected");
        };
        assert_eq!(app.app_id, "42");
        assert_eq!(app.installation_id, 7);
        assert_eq!(app.username, "x-access-token");
        let shown = format!("{p:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let e = p.revoke("anything").await.expect_err("unsupported");
        assert!(
            matches!(&e, ProviderError::Unsupported(m) if m.contains("Rise keeps none")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn client_ids_of_older_apps_have_a_dot() {
        let with_id = |id: &str| {
            format!(
                "owner = \"Acme\"\napp_id = \"{id}\"\ninstallation_id = 7\nprivate_key = '''{}'''\n",
                test_key_pem()
            )
        };
        let p = provider(&with_id("Iv1.8a61f9b3a7aba766"))
            .await
            .expect("a client ID with a dot");
        let Backend::App(app) = &p.backend else {
            panic!("app mode expected");
        };
        assert_eq!(app.app_id, "Iv1.8a61f9b3a7aba766");
        for bad in ["Iv1 8a61", "Iv1/8a61", "Iv1\"x"] {
            let e = provider(&with_id(&bad.replace('"', "\\\"")))
                .await
                .expect_err(bad);
            assert!(e.contains("app_id must be"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn configuration_errors_say_what_to_fix() {
        let pem = test_key_pem();
        for (text, part) in [
            ("owner = \"acme\"\n", "configure a GitHub App"),
            (
                "owner = \"-bad\"\ntoken = \"t\"\nusername = \"u\"\n",
                "owner",
            ),
            (
                "owner = \"acme\"\napp_id = 1\ninstallation_id = 2\n",
                "private_key is required in app mode (or private_key_file, or RISE_REGISTRY__PRIVATE_KEY)",
            ),
            (
                "owner = \"acme\"\napp_id = 1\nprivate_key = \"x\"\n",
                "installation_id is required",
            ),
            (
                "owner = \"acme\"\ninstallation_id = 2\nprivate_key = \"x\"\n",
                "app_id is required",
            ),
            (
                "owner = \"acme\"\napp_id = 1\ninstallation_id = 2\nprivate_key = \"not a pem\"\n",
                "not an RSA private key in PEM form",
            ),
            (
                "owner = \"acme\"\napp_id = 1\ninstallation_id = 2\nprivate_key = \"x\"\ntoken = \"t\"\n",
                "not both",
            ),
            ("owner = \"acme\"\ntoken = \"t\"\n", "username"),
            (
                "owner = \"acme\"\nusername = \"bot\"\n",
                "token is required",
            ),
            (
                "owner = \"acme\"\nmode = \"static\"\nusername = \"bot\"\ntoken = \" \"\n",
                "token is empty",
            ),
            (
                "owner = \"acme\"\nusername = \"bot\"\ntoken = \"t\"\napi_url = \"http://127.0.0.1:1\"\n",
                "clear text",
            ),
            (
                "owner = \"acme\"\nusername = \"bot\"\ntoken = \"t\"\nregistry_host = \"https://ghcr.io\"\n",
                "registry_host",
            ),
        ] {
            let e = provider(text).await.expect_err(text);
            assert!(e.contains(part), "{text:?}: {e}");
            assert!(!e.contains("not a pem"), "the value is not echoed: {e}");
        }
        for (extra, part) in [
            ("max_ttl = \"2h\"\n", "max_ttl cannot exceed 1h"),
            ("github_repository = \"a/{project}\"\n", "github_repository"),
            ("app_id = \"1\"\n", "duplicate"),
        ] {
            let text = app_config(extra);
            let e = match toml::from_str::<GhcrConfig>(&text) {
                Err(e) => e.to_string(),
                Ok(c) => GhcrProvider::from_config("default", &c)
                    .await
                    .expect_err(extra)
                    .to_string(),
            };
            assert!(e.contains(part), "{extra:?}: {e}");
            assert!(!e.contains(pem), "{e}");
        }
    }

    #[tokio::test]
    async fn static_mode_is_reported_as_what_it_is() {
        let p = provider(
            "owner = \"acme\"\nusername = \"acme-bot\"\ntoken = \"ghp_classic-secret\"\nmax_ttl = \"12h\"\n",
        )
        .await
        .expect("valid");
        let c = p
            .issue(&request("my-app", "my-app", Actions::PULL))
            .await
            .expect("static credential");
        assert_eq!(c.username, "acme-bot");
        assert_eq!(c.password.expose_secret(), "ghp_classic-secret");
        assert_eq!(c.repository, "acme/my-app");
        assert_eq!(c.granted_actions, Actions::PUSH_PULL);
        assert!(!c.repository_scoped && !c.revocable && !c.expiry_enforced);
        assert!(!format!("{p:?}").contains("ghp_classic-secret"));
        let e = p.revoke("x").await.expect_err("unsupported");
        assert!(e.to_string().contains("GitHub's settings"), "{e}");
    }

    #[test]
    fn repository_templates() {
        let r = request("my-app", "team/app", Actions::PULL);
        assert_eq!(expand_repository("{project}", &r).as_deref(), Ok("my-app"));
        assert_eq!(
            expand_repository("images-{project}", &r).as_deref(),
            Ok("images-my-app")
        );
        let e = expand_repository("{repository}", &r).expect_err("nested");
        assert!(e.contains("not a GitHub repository name"), "{e}");
        assert!(validate_repository_template("{repository}").is_ok());
        assert!(validate_repository_template("x/{project}").is_err());
        assert!(validate_repository_template("").is_err());
    }

    fn reply(permissions: &[(&str, &str)], selection: &str, repos: &[&str]) -> InstallationToken {
        let body = serde_json::json!({
            "token": "ghs_test",
            "expires_at": crate::audit::rfc3339_seconds(SystemTime::now() + TOKEN_LIFETIME),
            "permissions": permissions.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "repository_selection": selection,
            "repositories": repos.iter().map(|n| serde_json::json!({"id": 1, "name": n, "full_name": format!("acme/{n}")})).collect::<Vec<_>>(),
        });
        serde_json::from_value(body).expect("reply")
    }

    /// GitHub's reply is not trusted to be short: a permission it names is cut in the error.
    #[test]
    fn an_unexpected_permission_is_named_within_bounds() {
        let name = "x".repeat(10_000);
        let level = "é".repeat(10_000);
        let r = reply(&[(name.as_str(), level.as_str())], "selected", &["my-app"]);
        let e = check_reply(&r, "my-app", "read", SystemTime::now()).expect_err("refused");
        assert!(
            e.starts_with(&format!("the token has permission {}: é", "x".repeat(40))),
            "{e}"
        );
        assert!(e.len() < 200, "{} bytes", e.len());
    }

    #[test]
    fn replies_are_checked_against_what_was_asked() {
        let now = SystemTime::now();
        let ok = |r: &InstallationToken, level| check_reply(r, "my-app", level, now).map(|x| x.0);
        assert_eq!(
            ok(
                &reply(&[("packages", "write")], "selected", &["my-app"]),
                "write"
            ),
            Ok(Actions::PUSH_PULL)
        );
        assert_eq!(
            ok(
                &reply(
                    &[("packages", "read"), ("metadata", "read")],
                    "selected",
                    &["My-App"]
                ),
                "read"
            ),
            Ok(Actions::PULL)
        );
        // Narrower than asked is reported as such.
        assert_eq!(
            ok(
                &reply(&[("packages", "read")], "selected", &["my-app"]),
                "write"
            ),
            Ok(Actions::PULL)
        );
        for (r, level, part) in [
            (
                reply(&[("packages", "write")], "selected", &["my-app"]),
                "read",
                "beyond",
            ),
            (
                reply(
                    &[("packages", "read"), ("contents", "write")],
                    "selected",
                    &["my-app"],
                ),
                "read",
                "contents",
            ),
            (
                reply(&[("metadata", "read")], "selected", &["my-app"]),
                "read",
                "no packages",
            ),
            (
                reply(&[("packages", "read")], "all", &[]),
                "read",
                "every repository",
            ),
            (
                reply(&[("packages", "read")], "selected", &["my-app", "other"]),
                "read",
                "2 repositories",
            ),
            (
                reply(&[("packages", "read")], "selected", &["other"]),
                "read",
                "not only my-app",
            ),
        ] {
            let e = ok(&r, level).expect_err(part);
            assert!(e.contains(part), "{part}: {e}");
        }
        let mut late = reply(&[("packages", "read")], "selected", &["my-app"]);
        // A later expiry than GitHub documents (a skewed clock) is taken as GitHub says: the
        // caller's TTL then ends it by revocation.
        let later = now + Duration::from_secs(8 * 3600);
        late.expires_at = crate::audit::rfc3339_seconds(later);
        let (_, at) = check_reply(&late, "my-app", "read", now).expect("accepted");
        assert!(at > now + TOKEN_LIFETIME);
        late.expires_at = crate::audit::rfc3339_seconds(now - Duration::from_secs(5));
        assert!(check_reply(&late, "my-app", "read", now).is_err());
        late.expires_at = "tomorrow".into();
        assert!(check_reply(&late, "my-app", "read", now).is_err());
    }

    #[test]
    fn jwt_claims_follow_github() {
        let pem = SecretString::from(test_key_pem().to_owned());
        let now = SystemTime::now();
        let jwt = api::sign_app_jwt("42", &pem, now).expect("signs");
        let payload = jwt
            .expose_secret()
            .split('.')
            .nth(1)
            .expect("three parts")
            .to_owned();
        use base64::Engine;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64url"),
        )
        .expect("json");
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert_eq!(claims["iss"], "42");
        assert_eq!(claims["iat"], now - 60);
        assert_eq!(claims["exp"], now + 540);
    }

    #[test]
    fn api_urls() {
        let u = parse_api_url("https://github.example.com/api/v3", false).expect("ghes");
        assert_eq!(
            u.join("app/installations/1/access_tokens")
                .expect("join")
                .as_str(),
            "https://github.example.com/api/v3/app/installations/1/access_tokens"
        );
        assert_eq!(
            parse_api_url("https://api.github.com", false)
                .expect("dotcom")
                .as_str(),
            "https://api.github.com/"
        );
        assert!(parse_api_url("https://u:p@h", false).is_err());
        assert!(parse_api_url("http://127.0.0.1:1", true).is_ok());
        assert!(valid_host("ghcr.io") && valid_host("127.0.0.1:5000"));
        assert!(!valid_host("ghcr.io/x") && !valid_host("h:0"));
    }
}

/// Configuration through the real loader: `_file` secrets, environment strings, typos.
#[cfg(test)]
mod config_tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::Config;
    use crate::config::test_support::load;
    use crate::registry::providers::ProviderConfig;
    use crate::registry::providers::test_support::{assert_typo_named, secret_file};

    fn ghcr(c: &Config) -> &GhcrConfig {
        match &c.registry {
            Some(ProviderConfig::Ghcr(g)) => g,
            other => panic!("expected a ghcr registry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn private_key_file_and_environment_strings() {
        let (_key, line) = secret_file("private_key", super::tests::test_key_pem());
        let text = format!("[registry]\ntype = \"ghcr\"\nowner = \"acme\"\napp_id = 42\n{line}");
        let c = load(
            &text,
            &[
                ("RISE_REGISTRY__INSTALLATION_ID", "7"),
                ("RISE_REGISTRY__MAX_TTL", "30m"),
            ],
        )
        .expect("loads");
        let g = ghcr(&c);
        assert_eq!(g.installation_id, Some(7));
        assert_eq!(g.app_id.as_deref(), Some("42"));
        assert_eq!(g.max_ttl, Duration::from_secs(1800));
        assert!(
            matches!(&g.private_key, Some(SecretSource::Value(k)) if k.expose_secret().contains("PRIVATE KEY"))
        );
        assert!(!format!("{g:?}").contains("PRIVATE KEY"));
        let p = GhcrProvider::from_config("default", g)
            .await
            .expect("valid");
        assert_eq!(p.max_ttl(), Duration::from_secs(1800));
        assert_eq!(c.registry.as_ref().map(ProviderConfig::kind), Some("ghcr"));
    }

    #[tokio::test]
    async fn static_token_from_the_environment() {
        let c = load(
            "[registries.gh]\ntype = \"ghcr\"\nowner = \"acme\"\nmode = \"static\"\nusername = \"acme-bot\"\n",
            &[("RISE_REGISTRIES__GH__TOKEN", "ghp_from_env")],
        )
        .expect("loads");
        let g = match c.registries.get("gh") {
            Some(ProviderConfig::Ghcr(g)) => g,
            other => panic!("expected ghcr, got {other:?}"),
        };
        let p = GhcrProvider::from_config("gh", g).await.expect("valid");
        assert!(matches!(p.backend, Backend::Static { .. }));
        let c = load(
            "[registries.gh]\ntype = \"ghcr\"\nowner = \"acme\"\nmode = \"static\"\nusername = \"acme-bot\"\n",
            &[],
        )
        .expect("loads");
        let g = match c.registries.get("gh") {
            Some(ProviderConfig::Ghcr(g)) => g,
            other => panic!("expected ghcr, got {other:?}"),
        };
        let e = GhcrProvider::from_config("gh", g)
            .await
            .expect_err("no token")
            .to_string();
        assert!(e.contains("RISE_REGISTRIES__GH__TOKEN"), "{e}");
    }

    #[test]
    fn typo_names_the_key() {
        assert_typo_named(
            "[registry]\ntype = \"ghcr\"\nowner = \"acme\"\n",
            "privat_key",
            "secret-x",
        );
    }
}
