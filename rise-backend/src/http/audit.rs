//! `GET /audit`: the audit log for audit administrators (`[audit] admins`), filtered and paged,
//! as JSON or JSON lines.
//!
//! Query: `project`, `subject`, `issuer`, `result` (`granted|denied|failed`), `since`/`until`
//! (RFC 3339 or Unix seconds; `since` inclusive, `until` exclusive), `after_id` (cursor) and
//! `limit` (1..=1000, default 100), `format=json|jsonl`. JSON lines are also chosen by
//! `Accept: application/x-ndjson`. The next cursor is `next_after_id` in JSON, and the
//! `x-next-after-id` header in both formats; it is absent on the last page.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::extract::Caller;
use super::{ApiError, AppState};
use crate::audit::{AuditFilter, Outcome, StoredRecord, from_unix_ms};
use crate::registry::ProjectName;

/// Largest page; bounds the memory and time of one request.
pub const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 100;
const NDJSON: &str = "application/x-ndjson";
const NEXT_HEADER: &str = "x-next-after-id";

#[derive(Debug)]
struct AuditQuery {
    filter: AuditFilter,
    jsonl: Option<bool>,
}

impl AuditQuery {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut filter = AuditFilter {
            limit: DEFAULT_LIMIT,
            ..AuditFilter::default()
        };
        let mut jsonl = None;
        let mut seen = std::collections::HashSet::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if !seen.insert(k.clone()) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {} given twice",
                    shorten(&k)
                )));
            }
            match k.as_ref() {
                "project" => filter.project = Some(ProjectName::parse(&v)?.to_string()),
                "subject" => filter.subject = Some(bounded_text("subject", &v)?),
                "issuer" => filter.issuer = Some(bounded_text("issuer", &v)?),
                "result" => {
                    filter.result = Some(Outcome::parse(&v).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "invalid result {:?}: use granted, denied or failed",
                            shorten(&v)
                        ))
                    })?)
                }
                "since" => filter.since = Some(parse_time("since", &v)?),
                "until" => filter.until = Some(parse_time("until", &v)?),
                "after_id" => {
                    filter.after_id =
                        v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "invalid after_id {:?}: give a record id (0 or more)",
                                shorten(&v)
                            ))
                        })?
                }
                "limit" => {
                    filter.limit = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "invalid limit {:?}: give 1 to {MAX_LIMIT}",
                                shorten(&v)
                            ))
                        })?
                }
                "format" => {
                    jsonl = Some(match v.as_ref() {
                        "json" => false,
                        "jsonl" | "ndjson" => true,
                        other => {
                            return Err(ApiError::BadRequest(format!(
                                "invalid format {:?}: use json or jsonl",
                                shorten(other)
                            )));
                        }
                    })
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {:?}: allowed are project, subject, issuer, result, since, until, after_id, limit, format",
                        shorten(other)
                    )));
                }
            }
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && until < since
        {
            return Err(ApiError::BadRequest("until is before since".into()));
        }
        Ok(Self { filter, jsonl })
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

fn bounded_text(name: &str, v: &str) -> Result<String, ApiError> {
    if v.is_empty() || v.len() > 512 {
        return Err(ApiError::BadRequest(format!(
            "{name} must be 1 to 512 bytes"
        )));
    }
    Ok(v.to_owned())
}

/// See [`crate::audit::parse_time`].
fn parse_time(name: &str, v: &str) -> Result<SystemTime, ApiError> {
    crate::audit::parse_time(v)
        .map_err(|why| ApiError::BadRequest(format!("invalid {name} {:?}: {why}", shorten(v))))
}

pub(super) async fn get_audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Caller(principal): Caller,
) -> Result<Response, ApiError> {
    if !state.policy.is_audit_admin(&principal) {
        return Err(ApiError::NotAuditAdmin {
            subject: principal.subject.clone(),
            issuer: principal.issuer.clone(),
        });
    }
    let query = AuditQuery::parse(raw.as_deref())?;
    let jsonl = query.jsonl.unwrap_or_else(|| {
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(NDJSON))
    });
    let records = state
        .audit
        .query(&query.filter)
        .await
        .map_err(|e| ApiError::store("reading the audit log", &e))?;
    let next_after_id = (records.len() == query.filter.limit as usize)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    let mut response = if jsonl {
        let mut body = String::new();
        for r in &records {
            body.push_str(&export_line(r));
            body.push('\n');
        }
        ([(header::CONTENT_TYPE, NDJSON)], body).into_response()
    } else {
        let views: Vec<RecordView<'_>> = records.iter().map(RecordView::from).collect();
        axum::Json(Page {
            records: views,
            next_after_id,
        })
        .into_response()
    };
    if let Some(next) = next_after_id
        && let Ok(v) = HeaderValue::from_str(&next.to_string())
    {
        response.headers_mut().insert(NEXT_HEADER, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Serialize)]
struct Page<'a> {
    records: Vec<RecordView<'a>>,
    next_after_id: Option<i64>,
}

/// The wire form of one record (also each line of `rise-backend audit export`).
#[derive(Serialize)]
pub struct RecordView<'a> {
    id: i64,
    /// RFC 3339, UTC, milliseconds.
    time: String,
    request_id: &'a str,
    operation: &'a str,
    caller: CallerView<'a>,
    project: Option<&'a str>,
    registry: Option<&'a str>,
    repository: Option<&'a str>,
    actions_requested: Vec<&'a str>,
    actions_granted: Vec<&'a str>,
    result: &'a str,
    reason: &'a str,
    expires_at: Option<String>,
    credential_fingerprint: Option<&'a str>,
    credential_id: Option<&'a str>,
    prev_hash: &'a str,
    hash: &'a str,
}

#[derive(Serialize)]
struct CallerView<'a> {
    issuer: &'a str,
    subject: &'a str,
    /// Parsed from the stored JSON; a value that does not parse is shown as stored.
    groups: serde_json::Value,
    client_ip: Option<&'a str>,
    user_agent: Option<&'a str>,
}

impl<'a> From<&'a StoredRecord> for RecordView<'a> {
    fn from(r: &'a StoredRecord) -> Self {
        let f = &r.fields;
        let list = |s: &'a str| s.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>();
        RecordView {
            id: r.id,
            time: crate::audit::rfc3339_millis(from_unix_ms(f.time_ms)),
            request_id: &f.request_id,
            operation: &f.operation,
            caller: CallerView {
                issuer: &f.issuer,
                subject: &f.subject,
                groups: serde_json::from_str(&f.groups)
                    .unwrap_or_else(|_| serde_json::Value::String(f.groups.clone())),
                client_ip: f.client_ip.as_deref(),
                user_agent: f.user_agent.as_deref(),
            },
            project: f.project.as_deref(),
            registry: f.registry.as_deref(),
            repository: f.repository.as_deref(),
            actions_requested: list(&f.actions_requested),
            actions_granted: list(&f.actions_granted),
            result: &f.result,
            reason: &f.reason,
            expires_at: f
                .expires_ms
                .map(|ms| crate::audit::rfc3339_seconds(from_unix_ms(ms))),
            credential_fingerprint: f.fingerprint.as_deref(),
            credential_id: f.credential_id.as_deref(),
            prev_hash: &r.prev_hash,
            hash: &r.hash,
        }
    }
}

/// One JSON line for `record`.
pub fn export_line(record: &StoredRecord) -> String {
    // Serialising a struct of strings, numbers and a parsed JSON value cannot fail.
    serde_json::to_string(&RecordView::from(record)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check(raw: &str, expect: Result<(), &str>) -> Option<AuditQuery> {
        match (AuditQuery::parse(Some(raw)), expect) {
            (Ok(q), Ok(())) => Some(q),
            (Err(e), Err(fragment)) => {
                let (status, _, message) = e.parts();
                assert_eq!(status.as_u16(), 400, "{raw}");
                assert!(message.contains(fragment), "{raw}: {message}");
                None
            }
            (got, expect) => panic!("{raw}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn query_parsing() {
        let q = check("", Ok(())).expect("parses");
        assert_eq!(q.filter.limit, DEFAULT_LIMIT);
        assert_eq!(q.jsonl, None);
        let q = check(
            "project=my-app&subject=alice&result=denied&since=1700000000&until=2030-01-01T00:00:00Z&after_id=5&limit=7&format=jsonl",
            Ok(()),
        )
        .expect("parses");
        assert_eq!(q.filter.project.as_deref(), Some("my-app"));
        assert_eq!(q.filter.subject.as_deref(), Some("alice"));
        assert_eq!(q.filter.result, Some(Outcome::Denied));
        assert_eq!(
            q.filter.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert!(q.filter.until.is_some());
        assert_eq!((q.filter.after_id, q.filter.limit), (5, 7));
        assert_eq!(q.jsonl, Some(true));
        check("limit=0", Err("1 to 1000"));
        check("limit=1001", Err("1 to 1000"));
        check("after_id=-1", Err("after_id"));
        check("result=maybe", Err("granted, denied or failed"));
        check("since=yesterday", Err("RFC 3339"));
        check(
            "since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
            Err("before"),
        );
        check("project=a&project=b", Err("twice"));
        check("format=xml", Err("json or jsonl"));
        check("projekt=a", Err("unknown query parameter"));
        check("subject=", Err("1 to 512"));
    }
}
