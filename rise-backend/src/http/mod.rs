//! The HTTP edge: routes, extractors, JSON wire types and error mapping. The only layer that knows
//! HTTP or JSON; below it, auth, policy and providers speak domain types.

pub mod audit;
mod credentials;
pub mod error;
mod extract;
pub mod meta;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Uri;
use axum::routing::get;

pub use error::ApiError;
pub use extract::{ClientInfo, RequestId};

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::policy::Policy;
use crate::registry::RegistryProvider;
use crate::registry::providers::distribution::TokenService;

/// Everything a handler may use. Providers hold their own secrets; handlers never see them.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub policy: Arc<Policy>,
    pub registries: Arc<HashMap<String, Arc<dyn RegistryProvider>>>,
    /// Credential lifetime when neither the caller nor the project asks for another.
    pub default_ttl: Duration,
    /// Every issuance and refusal is recorded here before the response leaves.
    pub audit: AuditLog,
    /// What `GET /auth/config` publishes for `rise login`.
    pub auth_meta: Arc<meta::AuthMeta>,
    /// The token server of the Distribution registries (`/token`); `None` when there are none.
    pub token_service: Option<Arc<TokenService>>,
}

/// The application router; tests drive it in-process with `oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/registry/credentials", get(credentials::get_credentials))
        .route("/audit", get(audit::get_audit))
        .route("/auth/config", get(meta::auth_config))
        .route("/auth/whoami", get(meta::whoami))
        .route("/token", get(token::get_token).post(token::post_token))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
