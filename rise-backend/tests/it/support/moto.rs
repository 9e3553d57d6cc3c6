//! moto 5.x (`moto_server`, from `.test-deps/venv`): STS, ECR, Secrets Manager, ... in memory.
//!
//! Facts (see also shared/FACTS.md):
//! - `moto_server -H 127.0.0.1 -p 0` binds a free port and prints ` * Running on
//!   http://127.0.0.1:PORT` (werkzeug, to stderr, with ANSI colours even into a pipe); it is
//!   listening by then.
//! - Requests must be SigV4-signed (any credentials); unsigned POSTs end up in the S3 backend.
//! - Session policies and ECR repository permissions are stored, never evaluated: assert what
//!   Rise sent through [`Moto::data_json`].
//! - `POST /moto-api/reset` clears all state; the account is 123456789012.

use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use super::process::{ChildProcess, STARTUP_TIMEOUT, http_client, require_executable};
use super::repo_root;

/// The account moto uses by default.
pub const ACCOUNT_ID: &str = "123456789012";

/// A running moto server; killed on drop.
pub struct Moto {
    process: ChildProcess,
    endpoint: String,
    http: reqwest::Client,
}

impl Moto {
    pub async fn start() -> Self {
        let binary = require_executable(&repo_root().join(".test-deps/venv/bin/moto_server"));
        let mut cmd = Command::new(binary);
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            // Never let a developer's AWS setup leak into the server.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env("PYTHONUNBUFFERED", "1");
        let mut process = ChildProcess::spawn("moto_server", cmd).expect("spawning moto_server");
        let line = process
            .wait_for_line(
                "waiting for `Running on`",
                |line| line.contains("Running on http://"),
                STARTUP_TIMEOUT,
            )
            .await
            .unwrap_or_else(|err| panic!("moto_server did not start: {err:#}"));
        let endpoint = line[line.find("http://").expect("checked above")..]
            .split_whitespace()
            .next()
            .expect("a URL")
            .trim_end_matches('/')
            .to_owned();
        let moto = Self {
            process,
            endpoint,
            http: http_client(),
        };
        moto.wait_until_answering().await;
        moto
    }

    async fn wait_until_answering(&self) {
        let url = format!("{}/moto-api/data.json", self.endpoint);
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.http.get(&url).send().await {
                Ok(response) if response.status().is_success() => return,
                result if tokio::time::Instant::now() >= deadline => panic!(
                    "moto_server at {} does not answer: {result:?}\n{}",
                    self.endpoint,
                    self.logs()
                ),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL for every AWS service.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn logs(&self) -> String {
        self.process.logs().text()
    }

    /// Clears all state (`POST /moto-api/reset`).
    pub async fn reset(&self) {
        let url = format!("{}/moto-api/reset", self.endpoint);
        let response = self
            .http
            .post(&url)
            .send()
            .await
            .expect("POST /moto-api/reset");
        assert!(
            response.status().is_success(),
            "POST {url}: {}",
            response.status()
        );
    }

    /// Everything moto holds, by service and model (`GET /moto-api/data.json`).
    pub async fn data_json(&self) -> Value {
        let url = format!("{}/moto-api/data.json", self.endpoint);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .expect("GET /moto-api/data.json");
        let status = response.status();
        assert!(status.is_success(), "GET {url}: {status}");
        response
            .json()
            .await
            .expect("JSON from /moto-api/data.json")
    }
}
