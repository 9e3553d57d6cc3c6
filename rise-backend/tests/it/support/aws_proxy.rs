//! A recording HTTP proxy in front of moto: it forwards every request unchanged and records which
//! AWS operation it was, the access key that signed it and its body. moto does not keep a call
//! log, and it stores session policies without evaluating them, so tests read what Rise sent here.
//!
//! Operations are named as on the wire: the `X-Amz-Target` suffix for JSON protocols (ECR,
//! Secrets Manager: `GetAuthorizationToken`, `GetSecretValue`), the `Action` form field for the
//! query protocol (STS: `AssumeRole`).
//!
//! The proxy can also hold every request for a while before forwarding it, so that concurrent
//! callers overlap in time. Bodies are recorded as sent; no test sends a secret through the proxy
//! (STS and ECR request bodies carry none: the secret key only signs).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::process::http_client;

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub operation: String,
    /// The access key id from the SigV4 `Authorization` header.
    pub access_key_id: String,
    pub body: String,
}

impl RecordedCall {
    /// A form field of a query-protocol (STS) request.
    pub fn form_field(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    calls: Arc<Mutex<Vec<RecordedCall>>>,
    delay: Arc<Mutex<Duration>>,
}

/// A running proxy; stops on drop.
pub struct RecordingProxy {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<RecordedCall>>>,
    delay: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    /// Forward to `upstream` (e.g. moto's endpoint).
    pub async fn start(upstream: &str) -> Self {
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: http_client(),
            calls: Arc::default(),
            delay: Arc::default(),
        };
        let calls = state.calls.clone();
        let delay = state.delay.clone();
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the recording proxy");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            calls,
            delay,
            task,
        }
    }

    /// The endpoint URL to give Rise instead of moto's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Hold each request this long before forwarding it.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().expect("delay lock") = delay;
    }

    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// The recorded calls of one operation, in order.
    pub fn calls_of(&self, operation: &str) -> Vec<RecordedCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.operation == operation)
            .collect()
    }

    pub fn count(&self, operation: &str) -> usize {
        self.calls_of(operation).len()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return (StatusCode::BAD_REQUEST, "body too large").into_response();
    };
    let operation = operation_of(&parts.headers, &body);
    let access_key_id = access_key_of(&parts.headers);
    state.calls.lock().expect("calls lock").push(RecordedCall {
        operation,
        access_key_id,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let delay = *state.delay.lock().expect("delay lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = parts.headers.clone();
    for hop in ["host", "content-length", "transfer-encoding", "connection"] {
        headers.remove(hop);
    }
    let upstream = state
        .http
        .request(parts.method, format!("{}{path}", state.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(response) => {
            let status = response.status();
            let mut headers = response.headers().clone();
            for hop in ["content-length", "transfer-encoding", "connection"] {
                headers.remove(hop);
            }
            let bytes = response.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Err(err) => (StatusCode::BAD_GATEWAY, format!("proxy: {err}")).into_response(),
    }
}

fn operation_of(headers: &HeaderMap, body: &Bytes) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_owned();
    }
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sts/aws4_request, ...` -> `AKID`.
fn access_key_of(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|v| v.split('/').next())
        .unwrap_or_default()
        .to_owned()
}
