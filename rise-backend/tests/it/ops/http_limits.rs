//! Rate limits as callers see them: 429 with `Retry-After` and the JSON error body.

use std::time::Duration;

use axum::http::StatusCode;
use rise_backend::http::ratelimit::LimitScope;
use rise_backend::http::{ApiError, RateLimited};

use super::{
    Served, body_json, closed_by_server, expect_json_error, expect_json_refusal, load_config,
    raw_exchange, retry_after, send, state,
};

const CREDENTIALS: &str = "/registry/credentials?project=my-app";

/// The audit records of `subject` whose reason is `reason`, oldest first.
async fn audited(
    state: &rise_backend::http::AppState,
    subject: &str,
    reason: &str,
) -> Vec<rise_backend::audit::RecordFields> {
    let filter = rise_backend::audit::AuditFilter {
        subject: Some(subject.to_owned()),
        limit: 1000,
        ..Default::default()
    };
    state
        .audit
        .query(&filter)
        .await
        .expect("reading the audit log")
        .into_iter()
        .map(|r| r.fields)
        .filter(|f| f.reason == reason)
        .collect()
}
const BAD_TOKEN: (&str, &str) = ("authorization", "Bearer not.a.valid-token");

/// Limits that leave only the one under test within reach.
fn limits(per_ip: &str, auth_failures: &str) -> String {
    format!(
        "[rate_limit]\nper_ip = {per_ip}\nauth_failures_per_ip = {auth_failures}\nper_subject = {{ rate = 1, burst = 2 }}\n"
    )
}

#[tokio::test]
async fn over_the_address_limit_is_429_with_retry_after_and_json() {
    let (config, _dir) = load_config(
        "",
        &limits(
            "{ rate = \"1/min\", burst = 3 }",
            "{ rate = 100, burst = 1000 }",
        ),
    );
    let app = rise_backend::http::app(state(&config).await);
    let peer = Some("192.0.2.10:40000");
    for i in 0..3 {
        let r = send(&app, peer, CREDENTIALS, &[]).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "request {i} is within the burst"
        );
    }
    let r = send(&app, peer, CREDENTIALS, &[]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        retry_after(&r),
        Some(60),
        "1/min: the next request conforms in a minute"
    );
    let decision = r.extensions().get::<RateLimited>().cloned();
    assert_eq!(
        decision.map(|d| d.scope),
        Some(LimitScope::ClientIp),
        "the decision travels with the response, for audit"
    );
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body = body_json(r).await;
    assert_eq!(body["error"], "rate_limited");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too many requests from this address")
            && message.contains("retry after 60 s"),
        "{message}"
    );

    // Another address has its own bucket.
    let r = send(&app, Some("192.0.2.11:40000"), CREDENTIALS, &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Probes are never limited.
    for _ in 0..5 {
        let r = send(&app, peer, "/healthz", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Without a socket (no ConnectInfo) the address is unknown: address limits do not apply.
    for _ in 0..5 {
        let r = send(&app, None, CREDENTIALS, &[]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn failed_authentications_from_one_address_are_limited() {
    let (config, _dir) = load_config(
        "",
        &limits(
            "{ rate = 100, burst = 1000 }",
            "{ rate = \"1/min\", burst = 3 }",
        ),
    );
    let app = rise_backend::http::app(state(&config).await);
    let guesser = Some("198.51.100.7:5000");
    for i in 0..3 {
        let r = send(&app, guesser, CREDENTIALS, &[BAD_TOKEN]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    // The next guess is refused before its token is even looked at.
    let r = send(&app, guesser, CREDENTIALS, &[BAD_TOKEN]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), Some(60));
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "a 429 is no challenge"
    );
    let body = body_json(r).await;
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too many failed authentications"),
        "{body}"
    );
    // Refusals do not extend the lockout.
    for _ in 0..10 {
        let r = send(&app, guesser, CREDENTIALS, &[BAD_TOKEN]).await;
        assert_eq!(retry_after(&r), Some(60));
    }
    // Another IPv4 address is unaffected.
    let r = send(&app, Some("198.51.100.8:5000"), CREDENTIALS, &[BAD_TOKEN]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // IPv6 clients are counted per /64: rotating the interface identifier does not help.
    for i in 0..3 {
        let peer = format!("[2001:db8:7:7::{i:x}]:5000");
        let r = send(&app, Some(&peer), CREDENTIALS, &[BAD_TOKEN]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = send(
        &app,
        Some("[2001:db8:7:7::ffff]:5000"),
        CREDENTIALS,
        &[BAD_TOKEN],
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn proxy_header_is_honoured_only_from_trusted_proxies() {
    let (config, _dir) = load_config(
        "trusted_proxy_header = \"x-forwarded-for\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        &limits(
            "{ rate = \"1/min\", burst = 1 }",
            "{ rate = 100, burst = 1000 }",
        ),
    );
    let app = rise_backend::http::app(state(&config).await);
    let proxy = Some("127.0.0.1:30000");
    let xff = |v| [("x-forwarded-for", v)];

    // Through the trusted proxy, each client has its own bucket.
    let r = send(&app, proxy, CREDENTIALS, &xff("203.0.113.1")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(&app, proxy, CREDENTIALS, &xff("203.0.113.1")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "same client");
    let r = send(&app, proxy, CREDENTIALS, &xff("203.0.113.2")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "another client");
    // A client cannot escape by prepending an address: the right-most untrusted one counts.
    let r = send(&app, proxy, CREDENTIALS, &xff("198.51.100.99, 203.0.113.1")).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "spoofed prefix ignored"
    );

    // From an untrusted peer the header is ignored: the peer is the client.
    let direct = Some("192.0.2.50:30000");
    let r = send(&app, direct, CREDENTIALS, &xff("203.0.113.3")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(&app, direct, CREDENTIALS, &xff("203.0.113.4")).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "rotating the header from an untrusted peer changes nothing"
    );
    // And what it claimed did not spend the claimed address's bucket.
    let r = send(&app, proxy, CREDENTIALS, &xff("203.0.113.3")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn caller_and_project_limits() {
    let (config, _dir) = load_config(
        "",
        "[rate_limit]\nper_subject = { rate = \"1/min\", burst = 2 }\nper_project = { rate = \"1/min\", burst = 3 }\n",
    );
    let state = state(&config).await;
    let limits = &state.rate_limits;
    let alice = |p| limits.check_caller("local", "alice", Some(p));
    assert!(alice("my-app").await.is_ok());
    assert!(alice("my-app").await.is_ok());
    let denied = alice("my-app").await.expect_err("over the subject's burst");
    assert_eq!(denied.scope, LimitScope::Subject);
    assert_eq!(denied.retry_after_secs(), 60);
    // The same subject name from another issuer is another caller.
    assert!(
        limits
            .check_caller("github", "alice", Some("my-app"))
            .await
            .is_ok()
    );
    // my-app has had three callers' requests now: the project's burst is spent.
    let denied = limits
        .check_caller("local", "bob", Some("my-app"))
        .await
        .expect_err("over the project's burst");
    assert_eq!(denied.scope, LimitScope::Project);
    assert!(
        limits
            .check_caller("local", "bob", Some("other"))
            .await
            .is_ok()
    );

    // What a handler returns for it.
    let response = axum::response::IntoResponse::into_response(ApiError::from(denied));
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), Some(60));
    assert_eq!(
        response.extensions().get::<RateLimited>().map(|d| d.scope),
        Some(LimitScope::Project)
    );
    let body = body_json(response).await;
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too many requests for this project"),
        "{body}"
    );
}

#[tokio::test]
async fn disabled_limits_never_refuse() {
    let (config, _dir) = load_config(
        "",
        "[rate_limit]\nenabled = false\nper_ip = { rate = \"1/h\", burst = 1 }\nauth_failures_per_ip = { rate = \"1/h\", burst = 1 }\nper_subject = { rate = \"1/h\", burst = 1 }\n",
    );
    let state = state(&config).await;
    let app = rise_backend::http::app(state.clone());
    for _ in 0..5 {
        let r = send(&app, Some("192.0.2.1:1"), CREDENTIALS, &[BAD_TOKEN]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            state
                .rate_limits
                .check_caller("local", "alice", None)
                .await
                .is_ok()
        );
    }
}

/// A real server: `serve` passes the TCP peer to the limits (`ConnectInfo`), so a client on
/// 127.0.0.1 is limited by its address.
#[tokio::test]
async fn real_server_limits_by_peer_address() {
    let (config, _dir) = load_config(
        "",
        &limits(
            "{ rate = \"1/min\", burst = 2 }",
            "{ rate = 100, burst = 1000 }",
        ),
    );
    let served = Served::start(config).await;
    let client = crate::support::process::http_client();
    let url = format!("http://{}{CREDENTIALS}", served.addr);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = client.get(&url).send().await.expect("request");
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429]);
    let r = client
        .get(format!("http://{}/healthz", served.addr))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(40), served.shutdown())
        .await
        .expect("stops")
        .expect("graceful shutdown");
}

/// Through the endpoint with real local-issuer tokens: the caller's bucket is drawn after
/// authentication and before the project is even looked up, so guessing project names is
/// limited too; another caller is unaffected.
#[tokio::test]
async fn a_caller_over_its_limit_gets_429_from_the_endpoint() {
    let rise = crate::support::app::TestRise::from_toml(
        "[rate_limit]\nper_subject = { rate = \"1/min\", burst = 2 }\n",
    )
    .await;
    let alice = rise.token("alice", &[]);
    for project in ["guess-one", "guess-two"] {
        let (status, body) = rise
            .get(
                &format!("/registry/credentials?project={project}"),
                Some(&alice),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (status, body) = rise
        .get("/registry/credentials?project=guess-three", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too many requests for this caller"),
        "{body}"
    );
    let bob = rise.token("bob", &[]);
    let (status, _) = rise
        .get("/registry/credentials?project=guess-one", Some(&bob))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob has his own bucket");

    let denied = audited(&rise.state, "alice", "rate_limited").await;
    assert_eq!(denied.len(), 1, "the 429 is audited once: {denied:?}");
    assert_eq!(denied[0].result, "denied");
    assert_eq!(denied[0].operation, "credentials");
    assert_eq!(denied[0].project.as_deref(), Some("guess-three"));
}

/// `/token` draws from the same caller bucket as `/registry/credentials` (a grant counts as the
/// caller it was issued to), and its failed Basic authentications count against the address.
#[tokio::test]
async fn token_endpoint_shares_the_callers_bucket_and_counts_bad_passwords() {
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;

    let rise = crate::support::app::TestRise::from_toml(
        r#"
[registry]
type = "distribution"
url = "127.0.0.1:5000"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
actions = ["push", "pull"]

[rate_limit]
per_subject = { rate = "1/min", burst = 3 }
auth_failures_per_ip = { rate = "1/min", burst = 2 }
"#,
    )
    .await;
    let alice = rise.token("alice", &[]);
    let (status, body) = rise
        .get("/registry/credentials?project=my-app", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let basic = |user: &str, password: &str| {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    };
    let grant = basic(
        body["credentials"]["username"].as_str().unwrap_or_default(),
        body["credentials"]["password"].as_str().unwrap_or_default(),
    );
    let token = |authorization: String, peer: &str| {
        let addr: std::net::SocketAddr = peer.parse().expect("peer");
        Request::get("/token?service=rise-registry&scope=repository:my-app:pull")
            .header("authorization", authorization)
            .extension(axum::extract::ConnectInfo(addr))
            .body(Body::empty())
            .expect("request")
    };
    let peer = "192.0.2.80:1000";
    for _ in 0..2 {
        let (status, body) = rise.send(token(grant.clone(), peer)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = rise.send(token(grant.clone(), peer)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let denied = audited(&rise.state, "alice", "rate_limited").await;
    assert_eq!(denied.len(), 1, "the 429 is audited once: {denied:?}");
    assert_eq!(denied[0].result, "denied");
    assert_eq!(denied[0].client_ip.as_deref(), Some("192.0.2.80"));

    // Wrong passwords from one address: two 401s, then 429 before the password is looked at.
    let guesser = "198.51.100.80:1000";
    for _ in 0..2 {
        let (status, _) = rise.send(token(basic("x", "guess"), guesser)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = rise.send(token(basic("x", "guess"), guesser)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("failed authentications"),
        "{body}"
    );
}

/// Behind a trusted proxy the audit log records the client the proxy reports, not the proxy; a
/// forwarding header from anyone else is ignored.
#[tokio::test]
async fn audit_records_the_client_behind_a_trusted_proxy() {
    use axum::body::Body;
    use axum::http::Request;

    let rise = crate::support::app::TestRise::from_toml(
        // Continues the `[server]` table the helper starts.
        "trusted_proxy_header = \"x-forwarded-for\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let request = |who: &str, peer: &str, forwarded: &str| {
        let addr: std::net::SocketAddr = peer.parse().expect("peer");
        Request::get("/registry/credentials?project=nope")
            .header("authorization", format!("Bearer {}", rise.token(who, &[])))
            .header("x-forwarded-for", forwarded)
            .extension(axum::extract::ConnectInfo(addr))
            .body(Body::empty())
            .expect("request")
    };
    let (status, _) = rise
        .send(request(
            "carol",
            "127.0.0.1:9000",
            "198.51.100.1, 203.0.113.9",
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = rise
        .send(request("dave", "192.0.2.44:9000", "203.0.113.9"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let carol = audited(&rise.state, "carol", "project_not_found").await;
    assert_eq!(carol.len(), 1);
    assert_eq!(carol[0].client_ip.as_deref(), Some("203.0.113.9"));
    let dave = audited(&rise.state, "dave", "project_not_found").await;
    assert_eq!(dave.len(), 1);
    assert_eq!(dave[0].client_ip.as_deref(), Some("192.0.2.44"));
}

/// A client that never finishes its headers (slowloris), or sends nothing at all, is cut off
/// after `server.header_read_timeout`; a normal client on the same server is served.
#[tokio::test]
async fn connections_that_do_not_send_their_headers_are_closed() {
    use tokio::io::AsyncWriteExt;
    let (config, _dir) = load_config("header_read_timeout = \"500ms\"", "");
    let served = Served::start(config).await;
    let mut trickling = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    trickling
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let mut silent = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    let guard = Duration::from_secs(20);
    assert!(
        closed_by_server(&mut trickling, guard).await,
        "half-sent headers are cut off"
    );
    assert!(
        closed_by_server(&mut silent, guard).await,
        "a silent connection is cut off"
    );

    still_serves_then_stops(served).await;
}

/// A request's head may take up to `MAX_REQUEST_HEAD_BYTES`: a 20 KiB bearer token is read and
/// answered in JSON, while a head that fills the bound unfinished is refused with a JSON 431 and
/// the connection closed (before, hyper buffered about 400 KiB per connection).
#[tokio::test]
async fn request_heads_are_bounded() {
    let (config, _dir) = load_config("header_read_timeout = \"5s\"", "");
    let served = Served::start(config).await;
    let r = crate::support::process::http_client()
        .get(format!(
            "http://{}/registry/credentials?project=my-app",
            served.addr
        ))
        .bearer_auth("a".repeat(20 * 1024))
        .send()
        .await
        .expect("request");
    expect_json_error(r, reqwest::StatusCode::UNAUTHORIZED, "malformed_token").await;

    // Exactly the bound, and no end of headers: the server has read every byte when it refuses,
    // so it closes with nothing unread (no reset that could drop its answer).
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
    head.resize(rise_backend::server::MAX_REQUEST_HEAD_BYTES, b'a');
    let answer = raw_exchange(connect(&served).await, &head).await;
    let before = expect_json_refusal(&answer, 431, "request_head_too_large");
    assert_eq!(before, "", "one answer only");

    // Complete heads over the bound, sent after a request on the same connection (where hyper's
    // read buffer has grown): refused too, at the bound plus at most one read chunk (8 KiB).
    for padding in [80_000, 130_000] {
        let mut pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ");
        pipelined.resize(pipelined.len() + padding, b'a');
        pipelined.extend_from_slice(b"\r\n\r\n");
        let answer = raw_exchange(connect(&served).await, &pipelined).await;
        let before = expect_json_refusal(&answer, 431, "request_head_too_large");
        assert!(before.ends_with("\r\n\r\nok"), "{padding}: {before:?}");
    }
    served.shutdown().await.expect("graceful shutdown");
}

/// Bytes that are not an HTTP/1.1 request are refused by the HTTP parser before any routing;
/// the refusal still carries the JSON error body, and the connection is closed. A request
/// served before the bad bytes on the same connection keeps its own answer.
#[tokio::test]
async fn requests_that_are_not_http_get_json_refusals() {
    let (config, _dir) = load_config("", "");
    let served = Served::start(config).await;
    let refused_before = parse_refusals(&served, 400).await;
    for not_http in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\na header without a colon\r\n\r\n",
        b"GET /health\x01z HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        // The HTTP/2 preface's start, then something else: read as HTTP/1.
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    ] {
        let answer = raw_exchange(connect(&served).await, not_http).await;
        let before = expect_json_refusal(&answer, 400, "bad_request");
        assert_eq!(before, "", "{not_http:?}: one answer only");
    }
    let pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n";
    let answer = raw_exchange(connect(&served).await, pipelined).await;
    let before = expect_json_refusal(&answer, 400, "bad_request");
    assert!(
        before.starts_with("HTTP/1.1 200 OK\r\n") && before.ends_with("\r\n\r\nok"),
        "{before:?}"
    );
    // On an HTTP/1.0 connection kept alive, hyper answers in HTTP/1.0.
    let http10 = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nBAD\r\n\r\n";
    let answer = raw_exchange(connect(&served).await, http10).await;
    let before = expect_json_refusal(&answer, 400, "bad_request");
    assert!(before.starts_with("HTTP/1.0 200 OK\r\n"), "{before:?}");
    // Counted, though never routed (other tests in this process may add their own).
    let refused = parse_refusals(&served, 400).await - refused_before;
    assert!(refused >= 8, "{refused} counted");
    // And the server goes on serving.
    still_serves_then_stops(served).await;
}

/// `rise_http_parse_refusals_total{status}` as the served broker reports it (0 before any).
async fn parse_refusals(served: &Served, status: u16) -> u64 {
    let metrics = crate::support::process::http_client()
        .get(format!("http://{}/metrics", served.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let series = format!("rise_http_parse_refusals_total{{status=\"{status}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// A new client is served `/healthz`; then the server stops gracefully.
async fn still_serves_then_stops(served: Served) {
    let r = crate::support::process::http_client()
        .get(format!("http://{}/healthz", served.addr))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    served.shutdown().await.expect("graceful shutdown");
}

async fn connect(served: &Served) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect")
}

/// Over HTTP/2 (here h2c with prior knowledge, as behind a proxy) the server allows 32
/// concurrent streams per connection, not hyper's 200: with 64 KiB header lists, one connection
/// holds at most 2 MiB of headers.
#[tokio::test]
async fn http2_connections_get_32_concurrent_streams() {
    let (config, _dir) = load_config("", "");
    let served = Served::start(config).await;
    let tcp = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = axum::http::Request::get(format!("http://{}/healthz", served.addr))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("sent");
    let response = response.await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    // The server's SETTINGS arrived before its answer.
    assert_eq!(client.current_max_send_streams(), 32);
    drop(client);
    driver.abort();
    served.shutdown().await.expect("graceful shutdown");
}

/// Through the real server, whose HTTP/1.1 read buffer is bounded at 64 KiB: a 3 MiB body is
/// read in pieces up to the 2 MiB limit and refused with the JSON 413.
#[tokio::test]
async fn a_body_over_the_limit_through_the_real_server_is_a_json_413() {
    let (config, _dir) = load_config("", "");
    let served = Served::start(config).await;
    let big = format!("grant_type=password&password=x&{}", "a".repeat(3 << 20));
    let r = crate::support::process::http_client()
        .post(format!("http://{}/token", served.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .expect("request");
    expect_json_error(
        r,
        reqwest::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    served.shutdown().await.expect("graceful shutdown");
}

/// A client that sends its headers on time and then trickles its body gets 408 `request_timeout`
/// (JSON) once `server.header_read_timeout` has passed since the headers, and the connection is
/// closed; before, a byte every few seconds held it open indefinitely.
#[tokio::test]
async fn a_trickling_body_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (config, _dir) = load_config("header_read_timeout = \"500ms\"", "");
    let served = Served::start(config).await;
    let mut trickling = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    trickling
        .write_all(
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ngrant_type=",
        )
        .await
        .expect("headers and the start of a body");
    // Keep trickling while the server decides; a byte every 100 ms is far from the deadline's
    // granularity, so only the total time can end it.
    let reply = tokio::time::timeout(Duration::from_secs(20), async {
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                read = trickling.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return reply,
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let _ = trickling.write_all(b"p").await;
                }
            }
        }
    })
    .await
    .expect("the server answers and closes within the guard");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("500ms")),
        "{body}"
    );
    served.shutdown().await.expect("graceful shutdown");
}

/// A body that announces no length (HTTP/2, or chunked) gets the same deadline, and the body is
/// not read before the request is routed and limited: a request refused first (here, 405 for
/// `POST /healthz`) answers at once, whatever its body does.
#[tokio::test]
async fn a_body_without_a_length_has_the_same_deadline_and_is_read_only_by_its_handler() {
    use tower::ServiceExt;
    let (config, _dir) = load_config("header_read_timeout = \"300ms\"", "");
    let app = rise_backend::http::app(state(&config).await);
    // A byte every 50 ms, for ever: only the total deadline can end the read.
    let trickle = || {
        axum::body::Body::from_stream(futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"p")),
                (),
            ))
        }))
    };
    let request = |uri: &str| {
        axum::http::Request::post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(trickle())
            .expect("request")
    };
    let answered = tokio::time::timeout(
        Duration::from_secs(20),
        app.clone().oneshot(request("/token")),
    )
    .await
    .expect("answered within the guard")
    .expect("router is infallible");
    assert_eq!(answered.status(), StatusCode::REQUEST_TIMEOUT);
    let body = body_json(answered).await;
    assert_eq!(body["error"], "request_timeout", "{body}");
    let refused = tokio::time::timeout(Duration::from_secs(20), app.oneshot(request("/healthz")))
        .await
        .expect("answered within the guard")
        .expect("router is infallible");
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// `GET path` over an open HTTP/1.1 connection, kept alive: the response's status line and body,
/// or `None` when the server closes the connection without answering.
async fn get_over(stream: &mut tokio::net::TcpStream, path: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .expect("a Content-Length");
            if body.len() >= length {
                let status = head.lines().next().unwrap_or_default().to_owned();
                return Some((status, body[..length].to_owned()));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer and no close within 10 s: {got:?}"),
        }
    }
}

/// With `server.max_connections` connections open, one more is closed on arrival without an
/// answer, while the open ones are still served; the refusal is counted in
/// `rise_connections_refused_total`, and once a connection closes a new one is served again.
#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_the_open_ones_served() {
    let (config, _dir) = load_config("max_connections = 2\nheader_read_timeout = \"60s\"", "");
    let served = Served::start(config).await;
    let connect = || tokio::net::TcpStream::connect(served.addr);
    let mut first = connect().await.expect("connect");
    let mut second = connect().await.expect("connect");
    for open in [&mut first, &mut second] {
        let (status, body) = get_over(open, "/healthz").await.expect("served");
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(body, "ok");
    }

    // The kernel completes the handshake; the server then closes it unanswered.
    let mut third = connect().await.expect("the kernel accepts");
    assert_eq!(get_over(&mut third, "/healthz").await, None);

    let (status, metrics) = get_over(&mut second, "/metrics").await.expect("served");
    assert!(status.contains(" 200 "), "{status}");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rise_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal counted:\n{metrics}"));
    assert!(refused >= 1, "{refused}");

    // A slot frees once the server sees a connection close.
    drop(first);
    let mut served_again = false;
    for _ in 0..50 {
        let mut fourth = connect().await.expect("connect");
        if let Some((status, _)) = get_over(&mut fourth, "/healthz").await {
            assert!(status.contains(" 200 "), "{status}");
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_again, "a freed slot serves a new connection");
    drop(second);
    served.shutdown().await.expect("graceful shutdown");
}

/// `server.max_connections = 0` would refuse every connection: refused when loading, saying what
/// to give instead.
#[test]
fn max_connections_of_zero_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rise.toml");
    std::fs::write(&path, "[server]\nmax_connections = 0\n").expect("config");
    let err = rise_backend::config::Config::load(&rise_backend::config::Sources {
        files: vec![path],
        env: Vec::new(),
    })
    .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("server.max_connections must be at least 1"),
        "{message}"
    );
    assert!(
        message.contains("leave it out for the default"),
        "{message}"
    );
}
