//! PLACEHOLDER: replaced by the real verifier (OIDC discovery + JWKS + local issuer).

use std::path::Path;
use std::time::Duration;

use super::{AuthError, Principal};
use crate::config::AuthConfig;

#[derive(Debug)]
pub struct Authenticator;

impl Authenticator {
    pub async fn from_config(
        _config: &AuthConfig,
        _local: Option<LocalIssuer>,
    ) -> anyhow::Result<Self> {
        Ok(Authenticator)
    }

    pub async fn verify(&self, _token: &str) -> Result<Principal, AuthError> {
        Err(AuthError::BadSignature)
    }
}

#[derive(Debug)]
pub struct LocalIssuer;

impl LocalIssuer {
    pub fn load_or_create(
        _data_dir: &Path,
        _config: &crate::config::LocalIssuerConfig,
    ) -> anyhow::Result<Self> {
        Ok(LocalIssuer)
    }

    pub fn issue(&self, _sub: &str, _groups: &[String], _ttl: Duration) -> anyhow::Result<String> {
        anyhow::bail!("not implemented")
    }
}
