//! Rise itself, in-process: configuration from a TOML string, a temp data dir, the router driven
//! with `oneshot`, and caller tokens from the local development issuer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rise_backend::auth::LocalIssuer;
use rise_backend::config::{Config, Sources};
use rise_backend::http::AppState;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

use super::provider_calls::GUARD;

pub struct TestRise {
    pub dir: Arc<TempDir>,
    pub config: Config,
    pub state: AppState,
    local: LocalIssuer,
}

impl TestRise {
    /// Build Rise from `toml` (without `[server]`; one is added with a temp data dir).
    pub async fn from_toml(toml: &str) -> Self {
        Self::build(Arc::new(tempfile::tempdir().expect("temp dir")), toml).await
    }

    /// Rise on the same data directory with another configuration, as after a restart.
    pub async fn restarted_with(&self, toml: &str) -> Self {
        Self::build(self.dir.clone(), toml).await
    }

    async fn build(dir: Arc<TempDir>, toml: &str) -> Self {
        let path = dir.path().join("rise.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{toml}",
            dir.path().join("data")
        );
        std::fs::write(&path, text).expect("write config");
        let config = Config::load(&Sources {
            files: vec![path],
            env: vec![],
        })
        .expect("test config is valid");
        let state = rise_backend::server::build_state(&config)
            .await
            .expect("state builds");
        let local = LocalIssuer::load_or_create(&config.server.data_dir, &config.auth.local)
            .expect("local issuer");
        Self {
            dir,
            config,
            state,
            local,
        }
    }

    /// A local-issuer token for `sub` in `groups`.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.local
            .issue(sub, &groups, Duration::from_secs(600))
            .expect("local issuer mints")
    }

    /// `GET uri` with an optional bearer token: status and JSON body.
    pub async fn get(&self, uri: &str, bearer: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::get(uri);
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.send(req.body(Body::empty()).expect("request")).await
    }

    /// `get` under the liveness guard: it must end on Rise's own (upstream) timeouts.
    pub async fn get_guarded(&self, uri: &str, bearer: &str) -> (StatusCode, Value) {
        tokio::time::timeout(GUARD, self.get(uri, Some(bearer)))
            .await
            .expect("the request ends on Rise's upstream timeout")
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = rise_backend::http::app(self.state.clone())
            .oneshot(req)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, json)
    }
}

/// The error with which Rise refuses to start from `toml` (without `[server]`; one is added
/// with a temp data dir) and the environment `env`; the file itself must load. `what` says why
/// it must not start.
pub async fn start_error(toml: &str, env: Vec<(String, String)>, what: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = super::rise_process::write_serve_config(dir.path(), toml);
    let config = Config::load(&Sources {
        files: vec![path],
        env,
    })
    .expect("the file itself is valid");
    match rise_backend::server::build_state(&config).await {
        Ok(_) => panic!("{what}: the server must not start"),
        Err(e) => format!("{e:#}"),
    }
}
