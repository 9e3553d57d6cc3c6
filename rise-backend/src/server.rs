//! Wiring: configuration in, a ready [`AppState`] out.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::audit::{AuditLog, AuditSettings};
use crate::auth::{Authenticator, LocalIssuer};
use crate::config::{Config, ServerConfig};
use crate::connections::{ConnectionCap, DESCRIPTOR_RESERVE};
use crate::http::{AppState, RateLimits};
use crate::keyring::Keyring;
use crate::policy::Policy;
use crate::refusals::JsonRefusals;
use crate::registry::RegistryProvider;
use crate::registry::cache::{CacheSettings, CachingProvider};
use crate::registry::providers::ProviderConfig;
use crate::registry::providers::distribution::TokenService;
use crate::registry::providers::ecr::EcrProvider;
use crate::store::Store;
use crate::tls::TlsReloader;

/// Credential lifetime when neither caller nor project asks for another: the seed's "1-hour expiry".
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Build the application state from validated configuration; the issuers' keys start being
/// fetched in the background.
pub async fn build_state(config: &Config) -> anyhow::Result<AppState> {
    build(config, KeyFetch::Now).await
}

/// [`build_state`] without starting the issuers' key fetches: `check-config --offline`, which
/// must not reach out to them.
pub async fn build_state_offline(config: &Config) -> anyhow::Result<AppState> {
    build(config, KeyFetch::OnDemand).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyFetch {
    Now,
    OnDemand,
}

async fn build(config: &Config, key_fetch: KeyFetch) -> anyhow::Result<AppState> {
    for (i, admin) in config.audit.admins.iter().enumerate() {
        if admin.subject.is_none() && admin.groups.is_empty() && admin.claims.is_empty() {
            tracing::warn!(
                issuer = %admin.issuer,
                "audit.admins[{i}] names only an issuer: every token of that issuer may read the audit log and revoke grants; add a subject, groups or claims"
            );
        }
    }
    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "creating data directory {}",
            config.server.data_dir.display()
        )
    })?;
    if local_issuer_beside_production(config) {
        tracing::warn!(
            key = %config.server.data_dir.join(crate::auth::LOCAL_ISSUER_KEY_FILE).display(),
            "the local development issuer is enabled (the default) beside OIDC issuers or on a non-loopback address: whoever can read its key or run `rise-backend token issue` here can mint tokens of any subject and group; set [auth.local] enabled = false unless you keep it for break-glass use"
        );
    }
    let local = if config.auth.local.enabled {
        Some(LocalIssuer::load_or_create(
            &config.server.data_dir,
            &config.auth.local,
        )?)
    } else {
        None
    };
    let auth = Arc::new(match key_fetch {
        KeyFetch::Now => Authenticator::from_config(&config.auth, local).await?,
        KeyFetch::OnDemand => Authenticator::from_config_offline(&config.auth, local).await?,
    });
    let policy = Arc::new(Policy::from_config(config).map_err(anyhow::Error::msg)?);
    let store = Store::open(&config.database, &config.server.data_dir)
        .await
        .context("opening the database")?;
    tracing::info!(kind = store.kind(), "database ready");
    let keyring = Keyring::for_store(&store, &config.server.data_dir, &config.keys)?;
    let token_service = TokenService::from_config(config, &keyring).await?;
    if let Some(service) = &token_service {
        service
            .reload_revocations(&store)
            .await
            .context("reading the revoked grants")?;
        // Picks up `rise-backend keys rotate` and `grants revoke` (run anywhere) without a
        // restart; stops with the service.
        service.spawn_key_reloader(config.keys.reload_interval, store.clone());
    }
    let audit = AuditLog::start(store, AuditSettings::from(&config.audit));
    let mut registries: HashMap<String, Arc<dyn RegistryProvider>> = HashMap::new();
    for (name, provider_config) in config.all_registries() {
        let provider = build_provider(name, provider_config, config, token_service.as_deref())
            .await
            .with_context(|| format!("configuring registry {name}"))?;
        registries.insert(name.to_owned(), provider);
    }
    let rate_limits = Arc::new(RateLimits::from_config(&config.server, &config.rate_limit)?);
    Ok(AppState {
        auth,
        policy,
        registries: Arc::new(registries),
        default_ttl: DEFAULT_TTL,
        audit,
        token_service,
        auth_meta: Arc::new(crate::http::meta::AuthMeta::from_config(&config.auth)),
        rate_limits,
        body_deadline: config.server.header_read_timeout,
    })
}

/// Whether the development issuer is on where production callers are expected: OIDC issuers
/// are trusted, or the server listens beyond this machine.
fn local_issuer_beside_production(config: &Config) -> bool {
    config.auth.local.enabled
        && (!config.auth.issuers.is_empty() || !config.server.listen.ip().is_loopback())
}

pub async fn build_provider(
    name: &str,
    provider_config: &ProviderConfig,
    config: &Config,
    token_service: Option<&TokenService>,
) -> anyhow::Result<Arc<dyn RegistryProvider>> {
    let _ = config;
    match provider_config {
        ProviderConfig::Distribution(_) => Ok(token_service
            .and_then(|t| t.provider(name))
            .context("distribution registry missing from the token service")?),
        ProviderConfig::Ecr(ecr) => {
            let provider = EcrProvider::from_config(name, ecr).await?;
            // STS and ECR calls are slow and rate-limited: share them and reuse their results.
            Ok(Arc::new(CachingProvider::new(
                Arc::new(provider),
                CacheSettings {
                    refresh_margin: ecr.refresh_margin,
                    ..CacheSettings::default()
                },
            )))
        }
        ProviderConfig::Artifactory(c) => Ok(Arc::new(
            crate::registry::providers::artifactory::ArtifactoryProvider::from_config(name, c)
                .await?,
        )),
        ProviderConfig::Google(c) => Ok(Arc::new(
            crate::registry::providers::google::GoogleProvider::from_config(name, c).await?,
        )),
        ProviderConfig::Acr(c) => Ok(Arc::new(
            crate::registry::providers::acr::AcrProvider::from_config(name, c).await?,
        )),
        ProviderConfig::Ghcr(c) => Ok(Arc::new(
            crate::registry::providers::ghcr::GhcrProvider::from_config(name, c).await?,
        )),
        ProviderConfig::Dockerhub(c) => Ok(Arc::new(
            crate::registry::providers::dockerhub::DockerhubProvider::from_config(name, c).await?,
        )),
        ProviderConfig::Harbor(c) => Ok(Arc::new(
            crate::registry::providers::harbor::HarborProvider::from_config(name, c).await?,
        )),
        ProviderConfig::Quay(c) => Ok(Arc::new(
            crate::registry::providers::quay::QuayProvider::from_config(name, c).await?,
        )),
    }
}

/// Run the broker until Ctrl-C / SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let state = build_state(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    run(listener, &config.server, state, shutdown_signal()).await
}

/// How long open connections may finish their requests after the server is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serve `state` on a bound `listener` until `shutdown` completes: HTTPS with a reloadable
/// certificate when `[server.tls]` is set, plain HTTP otherwise. Handlers see the TCP peer as
/// `ConnectInfo<SocketAddr>` (the client address of the rate limits and the audit log).
pub async fn run(
    listener: tokio::net::TcpListener,
    server: &ServerConfig,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let app = crate::http::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let listener = listener.into_std()?;
    let cap = ConnectionCap::new(server.max_connections);
    if let Some(limit) = crate::connections::open_file_limit()
        && server.max_connections.saturating_add(DESCRIPTOR_RESERVE) > limit
    {
        tracing::warn!(
            max_connections = server.max_connections,
            open_file_limit = limit,
            "server.max_connections leaves fewer than {DESCRIPTOR_RESERVE} of the open-file limit for the database, upstream calls and key files: raise the limit (ulimit -n, systemd LimitNOFILE=) or lower server.max_connections"
        );
    }
    // A client gets `header_read_timeout` to send a request's headers (a new connection: to
    // have its first request dispatched), then the connection is closed, and as long again for
    // its body (`http::app`): silent or trickling clients cannot hold connections open.
    let Some(tls) = &server.tls else {
        // With TLS, SIGHUP reloads the certificate; without, it must not end the process (its
        // default action), as `systemctl reload` or log rotation would. Caught from before
        // the server says it listens.
        let hup = tokio::spawn(ignore_sighup(sighup()));
        tracing::info!(%addr, public_url = %server.public_url(), tls = false, max_connections = server.max_connections, "rise-backend listening");
        let mut http = axum_server::from_tcp(listener)?
            .acceptor(JsonRefusals(cap))
            .handle(handle)
            .first_request_timeout(server.header_read_timeout);
        http_timeouts(&mut http, server);
        let served = http.serve(app).await;
        hup.abort();
        served?;
        return Ok(());
    };
    let reloader = Arc::new(
        TlsReloader::load_for(tls.clone(), server.public_tls_host())
            .await
            .context("loading [server.tls]")?,
    );
    let watcher = reloader.clone().spawn_watcher();
    tracing::info!(%addr, public_url = %server.public_url(), tls = true, max_connections = server.max_connections, "rise-backend listening");
    // The cap runs before the handshake: a refused connection costs no TLS work.
    let mut https = axum_server::from_tcp_rustls(listener, reloader.rustls_config())?
        // A connection that never starts its handshake gives its slot back as soon as one that
        // never sends its headers would.
        .map(|tls| {
            JsonRefusals(
                tls.handshake_timeout(server.header_read_timeout)
                    .acceptor(cap),
            )
        })
        .handle(handle)
        .first_request_timeout(server.header_read_timeout);
    http_timeouts(&mut https, server);
    let served = https.serve(app).await;
    watcher.abort();
    served?;
    Ok(())
}

/// SIGHUP, caught from now on (`None` off Unix, or if it cannot be).
#[cfg(unix)]
fn sighup() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot listen for SIGHUP: one would end the process"),
        )
        .ok()
}

#[cfg(not(unix))]
fn sighup() -> Option<()> {
    None
}

/// Say there is nothing to reload on each SIGHUP: keys and revocations are re-read on their own
/// (`keys.reload_interval`), the configuration only at a restart.
#[cfg(unix)]
async fn ignore_sighup(hup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hup) = hup else { return };
    while hup.recv().await.is_some() {
        tracing::info!(
            "SIGHUP ignored: without [server.tls] there is no certificate to reload; keys and revocations reload every keys.reload_interval, the configuration at a restart"
        );
    }
}

#[cfg(not(unix))]
async fn ignore_sighup(_: Option<()>) {}

/// HTTP/1.1: headers within `header_read_timeout` (an idle keep-alive connection is closed
/// after as long). HTTP/2 (over TLS, or h2c behind a proxy): a peer that stops answering pings
/// is dropped. An HTTP/2 peer that answers them may stay connected, as a browser would: the
/// number of connections is `server.max_connections` to cap. Either way a request's headers
/// take at most [`MAX_REQUEST_HEAD_BYTES`].
fn http_timeouts<A: axum_server::Address, Acc>(
    served: &mut axum_server::Server<A, Acc>,
    server: &ServerConfig,
) {
    let builder = served.http_builder();
    builder
        .http1()
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(server.header_read_timeout)
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
        .max_concurrent_streams(H2_MAX_STREAMS);
}

/// Concurrent HTTP/2 streams per connection (hyper's default is 200): with 64 KiB header lists,
/// one connection holds at most 2 MiB of headers. Rise's clients send a few requests at a time.
const H2_MAX_STREAMS: u32 = 32;

/// The most memory one request's head may take: the request line and headers over HTTP/1.1
/// (hyper answers a longer one 431 and closes), the header list over HTTP/2. Room for the
/// longest token Rise reads (16 KiB) inside Basic credentials, with every other header; hyper's
/// HTTP/1.1 default (about 400 KiB) would let `max_connections` idle clients hold gigabytes.
/// HTTP/2 counts a header list as names and values plus 32 bytes per field.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How often an idle HTTP/2 connection is pinged to find a vanished peer.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::test_support::load(extra, &[]).expect("valid test config")
    }

    #[test]
    fn the_local_issuer_is_flagged_beside_production_callers() {
        let oidc = "[auth.issuers.corp]\nissuer = \"https://idp.example\"\naudience = \"rise\"\n";
        assert!(!local_issuer_beside_production(&config("")));
        assert!(local_issuer_beside_production(&config(oidc)));
        assert!(!local_issuer_beside_production(&config(&format!(
            "{oidc}[auth.local]\nenabled = false\n"
        ))));
        assert!(local_issuer_beside_production(&config(
            "[server]\nlisten = \"0.0.0.0:3000\"\ndanger_insecure_http_on_non_loopback = true\n"
        )));
    }
}
