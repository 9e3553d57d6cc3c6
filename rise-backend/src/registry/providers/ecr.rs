//! AWS Elastic Container Registry (`type = "ecr"`).
//!
//! Rise calls ECR `GetAuthorizationToken`, base64-decodes the token into `AWS:<password>` and
//! hands out username `AWS`, that password and `registry_url`
//! `<account_id>.dkr.ecr.<region>.amazonaws.com` (`.amazonaws.com.cn` in China regions). The
//! server wraps this provider in a [`CachingProvider`](crate::registry::cache::CachingProvider):
//! concurrent requests for one repository share one upstream call, and a credential is reused
//! until `refresh_margin` before it expires.
//!
//! # Configuration
//!
//! The seed's keys work as written:
//!
//! ```toml
//! [registry]
//! type = "ecr"
//! region = "us-east-1"
//! account_id = "123456789012"
//! # Optional static credentials; without them the AWS SDK's default chain is used (environment,
//! # profile, web identity / IRSA, ECS task role, EC2 instance profile).
//! access_key_id = "AKIA..."
//! secret_access_key = "..."
//! ```
//!
//! All keys:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `region`, `account_id` | required | the registry's region and 12-digit account |
//! | `access_key_id`, `secret_access_key`, `session_token` | default chain | static credentials of the backend identity; each may be a value, `<key>_file`, a `RISE_REGISTRY__<KEY>` variable or `aws-secretsmanager:<name-or-arn>[#json-key]` |
//! | `push_role_arn` | none | role assumed per repository with a session policy (see *Scope*) |
//! | `repo_prefix` | `""` | prepended to repository names, e.g. `"rise/"` gives `rise/my-app` |
//! | `max_ttl` | `1h` with a push role, `12h` without | longest credential lifetime |
//! | `refresh_margin` | `5m` | cached credentials are replaced this long before they expire |
//! | `endpoint_url` | AWS | one endpoint for STS, ECR and Secrets Manager (an emulator such as moto) |
//! | `connect_timeout`, `timeout` | `3s`, `10s` | TCP connect, and one AWS operation including retries |
//! | `max_attempts` | `2` | attempts per AWS operation (1 = no retry) |
//! | `secret_refresh_interval` | `5m` | how often `aws-secretsmanager:` references are re-read |
//!
//! Secrets Manager references are read with the SDK's default credential chain (the backend's own
//! identity), in the reference ARN's region or else `region`.
//!
//! # Scope
//!
//! **Without `push_role_arn`** the token carries the backend identity's ECR permissions: it can
//! reach every repository that identity can. Rise reports `repository_scoped: false` and the
//! response carries a warning. Use this only for a pull-everything or single-repository setup.
//!
//! **With `push_role_arn`** each credential comes from its own STS `AssumeRole` session whose
//! inline session policy allows only the requested actions on the one repository ARN
//! `arn:<partition>:ecr:<region>:<account_id>:repository/<repo_prefix><repository>`, plus
//! `ecr:GetAuthorizationToken` (which has no resource-level permissions). A pull-only request gets
//! only the pull actions. AWS documents that a token's permission scope matches that of the IAM
//! principal that retrieved it, here the role session, whose permissions are the intersection of
//! the role's policy and the session policy; so the token can push/pull that repository and nothing
//! else. The session policy can only narrow the role's own policy, never widen it. Pull actions: `ecr:BatchCheckLayerAvailability`,
//! `ecr:BatchGetImage`, `ecr:GetDownloadUrlForLayer`; push adds `ecr:InitiateLayerUpload`,
//! `ecr:UploadLayerPart`, `ecr:CompleteLayerUpload`, `ecr:PutImage` (AWS's documented push set).
//!
//! Not scoped: image tags (a push credential can overwrite any tag unless the repository has tag
//! immutability), and the repository must already exist (the policy grants no
//! `ecr:CreateRepository`).
//!
//! # Lifetime
//!
//! AWS documents the authorization token as valid for 12 hours (`expiresAt` 12 h out) and as
//! representing the IAM credentials that retrieved it. Its documentation does not say whether a
//! token minted from role-session credentials outlives the session, so Rise takes the safe reading:
//! such a token is usable only while its session lives, and `expires_at` = min(token expiry,
//! session expiry). Should the token outlive the session, callers merely refresh early; they are
//! never told a credential lives longer than Rise can vouch for.
//!
//! The session lasts the requested ttl, but STS allows 900 s (15 min) at least and the role's
//! maximum session duration (1-12 h) at most; when the backend itself runs as a role (IRSA, ECS
//! task role, instance profile), assuming the push role is *role chaining*, which STS caps at 1 h.
//! Hence the 1 h default `max_ttl` with a push role. A caller who asks for less than 15 min gets a
//! 15-minute credential and is told so by `expires_in`.
//!
//! Without a push role the token lives 12 h whatever the caller asked for; `max_ttl` cannot shorten
//! it. (If the backend's own credentials are temporary, the token may stop working when they
//! expire; Rise cannot see that and reports the token's 12 h.)
//!
//! If ECR reports an expiry that is missing or already past (AWS emulators do: moto returns a fixed
//! 2015 date), Rise logs a warning and assumes 12 h from issue, bounded by the session expiry when
//! there is one. It never reports a credential as live that it believes has expired; if it cannot
//! do better the HTTP layer adds a `warnings` entry (`expires_in` 0).
//!
//! # Refresh and revocation
//!
//! Cached credentials are replaced `refresh_margin` before they expire. ECR authorization tokens
//! cannot be revoked (`revocable: false`). The only way to cut a push-role credential short is to
//! revoke the role's sessions in IAM ("Revoke active sessions" adds a deny for tokens issued before
//! now), which cuts off every session of that role, not one credential.
//!
//! With a push role, `credential_id` (in the audit log) is the session's access key id: unique
//! per session, not a secret, and recorded by CloudTrail as `userIdentity.accessKeyId`.
//!
//! # IAM permissions (least privilege)
//!
//! Backend identity, without a push role (the seed's setup; the token can reach what this allows):
//!
//! ```json
//! {"Version": "2012-10-17", "Statement": [
//!   {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
//!   {"Effect": "Allow",
//!    "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
//!               "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"],
//!    "Resource": "arn:aws:ecr:us-east-1:123456789012:repository/rise/*"}]}
//! ```
//!
//! Backend identity, with a push role (it needs no ECR permission of its own):
//!
//! ```json
//! {"Version": "2012-10-17", "Statement": [
//!   {"Effect": "Allow", "Action": "sts:AssumeRole",
//!    "Resource": "arn:aws:iam::123456789012:role/rise-push"}]}
//! ```
//!
//! Add `secretsmanager:GetSecretValue` on the referenced secrets' ARNs when you use
//! `aws-secretsmanager:` references.
//!
//! Push role `rise-push`: its trust policy names the backend identity as principal, and its
//! permission policy is the ceiling every session policy is intersected with:
//!
//! ```json
//! {"Version": "2012-10-17", "Statement": [
//!   {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
//!   {"Effect": "Allow",
//!    "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
//!               "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"],
//!    "Resource": "arn:aws:ecr:us-east-1:123456789012:repository/rise/*"}]}
//! ```
//!
//! Session policy Rise sends for a push to `rise/my-app` (minified on the wire):
//!
//! ```json
//! {"Version": "2012-10-17", "Statement": [
//!   {"Sid": "RiseRepository", "Effect": "Allow",
//!    "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:CompleteLayerUpload",
//!               "ecr:GetDownloadUrlForLayer", "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"],
//!    "Resource": "arn:aws:ecr:us-east-1:123456789012:repository/rise/my-app"},
//!   {"Sid": "RiseLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}]}
//! ```
//!
//! # Failures
//!
//! Every AWS call is bounded by `connect_timeout`, `timeout` and `max_attempts`. A timeout becomes
//! [`ProviderError::Timeout`] (HTTP 504); anything else (connection refused, 4xx/5xx, a reply
//! without a usable token) becomes [`ProviderError::Upstream`] (HTTP 502) naming the operation.
//! The SDK's error text goes to the server log only.

use std::fmt;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_sts::config::IdentityCache;
use aws_sdk_sts::error::{DisplayErrorContext, SdkError};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::lenient;
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
    RepositoryName,
};
use crate::secrets::{Secret, SecretResolver, SecretSettings, SecretSource};

/// AWS documents ECR authorization tokens as valid for 12 hours.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// STS `AssumeRole` refuses a `DurationSeconds` below 900.
pub const MIN_SESSION: Duration = Duration::from_secs(900);
/// The longest role session STS grants (a role's maximum session duration is at most 12 h).
pub const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);

/// ECR refuses longer repository names.
pub const MAX_REPOSITORY_NAME: usize = 256;

/// ECR actions a pull needs.
pub const PULL_ACTIONS: &[&str] = &[
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
];
/// ECR actions a push needs on top of the pull actions.
pub const PUSH_ACTIONS: &[&str] = &[
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcrConfig {
    pub region: String,
    pub account_id: String,
    #[serde(default)]
    pub access_key_id: Option<SecretSource>,
    #[serde(default)]
    pub secret_access_key: Option<SecretSource>,
    #[serde(default)]
    pub session_token: Option<SecretSource>,
    /// Assume this role per repository with a session policy scoped to that repository.
    #[serde(default)]
    pub push_role_arn: Option<String>,
    /// Prepended to repository names: `rise/` turns project repository `my-app` into `rise/my-app`.
    #[serde(default)]
    pub repo_prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    #[serde(default = "defaults::refresh_margin", with = "humantime_serde")]
    pub refresh_margin: Duration,
    /// One endpoint for STS, ECR and Secrets Manager, for AWS-compatible endpoints and emulators.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on one AWS operation, retries included.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "defaults::max_attempts", deserialize_with = "lenient::u64")]
    pub max_attempts: u64,
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
}

mod defaults {
    pub use crate::registry::providers::defaults::secret_refresh_interval;
    use std::time::Duration;

    pub fn refresh_margin() -> Duration {
        Duration::from_secs(300)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_attempts() -> u64 {
        2
    }
}

/// Mints ECR credentials; see the module documentation.
pub struct EcrProvider {
    name: String,
    region: String,
    account_id: String,
    partition: String,
    registry_host: String,
    repo_prefix: String,
    push_role_arn: Option<String>,
    max_ttl: Duration,
    timeout: Duration,
    sdk: SdkConfig,
    sts: aws_sdk_sts::Client,
    ecr: aws_sdk_ecr::Client,
}

impl fmt::Debug for EcrProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrProvider")
            .field("name", &self.name)
            .field("registry_host", &self.registry_host)
            .field("push_role_arn", &self.push_role_arn)
            .field("repo_prefix", &self.repo_prefix)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl EcrProvider {
    /// Build from configuration, reading `aws-secretsmanager:` references with the SDK's default
    /// credential chain (and `endpoint_url`, when set).
    pub async fn from_config(name: &str, config: &EcrConfig) -> anyhow::Result<Self> {
        let ambient = sdk_loader(config).load().await;
        let secrets = SecretResolver::new(
            ambient,
            SecretSettings {
                refresh_interval: config.secret_refresh_interval,
                fetch_timeout: config.timeout,
                ..SecretSettings::default()
            },
        );
        Self::with_secrets(name, config, &secrets).await
    }

    /// Build from configuration, resolving secret references with `secrets`.
    pub async fn with_secrets(
        name: &str,
        config: &EcrConfig,
        secrets: &SecretResolver,
    ) -> anyhow::Result<Self> {
        let v = Validated::check(config)?;
        let keys = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => Some(ConfiguredKeys {
                access_key_id: secrets.resolve(id).await.context("access_key_id")?,
                secret_access_key: secrets.resolve(secret).await.context("secret_access_key")?,
                session_token: secrets
                    .resolve_opt(config.session_token.as_ref())
                    .await
                    .context("session_token")?,
            }),
            (None, None) if config.session_token.is_some() => {
                bail!("session_token is set without access_key_id and secret_access_key")
            }
            (None, None) => None,
            _ => bail!(
                "give both access_key_id and secret_access_key, or neither to use the AWS default credential chain"
            ),
        };
        let mut loader = sdk_loader(config);
        if let Some(keys) = keys {
            // The keys cache themselves (`Secret`), and a rotated secret must be used at once.
            loader = loader
                .credentials_provider(SharedCredentialsProvider::new(keys))
                .identity_cache(IdentityCache::no_cache());
        }
        let sdk = loader.load().await;
        if v.push_role_arn.is_none() {
            tracing::warn!(
                registry = name,
                "ECR registry without push_role_arn: credentials reach every repository the backend identity can; configure push_role_arn to scope them to one repository"
            );
        }
        Ok(Self {
            name: name.to_owned(),
            region: config.region.clone(),
            account_id: config.account_id.clone(),
            registry_host: v.registry_host,
            partition: v.partition,
            repo_prefix: v.repo_prefix,
            push_role_arn: v.push_role_arn,
            max_ttl: v.max_ttl,
            timeout: config.timeout,
            sts: aws_sdk_sts::Client::new(&sdk),
            ecr: aws_sdk_ecr::Client::new(&sdk),
            sdk,
        })
    }

    /// The ARN of a repository path in this registry.
    pub fn repository_arn(&self, repository_path: &str) -> String {
        format!(
            "arn:{}:ecr:{}:{}:repository/{}",
            self.partition, self.region, self.account_id, repository_path
        )
    }

    /// The session policy sent with `AssumeRole`: `actions` on one repository, plus login.
    pub fn session_policy(&self, repository_path: &str, actions: Actions) -> String {
        session_policy(&self.repository_arn(repository_path), actions)
    }

    async fn assume_push_role(
        &self,
        role_arn: &str,
        repository_path: &str,
        actions: Actions,
        ttl: Duration,
    ) -> Result<Session, ProviderError> {
        let duration = ttl.clamp(MIN_SESSION, self.max_ttl.max(MIN_SESSION));
        let started = std::time::Instant::now();
        let sent = self
            .sts
            .assume_role()
            .role_arn(role_arn)
            .role_session_name(session_name(repository_path))
            .policy(self.session_policy(repository_path, actions))
            .duration_seconds(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await;
        crate::metrics::record_upstream_latency(self.kind(), ASSUME_ROLE, started.elapsed());
        let output = sent.map_err(|e| sdk_failure(ASSUME_ROLE, e, self.timeout))?;
        let malformed = |what: &str| ProviderError::Upstream {
            operation: ASSUME_ROLE,
            detail: format!("malformed reply: {what}"),
        };
        let creds = output
            .credentials()
            .ok_or_else(|| malformed("no Credentials"))?;
        let expires_at = SystemTime::try_from(*creds.expiration())
            .map_err(|_| malformed("Expiration out of range"))?;
        Ok(Session {
            credentials: Credentials::new(
                creds.access_key_id(),
                creds.secret_access_key(),
                Some(creds.session_token().to_owned()),
                Some(expires_at),
                "rise-push-role-session",
            ),
            expires_at,
            access_key_id: creds.access_key_id().to_owned(),
        })
    }

    async fn authorization_token(
        &self,
        client: &aws_sdk_ecr::Client,
    ) -> Result<Token, ProviderError> {
        let started = std::time::Instant::now();
        let sent = client.get_authorization_token().send().await;
        crate::metrics::record_upstream_latency(self.kind(), GET_TOKEN, started.elapsed());
        let output = sent.map_err(|e| sdk_failure(GET_TOKEN, e, self.timeout))?;
        let malformed = |what: &str| ProviderError::Upstream {
            operation: GET_TOKEN,
            detail: format!("malformed reply: {what}"),
        };
        let data = output
            .authorization_data()
            .first()
            .ok_or_else(|| malformed("no authorizationData"))?;
        let encoded = data
            .authorization_token()
            .ok_or_else(|| malformed("no authorizationToken"))?;
        let (username, password) = decode_token(encoded).map_err(malformed)?;
        if let Some(endpoint) = data.proxy_endpoint() {
            let host = endpoint
                .trim_start_matches("https://")
                .trim_end_matches('/');
            if host != self.registry_host {
                tracing::warn!(
                    registry = %self.name,
                    proxy_endpoint = %endpoint,
                    registry_url = %self.registry_host,
                    "ECR's proxyEndpoint differs from the registry URL Rise hands out; check region and account_id"
                );
            }
        }
        Ok(Token {
            username,
            password,
            reported_expiry: data
                .expires_at()
                .and_then(|t| SystemTime::try_from(*t).ok()),
        })
    }

    /// min(token expiry, session expiry), with the token's expiry sanity-checked: missing or
    /// already past means "12 h from now", as AWS documents (see the module documentation).
    fn credential_expiry(&self, token: &Token, session: Option<SystemTime>) -> SystemTime {
        let now = SystemTime::now();
        let documented = now + TOKEN_LIFETIME;
        let token_expiry = match token.reported_expiry {
            Some(t) if t > now => t.min(documented),
            reported => {
                tracing::warn!(
                    registry = %self.name,
                    reported = %reported
                        .map(crate::audit::rfc3339_seconds)
                        .unwrap_or_else(|| "nothing".into()),
                    "ECR reported an authorization token expiry that is missing or already past; assuming the documented 12 h{}",
                    if session.is_some() { ", bounded by the role session" } else { "" }
                );
                documented
            }
        };
        session.map_or(token_expiry, |s| token_expiry.min(s))
    }
}

const ASSUME_ROLE: &str = "STS AssumeRole";
const GET_TOKEN: &str = "ECR GetAuthorizationToken";

struct Session {
    credentials: Credentials,
    expires_at: SystemTime,
    /// The session's access key id (`ASIA...`): an identifier, not a secret, unique per session,
    /// and what CloudTrail records as `userIdentity.accessKeyId` for calls made with it.
    access_key_id: String,
}

struct Token {
    username: String,
    password: SecretString,
    reported_expiry: Option<SystemTime>,
}

#[async_trait]
impl RegistryProvider for EcrProvider {
    fn kind(&self) -> &'static str {
        "ecr"
    }

    fn registry_url(&self) -> String {
        self.registry_host.clone()
    }

    fn repository_path(&self, repository: &RepositoryName) -> String {
        format!("{}{}", self.repo_prefix, repository.as_str())
    }

    fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let repository = self.repository_path(&request.repository);
        if repository.len() > MAX_REPOSITORY_NAME {
            return Err(ProviderError::Unsupported(format!(
                "repository name {repository:?} is longer than ECR's {MAX_REPOSITORY_NAME} characters"
            )));
        }
        let actions = request.actions.normalise_push();
        if actions.is_empty() {
            return Err(ProviderError::Unsupported(
                "no actions requested: ask for pull, push or both".into(),
            ));
        }
        let (token, session) = match &self.push_role_arn {
            None => (self.authorization_token(&self.ecr).await?, None),
            Some(role) => {
                let session = self
                    .assume_push_role(role, &repository, actions, request.ttl)
                    .await?;
                let conf = aws_sdk_ecr::config::Builder::from(&self.sdk)
                    .credentials_provider(session.credentials.clone())
                    .build();
                let client = aws_sdk_ecr::Client::from_conf(conf);
                (self.authorization_token(&client).await?, Some(session))
            }
        };
        let expires_at = self.credential_expiry(&token, session.as_ref().map(|s| s.expires_at));
        let scoped = session.is_some();
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: token.username,
            password: token.password,
            expires_at,
            repository,
            // Without a session policy the token can do whatever the backend identity can.
            granted_actions: if scoped { actions } else { Actions::PUSH_PULL },
            repository_scoped: scoped,
            revocable: false,
            expiry_enforced: true,
            // Unique per session (the session ARN is the same for every session of a repository).
            credential_id: session.map(|s| s.access_key_id),
        })
    }
}

/// Static credentials from configuration (values or Secrets Manager references), read afresh for
/// each signed request so a rotated secret is used as soon as [`Secret`] re-reads it.
#[derive(Debug)]
struct ConfiguredKeys {
    access_key_id: Secret,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

impl ProvideCredentials for ConfiguredKeys {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let access_key_id = self.access_key_id.current().await;
            let secret_access_key = self.secret_access_key.current().await;
            let session_token = match &self.session_token {
                Some(t) => Some(t.current().await.expose_secret().to_owned()),
                None => None,
            };
            // The SDK holds credentials as plain strings (zeroized on drop); they leave here
            // only to sign requests.
            Ok(Credentials::new(
                access_key_id.expose_secret(),
                secret_access_key.expose_secret(),
                session_token,
                None,
                "rise-configuration",
            ))
        })
    }
}

/// The SDK settings every client of this provider shares: region, endpoint, timeouts, retries.
fn sdk_loader(config: &EcrConfig) -> ConfigLoader {
    let attempts = u32::try_from(config.max_attempts.clamp(1, 10)).unwrap_or(2);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .operation_attempt_timeout(config.timeout / attempts)
                .operation_timeout(config.timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(attempts));
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader
}

/// The configuration, checked and derived once at start-up.
#[derive(Debug)]
struct Validated {
    partition: String,
    registry_host: String,
    repo_prefix: String,
    push_role_arn: Option<String>,
    max_ttl: Duration,
}

impl Validated {
    fn check(config: &EcrConfig) -> anyhow::Result<Self> {
        ensure!(
            config.account_id.len() == 12 && config.account_id.bytes().all(|b| b.is_ascii_digit()),
            "account_id must be the 12-digit AWS account id, e.g. \"123456789012\""
        );
        ensure!(
            !config.region.is_empty()
                && config
                    .region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "region must be an AWS region name such as \"us-east-1\""
        );
        let region_partition = partition_of_region(&config.region);
        let partition = match &config.push_role_arn {
            Some(arn) => {
                let partition = role_arn_partition(arn).with_context(|| {
                    format!(
                        "push_role_arn {arn:?} is not a role ARN: expected arn:aws:iam::<account>:role/<name>"
                    )
                })?;
                ensure!(
                    partition == region_partition,
                    "push_role_arn is in partition {partition} but region {} is in {region_partition}",
                    config.region
                );
                partition.to_owned()
            }
            None => region_partition.to_owned(),
        };
        let repo_prefix = config.repo_prefix.clone().unwrap_or_default();
        if !repo_prefix.is_empty() {
            // The prefix must make valid repository names; `x` stands for any project repository.
            RepositoryName::parse(&format!("{repo_prefix}x")).map_err(|_| {
                anyhow::anyhow!(
                    "repo_prefix {repo_prefix:?} does not form valid repository names: use lowercase path components ending in '/' (\"rise/\") or a separator (\"rise-\")"
                )
            })?;
        }
        let max_ttl = match (config.max_ttl, &config.push_role_arn) {
            (Some(t), Some(_)) => {
                ensure!(
                    (MIN_SESSION..=MAX_SESSION).contains(&t),
                    "max_ttl must be between 15m and 12h with push_role_arn (STS session limits)"
                );
                t
            }
            (Some(t), None) => {
                ensure!(
                    t <= TOKEN_LIFETIME && !t.is_zero(),
                    "max_ttl must be at most 12h (ECR tokens live 12 h)"
                );
                t
            }
            // Role chaining (a backend that itself runs as a role) caps sessions at 1 h.
            (None, Some(_)) => Duration::from_secs(3600),
            (None, None) => TOKEN_LIFETIME,
        };
        ensure!(
            config.refresh_margin < max_ttl,
            "refresh_margin must be shorter than max_ttl"
        );
        ensure!(
            !config.timeout.is_zero() && !config.connect_timeout.is_zero(),
            "timeout and connect_timeout must be positive"
        );
        ensure!(
            (1..=10).contains(&config.max_attempts),
            "max_attempts must be between 1 and 10"
        );
        if let Some(endpoint) = &config.endpoint_url {
            // An emulator (moto) or a VPC endpoint: plain http is allowed, credentials are not.
            super::upstream::endpoint_url("endpoint_url", endpoint, true, None)
                .map_err(anyhow::Error::msg)?;
        }
        let dns_suffix = if partition == "aws-cn" {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Ok(Self {
            registry_host: format!(
                "{}.dkr.ecr.{}.{dns_suffix}",
                config.account_id, config.region
            ),
            partition,
            repo_prefix,
            push_role_arn: config.push_role_arn.clone(),
            max_ttl,
        })
    }
}

fn partition_of_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/NAME` -> `PARTITION`.
fn role_arn_partition(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource
                    .strip_prefix("role/")
                    .is_some_and(|n| !n.is_empty()) =>
        {
            Some(partition)
        }
        _ => None,
    }
}

/// A minified IAM policy allowing `actions` on `repository_arn` and `ecr:GetAuthorizationToken`.
pub fn session_policy(repository_arn: &str, actions: Actions) -> String {
    let mut ecr_actions: Vec<&str> = PULL_ACTIONS.to_vec();
    if actions.contains(Action::Push) {
        ecr_actions.extend_from_slice(PUSH_ACTIONS);
    }
    ecr_actions.sort_unstable();
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RiseRepository",
                "Effect": "Allow",
                "Action": ecr_actions,
                "Resource": repository_arn,
            },
            {
                "Sid": "RiseLogin",
                "Effect": "Allow",
                "Action": "ecr:GetAuthorizationToken",
                "Resource": "*",
            }
        ]
    })
    .to_string()
}

/// `rise-<repository path>`, within STS's 2-64 characters of `[\w+=,.@-]` (`/` becomes `.`).
pub fn session_name(repository_path: &str) -> String {
    let mut name: String = format!("rise-{repository_path}")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '+' | '=' | ',' | '.' | '@' | '-' => c,
            _ => '.',
        })
        .collect();
    name.truncate(64);
    name
}

/// `base64("AWS:<password>")` -> (`AWS`, password). Errors never quote the token.
fn decode_token(encoded: &str) -> Result<(String, SecretString), &'static str> {
    let decoded = secrecy::zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "authorizationToken is not base64")?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| "authorizationToken is not UTF-8")?;
    let (username, password) = text
        .split_once(':')
        .ok_or("authorizationToken is not user:password")?;
    if username.is_empty() || password.is_empty() {
        return Err("authorizationToken has an empty user or password");
    }
    Ok((username.to_owned(), SecretString::from(password.to_owned())))
}

/// A failed SDK call as a [`ProviderError`]; the SDK's text is kept for the log only.
fn sdk_failure<E, R>(operation: &'static str, err: SdkError<E, R>, after: Duration) -> ProviderError
where
    E: std::error::Error + Send + Sync + 'static,
    R: fmt::Debug,
{
    let timed_out = match &err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(f) => f.is_timeout(),
        _ => false,
    };
    if timed_out {
        ProviderError::Timeout { operation, after }
    } else {
        ProviderError::Upstream {
            operation,
            detail: DisplayErrorContext(&err).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> EcrConfig {
        toml::from_str(toml_text).expect("valid ECR config")
    }

    const SEED_STATIC: &str = r#"
        region = "us-east-1"
        account_id = "123456789012"
        access_key_id = "AKIA..."
        secret_access_key = "..."
    "#;
    const SEED_ROLE: &str = r#"
        region = "us-east-1"
        account_id = "123456789012"
    "#;

    #[test]
    fn seed_examples_validate() {
        for text in [SEED_STATIC, SEED_ROLE] {
            let v = Validated::check(&config(text)).expect("valid");
            assert_eq!(
                v.registry_host,
                "123456789012.dkr.ecr.us-east-1.amazonaws.com"
            );
            assert_eq!(v.max_ttl, TOKEN_LIFETIME);
            assert!(v.push_role_arn.is_none());
        }
    }

    /// The seed's two `[registry]` tables, through the whole configuration loader, with the
    /// secret given directly, as `secret_access_key_file` and as `RISE_REGISTRY__SECRET_ACCESS_KEY`.
    #[test]
    fn seed_tables_load_through_the_config_loader() {
        use crate::config::{Config, Sources};
        use crate::registry::providers::ProviderConfig;
        use std::io::Write;

        let load = |text: &str, env: &[(&str, &str)]| {
            let mut f = tempfile::NamedTempFile::new().expect("temp file");
            f.write_all(text.as_bytes()).expect("write");
            let config = Config::load(&Sources {
                files: vec![f.path().to_owned()],
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .expect("loads");
            match config.registry {
                Some(ProviderConfig::Ecr(ecr)) => ecr,
                other => panic!("expected an ECR registry, got {other:?}"),
            }
        };
        let secret_of = |c: &EcrConfig| match &c.secret_access_key {
            Some(SecretSource::Value(v)) => v.expose_secret().to_owned(),
            other => panic!("{other:?}"),
        };

        let c = load(&format!("[registry]\ntype = \"ecr\"\n{SEED_STATIC}"), &[]);
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.account_id, "123456789012");
        assert_eq!(secret_of(&c), "...");
        assert!(!format!("{c:?}").contains("\"...\""), "Debug hides secrets");

        let c = load(&format!("[registry]\ntype = \"ecr\"\n{SEED_ROLE}"), &[]);
        assert!(c.access_key_id.is_none() && c.secret_access_key.is_none());

        let mut secret_file = tempfile::NamedTempFile::new().expect("temp file");
        secret_file.write_all(b"from-file\n").expect("write");
        let c = load(
            &format!(
                "[registry]\ntype = \"ecr\"\n{SEED_ROLE}\naccess_key_id = \"AKIA\"\nsecret_access_key_file = {:?}\n",
                secret_file.path()
            ),
            &[],
        );
        assert_eq!(secret_of(&c), "from-file");

        let c = load(
            &format!("[registry]\ntype = \"ecr\"\n{SEED_STATIC}"),
            &[("RISE_REGISTRY__SECRET_ACCESS_KEY", "from-env")],
        );
        assert_eq!(secret_of(&c), "from-env");
    }

    #[test]
    fn push_role_defaults_to_one_hour_for_role_chaining() {
        let c = config(
            r#"
            region = "cn-north-1"
            account_id = "123456789012"
            push_role_arn = "arn:aws-cn:iam::123456789012:role/rise-push"
            repo_prefix = "rise/"
        "#,
        );
        let v = Validated::check(&c).expect("valid");
        assert_eq!(v.max_ttl, Duration::from_secs(3600));
        assert_eq!(v.partition, "aws-cn");
        assert_eq!(
            v.registry_host,
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn invalid_configurations_say_what_to_fix() {
        let check = |extra: &str, expect: &str| {
            let c = config(&format!(
                "region = \"us-east-1\"\naccount_id = \"123456789012\"\n{extra}"
            ));
            let err = Validated::check(&c).expect_err(extra).to_string();
            assert!(err.contains(expect), "{extra}: {err}");
        };
        check("push_role_arn = \"rise-push\"", "not a role ARN");
        check(
            "push_role_arn = \"arn:aws-cn:iam::123456789012:role/x\"",
            "partition",
        );
        check("repo_prefix = \"Rise/\"", "repo_prefix");
        check(
            "push_role_arn = \"arn:aws:iam::123456789012:role/x\"\nmax_ttl = \"5m\"",
            "between 15m and 12h",
        );
        check("max_ttl = \"13h\"", "at most 12h");
        check("max_attempts = 0", "max_attempts");
        check("endpoint_url = \"127.0.0.1:5000\"", "is not a URL");
        check("endpoint_url = \"http://\"", "endpoint_url");
        check(
            "endpoint_url = \"https://admin:hunter2@[::1\"",
            "endpoint_url \"https://<redacted>@[::1\" is not a URL",
        );
        check(
            "endpoint_url = \"https://admin:hunter2@sts.example\"",
            "must not contain credentials",
        );
        let c = config("region = \"us-east-1\"\naccount_id = \"1234\"\n");
        let err = Validated::check(&c).expect_err("short account").to_string();
        assert!(err.contains("12-digit"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<EcrConfig>(
            "region = \"us-east-1\"\naccount_id = \"123456789012\"\npush_role = \"x\"\n",
        )
        .expect_err("typo")
        .to_string();
        assert!(err.contains("push_role"), "{err}");
    }

    #[test]
    fn session_policy_allows_one_repository() {
        let arn = "arn:aws:ecr:us-east-1:123456789012:repository/rise/my-app";
        let pull: serde_json::Value =
            serde_json::from_str(&session_policy(arn, Actions::PULL)).expect("JSON");
        assert_eq!(
            pull,
            serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Sid": "RiseRepository", "Effect": "Allow",
                     "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                                "ecr:GetDownloadUrlForLayer"],
                     "Resource": arn},
                    {"Sid": "RiseLogin", "Effect": "Allow",
                     "Action": "ecr:GetAuthorizationToken", "Resource": "*"}
                ]
            })
        );
        let push = session_policy(arn, Actions::PUSH_PULL);
        assert!(!push.contains(' '), "minified: {push}");
        for action in PULL_ACTIONS.iter().chain(PUSH_ACTIONS) {
            assert!(push.contains(action), "{action} in {push}");
        }
    }

    #[test]
    fn session_policy_fits_sts_limit_for_the_longest_repository_name() {
        // STS refuses session policies over 2,048 characters of plaintext.
        let longest = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        let arn = format!("arn:aws-us-gov:ecr:us-gov-west-1:123456789012:repository/{longest}");
        let policy = session_policy(&arn, Actions::PUSH_PULL);
        assert!(policy.len() < 2048, "{} characters", policy.len());
    }

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(session_name("rise/my-app"), "rise-rise.my-app");
        let long = session_name(&"a".repeat(200));
        assert_eq!(long.len(), 64);
    }

    #[test]
    fn tokens_decode_without_echoing() {
        let (user, password) = decode_token("QVdTOnNlY3JldA==").expect("AWS:secret");
        assert_eq!(user, "AWS");
        assert_eq!(password.expose_secret(), "secret");
        // "c2VjcmV0" is "secret": no colon.
        let err = decode_token("c2VjcmV0").expect_err("no colon");
        assert!(!err.contains("secret"));
        assert!(decode_token("%%%").is_err());
    }

    #[test]
    fn role_arns() {
        assert_eq!(
            role_arn_partition("arn:aws:iam::123456789012:role/a/b"),
            Some("aws")
        );
        assert_eq!(role_arn_partition("arn:aws:iam::123456789012:user/a"), None);
        assert_eq!(role_arn_partition("arn:aws:iam::12:role/a"), None);
    }
}
