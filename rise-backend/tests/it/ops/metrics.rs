//! `/metrics`, `/readyz` and `/healthz`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use rise_backend::registry::{
    CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
};

use super::{body_json, body_text, load_config, send, state};

/// The sum of the samples of `name` whose labels include all of `labels`, from a Prometheus
/// text exposition (0 when there is none).
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(app: &axum::Router) -> String {
    let r = send(app, None, "/metrics", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    body_text(r).await
}

#[tokio::test]
async fn exposition_has_the_expected_series_with_bounded_labels() {
    let (config, _dir) = load_config("", "[rate_limit]\nper_ip = { rate = \"1/h\", burst = 1 }\n");
    let app = rise_backend::http::app(state(&config).await);
    let before = scrape(&app).await;
    let healthz = [("route", "/healthz"), ("method", "GET"), ("status", "200")];
    let credentials_401 = [
        ("route", "/registry/credentials"),
        ("method", "GET"),
        ("status", "401"),
    ];
    let credentials_429 = [("route", "/registry/credentials"), ("status", "429")];
    let unmatched = [("route", "unmatched"), ("status", "404")];
    let rejected = [("scope", "client_ip")];

    for _ in 0..3 {
        send(&app, None, "/healthz", &[]).await;
    }
    let peer = Some("192.0.2.200:1");
    let first = send(&app, peer, "/registry/credentials?project=my-app", &[]).await;
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    let second = send(&app, peer, "/registry/credentials?project=my-app", &[]).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    send(&app, None, "/no/such/path/8c1f2a", &[]).await;
    rise_backend::metrics::record_issuance("default", "distribution", "issued");
    rise_backend::metrics::record_upstream_latency(
        "ecr",
        "GetAuthorizationToken",
        Duration::from_millis(30),
    );
    rise_backend::metrics::record_cache("ecr", true);
    rise_backend::metrics::record_cache("ecr", false);
    rise_backend::metrics::record_audit_commit(Duration::from_millis(2));

    let after = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let delta = sample(&after, name, labels) - sample(&before, name, labels);
        // Other tests in this binary record too: at least what this test did.
        assert!(
            delta >= by,
            "{name} {labels:?} grew by {delta}, expected at least {by}\n{after}"
        );
    };
    grew("rise_http_requests_total", &healthz, 3.0);
    grew("rise_http_requests_total", &credentials_401, 1.0);
    grew("rise_http_requests_total", &credentials_429, 1.0);
    grew("rise_http_requests_total", &unmatched, 1.0);
    grew(
        "rise_http_request_duration_seconds_count",
        &[("route", "/healthz"), ("method", "GET")],
        3.0,
    );
    grew("rise_rate_limit_rejections_total", &rejected, 1.0);
    grew(
        "rise_credential_issuances_total",
        &[
            ("registry", "default"),
            ("provider", "distribution"),
            ("result", "issued"),
        ],
        1.0,
    );
    grew(
        "rise_upstream_request_duration_seconds_count",
        &[("provider", "ecr"), ("operation", "GetAuthorizationToken")],
        1.0,
    );
    grew(
        "rise_cache_lookups_total",
        &[("provider", "ecr"), ("result", "hit")],
        1.0,
    );
    grew(
        "rise_cache_lookups_total",
        &[("provider", "ecr"), ("result", "miss")],
        1.0,
    );
    grew("rise_audit_commit_duration_seconds_count", &[], 1.0);
    // Latencies are histograms (aggregatable across replicas), not summaries.
    assert!(
        after.contains("rise_http_request_duration_seconds_bucket{"),
        "{after}"
    );
    assert!(
        after.contains("# TYPE rise_http_requests_total counter"),
        "{after}"
    );
    // The raw path never becomes a label.
    assert!(!after.contains("8c1f2a"), "raw path leaked into a label");
    assert!(
        !after.contains("project=my-app"),
        "query leaked into a label"
    );
}

/// A provider whose readiness is set by the test: readiness is about Rise calling `ready()` for
/// every registry, not about any real provider.
#[derive(Debug)]
struct ReadyAs(Result<(), String>);

#[async_trait]
impl RegistryProvider for ReadyAs {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn registry_url(&self) -> String {
        "registry.invalid".into()
    }
    fn max_ttl(&self) -> Duration {
        Duration::from_secs(60)
    }
    async fn issue(&self, _: &CredentialRequest) -> Result<IssuedCredential, ProviderError> {
        Err(ProviderError::Unsupported(
            "a readiness stand-in issues nothing".into(),
        ))
    }
    fn ready(&self) -> Result<(), String> {
        self.0.clone()
    }
}

#[tokio::test]
async fn readyz_calls_every_provider_and_hides_the_detail() {
    let (config, _dir) = load_config("", "");
    let mut state = state(&config).await;

    let app = rise_backend::http::app(state.clone());
    let r = send(&app, None, "/readyz", &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no registry configured"
    );
    assert_eq!(body_json(r).await["error"], "not_ready");

    let mut registries: HashMap<String, Arc<dyn RegistryProvider>> = HashMap::new();
    registries.insert("good".into(), Arc::new(ReadyAs(Ok(()))));
    state.registries = Arc::new(registries.clone());
    let app = rise_backend::http::app(state.clone());
    let r = send(&app, None, "/readyz", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = body_json(r).await;
    assert_eq!(body["status"], "ready");
    assert!(
        body["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "store")),
        "{body}"
    );

    registries.insert(
        "broken".into(),
        Arc::new(ReadyAs(Err(
            "key file /etc/rise/secret.pem unreadable".into()
        ))),
    );
    state.registries = Arc::new(registries);
    let app = rise_backend::http::app(state);
    let r = send(&app, None, "/readyz", &[]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_json(r).await;
    assert_eq!(body["error"], "not_ready");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("registry broken"), "{message}");
    assert!(!message.contains("registry good"), "{message}");
    assert!(!message.contains("secret.pem"), "detail leaked: {message}");

    let r = send(&app, None, "/healthz", &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "healthz only says the process is up"
    );
}

/// Without its database a replica is not ready: every credential needs its audit record.
#[tokio::test]
async fn readyz_fails_without_the_store() {
    let (config, _dir) = load_config("", "");
    let mut state = state(&config).await;
    let mut registries: HashMap<String, Arc<dyn RegistryProvider>> = HashMap::new();
    registries.insert("good".into(), Arc::new(ReadyAs(Ok(()))));
    state.registries = Arc::new(registries);
    state.audit.store().close().await;
    let app = rise_backend::http::app(state);
    let r = send(&app, None, "/readyz", &[]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_json(r).await;
    assert_eq!(body["error"], "not_ready");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("store"), "{message}");
    assert!(!message.contains("registry good"), "{message}");
}

/// Readiness waits for an OIDC issuer's keys: not ready while the issuer cannot be reached, ready
/// once the real oidc-provider has served them.
#[tokio::test]
async fn readyz_waits_for_the_issuers_keys() {
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        format!("http://{addr}")
    };
    let issuers = |issuer: &str| {
        format!(
            "[auth.issuers.corp]\nissuer = {issuer:?}\naudience = \"rise\"\ninsecure_http = true\n"
        )
    };
    let (config, _dir) = load_config("", &issuers(&unreachable));
    let mut unready = state(&config).await;
    let mut registries: HashMap<String, Arc<dyn RegistryProvider>> = HashMap::new();
    registries.insert("good".into(), Arc::new(ReadyAs(Ok(()))));
    unready.registries = Arc::new(registries.clone());
    let app = rise_backend::http::app(unready);
    let r = send(&app, None, "/readyz", &[]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_json(r).await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("issuer corp keys"), "{message}");

    let oidc = crate::support::oidc::OidcProvider::start().await;
    let (config, _dir) = load_config("", &issuers(oidc.issuer()));
    let mut state = state(&config).await;
    state.registries = Arc::new(registries);
    let app = rise_backend::http::app(state);
    // The first fetch runs in the background from start-up; poll until it has landed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(&app, None, "/readyz", &[]).await;
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready: {}",
            body_json(r).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
