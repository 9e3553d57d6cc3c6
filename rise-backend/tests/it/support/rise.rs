//! Rise itself, in-process: the real router on a real 127.0.0.1 socket, built from a real
//! configuration file by `rise_backend::server::build_state`.
//!
//! The listener is bound first ([`ReservedRise::bind`]) so Rise's URL is known before the
//! configuration is written: a registry must be told Rise's token realm before it starts, and
//! Rise's configuration must name the registry's address, which is known only after it starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rise_backend::config::{Config, Sources};
use rise_backend::http::AppState;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A bound listener and a data directory, waiting for a configuration.
pub struct ReservedRise {
    listener: TcpListener,
    addr: SocketAddr,
    data_dir: TempDir,
}

impl ReservedRise {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let data_dir = tempfile::Builder::new()
            .prefix("rise-data-")
            .tempdir()
            .expect("creating a temp dir");
        Self {
            listener,
            addr,
            data_dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The `[server]` table for this reservation; append the rest of the configuration to it.
    pub fn server_toml(&self) -> String {
        format!(
            "[server]\nlisten = {listen:?}\npublic_url = {url:?}\ndata_dir = {dir:?}\n\n",
            listen = self.addr.to_string(),
            url = self.url(),
            dir = self.data_dir().display().to_string(),
        )
    }

    /// Load `config_toml` as Rise would (a file layered over the built-in defaults, no
    /// environment), without serving yet.
    pub fn load_config(&self, config_toml: &str) -> Config {
        let path = self.data_dir().join("rise.toml");
        std::fs::write(&path, config_toml).expect("writing the Rise config");
        Config::load(&Sources {
            files: vec![path],
            env: Vec::new(),
        })
        .unwrap_or_else(|err| panic!("invalid test config: {err}\n{config_toml}"))
    }

    /// Build the state from `config_toml` and serve `http::app` on the reserved listener.
    pub async fn serve(self, config_toml: &str) -> RiseServer {
        let config = self.load_config(config_toml);
        let state = rise_backend::server::build_state(&config)
            .await
            .unwrap_or_else(|err| panic!("building the Rise state: {err:#}"));
        let app = rise_backend::http::app(state.clone());
        let listener = self.listener;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RiseServer {
            url: format!("http://{}", self.addr),
            config,
            state,
            task,
            data_dir: self.data_dir,
        }
    }
}

/// A running Rise server; stopped on drop.
pub struct RiseServer {
    pub url: String,
    pub config: Config,
    pub state: AppState,
    task: JoinHandle<()>,
    data_dir: TempDir,
}

impl RiseServer {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }
}

impl Drop for RiseServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
