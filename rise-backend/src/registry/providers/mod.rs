//! Registry providers. Each module owns its configuration struct (the `type = "..."` table) and
//! an implementation of [`RegistryProvider`](super::RegistryProvider).

pub(crate) mod account;
pub mod acr;
pub mod artifactory;
pub mod distribution;
pub mod dockerhub;
pub mod ecr;
pub mod ghcr;
pub mod google;
pub mod harbor;
pub mod quay;
pub(crate) mod robots;
pub mod sweeper;
pub(crate) mod upstream;

use std::time::Duration;

use serde::Deserialize;

use crate::registry::{CredentialRequest, IssuedCredential, ProviderError};

/// A `[registry]` or `[registries.NAME]` table, selected by its `type` key.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Rise is the token server of a CNCF Distribution registry.
    Distribution(distribution::DistributionConfig),
    /// AWS Elastic Container Registry.
    Ecr(Box<ecr::EcrConfig>),
    /// JFrog Artifactory: minted access tokens or the seed's static credentials.
    Artifactory(Box<artifactory::ArtifactoryConfig>),
    /// Google Artifact Registry (and `gcr.io` hosts it serves): impersonated service accounts.
    Google(Box<google::GoogleConfig>),
    /// Azure Container Registry: repository-scoped ACR tokens with expiring passwords.
    Acr(Box<acr::AcrConfig>),
    /// GitHub Container Registry: GitHub App installation tokens.
    Ghcr(Box<ghcr::GhcrConfig>),
    /// Docker Hub: organization access tokens.
    Dockerhub(Box<dockerhub::DockerhubConfig>),
    /// Harbor: project robot accounts, deleted when they expire.
    Harbor(Box<harbor::HarborConfig>),
    /// Quay (quay.io or Red Hat Quay): robot accounts with one repository's permission, deleted
    /// when they expire.
    Quay(Box<quay::QuayConfig>),
}

/// Where a `[registry]`-style `table` fails to deserialize, relative to the table (`password`),
/// read from its `type`'s own struct: through the `type` tag, serde loses the path. `None` when
/// the type is unknown or the failure is the table itself.
pub fn error_path(table: &toml::Table) -> Option<String> {
    fn path<T: serde::de::DeserializeOwned>(value: toml::Value) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(value)
            .err()
            .map(|e| e.path().to_string())
    }
    let mut fields = table.clone();
    let kind = fields.remove("type")?;
    let value = toml::Value::Table(fields);
    match kind.as_str()? {
        "distribution" => path::<distribution::DistributionConfig>(value),
        "ecr" => path::<ecr::EcrConfig>(value),
        "artifactory" => path::<artifactory::ArtifactoryConfig>(value),
        "google" => path::<google::GoogleConfig>(value),
        "acr" => path::<acr::AcrConfig>(value),
        "ghcr" => path::<ghcr::GhcrConfig>(value),
        "dockerhub" => path::<dockerhub::DockerhubConfig>(value),
        "harbor" => path::<harbor::HarborConfig>(value),
        "quay" => path::<quay::QuayConfig>(value),
        _ => None,
    }
    .filter(|p| !p.is_empty() && p != ".")
}

/// The longest `max_ttl` any registry may set: Rise hands out short-lived credentials, and no
/// upstream it speaks to keeps one longer (Docker Hub's limit is a year).
pub const LONGEST_MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

impl ProviderConfig {
    /// The configured `max_ttl`, where the table sets one (ECR derives its own when not set).
    pub fn max_ttl(&self) -> Option<Duration> {
        match self {
            ProviderConfig::Distribution(c) => Some(c.max_ttl),
            ProviderConfig::Ecr(c) => c.max_ttl,
            ProviderConfig::Artifactory(c) => Some(c.max_ttl),
            ProviderConfig::Google(c) => Some(c.max_ttl),
            ProviderConfig::Acr(c) => Some(c.max_ttl),
            ProviderConfig::Ghcr(c) => Some(c.max_ttl),
            ProviderConfig::Dockerhub(c) => Some(c.max_ttl),
            ProviderConfig::Harbor(c) => Some(c.max_ttl),
            ProviderConfig::Quay(c) => Some(c.max_ttl),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Distribution(_) => "distribution",
            ProviderConfig::Ecr(_) => "ecr",
            ProviderConfig::Artifactory(_) => "artifactory",
            ProviderConfig::Google(_) => "google",
            ProviderConfig::Acr(_) => "acr",
            ProviderConfig::Ghcr(_) => "ghcr",
            ProviderConfig::Dockerhub(_) => "dockerhub",
            ProviderConfig::Harbor(_) => "harbor",
            ProviderConfig::Quay(_) => "quay",
        }
    }
}

/// Defaults that several providers' tables share. Each provider's own `defaults` module
/// re-exports those it uses, beside its own, for its `#[serde(default = ...)]` attributes.
pub(crate) mod defaults {
    use std::time::Duration;

    pub fn max_ttl() -> Duration {
        Duration::from_secs(12 * 3600)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn secret_refresh_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn yes() -> bool {
        true
    }
}

/// `<key> must be greater than zero` for the first of `durations` that is zero.
pub(crate) fn require_nonzero(durations: &[(&str, Duration)]) -> Result<(), String> {
    match durations.iter().find(|(_, value)| value.is_zero()) {
        Some((key, _)) => Err(format!("{key} must be greater than zero")),
        None => Ok(()),
    }
}

/// Logs a failed issuance of provider `kind` for registry `registry`, the same way for every
/// provider. Errors carry no secret: upstream bodies are redacted, secrets never formatted.
pub(crate) fn warn_if_not_issued(
    kind: &str,
    registry: &str,
    request: &CredentialRequest,
    result: &Result<IssuedCredential, ProviderError>,
) {
    if let Err(e) = result {
        tracing::warn!(
            registry = %registry,
            request_id = %request.request_id,
            project = %request.project,
            error = %e,
            "{kind} credential not issued"
        );
    }
}

/// What the providers' configuration tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::Write;

    use crate::config::test_support::load;

    /// A temporary file holding `contents`, and the line `<key>_file = "<its path>"` that names
    /// it in a table. The file is gone once dropped: keep it until the configuration is loaded.
    pub(crate) fn secret_file(key: &str, contents: &str) -> (tempfile::NamedTempFile, String) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes()).expect("write");
        let line = format!("{key}_file = {:?}\n", file.path().display().to_string());
        (file, line)
    }

    /// Loading `table` with `key = "<value>"` added, a key its type does not have, fails with
    /// an error that names the key and not the value.
    pub(crate) fn assert_typo_named(table: &str, key: &str, value: &str) {
        let e = load(&format!("{table}{key} = {value:?}\n"), &[]).expect_err("unknown key");
        assert!(e.contains(&format!("registry.{key}")), "{e}");
        assert!(!e.contains(value), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::require_nonzero;

    #[test]
    fn zero_durations_are_named() {
        let one = Duration::from_secs(1);
        assert_eq!(require_nonzero(&[("a", one), ("b", one)]), Ok(()));
        assert_eq!(
            require_nonzero(&[("a", one), ("b", Duration::ZERO), ("c", Duration::ZERO)]),
            Err("b must be greater than zero".to_owned())
        );
    }
}
