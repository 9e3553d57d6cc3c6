//! A fake Harbor: the robot account endpoints Rise calls, written from Harbor's published API
//! definition because no Harbor can run here. Rise's Harbor provider is tested against this fake
//! only, never against a real instance.
//!
//! Sources: `api/v2.0/swagger.yaml` in `goharbor/harbor` (tag `robot`: `CreateRobot`,
//! `ListRobot`, `GetRobotByID`, `DeleteRobot`; definitions `RobotCreate`, `RobotCreated`,
//! `Robot`, `RobotPermission`, `Access`, `Errors`; parameters `q`, `page`, `page_size`) and the
//! code behind them: `src/server/v2.0/handler/robot.go`, `src/controller/robot/controller.go`
//! and `src/pkg/robot/dao/dao.go`. Documented behaviour it follows:
//! - `POST /api/v2.0/robots`: the name must match `^[a-z0-9]+(?:[._-][a-z0-9]+)*$`;
//!   `duration` is days, `-1` never expires; `level` is `system` or `project`; `permissions`
//!   and each `access` list must be non-empty; a project robot has exactly one permission.
//!   System robots need the system `robot` permission (here: the admin user). Replies 201 with
//!   `id`, `name` (`robot$` + name; a project robot `robot$<project>+<name>`), `secret`,
//!   `creation_time`, `expires_at` (Unix seconds, creation + duration days, or `-1`) and
//!   `Location`; a taken name is 409.
//! - `GET /api/v2.0/robots`: system robots unless `q` has `Level=project,ProjectID=N`; `q`
//!   also filters `name=~v` (contains, on the stored name, which has no `robot$`); `page`
//!   (from 1), `page_size` (default 10, at most 100); `X-Total-Count`. Secrets never listed.
//! - `GET`/`DELETE /api/v2.0/robots/{robot_id}`: 200, 404 unknown, 400 non-numeric id.
//! - 401 without valid credentials, 403 without the permission; errors are
//!   `{"errors":[{"code": "...", "message": "..."}]}`.
//!
//! A permission on a project that does not exist is a 404 (Harbor's project lookup). Stricter
//! than documented, so mistakes in Rise fail loudly: unknown body fields and query keys are a
//! 400, `duration: 0` (Harbor's "use the configured default") is a 400, a `secret` in the body
//! is a 400, and `page_size` over 100 is a 400.
//!
//! Beyond the wire protocol, [`FakeHarbor::authorize`] answers "may this robot do this action
//! on this repository", the fake's reading of Harbor's robot permissions (per project, never
//! per repository; refused once deleted, disabled or past `expires_at` on the fake's clock,
//! which [`FakeHarbor::advance`] moves).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};

/// A Harbor system administrator.
pub const ADMIN_USER: &str = "rise-admin";
pub const ADMIN_PASSWORD: &str = "Harbor-admin-pw-7c1e9a";
/// An ordinary Harbor user: authenticated, but without the system robot permission.
pub const DEV_USER: &str = "developer";
pub const DEV_PASSWORD: &str = "Dev-user-pw-55ab02";
/// Projects that exist in the fake.
pub const PROJECTS: &[&str] = &["my-app", "other-app", "shared"];
/// Text inside injected error bodies; it must never reach a log line or a client.
pub const INJECTED_SECRET: &str = "injected-secret-should-never-be-logged-8f2b";

/// What the fake should do instead of answering normally, until cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and a Harbor error body.
    Status(u16),
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply with the success status and a body cut off mid-JSON.
    Garbage,
}

/// How a request authenticated.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Basic { user: String, password: String },
    Malformed,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub auth: Auth,
    pub content_type: Option<String>,
    /// The JSON body; `Null` when empty or not JSON.
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub kind: String,
    pub namespace: String,
    /// `(resource, action)` pairs.
    pub access: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct FakeRobot {
    pub id: i64,
    /// As Harbor stores it: `name` for system robots, `<project>+<name>` for project robots.
    pub stored_name: String,
    pub description: String,
    pub level: String,
    pub duration: i64,
    pub disable: bool,
    pub secret: String,
    pub permissions: Vec<Permission>,
    pub creation_time: SystemTime,
    /// Unix seconds, or `-1`.
    pub expires_at: i64,
}

impl FakeRobot {
    /// The name clients log in with and Harbor's API shows.
    pub fn name(&self) -> String {
        format!("robot${}", self.stored_name)
    }
}

struct Inner {
    requests: Vec<RecordedRequest>,
    robots: Vec<FakeRobot>,
    deleted: Vec<FakeRobot>,
    next_id: i64,
    /// The failure, and the method it is limited to (`None`: every method).
    failure: Option<(Option<&'static str>, Failure)>,
    /// Added to the real clock for creation and expiry.
    clock_offset: Duration,
    /// A misbehaving Harbor: robots get this duration (days) whatever was asked.
    duration_override: Option<i64>,
}

impl Inner {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.clock_offset
    }
}

/// A running fake on `127.0.0.1:<random port>`.
pub struct FakeHarbor {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<Inner>>;

impl FakeHarbor {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            requests: Vec::new(),
            robots: Vec::new(),
            deleted: Vec::new(),
            next_id: 1,
            failure: None,
            clock_offset: Duration::ZERO,
            duration_override: None,
        }));
        let app = Router::new()
            .route("/api/v2.0/robots", post(create_robot).get(list_robots))
            .route("/api/v2.0/robots/{id}", get(get_robot).delete(delete_robot))
            .fallback(|| async { harbor_error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found") })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake Harbor");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// Harbor's external URL (`http://127.0.0.1:PORT`).
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

    /// Requests other than the reaper's listings (`GET /api/v2.0/robots`).
    pub fn requests_except_listings(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| !(r.method == "GET" && r.path == "/api/v2.0/robots"))
            .collect()
    }

    /// Robots that exist now, by id.
    pub fn robots(&self) -> Vec<FakeRobot> {
        self.lock().robots.clone()
    }

    pub fn robot(&self, id: i64) -> Option<FakeRobot> {
        self.lock().robots.iter().find(|r| r.id == id).cloned()
    }

    pub fn deleted(&self) -> Vec<FakeRobot> {
        self.lock().deleted.clone()
    }

    /// Fail every request with `failure` (or answer normally with `None`).
    pub fn set_failure(&self, failure: Option<Failure>) {
        self.lock().failure = failure.map(|f| (None, f));
    }

    /// Fail only requests with `method` (`POST`, `GET`, `DELETE`).
    pub fn set_failure_on(&self, method: &'static str, failure: Failure) {
        self.lock().failure = Some((Some(method), failure));
    }

    /// Give every new robot `days` of life (`-1`: never expires) whatever the request asked.
    pub fn override_duration(&self, days: Option<i64>) {
        self.lock().duration_override = days;
    }

    /// Move the fake's clock forward (robot creation and expiry use it).
    pub fn advance(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    /// Add a robot as if someone else had created it; returns its id.
    pub fn add_robot(
        &self,
        stored_name: &str,
        description: &str,
        level: &str,
        permissions: Vec<Permission>,
    ) -> i64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let now = inner.now();
        inner.robots.push(FakeRobot {
            id,
            stored_name: stored_name.into(),
            description: description.into(),
            level: level.into(),
            duration: -1,
            disable: false,
            secret: format!("Seeded{}", uuid::Uuid::new_v4().simple()),
            permissions,
            creation_time: now,
            expires_at: -1,
        });
        id
    }

    /// Would Harbor let robot `username` with `secret` do `action` (`pull`, `push`) on
    /// `repository` (`<project>/<path>`)? Only robots are modelled.
    pub fn authorize(&self, username: &str, secret: &str, repository: &str, action: &str) -> bool {
        let inner = self.lock();
        let now = unix(inner.now());
        let Some(robot) = inner
            .robots
            .iter()
            .find(|r| r.name() == username && r.secret == secret)
        else {
            return false;
        };
        if robot.disable || (robot.expires_at != -1 && now >= robot.expires_at) {
            return false;
        }
        let Some((project, rest)) = repository.split_once('/') else {
            return false;
        };
        if rest.is_empty() {
            return false;
        }
        robot.permissions.iter().any(|p| {
            p.kind == "project"
                && (p.namespace == project || p.namespace == "*")
                && p.access
                    .iter()
                    .any(|(res, act)| res == "repository" && act == action)
        })
    }

    /// Stop listening; later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a handler panicked: the test fails anyway.
        self.inner.lock().expect("fake Harbor state")
    }
}

impl Drop for FakeHarbor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Harbor error reply: `{"errors":[{"code": .., "message": ..}]}`.
struct HarborError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for HarborError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"errors": [{"code": self.code, "message": self.message}]})),
        )
            .into_response()
    }
}

fn harbor_error(status: StatusCode, code: &'static str, message: &str) -> HarborError {
    HarborError {
        status,
        code,
        message: message.to_owned(),
    }
}

fn bad_request(message: &str) -> HarborError {
    harbor_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

fn parse_auth(headers: &HeaderMap) -> Auth {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Auth::None;
    };
    let Some(encoded) = value.to_str().ok().and_then(|v| v.strip_prefix("Basic ")) else {
        return Auth::Malformed;
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((user, password)) => Auth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        },
        None => Auth::Malformed,
    }
}

/// Who called: `Some(true)` the admin, `Some(false)` another valid account, `None` nobody.
fn authenticate(inner: &Inner, auth: &Auth) -> Option<bool> {
    let Auth::Basic { user, password } = auth else {
        return None;
    };
    match (user.as_str(), password.as_str()) {
        (ADMIN_USER, ADMIN_PASSWORD) => Some(true),
        (DEV_USER, DEV_PASSWORD) => Some(false),
        // Robots may call the API too, but none here has the system robot permission.
        _ => inner
            .robots
            .iter()
            .any(|r| r.name() == *user && r.secret == *password)
            .then_some(false),
    }
}

/// Record the request; the injected failure for it, if any.
fn record(
    shared: &Shared,
    method: &'static str,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Failure> {
    let mut inner = shared.lock().expect("fake state");
    inner.requests.push(RecordedRequest {
        method: method.into(),
        path: path.into(),
        query,
        auth: parse_auth(headers),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    match &inner.failure {
        Some((only, failure)) if only.is_none_or(|m| m == method) => Some(failure.clone()),
        _ => None,
    }
}

/// The injected failure's response, or `None` to answer normally.
async fn injected(
    failure: Option<Failure>,
    ok: StatusCode,
    garbage: &'static str,
) -> Option<Response> {
    match failure? {
        Failure::Hang => std::future::pending().await,
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(
                harbor_error(
                    status,
                    "INJECTED",
                    &format!("injected failure, secret {INJECTED_SECRET}"),
                )
                .into_response(),
            )
        }
        Failure::Garbage => {
            Some((ok, [(header::CONTENT_TYPE, "application/json")], garbage).into_response())
        }
    }
}

fn valid_robot_name(s: &str) -> bool {
    let b = s.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || sep(c))
        && !sep(b[0])
        && !sep(b[b.len() - 1])
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn create_robot(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let failure = record(&shared, "POST", "/api/v2.0/robots", None, &headers, &body);
    if let Some(r) = injected(
        failure,
        StatusCode::CREATED,
        r#"{"id":1,"name":"robot$x","secret":"garbage-secret-should-never-be-logged"#,
    )
    .await
    {
        return r;
    }
    let mut inner = shared.lock().expect("fake state");
    match create(&mut inner, &headers, &body) {
        Ok((id, reply)) => (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/api/v2.0/robots/{id}"))],
            axum::Json(reply),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn create(
    inner: &mut Inner,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(i64, Value), HarborError> {
    let admin = authenticate(inner, &parse_auth(headers))
        .ok_or_else(|| harbor_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unauthorized"))?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(harbor_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "unsupported media type",
        ));
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad_request("the body must be a JSON object"));
    };
    const KNOWN: &[&str] = &[
        "name",
        "description",
        "secret",
        "level",
        "disable",
        "duration",
        "permissions",
    ];
    if let Some(unknown) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad_request(&format!("unknown field {unknown}")));
    }
    let name = string(&body, "name")?.unwrap_or_default();
    if !valid_robot_name(&name) {
        return Err(bad_request(
            "robot name is not in lower case or contains illegal characters",
        ));
    }
    let description = string(&body, "description")?.unwrap_or_default();
    if description.len() > 1024 {
        return Err(bad_request("description is too long"));
    }
    let duration = match body.get("duration") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad_request("duration must be an integer"))?,
        _ => return Err(bad_request("duration is required")),
    };
    if duration < -1 || duration == 0 {
        return Err(bad_request(&format!(
            "bad request error duration input: {duration}"
        )));
    }
    let level = string(&body, "level")?.unwrap_or_default();
    if level != "system" && level != "project" {
        return Err(bad_request(&format!(
            "bad request error level input: {level}"
        )));
    }
    let disable = match body.get("disable") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_request("disable must be a boolean")),
    };
    if body.contains_key("secret") {
        return Err(bad_request("the fake generates secrets; do not send one"));
    }
    let permissions = permissions(body.get("permissions"))?;
    if level == "project" && permissions.len() > 1 {
        return Err(bad_request("bad request permission"));
    }
    for p in &permissions {
        if p.kind == "project" && p.namespace != "*" && !PROJECTS.contains(&p.namespace.as_str()) {
            return Err(harbor_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("project {} not found", p.namespace),
            ));
        }
    }
    if !admin {
        return Err(harbor_error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "forbidden",
        ));
    }
    let stored_name = match level.as_str() {
        "project" => format!("{}+{name}", permissions[0].namespace),
        _ => name,
    };
    if inner.robots.iter().any(|r| r.stored_name == stored_name) {
        return Err(harbor_error(
            StatusCode::CONFLICT,
            "CONFLICT",
            &format!("robot account {stored_name} already exists"),
        ));
    }
    let id = inner.next_id;
    inner.next_id += 1;
    let now = inner.now();
    let duration = inner.duration_override.unwrap_or(duration);
    let expires_at = if duration == -1 {
        -1
    } else {
        unix(now) + duration * 24 * 3600
    };
    let robot = FakeRobot {
        id,
        stored_name,
        description,
        level,
        duration,
        disable,
        secret: format!("Robot{}", uuid::Uuid::new_v4().simple()),
        permissions,
        creation_time: now,
        expires_at,
    };
    let reply = json!({
        "id": id,
        "name": robot.name(),
        "secret": robot.secret,
        "creation_time": humantime::format_rfc3339_seconds(now).to_string(),
        "expires_at": expires_at,
    });
    inner.robots.push(robot);
    Ok((id, reply))
}

fn string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, HarborError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!("{key} must be a string"))),
    }
}

fn permissions(value: Option<&Value>) -> Result<Vec<Permission>, HarborError> {
    let Some(Value::Array(items)) = value else {
        return Err(bad_request("bad request empty permission"));
    };
    if items.is_empty() {
        return Err(bad_request("bad request empty permission"));
    }
    let mut out = Vec::new();
    for item in items {
        let Value::Object(p) = item else {
            return Err(bad_request("a permission must be an object"));
        };
        if let Some(unknown) = p
            .keys()
            .find(|k| !["kind", "namespace", "access"].contains(&k.as_str()))
        {
            return Err(bad_request(&format!("unknown permission field {unknown}")));
        }
        let kind = string(p, "kind")?.unwrap_or_default();
        if kind != "project" && kind != "system" {
            return Err(bad_request(&format!("bad request permission kind {kind}")));
        }
        let namespace = string(p, "namespace")?.unwrap_or_default();
        if namespace.is_empty() {
            return Err(bad_request("a permission needs a namespace"));
        }
        let Some(Value::Array(access)) = p.get("access") else {
            return Err(bad_request("bad request empty access"));
        };
        if access.is_empty() {
            return Err(bad_request("bad request empty access"));
        }
        let mut pairs = Vec::new();
        for a in access {
            let Value::Object(a) = a else {
                return Err(bad_request("an access must be an object"));
            };
            if let Some(unknown) = a
                .keys()
                .find(|k| !["resource", "action", "effect"].contains(&k.as_str()))
            {
                return Err(bad_request(&format!("unknown access field {unknown}")));
            }
            let resource = string(a, "resource")?.unwrap_or_default();
            let action = string(a, "action")?.unwrap_or_default();
            let known = matches!(
                (resource.as_str(), action.as_str()),
                (
                    "repository",
                    "pull" | "push" | "delete" | "list" | "read" | "update"
                ) | ("artifact", "read" | "list" | "delete" | "create")
                    | ("tag", "create" | "delete" | "list")
            );
            if !known {
                return Err(bad_request(&format!(
                    "bad request permission: {resource}:{action}"
                )));
            }
            pairs.push((resource, action));
        }
        out.push(Permission {
            kind,
            namespace,
            access: pairs,
        });
    }
    Ok(out)
}

fn robot_json(r: &FakeRobot) -> Value {
    json!({
        "id": r.id,
        "name": r.name(),
        "description": r.description,
        "level": r.level,
        "duration": r.duration,
        "disable": r.disable,
        "editable": true,
        "expires_at": r.expires_at,
        "creation_time": humantime::format_rfc3339_seconds(r.creation_time).to_string(),
        "update_time": humantime::format_rfc3339_seconds(r.creation_time).to_string(),
        "permissions": r.permissions.iter().map(|p| json!({
            "kind": p.kind,
            "namespace": p.namespace,
            "access": p.access.iter().map(|(res, act)| json!({"resource": res, "action": act})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

async fn list_robots(
    State(shared): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let failure = record(
        &shared,
        "GET",
        "/api/v2.0/robots",
        query.clone(),
        &headers,
        &[],
    );
    if let Some(r) = injected(failure, StatusCode::OK, r#"[{"id":1,"name":"#).await {
        return r;
    }
    let inner = shared.lock().expect("fake state");
    match list(&inner, &headers, query.as_deref().unwrap_or("")) {
        Ok((total, page)) => (
            StatusCode::OK,
            [("x-total-count", total.to_string())],
            axum::Json(page),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn list(inner: &Inner, headers: &HeaderMap, query: &str) -> Result<(usize, Value), HarborError> {
    let admin = authenticate(inner, &parse_auth(headers))
        .ok_or_else(|| harbor_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unauthorized"))?;
    let mut q = None;
    let mut page = 1usize;
    let mut page_size = 10usize;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let number = || {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad_request(&format!("{k} must be a positive integer")))
        };
        match k.as_ref() {
            "q" => q = Some(v.to_string()),
            "page" => page = number()?,
            "page_size" => page_size = number()?,
            "sort" => {}
            other => return Err(bad_request(&format!("unknown query parameter {other}"))),
        }
    }
    if page_size > 100 {
        return Err(bad_request("page_size must be at most 100"));
    }
    let mut level = "system".to_owned();
    let mut project_id = None;
    let mut name_contains = None;
    for term in q
        .iter()
        .flat_map(|q| q.split(','))
        .filter(|t| !t.is_empty())
    {
        if let Some(v) = term.strip_prefix("name=~") {
            name_contains = Some(v.to_owned());
        } else if let Some(v) = term.strip_prefix("Level=") {
            level = v.to_owned();
        } else if let Some(v) = term.strip_prefix("ProjectID=") {
            project_id = Some(v.to_owned());
        } else {
            return Err(bad_request(&format!("unsupported query {term}")));
        }
    }
    if level != "system" && level != "project" {
        return Err(bad_request("bad request error level input"));
    }
    if level == "project" && project_id.is_none() {
        return Err(bad_request(
            "must with project ID when to query project robots",
        ));
    }
    if !admin {
        return Err(harbor_error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "forbidden",
        ));
    }
    let matching: Vec<&FakeRobot> = inner
        .robots
        .iter()
        .filter(|r| r.level == level)
        .filter(|r| {
            name_contains
                .as_deref()
                .is_none_or(|n| r.stored_name.contains(n))
        })
        .collect();
    let items: Vec<Value> = matching
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|r| robot_json(r))
        .collect();
    Ok((matching.len(), Value::Array(items)))
}

fn robot_id(raw: &str) -> Result<i64, HarborError> {
    raw.parse()
        .map_err(|_| bad_request("robot_id must be an integer"))
}

async fn get_robot(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v2.0/robots/{id}");
    let failure = record(&shared, "GET", &path, None, &headers, &[]);
    if let Some(r) = injected(failure, StatusCode::OK, r#"{"id":"#).await {
        return r;
    }
    let inner = shared.lock().expect("fake state");
    let result = (|| {
        let admin = authenticate(&inner, &parse_auth(&headers)).ok_or_else(|| {
            harbor_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unauthorized")
        })?;
        let id = robot_id(&id)?;
        let robot =
            inner.robots.iter().find(|r| r.id == id).ok_or_else(|| {
                harbor_error(StatusCode::NOT_FOUND, "NOT_FOUND", "robot not found")
            })?;
        if !admin {
            return Err(harbor_error(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "forbidden",
            ));
        }
        Ok(robot_json(robot))
    })();
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete_robot(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v2.0/robots/{id}");
    let failure = record(&shared, "DELETE", &path, None, &headers, &[]);
    if let Some(r) = injected(failure, StatusCode::OK, r#"{"#).await {
        return r;
    }
    let mut inner = shared.lock().expect("fake state");
    let result = (|| {
        let admin = authenticate(&inner, &parse_auth(&headers)).ok_or_else(|| {
            harbor_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unauthorized")
        })?;
        let id = robot_id(&id)?;
        let index = inner
            .robots
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| harbor_error(StatusCode::NOT_FOUND, "NOT_FOUND", "robot not found"))?;
        if !admin {
            return Err(harbor_error(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "forbidden",
            ));
        }
        let robot = inner.robots.remove(index);
        inner.deleted.push(robot);
        Ok(())
    })();
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}
