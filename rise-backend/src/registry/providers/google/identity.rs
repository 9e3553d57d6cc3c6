//! Rise's own Google identity: the service account JSON key, the signed JWT assertion, and the
//! OAuth 2.0 access token Google exchanges it for, cached and shared by every request.
//!
//! The flow is Google's "Using OAuth 2.0 for Server to Server Applications"
//! (<https://developers.google.com/identity/protocols/oauth2/service-account>, "Preparing to make
//! an authorized API call" / "Making the access token request"): a JWT with header
//! `{"alg":"RS256","typ":"JWT"}` (plus `kid`, the key's `private_key_id`) and claims `iss` (the
//! service account's email), `scope` (space-delimited), `aud` (the key's `token_uri`, always
//! `https://oauth2.googleapis.com/token` for Google-issued keys), `iat`, and `exp` (at most one
//! hour after `iat`), signed with the key's RSA private key; POSTed as a form with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`. The reply is
//! `{"access_token", "expires_in", "token_type": "Bearer"}`. The key file's fields are those of
//! a JSON key as Google issues it (`type`, `client_email`, `private_key`, `private_key_id`,
//! `token_uri`, ...; <https://google.aip.dev/auth/4112>).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::client::{GoogleClient, TOKEN_OPERATION, parse_endpoint};
use crate::registry::ProviderError;
use crate::secrets::Secret;

/// The scope of Rise's own token: IAM Credentials' `generateAccessToken` requires it.
pub(super) const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google refuses assertions that live longer than one hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// A cached token is replaced this long before it expires (or halfway through a shorter life),
/// so a request never carries a token that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The fields of a service account JSON key that Rise reads; the others are ignored.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<SecretString>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    universe_domain: Option<String>,
}

/// The universe of Google Cloud's public APIs: what a key without `universe_domain` is for, and
/// the only one whose registry hosts (`*-docker.pkg.dev`, `gcr.io`) and IAM endpoint Rise knows.
const DEFAULT_UNIVERSE: &str = "googleapis.com";

/// A parsed service account key. Holds the private key; its `Debug` shows none of it.
pub(super) struct ServiceAccountKey {
    pub client_email: String,
    key_id: Option<String>,
    signing_key: EncodingKey,
    pub token_uri: Url,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("key_id", &self.key_id)
            .field("token_uri", &self.token_uri.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl ServiceAccountKey {
    /// Parse a JSON key. Errors say which field is wrong, never a value from the key.
    pub fn parse(json: &SecretString, insecure_http: bool) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_str(json.expose_secret()).map_err(|e| {
            format!(
                "service_account_key is not a service account JSON key ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        if let Some(kind) = file.kind.as_deref()
            && kind != "service_account"
        {
            return Err(format!(
                "service_account_key has type {:?}; Rise needs a service account key (type \"service_account\")",
                kind.chars().take(40).collect::<String>()
            ));
        }
        // An empty `universe_domain` is as good as none: the default universe.
        if let Some(universe) = file.universe_domain.as_deref().map(str::trim)
            && !universe.is_empty()
            && !universe.eq_ignore_ascii_case(DEFAULT_UNIVERSE)
        {
            return Err(format!(
                "service_account_key is for the universe {:?}; Rise's google provider serves Google Cloud's default universe ({DEFAULT_UNIVERSE}) only, whose registries are LOCATION-docker.pkg.dev and gcr.io: use a key of a service account there",
                universe.chars().take(100).collect::<String>()
            ));
        }
        let client_email = file
            .client_email
            .filter(|e| !e.trim().is_empty())
            .ok_or("service_account_key has no client_email")?;
        let private_key = file
            .private_key
            .filter(|k| !k.expose_secret().trim().is_empty())
            .ok_or("service_account_key has no private_key")?;
        let token_uri = file
            .token_uri
            .ok_or("service_account_key has no token_uri")?;
        let token_uri = parse_endpoint("service_account_key token_uri", &token_uri, insecure_http)?;
        let signing_key = EncodingKey::from_rsa_pem(private_key.expose_secret().as_bytes())
            .map_err(|_| {
                "service_account_key private_key is not a PEM RSA private key".to_owned()
            })?;
        Ok(Self {
            client_email: client_email.trim().to_owned(),
            key_id: file.private_key_id.filter(|k| !k.is_empty()),
            signing_key,
            token_uri,
        })
    }

    /// The signed JWT assertion for the token endpoint, issued at `now` (seconds since the epoch).
    fn assertion(&self, now: u64) -> Result<SecretString, ProviderError> {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid = self.key_id.clone();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: CLOUD_PLATFORM_SCOPE,
            aud: self.token_uri.as_str(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map(SecretString::from)
            // jsonwebtoken's errors name the failure kind, never the key.
            .map_err(|e| ProviderError::Misconfigured(format!("signing the assertion: {e}")))
    }
}

/// Rise's access token for one call, and who it belongs to.
pub(super) struct RiseToken {
    pub token: SecretString,
    pub client_email: String,
}

struct CachedToken {
    token: SecretString,
    client_email: String,
    refresh_at: Instant,
}

/// The service account key (re-read when it is a Secrets Manager reference) and the cached token.
pub(super) struct RiseIdentity {
    key: Secret,
    insecure_http: bool,
    /// How long a request waits for another request's refresh (the upstream timeout): a hanging
    /// token endpoint must not queue requests behind each other without bound.
    wait: Duration,
    /// One lock for reading and refreshing: concurrent requests that find the token stale wait
    /// for the one refresh instead of each asking Google.
    cached: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for RiseIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RiseIdentity")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RiseIdentity {
    /// `key` must already have been checked with [`ServiceAccountKey::parse`].
    pub fn new(key: Secret, insecure_http: bool, wait: Duration) -> Self {
        Self {
            key,
            insecure_http,
            wait,
            cached: Mutex::new(None),
        }
    }

    /// The cached token, or a new one when it is missing or close to expiry.
    pub async fn token(&self, client: &GoogleClient) -> Result<RiseToken, ProviderError> {
        let mut slot = tokio::time::timeout(self.wait, self.cached.lock())
            .await
            .map_err(|_| ProviderError::Timeout {
                operation: TOKEN_OPERATION,
                after: self.wait,
            })?;
        if let Some(cached) = slot.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(RiseToken {
                token: cached.token.clone(),
                client_email: cached.client_email.clone(),
            });
        }
        *slot = None;
        let key = ServiceAccountKey::parse(&self.key.current().await, self.insecure_http)
            .map_err(ProviderError::Misconfigured)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ProviderError::Misconfigured("the system clock is before 1970".into()))?
            .as_secs();
        let assertion = key.assertion(now)?;
        let sent_at = Instant::now();
        let granted = client
            .exchange_assertion(&key.token_uri, &assertion, &key.client_email)
            .await?;
        if granted.expires_in == 0 {
            return Err(ProviderError::Upstream {
                operation: TOKEN_OPERATION,
                detail: "HTTP 200 with expires_in 0".into(),
            });
        }
        let lifetime = super::super::upstream::cache_lifetime(granted.expires_in);
        // Counted from before the request: never later than Google's own expiry.
        let refresh_at = sent_at + lifetime - REFRESH_MARGIN.min(lifetime / 2);
        tracing::debug!(
            service_account = %key.client_email,
            expires_in = granted.expires_in,
            "obtained Rise's Google access token"
        );
        *slot = Some(CachedToken {
            token: granted.access_token.clone(),
            client_email: key.client_email.clone(),
            refresh_at,
        });
        Ok(RiseToken {
            token: granted.access_token,
            client_email: key.client_email,
        })
    }

    /// Drop `token` from the cache (Google refused it), unless another request already
    /// replaced it.
    pub async fn forget(&self, token: &SecretString) {
        let mut slot = self.cached.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == token.expose_secret())
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_errors_name_the_field_not_the_value() {
        let parse = |json: &str| {
            ServiceAccountKey::parse(&SecretString::from(json.to_owned()), false)
                .expect_err("invalid key")
        };
        let e = parse("not json hunter2");
        assert!(e.contains("not a service account JSON key"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(r#"{"type":"authorized_user","client_email":"a@b"}"#);
        assert!(e.contains("authorized_user"), "{e}");
        let e = parse(r#"{"client_email":"a@b.c","token_uri":"https://t"}"#);
        assert!(e.contains("no private_key"), "{e}");
        let e = parse(
            r#"{"client_email":"a@b.c","private_key":"hunter2-not-pem","token_uri":"https://oauth2.googleapis.com/token"}"#,
        );
        assert!(e.contains("not a PEM RSA private key"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(r#"{"private_key":"x","token_uri":"https://t"}"#);
        assert!(e.contains("no client_email"), "{e}");
        let e = parse(r#"{"client_email":"a@b.c","private_key":"x","token_uri":"http://t"}"#);
        assert!(e.contains("clear text"), "{e}");
    }

    /// A key of another universe (a sovereign cloud) is refused when it is read, naming the
    /// universe, rather than sending its tokens to the default universe's IAM endpoint.
    #[test]
    fn a_key_of_another_universe_is_refused_by_name() {
        let parse = |universe: &str| {
            let json = format!(
                r#"{{"type":"service_account","universe_domain":"{universe}","client_email":"a@b.c","private_key":"x","token_uri":"https://oauth2.{universe}/token"}}"#
            );
            ServiceAccountKey::parse(&SecretString::from(json), false)
        };
        let e = parse("sovereign.example").expect_err("another universe");
        assert!(e.contains("\"sovereign.example\""), "{e}");
        assert!(e.contains("googleapis.com"), "{e}");
        // The default universe, named in any case or left empty, goes on to the next check
        // (this key has no PEM).
        for default in ["googleapis.com", "GoogleAPIs.com", ""] {
            let e = parse(default).expect_err("not a PEM");
            assert!(e.contains("not a PEM RSA private key"), "{default:?}: {e}");
        }
    }
}
