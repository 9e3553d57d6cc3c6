//! The ACR provider through the `RegistryProvider` trait and through Rise's HTTP API, against
//! the documented-API fake in `support::fake_acr` (Entra ID + ARM).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rise_backend::registry::providers::acr::{AcrConfig, AcrProvider};
use rise_backend::registry::providers::sweeper::SweepReport;
use rise_backend::registry::{Actions, IssuedCredential, ProviderError, RegistryProvider};
use secrecy::ExposeSecret;

use crate::support::fake_acr::{
    API_VERSION, CLIENT_ID, CLIENT_SECRET, Endpoint, Failure, FakeAcr, GARBAGE_SECRET,
    INJECTED_SECRET, LOGIN_SERVER, REGISTRY_NAME, TENANT_ID,
};
use crate::support::provider_calls::{GUARD, issue, request, revoke};
use crate::support::provider_checks::{assert_no_secret, assert_output_free_of};

fn config(fake: &FakeAcr, extra: &str) -> AcrConfig {
    let text = format!(
        "{}client_secret = \"{CLIENT_SECRET}\"\n{extra}",
        fake.config()
    );
    toml::from_str(&text).expect("valid test TOML")
}

async fn provider(fake: &FakeAcr, extra: &str) -> AcrProvider {
    AcrProvider::from_config("default", &config(fake, extra))
        .await
        .expect("valid provider configuration")
}

/// Asserts `credential` expires `secs` seconds (whole seconds, as ACR stores them) after some
/// instant in `[before, now]`.
fn assert_expires_in(c: &IssuedCredential, before: SystemTime, secs: u64) {
    let after = SystemTime::now();
    let lifetime = Duration::from_secs(secs);
    assert!(
        c.expires_at + Duration::from_secs(1) > before + lifetime
            && c.expires_at <= after + lifetime,
        "expires_at is not {secs}s after issuance"
    );
}

/// Now, in seconds since the epoch (token names carry their expiry so).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("epoch")
        .as_secs()
}

/// How many requests to the fake had `method` and a path `path` accepts.
fn requests_to(fake: &FakeAcr, method: &str, path: impl Fn(&str) -> bool) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == method && path(&r.path))
        .count()
}

fn registry_path() -> String {
    FakeAcr::registry_path()
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn push_credential_reaches_only_the_project_repository() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("credential issued");

    // The wire: Entra token, scope map, token, password, each polled to completion.
    let requests = fake.requests();
    let entra = &requests[0];
    assert_eq!(entra.path, format!("/{TENANT_ID}/oauth2/v2.0/token"));
    assert_eq!(entra.body["client_id"], CLIENT_ID);
    assert_eq!(entra.body["client_secret"], CLIENT_SECRET);
    assert_eq!(
        entra.body["scope"],
        format!("{}/.default", fake.base_url()),
        "the scope of the ARM that Rise talks to"
    );
    assert_eq!(entra.body["grant_type"], "client_credentials");
    let arm_token = fake.arm_tokens().pop().expect("an ARM token");
    for r in &requests[1..] {
        assert_eq!(r.api_version.as_deref(), Some(API_VERSION), "{r:?}");
        assert_eq!(r.bearer.as_deref(), Some(arm_token.as_str()), "{r:?}");
    }
    let calls: Vec<(String, String)> = requests[1..]
        .iter()
        // Polls, and the cleanup's token list that a first issuance starts in the background.
        .filter(|r| !r.path.contains("/operationStatuses/") && !r.path.ends_with("/tokens"))
        .map(|r| (r.method.clone(), r.path.replace(&registry_path(), "")))
        .collect();
    let map_name = calls[0].1.trim_start_matches("/scopeMaps/").to_owned();
    let token_name = c.credential_id.clone().expect("credential id");
    assert_eq!(
        calls,
        vec![
            ("PUT".to_owned(), format!("/scopeMaps/{map_name}")),
            ("GET".to_owned(), format!("/scopeMaps/{map_name}")),
            ("PUT".to_owned(), format!("/tokens/{token_name}")),
            ("GET".to_owned(), format!("/tokens/{token_name}")),
            ("POST".to_owned(), "/generateCredentials".to_owned()),
        ],
        "a Location poll, not a second POST, completes generateCredentials"
    );
    assert!(
        map_name.starts_with("rise-my-app-") && map_name.ends_with("-push"),
        "{map_name}"
    );
    let put_map = &requests[1];
    assert_eq!(
        put_map.body["properties"]["actions"],
        serde_json::json!([
            "repositories/my-app/content/read",
            "repositories/my-app/content/write",
            "repositories/my-app/metadata/read",
        ])
    );
    let put_token = requests
        .iter()
        .find(|r| r.method == "PUT" && r.path.contains("/tokens/"))
        .expect("token PUT");
    assert_eq!(
        put_token.body,
        serde_json::json!({"properties": {
            "scopeMapId": format!("{}/scopeMaps/{map_name}", registry_path()),
            "status": "enabled",
        }})
    );
    let generate = requests
        .iter()
        .find(|r| r.path.ends_with("/generateCredentials"))
        .expect("generateCredentials");
    assert_eq!(
        generate.body["tokenId"],
        format!("{}/tokens/{token_name}", registry_path())
    );
    assert_eq!(generate.body["name"], "password1");

    // The credential.
    let token = &fake.tokens()[&token_name];
    let password1 = token.password1.clone().expect("password1");
    assert_eq!(c.password.expose_secret(), password1.value);
    assert_eq!(c.username, token_name);
    assert!(
        token_name.starts_with("rise-") && token_name.contains("-req1-"),
        "{token_name}"
    );
    assert_eq!(c.registry_url, LOGIN_SERVER);
    assert_eq!(c.repository, "my-app");
    assert_eq!(c.image_reference(), format!("{LOGIN_SERVER}/my-app"));
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.repository_scoped && c.revocable && c.expiry_enforced);
    assert_expires_in(&c, before, 900);
    assert_eq!(
        password1.expiry,
        Some(c.expires_at),
        "ACR enforces the same instant"
    );

    let pw = c.password.expose_secret();
    for (repo, action, allowed) in [
        ("my-app", "push", true),
        ("my-app", "pull", true),
        ("my-app", "list", true),
        ("my-app", "delete", false),
        ("other", "pull", false),
        ("my-app-evil", "push", false),
        ("my-app/nested", "pull", false),
    ] {
        assert_eq!(
            fake.authorize(&c.username, pw, repo, action),
            allowed,
            "{action} on {repo}"
        );
    }
    assert!(!fake.authorize(&c.username, "wrong", "my-app", "pull"));
}

#[tokio::test]
async fn pull_only_credentials_cannot_write() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued");
    assert_eq!(c.granted_actions, Actions::PULL);
    let pw = c.password.expose_secret();
    assert!(fake.authorize(&c.username, pw, "my-app", "pull"));
    assert!(!fake.authorize(&c.username, pw, "my-app", "push"));
    let maps = fake.scope_maps();
    let (name, actions) = maps.iter().next().expect("one scope map");
    assert!(name.ends_with("-pull"), "{name}");
    assert_eq!(
        actions,
        &vec![
            "repositories/my-app/content/read".to_owned(),
            "repositories/my-app/metadata/read".to_owned()
        ]
    );
}

#[tokio::test]
async fn concurrent_issues_never_break_each_other() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
            req.request_id = format!("req-{i}");
            tokio::time::timeout(GUARD, p.issue(&req)).await
        }));
    }
    let mut credentials = Vec::new();
    for t in tasks {
        credentials.push(
            t.await
                .expect("task")
                .expect("bounded")
                .expect("credential issued"),
        );
    }
    let mut names: Vec<&str> = credentials.iter().map(|c| c.username.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 10, "one token per credential");
    // Every credential still works after all ten were minted.
    for c in &credentials {
        assert!(
            fake.authorize(&c.username, c.password.expose_secret(), "my-app", "push"),
            "{} was invalidated",
            c.username
        );
    }
    let requests = fake.requests();
    assert_eq!(fake.entra_requests(), 1, "one Entra token, fetched once");
    let map_puts = requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/scopeMaps/"))
        .count();
    assert_eq!(map_puts, 1, "the scope map is written once");
    assert_eq!(fake.scope_maps().len(), 1);
}

#[tokio::test]
async fn expiry_is_passed_capped_and_enforced() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "max_ttl = \"30m\"\n").await;
    assert_eq!(p.max_ttl(), Duration::from_secs(1800));
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(7200)),
    )
    .await
    .expect("credential issued");
    assert_expires_in(&c, before, 1800);
    let generate = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/generateCredentials"))
        .expect("generateCredentials");
    let asked = generate.body["expiry"].as_str().expect("expiry").to_owned();
    let secs = c
        .expires_at
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    assert_eq!(
        fake.tokens()[c.username.as_str()]
            .password1
            .clone()
            .expect("password1")
            .expiry
            .map(|e| e.duration_since(UNIX_EPOCH).expect("epoch").as_secs()),
        Some(secs),
        "ACR was asked for {asked}"
    );
    assert!(asked.ends_with('Z'), "{asked}");
    assert_eq!(
        c.username
            .split('-')
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok()),
        Some(secs),
        "the token name carries its expiry, for the cleanup"
    );

    // ACR refuses the password after its expiry.
    let short = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(1)),
    )
    .await
    .expect("credential issued");
    let pw = short.password.expose_secret();
    tokio::time::sleep(
        short
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(100),
    )
    .await;
    assert!(!fake.authorize(&short.username, pw, "my-app", "pull"));
}

#[tokio::test]
async fn entra_token_is_reused_then_refreshed() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    for project in ["my-app", "other-app", "my-app"] {
        issue(
            &p,
            &request(project, Actions::PULL, Duration::from_secs(600)),
        )
        .await
        .expect("credential issued");
    }
    assert_eq!(fake.entra_requests(), 1);

    // A token living 4s is refreshed after half its life.
    let fake = FakeAcr::start().await;
    fake.set_entra_expires_in(4);
    let p = provider(&fake, "").await;
    issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued");
    assert_eq!(fake.entra_requests(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued with a fresh token");
    assert_eq!(fake.entra_requests(), 2);
}

#[tokio::test]
async fn synchronous_replies_are_accepted() {
    let fake = FakeAcr::start().await;
    fake.set_async(false);
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued");
    assert!(fake.authorize(&c.username, c.password.expose_secret(), "my-app", "push"));
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("/operationStatuses/")
                || (r.method == "GET" && !r.path.ends_with("/tokens"))),
        "nothing to poll or read back"
    );
    p.revoke(c.credential_id.as_deref().expect("id"))
        .await
        .expect("revoked");
    assert!(fake.tokens().is_empty());
}

#[tokio::test]
async fn revoke_deletes_the_token() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued");
    let id = c.credential_id.clone().expect("id");
    let pw = c.password.expose_secret();
    assert!(fake.authorize(&c.username, pw, "my-app", "push"));
    revoke(&p, &id).await.expect("revoked");
    let r = fake
        .requests()
        .into_iter()
        .rfind(|r| r.method == "DELETE")
        .expect("DELETE");
    assert_eq!(r.path, format!("{}/tokens/{id}", registry_path()));
    assert!(!fake.tokens().contains_key(&id));
    assert!(!fake.authorize(&c.username, pw, "my-app", "pull"));
    // Deleting an absent token (204) is fine: revocation is idempotent.
    p.revoke(&id).await.expect("second revoke");

    // Only tokens Rise created can be revoked through Rise.
    fake.seed_token("myToken", "my-app");
    let before = fake.requests().len();
    for foreign in ["myToken", "rise-admin", "../scopeMaps/x", ""] {
        let e = p.revoke(foreign).await.expect_err(foreign);
        assert!(
            matches!(e, ProviderError::Unsupported(_)),
            "{foreign}: {e:?}"
        );
    }
    assert_eq!(fake.requests().len(), before, "no call for a foreign name");
    assert!(fake.tokens().contains_key("myToken"));
}

/// `rise-backend grants revoke --credential ID --registry NAME` (the audit log's
/// `credential_id`) deletes the ACR token, with the real binary.
#[tokio::test]
async fn grants_revoke_deletes_an_acr_token() {
    use crate::support::rise_process::{grants_revoke, write_config};
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued");
    let id = c.credential_id.clone().expect("id");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "[registries.azure]\ntype = \"acr\"\n{}client_secret = \"{CLIENT_SECRET}\"\n",
            fake.config()
        ),
    );
    let out = grants_revoke(&config, &id, "azure").await;
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&id) && said.contains("azure"), "{said}");
    assert!(!fake.tokens().contains_key(&id));
    assert!(!fake.authorize(&c.username, c.password.expose_secret(), "my-app", "pull"));
    assert_output_free_of(&out, &[CLIENT_SECRET]);
}

#[tokio::test]
async fn cleanup_deletes_only_expired_rise_tokens() {
    let fake = FakeAcr::start().await;
    fake.set_page_size(2);
    let now = unix_now();
    let expired: Vec<String> = (0..3)
        .map(|i| format!("rise-{}-old{i}-0a1b2c3d", now - 3600))
        .collect();
    for name in &expired {
        fake.seed_token(name, "my-app");
    }
    let live = format!("rise-{}-live-0a1b2c3d", now + 3600);
    let just_expired = format!("rise-{}-recent-0a1b2c3d", now - 5);
    for name in [
        live.as_str(),
        just_expired.as_str(),
        "myToken",
        "rise-admin",
        "rise-1000000000-x",
    ] {
        fake.seed_token(name, "my-app");
    }
    let p = provider(&fake, "cleanup_batch = 2\n").await;
    // Rise's live and just-expired tokens (within the minute of grace) are kept; names of
    // another shape are not counted at all.
    assert_eq!(
        p.sweep_expired().await,
        SweepReport {
            deleted: 2,
            kept: 2,
            failed: 0
        },
        "bounded by cleanup_batch"
    );
    assert_eq!(p.sweep_expired().await.deleted, 1);
    assert_eq!(p.sweep_expired().await.deleted, 0);
    let left: Vec<String> = fake.tokens().into_keys().collect();
    for name in &expired {
        assert!(!left.contains(name), "{name} was not deleted");
    }
    for name in [
        live.as_str(),
        just_expired.as_str(),
        "myToken",
        "rise-admin",
        "rise-1000000000-x",
    ] {
        assert!(left.iter().any(|l| l == name), "{name} must be kept");
    }
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path.ends_with("/tokens") && r.method == "GET"),
        "listed"
    );
}

#[tokio::test]
async fn issuance_triggers_a_background_cleanup() {
    let fake = FakeAcr::start().await;
    let now = unix_now();
    let old = format!("rise-{}-old-0a1b2c3d", now - 3600);
    fake.seed_token(&old, "my-app");
    let p = provider(&fake, "cleanup_interval = \"0s\"\n").await;
    issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("credential issued");
    eventually("the expired token is deleted", || {
        !fake.tokens().contains_key(&old)
    })
    .await;
    assert_eq!(fake.tokens().len(), 1, "the new token stays");
}

/// A registry at its SKU's token limit refuses a new token with `QuotaExceeded` (with a 409,
/// which must not be waited out as a conflict, or a 400): Rise deletes its expired tokens at
/// once and creates the token again, once. When nothing has expired, the issuance fails and says
/// what to change.
#[tokio::test]
async fn reaching_the_token_limit_cleans_up_at_once_and_retries() {
    use axum::http::StatusCode;
    for status in [StatusCode::CONFLICT, StatusCode::BAD_REQUEST] {
        let fake = FakeAcr::start().await;
        fake.set_token_limit(3, status);
        let now = unix_now();
        let old = format!("rise-{}-old-0a1b2c3d", now - 3600);
        fake.seed_token(&old, "my-app");
        fake.seed_token("someone-elses", "my-app");
        // The background cleanup is not due for an hour: only the immediate one can make room.
        // A cleanup now counts as the last one (deleting `old`, seeded again after it).
        let p = provider(&fake, "cleanup_interval = \"1h\"\n").await;
        p.sweep_expired().await;
        fake.seed_token(&old, "my-app");
        let req = request("my-app", Actions::PULL, Duration::from_secs(600));
        let live = issue(&p, &req).await.expect("room for one");

        let puts = || requests_to(&fake, "PUT", |path| path.contains("/tokens/"));
        let before = puts();
        let c = issue(&p, &req)
            .await
            .unwrap_or_else(|e| panic!("{status}: the expired token made room: {e:?}"));
        assert_eq!(
            puts(),
            before + 2,
            "{status}: refused once, created on the retry"
        );
        assert!(
            !fake.tokens().contains_key(&old),
            "{status}: deleted at once"
        );
        assert!(
            fake.tokens().contains_key("someone-elses"),
            "{status}: never touched"
        );
        assert!(fake.authorize(&c.username, c.password.expose_secret(), "my-app", "pull"));

        // Full of live tokens: one retry, then a failure that says what to do.
        let before = puts();
        let e = issue(&p, &req).await.expect_err("nothing expired");
        assert_eq!(puts(), before + 2, "{status}: one retry, no conflict waits");
        assert!(
            matches!(&e, ProviderError::Upstream { detail, .. }
                if detail.contains("at its SKU's token limit")
                    && detail.contains("QuotaExceeded")
                    && detail.contains("max_ttl")),
            "{status}: {e:?}"
        );
        assert!(
            fake.tokens()
                .contains_key(live.credential_id.as_deref().expect("id"))
        );
    }
}

/// Issuances that find the registry full at the same time share one cleanup: the registry's
/// tokens are listed once, and each retries into the room it made. When one cleanup cannot make
/// room for all (it deletes at most `cleanup_batch`), those still refused clean up again, once
/// between them, and all are served.
#[tokio::test]
async fn issuances_at_the_token_limit_together_share_one_cleanup() {
    for (cleanup_batch, cleanups) in [(20, 1), (2, 2)] {
        let fake = FakeAcr::start().await;
        fake.set_token_limit(4, axum::http::StatusCode::CONFLICT);
        let now = unix_now();
        let p = provider(
            &fake,
            &format!("cleanup_interval = \"1h\"\ncleanup_batch = {cleanup_batch}\n"),
        )
        .await;
        // A cleanup now counts as the last one, so only the immediate ones run from here.
        p.sweep_expired().await;
        for i in 0..4 {
            fake.seed_token(&format!("rise-{}-old{i}-0a1b2c3d", now - 3600), "my-app");
        }
        let lists = || requests_to(&fake, "GET", |path| path.ends_with("/tokens"));
        let before = lists();
        let req = request("my-app", Actions::PULL, Duration::from_secs(600));
        let issued = futures_util::future::join_all((0..4).map(|_| issue(&p, &req))).await;
        for c in &issued {
            assert!(c.is_ok(), "cleanup_batch {cleanup_batch}: {c:?}");
        }
        assert_eq!(
            lists() - before,
            cleanups,
            "cleanup_batch {cleanup_batch}: cleanups between them"
        );
        assert_eq!(fake.tokens().len(), 4, "the four new tokens");
    }
}

#[tokio::test]
async fn upstream_failures_become_provider_errors() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "request_timeout = \"300ms\"\n").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (endpoint, failure, expect, operation) in [
        (Endpoint::Entra, Failure::Status(401), "misconfigured", ""),
        (Endpoint::Entra, Failure::Status(400), "misconfigured", ""),
        (
            Endpoint::Entra,
            Failure::Status(500),
            "upstream",
            "Entra ID token request",
        ),
        (
            Endpoint::Entra,
            Failure::Garbage,
            "upstream",
            "Entra ID token request",
        ),
        (
            Endpoint::Entra,
            Failure::Hang,
            "timeout",
            "Entra ID token request",
        ),
        (Endpoint::Arm, Failure::Status(403), "misconfigured", ""),
        (
            Endpoint::ScopeMaps,
            Failure::Status(500),
            "upstream",
            "ACR scope map update",
        ),
        (
            Endpoint::ScopeMaps,
            Failure::Status(429),
            "upstream",
            "ACR scope map update",
        ),
        (
            Endpoint::ScopeMaps,
            Failure::Hang,
            "timeout",
            "ACR scope map update",
        ),
        (
            Endpoint::Tokens,
            Failure::Status(500),
            "upstream",
            "ACR token create",
        ),
        (
            Endpoint::GenerateCredentials,
            Failure::Status(500),
            "upstream",
            "ACR generate credentials",
        ),
        (
            Endpoint::GenerateCredentials,
            Failure::Garbage,
            "upstream",
            "ACR generate credentials",
        ),
        (
            Endpoint::GenerateCredentials,
            Failure::Hang,
            "timeout",
            "ACR generate credentials",
        ),
    ] {
        // A fresh provider each time: nothing cached from an earlier round.
        let p = if endpoint == Endpoint::Entra {
            provider(&fake, "request_timeout = \"300ms\"\n").await
        } else {
            p.clone()
        };
        fake.set_failure(endpoint, Some(failure.clone()));
        let e = issue(&p, &req).await.expect_err("failure");
        fake.set_failure(endpoint, None);
        let (kind, op) = match &e {
            ProviderError::Upstream { operation, .. } => ("upstream", *operation),
            ProviderError::Timeout { operation, after } => {
                assert_eq!(*after, Duration::from_millis(300));
                ("timeout", *operation)
            }
            ProviderError::Misconfigured(m) => {
                if endpoint == Endpoint::Entra {
                    assert!(m.contains("tenant_id, client_id and client_secret"), "{m}");
                } else {
                    assert!(
                        m.contains("tokens/{read,write,delete}") && m.contains("scopeMaps"),
                        "{m}"
                    );
                }
                ("misconfigured", "")
            }
            ProviderError::Unsupported(_) => ("unsupported", ""),
        };
        assert_eq!(
            (kind, op),
            (expect, operation),
            "{endpoint:?} {failure:?}: {e}"
        );
        assert_no_secret(&e, &[CLIENT_SECRET, INJECTED_SECRET, GARBAGE_SECRET]);
        for t in fake.arm_tokens() {
            assert_no_secret(&e, &[&t]);
        }
    }
    // Tokens of failed issuances are deleted in the background.
    eventually("no token is left behind", || fake.tokens().is_empty()).await;
}

#[tokio::test]
async fn wrong_client_secret_is_an_operator_problem() {
    let fake = FakeAcr::start().await;
    let config: AcrConfig = toml::from_str(&format!(
        "{}client_secret = \"wrong-secret-value-1234\"\n",
        fake.config()
    ))
    .expect("toml");
    let p = AcrProvider::from_config("default", &config)
        .await
        .expect("valid");
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("401");
    match &e {
        ProviderError::Misconfigured(m) => assert!(
            m.contains("401") && m.contains("invalid_client") && m.contains("AADSTS7000215"),
            "{m}"
        ),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert_no_secret(&e, &["wrong-secret-value-1234"]);
}

#[tokio::test]
async fn unknown_registry_is_an_operator_problem() {
    let fake = FakeAcr::start().await;
    let config: AcrConfig = toml::from_str(
        &format!("{}client_secret = \"{CLIENT_SECRET}\"\n", fake.config()).replace(
            "registry_name = \"riseregistry\"",
            "registry_name = \"otherregistry\"",
        ),
    )
    .expect("toml");
    let other = AcrProvider::from_config("default", &config)
        .await
        .expect("valid");
    let e = issue(
        &other,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("404");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(m.contains("404") && m.contains("registry_name"), "{m}")
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn replies_wider_or_longer_than_asked_are_refused() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    fake.set_failure(Endpoint::ScopeMaps, Some(Failure::WidenScope));
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("a wider scope map is refused");
    assert!(
        matches!(&e, ProviderError::Upstream { operation, detail } if *operation == "ACR scope map update" && detail.contains("repositories/*/content/write")),
        "{e:?}"
    );
    assert!(fake.tokens().is_empty(), "no token was created");

    fake.set_failure(Endpoint::ScopeMaps, None);
    fake.set_failure(Endpoint::GenerateCredentials, Some(Failure::LongerExpiry));
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("a longer-lived password is refused");
    assert!(
        matches!(&e, ProviderError::Upstream { operation, .. } if *operation == "ACR generate credentials"),
        "{e:?}"
    );
    for t in fake.tokens().values() {
        if let Some(pw) = &t.password1 {
            assert_no_secret(&e, &[&pw.value]);
        }
    }
    eventually("the token is deleted", || fake.tokens().is_empty()).await;

    // A token reply naming another token: no password is generated for that one.
    fake.set_failure(Endpoint::GenerateCredentials, None);
    fake.set_async(false);
    fake.set_failure(Endpoint::Tokens, Some(Failure::OtherTokenId));
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("a reply about another token is refused");
    assert!(
        matches!(&e, ProviderError::Upstream { operation, detail } if *operation == "ACR token create" && detail.contains("registry-admin-token")),
        "{e:?}"
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.body.to_string().contains("registry-admin-token")),
        "no call was made for the other token"
    );
    eventually("the token is deleted", || fake.tokens().is_empty()).await;
    fake.set_failure(Endpoint::Tokens, None);
    fake.set_async(true);

    // Credentials of another user than the token Rise created are not handed out.
    fake.set_failure(Endpoint::GenerateCredentials, Some(Failure::OtherUser));
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("another user's credentials are refused");
    assert!(
        matches!(&e, ProviderError::Upstream { operation, detail } if *operation == "ACR generate credentials" && detail.contains(REGISTRY_NAME)),
        "{e:?}"
    );
    eventually("the token is deleted", || fake.tokens().is_empty()).await;
}

/// ARM may answer a PUT 201 with a provisioningState still running and no
/// `Azure-AsyncOperation` header: the resource itself is then polled until it is provisioned.
#[tokio::test]
async fn without_an_operation_header_the_resource_is_polled() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    fake.set_header_less(Some(2));
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("issued once provisioned");
    let token = c.password.expose_secret();
    assert!(fake.authorize(&c.username, token, "my-app", "push"));
    let token_reads = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/tokens/"))
        .count();
    assert_eq!(token_reads, 3, "read while Creating twice, then Succeeded");

    // ARM may not have caught up with its own 201: a 404 then is still provisioning.
    fake.set_missing_first_read(true);
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("issued after a 404 right after the 201");
    assert!(fake.authorize(&c.username, c.password.expose_secret(), "my-app", "pull"));
}

#[tokio::test]
async fn a_conflicting_scope_map_write_is_retried() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    fake.set_failure(Endpoint::ScopeMaps, Some(Failure::ConflictOnce));
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("issued after the conflict");
    assert!(fake.authorize(&c.username, c.password.expose_secret(), "my-app", "pull"));
    let puts = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/scopeMaps/"))
        .count();
    assert_eq!(puts, 2);
}

#[tokio::test]
async fn long_running_operations_are_bounded() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "operation_timeout = \"400ms\"\n").await;
    fake.set_failure(Endpoint::Arm, Some(Failure::Stuck));
    let started = std::time::Instant::now();
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("never finishes");
    assert!(
        matches!(&e, ProviderError::Timeout { operation, after } if *operation == "ACR scope map update" && *after == Duration::from_millis(400)),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let polls = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/operationStatuses/"))
        .count();
    assert!(polls >= 2, "it polled ({polls}) before giving up");
}

#[tokio::test]
async fn stopped_upstream_is_an_upstream_error() {
    let fake = FakeAcr::start().await;
    let p = provider(&fake, "").await;
    fake.stop();
    tokio::task::yield_now().await;
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("nothing listens");
    assert!(
        matches!(&e, ProviderError::Upstream { operation, .. } if *operation == "Entra ID token request"),
        "{e:?}"
    );
    assert_no_secret(&e, &[CLIENT_SECRET]);
}

// --- Through the HTTP router, in-process ------------------------------------------------

mod api {

    use axum::http::StatusCode;
    use serde_json::json;

    use crate::support::app::TestRise;
    use crate::support::fake_acr::{
        CLIENT_SECRET, Endpoint, Failure, FakeAcr, GARBAGE_SECRET, INJECTED_SECRET, LOGIN_SERVER,
    };
    use crate::support::provider_checks::{assert_logs_free_of, check_error};

    async fn rise(fake: &FakeAcr) -> TestRise {
        TestRise::from_toml(&format!(
            r#"
[registry]
type = "acr"
{config}client_secret = "{CLIENT_SECRET}"
request_timeout = "500ms"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
"#,
            config = fake.config()
        ))
        .await
    }

    #[tokio::test]
    async fn scoped_credential_through_the_api() {
        let fake = FakeAcr::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let creds = &body["credentials"];
        let username = creds["username"].as_str().expect("username");
        let password = creds["password"].as_str().expect("password");
        assert_eq!(creds["registry_url"], LOGIN_SERVER);
        assert!(fake.tokens().contains_key(username));
        assert!(fake.authorize(username, password, "my-app", "push"));
        assert!(!fake.authorize(username, password, "other", "pull"));
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3600).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "my-app");
        assert_eq!(body["image"], format!("{LOGIN_SERVER}/my-app"));
        assert_eq!(
            body["scope"],
            json!({"repository": "my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], true);
        assert_eq!(body["revocable"], true);
        assert!(body.get("warnings").is_none(), "{body}");

        let (status, body) = rise
            .get(
                "/registry/credentials?project=my-app&actions=pull&ttl=15m",
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let creds = &body["credentials"];
        let username = creds["username"].as_str().expect("username");
        let password = creds["password"].as_str().expect("password");
        assert!(fake.authorize(username, password, "my-app", "pull"));
        assert!(!fake.authorize(username, password, "my-app", "push"));
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((890..=900).contains(&expires_in), "{expires_in}");
        assert_eq!(body["scope"]["actions"], json!(["pull"]));
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504() {
        let fake = FakeAcr::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let uri = "/registry/credentials?project=my-app";

        fake.set_failure(Endpoint::Arm, Some(Failure::Status(500)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default: ACR scope map update failed",
        );
        assert!(!got.1.to_string().contains(INJECTED_SECRET), "{}", got.1);

        fake.set_failure(Endpoint::Arm, Some(Failure::Status(403)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "provider_misconfigured",
            "registry default is misconfigured",
        );

        fake.set_failure(Endpoint::Arm, Some(Failure::Status(401)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "provider_misconfigured",
            "registry default is misconfigured",
        );

        fake.set_failure(Endpoint::Arm, Some(Failure::Hang));
        let got = rise.get_guarded(uri, &token).await;
        check_error(
            &got,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "did not answer in time",
        );
        fake.set_failure(Endpoint::Arm, None);

        // Entra refusing Rise's client credentials: the operator must act.
        let fresh = self::rise(&fake).await;
        let token = fresh.token("alice", &["developers"]);
        fake.set_failure(Endpoint::Entra, Some(Failure::Status(401)));
        let got = fresh.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "provider_misconfigured",
            "registry default is misconfigured",
        );
    }

    /// Every log line of successes and failures, at TRACE (reqwest and hyper included), is free
    /// of the client secret, the ARM tokens and every generated password.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        let captured = crate::support::logs::TraceCapture::start();

        let fake = FakeAcr::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let mut passwords = Vec::new();
        let uri = "/registry/credentials?project=my-app";
        for (endpoint, failure) in [
            (Endpoint::Arm, None),
            (Endpoint::Arm, Some(Failure::Status(500))),
            (Endpoint::Arm, Some(Failure::Status(403))),
            (Endpoint::GenerateCredentials, Some(Failure::Garbage)),
            (Endpoint::GenerateCredentials, Some(Failure::LongerExpiry)),
            (Endpoint::Arm, Some(Failure::Hang)),
        ] {
            fake.set_failure(endpoint, failure);
            let got = rise.get_guarded(uri, &token).await;
            if got.0 == StatusCode::OK {
                passwords.push(
                    got.1["credentials"]["password"]
                        .as_str()
                        .expect("password")
                        .to_owned(),
                );
            }
            fake.set_failure(endpoint, None);
        }
        // Entra refusing the client secret, with no cached ARM token.
        let fresh = self::rise(&fake).await;
        let fresh_token = fresh.token("alice", &["developers"]);
        fake.set_failure(Endpoint::Entra, Some(Failure::Status(401)));
        let got = fresh.get(uri, Some(&fresh_token)).await;
        assert_eq!(got.0, StatusCode::BAD_GATEWAY, "{}", got.1);
        fake.set_failure(Endpoint::Entra, None);
        assert!(!passwords.is_empty());
        let logs = captured.text();
        assert!(
            logs.contains("acr credential not issued"),
            "the capture works: {logs}"
        );
        let mut secrets: Vec<String> = fake.arm_tokens();
        assert!(!secrets.is_empty());
        secrets.extend(passwords);
        for t in fake.tokens().values() {
            for pw in [&t.password1, &t.password2].into_iter().flatten() {
                secrets.push(pw.value.clone());
            }
        }
        secrets.extend(
            [
                CLIENT_SECRET,
                INJECTED_SECRET,
                GARBAGE_SECRET,
                token.as_str(),
                fresh_token.as_str(),
            ]
            .map(str::to_owned),
        );
        assert_logs_free_of(&logs, &secrets);
    }
}
