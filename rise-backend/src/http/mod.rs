//! The HTTP edge: routes, extractors, JSON wire types and error mapping. The only layer that knows
//! HTTP or JSON; below it, auth, policy and providers speak domain types.

pub mod audit;
mod credentials;
pub mod error;
mod extract;
pub mod meta;
mod ops;
pub mod ratelimit;
mod revoke;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use std::future::Future as _;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::ApiError;
pub use extract::{ClientInfo, RequestId};
pub use ops::readiness;
pub use ratelimit::{ClientIp, RateLimited, RateLimits};

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
    /// Rate limits and the client-address resolver; `RateLimits::disabled()` in tests that do not
    /// exercise them.
    pub rate_limits: Arc<RateLimits>,
    /// How long a client has to send a request's whole body once its headers are in
    /// (`server.header_read_timeout`; hyper's own timeout stops at the headers).
    pub body_deadline: Duration,
}

/// The application router; tests drive it in-process with `oneshot`. Handlers share one
/// `Arc<AppState>`: extracting it per request is one reference count, not one per field.
/// The largest request body read (axum's default limit, stated so errors can name it).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

pub fn app(state: AppState) -> Router {
    crate::metrics::install();
    let state = Arc::new(state);
    let routes = Router::new()
        // HEAD would mint (and audit) a credential the caller never receives: refused, as on
        // the other minting route.
        .route(
            "/registry/credentials",
            get(credentials::get_credentials).head(method_not_allowed),
        )
        .route("/audit", get(audit::get_audit))
        .route("/auth/config", get(meta::auth_config))
        .route("/auth/whoami", get(meta::whoami))
        .route(
            "/token",
            get(token::get_token)
                .post(token::post_token)
                .head(method_not_allowed),
        )
        .route("/grants/revocations", post(revoke::post_revocation))
        // Routes above are rate limited by client address; a `route_layer` applies only to the
        // routes added before it.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit_by_client_ip,
        ))
        // Not limited: probes and scrapes must not be refused.
        .route("/healthz", get(healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(ops::track_requests))
        // The span names the path, never the query: `GET /token` may carry a password there.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
                },
            ),
        )
        .with_state(state);
    // A route adds a 405's `Allow` after its fallback answered, outside the layers above: only
    // a layer around the whole router sees it.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::map_response(name_allowed_methods))
}

/// Gives a request's body one deadline, [`AppState::body_deadline`] from its headers, however it
/// trickles: hyper's own timeout ends at the headers, and an HTTP/2 body need not announce its
/// length. The body is not read here, so routing, rate limits and the caller check still come
/// first; a handler reading past the deadline gets an error that answers 408 `request_timeout`
/// (and hyper then closes the connection). A body already complete passes untouched.
async fn read_body_in_time(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(state.body_deadline)),
            limit: state.body_deadline,
        })
    });
    next.run(request).await
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

/// The error of a body read past its deadline (found again by [`ApiError`]'s conversion).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
pub(crate) struct BodyDeadline(pub Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.sleep.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BodyDeadline(this.limit)))));
        }
        std::pin::Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().chars().take(200).collect())
}

/// A 405's message names what the endpoint accepts, from the `Allow` header the router (or
/// [`method_not_allowed`]) set after the fallback answered.
async fn name_allowed_methods(response: Response) -> Response {
    if response.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let Some(allow) = response.headers().get(header::ALLOW).cloned() else {
        return response;
    };
    let Ok(methods) = allow.to_str() else {
        return response;
    };
    let mut named = ApiError::MethodNotAllowed(Some(methods.to_owned())).into_response();
    named.headers_mut().insert(header::ALLOW, allow);
    named
}

/// A 405 with its `Allow` header. axum lists HEAD wherever GET is routed; the minting routes
/// refuse HEAD, so they name their methods here (axum keeps an `Allow` a handler set).
async fn method_not_allowed(uri: Uri) -> Response {
    let mut response = ApiError::MethodNotAllowed(None).into_response();
    let minting = match uri.path() {
        "/registry/credentials" => Some("GET"),
        "/token" => Some("GET, POST"),
        _ => None,
    };
    if let Some(allow) = minting {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}
