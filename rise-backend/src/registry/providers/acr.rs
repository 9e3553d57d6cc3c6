//! Azure Container Registry (`type = "acr"`): one repository-scoped ACR token per issued
//! credential, with a password that expires, minted through Azure Resource Manager with Rise's
//! own Microsoft Entra ID app registration.
//!
//! Tested against a fake ACR/ARM/Entra built from Microsoft's public REST documentation
//! (`tests/it/support/fake_acr.rs`), never against Azure: the request and response shapes are in
//! `acr/arm.rs`, with the documents they come from.
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "acr"
//! login_server = "myregistry.azurecr.io"       # what clients docker login to
//! subscription_id = "00000000-0000-0000-0000-000000000000"
//! resource_group = "my-rg"
//! registry_name = "myregistry"
//! tenant_id = "11111111-1111-1111-1111-111111111111"   # Rise's app registration
//! client_id = "22222222-2222-2222-2222-222222222222"
//! client_secret = "..."   # or client_secret_file, RISE_REGISTRY__CLIENT_SECRET,
//!                         # or an aws-secretsmanager: reference
//! max_ttl = "12h"         # longest lifetime handed out
//! ```
//!
//! Other keys: `authority_url` (default `https://login.microsoftonline.com`), `management_url`
//! (default `https://management.azure.com`), `arm_scope` (the scope asked of Entra ID; default
//! `management_url`'s origin + `/.default`, right for the public cloud, Azure Government and
//! Azure China; set it when `management_url` is a proxy), `api_version` (default `2023-07-01`),
//! `request_timeout` (10s, each HTTP call), `connect_timeout` (5s), `operation_timeout` (60s, a
//! whole long-running ARM operation, polls included), `cleanup_interval` (5m, see below),
//! `cleanup_batch` (20), `secret_refresh_interval` (5m, for `aws-secretsmanager:` references),
//! `insecure_http` (allow `http://` URLs; tests only).
//!
//! # What is scoped
//!
//! ACR's non-Entra "repository-scoped permissions" are *tokens*, each bound to one *scope map*
//! listing actions on named repositories ("Create a token with repository-scoped permissions",
//! <https://learn.microsoft.com/azure/container-registry/container-registry-repository-scoped-permissions>).
//! Rise keeps one scope map per repository and access level, named
//! `rise-<repository slug>-<hash>-{pull|push}`, with exactly:
//!
//! - pull: `repositories/<repository>/content/read`, `repositories/<repository>/metadata/read`;
//! - push: the same plus `repositories/<repository>/content/write`.
//!
//! No `content/delete` or `metadata/write`: callers cannot delete images or lock tags. A scope
//! map action names one repository exactly (Rise never writes wildcards), so `team` does not
//! reach `team/app`. Rise writes the scope map (create or replace), checks that ARM's reply lists
//! exactly those actions, and re-checks every 5 minutes; a reply with other actions is refused,
//! so every credential handed out is `repository_scoped: true`. ACR documents that tokens cannot
//! list the registry's catalog.
//!
//! # Concurrency, lifetime, revocation, cleanup
//!
//! A token has two password slots and generating one replaces it, so two callers sharing a
//! token would invalidate each other. Rise therefore creates **one token per credential**, named
//! `rise-<expiry, Unix seconds>-<request id slug>-<random>` (5-50 of `[a-z0-9-]`, ACR's rule for
//! token names), and generates its `password1` with `expiry` = now + TTL (at most `max_ttl`).
//! ACR refuses the password after that instant, so `expiry_enforced: true`; a reply claiming a
//! later expiry (or none) is refused and the token deleted; the reported `expires_at` is ACR's.
//! The Docker user name is the token name, which is also the `credential_id`:
//! [`RegistryProvider::revoke`] deletes the token (`rise-backend grants revoke --credential
//! <token name> --registry <name>`), after which its password no longer authenticates. Only
//! names of Rise's shape are accepted, so a revocation can never delete a token someone else
//! created. Passwords are not refreshed: clients ask Rise again. The Entra ID token for ARM is
//! cached and shared until shortly before it expires; concurrent callers wait for one fetch.
//!
//! Expired tokens are not deleted by ACR. At most every `cleanup_interval`, after an issuance,
//! Rise lists the registry's tokens (a bounded number of pages) and deletes up to
//! `cleanup_batch` of its own whose embedded expiry is over a minute past; never a token of
//! another shape. ACR limits the number of tokens and scope maps per registry (see "Azure
//! Container Registry SKU features and limits",
//! <https://learn.microsoft.com/azure/container-registry/container-registry-skus>): the live
//! tokens are one per unexpired credential, so size `max_ttl` and the request rate with that
//! limit in mind; scope maps are two per repository at most. When creating a token is refused
//! with ARM's `QuotaExceeded`, Rise runs the cleanup at once and creates the token again, once;
//! if the registry is still full, the issuance fails (502) and the log says how many of Rise's
//! tokens are live.
//!
//! # Least-privilege Azure RBAC
//!
//! Rise's app registration needs, on the registry only, a custom role with
//! `Microsoft.ContainerRegistry/registries/scopeMaps/read`, `.../scopeMaps/write`,
//! `.../scopeMaps/operationStatuses/read`, `.../tokens/read`, `.../tokens/write`,
//! `.../tokens/delete`, `.../tokens/operationStatuses/read`,
//! `.../generateCredentials/action` (and `.../operationStatuses/read` for the registry-level
//! polls). It needs no data-plane role (no `AcrPush`/`AcrPull`). Whoever holds these can mint
//! tokens for any repository: keep the client secret in a secret store and rotate it.
//!
//! # Failures
//!
//! Every call is bounded (`connect_timeout`, `request_timeout`, and `operation_timeout` over a
//! long-running operation's polls). Timeouts are [`ProviderError::Timeout`] (504). Entra ID's
//! 400/401/403 (bad tenant, client id or secret), ARM's 401/403 (missing role) and ARM's 404
//! (no such subscription, group or registry) are [`ProviderError::Misconfigured`] (502), naming
//! what to check; other statuses and malformed replies are [`ProviderError::Upstream`] (502).
//! Upstream bodies are summarised with secrets redacted and only ever logged. The client
//! secret, the ARM token and generated passwords are [`SecretString`]s: they appear in no log,
//! error or `Debug` output. Polling URLs must point at `management_url`, so the ARM token never
//! goes anywhere else; redirects are not followed.

mod arm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use self::arm::{ArmClient, ArmSettings};
use crate::config::lenient;
use crate::registry::providers::account;
use crate::registry::providers::sweeper::{self, Schedule, Sweep, SweepReport};
use crate::registry::providers::upstream;
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
};
use crate::secrets::{Secret, SecretResolver, SecretSource};

/// The `[registry]` table with `type = "acr"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcrConfig {
    /// The registry's login server, e.g. `myregistry.azurecr.io`.
    pub login_server: String,
    pub subscription_id: String,
    pub resource_group: String,
    /// The registry's resource name, e.g. `myregistry`.
    pub registry_name: String,
    /// The Entra ID tenant of Rise's app registration.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The app registration's client secret: a value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub client_secret: Option<SecretSource>,
    #[serde(default = "defaults::authority_url")]
    pub authority_url: String,
    #[serde(default = "defaults::management_url")]
    pub management_url: String,
    /// The scope Rise asks Entra ID for; default: `management_url`'s origin + `/.default`.
    #[serde(default)]
    pub arm_scope: Option<String>,
    #[serde(default = "defaults::api_version")]
    pub api_version: String,
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on one long-running ARM operation, polls included.
    #[serde(default = "defaults::operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// How often (at most) expired Rise tokens are looked for; `0s` after every issuance.
    #[serde(default = "defaults::cleanup_interval", with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// How many expired tokens one cleanup deletes at most.
    #[serde(default = "defaults::cleanup_batch", deserialize_with = "lenient::u64")]
    pub cleanup_batch: u64,
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
    /// Allow `http://` authority and management URLs: tokens then cross the network in clear.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, max_ttl, request_timeout, secret_refresh_interval,
    };
    use std::time::Duration;

    pub fn authority_url() -> String {
        "https://login.microsoftonline.com".into()
    }
    pub fn management_url() -> String {
        "https://management.azure.com".into()
    }
    pub fn api_version() -> String {
        "2023-07-01".into()
    }
    pub fn operation_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn cleanup_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn cleanup_batch() -> u64 {
        20
    }
}

/// Every name Rise creates in the registry starts with this.
const NAME_PREFIX: &str = "rise-";
/// ACR's name rules: tokens 5-50 of `[a-zA-Z0-9-]`, scope maps 5-50 of `[a-zA-Z0-9-_]`.
const MAX_NAME_LEN: usize = 50;
/// Scope map descriptions: "Maximum 256 characters are allowed" (`az acr scope-map create`).
const MAX_DESCRIPTION_LEN: usize = 256;
/// The most token creates one issuance makes against a registry at its token limit, with a
/// cleanup between each.
const QUOTA_ATTEMPTS: u32 = 3;
/// A confirmed scope map is written again after this long, so a hand edit does not persist.
const SCOPE_MAP_RECHECK: Duration = Duration::from_secs(300);
/// An expired token is deleted only this long after its expiry (clock skew).
const CLEANUP_GRACE: Duration = Duration::from_secs(60);
/// Pages of the token list one cleanup reads at most.
const CLEANUP_PAGES: usize = 10;

/// The ACR provider. Holds its secrets; its `Debug` shows none of them.
#[derive(Debug, Clone)]
pub struct AcrProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The registry's configured name, for log lines and errors.
    name: String,
    login_server: String,
    arm: ArmClient,
    max_ttl: Duration,
    /// Scope map name -> when ARM last confirmed its actions; the per-name mutex makes
    /// concurrent callers for one repository write the scope map once.
    scope_maps: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    cleanup_batch: usize,
    /// When expired tokens are deleted.
    cleanup: Schedule,
}

/// What a credential may do upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

impl Access {
    fn of(actions: Actions) -> Self {
        if actions.contains(Action::Push) {
            Access::Push
        } else {
            Access::Pull
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "push",
        }
    }

    /// Push always implies pull (a push reads what it uploads).
    fn granted(self) -> Actions {
        match self {
            Access::Pull => Actions::PULL,
            Access::Push => Actions::PUSH_PULL,
        }
    }

    /// The scope map actions, sorted.
    fn scope_actions(self, repository: &str) -> Vec<String> {
        let mut actions = vec![
            format!("repositories/{repository}/content/read"),
            format!("repositories/{repository}/metadata/read"),
        ];
        if self == Access::Push {
            actions.push(format!("repositories/{repository}/content/write"));
        }
        actions.sort();
        actions
    }
}

impl AcrProvider {
    /// Validate `config` and build the provider; an `aws-secretsmanager:` client secret is read
    /// now, with the AWS SDK's default credential chain. No Azure call is made.
    pub async fn from_config(name: &str, config: &AcrConfig) -> anyhow::Result<Self> {
        let resolver =
            account::resolver_for(config.secret_refresh_interval, &config.client_secret).await;
        Ok(Self::with_secrets(name, config, &resolver).await?)
    }

    /// As [`from_config`](Self::from_config), reading references with `secrets`.
    pub async fn with_secrets(
        name: &str,
        config: &AcrConfig,
        secrets: &SecretResolver,
    ) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let login_server = validate_login_server(&config.login_server).map_err(bad)?;
        let subscription_id = uuid::Uuid::parse_str(config.subscription_id.trim())
            .map_err(|_| bad("subscription_id must be a subscription GUID".into()))?
            .to_string();
        let resource_group = config.resource_group.trim();
        if !valid_resource_group(resource_group) {
            return Err(bad(
                "resource_group must be 1-90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'".into(),
            ));
        }
        let registry_name = config.registry_name.trim();
        if !(5..=50).contains(&registry_name.len())
            || !registry_name.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(bad(
                "registry_name must be the registry's resource name: 5-50 letters and digits"
                    .into(),
            ));
        }
        let tenant_id = config.tenant_id.trim();
        if tenant_id.is_empty()
            || tenant_id.len() > 128
            || !tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        {
            return Err(bad(
                "tenant_id must be the tenant's GUID or domain name".into()
            ));
        }
        let client_id = config.client_id.trim();
        if client_id.is_empty()
            || client_id.len() > 128
            || !client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "client_id must be the app registration's application (client) id".into(),
            ));
        }
        let client_secret = resolve_client_secret(name, config, secrets).await?;
        let authority =
            parse_service_url("authority_url", &config.authority_url, config.insecure_http)
                .map_err(bad)?;
        let management = parse_service_url(
            "management_url",
            &config.management_url,
            config.insecure_http,
        )
        .map_err(bad)?;
        let scope = arm_scope(config.arm_scope.as_deref(), &management).map_err(bad)?;
        if scope_may_name_a_proxy(config.arm_scope.as_deref(), &management) {
            tracing::warn!(registry = %name, %scope, "management_url is not a known Azure Resource Manager host, so Entra ID is asked for a token of its own origin; behind a proxy, set arm_scope to the cloud's (https://management.azure.com/.default in the public cloud)");
        }
        let api_version = config.api_version.trim();
        if api_version.is_empty()
            || !api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("api_version must look like 2023-07-01".into()));
        }
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
            ("operation_timeout", config.operation_timeout),
        ])
        .map_err(bad)?;
        if config.cleanup_batch == 0 {
            return Err(bad("cleanup_batch must be at least 1".into()));
        }
        let arm = ArmClient::new(ArmSettings {
            authority,
            management,
            scope,
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            client_secret,
            subscription_id,
            resource_group: resource_group.to_owned(),
            registry_name: registry_name.to_owned(),
            api_version: api_version.to_owned(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            operation_timeout: config.operation_timeout,
        })
        .map_err(bad)?;
        tracing::info!(
            registry = %name,
            login_server = %login_server,
            "acr registry mints one repository-scoped token with an expiring password per credential"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                login_server,
                arm,
                max_ttl: config.max_ttl,
                scope_maps: Mutex::new(HashMap::new()),
                cleanup_batch: usize::try_from(config.cleanup_batch).unwrap_or(usize::MAX),
                cleanup: Schedule::new(config.cleanup_interval),
            }),
        })
    }

    /// Delete up to `cleanup_batch` of Rise's tokens that expired over a minute ago (what
    /// happens in the background at most every `cleanup_interval`). Tokens of any other name
    /// shape are never touched. Waits for a cleanup already running to finish first.
    pub async fn sweep_expired(&self) -> SweepReport {
        sweeper::sweep_now(&*self.inner).await
    }
}

impl Inner {
    async fn issue(
        self: &Arc<Self>,
        request: &CredentialRequest,
    ) -> Result<IssuedCredential, ProviderError> {
        let access = Access::of(request.actions);
        let repository = request.repository.as_str();
        let ttl = request.ttl.min(self.max_ttl).max(Duration::from_secs(1));
        let scope_map_id = self.ensure_scope_map(repository, access).await?;

        let now = SystemTime::now();
        let expiry = now + ttl;
        let expiry_secs = expiry
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let token_name = token_name(&request.request_id, expiry_secs, &random_suffix());
        let minted = match self.create_token(&token_name, &scope_map_id).await {
            Ok(token) => self.mint(&token_name, &scope_map_id, expiry, token).await,
            Err(e) => Err(e),
        };
        if minted.is_err() {
            // Take back whatever was created; the cleanup would find it after its expiry anyway.
            self.spawn_delete(token_name.clone());
        }
        let (username, password, expires_at) = minted?;
        sweeper::sweep_soon(self);
        Ok(IssuedCredential {
            registry_url: self.login_server.clone(),
            username,
            password,
            expires_at,
            repository: repository.to_owned(),
            granted_actions: access.granted(),
            repository_scoped: true,
            revocable: true,
            expiry_enforced: true,
            credential_id: Some(token_name),
        })
    }

    /// Create the token. When the registry already holds as many tokens as its SKU allows,
    /// delete Rise's expired ones at once (as the cleanup would) and create it again. Issuances
    /// that find the registry full together share one cleanup; one that still finds no room
    /// after a cleanup that deleted something (a cleanup deletes at most `cleanup_batch`, and
    /// others took the room) cleans up again. At most [`QUOTA_ATTEMPTS`] creates; none more
    /// once a cleanup of its own found nothing to delete.
    async fn create_token(
        self: &Arc<Self>,
        token_name: &str,
        scope_map_id: &str,
    ) -> Result<arm::TokenResource, ProviderError> {
        let mut last: Option<sweeper::Swept> = None;
        let mut attempt = 0;
        let refusal = loop {
            attempt += 1;
            let seen = sweeper::sweep_mark(&**self);
            let refusal = match self.arm.put_token(token_name, scope_map_id).await {
                Ok(token) => return Ok(token),
                Err(arm::PutError::Failed(e)) => return Err(e),
                Err(arm::PutError::QuotaExceeded(e)) => e,
            };
            let nothing_to_free = last.is_some_and(|s| s.own && s.report.deleted == 0);
            if attempt == QUOTA_ATTEMPTS || nothing_to_free {
                break refusal;
            }
            let swept = sweeper::sweep_unless_done_since(&**self, seen).await;
            tracing::info!(
                registry = %self.name,
                own_cleanup = swept.own,
                deleted = swept.report.deleted,
                live = swept.report.kept,
                error = %refusal,
                "acr token limit reached: cleaned up expired tokens at once (deleted counts them); creating the token again"
            );
            last = Some(swept);
        };
        let counted = last.map_or_else(String::new, |s| {
            format!(
                "; the last cleanup deleted {} of Rise's expired tokens and counted {} of Rise's live, in the pages it listed (none when listing failed: see the warning before this)",
                s.report.deleted, s.report.kept
            )
        });
        Err(ProviderError::Upstream {
            operation: arm::TOKEN_OPERATION,
            detail: format!(
                "registry {} is at its SKU's token limit ({refusal}){counted}. ACR allows Basic 100, Standard 500, Premium 50,000 tokens per registry, of any owner: lower max_ttl or the request rate, delete tokens Rise did not make, or raise the SKU",
                self.login_server
            ),
        })
    }

    /// Generate the password of a created token; the Docker user name, the password and its
    /// expiry.
    async fn mint(
        &self,
        token_name: &str,
        scope_map_id: &str,
        expiry: SystemTime,
        token: arm::TokenResource,
    ) -> Result<(String, SecretString, SystemTime), ProviderError> {
        let properties = token.properties.as_ref();
        let bound_to = properties.and_then(|p| p.scope_map_id.as_deref());
        // ARM resource ids compare case-insensitively.
        if !bound_to.is_some_and(|id| id.eq_ignore_ascii_case(scope_map_id)) {
            return Err(ProviderError::Upstream {
                operation: arm::TOKEN_OPERATION,
                detail: format!(
                    "token {token_name} is bound to {bound_to:?}, not {scope_map_id}; it is deleted"
                ),
            });
        }
        if properties
            .and_then(|p| p.status.as_deref())
            .is_some_and(|s| !s.eq_ignore_ascii_case("enabled"))
        {
            return Err(ProviderError::Upstream {
                operation: arm::TOKEN_OPERATION,
                detail: format!("token {token_name} is not enabled; it is deleted"),
            });
        }
        // The password is generated for the token Rise named, never for an id ARM's reply names.
        let token_id = self.arm.child_id("tokens", token_name);
        if let Some(other) = token
            .id
            .as_deref()
            .filter(|id| !id.eq_ignore_ascii_case(&token_id))
        {
            return Err(ProviderError::Upstream {
                operation: arm::TOKEN_OPERATION,
                detail: format!(
                    "ARM answered for {:?}, not token {token_name}; it is deleted",
                    upstream::truncate(other, 300)
                ),
            });
        }
        let generated = self.arm.generate_password1(&token_id, expiry).await?;
        // Rise asks for whole seconds (`rfc3339` truncates), so ACR's expiry is at most `expiry`.
        if generated.expiry > expiry {
            return Err(ProviderError::Upstream {
                operation: arm::GENERATE_OPERATION,
                detail: format!(
                    "ACR set the password of {token_name} to expire at {}, later than the {} asked for; the token is deleted",
                    rfc3339(generated.expiry),
                    rfc3339(expiry)
                ),
            });
        }
        // ACR's user name for a token is the token's name: credentials of another user are
        // not what Rise asked for.
        let username = match generated.username {
            Some(u) if !u.is_empty() && u != token_name => {
                return Err(ProviderError::Upstream {
                    operation: arm::GENERATE_OPERATION,
                    detail: format!(
                        "ACR generated credentials for user {:?}, not token {token_name}; the token is deleted",
                        upstream::truncate(&u, 100)
                    ),
                });
            }
            _ => token_name.to_owned(),
        };
        Ok((username, generated.value, generated.expiry))
    }

    /// The id of the scope map for `repository` and `access`, written and confirmed within the
    /// last [`SCOPE_MAP_RECHECK`].
    async fn ensure_scope_map(
        &self,
        repository: &str,
        access: Access,
    ) -> Result<String, ProviderError> {
        let name = scope_map_name(repository, access);
        let id = self.arm.child_id("scopeMaps", &name);
        let slot = {
            let mut maps = self.scope_maps.lock().unwrap_or_else(|e| e.into_inner());
            maps.entry(name.clone()).or_default().clone()
        };
        // Bounded: a caller queued behind a hanging write gives up like the writer does.
        let wait = self.arm.operation_timeout();
        let mut confirmed =
            tokio::time::timeout(wait, slot.lock())
                .await
                .map_err(|_| ProviderError::Timeout {
                    operation: arm::SCOPE_MAP_OPERATION,
                    after: wait,
                })?;
        if confirmed.is_some_and(|at| at.elapsed() < SCOPE_MAP_RECHECK) {
            return Ok(id);
        }
        let wanted = access.scope_actions(repository);
        let mut description = format!(
            "Rise: {} access to repository {repository}; managed by Rise, edits are overwritten",
            access.as_str()
        );
        // The CLI documents at most 256 characters; the text is ASCII (a repository name).
        description.truncate(MAX_DESCRIPTION_LEN);
        let reply = self.arm.put_scope_map(&name, &wanted, &description).await?;
        let mut got = reply.properties.map(|p| p.actions).unwrap_or_default();
        got.sort();
        if got != wanted {
            return Err(ProviderError::Upstream {
                operation: arm::SCOPE_MAP_OPERATION,
                detail: format!(
                    "scope map {name} has actions {got:?}, not {wanted:?}; no credential is issued with it"
                ),
            });
        }
        *confirmed = Some(Instant::now());
        Ok(reply.id.unwrap_or(id))
    }

    fn spawn_delete(self: &Arc<Self>, token_name: String) {
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = inner.arm.delete_token(&token_name).await {
                tracing::warn!(
                    registry = %inner.name,
                    token = %token_name,
                    error = %e,
                    "acr token of a failed issuance not deleted; the cleanup deletes it after its expiry"
                );
            }
        });
    }
}

impl Sweep for Inner {
    fn schedule(&self) -> &Schedule {
        &self.cleanup
    }

    async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let names = match self.arm.list_tokens(CLEANUP_PAGES).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(registry = %self.name, error = %e, "acr token cleanup: listing tokens failed; retrying next cleanup");
                return report;
            }
        };
        let cutoff = SystemTime::now()
            .checked_sub(CLEANUP_GRACE)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let (expired, kept): (Vec<&String>, Vec<&String>) = names
            .iter()
            .filter(|n| token_expiry(n).is_some())
            .partition(|n| token_expiry(n).is_some_and(|e| e < cutoff));
        report.kept = kept.len();
        for name in expired.into_iter().take(self.cleanup_batch) {
            match self.arm.delete_token(name).await {
                Ok(()) => report.deleted += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(registry = %self.name, token = %name, error = %e, "expired acr token not deleted; retrying next cleanup")
                }
            }
        }
        if report.deleted > 0 {
            tracing::info!(registry = %self.name, deleted = report.deleted, "expired acr tokens deleted");
        }
        report
    }
}

#[async_trait]
impl RegistryProvider for AcrProvider {
    fn kind(&self) -> &'static str {
        "acr"
    }

    fn registry_url(&self) -> String {
        self.inner.login_server.clone()
    }

    fn max_ttl(&self) -> Duration {
        self.inner.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let result = self.inner.issue(request).await;
        super::warn_if_not_issued(self.kind(), &self.inner.name, request, &result);
        result
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        if token_expiry(credential_id).is_none() {
            return Err(ProviderError::Unsupported(format!(
                "{:?} is not the name of a token Rise created",
                credential_id.chars().take(60).collect::<String>()
            )));
        }
        let result = self.inner.arm.delete_token(credential_id).await;
        match &result {
            Ok(()) => {
                tracing::info!(registry = %self.inner.name, token = credential_id, "acr token deleted")
            }
            Err(e) => {
                tracing::warn!(registry = %self.inner.name, token = credential_id, error = %e, "acr token not deleted")
            }
        }
        result
    }
}

async fn resolve_client_secret(
    name: &str,
    config: &AcrConfig,
    secrets: &SecretResolver,
) -> Result<Secret, ProviderError> {
    let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
    let env = format!("{}CLIENT_SECRET", account::env_prefix(name));
    let Some(source) = &config.client_secret else {
        return Err(bad(format!(
            "client_secret is missing: set client_secret, client_secret_file or {env} to the app registration's client secret"
        )));
    };
    account::resolve_nonblank(
        secrets,
        "client_secret",
        source,
        &format!(" (set it or {env})"),
    )
    .await
    .map_err(bad)
}

/// `host[:port]`, lowercase, without scheme or path.
fn validate_login_server(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('/').to_ascii_lowercase();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && !s.starts_with(['.', '-', ':']);
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "login_server {:?} must be the registry's host name, e.g. myregistry.azurecr.io (no scheme or path)",
            raw.chars().take(80).collect::<String>()
        ))
    }
}

fn valid_resource_group(rg: &str) -> bool {
    (1..=90).contains(&rg.len())
        && !rg.ends_with('.')
        && rg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'(' | b')'))
}

/// An `https://` (or, with `insecure_http`, `http://`) URL without credentials, query or
/// fragment; a path is kept (a proxy prefix: Entra's and ARM's paths go below it).
fn parse_service_url(key: &str, raw: &str, insecure_http: bool) -> Result<Url, String> {
    let url = upstream::endpoint_url(key, raw, insecure_http, None)?;
    Ok(url)
}

/// The Resource Manager hosts of Azure's clouds (public, Government, China).
const KNOWN_ARM_HOSTS: [&str; 3] = [
    "management.azure.com",
    "management.usgovcloudapi.net",
    "management.chinacloudapi.cn",
];

/// Whether the derived scope may name a proxy rather than ARM (an upgrade trap): no `arm_scope`
/// is set and `management_url` is not one of Azure's Resource Manager hosts.
fn scope_may_name_a_proxy(configured: Option<&str>, management: &Url) -> bool {
    configured.is_none()
        && !management
            .host_str()
            .is_some_and(|h| KNOWN_ARM_HOSTS.contains(&h))
}

/// The scope to ask Entra ID for: the configured one, or ARM's audience (its origin) +
/// `/.default`. Visible ASCII only: it goes into a form body.
fn arm_scope(configured: Option<&str>, management: &Url) -> Result<String, String> {
    let scope = match configured.map(str::trim) {
        Some(s) => s.to_owned(),
        None => format!("{}/.default", management.origin().ascii_serialization()),
    };
    if scope.is_empty() || scope.len() > 512 || !scope.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "arm_scope must be ARM's audience followed by /.default, e.g. https://management.usgovcloudapi.net/.default"
                .into(),
        );
    }
    Ok(scope)
}

/// `rise-<slug>-<hash8>-<pull|push>`: at most 50 characters of `[a-z0-9-]`; the hash keeps
/// repositories whose slugs collide (`a/b`, `a-b`) apart.
fn scope_map_name(repository: &str, access: Access) -> String {
    const SLUG_MAX: usize = 30;
    let hash = Sha256::digest(repository.as_bytes());
    let hash8: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    let slug = slug(repository, SLUG_MAX);
    format!("{NAME_PREFIX}{slug}-{hash8}-{}", access.as_str())
}

/// `rise-<expiry secs>-<request slug>-<random>`: at most 50 characters of `[a-z0-9-]`.
fn token_name(request_id: &str, expiry_secs: u64, random: &str) -> String {
    let fixed = NAME_PREFIX.len() + 20 + 1 + 1 + random.len();
    let room = MAX_NAME_LEN.saturating_sub(fixed).clamp(1, 16);
    // Only alphanumerics: `-` separates the name's fields.
    let tag: String = request_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(room)
        .collect();
    let tag = if tag.is_empty() {
        "req".to_owned()
    } else {
        tag
    };
    format!("{NAME_PREFIX}{expiry_secs}-{tag}-{random}")
}

/// The expiry (Unix seconds) embedded in a token name of Rise's shape; `None` for any other
/// name (a token Rise did not create).
fn token_expiry(name: &str) -> Option<u64> {
    if !(5..=MAX_NAME_LEN).contains(&name.len())
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return None;
    }
    let mut parts = name.strip_prefix(NAME_PREFIX)?.split('-');
    let secs = parts.next()?;
    let tag = parts.next()?;
    let random = parts.next()?;
    let shaped = parts.next().is_none()
        && (9..=11).contains(&secs.len())
        && secs.bytes().all(|b| b.is_ascii_digit())
        && !tag.is_empty()
        && random.len() == 8;
    shaped.then(|| secs.parse().ok()).flatten()
}

/// Lowercase alphanumerics of `s`, other runs as one `-`, trimmed, at most `max` long.
fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.truncate(max);
    out.trim_matches('-').to_owned()
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub(super) fn rfc3339(t: SystemTime) -> String {
    crate::audit::rfc3339_seconds(t)
}

/// RFC 3339 date-time (`Z` or `±HH:MM`), as ARM writes them (e.g. `2020-12-31T15:59:59.0707808Z`),
/// to whole seconds (the fraction is dropped); `None` before 1970.
pub(super) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    u64::try_from(t.unix_timestamp())
        .ok()
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RepositoryName;

    const BASE: &str = r#"login_server = "myregistry.azurecr.io"
subscription_id = "00000000-0000-0000-0000-000000000001"
resource_group = "my-rg"
registry_name = "myregistry"
tenant_id = "contoso.onmicrosoft.com"
client_id = "22222222-2222-2222-2222-222222222222"
"#;

    fn config(toml_text: &str) -> AcrConfig {
        toml::from_str(toml_text).expect("valid test config")
    }

    async fn provider(toml_text: &str) -> Result<AcrProvider, String> {
        AcrProvider::from_config("default", &config(toml_text))
            .await
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn valid_configuration() {
        let p = provider(&format!("{BASE}client_secret = \"s3cret-value\"\n"))
            .await
            .expect("valid");
        assert_eq!(p.registry_url(), "myregistry.azurecr.io");
        assert_eq!(p.max_ttl(), Duration::from_secs(12 * 3600));
        assert_eq!(p.kind(), "acr");
        let repo = RepositoryName::parse("team/my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "team/my-app");
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(
            !format!(
                "{:?}",
                config(&format!("{BASE}client_secret = \"s3cret-value\"\n"))
            )
            .contains("s3cret-value")
        );
    }

    #[tokio::test]
    async fn invalid_configurations_say_what_to_fix() {
        let with_secret = |extra: &str| format!("{BASE}client_secret = \"s\"\n{extra}");
        for (text, part) in [
            (BASE.to_owned(), "RISE_REGISTRY__CLIENT_SECRET"),
            (
                format!("{BASE}client_secret = \" \"\n"),
                "client_secret is empty",
            ),
            (
                with_secret("management_url = \"http://127.0.0.1:1\"\n"),
                "clear text",
            ),
            (
                with_secret("authority_url = \"https://u:p@login\"\n"),
                "credentials",
            ),
            (with_secret("max_ttl = \"0s\"\n"), "max_ttl"),
            (with_secret("cleanup_batch = 0\n"), "cleanup_batch"),
            (with_secret("api_version = \"2023/07\"\n"), "api_version"),
        ] {
            let e = provider(&text).await.expect_err(&text);
            assert!(e.contains(part), "{text:?}: {e}");
            assert!(
                e.starts_with("provider misconfigured: registry default:"),
                "{e}"
            );
        }
        for (key, value, part) in [
            (
                "login_server",
                "https://myregistry.azurecr.io/v2",
                "login_server",
            ),
            ("subscription_id", "not-a-guid", "subscription_id"),
            ("resource_group", "rg/other", "resource_group"),
            ("registry_name", "my-registry", "registry_name"),
            ("tenant_id", "a/b", "tenant_id"),
            ("client_id", "", "client_id"),
        ] {
            let text = with_secret("").replace(
                &BASE
                    .lines()
                    .find(|l| l.starts_with(key))
                    .expect("key in BASE")
                    .to_string(),
                &format!("{key} = {value:?}"),
            );
            let e = provider(&text).await.expect_err(key);
            assert!(e.contains(part), "{key}: {e}");
        }
        let e = AcrProvider::from_config("eu", &config(BASE))
            .await
            .expect_err("named registry")
            .to_string();
        assert!(e.contains("RISE_REGISTRIES__EU__CLIENT_SECRET"), "{e}");
    }

    #[test]
    fn scope_map_names_follow_acr_rules() {
        for repo in [
            "my-app",
            "team/my-app",
            "a",
            "very/deeply/nested/repository/with/a/really/long/name/indeed",
        ] {
            for access in [Access::Pull, Access::Push] {
                let n = scope_map_name(repo, access);
                assert!((5..=50).contains(&n.len()), "{n}");
                assert!(
                    n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{n}"
                );
                assert!(
                    n.starts_with("rise-") && n.ends_with(access.as_str()),
                    "{n}"
                );
                // Never mistaken for a token Rise may delete.
                assert_eq!(token_expiry(&n), None, "{n}");
            }
        }
        assert_ne!(
            scope_map_name("a/b", Access::Pull),
            scope_map_name("a-b", Access::Pull),
            "slugs collide, hashes do not"
        );
        assert_ne!(
            scope_map_name("x", Access::Pull),
            scope_map_name("x", Access::Push)
        );
        assert_eq!(
            Access::Push.scope_actions("team/app"),
            vec![
                "repositories/team/app/content/read",
                "repositories/team/app/content/write",
                "repositories/team/app/metadata/read",
            ]
        );
        assert_eq!(
            Access::Pull.scope_actions("app"),
            vec![
                "repositories/app/content/read",
                "repositories/app/metadata/read"
            ]
        );
    }

    #[test]
    fn token_names_follow_acr_rules_and_carry_their_expiry() {
        for request_id in [
            "req-1",
            "",
            "0192A3B4-C5D6-7E8F-9012-3456789ABCDE",
            "////",
            &"x".repeat(300),
        ] {
            let n = token_name(request_id, 1_900_000_000, "0a1b2c3d");
            assert!((5..=50).contains(&n.len()), "{n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n}"
            );
            assert_eq!(token_expiry(&n), Some(1_900_000_000), "{n}");
        }
        assert_eq!(
            token_name("req-1", 1_900_000_000, "0a1b2c3d"),
            "rise-1900000000-req1-0a1b2c3d"
        );
        for foreign in [
            "myToken",
            "rise-admin",
            "rise-1900000000-x",
            "rise-19000-x-0a1b2c3d",
            "rise-1900000000-x-0a1b2c3d-extra",
            "RISE-1900000000-x-0a1b2c3d",
            "rise-1900000000--0a1b2c3d",
            "../tokens",
        ] {
            assert_eq!(token_expiry(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_609_430_399);
        assert_eq!(rfc3339(t), "2020-12-31T15:59:59Z");
        assert_eq!(parse_rfc3339("2020-12-31T15:59:59.0707808Z"), Some(t));
        assert_eq!(parse_rfc3339("2020-12-31T16:59:59+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2020-12-31T15:59:59Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z")
                .map(rfc3339)
                .as_deref(),
            Some("2024-02-29T00:00:00Z")
        );
        for bad in [
            "",
            "2020-12-31",
            "2020-13-01T00:00:00Z",
            "2020-12-31T15:59:59",
            "2020-12-31T15:59:59.Z",
            "yesterday",
            "1969-12-31T23:59:59Z",
            "2023-02-29T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        let now = SystemTime::now();
        let back = parse_rfc3339(&rfc3339(now)).expect("parses");
        assert!(now.duration_since(back).expect("not later") < Duration::from_secs(1));
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Team/My_App", 30), "team-my-app");
        assert_eq!(slug("--a--", 30), "a");
        assert_eq!(slug("abcdef", 3), "abc");
        assert_eq!(slug("ab/cd", 3), "ab");
    }
}

/// The configuration through the real loader: files, `_file` secrets, environment variables.
#[cfg(test)]
mod config_tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::Config;
    use crate::config::test_support::load;
    use crate::registry::providers::ProviderConfig;
    use crate::registry::providers::test_support::{assert_typo_named, secret_file};

    fn acr(c: &Config) -> &AcrConfig {
        match &c.registry {
            Some(ProviderConfig::Acr(a)) => a,
            other => panic!("expected an acr registry, got {other:?}"),
        }
    }

    const TABLE: &str = r#"
[registry]
type = "acr"
login_server = "myregistry.azurecr.io"
subscription_id = "00000000-0000-0000-0000-000000000001"
resource_group = "my-rg"
registry_name = "myregistry"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "22222222-2222-2222-2222-222222222222"
"#;

    #[tokio::test]
    async fn client_secret_from_a_file_and_settings_from_the_environment() {
        let (_secret, line) = secret_file("client_secret", "secret-from-file\n");
        let text = format!("{TABLE}{line}");
        let c = load(
            &text,
            &[
                ("RISE_REGISTRY__MAX_TTL", "2h"),
                ("RISE_REGISTRY__CLEANUP_BATCH", "5"),
            ],
        )
        .expect("loads");
        assert_eq!(c.registry.as_ref().map(ProviderConfig::kind), Some("acr"));
        let a = acr(&c);
        match &a.client_secret {
            Some(SecretSource::Value(v)) => assert_eq!(v.expose_secret(), "secret-from-file"),
            other => panic!("expected a value, got {other:?}"),
        }
        assert_eq!(a.max_ttl, Duration::from_secs(7200));
        assert_eq!(a.cleanup_batch, 5);
        assert_eq!(a.management_url, "https://management.azure.com");
        assert_eq!(a.authority_url, "https://login.microsoftonline.com");
        assert_eq!(a.api_version, "2023-07-01");
        let p = AcrProvider::from_config("default", a).await.expect("valid");
        assert_eq!(p.max_ttl(), Duration::from_secs(7200));
    }

    #[test]
    fn the_arm_scope_follows_the_cloud() {
        let url = |u: &str| Url::parse(u).expect("url");
        for (management, configured, want) in [
            (
                "https://management.azure.com",
                None,
                "https://management.azure.com/.default",
            ),
            (
                "https://management.usgovcloudapi.net/",
                None,
                "https://management.usgovcloudapi.net/.default",
            ),
            (
                "https://management.chinacloudapi.cn",
                None,
                "https://management.chinacloudapi.cn/.default",
            ),
            (
                "https://proxy.example/arm/",
                Some(" https://management.azure.com/.default "),
                "https://management.azure.com/.default",
            ),
        ] {
            assert_eq!(
                arm_scope(configured, &url(management)).expect(management),
                want
            );
            // Azure's own hosts, or a scope set beside a proxy: nothing to warn of.
            assert!(!scope_may_name_a_proxy(configured, &url(management)));
        }
        // A proxy without arm_scope: Entra ID would be asked for the proxy's audience.
        assert!(scope_may_name_a_proxy(
            None,
            &url("https://proxy.example/arm/")
        ));
        assert!(scope_may_name_a_proxy(
            None,
            &url("https://management.azure.com.evil.example")
        ));
        for bad in ["", "https://a b/.default", "https://é/.default"] {
            let err = arm_scope(Some(bad), &url("https://management.azure.com")).expect_err(bad);
            assert!(err.contains("arm_scope"), "{err}");
        }
    }

    #[tokio::test]
    async fn client_secret_from_the_environment_or_a_clear_error() {
        let c = load(TABLE, &[("RISE_REGISTRY__CLIENT_SECRET", "from-env")]).expect("loads");
        AcrProvider::from_config("default", acr(&c))
            .await
            .expect("valid with the environment's secret");
        let c = load(TABLE, &[]).expect("loads without a secret");
        let e = AcrProvider::from_config("default", acr(&c))
            .await
            .expect_err("no secret")
            .to_string();
        assert!(
            e.contains("client_secret is missing") && e.contains("RISE_REGISTRY__CLIENT_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn typo_names_the_key_and_not_the_value() {
        assert_typo_named(TABLE, "client_secrett", "hunter2");
    }
}
