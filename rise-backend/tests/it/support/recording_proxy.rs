//! A tiny HTTP reverse proxy that counts the requests it forwards, per path: put it between Rise
//! and a real server to assert how often Rise calls it (e.g. JWKS fetches) without trusting any
//! counter inside Rise. GET only; the upstream's status, body and `Content-Type` pass through,
//! and an unreachable upstream is a 502.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;

struct Shared {
    upstream: String,
    http: reqwest::Client,
    counts: Mutex<HashMap<String, u64>>,
}

/// A running proxy; stops with the test's runtime.
pub struct RecordingProxy {
    url: String,
    shared: Arc<Shared>,
}

impl RecordingProxy {
    /// Forward to `upstream` (`http://host:port`, no trailing slash).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the recording proxy");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("proxy has an address")
        );
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: super::process::http_client(),
            counts: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many requests for `path` (without query) were forwarded or attempted.
    pub fn count(&self, path: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .expect("counts lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn forward(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    *shared
        .counts
        .lock()
        .expect("counts lock")
        .entry(uri.path().to_owned())
        .or_default() += 1;
    let target = format!(
        "{}{}",
        shared.upstream,
        uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let reply = async {
        let upstream = shared.http.get(&target).send().await?;
        let status = upstream.status();
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let body = upstream.bytes().await?;
        Ok::<_, reqwest::Error>((status, content_type, body))
    };
    let mut response = Response::new(Body::empty());
    match reply.await {
        Ok((status, content_type, body)) => {
            *response.status_mut() = status;
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            *response.body_mut() = Body::from(body);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_GATEWAY,
    }
    response
}
