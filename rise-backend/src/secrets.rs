//! Secrets that providers hold: given in the configuration (directly, as `<key>_file`, or through a
//! `RISE_<SECTION>__<KEY>` environment variable, all handled by [`crate::config`]) or referenced in
//! AWS Secrets Manager.
//!
//! A configuration value of the form `aws-secretsmanager:<name-or-arn>` (optionally
//! `#<json-key>`) is a reference: [`SecretResolver::resolve`] reads it at start-up (so a missing
//! secret stops the server from starting, not the first request), and [`Secret::current`]
//! re-reads it once it is older than the refresh interval, so a rotated secret is picked up without
//! a restart. When a re-read fails, the last good value is kept and the failure is logged: a
//! Secrets Manager outage must not take the broker down with it.
//!
//! Any other value is the secret itself.
//!
//! **Invariant:** a secret's value is never logged, never in a `Debug` print and never in an error
//! message; only the reference (a name or ARN, which is not secret) is.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use tokio::time::Instant;

/// The prefix that makes a configuration value a Secrets Manager reference.
pub const AWS_SECRETS_MANAGER_PREFIX: &str = "aws-secretsmanager:";

/// Where a secret comes from, as written in the configuration.
#[derive(Clone)]
pub enum SecretSource {
    /// The value itself.
    Value(SecretString),
    /// A secret in AWS Secrets Manager.
    AwsSecretsManager(AwsSecretRef),
}

/// `aws-secretsmanager:<secret_id>[#<json_key>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSecretRef {
    /// The secret's name or full ARN (an ARN also names the region the secret lives in).
    pub secret_id: String,
    /// When set, the secret string is a JSON object and the value is this key's string.
    pub json_key: Option<String>,
}

impl SecretSource {
    /// A value is a reference when it starts with `aws-secretsmanager:`; anything else is the
    /// secret itself. Only a malformed reference is an error, and its message names the
    /// reference, which is not secret.
    pub fn parse(value: &str) -> Result<Self, SecretError> {
        let Some(rest) = value.strip_prefix(AWS_SECRETS_MANAGER_PREFIX) else {
            return Ok(SecretSource::Value(SecretString::from(value.to_owned())));
        };
        let (secret_id, json_key) = match rest.split_once('#') {
            Some((id, key)) => (id.trim(), Some(key.trim())),
            None => (rest.trim(), None),
        };
        if secret_id.is_empty() || json_key.is_some_and(str::is_empty) {
            return Err(SecretError::InvalidReference(value.to_owned()));
        }
        Ok(SecretSource::AwsSecretsManager(AwsSecretRef {
            secret_id: secret_id.to_owned(),
            json_key: json_key.map(str::to_owned),
        }))
    }

    /// Where the value comes from, for log lines and errors (never the value).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Value(_) => "a value in the configuration".to_owned(),
            SecretSource::AwsSecretsManager(r) => r.to_string(),
        }
    }
}

impl fmt::Display for AwsSecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{AWS_SECRETS_MANAGER_PREFIX}{}", self.secret_id)?;
        if let Some(key) = &self.json_key {
            write!(f, "#{key}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("SecretSource::Value(<redacted>)"),
            SecretSource::AwsSecretsManager(r) => write!(f, "SecretSource::AwsSecretsManager({r})"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretSource::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a secret could not be had. Messages name the reference and what went wrong, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "invalid secret reference {0:?}: use aws-secretsmanager:<name-or-arn> or aws-secretsmanager:<name-or-arn>#<json-key>"
    )]
    InvalidReference(String),
    #[error(
        "no AWS region to read {0} from: give the secret's full ARN or set the region (AWS_REGION)"
    )]
    NoRegion(String),
    #[error("cannot read {reference} from AWS Secrets Manager: {reason}")]
    Fetch { reference: String, reason: String },
    #[error("{reference} cannot be used: {reason}")]
    Unusable { reference: String, reason: String },
}

/// How references are read and refreshed.
#[derive(Debug, Clone, Copy)]
pub struct SecretSettings {
    /// A value older than this is re-read on its next use.
    pub refresh_interval: Duration,
    /// After a failed re-read, the next attempt waits at least this long (the old value is
    /// served meanwhile).
    pub retry_after_failure: Duration,
    /// Upper bound on one read, retries included.
    pub fetch_timeout: Duration,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// Turns [`SecretSource`]s into [`Secret`]s, reading references with the AWS identity, region
/// and endpoint of the [`SdkConfig`] it was built with.
pub struct SecretResolver {
    base: SdkConfig,
    settings: SecretSettings,
    clients: Mutex<HashMap<String, aws_sdk_secretsmanager::Client>>,
}

impl fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretResolver")
            .field("region", &self.base.region())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SecretResolver {
    /// Read references with `base`'s credentials, region and endpoint (an emulator's, in tests).
    pub fn new(base: SdkConfig, settings: SecretSettings) -> Self {
        Self {
            base,
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Read references with the AWS SDK's default credential chain and region (environment,
    /// profile, web identity, ECS task role, EC2 instance profile). Loading does no network I/O.
    pub async fn from_environment(settings: SecretSettings) -> Self {
        let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(settings.fetch_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .load()
            .await;
        Self::new(base, settings)
    }

    /// Resolve `source` now. A reference is read from Secrets Manager before this returns.
    pub async fn resolve(&self, source: &SecretSource) -> Result<Secret, SecretError> {
        match source {
            SecretSource::Value(v) => Ok(Secret::plain(v.clone())),
            SecretSource::AwsSecretsManager(reference) => {
                let client = self.client_for(reference)?;
                let value = fetch(&client, reference, self.settings.fetch_timeout).await?;
                Ok(Secret(SecretInner::Aws(Arc::new(AwsSecret {
                    reference: reference.clone(),
                    client,
                    settings: self.settings,
                    state: Mutex::new(Fetched {
                        value,
                        fetched_at: Instant::now(),
                        failed_at: None,
                    }),
                    refreshing: tokio::sync::Mutex::new(()),
                }))))
            }
        }
    }

    /// Resolve an optional source.
    pub async fn resolve_opt(
        &self,
        source: Option<&SecretSource>,
    ) -> Result<Option<Secret>, SecretError> {
        match source {
            Some(s) => self.resolve(s).await.map(Some),
            None => Ok(None),
        }
    }

    /// Secrets Manager is regional: a secret given by ARN is read in the ARN's region.
    fn client_for(
        &self,
        reference: &AwsSecretRef,
    ) -> Result<aws_sdk_secretsmanager::Client, SecretError> {
        let region = arn_region(&reference.secret_id)
            .map(str::to_owned)
            .or_else(|| self.base.region().map(|r| r.to_string()))
            .ok_or_else(|| SecretError::NoRegion(reference.to_string()))?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = clients.entry(region.clone()).or_insert_with(|| {
            let conf = aws_sdk_secretsmanager::config::Builder::from(&self.base)
                .region(aws_config::Region::new(region))
                .build();
            aws_sdk_secretsmanager::Client::from_conf(conf)
        });
        Ok(client.clone())
    }
}

/// `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME` -> `REGION`.
/// `raw`, a configured URL that may not even parse, fit to quote in an error message: at most
/// 100 characters, any `user:password@` before the host replaced by `<redacted>@`.
pub(crate) fn shown_url(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |i| i + 3);
    let rest = &raw[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let shown = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &raw[..start], &rest[at..]),
        None => raw.to_owned(),
    };
    shown.chars().take(100).collect()
}

fn arn_region(secret_id: &str) -> Option<&str> {
    let mut parts = secret_id.splitn(6, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("secretsmanager"), Some(region)) if !region.is_empty() => {
            Some(region)
        }
        _ => None,
    }
}

/// A resolved secret: a handle that always has a value. Cheap to clone.
#[derive(Clone)]
pub struct Secret(SecretInner);

#[derive(Clone)]
enum SecretInner {
    Plain(SecretString),
    Aws(Arc<AwsSecret>),
}

struct AwsSecret {
    reference: AwsSecretRef,
    client: aws_sdk_secretsmanager::Client,
    settings: SecretSettings,
    state: Mutex<Fetched>,
    /// Only one re-read at a time; callers that arrive meanwhile wait for it.
    refreshing: tokio::sync::Mutex<()>,
}

struct Fetched {
    value: SecretString,
    fetched_at: Instant,
    failed_at: Option<Instant>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SecretInner::Plain(_) => f.write_str("Secret(<redacted>)"),
            SecretInner::Aws(s) => write!(f, "Secret({}: <redacted>)", s.reference),
        }
    }
}

impl Secret {
    /// A secret given directly.
    pub fn plain(value: SecretString) -> Self {
        Secret(SecretInner::Plain(value))
    }

    /// Where the value comes from (never the value).
    pub fn describe(&self) -> String {
        match &self.0 {
            SecretInner::Plain(_) => "a value in the configuration".to_owned(),
            SecretInner::Aws(s) => s.reference.to_string(),
        }
    }

    /// The current value. A reference older than the refresh interval is re-read first (one
    /// read at a time); if that fails, the last good value is returned and the failure logged.
    pub async fn current(&self) -> SecretString {
        match &self.0 {
            SecretInner::Plain(v) => v.clone(),
            SecretInner::Aws(s) => s.current().await,
        }
    }
}

impl AwsSecret {
    async fn current(&self) -> SecretString {
        if let Some(v) = self.fresh_value() {
            return v;
        }
        let _only_one_refresh = self.refreshing.lock().await;
        // Another caller may have refreshed while this one waited.
        if let Some(v) = self.fresh_value() {
            return v;
        }
        match fetch(&self.client, &self.reference, self.settings.fetch_timeout).await {
            Ok(value) => {
                let mut state = self.lock_state();
                state.value = value.clone();
                state.fetched_at = Instant::now();
                state.failed_at = None;
                value
            }
            Err(err) => {
                tracing::warn!(
                    secret = %self.reference,
                    error = %err,
                    "re-reading a secret failed; keeping the last value"
                );
                let mut state = self.lock_state();
                state.failed_at = Some(Instant::now());
                state.value.clone()
            }
        }
    }

    /// The cached value when it needs no re-read (fresh, or a re-read failed very recently).
    fn fresh_value(&self) -> Option<SecretString> {
        let state = self.lock_state();
        let fresh = state.fetched_at.elapsed() < self.settings.refresh_interval;
        let backing_off = state
            .failed_at
            .is_some_and(|t| t.elapsed() < self.settings.retry_after_failure);
        (fresh || backing_off).then(|| state.value.clone())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, Fetched> {
        // The state is a plain value swap; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One `GetSecretValue`, bounded by `timeout`, and the extraction of the value.
async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    reference: &AwsSecretRef,
    timeout: Duration,
) -> Result<SecretString, SecretError> {
    let call = client
        .get_secret_value()
        .secret_id(&reference.secret_id)
        .send();
    let output = match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            return Err(SecretError::Fetch {
                reference: reference.to_string(),
                reason: format!("no answer within {timeout:?}"),
            });
        }
        Ok(Err(err)) => {
            return Err(SecretError::Fetch {
                reference: reference.to_string(),
                reason: DisplayErrorContext(&err).to_string(),
            });
        }
        Ok(Ok(output)) => output,
    };
    let unusable = |reason: &str| SecretError::Unusable {
        reference: reference.to_string(),
        reason: reason.to_owned(),
    };
    let Some(text) = output.secret_string() else {
        return Err(unusable(
            "the secret has no string value (binary secrets are not supported)",
        ));
    };
    let Some(key) = &reference.json_key else {
        return Ok(SecretString::from(text.to_owned()));
    };
    // Parsing into a `Value` cannot fail with a message that quotes the text: syntax errors name
    // only a line and column.
    let json: serde_json::Value = serde_json::from_str(text).map_err(|_| {
        unusable("the secret is not a JSON object, so it has no key to select with '#'")
    })?;
    match json.get(key) {
        Some(serde_json::Value::String(v)) => Ok(SecretString::from(v.clone())),
        Some(_) => Err(unusable(&format!("key {key:?} is not a string"))),
        None => Err(unusable(&format!("the JSON has no key {key:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_shown_url_hides_its_userinfo_even_when_it_does_not_parse() {
        for (raw, shown) in [
            (
                "https://admin:s3cret@jfrog.example:99999/x",
                "https://<redacted>@jfrog.example:99999/x",
            ),
            ("https://a:b@c@[::1", "https://<redacted>@[::1"),
            ("admin:s3cret@host", "<redacted>@host"),
            ("https://host/p@th?q=a@b", "https://host/p@th?q=a@b"),
            ("rise example com", "rise example com"),
        ] {
            assert_eq!(shown_url(raw), shown, "{raw}");
        }
        assert_eq!(shown_url(&"x".repeat(500)).len(), 100);
    }

    #[test]
    fn plain_values_and_references() {
        match SecretSource::parse("hunter2").expect("plain") {
            SecretSource::Value(v) => assert_eq!(v.expose_secret(), "hunter2"),
            other => panic!("{other:?}"),
        }
        let check = |input: &str, id: &str, key: Option<&str>| match SecretSource::parse(input) {
            Ok(SecretSource::AwsSecretsManager(r)) => {
                assert_eq!(r.secret_id, id);
                assert_eq!(r.json_key.as_deref(), key);
                assert_eq!(r.to_string(), input);
            }
            other => panic!("{input}: {other:?}"),
        };
        check("aws-secretsmanager:rise/ecr", "rise/ecr", None);
        check(
            "aws-secretsmanager:rise/ecr#secret_access_key",
            "rise/ecr",
            Some("secret_access_key"),
        );
        check(
            "aws-secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:rise-AbCdEf#k",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rise-AbCdEf",
            Some("k"),
        );
        for bad in [
            "aws-secretsmanager:",
            "aws-secretsmanager:#k",
            "aws-secretsmanager:x#",
        ] {
            let err = SecretSource::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("aws-secretsmanager:<name-or-arn>"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_a_value() {
        let plain = SecretSource::parse("hunter2").expect("plain");
        assert!(!format!("{plain:?}").contains("hunter2"));
        let secret = Secret::plain(SecretString::from("hunter2".to_owned()));
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.describe(), "a value in the configuration");
    }

    #[test]
    fn deserializes_from_toml_strings() {
        #[derive(Debug, Deserialize)]
        struct T {
            a: SecretSource,
            b: SecretSource,
        }
        let t: T = toml::from_str("a = \"v\"\nb = \"aws-secretsmanager:n#k\"\n").expect("parses");
        assert!(matches!(t.a, SecretSource::Value(_)));
        assert!(matches!(t.b, SecretSource::AwsSecretsManager(_)));
        let err = toml::from_str::<T>("a = \"v\"\nb = \"aws-secretsmanager:\"\n")
            .expect_err("malformed reference")
            .to_string();
        assert!(err.contains("invalid secret reference"), "{err}");
    }

    #[test]
    fn region_comes_from_an_arn() {
        assert_eq!(
            arn_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:x"),
            Some("eu-west-1")
        );
        assert_eq!(arn_region("rise/ecr"), None);
        assert_eq!(arn_region("arn:aws:s3:::bucket"), None);
    }

    #[tokio::test]
    async fn plain_secret_is_its_value() {
        let s = Secret::plain(SecretString::from("v".to_owned()));
        assert_eq!(s.current().await.expose_secret(), "v");
    }
}
