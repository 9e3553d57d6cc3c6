//! A fake Quay: the organization robot and repository permission endpoints Rise calls, written
//! from Quay's public API documentation because no Quay can run here. Rise's Quay provider is
//! tested against this fake only, never against a real instance.
//!
//! Sources: the Red Hat Quay "API reference" (`createOrgRobot`, `deleteOrgRobot`,
//! `getOrgRobots`, `changeUserPermissions`, and "Authorization" for the OAuth scopes), and in
//! `quay/quay`: `endpoints/api/robot.py` (`CREATE_ROBOT_SCHEMA`, 201 on create, 204 on delete,
//! list query `token`/`permissions`/`limit`), `endpoints/api/robot_models_interface.py` (reply
//! shapes), `endpoints/api/permission.py` (`UserPermission` schema, role `read`/`write`/`admin`,
//! 200), `data/model/user.py::create_robot` and `util/validation.py` (robot short names match
//! `^[a-z0-9]+(?:[._-][a-z0-9]+)*$`, 2 to 255 characters; a taken name is a 400),
//! `data/model/permission.py::set_user_repo_permission` (a robot only in its own namespace), and
//! `endpoints/exception.py` (error bodies `{status, error_message, title, error_type, detail,
//! type}`; 401 `invalid_token`, 403 `insufficient_scope`). Documented behaviour it follows:
//! - every call needs `Authorization: Bearer <OAuth token>`; robots need `org:admin`,
//!   permissions `repo:admin`, and the token's user must administer the organization;
//! - `PUT /api/v1/organization/{org}/robots/{shortname}`: optional JSON body with only
//!   `description` (string, at most 255) and `unstructured_metadata` (object); 201 with `name`
//!   (`org+shortname`), `created`, `last_accessed`, `description`, `token`,
//!   `unstructured_metadata`;
//! - `DELETE` on the same path: 204, 404 when unknown;
//! - `GET /api/v1/organization/{org}/robots`: `{"robots": [...]}`, tokens included unless
//!   `token=false`; no paging;
//! - `PUT /api/v1/repository/{org}/{repo}/permissions/user/{username}`: body `{"role": ...}`;
//!   200 with `role`, `name`, `is_robot`, `avatar`, `is_org_member`; 404 for a missing
//!   repository.
//!
//! Stricter than documented, so mistakes in Rise fail loudly: unknown body fields and query keys
//! are a 400, a body without `Content-Type: application/json` is a 400, and a create without a
//! description is a 400 (Rise always writes one).
//!
//! Beyond the wire protocol, [`FakeQuay::authorize`] answers "may this robot do this action on
//! this repository", the fake's reading of Quay's roles (`read`: pull; `write`: pull and push;
//! `admin`: both), refused once the robot is deleted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Map, Value, json};

/// The organization the fake serves.
pub const ORG: &str = "acme";
/// An OAuth token of an administrator of `ORG` with `org:admin` and `repo:admin`.
pub const OAUTH_TOKEN: &str = "QuayOAuth-admin-token-7c1e9a55d0";
/// An OAuth token of the same administrator with `org:admin` only.
pub const ORG_ONLY_TOKEN: &str = "QuayOAuth-org-only-token-31b8";
/// Repositories that exist in `ORG`.
pub const REPOSITORIES: &[&str] = &["my-app", "other-app", "team/nested"];
/// Text inside injected error bodies; it must never reach a log line or a client.
pub const INJECTED_SECRET: &str = "injected-secret-should-never-be-logged-8f2b";
/// Text inside injected garbage bodies.
pub const GARBAGE_SECRET: &str = "garbage-secret-should-never-be-logged";

/// What the fake should do instead of answering normally, until cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and a Quay error body.
    Status(u16),
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply with the success status and a body cut off mid-JSON.
    Garbage,
    /// Create the robot, but reply with another robot's name (create only).
    WrongName,
}

/// The endpoints, for failures limited to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    CreateRobot,
    DeleteRobot,
    ListRobots,
    Permission,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub endpoint: Endpoint,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The bearer token, if the request had one.
    pub bearer: Option<String>,
    pub content_type: Option<String>,
    /// The JSON body; `Null` when empty or not JSON.
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct FakeRobot {
    /// `org+shortname`.
    pub name: String,
    pub description: String,
    pub unstructured_metadata: Value,
    pub token: String,
    /// Repository (without the organization) → role.
    pub permissions: BTreeMap<String, String>,
}

struct Inner {
    requests: Vec<RecordedRequest>,
    robots: Vec<FakeRobot>,
    deleted: Vec<FakeRobot>,
    /// The failure, and the endpoint it is limited to (`None`: every endpoint).
    failure: Option<(Option<Endpoint>, Failure)>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake on `127.0.0.1:<random port>`.
pub struct FakeQuay {
    addr: SocketAddr,
    inner: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeQuay {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            requests: Vec::new(),
            robots: Vec::new(),
            deleted: Vec::new(),
            failure: None,
        }));
        let app = Router::new()
            .route("/api/v1/organization/{org}/robots", get(list_robots))
            .route(
                "/api/v1/organization/{org}/robots/{shortname}",
                put(create_robot).delete(delete_robot),
            )
            .route("/api/v1/repository/{*rest}", put(set_permission))
            .fallback(|| async { quay_error(StatusCode::NOT_FOUND, "not_found", "Not Found") })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake Quay");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// Quay's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The registry host clients log in to.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests other than the reaper's listings.
    pub fn requests_except_listings(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.endpoint != Endpoint::ListRobots)
            .collect()
    }

    /// Robots that exist now.
    pub fn robots(&self) -> Vec<FakeRobot> {
        self.lock().robots.clone()
    }

    pub fn robot(&self, name: &str) -> Option<FakeRobot> {
        self.lock().robots.iter().find(|r| r.name == name).cloned()
    }

    pub fn deleted(&self) -> Vec<FakeRobot> {
        self.lock().deleted.clone()
    }

    /// Fail every request with `failure` (or answer normally with `None`).
    pub fn set_failure(&self, failure: Option<Failure>) {
        self.lock().failure = failure.map(|f| (None, f));
    }

    /// Fail only requests to `endpoint`.
    pub fn set_failure_on(&self, endpoint: Endpoint, failure: Failure) {
        self.lock().failure = Some((Some(endpoint), failure));
    }

    /// Add a robot of `ORG` as if someone else had created it; returns its full name.
    pub fn add_robot(
        &self,
        shortname: &str,
        description: &str,
        repository: Option<&str>,
    ) -> String {
        let name = format!("{ORG}+{shortname}");
        let mut permissions = BTreeMap::new();
        if let Some(repo) = repository {
            permissions.insert(repo.to_owned(), "write".to_owned());
        }
        self.lock().robots.push(FakeRobot {
            name: name.clone(),
            description: description.into(),
            unstructured_metadata: json!({}),
            token: new_token(),
            permissions,
        });
        name
    }

    /// Would Quay let robot `username` with `token` do `action` (`pull`, `push`) on
    /// `repository` (`<org>/<repo>`)? Only robots are modelled; public repositories are not.
    pub fn authorize(&self, username: &str, token: &str, repository: &str, action: &str) -> bool {
        let inner = self.lock();
        let Some(robot) = inner
            .robots
            .iter()
            .find(|r| r.name == username && r.token == token)
        else {
            return false;
        };
        let Some((org, repo)) = repository.split_once('/') else {
            return false;
        };
        let Some((robot_org, _)) = robot.name.split_once('+') else {
            return false;
        };
        if org != robot_org {
            return false;
        }
        matches!(
            (robot.permissions.get(repo).map(String::as_str), action),
            (Some("read" | "write" | "admin"), "pull") | (Some("write" | "admin"), "push")
        )
    }

    /// Stop listening; later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a handler panicked: the test fails anyway.
        self.inner.lock().expect("fake Quay state")
    }
}

impl Drop for FakeQuay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Quay's error reply (`endpoints/exception.py::ApiException.to_dict`).
struct QuayError {
    status: StatusCode,
    error_type: &'static str,
    detail: String,
}

impl IntoResponse for QuayError {
    fn into_response(self) -> Response {
        let status = self.status;
        let error_type = self.error_type;
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json!({
                "status": status.as_u16(),
                "error_message": self.detail,
                "title": error_type,
                "error_type": error_type,
                "detail": self.detail,
                "type": format!("https://quay.example/api/v1/error/{error_type}"),
            })
            .to_string(),
        )
            .into_response()
    }
}

fn quay_error(status: StatusCode, error_type: &'static str, detail: &str) -> Response {
    QuayError {
        status,
        error_type,
        detail: detail.to_owned(),
    }
    .into_response()
}

fn invalid(detail: &str) -> QuayError {
    QuayError {
        status: StatusCode::BAD_REQUEST,
        error_type: "invalid_request",
        detail: detail.to_owned(),
    }
}

fn bad_request(detail: &str) -> Response {
    quay_error(StatusCode::BAD_REQUEST, "invalid_request", detail)
}

fn new_token() -> String {
    // Quay's robot tokens are 64 random upper-case letters and digits.
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}").to_ascii_uppercase()
}

/// `util/validation.py::validate_username`.
fn valid_quay_name(s: &str) -> bool {
    let b = s.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    (2..=255).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || sep(c))
        && !sep(b[0])
        && !sep(b[b.len() - 1])
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]))
}

/// Record the request; the failure that applies to it, if any.
fn record(
    shared: &Shared,
    endpoint: Endpoint,
    method: &Method,
    path: String,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Failure> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = shared.lock().expect("fake Quay state");
    inner.requests.push(RecordedRequest {
        endpoint,
        method: method.to_string(),
        path,
        query,
        bearer,
        content_type,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    match &inner.failure {
        Some((only, failure)) if only.is_none_or(|e| e == endpoint) => Some(failure.clone()),
        _ => None,
    }
}

/// The injected failure's response, or `None` to answer normally.
async fn injected(failure: Option<Failure>, ok: StatusCode) -> Option<Response> {
    match failure? {
        Failure::Hang => std::future::pending().await,
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(quay_error(
                status,
                "injected",
                &format!("injected failure, secret {INJECTED_SECRET}"),
            ))
        }
        Failure::WrongName => None,
        Failure::Garbage => Some(
            (
                ok,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"name\": \"{ORG}+x\", \"token\": \"{GARBAGE_SECRET}"),
            )
                .into_response(),
        ),
    }
}

/// The scopes of a bearer token; `Err` is Quay's reply for a missing or unknown token.
fn authenticate(headers: &HeaderMap) -> Result<&'static [&'static str], QuayError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(OAUTH_TOKEN) => Ok(&["org:admin", "repo:admin"]),
        Some(ORG_ONLY_TOKEN) => Ok(&["org:admin"]),
        _ => Err(QuayError {
            status: StatusCode::UNAUTHORIZED,
            error_type: "invalid_token",
            detail: "Requires authentication".into(),
        }),
    }
}

/// The token's user administers `ORG` only, and must hold `scope`.
fn require(headers: &HeaderMap, org: &str, scope: &str) -> Result<(), QuayError> {
    let scopes = authenticate(headers)?;
    if !scopes.contains(&scope) || org != ORG {
        return Err(QuayError {
            status: StatusCode::FORBIDDEN,
            error_type: "insufficient_scope",
            detail: "Unauthorized".into(),
        });
    }
    Ok(())
}

/// A JSON object body, strictly: `Content-Type: application/json` and only `allowed` keys.
fn json_object(
    headers: &HeaderMap,
    body: &Bytes,
    allowed: &[&str],
) -> Result<Map<String, Value>, QuayError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err(invalid("Content-Type must be application/json"));
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("Malformed JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(&format!("Unknown property {k}")));
    }
    Ok(map)
}

async fn create_robot(
    State(shared): State<Shared>,
    Path((org, shortname)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/api/v1/organization/{org}/robots/{shortname}");
    let failure = record(
        &shared,
        Endpoint::CreateRobot,
        &Method::PUT,
        path,
        None,
        &headers,
        &body,
    );
    let wrong_name = failure == Some(Failure::WrongName);
    if let Some(r) = injected(failure, StatusCode::CREATED).await {
        return r;
    }
    if let Err(r) = require(&headers, &org, "org:admin") {
        return r.into_response();
    }
    let map = match json_object(&headers, &body, &["description", "unstructured_metadata"]) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let description = match map.get("description") {
        Some(Value::String(d)) if d.chars().count() <= 255 => d.clone(),
        Some(Value::String(_)) => return bad_request("description is longer than 255"),
        _ => return bad_request("description is required here and must be a string"),
    };
    let metadata = match map.get("unstructured_metadata") {
        None => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return bad_request("unstructured_metadata must be an object"),
    };
    if !valid_quay_name(&shortname) {
        return bad_request(&format!(
            "The name for the robot '{shortname}' is invalid: Namespace must match expression ^([a-z0-9]+(?:[._-][a-z0-9]+)*)$"
        ));
    }
    let name = format!("{org}+{shortname}");
    let mut inner = shared.lock().expect("fake Quay state");
    if inner.robots.iter().any(|r| r.name == name) {
        return bad_request(&format!("Existing robot with name: {name}"));
    }
    let robot = FakeRobot {
        name: name.clone(),
        description: description.clone(),
        unstructured_metadata: metadata.clone(),
        token: new_token(),
        permissions: BTreeMap::new(),
    };
    let reply = json!({
        "name": if wrong_name { format!("{org}+someone_else") } else { name },
        "created": "Fri, 10 May 2024 15:11:00 -0000",
        "last_accessed": null,
        "description": description,
        "token": robot.token,
        "unstructured_metadata": metadata,
    });
    inner.robots.push(robot);
    (StatusCode::CREATED, axum::Json(reply)).into_response()
}

async fn delete_robot(
    State(shared): State<Shared>,
    Path((org, shortname)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/api/v1/organization/{org}/robots/{shortname}");
    let failure = record(
        &shared,
        Endpoint::DeleteRobot,
        &Method::DELETE,
        path,
        None,
        &headers,
        &body,
    );
    if let Some(r) = injected(failure, StatusCode::NO_CONTENT).await {
        return r;
    }
    if let Err(r) = require(&headers, &org, "org:admin") {
        return r.into_response();
    }
    if !body.is_empty() {
        return bad_request("DELETE takes no body");
    }
    let name = format!("{org}+{shortname}");
    let mut inner = shared.lock().expect("fake Quay state");
    let Some(at) = inner.robots.iter().position(|r| r.name == name) else {
        // Quay's OrgRobot.delete looks the robot up first; a missing one is a data-model
        // error, which its API answers with 400 and a bare message (not the documented 404).
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "message": "Could not find robot with specified username"
            })),
        )
            .into_response();
    };
    let robot = inner.robots.remove(at);
    inner.deleted.push(robot);
    StatusCode::NO_CONTENT.into_response()
}

async fn list_robots(
    State(shared): State<Shared>,
    Path(org): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v1/organization/{org}/robots");
    let failure = record(
        &shared,
        Endpoint::ListRobots,
        &Method::GET,
        path,
        query.clone(),
        &headers,
        &Bytes::new(),
    );
    if let Some(r) = injected(failure, StatusCode::OK).await {
        return r;
    }
    if let Err(r) = require(&headers, &org, "org:admin") {
        return r.into_response();
    }
    let mut include_token = true;
    let mut limit = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, v) {
            ("token", "false") => include_token = false,
            ("token", "true") => include_token = true,
            ("permissions", "false" | "true") => {}
            ("limit", n) if n.parse::<usize>().is_ok() => limit = n.parse().ok(),
            _ => return bad_request(&format!("Unknown or invalid query parameter {k}")),
        }
    }
    let inner = shared.lock().expect("fake Quay state");
    let robots: Vec<Value> = inner
        .robots
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|r| {
            let mut v = json!({
                "name": r.name,
                "created": "Fri, 10 May 2024 15:11:00 -0000",
                "last_accessed": null,
                "teams": [],
                "repositories": r.permissions.keys().collect::<Vec<_>>(),
                "description": r.description,
            });
            if include_token {
                v["token"] = json!(r.token);
            }
            v
        })
        .collect();
    axum::Json(json!({ "robots": robots })).into_response()
}

/// `PUT /api/v1/repository/{org}/{repo...}/permissions/user/{username}`.
async fn set_permission(
    State(shared): State<Shared>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/api/v1/repository/{rest}");
    let failure = record(
        &shared,
        Endpoint::Permission,
        &Method::PUT,
        path,
        None,
        &headers,
        &body,
    );
    if let Some(r) = injected(failure, StatusCode::OK).await {
        return r;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    if n < 5 || parts[n - 3] != "permissions" || parts[n - 2] != "user" {
        return quay_error(StatusCode::NOT_FOUND, "not_found", "Not Found");
    }
    let org = parts[0];
    let repo = parts[1..n - 3].join("/");
    let username = parts[n - 1];
    if let Err(r) = require(&headers, org, "repo:admin") {
        return r.into_response();
    }
    let map = match json_object(&headers, &body, &["role"]) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let role = match map.get("role").and_then(Value::as_str) {
        Some(r @ ("read" | "write" | "admin")) => r.to_owned(),
        _ => return bad_request("role is required and must be one of read, write, admin"),
    };
    if !REPOSITORIES.contains(&repo.as_str()) {
        return quay_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("Repository {org}/{repo} not found"),
        );
    }
    let mut inner = shared.lock().expect("fake Quay state");
    let Some(robot) = inner.robots.iter_mut().find(|r| r.name == username) else {
        return bad_request(&format!("Invalid username: {username}"));
    };
    if !username.starts_with(&format!("{org}+")) {
        return bad_request(&format!(
            "Cannot add robot {username} under namespace {org}"
        ));
    }
    robot.permissions.insert(repo, role.clone());
    axum::Json(json!({
        "role": role,
        "name": username,
        "is_robot": true,
        "avatar": {"name": username, "hash": "0", "color": "#000000", "kind": "robot"},
        "is_org_member": true,
    }))
    .into_response()
}
