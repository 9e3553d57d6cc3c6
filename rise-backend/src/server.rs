//! Wiring: configuration in, a ready [`AppState`] out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::audit::{AuditLog, AuditSettings};
use crate::auth::{Authenticator, LocalIssuer};
use crate::config::Config;
use crate::http::AppState;
use crate::policy::Policy;
use crate::registry::RegistryProvider;
use crate::registry::cache::{CacheSettings, CachingProvider};
use crate::registry::providers::ProviderConfig;
use crate::registry::providers::distribution::TokenService;
use crate::registry::providers::ecr::EcrProvider;
use crate::store::Store;

/// Credential lifetime when neither caller nor project asks for another: the seed's "1-hour expiry".
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Build the application state from validated configuration.
pub async fn build_state(config: &Config) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "creating data directory {}",
            config.server.data_dir.display()
        )
    })?;
    let local = if config.auth.local.enabled {
        Some(LocalIssuer::load_or_create(
            &config.server.data_dir,
            &config.auth.local,
        )?)
    } else {
        None
    };
    let auth = Arc::new(Authenticator::from_config(&config.auth, local).await?);
    let policy = Arc::new(Policy::from_config(config).map_err(anyhow::Error::msg)?);
    let token_service = TokenService::from_config(config)?;
    let store = Store::open(&config.database, &config.server.data_dir)
        .await
        .context("opening the database")?;
    tracing::info!(kind = store.kind(), "database ready");
    let audit = AuditLog::start(store, AuditSettings::from(&config.audit));
    let mut registries: HashMap<String, Arc<dyn RegistryProvider>> = HashMap::new();
    for (name, provider_config) in config.all_registries() {
        let provider = build_provider(name, provider_config, config, token_service.as_deref())
            .await
            .with_context(|| format!("configuring registry {name}"))?;
        registries.insert(name.to_owned(), provider);
    }
    Ok(AppState {
        auth,
        policy,
        registries: Arc::new(registries),
        default_ttl: DEFAULT_TTL,
        audit,
        token_service,
    })
}

async fn build_provider(
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
    }
}

/// Run the broker until Ctrl-C / SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let state = build_state(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, public_url = %config.server.public_url(), "rise-backend listening");
    // ConnectInfo gives handlers the peer address for the audit log.
    let app = crate::http::app(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

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
