//! `rise push`: upload an image from an OCI layout or a `docker save` archive straight to the
//! project's registry with brokered credentials; no container daemon involved.
//!
//! Renewal: the grant from `/registry/credentials` is short-lived. Before each blob the client
//! renews it when it expires within the margin, and when the registry refuses a request (401,
//! or the token exchange fails because the grant expired) it renews once and starts that blob
//! over; blobs already in the registry are skipped, so a renewed push resumes where it was.

pub mod progress;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::backend::{Backend, CredentialQuery, Grant, describe_reqwest};
use crate::context::Context;
use crate::error::CliError;
use crate::session;
use progress::{BlobProgress, Reporter};
use source::{Blob, Image, Location, Manifest};

/// How often one blob may trigger a renewal before the push gives up.
const MAX_RENEWALS_PER_STEP: u32 = 2;
/// Upload stream chunk size.
const CHUNK: usize = 256 * 1024;

/// Where the credentials come from: the backend, asked with the caller's current token (renewed
/// by the session layer when it is an OIDC login).
pub struct Broker {
    pub ctx: Context,
    pub http: reqwest::Client,
    pub backend: Backend,
    pub query: CredentialQuery,
}

impl Broker {
    pub async fn grant(&self) -> Result<Grant, CliError> {
        let caller = session::caller_token(&self.ctx, &self.http, self.backend.url()).await?;
        Ok(self
            .backend
            .credentials(&caller.token, &self.query)
            .await?
            .grant)
    }
}

/// Tuning of one push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub tag: String,
    /// Blobs uploaded at once.
    pub jobs: usize,
    /// Renew the grant before a step when it expires within this long.
    pub refresh_margin: Duration,
    /// Upload at most this many bytes per second (per blob), if set.
    pub limit_rate: Option<u64>,
    /// Speak plain HTTP to registries outside 127.0.0.0/8 and localhost.
    pub insecure_http: bool,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// `registry/repository:tag`.
    pub reference: String,
    pub digest: String,
    pub pushed: usize,
    pub skipped: usize,
    pub renewals: u32,
}

/// Push `image` under `options.tag` to the registry the broker's grants name.
pub async fn push(
    broker: &Broker,
    image: &Image,
    options: &PushOptions,
    reporter: &Reporter,
) -> Result<PushOutcome, CliError> {
    validate_tag(&options.tag)?;
    let first = broker.grant().await?;
    for w in &first.warnings {
        reporter.note(&format!("warning: {w}"));
    }
    if !first.actions.is_empty() && !first.actions.iter().any(|a| a == "push") {
        return Err(CliError::RegistryDenied(format!(
            "project {}: the backend granted only {} for this identity, not push",
            first.project,
            first.actions.join(", ")
        )));
    }
    let shared = Shared {
        broker,
        registry: first.registry_url.clone(),
        repository: first.repository.clone(),
        project: first.project.clone(),
        options,
        reporter,
        session: tokio::sync::Mutex::new(Arc::new(
            RegistrySession::open(&first, 0, options).await?,
        )),
        renewals: AtomicU32::new(0),
    };
    let target = format!("{}/{}:{}", shared.registry, shared.repository, options.tag);
    reporter.note(&format!(
        "pushing {} blobs ({}) to {target}",
        image.blobs.len(),
        indicatif::HumanBytes(image.total_bytes())
    ));
    let outcomes: Vec<bool> = futures_util::stream::iter(image.blobs.iter())
        .map(|blob| shared.push_blob(blob))
        .buffer_unordered(options.jobs.max(1))
        .try_collect()
        .await?;
    for child in &image.children {
        shared.push_manifest(child, &child.digest).await?;
    }
    shared.push_manifest(&image.root, &options.tag).await?;
    let pushed = outcomes.iter().filter(|p| **p).count();
    Ok(PushOutcome {
        reference: target,
        digest: image.root.digest.clone(),
        pushed,
        skipped: outcomes.len() - pushed,
        renewals: shared.renewals.load(Ordering::Relaxed),
    })
}

/// One grant's registry client.
struct RegistrySession {
    client: Client,
    auth: RegistryAuth,
    expires_at: SystemTime,
    generation: u64,
}

impl RegistrySession {
    async fn open(grant: &Grant, generation: u64, options: &PushOptions) -> Result<Self, CliError> {
        let host = grant.registry_url.clone();
        let protocol = if options.insecure_http || is_loopback(&host) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            // One PUT per blob with a streamed body: accurate progress, one request per layer.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("rise-cli/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| CliError::Other(format!("cannot set up the registry client: {e}")))?;
        let auth = Self::auth(grant);
        client.store_auth_if_needed(&host, &auth).await;
        Ok(Self {
            client,
            auth,
            expires_at: grant.expires_at,
            generation,
        })
    }

    /// The registry auth for this grant. The password leaves `SecretString` here because the
    /// registry client takes a `String`; it is sent to the registry's token endpoint only.
    fn auth(grant: &Grant) -> RegistryAuth {
        RegistryAuth::Basic(
            grant.username.clone(),
            grant.password.expose_secret().to_owned(),
        )
    }
}

struct Shared<'a> {
    broker: &'a Broker,
    registry: String,
    repository: String,
    project: String,
    options: &'a PushOptions,
    reporter: &'a Reporter,
    session: tokio::sync::Mutex<Arc<RegistrySession>>,
    renewals: AtomicU32,
}

impl Shared<'_> {
    fn reference(&self, tag_or_digest: &str) -> Reference {
        if tag_or_digest.contains(':') {
            Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            )
        } else {
            Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            )
        }
    }

    /// The current session, renewed first when its grant expires within the margin.
    async fn current(&self) -> Result<Arc<RegistrySession>, CliError> {
        let mut guard = self.session.lock().await;
        let left = guard
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left <= self.options.refresh_margin {
            let why = if left.is_zero() {
                "it expired".to_owned()
            } else {
                format!("it expires in {}s", left.as_secs())
            };
            *guard = Arc::new(self.renew(guard.generation + 1, &why).await?);
        }
        Ok(guard.clone())
    }

    /// Renew after the registry refused session `failed`, unless another task already did.
    async fn renew_after(&self, failed: u64) -> Result<(), CliError> {
        let mut guard = self.session.lock().await;
        if guard.generation == failed {
            *guard = Arc::new(self.renew(failed + 1, "the registry refused it").await?);
        }
        Ok(())
    }

    async fn renew(&self, generation: u64, why: &str) -> Result<RegistrySession, CliError> {
        self.reporter
            .note(&format!("renewing the registry credential: {why}"));
        let grant = self.broker.grant().await?;
        if grant.registry_url != self.registry || grant.repository != self.repository {
            return Err(CliError::Registry(format!(
                "project {}: the backend now names {}/{} instead of {}/{}; run the push again",
                self.project, grant.registry_url, grant.repository, self.registry, self.repository
            )));
        }
        let session = RegistrySession::open(&grant, generation, self.options).await?;
        self.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }

    /// Upload a blob unless the registry has it; true when uploaded.
    async fn push_blob(&self, blob: &Blob) -> Result<bool, CliError> {
        let progress = self.reporter.blob(blob.kind, &blob.digest, blob.size);
        let reference = self.reference(&self.options.tag);
        let mut renewals = 0;
        loop {
            let session = self.current().await?;
            let attempt = async {
                if session.client.blob_exists(&reference, &blob.digest).await? {
                    return Ok(false);
                }
                progress.started();
                let stream = blob_stream(blob.clone(), progress.clone(), self.options.limit_rate);
                session
                    .client
                    .push_blob_stream(&reference, stream, &blob.digest, Some(blob.size))
                    .await?;
                Ok(true)
            }
            .await;
            match attempt {
                Ok(true) => {
                    progress.pushed();
                    return Ok(true);
                }
                Ok(false) => {
                    progress.skipped();
                    return Ok(false);
                }
                Err(e) if is_auth_failure(&e) && renewals < MAX_RENEWALS_PER_STEP => {
                    renewals += 1;
                    progress.restart();
                    self.renew_after(session.generation).await?;
                }
                Err(e) => {
                    return Err(self.registry_error(e, &format!("{} {}", blob.kind, blob.digest)));
                }
            }
        }
    }

    /// Upload a manifest under `tag_or_digest`, then check the registry stores the same digest.
    async fn push_manifest(
        &self,
        manifest: &Manifest,
        tag_or_digest: &str,
    ) -> Result<(), CliError> {
        let reference = self.reference(tag_or_digest);
        let content_type =
            reqwest::header::HeaderValue::from_str(&manifest.media_type).map_err(|_| {
                CliError::Input(format!(
                    "manifest {} has an invalid media type",
                    manifest.digest
                ))
            })?;
        let mut renewals = 0;
        loop {
            let session = self.current().await?;
            let attempt = async {
                session
                    .client
                    .push_manifest_raw(&reference, manifest.bytes.clone(), content_type.clone())
                    .await?;
                session
                    .client
                    .fetch_manifest_digest(&reference, &session.auth)
                    .await
            }
            .await;
            match attempt {
                Ok(stored) if stored == manifest.digest => {
                    self.reporter.note(&format!(
                        "manifest {}: pushed as {}",
                        progress::short(&manifest.digest),
                        if tag_or_digest.contains(':') {
                            "a child of the index".to_owned()
                        } else {
                            format!("{}/{}:{tag_or_digest}", self.registry, self.repository)
                        }
                    ));
                    return Ok(());
                }
                Ok(stored) => {
                    return Err(CliError::Registry(format!(
                        "the registry stored manifest {stored} for {tag_or_digest}, not {}; it may rewrite manifests, check its settings",
                        manifest.digest
                    )));
                }
                Err(e) if is_auth_failure(&e) && renewals < MAX_RENEWALS_PER_STEP => {
                    renewals += 1;
                    self.renew_after(session.generation).await?;
                }
                Err(e) => {
                    return Err(self.registry_error(e, &format!("manifest {}", manifest.digest)));
                }
            }
        }
    }

    fn registry_error(&self, e: OciDistributionError, what: &str) -> CliError {
        let host = &self.registry;
        match e {
            e if is_auth_failure(&e) => CliError::RegistryDenied(format!(
                "the registry {host} refused the credential Rise issued for project {} ({what}); check `rise registry credentials --project {}` and ask the Rise operator to check the registry's token setup",
                self.project, self.project
            )),
            OciDistributionError::RequestError(re) => CliError::Unavailable(format!(
                "cannot reach the registry {host}: {}; check your network and try again",
                describe_reqwest(&re)
            )),
            OciDistributionError::IoError(io) => CliError::Input(format!(
                "cannot read {what} from the image source: {}",
                crate::error::describe_io(&io)
            )),
            OciDistributionError::RegistryError { envelope, .. } => {
                let reasons: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|err| format!("{:?}: {}", err.code, truncate(&err.message, 200)))
                    .collect();
                CliError::Registry(format!(
                    "the registry {host} refused {what}: {}",
                    reasons.join("; ")
                ))
            }
            OciDistributionError::ServerError { code, message, .. } => CliError::Registry(format!(
                "the registry {host} refused {what} with HTTP {code}: {}",
                truncate(message.trim(), 200)
            )),
            other => CliError::Registry(format!(
                "the registry {host} failed on {what}: {}",
                truncate(&other.to_string(), 300)
            )),
        }
    }
}

/// 401s, refused token exchanges and DENIED/UNAUTHORIZED envelopes: a fresh grant may help.
fn is_auth_failure(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|err| matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

/// The blob's bytes as an upload stream, reporting progress and honouring the rate limit.
fn blob_stream(
    blob: Blob,
    progress: BlobProgress,
    limit_rate: Option<u64>,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    struct State {
        blob: Blob,
        file: Option<tokio::fs::File>,
        sent: u64,
        started: Instant,
        progress: BlobProgress,
        limit_rate: Option<u64>,
    }
    let state = State {
        blob,
        file: None,
        sent: 0,
        started: Instant::now(),
        progress,
        limit_rate,
    };
    futures_util::stream::try_unfold(state, |mut s| async move {
        if s.sent >= s.blob.size {
            return Ok(None);
        }
        // With a rate limit, small chunks (a quarter second's worth) keep the pace even.
        let chunk_size = match s.limit_rate.filter(|r| *r > 0) {
            Some(rate) => (rate / 4).clamp(1024, CHUNK as u64),
            None => CHUNK as u64,
        };
        let want = (s.blob.size - s.sent).min(chunk_size) as usize;
        if let Some(rate) = s.limit_rate.filter(|r| *r > 0) {
            // This chunk may leave once the bytes before and in it fit the rate.
            let due = Duration::from_secs_f64((s.sent + want as u64) as f64 / rate as f64);
            let elapsed = s.started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        let chunk = match &s.blob.location {
            Location::Memory(bytes) => bytes.slice(s.sent as usize..s.sent as usize + want),
            Location::File(path) => {
                if s.file.is_none() {
                    s.file = Some(tokio::fs::File::open(path).await?);
                }
                read_chunk(s.file.as_mut(), want).await?
            }
            Location::Archive { archive, offset } => {
                if s.file.is_none() {
                    let mut f = tokio::fs::File::open(archive).await?;
                    f.seek(std::io::SeekFrom::Start(*offset)).await?;
                    s.file = Some(f);
                }
                read_chunk(s.file.as_mut(), want).await?
            }
        };
        s.sent += chunk.len() as u64;
        s.progress.advance(chunk.len() as u64);
        Ok(Some((chunk, s)))
    })
}

async fn read_chunk(
    file: Option<&mut tokio::fs::File>,
    want: usize,
) -> std::io::Result<bytes::Bytes> {
    let Some(file) = file else {
        return Err(std::io::Error::other("blob file not open"));
    };
    let mut buf = vec![0u8; want];
    file.read_exact(&mut buf).await?;
    Ok(bytes::Bytes::from(buf))
}

/// Docker's default: registries on the loopback interface are spoken to over plain HTTP.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (OCI distribution spec).
pub fn validate_tag(tag: &str) -> Result<(), CliError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "invalid tag {:?}: use up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            truncate(tag, 80)
        )))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for ok in ["v1", "latest", "1.2.3-rc_1", "_x"] {
            validate_tag(ok).expect(ok);
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_refusals_that_a_fresh_grant_may_cure() {
        use oci_client::errors::{OciEnvelope, OciError};
        let envelope = |code| OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: String::new(),
        };
        let server = |code| OciDistributionError::ServerError {
            code,
            url: String::new(),
            message: String::new(),
        };
        assert!(is_auth_failure(&OciDistributionError::UnauthorizedError {
            url: String::new()
        }));
        assert!(is_auth_failure(
            &OciDistributionError::AuthenticationFailure(String::new())
        ));
        assert!(is_auth_failure(&server(401)));
        assert!(is_auth_failure(&envelope(OciErrorCode::Denied)));
        assert!(!is_auth_failure(&server(500)));
        assert!(!is_auth_failure(&envelope(OciErrorCode::DigestInvalid)));
        assert!(!is_auth_failure(&OciDistributionError::PushNoDataError));
    }

    #[test]
    fn loopback_registries() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[tokio::test]
    async fn streams_exactly_the_blob_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("archive");
        let data: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let mut file = b"HEADER".to_vec();
        file.extend_from_slice(&data);
        std::fs::write(&path, &file).expect("write");
        let blob = Blob {
            digest: source::sha256_digest(&data),
            size: data.len() as u64,
            kind: "layer",
            location: Location::Archive {
                archive: path,
                offset: 6,
            },
        };
        let chunks: Vec<bytes::Bytes> =
            blob_stream(blob, Reporter::Plain.blob("layer", "sha256:00", 0), None)
                .try_collect()
                .await
                .expect("stream");
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), data);
    }
}
