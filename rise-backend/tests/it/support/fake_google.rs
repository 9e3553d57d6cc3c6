//! A fake Google: the OAuth 2.0 token endpoint and IAM Credentials' `generateAccessToken`, the
//! two calls Rise's Google provider makes, written from Google's public documentation because
//! Google cannot run here. Rise's Google provider is tested against this fake only, never
//! against Google.
//!
//! Documented behaviour it follows:
//! - Token endpoint ("Using OAuth 2.0 for Server to Server Applications",
//!   <https://developers.google.com/identity/protocols/oauth2/service-account>): a form POST with
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion`, a JWT signed
//!   RS256 with the service account's key, claims `iss` (the account's email), `scope`
//!   (space-delimited), `aud` (the token URI), `iat`, `exp` (at most one hour after `iat`).
//!   Replies 200 `{"access_token", "expires_in", "token_type": "Bearer"}`; errors are OAuth 2.0
//!   bodies such as 400 `{"error": "invalid_grant", "error_description": "Invalid JWT
//!   Signature."}`.
//! - `POST /v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken`
//!   (<https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken>):
//!   the `-` wildcard is required; JSON body `delegates` (optional), `scope` (at least one),
//!   `lifetime` (a protobuf Duration, `"<seconds>s"`, default 1h, at most 1h unless the account
//!   is listed in an organization policy enforcing
//!   `constraints/iam.allowServiceAccountCredentialLifetimeExtension`, then up to 12h); the
//!   caller needs `iam.serviceAccounts.getAccessToken` (`roles/iam.serviceAccountTokenCreator`)
//!   on the account. Replies 200 `{"accessToken", "expireTime"}` (RFC 3339, Z-normalised).
//! - Google Cloud errors: `{"error": {"code", "message", "status"}}`
//!   (<https://cloud.google.com/apis/design/errors>); a missing permission and a missing
//!   account both answer 403 ("denied on resource (or it may not exist)").
//!
//! Stricter than documented, so mistakes in Rise fail loudly: unknown form or body fields are a
//! 400, unknown JWT claims are refused, and `delegates` (which Rise never sends) is refused.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Rise's own service account, whose key [`FakeGoogle::key_json`] returns.
pub const RISE_ACCOUNT: &str = "rise-broker@rise-test.iam.gserviceaccount.com";
pub const RISE_KEY_ID: &str = "5f3a9c0d1e2b4a6f8c7d0e1f2a3b4c5d6e7f8091";
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Token-like text in injected error bodies: it must never reach a log or an error.
pub const INJECTED_SECRET: &str = "ya29.injected-should-never-be-logged-0123456789abcdef";
/// Token-like text in an injected malformed 200 body.
pub const GARBAGE_SECRET: &str = "ya29.garbage-secret-token-value-0123456789abcdef";

/// Which endpoint a failure or request concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    Iam,
}

/// What an endpoint should do instead of answering normally, until cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and the endpoint's documented error body.
    Status(u16),
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply 200 with a body cut off mid-token.
    Garbage,
    /// IAM: mint the token living this much longer than asked.
    LongerLifetime(Duration),
    /// IAM: 403 as when the IAM Service Account Credentials API is disabled in the caller's
    /// project (an `ErrorInfo` detail with reason `SERVICE_DISABLED`).
    ServiceDisabled,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub endpoint: Endpoint,
    pub path: String,
    pub bearer: Option<String>,
    pub content_type: Option<String>,
    /// The JSON body, or a form body as a JSON object of strings; `Null` when unreadable.
    pub body: Value,
}

/// An access token the token endpoint issued to a service account (Rise's).
#[derive(Debug, Clone)]
pub struct RiseToken {
    pub access_token: String,
    pub account: String,
    pub expires_at: SystemTime,
    pub revoked: bool,
}

/// A token `generateAccessToken` minted.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub access_token: String,
    pub service_account: String,
    pub caller: String,
    pub scope: Vec<String>,
    pub lifetime_secs: u64,
    pub expire_time: SystemTime,
}

/// Key pairs generated once per test process (RSA generation is slow in debug builds).
struct Keys {
    rise_private_pem: String,
    rise_public_pem: String,
    /// A key Google never registered for any account.
    stray_private_pem: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let generate = || {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key")
        };
        let rise = generate();
        let stray = generate();
        Keys {
            rise_private_pem: rise.serialize_pem(),
            rise_public_pem: rise.public_key_pem(),
            stray_private_pem: stray.serialize_pem(),
        }
    })
}

struct Inner {
    addr: SocketAddr,
    requests: Vec<RecordedRequest>,
    rise_tokens: Vec<RiseToken>,
    minted: Vec<MintedToken>,
    failures: HashMap<Endpoint, Failure>,
    token_expires_in: u64,
    /// Caller account -> accounts it may mint tokens for.
    grants: HashMap<String, HashSet<String>>,
    /// Accounts listed in the lifetime-extension organization policy.
    extended_lifetime: HashSet<String>,
}

/// A running fake on `127.0.0.1:<random port>`.
pub struct FakeGoogle {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGoogle {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake Google");
        let addr = listener.local_addr().expect("local address");
        // Generate before serving, so no request waits on key generation.
        keys();
        let inner = Arc::new(Mutex::new(Inner {
            addr,
            requests: Vec::new(),
            rise_tokens: Vec::new(),
            minted: Vec::new(),
            failures: HashMap::new(),
            token_expires_in: 3599,
            grants: HashMap::new(),
            extended_lifetime: HashSet::new(),
        }));
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .route(
                "/v1/projects/{project}/serviceAccounts/{name}",
                post(generate_access_token),
            )
            .fallback(|| async {
                cloud_error(StatusCode::NOT_FOUND, "Requested entity was not found.")
            })
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// The token endpoint, as a key's `token_uri`.
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The IAM Credentials base URL (`iam_credentials_url`).
    pub fn iam_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Rise's service account JSON key, as Google issues it, pointing at this fake.
    pub fn key_json(&self) -> String {
        self.key_json_with(&keys().rise_private_pem)
    }

    /// A key for Rise's account signed with a key Google does not know (deleted or wrong).
    pub fn stray_key_json(&self) -> String {
        self.key_json_with(&keys().stray_private_pem)
    }

    /// The private key PEM of Rise's key (to check that it never leaks).
    pub fn private_key_pem(&self) -> &'static str {
        &keys().rise_private_pem
    }

    fn key_json_with(&self, private_pem: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "rise-test",
            "private_key_id": RISE_KEY_ID,
            "private_key": private_pem,
            "client_email": RISE_ACCOUNT,
            "client_id": "104857600000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/rise-broker%40rise-test.iam.gserviceaccount.com",
            "universe_domain": "googleapis.com",
        })
        .to_string()
    }

    /// Grant Rise's account `roles/iam.serviceAccountTokenCreator` on `account`.
    pub fn allow_impersonation(&self, account: &str) {
        self.lock()
            .grants
            .entry(RISE_ACCOUNT.to_owned())
            .or_default()
            .insert(account.to_owned());
    }

    /// List `account` in the lifetime-extension organization policy (up to 12h).
    pub fn allow_extended_lifetime(&self, account: &str) {
        self.lock().extended_lifetime.insert(account.to_owned());
    }

    pub fn set_failure(&self, endpoint: Endpoint, failure: Option<Failure>) {
        let mut inner = self.lock();
        match failure {
            Some(f) => inner.failures.insert(endpoint, f),
            None => inner.failures.remove(&endpoint),
        };
    }

    /// The `expires_in` of tokens the token endpoint issues from now on.
    pub fn set_token_expires_in(&self, secs: u64) {
        self.lock().token_expires_in = secs;
    }

    /// Invalidate every token the token endpoint issued (as if revoked by Google).
    pub fn revoke_rise_tokens(&self) {
        for t in &mut self.lock().rise_tokens {
            t.revoked = true;
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.endpoint == endpoint)
            .collect()
    }

    pub fn rise_tokens(&self) -> Vec<RiseToken> {
        self.lock().rise_tokens.clone()
    }

    pub fn minted(&self) -> Vec<MintedToken> {
        self.lock().minted.clone()
    }

    /// Every secret the fake has seen or issued: assertions, Rise's tokens, minted tokens.
    pub fn secrets(&self) -> Vec<String> {
        let inner = self.lock();
        let mut out: Vec<String> = inner
            .requests
            .iter()
            .filter_map(|r| r.body.get("assertion").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        out.extend(inner.rise_tokens.iter().map(|t| t.access_token.clone()));
        out.extend(inner.minted.iter().map(|t| t.access_token.clone()));
        out
    }

    /// Stop listening; later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a handler panicked: the test fails anyway.
        self.inner.lock().expect("fake Google state")
    }
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<Inner>>;

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

fn canonical_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn cloud_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": canonical_status(status),
        }})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn record(inner: &mut Inner, endpoint: Endpoint, path: &str, headers: &HeaderMap, body: Value) {
    inner.requests.push(RecordedRequest {
        endpoint,
        path: path.to_owned(),
        bearer: bearer(headers),
        content_type: content_type(headers),
        body,
    });
}

/// Answer with the injected failure, if any (after recording the request).
async fn injected(failure: Option<Failure>, endpoint: Endpoint) -> Option<Response> {
    match failure? {
        // Not a reply of its own: the handler mints differently.
        Failure::LongerLifetime(_) => None,
        Failure::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = format!("Injected failure for token {INJECTED_SECRET}");
            Some(match endpoint {
                Endpoint::Token => {
                    let code = if status.is_client_error() {
                        "invalid_grant"
                    } else {
                        "server_error"
                    };
                    oauth_error(status, code, &message)
                }
                Endpoint::Iam => cloud_error(status, &message),
            })
        }
        Failure::ServiceDisabled => Some(
            (
                StatusCode::FORBIDDEN,
                axum::Json(json!({"error": {
                    "code": 403,
                    "message": "IAM Service Account Credentials API has not been used in project 123456789012 before or it is disabled.",
                    "status": "PERMISSION_DENIED",
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "SERVICE_DISABLED",
                        "domain": "googleapis.com",
                        "metadata": {"service": "iamcredentials.googleapis.com", "consumer": "projects/123456789012"}
                    }],
                }})),
            )
                .into_response(),
        ),
        Failure::Garbage => {
            let body = match endpoint {
                Endpoint::Token => format!(r#"{{"access_token":"{GARBAGE_SECRET}"#),
                Endpoint::Iam => format!(r#"{{"accessToken":"{GARBAGE_SECRET}"#),
            };
            Some(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response(),
            )
        }
    }
}

// --- The token endpoint ---------------------------------------------------------------------

/// The claims Google documents for the assertion; anything else is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssertionClaims {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
    #[serde(default)]
    #[allow(dead_code)]
    sub: Option<String>,
}

async fn token_endpoint(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form: Option<Map<String, Value>> = content_type(&headers)
        .filter(|c| c.starts_with("application/x-www-form-urlencoded"))
        .map(|_| {
            form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        });
    let failure = {
        let mut inner = shared.lock().expect("fake state");
        let recorded = form.clone().map(Value::Object).unwrap_or(Value::Null);
        record(&mut inner, Endpoint::Token, "/token", &headers, recorded);
        inner.failures.get(&Endpoint::Token).cloned()
    };
    if let Some(reply) = injected(failure, Endpoint::Token).await {
        return reply;
    }
    let Some(form) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Expected an application/x-www-form-urlencoded body",
        );
    };
    if let Some(unknown) = form
        .keys()
        .find(|k| !matches!(k.as_str(), "grant_type" | "assertion"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("Unexpected parameter {unknown}"),
        );
    }
    if form.get("grant_type").and_then(Value::as_str) != Some(JWT_BEARER) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        );
    }
    let Some(assertion) = form.get("assertion").and_then(Value::as_str) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing assertion",
        );
    };
    let mut inner = shared.lock().expect("fake state");
    match verify_assertion(&inner, assertion) {
        Ok(account) => {
            let access_token = format!("ya29.fake-rise-{}", uuid::Uuid::new_v4().simple());
            let expires_in = inner.token_expires_in;
            inner.rise_tokens.push(RiseToken {
                access_token: access_token.clone(),
                account,
                expires_at: SystemTime::now() + Duration::from_secs(expires_in),
                revoked: false,
            });
            (
                StatusCode::OK,
                axum::Json(json!({
                    "access_token": access_token,
                    "expires_in": expires_in,
                    "token_type": "Bearer",
                })),
            )
                .into_response()
        }
        Err(description) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description),
    }
}

/// The account the assertion authenticates, or Google's `invalid_grant` description.
fn verify_assertion(inner: &Inner, assertion: &str) -> Result<String, &'static str> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| "Invalid JWT.")?;
    if header.alg != Algorithm::RS256 {
        return Err("Invalid JWT Signature.");
    }
    if header.kid.as_deref().is_some_and(|kid| kid != RISE_KEY_ID) {
        return Err("Invalid JWT Signature.");
    }
    // Only Rise's account has a key here.
    let key = DecodingKey::from_rsa_pem(keys().rise_public_pem.as_bytes())
        .map_err(|_| "Invalid JWT Signature.")?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[format!("http://{}/token", inner.addr)]);
    validation.set_issuer(&[RISE_ACCOUNT]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => "Invalid JWT Signature.",
            jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                "Invalid JWT: Failed audience check."
            }
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
            }
            _ => "Invalid JWT.",
        })?
        .claims;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    if claims.exp <= claims.iat || claims.exp - claims.iat > 3600 || claims.iat > now + 60 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    if claims.aud.is_empty() || !claims.scope.split(' ').any(|s| s == CLOUD_PLATFORM) {
        return Err("Invalid OAuth scope or ID token audience provided.");
    }
    Ok(claims.iss)
}

// --- generateAccessToken --------------------------------------------------------------------

async fn generate_access_token(
    State(shared): State<Shared>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let failure = {
        let mut inner = shared.lock().expect("fake state");
        let path = format!("/v1/projects/{project}/serviceAccounts/{name}");
        record(&mut inner, Endpoint::Iam, &path, &headers, parsed.clone());
        inner.failures.get(&Endpoint::Iam).cloned()
    };
    let extra = match &failure {
        Some(Failure::LongerLifetime(extra)) => *extra,
        _ => Duration::ZERO,
    };
    if let Some(reply) = injected(failure, Endpoint::Iam).await {
        return reply;
    }
    let mut inner = shared.lock().expect("fake state");
    let now = SystemTime::now();
    let caller = bearer(&headers).and_then(|token| {
        inner
            .rise_tokens
            .iter()
            .find(|t| t.access_token == token && !t.revoked && t.expires_at > now)
            .map(|t| t.account.clone())
    });
    let Some(caller) = caller else {
        return cloud_error(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    };
    let Some(account) = name.strip_suffix(":generateAccessToken") else {
        return cloud_error(StatusCode::NOT_FOUND, "Requested entity was not found.");
    };
    if project != "-" {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            "The project ID must be the wildcard '-'.",
        );
    }
    if !content_type(&headers).is_some_and(|c| c.starts_with("application/json")) {
        return cloud_error(StatusCode::BAD_REQUEST, "Expected a JSON body.");
    }
    let Value::Object(body) = parsed else {
        return cloud_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
    };
    if let Some(unknown) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "delegates" | "scope" | "lifetime"))
    {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid JSON payload received. Unknown name \"{unknown}\"."),
        );
    }
    if body.contains_key("delegates") {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            "This fake does not model delegation chains.",
        );
    }
    let scope: Vec<String> = match body.get("scope") {
        Some(Value::Array(items)) if !items.is_empty() => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect();
            match strings {
                Some(s) => s,
                None => return cloud_error(StatusCode::BAD_REQUEST, "Invalid scope."),
            }
        }
        _ => return cloud_error(StatusCode::BAD_REQUEST, "Scope is required."),
    };
    let max = if inner.extended_lifetime.contains(account) {
        12 * 3600
    } else {
        3600
    };
    let lifetime_secs = match body.get("lifetime") {
        None => 3600,
        Some(Value::String(s)) => match parse_duration(s) {
            Some(secs) if secs > 0 && secs <= max => secs,
            _ => {
                return cloud_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "The lifetime {s:?} is invalid: it must be a duration in seconds ('<n>s'), at most {max}s for this service account."
                    ),
                );
            }
        },
        Some(_) => return cloud_error(StatusCode::BAD_REQUEST, "Invalid lifetime."),
    };
    let allowed = inner
        .grants
        .get(&caller)
        .is_some_and(|targets| targets.contains(account));
    if !allowed {
        return cloud_error(
            StatusCode::FORBIDDEN,
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        );
    }
    let access_token = format!("ya29.fake-sa-{}", uuid::Uuid::new_v4().simple());
    let expire_time = now + Duration::from_secs(lifetime_secs) + extra;
    inner.minted.push(MintedToken {
        access_token: access_token.clone(),
        service_account: account.to_owned(),
        caller,
        scope,
        lifetime_secs,
        expire_time,
    });
    (
        StatusCode::OK,
        axum::Json(json!({
            "accessToken": access_token,
            "expireTime": humantime::format_rfc3339_nanos(expire_time).to_string(),
        })),
    )
        .into_response()
}

/// A protobuf `Duration` in JSON (`"3600s"`, `"1.5s"`), in whole seconds (fractions rounded
/// down, as a lifetime is).
fn parse_duration(s: &str) -> Option<u64> {
    let number = s.strip_suffix('s')?;
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(f) = fraction
        && (f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    whole.parse().ok()
}
