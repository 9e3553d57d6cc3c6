//! Rise as the token server of a CNCF Distribution registry (Docker registry token spec).
//!
//! `/registry/credentials` returns a *grant* ([`grant`]): username `rise`, password a short-lived
//! HS256 JWT naming the caller, registry, repository and actions. The registry, configured with
//! `auth.token.realm = <public_url>/token`, sends clients to Rise's `/token`, where the grant (or,
//! beyond the spec, a JWT of a trusted issuer, checked against policy) is traded for a registry
//! token ([`token`]): a few minutes long, ES256-signed with a key whose certificate the registry
//! trusts ([`keys`]), granting the intersection of what was asked and what the grant allows.
//!
//! Architecture Invariant: this module knows nothing about HTTP; `http::token` parses requests
//! into [`RepositoryScope`]s and a password, and renders [`RegistryToken`]s.

pub mod grant;
pub mod keys;
pub mod probe;
pub mod revocation;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use async_trait::async_trait;
use serde::Deserialize;

pub use grant::{GRANT_KEYS, Grant, GrantCheck, GrantError, GrantKey, GrantKeys};
pub use keys::{KeySet, REGISTRY_TOKEN_KEYS, SigningKey, TrustedCert, libtrust_key_id};
pub use token::{Access, MintError, RegistryToken, RepositoryScope, ScopeError};

use self::grant::NewGrant;
use self::token::TokenSpec;
use super::ProviderConfig;
use crate::auth::Principal;
use crate::config::Config;
use crate::keyring::Keyring;
use crate::policy::Policy;
use crate::registry::{
    Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider, RepositoryName,
};
use crate::store::{Store, StoreError};

/// The username of every grant. Registry clients need one; Rise ignores it.
pub const USERNAME: &str = "rise";

/// Registry tokens live at least this long: shorter ones expire before a slow client uses them.
const MIN_TOKEN_TTL: Duration = Duration::from_secs(10);
/// Registry tokens live at most this long: they cannot be revoked.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Grants live at least this long.
const MIN_GRANT_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionConfig {
    /// Host and port clients push to, e.g. `registry.example.com` or `127.0.0.1:5000`.
    pub url: String,
    /// The registry's `auth.token.service`; the `aud` of registry tokens.
    #[serde(default = "defaults::service")]
    pub service: String,
    /// The registry's `auth.token.issuer`; the `iss` of registry tokens.
    #[serde(default = "defaults::issuer")]
    pub issuer: String,
    /// Lifetime of registry tokens handed out by `/token` (10s to 1h).
    #[serde(default = "defaults::token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Longest lifetime of a grant (the credential `/registry/credentials` returns); at least 60s.
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

mod defaults {
    use std::time::Duration;
    pub fn service() -> String {
        "rise-registry".into()
    }
    pub fn issuer() -> String {
        "rise".into()
    }
    pub fn token_ttl() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_ttl() -> Duration {
        Duration::from_secs(12 * 3600)
    }
}

impl DistributionConfig {
    fn validate(&self) -> Result<(), String> {
        check_address(&self.url)?;
        if self.service.trim().is_empty() || self.issuer.trim().is_empty() {
            return Err("service and issuer may not be empty: they must equal the registry's auth.token.service and auth.token.issuer".into());
        }
        // They are written into the registry's YAML and environment lines (`registry-config`).
        let plain = |v: &str| v.chars().all(|c| c.is_ascii_graphic());
        if !plain(&self.service) || !plain(&self.issuer) {
            return Err("service and issuer must be printable ASCII without spaces: registry-config writes them into the registry's configuration".into());
        }
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&self.token_ttl) {
            return Err(format!(
                "token_ttl must be between {} and {}",
                humantime::format_duration(MIN_TOKEN_TTL),
                humantime::format_duration(MAX_TOKEN_TTL)
            ));
        }
        if self.max_ttl < MIN_GRANT_TTL {
            return Err(format!(
                "max_ttl must be at least {}",
                humantime::format_duration(MIN_GRANT_TTL)
            ));
        }
        Ok(())
    }
}

/// `url` is the address clients push to: `host[:port]`, where the host is a DNS name, an IPv4
/// address or a bracketed IPv6 address and the port is 1 to 65535. A value with an `@` may hold
/// credentials (`user:password@host`) and is not quoted back, not even in part.
fn check_address(url: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        let shown = if url.contains('@') {
            String::new()
        } else {
            format!(" {:?}", url.chars().take(100).collect::<String>())
        };
        Err(format!(
            "url{shown} {why}: give the registry's host[:port] without a scheme or path, e.g. registry.example.com, 127.0.0.1:5000 or [::1]:5000"
        ))
    };
    if url.is_empty() {
        return refuse("is empty");
    }
    if url.contains('@') {
        return refuse("must not contain credentials (the value is not shown)");
    }
    if url.contains("://") {
        return refuse("must not have a scheme");
    }
    if url.contains(['/', '?', '#']) {
        return refuse("must not have a path, query or fragment");
    }
    let (host, port) = match url.strip_prefix('[') {
        Some(bracketed) => {
            let Some((v6, rest)) = bracketed.split_once(']') else {
                return refuse("lacks the `]` closing its IPv6 address");
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return refuse("has an invalid IPv6 address between its brackets");
            }
            match rest.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None if rest.is_empty() => (None, None),
                None => return refuse("has something other than `:port` after its IPv6 address"),
            }
        }
        None => match url.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return refuse("has more than one `:`; write an IPv6 address in brackets");
            }
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(url), None),
        },
    };
    if let Some(host) = host
        && !is_ipv4_or_dns_name(host)
    {
        return refuse("has an invalid host (not a DNS name or an IPv4 address)");
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return refuse("has an invalid port; give one from 1 to 65535");
    }
    Ok(())
}

/// An IPv4 address, or a DNS name: dot-separated labels of 1 to 63 letters, digits and inner
/// hyphens, 253 characters at most. All digits and dots must be an IPv4 address.
fn is_ipv4_or_dns_name(host: &str) -> bool {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    !host.bytes().all(|b| b.is_ascii_digit() || b == b'.') && crate::registry::is_dns_name(host)
}

/// The keys shared by every Distribution registry of this server.
#[derive(Debug)]
struct SharedKeys {
    grant: GrantKeys,
    signing: KeySet,
}

impl SharedKeys {
    async fn load(keyring: &Keyring) -> anyhow::Result<Self> {
        Ok(Self {
            grant: GrantKeys::load(keyring).await?,
            signing: KeySet::load(keyring).await?,
        })
    }

    /// Which keys these are: changes exactly when a rotation happened.
    fn generation(&self) -> String {
        self.kids().collect::<Vec<_>>().join(",")
    }

    /// The `kid` of every key loaded, of both families.
    fn kids(&self) -> impl Iterator<Item = &str> {
        let signing = self.signing.trusted().map(TrustedCert::kid);
        signing.chain(self.grant.kids())
    }
}

/// Keys this server saw retired by a rotation are in the store again: the store was restored
/// from an old backup or tampered with. Its keys are refused; the loaded keys stay in use.
#[derive(Debug, thiserror::Error)]
#[error(
    "{store} holds keys that a rotation this server picked up retired ({kids}): refusing the reloaded keys and keeping the loaded ones. Someone restored old keys or wrote to the key store; if a restore was deliberate, restart Rise",
    kids = kids.join(", ")
)]
pub struct RetiredKeyReturned {
    /// Sorted.
    kids: Vec<String>,
    store: String,
}

/// The current [`SharedKeys`], replaced whole when a rotation is picked up. A request takes one
/// snapshot and uses it throughout.
#[derive(Debug)]
struct LiveKeys(std::sync::RwLock<Arc<SharedKeys>>);

impl LiveKeys {
    fn get(&self) -> Arc<SharedKeys> {
        // A panic while holding the lock cannot leave an `Arc` half-written.
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, keys: SharedKeys) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }
}

/// One configured Distribution registry: issues grants, and trades grants for registry tokens.
#[derive(Debug)]
pub struct DistributionProvider {
    name: String,
    config: DistributionConfig,
    keys: Arc<LiveKeys>,
    revocations: Arc<revocation::LiveRevocations>,
}

/// Who is asking `/token` for a registry token.
#[derive(Debug, Clone)]
pub enum TokenCaller {
    /// A grant from `/registry/credentials`; access is what the grant names.
    Grant(Grant),
    /// A JWT of a trusted issuer used directly as the password; access comes from policy.
    Principal(Arc<Principal>),
}

impl TokenCaller {
    pub fn subject(&self) -> &str {
        match self {
            TokenCaller::Grant(g) => &g.claims.sub,
            TokenCaller::Principal(p) => &p.subject,
        }
    }

    /// The configured name of the issuer that vouched for the caller.
    pub fn issuer(&self) -> &str {
        match self {
            TokenCaller::Grant(g) => &g.claims.idp,
            TokenCaller::Principal(p) => &p.issuer,
        }
    }

    /// `grant` or `jwt`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenCaller::Grant(_) => "grant",
            TokenCaller::Principal(_) => "jwt",
        }
    }

    fn expires_at(&self) -> SystemTime {
        match self {
            TokenCaller::Grant(g) => g.expires_at(),
            TokenCaller::Principal(p) => p.expires_at,
        }
    }
}

impl DistributionProvider {
    /// The configured registry name (`default` for `[registry]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry's `auth.token.service`.
    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// [`RegistryProvider::issue`] at a given time: lets tests mint grants that are already
    /// expired without waiting.
    pub fn issue_at(
        &self,
        request: &CredentialRequest,
        now: SystemTime,
    ) -> Result<IssuedCredential, ProviderError> {
        if request.registry != self.name {
            return Err(ProviderError::Misconfigured(format!(
                "request for registry {} reached provider {}",
                request.registry, self.name
            )));
        }
        // The lifetime is the one the HTTP layer settled (caller's ask, project ttl, provider cap),
        // not the caller's token's: a CI job whose OIDC token lives five minutes may still need the
        // seed's one-hour credential for a long push. Every provider treats `ttl` the same way.
        let expires_at = now + request.ttl.min(self.config.max_ttl);
        let (password, claims) = self
            .keys
            .get()
            .grant
            .current()
            .mint(NewGrant {
                subject: &request.principal.subject,
                issuer: &request.principal.issuer,
                project: request.project.as_str(),
                registry: &self.name,
                repository: &request.repository,
                actions: request.actions,
                issued_at: now,
                expires_at,
            })
            .map_err(|e| ProviderError::Misconfigured(e.to_string()))?;
        Ok(IssuedCredential {
            registry_url: self.config.url.clone(),
            username: USERNAME.to_owned(),
            password,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
            repository: self.repository_path(&request.repository),
            granted_actions: request.actions,
            repository_scoped: true,
            // `rise-backend grants revoke`: refused at /token within keys.reload_interval.
            revocable: true,
            expiry_enforced: true,
            credential_id: Some(claims.jti),
        })
    }

    /// Look at a `/token` password as a grant for this registry.
    pub fn check_grant(&self, password: &str) -> GrantCheck {
        match self.keys.get().grant.check(password) {
            GrantCheck::Valid(g) if g.claims.reg != self.name => {
                GrantCheck::Invalid(GrantError::WrongRegistry(g.claims.reg))
            }
            other => other,
        }
    }

    /// A grant this server signed but refuses (expired, or for another registry), as the
    /// caller who presented it: the refusal is audited under their name.
    pub fn refused_grant(&self, password: &str) -> Option<Grant> {
        self.keys
            .get()
            .grant
            .signed_claims(password)
            .map(|claims| Grant { claims })
    }

    /// Whether a valid `grant` has been revoked (`rise-backend grants revoke`).
    pub fn revoked(&self, grant: &Grant) -> Option<revocation::Revoked> {
        self.revocations.get().check(grant)
    }

    /// What `caller` may do on `repository` of this registry.
    pub fn allowed_actions(
        &self,
        caller: &TokenCaller,
        repository: &RepositoryName,
        policy: &Policy,
    ) -> Actions {
        match caller {
            TokenCaller::Grant(g) if &g.claims.repo == repository => g.claims.act,
            TokenCaller::Grant(_) => Actions::NONE,
            TokenCaller::Principal(p) => policy
                .project_for_repository(&self.name, repository)
                .filter(|project| project.registry == self.name)
                .map(|project| project.allowed_actions(p))
                .unwrap_or(Actions::NONE),
        }
    }

    /// The access a token for `caller` asking for `scopes` carries.
    pub fn authorize(
        &self,
        caller: &TokenCaller,
        scopes: &[RepositoryScope],
        policy: &Policy,
    ) -> Vec<Access> {
        token::intersect(scopes, |repo| self.allowed_actions(caller, repo, policy))
    }

    /// Mint the registry token for `caller` with `access`: `token_ttl` long, never outliving the
    /// caller's credential, checked against the registry's invariants before it is returned.
    pub fn registry_token(
        &self,
        caller: &TokenCaller,
        access: &[Access],
        now: SystemTime,
    ) -> Result<RegistryToken, MintError> {
        token::mint(
            &self.keys.get().signing,
            &TokenSpec {
                issuer: &self.config.issuer,
                service: &self.config.service,
                subject: caller.subject(),
                access,
                now,
                expires_at: (now + self.config.token_ttl).min(caller.expires_at()),
            },
        )
    }
}

#[async_trait]
impl RegistryProvider for DistributionProvider {
    fn kind(&self) -> &'static str {
        "distribution"
    }

    fn registry_url(&self) -> String {
        self.config.url.clone()
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        self.issue_at(request, SystemTime::now())
    }
}

/// Every Distribution registry this Rise server is the token server of, by `service`.
#[derive(Debug)]
pub struct TokenService {
    by_service: HashMap<String, Arc<DistributionProvider>>,
    by_name: HashMap<String, Arc<DistributionProvider>>,
    keys: Arc<LiveKeys>,
    keyring: Keyring,
    revocations: Arc<revocation::LiveRevocations>,
    /// The longest grant of any of its registries: how long a revocation must stay in force.
    longest_grant: Duration,
    /// Keys this server loaded and later saw gone from the store, in a reload it accepted. A
    /// rotation never brings one back, so finding one in the store again means the store was
    /// rolled back (an old backup, or someone with write access restoring a key they hold).
    /// Kept in memory: a server started after the rotation cannot tell.
    retired: std::sync::Mutex<HashSet<String>>,
    /// When the reloader last read both the keys and the revocations successfully, and its
    /// interval; `None` until a reloader runs.
    reloads: std::sync::Mutex<Option<Reloads>>,
}

#[derive(Debug, Clone, Copy)]
struct Reloads {
    interval: Duration,
    last_ok: std::time::Instant,
}

/// Reloads may fail this many intervals in a row before the server stops calling itself ready:
/// past that, it may be signing with retired keys or missing revocations.
pub const STALE_RELOADS: u32 = 3;

impl TokenService {
    /// Load (or create) the keys in `keyring` and build a provider per Distribution registry;
    /// `None` when no Distribution registry is configured.
    pub async fn from_config(
        config: &Config,
        keyring: &Keyring,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let registries: Vec<(&str, &DistributionConfig)> =
            distribution_registries(config).collect();
        if registries.is_empty() {
            return Ok(None);
        }
        let loaded = SharedKeys::load(keyring).await?;
        let current_kid = loaded.signing.current().kid().to_owned();
        let keys = Arc::new(LiveKeys(std::sync::RwLock::new(Arc::new(loaded))));
        let revocations = Arc::new(revocation::LiveRevocations::default());
        let mut by_service: HashMap<String, Arc<DistributionProvider>> = HashMap::new();
        let mut by_name = HashMap::new();
        for (name, registry) in registries {
            registry
                .validate()
                .map_err(|m| anyhow::anyhow!("registry {name}: {m}"))?;
            let provider = Arc::new(DistributionProvider {
                name: name.to_owned(),
                config: registry.clone(),
                keys: keys.clone(),
                revocations: revocations.clone(),
            });
            if let Some(other) = by_service.insert(registry.service.clone(), provider.clone()) {
                bail!(
                    "registries {} and {name} both use service {:?}: /token tells registries apart by service, give each its own",
                    other.name,
                    registry.service
                );
            }
            by_name.insert(name.to_owned(), provider);
        }
        tracing::info!(
            kid = %current_kid,
            registries = by_name.len(),
            keys = %keyring.describe(),
            "registry token signing key loaded"
        );
        Ok(Some(Arc::new(Self {
            by_service,
            by_name,
            keys,
            keyring: keyring.clone(),
            revocations,
            longest_grant: longest_grant(config),
            retired: std::sync::Mutex::default(),
            reloads: std::sync::Mutex::default(),
        })))
    }

    /// Re-read the keys; returns whether they changed (a rotation was picked up). On an error
    /// the keys in use stay.
    pub async fn reload_keys(&self) -> anyhow::Result<bool> {
        let fresh = SharedKeys::load(&self.keyring).await?;
        let live = self.keys.get();
        if fresh.generation() == live.generation() {
            return Ok(false);
        }
        {
            let mut retired = self
                .retired
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let fresh_kids: HashSet<&str> = fresh.kids().collect();
            let mut back: Vec<String> = fresh_kids
                .iter()
                .filter(|kid| retired.contains(**kid))
                .map(|kid| (*kid).to_owned())
                .collect();
            if !back.is_empty() {
                back.sort();
                crate::metrics::record_key_reload("refused_retired_key");
                return Err(RetiredKeyReturned {
                    kids: back,
                    store: self.keyring.describe(),
                }
                .into());
            }
            // Each family is read in one piece, so a key loaded before and gone now left
            // through rotations, however many happened since the last reload.
            retired.extend(
                live.kids()
                    .filter(|kid| !fresh_kids.contains(kid))
                    .map(str::to_owned),
            );
        }
        crate::metrics::record_key_reload("rotated");
        tracing::info!(
            kid = %fresh.signing.current().kid(),
            "registry token and grant keys rotated"
        );
        self.keys.replace(fresh);
        Ok(true)
    }

    /// The longest grant of any of its registries.
    pub fn longest_grant(&self) -> Duration {
        self.longest_grant
    }

    /// Re-read the revoked grants from `store`; on an error the loaded ones stay.
    pub async fn reload_revocations(&self, store: &Store) -> Result<(), StoreError> {
        self.revocations.reload(store).await
    }

    /// Re-read the keys, and the revoked grants from `store`, every `interval` until the service
    /// is dropped.
    pub fn spawn_key_reloader(
        self: &Arc<Self>,
        interval: Duration,
        store: Store,
    ) -> tokio::task::JoinHandle<()> {
        self.note_reload(interval);
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                let mut ok = true;
                if let Err(e) = service.reload_revocations(&store).await {
                    ok = false;
                    tracing::warn!(error = %e, "reloading the revoked grants failed; the loaded ones stay in force");
                }
                match service.reload_keys().await {
                    Ok(_) => {}
                    Err(e) if e.is::<RetiredKeyReturned>() => {
                        ok = false;
                        tracing::error!(error = %e, "the key store holds a retired key");
                    }
                    Err(e) => {
                        ok = false;
                        crate::metrics::record_key_reload("error");
                        tracing::warn!(error = %format!("{e:#}"), "reloading the signing keys failed; the loaded keys stay in use");
                    }
                }
                if ok {
                    service.note_reload(interval);
                }
            }
        })
    }

    fn note_reload(&self, interval: Duration) {
        *self
            .reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Reloads {
            interval,
            last_ok: std::time::Instant::now(),
        });
    }

    /// How long ago keys and revocations were last reloaded, when that is more than
    /// [`STALE_RELOADS`] reload intervals: the server may be signing with a rotated-out key or
    /// missing revocations other servers stored. `None` while reloads succeed (or none runs).
    pub fn stale_reloads(&self) -> Option<Duration> {
        let r = (*self
            .reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        let age = r.last_ok.elapsed();
        (age > r.interval.saturating_mul(STALE_RELOADS)).then_some(age)
    }

    /// The `kid` of the key that signs registry tokens now.
    pub fn signing_kid(&self) -> String {
        self.keys.get().signing.current().kid().to_owned()
    }

    /// The registry whose `auth.token.service` is `service`.
    pub fn registry_for_service(&self, service: &str) -> Option<&Arc<DistributionProvider>> {
        self.by_service.get(service)
    }

    /// The provider of the registry configured as `name`.
    pub fn provider(&self, name: &str) -> Option<Arc<DistributionProvider>> {
        self.by_name.get(name).cloned()
    }
}

/// The longest a grant of any configured Distribution registry lives (zero when none is
/// configured): keys must not be rotated twice within it.
pub fn longest_grant(config: &Config) -> Duration {
    distribution_registries(config)
        .map(|(_, r)| r.max_ttl)
        .max()
        .unwrap_or_default()
}

fn distribution_registries(config: &Config) -> impl Iterator<Item = (&str, &DistributionConfig)> {
    config.all_registries().filter_map(|(name, p)| match p {
        ProviderConfig::Distribution(d) => Some((name, d)),
        #[allow(unreachable_patterns)]
        _ => None,
    })
}

/// For `rise-backend registry-config`: write the certificate bundle to
/// `<data_dir>/registry-bundle.pem` and return the `auth: token:` YAML a registry's config.yml
/// needs to trust Rise.
pub fn registry_config_snippet(config: &Config, registry: Option<&str>) -> anyhow::Result<String> {
    let (name, registry) = select_registry(config, registry)?;
    let keys = KeySet::load_or_create(&config.server.data_dir)?;
    finish_snippet(config, name, registry, &keys)
}

/// [`registry_config_snippet`] with the keys of `keyring` (the database, for replicas).
pub async fn registry_config_snippet_from(
    config: &Config,
    registry: Option<&str>,
    keyring: &Keyring,
) -> anyhow::Result<String> {
    let (name, registry) = select_registry(config, registry)?;
    let keys = KeySet::load(keyring).await?;
    finish_snippet(config, name, registry, &keys)
}

/// The Distribution registry `registry` names, or the only one.
fn select_registry<'c>(
    config: &'c Config,
    registry: Option<&str>,
) -> anyhow::Result<(&'c str, &'c DistributionConfig)> {
    let registries: Vec<(&str, &DistributionConfig)> = distribution_registries(config).collect();
    let names = || {
        registries
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, registry) = match registry {
        Some(wanted) => registries
            .iter()
            .find(|(n, _)| *n == wanted)
            .copied()
            .with_context(|| {
                format!(
                    "no distribution registry named {wanted:?} is configured (configured: {})",
                    names()
                )
            })?,
        None => match registries.as_slice() {
            [only] => *only,
            [] => bail!("no registry of type \"distribution\" is configured"),
            _ => bail!(
                "several distribution registries are configured ({}): choose one with --registry",
                names()
            ),
        },
    };
    registry
        .validate()
        .map_err(|m| anyhow::anyhow!("registry {name}: {m}"))?;
    Ok((name, registry))
}

fn finish_snippet(
    config: &Config,
    name: &str,
    registry: &DistributionConfig,
    keys: &KeySet,
) -> anyhow::Result<String> {
    let data_dir: &Path = &config.server.data_dir;
    let bundle = keys.write_bundle(data_dir)?;
    Ok(render_snippet(
        name,
        &format!("{}/token", config.server.public_url()),
        registry,
        &bundle.display().to_string(),
    ))
}

fn render_snippet(name: &str, realm: &str, registry: &DistributionConfig, bundle: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars, so any value is quoted safely.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "# Token authentication by Rise for registry {name:?} (paste into the registry's config.yml).\n\
         # Equivalent environment variables:\n\
         #   REGISTRY_AUTH_TOKEN_REALM={realm} REGISTRY_AUTH_TOKEN_SERVICE={service} REGISTRY_AUTH_TOKEN_ISSUER={issuer} REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE={bundle}\n\
         auth:\n  token:\n    realm: {qrealm}\n    service: {qservice}\n    issuer: {qissuer}\n    rootcertbundle: {qbundle}\n",
        service = registry.service,
        issuer = registry.issuer,
        qrealm = q(realm),
        qservice = q(&registry.service),
        qissuer = q(&registry.issuer),
        qbundle = q(bundle),
    )
}

#[cfg(test)]
mod tests;
