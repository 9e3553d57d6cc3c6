//! [`CachingProvider`]: a decorator that puts a single-flight credential cache in front of any
//! [`RegistryProvider`] whose upstream calls are expensive or rate-limited (AWS STS and ECR).
//!
//! - **Key:** (registry, repository, actions, requested ttl). Everything that shapes what the
//!   upstream mints is in the key, so a cached credential is exactly what a fresh call with the same
//!   request would give. The ttl is part of the key (a "ttl bucket" of one-second width) rather than
//!   a serving rule: a caller who asks for 15 minutes never receives a credential minted for a
//!   caller who asked for 12 hours, and callers of one project share a bucket because the ttl
//!   normally comes from the project's configuration.
//! - **Single flight:** concurrent requests with one key share one upstream call. The call runs
//!   on its own task, so a caller that goes away (client disconnect) does not cancel it for the
//!   others.
//! - **Reuse:** a credential is served from the cache while more than `refresh_margin` of its life
//!   remains, with its *remaining* lifetime (its `expires_at` is unchanged, so `expires_in` counts
//!   down). Callers that joined the flight that minted it always get it.
//! - **Errors are never cached:** the callers waiting on a failed call all get its error, and the
//!   next request makes a new call.
//! - **Who may have it:** the cache sits behind the policy check (the HTTP layer calls policy before
//!   any provider), so a cached credential only ever reaches a caller the policy allowed for that
//!   project and those actions.
//!
//! **Invariant:** only wrap providers whose credentials do not identify the caller (ECR: a token for
//! a role session scoped to one repository). A provider that embeds the caller's subject in what it
//! mints (Rise's own Distribution tokens, per-user Artifactory tokens) must not be wrapped, or one
//! caller's credential would be served to another.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::watch;

use super::{
    Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider, RepositoryName,
};

/// How the cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// A cached credential with less life left than this is not served; a new one is minted.
    pub refresh_margin: Duration,
    /// At most this many credentials are kept; beyond it, new ones are served but not cached.
    pub max_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(300),
            max_entries: 10_000,
        }
    }
}

/// A [`RegistryProvider`] that serves cached credentials and coalesces concurrent upstream calls.
pub struct CachingProvider {
    inner: Arc<dyn RegistryProvider>,
    settings: CacheSettings,
    slots: Arc<Mutex<HashMap<CacheKey, Slot>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    registry: String,
    repository: RepositoryName,
    actions: Actions,
    ttl_secs: u64,
}

impl CacheKey {
    fn of(request: &CredentialRequest) -> Self {
        Self {
            registry: request.registry.clone(),
            repository: request.repository.clone(),
            actions: request.actions,
            ttl_secs: request.ttl.as_secs(),
        }
    }
}

enum Slot {
    Ready(Arc<CachedCredential>),
    /// A call is under way; its outcome arrives on the channel.
    Pending(watch::Receiver<Option<Outcome>>),
}

type Outcome = Result<Arc<CachedCredential>, Arc<ProviderError>>;

/// An [`IssuedCredential`] that can be handed out more than once.
struct CachedCredential {
    registry_url: String,
    username: String,
    password: SecretString,
    expires_at: SystemTime,
    repository: String,
    granted_actions: Actions,
    repository_scoped: bool,
    revocable: bool,
    expiry_enforced: bool,
    credential_id: Option<String>,
}

impl From<IssuedCredential> for CachedCredential {
    fn from(c: IssuedCredential) -> Self {
        Self {
            registry_url: c.registry_url,
            username: c.username,
            password: c.password,
            expires_at: c.expires_at,
            repository: c.repository,
            granted_actions: c.granted_actions,
            repository_scoped: c.repository_scoped,
            revocable: c.revocable,
            expiry_enforced: c.expiry_enforced,
            credential_id: c.credential_id,
        }
    }
}

impl CachedCredential {
    fn to_issued(&self) -> IssuedCredential {
        IssuedCredential {
            registry_url: self.registry_url.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            expires_at: self.expires_at,
            repository: self.repository.clone(),
            granted_actions: self.granted_actions,
            repository_scoped: self.repository_scoped,
            revocable: self.revocable,
            expiry_enforced: self.expiry_enforced,
            credential_id: self.credential_id.clone(),
        }
    }

    /// True while more than `margin` of its life remains.
    fn servable(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires_at
            .duration_since(now)
            .is_ok_and(|left| left > margin)
    }
}

impl fmt::Debug for CachingProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingProvider")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .field("entries", &self.lock_slots().len())
            .finish()
    }
}

impl CachingProvider {
    pub fn new(inner: Arc<dyn RegistryProvider>, settings: CacheSettings) -> Self {
        Self {
            inner,
            settings,
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How many credentials are cached or being minted (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock_slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Slot>> {
        lock(&self.slots)
    }

    /// A cached credential, or the channel of the flight that will produce one (starting that
    /// flight when there is none).
    fn lookup_or_start(
        &self,
        key: &CacheKey,
        request: &CredentialRequest,
    ) -> Result<Arc<CachedCredential>, watch::Receiver<Option<Outcome>>> {
        let now = SystemTime::now();
        let mut slots = self.lock_slots();
        match slots.get(key) {
            Some(Slot::Ready(c)) if c.servable(now, self.settings.refresh_margin) => {
                return Ok(c.clone());
            }
            Some(Slot::Pending(rx)) => return Err(rx.clone()),
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        slots.insert(key.clone(), Slot::Pending(rx.clone()));
        drop(slots);
        let flight = Flight {
            slots: self.slots.clone(),
            key: key.clone(),
            settings: self.settings,
            finished: false,
        };
        let inner = self.inner.clone();
        let request = request.clone();
        tokio::spawn(async move {
            let result = inner.issue(&request).await;
            flight.finish(result, &tx);
        });
        Err(rx)
    }
}

/// The task that makes one upstream call. If it ends without finishing (a panic in the provider),
/// dropping it removes its `Pending` slot so the next request starts afresh.
struct Flight {
    slots: Arc<Mutex<HashMap<CacheKey, Slot>>>,
    key: CacheKey,
    settings: CacheSettings,
    finished: bool,
}

impl Flight {
    fn finish(
        mut self,
        result: Result<IssuedCredential, ProviderError>,
        tx: &watch::Sender<Option<Outcome>>,
    ) {
        let outcome: Outcome = result
            .map(|c| Arc::new(CachedCredential::from(c)))
            .map_err(Arc::new);
        {
            let mut slots = lock(&self.slots);
            slots.remove(&self.key);
            if let Ok(c) = &outcome {
                let now = SystemTime::now();
                // Make room by dropping what can no longer be served.
                if slots.len() >= self.settings.max_entries {
                    slots.retain(|_, s| match s {
                        Slot::Ready(c) => c.servable(now, self.settings.refresh_margin),
                        Slot::Pending(_) => true,
                    });
                }
                if c.servable(now, self.settings.refresh_margin)
                    && slots.len() < self.settings.max_entries
                {
                    slots.insert(self.key.clone(), Slot::Ready(c.clone()));
                }
            }
            self.finished = true;
        }
        // Nobody waiting is fine: the credential is cached (or the error dropped) either way.
        let _ = tx.send(Some(outcome));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.finished {
            let mut slots = lock(&self.slots);
            if matches!(slots.get(&self.key), Some(Slot::Pending(_))) {
                slots.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a map insert/remove; a panic cannot leave the map inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A copy of a shared error for each caller that waited on the failed call.
fn replicate(err: &ProviderError) -> ProviderError {
    match err {
        ProviderError::Upstream { operation, detail } => ProviderError::Upstream {
            operation,
            detail: detail.clone(),
        },
        ProviderError::Timeout { operation, after } => ProviderError::Timeout {
            operation,
            after: *after,
        },
        ProviderError::Misconfigured(m) => ProviderError::Misconfigured(m.clone()),
        ProviderError::Unsupported(m) => ProviderError::Unsupported(m.clone()),
    }
}

#[async_trait]
impl RegistryProvider for CachingProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn registry_url(&self) -> String {
        self.inner.registry_url()
    }

    fn repository_path(&self, repository: &RepositoryName) -> String {
        self.inner.repository_path(repository)
    }

    fn max_ttl(&self) -> Duration {
        self.inner.max_ttl()
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let key = CacheKey::of(request);
        let looked_up = self.lookup_or_start(&key, request);
        crate::metrics::record_cache(self.kind(), looked_up.is_ok());
        let mut rx = match looked_up {
            Ok(cached) => {
                tracing::debug!(
                    request_id = %request.request_id,
                    registry = %request.registry,
                    repository = %request.repository,
                    "credential served from cache"
                );
                return Ok(cached.to_issued());
            }
            Err(rx) => rx,
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            // The flight's task ended without an outcome: the provider panicked.
            Err(_) => None,
        };
        match outcome {
            Some(Ok(c)) => Ok(c.to_issued()),
            Some(Err(e)) => Err(replicate(&e)),
            None => Err(ProviderError::Upstream {
                operation: "credential issuance",
                detail: "the provider's task ended without a result".into(),
            }),
        }
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        self.inner.revoke(credential_id).await
    }

    fn ready(&self) -> Result<(), String> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use crate::registry::ProjectName;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts calls; each call waits for `gate` so tests can hold calls in flight.
    #[derive(Debug)]
    struct Counting {
        calls: AtomicUsize,
        gate: tokio::sync::Semaphore,
        fail: std::sync::atomic::AtomicBool,
        lifetime: Duration,
    }

    impl Counting {
        fn new(lifetime: Duration) -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                gate: tokio::sync::Semaphore::new(0),
                fail: false.into(),
                lifetime,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl RegistryProvider for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn registry_url(&self) -> String {
            "registry.test".into()
        }
        fn max_ttl(&self) -> Duration {
            Duration::from_secs(43200)
        }
        async fn issue(&self, r: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.gate
                .acquire()
                .await
                .expect("semaphore never closed")
                .forget();
            if self.fail.load(Ordering::SeqCst) {
                return Err(ProviderError::Upstream {
                    operation: "mint",
                    detail: format!("call {n} failed"),
                });
            }
            Ok(IssuedCredential {
                registry_url: self.registry_url(),
                username: "u".into(),
                password: SecretString::from(format!("password-{n}")),
                expires_at: SystemTime::now() + self.lifetime,
                repository: r.repository.to_string(),
                granted_actions: r.actions,
                repository_scoped: true,
                revocable: false,
                expiry_enforced: true,
                credential_id: Some(format!("id-{n}")),
            })
        }
    }

    fn request(repo: &str, actions: Actions, ttl: Duration) -> CredentialRequest {
        CredentialRequest {
            request_id: "r".into(),
            principal: Arc::new(Principal {
                issuer: "local".into(),
                issuer_url: "rise-local".into(),
                subject: "alice".into(),
                groups: vec![],
                claims: Default::default(),
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            }),
            project: ProjectName::parse(repo).expect("valid"),
            registry: "default".into(),
            repository: RepositoryName::parse(repo).expect("valid"),
            actions,
            ttl,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    async fn issue_n(
        cache: &Arc<CachingProvider>,
        req: &CredentialRequest,
        n: usize,
    ) -> Vec<Result<IssuedCredential, ProviderError>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let cache = cache.clone();
                let req = req.clone();
                tokio::spawn(async move { cache.issue(&req).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    }

    /// Lets the flight through once all `n` callers are waiting on it.
    async fn release_when_called(inner: &Counting) {
        while inner.calls() == 0 {
            tokio::task::yield_now().await;
        }
        inner.gate.add_permits(1);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_call_and_later_ones_hit_the_cache() {
        let inner = Counting::new(HOUR);
        let cache = Arc::new(CachingProvider::new(
            inner.clone(),
            CacheSettings::default(),
        ));
        let req = request("my-app", Actions::PUSH_PULL, HOUR);
        let (results, ()) = tokio::join!(issue_n(&cache, &req, 20), release_when_called(&inner));
        assert_eq!(inner.calls(), 1);
        for r in results {
            let c = r.expect("issued");
            assert_eq!(c.credential_id.as_deref(), Some("id-1"));
        }
        let again = cache.issue(&req).await.expect("cached");
        assert_eq!(again.credential_id.as_deref(), Some("id-1"));
        assert_eq!(inner.calls(), 1, "served from the cache");
    }

    #[tokio::test]
    async fn key_separates_repository_actions_and_ttl() {
        let inner = Counting::new(HOUR);
        inner.gate.add_permits(100);
        let cache = CachingProvider::new(inner.clone(), CacheSettings::default());
        let base = request("my-app", Actions::PUSH_PULL, HOUR);
        cache.issue(&base).await.expect("1");
        cache
            .issue(&request("other", Actions::PUSH_PULL, HOUR))
            .await
            .expect("2");
        cache
            .issue(&request("my-app", Actions::PULL, HOUR))
            .await
            .expect("3");
        cache
            .issue(&request("my-app", Actions::PUSH_PULL, HOUR / 4))
            .await
            .expect("4");
        let mut other_registry = base.clone();
        other_registry.registry = "second".into();
        cache.issue(&other_registry).await.expect("5");
        assert_eq!(inner.calls(), 5);
        cache.issue(&base).await.expect("cached");
        assert_eq!(inner.calls(), 5);
        assert_eq!(cache.len(), 5);
    }

    #[tokio::test]
    async fn credentials_near_expiry_are_replaced() {
        // Minted with 4 minutes to live, under the default 5-minute margin: never served again.
        let inner = Counting::new(Duration::from_secs(240));
        inner.gate.add_permits(100);
        let cache = CachingProvider::new(inner.clone(), CacheSettings::default());
        let req = request("my-app", Actions::PULL, HOUR);
        let first = cache.issue(&req).await.expect("1");
        let second = cache.issue(&req).await.expect("2");
        assert_ne!(first.credential_id, second.credential_id);
        assert_eq!(inner.calls(), 2);
    }

    #[tokio::test]
    async fn errors_reach_every_waiter_and_are_not_cached() {
        let inner = Counting::new(HOUR);
        inner.fail.store(true, Ordering::SeqCst);
        let cache = Arc::new(CachingProvider::new(
            inner.clone(),
            CacheSettings::default(),
        ));
        let req = request("my-app", Actions::PULL, HOUR);
        let (results, ()) = tokio::join!(issue_n(&cache, &req, 10), release_when_called(&inner));
        assert_eq!(inner.calls(), 1);
        for r in results {
            match r {
                Err(ProviderError::Upstream { operation, detail }) => {
                    assert_eq!(operation, "mint");
                    assert_eq!(detail, "call 1 failed");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(cache.is_empty(), "no error cached");
        inner.fail.store(false, Ordering::SeqCst);
        inner.gate.add_permits(1);
        let ok = cache.issue(&req).await.expect("a new call after the error");
        assert_eq!(ok.credential_id.as_deref(), Some("id-2"));
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_cancel_the_flight() {
        let inner = Counting::new(HOUR);
        let cache = Arc::new(CachingProvider::new(
            inner.clone(),
            CacheSettings::default(),
        ));
        let req = request("my-app", Actions::PULL, HOUR);
        let leader = {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.issue(&req).await })
        };
        while inner.calls() == 0 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        inner.gate.add_permits(1);
        let c = cache.issue(&req).await.expect("joins or reuses the flight");
        assert_eq!(c.credential_id.as_deref(), Some("id-1"));
        assert_eq!(inner.calls(), 1);
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let inner = Counting::new(HOUR);
        inner.gate.add_permits(100);
        let cache = CachingProvider::new(
            inner.clone(),
            CacheSettings {
                max_entries: 2,
                ..CacheSettings::default()
            },
        );
        for repo in ["a", "b", "c"] {
            cache
                .issue(&request(repo, Actions::PULL, HOUR))
                .await
                .expect("issued");
        }
        assert_eq!(cache.len(), 2);
        cache
            .issue(&request("c", Actions::PULL, HOUR))
            .await
            .expect("issued, not cached");
        assert_eq!(inner.calls(), 4);
    }
}
