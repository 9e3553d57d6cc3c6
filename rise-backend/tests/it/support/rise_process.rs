//! The `rise-backend` binary as a child process: `serve` on a free port from a config file (the
//! port is read from its JSON log line), one-shot subcommands, SIGKILL.
//!
//! Also the config files these runs read, and the one-shot subcommands the provider tests share
//! (`token issue`, `grants revoke`, `audit export`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

use super::process::{COMMAND_TIMEOUT, ChildProcess, STARTUP_TIMEOUT, run_with_timeout};

/// The binary Cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rise-backend"))
}

/// `rise-backend --config CONFIG ARGS...` with the configuration environment of this test
/// process (`RISE_*`) removed, so only `config` decides.
pub fn command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RISE_") {
            cmd.env_remove(name);
        }
    }
    cmd.arg("--config").arg(config).args(args);
    cmd
}

/// Runs a one-shot subcommand (e.g. `audit verify`) to completion.
pub async fn run(config: &Path, args: &[&str]) -> Output {
    run_with_timeout(command(config, args), COMMAND_TIMEOUT)
        .await
        .unwrap_or_else(|err| panic!("rise-backend {args:?}: {err:#}"))
}

/// Writes `dir/rise.toml`: a `[server]` table with its data directory in `dir`, then `tables`.
/// For one-shot subcommands, which listen nowhere.
pub fn write_config(dir: &Path, tables: &str) -> PathBuf {
    write_config_file(dir, "", tables)
}

/// [`write_config`] for `serve`: it also listens on a free loopback port.
pub fn write_serve_config(dir: &Path, tables: &str) -> PathBuf {
    write_config_file(dir, "listen = \"127.0.0.1:0\"\n", tables)
}

fn write_config_file(dir: &Path, listen: &str, tables: &str) -> PathBuf {
    let path = dir.join("rise.toml");
    let text = format!(
        "[server]\n{listen}data_dir = {:?}\n\n{tables}",
        dir.join("data").display().to_string()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// `token issue --sub SUB --group G...`: a caller token of the local issuer.
pub async fn caller_token(config: &Path, sub: &str, groups: &[&str]) -> String {
    let mut args = vec!["token", "issue", "--sub", sub];
    for g in groups {
        args.extend(["--group", g]);
    }
    let issued = run(config, &args).await;
    assert!(issued.status.success(), "{issued:?}");
    String::from_utf8(issued.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// `grants revoke --credential ID --registry REGISTRY`, whatever its outcome, against the state
/// of a server with this configuration (made first by `check-config --offline`, as `serve` would:
/// `grants revoke` refuses a data directory where no server ran).
pub async fn grants_revoke(config: &Path, credential: &str, registry: &str) -> Output {
    let setup = run(config, &["check-config", "--offline"]).await;
    assert!(setup.status.success(), "check-config --offline: {setup:?}");
    run(
        config,
        &[
            "grants",
            "revoke",
            "--credential",
            credential,
            "--registry",
            registry,
        ],
    )
    .await
}

/// `audit export`, which must succeed: one JSON value a record.
pub async fn audit_records(config: &Path) -> Vec<serde_json::Value> {
    let export = run(config, &["audit", "export"]).await;
    assert!(export.status.success(), "{export:?}");
    String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A running `rise-backend serve`; SIGKILLed on drop.
pub struct RiseProcess {
    process: ChildProcess,
    addr: SocketAddr,
}

impl RiseProcess {
    /// Starts `serve` with `config` (whose `listen` may use port 0) and waits until it listens.
    pub async fn serve(config: &Path) -> Self {
        Self::serve_logging(config, "info").await
    }

    /// [`RiseProcess::serve`], logging at `level` (`RISE_LOG`).
    pub async fn serve_logging(config: &Path, level: &str) -> Self {
        let mut cmd = command(config, &["serve"]);
        cmd.env("RISE_LOG", level).env("RISE_LOG_FORMAT", "json");
        let mut process = ChildProcess::spawn("rise-backend", cmd)
            .unwrap_or_else(|err| panic!("starting rise-backend: {err:#}"));
        let line = process
            .wait_for_line(
                "waiting for `rise-backend listening`",
                |line| line.contains("rise-backend listening"),
                STARTUP_TIMEOUT,
            )
            .await
            .unwrap_or_else(|err| panic!("{err:#}"));
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"));
        let addr = event["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {line}"));
        Self { process, addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.process.logs().text()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_status()
    }

    /// SIGKILL: no graceful shutdown, no flushing, as in a crash.
    pub async fn kill(&mut self) {
        self.process
            .kill()
            .await
            .unwrap_or_else(|err| panic!("{err:#}"));
    }
}
