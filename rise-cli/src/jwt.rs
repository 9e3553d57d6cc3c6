//! Reading a JWT's claims WITHOUT verifying it. The client uses this only to name the caller (cache
//! keys, messages) and to know when its own token expires; the backend verifies every token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

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

/// A stable, non-secret name for the caller a token stands for: `iss` + `sub` when the token is
/// a JWT, else a hash of the token (which reveals nothing about it).
pub fn identity(token: &str) -> String {
    match claims(token) {
        Some(UnverifiedClaims {
            iss: Some(iss),
            sub: Some(sub),
            ..
        }) => format!("{iss} {sub}"),
        _ => {
            let digest = Sha256::digest(token.as_bytes());
            let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            format!("opaque:{hex}")
        }
    }
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
        assert_eq!(identity(&t), "https://idp alice");
        assert!(claims("opaque-token").is_none());
        assert!(claims("a.b.c.d").is_none());
        assert!(claims("a.!!!.c").is_none());
        let opaque = identity("opaque-token");
        assert!(opaque.starts_with("opaque:"), "{opaque}");
        assert!(!opaque.contains("opaque-token"));
    }
}
