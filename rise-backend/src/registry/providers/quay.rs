//! Quay (`type = "quay"`, quay.io and Red Hat Quay): one robot account of the organization per
//! request, with a `read` (pull) or `write` (push) permission on exactly one repository, deleted
//! by Rise when the request's lifetime ends.
//!
//! Tested against a fake Quay built from Quay's public API reference (Red Hat Quay "API
//! reference": `createOrgRobot`, `deleteOrgRobot`, `getOrgRobots`, `changeUserPermissions`,
//! "Authorization" scopes) and its source (`endpoints/api/robot.py`,
//! `endpoints/api/permission.py`, `endpoints/exception.py`, `util/validation.py` in
//! `quay/quay`); see `quay/api.rs` and `tests/it/support/fake_quay.rs`. Never tested against a
//! real Quay.
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "quay"
//! url = "https://quay.io"              # the default; Red Hat Quay: its own URL
//! organization = "acme"                # the Quay organization holding the repositories
//! token = "..."                        # or token_file, RISE_REGISTRY__TOKEN, or an
//!                                      # aws-secretsmanager: reference: Rise's OAuth token
//! # registry_host = "quay.io"          # what clients log in to; default the url's host
//! # robot_prefix = "rise_"             # names of Rise's robots: <prefix><expiry>_<nonce>
//! # max_ttl = "12h"                    # longest lifetime handed out
//! # reap_interval = "1m"               # how often expired robots are deleted
//! # request_timeout = "10s" ; connect_timeout = "5s"
//! # secret_refresh_interval = "5m"     # re-read of aws-secretsmanager: references
//! # insecure_http = true               # allow an http:// url; tests only
//! ```
//!
//! # What callers get
//!
//! Each request creates a robot `<organization>+<robot_prefix><expiry>_<nonce>` with
//! `PUT /api/v1/organization/{org}/robots/{shortname}` (its description says until when, for
//! whom and for which request; its `unstructured_metadata` carries the same as fields), then
//! gives it `read` (pull) or `write` (push and pull) on `<organization>/<repository>` with
//! `PUT /api/v1/repository/{org}/{repository}/permissions/user/{robot}`. The caller logs in to
//! `registry_host` with the robot's name and token. If the permission call fails the robot is
//! deleted and the request fails: no robot is left without its Rise expiry being tracked, and
//! none is handed out with a reach other than the one asked for.
//!
//! The repository must exist in Quay: Rise never creates repositories (a robot with `write` on
//! one repository cannot create others either). A 404 from the permission call (the status the
//! API reference lists for "not found") is reported as a misconfiguration naming the
//! repository. Not verified against a real Quay: its source looks the repository up only after
//! the permission check, so a real Quay may answer a missing repository with another status,
//! which Rise reports as an upstream error; either way the robot is deleted and nothing is
//! handed out.
//!
//! # What is scoped
//!
//! A new robot belongs to no team and has no permission but the one Rise gives it, so it reaches
//! exactly one repository with the granted role: `repository_scoped: true`. `write` in Quay
//! also lets the robot delete and retag tags of that repository, as any pusher can. Like every
//! Quay account the robot can also pull the organization's *public* repositories, which anyone
//! can. Organization "default permissions" apply to repositories when they are created, not to
//! robots; do not create one for "everyone" if this matters.
//!
//! # Lifetime, revocation, cleanup
//!
//! Quay robots do not expire (the API reference documents no expiry for robot accounts; robot
//! federation's short-lived tokens need an OIDC federation Rise does not use), so Rise deletes
//! its own robots:
//! - the robot's short name carries its Rise expiry in Unix seconds
//!   (`rise_1764331200_3f2a9c1b07de`), and its description starts with `Rise robot until`;
//! - a reaper, started when the provider is built inside a Tokio runtime (the server), lists the
//!   organization's robots every `reap_interval` (`GET .../robots?token=false`, so no robot
//!   token crosses the wire) and deletes those whose expiry has passed; the first successful
//!   request after start sweeps at once too (robots an earlier run left). A sweep deletes at
//!   most 500 robots and stops at the first timeout or refused token; failures are logged
//!   (without secrets) and retried on the next sweep. It touches only robots of the configured
//!   organization whose short name is exactly `<robot_prefix><digits>_<12 hex digits>` and
//!   whose description is Rise's.
//!
//! So a credential is refused from its `expires_at` plus at most `reap_interval` (plus the
//! delete's own latency) while Rise runs and reaches Quay; while Rise is down, nothing deletes
//! it. Quay itself never refuses the robot at `expires_at`, so Rise reports
//! `expiry_enforced: false`. `revocable: true`: [`RegistryProvider::revoke`] deletes the robot
//! by its full name (the `credential_id`, `<organization>+<shortname>`), and refuses any name
//! not of the form of Rise's robots of the organization
//! (`<organization>+<robot_prefix><digits>_<12 hex digits>`). Robots are not refreshable: clients ask
//! Rise again. A registry bearer token Quay issued to a client (`/v2/auth`, valid one hour in
//! Quay's source, `endpoints/v2/v2auth.py`) before the deletion may stay valid until it expires,
//! as with any Quay account; this was not verified against a real Quay.
//!
//! # Least-privilege setup for Rise's own token
//!
//! Rise authenticates with an OAuth 2 access token (`Authorization: Bearer`) generated for an
//! OAuth application of the organization (Organization → Applications → Generate Token), with
//! the scopes `org:admin` (create, list and delete robots) and `repo:admin` (set a robot's
//! permission on a repository), and no others (`repo:create`, `user:admin` and `super:user` are
//! not needed). The token acts as the user who generated it, who must be an administrator of the
//! organization. Prefer a dedicated user that administers only this organization; keep the
//! token in a secret store (`token_file` or `aws-secretsmanager:`) and rotate it. Rise never
//! hands out its own token.
//!
//! # Failures
//!
//! Every upstream call is bounded by `connect_timeout` and `request_timeout`. Timeouts are
//! [`ProviderError::Timeout`] (504); 401/403 from Quay are [`ProviderError::Misconfigured`]
//! (502) naming the scopes likely missing, as is a missing repository; other statuses and
//! malformed replies are [`ProviderError::Upstream`] (502). Upstream bodies are summarised with
//! secrets redacted and only ever logged. Rise's token and the robots' tokens are
//! [`SecretString`](secrecy::SecretString)s: they appear in no log, error or `Debug` output.

mod api;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::Url;
use serde::Deserialize;

use self::api::{CreateRobot, Deleted, GrantError, QuayClient};
use crate::config::lenient;
use crate::registry::providers::account;
use crate::registry::providers::robots;
use crate::registry::providers::sweeper::{self, Reaper, Schedule, Sweep, SweepReport};
use crate::registry::providers::upstream;
use crate::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
    RepositoryName,
};
use crate::secrets::{Secret, SecretSource};

/// The `[registry]` table with `type = "quay"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuayConfig {
    /// Quay's URL (API and registry), e.g. `https://quay.io`.
    #[serde(default = "defaults::url")]
    pub url: String,
    /// Host (and port) clients log in to; default the host of `url`.
    #[serde(default)]
    pub registry_host: Option<String>,
    /// The Quay organization that holds the repositories and Rise's robots.
    pub organization: String,
    /// Rise's OAuth access token: a value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub token: Option<SecretSource>,
    #[serde(
        default = "defaults::secret_refresh_interval",
        with = "humantime_serde"
    )]
    pub secret_refresh_interval: Duration,
    #[serde(default = "defaults::robot_prefix")]
    pub robot_prefix: String,
    #[serde(default = "defaults::max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(default = "defaults::reap_interval", with = "humantime_serde")]
    pub reap_interval: Duration,
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Allow an `http://` URL: the OAuth token then crosses the network in clear text.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, max_ttl, request_timeout, secret_refresh_interval,
    };
    use std::time::Duration;

    pub fn url() -> String {
        "https://quay.io".into()
    }
    pub fn robot_prefix() -> String {
        "rise_".into()
    }
    pub fn reap_interval() -> Duration {
        Duration::from_secs(60)
    }
}

/// `createOrgRobot`'s schema: `description` has `maxLength: 255`.
const MAX_DESCRIPTION_LEN: usize = 255;
/// Quay's user names (robots included: `org+shortname`) are 2 to 255 characters.
const MAX_USERNAME_LEN: usize = 255;
const MAX_PREFIX_LEN: usize = 32;
/// Bound of one sweep.
const MAX_DELETES_PER_SWEEP: usize = 500;

/// The Quay provider. Its `Debug` shows no secret. Dropping it stops its reaper.
#[derive(Debug)]
pub struct QuayProvider {
    shared: Arc<Shared>,
    /// Held for its `Drop`, which stops the reaper task.
    _reaper: Reaper,
}

#[derive(Debug)]
struct Shared {
    /// The registry's configured name, for log lines and errors.
    name: String,
    registry_host: String,
    organization: String,
    robot_prefix: String,
    token: Secret,
    client: QuayClient,
    max_ttl: Duration,
    /// When expired robots are deleted.
    schedule: Schedule,
}

impl QuayProvider {
    /// Validate `config` and build the provider; `aws-secretsmanager:` references are read now.
    /// Inside a Tokio runtime the reaper starts too (its first sweep after `reap_interval`).
    pub async fn from_config(name: &str, config: &QuayConfig) -> anyhow::Result<Self> {
        Ok(Self::build(name, config).await?)
    }

    async fn build(name: &str, config: &QuayConfig) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let base_url = parse_url(&config.url, config.insecure_http).map_err(bad)?;
        let registry_host = match &config.registry_host {
            Some(host) => validate_registry_host(host).map_err(bad)?,
            None => upstream::host_and_port("url", &base_url).map_err(bad)?,
        };
        let organization = config.organization.trim();
        if !valid_quay_name(organization) || organization.len() > 200 {
            return Err(bad(format!(
                "organization {:?} must be a Quay organization name: 2-200 lowercase letters and digits separated by single '.', '_' or '-'",
                organization.chars().take(80).collect::<String>()
            )));
        }
        validate_robot_prefix(&config.robot_prefix).map_err(bad)?;
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("reap_interval", config.reap_interval),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
        ])
        .map_err(bad)?;
        let token = account::secret(
            name,
            "token",
            config.token.as_ref(),
            config.secret_refresh_interval,
            " (an OAuth access token of the organization with the org:admin and repo:admin scopes)",
        )
        .await
        .map_err(bad)?;
        let client = QuayClient::new(&base_url, config.connect_timeout, config.request_timeout)
            .map_err(|e| bad(e.to_string()))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            registry_host,
            organization: organization.to_owned(),
            robot_prefix: config.robot_prefix.clone(),
            token,
            client,
            max_ttl: config.max_ttl,
            schedule: Schedule::new(config.reap_interval),
        });
        let reaper = Reaper::start(&shared);
        tracing::info!(
            registry = %name,
            organization = %organization,
            "quay registry creates one robot per request with one repository's permission, deleted by Rise's reaper when it expires"
        );
        Ok(Self {
            shared,
            _reaper: reaper,
        })
    }

    /// Delete every expired Rise robot now (what the reaper does every `reap_interval`).
    /// Waits for a sweep already running to finish first.
    pub async fn sweep_expired(&self) -> SweepReport {
        sweeper::sweep_now(&*self.shared).await
    }
}

impl Sweep for Shared {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    async fn sweep(&self) -> SweepReport {
        let token = self.token.current().await;
        let now = robots::unix_seconds(SystemTime::now());
        let mut report = SweepReport::default();
        let robots = match self.client.list_robots(&token, &self.organization).await {
            Ok(robots) => robots,
            Err(e) => {
                tracing::warn!(registry = %self.name, error = %e, "quay reaper: listing robots failed; retrying next sweep");
                return report;
            }
        };
        let mut expired = Vec::new();
        for robot in robots {
            let ours = robots::is_rise_description(robot.description.as_deref());
            match self.rise_robot(&robot.name).filter(|_| ours) {
                Some((shortname, expiry)) if expiry <= now => expired.push(shortname),
                Some(_) => report.kept += 1,
                None => {}
            }
        }
        for shortname in expired.into_iter().take(MAX_DELETES_PER_SWEEP) {
            match self
                .client
                .delete_robot(&token, &self.organization, &shortname)
                .await
            {
                Ok(_) => {
                    report.deleted += 1;
                    tracing::info!(registry = %self.name, robot = %self.full_name(&shortname), "quay reaper: deleted an expired Rise robot");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(registry = %self.name, robot = %self.full_name(&shortname), error = %e, "quay reaper: deleting an expired robot failed; retrying next sweep");
                    if matches!(
                        e,
                        ProviderError::Timeout { .. } | ProviderError::Misconfigured(_)
                    ) {
                        break;
                    }
                }
            }
        }
        if report.deleted + report.failed > 0 {
            tracing::info!(registry = %self.name, deleted = report.deleted, failed = report.failed, kept = report.kept, "quay reaper: sweep done");
        }
        report
    }
}

impl Shared {
    fn full_name(&self, shortname: &str) -> String {
        format!("{}+{shortname}", self.organization)
    }

    /// The short name and Rise expiry of a full robot name (`org+shortname`) when it is one of
    /// Rise's robots of this organization; `None` for any other name.
    fn rise_robot(&self, full_name: &str) -> Option<(String, u64)> {
        let (org, shortname) = full_name.split_once('+')?;
        if org != self.organization {
            return None;
        }
        let expiry = parse_robot_name(&self.robot_prefix, shortname)?;
        Some((shortname.to_owned(), expiry))
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let repository = request.repository.as_str();
        let path = format!("{}/{repository}", self.organization);
        let (expiry, expires_at) = robots::expiry(request.ttl, self.max_ttl);
        let push = request.actions.contains(Action::Push);
        let (role, granted_actions) = if push {
            ("write", Actions::PUSH_PULL)
        } else {
            ("read", Actions::PULL)
        };
        let shortname = robot_name(&self.robot_prefix, expiry, &robots::nonce());
        let full_name = self.full_name(&shortname);
        if full_name.len() > MAX_USERNAME_LEN {
            return Err(ProviderError::Misconfigured(format!(
                "registry {}: robot names in organization {} would exceed Quay's {MAX_USERNAME_LEN} characters; shorten robot_prefix",
                self.name, self.organization
            )));
        }
        let description =
            robots::description(expires_at, request, granted_actions, MAX_DESCRIPTION_LEN);
        let metadata = serde_json::json!({
            "rise_expires_at": expiry,
            "rise_registry": request.registry,
            "rise_project": request.project.as_str(),
            "rise_repository": path,
            "rise_subject": request.principal.subject,
            "rise_issuer": request.principal.issuer,
            "rise_request_id": request.request_id,
        });
        let token = self.token.current().await;
        let body = CreateRobot {
            description: &description,
            unstructured_metadata: metadata,
        };
        let created = self
            .client
            .create_robot(&token, &self.organization, &shortname, &body)
            .await?;
        let refused = if created.name != full_name {
            Some(ProviderError::Upstream {
                operation: api::CREATE_OPERATION,
                detail: format!(
                    "Quay named the robot {:?}, not {full_name:?}",
                    created.name.chars().take(100).collect::<String>()
                ),
            })
        } else {
            match self
                .client
                .grant(&token, &self.organization, repository, &full_name, role)
                .await
            {
                Ok(()) => None,
                Err(GrantError::NotFound(summary)) => Some(ProviderError::Misconfigured(format!(
                    "registry {}: Quay has no repository {path} (HTTP 404: {summary}); create it in Quay, Rise does not create repositories",
                    self.name
                ))),
                Err(GrantError::Other(e)) => Some(e),
            }
        };
        if let Some(error) = refused {
            // Take the robot back: it must not outlive a failed request.
            match self
                .client
                .delete_robot(&token, &self.organization, &shortname)
                .await
            {
                Ok(_) => {
                    tracing::info!(registry = %self.name, request_id = %request.request_id, robot = %full_name, "quay robot deleted after a failed request")
                }
                Err(e) => {
                    tracing::warn!(registry = %self.name, request_id = %request.request_id, robot = %full_name, error = %e, "quay robot of a failed request not deleted; the reaper retries when it expires")
                }
            }
            return Err(error);
        }
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: full_name.clone(),
            password: created.token,
            expires_at,
            repository: path,
            granted_actions,
            repository_scoped: true,
            revocable: true,
            expiry_enforced: false,
            credential_id: Some(full_name),
        })
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        let Some((shortname, _)) = self.rise_robot(credential_id) else {
            return Err(ProviderError::Unsupported(format!(
                "{:?} is not a robot Rise created in Quay organization {} (expected {}+{}<expiry>_<nonce>); Rise deletes only its own robots",
                credential_id.chars().take(80).collect::<String>(),
                self.organization,
                self.organization,
                self.robot_prefix
            )));
        };
        let token = self.token.current().await;
        match self
            .client
            .delete_robot(&token, &self.organization, &shortname)
            .await?
        {
            Deleted::Now => {
                tracing::info!(registry = %self.name, robot = %credential_id, "quay robot deleted")
            }
            Deleted::AlreadyGone => {
                tracing::info!(registry = %self.name, robot = %credential_id, "quay robot already gone")
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RegistryProvider for QuayProvider {
    fn kind(&self) -> &'static str {
        "quay"
    }

    fn registry_url(&self) -> String {
        self.shared.registry_host.clone()
    }

    fn repository_path(&self, repository: &RepositoryName) -> String {
        format!("{}/{}", self.shared.organization, repository.as_str())
    }

    fn max_ttl(&self) -> Duration {
        self.shared.max_ttl
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let result = self.shared.issue(request).await;
        if result.is_ok() {
            sweeper::sweep_soon(&self.shared);
        }
        super::warn_if_not_issued(self.kind(), &self.shared.name, request, &result);
        result
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        let result = self.shared.revoke(credential_id).await;
        if let Err(e) = &result {
            tracing::warn!(registry = %self.shared.name, error = %e, "quay robot not deleted");
        }
        result
    }
}

/// Quay's URL: https (unless `insecure_http`), a host, no credentials, no query, no path (Quay
/// serves its API and the registry at the root of its host).
fn parse_url(raw: &str, insecure_http: bool) -> Result<Url, String> {
    let mut url = upstream::endpoint_url("url", raw, insecure_http, Some("https://quay.io"))?;
    if !url.path().trim_end_matches('/').is_empty() {
        return Err("url must be Quay's root URL, without a path".into());
    }
    url.set_path("/");
    Ok(url)
}

/// `host` or `host:port`, nothing else.
fn validate_registry_host(raw: &str) -> Result<String, String> {
    let host = raw.trim();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        && Url::parse(&format!("https://{host}/"))
            .is_ok_and(|u| u.host_str().is_some() && u.path() == "/");
    if ok {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(format!(
            "registry_host {:?} must be a host or host:port, without a scheme or path",
            host.chars().take(80).collect::<String>()
        ))
    }
}

/// Quay's user and organization name rule (`util/validation.py`): `^[a-z0-9]+(?:[._-][a-z0-9]+)*$`,
/// 2 to 255 characters.
fn valid_quay_name(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=MAX_USERNAME_LEN).contains(&b.len())
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
        && !b
            .windows(2)
            .any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric())
}

/// Lowercase letters and digits separated by single underscores, ending with one, so that
/// `<prefix><digits>_<hex>` is a valid Quay robot short name.
fn validate_robot_prefix(prefix: &str) -> Result<(), String> {
    let ok = prefix.len() <= MAX_PREFIX_LEN
        && prefix.ends_with('_')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && valid_quay_name(&format!("{prefix}0"));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "robot_prefix {:?} must be at most {MAX_PREFIX_LEN} lowercase letters and digits separated by single '_', ending with '_' (e.g. \"rise_\")",
            prefix.chars().take(60).collect::<String>()
        ))
    }
}

/// `<prefix><expiry in Unix seconds>_<nonce>`.
fn robot_name(prefix: &str, expiry_unix: u64, nonce: &str) -> String {
    format!("{prefix}{expiry_unix}_{nonce}")
}

/// The expiry of a robot short name when it is exactly `<prefix><digits>_<robots::NONCE_LEN hex>`.
fn parse_robot_name(prefix: &str, shortname: &str) -> Option<u64> {
    robots::parse_expiry(shortname.strip_prefix(prefix)?, '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> QuayConfig {
        toml::from_str(toml_text).expect("valid test config")
    }

    async fn provider(toml_text: &str) -> Result<QuayProvider, String> {
        QuayProvider::build("default", &config(toml_text))
            .await
            .map_err(|e| e.to_string())
    }

    const BASE: &str = "organization = \"acme\"\ntoken = \"oauth-token-hunter2\"\n";

    #[tokio::test]
    async fn defaults_registry_host_and_repository_path() {
        let p = provider(BASE).await.expect("valid");
        assert_eq!(p.registry_url(), "quay.io");
        assert_eq!(p.max_ttl(), Duration::from_secs(12 * 3600));
        assert!(
            p._reaper.is_running(),
            "built inside a runtime: the reaper runs"
        );
        let repo = RepositoryName::parse("team/my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "acme/team/my-app");
        let p = provider(&format!(
            "{BASE}url = \"http://127.0.0.1:8080/\"\ninsecure_http = true\n"
        ))
        .await
        .expect("valid");
        assert_eq!(p.registry_url(), "127.0.0.1:8080");
        let p = provider(&format!(
            "{BASE}url = \"https://quay.example.com\"\nregistry_host = \"Registry.Example.com:5000\"\n"
        ))
        .await
        .expect("valid");
        assert_eq!(p.registry_url(), "registry.example.com:5000");
    }

    #[tokio::test]
    async fn invalid_configurations_say_what_is_wrong() {
        for (extra, part) in [
            ("max_ttl = \"0s\"\n", "max_ttl must be greater than zero"),
            ("reap_interval = \"0s\"\n", "reap_interval"),
            ("request_timeout = \"0s\"\n", "request_timeout"),
            ("robot_prefix = \"Rise_\"\n", "robot_prefix"),
            ("robot_prefix = \"rise\"\n", "robot_prefix"),
            ("robot_prefix = \"rise-\"\n", "robot_prefix"),
            ("robot_prefix = \"_rise_\"\n", "robot_prefix"),
            ("robot_prefix = \"rise__\"\n", "robot_prefix"),
            ("url = \"http://h\"\n", "clear text"),
            ("url = \"https://u:p@h\"\n", "credentials"),
            ("url = \"ftp://h\"\n", "scheme"),
            ("url = \"quay.io\"\n", "not a URL"),
            ("url = \"https://h/quay\"\n", "without a path"),
            ("url = \"https://h/?x=1\"\n", "query"),
            ("registry_host = \"https://quay.io\"\n", "registry_host"),
            ("registry_host = \"quay.io/x\"\n", "registry_host"),
        ] {
            let e = provider(&format!("{BASE}{extra}")).await.expect_err(extra);
            assert!(e.contains(part), "{extra:?}: {e}");
            assert!(e.contains("registry default"), "{e}");
        }
        for org in ["Acme", "a", "a/b", "a__b", "-acme", ""] {
            let e = provider(&BASE.replace("\"acme\"", &format!("{org:?}")))
                .await
                .expect_err(org);
            assert!(e.contains("organization"), "{org}: {e}");
        }
    }

    #[tokio::test]
    async fn missing_or_empty_token_names_the_variables() {
        let no_token = "organization = \"acme\"\n";
        let e = provider(no_token).await.expect_err("no token");
        assert!(e.contains("token is not set"), "{e}");
        assert!(e.contains("RISE_REGISTRY__TOKEN"), "{e}");
        let e = QuayProvider::build("eu", &config(no_token))
            .await
            .expect_err("no token")
            .to_string();
        assert!(e.contains("RISE_REGISTRIES__EU__TOKEN"), "{e}");
        let e = provider(&BASE.replace("oauth-token-hunter2", " "))
            .await
            .expect_err("empty token");
        assert!(e.contains("token is empty"), "{e}");
    }

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let p = provider(BASE).await.expect("valid");
        let shown = format!("{p:?} {:?}", config(BASE));
        assert!(!shown.contains("oauth-token-hunter2"), "{shown}");
    }

    #[test]
    fn robot_names_carry_the_expiry() {
        let name = robot_name("rise_", 1_764_331_200, "3f2a9c1b07de");
        assert_eq!(name, "rise_1764331200_3f2a9c1b07de");
        assert!(valid_quay_name(&name));
        let n = robots::nonce();
        assert_eq!(n.len(), robots::NONCE_LEN);
        assert!(valid_quay_name(&robot_name("ci_rise_", u64::MAX, &n)));
        assert_eq!(parse_robot_name("rise_", &name), Some(1_764_331_200));
        assert_eq!(
            parse_robot_name("ci_rise_", &robot_name("ci_rise_", 7, &n)),
            Some(7)
        );
        for other in [
            "rise_1764331200_3f2a9c1b07d",    // short nonce
            "rise_1764331200_3f2a9c1b07dz",   // not hex
            "rise_1764331200_3F2A9C1B07DE",   // Rise writes lowercase
            "rise_17643x1200_3f2a9c1b07de",   // not digits
            "rise__3f2a9c1b07de",             // no expiry
            "rise_1764331200_3f2a9c1b07de_x", // extra part
            "builder",
            "ci_rise_1764331200_3f2a9c1b07de", // another prefix
        ] {
            assert_eq!(parse_robot_name("rise_", other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn only_rise_robots_of_the_organization_are_recognised() {
        let p = provider(BASE).await.expect("valid");
        let s = &p.shared;
        assert_eq!(
            s.rise_robot("acme+rise_1764331200_3f2a9c1b07de"),
            Some(("rise_1764331200_3f2a9c1b07de".into(), 1_764_331_200))
        );
        for other in [
            "rise_1764331200_3f2a9c1b07de",       // no organization
            "other+rise_1764331200_3f2a9c1b07de", // another organization
            "acme+builder",
            "acme+rise_1764331200_3f2a9c1b07de/../x",
            "acme+acme+rise_1764331200_3f2a9c1b07de",
        ] {
            assert_eq!(s.rise_robot(other), None, "{other}");
        }
    }

    #[test]
    fn quay_names() {
        for good in ["ab", "acme", "my-org", "a.b_c-d", "0x"] {
            assert!(valid_quay_name(good), "{good}");
        }
        for bad in [
            "", "a", "-a", "a-", "a--b", "a._b", "A", "a/b", "a b", "a+b",
        ] {
            assert!(!valid_quay_name(bad), "{bad}");
        }
    }
}

/// The configuration as operators write it, through the real configuration loader.
#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::config::Config;
    use crate::config::test_support::{load, value};
    use crate::registry::providers::ProviderConfig;
    use crate::registry::providers::test_support::{assert_typo_named, secret_file};

    fn quay<'a>(c: &'a Config, name: Option<&str>) -> &'a QuayConfig {
        let table = match name {
            None => c.registry.as_ref(),
            Some(n) => c.registries.get(n),
        };
        match table {
            Some(ProviderConfig::Quay(q)) => q,
            other => panic!("expected a quay registry, got {other:?}"),
        }
    }

    const TABLE: &str = "[registry]\ntype = \"quay\"\norganization = \"acme\"\n";

    #[tokio::test]
    async fn token_from_a_file_and_settings_from_the_environment() {
        let (_secret, line) = secret_file("token", "token-from-file\n");
        let text = format!("{TABLE}{line}");
        let c = load(
            &text,
            &[
                ("RISE_REGISTRY__MAX_TTL", "2h"),
                ("RISE_REGISTRY__REAP_INTERVAL", "30s"),
                ("RISE_REGISTRY__ROBOT_PREFIX", "ci_rise_"),
            ],
        )
        .expect("loads");
        let q = quay(&c, None);
        assert_eq!(value(q.token.as_ref()), Some("token-from-file"));
        assert_eq!(q.max_ttl, Duration::from_secs(7200));
        assert_eq!(q.reap_interval, Duration::from_secs(30));
        assert_eq!(q.robot_prefix, "ci_rise_");
        assert_eq!(q.url, "https://quay.io");
        assert!(!q.insecure_http);
        assert_eq!(c.registry.as_ref().map(ProviderConfig::kind), Some("quay"));
        let p = QuayProvider::from_config("default", q)
            .await
            .expect("valid provider");
        assert_eq!(p.max_ttl(), Duration::from_secs(7200));
        assert_eq!(p.registry_url(), "quay.io");
    }

    #[tokio::test]
    async fn token_from_the_environment_or_a_clear_error() {
        let c = load(TABLE, &[("RISE_REGISTRY__TOKEN", "from-env")]).expect("loads");
        assert_eq!(value(quay(&c, None).token.as_ref()), Some("from-env"));
        let c = load(TABLE, &[]).expect("loads without a token");
        let e = QuayProvider::from_config("default", quay(&c, None))
            .await
            .expect_err("no token")
            .to_string();
        assert!(e.contains("token is not set"), "{e}");
        assert!(e.contains("RISE_REGISTRY__TOKEN"), "{e}");
    }

    #[test]
    fn named_registry_and_defaults() {
        let c = load(
            "[registries.quay]\ntype = \"quay\"\nurl = \"https://quay.example.com\"\norganization = \"acme\"\ntoken = \"t\"\n",
            &[],
        )
        .expect("loads");
        let q = quay(&c, Some("quay"));
        assert_eq!(q.robot_prefix, "rise_");
        assert_eq!(q.registry_host, None);
        assert_eq!(q.max_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(q.reap_interval, Duration::from_secs(60));
        assert_eq!(q.request_timeout, Duration::from_secs(10));
        assert_eq!(q.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn typo_names_the_key_without_the_value() {
        assert_typo_named(TABLE, "tokn", "secret-x");
    }
}
