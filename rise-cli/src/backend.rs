//! The Rise backend's HTTP API as the client uses it, and its wire types.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::body::{BodyError, MAX_ANSWER_BYTES, read_bounded};
use crate::context::{Transport, vars};
use crate::error::{CliError, Hint};

/// The longest credential lifetime the client believes: registries' tokens last minutes to
/// days, so a longer `expires_in` is a broken backend (and a time past it cannot be computed
/// or written everywhere).
pub const MAX_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A Rise backend at a base URL.
#[derive(Debug, Clone)]
pub struct Backend {
    base: String,
    http: reqwest::Client,
}

/// `GET /auth/config`: what `rise login` needs to sign in.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfigResponse {
    #[serde(default)]
    pub issuers: Vec<PublishedIssuer>,
    #[serde(default)]
    pub default_issuer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishedIssuer {
    /// The issuer's name in the backend's configuration.
    pub name: String,
    /// The issuer URL (OIDC discovery lives under it).
    pub issuer: String,
    /// The OAuth client id the CLI signs in as.
    pub client_id: String,
    /// Scopes to ask for; the CLI's default when absent.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// `GET /auth/whoami`: the caller as the backend sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct WhoAmI {
    pub subject: String,
    pub issuer: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// What to ask `/registry/credentials` for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialQuery {
    pub project: String,
    /// Comma-separated actions (`pull`, `push,pull`); the backend's default (all allowed) if None.
    pub actions: Option<String>,
    pub ttl: Option<Duration>,
}

/// A brokered registry credential.
#[derive(Debug, Clone)]
pub struct Grant {
    pub registry_url: String,
    pub username: String,
    pub password: SecretString,
    /// Computed from `expires_in` on receipt, so the local clock's offset does not matter.
    pub expires_at: SystemTime,
    pub repository: String,
    /// `registry_url/repository`.
    pub image: String,
    pub project: String,
    pub actions: Vec<String>,
    pub warnings: Vec<String>,
}

impl Grant {
    /// `expires_at` as RFC 3339 (`2026-01-02T03:04:05Z`).
    pub fn expires_at_rfc3339(&self) -> Result<String, CliError> {
        format_rfc3339(self.expires_at).ok_or_else(|| {
            CliError::Other(
                "the credential's expiry cannot be written as a date; fetch a fresh credential"
                    .to_owned(),
            )
        })
    }
}

/// RFC 3339 to the second, or `None` for a time RFC 3339 cannot hold (before 1970, after 9999),
/// which `humantime` would panic on.
pub fn format_rfc3339(t: SystemTime) -> Option<String> {
    /// 9999-12-31T23:59:59Z.
    const LAST: u64 = 253_402_300_799;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs <= LAST).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// When a credential received at `received_at` that lasts `expires_in` seconds expires, if
/// that is believable (at most [`MAX_CREDENTIAL_LIFETIME`]).
pub fn credential_expiry(received_at: SystemTime, expires_in: u64) -> Option<SystemTime> {
    let lifetime = Duration::from_secs(expires_in);
    if lifetime > MAX_CREDENTIAL_LIFETIME {
        return None;
    }
    received_at.checked_add(lifetime)
}

/// A grant and the backend's response body as received (it holds the password).
#[derive(Debug)]
pub struct GrantResponse {
    pub grant: Grant,
    pub body: SecretString,
}

/// What to read from `GET /audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub project: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// `granted`, `denied` or `failed`.
    pub result: Option<String>,
    /// RFC 3339 or Unix seconds, as the backend takes them.
    pub since: Option<String>,
    pub until: Option<String>,
    pub after_id: i64,
    pub limit: u32,
}

/// A page of the audit log. Records are kept as the backend sent them (`--format jsonl` prints
/// them unchanged); [`AuditRecord`] reads the fields the table shows.
#[derive(Debug, Deserialize)]
pub struct AuditPage {
    pub records: Vec<serde_json::Value>,
    #[serde(default)]
    pub next_after_id: Option<i64>,
}

/// The fields of an audit record that `rise audit` shows in its table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditRecord {
    pub id: i64,
    pub time: String,
    pub operation: String,
    pub caller: AuditCaller,
    pub project: Option<String>,
    pub repository: Option<String>,
    pub actions_granted: Vec<String>,
    pub result: String,
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditCaller {
    pub issuer: String,
    pub subject: String,
    pub client_ip: Option<String>,
}

#[derive(Deserialize)]
struct CredentialsWire {
    credentials: CredentialsInner,
    repository: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    scope: Option<ScopeWire>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct CredentialsInner {
    registry_url: String,
    username: String,
    password: SecretString,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ScopeWire {
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorWire {
    error: String,
    message: String,
}

impl Backend {
    /// `url` must be an absolute `https://` URL (see [`normalize_url`]).
    pub fn new(url: &str, http: reqwest::Client, transport: Transport) -> Result<Self, CliError> {
        Ok(Self {
            base: normalize_url(url, transport)?,
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn auth_config(&self) -> Result<AuthConfigResponse, CliError> {
        let response = self
            .send(self.http.get(self.endpoint("/auth/config")))
            .await?;
        let response = self.check(response, None).await?;
        self.json(response).await
    }

    pub async fn whoami(&self, token: &SecretString) -> Result<WhoAmI, CliError> {
        let request = self
            .http
            .get(self.endpoint("/auth/whoami"))
            .bearer_auth(token.expose_secret());
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        self.json(response).await
    }

    pub async fn credentials(
        &self,
        token: &SecretString,
        query: &CredentialQuery,
    ) -> Result<GrantResponse, CliError> {
        let mut params = vec![("project", query.project.clone())];
        if let Some(actions) = &query.actions {
            params.push(("actions", actions.clone()));
        }
        if let Some(ttl) = query.ttl {
            params.push(("ttl", ttl.as_secs().to_string()));
        }
        let request = self
            .http
            .get(self.endpoint("/registry/credentials"))
            .query(&params)
            .bearer_auth(token.expose_secret());
        let received_at = SystemTime::now();
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        let body = String::from_utf8_lossy(&self.body(response).await?).into_owned();
        let wire: CredentialsWire = serde_json::from_str(&body).map_err(|e| {
            CliError::Unavailable(format!(
                "the Rise backend at {} sent credentials in an unexpected format ({}); is the backend a compatible version?",
                self.base,
                json_problem(&e)
            ))
        })?;
        let registry_url = strip_scheme(&wire.credentials.registry_url).to_owned();
        let image = wire
            .image
            .unwrap_or_else(|| format!("{registry_url}/{}", wire.repository));
        let expires_in = wire.credentials.expires_in;
        let expires_at = credential_expiry(received_at, expires_in).ok_or_else(|| {
            CliError::Unavailable(format!(
                "the Rise backend at {} sent an invalid expiry for the credential (expires in {expires_in} seconds, more than {} days); is the backend a compatible version?",
                self.base,
                MAX_CREDENTIAL_LIFETIME.as_secs() / 86_400
            ))
        })?;
        let grant = Grant {
            registry_url,
            username: wire.credentials.username,
            password: wire.credentials.password,
            expires_at,
            repository: wire.repository,
            image,
            project: wire.project.unwrap_or_else(|| query.project.clone()),
            actions: wire.scope.map(|s| s.actions).unwrap_or_default(),
            warnings: wire.warnings,
        };
        Ok(GrantResponse {
            grant,
            body: body.into(),
        })
    }

    /// One page of `GET /audit` (audit administrators only): records in id order after
    /// `query.after_id`, and the cursor of the next page if there is one.
    pub async fn audit(
        &self,
        token: &SecretString,
        query: &AuditQuery,
    ) -> Result<AuditPage, CliError> {
        let mut params: Vec<(&str, String)> = vec![
            ("format", "json".to_owned()),
            ("limit", query.limit.to_string()),
            ("after_id", query.after_id.to_string()),
        ];
        for (name, value) in [
            ("project", &query.project),
            ("subject", &query.subject),
            ("issuer", &query.issuer),
            ("result", &query.result),
            ("since", &query.since),
            ("until", &query.until),
        ] {
            if let Some(v) = value {
                params.push((name, v.clone()));
            }
        }
        let request = self
            .http
            .get(self.endpoint("/audit"))
            .query(&params)
            .bearer_auth(token.expose_secret());
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        self.json(response).await
    }

    /// `POST /grants/revocations` with `body`; the revocation the backend recorded.
    pub async fn revoke_grants(
        &self,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        let request = self
            .http
            .post(self.endpoint("/grants/revocations"))
            .json(body)
            .bearer_auth(token.expose_secret());
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        self.json(response).await
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        request.send().await.map_err(|e| self.unreachable(&e))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, CliError> {
        let bytes = self.body(response).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Unavailable(format!(
                "the Rise backend at {} answered in an unexpected format ({}); is the backend a compatible version?",
                self.base,
                json_problem(&e)
            ))
        })
    }

    /// Turn a non-2xx answer into the backend's own sentence, plus what to do next where the
    /// sentence cannot know it (signing in again).
    async fn check(
        &self,
        response: reqwest::Response,
        token: Option<&SecretString>,
    ) -> Result<reqwest::Response, CliError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // An error body that cannot be read is an error without a message; one too large to
        // read is the backend's problem to report.
        let bytes = match read_bounded(response, MAX_ANSWER_BYTES).await {
            Ok(bytes) => bytes,
            Err(BodyError::Read(_)) => Vec::new(),
            Err(e) => return Err(self.body_error(e)),
        };
        match serde_json::from_slice::<ErrorWire>(&bytes) {
            Ok(err) => {
                let hint = match status.as_u16() {
                    401 if token.is_some() => Hint(Some(format!(
                        "sign in again with `rise login --backend {}` (in CI, check RISE_TOKEN)",
                        self.base
                    ))),
                    _ => Hint::default(),
                };
                Err(CliError::Backend {
                    status: status.as_u16(),
                    code: printable(&err.error, 64),
                    message: printable(&err.message, MAX_SERVER_TEXT),
                    hint,
                })
            }
            Err(_) if status.as_u16() == 404 => Err(CliError::Unavailable(format!(
                "{} does not look like a Rise backend (HTTP 404 without a Rise error); check the --backend URL",
                self.base
            ))),
            Err(_) => Err(CliError::Unavailable(format!(
                "the Rise backend at {} answered HTTP {} without an error message; check the --backend URL or try again later",
                self.base,
                status.as_u16()
            ))),
        }
    }

    /// The body of an answer, up to [`MAX_ANSWER_BYTES`].
    async fn body(&self, response: reqwest::Response) -> Result<Vec<u8>, CliError> {
        read_bounded(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| self.body_error(e))
    }

    fn body_error(&self, e: BodyError) -> CliError {
        match e {
            BodyError::Read(e) => self.unreachable(&e),
            too_large @ BodyError::TooLarge(_) => CliError::Unavailable(format!(
                "cannot use the answer of the Rise backend at {}: {}; check the --backend URL",
                self.base,
                too_large.reason()
            )),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        CliError::Unavailable(format!(
            "cannot reach the Rise backend at {}: {}; check the URL and that the backend is running",
            self.base,
            describe_reqwest(e)
        ))
    }
}

/// What is wrong with a JSON body, without quoting it (it may hold secrets).
/// The most characters of a server's own text (an error message) shown to the user.
pub const MAX_SERVER_TEXT: usize = 1000;

/// `text` from a server, fit for a terminal: control characters (escape sequences that could
/// rewrite the screen or the window title, line breaks that could fake output) become `?`, and
/// at most `max` characters are kept.
pub fn printable(text: &str, max: usize) -> String {
    let mut shown: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        shown.push('…');
    }
    shown
}

pub fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "fields missing or of the wrong type",
        serde_json::error::Category::Eof => "cut short",
        serde_json::error::Category::Io => "unreadable",
    }
}

/// A short reason for a transport failure, without the URL (the caller names it).
pub fn describe_reqwest(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "the request timed out"
    } else if e.is_connect() {
        "the connection failed"
    } else if e.is_decode() || e.is_body() {
        "the response was cut short"
    } else {
        "the request failed"
    }
}

/// `https://rise.example.com/` -> `https://rise.example.com`. Refuses relative URLs, schemes
/// other than http(s), a user name or password in the URL (it would be stored and shown), and
/// `http://` to another machine unless `transport` allows it (the URL receives bearer tokens).
/// Error messages never repeat a user name or password.
pub fn normalize_url(url: &str, transport: Transport) -> Result<String, CliError> {
    let trimmed = url.trim().trim_end_matches('/');
    let shown = without_userinfo(trimmed);
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| {
        CliError::Input(format!(
            "invalid backend URL {shown:?}: give an absolute URL such as https://rise.example.com"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(CliError::Input(format!(
            "invalid backend URL {shown:?}: it must start with https:// (or http:// for this machine)"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(CliError::Input(format!(
            "invalid backend URL {shown:?}: remove the user name and password from it (sign in with `rise login`, or set RISE_TOKEN)"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(CliError::Input(format!(
            "invalid backend URL {shown:?}: remove the query or fragment"
        )));
    }
    if !may_carry_tokens(&parsed, transport) {
        return Err(CliError::Input(format!(
            "the backend URL {shown:?} uses plain http:// to another machine, which would send your token in clear text: use https://, or set {}=1 on a trusted test network",
            vars::INSECURE_HTTP_BACKEND
        )));
    }
    Ok(trimmed.to_owned())
}

/// Whether a token may be sent to `url`: over https, or over http to this machine (127.0.0.0/8,
/// ::1, localhost), or over http anywhere when the user allowed it.
pub fn may_carry_tokens(url: &reqwest::Url, transport: Transport) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => {
            transport == Transport::InsecureHttpAllowed
                || url.host_str().is_some_and(is_loopback_host)
        }
        _ => false,
    }
}

/// `localhost`, 127.0.0.0/8 or ::1 (a host name without port; IPv6 in brackets or not).
pub fn is_loopback_host(host: &str) -> bool {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `url` with any `user:password@` replaced by `***@`, for messages.
pub fn without_userinfo(url: &str) -> Cow<'_, str> {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}***@{}", &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

/// `https://host:5000/` -> `host:5000`.
pub fn strip_scheme(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{FakeServer, credentials_body, route};

    const STRICT: Transport = Transport::HttpsOrLoopback;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("https://rise.example.com/", STRICT).expect("valid"),
            "https://rise.example.com"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:3000", STRICT).expect("valid"),
            "http://127.0.0.1:3000"
        );
        for bad in ["rise.example.com", "ftp://x", "https://x/?a=b", ""] {
            assert!(normalize_url(bad, STRICT).is_err(), "{bad}");
        }
        assert_eq!(strip_scheme("https://h:5000/"), "h:5000");
        assert_eq!(strip_scheme("h"), "h");
    }

    #[test]
    fn plain_http_only_to_this_machine_unless_allowed() {
        for ok in [
            "http://127.0.0.1:3000",
            "http://127.8.9.10",
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://[::1]:3000",
            "https://rise.example.com",
        ] {
            assert!(normalize_url(ok, STRICT).is_ok(), "{ok}");
        }
        for remote in [
            "http://rise.example.com",
            "http://10.0.0.1:3000",
            "http://[::2]:3000",
            "http://localhost.example.com",
        ] {
            let err = normalize_url(remote, STRICT).expect_err(remote);
            assert!(matches!(err, CliError::Input(_)), "{remote}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("clear text"), "{msg}");
            assert!(msg.contains("RISE_INSECURE_HTTP_BACKEND=1"), "{msg}");
            assert_eq!(
                normalize_url(remote, Transport::InsecureHttpAllowed).expect("opted in"),
                remote
            );
        }
    }

    #[test]
    fn urls_with_credentials_are_refused_without_repeating_them() {
        for url in [
            "http://admin:hunter2@127.0.0.1:9",
            "https://admin:hunter2@rise.example.com/",
            "https://hunter2@rise.example.com",
            "admin:hunter2@rise.example.com",
            "http://admin:hunter2@[broken",
        ] {
            for transport in [STRICT, Transport::InsecureHttpAllowed] {
                let err = normalize_url(url, transport).expect_err(url);
                assert!(matches!(err, CliError::Input(_)), "{url}: {err}");
                let msg = err.to_string();
                assert!(!msg.contains("hunter2"), "{url}: {msg}");
            }
        }
        let msg = normalize_url("http://admin:hunter2@127.0.0.1:9", STRICT)
            .expect_err("userinfo")
            .to_string();
        assert_eq!(
            msg,
            "invalid backend URL \"http://***@127.0.0.1:9\": remove the user name and password from it (sign in with `rise login`, or set RISE_TOKEN)"
        );
    }

    async fn credentials_expiring_in(expires_in: u64) -> Result<GrantResponse, CliError> {
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("127.0.0.1:5000", expires_in),
        )]);
        let backend = Backend::new(&server.url, reqwest::Client::new(), STRICT).expect("backend");
        let query = CredentialQuery {
            project: "my-app".into(),
            actions: None,
            ttl: None,
        };
        backend
            .credentials(&"token".to_owned().into(), &query)
            .await
    }

    #[tokio::test]
    async fn a_backend_message_cannot_drive_the_terminal_or_flood_it() {
        let message = format!("\u{1b}]0;owned\u{7}denied\nfake line{}", "x".repeat(5000));
        let body = serde_json::json!({"error": "forbidden\u{1b}[2J", "message": message});
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            403,
            &body.to_string(),
        )]);
        let backend = Backend::new(&server.url, reqwest::Client::new(), STRICT).expect("backend");
        let query = CredentialQuery {
            project: "my-app".into(),
            actions: None,
            ttl: None,
        };
        let err = backend
            .credentials(&"token".to_owned().into(), &query)
            .await
            .expect_err("refused");
        let CliError::Backend { code, message, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(code, "forbidden?[2J");
        assert!(
            message.starts_with("?]0;owned?denied?fake line"),
            "{message}"
        );
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert_eq!(
            message.chars().count(),
            MAX_SERVER_TEXT + 1,
            "cut, with an ellipsis"
        );
    }

    #[tokio::test]
    async fn answers_larger_than_a_mebibyte_are_refused_naming_the_backend() {
        let huge = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_ANSWER_BYTES));
        let server = FakeServer::start(vec![
            route("GET /auth/config", 200, &huge),
            route("GET /registry/credentials", 200, &huge),
            route("GET /auth/whoami", 500, &huge),
        ]);
        let backend = Backend::new(&server.url, reqwest::Client::new(), STRICT).expect("backend");
        let token: SecretString = "token".to_owned().into();
        let query = CredentialQuery {
            project: "my-app".into(),
            actions: None,
            ttl: None,
        };
        let errors = [
            backend.auth_config().await.map(|_| ()),
            backend.credentials(&token, &query).await.map(|_| ()),
            backend.whoami(&token).await.map(|_| ()),
        ];
        for err in errors {
            let err = err.expect_err("too large");
            assert!(matches!(err, CliError::Unavailable(_)), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot use the answer of the Rise backend at {}: it sent more than 1 MiB; check the --backend URL",
                    server.url
                )
            );
        }
    }

    #[tokio::test]
    async fn an_unbelievable_expiry_is_an_error_not_a_panic() {
        for expires_in in [u64::MAX, 10_000_000_000_000, 11 * 366 * 24 * 3600] {
            let err = credentials_expiring_in(expires_in)
                .await
                .expect_err("refused");
            assert!(matches!(err, CliError::Unavailable(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("sent an invalid expiry"), "{msg}");
            assert!(!msg.contains("s3cret-password"), "{msg}");
        }
        let ok = credentials_expiring_in(3600)
            .await
            .expect("an hour is fine");
        let left = ok
            .grant
            .expires_at
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3500));
        assert!(ok.grant.expires_at_rfc3339().is_ok());
    }

    #[test]
    fn times_rfc3339_cannot_hold_are_not_formatted() {
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_800_000_000)).as_deref(),
            Some("2027-01-15T08:00:00Z")
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_799)).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            None
        );
        assert_eq!(format_rfc3339(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert!(credential_expiry(SystemTime::now(), u64::MAX).is_none());
        assert!(credential_expiry(SystemTime::now(), 3600).is_some());
    }
}
