//! Rise as the token server of a CNCF Distribution registry (Docker registry token spec).

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionConfig {
    /// Host and port clients push to, e.g. `registry.example.com` or `127.0.0.1:5000`.
    pub url: String,
    /// The registry's `auth.token.service`; the `aud` of registry tokens.
    #[serde(default = "defaults::service")]
    pub service: String,
    /// The registry's `auth.token.issuer`; the `iss` of registry tokens.
    #[serde(default = "defaults::issuer")]
    pub issuer: String,
    /// Lifetime of registry tokens handed out by `/token`.
    #[serde(default = "defaults::token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Longest lifetime of a grant (the credential `/registry/credentials` returns).
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

mod defaults {
    use std::time::Duration;
    pub fn service() -> String {
        "rise-registry".into()
    }
    pub fn issuer() -> String {
        "rise".into()
    }
    pub fn token_ttl() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_ttl() -> Duration {
        Duration::from_secs(12 * 3600)
    }
}

/// PLACEHOLDER until the token server lands.
pub fn registry_config_snippet(
    _config: &crate::config::Config,
    _registry: Option<&str>,
) -> anyhow::Result<String> {
    anyhow::bail!("not implemented yet")
}
