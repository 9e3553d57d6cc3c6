//! `GET /token` and `POST /token`: Rise as the token server of Distribution registries.
//!
//! GET follows the Docker registry token spec:
//! `GET /token?service=SVC&scope=repository:NAME:pull,push[&scope=...][&account=U][&offline_token=true][&client_id=C]`
//! with `Authorization: Basic base64(user:password)`. POST is the spec's OAuth2 form: an
//! `application/x-www-form-urlencoded` body with `grant_type=password` (`username`, `password`) or
//! `grant_type=refresh_token` (`refresh_token`), plus `service`, `scope` (space-separated) and
//! `client_id`. Either way the reply is
//! `{"token": JWT, "access_token": JWT, "expires_in": SECONDS, "issued_at": RFC3339}`.
//!
//! The password is a Rise grant from `/registry/credentials`, or, beyond the spec, a JWT of a
//! trusted issuer (so `docker login -u oidc -p $CI_JWT` works without calling Rise first); the
//! username is ignored. Parameters the spec defines but Rise does not use (`account`,
//! `client_id`, `offline_token`, `access_type`) and unknown ones are accepted and ignored, since
//! registry clients, not people, write these requests. Rise never returns a `refresh_token`, so
//! clients keep using the grant or JWT they logged in with.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::extract::{ClientInfo, RequestId};
use super::{ApiError, AppState};
use crate::audit::{self, AuditRecord, CallerInfo, Operation, Outcome};
use crate::auth::AuthError;
use crate::registry::Actions;
use crate::registry::providers::distribution::token::{RepositoryScope, parse_scopes};
use crate::registry::providers::distribution::{
    Grant, GrantCheck, MintError, ScopeError, TokenCaller,
};

/// The body of a successful reply. `token` and `access_token` are the same JWT: older clients
/// read the first, OAuth2 clients the second.
#[derive(Serialize)]
struct TokenResponse<'a> {
    token: &'a str,
    access_token: &'a str,
    expires_in: u64,
    issued_at: String,
}

/// A `/token` request after parsing, whichever method it came by.
#[derive(Default)]
struct TokenParams {
    service: Option<String>,
    scopes: Vec<String>,
    /// From the POST form (`password` or `refresh_token`); GET carries it in `Authorization`.
    password: Option<SecretString>,
    /// What the caller calls it, for messages: `refresh_token` when it came as one.
    password_name: &'static str,
}

pub(super) async fn get_token(
    State(state): State<Arc<AppState>>,
    RequestId(request_id): RequestId,
    client: ClientInfo,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = parse_params(raw.unwrap_or_default().as_bytes(), Method::Get)?;
    issue(&state, &request_id, client, params, &headers).await
}

pub(super) async fn post_token(
    State(state): State<Arc<AppState>>,
    RequestId(request_id): RequestId,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    if !super::extract::media_type_is(&headers, "application/x-www-form-urlencoded", false) {
        return Err(ApiError::UnsupportedMediaType(
            "POST /token takes an application/x-www-form-urlencoded body (grant_type, service, scope, client_id, ...)".into(),
        ));
    }
    let params = parse_params(&body, Method::Post)?;
    issue(&state, &request_id, client, params, &headers).await
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Get,
    Post,
}

fn parse_params(input: &[u8], method: Method) -> Result<TokenParams, ApiError> {
    let mut params = TokenParams {
        password_name: "password",
        ..TokenParams::default()
    };
    let mut grant_type = None;
    let mut password = None;
    let mut refresh_token = None;
    for (k, v) in form_urlencoded::parse(input) {
        let duplicate = match k.as_ref() {
            "service" => params.service.replace(v.into_owned()).is_some(),
            "scope" => {
                params.scopes.push(v.into_owned());
                false
            }
            "grant_type" if method == Method::Post => grant_type.replace(v.into_owned()).is_some(),
            "password" if method == Method::Post => password
                .replace(SecretString::from(v.into_owned()))
                .is_some(),
            "refresh_token" if method == Method::Post => refresh_token
                .replace(SecretString::from(v.into_owned()))
                .is_some(),
            _ => false,
        };
        if duplicate {
            return Err(ApiError::BadRequest(format!("parameter {k} given twice")));
        }
    }
    if method == Method::Post {
        params.password = match grant_type.as_deref() {
            Some("password") => password,
            Some("refresh_token") => {
                params.password_name = "refresh_token";
                refresh_token
            }
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported grant_type {:?}: use password or refresh_token",
                    other.chars().take(40).collect::<String>()
                )));
            }
            None => {
                return Err(ApiError::BadRequest(
                    "missing grant_type: use grant_type=password or grant_type=refresh_token"
                        .into(),
                ));
            }
        };
    }
    Ok(params)
}

async fn issue(
    state: &AppState,
    request_id: &str,
    client: ClientInfo,
    params: TokenParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let service = params.service.ok_or_else(|| {
        ApiError::BadRequest(
            "missing parameter service: registry clients send the service of the registry's challenge".into(),
        )
    })?;
    let registry = state
        .token_service
        .as_ref()
        .and_then(|t| t.registry_for_service(&service))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown service {:?}: this Rise server issues tokens only for the services of its distribution registries",
                service.chars().take(80).collect::<String>()
            ))
        })?
        .clone();
    let scopes = parse_scopes(params.scopes.iter().map(String::as_str)).map_err(|e| match e {
        ScopeError::Repository(name) => ApiError::InvalidName(name),
        other => ApiError::BadRequest(other.to_string()),
    })?;
    let password = match params.password {
        Some(p) => p,
        None => basic_password(headers)?,
    };

    let caller = match registry.check_grant(password.expose_secret()) {
        GrantCheck::Valid(grant) => TokenCaller::Grant(grant),
        GrantCheck::Invalid(e) => {
            let err = ApiError::BadCredentials {
                code: e.code(),
                message: e.to_string(),
            };
            // Signed by this server (expired, or for another registry): the caller is known,
            // so the refusal is audited like a revoked grant's.
            if let Some(grant) = registry.refused_grant(password.expose_secret()) {
                let caller = TokenCaller::Grant(grant);
                let mut records =
                    token_records(state, request_id, client, &caller, registry.name(), &scopes);
                for record in &mut records {
                    record.refused(false, e.code());
                }
                record_all(state, &records).await?;
            }
            return Err(err);
        }
        GrantCheck::NotAGrant => match state.auth.verify(password.expose_secret()).await {
            Ok(principal) => TokenCaller::Principal(principal),
            Err(e @ AuthError::IssuerUnavailable(_)) => return Err(e.into()),
            Err(e) => {
                return Err(ApiError::BadCredentials {
                    code: e.code(),
                    message: format!(
                        "the {} is neither a Rise grant nor a valid token of a trusted issuer: {e}",
                        params.password_name
                    ),
                });
            }
        },
    };
    drop(password);

    // From here on the caller is known: every outcome is audited, and the token leaves only
    // after its record is committed.
    let mut records = token_records(state, request_id, client, &caller, registry.name(), &scopes);

    if let TokenCaller::Grant(grant) = &caller
        && let Some(revoked) = registry.revoked(grant)
    {
        let err = ApiError::BadCredentials {
            code: "grant_revoked",
            message: revoked.to_string(),
        };
        return Err(refuse(state, &mut records, err).await);
    }
    if let TokenCaller::Grant(grant) = &caller
        && let Some(err) = outdated_grant(state, registry.name(), grant)
    {
        return Err(refuse(state, &mut records, err).await);
    }
    // The caller's bucket is the one `/registry/credentials` draws from: a grant counts as its
    // original caller. Scopes name repositories, not projects, so only the caller limit applies.
    if let Err(limited) = state
        .rate_limits
        .check_caller(caller.issuer(), caller.subject(), None)
        .await
    {
        // One record says the caller was held back: a limited caller must not be able to
        // write one per scope asked for.
        records.truncate(1);
        return Err(refuse(state, &mut records, ApiError::from(limited)).await);
    }
    let access = registry.authorize(&caller, &scopes, &state.policy);
    let minted = registry
        .registry_token(&caller, &access, SystemTime::now())
        .map_err(|e| match e {
            MintError::CallerExpired => ApiError::BadCredentials {
                code: "credentials_expired",
                message: "the credentials expire now: get new ones".into(),
            },
            MintError::Internal(detail) => ApiError::Internal(detail),
        });
    let token = match minted {
        Ok(token) => token,
        Err(err) => return Err(refuse(state, &mut records, err).await),
    };
    let fingerprint = audit::fingerprint(token.token.expose_secret());
    for record in &mut records {
        // What this record's repository got (none: the login probe without scopes).
        let granted = record.repository.as_deref().map(|name| {
            Actions::from_iter_actions(
                access
                    .iter()
                    .filter(|a| a.name.as_str() == name)
                    .flat_map(|a| a.actions.iter()),
            )
        });
        record.outcome = Outcome::Granted;
        record.actions_granted = granted.unwrap_or_default();
        record.reason = if granted.is_some_and(|g| g.is_empty()) {
            // A token without access is still a token: the registry will answer
            // insufficient_scope.
            "issued_without_access".into()
        } else {
            "issued".into()
        };
        record.expires_at = Some(token.expires_at);
        record.fingerprint = Some(fingerprint.clone());
    }
    let audit_ids = record_all(state, &records).await?;
    let audit_id = audit_ids.first().copied().unwrap_or_default();
    let summary: Vec<String> = access
        .iter()
        .map(|a| format!("{}:{}", a.name, a.actions))
        .collect();
    tracing::info!(
        request_id,
        service = %registry.service(),
        registry = %registry.name(),
        caller = caller.kind(),
        issuer = %caller.issuer(),
        subject = %caller.subject(),
        requested = scopes.len(),
        access = %summary.join(" "),
        audit_id,
        "registry token issued"
    );
    let expires_in = token
        .expires_at
        .duration_since(token.issued_at)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The single place a registry token is exposed: the client asked for it.
    let jwt = token.token.expose_secret();
    let body = TokenResponse {
        token: jwt,
        access_token: jwt,
        expires_in,
        issued_at: crate::audit::rfc3339_seconds(token.issued_at),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Record `records` as refused with `err`'s code, and return the error to answer with: `err`,
/// or the audit failure when the refusal cannot be recorded.
async fn refuse(state: &AppState, records: &mut [AuditRecord], err: ApiError) -> ApiError {
    let (status, code, _) = err.parts();
    for record in records.iter_mut() {
        record.refused(status.is_server_error(), code);
    }
    match record_all(state, records).await {
        Ok(_) => err,
        Err(unrecorded) => unrecorded,
    }
}

/// Why a valid, unrevoked grant no longer buys a token: the configuration that allowed it is
/// gone. Its caller's issuer is no longer trusted, or its repository is no longer the granting
/// project's on this registry (grants of earlier versions, without `prj`: any project's). (A narrowed rule takes effect on grants at their expiry, or by revocation:
/// a grant does not carry the claims the rules match.)
fn outdated_grant(state: &AppState, registry: &str, grant: &Grant) -> Option<ApiError> {
    let claims = &grant.claims;
    if !state.auth.knows_issuer(&claims.idp) {
        return Some(ApiError::BadCredentials {
            code: "grant_issuer_untrusted",
            message: format!(
                "these credentials were issued to a caller of issuer {:?}, which this server no longer trusts",
                claims.idp
            ),
        });
    }
    let Some(project) = state.policy.project_for_repository(registry, &claims.repo) else {
        return Some(ApiError::BadCredentials {
            code: "grant_project_removed",
            message: format!(
                "these credentials are for repository {}, which is no longer a project's on registry {registry}",
                claims.repo
            ),
        });
    };
    // Another project's now (renamed, or its repository given to another): its rules, not the
    // ones that granted these credentials, say who may use it.
    match &claims.prj {
        Some(granted) if granted.as_str() != project.name.as_str() => {
            Some(ApiError::BadCredentials {
                code: "grant_project_changed",
                message: format!(
                    "these credentials were granted for project {granted}; repository {} on registry {registry} is now project {}'s: ask /registry/credentials?project={} again",
                    claims.repo, project.name, project.name
                ),
            })
        }
        _ => None,
    }
}

/// The audit records of a token exchange by `caller`: one per repository asked for (so a
/// project filter finds every token that touched it), or one without a repository when no
/// scope was asked (a `docker login` probe). `credential_id` is the id (`jti`) of the Rise
/// grant presented, linking the exchange to the `/registry/credentials` record that issued it
/// (absent for callers using a JWT directly). All share the request id and, once issued, the
/// token's fingerprint.
fn token_records(
    state: &AppState,
    request_id: &str,
    client: ClientInfo,
    caller: &TokenCaller,
    registry: &str,
    scopes: &[RepositoryScope],
) -> Vec<AuditRecord> {
    let (groups, credential_id) = match caller {
        TokenCaller::Principal(p) => (p.groups.clone(), None),
        TokenCaller::Grant(g) => (Vec::new(), Some(g.claims.jti.clone())),
    };
    let mut base = AuditRecord::begin(
        Operation::Token,
        request_id,
        CallerInfo {
            issuer: caller.issuer().to_owned(),
            subject: caller.subject().to_owned(),
            groups,
            client_ip: client.ip,
            user_agent: client.user_agent,
        },
    );
    base.registry = Some(registry.to_owned());
    base.credential_id = credential_id;
    if scopes.is_empty() {
        return vec![base];
    }
    scopes
        .iter()
        .map(|scope| {
            let mut record = base.clone();
            record.repository = Some(scope.name.to_string());
            record.project = state
                .policy
                .project_for_repository(registry, &scope.name)
                .map(|p| p.name.to_string());
            record.actions_requested = scope.actions;
            record
        })
        .collect()
}

/// Commit every record, concurrently (they share the writer's group commit); their ids in
/// order. The token leaves only once all are committed.
async fn record_all(state: &AppState, records: &[AuditRecord]) -> Result<Vec<i64>, ApiError> {
    let ids =
        futures_util::future::try_join_all(records.iter().map(|r| state.audit.record(r))).await?;
    Ok(ids)
}

/// The password of `Authorization: Basic base64(user:password)`; the username is ignored.
fn basic_password(headers: &HeaderMap) -> Result<SecretString, ApiError> {
    let refuse = |message: &str| ApiError::BadCredentials {
        code: "invalid_credentials",
        message: message.to_owned(),
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        refuse("missing credentials: log in with username `rise` and the password from /registry/credentials, or any username and a token of a trusted issuer")
    })?;
    let value = value
        .to_str()
        .map_err(|_| refuse("malformed Authorization header: expected Basic credentials"))?;
    let (scheme, encoded) = value
        .split_once(' ')
        .ok_or_else(|| refuse("malformed Authorization header: expected Basic credentials"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(refuse(
            "the token endpoint takes Basic credentials (username and password), not a bearer token",
        ));
    }
    let decoded = Zeroizing::new(
        STANDARD
            .decode(encoded.trim())
            .map_err(|_| refuse("malformed Basic credentials: not base64"))?,
    );
    let text = std::str::from_utf8(&decoded)
        .map_err(|_| refuse("malformed Basic credentials: not UTF-8"))?;
    let (_, password) = text
        .split_once(':')
        .ok_or_else(|| refuse("malformed Basic credentials: expected username:password"))?;
    if password.is_empty() {
        return Err(refuse("empty password"));
    }
    Ok(SecretString::from(password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn basic_credentials() {
        let ok = basic(&format!(
            "Basic {}",
            STANDARD.encode("rise:s3cret:with:colons")
        ));
        assert_eq!(
            basic_password(&ok).expect("valid").expose_secret(),
            "s3cret:with:colons"
        );
        for (headers, fragment) in [
            (HeaderMap::new(), "missing credentials"),
            (basic("Bearer abc"), "not a bearer token"),
            (basic("Basic !!!"), "not base64"),
            (
                basic(&format!("Basic {}", STANDARD.encode("nocolon"))),
                "username:password",
            ),
            (
                basic(&format!("Basic {}", STANDARD.encode("rise:"))),
                "empty password",
            ),
            (basic("Basic"), "malformed"),
        ] {
            let err = basic_password(&headers).expect_err(fragment);
            let (status, code, message) = err.parts();
            assert_eq!(status.as_u16(), 401);
            assert_eq!(code, "invalid_credentials");
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn params() {
        let p = parse_params(
            b"account=rise&scope=repository%3Amy-app%3Apull%2Cpush&scope=repository:b:pull&service=svc&client_id=docker&offline_token=true&password=ignored",
            Method::Get,
        )
        .expect("parses");
        assert_eq!(p.service.as_deref(), Some("svc"));
        assert_eq!(
            p.scopes,
            ["repository:my-app:pull,push", "repository:b:pull"]
        );
        assert!(
            p.password.is_none(),
            "GET never takes a password from the query"
        );

        let p = parse_params(
            b"grant_type=refresh_token&refresh_token=abc&client_id=containers%2Fimage&service=svc&scope=repository%3Aa%3Apull+repository%3Ab%3Apull",
            Method::Post,
        )
        .expect("parses");
        assert_eq!(p.password.as_ref().map(|s| s.expose_secret()), Some("abc"));
        assert_eq!(p.scopes, ["repository:a:pull repository:b:pull"]);

        let p = parse_params(
            b"grant_type=password&username=u&password=pw&service=svc",
            Method::Post,
        )
        .expect("parses");
        assert_eq!(p.password.as_ref().map(|s| s.expose_secret()), Some("pw"));

        for (input, method) in [
            (&b"service=a&service=b"[..], Method::Get),
            (b"service=a", Method::Post),
            (b"grant_type=authorization_code&service=a", Method::Post),
        ] {
            let err = parse_params(input, method).err().expect("refused");
            assert_eq!(err.parts().0.as_u16(), 400);
        }
    }
}
