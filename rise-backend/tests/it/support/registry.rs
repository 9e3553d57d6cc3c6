//! The CNCF Distribution registry (`docker-registry serve CONFIG`, Debian's 2.8.2).
//!
//! Facts (see also shared/FACTS.md):
//! - It logs to stderr in logrus text format; the port picked for `http.addr: 127.0.0.1:0` shows
//!   in `msg="listening on 127.0.0.1:PORT"`. It is bound by then, so no further readiness probe.
//! - `REGISTRY_*` environment variables override the config file (and `REGISTRY_AUTH_TOKEN_*`
//!   turn token auth on), so they are removed from the child's environment.
//! - Token auth: the WWW-Authenticate challenge only says `invalid_token` / `insufficient_scope`;
//!   the log has the exact reason at level info just before the warning, e.g.
//!   `msg="token intended for another audience: \"\""` or
//!   `msg="error while unmarshalling raw token: unable to decode claims: ..."`, then
//!   `level=warning msg="error authorizing context: invalid token"` (or `malformed token`,
//!   `authorization token required`). Each request also gets an access-log line
//!   `127.0.0.1 - - [...] "GET /v2/ HTTP/1.1" 401 87 "" ""`.
//! - Request log lines arrive asynchronously: after an HTTP exchange, use `wait_for_log` rather
//!   than `logs().contains(..)`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;
use tokio::process::Command;

use super::process::{ChildProcess, STARTUP_TIMEOUT, require_binary};

/// The `auth.token` section of the registry configuration.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// Where clients get tokens, e.g. `http://127.0.0.1:PORT/token` (Rise's token endpoint).
    pub realm: String,
    /// `service` parameter clients send; the `aud` the registry expects.
    pub service: String,
    /// The `iss` the registry expects.
    pub issuer: String,
    /// PEM certificates the registry trusts for token signatures (`x5c` chains, `kid`s).
    pub rootcertbundle: PathBuf,
}

/// A running registry with filesystem storage in a temp dir; killed on drop.
pub struct DistributionRegistry {
    process: ChildProcess,
    addr: String,
    _dir: TempDir,
}

impl DistributionRegistry {
    /// A registry that accepts only tokens as configured by `auth`.
    pub async fn start(auth: TokenAuth) -> Self {
        Self::start_with(Some(auth)).await
    }

    /// A registry without authentication, for sanity tests.
    pub async fn start_without_auth() -> Self {
        Self::start_with(None).await
    }

    async fn start_with(auth: Option<TokenAuth>) -> Self {
        let binary = require_binary("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("rise-registry-")
            .tempdir()
            .expect("creating a temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("creating the storage dir");
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(&storage, auth.as_ref()))
            .expect("writing the registry config");

        let mut cmd = Command::new(binary);
        cmd.arg("serve").arg(&config).current_dir(dir.path());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(name);
            }
        }
        let mut process =
            ChildProcess::spawn("docker-registry", cmd).expect("spawning docker-registry");
        let line = process
            .wait_for_line(
                "waiting for `listening on`",
                |line| line.contains("listening on "),
                STARTUP_TIMEOUT,
            )
            .await
            .unwrap_or_else(|err| panic!("docker-registry did not start: {err:#}"));
        let addr = parse_listening_addr(&line)
            .unwrap_or_else(|| panic!("no address in registry log line {line:?}"));
        Self {
            process,
            addr,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`, as used in image references (`127.0.0.1:PORT/my-app:tag`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the registry logged so far.
    pub fn logs(&self) -> String {
        self.process.logs().text()
    }

    /// Number of log lines so far; pass it to [`DistributionRegistry::wait_for_log_after`] to
    /// look only at what comes next.
    pub fn log_len(&self) -> usize {
        self.process.logs().len()
    }

    /// Waits (up to `timeout`) for a log line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log_after(0, needle, timeout).await
    }

    /// Waits for a log line containing `needle` among the lines from index `from` on.
    pub async fn wait_for_log_after(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.process
            .logs()
            .wait_for_after(from, |line| line.contains(needle), timeout)
            .await
            .map_err(|err| {
                err.context(
                    self.process
                        .failure_report(&format!("no log line with {needle:?}"), "running"),
                )
            })
    }
}

/// A YAML string (YAML is a superset of JSON, so a JSON string literal is a YAML scalar).
fn yaml_str(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

fn config_yaml(storage: &std::path::Path, auth: Option<&TokenAuth>) -> String {
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let mut yaml = format!(
        "\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: \"127.0.0.1:0\"
  secret: {secret}
",
        storage = yaml_str(&storage.to_string_lossy()),
        secret = yaml_str(&secret),
    );
    if let Some(auth) = auth {
        yaml.push_str(&format!(
            "\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
",
            realm = yaml_str(&auth.realm),
            service = yaml_str(&auth.service),
            issuer = yaml_str(&auth.issuer),
            bundle = yaml_str(&auth.rootcertbundle.to_string_lossy()),
        ));
    }
    yaml
}

/// `127.0.0.1:PORT` from `... msg="listening on 127.0.0.1:PORT" ...`.
fn parse_listening_addr(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    let port = addr.rsplit_once(':')?.1.parse::<u16>().ok()?;
    (port != 0).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::parse_listening_addr;

    #[test]
    fn parses_the_listening_line() {
        let line = r#"time="2026-11-27T21:02:08Z" level=info msg="listening on 127.0.0.1:44729" go.version=go1.19.8"#;
        assert_eq!(
            parse_listening_addr(line).as_deref(),
            Some("127.0.0.1:44729")
        );
    }
}
