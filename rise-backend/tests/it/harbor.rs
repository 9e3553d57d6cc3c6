//! The Harbor provider through the `RegistryProvider` trait and through Rise's HTTP API, against
//! the documented-API fake in `support::fake_harbor`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use rise_backend::registry::providers::harbor::{HarborConfig, HarborProvider};
use rise_backend::registry::providers::sweeper::SweepReport;
use rise_backend::registry::{Actions, IssuedCredential, ProviderError, RegistryProvider};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::fake_harbor::{
    ADMIN_PASSWORD, ADMIN_USER, Auth, DEV_PASSWORD, DEV_USER, Failure, FakeHarbor, Permission,
};
use crate::support::provider_calls::{GUARD, issue, request, revoke};
use crate::support::provider_checks::{assert_no_secret, assert_output_free_of};

fn config(fake: &FakeHarbor, extra: &str) -> HarborConfig {
    let text = format!(
        "url = \"{}\"\nproject = \"{{project}}\"\nusername = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\ninsecure_http = true\nrequest_timeout = \"500ms\"\n{extra}",
        fake.url()
    );
    toml::from_str(&text).expect("valid test TOML")
}

async fn provider(fake: &FakeHarbor, extra: &str) -> HarborProvider {
    HarborProvider::from_config("default", &config(fake, extra))
        .await
        .expect("valid provider configuration")
}

fn id_of(c: &IssuedCredential) -> i64 {
    c.credential_id
        .as_deref()
        .expect("credential id")
        .parse()
        .expect("numeric id")
}

#[tokio::test]
async fn push_robot_reaches_exactly_its_harbor_project() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("robot created");

    let creates: Vec<_> = fake
        .requests_except_listings()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(creates.len(), 1);
    let r = &creates[0];
    assert_eq!(r.path, "/api/v2.0/robots");
    assert_eq!(
        r.auth,
        Auth::Basic {
            user: ADMIN_USER.into(),
            password: ADMIN_PASSWORD.into()
        }
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let name = r.body["name"].as_str().expect("name").to_owned();
    let description = r.body["description"].as_str().expect("description");
    assert!(
        description.starts_with("Rise robot until ")
            && description.contains("for alice of issuer local: registry default, project my-app (pull,push), request req-1"),
        "{description}"
    );
    assert_eq!(
        r.body,
        json!({
            "name": name,
            "description": description,
            "level": "system",
            "disable": false,
            "duration": 1,
            "permissions": [{
                "kind": "project",
                "namespace": "my-app",
                "access": [
                    {"resource": "repository", "action": "pull"},
                    {"resource": "repository", "action": "push"}
                ]
            }]
        })
    );
    // The name carries the Rise expiry: 900 s after issuance, rounded up.
    let (prefix, rest) = name.split_at("rise-".len());
    assert_eq!(prefix, "rise-");
    let expiry: u64 = rest
        .split('-')
        .next()
        .expect("expiry")
        .parse()
        .expect("digits");
    let issued = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    assert!(
        (issued + 900..=issued + 903).contains(&expiry),
        "{expiry} vs {issued}"
    );

    let robot = fake.robot(id_of(&c)).expect("robot exists");
    assert_eq!(c.username, robot.name());
    assert_eq!(c.username, format!("robot${name}"));
    assert_eq!(c.password.expose_secret(), robot.secret);
    assert_eq!(robot.duration, 1);
    assert_eq!(
        c.expires_at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(expiry)
    );
    assert_eq!(c.registry_url, fake.host());
    assert_eq!(c.repository, "my-app/my-app");
    assert_eq!(
        c.image_reference(),
        format!("{}/my-app/my-app", fake.host())
    );
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.repository_scoped, "a Harbor project per Rise project");
    assert!(c.revocable);
    assert!(
        !c.expiry_enforced,
        "Harbor keeps the robot a day; Rise's reaper deletes it"
    );

    let secret = c.password.expose_secret();
    for (repository, action, allowed) in [
        ("my-app/my-app", "push", true),
        ("my-app/my-app", "pull", true),
        // Harbor scopes robots per project: every repository of the Rise project's own project.
        ("my-app/my-app/nested", "push", true),
        ("other-app/other-app", "pull", false),
        ("other-app/other-app", "push", false),
        ("shared/my-app", "pull", false),
    ] {
        assert_eq!(
            fake.authorize(&c.username, secret, repository, action),
            allowed,
            "{action} on {repository}"
        );
    }
    assert!(!fake.authorize(&c.username, "wrong", "my-app/my-app", "pull"));
}

#[tokio::test]
async fn pull_only_requests_get_pull_only_robots() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("robot created");
    let robot = fake.robot(id_of(&c)).expect("robot exists");
    assert_eq!(
        robot.permissions,
        vec![Permission {
            kind: "project".into(),
            namespace: "my-app".into(),
            access: vec![("repository".into(), "pull".into())],
        }]
    );
    assert_eq!(c.granted_actions, Actions::PULL);
    let secret = c.password.expose_secret();
    assert!(fake.authorize(&c.username, secret, "my-app/my-app", "pull"));
    assert!(!fake.authorize(&c.username, secret, "my-app/my-app", "push"));
}

#[tokio::test]
async fn shared_harbor_project_is_reported_unscoped_and_ttl_is_capped() {
    let fake = FakeHarbor::start().await;
    let text = format!(
        "url = \"{}\"\nproject = \"shared\"\nusername = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\ninsecure_http = true\nmax_ttl = \"30m\"\n",
        fake.url()
    );
    let p = HarborProvider::from_config("default", &toml::from_str(&text).expect("TOML"))
        .await
        .expect("valid");
    assert_eq!(p.max_ttl(), Duration::from_secs(1800));
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(7200)),
    )
    .await
    .expect("robot created");
    assert_eq!(c.repository, "shared/my-app");
    assert!(!c.repository_scoped, "neighbours share the Harbor project");
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.expires_at <= SystemTime::now() + Duration::from_secs(1800));
    assert!(
        c.expires_at >= before + Duration::from_secs(1799),
        "whole seconds, rounded down"
    );
    let secret = c.password.expose_secret();
    assert!(fake.authorize(&c.username, secret, "shared/other-app", "push"));
}

#[tokio::test]
async fn concurrent_requests_get_distinct_robots() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    let (a, b, c, d) = tokio::join!(
        issue(&p, &req),
        issue(&p, &req),
        issue(&p, &req),
        issue(&p, &req)
    );
    let (e, f, g, h) = tokio::join!(
        issue(&p, &req),
        issue(&p, &req),
        issue(&p, &req),
        issue(&p, &req)
    );
    let creds: Vec<IssuedCredential> = [a, b, c, d, e, f, g, h]
        .into_iter()
        .map(|r| r.expect("robot created"))
        .collect();
    let ids: HashSet<_> = creds.iter().map(id_of).collect();
    let names: HashSet<_> = creds.iter().map(|c| c.username.clone()).collect();
    let secrets: HashSet<_> = creds
        .iter()
        .map(|c| c.password.expose_secret().to_owned())
        .collect();
    assert_eq!((ids.len(), names.len(), secrets.len()), (8, 8, 8));
    assert_eq!(fake.robots().len(), 8);
}

#[tokio::test]
async fn a_taken_name_is_retried_with_another() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    fake.set_failure_on("POST", Failure::Status(409));
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(60)),
    )
    .await
    .expect_err("conflicts every time");
    assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
    let posts = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 2, "one retry with a fresh name");
    let names: HashSet<_> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body["name"].to_string())
        .collect();
    assert_eq!(names.len(), 2);
}

#[tokio::test]
async fn revoke_deletes_the_robot() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("robot created");
    let id = c.credential_id.clone().expect("id");
    let secret = c.password.expose_secret();
    assert!(fake.authorize(&c.username, secret, "my-app/my-app", "push"));

    p.revoke(&id).await.expect("deleted");
    let deletes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].path, format!("/api/v2.0/robots/{id}"));
    assert!(fake.robot(id_of(&c)).is_none());
    assert!(!fake.authorize(&c.username, secret, "my-app/my-app", "pull"));
    // Already gone (by the reaper, an operator): nothing to do.
    p.revoke(&id).await.expect("idempotent");
}

#[tokio::test]
async fn revoke_refuses_what_is_not_a_rise_robot() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    for bad in ["abc", "../1", "0", "-1", "", "1/2", "1 "] {
        let e = p.revoke(bad).await.expect_err(bad);
        assert!(matches!(e, ProviderError::Unsupported(_)), "{bad}: {e:?}");
    }
    assert!(fake.requests().is_empty(), "no request for a malformed id");
    let ci = fake.add_robot(
        "ci-builder",
        "the CI's robot",
        "system",
        vec![Permission {
            kind: "project".into(),
            namespace: "*".into(),
            access: vec![("repository".into(), "push".into())],
        }],
    );
    let lookalike = fake.add_robot("rise-1-0123456789ab", "someone's robot", "system", vec![]);
    for id in [ci, lookalike] {
        let e = p.revoke(&id.to_string()).await.expect_err("not Rise's");
        assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
        assert!(fake.robot(id).is_some(), "robot {id} left alone");
    }
    assert!(fake.requests().iter().all(|r| r.method != "DELETE"));
}

/// Wait for the background sweep the first request starts, so a test's own sweeps are alone.
async fn settle(fake: &FakeHarbor, p: &HarborProvider) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !fake
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path == "/api/v2.0/robots")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sweep after the first request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Waits for the running sweep; then finds nothing expired yet.
    let report = p.sweep_expired().await;
    assert_eq!((report.deleted, report.failed), (0, 0));
}

#[tokio::test]
async fn sweep_deletes_expired_rise_robots_and_leaves_others() {
    let fake = FakeHarbor::start().await;
    // A long interval: this test sweeps by hand.
    let p = provider(&fake, "reap_interval = \"1h\"\n").await;
    let short = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(2)),
    )
    .await
    .expect("robot created");
    let long = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(3600)),
    )
    .await
    .expect("robot created");
    // The first request after start sweeps in the background: let it finish first.
    settle(&fake, &p).await;
    let rise_description = "Rise robot until 2020-01-01T00:00:00Z for x";
    let others = [
        fake.add_robot("ci-builder", "the CI's robot", "system", vec![]),
        // A Rise-looking name without Rise's description.
        fake.add_robot("rise-1-0123456789ab", "not Rise's", "system", vec![]),
        // Rise's description on a project robot.
        fake.add_robot(
            "my-app+rise-1-0123456789ab",
            rise_description,
            "project",
            vec![],
        ),
        // Another prefix.
        fake.add_robot("other-1-0123456789ab", rise_description, "system", vec![]),
    ];
    // An expired Rise robot left by an earlier run.
    let leftover = fake.add_robot("rise-1-abcdefabcdef", rise_description, "system", vec![]);
    tokio::time::sleep(Duration::from_millis(3100)).await;

    let report = tokio::time::timeout(GUARD, p.sweep_expired())
        .await
        .expect("bounded");
    assert_eq!(
        report,
        SweepReport {
            deleted: 2,
            kept: 1,
            failed: 0
        }
    );
    assert!(fake.robot(id_of(&short)).is_none());
    assert!(fake.robot(leftover).is_none());
    assert!(fake.robot(id_of(&long)).is_some());
    for id in others {
        assert!(fake.robot(id).is_some(), "robot {id} left alone");
    }
    let listing = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/api/v2.0/robots")
        .expect("listed");
    assert_eq!(
        listing.query.as_deref(),
        Some("q=name%3D%7Erise-&page=1&page_size=100")
    );

    // A failing Harbor: nothing deleted, counted, retried next time.
    let expiring = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(1)),
    )
    .await
    .expect("robot created");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    fake.set_failure_on("DELETE", Failure::Status(500));
    let report = p.sweep_expired().await;
    assert_eq!((report.deleted, report.failed), (0, 1));
    fake.set_failure(None);
    let report = p.sweep_expired().await;
    assert_eq!((report.deleted, report.failed), (1, 0));
    assert!(fake.robot(id_of(&expiring)).is_none());
}

#[tokio::test]
async fn sweep_pages_through_many_robots() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "reap_interval = \"1h\"\n").await;
    let description = "Rise robot until 2020-01-01T00:00:00Z for x";
    for i in 0..230 {
        fake.add_robot(&format!("rise-1-{i:012x}"), description, "system", vec![]);
    }
    let report = p.sweep_expired().await;
    assert_eq!(report.deleted, 230);
    assert!(fake.robots().is_empty());
}

#[tokio::test]
async fn the_reaper_runs_by_itself() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "reap_interval = \"200ms\"\n").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(1)),
    )
    .await
    .expect("robot created");
    let kept = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("robot created");
    let ci = fake.add_robot("ci-builder", "the CI's robot", "system", vec![]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.robot(id_of(&c)).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper did not delete the expired robot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!fake.authorize(
        &c.username,
        c.password.expose_secret(),
        "my-app/my-app",
        "pull"
    ));
    assert!(fake.robot(id_of(&kept)).is_some());
    assert!(fake.robot(ci).is_some());

    // Dropping the provider stops its reaper.
    drop(p);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = fake.requests().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.requests().len(), seen, "no sweep after drop");
}

#[tokio::test]
async fn harbor_itself_expires_robots_after_a_day() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("robot created");
    let secret = c.password.expose_secret();
    fake.advance(Duration::from_secs(23 * 3600));
    assert!(fake.authorize(&c.username, secret, "my-app/my-app", "pull"));
    fake.advance(Duration::from_secs(3600));
    assert!(
        !fake.authorize(&c.username, secret, "my-app/my-app", "pull"),
        "the backstop when Rise cannot delete it"
    );
}

/// Harbor's one-day expiry is the backstop when Rise cannot delete a robot: a robot created
/// with a longer life (or none) is deleted and refused.
#[tokio::test]
async fn robots_outliving_the_backstop_are_deleted_and_refused() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    for days in [30, -1] {
        fake.override_duration(Some(days));
        let err = issue(
            &p,
            &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
        )
        .await
        .expect_err("a robot living longer than a day is refused");
        let shown = err.to_string();
        assert!(
            shown.contains("expire") && shown.contains("was deleted"),
            "{days}: {shown}"
        );
        assert!(fake.robots().is_empty(), "{days}: the robot was taken back");
    }
    fake.override_duration(None);
    issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("a one-day robot is fine");
}

#[tokio::test]
async fn upstream_failures_become_provider_errors() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (failure, check) in [
        (
            Failure::Status(401),
            (|e: &ProviderError| matches!(e, ProviderError::Misconfigured(m) if m.contains("check username and password")))
                as fn(&ProviderError) -> bool,
        ),
        (
            Failure::Status(403),
            |e| matches!(e, ProviderError::Misconfigured(m) if m.contains("may not manage system robot accounts")),
        ),
        (
            Failure::Status(500),
            |e| matches!(e, ProviderError::Upstream { operation, detail } if *operation == "Harbor create robot" && detail.contains("500")),
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
    ] {
        fake.set_failure(Some(failure.clone()));
        let e = issue(&p, &req).await.expect_err("fails");
        assert!(check(&e), "{failure:?}: {e:?}");
        assert_no_secret(
            &e,
            &[
                ADMIN_PASSWORD,
                crate::support::fake_harbor::INJECTED_SECRET,
                "garbage-secret-should-never-be-logged",
            ],
        );
    }
    fake.set_failure(None);
    assert!(fake.robots().is_empty());
}

#[tokio::test]
async fn real_permission_errors_are_operator_problems() {
    let fake = FakeHarbor::start().await;
    let text = format!(
        "url = \"{}\"\nproject = \"{{project}}\"\nusername = \"{DEV_USER}\"\npassword = \"{DEV_PASSWORD}\"\ninsecure_http = true\n",
        fake.url()
    );
    let p = HarborProvider::from_config("default", &toml::from_str(&text).expect("TOML"))
        .await
        .expect("valid");
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(60)),
    )
    .await
    .expect_err("not an admin");
    assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
    assert_no_secret(&e, &[DEV_PASSWORD]);

    let wrong = text.replace(DEV_PASSWORD, "wrong-password-1a2b3c");
    let p = HarborProvider::from_config("default", &toml::from_str(&wrong).expect("TOML"))
        .await
        .expect("valid");
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(60)),
    )
    .await
    .expect_err("wrong password");
    assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
    assert_no_secret(&e, &["wrong-password-1a2b3c"]);

    // A Harbor project that does not exist: Harbor's 404, an upstream error.
    let p = provider(&fake, "").await;
    let e = issue(
        &p,
        &request("no-such-app", Actions::PULL, Duration::from_secs(60)),
    )
    .await
    .expect_err("no project");
    assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
}

#[tokio::test]
async fn revoke_failures_are_provider_errors() {
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(60)),
    )
    .await
    .expect("robot created");
    let id = c.credential_id.clone().expect("id");
    fake.set_failure_on("DELETE", Failure::Status(500));
    let e = p.revoke(&id).await.expect_err("500");
    assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
    fake.set_failure_on("DELETE", Failure::Status(403));
    let e = p.revoke(&id).await.expect_err("403");
    assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
    fake.set_failure(Some(Failure::Hang));
    let e = revoke(&p, &id).await.expect_err("hang");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    fake.set_failure(None);
    assert!(fake.robot(id_of(&c)).is_some());
}

/// The operator's way in: `rise-backend grants revoke --credential ID --registry NAME` deletes a
/// Harbor robot with the real binary and records it.
#[tokio::test]
async fn grants_revoke_deletes_a_harbor_robot() {
    use crate::support::rise_process::{audit_records, grants_revoke, write_config};
    let fake = FakeHarbor::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("robot created");
    let id = c.credential_id.clone().expect("id");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "[registries.harbor]\ntype = \"harbor\"\nurl = \"{}\"\nproject = \"{{project}}\"\nusername = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\ninsecure_http = true\n",
            fake.url(),
        ),
    );
    let revoked = grants_revoke(&config, &id, "harbor").await;
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(fake.robot(id_of(&c)).is_none());
    assert!(!fake.authorize(
        &c.username,
        c.password.expose_secret(),
        "my-app/my-app",
        "pull"
    ));
    assert_output_free_of(&revoked, &[ADMIN_PASSWORD, c.password.expose_secret()]);
    let records = audit_records(&config).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["operation"], "revoke");
    assert_eq!(records[0]["registry"], "harbor");
    assert_eq!(records[0]["credential_id"], id.as_str());
}

mod api {
    use axum::http::StatusCode;
    use serde_json::json;

    use crate::support::app::{TestRise, start_error};
    use crate::support::fake_harbor::{
        ADMIN_PASSWORD, ADMIN_USER, Failure, FakeHarbor, INJECTED_SECRET,
    };
    use crate::support::provider_checks::{assert_logs_free_of, check_error};

    fn registry_table(fake: &FakeHarbor) -> String {
        format!(
            r#"
[registry]
type = "harbor"
url = "{url}"
project = "{{project}}"
username = "{ADMIN_USER}"
password = "{ADMIN_PASSWORD}"
insecure_http = true
request_timeout = "500ms"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
"#,
            url = fake.url()
        )
    }

    async fn rise(fake: &FakeHarbor) -> TestRise {
        TestRise::from_toml(&registry_table(fake)).await
    }

    #[tokio::test]
    async fn robot_credentials_through_the_api() {
        let fake = FakeHarbor::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let robots = fake.robots();
        assert_eq!(robots.len(), 1);
        let creds = &body["credentials"];
        assert_eq!(creds["registry_url"], fake.host());
        assert_eq!(creds["username"], robots[0].name());
        assert!(
            robots[0].name().starts_with("robot$rise-"),
            "{}",
            robots[0].name()
        );
        assert_eq!(creds["password"], robots[0].secret);
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3601).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "my-app/my-app");
        assert_eq!(body["image"], format!("{}/my-app/my-app", fake.host()));
        assert_eq!(
            body["scope"],
            json!({"repository": "my-app/my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], true);
        assert_eq!(body["revocable"], true);
        assert!(
            robots[0].description.contains("for alice of issuer local"),
            "{}",
            robots[0].description
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
            .find(|r| body["credentials"]["username"] == r.name())
            .expect("second robot");
        assert_eq!(
            pull.permissions[0].access,
            vec![("repository".into(), "pull".into())]
        );
        let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
        assert!((890..=901).contains(&expires_in), "{expires_in}");
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504_naming_the_registry() {
        let fake = FakeHarbor::start().await;
        let rise = rise(&fake).await;
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
                "registry default: Harbor create robot failed",
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
                "registry default: Harbor create robot did not answer in time",
            ),
        ] {
            fake.set_failure(Some(failure.clone()));
            let got = rise.get_guarded(uri, &token).await;
            check_error(&got, status, code, part);
            let shown = got.1.to_string();
            assert!(
                !shown.contains(INJECTED_SECRET) && !shown.contains("garbage-secret"),
                "{failure:?}: {shown}"
            );
        }
    }

    #[tokio::test]
    async fn missing_password_is_a_clear_configuration_error() {
        let fake = FakeHarbor::start().await;
        // The file loads: the password may come later from the environment.
        let e = start_error(
            &registry_table(&fake).replace(&format!("password = \"{ADMIN_PASSWORD}\"\n"), ""),
            vec![],
            "a Harbor registry without a password",
        )
        .await;
        assert!(e.contains("registry default"), "{e}");
        assert!(e.contains("password is not set"), "{e}");
        assert!(e.contains("RISE_REGISTRY__PASSWORD"), "{e}");
    }

    /// Every log line of a real `rise-backend serve` at TRACE (reqwest and hyper included),
    /// through successes, every failure and the reaper's sweeps, is free of Rise's Harbor
    /// password, every robot secret and the caller's token. A separate process: its logging
    /// does not depend on what other tests in this binary do.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        use crate::support::process::COMMAND_TIMEOUT;
        use crate::support::rise_process::{RiseProcess, caller_token, write_serve_config};

        let fake = FakeHarbor::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_serve_config(
            dir.path(),
            &registry_table(&fake).replace(
                "request_timeout = \"500ms\"\n",
                "request_timeout = \"500ms\"\nreap_interval = \"300ms\"\n",
            ),
        );
        let token = caller_token(&config, "alice", &["developers"]).await;
        let process = RiseProcess::serve_logging(&config, "trace").await;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("client");
        for failure in [
            None,
            Some(Failure::Status(500)),
            Some(Failure::Status(401)),
            Some(Failure::Status(403)),
            Some(Failure::Garbage),
            Some(Failure::Hang),
            None,
        ] {
            fake.set_failure(failure.clone());
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
            match failure {
                None => assert_eq!(status, 200),
                Some(_) => assert!(status == 502 || status == 504, "{failure:?}: {status}"),
            }
            // Let a sweep run under this failure too.
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        }
        fake.set_failure(None);
        let logs = process.logs();
        drop(process);
        assert!(
            logs.contains("harbor credential not issued"),
            "the capture works: {logs}"
        );
        assert!(
            logs.contains("harbor reaper"),
            "sweeps ran and logged: {logs}"
        );
        assert!(logs.contains("TRACE"), "at trace level: {logs}");
        let mut secrets: Vec<String> = fake.robots().into_iter().map(|r| r.secret).collect();
        secrets.extend(fake.deleted().into_iter().map(|r| r.secret));
        assert_eq!(secrets.len(), 2, "two robots were created");
        secrets.extend(
            [
                ADMIN_PASSWORD,
                INJECTED_SECRET,
                "garbage-secret-should-never-be-logged",
                token.as_str(),
            ]
            .map(str::to_owned),
        );
        assert_logs_free_of(&logs, &secrets);
    }
}
