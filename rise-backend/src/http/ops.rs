//! Operations endpoints (`/readyz`, `/metrics`) and the request-metrics middleware. `/healthz`
//! (the process is up) lives beside the router.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, AppState};

/// How long `/readyz` waits for the database.
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Serialize)]
pub(super) struct Ready {
    status: &'static str,
    checks: Vec<&'static str>,
}

/// `GET /readyz`: 200 when Rise can serve credentials, else 503 `not_ready` naming the failing
/// checks (their detail goes to the log: it may name paths or upstreams).
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    match readiness(&state).await {
        Ok(passed) => Ok(Json(Ready {
            status: "ready",
            checks: passed,
        })),
        Err(failing) => Err(ApiError::NotReady { failing }),
    }
}

/// The readiness checks: the names of those that passed, or of those that failed (each failure
/// is logged with its detail). `check-config` runs them too.
pub async fn readiness(state: &AppState) -> Result<Vec<&'static str>, Vec<String>> {
    let mut failing = Vec::new();
    let mut passed = Vec::new();
    // Keys: the local issuer's key is loaded while the state is built (which fails otherwise);
    // an OIDC issuer is ready once its keys have been fetched at least once. Until then a new
    // replica takes no traffic; afterwards cached keys carry it through an issuer outage.
    let without_keys = state.auth.issuers_without_keys();
    if without_keys.is_empty() {
        passed.push("auth");
    }
    for issuer in without_keys {
        tracing::warn!(%issuer, "readiness: the issuer's keys have not been fetched yet");
        failing.push(format!("issuer {issuer} keys"));
    }
    // Providers: configured and their cheap local checks pass (no upstream call).
    if state.registries.is_empty() {
        tracing::warn!("readiness: no registry is configured");
        failing.push("registries".to_owned());
    }
    let mut names: Vec<&String> = state.registries.keys().collect();
    names.sort();
    for name in names {
        if let Some(provider) = state.registries.get(name)
            && let Err(detail) = provider.ready()
        {
            tracing::warn!(registry = %name, %detail, "readiness: registry not ready");
            failing.push(format!("registry {name}"));
        }
    }
    if !failing.iter().any(|f| f.starts_with("registr")) {
        passed.push("registries");
    }
    // Keys and revocations of the token server: a server whose reloads keep failing may sign
    // with a key other servers rotated out, or miss revocations they stored.
    if let Some(service) = &state.token_service {
        match service.stale_reloads() {
            Some(age) => {
                tracing::warn!(since = ?age, "readiness: keys and revocations have not been reloaded");
                failing.push("key reload".to_owned());
            }
            None => passed.push("key reload"),
        }
    }
    // The store: every credential needs its audit record committed, so no store, no service.
    match tokio::time::timeout(STORE_PING_TIMEOUT, state.audit.store().ping()).await {
        Ok(Ok(())) => passed.push("store"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            failing.push("store".to_owned());
        }
        Err(_) => {
            tracing::warn!(timeout = ?STORE_PING_TIMEOUT, "readiness: the database did not answer in time");
            failing.push("store".to_owned());
        }
    }
    if failing.is_empty() {
        Ok(passed)
    } else {
        Err(failing)
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub(super) async fn metrics() -> Response {
    match crate::metrics::render() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => ApiError::Internal("the metrics recorder is not installed".into()).into_response(),
    }
}

/// Counts and times every request by its matched route template (bounded cardinality; raw paths
/// would let any client mint new series), method and status.
pub(super) async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    crate::metrics::record_http_request(
        route.as_deref().unwrap_or("unmatched"),
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
