//! The two Google calls Rise makes, their wire types, and how their failures map to
//! [`ProviderError`].
//!
//! Shapes come from Google's public documentation (no Google service runs in Rise's tests; the
//! tests use a fake built from the same documents):
//! - Token endpoint (`token_uri` of the key, `https://oauth2.googleapis.com/token`): form POST
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`; 200
//!   `{"access_token", "expires_in", "token_type"}`; errors are OAuth 2.0 bodies
//!   `{"error": "invalid_grant", "error_description": "..."}`
//!   (<https://developers.google.com/identity/protocols/oauth2/service-account>).
//! - IAM Service Account Credentials `generateAccessToken`:
//!   `POST https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken`
//!   (the `-` wildcard is required), bearer-authenticated, JSON body `{"delegates": [..],
//!   "scope": [..] (at least one), "lifetime": "<seconds>s"}`; 200 `{"accessToken",
//!   "expireTime"}` (RFC 3339, Z-normalised). The caller needs
//!   `iam.serviceAccounts.getAccessToken` on the target account (role
//!   `roles/iam.serviceAccountTokenCreator`). `lifetime` defaults to one hour, which is also the
//!   maximum unless the account is listed in an organization policy enforcing
//!   `constraints/iam.allowServiceAccountCredentialLifetimeExtension`, which allows up to 12
//!   hours
//!   (<https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken>).
//!   `lifetime` is a protobuf `Duration` in JSON: decimal seconds with an `s` suffix.
//! - Errors of Google Cloud APIs: `{"error": {"code": 403, "message": "...", "status":
//!   "PERMISSION_DENIED", "details": [..]}}` (<https://cloud.google.com/apis/design/errors>).

use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::identity::CLOUD_PLATFORM_SCOPE;
use crate::registry::ProviderError;
use crate::registry::providers::artifactory::redact_for_log;
use crate::registry::providers::upstream;

pub(super) const TOKEN_OPERATION: &str = "Google token endpoint";
pub(super) const IAM_OPERATION: &str = "Google generateAccessToken";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's replies are small; anything bigger is not a reply Rise can use.
const MAX_BODY: usize = 64 * 1024;
/// `generateAccessToken`'s default maximum lifetime, without the organization policy.
pub(super) const DEFAULT_MAX_LIFETIME_SECS: u64 = 3600;

/// The token endpoint's 200 body. `access_token` is the only secret.
#[derive(Deserialize)]
pub(super) struct GrantedToken {
    pub access_token: SecretString,
    #[serde(default)]
    pub expires_in: u64,
}

#[derive(Serialize)]
struct GenerateAccessTokenRequest<'a> {
    scope: [&'a str; 1],
    lifetime: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateAccessTokenResponse {
    access_token: SecretString,
    expire_time: String,
}

/// A token minted for an impersonated service account.
pub(super) struct MintedToken {
    pub access_token: SecretString,
    pub expire_time: SystemTime,
}

/// A failed `generateAccessToken`, and whether Google refused Rise's own token (HTTP 401), so
/// the caller can drop it from its cache.
pub(super) struct IamFailure {
    pub error: ProviderError,
    pub rise_token_refused: bool,
}

impl From<ProviderError> for IamFailure {
    fn from(error: ProviderError) -> Self {
        Self {
            error,
            rise_token_refused: false,
        }
    }
}

/// One HTTP client for both endpoints.
#[derive(Debug)]
pub(super) struct GoogleClient {
    http: reqwest::Client,
    iam_base: Url,
    timeout: Duration,
}

impl GoogleClient {
    pub fn new(
        iam_base: Url,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let http =
            upstream::http_client(connect_timeout, timeout, reqwest::header::HeaderMap::new())
                .map_err(ProviderError::Misconfigured)?;
        Ok(Self {
            http,
            iam_base,
            timeout,
        })
    }

    /// Exchange a signed assertion for Rise's own access token.
    pub async fn exchange_assertion(
        &self,
        token_uri: &Url,
        assertion: &SecretString,
        client_email: &str,
    ) -> Result<GrantedToken, ProviderError> {
        // The single place the assertion is exposed: to the token endpoint it is addressed to.
        let builder = self.http.post(token_uri.clone()).form(&[
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.expose_secret()),
        ]);
        let secrets = [assertion.expose_secret()];
        let (status, body) = self.send(TOKEN_OPERATION, builder).await?;
        if status != StatusCode::OK {
            let summary = summarise_error_body(&body, &secrets);
            let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                || (status == StatusCode::BAD_REQUEST
                    && oauth_error_code(&body).is_some_and(|c| {
                        matches!(
                            c.as_str(),
                            "invalid_grant" | "invalid_client" | "unauthorized_client"
                        )
                    }));
            return Err(if refused {
                ProviderError::Misconfigured(format!(
                    "{TOKEN_OPERATION} refused Rise's service account key for {client_email} (HTTP {status}: {summary}); check that the key is current and not disabled or deleted, that the account is enabled, and that this host's clock is right"
                ))
            } else {
                ProviderError::Upstream {
                    operation: TOKEN_OPERATION,
                    detail: format!("HTTP {status}: {summary}"),
                }
            });
        }
        // Never put the body in an error: on success it holds the token.
        serde_json::from_slice::<GrantedToken>(&body)
            .map_err(|e| upstream::malformed(TOKEN_OPERATION, 200, &e, body.len()))
            .and_then(|t| {
                if t.access_token.expose_secret().is_empty() {
                    Err(ProviderError::Upstream {
                        operation: TOKEN_OPERATION,
                        detail: "HTTP 200 without an access_token".into(),
                    })
                } else {
                    Ok(t)
                }
            })
    }

    /// Mint an access token for `service_account`, authenticated as Rise (`rise_email`, for
    /// error messages).
    pub async fn generate_access_token(
        &self,
        rise_token: &SecretString,
        rise_email: &str,
        service_account: &str,
        lifetime_secs: u64,
    ) -> Result<MintedToken, IamFailure> {
        let mut url = self.iam_base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                ProviderError::Misconfigured("iam_credentials_url cannot have a path".into())
            })?
            .pop_if_empty()
            .extend([
                "v1",
                "projects",
                "-",
                "serviceAccounts",
                &format!("{service_account}:generateAccessToken"),
            ]);
        let body = GenerateAccessTokenRequest {
            scope: [CLOUD_PLATFORM_SCOPE],
            lifetime: format!("{lifetime_secs}s"),
        };
        // The single place Rise's own token is exposed: to the API it was minted for.
        // reqwest marks the Authorization header sensitive.
        let builder = self
            .http
            .post(url)
            .bearer_auth(rise_token.expose_secret())
            .json(&body);
        let secrets = [rise_token.expose_secret()];
        let (status, body) = self.send(IAM_OPERATION, builder).await?;
        if status != StatusCode::OK {
            let detail = format!("HTTP {status}: {}", summarise_error_body(&body, &secrets));
            let error = match status {
                StatusCode::UNAUTHORIZED => ProviderError::Misconfigured(format!(
                    "{IAM_OPERATION} for {service_account} refused the access token of Rise's service account {rise_email} ({detail}); Rise will obtain a new one on the next request"
                )),
                // Google answers 403 too when the API is off in the calling project
                // (`SERVICE_DISABLED`): granting roles would not help then.
                StatusCode::FORBIDDEN if service_disabled(&body) => {
                    ProviderError::Misconfigured(format!(
                        "the IAM Service Account Credentials API is disabled in the project of Rise's service account {rise_email} ({detail}): enable iamcredentials.googleapis.com there"
                    ))
                }
                StatusCode::FORBIDDEN => ProviderError::Misconfigured(format!(
                    "Rise's service account {rise_email} may not mint tokens for {service_account} ({detail}): grant it roles/iam.serviceAccountTokenCreator (permission iam.serviceAccounts.getAccessToken) on {service_account}, and check that {service_account} exists and is enabled"
                )),
                StatusCode::NOT_FOUND => ProviderError::Misconfigured(format!(
                    "service account {service_account} was not found ({detail}); create it or correct the account template"
                )),
                StatusCode::BAD_REQUEST if lifetime_secs > DEFAULT_MAX_LIFETIME_SECS => {
                    ProviderError::Misconfigured(format!(
                        "{IAM_OPERATION} for {service_account} refused a lifetime of {lifetime_secs}s ({detail}): lifetimes over 1h need an organization policy enforcing constraints/iam.allowServiceAccountCredentialLifetimeExtension that lists {service_account}; otherwise lower max_ttl to 1h"
                    ))
                }
                _ => ProviderError::Upstream {
                    operation: IAM_OPERATION,
                    detail,
                },
            };
            return Err(IamFailure {
                error,
                rise_token_refused: status == StatusCode::UNAUTHORIZED,
            });
        }
        let parsed: GenerateAccessTokenResponse = serde_json::from_slice(&body)
            .map_err(|e| upstream::malformed(IAM_OPERATION, 200, &e, body.len()))?;
        if parsed.access_token.expose_secret().is_empty() {
            return Err(ProviderError::Upstream {
                operation: IAM_OPERATION,
                detail: "HTTP 200 without an accessToken".into(),
            }
            .into());
        }
        let expire_time = humantime::parse_rfc3339(parsed.expire_time.trim()).map_err(|_| {
            ProviderError::Upstream {
                operation: IAM_OPERATION,
                detail: format!(
                    "HTTP 200 with an expireTime that is not an RFC 3339 UTC time: {:?}",
                    redact_for_log(&parsed.expire_time, &secrets)
                ),
            }
        })?;
        Ok(MintedToken {
            access_token: parsed.access_token,
            expire_time,
        })
    }

    /// One call to Google, timed for `rise_upstream_request_duration_seconds` whatever its outcome.
    /// URLs hold no secret: the assertion and tokens travel in bodies and headers.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ProviderError> {
        let reply =
            upstream::exchange("google", operation, self.timeout, MAX_BODY, builder).await?;
        Ok((reply.status, reply.body))
    }
}

/// An `https://` endpoint (or `http://` with `insecure_http`): see [`upstream::endpoint_url`].
pub(super) fn parse_endpoint(key: &str, raw: &str, insecure_http: bool) -> Result<Url, String> {
    upstream::endpoint_url(key, raw, insecure_http, None)
}

/// The OAuth 2.0 `error` code of a token endpoint reply, if the body is one.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()?.get("error")? {
        Value::String(code) => Some(code.clone()),
        _ => None,
    }
}

/// Whether a Google Cloud error says the API is disabled in the calling project: an
/// `ErrorInfo` detail with reason `SERVICE_DISABLED`.
fn service_disabled(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    v.pointer("/error/details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("SERVICE_DISABLED"))
        })
}

/// `STATUS (code): message` from a Google Cloud error, `error: description` from an OAuth 2.0
/// error, or the redacted raw text; always redacted and bounded.
fn summarise_error_body(body: &[u8], secrets: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let summary = match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(Value::Object(e)) => {
            let field = |k: &str| match e.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "?".to_owned(),
            };
            format!(
                "{} ({}): {}",
                field("status"),
                field("code"),
                field("message")
            )
        }
        Some(Value::String(code)) => {
            let description = parsed
                .as_ref()
                .and_then(|v| v.get("error_description"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{code}: {description}")
        }
        _ => return format!("unrecognised body {:?}", redact_for_log(&text, secrets)),
    };
    redact_for_log(&summary, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_api_is_told_from_a_missing_role() {
        let disabled = br#"{"error":{"code":403,"message":"IAM Service Account Credentials API has not been used in project 123 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com"}]}}"#;
        let denied = br#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"IAM_PERMISSION_DENIED"}]}}"#;
        assert!(service_disabled(disabled));
        assert!(!service_disabled(denied));
        assert!(!service_disabled(b"not json"));
        assert!(!service_disabled(
            br#"{"error":{"details":"SERVICE_DISABLED"}}"#
        ));
    }

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let cloud = br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied for hunter2","status":"PERMISSION_DENIED"}}"#;
        // Long dotted names look like tokens to the redaction and go too: the messages Rise
        // builds name the permission themselves.
        assert_eq!(
            summarise_error_body(cloud, &["hunter2"]),
            "PERMISSION_DENIED (403): Permission '[REDACTED]' denied for [REDACTED]"
        );
        let oauth = br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(
            summarise_error_body(oauth, &[]),
            "invalid_grant: Invalid JWT Signature."
        );
        assert_eq!(oauth_error_code(oauth).as_deref(), Some("invalid_grant"));
        let html = b"<html>502 ya29.a0AfH6SMBx1234567890abcdefghijklmnopqrstuvwxyz</html>";
        let s = summarise_error_body(html, &[]);
        assert!(s.starts_with("unrecognised body"), "{s}");
        assert!(!s.contains("ya29.a0AfH6SMBx1234567890"), "{s}");
    }
}
