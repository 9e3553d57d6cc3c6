//! The ECR provider, its credential cache and Secrets Manager references, against moto.
//!
//! moto stores the session policy of each `AssumeRole` without evaluating it, so scoping is proven
//! by the exact policy document Rise sent (read back from `/moto-api/data.json`), and call counts
//! and signing keys come from a recording proxy between Rise and moto.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use rise_backend::auth::Principal;
use rise_backend::http::ApiError;
use rise_backend::registry::cache::{CacheSettings, CachingProvider};
use rise_backend::registry::providers::ecr::{EcrConfig, EcrProvider};
use rise_backend::registry::{
    Actions, CredentialRequest, IssuedCredential, ProjectName, ProviderError, RegistryProvider,
    RepositoryName,
};
use rise_backend::secrets::{SecretError, SecretResolver, SecretSettings, SecretSource};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::app::TestRise;
use crate::support::aws_proxy::RecordingProxy;
use crate::support::moto::{ACCOUNT_ID, Moto};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/rise-push";
const REGISTRY_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
/// What moto's token decodes to after `AWS:`.
const MOTO_PASSWORD: &str = "123456789012-auth-token";
const HOUR: Duration = Duration::from_secs(3600);
/// Guards against a hang; the provider's own timeouts are far shorter.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// An ECR table with dummy static keys pointing at `endpoint`, plus `extra` keys.
fn ecr_config(endpoint: &str, extra: &str) -> EcrConfig {
    toml::from_str(&format!(
        r#"
        region = "us-east-1"
        account_id = "{ACCOUNT_ID}"
        access_key_id = "AKIDSTATICTEST"
        secret_access_key = "static-secret"
        endpoint_url = "{endpoint}"
        connect_timeout = "1s"
        {extra}
        "#
    ))
    .expect("valid ECR table")
}

fn scoped(endpoint: &str) -> EcrConfig {
    ecr_config(
        endpoint,
        &format!("push_role_arn = \"{ROLE_ARN}\"\nrepo_prefix = \"rise/\""),
    )
}

/// Resolves secret references on moto with dummy credentials (the default chain has none here).
fn test_sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "AKIDRESOLVER",
                "resolver-secret",
                None,
                None,
                "test",
            )),
        )
        .build()
}

fn resolver(endpoint: &str, refresh_interval: Duration) -> SecretResolver {
    SecretResolver::new(
        test_sdk_config(endpoint),
        SecretSettings {
            refresh_interval,
            retry_after_failure: Duration::ZERO,
            fetch_timeout: Duration::from_secs(5),
        },
    )
}

async fn provider(config: &EcrConfig, endpoint: &str) -> EcrProvider {
    EcrProvider::with_secrets("default", config, &resolver(endpoint, HOUR))
        .await
        .expect("provider builds")
}

fn request(repository: &str, actions: Actions, ttl: Duration) -> CredentialRequest {
    CredentialRequest {
        request_id: "test".into(),
        principal: Arc::new(Principal {
            issuer: "local".into(),
            issuer_url: "rise-local".into(),
            subject: "alice".into(),
            groups: vec![],
            claims: Default::default(),
            expires_at: SystemTime::now() + HOUR,
        }),
        project: ProjectName::parse(repository).expect("valid project"),
        registry: "default".into(),
        repository: RepositoryName::parse(repository).expect("valid repository"),
        actions,
        ttl,
    }
}

/// Seconds from now until `t` (negative when past).
fn secs_from_now(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn assert_about(actual_secs: i64, expected: Duration, what: &str) {
    let expected = expected.as_secs() as i64;
    assert!(
        (actual_secs - expected).abs() <= 60,
        "{what}: expires in {actual_secs}s, expected about {expected}s"
    );
}

/// moto's record of every `AssumeRole` (role, session name, session policy).
async fn assumed_roles(moto: &Moto) -> Vec<Value> {
    let data = moto.data_json().await;
    data["sts"]["AssumedRole"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn expected_policy(repository_arn: &str, actions: &[&str]) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "RiseRepository", "Effect": "Allow", "Action": actions,
             "Resource": repository_arn},
            {"Sid": "RiseLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken",
             "Resource": "*"}
        ]
    })
}

#[tokio::test]
async fn seed_setup_hands_out_the_decoded_registry_wide_token() {
    let moto = Moto::start().await;
    let proxy = RecordingProxy::start(moto.endpoint()).await;
    let ecr = provider(&ecr_config(&proxy.endpoint(), ""), &proxy.endpoint()).await;
    assert_eq!(ecr.kind(), "ecr");
    assert_eq!(ecr.registry_url(), REGISTRY_HOST);
    assert_eq!(ecr.max_ttl(), Duration::from_secs(12 * 3600));

    let c = ecr
        .issue(&request("my-app", Actions::PULL, HOUR))
        .await
        .expect("issued");
    assert_eq!(c.registry_url, REGISTRY_HOST);
    assert_eq!(c.username, "AWS");
    assert_eq!(c.password.expose_secret(), MOTO_PASSWORD);
    assert_eq!(c.repository, "my-app");
    assert!(!c.repository_scoped, "the seed's setup cannot scope");
    assert_eq!(
        c.granted_actions,
        Actions::PUSH_PULL,
        "the token can do more"
    );
    assert!(!c.revocable);
    // moto reports an expiry in 2015: Rise assumes the documented 12 h instead of handing out a
    // credential it believes expired.
    assert_about(
        secs_from_now(c.expires_at),
        Duration::from_secs(12 * 3600),
        "unscoped token",
    );

    assert_eq!(proxy.count("AssumeRole"), 0);
    let calls = proxy.calls_of("GetAuthorizationToken");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].access_key_id, "AKIDSTATICTEST");
}

#[tokio::test]
async fn push_role_session_policy_allows_only_the_requested_repository_and_actions() {
    let moto = Moto::start().await;
    let proxy = RecordingProxy::start(moto.endpoint()).await;
    let ecr = provider(&scoped(&proxy.endpoint()), &proxy.endpoint()).await;
    assert_eq!(ecr.max_ttl(), HOUR, "role chaining caps sessions at 1 h");

    let push = ecr
        .issue(&request(
            "my-app",
            Actions::PUSH_PULL,
            Duration::from_secs(1800),
        ))
        .await
        .expect("push credential");
    assert_eq!(push.repository, "rise/my-app");
    assert!(push.repository_scoped);
    assert_eq!(push.granted_actions, Actions::PUSH_PULL);
    assert_eq!(push.username, "AWS");
    assert_eq!(push.password.expose_secret(), MOTO_PASSWORD);
    // The session's access key id: an identifier unique per session, never the secret key.
    let id = push.credential_id.as_deref().expect("a session id");
    assert!(
        id.starts_with("ASIA") && id.len() == 20,
        "credential_id is an STS access key id: {id}"
    );
    // min(token: 12 h, session: the requested 30 min).
    assert_about(
        secs_from_now(push.expires_at),
        Duration::from_secs(1800),
        "push credential",
    );

    let pull = ecr
        .issue(&request("other", Actions::PULL, Duration::from_secs(300)))
        .await
        .expect("pull credential");
    assert_eq!(pull.granted_actions, Actions::PULL);
    // STS's 900 s minimum session: the caller asked for 5 minutes and is told it is 15.
    assert_about(
        secs_from_now(pull.expires_at),
        Duration::from_secs(900),
        "pull credential",
    );

    let roles = assumed_roles(&moto).await;
    assert_eq!(roles.len(), 2, "{roles:?}");
    let policy = |i: usize| -> Value {
        serde_json::from_str(roles[i]["policy"].as_str().expect("policy stored")).expect("JSON")
    };
    assert_eq!(roles[0]["role_arn"], ROLE_ARN);
    assert_eq!(roles[0]["session_name"], "rise-rise.my-app");
    assert_eq!(
        policy(0),
        expected_policy(
            "arn:aws:ecr:us-east-1:123456789012:repository/rise/my-app",
            &[
                "ecr:BatchCheckLayerAvailability",
                "ecr:BatchGetImage",
                "ecr:CompleteLayerUpload",
                "ecr:GetDownloadUrlForLayer",
                "ecr:InitiateLayerUpload",
                "ecr:PutImage",
                "ecr:UploadLayerPart",
            ]
        )
    );
    assert_eq!(roles[1]["session_name"], "rise-rise.other");
    assert_eq!(
        policy(1),
        expected_policy(
            "arn:aws:ecr:us-east-1:123456789012:repository/rise/other",
            &[
                "ecr:BatchCheckLayerAvailability",
                "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer",
            ]
        ),
        "a pull-only request gets only pull actions"
    );

    let assume = proxy.calls_of("AssumeRole");
    assert_eq!(
        assume
            .iter()
            .map(|c| c.form_field("DurationSeconds"))
            .collect::<Vec<_>>(),
        [Some("1800".to_owned()), Some("900".to_owned())]
    );
    assert!(assume.iter().all(|c| c.access_key_id == "AKIDSTATICTEST"));
    // The token is fetched with the session's credentials, not the backend's.
    let session_keys: Vec<String> = roles
        .iter()
        .map(|r| r["access_key_id"].as_str().expect("key").to_owned())
        .collect();
    let token_keys: Vec<String> = proxy
        .calls_of("GetAuthorizationToken")
        .into_iter()
        .map(|c| c.access_key_id)
        .collect();
    assert_eq!(token_keys, session_keys);
}

#[tokio::test]
async fn concurrent_requests_share_one_assume_role_and_one_token_call() {
    let moto = Moto::start().await;
    let proxy = RecordingProxy::start(moto.endpoint()).await;
    let ecr = provider(&scoped(&proxy.endpoint()), &proxy.endpoint()).await;
    let cache = Arc::new(CachingProvider::new(
        Arc::new(ecr),
        CacheSettings::default(),
    ));
    // Hold each upstream call so all callers arrive while the first is in flight.
    proxy.set_delay(Duration::from_millis(300));

    let req = request("my-app", Actions::PUSH_PULL, HOUR);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.issue(&req).await })
        })
        .collect();
    let mut issued: Vec<IssuedCredential> = Vec::new();
    for t in tasks {
        issued.push(t.await.expect("task").expect("issued"));
    }
    assert_eq!(proxy.count("AssumeRole"), 1, "{:?}", proxy.calls());
    assert_eq!(proxy.count("GetAuthorizationToken"), 1);
    assert_eq!(assumed_roles(&moto).await.len(), 1);
    let ids: Vec<_> = issued.iter().map(|c| c.credential_id.clone()).collect();
    assert!(
        ids.iter().all(|id| id == &ids[0] && id.is_some()),
        "{ids:?}"
    );

    // Later requests are served from the cache with the remaining lifetime.
    proxy.set_delay(Duration::ZERO);
    let later = cache.issue(&req).await.expect("cached");
    assert_eq!(later.credential_id, ids[0]);
    assert_eq!(later.expires_at, issued[0].expires_at);
    assert_eq!(proxy.count("AssumeRole"), 1);

    // Another action set is another session.
    cache
        .issue(&request("my-app", Actions::PULL, HOUR))
        .await
        .expect("pull");
    assert_eq!(proxy.count("AssumeRole"), 2);
    assert_eq!(proxy.count("GetAuthorizationToken"), 2);
}

#[tokio::test]
async fn stopped_emulator_gives_a_bad_gateway_that_names_registry_and_operation() {
    let moto = Moto::start().await;
    let endpoint = moto.endpoint().to_owned();
    let ecr = provider(&scoped(&endpoint), &endpoint).await;
    let cache = CachingProvider::new(Arc::new(ecr), CacheSettings::default());
    drop(moto);

    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(
        HANG_GUARD,
        cache.issue(&request("my-app", Actions::PUSH_PULL, HOUR)),
    )
    .await
    .expect("bounded by the provider's timeouts");
    let err = result.expect_err("nothing is listening");
    assert!(
        matches!(
            &err,
            ProviderError::Upstream {
                operation: "STS AssumeRole",
                ..
            }
        ),
        "{err:?}"
    );
    // Connection refused fails fast; one retry with backoff, not the hang guard, bounds it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(cache.is_empty(), "errors are not cached");

    let (status, code, message) = ApiError::Provider {
        registry: "default".into(),
        source: err,
    }
    .parts();
    assert_eq!(status.as_u16(), 502);
    assert_eq!(code, "upstream_error");
    assert!(
        message.contains("registry default") && message.contains("STS AssumeRole"),
        "{message}"
    );
    assert!(
        !message.contains("127.0.0.1"),
        "no upstream detail: {message}"
    );
}

#[tokio::test]
async fn unresponsive_endpoint_gives_a_gateway_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let config = ecr_config(&endpoint, "timeout = \"2s\"\nmax_attempts = 1");
    let ecr = provider(&config, &endpoint).await;

    let result = tokio::time::timeout(
        HANG_GUARD,
        ecr.issue(&request("my-app", Actions::PULL, HOUR)),
    )
    .await
    .expect("bounded by the provider's timeout");
    let err = result.expect_err("no answer");
    assert!(
        matches!(
            &err,
            ProviderError::Timeout {
                operation: "ECR GetAuthorizationToken",
                ..
            }
        ),
        "{err:?}"
    );
    let (status, code, message) = ApiError::Provider {
        registry: "default".into(),
        source: err,
    }
    .parts();
    assert_eq!((status.as_u16(), code), (504, "upstream_timeout"));
    assert!(message.contains("registry default"), "{message}");
    hold.abort();
}

#[tokio::test]
async fn malformed_and_failing_replies_are_upstream_errors() {
    for (status, body) in [
        (200, "this is not JSON"),
        (200, "{\"authorizationData\": []}"),
        (
            200,
            "{\"authorizationData\": [{\"authorizationToken\": \"bm8tY29sb24=\"}]}",
        ),
        (
            500,
            "{\"__type\": \"ServerException\", \"message\": \"boom\"}",
        ),
        (
            400,
            "{\"__type\": \"AccessDeniedException\", \"message\": \"no\"}",
        ),
    ] {
        let app = axum::Router::new().fallback(move || async move {
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [("content-type", "application/x-amz-json-1.1")],
                body,
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let config = ecr_config(&endpoint, "max_attempts = 1");
        let ecr = provider(&config, &endpoint).await;
        let err = tokio::time::timeout(
            HANG_GUARD,
            ecr.issue(&request("my-app", Actions::PULL, HOUR)),
        )
        .await
        .expect("bounded")
        .expect_err(body);
        match &err {
            ProviderError::Upstream { operation, .. } => {
                assert_eq!(*operation, "ECR GetAuthorizationToken", "{body}")
            }
            other => panic!("{status} {body}: {other:?}"),
        }
        let (http_status, _, message) = ApiError::Provider {
            registry: "default".into(),
            source: err,
        }
        .parts();
        assert_eq!(http_status.as_u16(), 502, "{body}");
        assert!(
            !message.contains("boom") && !message.contains("no-colon"),
            "{message}"
        );
        server.abort();
    }
}

async fn secrets_client(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&test_sdk_config(endpoint))
}

#[tokio::test]
async fn secret_references_resolve_and_pick_up_rotation() {
    let moto = Moto::start().await;
    let sm = secrets_client(moto.endpoint()).await;
    sm.create_secret()
        .name("rise/artifactory")
        .secret_string(r#"{"password":"v1","other":7}"#)
        .send()
        .await
        .expect("create secret");
    sm.create_secret()
        .name("rise/plain")
        .secret_string("plain-v1")
        .send()
        .await
        .expect("create secret");
    // Re-read on every use, so the test needs no clock.
    let resolver = resolver(moto.endpoint(), Duration::ZERO);

    let source = SecretSource::parse("aws-secretsmanager:rise/artifactory#password").expect("ref");
    let password = resolver.resolve(&source).await.expect("resolves");
    assert_eq!(password.current().await.expose_secret(), "v1");
    assert_eq!(
        password.describe(),
        "aws-secretsmanager:rise/artifactory#password"
    );
    assert!(!format!("{password:?}").contains("v1"));
    let plain = resolver
        .resolve(&SecretSource::parse("aws-secretsmanager:rise/plain").expect("ref"))
        .await
        .expect("resolves");
    assert_eq!(plain.current().await.expose_secret(), "plain-v1");

    sm.put_secret_value()
        .secret_id("rise/artifactory")
        .secret_string(r#"{"password":"v2"}"#)
        .send()
        .await
        .expect("rotate");
    assert_eq!(password.current().await.expose_secret(), "v2", "rotation");

    // A rotation to something unusable keeps the last good value.
    sm.put_secret_value()
        .secret_id("rise/artifactory")
        .secret_string(r#"{"username":"u"}"#)
        .send()
        .await
        .expect("rotate");
    assert_eq!(password.current().await.expose_secret(), "v2");

    // So does an outage, within the fetch timeout.
    drop(moto);
    let kept = tokio::time::timeout(HANG_GUARD, password.current())
        .await
        .expect("bounded");
    assert_eq!(kept.expose_secret(), "v2");
}

#[tokio::test]
async fn unusable_references_fail_at_start_up_without_showing_values() {
    let moto = Moto::start().await;
    let sm = secrets_client(moto.endpoint()).await;
    sm.create_secret()
        .name("rise/ecr")
        .secret_string(r#"{"secret_access_key":"hunter2","n":1}"#)
        .send()
        .await
        .expect("create secret");
    let resolver = resolver(moto.endpoint(), HOUR);
    let check = |reference: &'static str, expect: &'static str| {
        let resolver = &resolver;
        async move {
            let source = SecretSource::parse(reference).expect("reference");
            let err = resolver.resolve(&source).await.expect_err(reference);
            let text = err.to_string();
            assert!(text.contains(reference), "{text}");
            assert!(text.contains(expect), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
            err
        }
    };
    let missing = check("aws-secretsmanager:rise/nope", "cannot read").await;
    assert!(matches!(missing, SecretError::Fetch { .. }));
    check("aws-secretsmanager:rise/ecr#password", "no key").await;
    check("aws-secretsmanager:rise/ecr#n", "not a string").await;
}

#[tokio::test]
async fn ecr_signs_with_keys_from_secrets_manager_and_follows_their_rotation() {
    let moto = Moto::start().await;
    let proxy = RecordingProxy::start(moto.endpoint()).await;
    let sm = secrets_client(moto.endpoint()).await;
    sm.create_secret()
        .name("rise/ecr")
        .secret_string(r#"{"access_key_id":"AKIDFROMSECRET","secret_access_key":"s1"}"#)
        .send()
        .await
        .expect("create secret");
    let config: EcrConfig = toml::from_str(&format!(
        r#"
        region = "us-east-1"
        account_id = "{ACCOUNT_ID}"
        access_key_id = "aws-secretsmanager:rise/ecr#access_key_id"
        secret_access_key = "aws-secretsmanager:rise/ecr#secret_access_key"
        endpoint_url = "{}"
        "#,
        proxy.endpoint()
    ))
    .expect("valid");
    let ecr = EcrProvider::with_secrets(
        "default",
        &config,
        &resolver(moto.endpoint(), Duration::ZERO),
    )
    .await
    .expect("builds");
    ecr.issue(&request("my-app", Actions::PULL, HOUR))
        .await
        .expect("issued");

    sm.put_secret_value()
        .secret_id("rise/ecr")
        .secret_string(r#"{"access_key_id":"AKIDROTATED","secret_access_key":"s2"}"#)
        .send()
        .await
        .expect("rotate");
    ecr.issue(&request("my-app", Actions::PULL, HOUR))
        .await
        .expect("issued");
    let keys: Vec<String> = proxy
        .calls_of("GetAuthorizationToken")
        .into_iter()
        .map(|c| c.access_key_id)
        .collect();
    assert_eq!(keys, ["AKIDFROMSECRET", "AKIDROTATED"]);
}

#[tokio::test]
async fn server_start_up_resolves_references_with_the_default_chain() {
    let moto = Moto::start().await;
    let sm = secrets_client(moto.endpoint()).await;
    sm.create_secret()
        .name("rise/ecr")
        .secret_string(r#"{"secret_access_key":"s1"}"#)
        .send()
        .await
        .expect("create secret");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |reference: &str| {
        let config = dir.path().join("rise.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\ndata_dir = {:?}\n\n[registry]\ntype = \"ecr\"\nregion = \"us-east-1\"\naccount_id = \"{ACCOUNT_ID}\"\naccess_key_id = \"AKIDSTATICTEST\"\nsecret_access_key = \"{reference}\"\nendpoint_url = \"{}\"\ntimeout = \"4s\"\n",
                dir.path().join("data"),
                moto.endpoint()
            ),
        )
        .expect("write config");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rise-backend"));
        cmd.arg("--config")
            .arg(&config)
            .arg("check-config")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The default chain's first link; IMDS stays out of it.
            .env("AWS_ACCESS_KEY_ID", "AKIDAMBIENT")
            .env("AWS_SECRET_ACCESS_KEY", "ambient-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    };
    let ok = tokio::time::timeout(
        HANG_GUARD,
        run("aws-secretsmanager:rise/ecr#secret_access_key").output(),
    )
    .await
    .expect("bounded")
    .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration is valid"));

    let bad = tokio::time::timeout(HANG_GUARD, run("aws-secretsmanager:rise/missing").output())
        .await
        .expect("bounded")
        .expect("runs");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("registry default") && stderr.contains("aws-secretsmanager:rise/missing"),
        "{stderr}"
    );
}

/// `GET /registry/credentials` through the real router: the seed's response shape for a scoped
/// ECR credential, the policy deciding before any cached credential is served, and a stopped
/// emulator turning into a 502 that names the registry and the failed operation.
#[tokio::test]
async fn credentials_endpoint_serves_ecr_credentials_and_reports_upstream_failure() {
    let moto = Moto::start().await;
    let proxy = RecordingProxy::start(moto.endpoint()).await;
    let rise = TestRise::from_toml(&format!(
        r#"
[registry]
type = "ecr"
region = "us-east-1"
account_id = "{ACCOUNT_ID}"
access_key_id = "AKIDSTATICTEST"
secret_access_key = "static-secret"
push_role_arn = "{ROLE_ARN}"
repo_prefix = "rise/"
endpoint_url = "{endpoint}"
connect_timeout = "1s"
timeout = "4s"

[projects.my-app]

[[projects.my-app.allow]]
issuer = "local"
subject = "alice"
actions = ["push", "pull"]

[[projects.my-app.allow]]
issuer = "local"
subject = "bob"
actions = ["pull"]

[projects.other]

[[projects.other.allow]]
issuer = "local"
actions = ["pull"]
"#,
        endpoint = proxy.endpoint(),
    ))
    .await;
    let get = |query: &str, sub: &str| {
        let uri = format!("/registry/credentials?{query}");
        let token = rise.token(sub, &[]);
        let rise = &rise;
        async move {
            let (status, body) = tokio::time::timeout(HANG_GUARD, rise.get(&uri, Some(&token)))
                .await
                .expect("bounded");
            (status.as_u16(), body)
        }
    };

    let (status, body) = get("project=my-app", "alice").await;
    assert_eq!(status, 200, "{body}");
    let c = &body["credentials"];
    assert_eq!(c["registry_url"], REGISTRY_HOST);
    assert_eq!(c["username"], "AWS");
    assert_eq!(c["password"], MOTO_PASSWORD);
    assert_about(
        c["expires_in"].as_i64().expect("expires_in"),
        HOUR,
        "default ttl, within the 1 h max_ttl",
    );
    assert_eq!(body["repository"], "rise/my-app");
    assert_eq!(body["image"], format!("{REGISTRY_HOST}/rise/my-app"));
    assert_eq!(body["scope"]["actions"], json!(["pull", "push"]));
    assert_eq!(body["repository_scoped"], true);
    assert_eq!(body["revocable"], false);
    assert!(body.get("warnings").is_none(), "{body}");

    // A push credential for my-app is cached now; bob may only pull, and asking for push is
    // refused by the policy before the cache is consulted.
    let (status, body) = get("project=my-app&actions=push", "bob").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = get("project=my-app", "bob").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"]["actions"], json!(["pull"]));
    assert_eq!(
        proxy.count("AssumeRole"),
        2,
        "bob's pull is its own session"
    );
    let roles = assumed_roles(&moto).await;
    let bob_policy: Value =
        serde_json::from_str(roles[1]["policy"].as_str().expect("policy")).expect("JSON");
    assert_eq!(
        bob_policy["Statement"][0]["Action"],
        json!([
            "ecr:BatchCheckLayerAvailability",
            "ecr:BatchGetImage",
            "ecr:GetDownloadUrlForLayer"
        ])
    );

    // alice again: served from the cache, no new upstream call.
    let (status, _) = get("project=my-app", "alice").await;
    assert_eq!(status, 200);
    assert_eq!(proxy.count("AssumeRole"), 2);

    drop(proxy);
    drop(moto);
    let started = tokio::time::Instant::now();
    let (status, body) = get("project=other", "carol").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_error");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("registry default") && message.contains("STS AssumeRole"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
