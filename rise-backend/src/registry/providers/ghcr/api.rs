//! The two GitHub REST calls Rise makes for the Container registry, their wire types, and the
//! App JWT that authenticates the first.
//!
//! Shapes come from GitHub's public REST documentation (no GitHub runs in Rise's test
//! environment; the tests use a fake built from the same pages):
//! - Generating a JSON Web Token (JWT) for a GitHub App
//!   (<https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>):
//!   RS256, claims `iat` (GitHub recommends 60 s in the past against clock drift), `exp` (no
//!   more than 10 minutes into the future) and `iss` (the App's client ID or application ID);
//!   sent as `Authorization: Bearer`.
//! - Create an installation access token for an app, `POST
//!   /app/installations/{installation_id}/access_tokens`
//!   (<https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>,
//!   and the guide
//!   <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-an-installation-access-token-for-a-github-app>):
//!   JSON body `repositories` (names, up to 500) or `repository_ids`, and `permissions`
//!   (permission name to `read`/`write`/`admin`); the token cannot reach repositories or
//!   permissions the installation was not granted, and without them it gets all of the
//!   installation's. Replies 201 `{token, expires_at, permissions, repository_selection,
//!   repositories}`; 401 requires authentication, 403 forbidden, 404 not found, 422 validation
//!   failed. Installation tokens expire one hour after they are created.
//! - Revoke an installation access token, `DELETE /installation/token`
//!   (<https://docs.github.com/en/rest/apps/installations#revoke-an-installation-access-token>):
//!   authenticated with the installation token itself; 204 when revoked.
//! - Every request sends `Accept: application/vnd.github+json`, `X-GitHub-Api-Version:
//!   2022-11-28` (<https://docs.github.com/en/rest/about-the-rest-api/api-versions>) and a
//!   `User-Agent`, which GitHub requires
//!   (<https://docs.github.com/en/rest/using-the-rest-api/getting-started-with-the-rest-api#user-agent>).
//! - Errors are `{"message": ..., "documentation_url": ...}`, sometimes with `errors`; a rate
//!   limit is a 403 or 429 with `x-ratelimit-remaining: 0` or `retry-after`
//!   (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::registry::ProviderError;
use crate::registry::providers::artifactory::redact_for_log;
use crate::registry::providers::upstream;

pub(super) const CREATE_OPERATION: &str = "GitHub create installation token";
pub(super) const REVOKE_OPERATION: &str = "GitHub revoke installation token";
/// The REST API version Rise was written against.
pub(super) const API_VERSION: &str = "2022-11-28";
const ACCEPT: &str = "application/vnd.github+json";
/// Upstream replies are small; anything bigger is not a reply Rise can use.
const MAX_BODY: usize = 64 * 1024;
/// GitHub's recommended backdating of `iat`, against clock drift.
const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// `exp - now`: under GitHub's 10-minute limit, so a slightly fast clock is still accepted.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);

/// An App JWT for `app_id`, signed with `private_key_pem`. The error names what is wrong, never
/// the key.
pub(super) fn sign_app_jwt(
    app_id: &str,
    private_key_pem: &SecretString,
    now: SystemTime,
) -> Result<SecretString, String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        iat: u64,
        exp: u64,
        iss: &'a str,
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?;
    let claims = Claims {
        iat: now.saturating_sub(JWT_BACKDATE).as_secs(),
        exp: (now + JWT_LIFETIME).as_secs(),
        iss: app_id,
    };
    // Neither error below carries key material: jsonwebtoken's error kinds name the failure only.
    let key = EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes()).map_err(|_| {
        "private_key is not an RSA private key in PEM form (a GitHub App key begins with -----BEGIN RSA PRIVATE KEY-----)".to_owned()
    })?;
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
        .map(SecretString::from)
        .map_err(|e| format!("private_key cannot sign an RS256 JWT ({:?})", e.kind()))
}

/// Create-token body. Only the one repository and the one permission Rise asks for.
#[derive(Debug, Serialize)]
pub(super) struct CreateTokenBody<'a> {
    pub repositories: [&'a str; 1],
    pub permissions: BTreeMap<&'static str, &'static str>,
}

/// The 201 body. `token` is the only secret; the rest is what GitHub says it granted.
#[derive(Deserialize)]
pub(super) struct InstallationToken {
    pub token: SecretString,
    pub expires_at: String,
    #[serde(default)]
    pub permissions: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub repository_selection: Option<String>,
    #[serde(default)]
    pub repositories: Option<Vec<RepositoryRef>>,
}

#[derive(Deserialize)]
pub(super) struct RepositoryRef {
    pub name: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    documentation_url: Option<String>,
}

/// A client for one GitHub REST API root (`https://api.github.com`, or
/// `https://HOST/api/v3` for GitHub Enterprise Server).
#[derive(Debug, Clone)]
pub(super) struct GitHubClient {
    http: reqwest::Client,
    api_base: Url,
    timeout: Duration,
}

impl GitHubClient {
    /// `api_base` ends with `/`, so relative paths join under it.
    pub fn new(
        api_base: Url,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static(ACCEPT),
        );
        headers.insert(
            "x-github-api-version",
            reqwest::header::HeaderValue::from_static(API_VERSION),
        );
        let http = upstream::http_client(connect_timeout, timeout, headers)
            .map_err(ProviderError::Misconfigured)?;
        Ok(Self {
            http,
            api_base,
            timeout,
        })
    }

    /// Mint an installation token restricted by `body`; `jwt` is the App JWT.
    pub async fn create_installation_token(
        &self,
        jwt: &SecretString,
        installation_id: u64,
        body: &CreateTokenBody<'_>,
    ) -> Result<InstallationToken, ProviderError> {
        let url = self.url(&format!(
            "app/installations/{installation_id}/access_tokens"
        ))?;
        // The single place the App JWT is exposed: to the API that asked for it. reqwest marks
        // the Authorization header sensitive.
        let builder = self
            .http
            .post(url)
            .bearer_auth(jwt.expose_secret())
            .json(body);
        let (status, headers, bytes) = self.send(CREATE_OPERATION, builder).await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(create_error(
                status,
                &headers,
                &bytes,
                installation_id,
                body.repositories[0],
                &[jwt.expose_secret()],
            ));
        }
        // Never put the body in an error: on success it holds the minted token.
        let parsed: InstallationToken = serde_json::from_slice(&bytes)
            .map_err(|e| upstream::malformed(CREATE_OPERATION, status, &e, bytes.len()))?;
        if parsed.token.expose_secret().trim().is_empty() {
            return Err(ProviderError::Upstream {
                operation: CREATE_OPERATION,
                detail: format!("HTTP {status} without a token"),
            });
        }
        Ok(parsed)
    }

    /// Revoke `token`, authenticating with it. A 401 means GitHub no longer accepts the token
    /// (expired or revoked already): the goal is reached.
    pub async fn revoke_installation_token(
        &self,
        token: &SecretString,
    ) -> Result<(), ProviderError> {
        let url = self.url("installation/token")?;
        // The token is exposed to the API that issued it, to end it.
        let builder = self.http.delete(url).bearer_auth(token.expose_secret());
        let (status, _, bytes) = self.send(REVOKE_OPERATION, builder).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::UNAUTHORIZED => Ok(()),
            other => Err(ProviderError::Upstream {
                operation: REVOKE_OPERATION,
                detail: format!(
                    "HTTP {other}: {}",
                    summarise_error_body(&bytes, &[token.expose_secret()])
                ),
            }),
        }
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        self.api_base
            .join(path)
            .map_err(|e| ProviderError::Misconfigured(format!("api_url: {e}")))
    }

    /// One GitHub API call, timed for `rise_upstream_request_duration_seconds` whatever its outcome.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), ProviderError> {
        let reply = upstream::exchange("ghcr", operation, self.timeout, MAX_BODY, builder).await?;
        Ok((reply.status, reply.headers, reply.body))
    }
}

/// 401/403/404/422 from the create call mean the App, its key, its installation or what the
/// installation was granted is not what Rise was configured for: the operator must act. A rate
/// limit and anything else is GitHub failing. The body is summarised for the log, redacted,
/// never returned to callers.
fn create_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    installation_id: u64,
    repository: &str,
    secrets: &[&str],
) -> ProviderError {
    let summary = summarise_error_body(body, secrets);
    let detail = format!("HTTP {status}: {summary}");
    let rate_limited = headers
        .get("x-ratelimit-remaining")
        .is_some_and(|v| v.as_bytes() == b"0")
        || headers.contains_key(reqwest::header::RETRY_AFTER);
    let misconfigured = |hint: String| {
        ProviderError::Misconfigured(format!("{CREATE_OPERATION} refused ({detail}); {hint}"))
    };
    match status {
        StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS if rate_limited => {
            ProviderError::Upstream {
                operation: CREATE_OPERATION,
                detail: format!("rate limited, {detail}"),
            }
        }
        StatusCode::UNAUTHORIZED => misconfigured(
            "GitHub did not accept the App JWT: check app_id, that private_key is a current key of that App, and the server's clock".into(),
        ),
        StatusCode::FORBIDDEN => misconfigured(format!(
            "the App may not create tokens for installation {installation_id} (suspended installation, or an App without the Packages permission)"
        )),
        StatusCode::NOT_FOUND => misconfigured(format!(
            "installation {installation_id} is not an installation of this App: check installation_id and app_id"
        )),
        StatusCode::UNPROCESSABLE_ENTITY => misconfigured(format!(
            "the installation must include repository {repository} and grant the Packages permission at the level asked (read for pull, write for push)"
        )),
        _ => ProviderError::Upstream {
            operation: CREATE_OPERATION,
            detail,
        },
    }
}

/// `message (documentation_url)` from a GitHub error body, or the redacted raw text.
fn summarise_error_body(body: &[u8], secrets: &[&str]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(message),
            documentation_url,
        }) => {
            let text = match documentation_url {
                Some(url) => format!("{message} ({url})"),
                None => message,
            };
            redact_for_log(&text, secrets)
        }
        _ => format!(
            "unrecognised body {:?}",
            redact_for_log(&String::from_utf8_lossy(body), secrets)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let body = br#"{"message":"Bad credentials hunter2","documentation_url":"https://docs.github.com/rest"}"#;
        assert_eq!(
            summarise_error_body(body, &["hunter2"]),
            "Bad credentials [REDACTED] (https://docs.github.com/rest)"
        );
        let html = b"<html>502 hunter2</html>";
        let s = summarise_error_body(html, &["hunter2"]);
        assert!(s.starts_with("unrecognised body"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn create_statuses_map_to_operator_or_upstream() {
        let none = reqwest::header::HeaderMap::new();
        for (status, part) in [
            (401, "check app_id"),
            (403, "suspended installation"),
            (404, "installation 7 is not an installation"),
            (422, "include repository my-app"),
        ] {
            let e = create_error(
                StatusCode::from_u16(status).expect("status"),
                &none,
                b"{}",
                7,
                "my-app",
                &[],
            );
            match e {
                ProviderError::Misconfigured(m) => assert!(m.contains(part), "{status}: {m}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        let e = create_error(StatusCode::BAD_GATEWAY, &none, b"", 7, "r", &[]);
        assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
        let mut limited = reqwest::header::HeaderMap::new();
        limited.insert(
            "x-ratelimit-remaining",
            reqwest::header::HeaderValue::from_static("0"),
        );
        let e = create_error(StatusCode::FORBIDDEN, &limited, b"", 7, "r", &[]);
        assert!(
            matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains("rate limited")),
            "{e:?}"
        );
    }

    #[test]
    fn bad_keys_are_named_not_shown() {
        let pem = SecretString::from(
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END RSA PRIVATE KEY-----\n",
        );
        let e = sign_app_jwt("1", &pem, SystemTime::now()).expect_err("not a key");
        assert!(e.contains("private_key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let e = sign_app_jwt("1", &SecretString::from("nonsense"), SystemTime::now())
            .expect_err("not PEM");
        assert!(e.contains("PEM"), "{e}");
    }
}
