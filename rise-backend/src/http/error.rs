//! The one error type of the HTTP edge. Every 4xx/5xx is `{"error": CODE, "message": ...}` where
//! CODE is stable and the message tells the caller what to fix. Internal detail (upstream bodies,
//! SQL errors, paths) goes to the log, never to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ratelimit::RateLimited;
use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::registry::{Action, NameError, ProviderError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// `/token` refused the Basic credentials (a Rise grant or a JWT of a trusted issuer); the
    /// challenge is `Basic` so registry clients know to send a username and password.
    #[error("{message}")]
    BadCredentials { code: &'static str, message: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("unknown project {0}")]
    ProjectNotFound(String),
    #[error("project {project}: {action} denied for subject {subject} (issuer {issuer})")]
    Forbidden {
        project: String,
        action: String,
        subject: String,
        issuer: String,
    },
    #[error("registry {registry}: {source}")]
    Provider {
        registry: String,
        #[source]
        source: ProviderError,
    },
    #[error("not found: {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    /// With what the endpoint accepts (its `Allow` header), when known.
    MethodNotAllowed(Option<String>),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// `/readyz`: the named checks failed; their detail is logged, not returned.
    #[error("not ready: {}", .failing.join(", "))]
    NotReady { failing: Vec<String> },
    /// The audit record could not be committed, so nothing was handed out (fail closed).
    #[error(transparent)]
    AuditUnavailable(#[from] AuditError),
    /// An administrative action took effect, but its audit record could not be committed.
    #[error("{done}, but the audit log cannot record it: {source}")]
    DoneUnaudited { done: String, source: AuditError },
    /// The caller may not read the audit log.
    #[error("subject {subject} (issuer {issuer}) is not an audit administrator")]
    NotAuditAdmin { subject: String, issuer: String },
    /// The request body exceeds what the endpoint reads.
    #[error("request body too large")]
    BodyTooLarge,
    /// A body of the wrong media type; the message names the one the endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body did not arrive whole within this long of the headers.
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    BodyTimeout(std::time::Duration),
    /// The database could not be reached (or timed out); the detail is logged, not returned.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Something went wrong inside Rise; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A store failure while `doing` something: 503 when the database is out of reach (it
    /// will be back; the caller should retry), 500 otherwise.
    pub fn store(doing: &str, e: &crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::StoreUnavailable(format!("{doing}: {e}"))
        } else {
            ApiError::Internal(format!("{doing}: {e}"))
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    /// An unreadable body: too large, or broken off or garbled on the wire.
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        // A body read past its deadline (`http::read_body_in_time`), found in the error chain.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
        while let Some(e) = cause {
            if let Some(super::BodyDeadline(limit)) = e.downcast_ref::<super::BodyDeadline>() {
                return ApiError::BodyTimeout(*limit);
            }
            cause = e.source();
        }
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::BadRequest(format!(
                "the request body could not be read ({}); send it again, whole",
                rejection.body_text()
            ))
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    pub fn forbidden(
        project: &str,
        actions: impl IntoIterator<Item = Action>,
        subject: &str,
        issuer: &str,
    ) -> Self {
        let names: Vec<&str> = actions.into_iter().map(Action::as_str).collect();
        ApiError::Forbidden {
            project: project.to_owned(),
            action: if names.is_empty() {
                "access".to_owned()
            } else {
                names.join(" and ")
            },
            subject: subject.to_owned(),
            issuer: issuer.to_owned(),
        }
    }

    /// Status, stable code and the message the client sees, in one exhaustive match.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::Unauthenticated(AuthError::IssuerUnavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_unavailable",
                self.to_string(),
            ),
            ApiError::Unauthenticated(e) => (StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
            ApiError::BadCredentials { code, message } => {
                (StatusCode::UNAUTHORIZED, code, message.clone())
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiError::InvalidName(e) => {
                let code = match e {
                    NameError::Project(_) => "invalid_project",
                    NameError::Repository(_) => "invalid_repository",
                    NameError::Action(_) | NameError::NoActions => "invalid_actions",
                };
                (StatusCode::BAD_REQUEST, code, e.to_string())
            }
            ApiError::ProjectNotFound(p) => (
                StatusCode::NOT_FOUND,
                "project_not_found",
                format!(
                    "project {p} is not configured on this Rise server; check the name or ask an administrator to add it"
                ),
            ),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", self.to_string()),
            ApiError::Provider { registry, source } => match source {
                ProviderError::Timeout { operation, .. } => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "registry {registry}: {operation} did not answer in time; try again shortly"
                    ),
                ),
                ProviderError::Upstream { operation, .. } => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!(
                        "registry {registry}: {operation} failed; the error is logged on the Rise server, try again or contact its operator"
                    ),
                ),
                ProviderError::Misconfigured(_) => (
                    StatusCode::BAD_GATEWAY,
                    "provider_misconfigured",
                    format!(
                        "registry {registry} is misconfigured on the Rise server; contact its operator"
                    ),
                ),
                ProviderError::Unsupported(m) => (
                    StatusCode::BAD_REQUEST,
                    "unsupported",
                    format!("registry {registry}: {m}"),
                ),
            },
            ApiError::RouteNotFound(path) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such endpoint {path}; see GET /registry/credentials?project=NAME"),
            ),
            ApiError::MethodNotAllowed(allow) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                match allow {
                    Some(allow) => format!(
                        "this endpoint does not accept that method; it accepts {}",
                        allow.split(',').map(str::trim).collect::<Vec<_>>().join(", ")
                    ),
                    None => "this endpoint does not accept that method".into(),
                },
            ),
            ApiError::RateLimited(limited) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                limited.message(),
            ),
            ApiError::NotReady { failing } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!(
                    "not ready: {} failing; the detail is logged on the server",
                    failing.join(", ")
                ),
            ),
            ApiError::AuditUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit log cannot be written right now, so Rise issued nothing; try again shortly".into(),
            ),
            ApiError::DoneUnaudited { done, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                format!(
                    "{done}, but the audit log cannot be written right now, so it is not recorded under your name; repeat the request shortly to record it"
                ),
            ),
            ApiError::NotAuditAdmin { .. } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{self}; an operator can add it to `[audit] admins` in the Rise configuration"
                ),
            ),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m.clone(),
            ),
            ApiError::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("{self}; send the body whole, at once"),
            ),
            ApiError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than the {} KiB this endpoint reads; send less",
                    super::MAX_BODY_BYTES / 1024
                ),
            ),
            ApiError::StoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "Rise's database cannot be reached right now; try again shortly (repeating the request is safe)".into(),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "something went wrong inside Rise; the error is logged on the server".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if let ApiError::NotReady { .. } = self {
            // Each failing check was logged (warn) by the probe itself: a probe every few
            // seconds must not add an error line of its own each time.
            tracing::debug!(code, %status, "readiness probe answered");
        } else if status.is_server_error() {
            // Internal detail goes to the log only; it never carries secrets (providers redact).
            tracing::error!(error = %self, code, "request failed");
        } else {
            tracing::info!(code, %status, "request refused");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = match self {
                ApiError::BadCredentials { .. } => "Basic realm=\"rise\"",
                _ => "Bearer realm=\"rise\"",
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let ApiError::RateLimited(limited) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(limited.retry_after_secs()),
            );
            // The decision travels with the response so that audit can record the denial.
            response.extensions_mut().insert(limited);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(err: ApiError, status: u16, code: &str, message_contains: &str) {
        let (s, c, m) = err.parts();
        assert_eq!(s.as_u16(), status, "{m}");
        assert_eq!(c, code);
        assert!(
            m.contains(message_contains),
            "{m:?} lacks {message_contains:?}"
        );
    }

    #[test]
    fn every_variant_maps_to_status_and_code() {
        check(
            AuthError::MissingHeader.into(),
            401,
            "missing_token",
            "Bearer",
        );
        check(AuthError::Expired.into(), 401, "token_expired", "expired");
        check(
            ApiError::BadCredentials {
                code: "grant_expired",
                message: "the Rise grant has expired".into(),
            },
            401,
            "grant_expired",
            "grant has expired",
        );
        check(
            AuthError::IssuerUnavailable("x".into()).into(),
            503,
            "issuer_unavailable",
            "x",
        );
        check(
            ApiError::BadRequest("no project".into()),
            400,
            "bad_request",
            "no project",
        );
        check(
            NameError::Project("A".into()).into(),
            400,
            "invalid_project",
            "lowercase",
        );
        check(
            NameError::Repository("A".into()).into(),
            400,
            "invalid_repository",
            "lowercase",
        );
        check(NameError::NoActions.into(), 400, "invalid_actions", "pull");
        check(
            ApiError::ProjectNotFound("nope".into()),
            404,
            "project_not_found",
            "nope",
        );
        check(
            ApiError::forbidden("my-app", [Action::Push], "alice", "local"),
            403,
            "forbidden",
            "project my-app: push denied for subject alice",
        );
        let upstream = |source| ApiError::Provider {
            registry: "ecr".into(),
            source,
        };
        check(
            upstream(ProviderError::Upstream {
                operation: "GetAuthorizationToken",
                detail: "secret body".into(),
            }),
            502,
            "upstream_error",
            "registry ecr: GetAuthorizationToken failed",
        );
        check(
            upstream(ProviderError::Timeout {
                operation: "AssumeRole",
                after: Duration::from_secs(5),
            }),
            504,
            "upstream_timeout",
            "AssumeRole",
        );
        check(
            upstream(ProviderError::Misconfigured("path".into())),
            502,
            "provider_misconfigured",
            "ecr",
        );
        check(
            upstream(ProviderError::Unsupported("no push".into())),
            400,
            "unsupported",
            "no push",
        );
        check(ApiError::RouteNotFound("/x".into()), 404, "not_found", "/x");
        check(
            RateLimited {
                scope: super::super::ratelimit::LimitScope::AuthFailures,
                retry_after: Duration::from_millis(5500),
            }
            .into(),
            429,
            "rate_limited",
            "too many failed authentications from this address; retry after 6 s",
        );
        check(
            ApiError::NotReady {
                failing: vec!["registry default".into(), "store".into()],
            },
            503,
            "not_ready",
            "registry default, store failing",
        );
        check(
            ApiError::MethodNotAllowed(None),
            405,
            "method_not_allowed",
            "method",
        );
        check(
            ApiError::MethodNotAllowed(Some("GET,HEAD".into())),
            405,
            "method_not_allowed",
            "it accepts GET, HEAD",
        );
        check(
            AuditError::Store("disk full at /var/lib/rise".into()).into(),
            503,
            "audit_unavailable",
            "issued nothing",
        );
        check(
            AuditError::Overloaded(8192).into(),
            503,
            "audit_unavailable",
            "try again",
        );
        check(
            ApiError::NotAuditAdmin {
                subject: "bob".into(),
                issuer: "local".into(),
            },
            403,
            "forbidden",
            "subject bob (issuer local) is not an audit administrator",
        );
        check(
            ApiError::Internal("db at /secret/path".into()),
            500,
            "internal_error",
            "logged",
        );
        let unreachable = crate::store::StoreError::Sql(sqlx::Error::PoolTimedOut);
        check(
            ApiError::store("reading the audit log", &unreachable),
            503,
            "store_unavailable",
            "try again shortly",
        );
        let broken =
            crate::store::StoreError::Corrupt("the audit_chain head row is missing".into());
        check(
            ApiError::store("reading the audit log", &broken),
            500,
            "internal_error",
            "logged",
        );
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let (_, _, m) = ApiError::Provider {
            registry: "art".into(),
            source: ProviderError::Upstream {
                operation: "create token",
                detail: "hunter2".into(),
            },
        }
        .parts();
        assert!(!m.contains("hunter2"));
        let (_, _, m) = ApiError::Internal("/var/lib/rise/key.pem".into()).parts();
        assert!(!m.contains("key.pem"));
        let (_, _, m) = ApiError::from(AuditError::Store("/var/lib/rise/rise.db".into())).parts();
        assert!(!m.contains("rise.db"));
    }
}
