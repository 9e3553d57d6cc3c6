//! The Artifactory provider through the `RegistryProvider` trait, against the documented-API
//! fake in `support::fake_artifactory` and real credential-helper executables.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rise_backend::registry::providers::artifactory::{ArtifactoryConfig, ArtifactoryProvider};
use rise_backend::registry::{Actions, IssuedCredential, ProviderError, RegistryProvider};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::fake_artifactory::{
    ADMIN_PASSWORD, ADMIN_TOKEN, ADMIN_USER, Auth, Failure, FakeArtifactory, SERVICE_PASSWORD,
    SERVICE_USER,
};
use crate::support::provider_calls::{issue, request, revoke};
use crate::support::provider_checks::{assert_no_secret, assert_output_free_of};

async fn provider(fake: &FakeArtifactory, extra: &str) -> ArtifactoryProvider {
    ArtifactoryProvider::from_config("default", &config(fake, extra))
        .await
        .expect("valid provider configuration")
}

fn config(fake: &FakeArtifactory, extra: &str) -> ArtifactoryConfig {
    let text = format!(
        "base_url = \"{}\"\nrepository = \"docker-local\"\ninsecure_http = true\n{extra}",
        fake.base_url()
    );
    toml::from_str(&text).expect("valid test TOML")
}

fn admin_token_config() -> String {
    format!("admin_token = \"{ADMIN_TOKEN}\"\n")
}

/// A provider with an admin token, and a 15-minute push token it minted for `my-app`.
async fn push_token(fake: &FakeArtifactory) -> (ArtifactoryProvider, IssuedCredential) {
    let p = provider(fake, &admin_token_config()).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("token minted");
    (p, c)
}

/// Asserts `credential` expires `secs` seconds after some instant in `[before, after]`.
fn assert_expires_in(credential: &IssuedCredential, before: SystemTime, secs: u64) {
    let after = SystemTime::now();
    let lifetime = Duration::from_secs(secs);
    assert!(
        credential.expires_at >= before + lifetime && credential.expires_at <= after + lifetime,
        "expires_at is not {secs}s after issuance"
    );
}

#[tokio::test]
async fn minted_token_is_scoped_to_the_project_repository() {
    let fake = FakeArtifactory::start().await;
    let p = provider(&fake, &admin_token_config()).await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(900)),
    )
    .await
    .expect("token minted");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/access/api/v1/tokens")
    );
    assert_eq!(r.auth, Auth::Bearer(ADMIN_TOKEN.into()));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        r.body,
        json!({
            "grant_type": "client_credentials",
            "username": "rise-my-app",
            "scope": "artifact:docker-local/my-app/**:r,w,d",
            "expires_in": 900,
            "refreshable": false,
            "description": "Rise default/my-app (pull,push) for alice of issuer local, request req-1",
            "force_revocable": true,
        })
    );

    let minted = fake.tokens();
    assert_eq!(minted.len(), 1);
    assert_eq!(minted[0].expires_in, 900);
    assert!(minted[0].force_revocable);
    assert!(minted[0].description.contains("alice"));
    assert_eq!(c.password.expose_secret(), minted[0].access_token);
    assert_eq!(
        c.credential_id.as_deref(),
        Some(minted[0].token_id.as_str())
    );
    assert_eq!(c.registry_url, fake.host());
    assert_eq!(c.username, "rise-my-app");
    assert_eq!(c.repository, "docker-local/my-app");
    assert_eq!(
        c.image_reference(),
        format!("{}/docker-local/my-app", fake.host())
    );
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert!(c.repository_scoped);
    assert!(c.revocable, "force_revocable makes short tokens revocable");
    assert_expires_in(&c, before, 900);

    let token = c.password.expose_secret();
    for (path, action, allowed) in [
        ("docker-local/my-app/1.0/manifest.json", 'w', true),
        ("docker-local/my-app/1.0/manifest.json", 'r', true),
        ("docker-local/my-app/latest/manifest.json", 'd', true),
        ("docker-local/other/1.0/manifest.json", 'r', false),
        ("docker-local/my-app-evil/1.0/manifest.json", 'w', false),
        ("docker-remote/my-app/1.0/manifest.json", 'r', false),
    ] {
        assert_eq!(
            fake.authorize(&c.username, token, path, action),
            allowed,
            "{action} on {path}"
        );
    }
}

#[tokio::test]
async fn pull_only_requests_get_read_only_tokens() {
    let fake = FakeArtifactory::start().await;
    let p = provider(&fake, &admin_token_config()).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(fake.tokens()[0].scope, "artifact:docker-local/my-app/**:r");
    assert_eq!(c.granted_actions, Actions::PULL);
    let token = c.password.expose_secret();
    assert!(fake.authorize(
        &c.username,
        token,
        "docker-local/my-app/1/manifest.json",
        'r'
    ));
    assert!(!fake.authorize(
        &c.username,
        token,
        "docker-local/my-app/1/manifest.json",
        'w'
    ));
}

#[tokio::test]
async fn token_options_follow_configuration() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!(
            "{}max_ttl = \"30m\"\npush_can_overwrite = false\nforce_revocable = false\ntoken_username = \"ci-{{project}}\"\n",
            admin_token_config()
        ),
    ).await;
    assert_eq!(p.max_ttl(), Duration::from_secs(1800));
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PUSH_PULL, Duration::from_secs(7200)),
    )
    .await
    .expect("token minted");
    let body = &fake.requests()[0].body;
    assert_eq!(body["expires_in"], 1800, "capped by max_ttl");
    assert_eq!(body["scope"], "artifact:docker-local/my-app/**:r,w");
    assert_eq!(body["username"], "ci-my-app");
    assert!(body.get("force_revocable").is_none(), "{body}");
    assert_eq!(c.username, "ci-my-app");
    assert_expires_in(&c, before, 1800);
    assert!(
        !c.revocable,
        "under Artifactory's 6h revocable-expiry-threshold without force_revocable"
    );

    let long = provider(
        &fake,
        &format!("{}force_revocable = false\n", admin_token_config()),
    )
    .await;
    let c = issue(
        &long,
        &request("my-app", Actions::PULL, Duration::from_secs(8 * 3600)),
    )
    .await
    .expect("token minted");
    assert!(c.revocable, "8h is over the revocable-expiry-threshold");
}

#[tokio::test]
async fn revoke_by_token_id() {
    let fake = FakeArtifactory::start().await;
    let (p, c) = push_token(&fake).await;
    let id = c.credential_id.clone().expect("token id");
    let token = c.password.expose_secret();
    let path = "docker-local/my-app/1/manifest.json";
    assert!(fake.authorize(&c.username, token, path, 'w'));

    p.revoke(&id).await.expect("revoked");
    let r = fake.requests().pop().expect("revoke request");
    assert_eq!(r.method, "DELETE");
    assert_eq!(r.path, format!("/access/api/v1/tokens/{id}"));
    assert_eq!(r.auth, Auth::Bearer(ADMIN_TOKEN.into()));
    assert!(fake.token(token).expect("known token").revoked);
    assert!(!fake.authorize(&c.username, token, path, 'w'));

    // Artifactory answers 204 for an unknown or already revoked id: revocation is idempotent.
    p.revoke(&id).await.expect("second revoke is fine");
}

/// The operator's way in: `rise-backend grants revoke --credential ID --registry NAME` (the
/// audit log's `credential_id` and `registry`) revokes an Artifactory token at Artifactory, with
/// the real binary; `--subject` is refused for Artifactory, saying what to do instead.
#[tokio::test]
async fn grants_revoke_revokes_an_artifactory_token() {
    use crate::support::rise_process::{audit_records, grants_revoke, run, write_config};
    let fake = FakeArtifactory::start().await;
    let (_, c) = push_token(&fake).await;
    let id = c.credential_id.clone().expect("token id");
    let token = c.password.expose_secret();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "[registries.jfrog]\ntype = \"artifactory\"\nbase_url = \"{}\"\nrepository = \"docker-local\"\ninsecure_http = true\n{}",
            fake.base_url(),
            admin_token_config()
        ),
    );

    let revoked = grants_revoke(&config, &id, "jfrog").await;
    assert!(revoked.status.success(), "{revoked:?}");
    let said = String::from_utf8_lossy(&revoked.stdout);
    assert!(
        said.contains(&format!("revoked Artifactory token {id} of registry jfrog")),
        "{said}"
    );
    assert!(fake.token(token).expect("known token").revoked);
    let records = audit_records(&config).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["operation"], "revoke");
    assert_eq!(records[0]["caller"]["issuer"], "operator");
    assert_eq!(records[0]["registry"], "jfrog");
    assert_eq!(records[0]["credential_id"], id.as_str());
    let path = "docker-local/my-app/1/manifest.json";
    assert!(!fake.authorize(&c.username, token, path, 'w'));
    assert_output_free_of(&revoked, &[ADMIN_TOKEN, token]);

    let by_subject = run(
        &config,
        &[
            "grants",
            "revoke",
            "--subject",
            "local/alice",
            "--registry",
            "jfrog",
        ],
    )
    .await;
    assert!(!by_subject.status.success(), "{by_subject:?}");
    let err = String::from_utf8_lossy(&by_subject.stderr);
    assert!(
        err.contains("revoke its tokens one by one with --credential"),
        "{err}"
    );
    let unknown = grants_revoke(&config, &id, "nope").await;
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no registry \"nope\" is configured (configured: jfrog)"),
        "{err}"
    );
}

#[tokio::test]
async fn revoke_refuses_what_is_not_a_token_id() {
    let fake = FakeArtifactory::start().await;
    let p = provider(&fake, &admin_token_config()).await;
    // `me` would revoke the calling token: Rise's own admin token.
    for bad in ["me", "../tokens", "a/b", ""] {
        let e = p.revoke(bad).await.expect_err(bad);
        assert!(matches!(e, ProviderError::Unsupported(_)), "{bad}: {e:?}");
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn admin_user_password_mints_with_basic_auth() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!(
            "mode = \"access_token\"\nusername = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\n"
        ),
    ).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    assert_eq!(
        fake.requests()[0].auth,
        Auth::Basic {
            user: ADMIN_USER.into(),
            password: ADMIN_PASSWORD.into()
        }
    );
    assert!(c.repository_scoped);
    assert_eq!(c.username, "rise-my-app");
}

#[tokio::test]
async fn user_scoped_tokens_are_reported_unscoped() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!(
            "mode = \"access_token\"\ntoken_scope = \"user\"\nusername = \"{SERVICE_USER}\"\npassword = \"{SERVICE_PASSWORD}\"\n"
        ),
    ).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("a non-admin may mint user-scoped tokens");
    let body = &fake.requests()[0].body;
    assert_eq!(body["scope"], "applied-permissions/user");
    assert!(
        body.get("username").is_none(),
        "the token is for the caller itself"
    );
    assert_eq!(c.username, SERVICE_USER);
    assert_eq!(fake.tokens()[0].username, SERVICE_USER);
    assert!(!c.repository_scoped);
    assert_eq!(
        c.granted_actions,
        Actions::PUSH_PULL,
        "whatever the user can do"
    );
    assert!(c.revocable);
}

#[tokio::test]
async fn non_admin_cannot_mint_repository_scoped_tokens() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!(
            "mode = \"access_token\"\nusername = \"{SERVICE_USER}\"\npassword = \"{SERVICE_PASSWORD}\"\n"
        ),
    ).await;
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("Artifactory refuses");
    assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
    assert!(e.to_string().contains("403"), "{e}");
    assert_no_secret(&e, &[SERVICE_PASSWORD]);
}

#[tokio::test]
async fn static_mode_hands_out_the_backend_credential_honestly() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!(
            "username = \"{SERVICE_USER}\"\npassword = \"{SERVICE_PASSWORD}\"\nmax_ttl = \"2h\"\n"
        ),
    )
    .await;
    let before = SystemTime::now();
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(3 * 3600)),
    )
    .await
    .expect("static credential");
    assert!(fake.requests().is_empty(), "static mode calls no API");
    assert_eq!(c.username, SERVICE_USER);
    assert_eq!(c.password.expose_secret(), SERVICE_PASSWORD);
    assert_eq!(c.repository, "docker-local/my-app");
    assert!(!c.repository_scoped);
    assert!(!c.revocable);
    assert_eq!(c.credential_id, None);
    assert_eq!(c.granted_actions, Actions::PUSH_PULL);
    assert_expires_in(&c, before, 2 * 3600);
    let e = p.revoke("anything").await.expect_err("not revocable");
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn upstream_failures_become_provider_errors() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!("{}request_timeout = \"300ms\"\n", admin_token_config()),
    )
    .await;
    let req = request("my-app", Actions::PUSH_PULL, Duration::from_secs(600));
    for (failure, expect) in [
        (Failure::Status(500), "upstream"),
        (Failure::Status(503), "upstream"),
        (Failure::Status(401), "misconfigured"),
        (Failure::Malformed, "upstream"),
        (Failure::Hang, "timeout"),
    ] {
        fake.set_failure(Some(failure.clone()));
        let e = issue(&p, &req).await.expect_err("failure");
        let kind = match &e {
            ProviderError::Upstream { operation, .. } => {
                assert_eq!(*operation, "Artifactory create token");
                "upstream"
            }
            ProviderError::Timeout { after, .. } => {
                assert_eq!(*after, Duration::from_millis(300));
                "timeout"
            }
            ProviderError::Misconfigured(_) => "misconfigured",
            ProviderError::Unsupported(_) => "unsupported",
        };
        assert_eq!(kind, expect, "{failure:?}: {e}");
        // Neither the injected body's token-like text nor a malformed reply's token may leak.
        assert_no_secret(
            &e,
            &[
                ADMIN_TOKEN,
                "fake-at-should-never-be-logged",
                "eyJmalformed-secret-token-value",
            ],
        );
    }
}

#[tokio::test]
async fn wrong_admin_token_is_an_operator_problem() {
    let fake = FakeArtifactory::start().await;
    let p = provider(&fake, "admin_token = \"wrong-admin-token-value\"\n").await;
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("401");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(
                m.contains("401") && m.contains("UNAUTHORIZED: Bad credentials"),
                "{m}"
            )
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert_no_secret(&e, &["wrong-admin-token-value"]);
}

/// A token that got more than asked (no expiry, a longer life, a wider scope) is taken back
/// and refused, never handed out.
#[tokio::test]
async fn wider_replies_are_revoked_and_refused() {
    for (failure, says) in [
        (Failure::NonExpiring, "a non-expiring token"),
        (
            Failure::TenYears,
            "a token living 315360000s where 600s were asked",
        ),
        (Failure::WidenScope, "applied-permissions/admin"),
    ] {
        let fake = FakeArtifactory::start().await;
        let p = provider(&fake, &admin_token_config()).await;
        fake.set_failure(Some(failure));
        let e = issue(
            &p,
            &request("my-app", Actions::PULL, Duration::from_secs(600)),
        )
        .await
        .expect_err("a wider token is never handed out");
        assert!(
            matches!(&e, ProviderError::Upstream { detail, .. } if detail.contains(says) && detail.contains("it was revoked")),
            "{e:?}"
        );
        let minted = fake.tokens();
        assert_eq!(minted.len(), 1);
        assert!(minted[0].revoked, "the token was taken back");
        assert_no_secret(&e, &[&minted[0].access_token]);
    }
}

#[tokio::test]
async fn stopped_upstream_is_an_upstream_error() {
    let fake = FakeArtifactory::start().await;
    let p = provider(&fake, &admin_token_config()).await;
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
        matches!(e, ProviderError::Upstream { operation, .. } if operation == "Artifactory create token"),
        "{e:?}"
    );
    assert_no_secret(&e, &[ADMIN_TOKEN]);
}

#[tokio::test]
async fn revoke_failures_are_provider_errors() {
    let fake = FakeArtifactory::start().await;
    let p = provider(
        &fake,
        &format!("{}request_timeout = \"300ms\"\n", admin_token_config()),
    )
    .await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted");
    let id = c.credential_id.expect("token id");
    fake.set_failure(Some(Failure::Status(500)));
    let e = revoke(&p, &id).await.expect_err("500");
    assert!(
        matches!(e, ProviderError::Upstream { operation, .. } if operation == "Artifactory revoke token"),
        "{e:?}"
    );
    fake.set_failure(Some(Failure::Hang));
    let e = revoke(&p, &id).await.expect_err("hang");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
}

// --- Secrets Manager references (the `secrets` module), against moto ----------------------

#[tokio::test]
async fn secrets_manager_references_are_read_and_rotated() {
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use rise_backend::secrets::{SecretResolver, SecretSettings};

    let moto = crate::support::moto::Moto::start().await;
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDARTIFACTORY",
            "moto-secret",
            None,
            None,
            "test",
        )))
        .build();
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.create_secret()
        .name("rise/artifactory")
        .secret_string(
            json!({"admin_token": ADMIN_TOKEN, "password": SERVICE_PASSWORD}).to_string(),
        )
        .send()
        .await
        .expect("create secret");
    // Re-read on every use, so rotation needs no clock.
    let resolver = SecretResolver::new(
        sdk,
        SecretSettings {
            refresh_interval: Duration::ZERO,
            retry_after_failure: Duration::ZERO,
            fetch_timeout: Duration::from_secs(5),
        },
    );
    let fake = FakeArtifactory::start().await;
    let build = |extra: &str| {
        let config = config(&fake, extra);
        let resolver = &resolver;
        async move { ArtifactoryProvider::with_secrets("default", &config, resolver).await }
    };
    let req = request("my-app", Actions::PULL, Duration::from_secs(600));

    let minting = build("admin_token = \"aws-secretsmanager:rise/artifactory#admin_token\"\n")
        .await
        .expect("reference resolves");
    issue(&minting, &req).await.expect("token minted");
    assert_eq!(fake.requests()[0].auth, Auth::Bearer(ADMIN_TOKEN.into()));

    let static_mode = build(&format!(
        "username = \"{SERVICE_USER}\"\npassword = \"aws-secretsmanager:rise/artifactory#password\"\n"
    ))
    .await
    .expect("reference resolves");
    let c = issue(&static_mode, &req).await.expect("static credential");
    assert_eq!(c.password.expose_secret(), SERVICE_PASSWORD);
    sm.put_secret_value()
        .secret_id("rise/artifactory")
        .secret_string(json!({"admin_token": ADMIN_TOKEN, "password": "rotated-pw"}).to_string())
        .send()
        .await
        .expect("rotate");
    let c = issue(&static_mode, &req).await.expect("static credential");
    assert_eq!(
        c.password.expose_secret(),
        "rotated-pw",
        "rotation is picked up"
    );

    // A reference that cannot be read stops the provider from being built, naming the key and
    // the reference (not a value).
    let e = build("admin_token = \"aws-secretsmanager:rise/missing\"\n")
        .await
        .expect_err("missing secret");
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(
                m.contains("admin_token") && m.contains("aws-secretsmanager:rise/missing"),
                "{m}"
            )
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

// --- The backend host's Docker credentials, with real helper executables ------------------

/// A temporary Docker config directory and a directory of helper executables.
struct DockerHome {
    dir: tempfile::TempDir,
}

impl DockerHome {
    fn new(config_json: &serde_json::Value) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(config_json).expect("json"),
        )
        .expect("write config.json");
        Self { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Installs `docker-credential-<name>` running `script` (POSIX sh).
    fn helper(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.bin().join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("write helper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "use_credential_helper = true\ndocker_config_dir = {:?}\ncredential_helper_dirs = [{:?}]\ncredential_helper_timeout = \"500ms\"\n{extra}",
            self.dir.path().display().to_string(),
            self.bin().display().to_string()
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A helper that records its argument and stdin, and answers for any host.
const GOOD_HELPER: &str = r#"dir=$(dirname "$0")
echo "$1" > "$dir/../arg"
read -r host
printf '%s' "$host" > "$dir/../host"
printf '{"ServerURL":"%s","Username":"svc","Secret":"svc-password-3b5e"}' "$host"
"#;

#[tokio::test]
async fn credential_helper_supplies_static_credentials() {
    let fake = FakeArtifactory::start().await;
    // A per-host helper and the global store reach the same executable.
    for config in [
        json!({"credHelpers": {fake.host(): "rise-test"}}),
        json!({"credsStore": "rise-test"}),
    ] {
        let home = DockerHome::new(&config);
        home.helper("rise-test", GOOD_HELPER);
        let p = provider(&fake, &home.config("")).await;
        let c = issue(
            &p,
            &request("my-app", Actions::PULL, Duration::from_secs(600)),
        )
        .await
        .expect("helper credentials");
        assert_eq!(c.username, SERVICE_USER);
        assert_eq!(c.password.expose_secret(), SERVICE_PASSWORD);
        assert!(!c.repository_scoped && !c.revocable);
        let read = |f: &str| std::fs::read_to_string(home.path(f)).expect("helper ran");
        assert_eq!(read("arg").trim(), "get");
        assert_eq!(
            read("host"),
            fake.host(),
            "the helper is asked for the registry host"
        );
    }
}

#[tokio::test]
async fn credential_helper_credentials_mint_tokens() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({"credHelpers": {fake.host(): "rise-test"}}));
    home.helper("rise-test", GOOD_HELPER);
    let p = provider(
        &fake,
        &home.config("mode = \"access_token\"\ntoken_scope = \"user\"\n"),
    )
    .await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("token minted with the helper's credential");
    assert_eq!(
        fake.requests()[0].auth,
        Auth::Basic {
            user: SERVICE_USER.into(),
            password: SERVICE_PASSWORD.into()
        }
    );
    assert_eq!(c.password.expose_secret(), fake.tokens()[0].access_token);
}

#[tokio::test]
async fn inline_auths_entry_is_used_without_a_helper() {
    use base64::Engine;
    let fake = FakeArtifactory::start().await;
    let auth = base64::engine::general_purpose::STANDARD.encode("svc:inline-pass");
    let home =
        DockerHome::new(&json!({"auths": {format!("https://{}", fake.host()): {"auth": auth}}}));
    let p = provider(&fake, &home.config("")).await;
    let c = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect("inline credentials");
    assert_eq!(c.username, "svc");
    assert_eq!(c.password.expose_secret(), "inline-pass");
}

async fn helper_error(home: &DockerHome, fake: &FakeArtifactory) -> ProviderError {
    let p = provider(fake, &home.config("")).await;
    issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("helper failure")
}

#[tokio::test]
async fn missing_helper_is_a_clear_configuration_error() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({"credHelpers": {fake.host(): "absent"}}));
    let e = helper_error(&home, &fake).await;
    match &e {
        ProviderError::Misconfigured(m) => {
            assert!(
                m.contains("docker-credential-absent is not installed"),
                "{m}"
            )
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn hanging_helper_times_out_and_is_killed() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({"credsStore": "rise-test"}));
    home.helper(
        "rise-test",
        "echo $$ > \"$(dirname \"$0\")/../pid\"\nexec sleep 600\n",
    );
    let e = helper_error(&home, &fake).await;
    assert!(
        matches!(&e, ProviderError::Timeout { operation, after } if *operation == "docker credential helper" && *after == Duration::from_millis(500)),
        "{e:?}"
    );
    let pid = std::fs::read_to_string(home.path("pid")).expect("helper started");
    let stat = format!("/proc/{}/stat", pid.trim());
    // Killing is immediate; reaping is asynchronous, so a zombie counts as gone.
    let gone = || {
        std::fs::read_to_string(&stat)
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    for _ in 0..100 {
        if gone() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hung helper (pid {}) is still running", pid.trim());
}

#[tokio::test]
async fn failing_helper_is_an_upstream_error() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({"credsStore": "rise-test"}));
    home.helper("rise-test", "echo 'keychain locked' >&2\nexit 3\n");
    let e = helper_error(&home, &fake).await;
    match &e {
        ProviderError::Upstream { operation, detail } => {
            assert_eq!(*operation, "docker credential helper");
            assert!(
                detail.contains("exit status: 3") && detail.contains("keychain locked"),
                "{detail}"
            );
        }
        other => panic!("expected Upstream, got {other:?}"),
    }
}

#[tokio::test]
async fn helper_without_credentials_says_to_log_in() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({"credsStore": "rise-test"}));
    home.helper(
        "rise-test",
        "echo 'credentials not found in native keychain'\nexit 1\n",
    );
    let e = helper_error(&home, &fake).await;
    match &e {
        ProviderError::Misconfigured(m) => assert!(m.contains("docker login"), "{m}"),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn helper_garbage_is_not_echoed() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({"credsStore": "rise-test"}));
    home.helper(
        "rise-test",
        "printf '{\"Username\":\"svc\",\"Secret\":\"half-a-secret-value",
    );
    let e = helper_error(&home, &fake).await;
    assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
    assert_no_secret(&e, &["half-a-secret-value"]);
}

#[tokio::test]
async fn missing_docker_config_is_reported() {
    let fake = FakeArtifactory::start().await;
    let home = DockerHome::new(&json!({}));
    std::fs::remove_file(home.path("config.json")).expect("remove");
    let p = provider(&fake, &home.config("")).await;
    assert!(p.ready().is_err(), "readiness reports the missing config");
    let e = issue(
        &p,
        &request("my-app", Actions::PULL, Duration::from_secs(600)),
    )
    .await
    .expect_err("no config");
    match &e {
        ProviderError::Misconfigured(m) => assert!(m.contains("docker login"), "{m}"),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

// --- Through the HTTP router, in-process ------------------------------------------------

mod api {

    use axum::http::StatusCode;
    use serde_json::json;

    use crate::support::app::TestRise;
    use crate::support::fake_artifactory::{
        ADMIN_TOKEN, Failure, FakeArtifactory, SERVICE_PASSWORD, SERVICE_USER,
    };
    use crate::support::provider_checks::{assert_logs_free_of, check_error};

    async fn rise(fake: &FakeArtifactory) -> TestRise {
        TestRise::from_toml(&format!(
            r#"
[registry]
type = "artifactory"
base_url = "{base}"
repository = "docker-local"
insecure_http = true
admin_token = "{ADMIN_TOKEN}"
request_timeout = "500ms"

[registries.legacy]
type = "artifactory"
base_url = "{base}"
repository = "docker-local"
insecure_http = true
username = "{SERVICE_USER}"
password = "{SERVICE_PASSWORD}"

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
            base = fake.base_url()
        ))
        .await
    }

    #[tokio::test]
    async fn scoped_token_through_the_api() {
        let fake = FakeArtifactory::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=my-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let minted = fake.tokens();
        assert_eq!(minted.len(), 1);
        let creds = &body["credentials"];
        assert_eq!(creds["registry_url"], fake.host());
        assert_eq!(creds["username"], "rise-my-app");
        assert_eq!(creds["password"], minted[0].access_token);
        let expires_in = creds["expires_in"].as_u64().expect("number");
        assert!((3590..=3600).contains(&expires_in), "{expires_in}");
        assert_eq!(body["repository"], "docker-local/my-app");
        assert_eq!(
            body["image"],
            format!("{}/docker-local/my-app", fake.host())
        );
        assert_eq!(
            body["scope"],
            json!({"repository": "docker-local/my-app", "actions": ["pull", "push"]})
        );
        assert_eq!(body["repository_scoped"], true);
        assert_eq!(body["revocable"], true);
        assert!(body.get("warnings").is_none(), "{body}");
        assert_eq!(minted[0].scope, "artifact:docker-local/my-app/**:r,w,d");
        assert!(
            minted[0].description.contains("for alice of issuer local"),
            "{}",
            minted[0].description
        );

        let (status, body) = rise
            .get(
                "/registry/credentials?project=my-app&actions=pull&ttl=15m",
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(fake.tokens()[1].scope, "artifact:docker-local/my-app/**:r");
        assert_eq!(fake.tokens()[1].expires_in, 900);
    }

    #[tokio::test]
    async fn static_credentials_come_with_a_warning() {
        let fake = FakeArtifactory::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let (status, body) = rise
            .get("/registry/credentials?project=legacy-app", Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["credentials"]["username"], SERVICE_USER);
        assert_eq!(body["credentials"]["password"], SERVICE_PASSWORD);
        assert_eq!(body["registry"], "legacy");
        assert_eq!(body["repository_scoped"], false);
        assert_eq!(body["revocable"], false);
        let warnings = body["warnings"].as_array().expect("warnings");
        assert!(
            warnings.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("not limited to repository docker-local/legacy-app"))),
            "{body}"
        );
        assert!(
            warnings.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("does not expire upstream"))),
            "the nominal expiry is said as such: {body}"
        );
        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn upstream_failures_are_502_or_504_naming_the_registry() {
        let fake = FakeArtifactory::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        let uri = "/registry/credentials?project=my-app";
        let leaked = "fake-at-should-never-be-logged";

        fake.set_failure(Some(Failure::Status(500)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default: Artifactory create token failed",
        );
        assert!(!got.1.to_string().contains(leaked), "{}", got.1);

        fake.set_failure(Some(Failure::Malformed));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default",
        );
        assert!(!got.1.to_string().contains("eyJmalformed"), "{}", got.1);

        fake.set_failure(Some(Failure::Status(401)));
        let got = rise.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "provider_misconfigured",
            "registry default is misconfigured",
        );

        fake.set_failure(Some(Failure::Hang));
        let got = rise.get_guarded(uri, &token).await;
        check_error(
            &got,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "registry default: Artifactory create token did not answer in time",
        );

        fake.set_failure(None);
        fake.stop();
        tokio::task::yield_now().await;
        // A fresh router state has no pooled connection to the stopped fake.
        let fresh = self::rise(&fake).await;
        let token = fresh.token("alice", &["developers"]);
        let got = fresh.get(uri, Some(&token)).await;
        check_error(
            &got,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "registry default",
        );
    }

    /// Every log line of successes and failures, at TRACE (reqwest and hyper included), is free
    /// of the admin token, the backend password and every minted token.
    #[tokio::test]
    async fn logs_carry_no_secrets() {
        let captured = crate::support::logs::TraceCapture::start();

        let fake = FakeArtifactory::start().await;
        let rise = rise(&fake).await;
        let token = rise.token("alice", &["developers"]);
        for failure in [
            None,
            Some(Failure::Status(500)),
            Some(Failure::Status(401)),
            Some(Failure::Malformed),
            Some(Failure::NonExpiring),
            Some(Failure::Hang),
        ] {
            fake.set_failure(failure);
            for project in ["my-app", "legacy-app"] {
                let uri = format!("/registry/credentials?project={project}");
                rise.get_guarded(&uri, &token).await;
            }
        }
        let logs = captured.text();
        assert!(
            logs.contains("artifactory credential not issued"),
            "the capture works: {logs}"
        );
        let mut secrets: Vec<String> = fake.tokens().into_iter().map(|t| t.access_token).collect();
        assert!(!secrets.is_empty());
        secrets.extend(
            [
                ADMIN_TOKEN,
                SERVICE_PASSWORD,
                "fake-at-should-never-be-logged",
                "eyJmalformed-secret-token-value",
                token.as_str(),
            ]
            .map(str::to_owned),
        );
        assert_logs_free_of(&logs, &secrets);
    }
}
