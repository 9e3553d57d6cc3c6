//! Registries and the providers that mint credentials for them.
//!
//! This module speaks domain types only: no HTTP, no JSON wire formats. The HTTP layer turns a
//! request into a [`CredentialRequest`], a provider turns that into an [`IssuedCredential`].

pub mod cache;
pub mod names;
pub mod providers;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;

pub use names::{Action, Actions, NameError, ProjectName, RepositoryName, is_dns_name};

use crate::auth::Principal;

/// What a caller asks a provider for, after authentication and policy have both said yes.
#[derive(Debug, Clone)]
pub struct CredentialRequest {
    /// Correlates log lines and audit records of one HTTP request.
    pub request_id: String,
    pub principal: Arc<Principal>,
    pub project: ProjectName,
    /// The registry's configured name (`default` for the seed's `[registry]` table).
    pub registry: String,
    pub repository: RepositoryName,
    /// Already intersected with what the policy allows.
    pub actions: Actions,
    /// The lifetime the caller may have; providers may give less, never more.
    pub ttl: Duration,
}

/// A credential as a provider minted it. `password` is the only secret; it is exposed once, when
/// the HTTP layer serialises the response.
#[derive(Debug)]
pub struct IssuedCredential {
    /// Host (and port) a client logs in to, e.g. `123456789012.dkr.ecr.us-east-1.amazonaws.com`.
    pub registry_url: String,
    pub username: String,
    pub password: SecretString,
    pub expires_at: SystemTime,
    /// Repository path inside the registry, e.g. `my-app` or `docker-local/my-app`.
    pub repository: String,
    /// What the credential can really do upstream. For a provider that cannot scope, this is
    /// wider than what was asked for and `repository_scoped` is false.
    pub granted_actions: Actions,
    /// True when the upstream enforces the repository scope, false when it can reach more.
    pub repository_scoped: bool,
    /// True when Rise can revoke the credential before it expires.
    pub revocable: bool,
    /// True when the upstream refuses the credential after `expires_at`; false when
    /// `expires_at` only tells the client when to ask again (a static password).
    pub expiry_enforced: bool,
    /// Provider-issued identifier used for revocation and audit (never secret).
    pub credential_id: Option<String>,
}

impl IssuedCredential {
    /// The full image reference a client pushes to, without a tag.
    pub fn image_reference(&self) -> String {
        format!("{}/{}", self.registry_url, self.repository)
    }
}

/// A failure of a provider, in terms the HTTP layer maps to 502/504/503 without echoing
/// upstream text to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The upstream answered, but not with a credential (4xx/5xx, malformed reply).
    #[error("upstream {operation} failed: {detail}")]
    Upstream {
        operation: &'static str,
        /// Internal detail for the log; never returned to the client.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream {operation} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    /// The provider is misconfigured (missing key, unreadable helper, ...).
    #[error("provider misconfigured: {0}")]
    Misconfigured(String),
    /// The request cannot be satisfied by this provider (e.g. an action it cannot grant).
    #[error("{0}")]
    Unsupported(String),
}

/// A registry backend that mints narrow, short-lived credentials.
///
/// Object-safe: the application holds providers as `Arc<dyn RegistryProvider>` chosen at runtime
/// from configuration. One contract suite (`tests/it/conformance.rs`) runs against every
/// implementation, each with its upstream: a real one where it runs here, else a fake written from
/// the upstream's public API documentation.
#[async_trait]
pub trait RegistryProvider: Send + Sync + fmt::Debug {
    /// The `type` key of its configuration, e.g. `"distribution"`.
    fn kind(&self) -> &'static str;

    /// Host (and port) clients log in to.
    fn registry_url(&self) -> String;

    /// The repository path for a project's repository name (a provider may add a prefix, such
    /// as Artifactory's repository key).
    fn repository_path(&self, repository: &RepositoryName) -> String {
        repository.as_str().to_owned()
    }

    /// The longest lifetime this provider can honour; requests are capped to it.
    fn max_ttl(&self) -> Duration;

    /// Mint a credential for exactly `request.repository` and `request.actions`.
    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError>;

    /// Revoke a credential by its `credential_id`, where the provider supports it.
    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        let _ = credential_id;
        Err(ProviderError::Unsupported(format!(
            "{} credentials cannot be revoked before they expire",
            self.kind()
        )))
    }

    /// A cheap readiness check (configuration present, keys loaded); no upstream call.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
