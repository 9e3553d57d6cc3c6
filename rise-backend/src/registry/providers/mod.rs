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
        }
    }
}
