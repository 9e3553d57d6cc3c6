//! A real OpenID Provider (`oidc-provider` 9.x on node), from `tests/fixtures/oidc/server.mjs`.
//!
//! Facts learned building it (oidc-provider 9.13.3):
//! - Resource indicators must be absolute URIs: `resource=rise` is answered with `invalid_target`
//!   ("resource indicator must be an absolute URI"). The fixture's resources are `urn:rise`
//!   (RS256), `urn:rise:es256`, `urn:rise:eddsa` (all with `aud: "rise"`) and
//!   `urn:other-audience` (RS256, `aud: "other-audience"`); [`resource_uri`] maps the short names
//!   `rise`, `rise-es256`, `rise-eddsa`, `other-audience` to them. `aud` is a single string.
//! - Access tokens are `typ: at+jwt`, with `sub` = the account (or the client id for
//!   client_credentials), `client_id`, `scope`, `groups`, `jti`, `iat`, `exp` (1 h), `iss`.
//! - oidc-provider always asks native clients for consent (`native_client_prompt`); the fixture
//!   removes that check and grants what is asked, so a headless login is one `login` interaction.
//! - Refresh tokens of the public `rise-cli` client rotate on every use, and a refresh request
//!   that fails (e.g. `invalid_target` for a resource that was not granted) still consumes the
//!   refresh token: the next use gets `invalid_grant`.
//! - `provider.jwks` accepts private keys only, so keys kept published after a rotation are
//!   served by the fixture itself.
//! - oidc-provider logs notices with `console.info`, i.e. to stdout; the fixture sends them to
//!   stderr so that stdout carries only `READY <issuer>`. It warns "Unsupported runtime" on node 20
//!   and works.

use std::process::Stdio;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;
use tokio::process::Command;

use super::process::{ChildProcess, STARTUP_TIMEOUT, http_client, require_binary};
use super::{SETUP_HINT, fixtures_dir};

/// Secret of the confidential clients `ci-app` and `ci-other`.
pub const CI_CLIENT_SECRET: &str = "ci-secret";
/// The public client used by the CLI (device code, authorization code, refresh token).
pub const CLI_CLIENT_ID: &str = "rise-cli";
/// Audience of the Rise resources (unless `OidcOptions::audience` says otherwise).
pub const DEFAULT_AUDIENCE: &str = "rise";

/// The resource indicator for a short resource name (`rise`, `rise-es256`, `rise-eddsa`,
/// `other-audience`); anything containing `:` is taken as a URI already.
pub fn resource_uri(resource: &str) -> String {
    match resource {
        "rise" => "urn:rise".to_owned(),
        "rise-es256" => "urn:rise:es256".to_owned(),
        "rise-eddsa" => "urn:rise:eddsa".to_owned(),
        "other-audience" => "urn:other-audience".to_owned(),
        uri if uri.contains(':') => uri.to_owned(),
        other => format!("urn:{other}"),
    }
}

/// Options for [`OidcProvider::start_with`].
#[derive(Debug, Clone, Default)]
pub struct OidcOptions {
    /// `aud` of the Rise resources (default `rise`).
    pub audience: Option<String>,
    /// Extra accounts: id -> groups (beside alice, bob and mallory).
    pub accounts: Vec<(String, Vec<String>)>,
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub raw: Value,
}

/// The answer to `POST /device/auth`.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub interval: u64,
    pub raw: Value,
}

/// How long one of the two starts of oidc-provider may take (~0.5 s on an idle machine).
const OIDC_START_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(STARTUP_TIMEOUT.as_secs() / 2);

/// A copy of `cmd` (program, arguments, environment changes, working directory) to spawn again.
fn clone_command(cmd: &Command) -> Command {
    let std = cmd.as_std();
    let mut copy = Command::new(std.get_program());
    copy.args(std.get_args());
    for (key, value) in std.get_envs() {
        match value {
            Some(value) => copy.env(key, value),
            None => copy.env_remove(key),
        };
    }
    if let Some(dir) = std.get_current_dir() {
        copy.current_dir(dir);
    }
    copy.stdin(Stdio::null());
    copy
}

/// A running oidc-provider; killed on drop.
pub struct OidcProvider {
    process: ChildProcess,
    issuer: String,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts the provider on a free port with the default options.
    pub async fn start() -> Self {
        Self::start_with(OidcOptions::default()).await
    }

    pub async fn start_with(options: OidcOptions) -> Self {
        let dir = fixtures_dir().join("oidc");
        let script = dir.join("server.mjs");
        assert!(script.is_file(), "{} is missing", script.display());
        let package = dir.join("node_modules/oidc-provider/package.json");
        assert!(
            package.is_file(),
            "{} is missing (npm packages not installed): {SETUP_HINT}",
            package.display()
        );
        let node = require_binary("node");

        let mut cmd = Command::new(node);
        cmd.arg(&script)
            .args(["--port", "0"])
            .current_dir(&dir)
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::null());
        if let Some(audience) = &options.audience {
            cmd.env("OIDC_AUDIENCE", audience);
        }
        if !options.accounts.is_empty() {
            let accounts: serde_json::Map<String, Value> = options
                .accounts
                .iter()
                .map(|(id, groups)| (id.clone(), Value::from(groups.clone())))
                .collect();
            cmd.env("OIDC_ACCOUNTS", Value::Object(accounts).to_string());
        } else {
            cmd.env_remove("OIDC_ACCOUNTS");
        }

        // A start that hangs (seen once in CI: no READY within 30 s, every other start of the
        // run fine) gets one fresh attempt; the report of the failed one is printed first.
        let mut attempt = 0;
        let (process, ready) = loop {
            attempt += 1;
            let mut process =
                ChildProcess::spawn("oidc-provider", clone_command(&cmd)).expect("spawning node");
            match process
                .wait_for_line(
                    "waiting for READY",
                    |line| line.starts_with("READY "),
                    OIDC_START_TIMEOUT,
                )
                .await
            {
                Ok(ready) => break (process, ready),
                Err(err) if attempt < 2 => {
                    eprintln!("oidc-provider did not start, trying once more: {err:#}");
                }
                Err(err) => panic!("oidc-provider did not start (twice): {err:#}"),
            }
        };
        let issuer = ready["READY ".len()..].trim().to_owned();
        Self {
            process,
            issuer,
            http: http_client(),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn device_authorization_endpoint(&self) -> String {
        format!("{}/device/auth", self.issuer)
    }

    /// Everything the provider printed so far.
    pub fn logs(&self) -> String {
        self.process.logs().text()
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json(&self.discovery_url()).await
    }

    /// The published JWKS.
    pub async fn jwks(&self) -> Value {
        self.get_json(&self.jwks_uri()).await
    }

    /// The `kid`s of the published JWKS.
    pub async fn published_kids(&self) -> Vec<String> {
        kids(&self.jwks().await["keys"])
    }

    /// Verifies `token` against the currently published JWKS (by `kid`), the issuer and
    /// `audience`; returns the claims.
    pub async fn verify_jwt(&self, token: &str, audience: &str) -> Result<Value> {
        use jsonwebtoken::jwk::JwkSet;
        use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

        let header = decode_header(token).context("JWT header")?;
        let kid = header.kid.context("JWT without kid")?;
        let jwks: JwkSet = serde_json::from_value(self.jwks().await).context("parsing the JWKS")?;
        let jwk = jwks
            .find(&kid)
            .with_context(|| format!("kid {kid} is not published"))?;
        let key = DecodingKey::from_jwk(jwk).context("JWK to key")?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[self.issuer.as_str()]);
        let data = decode::<Value>(token, &key, &validation).context("verifying the JWT")?;
        Ok(data.claims)
    }

    /// An access token (a JWT) for a confidential client (`ci-app`, `ci-other`) through the
    /// client_credentials grant; `resource` is a short name or URI (see [`resource_uri`]).
    pub async fn client_credentials_token(&self, client_id: &str, resource: &str) -> String {
        let resource = resource_uri(resource);
        let (status, body) = self
            .token_request(
                Some((client_id, CI_CLIENT_SECRET)),
                &[
                    ("grant_type", "client_credentials"),
                    ("resource", &resource),
                ],
            )
            .await;
        assert!(
            status.is_success(),
            "client_credentials for {client_id} / {resource}: {status} {body}"
        );
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// A raw request to the token endpoint (Basic client authentication when `basic` is set).
    /// Returns the status and the JSON body, for asserting on errors.
    pub async fn token_request(
        &self,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(self.token_endpoint()).form(form);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.expect("POST /token");
        let status = response.status();
        let body = response.json::<Value>().await.expect("JSON from /token");
        (status, body)
    }

    /// Replaces the signing keys with fresh ones (new `kid`s) on the same port; returns the new
    /// kids. Afterwards only the new keys are published.
    pub async fn rotate_keys(&self) -> Vec<String> {
        self.rotate(false).await
    }

    /// Like [`OidcProvider::rotate_keys`], but the previous public keys stay published (after the
    /// new ones), as during a real rollover.
    pub async fn rotate_keys_keeping_previous(&self) -> Vec<String> {
        self.rotate(true).await
    }

    async fn rotate(&self, keep_previous: bool) -> Vec<String> {
        let url = format!(
            "{}/__test/rotate{}",
            self.issuer,
            if keep_previous {
                "?keep_previous=1"
            } else {
                ""
            }
        );
        let response = self
            .http
            .post(url)
            .send()
            .await
            .expect("POST /__test/rotate");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON from /__test/rotate");
        assert_eq!(status, StatusCode::OK, "rotation failed: {body}");
        kids(&body["kids"])
    }

    /// Starts a device authorization for `rise-cli` (`resource`: short name or URI).
    pub async fn device_authorization(
        &self,
        scope: &str,
        resource: Option<&str>,
    ) -> DeviceAuthorization {
        let resource = resource.map(resource_uri);
        let mut form = vec![("client_id", CLI_CLIENT_ID), ("scope", scope)];
        if let Some(resource) = &resource {
            form.push(("resource", resource));
        }
        let response = self
            .http
            .post(self.device_authorization_endpoint())
            .form(&form)
            .send()
            .await
            .expect("POST /device/auth");
        let status = response.status();
        let raw: Value = response.json().await.expect("JSON from /device/auth");
        assert!(status.is_success(), "device authorization: {status} {raw}");
        let field = |name: &str| {
            raw[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {raw}"))
                .to_owned()
        };
        DeviceAuthorization {
            device_code: field("device_code"),
            user_code: field("user_code"),
            verification_uri: field("verification_uri"),
            verification_uri_complete: field("verification_uri_complete"),
            interval: raw["interval"].as_u64().unwrap_or(5),
            raw,
        }
    }

    /// Plays the user's part of the device flow without a browser: enters `user_code` at the
    /// verification page and logs in as `account`. Fails for an unknown account or code.
    pub async fn approve_device(&self, user_code: &str, account: &str) -> Result<()> {
        let mut browser = Browser::new(&self.issuer);

        let page = browser.get("/device").await?;
        let xsrf = extract_input_value(&page.body, "xsrf")
            .with_context(|| format!("no xsrf input on /device: {}", page.body))?;
        let confirm = browser
            .post(
                "/device",
                &[
                    ("xsrf", xsrf.as_str()),
                    ("user_code", user_code),
                    ("confirm", "yes"),
                ],
            )
            .await?;
        let mut location = confirm.redirect().with_context(|| {
            format!(
                "entering user code {user_code}: {} {}",
                confirm.status, confirm.body
            )
        })?;

        // login (and consent, should the provider ask for it), then the resume redirect.
        for _ in 0..6 {
            if location.contains("/interaction/") {
                location = answer_interaction(&mut browser, &location, account).await?;
            } else {
                let page = browser.get(&location).await?;
                if let Some(next) = page.redirect() {
                    location = next;
                    continue;
                }
                if page.status.is_success() && page.body.contains("Sign-in Success") {
                    return Ok(());
                }
                bail!(
                    "device login as {account} failed at {location}: {} {}",
                    page.status,
                    html_text(&page.body)
                );
            }
        }
        bail!("device login as {account}: too many redirects")
    }

    /// Plays the browser's part of an authorization-code sign-in: opens `authorize_url` (built
    /// by the client), logs in as `account`, and returns the redirect to the client's
    /// `redirect_uri` (with `code` and `state`) without following it.
    pub async fn approve_authorization(
        &self,
        authorize_url: &str,
        account: &str,
    ) -> Result<String> {
        let mut browser = Browser::new(&self.issuer);
        let mut location = authorize_url.to_owned();
        for _ in 0..8 {
            if !location.starts_with(&self.issuer) && !location.starts_with('/') {
                return Ok(location);
            }
            if location.contains("/interaction/") {
                location = answer_interaction(&mut browser, &location, account).await?;
            } else {
                let page = browser.get(&location).await?;
                location = page.redirect().with_context(|| {
                    format!(
                        "authorization at {location} did not redirect: {} {}",
                        page.status,
                        html_text(&page.body)
                    )
                })?;
            }
        }
        bail!("authorization as {account}: too many redirects")
    }

    /// Polls the token endpoint for a device code once.
    pub async fn device_token(&self, device_code: &str) -> (StatusCode, Value) {
        self.token_request(
            None,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
                ("client_id", CLI_CLIENT_ID),
            ],
        )
        .await
    }

    /// Tokens of `account` for `rise-cli` through the whole device flow (scope
    /// `openid groups offline_access`, so a refresh token is included).
    pub async fn user_tokens(&self, account: &str, resource: &str) -> TokenSet {
        let authorization = self
            .device_authorization("openid groups offline_access", Some(resource))
            .await;
        self.approve_device(&authorization.user_code, account)
            .await
            .unwrap_or_else(|err| panic!("approving the device login of {account}: {err:#}"));
        let (status, raw) = self.device_token(&authorization.device_code).await;
        assert!(
            status.is_success(),
            "device token for {account}: {status} {raw}"
        );
        token_set(raw)
    }

    /// An access token (a JWT) of `account` (alice, bob, mallory, ...) for `resource`.
    pub async fn user_token(&self, account: &str, resource: &str) -> String {
        self.user_tokens(account, resource).await.access_token
    }

    /// Uses a refresh token of `rise-cli` (it rotates: use the returned one next time).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet> {
        let (status, raw) = self
            .token_request(
                None,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", CLI_CLIENT_ID),
                ],
            )
            .await;
        if !status.is_success() {
            bail!("refresh: {status} {raw}");
        }
        Ok(token_set(raw))
    }

    async fn get_json(&self, url: &str) -> Value {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        let status = response.status();
        assert!(status.is_success(), "GET {url}: {status}");
        response
            .json()
            .await
            .unwrap_or_else(|err| panic!("JSON from {url}: {err}"))
    }
}

fn token_set(raw: Value) -> TokenSet {
    let text = |name: &str| raw[name].as_str().map(str::to_owned);
    TokenSet {
        access_token: text("access_token").unwrap_or_else(|| panic!("no access_token in {raw}")),
        refresh_token: text("refresh_token"),
        id_token: text("id_token"),
        raw,
    }
}

fn kids(keys: &Value) -> Vec<String> {
    keys.as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|key| key.as_str().or_else(|| key["kid"].as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes the header and the claims of a JWT without verifying it.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let mut next_json = |what: &str| -> Value {
        let part = parts
            .next()
            .unwrap_or_else(|| panic!("JWT without {what}: {token}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|err| panic!("JWT {what} is not base64url: {err}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("JWT {what} is not JSON: {err}"))
    };
    let header = next_json("header");
    let claims = next_json("claims");
    (header, claims)
}

/// `value` of `<input ... name="NAME" value="VALUE">` in a page of the provider.
fn extract_input_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"");
    html.match_indices(&marker).find_map(|(at, _)| {
        let start = html[..at].rfind('<')?;
        let end = at + html[at..].find('>')?;
        let tag = &html[start..end];
        let value_at = tag.find("value=\"")? + "value=\"".len();
        let value_end = value_at + tag[value_at..].find('"')?;
        Some(tag[value_at..value_end].to_owned())
    })
}

/// Visible text of an HTML page, for error messages.
fn html_text(html: &str) -> String {
    let body = html.find("<body").map_or(html, |at| &html[at..]);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Just enough of a browser for the provider's pages: cookies by path, redirects not followed.
struct Browser {
    origin: String,
    http: reqwest::Client,
    /// (name, path, value)
    cookies: Vec<(String, String, String)>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Page {
    fn redirect(&self) -> Option<String> {
        self.status
            .is_redirection()
            .then(|| self.location.clone())
            .flatten()
    }
}

impl Browser {
    fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            http: http_client(),
            cookies: Vec::new(),
        }
    }

    /// Absolute URL and path of `target` (absolute URL or absolute path).
    fn resolve(&self, target: &str) -> Result<(String, String)> {
        if let Some(path) = target.strip_prefix(&self.origin) {
            Ok((target.to_owned(), path.to_owned()))
        } else if target.starts_with('/') {
            Ok((format!("{}{target}", self.origin), target.to_owned()))
        } else {
            Err(anyhow!("unexpected URL {target} (origin {})", self.origin))
        }
    }

    fn cookie_header(&self, path: &str) -> Option<String> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let matching: Vec<String> = self
            .cookies
            .iter()
            .filter(|(_, cookie_path, _)| path_matches(cookie_path, path))
            .map(|(name, _, value)| format!("{name}={value}"))
            .collect();
        (!matching.is_empty()).then(|| matching.join("; "))
    }

    fn store_cookies(&mut self, response: &reqwest::Response) {
        for header in response.headers().get_all(SET_COOKIE) {
            let Ok(header) = header.to_str() else {
                continue;
            };
            let mut attributes = header.split(';').map(str::trim);
            let Some((name, value)) = attributes.next().and_then(|pair| pair.split_once('='))
            else {
                continue;
            };
            let mut path = "/".to_owned();
            let mut expired = value.is_empty();
            for attribute in attributes {
                let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
                match key.to_ascii_lowercase().as_str() {
                    "path" => path = val.to_owned(),
                    "expires" if val.contains("1970") => expired = true,
                    "max-age" if val.trim() == "0" => expired = true,
                    _ => {}
                }
            }
            self.cookies.retain(|(n, p, _)| !(n == name && *p == path));
            if !expired {
                self.cookies.push((name.to_owned(), path, value.to_owned()));
            }
        }
    }

    async fn get(&mut self, target: &str) -> Result<Page> {
        let (url, path) = self.resolve(target)?;
        let mut request = self.http.get(&url);
        if let Some(cookies) = self.cookie_header(&path) {
            request = request.header(COOKIE, cookies);
        }
        self.finish(request, &url).await
    }

    async fn post(&mut self, target: &str, form: &[(&str, &str)]) -> Result<Page> {
        let (url, path) = self.resolve(target)?;
        let mut request = self.http.post(&url).form(form);
        if let Some(cookies) = self.cookie_header(&path) {
            request = request.header(COOKIE, cookies);
        }
        self.finish(request, &url).await
    }

    async fn finish(&mut self, request: reqwest::RequestBuilder, url: &str) -> Result<Page> {
        let response = request
            .send()
            .await
            .with_context(|| format!("request to {url}"))?;
        self.store_cookies(&response);
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response
            .text()
            .await
            .with_context(|| format!("body of {url}"))?;
        Ok(Page {
            status,
            location,
            body,
        })
    }
}

/// RFC 6265 §5.1.4 path-match.
fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

/// Answers one devInteractions page (login as `account`, or consent) and returns where the
/// provider redirects next.
async fn answer_interaction(
    browser: &mut Browser,
    location: &str,
    account: &str,
) -> Result<String> {
    let page = browser.get(location).await?;
    let prompt = extract_input_value(&page.body, "prompt").unwrap_or_default();
    let form: Vec<(&str, &str)> = match prompt.as_str() {
        "login" => vec![
            ("prompt", "login"),
            ("login", account),
            ("password", "password"),
        ],
        "consent" => vec![("prompt", "consent")],
        _ => bail!("unexpected interaction page {location}: {}", page.body),
    };
    let answer = browser.post(location, &form).await?;
    answer
        .redirect()
        .with_context(|| format!("interaction {prompt}: {} {}", answer.status, answer.body))
}
