//! The audit log through the HTTP surface, in-process: every credential request is recorded
//! (granted or not) before the response leaves; `GET /audit` is for audit admins only, filters,
//! pages and exports JSON lines; an unwritable audit store fails requests with 503.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;

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

[audit]
admins = [{ issuer = "local", subject = "auditor" }, { issuer = "local", groups = ["security"] }]
"#;

async fn rise() -> TestRise {
    TestRise::from_toml(CONFIG).await
}

async fn audit_records(rise: &TestRise, query: &str) -> Vec<Value> {
    let token = rise.token("auditor", &[]);
    let (status, body) = rise.get(&format!("/audit{query}"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["records"].as_array().cloned().expect("records array")
}

#[tokio::test]
async fn every_credential_request_is_recorded_with_its_caller() {
    let rise = rise().await;
    let alice = rise.token("alice", &["developers"]);
    let eve = rise.token("eve", &["guests"]);
    let req = Request::get("/registry/credentials?project=my-app&actions=pull")
        .header("authorization", format!("Bearer {alice}"))
        // Bidirectional overrides and zero-width spaces could disguise the audit table: dropped.
        .header(
            "user-agent",
            axum::http::HeaderValue::from_bytes("rise-cli/0.1\u{202E}\u{200B} test".as_bytes())
                .expect("header value"),
        )
        .header("x-request-id", "req-alice-1")
        .body(Body::empty())
        .expect("request");
    let (alice_status, alice_body) = rise.send(req).await;
    let (eve_status, _) = rise
        .get("/registry/credentials?project=my-app", Some(&eve))
        .await;
    assert_eq!(eve_status, StatusCode::FORBIDDEN);
    let (missing_status, _) = rise
        .get("/registry/credentials?project=nope", Some(&alice))
        .await;
    assert_eq!(missing_status, StatusCode::NOT_FOUND);

    let records = audit_records(&rise, "").await;
    assert_eq!(records.len(), 3, "{records:#?}");
    let first = &records[0];
    assert_eq!(first["id"], 1);
    assert_eq!(first["request_id"], "req-alice-1");
    assert_eq!(first["operation"], "credentials");
    assert_eq!(first["caller"]["issuer"], "local");
    assert_eq!(first["caller"]["subject"], "alice");
    assert_eq!(first["caller"]["groups"], serde_json::json!(["developers"]));
    assert_eq!(first["caller"]["user_agent"], "rise-cli/0.1 test");
    assert_eq!(first["project"], "my-app");
    assert_eq!(first["actions_requested"], serde_json::json!(["pull"]));
    assert_eq!(alice_status, StatusCode::OK, "{alice_body}");
    let password = alice_body["credentials"]["password"]
        .as_str()
        .expect("password");
    assert_eq!(first["result"], "granted");
    assert_eq!(first["reason"], "issued");
    assert_eq!(first["actions_granted"], serde_json::json!(["pull"]));
    assert!(first["expires_at"].is_string(), "{first}");
    assert_eq!(
        first["credential_fingerprint"],
        rise_backend::audit::fingerprint(password)
    );
    assert!(
        !records.iter().any(|r| r.to_string().contains(password)),
        "the credential itself is in the audit log"
    );

    let eve_record = &records[1];
    assert_eq!(eve_record["caller"]["subject"], "eve");
    assert_eq!(eve_record["result"], "denied");
    assert_eq!(eve_record["reason"], "forbidden");
    assert_eq!(eve_record["actions_granted"], serde_json::json!([]));
    assert_eq!(eve_record["credential_fingerprint"], Value::Null);

    let missing = &records[2];
    assert_eq!(missing["project"], "nope");
    assert_eq!(
        (&missing["result"], &missing["reason"]),
        (&Value::from("denied"), &Value::from("project_not_found"))
    );
    // The chain links are visible to auditors.
    assert_eq!(records[1]["prev_hash"], records[0]["hash"]);
    assert_eq!(records[2]["prev_hash"], records[1]["hash"]);
}

#[tokio::test]
async fn audit_endpoint_is_for_admins_only() {
    let rise = rise().await;
    let (status, body) = rise.get("/audit", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "missing_token");

    let bob = rise.token("bob", &["developers"]);
    let (status, body) = rise.get("/audit", Some(&bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("bob") && m.contains("[audit] admins")),
        "{body}"
    );

    // By subject, and by group.
    for token in [
        rise.token("auditor", &[]),
        rise.token("carol", &["security"]),
    ] {
        let (status, body) = rise.get("/audit", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["records"], serde_json::json!([]));
        assert_eq!(body["next_after_id"], Value::Null);
    }

    let auditor = rise.token("auditor", &[]);
    let (status, body) = rise.get("/audit?limit=5000", Some(&auditor)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad_request");
}

#[tokio::test]
async fn audit_filters_pages_and_exports_json_lines() {
    let rise = rise().await;
    for (sub, project) in [
        ("alice", "a1"),
        ("bob", "a2"),
        ("alice", "a3"),
        ("alice", "a4"),
        ("bob", "a5"),
    ] {
        let token = rise.token(sub, &[]);
        rise.get(
            &format!("/registry/credentials?project={project}"),
            Some(&token),
        )
        .await;
    }
    let ids = |records: Vec<Value>| -> Vec<i64> {
        records.iter().filter_map(|r| r["id"].as_i64()).collect()
    };
    assert_eq!(ids(audit_records(&rise, "?subject=alice").await), [1, 3, 4]);
    assert_eq!(ids(audit_records(&rise, "?project=a2").await), [2]);
    assert_eq!(
        ids(audit_records(&rise, "?result=granted").await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(audit_records(&rise, "?until=2000-01-01T00:00:00Z").await),
        Vec::<i64>::new()
    );

    // Paging with the cursor the server hands out.
    let auditor = rise.token("auditor", &[]);
    let (_, page1) = rise
        .get("/audit?subject=alice&limit=2", Some(&auditor))
        .await;
    assert_eq!(page1["next_after_id"], 3, "{page1}");
    let (_, page2) = rise
        .get("/audit?subject=alice&limit=2&after_id=3", Some(&auditor))
        .await;
    assert_eq!(
        ids(page2["records"].as_array().cloned().unwrap_or_default()),
        [4]
    );
    assert_eq!(page2["next_after_id"], Value::Null);

    // JSON lines, by query parameter or by Accept header.
    for req in [
        Request::get("/audit?format=jsonl"),
        Request::get("/audit").header("accept", "application/x-ndjson"),
    ] {
        let req = req
            .header("authorization", format!("Bearer {auditor}"))
            .body(Body::empty())
            .expect("request");
        let resp = tower::ServiceExt::oneshot(rise_backend::http::app(rise.state.clone()), req)
            .await
            .expect("router is infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson")
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(
            lines
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    }
}

/// Fail closed: when the audit store cannot be written, the request fails with 503 and the
/// caller learns nothing else.
#[tokio::test]
async fn unwritable_audit_store_fails_requests_with_503() {
    let rise = rise().await;
    let pool = rise
        .state
        .audit
        .store()
        .sqlite_pool()
        .expect("SQLite by default")
        .clone();
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_moved")
        .execute(&pool)
        .await
        .expect("rename");
    let alice = rise.token("alice", &["developers"]);
    for uri in [
        "/registry/credentials?project=my-app",
        "/registry/credentials?project=nope",
    ] {
        let (status, body) = rise.get(uri, Some(&alice)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(body["error"], "audit_unavailable", "{body}");
        assert!(body.get("credentials").is_none());
        assert!(
            !body.to_string().contains("audit_log"),
            "SQL detail leaked: {body}"
        );
    }
    // A revocation still takes effect (refusing is the safe side), and the administrator is
    // told it is not on record.
    let admin = rise.token("sam", &["security"]);
    let req = Request::post("/grants/revocations")
        .header("authorization", format!("Bearer {admin}"))
        .body(Body::from(r#"{"subject": "local/alice"}"#))
        .expect("request");
    let (status, body) = rise.send(req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "audit_unavailable");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.starts_with("subject local/alice is revoked, but the audit log cannot be written"),
        "{message}"
    );
    assert!(
        !message.contains("audit_log"),
        "SQL detail leaked: {message}"
    );
    let in_force = rise
        .state
        .audit
        .store()
        .revocations_active(0)
        .await
        .expect("revocations");
    assert_eq!(in_force.len(), 1, "{in_force:?}");
    sqlx::query("ALTER TABLE audit_log_moved RENAME TO audit_log")
        .execute(&pool)
        .await
        .expect("rename back");
    let (status, _) = rise
        .get("/registry/credentials?project=nope", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "recovers with the store");
}

/// A grant for alice on my-app, as the `Authorization: Basic` value a registry client sends.
async fn alice_grant_as_basic(rise: &TestRise) -> String {
    use base64::Engine as _;
    let alice = rise.token("alice", &["developers"]);
    let (status, grant) = rise
        .get("/registry/credentials?project=my-app", Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let password = grant["credentials"]["password"].as_str().expect("password");
    base64::engine::general_purpose::STANDARD.encode(format!("rise:{password}"))
}

/// A caller held back by its rate limit leaves one record per refused exchange, however many
/// scopes it names: a limited caller cannot fill the append-only log.
#[tokio::test]
async fn a_rate_limited_exchange_is_one_record() {
    let rise = TestRise::from_toml(&format!(
        "{CONFIG}\n[rate_limit]\nper_subject = {{ rate = \"1/h\", burst = 2 }}\n"
    ))
    .await;
    let basic = alice_grant_as_basic(&rise).await;
    let scopes: String = (0..30)
        .map(|i| format!("&scope=repository:repo-{i}:pull"))
        .collect();
    let exchange = || {
        Request::get(format!("/token?service=rise-registry{scopes}"))
            .header("authorization", format!("Basic {basic}"))
            .body(Body::empty())
            .expect("request")
    };
    // The grant's issuance took one of alice's two; this exchange takes the other.
    let (status, body) = rise.send(exchange()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = audit_records(&rise, "?limit=1000").await.len();
    assert_eq!(
        before,
        1 + 30,
        "the issuance, and one record per repository"
    );
    for _ in 0..3 {
        let (status, body) = rise.send(exchange()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
    let records = audit_records(&rise, "?limit=1000").await;
    assert_eq!(records.len(), before + 3, "one record per refused exchange");
    for r in &records[before..] {
        assert_eq!(r["reason"], "rate_limited", "{r}");
    }
}

/// A `/token` exchange is audited too, linked to the grant it used.
#[tokio::test]
async fn token_exchanges_are_recorded() {
    let rise = rise().await;
    let basic = alice_grant_as_basic(&rise).await;
    let req = Request::get(
        "/token?service=rise-registry&scope=repository:my-app:pull,push&scope=repository:other:pull",
    )
    .header("authorization", format!("Basic {basic}"))
    .header("user-agent", "skopeo/1.9.3")
    .body(Body::empty())
    .expect("request");
    let (status, body) = rise.send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().expect("token");

    // One record per repository asked for, so filtering by project finds the exchange.
    let records = audit_records(&rise, "").await;
    assert_eq!(records.len(), 3, "{records:#?}");
    let (issued, mine, other) = (&records[0], &records[1], &records[2]);
    for exchanged in [mine, other] {
        assert_eq!(exchanged["operation"], "token");
        assert_eq!(exchanged["caller"]["subject"], "alice");
        assert_eq!(exchanged["caller"]["issuer"], "local");
        assert_eq!(exchanged["caller"]["user_agent"], "skopeo/1.9.3");
        assert_eq!(exchanged["registry"], "default");
        assert_eq!(exchanged["result"], "granted");
        assert_eq!(exchanged["request_id"], mine["request_id"]);
        assert_eq!(
            exchanged["credential_fingerprint"],
            rise_backend::audit::fingerprint(token)
        );
        assert_eq!(
            exchanged["credential_id"], issued["credential_id"],
            "the exchange names the grant it used"
        );
    }
    assert_eq!(mine["repository"], "my-app");
    assert_eq!(mine["project"], "my-app");
    assert_eq!(
        mine["actions_requested"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(mine["actions_granted"], serde_json::json!(["pull", "push"]));
    assert_eq!(mine["reason"], "issued");
    assert_eq!(other["repository"], "other");
    assert!(other["project"].is_null(), "`other` is no project: {other}");
    assert_eq!(other["actions_requested"], serde_json::json!(["pull"]));
    assert_eq!(other["actions_granted"], serde_json::json!([]));
    assert_eq!(other["reason"], "issued_without_access");
    let by_project = audit_records(&rise, "?project=my-app").await;
    assert!(
        by_project.iter().any(|r| r["operation"] == "token"),
        "{by_project:#?}"
    );
    assert!(issued["credential_id"].is_string(), "{issued}");
}

/// A grant this server signed but refuses (here: presented to another registry) still names
/// its caller: the refusal is audited under their name, linked to the grant.
#[tokio::test]
async fn refused_grants_are_recorded_under_their_caller() {
    let rise = rise().await;
    let basic = alice_grant_as_basic(&rise).await;
    let req = Request::get("/token?service=second-registry&scope=repository:my-app:pull")
        .header("authorization", format!("Basic {basic}"))
        .body(Body::empty())
        .expect("request");
    let (status, body) = rise.send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "grant_wrong_registry");

    let records = audit_records(&rise, "").await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let (issued, refused) = (&records[0], &records[1]);
    assert_eq!(refused["operation"], "token");
    assert_eq!(refused["result"], "denied");
    assert_eq!(refused["reason"], "grant_wrong_registry");
    assert_eq!(refused["caller"]["subject"], "alice");
    assert_eq!(refused["registry"], "second");
    assert_eq!(refused["repository"], "my-app");
    assert_eq!(refused["credential_id"], issued["credential_id"]);
}

/// `POST /grants/revocations`: an audit administrator revokes a grant, then every grant of a
/// caller; this server refuses them at `/token` at once, and the audit log holds each
/// revocation under the administrator's own name next to the refusal. Others get 403; a
/// malformed request gets 400 saying what to fix, never quoting what was sent.
#[tokio::test]
async fn audit_admins_revoke_grants_over_http() {
    use base64::Engine as _;
    let rise = &rise().await;
    let alice = rise.token("alice", &["developers"]);
    let admin = rise.token("sam", &["security"]);
    let grant = || async {
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&alice))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["credentials"]["password"]
                .as_str()
                .expect("password")
                .to_owned(),
            body,
        )
    };
    let exchange = |password: String| async move {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("rise:{password}"));
        let req = Request::get("/token?service=rise-registry&scope=repository:my-app:push")
            .header("authorization", format!("Basic {basic}"))
            .body(Body::empty())
            .expect("request");
        rise.send(req).await
    };
    let revoke = |bearer: String, body: String| async move {
        let req = Request::post("/grants/revocations")
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        rise.send(req).await
    };
    let (leaked, _) = grant().await;
    let (kept, _) = grant().await;
    let credential_id = audit_records(rise, "").await[0]["credential_id"]
        .as_str()
        .expect("credential id")
        .to_owned();

    // One grant, by the credential id the audit log shows.
    let (status, body) = revoke(
        admin.clone(),
        serde_json::json!({"credential": credential_id, "reason": "in a build log"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "credential");
    assert_eq!(body["reason"], "in a build log");
    let (status, body) = exchange(leaked).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "grant_revoked");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("in a build log")
    );
    assert_eq!(
        exchange(kept.clone()).await.0,
        StatusCode::OK,
        "other grants still work"
    );

    // Every grant of alice until now.
    let (status, body) = revoke(admin.clone(), r#"{"subject": "local/alice"}"#.to_owned()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(exchange(kept).await.0, StatusCode::UNAUTHORIZED);

    let records = audit_records(rise, "").await;
    let revocations: Vec<&Value> = records
        .iter()
        .filter(|r| r["operation"] == "revoke")
        .collect();
    assert_eq!(revocations.len(), 2, "{records:#?}");
    assert_eq!(revocations[0]["caller"]["subject"], "sam");
    assert_eq!(revocations[0]["result"], "granted");
    assert_eq!(
        revocations[0]["reason"],
        format!("revoked credential {credential_id}: in a build log")
    );
    assert_eq!(revocations[0]["credential_id"], credential_id.as_str());
    assert_eq!(revocations[1]["reason"], "revoked subject local/alice");
    assert!(
        records
            .iter()
            .any(|r| r["operation"] == "token" && r["reason"] == "grant_revoked"),
        "{records:#?}"
    );

    // Only audit administrators; requests that say what to fix, without echoing values.
    let (status, body) = revoke(alice.clone(), r#"{"subject": "local/bob"}"#.to_owned()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (sent, says) in [
        ("not json", "it is not JSON"),
        (
            r#"{"subject": "local/a", "credential": "x"}"#,
            "exactly one",
        ),
        ("{}", "exactly one"),
        (r#"{"subject": "alice"}"#, "ISSUER/SUBJECT"),
        (
            r#"{"subject": "corp/alice"}"#,
            "issuer \"corp\" is not configured",
        ),
        (r#"{"credential": 12345}"#, "must be strings"),
        (
            r#"{"credentail": "s3cret-id"}"#,
            "unknown field `credentail`",
        ),
    ] {
        let (status, body) = revoke(admin.clone(), sent.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sent}: {body}");
        assert_eq!(body["error"], "bad_request");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(says), "{sent}: {message}");
        assert!(
            !message.contains("12345") && !message.contains("s3cret-id"),
            "{message}"
        );
    }
}

/// An admin rule naming only an issuer makes every token of that issuer an administrator:
/// allowed (a dedicated admin issuer), but said at start-up.
#[tokio::test]
async fn an_issuer_wide_admin_rule_is_warned_about() {
    let captured = crate::support::logs::TraceCapture::start();
    let _rise = TestRise::from_toml(
        "[registry]\ntype = \"distribution\"\nurl = \"127.0.0.1:5000\"\n\n[audit]\nadmins = [{ issuer = \"local\" }]\n",
    )
    .await;
    let logs = captured.text();
    assert!(
        logs.contains("audit.admins[0] names only an issuer"),
        "{logs}"
    );
}
