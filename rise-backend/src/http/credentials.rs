//! `GET /registry/credentials?project=NAME[&actions=pull,push][&ttl=15m]`: the seed's endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::extract::{Caller, ClientInfo, RequestId};
use super::{ApiError, AppState};
use crate::audit::{AuditRecord, CallerInfo, Operation};
use crate::auth::Principal;
use crate::registry::{Action, Actions, CredentialRequest, IssuedCredential, ProjectName};

/// The parsed query. Unknown parameters are refused so a typo (`action=pull`) does not silently
/// give the caller more than they meant to ask for.
#[derive(Debug)]
pub(super) struct CredentialsQuery {
    project: ProjectName,
    actions: Option<Actions>,
    ttl: Option<Duration>,
}

impl CredentialsQuery {
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut project = None;
        let mut actions = None;
        let mut ttl = None;
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let slot_taken = match k.as_ref() {
                "project" => project.replace(ProjectName::parse(&v)?).is_some(),
                "actions" => actions.replace(Actions::parse_list(&v)?).is_some(),
                "ttl" => ttl.replace(parse_ttl(&v)?).is_some(),
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {:?}: allowed are project, actions, ttl",
                        other.chars().take(40).collect::<String>()
                    )));
                }
            };
            if slot_taken {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {k} given twice"
                )));
            }
        }
        let project = project.ok_or_else(|| {
            ApiError::BadRequest(
                "missing query parameter project: use /registry/credentials?project=NAME".into(),
            )
        })?;
        Ok(Self {
            project,
            actions,
            ttl,
        })
    }
}

/// The shortest `ttl` a caller may ask for.
const MIN_CREDENTIAL_TTL: Duration = Duration::from_secs(60);

fn parse_ttl(v: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid ttl {:?}: give seconds (900) or a duration (15m, 1h)",
            v.chars().take(40).collect::<String>()
        ))
    };
    let ttl = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(v).map_err(|_| bad())?,
    };
    if ttl < MIN_CREDENTIAL_TTL {
        return Err(ApiError::BadRequest("ttl must be at least 60s".into()));
    }
    Ok(ttl)
}

/// The seed's response, extended additively.
#[derive(Serialize)]
pub(super) struct CredentialsResponse<'a> {
    credentials: Credentials<'a>,
    repository: &'a str,
    project: &'a str,
    registry: &'a str,
    /// Full image reference without tag: `registry_url/repository`.
    image: String,
    scope: Scope<'a>,
    /// RFC 3339, UTC.
    expires_at: String,
    repository_scoped: bool,
    revocable: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Credentials<'a> {
    registry_url: &'a str,
    username: &'a str,
    password: &'a str,
    expires_in: u64,
}

#[derive(Serialize)]
struct Scope<'a> {
    repository: &'a str,
    actions: Vec<Action>,
}

/// Every outcome after authentication is audited, and the response waits for the audit commit:
/// a credential leaves only once its record is durable; if the record cannot be written the
/// caller gets 503 `audit_unavailable` instead (also for refusals, so an unwritable audit log is
/// never silent).
pub(super) async fn get_credentials(
    State(state): State<Arc<AppState>>,
    RequestId(request_id): RequestId,
    client: ClientInfo,
    RawQuery(raw): RawQuery,
    Caller(principal): Caller,
) -> Result<Response, ApiError> {
    let mut record = AuditRecord::begin(
        Operation::Credentials,
        &request_id,
        CallerInfo::new(&principal, client.ip, client.user_agent),
    );
    match issue(&state, request_id, raw.as_deref(), principal, &mut record).await {
        Ok((request, credential, asked_ttl)) => {
            record.granted(&credential);
            let audit_id = state.audit.record(&record).await?;
            tracing::info!(
                request_id = %request.request_id,
                project = %request.project,
                registry = %request.registry,
                subject = %request.principal.subject,
                issuer = %request.principal.issuer,
                actions = %credential.granted_actions,
                audit_id,
                "credential issued"
            );
            let body = render(&request, &credential, asked_ttl);
            Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
        }
        Err(err) => {
            let (status, code, _) = err.parts();
            record.refused(status.is_server_error(), code);
            state.audit.record(&record).await?;
            Err(err)
        }
    }
}

/// Authorise and mint; fills `record` with what it learns on the way. Also returns the `ttl`
/// the caller asked for, if any, and whose limit applies beyond it.
async fn issue(
    state: &AppState,
    request_id: String,
    raw: Option<&str>,
    principal: Arc<Principal>,
    record: &mut AuditRecord,
) -> Result<
    (
        CredentialRequest,
        IssuedCredential,
        Option<(Duration, TtlLimit)>,
    ),
    ApiError,
> {
    let query = CredentialsQuery::parse(raw)?;
    record.project = Some(query.project.to_string());
    if let Some(actions) = query.actions {
        record.actions_requested = actions.normalise_push();
    }
    // After authentication, before the project is even looked up: guessing project names
    // spends the caller's bucket too. A 429 is audited as a refusal like any other.
    state
        .rate_limits
        .check_caller(
            &principal.issuer,
            &principal.subject,
            Some(query.project.as_str()),
        )
        .await?;
    let project = state
        .policy
        .project(&query.project)
        .ok_or_else(|| ApiError::ProjectNotFound(query.project.to_string()))?;
    record.registry = Some(project.registry.clone());
    record.repository = Some(project.repository.to_string());
    let allowed = project.allowed_actions(&principal);
    // Without `actions`, the caller gets everything the policy allows (push implies pull).
    let wanted = query
        .actions
        .map(Actions::normalise_push)
        .unwrap_or(allowed);
    record.actions_requested = wanted;
    if allowed.is_empty() || !wanted.is_subset_of(allowed) {
        let denied = if allowed.is_empty() {
            wanted
        } else {
            Actions::from_iter_actions(wanted.iter().filter(|a| !allowed.contains(*a)))
        };
        return Err(ApiError::forbidden(
            project.name.as_str(),
            denied.iter(),
            &principal.subject,
            &principal.issuer,
        ));
    }
    let provider = state.registries.get(&project.registry).ok_or_else(|| {
        ApiError::Internal(format!(
            "project {} names unknown registry {}",
            project.name, project.registry
        ))
    })?;
    // The project's ttl (or the server's default) is the most a caller gets: asking can only
    // shorten it.
    let most = project.ttl.unwrap_or(state.default_ttl);
    let ttl = query
        .ttl
        .map_or(most, |asked| asked.min(most))
        .min(provider.max_ttl());
    // Whose limit a caller who asked for more ran into, for the warning.
    let limit = match query.ttl {
        Some(asked) if asked > most && most < provider.max_ttl() => TtlLimit::Project(most),
        Some(asked) if asked > provider.max_ttl() => TtlLimit::MaxTtl(provider.max_ttl()),
        _ => TtlLimit::Upstream,
    };
    let request = CredentialRequest {
        request_id,
        principal,
        project: project.name.clone(),
        registry: project.registry.clone(),
        repository: project.repository.clone(),
        actions: wanted,
        ttl,
    };
    let issued = provider.issue(&request).await;
    crate::metrics::record_issuance(
        &request.registry,
        provider.kind(),
        crate::metrics::issuance_result(&issued),
    );
    let credential = issued.map_err(|source| ApiError::Provider {
        registry: project.registry.clone(),
        source,
    })?;
    record.repository = Some(credential.repository.clone());
    Ok((request, credential, query.ttl.map(|asked| (asked, limit))))
}

/// What kept a credential shorter than the caller asked.
#[derive(Debug, Clone, Copy)]
enum TtlLimit {
    /// The project's `ttl` (or the server's default lifetime), which a caller cannot exceed.
    Project(Duration),
    /// The registry's `max_ttl`.
    MaxTtl(Duration),
    /// What the upstream granted, shorter than asked though within every configured limit.
    Upstream,
}

/// A credential that lives shorter than asked by more than this is reported in `warnings`
/// (seconds lost to rounding or to minting are not worth a word).
const TTL_SHORTFALL: Duration = Duration::from_secs(60);

fn render<'a>(
    request: &'a CredentialRequest,
    c: &'a IssuedCredential,
    asked_ttl: Option<(Duration, TtlLimit)>,
) -> CredentialsResponse<'a> {
    let now = SystemTime::now();
    let expires_in = c
        .expires_at
        .duration_since(now)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut warnings = Vec::new();
    if expires_in == 0 {
        warnings.push(
            "the upstream reports this credential as already expired; it may be refused".to_owned(),
        );
    }
    if !c.expiry_enforced {
        warnings.push(if c.revocable {
            "this credential does not expire upstream: Rise deletes it within its cleanup interval after expires_in; `rise-backend grants revoke --credential` deletes it sooner".to_owned()
        } else {
            "this credential does not expire upstream: expires_in only says when to ask again; rotate the backend's password to revoke it".to_owned()
        });
    }
    if let Some((asked, limit)) = asked_ttl
        && Duration::from_secs(expires_in) + TTL_SHORTFALL < asked
    {
        let why = match limit {
            TtlLimit::Project(most) => format!(
                "project {} grants at most {} (its ttl)",
                request.project,
                humantime::format_duration(most)
            ),
            TtlLimit::MaxTtl(max) => format!(
                "registry {} issues none longer than {} (its max_ttl)",
                request.registry,
                humantime::format_duration(max)
            ),
            TtlLimit::Upstream => format!("registry {} issued none longer", request.registry),
        };
        warnings.push(format!(
            "asked for ttl {}, but this credential expires in {}: {why}",
            humantime::format_duration(asked),
            humantime::format_duration(Duration::from_secs(expires_in)),
        ));
    }
    if !c.repository_scoped {
        warnings.push(format!(
            "this credential is not limited to repository {}: the registry cannot scope it",
            c.repository
        ));
    }
    CredentialsResponse {
        credentials: Credentials {
            registry_url: &c.registry_url,
            username: &c.username,
            // The single place a provider's secret is exposed: the caller asked for it.
            password: c.password.expose_secret(),
            expires_in,
        },
        repository: &c.repository,
        project: request.project.as_str(),
        registry: &request.registry,
        image: c.image_reference(),
        scope: Scope {
            repository: &c.repository,
            actions: c.granted_actions.to_vec(),
        },
        expires_at: crate::audit::rfc3339_seconds(c.expires_at),
        repository_scoped: c.repository_scoped,
        revocable: c.revocable,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expect: Result<(&str, Option<Actions>), &str>) {
        let got = CredentialsQuery::parse(Some(raw));
        match (got, expect) {
            (Ok(q), Ok((project, actions))) => {
                assert_eq!(q.project.as_str(), project);
                assert_eq!(q.actions, actions);
            }
            (Err(e), Err(code)) => assert_eq!(e.parts().1, code, "{raw}: {e}"),
            (got, expect) => panic!("{raw}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn query_parsing() {
        check("project=my-app", Ok(("my-app", None)));
        check(
            "project=my-app&actions=pull",
            Ok(("my-app", Some(Actions::PULL))),
        );
        check(
            "project=my-app&actions=push%2Cpull",
            Ok(("my-app", Some(Actions::PUSH_PULL))),
        );
        check("", Err("bad_request"));
        check("project=My_App", Err("invalid_project"));
        check("project=a&project=b", Err("bad_request"));
        check("project=a&action=pull", Err("bad_request"));
        check("project=a&actions=delete", Err("invalid_actions"));
        check("project=a&ttl=5", Err("bad_request"));
        check("project=a&ttl=forever", Err("bad_request"));
        check("project=%FF%FE", Err("invalid_project"));
    }
}
