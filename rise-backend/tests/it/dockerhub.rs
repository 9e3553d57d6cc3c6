//! The Docker Hub provider through the `RegistryProvider` trait and through Rise's HTTP API,
//! against the documented-API fake in `support::fake_dockerhub`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rise_backend::registry::providers::dockerhub::{DockerhubConfig, DockerhubProvider};
use rise_backend::registry::{Actions, ProviderError, RegistryProvider, RepositoryName};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::fake_dockerhub::{
    Endpoint, Failure, FakeDockerHub, INJECTED_SECRET, MEMBER_PASSWORD, MEMBER_USER, ORG,
    OWNER_PASSWORD, OWNER_PAT, OWNER_USER,
};
use crate::support::provider_calls::{issue, request, revoke};
use crate::support::provider_checks::{assert_no_secret, assert_output_free_of};

const CREATE_PATH: &str = "/v2/orgs/myorg/access-tokens";

fn config(fake: &FakeDockerHub, extra: &str) -> DockerhubConfig {
    let text = format!(
        "organization = \"{ORG}\"\napi_url = \"{}\"\ninsecure_http = true\n{extra}",
        fake.api_url()
    );
    toml::from_str(&text).expect("valid test TOML")
}

fn owner() -> String {
    format!("username = \"{OWNER_USER}\"\npassword = \"{OWNER_PASSWORD}\"\n")
}

async fn provider_named(name: &str, fake: &FakeDockerHub, extra: &str) -> DockerhubProvider {
    DockerhubProvider::from_config(name, &config(fake, extra))
        .await
        .expect("valid provider configuration")
}

/// The owner's provider; background cleanup off so request logs are deterministic.
async fn provider(fake: &FakeDockerHub, extra: &str) -> DockerhubProvider {
    provider_named(
        "default",
        fake,
        &format!("{}delete_expired = false\n{extra}", owner()),
    )
    .await
}

fn floor(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs())
}

/// The `expires_at` Rise sent in a create body.
fn sent_expiry(body: &Value) -> SystemTime {
    humantime::parse_rfc3339(body["expires_at"].as_str().expect("expires_at string"))
        .expect("RFC 3339")
}

/// Asserts `at` is `ttl` after some instant in `[before, after]`, in whole seconds rounded down.
fn assert_lifetime(at: SystemTime, before: SystemTime, ttl: Duration) {
    let after = SystemTime::now();
    assert!(
        at >= floor(before + ttl) && at <= after + ttl,
        "expiry {} is not {ttl:?} after issuance",
        humantime::format_rfc3339_seconds(at)
    );
}

#[tokio::test]
async fn push_token_is_restricted_to_the_project_repository() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("token minted");

    let sign_ins = fake.requests_to("POST", "/v2/auth/token");
    assert_eq!(sign_ins.len(), 1);
    assert_eq!(
        sign_ins[0].body,
        json!({"identifier": OWNER_USER, "secret": OWNER_PASSWORD})
    );
    let creates = fake.requests_to("POST", CREATE_PATH);
    assert_eq!(creates.len(), 1);
    let jwt = creates[0].bearer.clone().expect("bearer JWT");
    assert_eq!(jwt.split('.').count(), 3, "the sign-in JWT is the bearer");
    let mut body = creates[0].body.clone();
    let expiry = sent_expiry(&body);
    assert_lifetime(expiry, before, Duration::from_secs(900));
    body.as_object_mut().expect("object").remove("expires_at");
    assert_eq!(
        body,
        json!({
            "label": "rise default/my-app req-1",
            "description": "Rise default/my-app (pull,push) for alice of issuer local, request req-1",
            "resources": [{
                "type": "TYPE_REPO",
                "path": "myorg/my-app",
                "scopes": ["scope-image-pull", "scope-image-push"],
            }],
        })
    );

    let oats = fake.oats();
    assert_eq!(oats.len(), 1);
    assert_eq!(c.password.expose_secret(), oats[0].token);
    assert_eq!(c.credential_id.as_deref(), Some(oats[0].id.as_str()));
    assert_eq!(c.registry_url, "docker.io");
    assert_eq!(
        c.username, ORG,
        "Docker's user name for an OAT is the organization"
    );
    assert_eq!(c.repository, "myorg/my-app");
    assert_eq!(c.image_reference(), "docker.io/myorg/my-app");
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.repository_scoped);
    assert!(c.revocable);
    assert!(c.expiry_enforced);
    assert_eq!(Some(c.expires_at), oats[0].expires_at);
    assert_eq!(c.expires_at, expiry);

    let token = c.password.expose_secret();
    for (repository, action, allowed) in [
        ("myorg/my-app", "pull", true),
        ("myorg/my-app", "push", true),
        ("myorg/other", "pull", false),
        ("myorg/my-app-evil", "push", false),
        ("otherorg/my-app", "pull", false),
    ] {
        assert_eq!(
            fake.authorize(&c.username, token, repository, action),
            allowed,
            "{action} on {repository}"
        );
    }
    assert!(!fake.authorize(OWNER_USER, token, "myorg/my-app", "pull"));
}

#[tokio::test]
async fn pull_only_requests_get_pull_only_tokens() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(
        fake.oats()[0].resources,
        vec![(
            "TYPE_REPO".to_owned(),
            "myorg/my-app".to_owned(),
            vec!["scope-image-pull".to_owned()]
        )]
    );
    assert_eq!(c.granted_actions, Actions::PULL);
    assert!(c.repository_scoped);
    let token = c.password.expose_secret();
    assert!(fake.authorize(ORG, token, "myorg/my-app", "pull"));
    assert!(!fake.authorize(ORG, token, "myorg/my-app", "push"));
}

#[tokio::test]
async fn expiry_is_the_requested_lifetime_capped_at_max_ttl() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "max_ttl = \"1h\"\n").await;
    assert_eq!(p.max_ttl(), Duration::from_secs(3600));
    for (asked, expected) in [(1200, 1200), (48 * 3600, 3600)] {
        let before = SystemTime::now();
        let c = issue(
            &p,
            &request("my-app", Actions::PULL, Duration::from_secs(asked)),
        )
        .await
        .expect("token minted");
        let sent = sent_expiry(
            &fake
                .requests_to("POST", CREATE_PATH)
                .pop()
                .expect("create")
                .body,
        );
        assert_lifetime(sent, before, Duration::from_secs(expected));
        assert_eq!(c.expires_at, sent);
    }
}

#[tokio::test]
async fn the_sign_in_is_shared_and_reused() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    for _ in 0..4 {
        issue(
            &p,
            &request("my-app", Actions::PULL, Duration::from_secs(600)),
        )
        .await
        .expect("token minted");
    }
    assert_eq!(fake.sign_ins(), 1, "one sign-in for four requests");
    let bearers: Vec<_> = fake
        .requests_to("POST", CREATE_PATH)
        .into_iter()
        .map(|r| r.bearer)
        .collect();
    assert!(bearers.windows(2).all(|w| w[0] == w[1]), "one JWT");

    // Concurrent first requests of a fresh provider wait on one sign-in.
    let p = Arc::new(provider(&fake, "").await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let p = p.clone();
        tasks.spawn(async move {
            issue(
                &*p,
                &request("my-app", Actions::PULL, Duration::from_secs(600)),
            )
            .await
            .map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("token minted");
    }
    assert_eq!(fake.sign_ins(), 2, "the fresh provider signed in once");
}

#[tokio::test]
async fn expiring_or_ended_sign_ins_are_renewed() {
    let fake = FakeDockerHub::start().await;
    // Shorter than Rise's renewal margin: every request signs in again.
    fake.set_jwt_lifetime(Duration::from_secs(30));
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PULL, Duration::from_secs(600));
    issue(&p, &req).await.expect("first");
    issue(&p, &req).await.expect("second");
    assert_eq!(fake.sign_ins(), 2);

    // Docker Hub ends the JWT early: the 401 drops it and the create is retried once.
    fake.set_jwt_lifetime(Duration::from_secs(600));
    let p = provider(&fake, "").await;
    issue(&p, &req).await.expect("signed in");
    fake.revoke_jwts();
    let creates_before = fake.requests_to("POST", CREATE_PATH).len();
    issue(&p, &req).await.expect("retried with a fresh sign-in");
    assert_eq!(fake.sign_ins(), 4);
    assert_eq!(
        fake.requests_to("POST", CREATE_PATH).len(),
        creates_before + 2
    );
}

/// A token that got more than asked (no expiry, a later one even within max_ttl, other
/// repositories) is deleted and refused, never handed out.
#[tokio::test]
async fn wider_or_longer_tokens_are_deleted_and_refused() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "max_ttl = \"1h\"\n").await;
    for (failure, says) in [
        (Failure::NonExpiring, "never expires"),
        (
            Failure::LaterExpiry(Duration::from_secs(600)),
            "later than the",
        ),
        (
            Failure::LaterExpiry(Duration::from_secs(7200)),
            "later than the",
        ),
        (Failure::WidenScope, "myorg/*"),
    ] {
        fake.set_failure(Endpoint::Create, Some(failure.clone()));
        let e = issue(
            &p,
            &request("my-app", Actions::PULL, Duration::from_secs(900)),
        )
        .await
        .expect_err("never handed out");
        assert!(
            matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains(says) && detail.contains("it was deleted")),
            "{failure:?}: {e:?}"
        );
        let oat = fake.oats().pop().expect("minted");
        assert!(oat.deleted, "{failure:?}: the token was taken back");
        assert_no_secret(&e, &[&oat.token, OWNER_PASSWORD]);
    }
}

/// A reply without `resources` cannot prove the restriction: reported unscoped, not refused.
#[tokio::test]
async fn unconfirmed_restrictions_are_reported_unscoped() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    fake.set_failure(Endpoint::Create, Some(Failure::NoResources));
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("a credential");
    assert!(
        !c.repository_scoped,
        "no resources in the reply: unconfirmed"
    );
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
}

#[tokio::test]
async fn nested_repository_names_are_refused() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    let mut req = request("my-app", Actions::PULL, Duration::from_secs(600));
    req.repository = RepositoryName::parse("team/my-app").expect("valid name");
    let e = issue(&p, &req).await.expect_err("two levels");
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn revoke_deletes_rises_token_and_nothing_else() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("token minted");
    let id = c.credential_id.clone().expect("id");
    let token = c.password.expose_secret();
    assert!(fake.authorize(ORG, token, "myorg/my-app", "push"));

    p.revoke(&id).await.expect("revoked");
    let path = format!("{CREATE_PATH}/{id}");
    assert_eq!(fake.requests_to("GET", &path).len(), 1, "read first");
    let deletes = fake.requests_to("DELETE", &path);
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].bearer.is_some());
    assert!(fake.oat_by_token(token).expect("known").deleted);
    assert!(!fake.authorize(ORG, token, "myorg/my-app", "pull"));
    // Unknown (already deleted): nothing can use it.
    p.revoke(&id).await.expect("idempotent");

    let foreign = fake.seed("ci pipeline", None);
    let e = p.revoke(&foreign).await.expect_err("not Rise's");
    assert!(
        matches!(&e, ProviderError::Unsupported(m) if m.contains("not created by this Rise registry")),
        "{e:?}"
    );
    assert!(!fake.oats().iter().any(|o| o.id == foreign && o.deleted));

    let before = fake.requests().len();
    for bad in ["../access-tokens", "a/b", "", "x?y"] {
        let e = p.revoke(bad).await.expect_err(bad);
        assert!(matches!(e, ProviderError::Unsupported(_)), "{bad}: {e:?}");
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "bad ids never reach Docker Hub"
    );
}

/// `rise-backend grants revoke --credential ID --registry NAME` deletes the OAT with the real
/// binary and records the revocation.
#[tokio::test]
async fn grants_revoke_deletes_a_docker_hub_token() {
    use crate::support::rise_process::{audit_records, grants_revoke, write_config};
    let fake = FakeDockerHub::start().await;
    let p = provider_named(
        "hub",
        &fake,
        &format!("{}delete_expired = false\n", owner()),
    )
    .await;
    let mut req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(900));
    req.registry = "hub".into();
    let c = issue(&p, &req).await.expect("token minted");
    let id = c.credential_id.clone().expect("id");
    let token = c.password.expose_secret();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "[registries.hub]\ntype = \"dockerhub\"\norganization = \"{ORG}\"\napi_url = \"{}\"\ninsecure_http = true\n{}",
            fake.api_url(),
            owner()
        ),
    );

    let revoked = grants_revoke(&config, &id, "hub").await;
    assert!(revoked.status.success(), "{revoked:?}");
    let said = String::from_utf8_lossy(&revoked.stdout);
    assert!(
        said.contains(&format!(
            "revoked credential {id} of dockerhub registry hub"
        )),
        "{said}"
    );
    assert!(fake.oat_by_token(token).expect("known").deleted);
    assert!(!fake.authorize(ORG, token, "myorg/my-app", "pull"));
    let records = audit_records(&config).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["operation"], "revoke");
    assert_eq!(records[0]["registry"], "hub");
    assert_eq!(records[0]["credential_id"], id.as_str());
    assert_output_free_of(&revoked, &[OWNER_PASSWORD, token]);
}

#[tokio::test]
async fn cleanup_deletes_only_rises_expired_tokens() {
    let fake = FakeDockerHub::start().await;
    fake.set_token_limit(1000);
    // More than one page of other tokens before Rise's.
    for i in 0..120 {
        fake.seed(&format!("team token {i}"), None);
    }
    let foreign_expired = fake.seed(
        "ci pipeline",
        Some(SystemTime::now() - Duration::from_secs(5)),
    );
    let other_registry = fake.seed(
        "rise eu/my-app req-9",
        Some(SystemTime::now() - Duration::from_secs(5)),
    );
    let p = provider(&fake, "").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let c = issue(
            &p,
            &request("my-app", Actions::PULL, Duration::from_secs(600)),
        )
        .await
        .expect("token minted");
        ids.push(c.credential_id.expect("id"));
    }
    fake.expire(&ids[0]);
    fake.expire(&ids[1]);

    let report = p.sweep_expired().await;
    assert_eq!((report.deleted, report.kept, report.failed), (2, 1, 0));
    let oats = fake.oats();
    let deleted = |id: &str| oats.iter().any(|o| o.id == id && o.deleted);
    assert!(deleted(&ids[0]) && deleted(&ids[1]));
    assert!(!deleted(&ids[2]), "live tokens stay");
    assert!(
        !deleted(&foreign_expired),
        "other tokens are not Rise's to delete"
    );
    assert!(
        !deleted(&other_registry),
        "nor those of another Rise registry"
    );
    let pages: Vec<_> = fake
        .requests_to("GET", CREATE_PATH)
        .into_iter()
        .map(|r| {
            (
                r.query.get("page").cloned(),
                r.query.get("page_size").cloned(),
            )
        })
        .collect();
    assert_eq!(
        pages,
        vec![
            (Some("1".into()), Some("100".into())),
            (Some("2".into()), Some("100".into()))
        ]
    );
}

#[tokio::test]
async fn reaching_the_token_limit_sweeps_and_retries_once() {
    let fake = FakeDockerHub::start().await;
    fake.set_token_limit(2);
    let p = provider_named(
        "default",
        &fake,
        &format!("{}cleanup_interval = \"1h\"\n", owner()),
    )
    .await;
    let req = request("my-app", Actions::PULL, Duration::from_secs(600));
    let first = issue(&p, &req).await.expect("first");
    let second = issue(&p, &req).await.expect("second");
    // Let the background sweep started by the first request finish.
    p.sweep_expired().await;

    let e = issue(&p, &req).await.expect_err("limit, nothing expired");
    assert!(
        matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains("limit on access tokens")),
        "{e:?}"
    );

    for c in [&first, &second] {
        fake.expire(c.credential_id.as_deref().expect("id"));
    }
    let creates = fake.requests_to("POST", CREATE_PATH).len();
    issue(&p, &req).await.expect("room made, retried");
    assert_eq!(fake.requests_to("POST", CREATE_PATH).len(), creates + 2);
    assert_eq!(fake.oats().iter().filter(|o| o.deleted).count(), 2);
}

/// Creates refused at the limit together share one sweep, and each retries into the room it
/// made: the organization's tokens are listed once.
#[tokio::test]
async fn creates_at_the_token_limit_together_share_one_sweep() {
    let fake = FakeDockerHub::start().await;
    fake.set_token_limit(2);
    let p = provider_named(
        "default",
        &fake,
        &format!("{}cleanup_interval = \"1h\"\n", owner()),
    )
    .await;
    let req = request("my-app", Actions::PULL, Duration::from_secs(600));
    let first = issue(&p, &req).await.expect("first");
    let second = issue(&p, &req).await.expect("second");
    // Let the background sweep started by the first request finish.
    p.sweep_expired().await;
    for c in [&first, &second] {
        fake.expire(c.credential_id.as_deref().expect("id"));
    }
    let lists = || fake.requests_to("GET", CREATE_PATH).len();
    let before = lists();
    let both = futures_util::future::join(issue(&p, &req), issue(&p, &req)).await;
    assert!(both.0.is_ok() && both.1.is_ok(), "{both:?}");
    assert_eq!(lists() - before, 1, "one sweep between them");
    assert_eq!(fake.oats().iter().filter(|o| o.deleted).count(), 2);
}

#[tokio::test]
async fn upstream_failures_become_provider_errors() {
    let fake = FakeDockerHub::start().await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (endpoint, failure, expect) in [
        (Endpoint::Create, Failure::Status(500), "upstream"),
        (Endpoint::Create, Failure::Status(503), "upstream"),
        (Endpoint::Create, Failure::Status(401), "misconfigured"),
        (Endpoint::Create, Failure::Status(403), "misconfigured"),
        (Endpoint::Create, Failure::Status(429), "rate limited"),
        (Endpoint::Create, Failure::Garbage, "upstream"),
        (Endpoint::Create, Failure::Hang, "timeout"),
        (Endpoint::SignIn, Failure::Status(401), "misconfigured"),
        (Endpoint::SignIn, Failure::Status(500), "upstream"),
        (Endpoint::SignIn, Failure::Garbage, "upstream"),
        (Endpoint::SignIn, Failure::Hang, "timeout"),
    ] {
        // A fresh provider per case, so a sign-in failure is not hidden by a cached JWT.
        let p = provider(&fake, "request_timeout = \"300ms\"\n").await;
        fake.set_failure(endpoint, Some(failure.clone()));
        let e = issue(&p, &req).await.expect_err("failure");
        fake.set_failure(endpoint, None);
        let kind = match &e {
            ProviderError::Upstream { operation, .. } if operation.contains("rate limited") => {
                "rate limited"
            }
            ProviderError::Upstream { operation, .. } => {
                let want = if endpoint == Endpoint::SignIn {
                    "Docker Hub sign-in"
                } else {
                    "Docker Hub create access token"
                };
                assert_eq!(*operation, want, "{failure:?}");
                "upstream"
            }
            ProviderError::Timeout { after, .. } => {
                assert_eq!(*after, Duration::from_millis(300));
                "timeout"
            }
            ProviderError::Misconfigured(_) => "misconfigured",
            ProviderError::Unsupported(_) => "unsupported",
        };
        assert_eq!(kind, expect, "{endpoint:?} {failure:?}: {e}");
        assert_no_secret(&e, &[OWNER_PASSWORD, INJECTED_SECRET, "eyJinjected"]);
    }
}

#[tokio::test]
async fn refused_identities_are_operator_problems() {
    let fake = FakeDockerHub::start().await;
    let req = request("my-app", Actions::PULL, Duration::from_secs(600));
    for (credentials, part) in [
        (
            format!("username = \"{OWNER_USER}\"\npassword = \"wrong-password-value\"\n"),
            "check username and password",
        ),
        (
            format!("username = \"{MEMBER_USER}\"\npassword = \"{MEMBER_PASSWORD}\"\n"),
            "owner of the organization",
        ),
        (
            format!("username = \"{OWNER_USER}\"\naccess_token = \"{OWNER_PAT}\"\n"),
            "token issued from personal access token is not allowed",
        ),
    ] {
        let p = provider_named("default", &fake, &credentials).await;
        let e = issue(&p, &req).await.expect_err("refused");
        match &e {
            ProviderError::Misconfigured(m) => assert!(m.contains(part), "{m}"),
            other => panic!("expected Misconfigured, got {other:?}"),
        }
        assert_no_secret(
            &e,
            &[
                "wrong-password-value",
                MEMBER_PASSWORD,
                OWNER_PAT,
                OWNER_PASSWORD,
            ],
        );
    }
    assert!(fake.oats().is_empty());
}

#[tokio::test]
async fn revoke_failures_are_provider_errors() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "request_timeout = \"300ms\"\n").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    let id = c.credential_id.expect("id");
    fake.set_failure(Endpoint::Delete, Some(Failure::Status(500)));
    let e = revoke(&p, &id).await.expect_err("500");
    assert!(
        matches!(e, ProviderError::Upstream { operation, .. } if operation == "Docker Hub delete access token"),
        "{e:?}"
    );
    fake.set_failure(Endpoint::Delete, Some(Failure::Hang));
    let e = revoke(&p, &id).await.expect_err("hang");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    assert!(!fake.oats()[0].deleted);
}

#[tokio::test]
async fn stopped_upstream_is_an_upstream_error() {
    let fake = FakeDockerHub::start().await;
    let p = provider(&fake, "").await;
    fake.stop();
    // Let the aborted server task drop its listener.
    tokio::task::yield_now().await;
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("nothing listens");
    assert!(
        matches!(e, ProviderError::Upstream { operation, .. } if operation == "Docker Hub sign-in"),
        "{e:?}"
    );
    assert_no_secret(&e, &[OWNER_PASSWORD]);
}

#[tokio::test]
async fn a_missing_password_names_the_variable_to_set() {
    let e = crate::support::app::start_error(
        &format!("[registry]\ntype = \"dockerhub\"\norganization = \"{ORG}\"\n"),
        vec![("RISE_REGISTRY__USERNAME".into(), OWNER_USER.into())],
        "no password",
    )
    .await;
    assert!(e.contains("RISE_REGISTRY__PASSWORD"), "{e}");
    assert!(e.contains("registry default"), "{e}");
}

// --- Through the HTTP router, in-process ------------------------------------------------

mod api {

    use axum::http::StatusCode;
    use serde_json::json;

    use crate::support::app::TestRise;
    use crate::support::fake_dockerhub::{
        Endpoint, Failure, FakeDockerHub, INJECTED_SECRET, ORG, OWNER_PASSWORD, OWNER_USER,
    };
    use crate::support::provider_checks::{assert_logs_free_of, check_error};

    async fn rise(fake: &FakeDockerHub) -> TestRise {
        TestRise::from_toml(&format!(
            r#"
[registry]
type = "dockerhub"
organization = "{ORG}"
username = "{OWNER_USER}"
password = "{OWNER_PASSWORD}"
api_url = "{api}"
insecure_http = true
request_timeout = "500ms"
delete_expired = false

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
"#,
            api = fake.api_url()
        ))
        .await
    }

    #[tokio::test]
    async fn scoped_token_through_the_api() {
        let fake = FakeDockerHub::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let oats = fake.oats();
        assert_eq!(oats.len(), 1);
        let creds = &body["credentials"];
        assert_eq!(creds["registry_url"], "docker.io");
        assert_eq!(creds["username"], ORG);
        assert_eq!(creds["password"], oats[0].token);
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3600).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "myorg/my-app");
        assert_eq!(body["image"], "docker.io/myorg/my-app");
        assert_eq!(
            body["scope"],
            json!({"repository": "myorg/my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], true);
        assert_eq!(body["revocable"], true);
        assert!(body.get("warnings").is_none(), "{body}");
        assert_eq!(
            oats[0].resources[0].2,
            vec!["scope-image-pull".to_owned(), "scope-image-push".to_owned()]
        );
        assert!(
            oats[0].description.contains("for alice of issuer local"),
            "{}",
            oats[0].description
        );
        let password = creds["password"].as_str().expect("password");
        assert!(fake.authorize(ORG, password, "myorg/my-app", "push"));

        let (status, body) = rise
            .get(
                "/registry/credentials?project=my-app&actions=pull&ttl=15m",
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
        assert!((890..=900).contains(&expires_in), "{expires_in}");
        let oat = fake.oats().pop().expect("second");
        assert_eq!(oat.resources[0].2, vec!["scope-image-pull".to_owned()]);
        let password = body["credentials"]["password"].as_str().expect("password");
        assert!(!fake.authorize(ORG, password, "myorg/my-app", "push"));
        assert_eq!(fake.sign_ins(), 1, "the Hub JWT is reused across requests");
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504_naming_the_registry() {
        let fake = FakeDockerHub::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let uri = "/registry/credentials?project=my-app";

        for (status, code, part) in [
            (
                500,
                "upstream_error",
                "registry default: Docker Hub create access token failed",
            ),
            (
                401,
                "provider_misconfigured",
                "registry default is misconfigured",
            ),
            (
                403,
                "provider_misconfigured",
                "registry default is misconfigured",
            ),
            (429, "upstream_error", "rate limited by Docker Hub"),
        ] {
            fake.set_failure(Endpoint::Create, Some(Failure::Status(status)));
            let got = rise.get(uri, Some(&token)).await;
            check_error(&got, StatusCode::BAD_GATEWAY, code, part);
            assert!(!got.1.to_string().contains("injected"), "{}", got.1);
        }

        fake.set_failure(Endpoint::Create, Some(Failure::Garbage));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default",
        );
        assert!(!got.1.to_string().contains(INJECTED_SECRET), "{}", got.1);

        fake.set_failure(Endpoint::Create, Some(Failure::Hang));
        let got = rise.get_guarded(uri, &token).await;
        check_error(
            &got,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "registry default: Docker Hub create access token did not answer in time",
        );

        fake.set_failure(Endpoint::Create, None);
        fake.set_failure(Endpoint::SignIn, Some(Failure::Status(401)));
        let fresh = self::rise(&fake).await;
        let token = fresh.token("alice", &["developers"]);
        let got = fresh.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "provider_misconfigured",
            "registry default is misconfigured",
        );
    }

    /// Every log line of successes and failures, at TRACE (reqwest and hyper included), is free
    /// of the password, the Hub JWTs and every minted OAT.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        let captured = crate::support::logs::TraceCapture::start();

        let fake = FakeDockerHub::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        for (endpoint, failure) in [
            (Endpoint::Create, None),
            (Endpoint::Create, Some(Failure::Status(500))),
            (Endpoint::Create, Some(Failure::Status(401))),
            (Endpoint::Create, Some(Failure::Status(429))),
            (Endpoint::Create, Some(Failure::Garbage)),
            (Endpoint::Create, Some(Failure::NonExpiring)),
            (Endpoint::Create, Some(Failure::WidenScope)),
            (Endpoint::Create, Some(Failure::Hang)),
        ] {
            fake.set_failure(endpoint, failure);
            rise.get_guarded("/registry/credentials?project=my-app", &token)
                .await;
        }
        let logs = captured.text();
        assert!(
            logs.contains("dockerhub credential not issued"),
            "the capture works: {logs}"
        );
        let mut secrets: Vec<String> = fake.oats().into_iter().map(|o| o.token).collect();
        assert!(secrets.len() >= 3, "{secrets:?}");
        secrets.extend(
            fake.requests()
                .into_iter()
                .filter_map(|r| r.bearer)
                .collect::<Vec<_>>(),
        );
        secrets.extend([OWNER_PASSWORD, INJECTED_SECRET, token.as_str()].map(str::to_owned));
        assert_logs_free_of(&logs, &secrets);
    }
}
