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
pub mod sweeper;
pub(crate) mod upstream;

use serde::Deserialize;

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

impl ProviderConfig {
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
