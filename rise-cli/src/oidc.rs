//! Signing a person in against an OpenID Connect provider: the device authorization grant
//! (RFC 8628), the authorization code grant with PKCE (RFC 7636) and a loopback redirect
//! (RFC 8252), refresh (RFC 6749 §6) and revocation (RFC 7009). The CLI is a public client: it
//! sends its `client_id` and no secret.
//!
//! The issuer and every endpoint that receives a code or token must be `https://` (or `http://`
//! on this machine, or anywhere with `RISE_INSECURE_HTTP_BACKEND`), like the backend URL.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{describe_reqwest, json_problem, may_carry_tokens, without_userinfo};
use crate::body::{BodyError, MAX_ANSWER_BYTES, read_bounded};
use crate::context::{Transport, vars};
use crate::error::CliError;

/// Scopes asked for when the backend names none: an ID token and a refresh token.
pub const DEFAULT_SCOPES: &str = "openid offline_access";
/// Polling interval when the provider names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds on the polling interval, whatever the provider says (0 would hammer it; a huge one
/// would never poll).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The longest wait for a person to confirm a device code: providers give minutes; a longer
/// (or absurd) `expires_in` is cut to this.
const MAX_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(3600);
/// How long `rise login --browser` waits for the browser to come back.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one connection to the sign-in redirect listener may take to send its request and
/// take the answer: a browser does at once; an idle connection (a browser's speculative
/// preconnect, any process on this machine) is closed then.
const CALLBACK_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of the provider's discovery document the client uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

/// Tokens from the provider.
#[derive(Debug, Deserialize)]
pub struct TokenSet {
    pub access_token: SecretString,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub id_token: Option<SecretString>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// What the person must do to finish a device sign-in.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
}

#[derive(Deserialize)]
struct DeviceAuthorizationWire {
    device_code: SecretString,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthErrorWire {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Why a refresh failed: the refresh token is no good (sign in again) or the provider is away.
#[derive(Debug)]
pub enum RefreshError {
    Rejected,
    Failed(CliError),
}

/// OIDC discovery (`<issuer>/.well-known/openid-configuration`). The issuer and the endpoints
/// it publishes must be fit to carry tokens (see the module docs).
pub async fn discover(
    http: &reqwest::Client,
    transport: Transport,
    issuer: &str,
) -> Result<ProviderMetadata, CliError> {
    check_provider_url(issuer, "issuer URL", transport)?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let unavailable = |why: &str| {
        CliError::Unavailable(format!(
            "cannot read the sign-in configuration of {issuer}: {why}; ask the Rise operator to check the issuer URL"
        ))
    };
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unavailable(describe_reqwest(&e)))?;
    if !response.status().is_success() {
        return Err(unavailable(&format!("HTTP {}", response.status().as_u16())));
    }
    let bytes = read_bounded(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| unavailable(&e.reason()))?;
    let meta: ProviderMetadata =
        serde_json::from_slice(&bytes).map_err(|e| unavailable(json_problem(&e)))?;
    if meta.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(unavailable(&format!(
            "it names itself {:?}, not {issuer:?}",
            meta.issuer
        )));
    }
    check_provider_url(&meta.token_endpoint, "token endpoint", transport)?;
    for (url, what) in [
        (
            &meta.device_authorization_endpoint,
            "device authorization endpoint",
        ),
        (&meta.authorization_endpoint, "authorization endpoint"),
        (&meta.revocation_endpoint, "revocation endpoint"),
    ] {
        if let Some(url) = url {
            check_provider_url(url, what, transport)?;
        }
    }
    Ok(meta)
}

/// The device authorization grant: show the person a code, poll until they confirm it.
pub async fn device_flow(
    http: &reqwest::Client,
    meta: &ProviderMetadata,
    client_id: &str,
    scope: &str,
    show: impl FnOnce(&DeviceCode),
) -> Result<TokenSet, CliError> {
    let endpoint = meta.device_authorization_endpoint.as_deref().ok_or_else(|| {
        CliError::Auth(format!(
            "the identity provider {} does not offer device sign-in: run `rise login --browser`",
            meta.issuer
        ))
    })?;
    let response = http
        .post(endpoint)
        .form(&[("client_id", client_id), ("scope", scope)])
        .send()
        .await
        .map_err(|e| provider_unreachable(meta, &e))?;
    let started = tokio::time::Instant::now();
    let wire: DeviceAuthorizationWire = read_oauth(meta, response).await?;
    // The person is told to open this address: only a web page, never `file:` or `javascript:`.
    let web =
        |u: &str| reqwest::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !web(&wire.verification_uri) {
        return Err(CliError::Unavailable(format!(
            "the identity provider {} sent a sign-in address that is not an http(s) URL; ask the Rise operator to check the issuer",
            meta.issuer
        )));
    }
    show(&DeviceCode {
        user_code: wire.user_code.clone(),
        verification_uri: wire.verification_uri.clone(),
        verification_uri_complete: wire.verification_uri_complete.clone().filter(|u| web(u)),
    });
    let lifetime = Duration::from_secs(wire.expires_in).min(MAX_DEVICE_CODE_LIFETIME);
    let deadline = started + lifetime;
    let mut interval = wire
        .interval
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(MIN_INTERVAL, MAX_INTERVAL);
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            return Err(expired_code());
        }
        let response = http
            .post(&meta.token_endpoint)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", wire.device_code.expose_secret()),
                ("client_id", client_id),
            ])
            .send()
            .await
            .map_err(|e| provider_unreachable(meta, &e))?;
        match token_or_error(meta, response).await? {
            Ok(tokens) => return Ok(tokens),
            Err(err) => match err.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval = (interval + DEFAULT_INTERVAL).min(MAX_INTERVAL),
                "access_denied" => {
                    return Err(CliError::Auth(
                        "the sign-in was denied at the identity provider: run `rise login` to try again".into(),
                    ));
                }
                "expired_token" => return Err(expired_code()),
                _ => return Err(refused(meta, &err)),
            },
        }
    }
}

fn expired_code() -> CliError {
    CliError::Auth(
        "the sign-in code expired before it was confirmed: run `rise login` again".into(),
    )
}

/// The authorization code grant with PKCE and a loopback redirect: `open` is given the URL the
/// person must visit; a one-shot listener on 127.0.0.1 receives the code.
pub async fn auth_code_flow(
    http: &reqwest::Client,
    meta: &ProviderMetadata,
    client_id: &str,
    scope: &str,
    open: impl FnOnce(&str),
) -> Result<TokenSet, CliError> {
    let endpoint = meta.authorization_endpoint.as_deref().ok_or_else(|| {
        CliError::Auth(format!(
            "the identity provider {} does not offer browser sign-in: run `rise login` (device sign-in)",
            meta.issuer
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| {
            CliError::Other(format!(
                "cannot listen on 127.0.0.1 for the sign-in redirect: {e}"
            ))
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot listen on 127.0.0.1: {e}")))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let verifier = random_token(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_token(16)?;
    let mut url = reqwest::Url::parse(endpoint).map_err(|_| {
        CliError::Unavailable(format!(
            "the identity provider {} publishes an invalid authorization endpoint",
            meta.issuer
        ))
    })?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        // OpenID Connect Core §11: a refresh token for offline use needs explicit consent.
        if scope.split(' ').any(|s| s == "offline_access") {
            q.append_pair("prompt", "consent");
        }
    }
    open(url.as_str());
    let params = tokio::time::timeout(BROWSER_TIMEOUT, receive_redirect(&listener, &state))
        .await
        .map_err(|_| {
            CliError::Auth(
                "the browser did not come back within 5 minutes: run `rise login --browser` again"
                    .into(),
            )
        })??;
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(error) = get("error") {
        return Err(refused(
            meta,
            &OAuthErrorWire {
                error: error.to_owned(),
                error_description: get("error_description").map(str::to_owned),
            },
        ));
    }
    let code = get("code").ok_or_else(|| {
        CliError::Auth(
            "the sign-in redirect carried no code: run `rise login --browser` again".into(),
        )
    })?;
    let response = http
        .post(&meta.token_endpoint)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", client_id),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .map_err(|e| provider_unreachable(meta, &e))?;
    token_or_error(meta, response)
        .await?
        .map_err(|err| refused(meta, &err))
}

/// Serve the loopback listener until a `GET /callback` carrying `state` comes; return its query
/// pairs. Each connection is served in a task of its own, within [`CALLBACK_CONNECTION_TIMEOUT`],
/// so one that sends nothing holds up no other. Other paths get a 404; a callback with another
/// state (a stale tab of an earlier sign-in, or a guess from this machine) a 400, and the wait
/// goes on.
async fn receive_redirect(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> Result<Vec<(String, String)>, CliError> {
    let (found, mut callbacks) = tokio::sync::mpsc::channel(1);
    loop {
        tokio::select! {
            Some(params) = callbacks.recv() => return Ok(params),
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(|e| {
                    CliError::Other(format!("sign-in redirect listener failed: {e}"))
                })?;
                let (found, state) = (found.clone(), state.to_owned());
                tokio::spawn(async move {
                    let served = serve_redirect(stream, &state);
                    if let Ok(Some(params)) =
                        tokio::time::timeout(CALLBACK_CONNECTION_TIMEOUT, served).await
                    {
                        // Only the first callback is waited for; a later one is dropped.
                        let _ = found.try_send(params);
                    }
                });
            }
        }
    }
}

/// Answer one connection to the redirect listener; the query pairs of a `GET /callback`
/// carrying `state`, `None` for anything else.
async fn serve_redirect(
    mut stream: tokio::net::TcpStream,
    state: &str,
) -> Option<Vec<(String, String)>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 1024];
    // Only the request line matters; stop at the end of the headers or 16 KiB.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("");
    let query = target
        .strip_prefix("/callback?")
        .or(if target == "/callback" {
            Some("")
        } else {
            None
        });
    let params = query.map(form_pairs);
    // The first `state`, as the caller reads the first `code`.
    let ours = params.as_ref().is_some_and(|p| {
        p.iter()
            .find(|(k, _)| k == "state")
            .is_some_and(|(_, v)| v == state)
    });
    let (status, body) = match (&params, ours) {
        (None, _) => ("404 Not Found", ""),
        (Some(_), false) => (
            "400 Bad Request",
            "<!doctype html><title>Rise</title><p>This sign-in is not the one <code>rise login --browser</code> is waiting for (an earlier attempt?). Return to the terminal, and run <code>rise login --browser</code> again if nothing is waiting there.</p>",
        ),
        (Some(_), true) => (
            "200 OK",
            "<!doctype html><title>Rise</title><p>Sign-in finished. You can close this window and return to the terminal.</p>",
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
    params.filter(|_| ours)
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Exchange a refresh token for fresh tokens.
pub async fn refresh(
    http: &reqwest::Client,
    transport: Transport,
    token_endpoint: &str,
    client_id: &str,
    refresh_token: &SecretString,
) -> Result<TokenSet, RefreshError> {
    check_provider_url(token_endpoint, "token endpoint", transport)
        .map_err(RefreshError::Failed)?;
    let response = http
        .post(token_endpoint)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("client_id", client_id),
        ])
        .send()
        .await
        .map_err(|e| {
            RefreshError::Failed(CliError::Unavailable(format!(
                "cannot reach the identity provider to renew your login: {}; try again shortly",
                describe_reqwest(&e)
            )))
        })?;
    let status = response.status();
    let bytes = match read_bounded(response, MAX_ANSWER_BYTES).await {
        Ok(bytes) => bytes,
        Err(BodyError::Read(_)) => Vec::new(),
        Err(too_large) => {
            return Err(RefreshError::Failed(CliError::Unavailable(format!(
                "cannot use the answer of the identity provider's token endpoint {} to the renewal: {}; ask the Rise operator to check the issuer",
                without_userinfo(token_endpoint),
                too_large.reason()
            ))));
        }
    };
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            RefreshError::Failed(CliError::Unavailable(format!(
                "the identity provider answered the renewal in an unexpected format ({})",
                json_problem(&e)
            )))
        });
    }
    match serde_json::from_slice::<OAuthErrorWire>(&bytes) {
        Ok(err)
            if matches!(
                err.error.as_str(),
                "invalid_grant" | "invalid_client" | "unauthorized_client"
            ) =>
        {
            Err(RefreshError::Rejected)
        }
        _ => Err(RefreshError::Failed(CliError::Unavailable(format!(
            "the identity provider failed to renew your login (HTTP {}); try again shortly",
            status.as_u16()
        )))),
    }
}

/// Revoke a token (RFC 7009), best effort: logging out must work offline too. A token is never
/// sent to an endpoint unfit to carry it.
pub async fn revoke(
    http: &reqwest::Client,
    transport: Transport,
    endpoint: &str,
    client_id: &str,
    token: &SecretString,
) -> bool {
    if check_provider_url(endpoint, "revocation endpoint", transport).is_err() {
        return false;
    }
    http.post(endpoint)
        .form(&[
            ("token", token.expose_secret()),
            ("token_type_hint", "refresh_token"),
            ("client_id", client_id),
        ])
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A token response, or the OAuth error it carried.
async fn token_or_error(
    meta: &ProviderMetadata,
    response: reqwest::Response,
) -> Result<Result<TokenSet, OAuthErrorWire>, CliError> {
    let status = response.status();
    let bytes = provider_body(meta, response).await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map(Ok).map_err(|e| {
            CliError::Unavailable(format!(
                "the identity provider {} sent tokens in an unexpected format ({})",
                meta.issuer,
                json_problem(&e)
            ))
        });
    }
    match serde_json::from_slice::<OAuthErrorWire>(&bytes) {
        Ok(err) => Ok(Err(err)),
        Err(_) => Err(CliError::Unavailable(format!(
            "the identity provider {} answered HTTP {} to the token request; try again shortly",
            meta.issuer,
            status.as_u16()
        ))),
    }
}

async fn read_oauth<T: serde::de::DeserializeOwned>(
    meta: &ProviderMetadata,
    response: reqwest::Response,
) -> Result<T, CliError> {
    let status = response.status();
    let bytes = provider_body(meta, response).await?;
    if !status.is_success() {
        return match serde_json::from_slice::<OAuthErrorWire>(&bytes) {
            Ok(err) => Err(refused(meta, &err)),
            Err(_) => Err(CliError::Unavailable(format!(
                "the identity provider {} answered HTTP {}; try again shortly",
                meta.issuer,
                status.as_u16()
            ))),
        };
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        CliError::Unavailable(format!(
            "the identity provider {} answered in an unexpected format ({})",
            meta.issuer,
            json_problem(&e)
        ))
    })
}

fn refused(meta: &ProviderMetadata, err: &OAuthErrorWire) -> CliError {
    // The description is the provider's text for the person; bounded so it cannot flood.
    let description = crate::backend::printable(
        err.error_description.as_deref().unwrap_or("no description"),
        200,
    );
    CliError::Auth(format!(
        "the identity provider {} refused the sign-in ({}: {description}); ask the Rise operator whether the client is set up for this flow",
        meta.issuer,
        crate::backend::printable(&err.error, 64)
    ))
}

/// The body of the provider's answer, up to [`MAX_ANSWER_BYTES`].
async fn provider_body(
    meta: &ProviderMetadata,
    response: reqwest::Response,
) -> Result<Vec<u8>, CliError> {
    read_bounded(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::Read(e) => provider_unreachable(meta, &e),
            too_large @ BodyError::TooLarge(_) => CliError::Unavailable(format!(
                "cannot use the answer of the identity provider {}: {}; ask the Rise operator to check the issuer",
                meta.issuer,
                too_large.reason()
            )),
        })
}

fn provider_unreachable(meta: &ProviderMetadata, e: &reqwest::Error) -> CliError {
    CliError::Unavailable(format!(
        "cannot reach the identity provider {}: {}; check your network and try again",
        meta.issuer,
        describe_reqwest(e)
    ))
}

/// Refuse an identity-provider URL that would carry codes or tokens in clear text to another
/// machine (or is no http(s) URL at all).
fn check_provider_url(url: &str, what: &str, transport: Transport) -> Result<(), CliError> {
    let shown = without_userinfo(url);
    match reqwest::Url::parse(url) {
        Ok(u) if may_carry_tokens(&u, transport) => Ok(()),
        Ok(u) if u.scheme() == "http" => Err(CliError::Unavailable(format!(
            "the identity provider's {what} {shown} uses plain http:// to another machine, which would send tokens in clear text: ask the Rise operator to use https://, or set {}=1 on a trusted test network",
            vars::INSECURE_HTTP_BACKEND
        ))),
        _ => Err(CliError::Unavailable(format!(
            "the identity provider's {what} {shown:?} is not an https:// URL; ask the Rise operator to check the issuer"
        ))),
    }
}

/// `bytes` random bytes, base64url: PKCE verifiers (RFC 7636 §4.1 wants 43-128 chars) and states.
fn random_token(bytes: usize) -> Result<String, CliError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| CliError::Other(format!("the system random number generator failed: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_verifier_is_long_enough_and_random() {
        let a = random_token(32).expect("random");
        let b = random_token(32).expect("random");
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }

    #[test]
    fn redirect_query_is_decoded() {
        let pairs = form_pairs("code=a%2Fb&state=xyz&error_description=no+way");
        assert_eq!(pairs[0], ("code".into(), "a/b".into()));
        assert_eq!(pairs[2].1, "no way");
    }

    use crate::testing::{FakeServer, route};

    const STRICT: Transport = Transport::HttpsOrLoopback;

    fn meta_at(base: &str) -> ProviderMetadata {
        ProviderMetadata {
            issuer: base.to_owned(),
            token_endpoint: format!("{base}/token"),
            device_authorization_endpoint: Some(format!("{base}/device")),
            authorization_endpoint: None,
            revocation_endpoint: None,
        }
    }

    #[tokio::test]
    async fn provider_answers_larger_than_a_mebibyte_are_refused_naming_the_provider() {
        let huge = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_ANSWER_BYTES));
        let server = FakeServer::start(vec![
            route("GET /.well-known/openid-configuration", 200, &huge),
            route("POST /device", 200, &huge),
            route("POST /token", 400, &huge),
        ]);
        let http = reqwest::Client::new();
        let err = discover(&http, STRICT, &server.url)
            .await
            .expect_err("too large");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read the sign-in configuration of {}: it sent more than 1 MiB; ask the Rise operator to check the issuer URL",
                server.url
            )
        );
        let err = device_flow(&http, &meta_at(&server.url), "cli", "openid", |_| {})
            .await
            .expect_err("too large");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot use the answer of the identity provider {}: it sent more than 1 MiB; ask the Rise operator to check the issuer",
                server.url
            )
        );
        let refresh_token: SecretString = "refresh-secret".to_owned().into();
        let token_endpoint = format!("{}/token", server.url);
        let err = refresh(&http, STRICT, &token_endpoint, "cli", &refresh_token)
            .await
            .expect_err("too large");
        let RefreshError::Failed(err) = err else {
            panic!("not a failure: {err:?}")
        };
        assert!(
            err.to_string().contains(&format!(
                "token endpoint {token_endpoint} to the renewal: it sent more than 1 MiB"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn absurd_device_code_lifetimes_and_intervals_do_not_panic() {
        let server = FakeServer::start(vec![
            route(
                "POST /device",
                200,
                r#"{"device_code":"dc","user_code":"ABCD","verification_uri":"https://idp.example/verify","expires_in":18446744073709551615,"interval":0}"#,
            ),
            route(
                "POST /token",
                200,
                r#"{"access_token":"opaque","expires_in":18446744073709551615}"#,
            ),
        ]);
        let meta = meta_at(&server.url);
        let mut shown = None;
        let tokens = device_flow(&reqwest::Client::new(), &meta, "cli", "openid", |c| {
            shown = Some(c.user_code.clone())
        })
        .await
        .expect("signed in");
        assert_eq!(shown.as_deref(), Some("ABCD"));
        assert_eq!(tokens.expires_in, Some(u64::MAX));
        // What `rise login` does next: store the login.
        let login = crate::session::StoredLogin::new("corp", &meta, "cli", tokens, None);
        assert_eq!(login.expires_at, Some(u64::MAX));
    }

    #[tokio::test]
    async fn provider_urls_must_not_carry_tokens_in_clear_text() {
        let http = reqwest::Client::new();
        let err = discover(&http, STRICT, "http://idp.invalid")
            .await
            .expect_err("plain-http issuer");
        assert!(matches!(err, CliError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("clear text"), "{err}");

        // A loopback issuer that publishes a plain-http endpoint on another machine.
        for field in ["token_endpoint", "revocation_endpoint"] {
            let mut doc = serde_json::json!({
                "issuer": "{base}",
                "token_endpoint": "{base}/token",
            });
            doc[field] = "http://idp.invalid/x".into();
            let server = FakeServer::start(vec![route(
                "GET /.well-known/openid-configuration",
                200,
                &doc.to_string(),
            )]);
            let err = discover(&http, STRICT, &server.url)
                .await
                .expect_err("published plain-http endpoint");
            assert!(err.to_string().contains("clear text"), "{field}: {err}");
            discover(&http, Transport::InsecureHttpAllowed, &server.url)
                .await
                .expect("opted in");
        }

        let refresh_token: SecretString = "refresh-secret".to_owned().into();
        let err = refresh(
            &http,
            STRICT,
            "http://idp.invalid/token",
            "cli",
            &refresh_token,
        )
        .await
        .expect_err("plain-http token endpoint");
        let RefreshError::Failed(err) = err else {
            panic!("not a failure: {err:?}")
        };
        let msg = err.to_string();
        assert!(
            msg.contains("token endpoint http://idp.invalid/token"),
            "{msg}"
        );
        assert!(msg.contains("RISE_INSECURE_HTTP_BACKEND=1"), "{msg}");
        assert!(!msg.contains("refresh-secret"), "{msg}");

        // Revocation against a loopback fake is sent; to another machine over http it is not.
        let server = FakeServer::start(vec![route("POST /revoke", 200, "{}")]);
        let local = format!("{}/revoke", server.url);
        assert!(revoke(&http, STRICT, &local, "cli", &refresh_token).await);
        assert!(
            !revoke(
                &http,
                STRICT,
                "http://idp.invalid/revoke",
                "cli",
                &refresh_token
            )
            .await
        );
        assert_eq!(server.requests().len(), 1);
    }

    /// Send `request` to the redirect listener at `addr`; its answer.
    async fn call_listener(addr: &str, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("answer");
        answer
    }

    #[tokio::test]
    async fn an_idle_connection_does_not_hold_up_the_browser_callback() {
        let provider = FakeServer::start(vec![route(
            "POST /token",
            200,
            r#"{"access_token":"at","token_type":"Bearer"}"#,
        )]);
        let mut meta = meta_at(&provider.url);
        meta.authorization_endpoint = Some(format!("{}/authorize", provider.url));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let http = reqwest::Client::new();
        let flow = auth_code_flow(&http, &meta, "cli", "openid", |url| {
            let _ = url_tx.send(url.to_owned());
        });
        let browser = async {
            let url = reqwest::Url::parse(&url_rx.await.expect("url")).expect("url");
            let param = |k: &str| {
                url.query_pairs()
                    .find(|(name, _)| name == k)
                    .map(|(_, v)| v.into_owned())
                    .expect("param")
            };
            let redirect = reqwest::Url::parse(&param("redirect_uri")).expect("redirect_uri");
            let addr = format!("127.0.0.1:{}", redirect.port().expect("port"));
            // A speculative preconnect: connected first, sends nothing.
            let idle = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let favicon = call_listener(&addr, &get("/favicon.ico")).await;
            assert!(favicon.starts_with("HTTP/1.1 404"), "{favicon}");
            let stale = call_listener(&addr, &get("/callback?code=old&state=other")).await;
            assert!(stale.starts_with("HTTP/1.1 400"), "{stale}");
            let callback = get(&format!("/callback?code=the-code&state={}", param("state")));
            let answer = call_listener(&addr, &callback).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            // Answered while the idle connection was still open, not after it timed out.
            let mut byte = [0u8; 1];
            assert!(
                matches!(idle.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "the idle connection was closed first"
            );
            idle
        };
        // Bounded well under BROWSER_TIMEOUT, so a listener that waits on the idle
        // connection fails here rather than after five minutes.
        let (tokens, _idle) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(flow, browser)
        })
        .await
        .expect("the callback was held up");
        let tokens = tokens.expect("signed in");
        assert_eq!(tokens.access_token.expose_secret(), "at");
        let heads = provider.heads();
        assert_eq!(heads.len(), 1, "{:?}", provider.requests());
        assert!(heads[0].starts_with("POST /token"), "{heads:?}");
    }

    #[tokio::test]
    async fn redirects_do_not_carry_tokens_anywhere() {
        let elsewhere = FakeServer::start(vec![route("POST /token", 200, "{}")]);
        let target = format!("{}/token", elsewhere.url);
        let server = FakeServer::start(vec![
            route("POST /token", 307, "").header("Location", &target),
            route("POST /device", 307, "").header("Location", &target),
            route("POST /revoke", 307, "").header("Location", &target),
        ]);
        let http = crate::context::Context::from_env([])
            .http()
            .expect("client");
        let refresh_token: SecretString = "refresh-secret".to_owned().into();
        let err = refresh(
            &http,
            STRICT,
            &format!("{}/token", server.url),
            "cli",
            &refresh_token,
        )
        .await
        .expect_err("redirected");
        let RefreshError::Failed(err) = err else {
            panic!("not a failure: {err:?}")
        };
        assert!(err.to_string().contains("HTTP 307"), "{err}");
        let revoked = revoke(
            &http,
            STRICT,
            &format!("{}/revoke", server.url),
            "cli",
            &refresh_token,
        )
        .await;
        assert!(!revoked);
        let meta = meta_at(&server.url);
        let err = device_flow(&http, &meta, "cli", "openid", |_| {})
            .await
            .expect_err("redirected");
        assert!(err.to_string().contains("HTTP 307"), "{err}");
        assert!(
            elsewhere.requests().is_empty(),
            "{:?}",
            elsewhere.requests()
        );
        assert_eq!(server.requests().len(), 3);
    }

    #[tokio::test]
    async fn the_device_flow_shows_only_web_addresses() {
        for (uri, complete, ok) in [
            ("javascript:alert(1)", None, false),
            ("file:///etc/passwd", None, false),
            ("https://idp/device", Some("file:///x"), true),
        ] {
            let mut body = serde_json::json!({
                "device_code": "d", "user_code": "ABCD", "verification_uri": uri,
                "expires_in": 1, "interval": 1,
            });
            if let Some(c) = complete {
                body["verification_uri_complete"] = c.into();
            }
            let server = FakeServer::start(vec![
                route("POST /device", 200, &body.to_string()),
                route("POST /token", 200, r#"{"access_token":"a"}"#),
            ]);
            let mut shown = None;
            let result = device_flow(
                &reqwest::Client::new(),
                &meta_at(&server.url),
                "cli",
                "openid",
                |c| shown = Some(c.clone()),
            )
            .await;
            if ok {
                let shown = shown.expect("shown");
                assert_eq!(shown.verification_uri, uri);
                assert_eq!(shown.verification_uri_complete, None);
            } else {
                let err = result.expect_err(uri).to_string();
                assert!(err.contains("not an http(s) URL"), "{err}");
                assert!(shown.is_none(), "{uri}");
            }
        }
    }
}
