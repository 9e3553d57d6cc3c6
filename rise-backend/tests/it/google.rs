//! The Google Artifact Registry provider through the `RegistryProvider` trait and through Rise's
//! HTTP API, against the documented-API fake in `support::fake_google`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rise_backend::registry::providers::google::{GoogleConfig, GoogleProvider};
use rise_backend::registry::{Actions, ProviderError, RegistryProvider};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::fake_google::{
    CLOUD_PLATFORM, Endpoint, Failure, FakeGoogle, GARBAGE_SECRET, INJECTED_SECRET, JWT_BEARER,
    RISE_ACCOUNT,
};
use crate::support::provider_calls::{GUARD, issue, request};
use crate::support::provider_checks;

const PUSH: &str = "rise-my-app-push@my-gcp.iam.gserviceaccount.com";
const PULL: &str = "rise-my-app-pull@my-gcp.iam.gserviceaccount.com";
const PULL_TEMPLATE: &str =
    "pull_service_account = \"rise-{project}-pull@my-gcp.iam.gserviceaccount.com\"\n";

/// The provider's table: per-project push account, per-repository Artifact Registry
/// repository, Rise's key inline, endpoints on the fake; `extra` adds or overrides keys.
fn config_text(fake: &FakeGoogle, extra: &str) -> String {
    let mut text = String::new();
    let has = |key: &str| extra.lines().any(|l| l.starts_with(key));
    if !has("repository_prefix") {
        text.push_str("repository_prefix = \"my-gcp/{repository}\"\n");
    }
    if !has("push_service_account") {
        text.push_str(
            "push_service_account = \"rise-{project}-push@my-gcp.iam.gserviceaccount.com\"\n",
        );
    }
    if !has("service_account_key") {
        text.push_str(&format!(
            "service_account_key = '''{}'''\n",
            fake.key_json()
        ));
    }
    format!(
        "registry_host = \"europe-docker.pkg.dev\"\niam_credentials_url = \"{}\"\ninsecure_http = true\n{text}{extra}",
        fake.iam_url()
    )
}

fn config(fake: &FakeGoogle, extra: &str) -> GoogleConfig {
    toml::from_str(&config_text(fake, extra)).expect("valid test TOML")
}

async fn provider(fake: &FakeGoogle, extra: &str) -> GoogleProvider {
    GoogleProvider::from_config("default", &config(fake, extra))
        .await
        .expect("valid provider configuration")
}

/// A fake where Rise may impersonate both of `my-app`'s accounts.
async fn fake() -> FakeGoogle {
    let fake = FakeGoogle::start().await;
    fake.allow_impersonation(PUSH);
    fake.allow_impersonation(PULL);
    fake
}

/// The shared check, for owned secrets.
fn assert_no_secret(e: &ProviderError, secrets: &[String]) {
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    provider_checks::assert_no_secret(e, &secrets);
}

/// Everything that must never appear in an error or a log line.
fn all_secrets(fake: &FakeGoogle) -> Vec<String> {
    let mut secrets = fake.secrets();
    secrets.extend(
        [
            INJECTED_SECRET,
            GARBAGE_SECRET,
            "BEGIN PRIVATE KEY",
            // A line from inside the PEM body.
            fake.private_key_pem().lines().nth(3).expect("PEM body"),
        ]
        .map(str::to_owned),
    );
    secrets
}

fn iam_body(fake: &FakeGoogle, i: usize) -> Value {
    fake.requests_to(Endpoint::Iam)[i].body.clone()
}

#[tokio::test]
async fn push_token_is_minted_for_the_project_push_account() {
    let fake = fake().await;
    let p = provider(&fake, PULL_TEMPLATE).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("token minted");

    // Rise's own token: one jwt-bearer exchange with a form body.
    let token_requests = fake.requests_to(Endpoint::Token);
    assert_eq!(token_requests.len(), 1);
    let t = &token_requests[0];
    assert_eq!(
        t.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(t.body["grant_type"], JWT_BEARER);
    let rise_tokens = fake.rise_tokens();
    assert_eq!(rise_tokens.len(), 1, "the fake verified the assertion");
    assert_eq!(rise_tokens[0].account, RISE_ACCOUNT);

    // generateAccessToken for the push account, authenticated with Rise's token.
    let iam = fake.requests_to(Endpoint::Iam);
    assert_eq!(iam.len(), 1);
    assert_eq!(
        iam[0].path,
        format!("/v1/projects/-/serviceAccounts/{PUSH}:generateAccessToken")
    );
    assert_eq!(
        iam[0].bearer.as_deref(),
        Some(rise_tokens[0].access_token.as_str())
    );
    assert_eq!(iam[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        iam[0].body,
        json!({"scope": [CLOUD_PLATFORM], "lifetime": "900s"})
    );

    let minted = fake.minted();
    assert_eq!(minted.len(), 1);
    assert_eq!(minted[0].service_account, PUSH);
    assert_eq!(minted[0].caller, RISE_ACCOUNT);
    assert_eq!(c.password.expose_secret(), minted[0].access_token);
    assert_eq!(c.expires_at, minted[0].expire_time, "Google's expireTime");
    assert_eq!(c.registry_url, "europe-docker.pkg.dev");
    assert_eq!(c.username, "oauth2accesstoken");
    assert_eq!(c.repository, "my-gcp/my-app/my-app");
    assert_eq!(
        c.image_reference(),
        "europe-docker.pkg.dev/my-gcp/my-app/my-app"
    );
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.repository_scoped);
    assert!(!c.revocable, "Rise keeps no Google token to revoke with");
    assert!(c.expiry_enforced);
    assert_eq!(c.credential_id, None);
    let e = p.revoke("anything").await.expect_err("not revocable");
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn pull_only_requests_use_the_pull_account() {
    let fake = fake().await;
    let p = provider(&fake, PULL_TEMPLATE).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    let minted = fake.minted();
    assert_eq!(minted[0].service_account, PULL);
    assert_eq!(c.password.expose_secret(), minted[0].access_token);
    assert_eq!(c.granted_actions, Actions::PULL);
    assert!(c.repository_scoped);
    // Push (with or without pull) still goes to the push account.
    issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(fake.minted()[1].service_account, PUSH);
}

#[tokio::test]
async fn pull_without_a_pull_account_gets_the_push_account_and_says_so() {
    let fake = fake().await;
    let p = provider(&fake, "").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(fake.minted()[0].service_account, PUSH);
    assert_eq!(
        c.granted_actions,
        Actions::PUSH_PULL,
        "the push account's token can push: the response must say so"
    );
}

#[tokio::test]
async fn shared_accounts_or_repositories_are_not_scoped() {
    let fake = fake().await;
    fake.allow_impersonation("rise-push@my-gcp.iam.gserviceaccount.com");
    // One account for every project.
    let p = provider(
        &fake,
        "push_service_account = \"rise-push@my-gcp.iam.gserviceaccount.com\"\n",
    )
    .await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert!(!c.repository_scoped);
    // One Artifact Registry repository for every project: per-project accounts do not help.
    let p = provider(&fake, "repository_prefix = \"my-gcp/containers\"\n").await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(c.repository, "my-gcp/containers/my-app");
    assert!(!c.repository_scoped);
    // A per-project push account with a shared pull account: pull tokens are not scoped.
    let p = provider(
        &fake,
        "pull_service_account = \"rise-push@my-gcp.iam.gserviceaccount.com\"\n",
    )
    .await;
    let pull = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert!(!pull.repository_scoped);
    let push = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert!(push.repository_scoped);
}

/// A domain-scoped Google Cloud project (`example.com:my-gcp`): its service accounts live under
/// `my-gcp.example.com`, and its images under `example.com/my-gcp/` in the registry's paths.
#[tokio::test]
async fn a_domain_scoped_project_is_written_as_image_paths_have_it() {
    let fake = FakeGoogle::start().await;
    let account = "rise-my-app-push@my-gcp.example.com.iam.gserviceaccount.com";
    fake.allow_impersonation(account);
    let p = provider(
        &fake,
        "repository_prefix = \"example.com:my-gcp/{repository}\"\npush_service_account = \"rise-{project}-push@my-gcp.example.com.iam.gserviceaccount.com\"\n",
    )
    .await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(fake.minted()[0].service_account, account);
    assert_eq!(c.repository, "example.com/my-gcp/my-app/my-app");
    assert!(c.repository_scoped);
}

#[tokio::test]
async fn ttl_is_passed_and_capped() {
    let fake = fake().await;
    let p = provider(&fake, "").await;
    assert_eq!(p.max_ttl(), Duration::from_secs(3600));
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(2 * 3600)),
    )
    .await
    .expect("token minted");
    assert_eq!(iam_body(&fake, 0)["lifetime"], "3600s");
    assert!(c.expires_at >= before + Duration::from_secs(3600));
    assert!(c.expires_at <= SystemTime::now() + Duration::from_secs(3600));

    // Over 1h only with max_ttl raised, and Google accepts it only with the org policy.
    let p = provider(&fake, "max_ttl = \"2h\"\n").await;
    let e = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(3 * 3600)),
    )
    .await
    .expect_err("no organization policy");
    assert_eq!(iam_body(&fake, 1)["lifetime"], "7200s");
    match &e {
        ProviderError::Misconfigured(m) => assert!(
            m.contains("constraints/iam.allowServiceAccountCredentialLifetimeExtension")
                && m.contains(PUSH),
            "{m}"
        ),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    fake.allow_extended_lifetime(PUSH);
    issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(3 * 3600)),
    )
    .await
    .expect("the policy allows it");
    assert_eq!(fake.minted().last().expect("minted").lifetime_secs, 7200);
}

#[tokio::test]
async fn rise_token_is_cached_and_shared() {
    let fake = fake().await;
    let p = Arc::new(provider(&fake, PULL_TEMPLATE).await);
    for _ in 0..3 {
        issue(
            &*p,
            &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
        )
        .await
        .expect("token minted");
    }
    // Concurrent requests on a fresh provider wait for one exchange.
    let fresh = Arc::new(provider(&fake, PULL_TEMPLATE).await);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let p = fresh.clone();
            let actions = if i % 2 == 0 {
                Actions::PULL
            } else {
                Actions::PUSH_PULL
            };
            tokio::spawn(async move {
                tokio::time::timeout(
                    GUARD,
                    p.issue(&request("my-app", actions, Duration::from_secs(600))),
                )
                .await
                .expect("bounded")
                .map(|_| ())
                .map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("token minted");
    }
    assert_eq!(
        fake.requests_to(Endpoint::Token).len(),
        2,
        "one exchange per provider"
    );
    assert_eq!(fake.minted().len(), 7, "one generateAccessToken per issue");
    let rise_tokens = fake.rise_tokens();
    for r in fake.requests_to(Endpoint::Iam).iter().skip(3) {
        assert_eq!(
            r.bearer.as_deref(),
            Some(rise_tokens[1].access_token.as_str())
        );
    }
}

#[tokio::test]
async fn rise_token_is_renewed_before_it_expires() {
    let fake = fake().await;
    // Google says 4s: Rise renews halfway, after 2s.
    fake.set_token_expires_in(4);
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    issue(&p, &req).await.expect("token minted");
    issue(&p, &req).await.expect("token minted");
    assert_eq!(fake.requests_to(Endpoint::Token).len(), 1, "still fresh");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    issue(&p, &req).await.expect("token minted");
    assert_eq!(fake.requests_to(Endpoint::Token).len(), 2, "renewed");
    let iam = fake.requests_to(Endpoint::Iam);
    assert_eq!(
        iam[2].bearer.as_deref(),
        Some(fake.rise_tokens()[1].access_token.as_str())
    );
}

#[tokio::test]
async fn refused_rise_token_is_dropped_and_replaced() {
    let fake = fake().await;
    let p = provider(&fake, "").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    issue(&p, &req).await.expect("token minted");
    fake.revoke_rise_tokens();
    let e = issue(&p, &req).await.expect_err("401");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(m.contains("401") && m.contains(RISE_ACCOUNT), "{m}")
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert_no_secret(&e, &all_secrets(&fake));
    issue(&p, &req).await.expect("a new Rise token is obtained");
    assert_eq!(fake.requests_to(Endpoint::Token).len(), 2);
}

#[tokio::test]
async fn missing_token_creator_role_is_an_operator_problem() {
    let fake = FakeGoogle::start().await;
    let p = provider(&fake, "").await;
    let e = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("403");
    match &e {
        ProviderError::Misconfigured(m) => {
            for part in [
                PUSH,
                RISE_ACCOUNT,
                "roles/iam.serviceAccountTokenCreator",
                "PERMISSION_DENIED (403)",
            ] {
                assert!(m.contains(part), "{m} lacks {part}");
            }
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert_no_secret(&e, &all_secrets(&fake));
}

#[tokio::test]
async fn iam_failures_become_provider_errors() {
    let fake = fake().await;
    let p = provider(&fake, "request_timeout = \"300ms\"\n").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (failure, expect) in [
        (Failure::Status(403), "misconfigured"),
        (Failure::ServiceDisabled, "misconfigured"),
        (Failure::Status(500), "upstream"),
        (Failure::Status(503), "upstream"),
        (Failure::Status(429), "upstream"),
        (Failure::Garbage, "upstream"),
        (Failure::Hang, "timeout"),
        // A token living longer than asked is refused, not handed out.
        (
            Failure::LongerLifetime(Duration::from_secs(3600)),
            "upstream",
        ),
    ] {
        fake.set_failure(Endpoint::Iam, Some(failure.clone()));
        let e = issue(&p, &req).await.expect_err("failure");
        let kind = match &e {
            ProviderError::Upstream { operation, .. } => {
                assert_eq!(*operation, "Google generateAccessToken");
                "upstream"
            }
            ProviderError::Timeout { after, operation } => {
                assert_eq!(*after, Duration::from_millis(300));
                assert_eq!(*operation, "Google generateAccessToken");
                "timeout"
            }
            ProviderError::Misconfigured(_) => "misconfigured",
            ProviderError::Unsupported(_) => "unsupported",
        };
        assert_eq!(kind, expect, "{failure:?}: {e}");
        assert_no_secret(&e, &all_secrets(&fake));
        // A missing role and a disabled API are told apart: each names its own fix.
        let shown = e.to_string();
        match failure {
            Failure::Status(403) => assert!(
                shown.contains("roles/iam.serviceAccountTokenCreator"),
                "{shown}"
            ),
            Failure::ServiceDisabled => assert!(
                shown.contains("enable iamcredentials.googleapis.com")
                    && !shown.contains("roles/iam"),
                "{shown}"
            ),
            _ => {}
        }
    }
    fake.set_failure(Endpoint::Iam, None);
    issue(&p, &req).await.expect("recovers");
}

#[tokio::test]
async fn token_endpoint_failures_become_provider_errors() {
    let fake = fake().await;
    let p = provider(&fake, "request_timeout = \"300ms\"\n").await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (failure, expect) in [
        (Failure::Status(500), "upstream"),
        (Failure::Status(400), "misconfigured"),
        (Failure::Status(401), "misconfigured"),
        (Failure::Garbage, "upstream"),
        (Failure::Hang, "timeout"),
    ] {
        fake.set_failure(Endpoint::Token, Some(failure.clone()));
        let e = issue(&p, &req).await.expect_err("failure");
        let kind = match &e {
            ProviderError::Upstream { operation, .. } => {
                assert_eq!(*operation, "Google token endpoint");
                "upstream"
            }
            ProviderError::Timeout { operation, .. } => {
                assert_eq!(*operation, "Google token endpoint");
                "timeout"
            }
            ProviderError::Misconfigured(_) => "misconfigured",
            ProviderError::Unsupported(_) => "unsupported",
        };
        assert_eq!(kind, expect, "{failure:?}: {e}");
        assert_no_secret(&e, &all_secrets(&fake));
    }
    assert!(
        fake.requests_to(Endpoint::Iam).is_empty(),
        "no token, no call"
    );
}

#[tokio::test]
async fn unknown_key_is_refused_by_google_and_reported() {
    let fake = fake().await;
    let stray = fake.stray_key_json();
    let p = provider(&fake, &format!("service_account_key = '''{stray}'''\n")).await;
    let e = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("invalid signature");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(
                m.contains("invalid_grant: Invalid JWT Signature.") && m.contains(RISE_ACCOUNT),
                "{m}"
            )
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert!(fake.rise_tokens().is_empty());
    let mut secrets = all_secrets(&fake);
    secrets.push(
        serde_json::from_str::<Value>(&stray).expect("json")["private_key"]
            .as_str()
            .expect("pem")
            .lines()
            .nth(3)
            .expect("PEM body")
            .to_owned(),
    );
    assert_no_secret(&e, &secrets);
}

#[tokio::test]
async fn stopped_upstream_is_an_upstream_error() {
    let fake = fake().await;
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
        matches!(e, ProviderError::Upstream { operation, .. } if operation == "Google token endpoint"),
        "{e:?}"
    );
}

#[tokio::test]
async fn project_names_that_form_no_account_are_refused_before_any_call() {
    let fake = fake().await;
    let p = provider(&fake, "").await;
    let e = issue(
        &p,
        &request("my_app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("underscore");
    assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn debug_shows_no_secret() {
    let fake = fake().await;
    let p = provider(&fake, "").await;
    issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    let shown = format!("{p:?} {:?}", config(&fake, ""));
    for s in all_secrets(&fake) {
        assert!(
            !shown.contains(s.as_str()),
            "Debug reveals a secret: {shown}"
        );
    }
}

// --- Through the HTTP router, in-process ------------------------------------------------

mod api {
    use std::io::Write;

    use axum::http::StatusCode;
    use serde_json::json;

    use super::{PULL, PUSH, all_secrets, fake};
    use crate::support::app::{TestRise, start_error};
    use crate::support::fake_google::{Endpoint, Failure, FakeGoogle};
    use crate::support::provider_checks::{assert_logs_free_of, check_error};

    fn table(fake: &FakeGoogle, key_file: &std::path::Path) -> String {
        format!(
            r#"
[registry]
type = "google"
registry_host = "europe-docker.pkg.dev"
repository_prefix = "my-gcp/{{repository}}"
service_account_key_file = {key_file:?}
push_service_account = "rise-{{project}}-push@my-gcp.iam.gserviceaccount.com"
pull_service_account = "rise-{{project}}-pull@my-gcp.iam.gserviceaccount.com"
iam_credentials_url = "{iam}"
insecure_http = true
request_timeout = "500ms"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]
"#,
            key_file = key_file.display().to_string(),
            iam = fake.iam_url()
        )
    }

    async fn rise(fake: &FakeGoogle) -> TestRise {
        // The key is read when the configuration loads; the file may go afterwards.
        let mut key = tempfile::NamedTempFile::new().expect("temp file");
        key.write_all(fake.key_json().as_bytes()).expect("write");
        TestRise::from_toml(&table(fake, key.path())).await
    }

    #[tokio::test]
    async fn credentials_through_the_api() {
        let fake = fake().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let minted = fake.minted();
        assert_eq!(minted.len(), 1);
        assert_eq!(minted[0].service_account, PUSH);
        let creds = &body["credentials"];
        assert_eq!(creds["registry_url"], "europe-docker.pkg.dev");
        assert_eq!(creds["username"], "oauth2accesstoken");
        assert_eq!(creds["password"], minted[0].access_token);
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3600).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "my-gcp/my-app/my-app");
        assert_eq!(body["image"], "europe-docker.pkg.dev/my-gcp/my-app/my-app");
        assert_eq!(
            body["scope"],
            json!({"repository": "my-gcp/my-app/my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], true);
        assert_eq!(body["revocable"], false);
        assert!(body.get("warnings").is_none(), "{body}");

        let (status, body) = rise
            .get(
                "/registry/credentials?project=my-app&actions=pull&ttl=15m",
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let minted = fake.minted();
        assert_eq!(minted[1].service_account, PULL);
        assert_eq!(minted[1].lifetime_secs, 900);
        assert_eq!(body["credentials"]["password"], minted[1].access_token);
        assert_eq!(body["scope"]["actions"], json!(["pull"]));
        let expires_in = body["credentials"]["expires_in"].as_u64().expect("number");
        assert!((890..=900).contains(&expires_in), "{expires_in}");
        assert_eq!(
            fake.requests_to(Endpoint::Token).len(),
            1,
            "Rise's token is reused"
        );
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504() {
        let fake = fake().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let uri = "/registry/credentials?project=my-app";

        fake.set_failure(Endpoint::Iam, Some(Failure::Status(403)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "provider_misconfigured",
            "registry default is misconfigured",
        );

        fake.set_failure(Endpoint::Iam, Some(Failure::Status(500)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default: Google generateAccessToken failed",
        );

        fake.set_failure(Endpoint::Iam, Some(Failure::Garbage));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default",
        );

        fake.set_failure(Endpoint::Iam, Some(Failure::Hang));
        let got = rise.get_guarded(uri, &token).await;
        check_error(
            &got,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "registry default: Google generateAccessToken did not answer in time",
        );
        for s in all_secrets(&fake) {
            assert!(!got.1.to_string().contains(s.as_str()));
        }
    }

    #[tokio::test]
    async fn missing_key_stops_the_server_from_starting() {
        let fake = FakeGoogle::start().await;
        let e = start_error(
            &table(&fake, std::path::Path::new("/nonexistent"))
                .replace("service_account_key_file = \"/nonexistent\"\n", ""),
            vec![],
            "a Google registry without a key",
        )
        .await;
        assert!(
            e.contains("registry default: no service account key")
                && e.contains("RISE_REGISTRY__SERVICE_ACCOUNT_KEY"),
            "{e}"
        );
    }

    /// Every log line of successes and failures, at TRACE (reqwest and hyper included), is free
    /// of the key, the assertions, Rise's tokens and every minted token.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        let captured = crate::support::logs::TraceCapture::start();

        let fake = fake().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        for (endpoint, failure) in [
            (Endpoint::Iam, None),
            (Endpoint::Iam, Some(Failure::Status(500))),
            (Endpoint::Iam, Some(Failure::Status(403))),
            (Endpoint::Iam, Some(Failure::Garbage)),
            (Endpoint::Iam, Some(Failure::Hang)),
            (Endpoint::Iam, None),
            (Endpoint::Token, Some(Failure::Status(400))),
            (Endpoint::Token, Some(Failure::Garbage)),
            // Rise dropped its refused token: a new one is obtained.
            (Endpoint::Iam, None),
        ] {
            fake.set_failure(Endpoint::Iam, None);
            fake.set_failure(Endpoint::Token, None);
            fake.set_failure(endpoint, failure);
            if endpoint == Endpoint::Token {
                // Make Rise ask for a new token of its own.
                fake.revoke_rise_tokens();
                let _ = rise
                    .get("/registry/credentials?project=my-app", Some(&token))
                    .await;
            }
            for actions in ["pull", "push"] {
                let uri = format!("/registry/credentials?project=my-app&actions={actions}");
                rise.get_guarded(&uri, &token).await;
            }
        }
        let logs = captured.text();
        // A callsite first reached by a concurrent test may briefly miss a thread-local
        // subscriber (tracing caches interest per callsite): require one of the provider's
        // events, not each of them.
        assert!(
            logs.contains("google credential not issued")
                || logs.contains("google access token minted"),
            "the capture works: {logs}"
        );
        let mut secrets = all_secrets(&fake);
        assert!(fake.minted().len() >= 3 && fake.rise_tokens().len() >= 2);
        assert!(
            secrets.iter().any(|s| s.starts_with("eyJ")),
            "assertions are checked"
        );
        secrets.push(token.clone());
        assert_logs_free_of(&logs, &secrets);
    }
}
