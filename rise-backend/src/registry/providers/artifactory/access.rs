//! The two JFrog Access REST calls Rise makes, and their wire types.
//!
//! Shapes come from JFrog's public documentation (no Artifactory runs in Rise's test
//! environment; the tests use a fake built from the same documents):
//! - Create Token: `POST /access/api/v1/tokens`, JSON body `grant_type`, `username`, `scope`
//!   (space-separated, at most 500 characters), `expires_in` (seconds), `refreshable`,
//!   `description` (at most 1024), `force_revocable` (since 7.50.3); 200 with `token_id`,
//!   `access_token`, `expires_in`, `scope`, `token_type`. 400 invalid input, 401
//!   unauthenticated, 403 forbidden scope or expiry
//!   (<https://docs.jfrog.com/administration/reference/createToken>,
//!   <https://jfrog.com/help/r/jfrog-rest-apis/create-token-api-examples>).
//! - Revoke Token by ID: `DELETE /access/api/v1/tokens/{token_id}`; 200 revoked, 204 not found
//!   (e.g. already revoked), 400 token of another instance, 401, 403
//!   (<https://jfrog.com/help/r/jfrog-rest-apis/revoke-token-by-id>).
//! - Errors: `{"errors":[{"code": "...", "message": "..."}]}` (Access); Artifactory's own REST
//!   API uses `{"errors":[{"status": 404, "message": "..."}]}`
//!   (<https://jfrog.com/help/r/jfrog-rest-apis/error-responses>). Both are read for the log.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::redact_for_log;
use crate::registry::ProviderError;
use crate::registry::providers::upstream;

pub(super) const CREATE_OPERATION: &str = "Artifactory create token";
pub(super) const REVOKE_OPERATION: &str = "Artifactory revoke token";
/// Upstream replies are small; anything bigger is not a reply Rise can use.
const MAX_BODY: usize = 64 * 1024;

/// How Rise authenticates to the Access API.
pub(super) enum AccessAuth<'a> {
    Bearer(&'a SecretString),
    Basic {
        username: &'a str,
        password: &'a SecretString,
    },
}

/// Create Token's body. `None` fields are omitted so Artifactory applies its own defaults.
#[derive(Debug, Serialize)]
pub(super) struct CreateTokenRequest<'a> {
    pub grant_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    pub scope: &'a str,
    pub expires_in: u64,
    pub refreshable: bool,
    pub description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_revocable: Option<bool>,
}

/// Create Token's 200 body. `access_token` is the only secret.
#[derive(Deserialize)]
pub(super) struct CreateTokenResponse {
    pub token_id: String,
    pub access_token: SecretString,
    /// Documented as an integer; one documented example shows a string, so both are read.
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// A client for one JFrog Platform URL.
#[derive(Debug, Clone)]
pub(super) struct AccessClient {
    http: reqwest::Client,
    tokens_url: Url,
    timeout: Duration,
}

impl AccessClient {
    pub fn new(
        platform_url: &Url,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let tokens_url = platform_url
            .join("access/api/v1/tokens")
            .map_err(|e| ProviderError::Misconfigured(format!("base_url: {e}")))?;
        let http =
            upstream::http_client(connect_timeout, timeout, reqwest::header::HeaderMap::new())
                .map_err(ProviderError::Misconfigured)?;
        Ok(Self {
            http,
            tokens_url,
            timeout,
        })
    }

    pub async fn create_token(
        &self,
        auth: AccessAuth<'_>,
        request: &CreateTokenRequest<'_>,
        secrets: &[&str],
    ) -> Result<CreateTokenResponse, ProviderError> {
        let builder = authorize(self.http.post(self.tokens_url.clone()), &auth).json(request);
        let (status, body) = self.send(CREATE_OPERATION, builder).await?;
        if status != StatusCode::OK {
            return Err(status_error(CREATE_OPERATION, status, &body, secrets));
        }
        // Never put the body in an error: on success it holds the minted token.
        let parsed: CreateTokenResponse = serde_json::from_slice(&body)
            .map_err(|e| upstream::malformed(CREATE_OPERATION, 200, &e, body.len()))?;
        if parsed.access_token.expose_secret().is_empty() || !valid_token_id(&parsed.token_id) {
            return Err(ProviderError::Upstream {
                operation: CREATE_OPERATION,
                detail: "HTTP 200 without a usable access_token or token_id".into(),
            });
        }
        Ok(parsed)
    }

    pub async fn revoke_token(
        &self,
        auth: AccessAuth<'_>,
        token_id: &str,
        secrets: &[&str],
    ) -> Result<(), ProviderError> {
        let mut url = self.tokens_url.clone();
        url.path_segments_mut()
            .map_err(|()| ProviderError::Misconfigured("base_url cannot have a path".into()))?
            .push(token_id);
        let (status, body) = self
            .send(REVOKE_OPERATION, authorize(self.http.delete(url), &auth))
            .await?;
        match status {
            // 204: unknown or already revoked; revocation is idempotent.
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            other => Err(status_error(REVOKE_OPERATION, other, &body, secrets)),
        }
    }

    /// One Access API call, timed for `rise_upstream_request_duration_seconds` whatever its outcome.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ProviderError> {
        let reply =
            upstream::exchange("artifactory", operation, self.timeout, MAX_BODY, builder).await?;
        Ok((reply.status, reply.body))
    }
}

fn authorize(builder: reqwest::RequestBuilder, auth: &AccessAuth<'_>) -> reqwest::RequestBuilder {
    // The single place the backend's own credential is exposed: to the Access API it belongs to.
    // reqwest marks the Authorization header sensitive.
    match auth {
        AccessAuth::Bearer(token) => builder.bearer_auth(token.expose_secret()),
        AccessAuth::Basic { username, password } => {
            builder.basic_auth(username, Some(password.expose_secret()))
        }
    }
}

/// 401/403 mean Rise's own credential is wrong or too weak: the operator must act. Anything
/// else is the upstream failing. The body is summarised for the log, redacted, never returned.
fn status_error(
    operation: &'static str,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> ProviderError {
    let summary = summarise_error_body(body, secrets);
    let detail = format!("HTTP {status}: {summary}");
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Misconfigured(format!(
            "{operation} refused Rise's credential ({detail}); check the admin token or user and its permissions"
        )),
        _ => ProviderError::Upstream { operation, detail },
    }
}

/// `code: message; code: message` from a JFrog error body, or the redacted raw text.
fn summarise_error_body(body: &[u8], secrets: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    let items: Vec<String> = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed
            .errors
            .iter()
            .map(|item| {
                let code = item
                    .code
                    .as_ref()
                    .or(item.status.as_ref())
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "?".into());
                format!("{code}: {}", item.message.as_deref().unwrap_or(""))
            })
            .collect(),
        _ => return format!("unrecognised body {:?}", redact_for_log(&text, secrets)),
    };
    redact_for_log(&items.join("; "), secrets)
}

/// Access token ids are UUID-like; anything else is refused before it reaches a URL path.
pub(super) fn valid_token_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != "."
        && id != ".."
        // `me` names the calling token: revoking it would revoke Rise's own admin token.
        && !id.eq_ignore_ascii_case("me")
}

fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        N(u64),
        S(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => None,
        Some(N::N(n)) => Some(n),
        Some(N::S(s)) => Some(
            s.trim()
                .parse()
                .map_err(|_| serde::de::Error::custom("expires_in is not a number of seconds"))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let access =
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"Bad credentials for hunter2"}]}"#;
        let s = summarise_error_body(access, &["hunter2"]);
        assert_eq!(s, "UNAUTHORIZED: Bad credentials for [REDACTED]");
        let rest = br#"{"errors":[{"status":404,"message":"File not found."}]}"#;
        assert_eq!(summarise_error_body(rest, &[]), "404: File not found.");
        let html = b"<html>502 Bad Gateway hunter2</html>";
        let s = summarise_error_body(html, &["hunter2"]);
        assert!(s.starts_with("unrecognised body"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn status_errors_map_to_operator_or_upstream() {
        let e = status_error(CREATE_OPERATION, StatusCode::FORBIDDEN, b"{}", &[]);
        assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
        let e = status_error(
            CREATE_OPERATION,
            StatusCode::INTERNAL_SERVER_ERROR,
            b"",
            &[],
        );
        assert!(
            matches!(e, ProviderError::Upstream { operation, .. } if operation == CREATE_OPERATION),
            "{e:?}"
        );
    }

    #[test]
    fn create_response_accepts_documented_variants() {
        let r: CreateTokenResponse = serde_json::from_str(
            r#"{"token_id":"abc-1","access_token":"t","expires_in":"3600","scope":"s","token_type":"access_token"}"#,
        )
        .expect("string seconds");
        assert_eq!(r.expires_in, Some(3600));
        let r: CreateTokenResponse =
            serde_json::from_str(r#"{"token_id":"abc-1","access_token":"t"}"#)
                .expect("optional fields");
        assert_eq!(r.expires_in, None);
    }

    #[test]
    fn token_ids() {
        assert!(valid_token_id("6b1c7f4e-2b6a-4a43-9d3e-0f7e0a1c2b3d"));
        for bad in [
            "",
            "..",
            "me",
            "ME",
            "a/b",
            "a?b",
            "me%2F",
            &"x".repeat(129),
        ] {
            assert!(!valid_token_id(bad), "{bad:?}");
        }
    }
}
