//! `rise push`: upload an image from an OCI layout or a `docker save` archive straight to the
//! project's registry with brokered credentials; no container daemon involved.
//!
//! Renewal: the grant from `/registry/credentials` is short-lived. Before each blob the client
//! renews it when it expires within the margin, and when the registry refuses a request (401,
//! or the token exchange fails because the grant expired) it renews once and starts that blob
//! over; blobs already in the registry are skipped, so a renewed push resumes where it was.
//!
//! Architecture invariants:
//! - The grant's password reaches only the registry or a token endpoint [`auth`] checked; the
//!   registry client is handed a registry token, never the password, for token-auth registries.
//! - Every blob's bytes are hashed as they are streamed; a mismatch with the digest stops the
//!   upload before its last chunk, so the registry never stores it.
//! - Registry-client work runs in its own task: a panic inside the client on a hostile answer
//!   becomes a registry error (exit code 8), not an abort.
//! - What Rise reads from the registry itself is bounded (4 MiB for a manifest) and timed.

pub mod auth;
pub mod progress;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::backend::{Backend, CredentialQuery, Grant, describe_reqwest, printable};
use crate::context::Context;
use crate::error::CliError;
use crate::session;
use progress::{BlobProgress, Reporter};
use source::{Blob, Image, Location, Manifest};

/// How long before a registry token's expiry the grant is traded for a new one.
const TOKEN_MARGIN: Duration = Duration::from_secs(2);

/// How often one blob may trigger a renewal before the push gives up.
const MAX_RENEWALS_PER_STEP: u32 = 2;
/// Upload stream chunk size.
const CHUNK: usize = 256 * 1024;
/// The most of a manifest Rise reads back from the registry.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// How long storing one manifest (and reading back its digest) may take.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The most characters of a server's text (a warning, an error message) shown.
const MAX_SHOWN: usize = 300;

tokio::task_local! {
    /// Set while registry-client work runs in [`Shared::contained`].
    static CONTAINED: ();
}

/// Keep the default panic message for panics outside contained registry-client work: a panic
/// inside it is reported as a registry error (an `error:` line and exit code 8), and the panic
/// hook's text about a source file of the registry client would only confuse. Call once, early.
pub fn quiet_contained_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CONTAINED.try_with(|_| ()).is_err() {
            default(info);
        }
    }));
}

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
        reporter.note(&format!("warning: {}", printable(w, MAX_SHOWN)));
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
            RegistrySession::open(broker, &first, 0, options).await?,
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
    /// For the requests whose answers Rise reads itself, bounded (the stored manifest's digest).
    http: reqwest::Client,
    /// `https://registry` (or `http://`), as the client addresses it.
    base: String,
    auth: RegistryAuth,
    /// The grant's expiry.
    expires_at: SystemTime,
    /// The registry token's expiry, when the token endpoint said: before it, the grant is
    /// traded again (as the registry client would), so a grant the token endpoint stopped
    /// accepting is noticed and renewed.
    token_expires_at: Option<SystemTime>,
    /// The grant this session trades at the token endpoint.
    grant: Grant,
    generation: u64,
}

impl RegistrySession {
    async fn open(
        broker: &Broker,
        grant: &Grant,
        generation: u64,
        options: &PushOptions,
    ) -> Result<Self, CliError> {
        let host = grant.registry_url.clone();
        let plain_http = options.insecure_http || is_loopback(&host);
        let protocol = if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        // The proxies the rest of Rise uses: this machine (a loopback registry, spoken to over
        // plain http) is never reached through one.
        let proxies = broker.ctx.proxies();
        let config = ClientConfig {
            protocol,
            http_proxy: proxies.http.map(|(_, url)| url),
            https_proxy: proxies.https.map(|(_, url)| url),
            no_proxy: Some(proxies.no_proxy),
            // One PUT per blob with a streamed body: accurate progress, one request per layer.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("rise-cli/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| CliError::Other(format!("cannot set up the registry client: {e}")))?;
        // The registry as the client addresses it (`docker.io` is `index.docker.io`).
        let resolved = Reference::with_tag(host.clone(), grant.repository.clone(), "latest".into())
            .resolve_registry()
            .to_owned();
        let target = auth::Target {
            registry: &resolved,
            plain_http,
            repository: &grant.repository,
            backend_url: broker.backend.url(),
        };
        // The registry client would send the password to any realm the registry names: Rise
        // trades the grant for a registry token itself, at a realm it checked.
        let auth::SessionAuth {
            auth,
            token_expires_at,
        } = auth::registry_auth(&broker.http, &target, grant).await?;
        client.store_auth_if_needed(&resolved, &auth).await;
        client.store_auth_if_needed(&host, &auth).await;
        let http = broker
            .ctx
            .client_builder()?
            .connect_timeout(Duration::from_secs(10))
            .timeout(MANIFEST_TIMEOUT)
            .user_agent(concat!("rise-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(format!("cannot set up the registry client: {e}")))?;
        Ok(Self {
            client,
            http,
            base: format!("{}://{resolved}", if plain_http { "http" } else { "https" }),
            auth,
            expires_at: grant.expires_at,
            token_expires_at,
            grant: grant.clone(),
            generation,
        })
    }
}

impl RegistrySession {
    /// The digest the registry stores under `reference`: its `Docker-Content-Digest` header, else
    /// the sha256 of the manifest it serves, read up to [`MAX_MANIFEST_BYTES`].
    async fn stored_digest(&self, reference: &Reference) -> Result<String, OciDistributionError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base,
            reference.repository(),
            reference.digest().or(reference.tag()).unwrap_or("latest")
        );
        let accept = [
            source::OCI_MANIFEST,
            source::OCI_INDEX,
            source::DOCKER_MANIFEST,
            source::DOCKER_LIST,
        ]
        .join(", ");
        let request = |method: reqwest::Method| {
            let r = self
                .http
                .request(method, &url)
                .header(reqwest::header::ACCEPT, &accept);
            match &self.auth {
                RegistryAuth::Bearer(token) => r.bearer_auth(token),
                RegistryAuth::Basic(user, password) => r.basic_auth(user, Some(password)),
                RegistryAuth::Anonymous => r,
            }
        };
        let header_digest = |response: &reqwest::Response| {
            response
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let refused = |response: &reqwest::Response| OciDistributionError::ServerError {
            code: response.status().as_u16(),
            url: url.clone(),
            message: String::new(),
        };
        let head = request(reqwest::Method::HEAD).send().await?;
        if head.status().is_success()
            && let Some(digest) = header_digest(&head)
        {
            return Ok(digest);
        }
        let response = request(reqwest::Method::GET).send().await?;
        if !response.status().is_success() {
            return Err(refused(&response));
        }
        if let Some(digest) = header_digest(&response) {
            return Ok(digest);
        }
        let body = crate::body::read_bounded(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|_| {
                OciDistributionError::GenericError(Some(format!(
                    "it served a manifest larger than {} MiB, or cut it short",
                    MAX_MANIFEST_BYTES / (1024 * 1024)
                )))
            })?;
        Ok(source::sha256_digest(&body))
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
        } else if guard
            .token_expires_at
            .is_some_and(|at| at <= SystemTime::now() + TOKEN_MARGIN)
        {
            // The registry token runs out: trade the same grant again. A token endpoint that
            // refuses it now (revoked, its key retired) is a refusal: renew the grant.
            let generation = guard.generation;
            let grant = guard.grant.clone();
            *guard = Arc::new(
                match RegistrySession::open(self.broker, &grant, generation, self.options).await {
                    Ok(session) => session,
                    Err(CliError::RegistryDenied(_)) => {
                        self.renew(generation + 1, "the registry refused it")
                            .await?
                    }
                    Err(e) => return Err(e),
                },
            );
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
        let session = RegistrySession::open(self.broker, &grant, generation, self.options).await?;
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
            let corrupt = Arc::new(AtomicBool::new(false));
            let work = {
                let (session, reference, blob) = (session.clone(), reference.clone(), blob.clone());
                let (progress, corrupt) = (progress.clone(), corrupt.clone());
                let limit_rate = self.options.limit_rate;
                async move {
                    if session.client.blob_exists(&reference, &blob.digest).await? {
                        return Ok(false);
                    }
                    progress.started();
                    let (digest, size) = (blob.digest.clone(), blob.size);
                    let stream = blob_stream(blob, progress, limit_rate, corrupt);
                    session
                        .client
                        .push_blob_stream(&reference, stream, &digest, Some(size))
                        .await?;
                    Ok(true)
                }
            };
            let what = format!("{} {}", blob.kind, blob.digest);
            let attempt = self.contained(&what, work).await?;
            if corrupt.load(Ordering::SeqCst) {
                return Err(CliError::Input(format!(
                    "{what} of the image source does not match its digest (the file is corrupt or changed while it was read); nothing of it was stored, check the image and push again"
                )));
            }
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
            let work = {
                let (session, reference) = (session.clone(), reference.clone());
                let (bytes, content_type) = (manifest.bytes.clone(), content_type.clone());
                async move {
                    session
                        .client
                        .push_manifest_raw(&reference, bytes, content_type)
                        .await?;
                    session.stored_digest(&reference).await
                }
            };
            let what = format!("manifest {}", manifest.digest);
            let attempt = tokio::time::timeout(MANIFEST_TIMEOUT, self.contained(&what, work))
                .await
                .map_err(|_| {
                    CliError::Unavailable(format!(
                        "the registry {} did not finish storing {what} within {}s; try again later",
                        self.registry,
                        MANIFEST_TIMEOUT.as_secs()
                    ))
                })??;
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

    /// Run registry-client work in its own task, so that a registry answer the client panics on
    /// (a malformed header, a missing `Location`) ends the push with a clean error.
    async fn contained<T: Send + 'static>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, OciDistributionError>> + Send + 'static,
    ) -> Result<Result<T, OciDistributionError>, CliError> {
        match tokio::spawn(CONTAINED.scope((), work)).await {
            Ok(result) => Ok(result),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let detail = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(CliError::Registry(format!(
                    "the registry {} gave an answer the registry client cannot handle ({what}: {}); ask the Rise operator to check the registry",
                    self.registry,
                    printable(&detail, 200)
                )))
            }
            Err(_) => Err(CliError::Other(format!(
                "the upload of {what} was cancelled"
            ))),
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
                    .map(|err| format!("{:?}: {}", err.code, printable(&err.message, 200)))
                    .collect();
                CliError::Registry(format!(
                    "the registry {host} refused {what}: {}",
                    reasons.join("; ")
                ))
            }
            OciDistributionError::ServerError { code, message, .. } => CliError::Registry(format!(
                "the registry {host} refused {what} with HTTP {code}: {}",
                printable(message.trim(), 200)
            )),
            other => CliError::Registry(format!(
                "the registry {host} failed on {what}: {}",
                printable(&other.to_string(), 300)
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
        // `blob_exists` reports a refused HEAD this way. Registry tokens (traded by Rise, see
        // `auth`) can expire before the grant: the 401 that follows must renew, not fail.
        OciDistributionError::RequestError(e) => e
            .status()
            .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|err| matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

/// The blob's bytes as an upload stream, reporting progress and honouring the rate limit. The
/// bytes are hashed as they are read; when they do not match the blob's digest the stream sets
/// `corrupt` and fails instead of sending its last chunk, so the registry never completes it.
fn blob_stream(
    blob: Blob,
    progress: BlobProgress,
    limit_rate: Option<u64>,
    corrupt: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    struct State {
        blob: Blob,
        file: Option<tokio::fs::File>,
        sent: u64,
        started: Instant,
        progress: BlobProgress,
        limit_rate: Option<u64>,
        hasher: Sha256,
        corrupt: Arc<AtomicBool>,
    }
    let state = State {
        blob,
        file: None,
        sent: 0,
        started: Instant::now(),
        progress,
        limit_rate,
        hasher: Sha256::new(),
        corrupt,
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
        s.hasher.update(&chunk);
        if s.sent + chunk.len() as u64 >= s.blob.size {
            let actual = format!("sha256:{:x}", s.hasher.clone().finalize());
            if actual != s.blob.digest {
                s.corrupt.store(true, Ordering::SeqCst);
                return Err(std::io::Error::other(format!(
                    "{} does not match its content",
                    s.blob.digest
                ))
                .into());
            }
        }
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
        let chunks: Vec<bytes::Bytes> = blob_stream(
            blob,
            Reporter::Plain.blob("layer", "sha256:00", 0),
            None,
            Arc::default(),
        )
        .try_collect()
        .await
        .expect("stream");
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), data);
    }

    use crate::testing::{FakeServer, Route, credentials_body, route};

    fn memory_blob(data: &[u8], digest: &str) -> Blob {
        Blob {
            digest: digest.to_owned(),
            size: data.len() as u64,
            kind: "layer",
            location: Location::Memory(bytes::Bytes::copy_from_slice(data)),
        }
    }

    fn manifest(bytes: &[u8]) -> Manifest {
        Manifest {
            digest: source::sha256_digest(bytes),
            media_type: source::OCI_MANIFEST.to_owned(),
            bytes: bytes.to_vec(),
        }
    }

    /// A push of `image` as `v1` to the fake `registry`, with a fake backend granting it.
    async fn push_to(registry: &FakeServer, image: &Image) -> Result<PushOutcome, CliError> {
        push_with(registry, image, &[]).await
    }

    /// [`push_to`] with more environment variables.
    async fn push_with(
        registry: &FakeServer,
        image: &Image,
        vars: &[(&str, &str)],
    ) -> Result<PushOutcome, CliError> {
        let host = registry.url.trim_start_matches("http://");
        let backend = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body(host, 3600),
        )]);
        let vars = vars
            .iter()
            .chain(&[("RISE_TOKEN", "t")])
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let ctx = Context::with_platform_dirs(vars, None, None);
        let http = ctx.http().expect("client");
        let broker = Broker {
            backend: Backend::new(&backend.url, http.clone(), ctx.transport()).expect("backend"),
            ctx,
            http,
            query: CredentialQuery {
                project: "my-app".into(),
                actions: Some("push,pull".into()),
                ttl: None,
            },
        };
        let options = PushOptions {
            tag: "v1".into(),
            jobs: 1,
            refresh_margin: Duration::from_secs(30),
            limit_rate: None,
            insecure_http: false,
        };
        push(&broker, image, &options, &Reporter::Plain).await
    }

    fn challenge(realm: &str) -> Route {
        route("GET /v2/ ", 401, "{}").header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="fake""#),
        )
    }

    fn small_image() -> Image {
        let data = b"layer bytes";
        Image {
            blobs: vec![memory_blob(data, &source::sha256_digest(data))],
            children: Vec::new(),
            root: manifest(br#"{"schemaVersion":2}"#),
        }
    }

    #[tokio::test]
    async fn the_grant_never_goes_to_a_realm_on_another_host_or_port() {
        let realm = FakeServer::start(vec![route("GET /token", 200, r#"{"token":"abc"}"#)]);
        let realm_url = format!("{}/token", realm.url);
        let registry = FakeServer::start(vec![challenge(&realm_url)]);
        let err = push_to(&registry, &small_image())
            .await
            .expect_err("realm refused");
        assert!(matches!(err, CliError::Registry(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&realm_url), "{msg}");
        assert!(msg.contains("did not send it the credential"), "{msg}");
        assert!(realm.heads().is_empty(), "{:?}", realm.heads());
        for head in registry.heads() {
            assert!(
                !head.to_ascii_lowercase().contains("authorization"),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_unfit_for_a_header_is_refused_without_a_panic() {
        let registry = FakeServer::start(vec![
            challenge("{base}/token"),
            route("GET /token", 200, r#"{"token":"tok\n123"}"#),
        ]);
        let err = push_to(&registry, &small_image())
            .await
            .expect_err("bad token");
        assert!(matches!(err, CliError::Registry(_)), "{err}");
        assert!(err.to_string().contains("without a usable token"), "{err}");
        // The grant went to the registry's own realm, and only there.
        let heads = registry.heads();
        let token = heads
            .iter()
            .find(|h| h.starts_with("GET /token"))
            .expect("token");
        assert!(
            token.to_ascii_lowercase().contains("authorization: basic"),
            "{token}"
        );
    }

    #[tokio::test]
    async fn a_registry_answer_that_panics_the_client_is_a_clean_error() {
        // A child manifest stored with 201 but no Location: the registry client panics.
        let registry = FakeServer::start(vec![
            route("GET /v2/ ", 200, "{}"),
            route("HEAD /v2/my-app/blobs/", 200, ""),
            route("PUT /v2/my-app/manifests/", 201, ""),
        ]);
        let mut image = small_image();
        image
            .children
            .push(manifest(br#"{"schemaVersion":2,"x":1}"#));
        let err = push_to(&registry, &image).await.expect_err("no Location");
        assert!(matches!(err, CliError::Registry(_)), "{err}");
        assert_eq!(err.exit() as i32, 8);
        assert!(err.to_string().contains("cannot handle"), "{err}");
    }

    #[tokio::test]
    async fn a_blob_whose_bytes_do_not_match_its_digest_is_not_uploaded() {
        let registry = FakeServer::start(vec![
            route("GET /v2/ ", 200, "{}"),
            route("HEAD /v2/my-app/blobs/", 404, ""),
            route("POST /v2/my-app/blobs/uploads/", 202, "")
                .header("Location", "{base}/v2/my-app/blobs/uploads/u1"),
            route("PUT /v2/my-app/blobs/uploads/", 201, "")
                .header("Location", "{base}/v2/my-app/blobs/x"),
            route("PUT /v2/my-app/manifests/", 201, ""),
        ]);
        let claimed = source::sha256_digest(b"what the manifest promised");
        let image = Image {
            blobs: vec![memory_blob(b"something else entirely", &claimed)],
            ..small_image()
        };
        let err = push_to(&registry, &image).await.expect_err("corrupt");
        assert!(matches!(err, CliError::Input(_)), "{err}");
        assert!(err.to_string().contains(&claimed), "{err}");
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
        assert!(
            !registry
                .requests()
                .iter()
                .any(|r| r.starts_with("PUT /v2/my-app/manifests/")),
            "{:?}",
            registry.requests()
        );
    }

    #[tokio::test]
    async fn the_stream_withholds_the_last_chunk_of_a_corrupt_blob() {
        let data: Vec<u8> = (0..(CHUNK + 10)).map(|i| (i % 251) as u8).collect();
        let blob = memory_blob(&data, &source::sha256_digest(b"other"));
        let corrupt = Arc::new(AtomicBool::new(false));
        let mut stream = std::pin::pin!(blob_stream(
            blob,
            Reporter::Plain.blob("layer", "sha256:00", 0),
            None,
            corrupt.clone(),
        ));
        assert_eq!(
            stream.next().await.expect("first").expect("ok").len(),
            CHUNK
        );
        assert!(stream.next().await.expect("second").is_err());
        assert!(corrupt.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_huge_manifest_answer_is_not_read_to_the_end() {
        // No Docker-Content-Digest: the digest comes from the body, which is far too large.
        let huge = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_MANIFEST_BYTES + 1));
        let registry = FakeServer::start(vec![
            route("GET /v2/ ", 200, "{}"),
            route("HEAD /v2/my-app/blobs/", 200, ""),
            route("PUT /v2/my-app/manifests/", 201, "")
                .header("Location", "{base}/v2/my-app/manifests/v1"),
            route("GET /v2/my-app/manifests/v1", 200, &huge),
        ]);
        let err = push_to(&registry, &small_image())
            .await
            .expect_err("too large");
        assert!(matches!(err, CliError::Registry(_)), "{err}");
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
    }

    #[tokio::test]
    async fn a_registry_token_refused_part_way_renews_the_grant() {
        // The registry refuses the token at the first step (as when it expired before the
        // grant): the push renews and tries again, then reports the refusal as a denial.
        let registry = FakeServer::start(vec![
            challenge("{base}/token"),
            route("GET /token", 200, r#"{"token":"abc"}"#),
            route("HEAD /v2/my-app/blobs/", 401, ""),
        ]);
        let err = push_to(&registry, &small_image())
            .await
            .expect_err("refused");
        assert!(matches!(err, CliError::RegistryDenied(_)), "{err}");
        let tokens = registry
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /token"))
            .count();
        assert_eq!(tokens, 1 + MAX_RENEWALS_PER_STEP as usize);
        let head = registry
            .heads()
            .into_iter()
            .find(|h| h.starts_with("HEAD /v2/my-app/blobs/"))
            .expect("head");
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer abc"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn the_stored_digest_is_checked_against_the_pushed_manifest() {
        let image = small_image();
        let registry = FakeServer::start(vec![
            route("GET /v2/ ", 200, "{}"),
            route("HEAD /v2/my-app/blobs/", 200, ""),
            route("PUT /v2/my-app/manifests/", 201, "")
                .header("Location", "{base}/v2/my-app/manifests/v1"),
            route("HEAD /v2/my-app/manifests/v1", 200, "")
                .header("Docker-Content-Digest", &image.root.digest),
        ]);
        let outcome = push_to(&registry, &image).await.expect("pushed");
        assert_eq!(outcome.digest, image.root.digest);
        assert_eq!((outcome.pushed, outcome.skipped), (0, 1));
    }

    #[tokio::test]
    async fn registry_redirects_are_followed_without_the_credential_to_another_origin() {
        // As README says: the push clients follow a registry's redirects, and reqwest drops
        // the Authorization header on a hop to another scheme, host or port.
        let image = small_image();
        let storage = FakeServer::start(vec![
            route("HEAD /v2/my-app/blobs/", 200, ""),
            route("HEAD /v2/my-app/manifests/v1", 200, "")
                .header("Docker-Content-Digest", &image.root.digest),
        ]);
        let registry = FakeServer::start(vec![
            challenge("{base}/token"),
            route("GET /token", 200, r#"{"token":"abc"}"#),
            route("HEAD /v2/my-app/blobs/", 307, "").header(
                "Location",
                &format!("{}/v2/my-app/blobs/moved", storage.url),
            ),
            route("PUT /v2/my-app/manifests/", 201, "")
                .header("Location", "{base}/v2/my-app/manifests/v1"),
            route("HEAD /v2/my-app/manifests/v1", 307, "").header(
                "Location",
                &format!("{}/v2/my-app/manifests/v1", storage.url),
            ),
        ]);
        let outcome = push_to(&registry, &image).await.expect("pushed");
        assert_eq!(outcome.digest, image.root.digest);
        let followed = storage.heads();
        assert_eq!(followed.len(), 2, "{followed:?}");
        for head in followed {
            assert!(
                !head.to_ascii_lowercase().contains("authorization"),
                "{head}"
            );
        }
        assert!(
            registry
                .heads()
                .iter()
                .filter(|h| h.starts_with("HEAD "))
                .all(|h| h.to_ascii_lowercase().contains("authorization: bearer abc")),
            "{:?}",
            registry.heads()
        );
    }

    #[tokio::test]
    async fn a_loopback_registry_is_never_reached_through_a_proxy() {
        let image = small_image();
        let registry = FakeServer::start(vec![
            challenge("{base}/token"),
            route("GET /token", 200, r#"{"token":"abc"}"#),
            route("HEAD /v2/my-app/blobs/", 200, ""),
            route("PUT /v2/my-app/manifests/", 201, "")
                .header("Location", "{base}/v2/my-app/manifests/v1"),
            route("HEAD /v2/my-app/manifests/v1", 200, "")
                .header("Docker-Content-Digest", &image.root.digest),
        ]);
        let proxy = FakeServer::start(vec![]);
        let vars = [
            ("HTTP_PROXY", proxy.url.as_str()),
            ("ALL_PROXY", &proxy.url),
        ];
        let outcome = push_with(&registry, &image, &vars).await.expect("pushed");
        assert_eq!(outcome.digest, image.root.digest);
        assert!(proxy.heads().is_empty(), "{:?}", proxy.heads());
        assert!(
            registry
                .requests()
                .iter()
                .any(|r| r.starts_with("GET /token")),
            "{:?}",
            registry.requests()
        );
    }
}
