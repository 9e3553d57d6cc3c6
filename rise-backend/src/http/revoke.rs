//! `POST /grants/revocations`: an audit administrator revokes grants over HTTP, with their own
//! identity in the audit log (the `rise-backend grants revoke` command needs database access
//! and is recorded under the operator's account name, issuer `operator`).
//!
//! Body: `{"credential": ID}` (one grant, by the audit log's `credential_id`) or
//! `{"subject": "ISSUER/SUBJECT"}` (every grant that caller was issued until now), and an
//! optional `"reason"`. This server applies it at once; the others within
//! `keys.reload_interval`. Answers 201 with the revocation.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::extract::{Caller, ClientInfo, RequestId};
use super::{ApiError, AppState};
use crate::audit::{AuditRecord, CallerInfo, Operation};
use crate::registry::providers::distribution::revocation::{self, Target};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    credential: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Serialize)]
struct Revoked {
    kind: String,
    value: String,
    revoked_at: String,
    in_force_until: String,
    reason: String,
}

pub(super) async fn post_revocation(
    State(state): State<Arc<AppState>>,
    RequestId(request_id): RequestId,
    client: ClientInfo,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Who asks comes before what they sent: a caller who may not revoke learns only that.
    if !state.policy.is_audit_admin(&principal) {
        return Err(ApiError::NotAuditAdmin {
            subject: principal.subject.clone(),
            issuer: principal.issuer.clone(),
        });
    }
    let body = body?;
    if !super::extract::media_type_is(&headers, "application/json", true) {
        return Err(ApiError::UnsupportedMediaType(
            "POST /grants/revocations takes an application/json body: {\"credential\": ID} or {\"subject\": \"ISSUER/SUBJECT\"}".into(),
        ));
    }
    let Some(service) = state.token_service.clone() else {
        return Err(ApiError::BadRequest(
            "no Distribution registry is configured: there are no grants to revoke".into(),
        ));
    };
    let body: RevokeBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON {{\"credential\": ID}} or {{\"subject\": \"ISSUER/SUBJECT\"}}, with an optional \"reason\": {}",
            describe(&e)
        ))
    })?;
    let target = match (body.credential, body.subject) {
        (Some(id), None) => Target::Credential(id),
        (None, Some(subject)) => Target::subject(&subject).map_err(ApiError::BadRequest)?,
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of \"credential\" and \"subject\"".into(),
            ));
        }
    };
    let revocation = revocation::prepare(&target, &body.reason, service.longest_grant(), |i| {
        state.auth.knows_issuer(i)
    })
    .map_err(ApiError::BadRequest)?;
    let store = state.audit.store();
    store
        .revocation_add(&revocation)
        .await
        .map_err(|e| ApiError::store("storing a revocation", &e))?;
    if let Err(e) = service.reload_revocations(store).await {
        tracing::warn!(error = %e, "re-reading the revocations failed; the reloader retries");
    }
    // In force before it is audited: a failed audit write must not leave the grant usable.
    let mut record = AuditRecord::begin(
        Operation::Revoke,
        &request_id,
        CallerInfo::new(&principal, client.ip, client.user_agent),
    );
    if let Target::Credential(id) = &target {
        record.credential_id = Some(id.clone());
    }
    record.done(revocation::audit_reason(&revocation));
    let audit_id = state
        .audit
        .record(&record)
        .await
        .map_err(|source| ApiError::DoneUnaudited {
            done: format!("{} {} is revoked", revocation.kind, revocation.value),
            source,
        })?;
    tracing::info!(
        request_id = %request_id,
        subject = %principal.subject,
        issuer = %principal.issuer,
        kind = %revocation.kind,
        audit_id,
        "grants revoked"
    );
    let at = |ms| crate::audit::rfc3339_seconds(crate::audit::from_unix_ms(ms));
    Ok((
        StatusCode::CREATED,
        Json(Revoked {
            revoked_at: at(revocation.created_ms),
            in_force_until: at(revocation.until_ms),
            kind: revocation.kind,
            value: revocation.value,
            reason: revocation.reason,
        }),
    )
        .into_response())
}

/// serde_json's complaint without the input it quotes (a reason could be anything).
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "it could not be read".into(),
        Category::Syntax | Category::Eof => {
            format!("it is not JSON (line {}, column {})", e.line(), e.column())
        }
        Category::Data => {
            let text = e.to_string();
            if let Some(rest) = text.strip_prefix("unknown field ") {
                // Names the field, then lists the expected ones: keep the name only.
                format!("unknown field {}", rest.split(',').next().unwrap_or(""))
            } else if let Some(rest) = text.strip_prefix("duplicate field ") {
                format!(
                    "duplicate field {}",
                    rest.split(" at ").next().unwrap_or("")
                )
            } else if text.contains("expected struct RevokeBody") {
                "it is not a JSON object".into()
            } else {
                "credential, subject and reason must be strings".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(body: &str) -> String {
        describe(&serde_json::from_str::<RevokeBody>(body).expect_err(body))
    }

    #[test]
    fn body_errors_name_what_is_wrong() {
        assert_eq!(why("[]"), "it is not a JSON object");
        assert_eq!(
            why(r#"{"credential":"x","credential":"y"}"#),
            "duplicate field `credential`"
        );
        assert_eq!(why(r#"{"credentail":"x"}"#), "unknown field `credentail`");
        assert_eq!(
            why(r#"{"credential":5}"#),
            "credential, subject and reason must be strings"
        );
        assert!(why("{").starts_with("it is not JSON (line 1"));
    }
}
