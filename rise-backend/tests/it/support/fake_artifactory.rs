//! A fake JFrog Artifactory: the Access API token endpoints Rise calls, written from JFrog's
//! public REST documentation because no Artifactory can run here. Rise's Artifactory provider
//! is tested against this fake only, never against a real instance.
//!
//! Documented behaviour it follows:
//! - `POST /access/api/v1/tokens` (Create Token,
//!   <https://docs.jfrog.com/administration/reference/createToken>): JSON or form body with
//!   `grant_type` (only `client_credentials`), `username` (≤ 255), `scope` (space-separated,
//!   ≤ 500, default `applied-permissions/user`), `expires_in` (seconds ≥ 0, default 3600, `0` =
//!   never expires), `refreshable`, `description` (≤ 1024), `audience`,
//!   `include_reference_token`, `force_revocable`, `project_key`. Replies 200 `{token_id,
//!   access_token, expires_in, scope, token_type}`; 400 invalid input; 401 unauthenticated; 403
//!   forbidden. Per "Notes on the Create Token API" and "Create Scoped Token": only an admin may
//!   name another user or ask for any scope other than `applied-permissions/user`; non-admins
//!   cannot exceed the maximum expiry or ask for a non-expiring token; a user-scoped token's
//!   user must exist.
//! - Scope grammar ("Create Scoped Token" and JFrog's path-based scoped token article):
//!   `applied-permissions/{user,admin}`, `applied-permissions/groups:...`,
//!   `applied-permissions/roles:...`, `system:...`, and resource permissions
//!   `artifact:<repo>[/<path pattern>]:<actions>` with actions from `r,w,d,a,m,x,s` or `*`.
//! - `DELETE /access/api/v1/tokens/{id}` (Revoke Token by ID): 200 revoked; 204 unknown or
//!   already revoked; 403 when a non-admin revokes someone else's token.
//! - Errors: `{"errors":[{"code": "...", "message": "..."}]}`.
//!
//! Stricter than documented, so mistakes in Rise fail loudly: unknown body fields are a 400.
//!
//! Beyond the wire protocol, [`FakeArtifactory::authorize`] answers "may this user/token do
//! this action on this repository path", the fake's reading of the documented scope semantics;
//! tests use it to show what a minted token could reach.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use base64::Engine;
use serde_json::{Map, Value, json};

/// The admin access token the fake accepts as `Authorization: Bearer`.
pub const ADMIN_TOKEN: &str = "fake-admin-token-4f1d2c9a";
/// An admin user (basic auth).
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password-77aa";
/// A non-admin service user (basic auth).
pub const SERVICE_USER: &str = "svc";
pub const SERVICE_PASSWORD: &str = "svc-password-3b5e";

/// What the fake should do instead of answering normally, until cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and a JFrog error body.
    Status(u16),
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply 200 with a body that is not the documented JSON (cut off mid-token).
    Malformed,
    /// Mint the token but claim `expires_in: 0` (Artifactory's "never expires").
    NonExpiring,
    /// Mint the token but report a wider scope than was asked for.
    WidenScope,
    /// Mint the token with a ten-year lifetime, whatever was asked.
    TenYears,
}

/// How a request authenticated.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic { user: String, password: String },
    Malformed,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub auth: Auth,
    pub content_type: Option<String>,
    /// The JSON body, or a form body as a JSON object of strings; `Null` when empty.
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token_id: String,
    pub access_token: String,
    pub username: String,
    pub scope: String,
    pub expires_in: u64,
    pub force_revocable: bool,
    pub description: String,
    pub revoked: bool,
}

struct User {
    password: &'static str,
    admin: bool,
}

struct Inner {
    users: HashMap<&'static str, User>,
    requests: Vec<RecordedRequest>,
    tokens: Vec<MintedToken>,
    failure: Option<Failure>,
    /// `token.max-expiry` for non-admins; 0 = unlimited.
    max_expiry_non_admin: u64,
}

/// A running fake on `127.0.0.1:<random port>`.
pub struct FakeArtifactory {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeArtifactory {
    pub async fn start() -> Self {
        let users = HashMap::from([
            (
                ADMIN_USER,
                User {
                    password: ADMIN_PASSWORD,
                    admin: true,
                },
            ),
            (
                SERVICE_USER,
                User {
                    password: SERVICE_PASSWORD,
                    admin: false,
                },
            ),
        ]);
        let inner = Arc::new(Mutex::new(Inner {
            users,
            requests: Vec::new(),
            tokens: Vec::new(),
            failure: None,
            max_expiry_non_admin: 24 * 3600,
        }));
        let app = Router::new()
            .route("/access/api/v1/tokens", post(create_token))
            .route("/access/api/v1/tokens/{id}", delete(revoke_token))
            .fallback(|| async {
                jfrog_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Resource not found")
            })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake Artifactory");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// The JFrog Platform URL (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Docker registry host clients would log in to.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn tokens(&self) -> Vec<MintedToken> {
        self.lock().tokens.clone()
    }

    pub fn token(&self, access_token: &str) -> Option<MintedToken> {
        self.lock()
            .tokens
            .iter()
            .find(|t| t.access_token == access_token)
            .cloned()
    }

    pub fn set_failure(&self, failure: Option<Failure>) {
        self.lock().failure = failure;
    }

    /// Would Artifactory let `username` with `password` (a password or an access token) do
    /// `action` (`r`, `w`, `d`, ...) on `path` (`<repo>/<path>`)? Users' own permission targets
    /// are not modelled: only admins and token scopes grant anything.
    pub fn authorize(&self, username: &str, password: &str, path: &str, action: char) -> bool {
        let inner = self.lock();
        if let Some(user) = inner.users.get(username)
            && user.password == password
        {
            return user.admin;
        }
        let Some(token) = inner
            .tokens
            .iter()
            .find(|t| t.access_token == password && !t.revoked && t.username == username)
        else {
            return false;
        };
        token.scope.split_whitespace().any(|s| {
            s == "applied-permissions/admin"
                || parse_artifact_scope(s).is_some_and(|(target, actions)| {
                    glob_matches(target, path) && (actions == "*" || actions.contains(action))
                })
        })
    }

    /// Stop listening; later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a handler panicked: the test fails anyway.
        self.inner.lock().expect("fake Artifactory state")
    }
}

impl Drop for FakeArtifactory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<Inner>>;

struct Principal {
    name: String,
    admin: bool,
}

/// A JFrog error reply: `{"errors":[{"code": .., "message": ..}]}`.
struct JfrogError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for JfrogError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"errors": [{"code": self.code, "message": self.message}]})),
        )
            .into_response()
    }
}

fn jfrog_error(status: StatusCode, code: &'static str, message: &str) -> JfrogError {
    JfrogError {
        status,
        code,
        message: message.to_owned(),
    }
}

fn parse_auth(headers: &HeaderMap) -> Auth {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Auth::None;
    };
    let Ok(value) = value.to_str() else {
        return Auth::Malformed;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Auth::Bearer(token.to_owned());
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Auth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            };
        }
    }
    Auth::Malformed
}

fn authenticate(inner: &Inner, auth: &Auth) -> Option<Principal> {
    let token_principal = |token: &str, user: Option<&str>| {
        inner
            .tokens
            .iter()
            .find(|t| t.access_token == token && !t.revoked)
            .filter(|t| user.is_none_or(|u| u == t.username))
            .map(|t| Principal {
                name: t.username.clone(),
                admin: t
                    .scope
                    .split_whitespace()
                    .any(|s| s == "applied-permissions/admin"),
            })
    };
    match auth {
        Auth::Bearer(token) if token == ADMIN_TOKEN => Some(Principal {
            name: ADMIN_USER.into(),
            admin: true,
        }),
        Auth::Bearer(token) => token_principal(token, None),
        Auth::Basic { user, password } => match inner.users.get(user.as_str()) {
            Some(u) if u.password == password => Some(Principal {
                name: user.clone(),
                admin: u.admin,
            }),
            // Artifactory also takes an access token in place of the password.
            _ => token_principal(password, Some(user)),
        },
        Auth::None | Auth::Malformed => None,
    }
}

fn record(inner: &mut Inner, method: &str, path: &str, headers: &HeaderMap, body: Value) -> Auth {
    let auth = parse_auth(headers);
    inner.requests.push(RecordedRequest {
        method: method.into(),
        path: path.into(),
        auth: auth.clone(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    });
    auth
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, JfrogError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body).map_err(|_| {
            jfrog_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "Malformed JSON body",
            )
        })
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let map: Map<String, Value> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        Ok(Value::Object(map))
    } else {
        Err(jfrog_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Unsupported content type",
        ))
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "grant_type",
    "username",
    "scope",
    "expires_in",
    "refreshable",
    "description",
    "audience",
    "include_reference_token",
    "force_revocable",
    "project_key",
    "refresh_token",
];

/// A field as a string (JSON string, or any form value).
fn string_field(body: &Map<String, Value>, key: &str) -> Result<Option<String>, JfrogError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!("{key} must be a string"))),
    }
}

fn bool_field(body: &Map<String, Value>, key: &str) -> Result<bool, JfrogError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(_) => Err(bad_request(&format!("{key} must be a boolean"))),
    }
}

fn bad_request(message: &str) -> JfrogError {
    jfrog_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

fn forbidden(message: &str) -> JfrogError {
    jfrog_error(StatusCode::FORBIDDEN, "FORBIDDEN", message)
}

async fn create_token(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let failure = {
        let mut inner = shared.lock().expect("fake state");
        let parsed = parse_body(&headers, &body).unwrap_or(Value::Null);
        record(
            &mut inner,
            "POST",
            "/access/api/v1/tokens",
            &headers,
            parsed,
        );
        inner.failure.clone()
    };
    match failure {
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return jfrog_error(
                status,
                "INTERNAL_ERROR",
                "Injected failure for token fake-at-should-never-be-logged-0123456789abcdef",
            )
            .into_response();
        }
        Some(Failure::Malformed) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"token_id":"x","access_token":"eyJmalformed-secret-token-value"#,
            )
                .into_response();
        }
        _ => {}
    }
    let mut inner = shared.lock().expect("fake state");
    match mint(&mut inner, &headers, &body, failure.as_ref()) {
        Ok(reply) => (StatusCode::OK, axum::Json(reply)).into_response(),
        Err(rejected) => rejected.into_response(),
    }
}

fn mint(
    inner: &mut Inner,
    headers: &HeaderMap,
    body: &[u8],
    failure: Option<&Failure>,
) -> Result<Value, JfrogError> {
    let caller = authenticate(inner, &parse_auth(headers))
        .ok_or_else(|| jfrog_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Bad credentials"))?;
    let body = match parse_body(headers, body)? {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        _ => return Err(bad_request("Body must be an object")),
    };
    if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(bad_request(&format!("Unrecognized field \"{unknown}\"")));
    }
    let grant_type = string_field(&body, "grant_type")?;
    if grant_type
        .as_deref()
        .is_some_and(|g| g != "client_credentials")
    {
        return Err(bad_request("Unsupported grant type"));
    }
    let username = string_field(&body, "username")?;
    if username
        .as_deref()
        .is_some_and(|u| u.is_empty() || u.len() > 255)
    {
        return Err(bad_request("Invalid username"));
    }
    let scope =
        string_field(&body, "scope")?.unwrap_or_else(|| "applied-permissions/user".to_owned());
    if scope.len() > 500 || scope.split_whitespace().next().is_none() {
        return Err(bad_request("Invalid scope"));
    }
    if let Some(bad) = scope.split_whitespace().find(|s| !valid_scope_token(s)) {
        return Err(bad_request(&format!("Invalid scope token: {bad}")));
    }
    let expires_in = match body.get("expires_in") {
        None | Some(Value::Null) => 3600,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| bad_request("expires_in must be a non-negative number"))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| bad_request("expires_in must be a non-negative number"))?,
        Some(_) => return Err(bad_request("expires_in must be a non-negative number")),
    };
    let description = string_field(&body, "description")?.unwrap_or_default();
    if description.len() > 1024 {
        return Err(bad_request("Description is too long"));
    }
    let force_revocable = bool_field(&body, "force_revocable")?;
    bool_field(&body, "refreshable")?;
    let subject = username.clone().unwrap_or_else(|| caller.name.clone());
    if !caller.admin {
        if subject != caller.name {
            return Err(forbidden(
                "Only an admin can create tokens for another user",
            ));
        }
        if scope != "applied-permissions/user" {
            return Err(forbidden(
                "Non-admin users can only create tokens with the applied-permissions/user scope",
            ));
        }
        if expires_in == 0
            || (inner.max_expiry_non_admin > 0 && expires_in > inner.max_expiry_non_admin)
        {
            return Err(forbidden("expires_in exceeds the maximum allowed expiry"));
        }
    }
    if scope
        .split_whitespace()
        .any(|s| s == "applied-permissions/user")
        && !inner.users.contains_key(subject.as_str())
    {
        return Err(bad_request(&format!("User {subject} does not exist")));
    }
    let token_id = uuid::Uuid::new_v4().to_string();
    let access_token = format!(
        "fake-at.{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let reported_scope = match failure {
        Some(Failure::WidenScope) => format!("{scope} applied-permissions/admin"),
        _ => scope.clone(),
    };
    inner.tokens.push(MintedToken {
        token_id: token_id.clone(),
        access_token: access_token.clone(),
        username: subject,
        // A widened reply describes what the token really got.
        scope: reported_scope.clone(),
        expires_in,
        force_revocable,
        description,
        revoked: false,
    });
    let reported_expiry = match failure {
        Some(Failure::NonExpiring) => 0,
        Some(Failure::TenYears) => 10 * 365 * 24 * 3600,
        _ => expires_in,
    };
    Ok(json!({
        "token_id": token_id,
        "access_token": access_token,
        "expires_in": reported_expiry,
        "scope": reported_scope,
        "token_type": "access_token",
    }))
}

async fn revoke_token(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let failure = {
        let mut inner = shared.lock().expect("fake state");
        record(
            &mut inner,
            "DELETE",
            &format!("/access/api/v1/tokens/{id}"),
            &headers,
            Value::Null,
        );
        inner.failure.clone()
    };
    match failure {
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return jfrog_error(status, "INTERNAL_ERROR", "Injected failure").into_response();
        }
        _ => {}
    }
    let mut inner = shared.lock().expect("fake state");
    let Some(caller) = authenticate(&inner, &parse_auth(&headers)) else {
        return jfrog_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Bad credentials")
            .into_response();
    };
    match inner
        .tokens
        .iter_mut()
        .find(|t| t.token_id == id && !t.revoked)
    {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(token) if !caller.admin && token.username != caller.name => {
            forbidden("Not allowed to revoke this token").into_response()
        }
        Some(token) => {
            token.revoked = true;
            StatusCode::OK.into_response()
        }
    }
}

fn valid_scope_token(s: &str) -> bool {
    matches!(s, "applied-permissions/user" | "applied-permissions/admin")
        || s.strip_prefix("applied-permissions/groups:")
            .is_some_and(|g| !g.is_empty())
        || s.strip_prefix("applied-permissions/roles:")
            .is_some_and(|r| r.contains(':'))
        || s.starts_with("system:")
        || parse_artifact_scope(s).is_some()
}

/// `artifact:<target>:<actions>` -> (`target`, `actions`).
fn parse_artifact_scope(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("artifact:")?;
    let (target, actions) = rest.rsplit_once(':')?;
    let actions_ok = actions == "*"
        || (!actions.is_empty()
            && actions
                .split(',')
                .all(|a| matches!(a, "r" | "w" | "d" | "a" | "m" | "x" | "s")));
    (!target.is_empty() && actions_ok).then_some((target, actions))
}

/// Artifactory's ant-style patterns: `**` any path, `*` within one path segment.
fn glob_matches(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            // `x/**` also matches `x` itself.
            [b'/', b'*', b'*'] if s.is_empty() => true,
            [b'*', b'*', rest @ ..] => {
                let rest = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=s.len()).any(|i| go(rest, &s[i..]))
            }
            [b'*', rest @ ..] => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(rest, &s[i..])),
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs() {
        assert!(glob_matches(
            "docker-local/my-app/**",
            "docker-local/my-app/1.0/manifest.json"
        ));
        assert!(glob_matches(
            "docker-local/my-app/**",
            "docker-local/my-app"
        ));
        assert!(!glob_matches(
            "docker-local/my-app/**",
            "docker-local/my-app-evil/x"
        ));
        assert!(!glob_matches(
            "docker-local/my-app/**",
            "docker-local/other/x"
        ));
        assert!(glob_matches("docker-local/*/x", "docker-local/a/x"));
        assert!(!glob_matches("docker-local/*/x", "docker-local/a/b/x"));
    }
}
