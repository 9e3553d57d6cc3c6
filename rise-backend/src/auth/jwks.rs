//! The keys of one OIDC issuer: discovered (`/.well-known/openid-configuration`) or configured
//! (`jwks_uri`), fetched, cached and refreshed.
//!
//! Refresh rules:
//! - A token whose `kid` is not cached triggers a refetch, but at most one per `jwks_refresh_floor`
//!   (counted from the last attempt, successful or not). Concurrent misses share one fetch: they
//!   queue on the refresh lock and, once it is theirs, see that the key set has changed or that
//!   the floor forbids another fetch. A flood of random `kid`s therefore costs at most one fetch
//!   per floor.
//! - A key set older than `jwks_cache_ttl` is refreshed in the background; requests keep being
//!   served from the cached keys meanwhile.
//! - A failed fetch keeps the cached keys: tokens keep verifying while the issuer is down.
//!
//! Architecture Invariant: no lock is held across an `.await` on the read path; readers clone an
//! `Arc` of the current [`Snapshot`] under a short read lock and verify without any lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::keys::KeySet;
use crate::config::OidcIssuerConfig;

/// Bound on every fetch, connect to last byte.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Discovery documents are small; this is generous.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// A JWKS of dozens of RSA-4096 keys fits easily.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The cached keys at one point in time.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) keys: KeySet,
    /// When these keys were fetched; `None` until a fetch has succeeded.
    pub(crate) fetched_at: Option<Instant>,
    /// Increases with every successful fetch: how waiting callers tell that someone fetched.
    pub(crate) epoch: u64,
    /// Increases when a fetch brings a different JWKS document; tokens verified under an older
    /// generation are verified afresh (see the verified-token cache). A routine refresh that
    /// returns the same document keeps the generation.
    pub(crate) generation: u64,
    /// SHA-256 of the JWKS document these keys came from.
    digest: [u8; 32],
}

#[derive(Debug, Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// From discovery; forgotten after a failed JWKS fetch so the next attempt re-discovers.
    discovered_jwks_uri: Option<Url>,
}

#[derive(Debug)]
pub(crate) struct RemoteKeys {
    issuer_name: String,
    issuer: String,
    discovery_url: Url,
    configured_jwks_uri: Option<Url>,
    insecure_http: bool,
    cache_ttl: Duration,
    refresh_floor: Duration,
    client: reqwest::Client,
    current: RwLock<Arc<Snapshot>>,
    /// Held for the whole of a fetch: the single-flight gate.
    refresh: tokio::sync::Mutex<RefreshState>,
    background_refresh_running: AtomicBool,
}

impl RemoteKeys {
    /// Validate the issuer's URLs; fetches nothing.
    pub(crate) fn new(
        name: &str,
        config: &OidcIssuerConfig,
        client: reqwest::Client,
    ) -> anyhow::Result<Self> {
        let insecure_http = config.insecure_http;
        let issuer_url = parse_url(&config.issuer, insecure_http)
            .map_err(|m| anyhow::anyhow!("auth.issuers.{name}.issuer: {m}"))?;
        let discovery_url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer_url.as_str().trim_end_matches('/')
        ))
        .map_err(|e| anyhow::anyhow!("auth.issuers.{name}.issuer: {e}"))?;
        let configured_jwks_uri = match &config.jwks_uri {
            Some(uri) => Some(
                parse_url(uri, insecure_http)
                    .map_err(|m| anyhow::anyhow!("auth.issuers.{name}.jwks_uri: {m}"))?,
            ),
            None => None,
        };
        Ok(RemoteKeys {
            issuer_name: name.to_owned(),
            issuer: config.issuer.clone(),
            discovery_url,
            configured_jwks_uri,
            insecure_http,
            cache_ttl: config.jwks_cache_ttl,
            refresh_floor: config.jwks_refresh_floor,
            client,
            current: RwLock::new(Arc::new(Snapshot::default())),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            background_refresh_running: AtomicBool::new(false),
        })
    }

    #[cfg(test)]
    pub(crate) fn background_refresh_running(&self) -> bool {
        self.background_refresh_running.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked between two plain stores; the Arc inside
        // is always a complete snapshot.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn epoch(&self) -> u64 {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .epoch
    }

    /// The current generation, for a token verified earlier that is about to be accepted again;
    /// like a fresh verification, this starts a background refresh when the keys are stale, so
    /// a key the issuer withdrew is noticed even if every request carries a cached token.
    pub(crate) fn generation_for_reuse(self: &Arc<Self>) -> u64 {
        let snapshot = self.snapshot();
        self.refresh_if_stale(&snapshot);
        snapshot.generation
    }

    /// Fetch keys in the background when `snapshot` is older than the cache TTL.
    pub(crate) fn refresh_if_stale(self: &Arc<Self>, snapshot: &Snapshot) {
        let stale = snapshot
            .fetched_at
            .is_some_and(|at| at.elapsed() >= self.cache_ttl);
        if !stale || self.background_refresh_running.load(Ordering::Acquire) {
            return;
        }
        if self.background_refresh_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.background_refresh_running
                .store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        let seen = snapshot.epoch;
        runtime.spawn(async move {
            this.refresh_unless_changed(seen).await;
            this.background_refresh_running
                .store(false, Ordering::Release);
        });
    }

    /// Refetch unless someone fetched since the caller saw epoch `seen`, or the refresh floor
    /// forbids it. Concurrent callers share one fetch.
    pub(crate) async fn refresh_unless_changed(&self, seen: u64) {
        let mut state = self.refresh.lock().await;
        if self.epoch() != seen {
            return;
        }
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.refresh_floor)
        {
            return;
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(&mut state).await {
            Ok((keys, digest)) => {
                let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                let changed = current.fetched_at.is_none() || current.digest != digest;
                if changed {
                    tracing::info!(issuer = %self.issuer_name, keys = keys.len(), "the issuer's keys changed");
                }
                *current = Arc::new(Snapshot {
                    keys,
                    fetched_at: Some(Instant::now()),
                    epoch: current.epoch + 1,
                    generation: current.generation + u64::from(changed),
                    digest,
                });
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer_name, %error, "cannot fetch the issuer's keys; keeping the cached ones");
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<(KeySet, [u8; 32]), String> {
        let jwks_uri = match (&self.configured_jwks_uri, &state.discovered_jwks_uri) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let uri = self.discover().await?;
                state.discovered_jwks_uri = Some(uri.clone());
                uri
            }
        };
        let body = match self.get(&jwks_uri, MAX_JWKS_BYTES).await {
            Ok(body) => body,
            Err(e) => {
                state.discovered_jwks_uri = None;
                return Err(e);
            }
        };
        let (keys, skipped) = KeySet::from_jwks(&body).map_err(|e| format!("{jwks_uri}: {e}"))?;
        for reason in &skipped {
            tracing::warn!(issuer = %self.issuer_name, %jwks_uri, reason, "ignoring a published key");
        }
        tracing::debug!(issuer = %self.issuer_name, %jwks_uri, keys = keys.len(), "fetched the issuer's keys");
        Ok((keys, Sha256::digest(&body).into()))
    }

    async fn discover(&self) -> Result<Url, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let body = self.get(&self.discovery_url, MAX_DISCOVERY_BYTES).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{}: not an OpenID discovery document: {e}",
                self.discovery_url
            )
        })?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name exactly the issuer asked for.
        if doc.issuer != self.issuer {
            return Err(format!(
                "{}: names issuer {:?}, expected {:?}",
                self.discovery_url, doc.issuer, self.issuer
            ));
        }
        parse_url(&doc.jwks_uri, self.insecure_http)
            .map_err(|m| format!("{}: jwks_uri: {m}", self.discovery_url))
    }

    /// GET `url` with the fetch timeout, reading at most `limit` bytes.
    async fn get(&self, url: &Url, limit: usize) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| describe(url, &e))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(format!("{url}: response larger than {limit} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(url, &e))? {
            if body.len() + chunk.len() > limit {
                return Err(format!("{url}: response larger than {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn describe(url: &Url, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("{url}: no answer within {FETCH_TIMEOUT:?}")
    } else {
        format!("{url}: {e}")
    }
}

/// An issuer or JWKS URL: `https`, or `http` only where the issuer is marked `insecure_http`;
/// never with credentials in it. Messages show the URL without any userinfo.
fn parse_url(text: &str, insecure_http: bool) -> Result<Url, String> {
    let shown = crate::secrets::shown_url(text);
    let url = Url::parse(text).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown:?} must not contain credentials: issuer and key URLs are public"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if insecure_http => Ok(url),
        "http" => Err(format!(
            "{shown:?} uses http: keys fetched without TLS can be forged; use https, or set insecure_http = true for local testing only"
        )),
        other => Err(format!(
            "{shown:?}: scheme {other:?} is not supported; use https"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_need_the_insecure_flag() {
        assert!(parse_url("https://idp.example.com", false).is_ok());
        let err = parse_url("http://127.0.0.1:1", false).expect_err("http refused");
        assert!(err.contains("insecure_http"), "{err}");
        assert!(parse_url("http://127.0.0.1:1", true).is_ok());
        assert!(parse_url("file:///etc/passwd", true).is_err());
        assert!(parse_url("not a url", true).is_err());
        for raw in [
            "https://u:hunter2@idp.example.com",
            "https://u:hunter2@idp:99999",
        ] {
            let err = parse_url(raw, true).expect_err(raw);
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
