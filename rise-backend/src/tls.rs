//! TLS: the `[server.tls]` certificate and key, reloaded while serving, and `rise-backend dev-cert`,
//! a local CA and certificate for HTTPS in development.
//!
//! Reloading: on SIGHUP, and when the files' contents change (checked every `watch_interval`), the
//! files are read again; if they hold a certificate chain valid now (by its dates) and the
//! matching key, new
//! connections get the new certificate while established ones keep theirs. A half-replaced pair
//! (new certificate, old key) is refused and the current certificate stays until the pair matches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The `[server.tls]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server certificate, then any intermediates.
    pub certificate: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1). Keep it readable by Rise only.
    pub key: PathBuf,
    /// How often to check the files for a new certificate; `0s` reloads on SIGHUP only.
    #[serde(default = "default_watch_interval", with = "humantime_serde")]
    pub watch_interval: Duration,
}

fn default_watch_interval() -> Duration {
    Duration::from_secs(10)
}

/// Why a certificate could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The I/O error is part of the message, not a `source`: error chains would print it twice.
    #[error("cannot read {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no PEM private key (expected PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(PathBuf),
    #[error("loading the certificate was interrupted: {0}")]
    Interrupted(String),
    #[error("the certificate in {} and the key in {} are not usable together: {message}", .certificate.display(), .key.display())]
    Rejected {
        certificate: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// A loaded certificate: the rustls configuration, and a digest of the files it came from.
struct Loaded {
    config: Arc<ServerConfig>,
    /// The leaf certificate, DER.
    leaf: Vec<u8>,
    files_digest: [u8; 32],
    /// SHA-256 of the leaf certificate, for the log.
    fingerprint: String,
}

/// Holds the served certificate and replaces it when the files change.
pub struct TlsReloader {
    files: TlsConfig,
    /// The host clients reach Rise at (`server.public_url`), which every certificate must cover.
    host: Option<String>,
    rustls: RustlsConfig,
    current_digest: Mutex<[u8; 32]>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last loaded.
    Unchanged,
    /// New connections now get the certificate with this SHA-256 fingerprint.
    Replaced { fingerprint: String },
}

impl TlsReloader {
    /// Load the configured certificate; fails when it is missing or invalid, so that `serve`
    /// refuses to start instead of serving nothing.
    pub async fn load(files: TlsConfig) -> Result<Self, TlsError> {
        Self::load_for(files, None).await
    }

    /// [`load`](Self::load), also requiring every certificate (now and on reload) to cover
    /// `host`: the host of `server.public_url`, where clients reach Rise.
    pub async fn load_for(files: TlsConfig, host: Option<String>) -> Result<Self, TlsError> {
        let loaded = load_blocking(files.clone(), host.clone()).await?;
        tracing::info!(
            certificate = %files.certificate.display(),
            fingerprint = %loaded.fingerprint,
            "TLS certificate loaded"
        );
        Ok(TlsReloader {
            rustls: RustlsConfig::from_config(loaded.config),
            current_digest: Mutex::new(loaded.files_digest),
            files,
            host,
        })
    }

    /// What the TLS acceptor serves; reloads swap its content.
    pub fn rustls_config(&self) -> RustlsConfig {
        self.rustls.clone()
    }

    /// Read the files again and serve them if they changed. On error the current certificate
    /// stays.
    pub async fn reload(&self) -> Result<Reload, TlsError> {
        let result = load_blocking(self.files.clone(), self.host.clone()).await;
        let loaded = match result {
            Ok(l) => l,
            Err(e) => {
                crate::metrics::record_tls_reload(false);
                return Err(e);
            }
        };
        {
            let mut current = self
                .current_digest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *current == loaded.files_digest {
                return Ok(Reload::Unchanged);
            }
            *current = loaded.files_digest;
        }
        self.rustls.reload_from_config(loaded.config);
        crate::metrics::record_tls_reload(true);
        Ok(Reload::Replaced {
            fingerprint: loaded.fingerprint,
        })
    }

    /// Reload on SIGHUP and every `watch_interval`, until the returned task is aborted.
    pub fn spawn_watcher(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        // Caught from now on, before the server says it listens: a SIGHUP right after start
        // must not end the process (its default action).
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reloads on file change only");
                None
            }
        };
        #[cfg(not(unix))]
        let mut hangup: Option<()> = None;
        tokio::spawn(async move {
            let interval = self.files.watch_interval;
            let mut ticker = (!interval.is_zero()).then(|| {
                let mut t = tokio::time::interval(interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let cause = tokio::select! {
                    Some(()) = hangup_recv(&mut hangup) => "SIGHUP",
                    _ = tick(&mut ticker) => "file check",
                };
                match self.reload().await {
                    Ok(Reload::Replaced { fingerprint }) => {
                        tracing::info!(%fingerprint, cause, "TLS certificate reloaded");
                    }
                    Ok(Reload::Unchanged) => {
                        tracing::debug!(cause, "TLS certificate unchanged");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, cause, "TLS reload failed; still serving the previous certificate");
                    }
                }
            }
        })
    }
}

#[cfg(unix)]
async fn hangup_recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn hangup_recv(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// File reads may block (network file systems); keep them off the async workers.
async fn load_blocking(files: TlsConfig, host: Option<String>) -> Result<Loaded, TlsError> {
    match tokio::task::spawn_blocking(move || load_checked(&files, host.as_deref())).await {
        Ok(result) => result,
        Err(join) => Err(TlsError::Interrupted(join.to_string())),
    }
}

/// [`load`], and the leaf must cover `host` (a DNS name, wildcards one label deep, or an IP).
fn load_checked(files: &TlsConfig, host: Option<&str>) -> Result<Loaded, TlsError> {
    let loaded = load(files)?;
    if let Some(host) = host
        && !covers(&loaded.leaf, host)
    {
        return Err(TlsError::Rejected {
            certificate: files.certificate.clone(),
            key: files.key.clone(),
            message: format!(
                "the certificate does not cover {host:?}, the host of server.public_url: clients would refuse it"
            ),
        });
    }
    Ok(loaded)
}

/// Whether the certificate `der` names `host` among its subject alternative names.
fn covers(der: &[u8], host: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    let host = host.to_ascii_lowercase();
    san.value.general_names.iter().any(|name| match (name, ip) {
        (GeneralName::IPAddress(bytes), Some(std::net::IpAddr::V4(v4))) => *bytes == v4.octets(),
        (GeneralName::IPAddress(bytes), Some(std::net::IpAddr::V6(v6))) => *bytes == v6.octets(),
        (GeneralName::DNSName(dns), None) => {
            let dns = dns.to_ascii_lowercase();
            match dns.strip_prefix("*.") {
                // A wildcard stands for exactly one label.
                Some(rest) => host
                    .split_once('.')
                    .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
                None => dns == host,
            }
        }
        _ => false,
    })
}

fn load(files: &TlsConfig) -> Result<Loaded, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })
    };
    let cert_pem = read(&files.certificate)?;
    // The key's PEM is wiped from memory when dropped.
    let key_pem = Zeroizing::new(read(&files.key)?);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(files.certificate.clone()))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::NoCertificate(files.certificate.clone()));
    };
    let fingerprint = hex(&Sha256::digest(leaf.as_ref()));
    let leaf_der = leaf.as_ref().to_vec();
    // An expired (or not yet valid) certificate would fail every client: never load one, so a
    // reload keeps the certificate that works.
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| TlsError::NoCertificate(files.certificate.clone()))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        return Err(TlsError::Rejected {
            certificate: files.certificate.clone(),
            key: files.key.clone(),
            message: format!(
                "the certificate is valid only from {} to {}, not now",
                validity.not_before, validity.not_after
            ),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(files.key.clone()))?;
    let rejected = |e: rustls::Error| TlsError::Rejected {
        certificate: files.certificate.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    };
    // An explicit provider: the process may link more than one, and then rustls has no default.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut digest = Sha256::new();
    digest.update((cert_pem.len() as u64).to_be_bytes());
    digest.update(&cert_pem);
    digest.update(key_pem.as_slice());
    Ok(Loaded {
        leaf: leaf_der,
        config: Arc::new(config),
        files_digest: digest.finalize().into(),
        fingerprint,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files `rise-backend dev-cert` writes.
#[derive(Debug, Clone)]
pub struct DevCertFiles {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate (then the CA certificate, as its chain).
    pub certificate: PathBuf,
    /// The server's private key, mode 0600.
    pub key: PathBuf,
    /// The names the certificate is valid for.
    pub names: Vec<String>,
}

/// How long development certificates are valid: under the 398 days clients accept for a leaf.
const DEV_CERT_VALIDITY: time::Duration = time::Duration::days(397);

/// Make a fresh local CA and a server certificate it signs, for `localhost`, `127.0.0.1`, `::1`
/// and `extra_names`, and write `ca.pem`, `cert.pem` and `key.pem` into `dir`.
///
/// The CA's private key is never written: nothing can sign with this CA again, so trusting it
/// trusts exactly this one certificate. The CA also carries name constraints limiting it to the
/// certificate's names, so even a leaked CA key could not impersonate other hosts. Refuses to
/// overwrite existing files unless `overwrite`; files are replaced by rename, so a server watching
/// them never reads a half-written file, and only once all three are written, so a failure
/// part-way (a full disk, a path that is a directory) leaves the old files as they were.
pub fn write_dev_cert(
    dir: &Path,
    extra_names: &[String],
    overwrite: bool,
) -> anyhow::Result<DevCertFiles> {
    use anyhow::Context;

    let files = DevCertFiles {
        ca: dir.join("ca.pem"),
        certificate: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        names: ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .chain(extra_names.iter().map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if !overwrite {
        for path in [&files.ca, &files.certificate, &files.key] {
            anyhow::ensure!(
                !path.exists(),
                "{} exists; pass --force to replace the development certificate",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let sans: Vec<SanType> =
        files
            .names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Some(name)
                    .filter(|n| is_dns_name(n))
                    .and_then(|n| n.clone().try_into().ok())
                    .map(SanType::DnsName)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{name:?} is neither an IP address nor a DNS name (labels of letters, digits and `-`, dot-separated; `*.` may lead)"
                        )
                    }),
            })
            .collect::<anyhow::Result<_>>()?;
    let permitted = sans
        .iter()
        .filter_map(|san| match san {
            SanType::DnsName(name) => Some(GeneralSubtree::DnsName(name.as_str().to_owned())),
            SanType::IpAddress(ip) => Some(GeneralSubtree::IpAddress(
                CidrSubnet::from_addr_prefix(*ip, if ip.is_ipv4() { 32 } else { 128 }),
            )),
            _ => None,
        })
        .collect();

    let now = time::OffsetDateTime::now_utc();
    // Tolerate a client clock a little behind.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + DEV_CERT_VALIDITY;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name =
        distinguished_name(&format!("Rise development CA {}", now.date()));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    ca_params.serial_number = Some(random_serial());
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().context("generating the server key")?;
    let mut leaf_params = CertificateParams::default();
    leaf_params.distinguished_name = distinguished_name("Rise development server");
    leaf_params.subject_alt_names = sans;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = not_before;
    leaf_params.not_after = not_after;
    leaf_params.serial_number = Some(random_serial());
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .context("signing the server certificate")?;

    let key_pem = Zeroizing::new(leaf_key.serialize_pem());
    let ca_pem = ca_cert.pem();
    let chain = format!("{}{}", leaf_cert.pem(), ca_pem);
    replace_together(&[
        (&files.ca, ca_pem.as_bytes(), 0o644),
        (&files.key, key_pem.as_bytes(), 0o600),
        (&files.certificate, chain.as_bytes(), 0o644),
    ])?;
    Ok(files)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Rise development");
    dn
}

/// 16 random bytes with the top bit clear: a positive serial, unique per certificate.
fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Replace each `(path, content, mode)`, all or none as far as renames allow: every content is
/// first staged in a new file beside its path, and only once all are staged are they renamed
/// over their paths. The three files belong together (a certificate, its key, its CA), so a
/// failure while staging (a path that is a directory, a full disk) must leave the old set whole:
/// no existing file is changed and the staged files are removed.
fn replace_together(files: &[(&Path, &[u8], u32)]) -> anyhow::Result<()> {
    let mut staged: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    for &(path, content, mode) in files {
        match stage(path, content, mode) {
            Ok(tmp) => staged.push((tmp, path)),
            Err(e) => {
                remove_staged(&staged);
                return Err(e.context("nothing was replaced"));
            }
        }
    }
    for (done, (tmp, path)) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            remove_staged(&staged[done..]);
            let replaced: Vec<String> = staged[..done]
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            return Err(anyhow::Error::new(e).context(format!(
                "replacing {} ({}): run dev-cert --force again",
                path.display(),
                if replaced.is_empty() {
                    "no file was changed".to_owned()
                } else {
                    format!(
                        "{} already replaced, and no longer match the rest",
                        replaced.join(", ")
                    )
                }
            )));
        }
    }
    if let Some(dir) = files.first().and_then(|(path, ..)| path.parent()) {
        crate::keyring::sync_dir(dir);
    }
    Ok(())
}

/// Write `content` to a new file beside `path`, created with `mode` (so a key is never readable
/// by others, not even briefly) and synced, and return its name. A `path` that is a directory is
/// refused here: the rename would fail, after other files of the set were replaced.
fn stage(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    use std::fs::OpenOptions;

    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        anyhow::bail!(
            "{} is a directory: remove it, or write the files elsewhere with --out",
            path.display()
        );
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(content)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(tmp)
}

fn remove_staged(staged: &[(PathBuf, &Path)]) {
    for (tmp, _) in staged {
        let _ = std::fs::remove_file(tmp);
    }
}

/// A host name a certificate may name: a DNS name, optionally after a leading `*.` wildcard.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253 && crate::registry::is_dns_name(name.strip_prefix("*.").unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_names_must_be_host_names_or_addresses() {
        for (name, ok) in [
            ("rise.test", true),
            ("*.rise.test", true),
            ("my-host", true),
            ("10.0.0.7", true),
            ("fd00::7", true),
            ("bad host!", false),
            ("-dash.test", false),
            ("a..test", false),
            ("*", false),
            ("x.*.test", false),
            ("under_score.test", false),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let written = write_dev_cert(dir.path(), &[name.to_owned()], false);
            match written {
                Ok(files) => {
                    assert!(ok, "{name:?} was accepted");
                    assert!(files.names.contains(&name.to_owned()));
                }
                Err(e) => {
                    assert!(!ok, "{name:?}: {e}");
                    assert!(
                        e.to_string()
                            .contains("neither an IP address nor a DNS name"),
                        "{e}"
                    );
                    assert!(
                        !dir.path().join("key.pem").exists(),
                        "{name:?}: nothing written"
                    );
                }
            }
        }
    }

    fn tls_config(files: &DevCertFiles) -> TlsConfig {
        TlsConfig {
            certificate: files.certificate.clone(),
            key: files.key.clone(),
            watch_interval: Duration::ZERO,
        }
    }

    #[test]
    fn dev_cert_files_load_and_key_is_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_dev_cert(dir.path(), &["rise.test".into()], false).expect("dev cert");
        let loaded = load(&tls_config(&files)).expect("loads");
        assert_eq!(loaded.fingerprint.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key)
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "key.pem must be private");
        }
        assert!(files.names.contains(&"rise.test".to_owned()));
        let err = write_dev_cert(dir.path(), &[], false).expect_err("no silent overwrite");
        assert!(err.to_string().contains("--force"), "{err}");
        write_dev_cert(dir.path(), &[], true).expect("forced");
        let again = load(&tls_config(&files)).expect("loads");
        assert_ne!(again.fingerprint, loaded.fingerprint);
    }

    /// `dev-cert --force` whose files cannot all be written (here: one name is taken by a
    /// directory) changes none of them: the old CA, certificate and key still belong together,
    /// and no staged file is left behind.
    #[test]
    fn a_failed_dev_cert_leaves_every_old_file_as_it_was() {
        for blocked in ["cert.pem", "key.pem", "ca.pem"] {
            let dir = tempfile::tempdir().expect("temp dir");
            write_dev_cert(dir.path(), &[], false).expect("dev cert");
            let blocked_path = dir.path().join(blocked);
            std::fs::remove_file(&blocked_path).expect("remove");
            std::fs::create_dir(&blocked_path).expect("a directory in its place");
            let contents = || {
                let mut files = std::collections::BTreeMap::new();
                for entry in std::fs::read_dir(dir.path()).expect("read dir") {
                    let path = entry.expect("entry").path();
                    let content = std::fs::read(&path).ok();
                    files.insert(path, content);
                }
                files
            };
            let before = contents();

            let err = write_dev_cert(dir.path(), &[], true).expect_err("cannot replace all");
            assert_eq!(contents(), before, "{blocked}: every file as it was");
            let message = format!("{err:#}");
            assert!(
                message.contains(&blocked_path.display().to_string()),
                "{blocked}: {message}"
            );
            assert!(message.contains("is a directory"), "{blocked}: {message}");
        }
    }

    #[test]
    fn mismatched_or_missing_files_are_clear_errors() {
        let a = tempfile::tempdir().expect("temp dir");
        let b = tempfile::tempdir().expect("temp dir");
        let fa = write_dev_cert(a.path(), &[], false).expect("dev cert");
        let fb = write_dev_cert(b.path(), &[], false).expect("dev cert");
        let mixed = TlsConfig {
            certificate: fa.certificate.clone(),
            key: fb.key.clone(),
            watch_interval: Duration::ZERO,
        };
        let err = load(&mixed).err().expect("mismatch refused").to_string();
        assert!(err.contains("not usable together"), "{err}");
        let swapped = TlsConfig {
            certificate: fa.key.clone(),
            key: fa.certificate.clone(),
            watch_interval: Duration::ZERO,
        };
        let err = load(&swapped).err().expect("swapped refused").to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = TlsConfig {
            certificate: a.path().join("nope.pem"),
            key: fa.key.clone(),
            watch_interval: Duration::ZERO,
        };
        let err = load(&missing).err().expect("missing refused").to_string();
        assert!(err.contains("nope.pem"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn the_certificate_must_cover_the_public_host() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_dev_cert(dir.path(), &["rise.test".into()], false).expect("dev cert");
        let files = tls_config(&files);
        assert!(load_checked(&files, Some("rise.test")).is_ok());
        assert!(
            load_checked(&files, Some("RISE.test")).is_ok(),
            "names ignore case"
        );
        assert!(load_checked(&files, None).is_ok());
        let err = load_checked(&files, Some("other.example"))
            .err()
            .expect("another name refused")
            .to_string();
        assert!(err.contains("does not cover \"other.example\""), "{err}");

        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["*.example.com".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("192.0.2.7".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("cert");
        let wild = TlsConfig {
            certificate: dir.path().join("wild.pem"),
            key: dir.path().join("wild-key.pem"),
            watch_interval: Duration::ZERO,
        };
        std::fs::write(&wild.certificate, cert.pem()).expect("write");
        std::fs::write(&wild.key, key.serialize_pem()).expect("write");
        assert!(load_checked(&wild, Some("rise.example.com")).is_ok());
        assert!(load_checked(&wild, Some("192.0.2.7")).is_ok());
        for host in ["example.com", "a.b.example.com", "192.0.2.8"] {
            assert!(load_checked(&wild, Some(host)).is_err(), "{host}");
        }
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["rise.test".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        let cert = params.self_signed(&key).expect("cert");
        let files = TlsConfig {
            certificate: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            watch_interval: Duration::ZERO,
        };
        std::fs::write(&files.certificate, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        let err = load(&files).err().expect("expired refused").to_string();
        assert!(err.contains("valid only from"), "{err}");
        assert!(err.contains("2020"), "{err}");
    }

    #[tokio::test]
    async fn reload_swaps_only_on_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_dev_cert(dir.path(), &[], false).expect("dev cert");
        let reloader = TlsReloader::load(tls_config(&files)).await.expect("loads");
        assert_eq!(reloader.reload().await.expect("reload"), Reload::Unchanged);
        write_dev_cert(dir.path(), &[], true).expect("new cert");
        assert!(matches!(
            reloader.reload().await.expect("reload"),
            Reload::Replaced { .. }
        ));
        // A broken file keeps the current certificate.
        std::fs::write(&files.certificate, "garbage").expect("write");
        assert!(reloader.reload().await.is_err());
    }
}
