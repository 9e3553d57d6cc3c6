//! Reading a JWT's claims WITHOUT verifying it. The client uses this only to know when a token
//! expires (to renew its own, and never to serve a cached credential to an expired one); the
//! backend verifies every token. Nothing that grants access is keyed on unverified claims: anyone
//! can write a token with someone else's `iss` and `sub`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// The few claims the client looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct UnverifiedClaims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: Option<u64>,
}

/// The claims of a JWT-shaped token, `None` for opaque tokens or undecodable payloads.
pub fn claims(token: &str) -> Option<UnverifiedClaims> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// True when the token looks like a JWT (three base64url parts with a JSON payload).
pub fn is_jwt(token: &str) -> bool {
    claims(token).is_some()
}

/// True when the token is a JWT whose `exp` (Unix seconds) is at or before `now`; opaque tokens
/// and JWTs without `exp` are not known to have expired.
pub fn has_expired(token: &str, now: u64) -> bool {
    claims(token)
        .and_then(|c| c.exp)
        .is_some_and(|exp| exp <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!(
            "eyJhbGciOiJub25lIn0.{}.sig",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_claims_of_jwts_only() {
        let t = token(r#"{"iss":"https://idp","sub":"alice","exp":42,"aud":["x"]}"#);
        let c = claims(&t).expect("claims");
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, Some(42));
        assert!(claims("opaque-token").is_none());
        assert!(claims("a.b.c.d").is_none());
        assert!(claims("a.!!!.c").is_none());
    }

    #[test]
    fn expiry_is_known_only_for_jwts_with_exp() {
        let t = token(r#"{"sub":"alice","exp":42}"#);
        assert!(has_expired(&t, 42));
        assert!(!has_expired(&t, 41));
        assert!(!has_expired(&token(r#"{"sub":"alice"}"#), u64::MAX));
        assert!(!has_expired("opaque-token", u64::MAX));
    }
}
