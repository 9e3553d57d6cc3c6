//! A fake GitHub REST API: the two GitHub App endpoints Rise's GHCR provider calls, written from
//! GitHub's public REST documentation because GitHub cannot be reached from the tests. The
//! provider is tested against this fake only, never against GitHub or ghcr.io; in particular
//! nothing here shows that ghcr.io accepts installation tokens (GitHub does not document that).
//!
//! Documented behaviour it follows:
//! - App JWTs ("Generating a JSON Web Token (JWT) for a GitHub App",
//!   <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>):
//!   RS256, signed with one of the App's private keys; `iss` is the App's client ID or
//!   application ID; `exp` at most 10 minutes into the future; `iat` (GitHub recommends 60 s in
//!   the past). The fake verifies the signature with the public half of the key pair the tests
//!   generate, and checks `iss`, `exp > now`, `exp <= now + 600`, `iat <= now` and
//!   `exp - iat <= 600`. A failure is a 401.
//! - `POST /app/installations/{installation_id}/access_tokens` ("Create an installation access
//!   token for an app", <https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>):
//!   body `repositories` (names, at most 500), `repository_ids`, `permissions` (name to
//!   `read`/`write`/`admin`); a repository outside the installation or a permission beyond the
//!   installation's is a 422; an unknown installation is a 404. Replies 201 `{token,
//!   expires_at, permissions, repository_selection, repositories}`; the token expires one hour
//!   after it is created. Without `repositories`, the token reaches every repository of the
//!   installation; without `permissions`, it has all of the installation's.
//! - `DELETE /installation/token` ("Revoke an installation access token",
//!   <https://docs.github.com/en/rest/apps/installations#revoke-an-installation-access-token>):
//!   authenticated with the token itself; 204, and the token is refused from then on.
//! - Errors are `{"message": ..., "documentation_url": ...}`
//!   (<https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api>); a
//!   request without `User-Agent` is a 403
//!   (<https://docs.github.com/en/rest/using-the-rest-api/getting-started-with-the-rest-api#user-agent>);
//!   an unsupported `X-GitHub-Api-Version` is a 400
//!   (<https://docs.github.com/en/rest/about-the-rest-api/api-versions>).
//!
//! Stricter than documented, so mistakes in Rise fail loudly: `Accept` must be
//! `application/vnd.github+json`, `X-GitHub-Api-Version` must be `2022-11-28`, unknown body
//! fields are a 422, and the create body must be JSON.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};

/// The App's ID, as Rise sends it in `iss`.
pub const APP_ID: &str = "424242";
pub const INSTALLATION_ID: u64 = 7_654_321;
/// The account the App is installed on (GitHub logins keep their case; images lowercase it).
pub const OWNER: &str = "Acme";
/// The repositories the installation was granted.
pub const INSTALLED_REPOSITORIES: &[&str] = &["my-app", "other-app", "images-my-app"];
/// What the installation was granted (wider than Rise asks for, so widening can be shown).
pub const INSTALLATION_PERMISSIONS: &[(&str, &str)] = &[
    ("contents", "read"),
    ("metadata", "read"),
    ("packages", "write"),
];
const DOCS: &str = "https://docs.github.com/rest";

/// The App's key pair, generated once per test binary (RSA generation is slow).
pub struct AppKey {
    /// PKCS#8 PEM, as Rise's configuration receives it.
    pub private_pem: String,
    pub public_pem: String,
}

pub fn app_key() -> &'static AppKey {
    static KEY: OnceLock<AppKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        AppKey {
            private_pem: pair.serialize_pem(),
            public_pem: pair.public_key_pem(),
        }
    })
}

/// A different key: a JWT signed with it must be refused.
pub fn other_key() -> &'static AppKey {
    static KEY: OnceLock<AppKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        AppKey {
            private_pem: pair.serialize_pem(),
            public_pem: pair.public_key_pem(),
        }
    })
}

/// What the fake should do with create-token requests instead of answering normally.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and a GitHub error body.
    Status(u16),
    /// A 403 with `x-ratelimit-remaining: 0`.
    RateLimited,
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply 201 with a body cut off mid-token.
    Garbage,
    /// Mint a token ignoring the restriction: every repository, every installation permission.
    Widen,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The bearer credential, if any.
    pub bearer: Option<String>,
    pub accept: Option<String>,
    pub api_version: Option<String>,
    pub user_agent: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

/// The verified claims of an App JWT the fake accepted, and when it saw it.
#[derive(Debug, Clone)]
pub struct SeenJwt {
    pub raw: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
    pub seen_at: u64,
}

#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub repositories: Vec<String>,
    pub permissions: BTreeMap<String, String>,
    pub expires_at: SystemTime,
    pub revoked: bool,
}

struct Inner {
    requests: Vec<RecordedRequest>,
    jwts: Vec<SeenJwt>,
    tokens: Vec<MintedToken>,
    failure: Option<Failure>,
    stateless: bool,
}

/// A running fake on `127.0.0.1:<random port>`.
pub struct FakeGhcr {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<Inner>>;

impl FakeGhcr {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            requests: Vec::new(),
            jwts: Vec::new(),
            tokens: Vec::new(),
            failure: None,
            stateless: false,
        }));
        let app = Router::new()
            .route(
                "/app/installations/{id}/access_tokens",
                post(create_installation_token),
            )
            .route("/installation/token", delete(revoke_installation_token))
            .fallback(|| async { github_error(StatusCode::NOT_FOUND, "Not Found") })
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake GitHub API");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// The REST API root (`http://127.0.0.1:PORT`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn jwts(&self) -> Vec<SeenJwt> {
        self.lock().jwts.clone()
    }

    pub fn tokens(&self) -> Vec<MintedToken> {
        self.lock().tokens.clone()
    }

    pub fn token(&self, token: &str) -> Option<MintedToken> {
        self.lock()
            .tokens
            .iter()
            .find(|t| t.token == token)
            .cloned()
    }

    pub fn set_failure(&self, failure: Option<Failure>) {
        self.lock().failure = failure;
    }

    /// Mint installation tokens in GitHub's stateless format, rolled out from 27 April 2026:
    /// `ghs_<APP ID>_<JWT>`, about 520 characters with two dots, whose JWT clients must not
    /// read. As on GitHub, a request's `X-GitHub-Stateless-S2S-Token: enabled` or `disabled`
    /// overrides the rollout for that request.
    pub fn set_stateless(&self, on: bool) {
        self.lock().stateless = on;
    }

    /// Stop listening; later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a handler panicked: the test fails anyway.
        self.inner.lock().expect("fake GitHub state")
    }
}

impl Drop for FakeGhcr {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// GitHub's error body.
fn github_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"message": message, "documentation_url": DOCS})),
    )
        .into_response()
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn record(inner: &Shared, method: &str, path: String, headers: &HeaderMap, body: &Bytes) {
    let bearer = header_str(headers, header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    inner
        .lock()
        .expect("fake GitHub state")
        .requests
        .push(RecordedRequest {
            method: method.into(),
            path,
            bearer,
            accept: header_str(headers, header::ACCEPT),
            api_version: header_str(headers, "x-github-api-version"),
            user_agent: header_str(headers, header::USER_AGENT),
            content_type: header_str(headers, header::CONTENT_TYPE),
            body,
        });
}

/// The checks every documented request passes before its own: the refusal, if any.
fn reject_headers(headers: &HeaderMap) -> Option<Response> {
    if header_str(headers, header::USER_AGENT).is_none_or(|ua| ua.trim().is_empty()) {
        return Some(github_error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        ));
    }
    if header_str(headers, header::ACCEPT).as_deref() != Some("application/vnd.github+json") {
        return Some(github_error(
            StatusCode::BAD_REQUEST,
            "fake: Accept must be application/vnd.github+json",
        ));
    }
    match header_str(headers, "x-github-api-version").as_deref() {
        Some("2022-11-28") => None,
        other => Some(github_error(
            StatusCode::BAD_REQUEST,
            &format!("fake: unsupported or missing X-GitHub-Api-Version {other:?}"),
        )),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Verify an App JWT as GitHub documents it; the claims when it passes.
fn verify_app_jwt(raw: &str) -> Result<SeenJwt, String> {
    let key = DecodingKey::from_rsa_pem(app_key().public_pem.as_bytes()).expect("public key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Map<String, Value>>(raw, &key, &validation)
        .map_err(|e| format!("A JSON web token could not be decoded ({:?})", e.kind()))?;
    let claims = data.claims;
    let iss = match &claims["iss"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err("'Issuer' claim ('iss') must be a String or Integer".into()),
    };
    if iss != APP_ID {
        return Err(format!("Integration {iss:?} not found"));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Err("'iat' and 'exp' must be integers".into());
    };
    let now = now_secs();
    if iat > now {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past".into(),
        );
    }
    if exp > now + 600 || exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    Ok(SeenJwt {
        raw: raw.to_owned(),
        iss,
        iat,
        exp,
        seen_at: now,
    })
}

fn level_rank(level: &str) -> Option<u8> {
    match level {
        "read" => Some(1),
        "write" => Some(2),
        "admin" => Some(3),
        _ => None,
    }
}

fn new_token() -> String {
    // Random enough for a fake; the `ghs_` prefix is GitHub's for installation tokens.
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos(),
    );
    let mut b = state.build_hasher();
    b.write_u64(a.finish());
    format!("ghs_{:016x}{:016x}", a.finish(), b.finish())
}

/// A token in the stateless format: `ghs_`, the App's ID, `_`, and a JWT signed by a key only
/// GitHub holds (here: random bytes), carrying what the token may do.
fn stateless_token(
    app_id: &str,
    repositories: &[String],
    permissions: &BTreeMap<String, String>,
    expires_at: SystemTime,
) -> String {
    let b64 = |v: &[u8]| data_encoding::BASE64URL_NOPAD.encode(v);
    let exp = expires_at
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": "fake-github-internal"});
    let payload = json!({
        "iss": "https://github.com",
        "app": app_id,
        "installation": INSTALLATION_ID,
        "repositories": repositories,
        "permissions": permissions,
        "exp": exp,
        "nonce": new_token(),
    });
    let signature: Vec<u8> = new_token()
        .bytes()
        .chain(new_token().bytes())
        .take(64)
        .collect();
    format!(
        "ghs_{app_id}_{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(&signature)
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn create_installation_token(
    State(inner): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &inner,
        "POST",
        format!("/app/installations/{id}/access_tokens"),
        &headers,
        &body,
    );
    let failure = inner.lock().expect("fake GitHub state").failure.clone();
    match failure {
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(code).expect("valid status");
            // GitHub's messages may quote what they refused: a token-like run must be redacted.
            return github_error(
                status,
                "fake failure for ghs_fake-gh-should-never-be-logged-0123456789abcdef",
            );
        }
        Some(Failure::RateLimited) => {
            let mut r = github_error(StatusCode::FORBIDDEN, "API rate limit exceeded");
            r.headers_mut()
                .insert("x-ratelimit-remaining", "0".parse().expect("header"));
            return r;
        }
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Garbage) => {
            return (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"token":"ghs_garbage-secret-token-value","expires_at":"20"#,
            )
                .into_response();
        }
        _ => {}
    }
    if let Some(r) = reject_headers(&headers) {
        return r;
    }
    let Some(raw) = header_str(&headers, header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
    else {
        return github_error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    };
    let jwt = match verify_app_jwt(&raw) {
        Ok(jwt) => jwt,
        Err(message) => return github_error(StatusCode::UNAUTHORIZED, &message),
    };
    let jwt_iss = jwt.iss.clone();
    inner.lock().expect("fake GitHub state").jwts.push(jwt);
    if id.parse::<u64>().ok() != Some(INSTALLATION_ID) {
        return github_error(StatusCode::NOT_FOUND, "Not Found");
    }
    if header_str(&headers, header::CONTENT_TYPE).as_deref() != Some("application/json") {
        return github_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "fake: the body must be JSON",
        );
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return github_error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    if let Some(key) = body.keys().find(|k| {
        !matches!(
            k.as_str(),
            "repositories" | "repository_ids" | "permissions"
        )
    }) {
        return github_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("fake: unknown field {key:?}"),
        );
    }
    let repositories: Option<Vec<String>> = match body.get("repositories") {
        None => None,
        Some(Value::Array(list)) if list.len() <= 500 => {
            let names: Option<Vec<String>> =
                list.iter().map(|v| v.as_str().map(str::to_owned)).collect();
            match names {
                Some(names) => Some(names),
                None => {
                    return github_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid request. repositories must be an array of strings",
                    );
                }
            }
        }
        Some(_) => {
            return github_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid request. repositories must be an array of at most 500 strings",
            );
        }
    };
    if body.contains_key("repository_ids") {
        return github_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fake: repository_ids are not modelled",
        );
    }
    if let Some(names) = &repositories
        && names.iter().any(|n| {
            !INSTALLED_REPOSITORIES
                .iter()
                .any(|r| r.eq_ignore_ascii_case(n))
        })
    {
        return github_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "There is at least one repository that does not exist or is not accessible to the parent installation.",
        );
    }
    let installation: BTreeMap<String, String> = INSTALLATION_PERMISSIONS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let permissions: BTreeMap<String, String> = match body.get("permissions") {
        None => installation.clone(),
        Some(Value::Object(asked)) => {
            let mut out = BTreeMap::new();
            for (name, level) in asked {
                let Some(level) = level.as_str().filter(|l| level_rank(l).is_some()) else {
                    return github_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!("Invalid request. {name} must be read, write or admin"),
                    );
                };
                let granted = installation.get(name).and_then(|g| level_rank(g));
                if granted.is_none_or(|g| g < level_rank(level).unwrap_or(u8::MAX)) {
                    return github_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "The permissions requested are not granted to this installation.",
                    );
                }
                out.insert(name.clone(), level.to_owned());
            }
            out
        }
        Some(_) => {
            return github_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid request. permissions must be an object",
            );
        }
    };
    let widen = failure == Some(Failure::Widen);
    let (permissions, repositories) = if widen {
        (installation, None)
    } else {
        (permissions, repositories)
    };
    let reached: Vec<String> = match &repositories {
        Some(names) => names.clone(),
        None => INSTALLED_REPOSITORIES
            .iter()
            .map(|r| r.to_string())
            .collect(),
    };
    let stateless = match header_str(&headers, "x-github-stateless-s2s-token").as_deref() {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => inner.lock().expect("fake GitHub state").stateless,
    };
    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    let token = if stateless {
        stateless_token(&jwt_iss, &reached, &permissions, expires_at)
    } else {
        new_token()
    };
    let minted = MintedToken {
        token,
        repositories: reached.clone(),
        permissions: permissions.clone(),
        expires_at,
        revoked: false,
    };
    let mut reply = json!({
        "token": minted.token,
        "expires_at": rfc3339(minted.expires_at),
        "permissions": permissions,
        "repository_selection": if repositories.is_some() { "selected" } else { "all" },
    });
    if repositories.is_some() {
        reply["repositories"] = reached
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({
                    "id": 1000 + i,
                    "node_id": format!("R_fake{i}"),
                    "name": name,
                    "full_name": format!("{OWNER}/{name}"),
                    "private": true,
                })
            })
            .collect();
    }
    inner.lock().expect("fake GitHub state").tokens.push(minted);
    (StatusCode::CREATED, axum::Json(reply)).into_response()
}

async fn revoke_installation_token(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    record(
        &inner,
        "DELETE",
        "/installation/token".into(),
        &headers,
        &Bytes::new(),
    );
    if let Some(r) = reject_headers(&headers) {
        return r;
    }
    let bearer = header_str(&headers, header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    let mut state = inner.lock().expect("fake GitHub state");
    let now = SystemTime::now();
    match state
        .tokens
        .iter_mut()
        .find(|t| Some(&t.token) == bearer.as_ref() && !t.revoked && t.expires_at > now)
    {
        Some(token) => {
            token.revoked = true;
            StatusCode::NO_CONTENT.into_response()
        }
        None => github_error(StatusCode::UNAUTHORIZED, "Bad credentials"),
    }
}
