//! Rise's own account at an upstream, as the configuration gives it: the environment variables
//! that set a registry's keys, and the account's secret, read once at start (an
//! `aws-secretsmanager:` reference is re-read later by [`Secret::current`]).
//!
//! Errors are plain text for the provider to prefix with the registry's name. They name keys and
//! variables and say what to set, never a value.

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::secrets::{Secret, SecretResolver, SecretSettings, SecretSource};

/// The start of the environment variables that set registry `name`'s keys: `RISE_REGISTRY__`
/// for the default registry, `RISE_REGISTRIES__<NAME>__` for a named one.
pub(crate) fn env_prefix(name: &str) -> String {
    if name == crate::config::DEFAULT_REGISTRY {
        "RISE_REGISTRY__".to_owned()
    } else {
        format!("RISE_REGISTRIES__{}__", name.to_ascii_uppercase())
    }
}

/// How secret `key` of registry `name` is set: `key, key_file or RISE_…__KEY`.
pub(crate) fn secret_key_ways(name: &str, key: &str) -> String {
    format!(
        "{key}, {key}_file or {}{}",
        env_prefix(name),
        key.to_ascii_uppercase()
    )
}

/// A resolver for `sources`, re-reading references every `refresh_interval`: with the AWS SDK's
/// default credential chain when one of them is an `aws-secretsmanager:` reference, otherwise
/// with an empty SDK configuration, which avoids probing the environment for nothing to read.
pub(crate) async fn resolver_for<'a>(
    refresh_interval: Duration,
    sources: impl IntoIterator<Item = &'a SecretSource>,
) -> SecretResolver {
    let settings = SecretSettings {
        refresh_interval,
        ..SecretSettings::default()
    };
    let has_reference = sources
        .into_iter()
        .any(|s| matches!(s, SecretSource::AwsSecretsManager(_)));
    if has_reference {
        SecretResolver::from_environment(settings).await
    } else {
        SecretResolver::new(aws_config::SdkConfig::builder().build(), settings)
    }
}

/// Secret `key` read from `source` with `secrets`, refused when blank. The error is
/// `<key>: <why it cannot be read>` or `<key> is empty<blank_hint>`.
pub(crate) async fn resolve_nonblank(
    secrets: &SecretResolver,
    key: &str,
    source: &SecretSource,
    blank_hint: &str,
) -> Result<Secret, String> {
    let secret = secrets
        .resolve(source)
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    if secret.current().await.expose_secret().trim().is_empty() {
        return Err(format!("{key} is empty{blank_hint}"));
    }
    Ok(secret)
}

/// Rise's user name at the upstream of registry `name`, trimmed and required; `who` says in the
/// error which account it must be.
pub(crate) fn username(name: &str, value: Option<&str>, who: &str) -> Result<String, String> {
    match value.map(str::trim) {
        Some(u) if !u.is_empty() => Ok(u.to_owned()),
        _ => Err(format!(
            "username is not set: set username or {}USERNAME ({who})",
            env_prefix(name)
        )),
    }
}

/// Rise's secret `key` at the upstream of registry `name`, read from `source` with a resolver
/// of its own. Required and not blank: the error says how to set it (followed by `missing_note`
/// when it is not set at all).
pub(crate) async fn secret(
    name: &str,
    key: &str,
    source: Option<&SecretSource>,
    refresh_interval: Duration,
    missing_note: &str,
) -> Result<Secret, String> {
    let ways = secret_key_ways(name, key);
    let Some(source) = source else {
        return Err(format!("{key} is not set: set {ways}{missing_note}"));
    };
    let resolver = resolver_for(refresh_interval, [source]).await;
    resolve_nonblank(&resolver, key, source, &format!(" (set {ways})")).await
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn value(s: &str) -> SecretSource {
        SecretSource::Value(SecretString::from(s.to_owned()))
    }

    #[test]
    fn variables_name_the_registry() {
        assert_eq!(
            env_prefix(crate::config::DEFAULT_REGISTRY),
            "RISE_REGISTRY__"
        );
        assert_eq!(env_prefix("eu-west"), "RISE_REGISTRIES__EU-WEST__");
        assert_eq!(
            secret_key_ways("eu", "password"),
            "password, password_file or RISE_REGISTRIES__EU__PASSWORD"
        );
    }

    #[tokio::test]
    async fn secrets_are_required_and_not_blank_and_never_shown() {
        let interval = Duration::from_secs(300);
        let e = secret("default", "token", None, interval, " (an OAuth token)")
            .await
            .expect_err("missing");
        assert_eq!(
            e,
            "token is not set: set token, token_file or RISE_REGISTRY__TOKEN (an OAuth token)"
        );
        let e = secret("default", "password", Some(&value(" \n")), interval, "")
            .await
            .expect_err("blank");
        assert_eq!(
            e,
            "password is empty (set password, password_file or RISE_REGISTRY__PASSWORD)"
        );
        let s = secret(
            "default",
            "password",
            Some(&value("hunter2-pw")),
            interval,
            "",
        )
        .await
        .expect("set");
        assert_eq!(s.current().await.expose_secret(), "hunter2-pw");
        assert!(!format!("{s:?}").contains("hunter2-pw"));
    }

    #[test]
    fn user_names_are_trimmed_and_required() {
        assert_eq!(
            username("default", Some(" rise "), "x").as_deref(),
            Ok("rise")
        );
        for missing in [None, Some(""), Some("  ")] {
            assert_eq!(
                username("hub", missing, "an owner").expect_err("missing"),
                "username is not set: set username or RISE_REGISTRIES__HUB__USERNAME (an owner)"
            );
        }
    }
}
