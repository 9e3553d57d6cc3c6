//! The Quay provider through the `RegistryProvider` trait and through Rise's HTTP API, against
//! the documented-API fake in `support::fake_quay`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rise_backend::registry::providers::quay::{QuayConfig, QuayProvider};
use rise_backend::registry::providers::sweeper::SweepReport;
use rise_backend::registry::{Actions, CredentialRequest, ProviderError, RegistryProvider};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::fake_quay::{
    Endpoint, Failure, FakeQuay, GARBAGE_SECRET, INJECTED_SECRET, OAUTH_TOKEN, ORG, ORG_ONLY_TOKEN,
};
use crate::support::provider_calls::{self, GUARD, issue};
use crate::support::provider_checks::{assert_logs_free_of, assert_no_secret, check_error};

fn config(fake: &FakeQuay, extra: &str) -> QuayConfig {
    let text = format!(
        "url = \"{}\"\norganization = \"{ORG}\"\ntoken = \"{OAUTH_TOKEN}\"\ninsecure_http = true\nrequest_timeout = \"500ms\"\n{extra}",
        fake.url()
    );
    toml::from_str(&text).expect("valid test TOML")
}

async fn provider(fake: &FakeQuay, extra: &str) -> QuayProvider {
    QuayProvider::from_config("default", &config(fake, extra))
        .await
        .expect("valid provider configuration")
}

/// A request for `repository` of the Rise project `my-app`.
fn request(repository: &str, actions: Actions, ttl: Duration) -> CredentialRequest {
    provider_calls::request_for("my-app", repository, actions, ttl)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs()
}

#[tokio::test]
async fn push_robot_has_write_on_exactly_its_repository() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "").await;
    let before = unix_now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("robot created");

    let calls = fake.requests_except_listings();
    assert_eq!(calls.len(), 2, "create, then grant: {calls:?}");
    let create = &calls[0];
    assert_eq!(create.endpoint, Endpoint::CreateRobot);
    assert_eq!(create.method, "PUT");
    assert_eq!(create.bearer.as_deref(), Some(OAUTH_TOKEN));
    assert_eq!(create.content_type.as_deref(), Some("application/json"));
    let shortname = create
        .path
        .strip_prefix(&format!("/api/v1/organization/{ORG}/robots/"))
        .expect("robot path")
        .to_owned();
    // The short name carries the Rise expiry: 900 s after issuance.
    let rest = shortname.strip_prefix("rise_").expect("prefix");
    let (expiry, nonce) = rest.split_once('_').expect("expiry_nonce");
    let expiry: u64 = expiry.parse().expect("digits");
    assert!(
        (before + 900..=unix_now() + 900).contains(&expiry),
        "{expiry}"
    );
    assert_eq!(nonce.len(), 12);
    let description = create.body["description"].as_str().expect("description");
    assert!(
        description.starts_with("Rise robot until ")
            && description.contains(
                "for alice of issuer local: registry default, project my-app (pull,push), request req-1"
            ),
        "{description}"
    );
    assert!(description.len() <= 255);
    assert_eq!(
        create.body["unstructured_metadata"]["rise_expires_at"],
        expiry
    );
    assert_eq!(
        create.body["unstructured_metadata"]["rise_subject"],
        "alice"
    );
    let grant = &calls[1];
    assert_eq!(grant.endpoint, Endpoint::Permission);
    assert_eq!(grant.bearer.as_deref(), Some(OAUTH_TOKEN));
    assert_eq!(
        grant.path,
        format!("/api/v1/repository/{ORG}/my-app/permissions/user/{ORG}+{shortname}")
    );
    assert_eq!(grant.body, json!({"role": "write"}));

    let robot = fake
        .robot(&format!("{ORG}+{shortname}"))
        .expect("robot exists");
    assert_eq!(c.username, robot.name);
    assert_eq!(c.password.expose_secret(), robot.token);
    assert_eq!(c.credential_id.as_deref(), Some(robot.name.as_str()));
    assert_eq!(
        c.expires_at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(expiry)
    );
    assert_eq!(c.registry_url, fake.host());
    assert_eq!(c.repository, "acme/my-app");
    assert_eq!(c.image_reference(), format!("{}/acme/my-app", fake.host()));
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.repository_scoped);
    assert!(c.revocable);
    assert!(
        !c.expiry_enforced,
        "Quay robots do not expire; Rise's reaper deletes them"
    );
    assert_eq!(robot.permissions.len(), 1, "{:?}", robot.permissions);

    let token = c.password.expose_secret();
    for (repository, action, allowed) in [
        ("acme/my-app", "push", true),
        ("acme/my-app", "pull", true),
        ("acme/other-app", "pull", false),
        ("acme/other-app", "push", false),
        ("acme/team/nested", "pull", false),
        ("other/my-app", "pull", false),
    ] {
        assert_eq!(
            fake.authorize(&c.username, token, repository, action),
            allowed,
            "{action} on {repository}"
        );
    }
    assert!(!fake.authorize(&c.username, "wrong", "acme/my-app", "pull"));
}

#[tokio::test]
async fn pull_only_requests_get_read_only_robots() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("team/nested", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("robot created");
    let grant = fake
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Permission)
        .expect("grant");
    assert_eq!(grant.body, json!({"role": "read"}));
    assert!(
        grant
            .path
            .starts_with("/api/v1/repository/acme/team/nested/permissions/user/acme+rise_"),
        "{}",
        grant.path
    );
    assert_eq!(c.granted_actions, Actions::PULL);
    assert_eq!(c.repository, "acme/team/nested");
    let token = c.password.expose_secret();
    assert!(fake.authorize(&c.username, token, "acme/team/nested", "pull"));
    assert!(!fake.authorize(&c.username, token, "acme/team/nested", "push"));
    assert!(!fake.authorize(&c.username, token, "acme/my-app", "pull"));
}

#[tokio::test]
async fn ttl_is_capped_by_max_ttl() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "max_ttl = \"10m\"\n").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(7200)),
    )
    .await
    .expect("issued");
    let left = c
        .expires_at
        .duration_since(SystemTime::now())
        .expect("in the future")
        .as_secs();
    assert!((595..=600).contains(&left), "{left}");
}

#[tokio::test]
async fn concurrent_issues_get_distinct_robots() {
    let fake = FakeQuay::start().await;
    let p = Arc::new(provider(&fake, "").await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let p = p.clone();
        tasks.spawn(async move {
            p.issue(&request(
                "my-app",
                Actions::PUSH_PULL,
                Duration::from_secs(600),
            ))
            .await
        });
    }
    let mut names = HashSet::new();
    let mut tokens = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let c = done.expect("task").expect("issued");
        names.insert(c.username.clone());
        tokens.insert(c.password.expose_secret().to_owned());
    }
    assert_eq!(names.len(), 8);
    assert_eq!(tokens.len(), 8);
    assert_eq!(fake.robots().len(), 8);
    for r in fake.robots() {
        assert_eq!(r.permissions.len(), 1);
        assert_eq!(
            r.permissions.get("my-app").map(String::as_str),
            Some("write")
        );
    }
}

#[tokio::test]
async fn revoke_deletes_the_robot_and_refuses_others() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("issued");
    let id = c.credential_id.clone().expect("id");
    let token = c.password.expose_secret();
    assert!(fake.authorize(&c.username, token, "acme/my-app", "push"));
    p.revoke(&id).await.expect("revoked");
    assert!(fake.robot(&id).is_none());
    assert_eq!(fake.deleted().len(), 1);
    assert!(!fake.authorize(&c.username, token, "acme/my-app", "pull"));
    let delete = fake
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::DeleteRobot)
        .expect("delete");
    assert_eq!(
        delete.path,
        format!("/api/v1/organization/{ORG}/robots/{}", &id[ORG.len() + 1..])
    );
    assert_eq!(delete.bearer.as_deref(), Some(OAUTH_TOKEN));
    // Revocation is idempotent.
    p.revoke(&id).await.expect("already gone is fine");

    let other = fake.add_robot("builder", "CI builder", Some("my-app"));
    let lookalike = fake.add_robot(
        &id[ORG.len() + 1..].replace("rise_", "ci_"),
        "Rise robot until later",
        None,
    );
    for refused in [
        other.clone(),
        lookalike.clone(),
        id.replace("acme+", "other+"),
        "../../robots/x".into(),
        String::new(),
    ] {
        match p.revoke(&refused).await {
            Err(ProviderError::Unsupported(m)) => {
                assert!(m.contains("Rise deletes only its own robots"), "{m}")
            }
            other => panic!("{refused:?}: {other:?}"),
        }
    }
    assert!(fake.robot(&other).is_some() && fake.robot(&lookalike).is_some());
    assert_eq!(fake.deleted().len(), 1, "nothing else was deleted");
}

#[tokio::test]
async fn the_reaper_deletes_expired_rise_robots_and_leaves_others_alone() {
    let fake = FakeQuay::start().await;
    // A long interval: this test drives the sweeps itself.
    let p = provider(&fake, "reap_interval = \"1h\"\n").await;
    let past = unix_now() - 10;
    let future = unix_now() + 3600;
    let expired = fake.add_robot(
        &format!("rise_{past}_0123456789ab"),
        "Rise robot until 2026-01-01T00:00:00Z for bob",
        Some("my-app"),
    );
    let alive = fake.add_robot(
        &format!("rise_{future}_0123456789ab"),
        "Rise robot until later",
        Some("my-app"),
    );
    let not_rise_description =
        fake.add_robot(&format!("rise_{past}_ba9876543210"), "hand-made", None);
    let other_prefix = fake.add_robot(
        &format!("ci_{past}_0123456789ab"),
        "Rise robot until 2026-01-01T00:00:00Z",
        None,
    );
    let builder = fake.add_robot("builder", "CI builder", Some("my-app"));

    let report = p.sweep_expired().await;
    assert_eq!(
        report,
        SweepReport {
            deleted: 1,
            kept: 1,
            failed: 0
        }
    );
    assert!(fake.robot(&expired).is_none());
    for kept in [&alive, &not_rise_description, &other_prefix, &builder] {
        assert!(fake.robot(kept).is_some(), "{kept} was deleted");
    }
    let listing = fake
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::ListRobots)
        .expect("listing");
    assert_eq!(
        listing.query.as_deref(),
        Some("token=false"),
        "robot tokens never cross the wire for a sweep"
    );

    // A credential with a short lifetime is deleted once it has passed.
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(1)),
    )
    .await
    .expect("issued");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = p.sweep_expired().await;
    assert_eq!(report.deleted, 1, "{report:?}");
    assert!(fake.robot(&c.username).is_none());

    // A listing that fails or hangs ends the sweep, bounded, with nothing done.
    for failure in [Failure::Hang, Failure::Garbage, Failure::Status(403)] {
        fake.set_failure_on(Endpoint::ListRobots, failure.clone());
        let report = tokio::time::timeout(GUARD, p.sweep_expired())
            .await
            .expect("a sweep is bounded by the request timeout");
        assert_eq!(report, SweepReport::default(), "{failure:?}");
    }
    fake.set_failure(None);

    // A failing sweep deletes nothing and reports it; the next one retries.
    let again = fake.add_robot(
        &format!("rise_{past}_aaaaaaaaaaaa"),
        "Rise robot until x",
        None,
    );
    fake.set_failure_on(Endpoint::DeleteRobot, Failure::Status(500));
    let report = p.sweep_expired().await;
    assert_eq!(report.failed, 1, "{report:?}");
    assert!(fake.robot(&again).is_some());
    fake.set_failure(None);
    assert_eq!(p.sweep_expired().await.deleted, 1);
    assert!(fake.robot(&again).is_none());
}

#[tokio::test]
async fn the_background_reaper_runs_on_its_own() {
    let fake = FakeQuay::start().await;
    let _p = provider(&fake, "reap_interval = \"200ms\"\n").await;
    let past = unix_now() - 10;
    let expired = fake.add_robot(
        &format!("rise_{past}_0123456789ab"),
        "Rise robot until 2026-01-01T00:00:00Z",
        None,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fake.robot(&expired).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper did not delete the expired robot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(_p);
    // Dropped: no more sweeps.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listings = fake
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::ListRobots)
        .count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = fake
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::ListRobots)
        .count();
    assert_eq!(listings, after, "the reaper stops with its provider");
}

#[tokio::test]
async fn a_failed_permission_call_leaves_no_robot_behind() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "").await;

    fake.set_failure_on(Endpoint::Permission, Failure::Status(500));
    let e = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("grant failed");
    assert!(
        matches!(&e, ProviderError::Upstream { operation, detail } if *operation == "Quay grant repository permission" && detail.contains("HTTP 500")),
        "{e:?}"
    );
    assert_no_secret(&e, &[INJECTED_SECRET, OAUTH_TOKEN]);
    assert!(fake.robots().is_empty(), "{:?}", fake.robots());
    assert_eq!(fake.deleted().len(), 1);

    fake.set_failure_on(Endpoint::Permission, Failure::Hang);
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("grant hung");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    assert!(fake.robots().is_empty());
    fake.set_failure(None);

    // A repository that does not exist in Quay: a clear operator error, no robot left.
    let e = issue(
        &p,
        &request("missing-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("no such repository");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(m.contains("no repository acme/missing-app"), "{m}");
            assert!(m.contains("Rise does not create repositories"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fake.robots().is_empty());
    assert_eq!(fake.deleted().len(), 3);
}

#[tokio::test]
async fn a_token_without_repo_admin_is_a_misconfiguration_and_leaves_no_robot() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "").await;
    let text = format!(
        "url = \"{}\"\norganization = \"{ORG}\"\ntoken = \"{ORG_ONLY_TOKEN}\"\ninsecure_http = true\n",
        fake.url()
    );
    let weak = QuayProvider::from_config("default", &toml::from_str(&text).expect("toml"))
        .await
        .expect("valid");
    let e = issue(
        &weak,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("403 on the grant");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(m.contains("repo:admin") && m.contains("HTTP 403"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_no_secret(&e, &[ORG_ONLY_TOKEN]);
    assert!(fake.robots().is_empty());
    // The full token works.
    issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("issued");
}

#[tokio::test]
async fn create_failures_map_to_provider_errors_without_secrets() {
    let fake = FakeQuay::start().await;
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (failure, check) in [
        (
            Failure::Status(401),
            (|e: &ProviderError| matches!(e, ProviderError::Misconfigured(m) if m.contains("org:admin")))
                as fn(&ProviderError) -> bool,
        ),
        (
            Failure::Status(403),
            |e| matches!(e, ProviderError::Misconfigured(m) if m.contains("HTTP 403")),
        ),
        (
            Failure::Status(500),
            |e| matches!(e, ProviderError::Upstream { operation, .. } if *operation == "Quay create robot"),
        ),
        (Failure::Status(400), |e| {
            matches!(e, ProviderError::Upstream { .. })
        }),
        (
            Failure::Garbage,
            |e| matches!(e, ProviderError::Upstream { detail, .. } if detail.contains("malformed")),
        ),
        (Failure::Hang, |e| {
            matches!(e, ProviderError::Timeout { .. })
        }),
        (
            Failure::WrongName,
            |e| matches!(e, ProviderError::Upstream { detail, .. } if detail.contains("Quay named the robot")),
        ),
    ] {
        fake.set_failure_on(Endpoint::CreateRobot, failure.clone());
        let e = issue(&p, &req).await.expect_err("failure");
        assert!(check(&e), "{failure:?}: {e:?}");
        assert_no_secret(&e, &[INJECTED_SECRET, GARBAGE_SECRET, OAUTH_TOKEN]);
    }
    assert!(
        fake.robots().is_empty(),
        "a misnamed robot is taken back: {:?}",
        fake.robots()
    );
    assert_eq!(fake.deleted().len(), 1, "the misnamed robot");
}

/// Through Rise's HTTP API: configuration, policy, the response and its error mapping.
mod api {
    use axum::http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::support::app::{TestRise, start_error};

    fn registry_table(fake: &FakeQuay, extra: &str) -> String {
        format!(
            r#"
[registry]
type = "quay"
url = "{url}"
organization = "{ORG}"
token = "{OAUTH_TOKEN}"
insecure_http = true
request_timeout = "500ms"
{extra}
[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
"#,
            url = fake.url()
        )
    }

    #[tokio::test]
    async fn robot_credentials_through_the_api() {
        let fake = FakeQuay::start().await;
        let rise = TestRise::from_toml(&registry_table(&fake, "")).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let robots = fake.robots();
        assert_eq!(robots.len(), 1);
        let creds = &body["credentials"];
        assert_eq!(creds["registry_url"], fake.host());
        assert_eq!(creds["username"], robots[0].name);
        assert!(
            robots[0].name.starts_with("acme+rise_"),
            "{}",
            robots[0].name
        );
        assert_eq!(creds["password"], robots[0].token);
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3601).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "acme/my-app");
        assert_eq!(body["image"], format!("{}/acme/my-app", fake.host()));
        assert_eq!(
            body["scope"],
            json!({"repository": "acme/my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], true);
        assert_eq!(body["revocable"], true);
        assert_eq!(
            robots[0].permissions.get("my-app").map(String::as_str),
            Some("write")
        );
        let warnings = body["warnings"].to_string();
        assert!(
            warnings.contains("does not expire upstream"),
            "the caller is told Quay does not enforce the expiry: {warnings}"
        );
        assert!(
            warnings.contains("Rise deletes it within its cleanup interval"),
            "the caller is told who does enforce it: {warnings}"
        );
        assert!(
            !warnings.contains("not limited to repository"),
            "{warnings}"
        );

        let (status, body) = rise
            .get(
                "/registry/credentials?project=my-app&actions=pull&ttl=15m",
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let pull = fake
            .robots()
            .into_iter()
            .find(|r| body["credentials"]["username"] == r.name.as_str())
            .expect("second robot");
        assert_eq!(
            pull.permissions.get("my-app").map(String::as_str),
            Some("read")
        );
        assert_eq!(body["scope"]["actions"], json!(["pull"]));
        let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
        assert!((890..=901).contains(&expires_in), "{expires_in}");

        // A caller outside the policy reaches no provider call.
        let before = fake.requests_except_listings().len();
        let outsider = rise.token("mallory", &["others"]);
        let (status, _) = rise
            .get("/registry/credentials?project=my-app", Some(&outsider))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(fake.requests_except_listings().len(), before);
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504_naming_the_registry() {
        let fake = FakeQuay::start().await;
        let rise = TestRise::from_toml(&registry_table(&fake, "")).await;
        let token = rise.token("alice", &["developers"]);
        let uri = "/registry/credentials?project=my-app";
        for (failure, status, code, part) in [
            (
                Failure::Status(401),
                StatusCode::BAD_GATEWAY,
                "provider_misconfigured",
                "registry default is misconfigured",
            ),
            (
                Failure::Status(403),
                StatusCode::BAD_GATEWAY,
                "provider_misconfigured",
                "registry default is misconfigured",
            ),
            (
                Failure::Status(500),
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "registry default: Quay create robot failed",
            ),
            (
                Failure::Garbage,
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "registry default",
            ),
            (
                Failure::Hang,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "registry default: Quay create robot did not answer in time",
            ),
        ] {
            fake.set_failure(Some(failure.clone()));
            let got = rise.get_guarded(uri, &token).await;
            check_error(&got, status, code, part);
            let shown = got.1.to_string();
            assert!(
                !shown.contains(INJECTED_SECRET) && !shown.contains(GARBAGE_SECRET),
                "{failure:?}: {shown}"
            );
        }
        fake.set_failure_on(Endpoint::Permission, Failure::Status(500));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default: Quay grant repository permission failed",
        );
        assert!(fake.robots().is_empty(), "the robot was taken back");
    }

    #[tokio::test]
    async fn missing_token_is_a_clear_configuration_error() {
        let fake = FakeQuay::start().await;
        // The file loads: the token may come later from the environment.
        let e = start_error(
            &registry_table(&fake, "").replace(&format!("token = \"{OAUTH_TOKEN}\"\n"), ""),
            vec![],
            "a Quay registry without a token",
        )
        .await;
        assert!(e.contains("registry default"), "{e}");
        assert!(e.contains("token is not set"), "{e}");
        assert!(e.contains("RISE_REGISTRY__TOKEN"), "{e}");
        assert!(e.contains("org:admin"), "{e}");
    }

    /// `rise-backend grants revoke --credential ID --registry NAME` (the audit log's
    /// `credential_id`) deletes the robot, with the real binary; its output (at TRACE) carries
    /// no secret.
    #[tokio::test]
    async fn grants_revoke_deletes_a_quay_robot() {
        use crate::support::process::{COMMAND_TIMEOUT, run_with_timeout};
        use crate::support::rise_process::{command, write_config};

        let fake = FakeQuay::start().await;
        let p = provider(&fake, "").await;
        let c = issue(
            &p,
            &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
        )
        .await
        .expect("issued");
        let id = c.credential_id.clone().expect("id");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), &registry_table(&fake, ""));
        // The state of the server that issued it (`grants revoke` refuses a data directory
        // where no server ran).
        let setup =
            crate::support::rise_process::run(&config, &["check-config", "--offline"]).await;
        assert!(setup.status.success(), "{setup:?}");
        let mut cmd = command(
            &config,
            &[
                "grants",
                "revoke",
                "--credential",
                &id,
                "--registry",
                "default",
            ],
        );
        cmd.env("RISE_LOG", "trace");
        let out = run_with_timeout(cmd, COMMAND_TIMEOUT)
            .await
            .expect("grants revoke runs");
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&id) && said.contains("quay registry default"),
            "{said}"
        );
        assert!(fake.robot(&id).is_none());
        assert!(!fake.authorize(
            &c.username,
            c.password.expose_secret(),
            "acme/my-app",
            "pull"
        ));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("quay robot deleted"), "{text}");
        for s in [OAUTH_TOKEN, c.password.expose_secret()] {
            assert!(!text.contains(s), "a secret is in the output");
        }

        // Not one of Rise's robots: refused, nothing deleted.
        let other = fake.add_robot("builder", "CI builder", Some("my-app"));
        let out = run_with_timeout(
            command(
                &config,
                &[
                    "grants",
                    "revoke",
                    "--credential",
                    &other,
                    "--registry",
                    "default",
                ],
            ),
            COMMAND_TIMEOUT,
        )
        .await
        .expect("grants revoke runs");
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Rise deletes only its own robots"),
            "{out:?}"
        );
        assert!(fake.robot(&other).is_some());
    }

    /// Every log line of a real `rise-backend serve` at TRACE (reqwest and hyper included),
    /// through successes, every failure, a taken-back robot and the reaper's sweeps, is free of
    /// Rise's OAuth token, every robot token and the caller's token. A separate process: its
    /// logging does not depend on what other tests in this binary do.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        use crate::support::process::COMMAND_TIMEOUT;
        use crate::support::rise_process::{RiseProcess, caller_token, write_serve_config};

        let fake = FakeQuay::start().await;
        let past = unix_now() - 10;
        let expired = fake.add_robot(
            &format!("rise_{past}_0123456789ab"),
            "Rise robot until 2026-01-01T00:00:00Z",
            Some("my-app"),
        );
        let expired_token = fake.robot(&expired).expect("seeded").token;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_serve_config(
            dir.path(),
            &registry_table(&fake, "reap_interval = \"300ms\"\n"),
        );
        let token = caller_token(&config, "alice", &["developers"]).await;
        let process = RiseProcess::serve_logging(&config, "trace").await;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("client");
        for failure in [
            None,
            Some((None, Failure::Status(500))),
            Some((None, Failure::Status(401))),
            Some((None, Failure::Status(403))),
            Some((None, Failure::Garbage)),
            Some((None, Failure::Hang)),
            Some((Some(Endpoint::Permission), Failure::Status(500))),
            Some((Some(Endpoint::ListRobots), Failure::Garbage)),
            None,
        ] {
            let expect_ok = matches!(&failure, None | Some((Some(Endpoint::ListRobots), _)));
            match failure {
                None => fake.set_failure(None),
                Some((None, f)) => fake.set_failure(Some(f)),
                Some((Some(endpoint), f)) => fake.set_failure_on(endpoint, f),
            }
            let response = http
                .get(format!(
                    "{}/registry/credentials?project=my-app&ttl=1m",
                    process.url()
                ))
                .bearer_auth(&token)
                .send()
                .await
                .expect("Rise answers");
            let status = response.status().as_u16();
            if expect_ok {
                assert_eq!(status, 200);
            } else {
                assert!(status == 502 || status == 504, "{status}");
            }
            // Let a sweep run under this failure too.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        fake.set_failure(None);
        let logs = process.logs();
        drop(process);
        for expected in [
            "quay credential not issued",
            "quay robot deleted after a failed request",
            "quay reaper: deleted an expired Rise robot",
            "quay reaper: listing robots failed",
            "TRACE",
        ] {
            assert!(logs.contains(expected), "{expected:?} missing: {logs}");
        }
        assert!(fake.robot(&expired).is_none(), "the reaper deleted it");
        let mut secrets: Vec<String> = fake.robots().into_iter().map(|r| r.token).collect();
        secrets.extend(fake.deleted().into_iter().map(|r| r.token));
        assert!(secrets.len() >= 4, "robots were created: {}", secrets.len());
        secrets.extend(
            [
                OAUTH_TOKEN,
                INJECTED_SECRET,
                GARBAGE_SECRET,
                expired_token.as_str(),
                token.as_str(),
            ]
            .map(str::to_owned),
        );
        assert_logs_free_of(&logs, &secrets);
    }
}
