//! The built-in development issuer: an ES256 key generated on first use and kept in the data
//! directory (`<data_dir>/keys/local-issuer.pem`, mode 0600), and the tokens it mints.
//!
//! ES256 because minting is ~15× cheaper than with RSA and verification is cheap enough.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::keys::VerifyKey;
use crate::config::LocalIssuerConfig;

/// Where the key lives, relative to the data directory.
pub const KEY_FILE: &str = "keys/local-issuer.pem";

/// The local issuer's signing key and settings.
pub struct LocalIssuer {
    issuer: String,
    audience: String,
    max_ttl: Duration,
    /// RFC 7638 thumbprint of the public key.
    kid: String,
    signing_key: EncodingKey,
    verify_key: VerifyKey,
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_ttl", &self.max_ttl)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct LocalClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    groups: &'a [String],
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

impl LocalIssuer {
    /// Load the key from `data_dir`, generating it on first use. Safe when several processes
    /// share the data directory: the key is published with an atomic `link`, which fails if
    /// another process got there first; everyone then uses the key on disk.
    pub fn load_or_create(data_dir: &Path, config: &LocalIssuerConfig) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let pem = match read_key_file(&path)? {
            Some(pem) => pem,
            None => {
                create_key_file(&path)?;
                read_key_file(&path)?.with_context(|| {
                    format!("{} vanished right after it was created", path.display())
                })?
            }
        };
        Self::from_pem(&pem, &path, config)
    }

    fn from_pem(
        pem: &SecretString,
        path: &Path,
        config: &LocalIssuerConfig,
    ) -> anyhow::Result<Self> {
        let invalid = || {
            format!(
                "{} is not a PKCS#8 P-256 private key; delete it to have Rise generate a new one (tokens it signed stop verifying)",
                path.display()
            )
        };
        let key_pair = rcgen::KeyPair::from_pem(pem.expose_secret()).with_context(invalid)?;
        if !key_pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            anyhow::bail!(invalid());
        }
        let point = key_pair.public_key_raw();
        // An uncompressed P-256 point is 04 || x || y.
        if point.len() != 65 || point[0] != 4 {
            anyhow::bail!(invalid());
        }
        Ok(LocalIssuer {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_ttl: config.max_ttl,
            kid: ec_thumbprint(&point[1..33], &point[33..]),
            signing_key: EncodingKey::from_ec_der(key_pair.serialized_der()),
            verify_key: VerifyKey::p256_from_point(point),
        })
    }

    /// Mint a token for `sub` in `groups`, valid for `ttl` (at most the configured `max_ttl`).
    pub fn issue(&self, sub: &str, groups: &[String], ttl: Duration) -> anyhow::Result<String> {
        anyhow::ensure!(!sub.is_empty(), "the subject must not be empty");
        anyhow::ensure!(
            !super::has_deceptive_chars(sub),
            "the subject must not contain control characters"
        );
        anyhow::ensure!(
            groups
                .iter()
                .all(|g| !g.is_empty() && !super::has_deceptive_chars(g)),
            "a group must be non-empty, without control characters"
        );
        anyhow::ensure!(
            ttl >= Duration::from_secs(1),
            "the token lifetime must be at least 1s"
        );
        anyhow::ensure!(
            ttl <= self.max_ttl,
            "a lifetime of {} exceeds auth.local.max_ttl ({}); ask for less",
            humantime::format_duration(ttl),
            humantime::format_duration(self.max_ttl)
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_secs();
        let claims = LocalClaims {
            iss: &self.issuer,
            aud: &self.audience,
            sub,
            groups,
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing_key).context("signing the token")
    }

    /// The `iss` of this issuer's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of this issuer's tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The `kid` of this issuer's tokens.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The longest a token of this issuer lives (`auth.local.max_ttl`).
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    pub(crate) fn verify_key(&self) -> VerifyKey {
        self.verify_key.clone()
    }
}

/// The key file's PEM, or `None` when it does not exist yet.
/// Refused when other users may read it (as the other keys Rise generates): whoever reads it
/// can mint tokens of any subject.
fn read_key_file(path: &Path) -> anyhow::Result<Option<SecretString>> {
    match crate::keyring::read_private(path) {
        Ok(bytes) => {
            // Borrowed from the zeroizing buffer: the one copy is the SecretString's.
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a PEM file; delete it to have Rise generate a new key",
                    path.display()
                )
            })?;
            Ok(Some(SecretString::from(text.to_owned())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("reading the local issuer key {}", path.display()))
        }
    }
}

/// Generate a key and publish it at `path` unless another process already has. The key is
/// written to a private temp file first and then hard-linked into place: `link` fails when the
/// target exists, so exactly one key ever appears and no reader sees a half-written file.
fn create_key_file(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the key path has no parent directory")?;
    create_private_dir(dir)?;
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the local issuer key")?;
    let pem = SecretString::from(key_pair.serialize_pem());
    drop(key_pair);
    let tmp = dir.join(format!(
        ".local-issuer.pem.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = write_private_file(&tmp, pem.expose_secret().as_bytes());
    let published = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the local issuer key");
            Ok(())
        }
        // Another process won the race; its key is the one everybody uses.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    });
    let _ = std::fs::remove_file(&tmp);
    published.with_context(|| format!("writing the local issuer key {}", path.display()))?;
    crate::keyring::sync_dir(dir);
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn write_private_file(path: &PathBuf, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// RFC 7638 JWK thumbprint of a P-256 public key.
fn ec_thumbprint(x: &[u8], y: &[u8]) -> String {
    // Members in lexicographic order, no whitespace, as RFC 7638 §3 requires.
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> LocalIssuerConfig {
        LocalIssuerConfig {
            enabled: true,
            issuer: "rise-local".into(),
            audience: "rise".into(),
            max_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn key_is_created_once_privately_and_reloaded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = LocalIssuer::load_or_create(dir.path(), &config()).expect("created");
        let b = LocalIssuer::load_or_create(dir.path(), &config()).expect("loaded");
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .expect("keys dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "local-issuer.pem")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    /// Whoever reads the key mints any subject: a key other users may read is refused, and the
    /// error says how to fix it.
    #[cfg(unix)]
    #[test]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        LocalIssuer::load_or_create(dir.path(), &config()).expect("created");
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = match LocalIssuer::load_or_create(dir.path(), &config()) {
            Ok(_) => panic!("a key others may read was loaded"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("readable by other users") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        LocalIssuer::load_or_create(dir.path(), &config()).expect("private again: loaded");
    }

    #[test]
    fn concurrent_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        LocalIssuer::load_or_create(dir.path(), &config())
                            .expect("created or loaded")
                            .key_id()
                            .to_owned()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("keys")).expect("mkdir");
        std::fs::write(dir.path().join(KEY_FILE), "not a key").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join(KEY_FILE),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod");
        }
        let err = LocalIssuer::load_or_create(dir.path(), &config())
            .expect_err("garbage refused")
            .to_string();
        assert!(err.contains("delete it"), "{err}");
    }

    #[test]
    fn ttl_is_capped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let issuer = LocalIssuer::load_or_create(dir.path(), &config()).expect("created");
        let err = issuer
            .issue("alice", &[], Duration::from_secs(7200))
            .expect_err("over max_ttl")
            .to_string();
        assert!(err.contains("max_ttl"), "{err}");
        assert!(issuer.issue("", &[], Duration::from_secs(60)).is_err());
        let minute = Duration::from_secs(60);
        let err = issuer.issue("a\nb", &[], minute).expect_err("newline");
        assert!(err.to_string().contains("control characters"), "{err}");
        assert!(issuer.issue("alice", &[String::new()], minute).is_err());
        assert!(issuer.issue("alice", &["x\0".into()], minute).is_err());
        assert!(issuer.issue("alice", &[], Duration::ZERO).is_err());
        issuer
            .issue("alice", &[], Duration::from_secs(3600))
            .expect("at max_ttl is fine");
    }

    #[test]
    fn debug_hides_the_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let issuer = LocalIssuer::load_or_create(dir.path(), &config()).expect("created");
        let pem = std::fs::read_to_string(dir.path().join(KEY_FILE)).expect("read");
        let body: String = pem.lines().nth(1).unwrap_or_default().to_owned();
        let debug = format!("{issuer:?}");
        assert!(!body.is_empty() && !debug.contains(&body), "{debug}");
    }
}
