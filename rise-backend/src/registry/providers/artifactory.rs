//! JFrog Artifactory (`type = "artifactory"`): per-request, expiring, repository-scoped access
//! tokens minted through the JFrog Access API, or (the seed's mode) the backend's own static
//! credentials.
//!
//! Tested against a fake Artifactory built from JFrog's public REST documentation
//! (`tests/it/support/fake_artifactory.rs`), never against a real instance: the request and
//! response shapes are in `artifactory/access.rs`, with the documents they come from.
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "artifactory"
//! base_url = "https://company.jfrog.io"   # JFrog Platform URL; a trailing /artifactory is dropped
//! repository = "docker-local"             # the Docker repository key
//!
//! # The backend's own credential: exactly one of
//! admin_token = "..."                     # (or admin_token_file) an admin access token
//! username = "svc" ; password = "..."     # (or password_file, RISE_REGISTRY__USERNAME/PASSWORD)
//! use_credential_helper = true            # the backend host's `docker login`
//!
//! # What callers get:
//! mode = "access_token"     # default with admin_token: mint a token per request
//! # mode = "static"         # default otherwise: hand out the backend's credential (seed)
//! token_scope = "repository"  # or "user" (see below)
//! max_ttl = "12h"           # longest lifetime handed out
//! ```
//!
//! `password` and `admin_token` may also be `aws-secretsmanager:<name-or-arn>[#json-key]`
//! references (see [`crate::secrets`]): read at start-up with the backend's AWS identity and
//! re-read every `secret_refresh_interval` (default 5m), so a rotated secret is used without a
//! restart.
//!
//! Other keys: `token_username` (the Artifactory user name minted tokens are issued to; `{project}`
//! is replaced by the project; default `rise-{project}` with repository scope),
//! `push_can_overwrite` (default true: `push` also grants Delete/Overwrite, which Artifactory
//! requires to replace an existing tag such as `latest`), `force_revocable` (default true),
//! `revocable_expiry_threshold` (default 6h, Artifactory's default), `request_timeout` (10s),
//! `connect_timeout` (5s), `docker_config_dir` (default `$DOCKER_CONFIG`, then `~/.docker`),
//! `credential_helper_dirs` (where `docker-credential-*` are looked up; default `PATH`),
//! `credential_helper_timeout` (10s), `insecure_http` (allow an `http://` base URL; tests only).
//!
//! # Registry URL
//!
//! Clients use the *repository path* method: they log in to the host of `base_url`
//! (`company.jfrog.io`) and push `company.jfrog.io/docker-local/my-app:tag`; the repository
//! path in the response is `docker-local/<project repository>`. Artifactory's other methods
//! (subdomain: `docker-local.company.jfrog.io/my-app`; port: one port per repository behind a
//! reverse proxy) are not supported: their registry host differs per repository.
//!
//! # What is scoped
//!
//! - `mode = "access_token"`, `token_scope = "repository"`: each request mints a token with the
//!   scope `artifact:<repository key>/<project repository>/**:<actions>` (JFrog's resource
//!   permission scope, Artifactory 7.38+), where `pull` is `r` and `push` adds `w` (and `d`
//!   with `push_can_overwrite`). Artifact reads and writes are confined to that path, so the
//!   response says `repository_scoped: true`, but only when Artifactory echoes back the scope
//!   Rise asked for; any other reply is reported as unscoped. Not scoped: Artifactory always
//!   lets a token call the REST API (e.g. ping, its own user's details); and a path prefix
//!   covers nested repositories, so a project whose repository is `team` also reaches
//!   `team/app`: give projects sibling repositories.
//! - `token_scope = "user"`: the token carries `applied-permissions/user`, i.e. all permissions
//!   of the Artifactory user it is issued to. It expires and is revocable, but reaches whatever
//!   that user can: `repository_scoped: false`.
//! - `mode = "static"`: the backend's user name and password (or helper credential) are handed
//!   out. They reach everything that user can, do not expire and cannot be revoked by Rise:
//!   `repository_scoped: false`, `revocable: false`, and the reported expiry (`max_ttl` at
//!   most) is nominal only: it tells clients when to ask again, the password itself does not
//!   expire. Rise logs this at start-up; the HTTP layer warns callers that it is unscoped.
//!
//! # Least-privilege Artifactory permissions
//!
//! - Repository scope: only an Artifactory administrator may mint tokens with resource
//!   permission scopes or for another user name, so Rise needs an admin access token. Keep it
//!   in a secret store (`admin_token_file`), give it an expiry and rotate it; prefer a dedicated
//!   admin service identity so its use is auditable.
//! - User scope: a non-admin service user suffices (enable "Allow token creation" for basic
//!   credentials); its permission target should grant only Read, Deploy/Cache and (for
//!   overwrites) Delete/Overwrite on the one Docker repository.
//! - Static: the same narrow permission target; the password is shared with every caller.
//!
//! # Lifetime, refresh, revocation
//!
//! Tokens expire after the request's TTL (at most `max_ttl`); Artifactory's reply is trusted
//! for the real lifetime when it is no longer. A reply claiming a non-expiring token, a longer
//! lifetime (by more than a minute) or another scope than asked is revoked and refused; one
//! without a scope is reported `repository_scoped: false`. They
//! are not refreshable: clients ask Rise again. [`RegistryProvider::revoke`] revokes by token id
//! (`DELETE /access/api/v1/tokens/{id}`). Artifactory makes tokens that live shorter than its
//! `revocable-expiry-threshold` (6 h by default) non-revocable unless they carry
//! `force_revocable` (Artifactory 7.50.3+), which Rise sets by default; `revocable` in the
//! response is false when neither holds. Tokens under Artifactory's persistency threshold (3 h by
//! default) are not stored in its token list; JFrog documents `force_revocable` as making a token
//! revocable regardless of other settings, and Rise relies on that, but how the two interact is
//! not documented and was not verified against a real instance.
//!
//! Think before wrapping this provider in a shared credential cache (`CachingProvider`):
//! each token's `description` names the caller it was minted for (Artifactory's audit
//! trail), and revoking a shared token cuts off every caller it was served to.
//!
//! # Failures
//!
//! Every upstream call is bounded (`connect_timeout`, `request_timeout`, and the helper's
//! timeout, after which the helper is killed). Timeouts are [`ProviderError::Timeout`] (504);
//! 401/403 from Artifactory and missing helpers or credentials are
//! [`ProviderError::Misconfigured`] (502); other statuses, malformed replies and helper failures
//! are [`ProviderError::Upstream`] (502). Upstream bodies are summarised with secrets redacted
//! and only ever logged. Secrets (password, admin token, minted tokens, helper output) are
//! [`SecretString`]s: they appear in no log, error or `Debug` output.

mod access;
pub mod docker_credentials;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use self::access::{AccessAuth, AccessClient, CreateTokenRequest};
use self::docker_credentials::{DockerCredential, DockerCredentialSource};
use crate::config::lenient;
use crate::registry::providers::{account, upstream};
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
    RepositoryName,
};
use crate::secrets::{Secret, SecretResolver, SecretSource};

/// The `[registry]` table with `type = "artifactory"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactoryConfig {
    /// The JFrog Platform URL, e.g. `https://company.jfrog.io`.
    pub base_url: String,
    /// The Docker repository key, e.g. `docker-local`.
    pub repository: String,
    #[serde(default)]
    pub username: Option<String>,
    /// A value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// An admin access token, used only to mint and revoke tokens; never handed out. A value or
    /// an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub admin_token: Option<SecretSource>,
    /// How often `aws-secretsmanager:` references are re-read.
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
    /// Use the backend host's Docker credentials (`docker login`) for `base_url`'s host.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub use_credential_helper: bool,
    #[serde(default)]
    pub docker_config_dir: Option<PathBuf>,
    /// Directories searched for `docker-credential-*`, as a list or a `:`-separated string.
    #[serde(default, deserialize_with = "path_list")]
    pub credential_helper_dirs: Option<Vec<PathBuf>>,
    #[serde(default = "defaults::helper_timeout", with = "humantime_serde")]
    pub credential_helper_timeout: Duration,
    /// Default: `access_token` with `admin_token`, otherwise `static`.
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub token_scope: TokenScope,
    #[serde(default)]
    pub token_username: Option<String>,
    #[serde(default = "defaults::yes", deserialize_with = "lenient::bool")]
    pub push_can_overwrite: bool,
    #[serde(default = "defaults::yes", deserialize_with = "lenient::bool")]
    pub force_revocable: bool,
    #[serde(default = "defaults::revocable_threshold", with = "humantime_serde")]
    pub revocable_expiry_threshold: Duration,
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Allow an `http://` base URL: credentials then cross the network in clear text.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

/// How callers get credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Hand out the backend's own credential (the seed's behaviour).
    Static,
    /// Mint a short-lived access token per request.
    AccessToken,
}

/// What a minted token may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// `artifact:<repo>/<project repo>/**:<actions>`; needs an admin credential.
    #[default]
    Repository,
    /// `applied-permissions/user`: everything the token's user can do.
    User,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, max_ttl, request_timeout, secret_refresh_interval, yes,
    };
    use std::time::Duration;

    pub fn helper_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn revocable_threshold() -> Duration {
        Duration::from_secs(6 * 3600)
    }
}

/// The default user name of repository-scoped tokens.
const DEFAULT_TOKEN_USERNAME: &str = "rise-{project}";
/// Create Token's documented limits.
const MAX_SCOPE_LEN: usize = 500;
const MAX_DESCRIPTION_LEN: usize = 1024;
const MAX_USERNAME_LEN: usize = 255;

/// The Artifactory provider. Holds its secrets; its `Debug` shows none of them.
#[derive(Debug)]
pub struct ArtifactoryProvider {
    /// The registry's configured name, for log lines.
    name: String,
    registry_host: String,
    repository_key: String,
    mode: Mode,
    backend: BackendCredential,
    access: AccessClient,
    token_scope: TokenScope,
    token_username: Option<String>,
    push_can_overwrite: bool,
    force_revocable: bool,
    revocable_threshold: Duration,
    max_ttl: Duration,
}

/// The backend's own credential. Configured secrets are [`Secret`]s: a Secrets Manager reference
/// re-reads itself, so every use asks for the current value.
#[derive(Debug)]
enum BackendCredential {
    UserPassword { username: String, password: Secret },
    AdminToken(Secret),
    DockerHelper(DockerCredentialSource),
}

/// The backend credential resolved for one call (a helper is asked afresh each time).
enum ResolvedCredential {
    Token(SecretString),
    User(DockerCredential),
}

impl ResolvedCredential {
    fn auth(&self) -> AccessAuth<'_> {
        match self {
            ResolvedCredential::Token(token) => AccessAuth::Bearer(token),
            ResolvedCredential::User(c) => AccessAuth::Basic {
                username: &c.username,
                password: &c.secret,
            },
        }
    }

    fn secret(&self) -> &str {
        match self {
            ResolvedCredential::Token(token) => token.expose_secret(),
            ResolvedCredential::User(c) => c.secret.expose_secret(),
        }
    }

    fn username(&self) -> Option<&str> {
        match self {
            ResolvedCredential::Token(_) => None,
            ResolvedCredential::User(c) => Some(&c.username),
        }
    }
}

impl ArtifactoryProvider {
    /// Validate `config` and build the provider; `aws-secretsmanager:` references are read now,
    /// with the AWS SDK's default credential chain. `name` is the registry's configured name,
    /// used in error messages and logs.
    pub async fn from_config(
        name: &str,
        config: &ArtifactoryConfig,
    ) -> Result<Self, ProviderError> {
        let resolver = account::resolver_for(
            config.secret_refresh_interval,
            [&config.password, &config.admin_token]
                .into_iter()
                .flatten(),
        )
        .await;
        Self::with_secrets(name, config, &resolver).await
    }

    /// As [`from_config`](Self::from_config), reading references with `secrets`.
    pub async fn with_secrets(
        name: &str,
        config: &ArtifactoryConfig,
        secrets: &SecretResolver,
    ) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let platform_url = parse_base_url(&config.base_url, config.insecure_http).map_err(bad)?;
        let registry_host = upstream::host_and_port("base_url", &platform_url).map_err(bad)?;
        let repository_key = config.repository.trim();
        if repository_key.contains('/') || RepositoryName::parse(repository_key).is_err() {
            return Err(bad(format!(
                "repository {:?} must be one Docker repository key: lowercase letters and digits separated by '.', '_' or '-' (Docker image paths are lowercase)",
                repository_key.chars().take(80).collect::<String>()
            )));
        }
        let backend = backend_credential(name, config, secrets).await?;
        let mode = match (config.mode, &backend) {
            (Some(Mode::Static), BackendCredential::AdminToken(_)) => {
                return Err(bad(
                    "mode = \"static\" hands the backend's credential to every caller; an admin token must never be handed out: use mode = \"access_token\""
                        .into(),
                ));
            }
            (Some(mode), _) => mode,
            (None, BackendCredential::AdminToken(_)) => Mode::AccessToken,
            (None, _) => Mode::Static,
        };
        if let Some(template) = &config.token_username {
            validate_username_template(template).map_err(bad)?;
        }
        if mode == Mode::AccessToken
            && config.token_scope == TokenScope::User
            && config.token_username.is_none()
            && matches!(backend, BackendCredential::AdminToken(_))
        {
            return Err(bad(
                "token_scope = \"user\" with an admin token would mint tokens with the admin's own permissions: set token_username to the (narrow) user the tokens are for"
                    .into(),
            ));
        }
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
            (
                "credential_helper_timeout",
                config.credential_helper_timeout,
            ),
        ])
        .map_err(bad)?;
        let access = AccessClient::new(
            &platform_url,
            config.connect_timeout,
            config.request_timeout,
        )
        .map_err(|e| bad(e.to_string()))?;
        let token_username = match (&config.token_username, config.token_scope) {
            (Some(t), _) => Some(t.clone()),
            (None, TokenScope::Repository) => Some(DEFAULT_TOKEN_USERNAME.to_owned()),
            (None, TokenScope::User) => None,
        };
        let provider = Self {
            name: name.to_owned(),
            registry_host,
            repository_key: repository_key.to_owned(),
            mode,
            backend,
            access,
            token_scope: config.token_scope,
            token_username,
            push_can_overwrite: config.push_can_overwrite,
            force_revocable: config.force_revocable,
            revocable_threshold: config.revocable_expiry_threshold,
            max_ttl: config.max_ttl,
        };
        provider.log_posture();
        Ok(provider)
    }

    fn log_posture(&self) {
        match (self.mode, self.token_scope) {
            (Mode::Static, _) => tracing::warn!(
                registry = %self.name,
                "artifactory registry in static mode: callers receive the backend's own credential, which is not limited to one repository, does not expire (the reported expiry is nominal) and cannot be revoked by Rise"
            ),
            (Mode::AccessToken, TokenScope::User) => tracing::warn!(
                registry = %self.name,
                "artifactory registry mints user-scoped tokens: they expire but reach everything their Artifactory user can"
            ),
            (Mode::AccessToken, TokenScope::Repository) => tracing::info!(
                registry = %self.name,
                "artifactory registry mints repository-scoped, expiring access tokens"
            ),
        }
    }

    async fn resolve_backend(&self) -> Result<ResolvedCredential, ProviderError> {
        Ok(match &self.backend {
            BackendCredential::AdminToken(token) => {
                ResolvedCredential::Token(token.current().await)
            }
            BackendCredential::UserPassword { username, password } => {
                ResolvedCredential::User(DockerCredential {
                    username: username.clone(),
                    secret: password.current().await,
                })
            }
            BackendCredential::DockerHelper(source) => {
                ResolvedCredential::User(source.get(&self.registry_host).await?)
            }
        })
    }

    async fn issue_static(
        &self,
        path: String,
        ttl: Duration,
    ) -> Result<IssuedCredential, ProviderError> {
        let credential = match self.resolve_backend().await? {
            ResolvedCredential::User(c) => c,
            // `from_config` refuses static mode with an admin token.
            ResolvedCredential::Token(_) => {
                return Err(ProviderError::Misconfigured(
                    "static mode cannot hand out an admin token".into(),
                ));
            }
        };
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: credential.username,
            password: credential.secret,
            // Nominal: the password itself does not expire (see the module documentation).
            expires_at: SystemTime::now() + ttl,
            repository: path,
            granted_actions: Actions::PUSH_PULL,
            repository_scoped: false,
            revocable: false,
            expiry_enforced: false,
            credential_id: None,
        })
    }

    async fn issue_token(
        &self,
        request: &CredentialRequest,
        path: String,
        ttl: Duration,
    ) -> Result<IssuedCredential, ProviderError> {
        let scope = match self.token_scope {
            TokenScope::Repository => format!(
                "artifact:{path}/**:{}",
                artifact_actions(request.actions, self.push_can_overwrite)
            ),
            TokenScope::User => "applied-permissions/user".to_owned(),
        };
        if scope.len() > MAX_SCOPE_LEN {
            return Err(ProviderError::Unsupported(format!(
                "repository path {path} is too long for an Artifactory token scope ({MAX_SCOPE_LEN} characters at most)"
            )));
        }
        let token_username = self
            .token_username
            .as_deref()
            .map(|t| t.replace("{project}", request.project.as_str()));
        if token_username
            .as_deref()
            .is_some_and(|u| u.len() > MAX_USERNAME_LEN)
        {
            return Err(ProviderError::Misconfigured(format!(
                "registry {}: token_username expands to more than {MAX_USERNAME_LEN} characters",
                self.name
            )));
        }
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
        let requested_secs = ttl.as_secs().max(1);
        let backend = self.resolve_backend().await?;
        let docker_username = match token_username.as_deref().or(backend.username()) {
            Some(u) => u.to_owned(),
            None => {
                return Err(ProviderError::Misconfigured(format!(
                    "registry {}: cannot tell which user the token is for; set token_username",
                    self.name
                )));
            }
        };
        let body = CreateTokenRequest {
            grant_type: "client_credentials",
            username: token_username.as_deref(),
            scope: &scope,
            expires_in: requested_secs,
            refreshable: false,
            description: &description,
            force_revocable: self.force_revocable.then_some(true),
        };
        let secrets = [backend.secret()];
        // Artifactory counts the lifetime from its own issue time, which is after this instant:
        // counting from here never overstates the lifetime.
        let sent_at = SystemTime::now();
        let created = self
            .access
            .create_token(backend.auth(), &body, &secrets)
            .await?;
        let granted_secs = created.expires_in.unwrap_or(requested_secs);
        // What the token really got, when it is more than asked: such a token is taken back,
        // never handed out.
        let too_wide = if granted_secs == 0 {
            // `expires_in: 0` is Artifactory's "never expires".
            Some("a non-expiring token".to_owned())
        } else if granted_secs > requested_secs + LIFETIME_SLACK_SECS {
            Some(format!(
                "a token living {granted_secs}s where {requested_secs}s were asked"
            ))
        } else if self.token_scope == TokenScope::Repository
            && created
                .scope
                .as_deref()
                .is_some_and(|granted| !same_scope(granted, &scope))
        {
            Some(format!(
                "a token with scope {:?} where {scope:?} was asked",
                upstream::truncate(created.scope.as_deref().unwrap_or_default(), 200)
            ))
        } else {
            None
        };
        if let Some(what) = too_wide {
            let revoked = self
                .access
                .revoke_token(backend.auth(), &created.token_id, &secrets)
                .await;
            return Err(ProviderError::Upstream {
                operation: access::CREATE_OPERATION,
                detail: format!(
                    "Artifactory minted {what} (id {}); {}",
                    created.token_id,
                    match revoked {
                        Ok(()) => "it was revoked".to_owned(),
                        Err(e) => format!("revoking it failed, revoke it by hand: {e}"),
                    }
                ),
            });
        }
        // A reply without `scope` cannot prove the token is limited to the repository.
        let repository_scoped =
            self.token_scope == TokenScope::Repository && created.scope.is_some();
        let granted_secs_duration = Duration::from_secs(granted_secs);
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: docker_username,
            password: created.access_token,
            // Bounded above by the request (plus slack), itself at most max_ttl.
            expires_at: sent_at + granted_secs_duration,
            repository: path,
            granted_actions: if repository_scoped {
                request.actions
            } else {
                Actions::PUSH_PULL
            },
            repository_scoped,
            revocable: self.force_revocable || granted_secs_duration >= self.revocable_threshold,
            expiry_enforced: true,
            credential_id: Some(created.token_id),
        })
    }
}

#[async_trait]
impl RegistryProvider for ArtifactoryProvider {
    fn kind(&self) -> &'static str {
        "artifactory"
    }

    fn registry_url(&self) -> String {
        self.registry_host.clone()
    }

    fn repository_path(&self, repository: &RepositoryName) -> String {
        format!("{}/{}", self.repository_key, repository.as_str())
    }

    fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let path = self.repository_path(&request.repository);
        let ttl = request.ttl.min(self.max_ttl);
        let result = match self.mode {
            Mode::Static => self.issue_static(path, ttl).await,
            Mode::AccessToken => self.issue_token(request, path, ttl).await,
        };
        super::warn_if_not_issued(self.kind(), &self.name, request, &result);
        result
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        if self.mode == Mode::Static {
            return Err(ProviderError::Unsupported(
                "static Artifactory credentials cannot be revoked by Rise; rotate the password in Artifactory".into(),
            ));
        }
        if !access::valid_token_id(credential_id) {
            return Err(ProviderError::Unsupported(format!(
                "{:?} is not an Artifactory token id",
                credential_id.chars().take(40).collect::<String>()
            )));
        }
        let backend = self.resolve_backend().await?;
        let result = self
            .access
            .revoke_token(backend.auth(), credential_id, &[backend.secret()])
            .await;
        match &result {
            Ok(()) => {
                tracing::info!(registry = %self.name, token_id = credential_id, "artifactory token revoked")
            }
            Err(e) => {
                tracing::warn!(registry = %self.name, token_id = credential_id, error = %e, "artifactory token not revoked")
            }
        }
        result
    }

    fn ready(&self) -> Result<(), String> {
        if let BackendCredential::DockerHelper(source) = &self.backend {
            let path = source.config_path();
            if !path.is_file() {
                return Err(format!(
                    "registry {}: Docker config {} does not exist (run docker login)",
                    self.name,
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

async fn backend_credential(
    name: &str,
    config: &ArtifactoryConfig,
    secrets: &SecretResolver,
) -> Result<BackendCredential, ProviderError> {
    let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
    let env_prefix = account::env_prefix(name);
    let has_user = config.username.is_some() || config.password.is_some();
    let given = [
        config.admin_token.is_some(),
        has_user,
        config.use_credential_helper,
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given > 1 {
        return Err(bad(
            "give the backend's credential one way: admin_token, username and password, or use_credential_helper = true"
                .into(),
        ));
    }
    if let Some(token) = &config.admin_token {
        return account::resolve_nonblank(secrets, "admin_token", token, "")
            .await
            .map(BackendCredential::AdminToken)
            .map_err(bad);
    }
    if config.use_credential_helper {
        return DockerCredentialSource::new(
            config.docker_config_dir.clone(),
            config.credential_helper_dirs.clone(),
            config.credential_helper_timeout,
        )
        .map(BackendCredential::DockerHelper)
        .map_err(|e| bad(e.to_string()));
    }
    match (&config.username, &config.password) {
        (Some(username), Some(password)) => {
            if username.trim().is_empty() {
                return Err(bad(format!(
                    "username is empty (set username or {env_prefix}USERNAME)"
                )));
            }
            let password = account::resolve_nonblank(secrets, "password", password, "")
                .await
                .map_err(|e| {
                    bad(format!(
                        "{e} (set {})",
                        account::secret_key_ways(name, "password")
                    ))
                })?;
            Ok(BackendCredential::UserPassword {
                username: username.trim().to_owned(),
                password,
            })
        }
        (Some(_), None) => Err(bad(format!(
            "username is set but password is not: set password, password_file or {env_prefix}PASSWORD"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "password is set but username is not: set username or {env_prefix}USERNAME"
        ))),
        (None, None) => Err(bad(format!(
            "no credentials: set admin_token, username and password ({env_prefix}USERNAME / {env_prefix}PASSWORD), or use_credential_helper = true"
        ))),
    }
}

/// The JFrog Platform URL: https (unless `insecure_http`), a host, no credentials, no query; a
/// trailing `/artifactory` (the Artifactory context, often configured by habit) is dropped
/// because the Access API lives beside it. The path ends with `/` so joins stay under it.
fn parse_base_url(raw: &str, insecure_http: bool) -> Result<Url, String> {
    let mut url = upstream::endpoint_url(
        "base_url",
        raw,
        insecure_http,
        Some("https://company.jfrog.io"),
    )?;
    let trimmed = url.path().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/artifactory").unwrap_or(trimmed);
    let path = format!("{trimmed}/");
    url.set_path(&path);
    Ok(url)
}

/// `pull` -> `r`; `push` -> `r,w` (+ `d` to overwrite tags). Push always implies pull.
fn artifact_actions(actions: Actions, push_can_overwrite: bool) -> &'static str {
    match (actions.contains(Action::Push), push_can_overwrite) {
        (true, true) => "r,w,d",
        (true, false) => "r,w",
        (false, _) => "r",
    }
}

/// Scopes are space-separated token sets; order is not significant.
/// Seconds an upstream's lifetime may exceed the request by (its clock, its rounding).
const LIFETIME_SLACK_SECS: u64 = 60;

fn same_scope(a: &str, b: &str) -> bool {
    let mut x: Vec<&str> = a.split_whitespace().collect();
    let mut y: Vec<&str> = b.split_whitespace().collect();
    x.sort_unstable();
    y.sort_unstable();
    x == y
}

fn validate_username_template(template: &str) -> Result<(), String> {
    let ok = !template.is_empty()
        && template.len() <= 200
        && template.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'{' | b'}')
        })
        && template
            .replace("{project}", "")
            .bytes()
            .all(|b| b != b'{' && b != b'}');
    if ok {
        Ok(())
    } else {
        Err("token_username must be 1-200 characters of letters, digits, '-', '_', '.', '@' and the placeholder {project}".into())
    }
}

/// Upstream text made safe for a log line: known secrets and anything that looks like a token
/// (a long run of base64/JWT characters) replaced, control characters dropped, and truncated.
pub(crate) fn redact_for_log(text: &str, secrets: &[&str]) -> String {
    const MAX: usize = 300;
    const TOKEN_RUN: usize = 32;
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "[REDACTED]");
    }
    let mut cleaned = String::with_capacity(out.len());
    let mut run = String::new();
    let flush = |run: &mut String, cleaned: &mut String| {
        if run.len() >= TOKEN_RUN {
            cleaned.push_str("[REDACTED]");
        } else {
            cleaned.push_str(run);
        }
        run.clear();
    };
    for c in out.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '.' | '_' | '-') {
            run.push(c);
            continue;
        }
        flush(&mut run, &mut cleaned);
        if c.is_control() {
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    flush(&mut run, &mut cleaned);
    let cleaned = cleaned.trim();
    if cleaned.len() > MAX {
        format!("{}…", upstream::truncate(cleaned, MAX))
    } else {
        cleaned.to_owned()
    }
}

/// A list of directories: a TOML array, or a `:`-separated string (how an environment variable
/// such as `RISE_REGISTRY__CREDENTIAL_HELPER_DIRS` carries it).
fn path_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<PathBuf>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L {
        List(Vec<PathBuf>),
        Joined(String),
    }
    Ok(Some(match L::deserialize(d)? {
        L::List(list) => list,
        L::Joined(s) => std::env::split_paths(&s).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> ArtifactoryConfig {
        toml::from_str(toml_text).expect("valid test config")
    }

    async fn provider(toml_text: &str) -> Result<ArtifactoryProvider, String> {
        ArtifactoryProvider::from_config("default", &config(toml_text))
            .await
            .map_err(|e| e.to_string())
    }

    const BASE: &str = "base_url = \"https://company.jfrog.io\"\nrepository = \"docker-local\"\n";

    #[tokio::test]
    async fn registry_host_and_repository_path() {
        let p = provider(&format!("{BASE}username = \"u\"\npassword = \"p\"\n"))
            .await
            .expect("valid");
        assert_eq!(p.registry_url(), "company.jfrog.io");
        let repo = RepositoryName::parse("team/my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "docker-local/team/my-app");
        assert_eq!(p.mode, Mode::Static);
        let p = provider(
            "base_url = \"http://127.0.0.1:8082/artifactory/\"\nrepository = \"docker-local\"\nadmin_token = \"t\"\ninsecure_http = true\n",
        )
        .await
        .expect("valid");
        assert_eq!(p.registry_url(), "127.0.0.1:8082");
        assert_eq!(p.mode, Mode::AccessToken);
    }

    #[test]
    fn base_url_rules() {
        let check = |raw: &str, insecure: bool, expect: Result<&str, &str>| match (
            parse_base_url(raw, insecure),
            expect,
        ) {
            (Ok(u), Ok(want)) => assert_eq!(u.as_str(), want, "{raw}"),
            (Err(e), Err(part)) => assert!(e.contains(part), "{raw}: {e}"),
            (got, want) => panic!("{raw}: got {got:?}, expected {want:?}"),
        };
        check(
            "https://company.jfrog.io",
            false,
            Ok("https://company.jfrog.io/"),
        );
        check(
            "https://company.jfrog.io/artifactory/",
            false,
            Ok("https://company.jfrog.io/"),
        );
        check(
            "https://host/jfrog/artifactory",
            false,
            Ok("https://host/jfrog/"),
        );
        check("http://127.0.0.1:1", false, Err("clear text"));
        check("http://127.0.0.1:1", true, Ok("http://127.0.0.1:1/"));
        check("https://u:p@host", false, Err("credentials"));
        check("ftp://host", false, Err("scheme"));
        check("company.jfrog.io", false, Err("not a URL"));
        check("https://host/?x=1", false, Err("query"));
    }

    #[tokio::test]
    async fn credential_combinations() {
        for (extra, part) in [
            ("", "RISE_REGISTRY__USERNAME"),
            ("username = \"u\"\n", "RISE_REGISTRY__PASSWORD"),
            ("username = \"u\"\npassword = \"\"\n", "password is empty"),
            ("password = \"p\"\n", "username"),
            (
                "admin_token = \"t\"\nusername = \"u\"\npassword = \"p\"\n",
                "one way",
            ),
            (
                "use_credential_helper = true\nadmin_token = \"t\"\n",
                "one way",
            ),
            ("admin_token = \" \"\n", "admin_token is empty"),
            (
                "admin_token = \"t\"\nmode = \"static\"\n",
                "never be handed out",
            ),
            // User scope with an admin token needs a named (narrow) user.
            (
                "admin_token = \"t\"\ntoken_scope = \"user\"\n",
                "token_username",
            ),
            (
                "admin_token = \"t\"\ntoken_username = \"a b\"\n",
                "token_username",
            ),
            ("admin_token = \"t\"\nmax_ttl = \"0s\"\n", "max_ttl"),
        ] {
            let e = provider(&format!("{BASE}{extra}")).await.expect_err(extra);
            assert!(e.contains(part), "{extra:?}: {e}");
        }
        let e =
            ArtifactoryProvider::from_config("eu", &config(&format!("{BASE}username = \"u\"\n")))
                .await
                .expect_err("named registry")
                .to_string();
        assert!(e.contains("RISE_REGISTRIES__EU__PASSWORD"), "{e}");
        // The error names its kind once, then the registry, the problem and the fix.
        let e = provider(&format!("{BASE}username = \"u\"\npassword = \" \"\n"))
            .await
            .expect_err("blank password");
        assert!(
            e.starts_with("provider misconfigured: registry default: password is empty"),
            "{e}"
        );
        assert!(
            e.contains("(set password, password_file or RISE_REGISTRY__PASSWORD)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn repository_key_rules() {
        for bad in ["Docker-Local", "a/b", "", "docker local"] {
            let e = provider(&format!(
                "base_url = \"https://h\"\nrepository = \"{bad}\"\nadmin_token = \"t\"\n"
            ))
            .await
            .expect_err(bad);
            assert!(e.contains("repository"), "{e}");
        }
    }

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let p = provider(&format!(
            "{BASE}username = \"svc\"\npassword = \"hunter2-password\"\n"
        ))
        .await
        .expect("valid");
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2-password"), "{shown}");
        let c = config(&format!("{BASE}admin_token = \"admin-token-value\"\n"));
        assert!(!format!("{c:?}").contains("admin-token-value"));
    }

    #[test]
    fn actions_and_scopes() {
        assert_eq!(artifact_actions(Actions::PULL, true), "r");
        assert_eq!(artifact_actions(Actions::PUSH_PULL, true), "r,w,d");
        assert_eq!(artifact_actions(Actions::PUSH_PULL, false), "r,w");
        assert!(same_scope("a b", "b  a"));
        assert!(!same_scope("a", "a b"));
    }

    #[test]
    fn redaction() {
        let jwt = "eyJ2ZXIiOiIyIiwidHlwIjoiSldUIiwiYWxnIjoiUlMyNTYifQ.eyJzdWIiOiJqZmFjQDAxIn0.c2ln";
        let s = redact_for_log(&format!("bad token {jwt} for pw hunter2\n"), &["hunter2"]);
        assert_eq!(s, "bad token [REDACTED] for pw [REDACTED]");
        let long = "x ".repeat(1000);
        assert!(redact_for_log(&long, &[]).len() < 400);
    }

    #[test]
    fn helper_dirs_from_list_or_string() {
        let c = config(&format!(
            "{BASE}use_credential_helper = true\ncredential_helper_dirs = [\"/a\", \"/b\"]\n"
        ));
        assert_eq!(
            c.credential_helper_dirs,
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
        let c = config(&format!(
            "{BASE}use_credential_helper = \"true\"\ncredential_helper_dirs = \"/a:/b\"\n"
        ));
        assert!(c.use_credential_helper);
        assert_eq!(
            c.credential_helper_dirs,
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
    }
}

/// The seed's Artifactory examples (`registry.md`) through the real configuration loader.
#[cfg(test)]
mod seed_config_tests {
    use super::*;
    use crate::config::Config;
    use crate::config::test_support::{load, value};
    use crate::registry::providers::ProviderConfig;
    use crate::registry::providers::test_support::{assert_typo_named, secret_file};

    fn artifactory(c: &Config) -> &ArtifactoryConfig {
        match &c.registry {
            Some(ProviderConfig::Artifactory(a)) => a,
            other => panic!("expected an artifactory registry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn seed_static_credentials_example() {
        let c = load(
            r#"
[registry]
type = "artifactory"
base_url = "https://company.jfrog.io"
repository = "docker-local"
username = "user"
password = "pass"
"#,
            &[],
        )
        .expect("the seed's example loads");
        let a = artifactory(&c);
        assert_eq!(a.username.as_deref(), Some("user"));
        assert_eq!(value(a.password.as_ref()), Some("pass"));
        let p = ArtifactoryProvider::from_config("default", a)
            .await
            .expect("valid provider");
        assert_eq!(p.mode, Mode::Static);
        assert_eq!(p.registry_url(), "company.jfrog.io");
        assert_eq!(
            c.registry.as_ref().map(ProviderConfig::kind),
            Some("artifactory")
        );
    }

    #[test]
    fn seed_credential_helper_example() {
        let c = load(
            r#"
[registry]
type = "artifactory"
base_url = "https://company.jfrog.io"
repository = "docker-local"
use_credential_helper = true
"#,
            &[],
        )
        .expect("the seed's example loads");
        assert!(artifactory(&c).use_credential_helper);
    }

    #[tokio::test]
    async fn seed_production_example_with_environment_credentials() {
        let text = r#"
[registry]
type = "artifactory"
base_url = "https://company.jfrog.io"
repository = "docker-local"
# Credentials via environment variables, not config file
"#;
        let c = load(
            text,
            &[
                ("RISE_REGISTRY__USERNAME", "service-account"),
                ("RISE_REGISTRY__PASSWORD", "from-vault"),
            ],
        )
        .expect("loads with env credentials");
        let a = artifactory(&c);
        assert_eq!(a.username.as_deref(), Some("service-account"));
        assert_eq!(value(a.password.as_ref()), Some("from-vault"));
        ArtifactoryProvider::from_config("default", a)
            .await
            .expect("valid provider");
        // Without them the provider says which variables to set.
        let c = load(text, &[]).expect("loads");
        let e = ArtifactoryProvider::from_config("default", artifactory(&c))
            .await
            .expect_err("no credentials")
            .to_string();
        assert!(e.contains("RISE_REGISTRY__PASSWORD"), "{e}");
    }

    #[test]
    fn secrets_from_files_and_environment_strings() {
        let (_secret, line) = secret_file("admin_token", "token-from-file\n");
        let text = format!(
            "[registry]\ntype = \"artifactory\"\nbase_url = \"https://company.jfrog.io\"\nrepository = \"docker-local\"\n{line}"
        );
        let c = load(
            &text,
            &[
                ("RISE_REGISTRY__MAX_TTL", "2h"),
                ("RISE_REGISTRY__FORCE_REVOCABLE", "false"),
            ],
        )
        .expect("loads");
        let a = artifactory(&c);
        assert_eq!(value(a.admin_token.as_ref()), Some("token-from-file"));
        assert_eq!(a.max_ttl, Duration::from_secs(7200));
        assert!(!a.force_revocable);
    }

    #[test]
    fn typo_names_the_key() {
        assert_typo_named(
            "[registry]\ntype = \"artifactory\"\nbase_url = \"https://h\"\nrepository = \"r\"\n",
            "pasword",
            "secret-x",
        );
    }
}
