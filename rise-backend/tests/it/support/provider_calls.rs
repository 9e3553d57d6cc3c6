//! Calls into a provider as the provider tests make them: one fixed caller (`alice` of the local
//! issuer, registry `default`, request `req-1`) and a liveness guard around every call.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rise_backend::auth::Principal;
use rise_backend::registry::{
    Actions, CredentialRequest, IssuedCredential, ProjectName, ProviderError, RegistryProvider,
    RepositoryName,
};

/// Liveness guard for calls that must end on their own timeouts; far above any of them.
pub const GUARD: Duration = Duration::from_secs(30);

/// A request of the fixed caller for `project`, whose repository has the same name.
pub fn request(project: &str, actions: Actions, ttl: Duration) -> CredentialRequest {
    request_for(project, project, actions, ttl)
}

/// A request of the fixed caller for `repository` of `project`.
pub fn request_for(
    project: &str,
    repository: &str,
    actions: Actions,
    ttl: Duration,
) -> CredentialRequest {
    CredentialRequest {
        request_id: "req-1".into(),
        principal: Arc::new(Principal {
            issuer: "local".into(),
            issuer_url: "rise-local".into(),
            subject: "alice".into(),
            groups: vec![],
            claims: serde_json::Map::new(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        }),
        project: ProjectName::parse(project).expect("valid project"),
        registry: "default".into(),
        repository: RepositoryName::parse(repository).expect("valid repository"),
        actions,
        ttl,
    }
}

/// `p.issue(req)`, which must end on the provider's own timeouts.
pub async fn issue(
    p: &impl RegistryProvider,
    req: &CredentialRequest,
) -> Result<IssuedCredential, ProviderError> {
    tokio::time::timeout(GUARD, p.issue(req))
        .await
        .expect("issue must end on its own timeout")
}

/// `p.revoke(id)`, which must end on the provider's own timeouts.
pub async fn revoke(p: &impl RegistryProvider, id: &str) -> Result<(), ProviderError> {
    tokio::time::timeout(GUARD, p.revoke(id))
        .await
        .expect("revoke must end on its own timeout")
}
