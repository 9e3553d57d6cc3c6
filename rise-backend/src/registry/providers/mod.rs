//! Registry providers. Each module owns its configuration struct (the `type = "..."` table) and
//! an implementation of [`RegistryProvider`](super::RegistryProvider).

pub mod artifactory;
pub mod distribution;
pub mod ecr;

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
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Distribution(_) => "distribution",
            ProviderConfig::Ecr(_) => "ecr",
            ProviderConfig::Artifactory(_) => "artifactory",
        }
    }
}
