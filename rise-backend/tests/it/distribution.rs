//! Rise as the token server of a real CNCF Distribution registry (Debian's `docker-registry`
//! 2.8.2), driven by real clients (`skopeo`, the `docker` CLI).
//!
//! Each test starts Rise in-process and a registry configured from the `auth: token:` snippet of
//! `registry_config_snippet`, so the snippet operators paste is what is tested.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use rise_backend::auth::LocalIssuer;
use rise_backend::registry::providers::distribution::{
    DistributionProvider, registry_config_snippet,
};
use rise_backend::registry::{Actions, CredentialRequest, ProjectName, RepositoryName};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::image::OciLayout;
use crate::support::oidc::decode_jwt;
use crate::support::process::{
    COMMAND_TIMEOUT, ChildProcess, STARTUP_TIMEOUT, http_client, require_binary, run_with_timeout,
};
use crate::support::registry::{DistributionRegistry, TokenAuth};
use crate::support::rise::{ReservedRise, RiseServer};
use crate::support::skopeo::{self, Creds};

/// Policy of every test: alice may push `my-app`, bob may pull it, carol may push `other-app`.
const POLICY: &str = r#"
[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
subject = "alice"
actions = ["push"]
[[projects.my-app.allow]]
issuer = "local"
subject = "bob"
actions = ["pull"]

[projects.other-app]
[[projects.other-app.allow]]
issuer = "local"
subject = "carol"
actions = ["push"]
"#;

const SERVICE: &str = "rise-registry";

struct Env {
    rise: RiseServer,
    registry: DistributionRegistry,
    local: LocalIssuer,
    http: reqwest::Client,
    scratch: TempDir,
}

/// The configuration of Rise, given the registry's address.
fn rise_config(reserved: &ReservedRise, registry_addr: &str) -> String {
    format!(
        "{server}[registry]\ntype = \"distribution\"\nurl = {registry_addr:?}\n{POLICY}",
        server = reserved.server_toml()
    )
}

/// The registry's `auth.token` settings, read back from the YAML Rise printed.
pub fn token_auth_from_snippet(snippet: &str) -> TokenAuth {
    let value = |key: &str| -> String {
        let prefix = format!("    {key}: ");
        let line = snippet
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {key} in snippet:\n{snippet}"));
        serde_json::from_str(&line[prefix.len()..])
            .unwrap_or_else(|e| panic!("{key} is not a quoted string ({e}): {line}"))
    };
    TokenAuth {
        realm: value("realm"),
        service: value("service"),
        issuer: value("issuer"),
        rootcertbundle: value("rootcertbundle").into(),
    }
}

impl Env {
    async fn start() -> Self {
        let reserved = ReservedRise::bind().await;
        // The registry's address is not known yet; the snippet does not depend on it.
        let preliminary = reserved.load_config(&rise_config(&reserved, "127.0.0.1:1"));
        let snippet = registry_config_snippet(&preliminary, None).expect("registry-config");
        let auth = token_auth_from_snippet(&snippet);
        assert_eq!(auth.realm, format!("{}/token", reserved.url()));
        assert_eq!(auth.service, SERVICE);
        let registry = DistributionRegistry::start(auth).await;
        let config = rise_config(&reserved, registry.addr());
        let rise = reserved.serve(&config).await;
        let local = LocalIssuer::load_or_create(&rise.data_dir(), &rise.config.auth.local)
            .expect("local issuer");
        Self {
            rise,
            registry,
            local,
            http: http_client(),
            scratch: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A token of the local issuer for `subject`: what a CI job or `rise login` would hold.
    fn caller_token(&self, subject: &str) -> String {
        self.local
            .issue(subject, &[], Duration::from_secs(3600))
            .expect("local token")
    }

    /// `GET /registry/credentials?QUERY` as `subject`; the `credentials` object on success.
    async fn credentials(&self, subject: &str, query: &str) -> Result<Value, (StatusCode, Value)> {
        let response = self
            .http
            .get(format!("{}/registry/credentials?{query}", self.rise.url))
            .bearer_auth(self.caller_token(subject))
            .send()
            .await
            .expect("credentials request");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err((status, body))
        }
    }

    async fn grant(&self, subject: &str, query: &str) -> (Creds, Value) {
        let body = self
            .credentials(subject, query)
            .await
            .unwrap_or_else(|(s, b)| panic!("credentials refused: {s} {b}"));
        let c = &body["credentials"];
        let creds = Creds::basic(
            c["username"].as_str().expect("username"),
            c["password"].as_str().expect("password"),
        );
        (creds, body)
    }

    fn image(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.registry.addr())
    }

    fn layout(&self, name: &str) -> OciLayout {
        OciLayout::create(&self.scratch.path().join(name), 2).expect("OCI layout")
    }

    fn provider(&self) -> std::sync::Arc<DistributionProvider> {
        self.rise
            .state
            .token_service
            .as_ref()
            .and_then(|t| t.provider("default"))
            .expect("the default registry is a distribution registry")
    }

    /// `GET /token?QUERY` with Basic `user:password` (none when `password` is `None`).
    async fn token(
        &self,
        query: &str,
        password: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.get(format!("{}/token?{query}", self.rise.url));
        if let Some(password) = password {
            request = request.basic_auth("rise", Some(password));
        }
        let response = request.send().await.expect("token request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.expect("JSON body");
        (status, body, headers)
    }
}

/// The error of an operation that must fail (skopeo's stderr).
fn refused<T>(result: Result<T, String>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what} succeeded but must be refused"),
        Err(stderr) => stderr,
    }
}

#[tokio::test]
async fn a_grant_pushes_its_repository_and_nothing_else() {
    let env = Env::start().await;
    let (creds, body) = env.grant("alice", "project=my-app").await;
    assert_eq!(body["credentials"]["registry_url"], env.registry.addr());
    assert_eq!(body["credentials"]["username"], "rise");
    assert_eq!(
        body["scope"],
        json!({"repository": "my-app", "actions": ["pull", "push"]})
    );
    assert_eq!(body["repository_scoped"], true);
    assert_eq!(body["revocable"], true);

    let image = env.layout("my-app");
    skopeo::copy_to_registry(&image.dir, &env.image("my-app", "v1"), creds.clone())
        .await
        .unwrap_or_else(|e| panic!("push with issued credentials: {e}"));
    let inspected = skopeo::inspect(&env.image("my-app", "v1"), creds.clone())
        .await
        .unwrap_or_else(|e| panic!("inspect: {e}"));
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());

    let other = env.layout("other-app");
    let log_mark = env.registry.log_len();
    let stderr = refused(
        skopeo::copy_to_registry(&other.dir, &env.image("other-app", "v1"), creds).await,
        "pushing other-app with my-app's grant",
    );
    assert!(
        stderr.contains("denied") || stderr.contains("unauthorized"),
        "{stderr}"
    );
    env.registry
        .wait_for_log_after(log_mark, "insufficient scope", Duration::from_secs(5))
        .await
        .expect("the registry refused for insufficient scope, not for a bad token");

    // Nothing arrived: carol, who may push other-app, finds no such image.
    let (carol, _) = env.grant("carol", "project=other-app").await;
    let missing = refused(
        skopeo::inspect_raw(&env.image("other-app", "v1"), carol).await,
        "inspecting other-app",
    );
    assert!(missing.contains("manifest unknown"), "{missing}");
}

#[tokio::test]
async fn a_pull_grant_pulls_but_cannot_push() {
    let env = Env::start().await;
    let (push, _) = env.grant("alice", "project=my-app").await;
    let image = env.layout("v1");
    skopeo::copy_to_registry(&image.dir, &env.image("my-app", "v1"), push.clone())
        .await
        .unwrap_or_else(|e| panic!("push: {e}"));

    for (subject, query) in [
        ("alice", "project=my-app&actions=pull"),
        ("bob", "project=my-app"),
    ] {
        let (pull, body) = env.grant(subject, query).await;
        assert_eq!(body["scope"]["actions"], json!(["pull"]), "{subject}");
        let pulled = env.scratch.path().join(format!("pulled-{subject}"));
        skopeo::copy_from_registry(&env.image("my-app", "v1"), &pulled, pull.clone())
            .await
            .unwrap_or_else(|e| panic!("{subject}: pull with a pull grant: {e}"));
        assert_eq!(
            OciLayout::read_manifest_digest(&pulled).expect("pulled layout"),
            image.manifest_digest
        );
        let v2 = env.layout(&format!("v2-{subject}"));
        refused(
            skopeo::copy_to_registry(
                &v2.dir,
                &env.image("my-app", &format!("v2-{subject}")),
                pull,
            )
            .await,
            "pushing with a pull grant",
        );
        refused(
            skopeo::inspect_raw(&env.image("my-app", &format!("v2-{subject}")), push.clone()).await,
            "the refused push left no tag",
        );
    }
    let (status, body) = env
        .credentials("bob", "project=my-app&actions=push")
        .await
        .expect_err("bob may not push");
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn an_expired_grant_is_refused() {
    let env = Env::start().await;
    let principal = env
        .rise
        .state
        .auth
        .verify(&env.caller_token("alice"))
        .await
        .expect("alice's token verifies");
    let request = CredentialRequest {
        request_id: "expired-grant-test".into(),
        principal,
        project: ProjectName::parse("my-app").expect("valid"),
        registry: "default".into(),
        repository: RepositoryName::parse("my-app").expect("valid"),
        actions: Actions::PUSH_PULL,
        ttl: Duration::from_secs(60),
    };
    // Issued two hours ago for one minute: expired without waiting.
    let expired = env
        .provider()
        .issue_at(&request, SystemTime::now() - Duration::from_secs(7200))
        .expect("issued");
    let password = expired.password.expose_secret().to_owned();

    let image = env.layout("my-app");
    let stderr = refused(
        skopeo::copy_to_registry(
            &image.dir,
            &env.image("my-app", "v1"),
            Creds::basic("rise", password.as_str()),
        )
        .await,
        "pushing with an expired grant",
    );
    assert!(
        stderr.contains("401") || stderr.contains("unauthorized"),
        "{stderr}"
    );

    let (status, body, headers) = env
        .token(
            &format!("service={SERVICE}&scope=repository:my-app:pull,push"),
            Some(&password),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "grant_expired");
    assert_eq!(headers["www-authenticate"], "Basic realm=\"rise\"");

    // The same request, fresh, is served.
    let fresh = env
        .provider()
        .issue_at(&request, SystemTime::now())
        .expect("issued");
    skopeo::copy_to_registry(
        &image.dir,
        &env.image("my-app", "v1"),
        Creds::basic("rise", fresh.password.expose_secret()),
    )
    .await
    .unwrap_or_else(|e| panic!("push with a fresh grant: {e}"));
}

#[tokio::test]
async fn a_ci_jwt_is_a_password_when_policy_allows() {
    let env = Env::start().await;
    let image = env.layout("my-app");
    let alice = Creds::basic("oidc", env.caller_token("alice"));
    skopeo::copy_to_registry(&image.dir, &env.image("my-app", "v1"), alice.clone())
        .await
        .unwrap_or_else(|e| panic!("push with alice's JWT: {e}"));
    let inspected = skopeo::inspect(&env.image("my-app", "v1"), alice.clone())
        .await
        .unwrap_or_else(|e| panic!("inspect: {e}"));
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());

    let other = env.layout("other-app");
    refused(
        skopeo::copy_to_registry(&other.dir, &env.image("other-app", "v1"), alice.clone()).await,
        "alice pushing other-app",
    );
    refused(
        skopeo::copy_to_registry(&other.dir, &env.image("unconfigured-app", "v1"), alice).await,
        "alice pushing a repository no project owns",
    );
    let mallory = Creds::basic("oidc", env.caller_token("mallory"));
    refused(
        skopeo::copy_to_registry(&image.dir, &env.image("my-app", "v2"), mallory).await,
        "mallory pushing my-app",
    );
    let bob = Creds::basic("oidc", env.caller_token("bob"));
    refused(
        skopeo::copy_to_registry(&image.dir, &env.image("my-app", "v3"), bob.clone()).await,
        "bob (pull only) pushing my-app",
    );
    skopeo::inspect(&env.image("my-app", "v1"), bob)
        .await
        .unwrap_or_else(|e| panic!("bob pulls: {e}"));

    // A JWT of an issuer Rise does not trust is a bad password.
    let stranger_key = stranger_token();
    let (status, body, headers) = env
        .token(&format!("service={SERVICE}"), Some(&stranger_key))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], "Basic realm=\"rise\"");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("trusted issuer")),
        "{body}"
    );
}

/// A well-formed ES256 JWT from an issuer nobody configured.
fn stranger_token() -> String {
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(r#"{"alg":"ES256","typ":"JWT","kid":"stranger"}"#);
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"iss": "https://stranger.example", "sub": "alice", "aud": "rise", "exp": 4_000_000_000u64})
            .to_string(),
    );
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64]);
    format!("{header}.{claims}.{signature}")
}

#[tokio::test]
async fn the_token_endpoint_follows_the_spec() {
    let env = Env::start().await;
    let (_, body) = env.grant("alice", "project=my-app&actions=pull").await;
    let grant = body["credentials"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let bundle =
        std::fs::read_to_string(env.rise.data_dir().join("registry-bundle.pem")).expect("bundle");

    // docker's client-side login: no scope, offline_token; a token with empty access.
    let (status, body, headers) = env
        .token(
            &format!("account=rise&client_id=docker&offline_token=true&service={SERVICE}"),
            Some(&grant),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["access_token", "expires_in", "issued_at", "token"]);
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(
        humantime::parse_rfc3339(body["issued_at"].as_str().expect("issued_at")).is_ok(),
        "{body}"
    );
    let (header, claims) = decode_jwt(body["token"].as_str().expect("token"));
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().expect("kid");
    let provider_keys = rise_backend::registry::providers::distribution::KeySet::load_or_create(
        &env.rise.data_dir(),
    )
    .expect("keys");
    assert_eq!(kid, provider_keys.current().kid());
    assert!(bundle.contains(provider_keys.current().cert().pem()));
    assert_eq!(claims["iss"], "rise");
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["access"], json!([]));
    assert_eq!(
        claims["exp"].as_u64().expect("integer exp"),
        claims["iat"].as_u64().expect("integer iat") + 300
    );

    // Requested scopes are intersected with the grant; other resources are never granted.
    let (status, body, _) = env
        .token(
            &format!(
                "service={SERVICE}&scope=repository:my-app:pull,push&scope=repository:other-app:pull&scope=registry:catalog:*"
            ),
            Some(&grant),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        decode_jwt(body["token"].as_str().expect("token")).1["access"],
        json!([{"type": "repository", "name": "my-app", "actions": ["pull"]}])
    );

    // The OAuth2 form (what skopeo sends with an identity token), both grant types.
    for form in [
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", grant.as_str()),
            ("client_id", "containers/image"),
            ("service", SERVICE),
            ("scope", "repository:my-app:pull repository:other-app:pull"),
        ],
        vec![
            ("grant_type", "password"),
            ("username", "rise"),
            ("password", grant.as_str()),
            ("client_id", "test"),
            ("service", SERVICE),
            ("scope", "repository:my-app:pull"),
        ],
    ] {
        let response = env
            .http
            .post(format!("{}/token", env.rise.url))
            .form(&form)
            .send()
            .await
            .expect("POST /token");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(
            decode_jwt(body["access_token"].as_str().expect("access_token")).1["access"],
            json!([{"type": "repository", "name": "my-app", "actions": ["pull"]}])
        );
    }
    // A bad credential is called by the name the caller gave it.
    for (grant_type, field) in [("refresh_token", "refresh_token"), ("password", "password")] {
        let response = env
            .http
            .post(format!("{}/token", env.rise.url))
            .form(&[
                ("grant_type", grant_type),
                (field, "not-a-token"),
                ("service", SERVICE),
            ])
            .send()
            .await
            .expect("POST /token");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.expect("JSON");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!("the {field} is neither a Rise grant")),
            "{message}"
        );
    }

    // Refusals are JSON errors; credential problems challenge for Basic.
    for (query, password, status, code) in [
        (
            "service=other-service".to_owned(),
            Some(grant.as_str()),
            400,
            "bad_request",
        ),
        (
            "scope=repository:my-app:pull".to_owned(),
            Some(grant.as_str()),
            400,
            "bad_request",
        ),
        (
            format!("service={SERVICE}&scope=repository:My-App:pull"),
            Some(grant.as_str()),
            400,
            "invalid_repository",
        ),
        (
            format!("service={SERVICE}&scope=nonsense"),
            Some(grant.as_str()),
            400,
            "bad_request",
        ),
        (
            format!("service={SERVICE}"),
            None,
            401,
            "invalid_credentials",
        ),
        (
            format!("service={SERVICE}"),
            Some("hunter2"),
            401,
            "malformed_token",
        ),
    ] {
        let (got, body, headers) = env.token(&query, password).await;
        assert_eq!(got.as_u16(), status, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        if status == 401 {
            assert_eq!(
                headers["www-authenticate"], "Basic realm=\"rise\"",
                "{query}"
            );
        }
    }
}

#[tokio::test]
async fn skopeo_with_an_identity_token_uses_the_oauth2_form() {
    let env = Env::start().await;
    let (_, body) = env.grant("alice", "project=my-app").await;
    let grant = body["credentials"]["password"].as_str().expect("password");
    let authfile = env.scratch.path().join("auth.json");
    std::fs::write(
        &authfile,
        json!({"auths": {env.registry.addr(): {
            "auth": STANDARD.encode("rise:"),
            "identitytoken": grant,
        }}})
        .to_string(),
    )
    .expect("auth file");
    let image = env.layout("my-app");
    skopeo::copy_to_registry(
        &image.dir,
        &env.image("my-app", "v1"),
        Creds::auth_file(&authfile),
    )
    .await
    .unwrap_or_else(|e| panic!("push with an identity token: {e}"));
    let inspected = skopeo::inspect(&env.image("my-app", "v1"), Creds::auth_file(&authfile))
        .await
        .unwrap_or_else(|e| panic!("inspect: {e}"));
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());
}

#[tokio::test]
async fn docker_login_accepts_a_grant_and_refuses_garbage() {
    let env = Env::start().await;
    let (_, body) = env.grant("alice", "project=my-app").await;
    let grant = body["credentials"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let login = |password: String| {
        let docker_config = env
            .scratch
            .path()
            .join(format!("docker-{}", uuid::Uuid::new_v4()));
        let registry = env.registry.addr().to_owned();
        async move {
            std::fs::create_dir_all(&docker_config).expect("docker config dir");
            std::fs::write(docker_config.join("config.json"), "{}").expect("docker config");
            let mut cmd = tokio::process::Command::new(require_binary("docker"));
            cmd.args(["login", "-u", "rise", "--password-stdin", &registry])
                .env("DOCKER_CONFIG", &docker_config)
                .env_remove("DOCKER_HOST");
            run_docker_login(cmd, &password).await
        }
    };
    let ok = login(grant).await;
    assert!(ok.0, "docker login with a grant failed: {}", ok.1);
    assert!(ok.1.contains("Login Succeeded"), "{}", ok.1);
    let bad = login("not-a-grant".into()).await;
    assert!(!bad.0, "docker login with garbage succeeded: {}", bad.1);
    assert!(bad.1.contains("unauthorized"), "{}", bad.1);
}

/// Runs `docker login --password-stdin` feeding `password`; `(success, stdout+stderr)`.
async fn run_docker_login(mut cmd: tokio::process::Command, password: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt as _;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawning docker");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(password.as_bytes())
        .await
        .expect("write password");
    drop(stdin);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("docker login timed out")
        .expect("docker login");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The real binary, at its most verbose, through a whole push: no grant, registry token, caller
/// token or key material appears in its output.
#[tokio::test]
async fn logs_never_contain_credentials_or_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let port = crate::support::process::free_port();
    let rise_url = format!("http://127.0.0.1:{port}");
    let config_path = dir.path().join("rise.toml");
    let write_config = |registry_addr: &str| {
        std::fs::write(
            &config_path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\n\n[registry]\ntype = \"distribution\"\nurl = {registry_addr:?}\n{POLICY}",
                data = data_dir.display().to_string(),
            ),
        )
        .expect("config");
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_rise-backend"));
    let verbose = |cmd: &mut tokio::process::Command| {
        cmd.arg("--config")
            .arg(&config_path)
            .env("RISE_LOG", "trace")
            .env_remove("RISE_LOG_FORMAT");
    };

    // `rise-backend registry-config` prints the registry's auth section.
    write_config("127.0.0.1:1");
    let mut cmd = tokio::process::Command::new(binary);
    verbose(&mut cmd);
    cmd.arg("registry-config");
    let out = run_with_timeout(cmd, COMMAND_TIMEOUT)
        .await
        .expect("registry-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let auth = token_auth_from_snippet(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(auth.realm, format!("{rise_url}/token"));
    let registry = DistributionRegistry::start(auth).await;

    write_config(registry.addr());
    let mut cmd = tokio::process::Command::new(binary);
    verbose(&mut cmd);
    cmd.arg("serve");
    let mut server = ChildProcess::spawn("rise-backend", cmd).expect("spawning rise-backend");
    server
        .wait_for_line(
            "listening",
            |l| l.contains("rise-backend listening"),
            STARTUP_TIMEOUT,
        )
        .await
        .expect("rise-backend starts");

    // Secrets the run handles: the caller's token, a grant, registry tokens, the keys.
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--config")
        .arg(&config_path)
        .args(["token", "issue", "--sub", "alice"]);
    let out = run_with_timeout(cmd, COMMAND_TIMEOUT)
        .await
        .expect("token issue");
    let caller = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(caller.split('.').count() == 3, "not a JWT: {caller}");
    let http = http_client();
    let body: Value = http
        .get(format!("{rise_url}/registry/credentials?project=my-app"))
        .bearer_auth(&caller)
        .send()
        .await
        .expect("credentials")
        .json()
        .await
        .expect("JSON");
    let grant = body["credentials"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let mut registry_tokens = Vec::new();
    for password in [&grant, &caller] {
        let body: Value = http
            .get(format!(
                "{rise_url}/token?service={SERVICE}&scope=repository:my-app:pull,push&account=rise"
            ))
            .basic_auth("rise", Some(password))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("JSON");
        registry_tokens.push(body["token"].as_str().expect("token").to_owned());
    }
    let scratch = dir.path().join("image");
    let image = OciLayout::create(&scratch, 2).expect("layout");
    skopeo::copy_to_registry(
        &image.dir,
        &format!("{}/my-app:v1", registry.addr()),
        Creds::basic("rise", grant.as_str()),
    )
    .await
    .unwrap_or_else(|e| panic!("push: {e}"));
    // A refused request logs too.
    let _ = http
        .get(format!("{rise_url}/token?service={SERVICE}"))
        .basic_auth("rise", Some(format!("{grant}x")))
        .send()
        .await
        .expect("token");
    server.kill().await.expect("stop rise-backend");
    output.push_str(&server.logs().text());

    assert!(
        output.contains("registry token issued"),
        "the run was logged:\n{output}"
    );
    let mut secrets: Vec<(String, String)> = Vec::new();
    for (what, jwt) in [("caller token", &caller), ("grant", &grant)]
        .into_iter()
        .chain(registry_tokens.iter().map(|t| ("registry token", t)))
    {
        secrets.push((what.to_owned(), jwt.clone()));
        // Also any part on its own: a logged claims segment or signature leaks as much.
        for part in jwt.split('.').skip(1) {
            secrets.push((format!("{what} segment"), part.to_owned()));
        }
    }
    let keys_dir = data_dir.join("keys");
    for entry in std::fs::read_dir(&keys_dir).expect("keys dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("key file");
        let private = text
            .split("-----END PRIVATE KEY-----")
            .next()
            .unwrap_or(&text);
        for line in private
            .lines()
            .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
        {
            secrets.push((
                format!("key material of {}", path.display()),
                line.to_owned(),
            ));
        }
    }
    assert!(secrets.len() > 10, "secrets collected: {}", secrets.len());
    for (what, secret) in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "{what} appears in the logs"
        );
    }
}

/// Revoked grants, against the real registry: a grant revoked by its credential id (as the audit
/// log records it) no longer pushes, and the refusal is audited, while the caller's other grant
/// still does; revoking the caller stops every grant it holds, and a grant issued afterwards
/// pushes again.
#[tokio::test]
async fn revoked_grants_no_longer_push() {
    use rise_backend::audit::{AuditFilter, Outcome};
    use rise_backend::registry::providers::distribution::revocation::{self, Target};
    let env = Env::start().await;
    let service = env.rise.state.token_service.clone().expect("token service");
    let store = env.rise.state.audit.store().clone();
    let revoke = |target: Target| {
        let (config, store, service) = (&env.rise.config, &store, &service);
        async move {
            revocation::revoke(config, store, &target, "leaked in a build log")
                .await
                .expect("revoke");
            // What the reloader does every keys.reload_interval.
            service.reload_revocations(store).await.expect("reload");
        }
    };
    let push = |creds: Creds, tag: &'static str| {
        let env = &env;
        async move {
            let image = env.layout(tag);
            skopeo::copy_to_registry(&image.dir, &env.image("my-app", tag), creds).await
        }
    };
    let (leaked, body) = env.grant("alice", "project=my-app").await;
    assert_eq!(body["revocable"], true);
    let leaked_id =
        decode_jwt(body["credentials"]["password"].as_str().expect("password")).1["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
    let (kept, _) = env.grant("alice", "project=my-app").await;
    let (bobs, _) = env.grant("bob", "project=my-app&actions=pull").await;
    push(leaked.clone(), "before")
        .await
        .expect("the grant pushes before");

    revoke(Target::Credential(leaked_id.clone())).await;
    let stderr = refused(push(leaked, "after").await, "pushing with a revoked grant");
    assert!(
        stderr.contains("unauthorized") || stderr.contains("401"),
        "{stderr}"
    );
    push(kept.clone(), "kept")
        .await
        .expect("another grant of alice still pushes");
    let records = env
        .rise
        .state
        .audit
        .query(&AuditFilter {
            subject: Some("alice".into()),
            result: Some(Outcome::Denied),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit query");
    let refusal = records
        .iter()
        .find(|r| r.fields.reason == "grant_revoked")
        .unwrap_or_else(|| panic!("no grant_revoked record in {records:#?}"));
    assert_eq!(refusal.fields.operation, "token");
    assert_eq!(
        refusal.fields.credential_id.as_deref(),
        Some(leaked_id.as_str())
    );

    // Every grant alice holds, not bob's; one issued after the revocation's second works.
    revoke(Target::subject("local/alice").expect("subject")).await;
    let stderr = refused(
        push(kept, "kept-after").await,
        "pushing after the caller was revoked",
    );
    assert!(
        stderr.contains("unauthorized") || stderr.contains("401"),
        "{stderr}"
    );
    skopeo::inspect(&env.image("my-app", "kept"), bobs)
        .await
        .expect("bob's grant still pulls");
    // Past the revocation's second and its allowance for replicas' clocks.
    tokio::time::sleep(
        rise_backend::registry::providers::distribution::revocation::CLOCK_SKEW
            + Duration::from_millis(1100),
    )
    .await;
    let (fresh, _) = env.grant("alice", "project=my-app").await;
    push(fresh, "fresh")
        .await
        .expect("a grant issued afterwards pushes");
}
