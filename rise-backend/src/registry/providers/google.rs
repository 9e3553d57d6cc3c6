//! Google Artifact Registry (`type = "google"`), including the `gcr.io` hosts Artifact Registry
//! serves: per-request, expiring OAuth 2.0 access tokens of service accounts Rise impersonates.
//!
//! Tested against a fake Google built from Google's public API documentation
//! (`tests/it/support/fake_google.rs`), never against Google itself: the request and response
//! shapes are in `google/identity.rs` and `google/client.rs`, with the documents they come from.
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "google"
//! registry_host = "europe-docker.pkg.dev"          # or gcr.io, eu.gcr.io, us.gcr.io, asia.gcr.io
//! repository_prefix = "my-gcp-project/{repository}" # <gcp-project>/<ar-repository> (gcr.io: <gcp-project>)
//! service_account_key_file = "/run/secrets/rise-google-key.json"  # Rise's own JSON key
//! push_service_account = "rise-{project}-push@my-gcp-project.iam.gserviceaccount.com"
//! pull_service_account = "rise-{project}-pull@my-gcp-project.iam.gserviceaccount.com"  # optional
//! max_ttl = "1h"                                    # default and, without the org policy, maximum
//! ```
//!
//! `service_account_key` (or `service_account_key_file`, or `RISE_REGISTRY__SERVICE_ACCOUNT_KEY`)
//! is the JSON key of Rise's own service account, as Google issues it; it may also be an
//! `aws-secretsmanager:<name-or-arn>[#json-key]` reference (see [`crate::secrets`]), re-read every
//! `secret_refresh_interval` (default 5m). Other keys: `iam_credentials_url` (default
//! `https://iamcredentials.googleapis.com`), `request_timeout` (10s), `connect_timeout` (5s),
//! `insecure_http` (allow `http://` endpoints; tests only). The token endpoint is the key's
//! `token_uri`. A key of another universe than `googleapis.com` (its `universe_domain`) is
//! refused: the registry hosts and the IAM endpoint here are the default universe's.
//!
//! Account templates may use `{project}` (the Rise project) and `{repository}` (its repository);
//! `repository_prefix` may use `{repository}`; a domain-scoped project ID goes in as
//! `example.com:my-proj` or `example.com/my-proj`. Every expansion is checked: a project whose name
//! cannot form a service account email or an Artifact Registry repository name is refused.
//!
//! # How a credential is minted
//!
//! 1. Rise signs a JWT assertion with its key and exchanges it at the key's `token_uri` for its
//!    own access token (scope `cloud-platform`), cached and shared by all requests until five
//!    minutes before it expires (or halfway through a shorter life); concurrent requests wait
//!    for one refresh, at most `request_timeout`.
//! 2. Per request, Rise calls IAM Credentials `generateAccessToken` for the account the
//!    project's template names: the pull account for pull-only requests when
//!    `pull_service_account` is set, the push account otherwise, with the request's TTL (capped
//!    at `max_ttl`) as `lifetime` and scope `cloud-platform`.
//! 3. The caller gets user name `oauth2accesstoken`, the minted token as password (the way
//!    Google documents `docker login` with an access token), and Google's `expireTime`.
//!
//! # What is scoped
//!
//! Artifact Registry grants IAM roles per Artifact Registry *repository*, not per image path,
//! and a minted token carries every permission of its service account. Rise cannot see or check
//! those grants. It reports `repository_scoped: true` only when the configuration *can* confine
//! a token to the project's repository:
//!
//! - the account template contains `{project}` or `{repository}` (each project has its own
//!   account), and
//! - `repository_prefix` contains `{repository}` (each project has its own Artifact Registry
//!   repository; with a fixed prefix every project's images share one Artifact Registry
//!   repository, and an account that can write one can write all).
//!
//! Even then the scope holds only if the operator grants each account
//! `roles/artifactregistry.writer` (push account) or `roles/artifactregistry.reader` (pull
//! account) on that project's Artifact Registry repository **only**, and no role elsewhere.
//! Otherwise `repository_scoped` is false and the HTTP layer warns callers.
//!
//! `granted_actions` follows the account used: the pull account's tokens are reported as `pull`,
//! the push account's as `pull` and `push` (also when a pull-only request gets it because no
//! pull account is configured).
//!
//! # Lifetime, refresh, revocation
//!
//! Tokens expire at Google's `expireTime`: the request's TTL capped at `max_ttl` (a reply
//! expiring later than asked, by more than a minute of clock slack, is refused). Google allows 1
//! hour by default and up to 12 hours for accounts listed in an organization policy enforcing
//! `constraints/iam.allowServiceAccountCredentialLifetimeExtension`; `max_ttl` above 1h is
//! accepted (up to 12h) only for that setup, and Google's refusal otherwise names the policy.
//! Tokens are not refreshable: clients ask Rise again. A Google access token can only be revoked
//! by presenting the token itself (Google's revocation endpoint,
//! `https://oauth2.googleapis.com/revoke`, takes `token=<the token>`; "Revoking a token" in
//! <https://developers.google.com/identity/protocols/oauth2/web-server>), and Rise keeps none, so
//! `revocable` is false and [`RegistryProvider::revoke`] is unsupported; to cut access at once,
//! remove the account's role on the repository or disable the account.
//!
//! # Least-privilege setup in Google Cloud
//!
//! - Rise's own service account needs no role on Artifact Registry: only
//!   `roles/iam.serviceAccountTokenCreator` on each push/pull account (not on the project, which
//!   would let it impersonate every account there). Keep its key in a secret store and rotate it.
//! - Each push account: `roles/artifactregistry.writer` on its project's repository; each pull
//!   account: `roles/artifactregistry.reader` on it.
//!
//! # Failures
//!
//! Every call is bounded by `connect_timeout` and `request_timeout`. Timeouts are
//! [`ProviderError::Timeout`] (504). A refused key at the token endpoint (401/403, or 400
//! `invalid_grant`/`invalid_client`/`unauthorized_client`), and 401/403/404 from
//! `generateAccessToken` (which names the account and the missing
//! `roles/iam.serviceAccountTokenCreator`), are [`ProviderError::Misconfigured`] (502); other
//! statuses and malformed replies are [`ProviderError::Upstream`] (502). After a 401 the cached
//! token is dropped. Upstream bodies are summarised with secrets redacted and only ever logged;
//! the key, the assertion and every token are [`SecretString`]s or behind a hand-written `Debug`.

mod client;
mod identity;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use self::client::{GoogleClient, parse_endpoint};
use self::identity::{RiseIdentity, ServiceAccountKey};
use crate::config::lenient;
use crate::registry::providers::account;
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProjectName, ProviderError,
    RegistryProvider, RepositoryName,
};
use crate::secrets::{SecretResolver, SecretSource};

/// The user name Google documents for `docker login` with an access token.
pub const ACCESS_TOKEN_USERNAME: &str = "oauth2accesstoken";
/// `generateAccessToken`'s longest lifetime, with the organization policy extension.
const EXTENDED_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The `[registry]` table with `type = "google"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    /// The registry host clients log in to, e.g. `europe-docker.pkg.dev` or `gcr.io`.
    pub registry_host: String,
    /// The path before the project's repository: `<gcp-project>/<ar-repository>` for
    /// `*-docker.pkg.dev`, `<gcp-project>` for `gcr.io` hosts; may contain `{repository}`.
    pub repository_prefix: String,
    /// Rise's own service account JSON key. A value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub service_account_key: Option<SecretSource>,
    /// Template of the account whose tokens push (and pull, without `pull_service_account`).
    pub push_service_account: String,
    /// Template of the account whose tokens pull-only requests get.
    #[serde(default)]
    pub pull_service_account: Option<String>,
    #[serde(default = "defaults::iam_credentials_url")]
    pub iam_credentials_url: String,
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Allow `http://` endpoints: the assertion and tokens then cross the network in clear text.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, request_timeout, secret_refresh_interval,
    };
    use std::time::Duration;

    pub fn iam_credentials_url() -> String {
        "https://iamcredentials.googleapis.com".to_owned()
    }
    pub fn max_ttl() -> Duration {
        Duration::from_secs(3600)
    }
}

/// The Google provider. Holds Rise's key and token; its `Debug` shows neither.
#[derive(Debug)]
pub struct GoogleProvider {
    /// The registry's configured name, for log lines.
    name: String,
    registry_host: String,
    prefix: PathPrefix,
    push_account: AccountTemplate,
    pull_account: Option<AccountTemplate>,
    identity: RiseIdentity,
    client: GoogleClient,
    max_ttl: Duration,
}

impl GoogleProvider {
    /// Validate `config` and build the provider; `aws-secretsmanager:` references are read now,
    /// with the AWS SDK's default credential chain. `name` is the registry's configured name,
    /// used in error messages and logs.
    pub async fn from_config(name: &str, config: &GoogleConfig) -> anyhow::Result<Self> {
        let resolver =
            account::resolver_for(config.secret_refresh_interval, &config.service_account_key)
                .await;
        Ok(Self::with_secrets(name, config, &resolver).await?)
    }

    /// As [`from_config`](Self::from_config), reading references with `secrets`.
    pub async fn with_secrets(
        name: &str,
        config: &GoogleConfig,
        secrets: &SecretResolver,
    ) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let registry_host = config.registry_host.trim().to_ascii_lowercase();
        let kind = HostKind::of(&registry_host).map_err(bad)?;
        let prefix = PathPrefix::parse(&config.repository_prefix, kind).map_err(bad)?;
        let push_account =
            AccountTemplate::parse("push_service_account", &config.push_service_account)
                .map_err(bad)?;
        let pull_account = config
            .pull_service_account
            .as_deref()
            .map(|t| AccountTemplate::parse("pull_service_account", t))
            .transpose()
            .map_err(bad)?;
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
        ])
        .map_err(bad)?;
        if config.max_ttl > EXTENDED_MAX_LIFETIME {
            return Err(bad(
                "max_ttl must be at most 12h, the longest lifetime Google issues (and over 1h only for accounts listed in the organization policy constraints/iam.allowServiceAccountCredentialLifetimeExtension)".into(),
            ));
        }
        let iam_base = parse_endpoint(
            "iam_credentials_url",
            &config.iam_credentials_url,
            config.insecure_http,
        )
        .map_err(bad)?;
        let env_var = format!("{}SERVICE_ACCOUNT_KEY", account::env_prefix(name));
        let source = config.service_account_key.as_ref().ok_or_else(|| {
            bad(format!(
                "no service account key: set service_account_key, service_account_key_file or {env_var} to the JSON key of Rise's own service account"
            ))
        })?;
        let key = secrets
            .resolve(source)
            .await
            .map_err(|e| bad(format!("service_account_key: {e}")))?;
        let parsed =
            ServiceAccountKey::parse(&key.current().await, config.insecure_http).map_err(bad)?;
        let client = GoogleClient::new(iam_base, config.connect_timeout, config.request_timeout)
            .map_err(|e| bad(e.to_string()))?;
        let provider = Self {
            name: name.to_owned(),
            registry_host,
            prefix,
            push_account,
            pull_account,
            identity: RiseIdentity::new(key, config.insecure_http, config.request_timeout),
            client,
            max_ttl: config.max_ttl,
        };
        provider.log_posture(&parsed.client_email);
        if config.max_ttl > Duration::from_secs(client::DEFAULT_MAX_LIFETIME_SECS) {
            tracing::warn!(
                registry = %name,
                max_ttl = %humantime::format_duration(config.max_ttl),
                "google registry max_ttl is over 1h: Google refuses such lifetimes unless the accounts are listed in an organization policy enforcing constraints/iam.allowServiceAccountCredentialLifetimeExtension"
            );
        }
        Ok(provider)
    }

    fn log_posture(&self, rise_account: &str) {
        let scoped = |t: &AccountTemplate| t.per_project() && self.prefix.per_repository;
        if scoped(&self.push_account) && self.pull_account.as_ref().is_none_or(scoped) {
            tracing::info!(
                registry = %self.name,
                rise_account,
                "google registry impersonates one service account per project and repository: tokens are repository-scoped if each account holds roles only on its project's Artifact Registry repository"
            );
        } else {
            tracing::warn!(
                registry = %self.name,
                rise_account,
                "google registry tokens are not repository-scoped: projects share a service account or an Artifact Registry repository (put {{project}} or {{repository}} in the account templates and {{repository}} in repository_prefix)"
            );
        }
    }

    async fn issue_token(
        &self,
        request: &CredentialRequest,
        ttl: Duration,
    ) -> Result<IssuedCredential, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {}: {m}", self.name));
        let path = self.prefix.path(&request.repository).map_err(bad)?;
        let (template, granted_actions) = match &self.pull_account {
            Some(pull) if !request.actions.contains(Action::Push) => (pull, Actions::PULL),
            // The push account can push whatever was asked: say so.
            _ => (&self.push_account, Actions::PUSH_PULL),
        };
        let account = template
            .expand(&request.project, &request.repository)
            .map_err(bad)?;
        let lifetime_secs = ttl.as_secs().max(1);
        let rise = self.identity.token(&self.client).await?;
        let sent_at = SystemTime::now();
        let minted = match self
            .client
            .generate_access_token(&rise.token, &rise.client_email, &account, lifetime_secs)
            .await
        {
            Ok(minted) => minted,
            Err(failure) => {
                if failure.rise_token_refused {
                    self.identity.forget(&rise.token).await;
                }
                return Err(failure.error);
            }
        };
        let now = SystemTime::now();
        if minted.expire_time <= now {
            return Err(ProviderError::Upstream {
                operation: client::IAM_OPERATION,
                detail: format!("HTTP 200 with a token for {account} that has already expired"),
            });
        }
        // A token living longer than asked is not handed out (Rise cannot revoke it either:
        // it is dropped here and expires at Google's time).
        let longest = sent_at + Duration::from_secs(lifetime_secs) + CLOCK_SLACK;
        if minted.expire_time > longest {
            return Err(ProviderError::Upstream {
                operation: client::IAM_OPERATION,
                detail: format!(
                    "HTTP 200 with a token for {account} expiring at {}, later than the {lifetime_secs}s asked for; refused",
                    crate::audit::rfc3339_seconds(minted.expire_time)
                ),
            });
        }
        tracing::info!(
            registry = %self.name,
            request_id = %request.request_id,
            project = %request.project,
            service_account = %account,
            lifetime_secs,
            "google access token minted"
        );
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: ACCESS_TOKEN_USERNAME.to_owned(),
            password: minted.access_token,
            expires_at: minted.expire_time,
            repository: path,
            granted_actions,
            repository_scoped: template.per_project() && self.prefix.per_repository,
            // Only the token itself can revoke a Google access token, and Rise keeps none.
            revocable: false,
            expiry_enforced: true,
            credential_id: None,
        })
    }
}

/// Clock differences between Rise and Google not worth a warning.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

#[async_trait]
impl RegistryProvider for GoogleProvider {
    fn kind(&self) -> &'static str {
        "google"
    }

    fn registry_url(&self) -> String {
        self.registry_host.clone()
    }

    fn repository_path(&self, repository: &RepositoryName) -> String {
        // `issue` refuses a path that does not validate; this is the same expansion.
        self.prefix.expand(repository)
    }

    fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let ttl = request.ttl.min(self.max_ttl);
        let result = self.issue_token(request, ttl).await;
        super::warn_if_not_issued(self.kind(), &self.name, request, &result);
        result
    }
}

/// Which Google registry a host is, which fixes how many path segments name the Artifact
/// Registry repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// `LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE`.
    DockerPkgDev,
    /// `gcr.io/PROJECT/IMAGE` (and `us.`, `eu.`, `asia.gcr.io`): one `gcr.io` repository per
    /// Google Cloud project and host.
    GcrIo,
}

impl HostKind {
    fn of(host: &str) -> Result<Self, String> {
        let valid_chars = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if valid_chars && host.ends_with("-docker.pkg.dev") {
            Ok(HostKind::DockerPkgDev)
        } else if matches!(host, "gcr.io" | "us.gcr.io" | "eu.gcr.io" | "asia.gcr.io") {
            Ok(HostKind::GcrIo)
        } else {
            Err(format!(
                "registry_host {:?} is not an Artifact Registry Docker host: use LOCATION-docker.pkg.dev (e.g. europe-docker.pkg.dev) or gcr.io, us.gcr.io, eu.gcr.io, asia.gcr.io",
                host.chars().take(100).collect::<String>()
            ))
        }
    }

    fn prefix_segments(self) -> usize {
        match self {
            HostKind::DockerPkgDev => 2,
            HostKind::GcrIo => 1,
        }
    }
}

const REPOSITORY_PLACEHOLDER: &str = "{repository}";
const PROJECT_PLACEHOLDER: &str = "{project}";

/// `repository_prefix`: the Google Cloud project and (pkg.dev) the Artifact Registry
/// repository, possibly per project repository. A domain-scoped project ID
/// (`example.com:my-proj`) is written in image paths as `example.com/my-proj`, so its prefix
/// has one path segment more; either form is accepted.
#[derive(Debug)]
struct PathPrefix {
    /// As image paths have it: `example.com/my-proj/...` for a domain-scoped project.
    template: String,
    kind: HostKind,
    per_repository: bool,
    domain_scoped: bool,
}

impl PathPrefix {
    fn parse(raw: &str, kind: HostKind) -> Result<Self, String> {
        let raw = raw.trim().trim_matches('/');
        let mut segments: Vec<&str> = raw.split('/').collect();
        let domain_scoped = match segments[0].split_once(':') {
            Some((domain, project)) => {
                segments.splice(0..1, [domain, project]);
                true
            }
            None => segments.len() == kind.prefix_segments() + 1 && segments[0].contains('.'),
        };
        let shape = match kind {
            HostKind::DockerPkgDev => "<gcp-project>/<ar-repository>",
            HostKind::GcrIo => "<gcp-project>",
        };
        if segments.len() != kind.prefix_segments() + usize::from(domain_scoped) {
            return Err(format!(
                "repository_prefix {:?} must be {shape} for this registry_host (a domain-scoped project ID as example.com:my-project)",
                raw.chars().take(100).collect::<String>()
            ));
        }
        if domain_scoped && !valid_domain(segments[0]) {
            return Err(format!(
                "repository_prefix {:?} does not start with the domain of a domain-scoped project ID (example.com:my-project)",
                raw.chars().take(100).collect::<String>()
            ));
        }
        for segment in &segments[usize::from(domain_scoped)..] {
            let literal = segment.replace(REPOSITORY_PLACEHOLDER, "a");
            if literal.contains(['{', '}']) {
                return Err(
                    "repository_prefix may contain only the placeholder {repository}".into(),
                );
            }
            if !valid_prefix_segment(&literal) {
                return Err(format!(
                    "repository_prefix segment {:?} is not a Google Cloud project ID or Artifact Registry repository name (lowercase letters, digits and hyphens)",
                    segment.chars().take(100).collect::<String>()
                ));
            }
        }
        let template = segments.join("/");
        Ok(Self {
            per_repository: template.contains(REPOSITORY_PLACEHOLDER),
            template,
            kind,
            domain_scoped,
        })
    }

    fn expand(&self, repository: &RepositoryName) -> String {
        format!(
            "{}/{}",
            self.template
                .replace(REPOSITORY_PLACEHOLDER, repository.as_str()),
            repository.as_str()
        )
    }

    /// The full repository path, refused when the expanded prefix is not a valid one (e.g. a
    /// nested repository name in the Artifact Registry repository's place).
    fn path(&self, repository: &RepositoryName) -> Result<String, String> {
        if self.per_repository {
            let prefix = self
                .template
                .replace(REPOSITORY_PLACEHOLDER, repository.as_str());
            let segments: Vec<&str> = prefix.split('/').collect();
            let own = usize::from(self.domain_scoped);
            if segments.len() != self.kind.prefix_segments() + own
                || !segments[own..].iter().all(|s| valid_prefix_segment(s))
            {
                return Err(format!(
                    "repository {repository} cannot name an Artifact Registry repository through repository_prefix (one path segment of lowercase letters, digits and hyphens, at most 63 characters)"
                ));
            }
        }
        Ok(self.expand(repository))
    }
}

/// The domain of a domain-scoped project ID: two or more DNS labels.
fn valid_domain(s: &str) -> bool {
    s.len() <= 253 && s.contains('.') && s.split('.').all(dns_label)
}

/// A lowercase DNS label: letters, digits and hyphens, at most 63 characters.
fn dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Project IDs and Artifact Registry repository names: lowercase letters, digits and hyphens,
/// starting with a letter or digit, at most 63 characters (a conservative common subset).
fn valid_prefix_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A service account email template with `{project}` and `{repository}` placeholders.
#[derive(Debug, Clone)]
struct AccountTemplate(String);

impl AccountTemplate {
    fn parse(key: &str, raw: &str) -> Result<Self, String> {
        let template = raw.trim();
        let literal = template
            .replace(PROJECT_PLACEHOLDER, "p")
            .replace(REPOSITORY_PLACEHOLDER, "r");
        if literal.contains(['{', '}']) {
            return Err(format!(
                "{key} may contain only the placeholders {{project}} and {{repository}}"
            ));
        }
        if !valid_service_account_email(&literal) {
            return Err(format!(
                "{key} {:?} is not a service account email (name@project.iam.gserviceaccount.com)",
                template.chars().take(120).collect::<String>()
            ));
        }
        Ok(Self(template.to_owned()))
    }

    /// True when each project gets its own account.
    fn per_project(&self) -> bool {
        self.0.contains(PROJECT_PLACEHOLDER) || self.0.contains(REPOSITORY_PLACEHOLDER)
    }

    fn expand(&self, project: &ProjectName, repository: &RepositoryName) -> Result<String, String> {
        let email = self
            .0
            .replace(PROJECT_PLACEHOLDER, project.as_str())
            .replace(REPOSITORY_PLACEHOLDER, repository.as_str());
        if valid_service_account_email(&email) {
            Ok(email)
        } else {
            Err(format!(
                "project {project} (repository {repository}) does not form a valid service account email from template {:?}: account names take lowercase letters, digits and hyphens",
                self.0
            ))
        }
    }
}

/// `name@domain`: lowercase letters, digits and hyphens in the name, a dotted domain. Enough to
/// keep anything but an email out of the request path; Google checks the rest.
fn valid_service_account_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    dns_label(local) && domain.contains('.') && domain.split('.').all(dns_label) && s.len() <= 254
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(p: &str) -> ProjectName {
        ProjectName::parse(p).expect("valid project")
    }

    fn repo(r: &str) -> RepositoryName {
        RepositoryName::parse(r).expect("valid repository")
    }

    #[test]
    fn account_templates_expand_and_validate() {
        let t = AccountTemplate::parse(
            "push_service_account",
            "rise-{project}-push@my-proj.iam.gserviceaccount.com",
        )
        .expect("valid");
        assert!(t.per_project());
        assert_eq!(
            t.expand(&project("my-app"), &repo("my-app"))
                .expect("expands"),
            "rise-my-app-push@my-proj.iam.gserviceaccount.com"
        );
        // Names Google would refuse, or that could reach another path, are refused here.
        for p in ["my_app", "my.app"] {
            let e = t.expand(&project(p), &repo("my-app")).expect_err(p);
            assert!(e.contains("valid service account email"), "{e}");
        }
        let t =
            AccountTemplate::parse("k", "r-{repository}@p.iam.gserviceaccount.com").expect("valid");
        assert!(t.expand(&project("a"), &repo("team/app")).is_err());
        assert_eq!(
            t.expand(&project("a"), &repo("app")).expect("expands"),
            "r-app@p.iam.gserviceaccount.com"
        );
        let shared =
            AccountTemplate::parse("k", "rise-push@p.iam.gserviceaccount.com").expect("valid");
        assert!(!shared.per_project());
        for bad in [
            "rise-{user}@p.iam.gserviceaccount.com",
            "rise-{project}",
            "rise@localhost",
            "Rise@p.iam.gserviceaccount.com",
            "a/b@p.iam.gserviceaccount.com",
            "",
        ] {
            let e = AccountTemplate::parse("push_service_account", bad).expect_err(bad);
            assert!(e.contains("push_service_account"), "{bad}: {e}");
        }
    }

    #[test]
    fn hosts_and_prefixes() {
        assert_eq!(
            HostKind::of("europe-docker.pkg.dev"),
            Ok(HostKind::DockerPkgDev)
        );
        assert_eq!(HostKind::of("eu.gcr.io"), Ok(HostKind::GcrIo));
        for bad in ["docker.io", "evil.gcr.io", "europe-docker.pkg.dev/x", ""] {
            assert!(HostKind::of(bad).is_err(), "{bad}");
        }
        let p = PathPrefix::parse("my-proj/containers", HostKind::DockerPkgDev).expect("valid");
        assert!(!p.per_repository);
        assert_eq!(
            p.path(&repo("team/app")).expect("path"),
            "my-proj/containers/team/app"
        );
        let p = PathPrefix::parse("/my-proj/{repository}/", HostKind::DockerPkgDev).expect("valid");
        assert!(p.per_repository);
        assert_eq!(p.path(&repo("app")).expect("path"), "my-proj/app/app");
        assert_eq!(p.expand(&repo("app")), "my-proj/app/app");
        let e = p.path(&repo("team/app")).expect_err("nested");
        assert!(
            e.contains("cannot name an Artifact Registry repository"),
            "{e}"
        );
        assert!(p.path(&repo("my_app")).is_err());
        let p = PathPrefix::parse("my-proj", HostKind::GcrIo).expect("valid");
        assert_eq!(p.path(&repo("app")).expect("path"), "my-proj/app");
        // A domain-scoped project ID, as Google writes it or as image paths do.
        for raw in [
            "example.com:my-proj/{repository}",
            "example.com/my-proj/{repository}",
        ] {
            let p = PathPrefix::parse(raw, HostKind::DockerPkgDev).expect(raw);
            assert_eq!(
                p.path(&repo("app")).expect("path"),
                "example.com/my-proj/app/app",
                "{raw}"
            );
            assert!(p.path(&repo("team/app")).is_err(), "{raw}");
        }
        let p = PathPrefix::parse("example.com:my-proj", HostKind::GcrIo).expect("valid");
        assert_eq!(
            p.path(&repo("app")).expect("path"),
            "example.com/my-proj/app"
        );
        for (raw, kind) in [
            ("my-proj", HostKind::DockerPkgDev),
            ("my-proj/containers", HostKind::GcrIo),
            ("my-proj/{project}", HostKind::DockerPkgDev),
            ("My-Proj/containers", HostKind::DockerPkgDev),
            ("my-proj//x", HostKind::DockerPkgDev),
            // Not a domain before the colon, or one segment too many for a plain project.
            ("example:my-proj/containers", HostKind::DockerPkgDev),
            ("Example.com:my-proj/containers", HostKind::DockerPkgDev),
            ("example.com:my-proj/containers/x", HostKind::DockerPkgDev),
            (
                "{repository}.com:my-proj/containers",
                HostKind::DockerPkgDev,
            ),
            ("my-proj/containers/x", HostKind::DockerPkgDev),
            ("example.com:my-proj/containers", HostKind::GcrIo),
        ] {
            assert!(PathPrefix::parse(raw, kind).is_err(), "{raw}");
        }
    }
}

/// Configuration through the real loader, with a generated key.
#[cfg(test)]
mod config_tests {
    use std::sync::OnceLock;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::Config;
    use crate::config::test_support::load;
    use crate::registry::providers::ProviderConfig;
    use crate::registry::providers::test_support::{assert_typo_named, secret_file};

    /// A service account JSON key with a freshly generated RSA key (once per process: RSA
    /// generation is slow in debug builds).
    fn key_json() -> &'static str {
        static KEY: OnceLock<String> = OnceLock::new();
        KEY.get_or_init(|| {
            let pair =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .expect("RSA key");
            serde_json::json!({
                "type": "service_account",
                "project_id": "rise-test",
                "private_key_id": "0123abcd",
                "private_key": pair.serialize_pem(),
                "client_email": "rise-broker@rise-test.iam.gserviceaccount.com",
                "client_id": "1234567890",
                "token_uri": "https://oauth2.googleapis.com/token",
            })
            .to_string()
        })
    }

    fn google(c: &Config) -> &GoogleConfig {
        match &c.registry {
            Some(ProviderConfig::Google(g)) => g,
            other => panic!("expected a google registry, got {other:?}"),
        }
    }

    const TABLE: &str = r#"
[registry]
type = "google"
registry_host = "europe-docker.pkg.dev"
repository_prefix = "my-gcp-project/{repository}"
push_service_account = "rise-{project}-push@my-gcp-project.iam.gserviceaccount.com"
pull_service_account = "rise-{project}-pull@my-gcp-project.iam.gserviceaccount.com"
"#;

    #[tokio::test]
    async fn key_from_a_file_through_the_loader() {
        let (_key, line) = secret_file("service_account_key", key_json());
        let text = format!("{TABLE}{line}");
        let c = load(&text, &[("RISE_REGISTRY__MAX_TTL", "30m")]).expect("loads");
        let g = google(&c);
        assert_eq!(g.max_ttl, Duration::from_secs(1800));
        assert_eq!(
            g.iam_credentials_url,
            "https://iamcredentials.googleapis.com"
        );
        assert_eq!(g.request_timeout, Duration::from_secs(10));
        assert!(matches!(
            g.service_account_key,
            Some(SecretSource::Value(ref v)) if v.expose_secret().contains("BEGIN PRIVATE KEY")
        ));
        let p = GoogleProvider::from_config("default", g)
            .await
            .expect("valid provider");
        assert_eq!(p.kind(), "google");
        assert_eq!(p.registry_url(), "europe-docker.pkg.dev");
        assert_eq!(p.max_ttl(), Duration::from_secs(1800));
        let repo = RepositoryName::parse("my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "my-gcp-project/my-app/my-app");
        assert_eq!(
            c.registry.as_ref().map(ProviderConfig::kind),
            Some("google")
        );
        // Neither the provider's nor the configuration's Debug shows the key.
        let private = "BEGIN PRIVATE KEY";
        assert!(!format!("{p:?}").contains(private), "{p:?}");
        assert!(!format!("{g:?}").contains(private));
    }

    #[tokio::test]
    async fn key_from_the_environment() {
        let c = load(TABLE, &[("RISE_REGISTRY__SERVICE_ACCOUNT_KEY", key_json())]).expect("loads");
        GoogleProvider::from_config("default", google(&c))
            .await
            .expect("valid provider");
    }

    #[tokio::test]
    async fn missing_or_broken_key_is_a_clear_error() {
        let c = load(TABLE, &[]).expect("loads");
        let e = GoogleProvider::from_config("default", google(&c))
            .await
            .expect_err("no key")
            .to_string();
        assert!(
            e.contains("no service account key")
                && e.contains("RISE_REGISTRY__SERVICE_ACCOUNT_KEY"),
            "{e}"
        );
        let c = load(
            TABLE,
            &[(
                "RISE_REGISTRY__SERVICE_ACCOUNT_KEY",
                "{\"type\":\"service_account\"}",
            )],
        )
        .expect("loads");
        let e = GoogleProvider::from_config("default", google(&c))
            .await
            .expect_err("incomplete key")
            .to_string();
        assert!(
            e.contains("registry default: service_account_key has no client_email"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn invalid_settings_are_refused() {
        let key = format!("service_account_key = '''{}'''\n", key_json());
        let base = |host: &str, prefix: &str, extra: &str| {
            format!(
                "[registry]\ntype = \"google\"\nregistry_host = \"{host}\"\nrepository_prefix = \"{prefix}\"\npush_service_account = \"rise-{{project}}@p.iam.gserviceaccount.com\"\n{key}{extra}"
            )
        };
        for (text, part) in [
            (base("docker.io", "p/r", ""), "registry_host"),
            (base("europe-docker.pkg.dev", "p", ""), "repository_prefix"),
            (base("gcr.io", "p/r", ""), "repository_prefix"),
            (base("gcr.io", "p", "max_ttl = \"13h\"\n"), "max_ttl"),
            (base("gcr.io", "p", "max_ttl = \"0s\"\n"), "max_ttl"),
            (
                base(
                    "gcr.io",
                    "p",
                    "iam_credentials_url = \"http://127.0.0.1:1\"\n",
                ),
                "clear text",
            ),
            (
                base(
                    "gcr.io",
                    "p",
                    "pull_service_account = \"{user}@p.iam.gserviceaccount.com\"\n",
                ),
                "pull_service_account",
            ),
        ] {
            let c = load(&text, &[]).expect("loads");
            let e = GoogleProvider::from_config("default", google(&c))
                .await
                .expect_err(part)
                .to_string();
            assert!(e.contains(part), "{part}: {e}");
            assert!(!e.contains("PRIVATE KEY"), "{e}");
        }
    }

    #[test]
    fn typo_names_the_key() {
        assert_typo_named(TABLE, "push_service_acount", "secret-x");
    }
}
