//! Harbor (`type = "harbor"`): one system robot account per request, with pull (and push)
//! permission on one Harbor project, deleted by Rise when the request's lifetime ends.
//!
//! Tested against a fake Harbor built from Harbor's published API definition
//! (`api/v2.0/swagger.yaml` and `src/server/v2.0/handler/robot.go` in `goharbor/harbor`; see
//! `harbor/api.rs` and `tests/it/support/fake_harbor.rs`), never against a real Harbor.
//!
//! # Configuration
//!
//! ```toml
//! [registry]
//! type = "harbor"
//! url = "https://harbor.example.com"   # Harbor's external URL (API and registry)
//! project = "{project}"                # the Harbor project; {project} is the Rise project
//! username = "rise"                    # Rise's own Harbor identity (see below)
//! password = "..."                     # or password_file, RISE_REGISTRY__PASSWORD,
//!                                      # or an aws-secretsmanager: reference
//! # robot_prefix = "rise-"             # names of Rise's robots: <prefix><expiry>-<nonce>
//! # max_ttl = "12h"                    # longest lifetime handed out; at most 24h
//! # reap_interval = "1m"               # how often expired robots are deleted
//! # request_timeout = "10s" ; connect_timeout = "5s"
//! # secret_refresh_interval = "5m"     # re-read of aws-secretsmanager: references
//! # insecure_http = true               # allow an http:// url; tests only
//! ```
//!
//! # What callers get
//!
//! Each request creates a robot account through `POST /api/v2.0/robots` (Harbor 2.2+) with
//! `level = "system"` and a single permission `{kind: "project", namespace: <Harbor project>}`
//! granting `repository:pull`, plus `repository:push` when push is asked for. The caller logs in
//! to the host of `url` with the robot's name as Harbor returns it (`robot$rise-...`) and its
//! secret; the repository path is `<Harbor project>/<repository>`.
//!
//! # What is scoped
//!
//! Harbor grants robot permissions per *project*, never per repository: a robot reaches every
//! repository of its Harbor project, with exactly the granted actions, and nothing outside it.
//! With a `{project}` template each Rise project has a Harbor project of its own, and the
//! response says `repository_scoped: true` (the reach is the Rise project's own Harbor project:
//! give each Rise project its own, and keep other images out of it). With a fixed `project`
//! every Rise project shares one Harbor project, each robot reaches its neighbours'
//! repositories, and the response says `repository_scoped: false`.
//!
//! # Lifetime, revocation, cleanup
//!
//! Harbor counts robot lifetimes in whole days (`duration`; `-1` never, `0` Harbor's default),
//! so Rise asks for the shortest, one day, and enforces its own, shorter expiry itself:
//! - the robot's name carries its Rise expiry in Unix seconds (`rise-1764331200-3f2a9c1b07de`)
//!   and its description says when, for whom, and for which request it was made;
//! - a reaper, started when the provider is built, lists Rise's robots (`GET /api/v2.0/robots`,
//!   names containing `robot_prefix`) every `reap_interval` and deletes those whose expiry has
//!   passed; the first request after start sweeps at once too (robots left by an earlier run).
//!   A sweep reads at most 20 pages of 100 robots, deletes at most 500, and stops at the first
//!   timeout or refused credential; failures are logged (without secrets) and retried on the
//!   next sweep. Replicas sweep independently: a robot another replica deleted first is simply
//!   gone (Harbor's 404). It touches only robots whose name is exactly `<robot_prefix><digits>-<hex>`
//!   after Harbor's robot prefix, whose description is Rise's, and that are system robots.
//!
//! So a credential is refused from its `expires_at` plus at most `reap_interval` (plus the
//! delete's own latency) while Rise runs and reaches Harbor; if Rise is down, Harbor's own
//! expiry (one day after creation) is the backstop. Rise therefore reports
//! `expiry_enforced: false`: Harbor does not itself refuse the robot at `expires_at`.
//! `revocable: true`: [`RegistryProvider::revoke`] deletes the robot
//! (`DELETE /api/v2.0/robots/{id}`, the `credential_id`), after checking that the id is a
//! robot Rise created. Robots are not refreshable: clients ask Rise again. Registry bearer
//! tokens Harbor handed to a client before the deletion stay valid until they expire (Harbor's
//! `token_expiration` setting), as with any Harbor account.
//!
//! # Least-privilege Harbor setup for Rise's own account
//!
//! Creating system-level robots needs the system `robot` permission: a Harbor administrator,
//! or from Harbor 2.12 a system robot account given system `robot` create, list, read and
//! delete permissions and, because a robot may only create robots with no more than its own
//! permissions, `repository` pull and push on the Harbor projects Rise serves. Prefer the
//! latter; keep its secret in a secret store (`password_file` or `aws-secretsmanager:`), give
//! it an expiry and rotate it. Rise never hands out its own credential. (Robots managing robots:
//! goharbor/harbor#20076, targeted at 2.12, and the proposal
//! `proposals/new/Robot-Account-Expand.md` in goharbor/community#249; Harbor's robot account
//! pages on goharbor.io, "Create System Robot Accounts", for system robots since 2.2. Not
//! verified against a running Harbor.)
//!
//! # Failures
//!
//! Every upstream call is bounded by `connect_timeout` and `request_timeout`. Timeouts are
//! [`ProviderError::Timeout`] (504); 401/403 from Harbor are
//! [`ProviderError::Misconfigured`] (502) naming what is likely missing; other statuses and
//! malformed replies are [`ProviderError::Upstream`] (502). A name conflict (409) is retried
//! once with a fresh name. A robot Harbor reports as never expiring is deleted and refused.
//! Upstream bodies are summarised with secrets redacted and only ever logged. Rise's password
//! and the robots' secrets are [`SecretString`]s: they appear in no log, error or `Debug`
//! output.

mod api;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::Url;
use serde::Deserialize;

use self::api::{
    Access, CreateError, CreateRobot, Deleted, HarborClient, Login, Robot, RobotPermission,
};
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

/// The `[registry]` table with `type = "harbor"`. See the module documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HarborConfig {
    /// Harbor's external URL, e.g. `https://harbor.example.com`.
    pub url: String,
    /// The Harbor project; `{project}` is replaced by the Rise project.
    pub project: String,
    #[serde(default)]
    pub username: Option<String>,
    /// A value or an `aws-secretsmanager:` reference.
    #[serde(default)]
    pub password: Option<SecretSource>,
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
    /// Allow an `http://` URL: credentials then cross the network in clear text.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

mod defaults {
    pub use crate::registry::providers::defaults::{
        connect_timeout, max_ttl, request_timeout, secret_refresh_interval,
    };
    use std::time::Duration;

    pub fn robot_prefix() -> String {
        "rise-".into()
    }
    pub fn reap_interval() -> Duration {
        Duration::from_secs(60)
    }
}

/// Harbor's shortest robot lifetime: one day, so no Rise credential may be meant to outlive it.
const ROBOT_DURATION_DAYS: i64 = 1;
/// Harbor's clock may run ahead of Rise's by this much before a robot's expiry counts as later
/// than asked.
const CLOCK_SLACK_SECS: i64 = 3600;

/// Why a created robot's own expiry (`expires_at`, Unix seconds) is not the backstop Rise asked
/// for (at most [`ROBOT_DURATION_DAYS`] away), or `None` when it is.
fn backstop_refused(expires_at: Option<i64>, now: SystemTime) -> Option<String> {
    let now = i64::try_from(robots::unix_seconds(now)).unwrap_or(i64::MAX);
    let latest = now.saturating_add(ROBOT_DURATION_DAYS * 86_400 + CLOCK_SLACK_SECS);
    match expires_at {
        Some(-1) => Some("Harbor created a robot that never expires".to_owned()),
        Some(t) if t > 0 && t <= latest => None,
        Some(t) => Some(format!(
            "Harbor set the robot to expire at {t} (Unix seconds), not within the {ROBOT_DURATION_DAYS} day Rise asked for"
        )),
        None => Some("Harbor did not say when the robot expires".to_owned()),
    }
}
const MAX_TTL_LIMIT: Duration = Duration::from_secs(24 * 3600);
const MAX_DESCRIPTION_LEN: usize = 1000;
/// Bounds of one sweep.
const MAX_LIST_PAGES: usize = 20;
const MAX_DELETES_PER_SWEEP: usize = 500;

/// The Harbor provider. Its `Debug` shows no secret. Dropping it stops its reaper.
#[derive(Debug)]
pub struct HarborProvider {
    shared: Arc<Shared>,
    /// Held for its `Drop`, which stops the reaper task.
    _reaper: Reaper,
}

#[derive(Debug)]
struct Shared {
    /// The registry's configured name, for log lines and errors.
    name: String,
    registry_host: String,
    project_template: String,
    /// Whether each Rise project has a Harbor project of its own (`{project}` in the template).
    per_project: bool,
    robot_prefix: String,
    username: String,
    password: Secret,
    client: HarborClient,
    max_ttl: Duration,
    /// When expired robots are deleted.
    schedule: Schedule,
}

impl HarborProvider {
    /// Validate `config` and build the provider; `aws-secretsmanager:` references are read now.
    /// Inside a Tokio runtime the reaper starts too (its first sweep after `reap_interval`).
    pub async fn from_config(name: &str, config: &HarborConfig) -> anyhow::Result<Self> {
        Ok(Self::build(name, config).await?)
    }

    async fn build(name: &str, config: &HarborConfig) -> Result<Self, ProviderError> {
        let bad = |m: String| ProviderError::Misconfigured(format!("registry {name}: {m}"));
        let base_url = parse_url(&config.url, config.insecure_http).map_err(bad)?;
        let registry_host = upstream::host_and_port("url", &base_url).map_err(bad)?;
        validate_project_template(&config.project).map_err(bad)?;
        validate_robot_prefix(&config.robot_prefix).map_err(bad)?;
        super::require_nonzero(&[
            ("max_ttl", config.max_ttl),
            ("reap_interval", config.reap_interval),
            ("request_timeout", config.request_timeout),
            ("connect_timeout", config.connect_timeout),
        ])
        .map_err(bad)?;
        if config.max_ttl > MAX_TTL_LIMIT {
            return Err(bad(
                "max_ttl must be at most 24h: Harbor robots live one day at least, and Rise deletes them when they expire"
                    .into(),
            ));
        }
        let username = account::username(
            name,
            config.username.as_deref(),
            "Rise's own Harbor account",
        )
        .map_err(bad)?;
        let password = account::secret(
            name,
            "password",
            config.password.as_ref(),
            config.secret_refresh_interval,
            "",
        )
        .await
        .map_err(bad)?;
        let client = HarborClient::new(&base_url, config.connect_timeout, config.request_timeout)
            .map_err(|e| bad(e.to_string()))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            registry_host,
            project_template: config.project.clone(),
            per_project: config.project.contains("{project}"),
            robot_prefix: config.robot_prefix.clone(),
            username,
            password,
            client,
            max_ttl: config.max_ttl,
            schedule: Schedule::new(config.reap_interval),
        });
        let reaper = Reaper::start(&shared);
        if shared.per_project {
            tracing::info!(registry = %name, "harbor registry creates one robot per request, limited to the Rise project's own Harbor project");
        } else {
            tracing::warn!(registry = %name, project = %config.project, "harbor registry creates robots on one shared Harbor project: each reaches every repository in it (not repository-scoped)");
        }
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

impl Shared {
    fn login_with<'a>(&'a self, password: &'a secrecy::SecretString) -> Login<'a> {
        Login {
            username: &self.username,
            password,
        }
    }
}

impl Sweep for Shared {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    async fn sweep(&self) -> SweepReport {
        let password = self.password.current().await;
        let login = self.login_with(&password);
        let now = robots::unix_seconds(SystemTime::now());
        let mut report = SweepReport::default();
        let mut expired = Vec::new();
        for page in 1..=MAX_LIST_PAGES {
            let robots = match self
                .client
                .list_robots(&login, &self.robot_prefix, page)
                .await
            {
                Ok(robots) => robots,
                Err(e) => {
                    tracing::warn!(registry = %self.name, error = %e, "harbor reaper: listing robots failed; retrying next sweep");
                    break;
                }
            };
            let last_page = robots.len() < api::PAGE_SIZE;
            for robot in robots {
                match self.rise_robot_expiry(&robot) {
                    Some(expiry) if expiry <= now => expired.push(robot),
                    Some(_) => report.kept += 1,
                    None => {}
                }
            }
            if last_page {
                break;
            }
        }
        for robot in expired.into_iter().take(MAX_DELETES_PER_SWEEP) {
            match self.client.delete_robot(&login, robot.id).await {
                Ok(_) => {
                    report.deleted += 1;
                    tracing::info!(registry = %self.name, robot_id = robot.id, robot = %robot.name, "harbor reaper: deleted an expired Rise robot");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(registry = %self.name, robot_id = robot.id, error = %e, "harbor reaper: deleting an expired robot failed; retrying next sweep");
                    if matches!(
                        e,
                        ProviderError::Timeout { .. } | ProviderError::Misconfigured(_)
                    ) {
                        break;
                    }
                }
            }
        }
        report
    }
}

impl Shared {
    /// The Rise expiry of a robot Rise created; `None` for any other robot.
    fn rise_robot_expiry(&self, robot: &Robot) -> Option<u64> {
        let system = robot.level.as_deref().is_none_or(|l| l == "system");
        let ours = robots::is_rise_description(robot.description.as_deref());
        if !system || !ours {
            return None;
        }
        parse_robot_name(&self.robot_prefix, &robot.name)
    }

    fn harbor_project(&self, project: &str) -> Result<String, ProviderError> {
        let harbor_project = self.project_template.replace("{project}", project);
        if valid_harbor_name(&harbor_project) && harbor_project.len() <= 255 {
            Ok(harbor_project)
        } else {
            Err(ProviderError::Unsupported(format!(
                "project {project} gives Harbor project {:?}, which is not lowercase letters and digits separated by single '.', '_' or '-'",
                harbor_project.chars().take(80).collect::<String>()
            )))
        }
    }

    async fn issue(&self, request: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        let harbor_project = self.harbor_project(request.project.as_str())?;
        let (expiry, expires_at) = robots::expiry(request.ttl, self.max_ttl);
        let push = request.actions.contains(Action::Push);
        let granted_actions = if push {
            Actions::PUSH_PULL
        } else {
            Actions::PULL
        };
        let description =
            robots::description(expires_at, request, granted_actions, MAX_DESCRIPTION_LEN);
        let mut access = vec![Access {
            resource: "repository",
            action: "pull",
        }];
        if push {
            access.push(Access {
                resource: "repository",
                action: "push",
            });
        }
        let permissions = || {
            vec![RobotPermission {
                kind: "project",
                namespace: &harbor_project,
                access: access
                    .iter()
                    .map(|a| Access {
                        resource: a.resource,
                        action: a.action,
                    })
                    .collect(),
            }]
        };
        let password = self.password.current().await;
        let login = self.login_with(&password);
        let mut attempts = 0;
        let (local_name, created) = loop {
            attempts += 1;
            let local_name = robot_name(&self.robot_prefix, expiry, &robots::nonce());
            let body = CreateRobot {
                name: &local_name,
                description: &description,
                level: "system",
                disable: false,
                duration: ROBOT_DURATION_DAYS,
                permissions: permissions(),
            };
            match self.client.create_robot(&login, &body).await {
                Ok(created) => break (local_name, created),
                Err(CreateError::NameTaken) if attempts < 2 => {
                    tracing::info!(registry = %self.name, request_id = %request.request_id, "harbor robot name taken; retrying with another");
                }
                Err(CreateError::NameTaken) => {
                    return Err(ProviderError::Upstream {
                        operation: api::CREATE_OPERATION,
                        detail: "HTTP 409 twice for fresh random robot names".into(),
                    });
                }
                Err(CreateError::Other(e)) => return Err(e),
            }
        };
        let refused = if !created.name.ends_with(&local_name) {
            Some(format!(
                "Harbor named the robot {:?}, not after {local_name:?}",
                created.name.chars().take(100).collect::<String>()
            ))
        } else {
            backstop_refused(created.expires_at, SystemTime::now())
        };
        if let Some(why) = refused {
            let taken_back = match self.client.delete_robot(&login, created.id).await {
                Ok(_) => "it was deleted".to_owned(),
                Err(e) => format!("deleting it failed, delete it by hand: {e}"),
            };
            return Err(ProviderError::Upstream {
                operation: api::CREATE_OPERATION,
                detail: format!("{why} (robot id {}); {taken_back}", created.id),
            });
        }
        Ok(IssuedCredential {
            registry_url: self.registry_host.clone(),
            username: created.name,
            password: created.secret,
            expires_at,
            repository: format!("{harbor_project}/{}", request.repository.as_str()),
            granted_actions,
            repository_scoped: self.per_project,
            revocable: true,
            expiry_enforced: false,
            credential_id: Some(created.id.to_string()),
        })
    }

    async fn revoke(&self, credential_id: &str) -> Result<(), ProviderError> {
        let id = parse_robot_id(credential_id).ok_or_else(|| {
            ProviderError::Unsupported(format!(
                "{:?} is not a Harbor robot id (a positive number)",
                credential_id.chars().take(40).collect::<String>()
            ))
        })?;
        let password = self.password.current().await;
        let login = self.login_with(&password);
        let Some(robot) = self.client.get_robot(&login, id).await? else {
            tracing::info!(registry = %self.name, robot_id = id, "harbor robot already gone");
            return Ok(());
        };
        if self.rise_robot_expiry(&robot).is_none() {
            return Err(ProviderError::Unsupported(format!(
                "Harbor robot {id} was not created by Rise for registry {}; Rise deletes only its own robots",
                self.name
            )));
        }
        match self.client.delete_robot(&login, id).await? {
            Deleted::Now => {
                tracing::info!(registry = %self.name, robot_id = id, robot = %robot.name, "harbor robot deleted")
            }
            Deleted::AlreadyGone => {
                tracing::info!(registry = %self.name, robot_id = id, "harbor robot already gone")
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RegistryProvider for HarborProvider {
    fn kind(&self) -> &'static str {
        "harbor"
    }

    fn registry_url(&self) -> String {
        self.shared.registry_host.clone()
    }

    /// With a fixed `project`, `<project>/<repository>`. With a `{project}` template the Harbor
    /// project depends on the Rise project, which this method is not given: the template is
    /// shown as is (the issued credential carries the real path).
    fn repository_path(&self, repository: &RepositoryName) -> String {
        format!("{}/{}", self.shared.project_template, repository.as_str())
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
            tracing::warn!(registry = %self.shared.name, error = %e, "harbor robot not deleted");
        }
        result
    }
}

/// Harbor's external URL: https (unless `insecure_http`), a host, no credentials, no query.
/// The path ends with `/` so joins stay under it.
fn parse_url(raw: &str, insecure_http: bool) -> Result<Url, String> {
    let mut url = upstream::endpoint_url(
        "url",
        raw,
        insecure_http,
        Some("https://harbor.example.com"),
    )?;
    if !url.path().trim_end_matches('/').is_empty() {
        // Harbor serves the registry (`/v2/`) at the root of its host; a path would give
        // clients an image reference Harbor does not serve.
        return Err("url must be Harbor's root URL, without a path".into());
    }
    url.set_path("/");
    Ok(url)
}

/// Lowercase letters and digits separated by single `.`, `_` or `-`: Harbor's robot name rule
/// (`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`), also the form of a Docker path component.
fn valid_harbor_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
        && !b
            .windows(2)
            .any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric())
}

fn validate_project_template(template: &str) -> Result<(), String> {
    let sample = template.replace("{project}", "p");
    if template.len() <= 200 && valid_harbor_name(&sample) {
        Ok(())
    } else {
        Err(format!(
            "project {:?} must be one Harbor project name (lowercase letters and digits separated by single '.', '_' or '-'), optionally with the placeholder {{project}}",
            template.chars().take(80).collect::<String>()
        ))
    }
}

/// The prefix must leave `<prefix><digits>-<hex>` a valid robot name: it starts with a letter or
/// digit and ends with a separator.
fn validate_robot_prefix(prefix: &str) -> Result<(), String> {
    let ends_with_separator = prefix.ends_with(['-', '.', '_']);
    if prefix.len() <= 40 && ends_with_separator && valid_harbor_name(&format!("{prefix}0")) {
        Ok(())
    } else {
        Err(format!(
            "robot_prefix {:?} must be lowercase letters and digits separated by single '.', '_' or '-', ending with one of them (e.g. \"rise-\")",
            prefix.chars().take(60).collect::<String>()
        ))
    }
}

/// `<prefix><expiry in Unix seconds>-<nonce>`.
fn robot_name(prefix: &str, expiry_unix: u64, nonce: &str) -> String {
    format!("{prefix}{expiry_unix}-{nonce}")
}

/// The expiry of a robot name as Harbor lists it (`robot$rise-1764331200-3f2a9c1b07de`), when
/// it is a Rise name: Harbor's robot prefix (anything without `+`, which marks a project robot),
/// then exactly `<prefix><digits>-<robots::NONCE_LEN hex digits>`.
fn parse_robot_name(prefix: &str, name: &str) -> Option<u64> {
    let (harbor_prefix, rest) = name.rsplit_once(prefix)?;
    if harbor_prefix.is_empty() || harbor_prefix.contains('+') {
        return None;
    }
    robots::parse_expiry(rest, '-')
}

/// A robot id: a positive decimal number, nothing else (it goes into a URL path).
fn parse_robot_id(id: &str) -> Option<i64> {
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backstop_is_harbor_expiring_the_robot_within_a_day() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs: i64| Some(1_800_000_000 + secs);
        for ok in [at(86_400), at(86_400 + 3_000), at(60), at(-600)] {
            assert_eq!(backstop_refused(ok, now), None, "{ok:?}");
        }
        for (bad, why) in [
            (Some(-1), "never expires"),
            (None, "did not say"),
            (Some(0), "not within"),
            (at(2 * 86_400), "not within"),
            (Some(i64::MAX), "not within"),
        ] {
            let shown = backstop_refused(bad, now).expect("refused");
            assert!(shown.contains(why), "{bad:?}: {shown}");
        }
    }

    fn config(toml_text: &str) -> HarborConfig {
        toml::from_str(toml_text).expect("valid test config")
    }

    async fn provider(toml_text: &str) -> Result<HarborProvider, String> {
        HarborProvider::build("default", &config(toml_text))
            .await
            .map_err(|e| e.to_string())
    }

    const BASE: &str = "url = \"https://harbor.example.com\"\nproject = \"{project}\"\nusername = \"rise\"\npassword = \"hunter2-password\"\n";

    #[tokio::test]
    async fn registry_host_scoping_and_limits() {
        let p = provider(BASE).await.expect("valid");
        assert_eq!(p.registry_url(), "harbor.example.com");
        assert!(p.shared.per_project);
        assert_eq!(p.max_ttl(), Duration::from_secs(12 * 3600));
        assert!(
            p._reaper.is_running(),
            "built inside a runtime: the reaper runs"
        );
        let p = provider(
            "url = \"http://127.0.0.1:8080/\"\nproject = \"shared\"\nusername = \"u\"\npassword = \"p\"\ninsecure_http = true\n",
        )
        .await
        .expect("valid");
        assert_eq!(p.registry_url(), "127.0.0.1:8080");
        assert!(!p.shared.per_project);
        let repo = RepositoryName::parse("my-app").expect("valid");
        assert_eq!(p.repository_path(&repo), "shared/my-app");
    }

    #[tokio::test]
    async fn invalid_configurations_say_what_is_wrong() {
        for (extra, part) in [
            ("max_ttl = \"25h\"\n", "max_ttl must be at most 24h"),
            ("max_ttl = \"0s\"\n", "max_ttl must be greater than zero"),
            ("reap_interval = \"0s\"\n", "reap_interval"),
            ("robot_prefix = \"Rise-\"\n", "robot_prefix"),
            ("robot_prefix = \"rise\"\n", "robot_prefix"),
            ("robot_prefix = \"-rise-\"\n", "robot_prefix"),
            ("robot_prefix = \"rise--\"\n", "robot_prefix"),
        ] {
            let e = provider(&format!("{BASE}{extra}")).await.expect_err(extra);
            assert!(e.contains(part), "{extra:?}: {e}");
        }
        for (url, part) in [
            ("http://h", "clear text"),
            ("https://u:p@h", "credentials"),
            ("ftp://h", "scheme"),
            ("harbor.example.com", "not a URL"),
            ("https://h/harbor", "without a path"),
            ("https://h/?x=1", "query"),
        ] {
            let e = provider(&BASE.replace("https://harbor.example.com", url))
                .await
                .expect_err(url);
            assert!(e.contains(part), "{url}: {e}");
        }
        for project in ["Team", "a/b", "{project}-", "a__b", "{team}", ""] {
            let e = provider(&BASE.replace("\"{project}\"", &format!("{project:?}")))
                .await
                .expect_err(project);
            assert!(e.contains("project"), "{project}: {e}");
        }
    }

    #[tokio::test]
    async fn missing_credentials_name_the_variables() {
        let no_password = BASE.replace("password = \"hunter2-password\"\n", "");
        let e = provider(&no_password).await.expect_err("no password");
        assert!(e.contains("registry default"), "{e}");
        assert!(e.contains("RISE_REGISTRY__PASSWORD"), "{e}");
        let e = HarborProvider::build("eu", &config(&no_password))
            .await
            .expect_err("no password")
            .to_string();
        assert!(e.contains("RISE_REGISTRIES__EU__PASSWORD"), "{e}");
        let e = provider(&BASE.replace("username = \"rise\"\n", ""))
            .await
            .expect_err("no username");
        assert!(e.contains("RISE_REGISTRY__USERNAME"), "{e}");
        let e = provider(&BASE.replace("hunter2-password", " "))
            .await
            .expect_err("empty password");
        assert!(e.contains("password is empty"), "{e}");
    }

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let p = provider(BASE).await.expect("valid");
        let shown = format!("{p:?} {:?}", config(BASE));
        assert!(!shown.contains("hunter2-password"), "{shown}");
    }

    #[test]
    fn robot_names_carry_the_expiry() {
        let name = robot_name("rise-", 1_764_331_200, "3f2a9c1b07de");
        assert_eq!(name, "rise-1764331200-3f2a9c1b07de");
        assert!(valid_harbor_name(&name));
        let n = robots::nonce();
        assert_eq!(n.len(), robots::NONCE_LEN);
        assert!(valid_harbor_name(&robot_name("ci.rise_", 1, &n)));
        assert_eq!(
            parse_robot_name("rise-", &format!("robot${name}")),
            Some(1_764_331_200)
        );
        // Harbor's robot prefix is configurable; any prefix without '+' is accepted.
        assert_eq!(
            parse_robot_name("rise-", &format!("bot_{name}")),
            Some(1_764_331_200)
        );
        for other in [
            name.clone(),                               // no Harbor prefix: not as Harbor lists it
            format!("robot$team+{name}"),               // a project robot
            "robot$rise-1764331200-3f2a9c1b07d".into(), // short nonce
            "robot$rise-1764331200-3f2a9c1b07dz".into(),
            "robot$rise-17643x1200-3f2a9c1b07de".into(),
            "robot$rise--3f2a9c1b07de".into(),
            "robot$ci-builder".into(),
            "robot$rise-1764331200-3f2a9c1b07de-x".into(),
        ] {
            assert_eq!(parse_robot_name("rise-", &other), None, "{other}");
        }
    }

    #[test]
    fn robot_ids() {
        assert_eq!(parse_robot_id("42"), Some(42));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.0",
            "../1",
            "1/2",
            "99999999999999999999",
            "me",
        ] {
            assert_eq!(parse_robot_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn harbor_names() {
        for good in ["a", "team", "my-app", "a.b_c-d", "0x"] {
            assert!(valid_harbor_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a--b", "a._b", "A", "a/b", "a b"] {
            assert!(!valid_harbor_name(bad), "{bad}");
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

    fn harbor<'a>(c: &'a Config, name: Option<&str>) -> &'a HarborConfig {
        let table = match name {
            None => c.registry.as_ref(),
            Some(n) => c.registries.get(n),
        };
        match table {
            Some(ProviderConfig::Harbor(h)) => h,
            other => panic!("expected a harbor registry, got {other:?}"),
        }
    }

    const TABLE: &str = "[registry]\ntype = \"harbor\"\nurl = \"https://harbor.example.com\"\nproject = \"{project}\"\nusername = \"rise\"\n";

    #[tokio::test]
    async fn password_from_a_file_and_settings_from_the_environment() {
        let (_secret, line) = secret_file("password", "from-file\n");
        let text = format!("{TABLE}{line}");
        let c = load(
            &text,
            &[
                ("RISE_REGISTRY__MAX_TTL", "2h"),
                ("RISE_REGISTRY__REAP_INTERVAL", "30s"),
                ("RISE_REGISTRY__ROBOT_PREFIX", "ci-rise-"),
            ],
        )
        .expect("loads");
        let h = harbor(&c, None);
        assert_eq!(value(h.password.as_ref()), Some("from-file"));
        assert_eq!(h.max_ttl, Duration::from_secs(7200));
        assert_eq!(h.reap_interval, Duration::from_secs(30));
        assert_eq!(h.robot_prefix, "ci-rise-");
        assert!(!h.insecure_http);
        assert_eq!(
            c.registry.as_ref().map(ProviderConfig::kind),
            Some("harbor")
        );
        let p = HarborProvider::from_config("default", h)
            .await
            .expect("valid provider");
        assert_eq!(p.max_ttl(), Duration::from_secs(7200));
    }

    #[tokio::test]
    async fn password_from_the_environment_or_a_clear_error() {
        let c = load(TABLE, &[("RISE_REGISTRY__PASSWORD", "from-env")]).expect("loads");
        let h = harbor(&c, None);
        assert_eq!(value(h.password.as_ref()), Some("from-env"));
        let c = load(TABLE, &[]).expect("loads without a password");
        let e = HarborProvider::from_config("default", harbor(&c, None))
            .await
            .expect_err("no password")
            .to_string();
        assert!(e.contains("password is not set"), "{e}");
        assert!(e.contains("RISE_REGISTRY__PASSWORD"), "{e}");
    }

    #[test]
    fn named_registry_and_defaults() {
        let c = load(
            "[registries.harbor]\ntype = \"harbor\"\nurl = \"https://h\"\nproject = \"shared\"\nusername = \"u\"\npassword = \"p\"\n",
            &[],
        )
        .expect("loads");
        let h = harbor(&c, Some("harbor"));
        assert_eq!(h.robot_prefix, "rise-");
        assert_eq!(h.max_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(h.reap_interval, Duration::from_secs(60));
        assert_eq!(h.request_timeout, Duration::from_secs(10));
        assert_eq!(h.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn typo_names_the_key_without_the_value() {
        assert_typo_named(TABLE, "pasword", "secret-x");
    }
}
