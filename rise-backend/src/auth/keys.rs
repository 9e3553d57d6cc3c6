//! Verification keys: each JWK is parsed once (when it is fetched or loaded) into a
//! [`DecodingKey`] tagged with its key type, so the hot path only looks a key up and verifies.
//!
//! Architecture Invariant: the key's type dictates the algorithms it verifies. A token's `alg`
//! header only *selects among* those algorithms; it never chooses the key type, so an RSA public key
//! can never be used as an HMAC secret (algorithm confusion), and symmetric (`oct`) JWKs are never
//! loaded at all.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// At most this many keys are taken from one JWKS; real issuers publish a handful.
const MAX_KEYS: usize = 64;
/// RSA moduli shorter than 2048 bits are refused (and the verifier would refuse them anyway).
const MIN_RSA_MODULUS_BYTES: usize = 256;
const MAX_RSA_MODULUS_BYTES: usize = 1024;

/// The asymmetric key types Rise verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether this key type is used with `alg`: the only place algorithms meet key types.
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One public key, ready to verify.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    kind: KeyKind,
    /// The JWK's `alg`, when it names one: the token header must then name exactly it.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// A P-256 key from its uncompressed SEC1 point (`04 || x || y`), as the local issuer has it.
    pub(crate) fn p256_from_point(point: &[u8]) -> Self {
        VerifyKey {
            kind: KeyKind::P256,
            alg: Some(Algorithm::ES256),
            key: DecodingKey::from_ec_der(point),
        }
    }

    /// Whether a token whose header says `alg` may be verified with this key.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.verifies(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Verify `signature` (base64url, as in the token) over `signing_input`. The caller has
    /// checked [`VerifyKey::accepts`]; a signature that is not even base64url is simply invalid.
    pub(crate) fn verify(&self, alg: Algorithm, signing_input: &[u8], signature: &str) -> bool {
        debug_assert!(self.accepts(alg));
        jsonwebtoken::crypto::verify(signature, signing_input, &self.key, alg).unwrap_or(false)
    }
}

/// An issuer's keys by `kid`.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, VerifyKey>,
    /// Keys published without a `kid`; usable only when they are the issuer's only key.
    without_kid: Vec<VerifyKey>,
}

/// The outcome of looking a token's `kid` up.
pub(crate) enum Lookup<'a> {
    Found(&'a VerifyKey),
    NotFound,
    /// The token names no `kid` and the issuer publishes several keys.
    Ambiguous,
}

impl KeySet {
    pub(crate) fn single(kid: String, key: VerifyKey) -> Self {
        KeySet {
            by_kid: HashMap::from([(kid, key)]),
            without_kid: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub(crate) fn find(&self, kid: Option<&str>) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) => Lookup::Found(key),
                None => Lookup::NotFound,
            },
            None => match (
                self.len(),
                self.by_kid.values().chain(&self.without_kid).next(),
            ) {
                (1, Some(only)) => Lookup::Found(only),
                (0, _) => Lookup::NotFound,
                _ => Lookup::Ambiguous,
            },
        }
    }

    /// Parse a JWKS document (`{"keys": [...]}`). Keys Rise cannot or must not use (encryption
    /// keys, symmetric keys, unknown types, short RSA moduli) are skipped and reported in the
    /// second value, so one odd key does not take an issuer's other keys down with it.
    pub(crate) fn from_jwks(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        let jwks: Jwks = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in jwks.keys.into_iter().enumerate() {
            if i >= MAX_KEYS {
                skipped.push(format!("keys beyond the first {MAX_KEYS} are ignored"));
                break;
            }
            match parse_jwk(value) {
                Ok((Some(kid), key)) => match set.by_kid.entry(kid) {
                    Entry::Occupied(e) => {
                        skipped.push(format!(
                            "key {i}: duplicate kid {:?}, the first wins",
                            e.key()
                        ));
                    }
                    Entry::Vacant(e) => {
                        e.insert(key);
                    }
                },
                Ok((None, key)) => set.without_kid.push(key),
                Err(reason) => skipped.push(format!("key {i}: {reason}")),
            }
        }
        Ok((set, skipped))
    }
}

/// The members of a JWK Rise reads (RFC 7517, 7518, 8037).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn parse_jwk(value: serde_json::Value) -> Result<(Option<String>, VerifyKey), String> {
    let jwk: RawJwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (`use` is not \"sig\")".into());
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("`key_ops` does not include \"verify\"".into());
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(name) => Some(asymmetric_algorithm(name).ok_or_else(|| {
            format!("`alg` {name:?} is not an asymmetric signature algorithm Rise supports")
        })?),
    };
    let bytes = |field: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let text = field
            .as_deref()
            .ok_or_else(|| format!("{} key lacks `{name}`", jwk.kty))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let (kind, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let n = bytes(&jwk.n, "n")?;
            let e = bytes(&jwk.e, "e")?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            if n.len() < MIN_RSA_MODULUS_BYTES || n.len() > MAX_RSA_MODULUS_BYTES {
                return Err(format!(
                    "RSA modulus of {} bits; 2048 to 8192 bits are accepted",
                    n.len() * 8
                ));
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent out of range".into());
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, e))
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" {
                (KeyKind::P256, 32)
            } else {
                (KeyKind::P384, 48)
            };
            let x = bytes(&jwk.x, "x")?;
            let y = bytes(&jwk.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates must be {len} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        ("OKP", Some("Ed25519")) => {
            let x = bytes(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 public key must be 32 bytes".into());
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        ("oct", _) => return Err("symmetric (`oct`) keys are never trusted".into()),
        (kty, crv) => {
            return Err(format!(
                "unsupported key type {kty:?}{}",
                crv.map(|c| format!(" curve {c:?}")).unwrap_or_default()
            ));
        }
    };
    if let Some(alg) = alg
        && !kind.verifies(alg)
    {
        return Err(format!("`alg` {alg:?} does not fit a {kind:?} key"));
    }
    Ok((jwk.kid, VerifyKey { kind, alg, key }))
}

/// Parse an algorithm name, admitting only the asymmetric signature algorithms Rise verifies.
/// `none` and the HMAC family are never admitted: a shared secret has no place in a public key set.
pub(crate) fn asymmetric_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    let alg: Algorithm = name.parse().ok()?;
    // An allow-list: an algorithm a future jsonwebtoken adds is refused until Rise knows it.
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA => Some(alg),
        _ => None,
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reasons(jwks: serde_json::Value) -> (usize, Vec<String>) {
        let (set, skipped) =
            KeySet::from_jwks(jwks.to_string().as_bytes()).expect("valid JWKS document");
        (set.len(), skipped)
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let x32 = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let (n, skipped) = reasons(json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": URL_SAFE_NO_PAD.encode([1u8; 128]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "badlen", "x": x32, "y": "AQAB"},
            {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": x32, "y": x32},
            {"kty": "OKP", "crv": "Ed25519", "kid": "hs-alg", "alg": "HS256", "x": x32},
            {"kty": "OKP", "crv": "Ed25519", "kid": "mismatch", "alg": "ES256", "x": x32},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ok", "alg": "EdDSA", "x": x32},
        ]}));
        assert_eq!(n, 1, "only the Ed25519 key is usable: {skipped:?}");
        let all = skipped.join("\n");
        for expected in [
            "symmetric",
            "not a signature key",
            "1024 bits",
            "32 bytes",
            "secp256k1",
            "\"HS256\" is not an asymmetric",
            "does not fit",
        ] {
            assert!(all.contains(expected), "{expected:?} missing from {all}");
        }
    }

    #[test]
    fn not_a_jwks_is_an_error() {
        assert!(KeySet::from_jwks(b"[]").is_err());
        assert!(KeySet::from_jwks(b"{\"keys\": 3}").is_err());
    }

    #[test]
    fn key_type_dictates_algorithm() {
        let key = VerifyKey::p256_from_point(&[4; 65]);
        assert!(key.accepts(Algorithm::ES256));
        for alg in [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            assert!(!key.accepts(alg), "{alg:?}");
        }
    }

    #[test]
    fn missing_kid_is_usable_only_for_a_single_key() {
        let x32 = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let one = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x32}]});
        let (set, _) = KeySet::from_jwks(one.to_string().as_bytes()).expect("valid");
        assert!(matches!(set.find(None), Lookup::Found(_)));
        assert!(matches!(set.find(Some("a")), Lookup::NotFound));
        let two = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x32},
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x32},
        ]});
        let (set, _) = KeySet::from_jwks(two.to_string().as_bytes()).expect("valid");
        assert!(matches!(set.find(None), Lookup::Ambiguous));
        assert!(matches!(set.find(Some("a")), Lookup::Found(_)));
    }
}
