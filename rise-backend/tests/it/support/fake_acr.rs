//! A fake Azure Container Registry control plane: the Microsoft Entra ID token endpoint and the
//! Azure Resource Manager calls Rise's ACR provider makes, written from Microsoft's public REST
//! documentation because no Azure can run here. Rise's ACR provider is tested against this fake
//! only, never against Azure.
//!
//! Documented behaviour it follows:
//! - Entra ID client credentials grant ("Microsoft identity platform and the OAuth 2.0 client
//!   credentials flow"): `POST /{tenant}/oauth2/v2.0/token`, form `client_id`, `client_secret`,
//!   `scope` (`https://management.azure.com/.default`), `grant_type=client_credentials`; 200
//!   `{token_type: "Bearer", expires_in, ext_expires_in, access_token}`; 400 `invalid_request` /
//!   `invalid_scope` / unknown tenant, 401 `invalid_client`, with `{error, error_description,
//!   error_codes}`.
//! - ARM, `api-version=2023-07-01` required on every call (400 otherwise), `Authorization:
//!   Bearer` with a token the fake issued (401 `InvalidAuthenticationToken` otherwise); errors
//!   `{"error": {"code", "message"}}`; an unknown subscription, group or registry is a 404.
//! - Scope Maps - Create (`PUT .../scopeMaps/{name}`, name 5-50 of `[a-zA-Z0-9-_]`): body
//!   `{"properties": {"description" (≤ 256), "actions": [...]}}`, actions
//!   `repositories/<repo>/{content/read, content/write, content/delete, metadata/read,
//!   metadata/write}` ("Create a token with repository-scoped permissions"); 201 with
//!   `Azure-AsyncOperation` for a new map, 200 for a replaced one.
//! - Tokens - Create (`PUT .../tokens/{name}`, name 5-50 of `[a-zA-Z0-9-]`): body
//!   `{"properties": {"scopeMapId", "status": "enabled"|"disabled", "credentials"}}`; 201 with
//!   `Azure-AsyncOperation` when new, 200 when updated. Tokens - Get, Tokens - List (`value`,
//!   `nextLink`), Scope Maps - Get.
//! - Registries - Generate Credentials (`POST .../generateCredentials`): body `{"tokenId",
//!   "name": "password1"|"password2" (both when absent), "expiry"}`; 200 `{"username",
//!   "passwords": [{"name", "value", "expiry", "creationTime"}]}`, or 202 with `Location`.
//!   Generating a password replaces the slot's previous one.
//! - Tokens - Delete: 200, 202 with `Location`, 204 when there is no such token.
//! - A registry's SKU limit on tokens ("Azure Container Registry SKU features and limits":
//!   Basic 100, Standard 500, Premium 50,000): creating a token beyond it is refused with ARM
//!   error code `QuotaExceeded` and the message ACR gives for its other SKU quotas ("Quota
//!   exceeded for resource type tokens for the registry SKU Basic..."). The HTTP status is not
//!   documented; the fake answers the one a test chooses ([`FakeAcr::set_token_limit`]).
//! - Long-running operations: an `Azure-AsyncOperation` URL answers `{"status": "InProgress"}`
//!   then `{"status": "Succeeded"}`; a `Location` URL answers 202 then 200 (with the result);
//!   both with `Retry-After`.
//!
//! Stricter than documented, so mistakes in Rise fail loudly: unknown body fields are a 400, and
//! bodies must be `application/json` (forms for Entra).
//!
//! Beyond the wire protocol, [`FakeAcr::authorize`] answers "may this token user with this
//! password do this on this repository", the fake's reading of the documented token and scope
//! map semantics (an expired password or a deleted or disabled token authenticates nothing).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

pub const TENANT_ID: &str = "11111111-1111-1111-1111-111111111111";
pub const CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";
pub const CLIENT_SECRET: &str = "fake-client-secret-9f8e7d6c5b4a";
pub const SUBSCRIPTION_ID: &str = "00000000-0000-0000-0000-000000000001";
pub const RESOURCE_GROUP: &str = "rise-rg";
pub const REGISTRY_NAME: &str = "riseregistry";
pub const LOGIN_SERVER: &str = "riseregistry.azurecr.io";
pub const API_VERSION: &str = "2023-07-01";
/// Token-like text in injected error bodies: it must never reach a log line or an error.
pub const INJECTED_SECRET: &str = "eyJinjected-should-never-be-logged-0123456789abcdef";
/// Token-like text in garbage replies.
pub const GARBAGE_SECRET: &str = "fake-acr-garbage-password-0123456789abcdef";

/// Which call a failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Entra,
    /// Every ARM call.
    Arm,
    ScopeMaps,
    Tokens,
    GenerateCredentials,
    Delete,
    List,
}

/// What the fake does instead of answering normally, until cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Reply with this status and the service's error body (carrying token-like text).
    Status(u16),
    /// Never reply; the client's timeout must fire.
    Hang,
    /// Reply 200 with a body that is not the documented JSON.
    Garbage,
    /// Scope maps: store and report an extra action on every repository.
    WidenScope,
    /// Generate Credentials: set and report an expiry a day later than asked.
    LongerExpiry,
    /// Generate Credentials: report the credentials as another user's (the registry's admin).
    OtherUser,
    /// Tokens: the PUT's reply names another token's resource id.
    OtherTokenId,
    /// Long-running operations never finish (`InProgress` / 202 forever).
    Stuck,
    /// Answer the next call 409 `AnotherOperationInProgress`, then behave again.
    ConflictOnce,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub api_version: Option<String>,
    /// The bearer token, if any.
    pub bearer: Option<String>,
    /// JSON body, a form as an object of strings, or `Null`.
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct Password {
    pub value: String,
    pub expiry: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct FakeToken {
    pub name: String,
    pub scope_map: String,
    pub status: String,
    pub password1: Option<Password>,
    pub password2: Option<Password>,
}

enum Operation {
    /// An `Azure-AsyncOperation`: `InProgress` for this many more polls, then `Succeeded`.
    Async { polls_left: u32 },
    /// A `Location`: 202 for this many more polls, then 200 with `result`.
    Location { polls_left: u32, result: Value },
}

struct Inner {
    scope_maps: BTreeMap<String, Vec<String>>,
    tokens: BTreeMap<String, FakeToken>,
    arm_tokens: Vec<(String, SystemTime)>,
    entra_expires_in: u64,
    requests: Vec<RecordedRequest>,
    failures: HashMap<Endpoint, Failure>,
    async_ops: bool,
    /// Long-running PUTs answer 201 `Creating` without `Azure-AsyncOperation`; the resource
    /// reads `Creating` this many more times, then `Succeeded` (ARM's "poll the resource").
    header_less: Option<usize>,
    /// GETs of a resource still to answer `Creating` (see `header_less`).
    creating_reads: usize,
    /// With `header_less`: the first read after a PUT answers 404 (ARM not caught up yet).
    missing_first_read: bool,
    /// GETs still to answer 404 (see `missing_first_read`).
    missing_reads: usize,
    page_size: usize,
    operations: HashMap<String, Operation>,
    /// The most tokens the registry holds, and the status of the `QuotaExceeded` refusal.
    token_limit: Option<(usize, StatusCode)>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake on `127.0.0.1:<random port>`, serving Entra ID and ARM from one origin.
pub struct FakeAcr {
    addr: SocketAddr,
    inner: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAcr {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            scope_maps: BTreeMap::new(),
            tokens: BTreeMap::new(),
            arm_tokens: Vec::new(),
            entra_expires_in: 3599,
            requests: Vec::new(),
            failures: HashMap::new(),
            async_ops: true,
            header_less: None,
            creating_reads: 0,
            missing_first_read: false,
            missing_reads: 0,
            page_size: 100,
            operations: HashMap::new(),
            token_limit: None,
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
            .fallback(arm)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fake ACR");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// The Entra ID authority and the ARM endpoint (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Provider configuration lines pointing at this fake (no `client_secret`).
    pub fn config(&self) -> String {
        format!(
            "login_server = \"{LOGIN_SERVER}\"\nsubscription_id = \"{SUBSCRIPTION_ID}\"\nresource_group = \"{RESOURCE_GROUP}\"\nregistry_name = \"{REGISTRY_NAME}\"\ntenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nauthority_url = \"{base}\"\nmanagement_url = \"{base}\"\ninsecure_http = true\n",
            base = self.base_url()
        )
    }

    /// `/subscriptions/.../registries/riseregistry`.
    pub fn registry_path() -> String {
        format!(
            "/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.ContainerRegistry/registries/{REGISTRY_NAME}"
        )
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// How many times Rise asked Entra ID for a token.
    pub fn entra_requests(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path.ends_with("/oauth2/v2.0/token"))
            .count()
    }

    pub fn tokens(&self) -> BTreeMap<String, FakeToken> {
        self.lock().tokens.clone()
    }

    pub fn scope_maps(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().scope_maps.clone()
    }

    /// Every ARM token the fake issued.
    pub fn arm_tokens(&self) -> Vec<String> {
        self.lock()
            .arm_tokens
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn set_failure(&self, endpoint: Endpoint, failure: Option<Failure>) {
        let mut inner = self.lock();
        match failure {
            Some(f) => inner.failures.insert(endpoint, f),
            None => inner.failures.remove(&endpoint),
        };
    }

    /// Long-running operations (201/202 and polls) when true (the default); immediate 200s
    /// otherwise.
    pub fn set_async(&self, on: bool) {
        self.lock().async_ops = on;
    }

    /// Long-running PUTs without an operation header: the resource reads `Creating` `reads`
    /// times after the PUT, then `Succeeded` (`None`: the usual `Azure-AsyncOperation`).
    pub fn set_header_less(&self, reads: Option<usize>) {
        self.lock().header_less = reads;
    }

    /// With `set_header_less`: the first read of a just-created resource answers 404.
    pub fn set_missing_first_read(&self, on: bool) {
        self.lock().missing_first_read = on;
    }

    pub fn set_page_size(&self, n: usize) {
        self.lock().page_size = n.max(1);
    }

    pub fn set_entra_expires_in(&self, secs: u64) {
        self.lock().entra_expires_in = secs;
    }

    /// Hold at most `limit` tokens; creating one more is refused with `status` and
    /// `QuotaExceeded`.
    pub fn set_token_limit(&self, limit: usize, status: StatusCode) {
        self.lock().token_limit = Some((limit, status));
    }

    /// A token created outside Rise (or by an earlier Rise), bound to a pull scope map of
    /// `repository` that is created if missing.
    pub fn seed_token(&self, name: &str, repository: &str) {
        let mut inner = self.lock();
        let map = format!("seeded-{}", repository.replace('/', "-"));
        inner.scope_maps.insert(
            map.clone(),
            vec![format!("repositories/{repository}/content/read")],
        );
        inner.tokens.insert(
            name.to_owned(),
            FakeToken {
                name: name.to_owned(),
                scope_map: map,
                status: "enabled".into(),
                password1: None,
                password2: None,
            },
        );
    }

    /// Stop answering (the listener closes).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Would ACR let `username` with `password` do `action` (`pull`, `push`, `delete`,
    /// `list`) on `repository`? Push needs `content/write` and `content/read` (ACR: "use with
    /// content/read to push").
    pub fn authorize(
        &self,
        username: &str,
        password: &str,
        repository: &str,
        action: &str,
    ) -> bool {
        let inner = self.lock();
        let Some(token) = inner.tokens.get(username) else {
            return false;
        };
        if token.status != "enabled" {
            return false;
        }
        let now = SystemTime::now();
        let valid = [&token.password1, &token.password2]
            .into_iter()
            .flatten()
            .any(|p| p.value == password && p.expiry.is_none_or(|e| now < e));
        if !valid {
            return false;
        }
        let Some(actions) = inner.scope_maps.get(&token.scope_map) else {
            return false;
        };
        let has = |a: &str| {
            actions
                .iter()
                .any(|x| x == &format!("repositories/{repository}/{a}"))
        };
        match action {
            "pull" => has("content/read"),
            "push" => has("content/write") && has("content/read"),
            "delete" => has("content/delete"),
            "list" => has("metadata/read"),
            _ => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake state")
    }
}

impl Drop for FakeAcr {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// --- Entra ID -------------------------------------------------------------------------------

fn entra_error(status: StatusCode, error: &str, description: &str, code: u32) -> Response {
    (
        status,
        axum::Json(json!({
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        })),
    )
        .into_response()
}

async fn entra_token(
    State(shared): State<Shared>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Map<String, Value> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let failure = {
        let mut inner = shared.lock().expect("fake state");
        inner.requests.push(RecordedRequest {
            method: "POST".into(),
            path: format!("/{tenant}/oauth2/v2.0/token"),
            api_version: None,
            bearer: None,
            body: Value::Object(form.clone()),
        });
        inner.failures.get(&Endpoint::Entra).cloned()
    };
    match failure {
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return entra_error(
                status,
                "invalid_client",
                &format!("AADSTS7000215: Injected failure {INJECTED_SECRET}"),
                7_000_215,
            );
        }
        Some(Failure::Garbage) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"access_token\":\"{GARBAGE_SECRET}"),
            )
                .into_response();
        }
        _ => {}
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            900_144,
        );
    }
    if tenant != TENANT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
            90_002,
        );
    }
    let field = |k: &str| form.get(k).and_then(Value::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
            70_003,
        );
    }
    // Each cloud's ARM takes only tokens for its own audience; this fake is the ARM of the
    // authority that answers here.
    let audience = format!("{}/.default", own_base(&headers));
    if field("scope") != audience {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid.",
            1_002_012,
        );
    }
    if field("client_id") != CLIENT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
            700_016,
        );
    }
    if field("client_secret") != CLIENT_SECRET {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
            7_000_215,
        );
    }
    let mut inner = shared.lock().expect("fake state");
    let token = format!(
        "eyJ0eXAiOiJKV1Qi.fake-arm.{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let expires_in = inner.entra_expires_in;
    inner.arm_tokens.push((
        token.clone(),
        SystemTime::now() + Duration::from_secs(expires_in),
    ));
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": token,
    }))
    .into_response()
}

// --- Azure Resource Manager -------------------------------------------------------------------

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// A refusal, boxed: a `Response` is large.
type Rejected = Box<Response>;

fn reject(response: Response) -> Rejected {
    Box::new(response)
}

fn bad_request(message: &str) -> Response {
    arm_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// What an ARM path names, below the registry.
enum Target {
    ScopeMap(String),
    Token(String),
    TokenList,
    GenerateCredentials,
    Operation(String),
}

impl Target {
    fn endpoint(&self, method: &Method) -> Option<Endpoint> {
        match self {
            Target::ScopeMap(_) => Some(Endpoint::ScopeMaps),
            Target::Token(_) if method == Method::DELETE => Some(Endpoint::Delete),
            Target::Token(_) => Some(Endpoint::Tokens),
            Target::TokenList => Some(Endpoint::List),
            Target::GenerateCredentials => Some(Endpoint::GenerateCredentials),
            Target::Operation(_) => None,
        }
    }
}

async fn arm(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let parsed_body = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(&body)
    };
    let target = parse_target(&path);
    let failure = {
        let mut inner = shared.lock().expect("fake state");
        inner.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            api_version: query.get("api-version").cloned(),
            bearer: bearer.clone(),
            body: parsed_body.as_ref().cloned().unwrap_or(Value::Null),
        });
        let endpoint = target.as_ref().ok().and_then(|t| t.endpoint(&method));
        endpoint
            .and_then(|e| inner.failures.get(&e).cloned())
            .or_else(|| {
                // Polls share the failure of every ARM call, not of one endpoint.
                inner.failures.get(&Endpoint::Arm).cloned()
            })
    };
    match &failure {
        Some(Failure::ConflictOnce) => {
            let mut inner = shared.lock().expect("fake state");
            inner.failures.retain(|_, f| *f != Failure::ConflictOnce);
            return arm_error(
                StatusCode::CONFLICT,
                "AnotherOperationInProgress",
                "Another operation on this or a dependent resource is in progress.",
            );
        }
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match status {
                StatusCode::UNAUTHORIZED => "InvalidAuthenticationToken",
                StatusCode::FORBIDDEN => "AuthorizationFailed",
                _ => "InternalServerError",
            };
            return arm_error(
                status,
                code,
                &format!("Injected failure for bearer {INJECTED_SECRET}"),
            );
        }
        Some(Failure::Garbage) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"passwords\":[{{\"name\":\"password1\",\"value\":\"{GARBAGE_SECRET}"),
            )
                .into_response();
        }
        _ => {}
    }
    let mut inner = shared.lock().expect("fake state");
    let now = SystemTime::now();
    let authenticated = bearer
        .as_deref()
        .is_some_and(|b| inner.arm_tokens.iter().any(|(t, exp)| t == b && now < *exp));
    if !authenticated {
        return arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid or expired.",
        );
    }
    let target = match target {
        Ok(t) => t,
        Err(response) => return *response,
    };
    match query.get("api-version").map(String::as_str) {
        None => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        Some(API_VERSION) => {}
        Some(other) => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidApiVersionParameter",
                &format!("The api-version '{other}' is invalid."),
            );
        }
    }
    if matches!(method, Method::PUT | Method::POST) {
        let json_body = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_body {
            return arm_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "The content media type is not supported. Content-Type must be application/json.",
            );
        }
    }
    let body = match parsed_body {
        Ok(Value::Object(map)) => map,
        Ok(Value::Null) => Map::new(),
        _ => return bad_request("The request content was invalid and could not be deserialized."),
    };
    let base = own_base(&headers);
    let widen = failure == Some(Failure::WidenScope);
    let longer = failure == Some(Failure::LongerExpiry);
    let other_user = failure == Some(Failure::OtherUser);
    let other_id = failure == Some(Failure::OtherTokenId);
    match (method, target) {
        (Method::PUT, Target::ScopeMap(name)) => {
            put_scope_map(&mut inner, &base, &name, &body, widen)
        }
        (Method::GET, Target::ScopeMap(name)) if take_missing(&mut inner) => {
            not_found("scope map", &name)
        }
        (Method::GET, Target::Token(name)) if take_missing(&mut inner) => not_found("token", &name),
        (Method::GET, Target::ScopeMap(name)) => {
            let state = read_state(&mut inner);
            match inner.scope_maps.get(&name) {
                Some(actions) => axum::Json(scope_map_json(&name, actions, state)).into_response(),
                None => not_found("scope map", &name),
            }
        }
        (Method::PUT, Target::Token(name)) => put_token(&mut inner, &base, &name, &body, other_id),
        (Method::GET, Target::Token(name)) => {
            let state = read_state(&mut inner);
            match inner.tokens.get(&name) {
                Some(t) => axum::Json(token_json(t, state)).into_response(),
                None => not_found("token", &name),
            }
        }
        (Method::DELETE, Target::Token(name)) => {
            if inner.tokens.remove(&name).is_none() {
                return StatusCode::NO_CONTENT.into_response();
            }
            if inner.async_ops {
                let location = new_operation(
                    &mut inner,
                    &base,
                    &format!("tokens/{name}"),
                    Operation::Location {
                        polls_left: 1,
                        result: Value::Null,
                    },
                );
                (
                    StatusCode::ACCEPTED,
                    [
                        (header::LOCATION, location),
                        (header::RETRY_AFTER, "0".into()),
                    ],
                )
                    .into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
        (Method::GET, Target::TokenList) => {
            let skip: usize = query
                .get("$skipToken")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let page_size = inner.page_size;
            let all: Vec<Value> = inner
                .tokens
                .values()
                .map(|t| token_json(t, "Succeeded"))
                .collect();
            let page: Vec<Value> = all.iter().skip(skip).take(page_size).cloned().collect();
            let mut reply = json!({"value": page});
            if skip + page_size < all.len() {
                reply["nextLink"] = json!(format!(
                    "{base}{}/tokens?api-version={API_VERSION}&$skipToken={}",
                    FakeAcr::registry_path(),
                    skip + page_size
                ));
            }
            axum::Json(reply).into_response()
        }
        (Method::POST, Target::GenerateCredentials) => {
            generate(&mut inner, &base, &body, longer, other_user)
        }
        (Method::GET, Target::Operation(id)) => {
            poll(&mut inner, &id, failure == Some(Failure::Stuck))
        }
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The requested method is not allowed on this resource.",
        ),
    }
}

fn not_found(kind: &str, name: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("The {kind} '{name}' could not be found."),
    )
}

fn parse_target(path: &str) -> Result<Target, Rejected> {
    let registry = FakeAcr::registry_path();
    let Some(rest) = path.strip_prefix(&registry) else {
        let segments: Vec<&str> = path.split('/').collect();
        if segments.get(2) != Some(&SUBSCRIPTION_ID) {
            return Err(reject(arm_error(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                "The subscription could not be found.",
            )));
        }
        if segments.get(4) != Some(&RESOURCE_GROUP) {
            return Err(reject(arm_error(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                "Resource group could not be found.",
            )));
        }
        return Err(reject(arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The Resource 'Microsoft.ContainerRegistry/registries' could not be found.",
        )));
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    Ok(match parts.as_slice() {
        ["scopeMaps", name] => Target::ScopeMap((*name).to_owned()),
        ["tokens", name] => Target::Token((*name).to_owned()),
        ["tokens"] => Target::TokenList,
        ["generateCredentials"] => Target::GenerateCredentials,
        // Under the resource they concern, as in ARM's examples
        // (`.../tokens/myToken/operationStatuses/tokens-...`).
        ["operationStatuses", id] | ["scopeMaps" | "tokens", _, "operationStatuses", id] => {
            Target::Operation((*id).to_owned())
        }
        _ => {
            return Err(reject(arm_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "No such resource type.",
            )));
        }
    })
}

fn valid_name(name: &str, underscore: bool) -> bool {
    (5..=50).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
}

fn check_keys(map: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Rejected> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Box::new(bad_request(&format!(
            "Could not find member '{k}' on object of type '{what}'."
        )))),
        None => Ok(()),
    }
}

fn properties<'a>(
    body: &'a Map<String, Value>,
    what: &str,
) -> Result<&'a Map<String, Value>, Rejected> {
    check_keys(body, &["properties"], what)?;
    body.get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| Box::new(bad_request("The 'properties' member is required.")))
}

/// `repositories/<repo>/<content|metadata>/<verb>`.
fn valid_action(action: &str) -> bool {
    let Some(rest) = action.strip_prefix("repositories/") else {
        return false;
    };
    let verbs = [
        "/content/read",
        "/content/write",
        "/content/delete",
        "/metadata/read",
        "/metadata/write",
    ];
    verbs.iter().any(|v| {
        rest.strip_suffix(v).is_some_and(|repo| {
            !repo.is_empty()
                && repo.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'/' | b'.' | b'_' | b'-' | b'*')
                })
        })
    })
}

fn resource_id(kind: &str, name: &str) -> String {
    format!("{}/{kind}/{name}", FakeAcr::registry_path())
}

fn scope_map_json(name: &str, actions: &[String], state: &str) -> Value {
    json!({
        "id": resource_id("scopeMaps", name),
        "name": name,
        "type": "Microsoft.ContainerRegistry/registries/scopeMaps",
        "properties": {
            "type": "UserDefined",
            "creationDate": "2026-01-01T00:00:00.0000000Z",
            "actions": actions,
            "provisioningState": state,
        }
    })
}

fn token_json(t: &FakeToken, state: &str) -> Value {
    let passwords: Vec<Value> = [("password1", &t.password1), ("password2", &t.password2)]
        .into_iter()
        .filter_map(|(n, p)| {
            p.as_ref().map(|p| {
                json!({
                    "name": n,
                    "creationTime": "2026-01-01T00:00:00.0000000Z",
                    "expiry": p.expiry.map(format_time),
                })
            })
        })
        .collect();
    json!({
        "id": resource_id("tokens", &t.name),
        "name": t.name,
        "type": "Microsoft.ContainerRegistry/registries/tokens",
        "properties": {
            "creationDate": "2026-01-01T00:00:00.0000000Z",
            "scopeMapId": resource_id("scopeMaps", &t.scope_map),
            "status": t.status,
            "provisioningState": state,
            "credentials": {"passwords": passwords},
        }
    })
}

/// `resource` is the path below the registry the operation concerns (`tokens/x`), or empty.
fn new_operation(inner: &mut Inner, base: &str, resource: &str, op: Operation) -> String {
    let id = format!("op-{}", uuid::Uuid::new_v4().simple());
    inner.operations.insert(id.clone(), op);
    let under = if resource.is_empty() {
        String::new()
    } else {
        format!("/{resource}")
    };
    format!(
        "{base}{}{under}/operationStatuses/{id}?api-version={API_VERSION}",
        FakeAcr::registry_path()
    )
}

/// This fake's URL as the client addressed it (its `Host`).
fn own_base(headers: &HeaderMap) -> String {
    format!(
        "http://{}",
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
    )
}

/// Whether this read answers 404 (see `Inner::missing_first_read`).
fn take_missing(inner: &mut Inner) -> bool {
    if inner.missing_reads > 0 {
        inner.missing_reads -= 1;
        true
    } else {
        false
    }
}

/// The `provisioningState` a resource reads as now (see `Inner::header_less`).
fn read_state(inner: &mut Inner) -> &'static str {
    if inner.creating_reads > 0 {
        inner.creating_reads -= 1;
        "Creating"
    } else {
        "Succeeded"
    }
}

/// 201 with `Azure-AsyncOperation` (`InProgress` once) when asynchronous, else 200.
fn created(
    inner: &mut Inner,
    base: &str,
    path: &str,
    resource: impl Fn(&str) -> Value,
) -> Response {
    if let Some(reads) = inner.header_less {
        inner.creating_reads = reads;
        inner.missing_reads = usize::from(inner.missing_first_read);
        return (
            StatusCode::CREATED,
            [(header::RETRY_AFTER, "0")],
            axum::Json(resource("Creating")),
        )
            .into_response();
    }
    if inner.async_ops {
        let url = new_operation(inner, base, path, Operation::Async { polls_left: 1 });
        (
            StatusCode::CREATED,
            [
                ("azure-asyncoperation", url),
                (header::RETRY_AFTER.as_str(), "0".into()),
            ],
            axum::Json(resource("Creating")),
        )
            .into_response()
    } else {
        axum::Json(resource("Succeeded")).into_response()
    }
}

fn put_scope_map(
    inner: &mut Inner,
    base: &str,
    name: &str,
    body: &Map<String, Value>,
    widen: bool,
) -> Response {
    if !valid_name(name, true) {
        return bad_request("Scope map name must be 5-50 alphanumerics, '-' or '_'.");
    }
    let props = match properties(body, "ScopeMap") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(r) = check_keys(props, &["description", "actions"], "ScopeMapProperties") {
        return *r;
    }
    if let Some(d) = props.get("description")
        && d.as_str().is_none_or(|d| d.len() > 256)
    {
        return bad_request("The description must be a string of at most 256 characters.");
    }
    let Some(actions) = props.get("actions").and_then(Value::as_array) else {
        return bad_request("The 'actions' member is required.");
    };
    let mut stored = Vec::new();
    for a in actions {
        match a.as_str() {
            Some(s) if valid_action(s) => stored.push(s.to_owned()),
            _ => return bad_request(&format!("Invalid scope map action {a}.")),
        }
    }
    if stored.is_empty() {
        return bad_request("A scope map needs at least one action.");
    }
    if widen {
        stored.push("repositories/*/content/write".into());
    }
    let existed = inner
        .scope_maps
        .insert(name.to_owned(), stored.clone())
        .is_some();
    if existed {
        axum::Json(scope_map_json(name, &stored, "Succeeded")).into_response()
    } else {
        let name = name.to_owned();
        let path = format!("scopeMaps/{name}");
        created(inner, base, &path, move |state| {
            scope_map_json(&name, &stored, state)
        })
    }
}

fn put_token(
    inner: &mut Inner,
    base: &str,
    name: &str,
    body: &Map<String, Value>,
    other_id: bool,
) -> Response {
    if !valid_name(name, false) {
        return bad_request("Token name must be 5-50 alphanumerics or '-'.");
    }
    let props = match properties(body, "Token") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(r) = check_keys(
        props,
        &["scopeMapId", "status", "credentials"],
        "TokenProperties",
    ) {
        return *r;
    }
    let status = match props.get("status") {
        None => "enabled",
        Some(Value::String(s)) if s == "enabled" || s == "disabled" => s.as_str(),
        Some(_) => return bad_request("status must be 'enabled' or 'disabled'."),
    };
    let Some(scope_map_id) = props.get("scopeMapId").and_then(Value::as_str) else {
        return bad_request("The 'scopeMapId' member is required.");
    };
    let prefix = format!("{}/scopeMaps/", FakeAcr::registry_path()).to_ascii_lowercase();
    let map = scope_map_id
        .to_ascii_lowercase()
        .strip_prefix(&prefix)
        .map(str::to_owned)
        .and_then(|lower| {
            inner
                .scope_maps
                .keys()
                .find(|k| k.to_ascii_lowercase() == lower)
                .cloned()
        });
    let Some(map) = map else {
        return bad_request(&format!(
            "The scope map {scope_map_id} does not exist in this registry."
        ));
    };
    let existing = inner.tokens.get(name).cloned();
    if let Some((limit, status)) = inner.token_limit
        && existing.is_none()
        && inner.tokens.len() >= limit
    {
        return arm_error(
            status,
            "QuotaExceeded",
            "Quota exceeded for resource type tokens for the registry SKU Basic. Learn more about different SKU quotas and upgrade process: https://aka.ms/acr/tiers",
        );
    }
    let token = FakeToken {
        name: name.to_owned(),
        scope_map: map,
        status: status.to_owned(),
        password1: existing.as_ref().and_then(|t| t.password1.clone()),
        password2: existing.as_ref().and_then(|t| t.password2.clone()),
    };
    inner.tokens.insert(name.to_owned(), token.clone());
    let reply = move |state: &str| {
        let mut json = token_json(&token, state);
        if other_id {
            json["id"] = json!(resource_id("tokens", "registry-admin-token"));
        }
        json
    };
    if existing.is_some() {
        axum::Json(reply("Succeeded")).into_response()
    } else {
        created(inner, base, &format!("tokens/{name}"), reply)
    }
}

fn generate(
    inner: &mut Inner,
    base: &str,
    body: &Map<String, Value>,
    longer: bool,
    other_user: bool,
) -> Response {
    if let Err(r) = check_keys(
        body,
        &["tokenId", "name", "expiry"],
        "GenerateCredentialsParameters",
    ) {
        return *r;
    }
    let Some(token_id) = body.get("tokenId").and_then(Value::as_str) else {
        return bad_request("The 'tokenId' member is required.");
    };
    let prefix = format!("{}/tokens/", FakeAcr::registry_path());
    let Some(name) = token_id.strip_prefix(&prefix).map(str::to_owned) else {
        return bad_request("tokenId is not a token of this registry.");
    };
    let slots: Vec<&str> = match body.get("name") {
        None => vec!["password1", "password2"],
        Some(Value::String(s)) if s == "password1" || s == "password2" => vec![s.as_str()],
        Some(_) => return bad_request("name must be 'password1' or 'password2'."),
    };
    let expiry = match body.get("expiry") {
        None => None,
        Some(Value::String(s)) => match parse_time(s) {
            Some(t) => Some(t),
            None => return bad_request("expiry must be an ISO 8601 date-time."),
        },
        Some(_) => return bad_request("expiry must be a string."),
    };
    let expiry = expiry.map(|e| {
        if longer {
            e + Duration::from_secs(86_400)
        } else {
            e
        }
    });
    let async_ops = inner.async_ops;
    let Some(token) = inner.tokens.get_mut(&name) else {
        return not_found("token", &name);
    };
    let mut passwords = Vec::new();
    for slot in slots {
        let value = format!(
            "fake-acr-pw-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let password = Password {
            value: value.clone(),
            expiry,
        };
        if slot == "password1" {
            token.password1 = Some(password);
        } else {
            token.password2 = Some(password);
        }
        passwords.push(json!({
            "name": slot,
            "value": value,
            "expiry": expiry.map(format_time),
            "creationTime": format_time(SystemTime::now()),
        }));
    }
    let username = if other_user {
        REGISTRY_NAME.to_owned()
    } else {
        name
    };
    let result = json!({"username": username, "passwords": passwords});
    if async_ops {
        let location = new_operation(
            inner,
            base,
            "",
            Operation::Location {
                polls_left: 1,
                result,
            },
        );
        (
            StatusCode::ACCEPTED,
            [
                (header::LOCATION, location),
                (header::RETRY_AFTER, "0".into()),
            ],
        )
            .into_response()
    } else {
        axum::Json(result).into_response()
    }
}

fn poll(inner: &mut Inner, id: &str, stuck: bool) -> Response {
    let Some(op) = inner.operations.get_mut(id) else {
        return not_found("operation", id);
    };
    match op {
        Operation::Async { polls_left } => {
            if *polls_left > 0 || stuck {
                *polls_left = polls_left.saturating_sub(1);
                return (
                    [(header::RETRY_AFTER, "0")],
                    axum::Json(json!({"status": "InProgress"})),
                )
                    .into_response();
            }
            axum::Json(json!({"status": "Succeeded"})).into_response()
        }
        Operation::Location { polls_left, result } => {
            if *polls_left > 0 || stuck {
                *polls_left = polls_left.saturating_sub(1);
                return (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "0")]).into_response();
            }
            if result.is_null() {
                StatusCode::OK.into_response()
            } else {
                axum::Json(result.clone()).into_response()
            }
        }
    }
}

// --- Time ---------------------------------------------------------------------------------

/// `YYYY-MM-DDTHH:MM:SS.0000000Z`, as ARM writes them.
fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.0000000Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only: what the fake expects from Rise).
fn parse_time(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_609_430_399);
        assert_eq!(format_time(t), "2020-12-31T15:59:59.0000000Z");
        assert_eq!(parse_time("2020-12-31T15:59:59Z"), Some(t));
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert_eq!(parse_time("2020-12-31T15:59:59+01:00"), None);
    }

    #[test]
    fn actions() {
        assert!(valid_action("repositories/team/app/content/read"));
        assert!(valid_action("repositories/app/metadata/write"));
        assert!(!valid_action("repositories/app/content/admin"));
        assert!(!valid_action("repositories//content/read"));
        assert!(!valid_action("gateway/x/config/read"));
    }
}
