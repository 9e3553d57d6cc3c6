//! The GHCR provider through the `RegistryProvider` trait and through Rise's HTTP API, against
//! the documented-API fake GitHub in `support::fake_ghcr` (never against GitHub or ghcr.io).

use std::time::{Duration, SystemTime};

use rise_backend::registry::providers::ghcr::{GhcrConfig, GhcrProvider};
use rise_backend::registry::{Actions, ProviderError, RegistryProvider};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::fake_ghcr::{
    APP_ID, Failure, FakeGhcr, INSTALLATION_ID, OWNER, app_key, other_key,
};
use crate::support::provider_calls::{issue, request};
use crate::support::provider_checks::{self, assert_output_free_of};

fn app_toml(fake: &FakeGhcr, pem: &str, extra: &str) -> String {
    format!(
        "owner = \"{OWNER}\"\napp_id = \"{APP_ID}\"\ninstallation_id = {INSTALLATION_ID}\nprivate_key = '''{pem}'''\napi_url = \"{}\"\ninsecure_http = true\nrequest_timeout = \"1s\"\n{extra}",
        fake.api_url()
    )
}

async fn provider(fake: &FakeGhcr, extra: &str) -> GhcrProvider {
    provider_from(&app_toml(fake, &app_key().private_pem, extra)).await
}

async fn provider_from(text: &str) -> GhcrProvider {
    let config: GhcrConfig = toml::from_str(text).expect("valid test TOML");
    GhcrProvider::from_config("default", &config)
        .await
        .expect("valid provider configuration")
}

const HOUR: Duration = Duration::from_secs(3600);

fn assert_near(a: SystemTime, b: SystemTime, slack: Duration, what: &str) {
    let d = a.duration_since(b).unwrap_or_else(|e| e.duration());
    assert!(d <= slack, "{what}: {d:?} apart");
}

/// The shared check, skipping empty strings (which every text contains).
fn assert_no_secret(e: &ProviderError, secrets: &[&str]) {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    provider_checks::assert_no_secret(e, &secrets);
}

#[tokio::test]
async fn push_token_is_restricted_to_the_project_repository() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    let c = issue(&p, &request("my-app", Actions::PUSH_PULL, HOUR))
        .await
        .expect("token minted");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        (
            "POST",
            format!("/app/installations/{INSTALLATION_ID}/access_tokens").as_str()
        )
    );
    assert_eq!(r.accept.as_deref(), Some("application/vnd.github+json"));
    assert_eq!(r.api_version.as_deref(), Some("2022-11-28"));
    assert!(
        r.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("rise-backend/")),
        "{:?}",
        r.user_agent
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        r.body,
        json!({"repositories": ["my-app"], "permissions": {"packages": "write"}})
    );

    // The App JWT: verified by the fake with the App's public key, claims as GitHub documents.
    let jwts = fake.jwts();
    assert_eq!(jwts.len(), 1);
    let jwt = &jwts[0];
    assert_eq!(Some(&jwt.raw), r.bearer.as_ref());
    assert_eq!(jwt.iss, APP_ID);
    assert_eq!(jwt.exp - jwt.iat, 600, "exp - iat is GitHub's 10 minutes");
    assert!(jwt.iat + 58 <= jwt.seen_at && jwt.seen_at <= jwt.iat + 62);
    assert!(jwt.exp <= jwt.seen_at + 600);

    let minted = fake.tokens();
    assert_eq!(minted.len(), 1);
    assert_eq!(minted[0].repositories, vec!["my-app".to_owned()]);
    assert_eq!(
        minted[0].permissions.iter().collect::<Vec<_>>(),
        vec![(&"packages".to_owned(), &"write".to_owned())]
    );
    assert_eq!(c.password.expose_secret(), minted[0].token);
    assert_eq!(c.registry_url, "ghcr.io");
    assert_eq!(c.username, "x-access-token");
    assert_eq!(c.repository, "acme/my-app");
    assert_eq!(c.image_reference(), "ghcr.io/acme/my-app");
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    // GitHub restricts the token, but does not document how ghcr.io applies the restriction.
    assert!(!c.repository_scoped);
    assert!(!c.revocable);
    assert!(
        c.expiry_enforced,
        "GitHub's own hour is the reported expiry"
    );
    assert_eq!(c.credential_id, None);
    assert_near(
        c.expires_at,
        minted[0].expires_at,
        Duration::from_secs(1),
        "expiry",
    );
    assert!(!minted[0].revoked);
}

#[tokio::test]
async fn pull_only_requests_get_read_tokens() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    let c = issue(&p, &request("other-app", Actions::PULL, HOUR))
        .await
        .expect("token minted");
    assert_eq!(
        fake.requests()[0].body,
        json!({"repositories": ["other-app"], "permissions": {"packages": "read"}})
    );
    assert_eq!(fake.tokens()[0].permissions["packages"], "read");
    assert_eq!(c.granted_actions, Actions::PULL);
    assert_eq!(c.repository, "acme/other-app");
}

#[tokio::test]
async fn repository_template_and_registry_host_are_configurable() {
    let fake = FakeGhcr::start().await;
    let p = provider(
        &fake,
        "github_repository = \"images-{project}\"\nregistry_host = \"containers.github.example.com\"\napp_username = \"rise\"\n",
    )
    .await;
    let c = issue(&p, &request("my-app", Actions::PULL, HOUR))
        .await
        .expect("token minted");
    assert_eq!(
        fake.tokens()[0].repositories,
        vec!["images-my-app".to_owned()]
    );
    assert_eq!(c.registry_url, "containers.github.example.com");
    assert_eq!(c.username, "rise");
    assert_eq!(
        c.image_reference(),
        "containers.github.example.com/acme/my-app"
    );
}

#[tokio::test]
async fn repository_outside_the_installation_is_an_operator_problem() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    let e = issue(&p, &request("unknown-app", Actions::PULL, HOUR))
        .await
        .expect_err("422");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(m.contains("include repository unknown-app"), "{m}");
            assert!(
                m.contains("not accessible to the parent installation"),
                "{m}"
            );
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert!(fake.tokens().is_empty());
}

#[tokio::test]
async fn widened_reply_is_revoked_and_refused() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    fake.set_failure(Some(Failure::Widen));
    let e = issue(&p, &request("my-app", Actions::PULL, HOUR))
        .await
        .expect_err("a wider token is not handed out");
    let minted = fake.tokens();
    assert_eq!(minted.len(), 1);
    assert_eq!(minted[0].repositories.len(), 3, "the fake did widen");
    assert!(minted[0].revoked, "the widened token was revoked");
    let revoke = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("a revocation");
    assert_eq!(revoke.path, "/installation/token");
    assert_eq!(revoke.bearer.as_deref(), Some(minted[0].token.as_str()));
    match &e {
        ProviderError::Upstream { detail, .. } => {
            assert!(detail.contains("permission contents: read"), "{detail}");
            assert!(detail.contains("the token was revoked"), "{detail}");
        }
        other => panic!("expected Upstream, got {other:?}"),
    }
    assert_no_secret(&e, &[&minted[0].token]);
}

#[tokio::test]
async fn shorter_ttl_is_kept_by_revoking_the_token() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(1)),
    )
    .await
    .expect("token minted");
    assert!(
        !c.expiry_enforced,
        "the asked end is Rise's doing, not GitHub's"
    );
    assert!(
        c.expires_at >= before + Duration::from_secs(1)
            && c.expires_at <= SystemTime::now() + Duration::from_secs(1),
        "expires_at is the asked ttl"
    );
    let token = c.password.expose_secret().to_owned();
    assert!(!fake.token(&token).expect("minted").revoked);
    let revoked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if fake.token(&token).is_some_and(|t| t.revoked) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(revoked.is_ok(), "the token is revoked at the asked expiry");
    assert!(
        SystemTime::now() >= before + Duration::from_secs(1),
        "not before it"
    );

    // A 30-minute TTL: reported as such, revocation pending.
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(1800)),
    )
    .await
    .expect("token minted");
    assert!(!c.expiry_enforced);
    assert_near(
        c.expires_at,
        SystemTime::now() + Duration::from_secs(1800),
        Duration::from_secs(2),
        "30 minutes",
    );
    assert!(
        !fake
            .token(c.password.expose_secret())
            .expect("minted")
            .revoked
    );
}

/// GitHub's stateless installation tokens (`ghs_<APP ID>_<JWT>`, about 520 characters) are
/// handed out whole and revoked like the classic ones; Rise never reads their JWT.
#[tokio::test]
async fn stateless_tokens_are_handed_out_whole_and_revoked() {
    let fake = FakeGhcr::start().await;
    fake.set_stateless(true);
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(1)),
    )
    .await
    .expect("token minted");
    let token = c.password.expose_secret().to_owned();
    let minted = fake.token(&token).expect("the fake's token, unchanged");
    assert!(
        token.starts_with(&format!("ghs_{APP_ID}_")) && token.len() > 400,
        "a stateless token: {} characters",
        token.len()
    );
    assert_eq!(token.matches('.').count(), 2);
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(!minted.revoked);
    // The asked one-second ttl is kept by revoking the token, which GitHub accepts as bearer.
    let revoked = tokio::time::timeout(Duration::from_secs(10), async {
        while !fake.token(&token).is_some_and(|t| t.revoked) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(revoked.is_ok(), "the stateless token is revoked");
}

#[tokio::test]
async fn revoke_by_id_is_unsupported_and_says_why() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    let e = p.revoke("anything").await.expect_err("unsupported");
    match &e {
        ProviderError::Unsupported(m) => {
            assert!(m.contains("Rise keeps none"), "{m}");
            assert!(m.contains("within an hour"), "{m}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn grants_revoke_says_ghcr_tokens_cannot_be_revoked() {
    use crate::support::rise_process::{grants_revoke, run, write_config};
    let fake = FakeGhcr::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, &app_key().private_pem).expect("key");
    let config = write_config(
        dir.path(),
        &format!(
            "[registries.gh]\ntype = \"ghcr\"\nowner = \"{OWNER}\"\napp_id = \"{APP_ID}\"\ninstallation_id = {INSTALLATION_ID}\nprivate_key_file = {:?}\napi_url = \"{}\"\ninsecure_http = true\n",
            key.display().to_string(),
            fake.api_url()
        ),
    );
    let revoked = grants_revoke(&config, "some-id", "gh").await;
    assert!(!revoked.status.success(), "{revoked:?}");
    let said = String::from_utf8_lossy(&revoked.stderr);
    assert!(said.contains("cannot be revoked by Rise"), "{said}");
    let key = &app_key().private_pem;
    let key_lines: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_output_free_of(&revoked, &key_lines);
    assert!(fake.requests().is_empty(), "nothing was sent to GitHub");
    let export = run(&config, &["audit", "export"]).await;
    assert!(export.status.success(), "{export:?}");
    assert!(
        String::from_utf8_lossy(&export.stdout).trim().is_empty(),
        "a refused revocation is not recorded as one"
    );
}

#[tokio::test]
async fn wrong_key_app_or_installation_is_an_operator_problem() {
    let fake = FakeGhcr::start().await;
    let wrong_key = provider_from(&app_toml(&fake, &other_key().private_pem, "")).await;
    let wrong_app =
        provider_from(&app_toml(&fake, &app_key().private_pem, "").replace(APP_ID, "999")).await;
    let wrong_installation = provider_from(
        &app_toml(&fake, &app_key().private_pem, "").replace(&INSTALLATION_ID.to_string(), "1"),
    )
    .await;
    let mut errors = Vec::new();
    for (p, part) in [
        (
            &wrong_key,
            "check app_id, that private_key is a current key",
        ),
        (&wrong_app, "Integration \"999\" not found"),
        (
            &wrong_installation,
            "installation 1 is not an installation of this App",
        ),
    ] {
        let e = issue(p, &request("my-app", Actions::PULL, HOUR))
            .await
            .expect_err(part);
        match &e {
            ProviderError::Misconfigured(m) => assert!(m.contains(part), "{m}"),
            other => panic!("{part}: expected Misconfigured, got {other:?}"),
        }
        errors.push(e);
    }
    assert!(fake.tokens().is_empty());
    let jwts: Vec<String> = fake
        .requests()
        .into_iter()
        .filter_map(|r| r.bearer)
        .collect();
    assert_eq!(jwts.len(), 3, "each call sent a JWT");
    for e in &errors {
        assert_no_secret(e, &[&app_key().private_pem, &other_key().private_pem]);
        for jwt in &jwts {
            assert_no_secret(e, &[jwt]);
        }
    }
}

#[tokio::test]
async fn upstream_failures_become_provider_errors() {
    let fake = FakeGhcr::start().await;
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PUSH_PULL, HOUR);

    fake.set_failure(Some(Failure::Status(500)));
    let e = issue(&p, &req).await.expect_err("500");
    assert!(
        matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains("HTTP 500")),
        "{e:?}"
    );
    assert_no_secret(&e, &["fake-gh-should-never-be-logged"]);

    for status in [401, 403, 404] {
        fake.set_failure(Some(Failure::Status(status)));
        let e = issue(&p, &req).await.expect_err("refused");
        assert!(
            matches!(&e, ProviderError::Misconfigured(_)),
            "{status}: {e:?}"
        );
    }

    fake.set_failure(Some(Failure::RateLimited));
    let e = issue(&p, &req).await.expect_err("rate limited");
    assert!(
        matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains("rate limited")),
        "a rate limit is not the operator's fault: {e:?}"
    );

    fake.set_failure(Some(Failure::Garbage));
    let e = issue(&p, &req).await.expect_err("garbage");
    assert!(
        matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains("malformed")),
        "{e:?}"
    );
    assert_no_secret(&e, &["ghs_garbage-secret-token-value"]);

    fake.set_failure(Some(Failure::Hang));
    let started = std::time::Instant::now();
    let e = issue(&p, &req).await.expect_err("hang");
    assert!(matches!(&e, ProviderError::Timeout { .. }), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "request_timeout bounds it"
    );

    fake.set_failure(None);
    fake.stop();
    tokio::task::yield_now().await;
    let fresh = provider(&fake, "").await;
    let e = issue(&fresh, &req).await.expect_err("stopped");
    assert!(matches!(&e, ProviderError::Upstream { .. }), "{e:?}");
}

#[tokio::test]
async fn static_mode_hands_out_the_token_honestly() {
    let fake = FakeGhcr::start().await;
    let p = provider_from(&format!(
        "owner = \"{OWNER}\"\nmode = \"static\"\nusername = \"acme-bot\"\ntoken = \"ghp_classic_pat_value\"\napi_url = \"{}\"\ninsecure_http = true\n",
        fake.api_url()
    ))
    .await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(900)),
    )
    .await
    .expect("static credential");
    assert_eq!(c.username, "acme-bot");
    assert_eq!(c.password.expose_secret(), "ghp_classic_pat_value");
    assert_eq!(
        c.granted_actions,
        Actions::PUSH_PULL,
        "whatever the PAT reaches"
    );
    assert!(!c.repository_scoped && !c.revocable && !c.expiry_enforced);
    assert!(c.expires_at >= before + Duration::from_secs(900));
    assert!(fake.requests().is_empty(), "no upstream call");
}

#[tokio::test]
async fn bad_keys_stop_the_start_with_a_clear_message() {
    let key_body = "bm90LWEtcmVhbC1rZXktYnV0LXNlY3JldA==";
    for (registry, part) in [
        (
            format!(
                "private_key = \"-----BEGIN RSA PRIVATE KEY-----\\n{key_body}\\n-----END RSA PRIVATE KEY-----\\n\""
            ),
            "private_key is not an RSA private key in PEM form",
        ),
        (String::new(), "private_key is required in app mode"),
    ] {
        let e = crate::support::app::start_error(
            &format!(
                "[registry]\ntype = \"ghcr\"\nowner = \"acme\"\napp_id = 1\ninstallation_id = 2\n{registry}\n"
            ),
            vec![],
            part,
        )
        .await;
        assert!(e.contains(part), "{e}");
        assert!(e.contains("registry default"), "{e}");
        assert!(!e.contains(key_body), "{e}");
    }
}

mod api {
    use std::io::Write;

    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use crate::support::app::TestRise;
    use crate::support::fake_ghcr::{APP_ID, Failure, FakeGhcr, INSTALLATION_ID, OWNER, app_key};
    use crate::support::provider_checks::{assert_logs_free_of, check_error};

    const PAT: &str = "ghp_static-classic-pat-4d2e";

    struct Setup {
        rise: TestRise,
        _key: tempfile::NamedTempFile,
    }

    async fn rise(fake: &FakeGhcr) -> Setup {
        let mut key = tempfile::NamedTempFile::new().expect("temp file");
        key.write_all(app_key().private_pem.as_bytes())
            .expect("write key");
        let rise = TestRise::from_toml(&format!(
            r#"
[registry]
type = "ghcr"
owner = "{OWNER}"
app_id = {APP_ID}
installation_id = {INSTALLATION_ID}
private_key_file = {key:?}
api_url = "{base}"
insecure_http = true
request_timeout = "500ms"

[registries.legacy]
type = "ghcr"
owner = "{OWNER}"
username = "acme-bot"
token = "{PAT}"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]

[projects.legacy-app]
registry = "legacy"
[[projects.legacy-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
"#,
            key = key.path().display().to_string(),
            base = fake.api_url()
        ))
        .await;
        Setup { rise, _key: key }
    }

    fn warned(body: &Value, part: &str) -> bool {
        body["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains(part)))
        })
    }

    #[tokio::test]
    async fn restricted_token_through_the_api() {
        let fake = FakeGhcr::start().await;
        let setup = rise(&fake).await;
        let rise = &setup.rise;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let minted = fake.tokens();
        assert_eq!(minted.len(), 1);
        assert_eq!(minted[0].repositories, vec!["my-app".to_owned()]);
        assert_eq!(minted[0].permissions["packages"], "write");
        let creds = &body["credentials"];
        assert_eq!(creds["registry_url"], "ghcr.io");
        assert_eq!(creds["username"], "x-access-token");
        assert_eq!(creds["password"], minted[0].token);
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3600).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "acme/my-app");
        assert_eq!(body["image"], "ghcr.io/acme/my-app");
        assert_eq!(
            body["scope"],
            json!({"repository": "acme/my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], false);
        assert_eq!(body["revocable"], false);
        assert!(
            warned(&body, "not limited to repository acme/my-app"),
            "{body}"
        );

        let (status, body) = rise
            .get(
                "/registry/credentials?project=my-app&actions=pull&ttl=15m",
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(fake.tokens()[1].permissions["packages"], "read");
        assert_eq!(body["scope"]["actions"], json!(["pull"]));
        let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
        assert!((890..=900).contains(&expires_in), "{expires_in}");
    }

    #[tokio::test]
    async fn static_token_comes_with_warnings() {
        let fake = FakeGhcr::start().await;
        let setup = rise(&fake).await;
        let rise = &setup.rise;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=legacy-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["credentials"]["username"], "acme-bot");
        assert_eq!(body["credentials"]["password"], PAT);
        assert_eq!(body["repository_scoped"], false);
        assert_eq!(body["revocable"], false);
        assert!(
            warned(&body, "not limited to repository acme/legacy-app"),
            "{body}"
        );
        assert!(warned(&body, "does not expire upstream"), "{body}");
        assert!(warned(&body, "rotate the backend's password"), "{body}");
        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504_naming_the_registry() {
        let fake = FakeGhcr::start().await;
        let setup = rise(&fake).await;
        let rise = &setup.rise;
        let token = rise.token("alice", &["developers"]);
        let uri = "/registry/credentials?project=my-app";

        for status in [401, 403] {
            fake.set_failure(Some(Failure::Status(status)));
            let got = rise.get(uri, Some(&token)).await;
            check_error(
                &got,
                StatusCode::BAD_GATEWAY,
                "provider_misconfigured",
                "registry default is misconfigured",
            );
            assert!(!got.1.to_string().contains("fake-gh"), "{}", got.1);
        }

        fake.set_failure(Some(Failure::Status(500)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default",
        );
        assert!(!got.1.to_string().contains("fake-gh"), "{}", got.1);

        fake.set_failure(Some(Failure::Garbage));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default",
        );
        assert!(!got.1.to_string().contains("ghs_garbage"), "{}", got.1);

        fake.set_failure(Some(Failure::Hang));
        let got = rise.get_guarded(uri, &token).await;
        check_error(
            &got,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "registry default: GitHub create installation token did not answer in time",
        );
    }

    /// Every log line of successes and failures, at TRACE (reqwest and hyper included), is free
    /// of the private key, every App JWT, every minted token and the static PAT.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        let captured = crate::support::logs::TraceCapture::start();

        let fake = FakeGhcr::start().await;
        let setup = rise(&fake).await;
        let rise = &setup.rise;
        let token = rise.token("alice", &["developers"]);
        for failure in [
            None,
            Some(Failure::Status(500)),
            Some(Failure::Status(401)),
            Some(Failure::Garbage),
            Some(Failure::Widen),
            Some(Failure::Hang),
        ] {
            fake.set_failure(failure);
            for uri in [
                "/registry/credentials?project=my-app",
                "/registry/credentials?project=my-app&ttl=1m",
                "/registry/credentials?project=legacy-app",
            ] {
                rise.get_guarded(uri, &token).await;
            }
        }
        let logs = captured.text();
        assert!(
            logs.contains("ghcr credential not issued"),
            "the capture works: {logs}"
        );
        let mut secrets: Vec<String> = fake.tokens().into_iter().map(|t| t.token).collect();
        assert!(
            secrets.len() >= 3,
            "successes and a widened token were minted"
        );
        let jwts: Vec<String> = fake
            .requests()
            .into_iter()
            .filter_map(|r| r.bearer)
            .collect();
        assert!(!jwts.is_empty());
        secrets.extend(jwts);
        // Every line of the key's body: none may appear.
        secrets.extend(
            app_key()
                .private_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned),
        );
        secrets.extend(
            [
                PAT,
                "fake-gh-should-never-be-logged",
                "ghs_garbage-secret-token-value",
                token.as_str(),
            ]
            .map(str::to_owned),
        );
        assert_logs_free_of(&logs, &secrets);
    }
}
