//! The `rise` CLI and the `docker-credential-rise` helper end to end, as a person and a CI job use
//! them: a real OpenID provider (oidc-provider, device flow completed headlessly through its
//! development interaction pages), Rise in-process on a real socket, a real Distribution registry
//! with Rise as its token server, and skopeo pushing through the helper.
//!
//! The binaries are the workspace's own build (`target/<profile>/rise`); `cargo test --workspace`
//! builds them before any test runs. Each test gets its own HOME, config, cache, Docker and
//! containers auth files, and runs the binaries with a cleared environment.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use rise_backend::auth::LocalIssuer;
use rise_backend::registry::providers::distribution::registry_config_snippet;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::Command;

use crate::distribution::token_auth_from_snippet;
use crate::support::image::{OciLayout, gzip_stored, sha256_digest, tar_with_file};
use crate::support::oidc::{CLI_CLIENT_ID, OidcProvider};
use crate::support::process::{COMMAND_TIMEOUT, ChildProcess, require_binary, run_with_timeout};
use crate::support::registry::DistributionRegistry;
use crate::support::rise::{ReservedRise, RiseServer};
use crate::support::skopeo::{self, Creds};

/// alice may push `my-app` (signed in through the OIDC provider, or with a local-issuer token as
/// in CI); bob may push `other-app`; `short-lived` hands out 3-second grants.
fn policy(oidc_issuer: &str) -> String {
    format!(
        r#"
[auth.issuers.corp]
issuer = {oidc_issuer:?}
audience = "rise"
client_id = "{CLI_CLIENT_ID}"
login_scopes = ["openid", "groups", "offline_access"]
insecure_http = true

[projects.my-app]
[[projects.my-app.allow]]
issuer = "corp"
subject = "alice"
actions = ["push"]
[[projects.my-app.allow]]
issuer = "local"
subject = "alice"
actions = ["push"]

[projects.other-app]
[[projects.other-app.allow]]
issuer = "corp"
subject = "bob"
actions = ["push"]

[audit]
admins = [{{ issuer = "local", subject = "auditor" }}]

[projects.short-lived]
ttl = "3s"
[[projects.short-lived.allow]]
issuer = "local"
subject = "alice"
actions = ["push"]
"#
    )
}

struct CliEnv {
    oidc: OidcProvider,
    registry: DistributionRegistry,
    rise: RiseServer,
    local: LocalIssuer,
    home: TempDir,
}

impl CliEnv {
    async fn start() -> Self {
        Self::start_with_registry("").await
    }

    /// [`CliEnv::start`] with more TOML lines for the `[registry]` table.
    async fn start_with_registry(settings: &str) -> Self {
        let oidc = OidcProvider::start().await;
        let reserved = ReservedRise::bind().await;
        let server_toml = reserved.server_toml();
        let config = |registry: &str| {
            format!(
                "{}[registry]\ntype = \"distribution\"\nurl = {registry:?}\n{settings}\n{}",
                server_toml,
                policy(oidc.issuer())
            )
        };
        let preliminary = reserved.load_config(&config("127.0.0.1:1"));
        let snippet = registry_config_snippet(&preliminary, None).expect("registry-config");
        let registry = DistributionRegistry::start(token_auth_from_snippet(&snippet)).await;
        let final_config = config(registry.addr());
        let rise = reserved.serve(&final_config).await;
        let local = LocalIssuer::load_or_create(&rise.data_dir(), &rise.config.auth.local)
            .expect("local issuer");
        let home = tempfile::Builder::new()
            .prefix("rise-cli-home-")
            .tempdir()
            .expect("temp dir");
        Self {
            oidc,
            registry,
            rise,
            local,
            home,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    /// A token of the local issuer: what a CI job passes as RISE_TOKEN.
    fn ci_token(&self, subject: &str) -> String {
        self.local
            .issue(subject, &[], Duration::from_secs(3600))
            .expect("local token")
    }

    /// The environment of every CLI and helper run: nothing from the test's own environment
    /// but PATH (with the CLI's directory first, so container tools find the helper).
    fn env(&self) -> Vec<(String, String)> {
        let path = format!(
            "{}:{}",
            cli_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        [
            ("PATH", path),
            ("HOME", self.path("home").display().to_string()),
            ("RISE_CONFIG_DIR", self.path("config").display().to_string()),
            ("RISE_CACHE_DIR", self.path("cache").display().to_string()),
            ("DOCKER_CONFIG", self.path("docker").display().to_string()),
            (
                "REGISTRY_AUTH_FILE",
                self.path("containers/auth.json").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn command(&self, program: &str, extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(cli_binary(program));
        cmd.env_clear();
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `rise ARGS` (with `--backend` pointing at this Rise).
    async fn rise(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = self.command("rise", extra);
        cmd.arg("--backend").arg(&self.rise.url).args(args);
        Run::from(
            run_with_timeout(cmd, COMMAND_TIMEOUT)
                .await
                .expect("running rise"),
        )
    }

    /// Run `docker-credential-rise ACTION` with `input` on stdin.
    async fn helper(&self, action: &str, input: &str, extra: &[(&str, &str)]) -> Run {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.command("docker-credential-rise", extra);
        cmd.arg(action)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning docker-credential-rise");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("writing stdin");
        drop(stdin);
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .expect("helper finished in time")
            .expect("helper output");
        Run::from(output)
    }

    /// `rise login` with the device flow, the person's part played by `approve_device`.
    async fn login(&self, account: &str) -> String {
        let mut cmd = self.command("rise", &[]);
        cmd.arg("login").arg("--backend").arg(&self.rise.url);
        let mut process = ChildProcess::spawn("rise login", cmd).expect("spawning rise login");
        let line = process
            .wait_for_line(
                "waiting for the user code",
                |l| l.contains("confirm the code "),
                COMMAND_TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let code = line
            .rsplit("confirm the code ")
            .next()
            .expect("a code")
            .trim()
            .to_owned();
        self.oidc
            .approve_device(&code, account)
            .await
            .unwrap_or_else(|e| panic!("approving the device code: {e:#}"));
        let status = process
            .wait_exit(COMMAND_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let text = process.logs().text();
        assert!(status.success(), "rise login failed ({status}):\n{text}");
        text
    }

    /// Replace this run's addresses and paths with stable names, for snapshots.
    fn normalize(&self, text: &str) -> String {
        text.replace(&self.rise.url, "http://RISE")
            .replace(self.registry.addr(), "REGISTRY")
            .replace(self.oidc.issuer(), "http://IDP")
            .replace(&self.home.path().display().to_string(), "HOME")
    }
}

/// stdout, stderr and exit code of one run.
#[derive(Debug)]
struct Run {
    stdout: String,
    stderr: String,
    code: i32,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            code: o.status.code().unwrap_or(-1),
        }
    }
}

impl Run {
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "failed: {self:#?}");
        self
    }
}

/// The directory holding the workspace's binaries (`target/<profile>`): this test binary lives
/// in its `deps/`.
fn cli_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn cli_binary(name: &str) -> PathBuf {
    let path = cli_dir().join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build the CLI first (`cargo build -p rise-cli`; `cargo test --workspace` does it)",
                path.display()
            )
        });
    // `cargo test -p rise-backend` does not rebuild the CLI: refuse to test a stale binary.
    let sources = crate::support::repo_root().join("rise-cli/src");
    if let Some(newest) = newest_mtime(&sources) {
        assert!(
            newest <= built,
            "{} is older than the sources in {}: run `cargo build -p rise-cli` (or `cargo test --workspace`)",
            path.display(),
            sources.display()
        );
    }
    path
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// An OCI layout whose layers hold `sizes` bytes of random data each (gzip'd tars, so skopeo
/// would not recompress them either).
fn layout_with_layers(dir: &Path, sizes: &[usize]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| {
        let digest = sha256_digest(bytes);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).expect("blob");
        json!({"digest": digest, "size": bytes.len()})
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let mut data = vec![0u8; *size];
        let mut seed = uuid::Uuid::new_v4().as_u128();
        for b in data.iter_mut() {
            // xorshift: incompressible enough, and cheap.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let tar = tar_with_file(&format!("layer-{i}.bin"), &data);
        diff_ids.push(sha256_digest(&tar));
        let mut d = put(&gzip_stored(&tar));
        d["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
        layers.push(d);
    }
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let mut config_d = put(&serde_json::to_vec(&config).expect("json"));
    config_d["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_d,
        "layers": layers,
    }))
    .expect("json");
    let mut manifest_d = put(&manifest);
    manifest_d["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [manifest_d]})).expect("json"),
    )
    .expect("write");
    sha256_digest(&manifest)
}

/// The digest the registry stores for `image`, asked with a pull credential from Rise.
async fn registry_digest(env: &CliEnv, image: &str, project: &str) -> String {
    let creds = env
        .rise(
            &[
                "registry",
                "credentials",
                "--project",
                project,
                "--format",
                "json",
            ],
            &[("RISE_TOKEN", &env.ci_token("alice"))],
        )
        .await
        .ok();
    let body: Value = serde_json::from_str(&creds.stdout).expect("credentials JSON");
    let c = &body["credentials"];
    let inspected = skopeo::inspect(
        image,
        Creds::basic(
            c["username"].as_str().expect("username"),
            c["password"].as_str().expect("password"),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo inspect {image}: {e}"));
    inspected["Digest"].as_str().expect("Digest").to_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn device_login_then_whoami_credentials_and_logout() {
    let env = CliEnv::start().await;

    let login = env.login("alice").await;
    assert!(
        login.contains(&format!(
            "Logged in to {} as alice (issuer corp).",
            env.rise.url
        )),
        "{login}"
    );
    let login_file = env.path("config/login.json");
    assert_eq!(mode(&login_file), 0o600);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&login_file).expect("login.json")).expect("json");
    let stored = &stored["logins"][&env.rise.url];
    assert!(stored["refresh_token"].is_string(), "{stored}");

    // Without --backend the last login's backend is used.
    let mut cmd = env.command("rise", &[]);
    cmd.arg("whoami");
    let whoami = Run::from(
        run_with_timeout(cmd, COMMAND_TIMEOUT)
            .await
            .expect("whoami"),
    )
    .ok();
    let text = env.normalize(&whoami.stdout);
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("expires: ") {
                "expires: EXPIRES"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!("whoami", text);

    let env_format = env
        .rise(
            &[
                "registry",
                "credentials",
                "--project",
                "my-app",
                "--format",
                "env",
            ],
            &[],
        )
        .await
        .ok();
    let lines: Vec<&str> = env_format.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", env_format.stdout);
    assert_eq!(
        lines[0],
        format!("RISE_REGISTRY_URL={}", env.registry.addr())
    );
    assert_eq!(lines[3], "RISE_REGISTRY_REPOSITORY=my-app");
    assert!(
        lines[2].starts_with("RISE_REGISTRY_PASSWORD="),
        "{}",
        lines[2]
    );

    // Bob's project: the backend's sentence, exit code 4.
    let denied = env
        .rise(&["registry", "credentials", "--project", "other-app"], &[])
        .await;
    assert_eq!(denied.code, 4, "{denied:#?}");
    insta::assert_snapshot!("denied", env.normalize(&denied.stderr));

    let unknown = env
        .rise(&["registry", "credentials", "--project", "no-such"], &[])
        .await;
    assert_eq!(unknown.code, 5, "{unknown:#?}");

    let logout = env.rise(&["logout"], &[]).await.ok();
    insta::assert_snapshot!("logout", env.normalize(&logout.stdout));
    let after = env.rise(&["whoami"], &[]).await;
    assert_eq!(after.code, 3, "{after:#?}");
    insta::assert_snapshot!("not_logged_in", env.normalize(&after.stderr));
}

#[tokio::test]
async fn an_expired_login_is_renewed_with_its_refresh_token() {
    let env = CliEnv::start().await;
    env.login("alice").await;
    let login_file = env.path("config/login.json");
    let mut stored: Value =
        serde_json::from_slice(&std::fs::read(&login_file).expect("login.json")).expect("json");
    let before = stored["logins"][&env.rise.url]["refresh_token"].clone();
    // Pretend the access token expired: the CLI must renew before using it.
    stored["logins"][&env.rise.url]["expires_at"] = json!(1);
    std::fs::write(&login_file, serde_json::to_vec(&stored).expect("json")).expect("write");

    env.rise(&["whoami"], &[]).await.ok();
    let renewed: Value =
        serde_json::from_slice(&std::fs::read(&login_file).expect("login.json")).expect("json");
    let renewed = &renewed["logins"][&env.rise.url];
    assert_ne!(
        renewed["refresh_token"], before,
        "the rotated refresh token is stored"
    );
    assert!(renewed["expires_at"].as_u64().expect("exp") > 1);

    // A refresh token the provider no longer accepts: sign in again, exit code 3.
    let mut stored = renewed.clone();
    stored["expires_at"] = json!(1);
    stored["refresh_token"] = json!("revoked-or-rotated");
    let file = json!({"default_backend": env.rise.url, "logins": {env.rise.url.clone(): stored}});
    std::fs::write(&login_file, serde_json::to_vec(&file).expect("json")).expect("write");
    let expired = env.rise(&["whoami"], &[]).await;
    assert_eq!(expired.code, 3, "{expired:#?}");
    assert!(
        expired.stderr.contains("your login to") && expired.stderr.contains("rise login"),
        "{}",
        expired.stderr
    );
}

#[tokio::test]
async fn ci_token_credentials_in_every_format() {
    let env = CliEnv::start().await;
    let token = env.ci_token("alice");
    let ci = [("RISE_TOKEN", token.as_str())];

    let json_out = env
        .rise(&["registry", "credentials", "--project", "my-app"], &ci)
        .await
        .ok();
    let body: Value = serde_json::from_str(&json_out.stdout).expect("the backend's JSON");
    assert_eq!(body["repository"], "my-app");
    assert_eq!(body["credentials"]["registry_url"], env.registry.addr());
    let password = body["credentials"]["password"].as_str().expect("password");

    let docker = env
        .rise(
            &[
                "registry",
                "credentials",
                "--project",
                "my-app",
                "--format",
                "docker-config",
            ],
            &ci,
        )
        .await
        .ok();
    let config: Value = serde_json::from_str(&docker.stdout).expect("config.json");
    let auth = config["auths"][env.registry.addr()]["auth"]
        .as_str()
        .expect("auth");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .expect("base64");
    let decoded = String::from_utf8(decoded).expect("utf-8");
    let username = body["credentials"]["username"].as_str().expect("username");
    let (user, secret) = decoded.split_once(':').expect("user:password");
    assert_eq!(user, username);
    assert!(!secret.is_empty() && !password.is_empty());

    // The docker-config output works as an auth file for skopeo as it is.
    let auth_file = env.path("ci-auth.json");
    std::fs::write(&auth_file, &docker.stdout).expect("write");
    let layout = OciLayout::create(&env.path("ci-image"), 2).expect("layout");
    skopeo::copy_to_registry(
        &layout.dir,
        &format!("{}/my-app:ci", env.registry.addr()),
        Creds::auth_file(&auth_file),
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo copy with the docker-config output: {e}"));

    // A broken token: the backend's sentence and the login hint, exit code 3.
    let bad = env
        .rise(
            &["registry", "credentials", "--project", "my-app"],
            &[("RISE_TOKEN", "not-a-jwt")],
        )
        .await;
    assert_eq!(bad.code, 3, "{bad:#?}");
    assert!(
        bad.stderr.contains("rise login --backend"),
        "{}",
        bad.stderr
    );
}

#[tokio::test]
async fn rise_audit_lists_filters_and_pages_the_log() {
    let env = CliEnv::start().await;
    let alice = env.ci_token("alice");
    let as_alice = [("RISE_TOKEN", alice.as_str())];
    env.rise(
        &["registry", "credentials", "--project", "my-app"],
        &as_alice,
    )
    .await
    .ok();
    let denied = env
        .rise(
            &["registry", "credentials", "--project", "other-app"],
            &as_alice,
        )
        .await;
    assert_eq!(denied.code, 4, "{denied:#?}");
    let auditor = env.ci_token("auditor");
    let as_auditor = [("RISE_TOKEN", auditor.as_str())];

    // Everything, complete, as JSON lines.
    let all = env
        .rise(&["audit", "--format", "jsonl"], &as_auditor)
        .await
        .ok();
    let records: Vec<Value> = all
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 2, "{}", all.stdout);
    assert_eq!(records[0]["result"], "granted");
    assert_eq!(records[0]["caller"]["subject"], "alice");
    assert!(
        records[0]["credential_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:"))
    );
    assert_eq!(records[1]["project"], "other-app");
    assert_eq!(records[1]["result"], "denied");

    // Filtered, as a table.
    let table = env
        .rise(&["audit", "--result", "denied"], &as_auditor)
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "header and one row: {}", table.stdout);
    assert!(lines[0].starts_with("     ID  TIME"), "{}", lines[0]);
    assert!(
        lines[1].contains("denied")
            && lines[1].contains("local/alice")
            && lines[1].contains("other-app"),
        "{}",
        lines[1]
    );

    // One page at a time, with the cursor named; or every page.
    let first = env.rise(&["audit", "--limit", "1"], &as_auditor).await.ok();
    assert_eq!(first.stdout.lines().count(), 2, "{}", first.stdout);
    assert!(
        first
            .stderr
            .contains("more after id 1: add --after-id 1, or --all"),
        "{}",
        first.stderr
    );
    let paged = env
        .rise(
            &["audit", "--limit", "1", "--all", "--format", "jsonl"],
            &as_auditor,
        )
        .await
        .ok();
    assert_eq!(paged.stdout.lines().count(), 2, "{}", paged.stdout);
    let none = env
        .rise(
            &["audit", "--project", "short-lived", "--since", "1h"],
            &as_auditor,
        )
        .await
        .ok();
    assert_eq!(none.stdout.lines().count(), 1, "only the header");
    assert!(
        none.stderr.contains("no audit records match"),
        "{}",
        none.stderr
    );

    // Only audit administrators read the log; a bad option is refused before any request.
    let refused = env.rise(&["audit"], &as_alice).await;
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(refused.stderr.contains("alice"), "{}", refused.stderr);
    assert_eq!(refused.stdout, "", "no table header for a refusal");
    let bad = env
        .rise(&["audit", "--since", "yesterday"], &as_auditor)
        .await;
    assert_eq!(bad.code, 2, "{bad:#?}");
    assert!(bad.stderr.contains("invalid time"), "{}", bad.stderr);
}

/// `rise grants revoke` as an audit administrator: alice's grant is refused at `/token` from
/// then on, and `rise audit` shows the revocation under the administrator's name; alice
/// herself may not revoke (exit code 4).
#[tokio::test]
async fn rise_grants_revoke_as_an_audit_administrator() {
    let env = CliEnv::start().await;
    let alice = env.ci_token("alice");
    let as_alice = [("RISE_TOKEN", alice.as_str())];
    let grant = env
        .rise(
            &[
                "registry",
                "credentials",
                "--project",
                "my-app",
                "--format",
                "json",
            ],
            &as_alice,
        )
        .await
        .ok();
    let body: Value = serde_json::from_str(&grant.stdout).expect("JSON");
    let password = body["credentials"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let exchange = || async {
        reqwest::Client::new()
            .get(format!(
                "{}/token?service=rise-registry&scope=repository:my-app:push",
                env.rise.url
            ))
            .basic_auth("rise", Some(&password))
            .send()
            .await
            .expect("token")
            .status()
    };
    assert_eq!(exchange().await, reqwest::StatusCode::OK);

    let refused = env
        .rise(&["grants", "revoke", "--subject", "local/bob"], &as_alice)
        .await;
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(
        refused.stderr.contains("not an audit administrator"),
        "{}",
        refused.stderr
    );

    let auditor = env.ci_token("auditor");
    let as_auditor = [("RISE_TOKEN", auditor.as_str())];
    let revoked = env
        .rise(
            &[
                "grants",
                "revoke",
                "--subject",
                "local/alice",
                "--reason",
                "left the team",
            ],
            &as_auditor,
        )
        .await
        .ok();
    assert!(
        revoked
            .stdout
            .starts_with("revoked subject local/alice; in force until "),
        "{}",
        revoked.stdout
    );
    assert_eq!(exchange().await, reqwest::StatusCode::UNAUTHORIZED);
    let log = env
        .rise(&["audit", "--format", "jsonl"], &as_auditor)
        .await
        .ok();
    let revocation: Value = log
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .find(|r| r["operation"] == "revoke")
        .unwrap_or_else(|| panic!("no revoke record in {}", log.stdout));
    assert_eq!(revocation["caller"]["subject"], "auditor");
    assert_eq!(
        revocation["reason"],
        "revoked subject local/alice: left the team"
    );
}

#[tokio::test]
async fn skopeo_pushes_through_the_credential_helper() {
    let env = CliEnv::start().await;
    env.login("alice").await;

    // Podman/skopeo's auth file, pre-seeded with content that must survive.
    let auth_file = env.path("containers/auth.json");
    std::fs::create_dir_all(auth_file.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &auth_file,
        r#"{"auths":{"other.example.com":{"auth":"dTpw"}},"credHelpers":{"gcr.io":"gcloud"}}"#,
    )
    .expect("seed");
    let out = env
        .rise(
            &[
                "registry",
                "login",
                "--project",
                "my-app",
                "--client",
                "podman",
            ],
            &[],
        )
        .await
        .ok();
    insta::assert_snapshot!("registry_login", env.normalize(&out.stdout));
    assert_eq!(mode(&auth_file), 0o600);
    let written: Value =
        serde_json::from_slice(&std::fs::read(&auth_file).expect("auth.json")).expect("json");
    assert_eq!(written["credHelpers"][env.registry.addr()], "rise");
    assert_eq!(written["credHelpers"]["gcr.io"], "gcloud");
    assert_eq!(written["auths"]["other.example.com"]["auth"], "dTpw");

    let layout = OciLayout::create(&env.path("image"), 3).expect("layout");
    let image = format!("{}/my-app:v1", env.registry.addr());
    let envs = env.env();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = vec![
        "copy".to_owned(),
        "--dest-tls-verify=false".to_owned(),
        "--authfile".to_owned(),
        auth_file.display().to_string(),
        format!("oci:{}", layout.dir.display()),
        format!("docker://{image}"),
    ];
    skopeo::skopeo(&args, &envs)
        .await
        .unwrap_or_else(|e| panic!("skopeo copy through docker-credential-rise: {e}"));
    assert_eq!(
        registry_digest(&env, &image, "my-app").await,
        layout.manifest_digest
    );
    // The helper cached what it fetched, privately.
    assert_eq!(mode(&env.path("cache/credentials.json")), 0o600);
}

#[tokio::test]
async fn the_helper_fetches_fresh_credentials_inside_the_margin() {
    let env = CliEnv::start().await;
    let token = env.ci_token("alice");
    let ci = [("RISE_TOKEN", token.as_str())];
    env.rise(&["registry", "login", "--project", "my-app"], &ci)
        .await
        .ok();
    let docker_config: Value = serde_json::from_slice(
        &std::fs::read(env.path("docker/config.json")).expect("config.json"),
    )
    .expect("json");
    assert_eq!(docker_config["credHelpers"][env.registry.addr()], "rise");

    let get = |margin: &'static str| {
        let env = &env;
        async move {
            let run = env
                .helper(
                    "get",
                    env.registry.addr(),
                    &[ci[0], ("RISE_CREDENTIAL_MARGIN", margin)],
                )
                .await
                .ok();
            let v: Value = serde_json::from_str(&run.stdout).expect("helper JSON");
            assert_eq!(v["ServerURL"], env.registry.addr());
            (
                v["Username"].as_str().expect("Username").to_owned(),
                v["Secret"].as_str().expect("Secret").to_owned(),
            )
        }
    };
    let (_, first) = get("5m").await;
    let (_, cached) = get("5m").await;
    assert_eq!(
        first, cached,
        "a credential valid for ~1h is reused with a 5m margin"
    );
    // Grants carry whole seconds: make sure the next one differs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (user, fresh) = get("2h").await;
    assert_ne!(
        first, fresh,
        "inside the margin, a fresh credential is fetched"
    );
    let (_, again) = get("5m").await;
    assert_eq!(fresh, again, "the fresh credential replaced the cached one");

    // The fresh credential works against the registry.
    let layout = OciLayout::create(&env.path("image"), 1).expect("layout");
    skopeo::copy_to_registry(
        &layout.dir,
        &format!("{}/my-app:fresh", env.registry.addr()),
        Creds::basic(user, fresh),
    )
    .await
    .unwrap_or_else(|e| panic!("push with the helper's credential: {e}"));

    let unknown = env.helper("get", "unknown.example.com", &ci).await;
    assert_eq!(unknown.code, 1);
    assert_eq!(
        unknown.stdout.trim(),
        "credentials not found in native keychain"
    );
    env.helper(
        "store",
        r#"{"ServerURL":"x","Username":"u","Secret":"s"}"#,
        &ci,
    )
    .await
    .ok();
    let list = env.helper("list", "", &ci).await.ok();
    let list: Value = serde_json::from_str(&list.stdout).expect("list JSON");
    assert!(list.get(env.registry.addr()).is_some(), "{list}");
    env.helper("erase", env.registry.addr(), &ci).await.ok();
}

#[tokio::test]
async fn client_side_docker_login_works_with_the_helper_registered() {
    let env = CliEnv::start().await;
    let token = env.ci_token("alice");
    let ci = [("RISE_TOKEN", token.as_str())];
    env.rise(&["registry", "login", "--project", "my-app"], &ci)
        .await
        .ok();
    let creds = env
        .rise(&["registry", "credentials", "--project", "my-app"], &ci)
        .await
        .ok();
    let body: Value = serde_json::from_str(&creds.stdout).expect("credentials JSON");
    let username = body["credentials"]["username"].as_str().expect("username");
    let password = body["credentials"]["password"].as_str().expect("password");

    // docker 28 without a daemon logs in client-side with -u/--password-stdin: it checks the
    // credential against the registry's token server, then hands it to the helper's `store`,
    // which must not fail the login.
    use tokio::io::AsyncWriteExt;
    let mut cmd = Command::new(require_binary("docker"));
    cmd.env_clear();
    for (k, v) in env.env() {
        cmd.env(k, v);
    }
    cmd.env("RISE_TOKEN", &token)
        .args([
            "login",
            "-u",
            username,
            "--password-stdin",
            env.registry.addr(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawning docker");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(password.as_bytes()).await.expect("stdin");
    drop(stdin);
    let run = Run::from(
        tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .expect("docker login finished in time")
            .expect("docker login output"),
    );
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.contains("Login Succeeded"), "{run:#?}");

    // The helper still answers for the registry, and no password landed in config.json.
    let config: Value = serde_json::from_slice(
        &std::fs::read(env.path("docker/config.json")).expect("config.json"),
    )
    .expect("json");
    assert_eq!(config["credHelpers"][env.registry.addr()], "rise");
    assert!(
        config["auths"][env.registry.addr()].get("auth").is_none(),
        "{config}"
    );
    let get = env.helper("get", env.registry.addr(), &ci).await.ok();
    assert!(get.stdout.contains("\"Secret\""), "{get:#?}");
}

#[tokio::test]
async fn rise_push_uploads_a_multi_layer_layout_and_resumes() {
    let env = CliEnv::start().await;
    let token = env.ci_token("alice");
    let ci = [("RISE_TOKEN", token.as_str())];
    let dir = env.path("image");
    let digest = layout_with_layers(&dir, &[40_000, 1_000, 70_000, 5_000]);
    let dir_arg = dir.display().to_string();

    let run = env
        .rise(
            &[
                "push",
                "--project",
                "my-app",
                &dir_arg,
                "--tag",
                "v1",
                "--jobs",
                "1",
            ],
            &ci,
        )
        .await
        .ok();
    let image = format!("{}/my-app:v1", env.registry.addr());
    assert_eq!(run.stdout.trim(), format!("{image}@{digest}"));
    assert_eq!(registry_digest(&env, &image, "my-app").await, digest);
    let short = |d: &str| d[..19].to_owned();
    let stderr = env
        .normalize(&run.stderr)
        .replace(&short(&digest), "sha256:MANIFEST");
    insta::assert_snapshot!("push", redact_digests(&stderr));

    // Again under another tag: every blob is already there, only the manifest is sent.
    let again = env
        .rise(
            &[
                "push",
                "--project",
                "my-app",
                &dir_arg,
                "--tag",
                "v2",
                "--jobs",
                "2",
            ],
            &ci,
        )
        .await
        .ok();
    assert_eq!(
        again
            .stderr
            .matches("already in the registry, skipped")
            .count(),
        5,
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("pushed 0 blobs, 5 already present"),
        "{}",
        again.stderr
    );

    // As a `docker save` archive (a tar of the same layout).
    let archive = env.path("image.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let from_tar = env
        .rise(
            &[
                "push",
                "--project",
                "my-app",
                &archive.display().to_string(),
                "--tag",
                "v3",
            ],
            &ci,
        )
        .await
        .ok();
    assert!(from_tar.stdout.trim().ends_with(&digest), "{from_tar:#?}");

    // Not a project alice may push to.
    let denied = env
        .rise(
            &["push", "--project", "other-app", &dir_arg, "--tag", "x"],
            &ci,
        )
        .await;
    assert_eq!(denied.code, 4, "{denied:#?}");
    assert!(
        denied
            .stderr
            .contains("project other-app: pull and push denied for subject alice"),
        "{}",
        denied.stderr
    );
}

/// `sha256:<12 hex>` -> `sha256:DIGEST` in progress lines (random layer content).
fn redact_digests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("sha256:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 7..];
        let hex = after.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
        if hex > 0 {
            out.push_str("sha256:DIGEST");
        } else {
            out.push_str("sha256:");
        }
        rest = &after[hex..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn rise_push_renews_a_grant_that_expires_mid_push() {
    let env = CliEnv::start().await;
    let token = env.ci_token("alice");
    let ci = [("RISE_TOKEN", token.as_str())];
    // 3-second grants; 4 layers of 96 KiB at 64 KiB/s take ~6 s: the grant (and the registry
    // token it caps) expires part-way. With --refresh-margin 0 nothing is renewed ahead of
    // time: only an expired grant is replaced.
    let dir = env.path("image");
    let digest = layout_with_layers(&dir, &[96 * 1024; 4]);
    let started = Instant::now();
    let run = env
        .rise(
            &[
                "push",
                "--project",
                "short-lived",
                &dir.display().to_string(),
                "--tag",
                "slow",
                "--jobs",
                "1",
                "--limit-rate",
                "64K",
                "--refresh-margin",
                "0",
            ],
            &ci,
        )
        .await;
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        took > Duration::from_secs(5),
        "the rate limit should stretch the push past the grant: {took:?}"
    );
    // Each upload starts with a valid token (the registry checks it when a request starts), so
    // the expiry is noticed before the next step, which renews and goes on.
    assert!(
        run.stderr
            .contains("renewing the registry credential: it expired"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("renewed the credential"),
        "{}",
        run.stderr
    );
    let image = format!("{}/short-lived:slow", env.registry.addr());
    assert_eq!(run.stdout.trim(), format!("{image}@{digest}"));
    assert_eq!(registry_digest(&env, &image, "short-lived").await, digest);

    // With the default margin (30 s > the 3 s grant) it renews ahead of each step instead.
    let dir2 = env.path("image2");
    let digest2 = layout_with_layers(&dir2, &[2_000, 3_000]);
    let run = env
        .rise(
            &[
                "push",
                "--project",
                "short-lived",
                &dir2.display().to_string(),
                "--tag",
                "ahead",
            ],
            &ci,
        )
        .await
        .ok();
    assert!(
        run.stderr
            .contains("renewing the registry credential: it expires in"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.trim().ends_with(&digest2), "{run:#?}");
}

/// A grant the token server stops accepting while the client still holds it for valid: the
/// grant keys are rotated twice once the upload has begun, so the grant's key is retired. With
/// 10-second registry tokens the client trades its grant again part-way (about 11 s in); `/token`
/// refuses it, and `rise push` renews the grant because the registry refused it, not because
/// it expired (no margin, and the grant has an hour left), then finishes the push.
#[tokio::test]
async fn rise_push_renews_a_grant_the_registry_refuses() {
    use rise_backend::keyring::Keyring;
    use rise_backend::registry::providers::distribution::GRANT_KEYS;
    let env = CliEnv::start_with_registry("token_ttl = \"10s\"").await;
    let token = env.ci_token("alice");
    let ci = [("RISE_TOKEN", token.as_str())];
    // 4 layers of 96 KiB at 32 KiB/s: about 12 s, past the first registry token's 10 s.
    let dir = env.path("image");
    let digest = layout_with_layers(&dir, &[96 * 1024; 4]);
    let layout = dir.display().to_string();
    let args = [
        "push",
        "--project",
        "my-app",
        &layout,
        "--tag",
        "refused",
        "--jobs",
        "1",
        "--limit-rate",
        "32K",
        "--refresh-margin",
        "0",
    ];
    let push = env.rise(&args, &ci);
    let retire_the_grant_key = async {
        env.registry
            .wait_for_log("blobs/uploads", COMMAND_TIMEOUT)
            .await
            .expect("the upload begins");
        let keyring = Keyring::files(&env.rise.data_dir()).expect("keyring");
        for _ in 0..2 {
            keyring.rotate(&GRANT_KEYS).await.expect("rotate");
        }
        let service = env.rise.state.token_service.clone().expect("token service");
        assert!(service.reload_keys().await.expect("reload"), "picked up");
    };
    let (run, ()) = tokio::join!(push, retire_the_grant_key);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr
            .contains("renewing the registry credential: the registry refused it"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("it expired"),
        "renewed for the refusal, not an expiry: {}",
        run.stderr
    );
    let image = format!("{}/my-app:refused", env.registry.addr());
    assert_eq!(run.stdout.trim(), format!("{image}@{digest}"));
    assert_eq!(registry_digest(&env, &image, "my-app").await, digest);
}

#[tokio::test]
async fn browser_login_with_pkce_and_a_loopback_redirect() {
    let env = CliEnv::start().await;
    let mut cmd = env.command("rise", &[]);
    cmd.args([
        "login",
        "--browser",
        "--no-open",
        "--backend",
        &env.rise.url,
    ]);
    let mut process =
        ChildProcess::spawn("rise login --browser", cmd).expect("spawning rise login");
    let line = process
        .wait_for_line(
            "waiting for the sign-in URL",
            |l| {
                l.trim_start()
                    .starts_with(&format!("{}/", env.oidc.issuer()))
            },
            COMMAND_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = line.trim().to_owned();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{url}"
    );
    let callback = env
        .oidc
        .approve_authorization(&url, "alice")
        .await
        .unwrap_or_else(|e| panic!("browser part of the sign-in: {e:#}"));
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    // The "browser" follows the redirect to the CLI's one-shot listener.
    let page = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(&callback)
        .send()
        .await
        .expect("callback request");
    assert!(page.status().is_success());
    let status = process
        .wait_exit(COMMAND_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = process.logs().text();
    assert!(status.success(), "rise login --browser failed: {text}");
    assert!(text.contains("as alice (issuer corp)"), "{text}");
    env.rise(&["whoami"], &[]).await.ok();
}
