//! [`Authenticator`]: bearer JWT in, [`Principal`] out.
//!
//! Steps, each with its own [`AuthError`]:
//! 1. Split the compact JWS and decode header and payload (`MalformedToken`). Encrypted tokens
//!    (JWE), `crit` headers and oversized tokens are refused.
//! 2. The header's `alg` must be an asymmetric signature algorithm (`none` and HMAC never are;
//!    `AlgorithmNotAllowed`).
//! 3. The payload's `iss`, read *unverified* and used for nothing but choosing the issuer, selects
//!    one configured issuer (`UnknownIssuer`), whose `algorithms` must list `alg`.
//! 4. The issuer's key named by `kid` (`UnknownKey`; a JWKS refetch first, see [`super::jwks`])
//!    must be of a type that verifies with `alg` (`AlgorithmNotAllowed`), and the signature must
//!    verify (`BadSignature`).
//! 5. Only now are the claims trusted: `exp` is required (`Expired`), `nbf` and `iat` must not be
//!    in the future (`NotYetValid`), `aud` must name the issuer's audience (`WrongAudience`), and
//!    the subject claim must be present (`MissingClaim`). Clock skew up to `auth.leeway` is allowed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::{FETCH_TIMEOUT, RemoteKeys};
use super::keys::{KeySet, Lookup, VerifyKey, asymmetric_algorithm};
use super::{AuthError, LocalIssuer, Principal};
use crate::config::{AuthConfig, LOCAL_ISSUER_NAME, OidcIssuerConfig};

/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Attacker-supplied values echoed in errors are cut to this many characters.
const MAX_ECHO_CHARS: usize = 64;
/// Algorithms an OIDC issuer accepts when its `algorithms` is not set.
const DEFAULT_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// Entries in the verified-token cache.
const VERIFIED_CACHE_CAPACITY: usize = 8192;

/// Verifies bearer tokens against the configured issuers. Cheap to share (`Arc`); `verify` takes
/// `&self` and holds no lock across an `.await`.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    /// `iss` claim -> index into `issuers`.
    by_iss: HashMap<String, usize>,
    leeway: i64,
    verified: VerifiedCache,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// One trusted issuer.
struct Issuer {
    /// The configured name (`local` or the key under `[auth.issuers]`).
    name: String,
    /// The `iss` its tokens carry.
    iss: String,
    audience: String,
    subject_claim: String,
    groups_claim: String,
    algorithms: Vec<Algorithm>,
    keys: Keys,
    /// The longest a token may still be valid when presented.
    max_lifetime: Duration,
}

enum Keys {
    /// Keys known at start-up (the local issuer).
    Fixed(KeySet),
    /// Keys fetched from the issuer and refreshed.
    Remote(Arc<RemoteKeys>),
}

impl Authenticator {
    /// Trust the local issuer (when given) and every `[auth.issuers.NAME]`. Validates URLs and
    /// algorithms; starts fetching the OIDC issuers' keys in the background (an issuer that is down
    /// at start-up does not stop Rise from starting).
    pub async fn from_config(
        config: &AuthConfig,
        local: Option<LocalIssuer>,
    ) -> anyhow::Result<Self> {
        let authenticator = Self::from_config_offline(config, local).await?;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for issuer in &authenticator.issuers {
                if let Keys::Remote(remote) = &issuer.keys {
                    let remote = Arc::clone(remote);
                    runtime.spawn(async move { remote.refresh_unless_changed(0).await });
                }
            }
        }
        Ok(authenticator)
    }

    /// [`from_config`](Self::from_config) without starting the key fetches
    /// (`check-config --offline`); keys are still fetched when a token first needs them.
    pub async fn from_config_offline(
        config: &AuthConfig,
        local: Option<LocalIssuer>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // A redirect could lead a key fetch from https to http; issuers publish direct URLs.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("rise-backend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client for key fetches: {e}"))?;
        let mut issuers = Vec::new();
        if let Some(local) = local {
            issuers.push(Issuer {
                name: LOCAL_ISSUER_NAME.to_owned(),
                iss: local.issuer().to_owned(),
                audience: local.audience().to_owned(),
                subject_claim: "sub".to_owned(),
                groups_claim: "groups".to_owned(),
                algorithms: vec![Algorithm::ES256],
                keys: Keys::Fixed(KeySet::single(
                    local.key_id().to_owned(),
                    local.verify_key(),
                )),
                max_lifetime: local.max_ttl(),
            });
        }
        for (name, issuer_config) in &config.issuers {
            if issuer_config.jwks_refresh_floor.is_zero() {
                tracing::warn!(issuer = %name, "jwks_refresh_floor is 0s: every token with an unknown key id makes Rise fetch this issuer's keys again (one fetch at a time); keep it for tests and rotation drills");
            }
            let remote = Arc::new(RemoteKeys::new(name, issuer_config, client.clone())?);
            issuers.push(Issuer {
                name: name.clone(),
                iss: issuer_config.issuer.clone(),
                audience: issuer_config.audience.clone(),
                subject_claim: issuer_config.subject_claim.clone(),
                groups_claim: issuer_config.groups_claim.clone(),
                algorithms: parse_algorithms(name, issuer_config)?,
                keys: Keys::Remote(remote),
                max_lifetime: issuer_config.max_token_lifetime,
            });
        }
        Self::new(issuers, config.leeway)
    }

    fn new(issuers: Vec<Issuer>, leeway: Duration) -> anyhow::Result<Self> {
        let mut by_iss = HashMap::new();
        for (i, issuer) in issuers.iter().enumerate() {
            if let Some(other) = by_iss.insert(issuer.iss.clone(), i) {
                anyhow::bail!(
                    "issuers {} and {} both have issuer URL {:?}; tokens could not be told apart",
                    issuers[other].name,
                    issuer.name,
                    issuer.iss
                );
            }
        }
        Ok(Authenticator {
            issuers,
            by_iss,
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
            verified: VerifiedCache::default(),
        })
    }

    /// Whether `name` is a trusted issuer's configured name (`local` for the development one).
    pub fn knows_issuer(&self, name: &str) -> bool {
        self.issuers.iter().any(|issuer| issuer.name == name)
    }

    /// Names of the OIDC issuers whose keys have never been fetched since start-up (readiness:
    /// their callers would get 503 `issuer_unavailable`). Keys fetched once stay in use while the
    /// issuer is down, so an issuer never leaves this list's complement again.
    pub fn issuers_without_keys(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .filter(|issuer| match &issuer.keys {
                Keys::Fixed(_) => false,
                Keys::Remote(remote) => remote.snapshot().fetched_at.is_none(),
            })
            .map(|issuer| issuer.name.as_str())
            .collect()
    }

    /// Verify `token` (the bearer JWT, without `Bearer `) and map its claims to a [`Principal`].
    /// A token verified before is answered from the cache with the same shared principal.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        self.verify_at(token, unix_now()).await
    }

    async fn verify_at(&self, token: &str, now: i64) -> Result<Arc<Principal>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::MalformedToken(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.verified.get(&digest, now, self.leeway, |i| {
            self.issuers.get(i).map(Issuer::generation_for_reuse)
        }) {
            return Ok(principal);
        }

        let parsed = Compact::parse(token)?;
        let alg = admitted_algorithm(&parsed.header.alg)?;
        let iss = match parsed.claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            Some(_) => return Err(AuthError::MalformedToken("`iss` must be a string".into())),
            None => return Err(AuthError::MissingClaim("iss".into())),
        };
        let index = *self
            .by_iss
            .get(iss)
            .ok_or_else(|| AuthError::UnknownIssuer(echo(iss)))?;
        let issuer = &self.issuers[index];
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed(echo(&parsed.header.alg)));
        }
        let generation = issuer
            .verify_signature(
                alg,
                parsed.header.kid.as_deref(),
                parsed.signing_input,
                parsed.signature,
            )
            .await?;
        let times = check_claims(&parsed.claims, issuer, now, self.leeway)?;
        let principal = Arc::new(issuer.principal(parsed.claims, times.exp)?);
        self.verified.insert(
            digest,
            Verified {
                issuer: index,
                generation,
                not_before: times.not_before,
                exp: times.exp,
                principal: Arc::clone(&principal),
            },
            now,
            self.leeway,
        );
        Ok(principal)
    }
}

impl Issuer {
    /// Check the signature with the key `kid` names; returns the key-set generation it used.
    async fn verify_signature(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        signing_input: &str,
        signature: &str,
    ) -> Result<u64, AuthError> {
        match &self.keys {
            Keys::Fixed(set) => {
                check_signature(self.find(set, kid)?, kid, alg, signing_input, signature).map_err(
                    |e| match e {
                        AuthError::UnknownKey(kid) if self.name == LOCAL_ISSUER_NAME => {
                            AuthError::UnknownLocalKey(kid)
                        }
                        e => e,
                    },
                )?;
                Ok(0)
            }
            Keys::Remote(remote) => {
                let snapshot = remote.snapshot();
                if let Some(key) = self.find(&snapshot.keys, kid)? {
                    remote.refresh_if_stale(&snapshot);
                    check_signature(Some(key), kid, alg, signing_input, signature)?;
                    return Ok(snapshot.generation);
                }
                remote.refresh_unless_changed(snapshot.epoch).await;
                let snapshot = remote.snapshot();
                match self.find(&snapshot.keys, kid)? {
                    None if snapshot.fetched_at.is_none() => {
                        Err(AuthError::IssuerUnavailable(self.name.clone()))
                    }
                    key => {
                        check_signature(key, kid, alg, signing_input, signature)?;
                        Ok(snapshot.generation)
                    }
                }
            }
        }
    }

    /// The key for `kid`: `Ok(None)` when it is not (yet) known.
    fn find<'a>(
        &self,
        set: &'a KeySet,
        kid: Option<&str>,
    ) -> Result<Option<&'a VerifyKey>, AuthError> {
        match set.find(kid) {
            Lookup::Found(key) => Ok(Some(key)),
            Lookup::NotFound => Ok(None),
            Lookup::Ambiguous => Err(AuthError::MalformedToken(format!(
                "the token has no `kid` header and issuer {} publishes several keys",
                self.name
            ))),
        }
    }

    /// The key-set generation a cached verification must match to be reused.
    fn generation_for_reuse(&self) -> u64 {
        match &self.keys {
            Keys::Fixed(_) => 0,
            Keys::Remote(remote) => remote.generation_for_reuse(),
        }
    }

    /// Map verified claims to a principal with this issuer's claim names.
    fn principal(&self, claims: Map<String, Value>, exp: i64) -> Result<Principal, AuthError> {
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return Err(AuthError::MissingClaim(self.subject_claim.clone())),
        };
        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(g)) => vec![g.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad_groups())?,
            Some(_) => return Err(self.bad_groups()),
        };
        // Subjects and groups reach log lines, audit records and policy patterns: a newline or
        // NUL in them could forge a log line or hide in a match.
        if super::has_deceptive_chars(&subject) {
            return Err(AuthError::MalformedToken(format!(
                "claim `{}` contains control characters",
                self.subject_claim
            )));
        }
        if groups.iter().any(|g| super::has_deceptive_chars(g)) {
            return Err(AuthError::MalformedToken(format!(
                "claim `{}` contains control characters",
                self.groups_claim
            )));
        }
        Ok(Principal {
            issuer: self.name.clone(),
            issuer_url: self.iss.clone(),
            subject,
            groups,
            expires_at: UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
            claims,
        })
    }

    fn bad_groups(&self) -> AuthError {
        AuthError::MalformedToken(format!(
            "claim `{}` must be a string or an array of strings",
            self.groups_claim
        ))
    }
}

/// `None` key: the `kid` is not published. Otherwise the key must fit `alg` and the signature
/// must verify.
fn check_signature(
    key: Option<&VerifyKey>,
    kid: Option<&str>,
    alg: Algorithm,
    signing_input: &str,
    signature: &str,
) -> Result<(), AuthError> {
    let key = key.ok_or_else(|| AuthError::UnknownKey(echo(kid.unwrap_or_default())))?;
    if !key.accepts(alg) {
        return Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
    }
    if key.verify(alg, signing_input.as_bytes(), signature) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

fn parse_algorithms(name: &str, config: &OidcIssuerConfig) -> anyhow::Result<Vec<Algorithm>> {
    let Some(names) = &config.algorithms else {
        return Ok(DEFAULT_ALGORITHMS.to_vec());
    };
    anyhow::ensure!(
        !names.is_empty(),
        "auth.issuers.{name}.algorithms is empty: no token could ever verify"
    );
    names
        .iter()
        .map(|n| {
            asymmetric_algorithm(n).ok_or_else(|| {
                anyhow::anyhow!(
                    "auth.issuers.{name}.algorithms: {n:?} is not supported; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
                )
            })
        })
        .collect()
}

/// The header's `alg`, if it is one Rise ever verifies.
fn admitted_algorithm(name: &str) -> Result<Algorithm, AuthError> {
    asymmetric_algorithm(name).ok_or_else(|| AuthError::AlgorithmNotAllowed(echo(name)))
}

fn echo(untrusted: &str) -> String {
    untrusted.chars().take(MAX_ECHO_CHARS).collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A compact JWS, decoded but not verified.
struct Compact<'a> {
    header: JoseHeader,
    claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    signing_input: &'a str,
    signature: &'a str,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: a recipient must refuse a token whose critical extensions it does not
    /// understand; Rise understands none. Present with any value (`null` too) is refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// `true` for a member that is present, whatever its value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Ok(true)
}

impl<'a> Compact<'a> {
    fn parse(token: &'a str) -> Result<Self, AuthError> {
        let malformed = |m: &str| AuthError::MalformedToken(m.to_owned());
        let parts = token.split('.').count();
        if parts == 5 {
            return Err(malformed(
                "encrypted tokens (JWE) are not supported; send a signed JWT",
            ));
        }
        let (signing_input, signature) = match token.rsplit_once('.') {
            Some(split) if parts == 3 => split,
            _ => {
                return Err(malformed(
                    "a JWT has three base64url parts separated by dots",
                ));
            }
        };
        let (header, payload) = signing_input
            .split_once('.')
            .ok_or_else(|| malformed("a JWT has three base64url parts separated by dots"))?;
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed("the header is not base64url"))?;
        let header: JoseHeader = serde_json::from_slice(&header)
            .map_err(|_| malformed("the header is not a JSON object with a string `alg`"))?;
        if header.crit {
            return Err(malformed(
                "the header lists critical extensions (`crit`), which Rise does not support",
            ));
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| malformed("the payload is not base64url"))?;
        let claims: Map<String, Value> = serde_json::from_slice(&payload)
            .map_err(|_| malformed("the payload is not a JSON object"))?;
        Ok(Compact {
            header,
            claims,
            signing_input,
            signature,
        })
    }
}

/// The validity window of a verified token.
struct Times {
    exp: i64,
    /// The latest of `nbf` and `iat`, if any.
    not_before: Option<i64>,
}

/// Check `exp` (and how far off it is), `nbf`, `iat` and `aud` of signature-verified claims of
/// `issuer` at time `now`.
fn check_claims(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    now: i64,
    leeway: i64,
) -> Result<Times, AuthError> {
    let audience = issuer.audience.as_str();
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    let max_lifetime = i64::try_from(issuer.max_lifetime.as_secs()).unwrap_or(i64::MAX);
    if exp.saturating_sub(now) > max_lifetime.saturating_add(leeway) {
        return Err(AuthError::LifetimeTooLong(
            humantime::format_duration(issuer.max_lifetime).to_string(),
        ));
    }
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    let not_before = nbf.max(iat);
    if not_before.is_some_and(|t| t > now.saturating_add(leeway)) {
        return Err(AuthError::NotYetValid);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthError::WrongAudience {
            expected: audience.to_owned(),
        });
    }
    Ok(Times { exp, not_before })
}

/// A NumericDate claim (seconds since 1970, possibly fractional), or `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else {
                match n.as_f64() {
                    // Saturating float-to-int conversion; the range check keeps `as` honest.
                    Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                    _ => Err(AuthError::MalformedToken(format!(
                        "claim `{name}` is out of range"
                    ))),
                }
            }
        }
        Some(_) => Err(AuthError::MalformedToken(format!(
            "claim `{name}` must be a number of seconds since 1970"
        ))),
    }
}

/// Principals of tokens already verified, keyed by the SHA-256 of the token.
///
/// Why this is safe: an entry is only ever created after full verification, and a hit requires
/// the *identical* token bytes (SHA-256 preimage/collision resistance), so it can only return what
/// full verification returned. On every hit the time window is re-checked (`exp`, `nbf`/`iat`
/// with leeway, so clock movement is honoured), and the issuer's key-set generation must be the
/// one the token was verified under: when the issuer's keys change (rotation, a key withdrawn),
/// every cached token of that issuer is verified afresh. Configuration (audience, claim names)
/// cannot change while the process runs. The cache holds digests, never tokens, and is bounded.
#[derive(Default)]
struct VerifiedCache {
    entries: RwLock<HashMap<[u8; 32], Verified>>,
}

struct Verified {
    issuer: usize,
    generation: u64,
    not_before: Option<i64>,
    exp: i64,
    principal: Arc<Principal>,
}

impl Verified {
    fn valid_at(&self, now: i64, leeway: i64) -> bool {
        now < self.exp.saturating_add(leeway)
            && self
                .not_before
                .is_none_or(|t| t <= now.saturating_add(leeway))
    }
}

impl VerifiedCache {
    fn get(
        &self,
        digest: &[u8; 32],
        now: i64,
        leeway: i64,
        current_generation: impl Fn(usize) -> Option<u64>,
    ) -> Option<Arc<Principal>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let hit = entries.get(digest)?;
        if !hit.valid_at(now, leeway) || current_generation(hit.issuer) != Some(hit.generation) {
            return None;
        }
        Some(Arc::clone(&hit.principal))
    }

    fn insert(&self, digest: [u8; 32], verified: Verified, now: i64, leeway: i64) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= VERIFIED_CACHE_CAPACITY {
            entries.retain(|_, v| v.valid_at(now, leeway));
            if entries.len() >= VERIFIED_CACHE_CAPACITY {
                // Many live tokens at once: start over rather than track recency on the hot path.
                entries.clear();
            }
        }
        entries.insert(digest, verified);
    }
}

#[cfg(test)]
mod tests;
