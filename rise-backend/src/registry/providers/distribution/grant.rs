//! Grants: the password `/registry/credentials` hands out for a Distribution registry.
//!
//! A grant is an HS256 JWT that Rise signs and that only Rise ever verifies (at `/token`, where a
//! registry client trades it for a registry token). A symmetric key is the right tool here: no
//! third party needs to verify grants, so publishing a public key would buy nothing, and HMAC
//! costs about a microsecond to mint and to check, which keeps the credential path near the speed
//! of the HTTP floor. The 256-bit secret is generated into `<data_dir>/keys/registry-grant.key`
//! (0600, created atomically) so every Rise process sharing the data directory accepts the
//! grants of the others.
//!
//! A grant names the caller (issuer and subject), the project, the registry, one repository and
//! the actions the policy allowed, expires at `exp` (no leeway: Rise's own clock made it), and carries a
//! `jti` for audit.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keyring::{FamilyKeys, KeyFamily, Keyring, keys_dir, load_files};
use crate::registry::{Actions, RepositoryName};

/// The `iss` of every grant; keeps grants apart from any other HS256 token.
const GRANT_ISSUER: &str = "rise:registry-grant";
/// Grants carry `kid = rise-grant:<fingerprint of the secret>`: the prefix says "this is a grant",
/// the fingerprint says which Rise secret made it.
const KID_PREFIX: &str = "rise-grant:";
const GRANT_KEY_FILE: &str = "registry-grant.key";

/// The grant secrets in the keyring: `current` signs; `next` and `previous` are accepted too, so
/// a rotation never refuses a grant another replica (or this one, before the rotation) made.
pub const GRANT_KEYS: KeyFamily = KeyFamily {
    name: "registry-grant",
    files: [
        GRANT_KEY_FILE,
        "registry-grant-next.key",
        "registry-grant-previous.key",
    ],
    generate: generate_secret,
};

/// A fresh 256-bit secret, base64 and a newline.
fn generate_secret() -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut secret = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(secret.as_mut_slice())
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let mut text = Zeroizing::new(vec![0u8; 64]);
    let len = STANDARD
        .encode_slice(secret.as_slice(), text.as_mut_slice())
        .map_err(|e| anyhow::anyhow!("encoding the grant secret: {e}"))?;
    text.truncate(len);
    text.push(b'\n');
    Ok(text)
}

/// Every grant key this server accepts; the first signs.
#[derive(Debug)]
pub struct GrantKeys {
    current: GrantKey,
    others: Vec<GrantKey>,
}

impl GrantKeys {
    /// Load the grant keys from `<data_dir>/keys/`, generating `current` and `next` if missing.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        Self::from_family(&load_files(&keys_dir(data_dir)?, &GRANT_KEYS)?)
    }

    /// Load the grant keys from `keyring`, generating `current` and `next` if missing.
    pub async fn load(keyring: &Keyring) -> anyhow::Result<Self> {
        Self::from_family(&keyring.load(&GRANT_KEYS).await?)
            .with_context(|| format!("grant keys in {}", keyring.describe()))
    }

    pub fn from_family(keys: &FamilyKeys) -> anyhow::Result<Self> {
        let current = GrantKey::from_stored(&keys.current).context("the current grant key")?;
        let mut others = vec![GrantKey::from_stored(&keys.next).context("the next grant key")?];
        if let Some(previous) = &keys.previous {
            others.push(GrantKey::from_stored(previous).context("the previous grant key")?);
        }
        Ok(Self { current, others })
    }

    /// One key that both signs and is the only one accepted (tests).
    pub fn single(key: GrantKey) -> Self {
        Self {
            current: key,
            others: Vec::new(),
        }
    }

    /// The key that signs new grants.
    pub fn current(&self) -> &GrantKey {
        &self.current
    }

    /// The `kid`s of every accepted key, the signing one first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.current)
            .chain(&self.others)
            .map(|k| k.kid.as_str())
    }

    /// The claims of `password` if one of the accepted keys signed it, expired or not: who
    /// presented a refused grant, for the audit log. Never a reason to accept it.
    pub fn signed_claims(&self, password: &str) -> Option<GrantClaims> {
        let kid = jsonwebtoken::decode_header(password).ok()?.kid?;
        let key = std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.kid == kid)?;
        let mut validation = key.validation.clone();
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "sub"]);
        jsonwebtoken::decode::<GrantClaims>(password, &key.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// Look at `password` as a grant of any accepted key.
    pub fn check(&self, password: &str) -> GrantCheck {
        let Ok(header) = jsonwebtoken::decode_header(password) else {
            return GrantCheck::NotAGrant;
        };
        let Some(kid) = header.kid.as_deref() else {
            return GrantCheck::NotAGrant;
        };
        match std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.kid == kid)
        {
            Some(key) if header.alg == Algorithm::HS256 => key.verify(password),
            Some(_) => GrantCheck::Invalid(GrantError::Invalid),
            None if kid.starts_with(KID_PREFIX) => GrantCheck::Invalid(GrantError::OtherServer),
            None => GrantCheck::NotAGrant,
        }
    }
}

/// The HMAC key grants are signed with.
pub struct GrantKey {
    /// Signs: the key schedule is computed once, not per grant.
    signing: hmac::Key,
    /// The encoded JOSE header every grant of this key carries (`HS256`, `JWT`, this `kid`).
    header_b64: String,
    decoding: DecodingKey,
    kid: String,
    validation: Validation,
}

/// What a grant says. Field names are short because grants travel in every registry login.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrantClaims {
    iss: String,
    /// The caller's subject.
    pub sub: String,
    /// The configured name of the issuer that vouched for the caller.
    pub idp: String,
    /// The configured registry name.
    pub reg: String,
    pub repo: RepositoryName,
    /// The project the policy granted it under. Absent in grants of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prj: Option<String>,
    pub act: Actions,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// A grant whose signature, issuer and expiry have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub claims: GrantClaims,
}

impl Grant {
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.claims.exp)
    }
}

/// The outcome of looking at a password as a grant.
#[derive(Debug)]
pub enum GrantCheck {
    /// It is a valid grant of this Rise server.
    Valid(Grant),
    /// It claims to be a grant but is not acceptable.
    Invalid(GrantError),
    /// It is not a grant at all (maybe a JWT of a trusted issuer).
    NotAGrant,
}

/// Why a grant was refused. Messages never contain the grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the Rise grant has expired: ask /registry/credentials for a new one")]
    Expired,
    #[error("the Rise grant is for registry {0:?}, not this one")]
    WrongRegistry(String),
    #[error("the Rise grant was issued by another Rise server (its grant key differs)")]
    OtherServer,
    #[error("the Rise grant is invalid (bad signature or malformed)")]
    Invalid,
}

impl GrantError {
    /// Stable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Expired => "grant_expired",
            GrantError::WrongRegistry(_) => "grant_wrong_registry",
            GrantError::OtherServer | GrantError::Invalid => "invalid_grant",
        }
    }
}

impl GrantKey {
    /// Load `<data_dir>/keys/registry-grant.key`, generating a random 256-bit secret if missing.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        Ok(GrantKeys::load_or_create(data_dir)?.current)
    }

    /// A key from its stored form: at least 32 random bytes, base64.
    fn from_stored(content: &[u8]) -> anyhow::Result<Self> {
        let secret = Zeroizing::new(
            STANDARD
                .decode(content.trim_ascii())
                .ok()
                .filter(|s| s.len() >= 32)
                .context(
                    "a grant secret must be at least 32 base64-encoded random bytes; delete it to generate a new one (outstanding grants become invalid)",
                )?,
        );
        Ok(Self::from_secret(&secret))
    }

    /// A key from raw secret bytes (tests).
    pub fn from_secret(secret: &[u8]) -> Self {
        let fingerprint = Sha256::digest(secret);
        let kid = format!(
            "{KID_PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&fingerprint[..5])
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_issuer(&[GRANT_ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let header = serde_json::json!({"typ": "JWT", "alg": "HS256", "kid": kid});
        Self {
            signing: hmac::Key::new(hmac::HMAC_SHA256, secret),
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            decoding: DecodingKey::from_secret(secret),
            kid,
            validation,
        }
    }

    /// Sign a grant: a compact JWS, HS256 over `header.claims` (what `jsonwebtoken` verifies in
    /// [`GrantKey::check`]), assembled here so the header is encoded and the key scheduled once
    /// per key rather than once per grant (the credential path's largest handler cost).
    pub fn mint(&self, claims: NewGrant<'_>) -> anyhow::Result<(SecretString, GrantClaims)> {
        let claims = GrantClaims {
            iss: GRANT_ISSUER.to_owned(),
            sub: claims.subject.to_owned(),
            idp: claims.issuer.to_owned(),
            reg: claims.registry.to_owned(),
            repo: claims.repository.clone(),
            prj: Some(claims.project.to_owned()),
            act: claims.actions,
            iat: unix_secs(claims.issued_at),
            exp: unix_secs(claims.expires_at),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let claims_json =
            serde_json::to_vec(&claims).map_err(|e| anyhow::anyhow!("encoding a grant: {e}"))?;
        let mut token = String::with_capacity(
            self.header_b64.len() + claims_json.len().div_ceil(3) * 4 + 2 + 43,
        );
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims_json, &mut token);
        let tag = hmac::sign(&self.signing, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        Ok((SecretString::from(token), claims))
    }

    /// Look at `password` as a grant of this key. Expiry is checked against the system clock.
    pub fn check(&self, password: &str) -> GrantCheck {
        match jsonwebtoken::decode_header(password) {
            Ok(header) if header.kid.as_deref() == Some(self.kid.as_str()) => {
                if header.alg == Algorithm::HS256 {
                    self.verify(password)
                } else {
                    GrantCheck::Invalid(GrantError::Invalid)
                }
            }
            Ok(header)
                if header
                    .kid
                    .as_deref()
                    .is_some_and(|k| k.starts_with(KID_PREFIX)) =>
            {
                GrantCheck::Invalid(GrantError::OtherServer)
            }
            _ => GrantCheck::NotAGrant,
        }
    }

    /// Verify signature and claims of a grant whose header names this key.
    fn verify(&self, password: &str) -> GrantCheck {
        match jsonwebtoken::decode::<GrantClaims>(password, &self.decoding, &self.validation) {
            Ok(data) => GrantCheck::Valid(Grant {
                claims: data.claims,
            }),
            Err(e) => GrantCheck::Invalid(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => GrantError::Expired,
                _ => GrantError::Invalid,
            }),
        }
    }
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The inputs of [`GrantKey::mint`].
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    pub subject: &'a str,
    pub issuer: &'a str,
    pub project: &'a str,
    pub registry: &'a str,
    pub repository: &'a RepositoryName,
    pub actions: Actions,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use secrecy::ExposeSecret;

    fn repo(name: &str) -> RepositoryName {
        RepositoryName::parse(name).expect("valid")
    }

    fn mint(key: &GrantKey, issued_at: SystemTime, ttl: Duration) -> String {
        let r = repo("my-app");
        key.mint(NewGrant {
            subject: "alice",
            issuer: "local",
            project: "my-app",
            registry: "default",
            repository: &r,
            actions: Actions::PUSH_PULL,
            issued_at,
            expires_at: issued_at + ttl,
        })
        .expect("mint")
        .0
        .expose_secret()
        .to_owned()
    }

    #[test]
    fn valid_grant_round_trips() {
        let key = GrantKey::from_secret(&[7; 32]);
        let token = mint(&key, SystemTime::now(), Duration::from_secs(300));
        let header = jsonwebtoken::decode_header(&token).expect("a JOSE header");
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
        // Any HS256 verifier holding the secret accepts it, not only this key's own check.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        jsonwebtoken::decode::<GrantClaims>(
            &token,
            &DecodingKey::from_secret(&[7; 32]),
            &validation,
        )
        .expect("a standard HS256 JWT");
        let GrantCheck::Valid(grant) = key.check(&token) else {
            panic!("a fresh grant is valid");
        };
        assert_eq!(grant.claims.sub, "alice");
        assert_eq!(grant.claims.idp, "local");
        assert_eq!(grant.claims.reg, "default");
        assert_eq!(grant.claims.repo, repo("my-app"));
        assert_eq!(grant.claims.act, Actions::PUSH_PULL);
        assert!(!grant.claims.jti.is_empty());
    }

    /// Grants minted before `prj` existed stay valid until they expire, naming no project.
    #[test]
    fn a_grant_without_a_project_is_still_a_grant() {
        let key = GrantKey::from_secret(&[7; 32]);
        let token = mint(&key, SystemTime::now(), Duration::from_secs(300));
        let GrantCheck::Valid(grant) = key.check(&token) else {
            panic!("a fresh grant is valid");
        };
        assert_eq!(grant.claims.prj.as_deref(), Some("my-app"));
        let mut older = serde_json::to_value(&grant.claims).expect("claims");
        older.as_object_mut().expect("object").remove("prj");
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let older = jsonwebtoken::encode(
            &header,
            &older,
            &jsonwebtoken::EncodingKey::from_secret(&[7; 32]),
        )
        .expect("sign");
        let GrantCheck::Valid(grant) = key.check(&older) else {
            panic!("an earlier version's grant is valid");
        };
        assert_eq!(grant.claims.prj, None);
    }

    #[test]
    fn grants_are_refused_when_tampered_expired_or_foreign() {
        let key = GrantKey::from_secret(&[7; 32]);
        let now = SystemTime::now();
        let token = mint(&key, now, Duration::from_secs(300));
        let (header, rest) = token.split_once('.').expect("jwt");
        let (_, signature) = rest.split_once('.').expect("jwt");

        // Claims rewritten to another repository, signature kept.
        let mut claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(rest.split('.').next().expect("claims"))
                .expect("b64"),
        )
        .expect("json");
        claims["repo"] = "other-app".into();
        let forged = format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // The signature's last character flipped.
        let mut flipped = token.clone();
        let last = flipped.pop().expect("non-empty");
        flipped.push(if last == 'A' { 'B' } else { 'A' });
        // alg swapped to none, signature dropped.
        let none_header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            key.kid
        ));
        let alg_none = format!("{none_header}.{}.", rest.split('.').next().expect("claims"));

        let expired = mint(
            &key,
            now - Duration::from_secs(3600),
            Duration::from_secs(60),
        );
        let other_server = mint(
            &GrantKey::from_secret(&[8; 32]),
            now,
            Duration::from_secs(300),
        );

        let check = |token: &str| match key.check(token) {
            GrantCheck::Valid(_) => "valid",
            GrantCheck::Invalid(GrantError::Expired) => "expired",
            GrantCheck::Invalid(GrantError::OtherServer) => "other_server",
            GrantCheck::Invalid(_) => "invalid",
            GrantCheck::NotAGrant => "not_a_grant",
        };
        for (token, expect) in [
            (token.as_str(), "valid"),
            (forged.as_str(), "invalid"),
            (flipped.as_str(), "invalid"),
            (alg_none.as_str(), "not_a_grant"),
            (expired.as_str(), "expired"),
            (other_server.as_str(), "other_server"),
            ("not a jwt", "not_a_grant"),
            ("", "not_a_grant"),
        ] {
            assert_eq!(check(token), expect, "{token}");
        }
    }

    #[test]
    fn expiry_has_no_leeway() {
        let key = GrantKey::from_secret(&[7; 32]);
        let token = mint(
            &key,
            SystemTime::now() - Duration::from_secs(62),
            Duration::from_secs(60),
        );
        assert!(matches!(
            key.check(&token),
            GrantCheck::Invalid(GrantError::Expired)
        ));
        // Its caller can still be named for the audit log, from a key that signed it only.
        let keys = GrantKeys::single(key);
        let claims = keys.signed_claims(&token).expect("signed by this key");
        assert!(claims.exp < unix_secs(SystemTime::now()));
        let other = GrantKeys::single(GrantKey::from_secret(&[8; 32]));
        assert!(other.signed_claims(&token).is_none(), "another key's grant");
        assert!(keys.signed_claims("not.a.jwt").is_none());
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = GrantKey::load_or_create(dir.path()).expect("create");
        let b = GrantKey::load_or_create(dir.path()).expect("load");
        let token = mint(&a, SystemTime::now(), Duration::from_secs(60));
        assert!(matches!(b.check(&token), GrantCheck::Valid(_)));
        let text =
            std::fs::read_to_string(dir.path().join("keys").join(GRANT_KEY_FILE)).expect("read");
        assert_eq!(STANDARD.decode(text.trim()).expect("base64").len(), 32);
        assert!(!format!("{a:?}").contains(text.trim()));
    }

    #[tokio::test]
    async fn grants_of_every_slot_stay_valid_across_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Keyring::files(dir.path()).expect("keyring");
        let before = GrantKeys::load(&keyring).await.expect("load");
        let old = mint(before.current(), SystemTime::now(), Duration::from_secs(60));
        keyring.rotate(&GRANT_KEYS).await.expect("rotate");
        let after = GrantKeys::load(&keyring).await.expect("reload");
        let new = mint(after.current(), SystemTime::now(), Duration::from_secs(60));
        let before_kids: Vec<&str> = before.kids().collect();
        assert_eq!(after.current().kid, before_kids[1], "next became current");
        // A replica that has not reloaded yet accepts grants of the new current key (its next);
        // a reloaded one accepts grants of the retired key (its previous).
        assert!(matches!(before.check(&new), GrantCheck::Valid(_)));
        assert!(matches!(after.check(&old), GrantCheck::Valid(_)));
        assert!(matches!(after.check(&new), GrantCheck::Valid(_)));
        keyring.rotate(&GRANT_KEYS).await.expect("rotate again");
        let later = GrantKeys::load(&keyring).await.expect("reload");
        assert!(
            matches!(
                later.check(&old),
                GrantCheck::Invalid(GrantError::OtherServer)
            ),
            "two rotations retire a key for good"
        );
    }
}
