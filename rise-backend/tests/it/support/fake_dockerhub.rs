//! A fake Docker Hub: the sign-in and organization access token (OAT) endpoints Rise calls,
//! written from Docker's public documentation because Docker Hub cannot be called from here.
//! Rise's Docker Hub provider is tested against this fake only, never against Docker Hub.
//!
//! Documented behaviour it follows:
//! - `POST /v2/auth/token` ("Create access token",
//!   <https://docs.docker.com/reference/api/hub/latest/operations/AuthCreateAccessToken.md>):
//!   body `identifier` + `secret` (both required; a user name with a password or personal
//!   access token); 200 `{"access_token": JWT}` that expires in 10 minutes; 401 otherwise.
//! - `POST /v2/orgs/{name}/access-tokens` ("Create access token" of the org-access-tokens tag,
//!   <https://docs.docker.com/reference/api/hub/latest/operations/postV2OrgsByNameAccessTokens.md>)
//!   with a bearer JWT: `createOrgAccessTokenRequest` = `label` (required), `description`,
//!   `resources` (required, at least one; `{type: TYPE_REPO | TYPE_ORG, path, scopes}`, all
//!   three required, a repository path an existing `org/repo` or a glob like `org/*`,
//!   <https://docs.docker.com/reference/api/hub/latest/schemas/orgAccessTokenResource.md>),
//!   `expires_at` (date-time or null = never); 201 `createOrgAccessTokenResponse` (`id`,
//!   `label`, `description`, `resources`, `token`, `is_active`, `expires_at`, `created_at`; no
//!   `created_by`, per docker/docs#24406); 400, 401, 403, 404.
//! - `GET /v2/orgs/{name}/access-tokens` (`page`, `page_size`): 200 `{total, next, previous,
//!   results: [orgAccessToken]}`; `GET` and `DELETE /v2/orgs/{org_name}/access-tokens/{id}`:
//!   200 `getOrgAccessTokenResponse` / 204 (`deleteV2OrgsByOrgNameAccessTokensByAccessTokenId`);
//!   401, 403, 404.
//! - Scope values from the access token reference
//!   (<https://docs.docker.com/security/access-tokens/reference/>): repository scopes
//!   `scope-image-pull`, `scope-image-push` (includes pull), `scope-image-delete` (includes
//!   push), and the repository/tag/webhook ones; organization scopes such as
//!   `scope-member-read`. `repo-pull`, shown in older examples, is refused (docker/docs#24406).
//! - Who may manage OATs: organization owners, on Team or Business plans
//!   (<https://docs.docker.com/security/access-tokens/organization-access-tokens/>); at most 10
//!   (Team) or 100 (Business) tokens, expired ones included until deleted; an expiry at most a
//!   year ahead; `docker login` with the organization's name as the user name and the OAT as
//!   the password.
//! - Errors: `{"errinfo": {}, "message": "..."}`, or `{"fields": {...}, "text": "..."}` for
//!   invalid input; 429 with `X-Retry-After` when rate limited.
//!
//! Not documented, the fake's choices (stricter than Docker Hub may be, so mistakes in Rise
//! fail loudly): unknown body fields are a 400; labels over 100 and descriptions over 200
//! characters are a 400; reaching the token limit is a 400 whose text says so; a JWT from a
//! personal access token is refused on the OAT endpoints with 403 "token issued from personal
//! access token is not allowed" (what public Docker Hub issue reports show); `page_size` over
//! 100 is a 400.
//!
//! Beyond the wire protocol, [`FakeDockerHub::authorize`] answers "could a client that logged
//! in with this OAT pull or push this repository", the fake's reading of the documented scope
//! semantics; tests use it to show what a minted token could reach.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

/// The organization the fake hosts.
pub const ORG: &str = "myorg";
/// An owner of [`ORG`], with a password and a personal access token.
pub const OWNER_USER: &str = "rise-owner";
pub const OWNER_PASSWORD: &str = "owner-password-5c1e9a";
pub const OWNER_PAT: &str = "dckr_pat_owner-7d2b4f";
/// A plain member of [`ORG`]: signs in, but may not manage OATs.
pub const MEMBER_USER: &str = "dev";
pub const MEMBER_PASSWORD: &str = "member-password-2a8c";
/// Repositories of [`ORG`].
pub const REPOSITORIES: &[&str] = &["my-app", "other", "my-app-evil"];
/// Text in injected error bodies that must never reach a log line or a caller.
pub const INJECTED_SECRET: &str = "eyJinjected-secret-should-never-be-logged-0123456789";

const REPO_SCOPES: &[&str] = &[
    "scope-image-pull",
    "scope-image-push",
    "scope-image-delete",
    "scope-repository-read",
    "scope-repository-edit",
    "scope-repository-admin",
    "scope-tag-read",
    "scope-tag-admin",
    "scope-webhook-read",
    "scope-webhook-edit",
    "scope-webhook-admin",
];
const ORG_SCOPES: &[&str] = &[
    "scope-member-read",
    "scope-member-edit",
    "scope-group-read",
    "scope-group-edit",
    "scope-activity-read",
    "scope-repository-create",
    "scope-repository-list",
];

/// Which endpoint a failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    SignIn,
    Create,
    List,
    Get,
    Delete,
}

/// What the fake should do instead of answering normally, until cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and a Docker Hub error body (429 also sets `X-Retry-After`).
    Status(u16),
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply with the success status and a body cut off mid-token.
    Garbage,
    /// Create: mint the token but with `expires_at: null` (never expires).
    NonExpiring,
    /// Create: mint the token expiring this much later than asked.
    LaterExpiry(Duration),
    /// Create: mint the token for every repository of the organization (`org/*`).
    WidenScope,
    /// Create: leave `resources` out of the reply.
    NoResources,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// The bearer token, if any.
    pub bearer: Option<String>,
    /// The JSON body; `Null` when empty or not JSON.
    pub body: Value,
}

/// An organization access token as the fake holds it.
#[derive(Debug, Clone)]
pub struct Oat {
    pub id: String,
    pub token: String,
    pub label: String,
    pub description: String,
    /// `(type, path, scopes)` as granted.
    pub resources: Vec<(String, String, Vec<String>)>,
    pub expires_at: Option<SystemTime>,
    pub created_by: String,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
struct Jwt {
    token: String,
    user: String,
    via_pat: bool,
    expires_at: SystemTime,
    revoked: bool,
}

struct Inner {
    requests: Vec<RecordedRequest>,
    oats: Vec<Oat>,
    jwts: Vec<Jwt>,
    failures: HashMap<Endpoint, Failure>,
    jwt_lifetime: Duration,
    token_limit: usize,
    counter: u64,
}

/// A running fake on `127.0.0.1:<random port>`.
pub struct FakeDockerHub {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<Inner>>;

impl FakeDockerHub {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            requests: Vec::new(),
            oats: Vec::new(),
            jwts: Vec::new(),
            failures: HashMap::new(),
            jwt_lifetime: Duration::from_secs(600),
            token_limit: 100,
            counter: 0,
        }));
        let app = Router::new()
            .route("/v2/auth/token", post(sign_in))
            .route(
                "/v2/orgs/{name}/access-tokens",
                post(create_oat).get(list_oats),
            )
            .route(
                "/v2/orgs/{name}/access-tokens/{id}",
                get(get_oat).delete(delete_oat),
            )
            .fallback(|| async { hub_error(StatusCode::NOT_FOUND, "not found") })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake Docker Hub");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// The API URL (`http://127.0.0.1:PORT`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests with this method and path.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    /// How many sign-ins succeeded.
    pub fn sign_ins(&self) -> usize {
        self.lock().jwts.len()
    }

    pub fn oats(&self) -> Vec<Oat> {
        self.lock().oats.clone()
    }

    pub fn oat_by_token(&self, token: &str) -> Option<Oat> {
        self.lock().oats.iter().find(|o| o.token == token).cloned()
    }

    pub fn set_failure(&self, endpoint: Endpoint, failure: Option<Failure>) {
        let mut inner = self.lock();
        match failure {
            Some(f) => inner.failures.insert(endpoint, f),
            None => inner.failures.remove(&endpoint),
        };
    }

    pub fn set_jwt_lifetime(&self, lifetime: Duration) {
        self.lock().jwt_lifetime = lifetime;
    }

    /// Docker Hub ends every sign-in JWT it issued (as a password change would).
    pub fn revoke_jwts(&self) {
        for jwt in &mut self.lock().jwts {
            jwt.revoked = true;
        }
    }

    pub fn set_token_limit(&self, limit: usize) {
        self.lock().token_limit = limit;
    }

    /// Move an OAT's expiry into the past.
    pub fn expire(&self, id: &str) {
        if let Some(o) = self.lock().oats.iter_mut().find(|o| o.id == id) {
            o.expires_at = Some(SystemTime::now() - Duration::from_secs(60));
        }
    }

    /// Add a token as if an owner had created it in Docker Home; returns its id.
    pub fn seed(&self, label: &str, expires_at: Option<SystemTime>) -> String {
        let mut inner = self.lock();
        let (id, token) = next_ids(&mut inner);
        inner.oats.push(Oat {
            id: id.clone(),
            token,
            label: label.into(),
            description: String::new(),
            resources: vec![(
                "TYPE_REPO".into(),
                format!("{ORG}/other"),
                vec!["scope-image-pull".into()],
            )],
            expires_at,
            created_by: OWNER_USER.into(),
            deleted: false,
        });
        id
    }

    /// Could a client logged in as `username` with `password` (an OAT) do `action` (`pull` or
    /// `push`) on `repository` (`org/repo`) now?
    pub fn authorize(
        &self,
        username: &str,
        password: &str,
        repository: &str,
        action: &str,
    ) -> bool {
        let inner = self.lock();
        let Some(oat) = inner.oats.iter().find(|o| o.token == password) else {
            return false;
        };
        if oat.deleted
            || username != ORG
            || oat.expires_at.is_some_and(|at| at <= SystemTime::now())
        {
            return false;
        }
        let needed: &[&str] = match action {
            "pull" => &["scope-image-pull", "scope-image-push", "scope-image-delete"],
            "push" => &["scope-image-push", "scope-image-delete"],
            _ => return false,
        };
        oat.resources.iter().any(|(kind, path, scopes)| {
            kind == "TYPE_REPO"
                && path_matches(path, repository)
                && scopes.iter().any(|s| needed.contains(&s.as_str()))
        })
    }

    /// Stop listening; later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a handler panicked: the test fails anyway.
        self.inner.lock().expect("fake Docker Hub state")
    }
}

impl Drop for FakeDockerHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn path_matches(pattern: &str, repository: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => repository.starts_with(prefix) && !repository[prefix.len()..].contains('/'),
        None => pattern == repository,
    }
}

fn next_ids(inner: &mut Inner) -> (String, String) {
    inner.counter += 1;
    let n = inner.counter;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (
        format!("a7a5ef25-8889-43a0-8cc7-{n:012x}"),
        format!("dckr_oat_fake{n:04}x{nanos:08x}Q7awgM4jG5SQvxcvmNzhKj8"),
    )
}

fn hub_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errinfo": {}, "message": message})),
    )
        .into_response()
}

fn value_error(text: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"fields": {}, "text": text})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

fn record(
    inner: &mut Inner,
    method: &str,
    path: &str,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) {
    inner.requests.push(RecordedRequest {
        method: method.into(),
        path: path.into(),
        query,
        bearer: bearer(headers),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
}

/// The injected failure's reply, if one applies to `endpoint`; `Ok(None)` to go on normally.
async fn injected(shared: &Shared, endpoint: Endpoint, success: StatusCode) -> Option<Response> {
    let failure = shared
        .lock()
        .expect("fake Docker Hub state")
        .failures
        .get(&endpoint)
        .cloned()?;
    match failure {
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).expect("valid injected status");
            let mut response = hub_error(status, &format!("injected failure {INJECTED_SECRET}"));
            if code == 429 {
                response.headers_mut().insert(
                    "x-retry-after",
                    header::HeaderValue::from_static("1764331200"),
                );
            }
            Some(response)
        }
        Failure::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Failure::Garbage => Some(
            (
                success,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"id\":\"x\",\"token\":\"{INJECTED_SECRET}"),
            )
                .into_response(),
        ),
        // Create-only variations, applied by the create handler.
        _ => None,
    }
}

/// Who a bearer JWT belongs to, if it is one the fake issued and it is still valid.
// A refusal is the reply itself; its size does not matter in a test fake.
#[allow(clippy::result_large_err)]
fn authenticate(inner: &Inner, headers: &HeaderMap) -> Result<Jwt, Response> {
    let token =
        bearer(headers).ok_or_else(|| hub_error(StatusCode::UNAUTHORIZED, "unauthorized"))?;
    inner
        .jwts
        .iter()
        .find(|j| j.token == token && !j.revoked && j.expires_at > SystemTime::now())
        .cloned()
        .ok_or_else(|| hub_error(StatusCode::UNAUTHORIZED, "unauthorized"))
}

/// The caller may manage OATs of `org`.
// A refusal is the reply itself; its size does not matter in a test fake.
#[allow(clippy::result_large_err)]
fn authorize_owner(inner: &Inner, headers: &HeaderMap, org: &str) -> Result<Jwt, Response> {
    let jwt = authenticate(inner, headers)?;
    if jwt.via_pat {
        return Err(hub_error(
            StatusCode::FORBIDDEN,
            "token issued from personal access token is not allowed",
        ));
    }
    if org != ORG {
        return Err(hub_error(StatusCode::NOT_FOUND, "not found"));
    }
    if jwt.user != OWNER_USER {
        return Err(hub_error(StatusCode::FORBIDDEN, "permission denied"));
    }
    Ok(jwt)
}

async fn sign_in(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(
        &mut shared.lock().expect("state"),
        "POST",
        "/v2/auth/token",
        HashMap::new(),
        &headers,
        &body,
    );
    if let Some(r) = injected(&shared, Endpoint::SignIn, StatusCode::OK).await {
        return r;
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return value_error("body must be a JSON object");
    };
    if fields.keys().any(|k| k != "identifier" && k != "secret") {
        return value_error("unknown field");
    }
    let (Some(identifier), Some(secret)) = (
        fields.get("identifier").and_then(Value::as_str),
        fields.get("secret").and_then(Value::as_str),
    ) else {
        return value_error("identifier and secret are required");
    };
    let via_pat = match (identifier, secret) {
        (OWNER_USER, OWNER_PASSWORD) | (MEMBER_USER, MEMBER_PASSWORD) => false,
        (OWNER_USER, OWNER_PAT) => true,
        _ => return hub_error(StatusCode::UNAUTHORIZED, "unauthorized"),
    };
    let mut inner = shared.lock().expect("state");
    inner.counter += 1;
    let expires_at = SystemTime::now() + inner.jwt_lifetime;
    let exp = expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let b64 = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let token = format!(
        "{}.{}.fakesig{}",
        b64(json!({"alg": "RS256", "typ": "JWT"})),
        b64(json!({"sub": identifier, "exp": exp, "jti": inner.counter})),
        inner.counter
    );
    inner.jwts.push(Jwt {
        token: token.clone(),
        user: identifier.to_owned(),
        via_pat,
        expires_at,
        revoked: false,
    });
    (StatusCode::OK, axum::Json(json!({"access_token": token}))).into_response()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `createOrgAccessTokenRequest`, checked strictly; the parsed parts on success.
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn parse_create(
    body: &[u8],
) -> Result<
    (
        String,
        String,
        Vec<(String, String, Vec<String>)>,
        Option<SystemTime>,
    ),
    Response,
> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(value_error("body must be a JSON object"));
    };
    if let Some(k) = fields
        .keys()
        .find(|k| !["label", "description", "resources", "expires_at"].contains(&k.as_str()))
    {
        return Err(value_error(&format!("unknown field {k}")));
    }
    let label = match fields.get("label") {
        Some(Value::String(l)) if !l.trim().is_empty() && l.chars().count() <= 100 => l.clone(),
        _ => return Err(value_error("label is required (1-100 characters)")),
    };
    let description = match fields.get("description") {
        None => String::new(),
        Some(Value::String(d)) if d.chars().count() <= 200 => d.clone(),
        _ => return Err(value_error("description is at most 200 characters")),
    };
    let Some(Value::Array(resources)) = fields.get("resources") else {
        return Err(value_error("resources is required"));
    };
    if resources.is_empty() || resources.len() > 50 {
        return Err(value_error("resources needs 1 to 50 items"));
    }
    let mut parsed = Vec::new();
    for r in resources {
        let Value::Object(r) = r else {
            return Err(value_error("a resource is an object"));
        };
        if r.len() != 3 {
            return Err(value_error("a resource has exactly type, path and scopes"));
        }
        let (Some(kind), Some(path), Some(Value::Array(scopes))) = (
            r.get("type").and_then(Value::as_str),
            r.get("path").and_then(Value::as_str),
            r.get("scopes"),
        ) else {
            return Err(value_error("a resource needs type, path and scopes"));
        };
        let scopes: Vec<String> = scopes
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| value_error("scopes are strings"))?;
        if scopes.is_empty() {
            return Err(value_error("scopes must not be empty"));
        }
        let allowed = match kind {
            "TYPE_REPO" => {
                let known = path == format!("{ORG}/*")
                    || path
                        .strip_prefix(&format!("{ORG}/"))
                        .is_some_and(|repo| REPOSITORIES.contains(&repo));
                if !known {
                    return Err(value_error(&format!(
                        "path {path} is not an existing repository of {ORG}"
                    )));
                }
                REPO_SCOPES
            }
            "TYPE_ORG" => {
                if path != ORG {
                    return Err(value_error(
                        "an organization resource's path is the organization",
                    ));
                }
                ORG_SCOPES
            }
            _ => return Err(value_error("type must be TYPE_REPO or TYPE_ORG")),
        };
        if let Some(bad) = scopes.iter().find(|s| !allowed.contains(&s.as_str())) {
            return Err(value_error(&format!("invalid scope {bad}")));
        }
        parsed.push((kind.to_owned(), path.to_owned(), scopes));
    }
    let expires_at = match fields.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let at = humantime::parse_rfc3339(s)
                .map_err(|_| value_error("expires_at is not an RFC 3339 date-time"))?;
            let now = SystemTime::now();
            if at <= now {
                return Err(value_error("expires_at must be in the future"));
            }
            if at > now + Duration::from_secs(366 * 24 * 3600) {
                return Err(value_error("expires_at is at most one year ahead"));
            }
            Some(at)
        }
        _ => return Err(value_error("expires_at is a date-time")),
    };
    Ok((label, description, parsed, expires_at))
}

fn resources_json(resources: &[(String, String, Vec<String>)]) -> Value {
    Value::Array(
        resources
            .iter()
            .map(|(kind, path, scopes)| json!({"type": kind, "path": path, "scopes": scopes}))
            .collect(),
    )
}

fn oat_json(oat: &Oat, with_resources: bool) -> Value {
    let mut v = json!({
        "id": oat.id,
        "label": oat.label,
        "created_by": oat.created_by,
        "is_active": !oat.deleted,
        "created_at": "2026-01-01T00:00:00Z",
        "expires_at": oat.expires_at.map(rfc3339),
        "last_used_at": null,
    });
    if with_resources {
        v["resources"] = resources_json(&oat.resources);
    }
    v
}

async fn create_oat(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v2/orgs/{name}/access-tokens");
    record(
        &mut shared.lock().expect("state"),
        "POST",
        &path,
        HashMap::new(),
        &headers,
        &body,
    );
    if let Some(r) = injected(&shared, Endpoint::Create, StatusCode::CREATED).await {
        return r;
    }
    let mut inner = shared.lock().expect("state");
    let jwt = match authorize_owner(&inner, &headers, &name) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let (label, description, mut resources, mut expires_at) = match parse_create(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if inner.oats.iter().filter(|o| !o.deleted).count() >= inner.token_limit {
        return value_error("the organization has reached its maximum number of access tokens");
    }
    let variation = inner.failures.get(&Endpoint::Create).cloned();
    match &variation {
        Some(Failure::NonExpiring) => expires_at = None,
        Some(Failure::LaterExpiry(by)) => expires_at = expires_at.map(|at| at + *by),
        Some(Failure::WidenScope) => {
            for r in &mut resources {
                r.1 = format!("{ORG}/*");
            }
        }
        _ => {}
    }
    let (id, token) = next_ids(&mut inner);
    let oat = Oat {
        id,
        token,
        label,
        description,
        resources,
        expires_at,
        created_by: jwt.user,
        deleted: false,
    };
    let mut reply = json!({
        "id": oat.id,
        "label": oat.label,
        "description": oat.description,
        "token": oat.token,
        "is_active": true,
        "expires_at": oat.expires_at.map(rfc3339),
        "created_at": rfc3339(SystemTime::now()),
        "last_used_at": null,
    });
    if variation != Some(Failure::NoResources) {
        reply["resources"] = resources_json(&oat.resources);
    }
    inner.oats.push(oat);
    (StatusCode::CREATED, axum::Json(reply)).into_response()
}

async fn list_oats(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v2/orgs/{name}/access-tokens");
    record(
        &mut shared.lock().expect("state"),
        "GET",
        &path,
        query.clone(),
        &headers,
        b"",
    );
    if let Some(r) = injected(&shared, Endpoint::List, StatusCode::OK).await {
        return r;
    }
    let inner = shared.lock().expect("state");
    if let Err(r) = authorize_owner(&inner, &headers, &name) {
        return r;
    }
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or(()),
    };
    let (Ok(page), Ok(page_size)) = (number("page", 1), number("page_size", 10)) else {
        return value_error("page and page_size are positive numbers");
    };
    if page_size > 100 {
        return value_error("page_size is at most 100");
    }
    let live: Vec<&Oat> = inner.oats.iter().filter(|o| !o.deleted).collect();
    let start = (page - 1) * page_size;
    let results: Vec<Value> = live
        .iter()
        .skip(start)
        .take(page_size)
        .map(|o| oat_json(o, false))
        .collect();
    let link = |p: usize| format!("https://hub.docker.com{path}?page={p}&page_size={page_size}");
    let next = (start + page_size < live.len()).then(|| link(page + 1));
    let previous = (page > 1).then(|| link(page - 1));
    (
        StatusCode::OK,
        axum::Json(json!({
            "total": live.len(),
            "next": next,
            "previous": previous,
            "results": results,
        })),
    )
        .into_response()
}

async fn get_oat(
    State(shared): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(shared, name, id, headers, false).await
}

async fn delete_oat(
    State(shared): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(shared, name, id, headers, true).await
}

async fn one(
    shared: Shared,
    name: String,
    id: String,
    headers: HeaderMap,
    delete: bool,
) -> Response {
    let path = format!("/v2/orgs/{name}/access-tokens/{id}");
    let (method, endpoint, success) = if delete {
        ("DELETE", Endpoint::Delete, StatusCode::NO_CONTENT)
    } else {
        ("GET", Endpoint::Get, StatusCode::OK)
    };
    record(
        &mut shared.lock().expect("state"),
        method,
        &path,
        HashMap::new(),
        &headers,
        b"",
    );
    if let Some(r) = injected(&shared, endpoint, success).await {
        return r;
    }
    let mut inner = shared.lock().expect("state");
    if let Err(r) = authorize_owner(&inner, &headers, &name) {
        return r;
    }
    let Some(oat) = inner.oats.iter_mut().find(|o| o.id == id && !o.deleted) else {
        return hub_error(StatusCode::NOT_FOUND, "not found");
    };
    if delete {
        oat.deleted = true;
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut v = oat_json(oat, true);
    if let Value::Object(m) = &mut v {
        m.insert("description".into(), Value::String(oat.description.clone()));
    }
    (StatusCode::OK, axum::Json(v)).into_response()
}
