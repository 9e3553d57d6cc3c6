//! Operations: rate limits over HTTP, metrics, readiness, and TLS with a real server.
//!
//! In-process router tests set the TCP peer per request with `ConnectInfo` (what
//! `into_make_service_with_connect_info` does for a real server); the TLS and wiring tests start
//! Rise for real on port 0, in-process through `server::run` or as the `rise-backend` binary.

mod http_limits;
mod metrics;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, header};
use rise_backend::config::{Config, Sources};
use rise_backend::http::AppState;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// A configuration loaded as Rise loads it: `server_extra` goes into `[server]`, `rest` after it.
/// The temp dir holds the file and the data directory.
pub fn load_config(server_extra: &str, rest: &str) -> (Config, TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("rise-ops-")
        .tempdir()
        .expect("temp dir");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n{server_extra}\n{rest}\n",
        data = dir.path().join("data").display().to_string(),
    );
    let path = dir.path().join("rise.toml");
    std::fs::write(&path, &text).expect("writing config");
    let config = Config::load(&Sources {
        files: vec![path],
        env: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("invalid test config: {e}\n{text}"));
    (config, dir)
}

pub async fn state(config: &Config) -> AppState {
    rise_backend::server::build_state(config)
        .await
        .unwrap_or_else(|e| panic!("building state: {e:#}"))
}

/// One request through the router, from TCP peer `peer` (`None`: no socket, as plain `oneshot`).
pub async fn send(
    app: &axum::Router,
    peer: Option<&str>,
    uri: &str,
    headers: &[(&str, &str)],
) -> Response<Body> {
    let mut request = Request::builder().uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().expect("peer address");
        request = request.extension(ConnectInfo(addr));
    }
    app.clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("router is infallible")
}

pub async fn body_json(response: Response<Body>) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Assert that a response from the served broker is `status` with the JSON error `code`.
#[track_caller]
pub fn expect_json_error(
    response: reqwest::Response,
    status: reqwest::StatusCode,
    code: &'static str,
) -> impl std::future::Future<Output = ()> {
    let location = std::panic::Location::caller();
    async move {
        assert_eq!(response.status(), status, "at {location}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["error"], code, "at {location}: {body}");
    }
}

/// Send `bytes` over `stream` as they are and read until the server closes the connection. A
/// server that refuses before reading everything closes with bytes unread, which resets the
/// connection: what arrived before the reset is the answer.
pub async fn raw_exchange<S>(mut stream: S, bytes: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A write cut short by the server's close still leaves its answer to read.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return answer,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return answer,
            Ok(Err(e)) => panic!("reading the answer: {e}; so far {answer:?}"),
            Err(_) => panic!("not closed within 20 s; so far {answer:?}"),
        }
    }
}

/// Assert that `answer` ends with one HTTP/1 response, `status` with the JSON error `code`
/// and the connection closed, as the HTTP parser's refusals are sent; returns what came before
/// it (earlier responses on the connection).
#[track_caller]
pub fn expect_json_refusal(answer: &[u8], status: u16, code: &str) -> String {
    let answer = String::from_utf8_lossy(answer).into_owned();
    let at = [format!("HTTP/1.1 {status} "), format!("HTTP/1.0 {status} ")]
        .iter()
        .filter_map(|line| answer.rfind(line.as_str()))
        .max()
        .unwrap_or_else(|| panic!("no {status}: {answer:?}"));
    let (head, body) = answer[at..]
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head: {answer:?}"));
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: application/json\r\n"),
        "{answer:?}"
    );
    assert!(head.contains("\r\nconnection: close"), "{answer:?}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "the body is exactly the announced length: {answer:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    let object = json.as_object().expect("a JSON object");
    assert_eq!(object.len(), 2, "{json}");
    assert_eq!(json["error"], code, "{json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    answer[..at].to_owned()
}

pub async fn body_text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
}

pub fn retry_after(response: &Response<Body>) -> Option<u64> {
    response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Rise served for real by `server::run` on 127.0.0.1:0 (HTTPS when the config has
/// `[server.tls]`); stopped on drop.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    pub async fn start(config: Config) -> Self {
        let state = state(&config).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            rise_backend::server::run(listener, &config.server, state, async {
                let _ = stopped.await;
            })
            .await
        });
        Served {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Stop serving and return how `run` ended.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(40), &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(anyhow::anyhow!("server task failed: {join}")),
            Err(_) => Err(anyhow::anyhow!("server did not stop")),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client that trusts only the given CA certificates, reports the server's certificate
/// (`TlsInfo`) and opens a new connection per request (so a reloaded certificate shows).
pub fn https_client(cas: &[&Path]) -> reqwest::Client {
    let certs = cas.iter().map(|p| {
        let pem = std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        reqwest::Certificate::from_pem(&pem).expect("CA certificate")
    });
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(certs)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("building a reqwest client")
}

/// The DER of the first certificate in a PEM file (the leaf of `cert.pem`).
pub fn leaf_der(cert_pem: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(cert_pem)
        .expect("reading certificate")
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec()
}

/// The certificate the server presented for `response`.
pub fn presented_der(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

/// Whether the server closes `stream` before `deadline` (a guard, not a timing claim): it
/// reads until end of file or a reset, ignoring whatever the server sends first.
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
