//! The ES256 keys that sign registry tokens, and the files they live in.
//!
//! Each key is one PEM file under `<data_dir>/keys/` holding a PKCS#8 P-256 private key and a
//! self-signed certificate for it. A Distribution registry trusts a token when the `kid` in its
//! header is the libtrust key ID of a public key whose certificate is in the registry's
//! `rootcertbundle`, so the bundle is the list of certificates of [`KeySet::trusted`].
//!
//! Two keys exist from the first start: `current` signs, `next` is only published in the bundle.
//! Because the registry reads its bundle only at start, publishing the next key ahead of time is
//! what lets a later rotation promote `next` to `current` without a registry restart in between.
//!
//! Files are created atomically (written to a temporary file, then hard-linked into place, which
//! fails if another process got there first), so processes sharing a data directory agree on one
//! key; they are 0600 and a key file readable by others is refused.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::PublicKeyData as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use secrecy::zeroize::Zeroizing;
use sha2::{Digest, Sha256};

pub use crate::keyring::KEYS_DIR;
use crate::keyring::{FamilyKeys, KeyFamily, Keyring, keys_dir, load_files, temp_path};

/// The key that signs registry tokens now.
const CURRENT_KEY_FILE: &str = "registry-token-current.pem";
/// The key published in the bundle ahead of a rotation; it signs nothing yet.
const NEXT_KEY_FILE: &str = "registry-token-next.pem";
/// The key the last rotation retired; still in the bundle so its tokens stay valid.
const PREVIOUS_KEY_FILE: &str = "registry-token-previous.pem";

/// The registry-token signing keys in the keyring.
pub const REGISTRY_TOKEN_KEYS: KeyFamily = KeyFamily {
    name: "registry-token",
    files: [CURRENT_KEY_FILE, NEXT_KEY_FILE, PREVIOUS_KEY_FILE],
    generate: generate_key_file,
};
/// The certificate bundle `registry-config` writes for registries to trust.
pub const BUNDLE_FILE: &str = "registry-bundle.pem";

/// The keys of registry tokens: one that signs, plus certificates registries should also trust.
pub struct KeySet {
    current: SigningKey,
    /// Verify-only certificates published beside `current` (the next key; later, retired ones).
    extra: Vec<TrustedCert>,
}

/// A private key that signs registry tokens, with its certificate.
pub struct SigningKey {
    cert: TrustedCert,
    pair: EcdsaKeyPair,
    /// The base64url JOSE header, identical for every token this key signs.
    header_b64: String,
    rng: SystemRandom,
}

/// A certificate a registry trusts, with the libtrust key ID of its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCert {
    kid: String,
    pem: String,
}

impl KeySet {
    /// Load the keys from `<data_dir>/keys/`, generating `current` and `next` if missing.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        Self::from_family(&load_files(&keys_dir(data_dir)?, &REGISTRY_TOKEN_KEYS)?)
    }

    /// Load the keys from `keyring`, generating `current` and `next` if missing.
    pub async fn load(keyring: &Keyring) -> anyhow::Result<Self> {
        Self::from_family(&keyring.load(&REGISTRY_TOKEN_KEYS).await?)
            .with_context(|| format!("registry token keys in {}", keyring.describe()))
    }

    /// `current` signs; `next` and `previous` are trusted beside it.
    pub fn from_family(keys: &FamilyKeys) -> anyhow::Result<Self> {
        let current = SigningKey::from_pem(&keys.current).context("the current key")?;
        let next = SigningKey::from_pem(&keys.next).context("the next key")?;
        if next.kid() == current.kid() {
            bail!(
                "the current and the next registry token key are the same key: delete the next one so a fresh one is generated"
            );
        }
        let mut extra = vec![next.cert];
        if let Some(previous) = &keys.previous {
            let previous = SigningKey::from_pem(previous).context("the previous key")?;
            if previous.kid() != current.kid() {
                extra.push(previous.cert);
            }
        }
        Ok(Self { current, extra })
    }

    /// Build a key set from keys already in memory (tests, and a later rotation).
    pub fn new(current: SigningKey, extra: Vec<TrustedCert>) -> Self {
        Self { current, extra }
    }

    /// The key that signs tokens now.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Every certificate a registry should trust: the current key's first.
    pub fn trusted(&self) -> impl Iterator<Item = &TrustedCert> {
        std::iter::once(&self.current.cert).chain(self.extra.iter())
    }

    /// Whether a registry with this key set's bundle knows `kid`.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.trusted().any(|c| c.kid == kid)
    }

    /// The `rootcertbundle` content: every trusted certificate, PEM, current first.
    pub fn bundle_pem(&self) -> String {
        self.trusted().map(|c| c.pem.as_str()).collect()
    }

    /// Write the bundle to `<data_dir>/registry-bundle.pem` (atomically replaced) and return its
    /// absolute path.
    pub fn write_bundle(&self, data_dir: &Path) -> anyhow::Result<PathBuf> {
        let path = std::path::absolute(data_dir.join(BUNDLE_FILE))
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        let tmp = temp_path(&path);
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(self.bundle_pem().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow::anyhow!("writing certificate bundle {}: {e}", path.display())
        })?;
        Ok(path)
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("current", &self.current.kid())
            .field(
                "extra",
                &self
                    .extra
                    .iter()
                    .map(|c| c.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SigningKey {
    /// Generate a fresh key in memory (tests).
    pub fn generate() -> anyhow::Result<Self> {
        Self::from_pem(&generate_key_file()?)
    }

    /// Parse a key file's content: a PKCS#8 P-256 key and the certificate of its public key.
    pub fn from_pem(content: &[u8]) -> anyhow::Result<Self> {
        let key = PrivatePkcs8KeyDer::from_pem_slice(content)
            .map_err(|_| anyhow::anyhow!("no PKCS#8 `PRIVATE KEY` block"))?;
        let cert = CertificateDer::from_pem_slice(content)
            .map_err(|_| anyhow::anyhow!("no `CERTIFICATE` block"))?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.secret_pkcs8_der())
                .map_err(|_| anyhow::anyhow!("the private key is not a valid P-256 (ES256) key"))?;
        let spki =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| anyhow::anyhow!("the private key cannot be read: {e}"))?
                .subject_public_key_info();
        // A certificate carries its SubjectPublicKeyInfo verbatim; without it, the registry would
        // trust some other key and refuse every token this one signs.
        if !contains(cert.as_ref(), &spki) {
            bail!("the certificate is not the certificate of the private key beside it");
        }
        let kid = libtrust_key_id(&spki);
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        Ok(Self {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            cert: TrustedCert {
                kid,
                pem: pem_encode("CERTIFICATE", cert.as_ref()),
            },
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// The libtrust key ID registries know this key by.
    pub fn kid(&self) -> &str {
        &self.cert.kid
    }

    /// This key's certificate.
    pub fn cert(&self) -> &TrustedCert {
        &self.cert
    }

    /// The compact JWS of `claims_json`: ES256 over `header.claims`, signature as raw `r||s`
    /// (what JOSE and the registry expect, not DER).
    pub(super) fn sign_jwt(&self, claims_json: &[u8]) -> anyhow::Result<String> {
        let mut jwt =
            String::with_capacity(self.header_b64.len() + claims_json.len() * 4 / 3 + 2 + 88);
        jwt.push_str(&self.header_b64);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut jwt);
        let signature = self
            .pair
            .sign(&self.rng, jwt.as_bytes())
            .map_err(|_| anyhow::anyhow!("ES256 signing failed"))?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jwt);
        Ok(jwt)
    }

    /// The public key as an uncompressed point (tests verify signatures with it).
    pub fn public_key_bytes(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        self.pair.public_key().as_ref().to_vec()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.cert.kid)
            .finish_non_exhaustive()
    }
}

impl TrustedCert {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// The libtrust key ID of a public key, as the Distribution registry computes it to match a
/// token's `kid`: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32 (RFC 4648,
/// no padding: exactly 48 characters), in 12 groups of 4 joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        // base32 output is ASCII, so every 4-byte chunk is valid UTF-8.
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    groups.join(":")
}

/// A new key file: PKCS#8 P-256 private key, then a self-signed certificate for it.
///
/// The certificate's validity is rcgen's default (very long): the registry finds the key by its
/// key ID and does not check validity on that path; rotation, not expiry, retires a key.
fn generate_key_file() -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow::anyhow!("generating a P-256 key: {e}"))?;
    let kid = libtrust_key_id(&key.subject_public_key_info());
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Rise registry token signer {}", &kid[..14]),
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| anyhow::anyhow!("self-signing the registry token certificate: {e}"))?;
    let mut content = Zeroizing::new(key.serialize_pem().into_bytes());
    content.extend_from_slice(cert.pem().as_bytes());
    Ok(content)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed P-256 key and a self-signed certificate for it, made with the OpenSSL CLI:
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` and
    /// `openssl req -new -x509 -key fixed.pem -subj "/CN=rise test" -days 36500`.
    const FIXED_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg2tDWvpTVNyzTu330
HrEq9X5HpRrZCqzGUyRS67tC6wehRANCAASPKOHokj+XBPyY83hKKA0Hks5Rg5mH
5J4/2AgbubLOc85A46AYiv4t9RuSBiMHuEu0VVXpihVfGx7IYUsKBJr3
-----END PRIVATE KEY-----
";
    const FIXED_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUKKFwl8BU0dV/60zTg0gGVQ88hx0wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJcmlzZSB0ZXN0MCAXDTI2MTEyNzIxMDc0OVoYDzIxMjYxMTAz
MjEwNzQ5WjAUMRIwEAYDVQQDDAlyaXNlIHRlc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASPKOHokj+XBPyY83hKKA0Hks5Rg5mH5J4/2AgbubLOc85A46AYiv4t
9RuSBiMHuEu0VVXpihVfGx7IYUsKBJr3o1MwUTAdBgNVHQ4EFgQUl9dQPeqNQvZ0
//fP7WPKC92PwcUwHwYDVR0jBBgwFoAUl9dQPeqNQvZ0//fP7WPKC92PwcUwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAtQdCIbbhA1qcjaI0WG5J
RS2br1AR0kUdVvf/asMqtcACIDPVPWBghJWr3i5TxV85Hnw+4XMrZXVwT9u9Qd8K
OfyB
-----END CERTIFICATE-----
";
    /// A certificate of a different key.
    const OTHER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUPWShQ9unrHveQ8AycnxjlD1u13UwCgYIKoZIzj0EAwIw
EDEOMAwGA1UEAwwFb3RoZXIwIBcNMjYxMTI3MjEwNzQ5WhgPMjEyNjExMDMyMTA3
NDlaMBAxDjAMBgNVBAMMBW90aGVyMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
55/r2NhzsS8JHbfGO0FVB50Rb/BzJo8qgsncB/CBCFslr2nemdpz1xeBR34cGMaT
EvqVY5etacAlgQC8McR7saNTMFEwHQYDVR0OBBYEFO4eLuhWo/NQ2+iCAQRL9Tow
YC0zMB8GA1UdIwQYMBaAFO4eLuhWo/NQ2+iCAQRL9TowYC0zMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgO5WBsh+E3N9zOqq63/2Zd2vS+vZS0ZfS
wr3mcytrCFoCIQD76m3QGZ7fEdsxGNyZTaWNA9z6AZN4IAg3mqcSUK9XUg==
-----END CERTIFICATE-----
";
    /// Computed independently of Rise:
    /// `openssl pkey -in fixed.pem -pubout -outform DER | openssl dgst -sha256 -binary |
    ///  head -c 30 | base32 -w0 | sed 's/.\{4\}/&:/g; s/:$//'`
    const FIXED_KID: &str = "I6DI:MITP:PQNG:E5GA:VTYS:CTNV:KOR2:NP5C:UKWV:TGMA:PUJU:7C4B";
    /// `openssl pkey -in fixed.pem -pubout -outform DER | xxd -p`
    const FIXED_SPKI_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048f28e1e8923f9704fc98f3784a280d0792ce51839987e49e3fd8081bb9b2ce73ce40e3a0188afe2df51b92062307b84bb45555e98a155f1b1ec8614b0a049af7";

    fn fixed_key() -> SigningKey {
        SigningKey::from_pem(format!("{FIXED_KEY}{FIXED_CERT}").as_bytes())
            .expect("fixed key loads")
    }

    #[test]
    fn libtrust_kid_matches_openssl_vector() {
        let spki = data_encoding::HEXLOWER
            .decode(FIXED_SPKI_HEX.as_bytes())
            .expect("hex");
        assert_eq!(libtrust_key_id(&spki), FIXED_KID);
        // The same ID through Rise's own path: PKCS#8 -> SPKI -> kid.
        assert_eq!(fixed_key().kid(), FIXED_KID);
    }

    #[test]
    fn kid_has_twelve_groups_of_four() {
        let kid = SigningKey::generate().expect("generate").kid().to_owned();
        let groups: Vec<&str> = kid.split(':').collect();
        assert_eq!(groups.len(), 12, "{kid}");
        assert!(groups.iter().all(|g| g.len() == 4), "{kid}");
        assert!(
            kid.bytes()
                .all(|b| b == b':' || b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
            "{kid}"
        );
    }

    #[test]
    fn key_file_with_foreign_certificate_is_refused() {
        let err = SigningKey::from_pem(format!("{FIXED_KEY}{OTHER_CERT}").as_bytes())
            .expect_err("mismatched certificate");
        assert!(err.to_string().contains("not the certificate"), "{err}");
        let err = SigningKey::from_pem(FIXED_KEY.as_bytes()).expect_err("no certificate");
        assert!(err.to_string().contains("CERTIFICATE"), "{err}");
        let err = SigningKey::from_pem(FIXED_CERT.as_bytes()).expect_err("no key");
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn signatures_verify_with_the_published_key() {
        let key = fixed_key();
        let jwt = key.sign_jwt(br#"{"a":1}"#).expect("sign");
        let (message, signature) = jwt.rsplit_once('.').expect("three parts");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        assert_eq!(signature.len(), 64, "raw r||s, not DER");
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            key.public_key_bytes(),
        );
        public
            .verify(message.as_bytes(), &signature)
            .expect("signature verifies");
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(message.split('.').next().expect("header"))
                .expect("base64url"),
        )
        .expect("json");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], FIXED_KID);
    }

    #[test]
    fn key_set_is_created_once_and_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = KeySet::load_or_create(dir.path()).expect("create");
        let b = KeySet::load_or_create(dir.path()).expect("load");
        assert_eq!(a.current().kid(), b.current().kid());
        assert_eq!(a.bundle_pem(), b.bundle_pem());
        let kids: Vec<&str> = a.trusted().map(TrustedCert::kid).collect();
        assert_eq!(kids.len(), 2, "current and next are published");
        assert_ne!(kids[0], kids[1]);
        assert_eq!(kids[0], a.current().kid(), "current comes first");
        assert!(a.contains_kid(kids[1]));
        assert!(!a.contains_kid(FIXED_KID));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            let keys = dir.path().join(KEYS_DIR);
            assert_eq!(mode(&keys), 0o700);
            assert_eq!(mode(&keys.join(CURRENT_KEY_FILE)), 0o600);
            assert_eq!(mode(&keys.join(NEXT_KEY_FILE)), 0o600);
        }
        let bundle = a.write_bundle(dir.path()).expect("bundle");
        assert!(bundle.is_absolute());
        assert_eq!(fs::read_to_string(&bundle).expect("read"), a.bundle_pem());
        assert_eq!(a.bundle_pem().matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!a.bundle_pem().contains("PRIVATE"));
    }

    #[test]
    fn concurrent_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kids: Vec<(String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        KeySet::load_or_create(dir.path()).map(|k| {
                            let kids: Vec<String> =
                                k.trusted().map(|c| c.kid().to_owned()).collect();
                            (kids[0].clone(), kids[1].clone())
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").expect("load_or_create"))
                .collect()
        });
        assert!(kids.iter().all(|k| k == &kids[0]), "{kids:?}");
        let names: Vec<String> = fs::read_dir(dir.path().join(KEYS_DIR))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let temporary = names.iter().filter(|n| n.ends_with(".tmp")).count();
        assert_eq!(temporary, 0, "temporary files are cleaned up: {names:?}");
        assert_eq!(names.len(), 3, "current, next and the lock: {names:?}");
    }

    #[tokio::test]
    async fn rotation_promotes_next_and_keeps_the_retired_key_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Keyring::files(dir.path()).expect("keyring");
        let before = KeySet::load(&keyring).await.expect("load");
        let before_kids: Vec<String> = before.trusted().map(|c| c.kid().to_owned()).collect();
        keyring.rotate(&REGISTRY_TOKEN_KEYS).await.expect("rotate");
        let after = KeySet::load(&keyring).await.expect("reload");
        let after_kids: Vec<String> = after.trusted().map(|c| c.kid().to_owned()).collect();
        assert_eq!(after.current().kid(), before_kids[1], "next became current");
        assert_eq!(after_kids.len(), 3, "current, a fresh next, and previous");
        assert_eq!(
            after_kids[2], before_kids[0],
            "the retired key stays trusted"
        );
        assert!(!before_kids.contains(&after_kids[1]), "next is fresh");
        assert_eq!(after.bundle_pem().matches("BEGIN CERTIFICATE").count(), 3);
    }

    #[cfg(unix)]
    #[test]
    fn key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        KeySet::load_or_create(dir.path()).expect("create");
        let path = dir.path().join(KEYS_DIR).join(CURRENT_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = KeySet::load_or_create(dir.path()).expect_err("world-readable key");
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
    }
}
