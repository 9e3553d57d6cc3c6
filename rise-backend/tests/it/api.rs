//! The HTTP surface of `GET /registry/credentials`, in-process: the seed's response contract, every
//! refusal's status and JSON body, and policy decisions. The provider is the real distribution
//! token server (its registry is not needed to mint a grant).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::support::app::TestRise;

const CONFIG: &str = r#"
[registry]
type = "distribution"
url = "127.0.0.1:5000"

[registries.second]
type = "distribution"
url = "127.0.0.1:5001"
service = "second-registry"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
[[projects.my-app.allow]]
issuer = "local"
groups = ["readers"]
actions = ["pull"]

[projects.long-app]
ttl = "48h"
[[projects.long-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]

[projects.other-app]
registry = "second"
repository = "team/other"
ttl = "10m"
[[projects.other-app.allow]]
issuer = "local"
subject = "ci-*"
actions = ["push"]
"#;

async fn rise() -> TestRise {
    TestRise::from_toml(CONFIG).await
}

/// Assert the JSON error body: the code, and a message that contains `message_part`.
fn check_error(got: &(StatusCode, Value), status: StatusCode, code: &str, message_part: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "body: {body}");
    assert_eq!(body["error"], code, "body: {body}");
    let message = body["message"].as_str().expect("message is a string");
    assert!(
        message.contains(message_part),
        "message {message:?} lacks {message_part:?}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "an error body has exactly `error` and `message`: {body}"
    );
}

#[tokio::test]
async fn seed_response_contract() {
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let (status, body) = rise
        .get("/registry/credentials?project=my-app", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The seed's fields, with their types.
    let creds = &body["credentials"];
    assert_eq!(creds["registry_url"], "127.0.0.1:5000");
    assert!(creds["username"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(creds["password"].as_str().is_some_and(|p| p.len() > 20));
    let expires_in = creds["expires_in"]
        .as_u64()
        .expect("expires_in is a number");
    assert!(
        (3590..=3600).contains(&expires_in),
        "default lifetime is 1h, got {expires_in}"
    );
    assert_eq!(body["repository"], "my-app");

    // The additive facts.
    assert_eq!(body["project"], "my-app");
    assert_eq!(body["registry"], "default");
    assert_eq!(body["image"], "127.0.0.1:5000/my-app");
    assert_eq!(
        body["scope"],
        json!({"repository": "my-app", "actions": ["pull", "push"]})
    );
    assert_eq!(body["repository_scoped"], true);
    assert!(body["revocable"].is_boolean());
    let expires_at = body["expires_at"].as_str().expect("expires_at");
    assert!(humantime::parse_rfc3339(expires_at).is_ok(), "{expires_at}");
    assert!(
        body.get("warnings").is_none(),
        "no warnings for a scoped, fresh grant: {body}"
    );
}

#[tokio::test]
async fn caller_may_ask_for_less() {
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let (status, body) = rise
        .get(
            "/registry/credentials?project=my-app&actions=pull&ttl=15m",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"]["actions"], json!(["pull"]));
    let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
    assert!((890..=900).contains(&expires_in), "{expires_in}");
}

/// A caller's `ttl` only shortens: asking for more than the project's lifetime (here the
/// server's default, 1 h) gets that lifetime, and a warning that says whose limit it is.
#[tokio::test]
async fn a_caller_cannot_ask_for_longer_than_the_project_grants() {
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let (status, body) = rise
        .get("/registry/credentials?project=my-app&ttl=12h", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    let warning = warnings[0].as_str().expect("text");
    assert!(
        warning.starts_with("asked for ttl 12h, but this credential expires in 59m"),
        "{warning}"
    );
    assert!(
        warning.ends_with("project my-app grants at most 1h (its ttl)"),
        "{warning}"
    );

    // A project's own ttl bounds the same way.
    let ci = rise.token("ci-build", &[]);
    let (status, body) = rise
        .get("/registry/credentials?project=other-app&ttl=1h", Some(&ci))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
    assert!((590..=600).contains(&expires_in), "{expires_in}");
}

/// A project may allow more than the registry grants: capped at its `max_ttl` (12 h by
/// default), and said so.
#[tokio::test]
async fn a_longer_ttl_than_the_registry_grants_is_capped_with_a_warning() {
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let (status, body) = rise
        .get(
            "/registry/credentials?project=long-app&ttl=48h",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
    assert!((43_190..=43_200).contains(&expires_in), "{expires_in}");
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    let warning = warnings[0].as_str().expect("text");
    assert!(
        warning.starts_with("asked for ttl 2days, but this credential expires in 11h 59m"),
        "{warning}"
    );
    assert!(
        warning.ends_with("registry default issues none longer than 12h (its max_ttl)"),
        "{warning}"
    );

    // Within the cap: no warning.
    let (_, body) = rise
        .get(
            "/registry/credentials?project=long-app&ttl=12h",
            Some(&token),
        )
        .await;
    assert!(body.get("warnings").is_none(), "{body}");
}

#[tokio::test]
async fn default_actions_are_what_the_policy_allows() {
    let rise = rise().await;
    let token = rise.token("rita", &["readers"]);
    let (status, body) = rise
        .get("/registry/credentials?project=my-app", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"]["actions"], json!(["pull"]));
}

#[tokio::test]
async fn project_on_another_registry_with_its_own_repository_and_ttl() {
    let rise = rise().await;
    let token = rise.token("ci-build", &[]);
    let (status, body) = rise
        .get("/registry/credentials?project=other-app", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["registry"], "second");
    assert_eq!(body["credentials"]["registry_url"], "127.0.0.1:5001");
    assert_eq!(body["repository"], "team/other");
    assert_eq!(body["image"], "127.0.0.1:5001/team/other");
    assert_eq!(
        body["scope"]["actions"],
        json!(["pull", "push"]),
        "push implies pull"
    );
    let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
    assert!(
        (590..=600).contains(&expires_in),
        "project ttl is 10m, got {expires_in}"
    );
}

#[tokio::test]
async fn policy_denials_name_project_action_and_subject() {
    let rise = rise().await;
    let reader = rise.token("rita", &["readers"]);
    check_error(
        &rise
            .get(
                "/registry/credentials?project=my-app&actions=push",
                Some(&reader),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "project my-app: push denied for subject rita (issuer local)",
    );
    let stranger = rise.token("eve", &["ops"]);
    check_error(
        &rise
            .get("/registry/credentials?project=my-app", Some(&stranger))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "project my-app",
    );
    // Allowed on one project is not allowed on another.
    let ci = rise.token("ci-build", &[]);
    check_error(
        &rise
            .get("/registry/credentials?project=my-app", Some(&ci))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "subject ci-build",
    );
}

#[tokio::test]
async fn bad_requests() {
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let t = Some(token.as_str());
    check_error(
        &rise.get("/registry/credentials", t).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "project",
    );
    check_error(
        &rise.get("/registry/credentials?project=My%20App", t).await,
        StatusCode::BAD_REQUEST,
        "invalid_project",
        "lowercase",
    );
    check_error(
        &rise
            .get("/registry/credentials?project=my-app&actions=delete", t)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_actions",
        "push",
    );
    check_error(
        &rise
            .get("/registry/credentials?project=my-app&scope=all", t)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "unknown query parameter",
    );
    check_error(
        &rise.get("/registry/credentials?project=nope", t).await,
        StatusCode::NOT_FOUND,
        "project_not_found",
        "nope",
    );
    let long = "a".repeat(60_000);
    let (status, body) = rise
        .get(&format!("/registry/credentials?project={long}"), t)
        .await;
    assert!(status.is_client_error(), "{status} {body}");
}

#[tokio::test]
async fn authentication_refusals() {
    let rise = rise().await;
    let uri = "/registry/credentials?project=my-app";
    check_error(
        &rise.get(uri, None).await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
        "Authorization",
    );
    check_error(
        &rise.get(uri, Some("not-a-jwt")).await,
        StatusCode::UNAUTHORIZED,
        "malformed_token",
        "",
    );

    // A token of another Rise's local issuer: same `iss`, different key.
    let other = TestRise::from_toml(CONFIG).await;
    let foreign = other.token("alice", &["developers"]);
    let (status, body) = rise.get(uri, Some(&foreign)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"] == "unknown_key" || body["error"] == "bad_signature",
        "{body}"
    );

    // Basic instead of Bearer.
    let req = axum::http::Request::get(uri)
        .header("authorization", "Basic YWxpY2U6cGFzcw==")
        .body(axum::body::Body::empty())
        .expect("request");
    check_error(
        &rise.send(req).await,
        StatusCode::UNAUTHORIZED,
        "malformed_authorization",
        "Bearer",
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let rise = rise().await;
    check_error(
        &rise.get("/nope", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "/nope",
    );
    let req = axum::http::Request::post("/registry/credentials?project=my-app")
        .body(axum::body::Body::empty())
        .expect("request");
    check_error(
        &rise.send(req).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method",
    );
}

/// `GET /token` may carry a password in its query (Docker clients send it so); no log line,
/// request spans included, may show the query.
#[tokio::test]
async fn query_strings_stay_out_of_the_logs() {
    let rise = rise().await;
    let captured = crate::support::logs::TraceCapture::start();
    let (status, _) = rise
        .get(
            "/token?service=rise-registry&password=QUERYSECRET123&refresh_token=QUERYSECRET456",
            None,
        )
        .await;
    assert!(status.is_client_error(), "{status}");
    let logs = captured.text();
    assert!(
        logs.contains("path=/token"),
        "the span names the path: {logs}"
    );
    assert!(!logs.contains("QUERYSECRET"), "{logs}");
}

fn post(uri: &str, content_type: &str, bearer: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut req = Request::post(uri).header("content-type", content_type);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Body::from(body)).expect("request")
}

/// A body beyond the limit is a JSON 413 naming the limit, not the framework's plain text; and
/// a caller who may not revoke hears that first, whatever they sent.
#[tokio::test]
async fn oversized_bodies_get_a_json_413_after_the_caller_is_checked() {
    let rise = rise().await;
    let big = format!("grant_type=password&password=x&{}", "a".repeat(3 << 20));
    let got = rise
        .send(post(
            "/token",
            "application/x-www-form-urlencoded",
            None,
            big.clone().into_bytes(),
        ))
        .await;
    check_error(
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "larger than the 2048 KiB this endpoint reads",
    );

    let token = rise.token("alice", &["developers"]);
    let got = rise
        .send(post(
            "/grants/revocations",
            "application/json",
            Some(&token),
            big.into_bytes(),
        ))
        .await;
    check_error(
        &got,
        StatusCode::FORBIDDEN,
        "forbidden",
        "is not an audit administrator",
    );
}

/// Media types are case-insensitive: a grant traded at `POST /token` with an upper-case
/// `Content-Type` (and a charset) is accepted like any other.
#[tokio::test]
async fn token_content_type_is_matched_without_case() {
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let (status, creds) = rise
        .get("/registry/credentials?project=my-app", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    let grant = creds["credentials"]["password"].as_str().expect("grant");
    let form = format!(
        "grant_type=password&service=rise-registry&scope=repository:my-app:pull&password={grant}"
    );
    let (status, body) = rise
        .send(post(
            "/token",
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8",
            None,
            form.into_bytes(),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["token"].as_str().is_some_and(|t| t.len() > 20),
        "{body}"
    );

    let got = rise
        .send(post(
            "/token",
            "text/plain",
            None,
            b"grant_type=password".to_vec(),
        ))
        .await;
    check_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "x-www-form-urlencoded",
    );
}

/// `POST /grants/revocations` reads JSON only: XML that happens to hold JSON is refused with 415,
/// not acted on. `application/json` with parameters, and `+json` types, are JSON.
#[tokio::test]
async fn revocations_take_json_only() {
    let rise = TestRise::from_toml(&format!(
        "{CONFIG}\n[audit]\nadmins = [{{ issuer = \"local\", subject = \"sam\" }}]\n"
    ))
    .await;
    let admin = rise.token("sam", &[]);
    let body = br#"{"subject": "local/alice", "reason": "test"}"#.to_vec();
    let got = rise
        .send(post(
            "/grants/revocations",
            "application/xml",
            Some(&admin),
            body.clone(),
        ))
        .await;
    check_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    );
    for json in ["application/json; charset=utf-8", "application/merge+json"] {
        let (status, reply) = rise
            .send(post(
                "/grants/revocations",
                json,
                Some(&admin),
                body.clone(),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{json}: {reply}");
    }
}

/// A grant does not outlive what allowed it: after a restart on the same keys without its
/// caller's issuer, or without its project, the token server refuses it, and says why.
#[tokio::test]
async fn grants_end_with_their_issuer_or_project() {
    use base64::Engine as _;
    let rise = rise().await;
    let token = rise.token("alice", &["developers"]);
    let (status, body) = rise
        .get("/registry/credentials?project=my-app", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let password = body["credentials"]["password"].as_str().expect("password");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("rise:{password}"));
    let exchange = async |rise: &TestRise| {
        let req = Request::get("/token?service=rise-registry&scope=repository:my-app:pull,push")
            .header("authorization", format!("Basic {basic}"))
            .body(Body::empty())
            .expect("request");
        rise.send(req).await
    };
    let (status, body) = exchange(&rise).await;
    assert_eq!(status, StatusCode::OK, "the grant works: {body}");

    let without_local = format!("{CONFIG}\n[auth.local]\nenabled = false\n");
    let restarted = rise.restarted_with(&without_local).await;
    check_error(
        &exchange(&restarted).await,
        StatusCode::UNAUTHORIZED,
        "grant_issuer_untrusted",
        "issuer \"local\", which this server no longer trusts",
    );
    let without_my_app = CONFIG.replace("projects.my-app", "projects.renamed-app");
    let restarted = rise.restarted_with(&without_my_app).await;
    check_error(
        &exchange(&restarted).await,
        StatusCode::UNAUTHORIZED,
        "grant_project_removed",
        "repository my-app, which is no longer a project's on registry default",
    );
    // Renamed, keeping its repository: the repository is another project's now, whose rules
    // the grant was not checked against.
    let renamed_keeping = CONFIG
        .replace(
            "[projects.my-app]\n",
            "[projects.renamed-app]\nrepository = \"my-app\"\n",
        )
        .replace("projects.my-app.allow", "projects.renamed-app.allow");
    assert_ne!(renamed_keeping, CONFIG);
    let restarted = rise.restarted_with(&renamed_keeping).await;
    check_error(
        &exchange(&restarted).await,
        StatusCode::UNAUTHORIZED,
        "grant_project_changed",
        "granted for project my-app; repository my-app on registry default is now project renamed-app's",
    );
    // The refusals are audited, as the grant's.
    let filter = rise_backend::audit::AuditFilter {
        subject: Some("alice".to_owned()),
        limit: 10,
        ..Default::default()
    };
    let records = restarted.state.audit.query(&filter).await.expect("audit");
    let reasons: Vec<&str> = records.iter().map(|r| r.fields.reason.as_str()).collect();
    assert!(
        reasons.contains(&"grant_issuer_untrusted")
            && reasons.contains(&"grant_project_removed")
            && reasons.contains(&"grant_project_changed"),
        "{reasons:?}"
    );
}

/// HEAD on a minting route would issue (and audit) a credential nobody receives: refused, and
/// nothing is recorded.
#[tokio::test]
async fn head_does_not_mint() {
    let rise = rise().await;
    let token = rise.token("harriet", &["developers"]);
    for uri in [
        "/registry/credentials?project=my-app",
        "/token?service=rise-registry&scope=repository:my-app:pull",
    ] {
        let req = Request::head(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let (status, _) = rise.send(req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{uri}");
    }
    let filter = rise_backend::audit::AuditFilter {
        subject: Some("harriet".to_owned()),
        limit: 10,
        ..Default::default()
    };
    let records = rise.state.audit.query(&filter).await.expect("audit");
    assert!(records.is_empty(), "{} records", records.len());
}

/// Every 405 says which methods the endpoint does take (RFC 9110 requires `Allow` on a 405).
#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    use tower::ServiceExt;
    let rise = rise().await;
    for (method, uri, allowed) in [
        ("HEAD", "/registry/credentials?project=my-app", "GET"),
        ("POST", "/registry/credentials?project=my-app", "GET"),
        ("HEAD", "/token", "GET,POST"),
        ("DELETE", "/token", "GET,POST"),
        ("POST", "/audit", "GET,HEAD"),
        ("GET", "/grants/revocations", "POST"),
        ("PUT", "/healthz", "GET,HEAD"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let resp = rise_backend::http::app(rise.state.clone())
            .oneshot(req)
            .await
            .expect("router is infallible");
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        let allow = resp
            .headers()
            .get(axum::http::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.replace(' ', ""));
        assert_eq!(allow.as_deref(), Some(allowed), "{method} {uri}");
        if method == "HEAD" {
            continue; // a HEAD answer has no body
        }
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let json: Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(json["error"], "method_not_allowed", "{method} {uri}");
        let message = json["message"].as_str().expect("message");
        let said = message
            .rsplit_once("it accepts ")
            .map(|(_, methods)| methods.replace(' ', ""));
        assert_eq!(said.as_deref(), Some(allowed), "{method} {uri}: {message}");
    }
}

/// A server whose key reloads keep failing may sign with a key the others rotated out, or miss
/// their revocations: after three failed intervals it stops calling itself ready, and it is
/// ready again once a reload succeeds.
#[tokio::test]
async fn a_server_whose_key_reloads_keep_failing_is_not_ready() {
    let rise = rise().await;
    let readyz = || async {
        let req = Request::get("/readyz")
            .body(Body::empty())
            .expect("request");
        rise.send(req).await
    };
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "key reload")),
        "{body}"
    );
    let service = rise.state.token_service.clone().expect("a token server");
    let keys_dir = rise.dir.path().join("data/keys");
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&keys_dir)
        .expect("keys dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("key file");
            (path, bytes)
        })
        .collect();
    assert!(!saved.is_empty(), "keys on disk");
    for (path, _) in &saved {
        std::fs::write(path, b"garbage").expect("garble");
    }
    let reloader =
        service.spawn_key_reloader(Duration::from_millis(50), rise.state.audit.store().clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz().await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"], "not_ready", "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains("key reload"), "{message}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).expect("restore");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz().await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reloader.abort();
}
