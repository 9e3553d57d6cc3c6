//! Two Rise replicas sharing one real PostgreSQL: a grant one issues is accepted by the other's
//! `/token`, both sign registry tokens with the keys sealed in the database, a rotation during
//! the run refuses nothing, audit records of both land in one intact chain, and rate limits hold
//! across the pair.
//!
//! The registry (real `docker-registry`) sends clients to replica B for tokens; the grants come
//! from replica A; skopeo pushes through both.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use rise_backend::audit::{AuditFilter, Outcome};
use rise_backend::keyring::Keyring;
use rise_backend::registry::providers::distribution::{
    GRANT_KEYS, GrantKeys, KeySet, REGISTRY_TOKEN_KEYS, registry_config_snippet_from,
};
use rise_backend::store::Store;
use serde_json::Value;
use tokio::time::Instant;

use crate::distribution::token_auth_from_snippet;
use crate::support::image::OciLayout;
use crate::support::oidc::{OidcProvider, decode_jwt};
use crate::support::postgres::Postgres;
use crate::support::process::http_client;
use crate::support::registry::DistributionRegistry;
use crate::support::rise::{ReservedRise, RiseServer};
use crate::support::skopeo::{self, Creds};

/// The configured per-subject burst; two replicas together must allow exactly this many.
const BURST: usize = 40;

fn rise_config(
    reserved: &ReservedRise,
    database_url: &str,
    sealing_key: &str,
    issuer: &str,
    registry_addr: &str,
) -> String {
    format!(
        r#"{server}[database]
url = {database_url:?}

[keys]
sealing_key = {sealing_key:?}
reload_interval = "200ms"

[auth.local]
enabled = false

[auth.issuers.corp]
issuer = {issuer:?}
audience = "rise"
insecure_http = true

[registry]
type = "distribution"
url = {registry_addr:?}

[projects.my-app]
[[projects.my-app.allow]]
issuer = "corp"
subject = "ci-app"
actions = ["push"]
[[projects.my-app.allow]]
issuer = "corp"
subject = "ci-other"
actions = ["pull"]

[rate_limit]
replicas = 2
per_subject = {{ rate = "1/h", burst = {BURST} }}
"#,
        server = reserved.server_toml()
    )
}

struct Pair {
    a: RiseServer,
    b: RiseServer,
    registry: DistributionRegistry,
    oidc: OidcProvider,
    store: Store,
    keyring: Keyring,
    _postgres: Postgres,
}

impl Pair {
    async fn start() -> Self {
        let postgres = Postgres::start().await;
        let url = postgres.create_database("rise_replicas").await;
        let oidc = OidcProvider::start().await;
        let mut sealing_key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut sealing_key).expect("random");
        let sealing_key = STANDARD.encode(sealing_key);

        let a = ReservedRise::bind().await;
        let b = ReservedRise::bind().await;
        // `rise-backend registry-config` as an operator would run it against the shared database:
        // the bundle holds the current and the next key, which the replicas will load.
        let preliminary = a.load_config(&rise_config(
            &a,
            &url,
            &sealing_key,
            oidc.issuer(),
            "127.0.0.1:1",
        ));
        let store = Store::open(&preliminary.database, a.data_dir())
            .await
            .expect("opening the shared database");
        let keyring =
            Keyring::for_store(&store, a.data_dir(), &preliminary.keys).expect("database keyring");
        let snippet = registry_config_snippet_from(&preliminary, None, &keyring)
            .await
            .expect("registry-config");
        let mut auth = token_auth_from_snippet(&snippet);
        // Registry clients get their tokens from replica B.
        auth.realm = format!("{}/token", b.url());
        let registry = DistributionRegistry::start(auth).await;

        let config_a = rise_config(&a, &url, &sealing_key, oidc.issuer(), registry.addr());
        let config_b = rise_config(&b, &url, &sealing_key, oidc.issuer(), registry.addr());
        let a = a.serve(&config_a).await;
        let b = b.serve(&config_b).await;
        Self {
            a,
            b,
            registry,
            oidc,
            store,
            keyring,
            _postgres: postgres,
        }
    }

    async fn credentials(&self, replica: &RiseServer, token: &str) -> (StatusCode, Value) {
        let response = http_client()
            .get(format!(
                "{}/registry/credentials?project=my-app",
                replica.url
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("credentials request");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    async fn grant(&self, replica: &RiseServer, token: &str) -> (String, String) {
        let (status, body) = self.credentials(replica, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let c = &body["credentials"];
        (
            c["username"].as_str().expect("username").to_owned(),
            c["password"].as_str().expect("password").to_owned(),
        )
    }

    /// `GET /token` on `replica` with a grant, as a registry client would.
    async fn registry_token(&self, replica: &RiseServer, grant: &(String, String)) -> Value {
        let response = http_client()
            .get(format!(
                "{}/token?service=rise-registry&scope=repository:my-app:pull,push",
                replica.url
            ))
            .basic_auth(&grant.0, Some(&grant.1))
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(
            status,
            StatusCode::OK,
            "{} refused a grant: {body}",
            replica.url
        );
        body
    }

    async fn push(&self, layout: &OciLayout, tag: &str, grant: &(String, String)) {
        skopeo::copy_to_registry(
            &layout.dir,
            &format!("{}/my-app:{tag}", self.registry.addr()),
            Creds::basic(grant.0.clone(), grant.1.clone()),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "skopeo push of {tag} failed: {e}\nregistry log:\n{}",
                self.registry.logs()
            )
        });
    }
}

/// The `kid` in a JWT's header.
fn kid(jwt: &str) -> String {
    decode_jwt(jwt).0["kid"]
        .as_str()
        .expect("kid in header")
        .to_owned()
}

/// Waits until `replica` signs with `expected` (it re-reads keys every 200 ms).
async fn wait_for_signing_kid(replica: &RiseServer, expected: &str) {
    let service = replica.state.token_service.clone().expect("token service");
    let deadline = Instant::now() + Duration::from_secs(20);
    while service.signing_kid() != expected {
        assert!(
            Instant::now() < deadline,
            "{} still signs with {} 20 s after the rotation",
            replica.url,
            service.signing_kid()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_replicas_share_grants_keys_audit_and_limits() {
    let pair = Pair::start().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let layout = OciLayout::create(&scratch.path().join("image"), 2).expect("OCI layout");
    let token = pair.oidc.client_credentials_token("ci-app", "rise").await;

    // Both replicas loaded the same keys from the database.
    let before = KeySet::load(&pair.keyring).await.expect("keys");
    let before_kids: Vec<String> = before.trusted().map(|c| c.kid().to_owned()).collect();
    assert_eq!(before_kids.len(), 2, "current and next before any rotation");
    for replica in [&pair.a, &pair.b] {
        let service = replica.state.token_service.clone().expect("token service");
        assert_eq!(service.signing_kid(), before_kids[0]);
    }
    // The keys are sealed at rest: no row holds a PEM or a bare secret.
    let pool = pair.store.postgres_pool().expect("PostgreSQL store");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, value FROM rise_keys")
        .fetch_all(pool)
        .await
        .expect("reading rise_keys");
    assert_eq!(
        rows.len(),
        4,
        "{:?}",
        rows.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    for (name, value) in &rows {
        assert!(value.starts_with("sealed:v1:"), "{name} is not sealed");
        assert!(
            !value.contains("PRIVATE KEY"),
            "{name} holds a PEM in clear"
        );
    }

    // A grant from replica A, traded at replica B (the registry's realm) by skopeo.
    let grant_a = pair.grant(&pair.a, &token).await;
    pair.push(&layout, "v1", &grant_a).await;
    // And directly: B's registry token is signed with the shared current key.
    let from_b = pair.registry_token(&pair.b, &grant_a).await;
    assert_eq!(
        kid(from_b["token"].as_str().expect("token")),
        before_kids[0]
    );

    // Rotate while both serve (what `rise-backend keys rotate` does).
    assert_eq!(
        pair.keyring.last_rotation(&GRANT_KEYS).await.expect("read"),
        None
    );
    pair.keyring
        .rotate(&REGISTRY_TOKEN_KEYS)
        .await
        .expect("rotate signing keys");
    pair.keyring
        .rotate(&GRANT_KEYS)
        .await
        .expect("rotate grant keys");
    let rotated = pair
        .keyring
        .last_rotation(&GRANT_KEYS)
        .await
        .expect("read")
        .expect("the database knows when it rotated");
    assert!(rotated.elapsed().unwrap_or_default() < Duration::from_secs(60));
    let after = KeySet::load(&pair.keyring).await.expect("keys");
    assert_eq!(after.current().kid(), before_kids[1], "next became current");
    wait_for_signing_kid(&pair.a, &before_kids[1]).await;
    wait_for_signing_kid(&pair.b, &before_kids[1]).await;

    // The grant issued before the rotation still works: B accepts it with the retired grant
    // key, and signs with the new current key, which the registry trusted from its start.
    pair.push(&layout, "v2", &grant_a).await;
    // A grant of the new key from B is accepted by A.
    let grant_b = pair.grant(&pair.b, &token).await;
    let new_grant_kid = GrantKeys::load(&pair.keyring)
        .await
        .expect("grant keys")
        .kids()
        .next()
        .expect("current grant key")
        .to_owned();
    assert_eq!(
        kid(&grant_b.1),
        new_grant_kid,
        "B signs grants with the new key"
    );
    assert_ne!(kid(&grant_a.1), new_grant_kid);
    let from_a = pair.registry_token(&pair.a, &grant_b).await;
    assert_eq!(
        kid(from_a["token"].as_str().expect("token")),
        before_kids[1]
    );
    pair.push(&layout, "v3", &grant_b).await;

    // Both replicas' records are in one chain, which verifies.
    let report = rise_backend::audit::verify(&pair.store)
        .await
        .expect("verify");
    assert!(report.broken.is_none(), "{:?}", report.broken);
    let records = pair
        .store
        .audit_page(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .expect("audit page");
    assert_eq!(records.len() as u64, report.records);
    let issued = |grant: &(String, String)| {
        let jti = decode_jwt(&grant.1).1["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        records
            .iter()
            .any(|r| r.fields.credential_id.as_deref() == Some(jti.as_str()))
    };
    assert!(issued(&grant_a), "A's issuance is audited");
    assert!(issued(&grant_b), "B's issuance is audited");
    let token_exchanges = records
        .iter()
        .filter(|r| r.fields.operation == "token" && r.fields.result == Outcome::Granted.as_str())
        .count();
    assert!(
        token_exchanges >= 5,
        "/token exchanges of both replicas: {token_exchanges}"
    );

    // Rate limits across the pair: one caller alternating between the replicas gets the
    // configured burst in all, not twice it.
    let other = pair.oidc.client_credentials_token("ci-other", "rise").await;
    let mut allowed = 0;
    let mut limited = 0;
    for i in 0..(BURST * 2) {
        let replica = if i % 2 == 0 { &pair.a } else { &pair.b };
        let (status, body) = pair.credentials(replica, &other).await;
        match status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"], "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(allowed, BURST, "the pair allows the configured burst");
    assert_eq!(limited, BURST);
}

/// A configuration in `dir` (data in `dir/data`) where the local issuer's `alice` may push
/// `my-app` and keys reload every 200 ms; `database` and `keys` are TOML lines for those tables.
/// The registry's address is a closed port: nothing answers there.
fn alice_config(
    dir: &std::path::Path,
    name: &str,
    database: &str,
    keys: &str,
) -> std::path::PathBuf {
    alice_config_for(dir, name, database, keys, "127.0.0.1:1")
}

/// [`alice_config`] with its keys sealed in the PostgreSQL database at `url`, under a fresh
/// sealing key.
fn alice_config_on_postgres(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).expect("random");
    alice_config(
        dir,
        "rise.toml",
        &format!("url = {url:?}"),
        &format!("sealing_key = {:?}", STANDARD.encode(key)),
    )
}

/// [`alice_config`] with the registry at `registry` (`host:port`).
fn alice_config_for(
    dir: &std::path::Path,
    name: &str,
    database: &str,
    keys: &str,
    registry: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
data_dir = {data:?}

[database]
{database}

[keys]
reload_interval = "200ms"
{keys}

[registry]
type = "distribution"
url = {registry:?}

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
subject = "alice"
actions = ["push"]
"#,
            data = dir.join("data").display().to_string()
        ),
    )
    .expect("config");
    path
}

/// The key ID on the line of `output` that starts with `prefix`, e.g. `registry token current `.
fn shown_kid(output: &str, prefix: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|rest| rest.trim().to_owned())
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{output}"))
}

/// The `kid` of the registry token `/token` hands out for a fresh grant of `sub`.
async fn token_kid(
    rise: &crate::support::rise_process::RiseProcess,
    config: &std::path::Path,
) -> String {
    use crate::support::rise_process::run;
    let issued = run(config, &["token", "issue", "--sub", "alice"]).await;
    assert!(issued.status.success(), "{issued:?}");
    let caller = String::from_utf8(issued.stdout).expect("utf-8");
    let http = http_client();
    let body: Value = http
        .get(format!(
            "{}/registry/credentials?project=my-app",
            rise.url()
        ))
        .bearer_auth(caller.trim())
        .send()
        .await
        .expect("credentials")
        .json()
        .await
        .expect("JSON");
    let c = &body["credentials"];
    let token: Value = http
        .get(format!(
            "{}/token?service=rise-registry&scope=repository:my-app:push,pull",
            rise.url()
        ))
        .basic_auth(
            c["username"].as_str().expect("username"),
            c["password"].as_str(),
        )
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("JSON");
    kid(token["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {token}")))
}

#[tokio::test]
async fn keys_rotate_moves_every_slot_and_a_running_server_follows() {
    use crate::support::rise_process::{RiseProcess, run};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = alice_config(dir.path(), "rise.toml", "", "");

    // `keys show` reads the keys `serve` created; it creates none.
    let rise = RiseProcess::serve(&config).await;
    let show = run(&config, &["keys", "show"]).await;
    assert!(show.status.success(), "{show:?}");
    let before = String::from_utf8(show.stdout).expect("utf-8");
    let current = shown_kid(&before, "registry token current ");
    let next = shown_kid(&before, "registry token next    ");
    assert!(!before.contains("previous"), "no rotation yet:\n{before}");
    assert_eq!(token_kid(&rise, &config).await, current);

    let rotate = run(&config, &["keys", "rotate"]).await;
    assert!(rotate.status.success(), "{rotate:?}");
    let after = String::from_utf8(rotate.stdout).expect("utf-8");
    assert_eq!(shown_kid(&after, "registry token current "), next);
    assert_eq!(shown_kid(&after, "registry token previous"), current);
    assert!(
        after.contains("registry-config"),
        "tells what to do next:\n{after}"
    );

    // The running server signs with the promoted key within its reload interval.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kid = token_kid(&rise, &config).await;
        if kid == next {
            break;
        }
        assert_eq!(kid, current, "only the old or the new key");
        assert!(
            Instant::now() < deadline,
            "still signing with {kid} 20 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The bundle for registries now holds current, the fresh next, and the retired key.
    let snippet = run(&config, &["registry-config"]).await;
    assert!(snippet.status.success(), "{snippet:?}");
    let bundle = std::fs::read_to_string(dir.path().join("data/registry-bundle.pem"))
        .expect("bundle written");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 3);

    // A second rotation within the longest grant lifetime (12 h) would retire the key of grants
    // still in use: refused, unless forced.
    let again = run(&config, &["keys", "rotate"]).await;
    assert!(!again.status.success(), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    let unchanged = run(&config, &["keys", "show"]).await;
    assert_eq!(
        shown_kid(
            &String::from_utf8_lossy(&unchanged.stdout),
            "registry token current "
        ),
        next,
        "a refused rotation changes nothing"
    );
    let forced = run(&config, &["keys", "rotate", "--force"]).await;
    assert!(forced.status.success(), "{forced:?}");
    let forced = String::from_utf8(forced.stdout).expect("utf-8");
    assert_eq!(shown_kid(&forced, "registry token previous"), next);

    // The wait is the longest grant lifetime plus three reload intervals (a server signs with
    // the old key until it reloads, and stays ready through three failed reloads). With a 10 s
    // interval: refused 12 h 5 s after the last rotation, allowed 12 h 60 s after it.
    let slow_reload = dir.path().join("rise-slow-reload.toml");
    std::fs::write(
        &slow_reload,
        std::fs::read_to_string(&config)
            .expect("config")
            .replace("reload_interval = \"200ms\"", "reload_interval = \"10s\""),
    )
    .expect("write config");
    let rotated_ago = |ago: Duration| {
        for entry in std::fs::read_dir(dir.path().join("data/keys")).expect("keys dir") {
            let path = entry.expect("entry").path();
            if path.to_string_lossy().contains("previous") {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now() - ago))
                    .expect("set the rotation time");
            }
        }
    };
    let twelve_hours = Duration::from_secs(12 * 3600);
    rotated_ago(twelve_hours + Duration::from_secs(5));
    let early = run(&slow_reload, &["keys", "rotate"]).await;
    assert!(!early.status.success(), "{early:?}");
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(stderr.contains("three keys.reload_interval"), "{stderr}");
    rotated_ago(twelve_hours + Duration::from_secs(60));
    let late = run(&slow_reload, &["keys", "rotate"]).await;
    assert!(late.status.success(), "{late:?}");
}

/// Changing the sealing key of keys kept in PostgreSQL, with the real binary: a server given the
/// new key and the old one as `previous_sealing_key` keeps serving; `keys reseal` moves every key
/// to the new sealing key; afterwards the new key alone opens them, the old one no longer does,
/// and the keys themselves never changed.
#[tokio::test]
async fn keys_reseal_moves_sealed_keys_to_a_new_sealing_key() {
    use crate::support::rise_process::{RiseProcess, run};
    let postgres = Postgres::start().await;
    let url = postgres.create_database("rise_reseal").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let random_key = || {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).expect("random");
        STANDARD.encode(key)
    };
    let (old, new) = (random_key(), random_key());
    let database = format!("url = {url:?}");
    let config = |name: &str, keys: &str| alice_config(dir.path(), name, &database, keys);
    let with_old = config("old.toml", &format!("sealing_key = {old:?}"));
    let changing = config(
        "changing.toml",
        &format!("sealing_key = {new:?}\nprevious_sealing_key = {old:?}"),
    );
    let with_new = config("new.toml", &format!("sealing_key = {new:?}"));
    let show = |config: std::path::PathBuf| async move {
        let out = run(&config, &["keys", "show"]).await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, before, err) = show(with_old.clone()).await;
    assert!(ok, "{err}");
    assert!(
        before.contains("sealed with keys.sealing_key: 4; with keys.previous_sealing_key: 0"),
        "{before}"
    );
    let current = shown_kid(&before, "registry token current ");
    let (ok, _, err) = show(with_new.clone()).await;
    assert!(!ok, "the new key alone opens nothing yet");
    assert!(err.contains("previous_sealing_key"), "{err}");

    let rise = RiseProcess::serve(&changing).await;
    assert_eq!(token_kid(&rise, &changing).await, current);
    let (ok, pending, err) = show(changing.clone()).await;
    assert!(ok, "{err}");
    assert!(
        pending.contains("with keys.sealing_key: 0; with keys.previous_sealing_key: 4"),
        "{pending}"
    );

    let reseal = run(&changing, &["keys", "reseal"]).await;
    assert!(reseal.status.success(), "{reseal:?}");
    let said = String::from_utf8_lossy(&reseal.stdout);
    assert!(said.contains("sealed 4 keys"), "{said}");
    assert!(said.contains("remove keys.previous_sealing_key"), "{said}");

    // The server that was running through it still signs with the same key, and so does one
    // started with the new sealing key alone.
    assert_eq!(token_kid(&rise, &changing).await, current);
    let fresh = RiseProcess::serve(&with_new).await;
    assert_eq!(token_kid(&fresh, &with_new).await, current);
    let (ok, after, err) = show(with_new).await;
    assert!(ok, "{err}");
    assert_eq!(shown_kid(&after, "registry token current "), current);
    assert!(
        after.contains("sealed with keys.sealing_key: 4; with keys.previous_sealing_key: 0"),
        "{after}"
    );
    let (ok, _, refused) = show(with_old).await;
    assert!(!ok, "the old key no longer opens them");
    assert!(refused.contains("cannot be opened"), "{refused}");
    // No sealing key was printed on the way, on stdout or stderr.
    let reseal_err = String::from_utf8_lossy(&reseal.stderr).into_owned();
    for output in [
        &before,
        &pending,
        &after,
        &said.to_string(),
        &reseal_err,
        &refused,
    ] {
        assert!(!output.contains(&old) && !output.contains(&new), "{output}");
    }
}

/// Keys in PostgreSQL put back from before two rotations (a backup restored over them, or
/// someone with write access to the database returning a sealed key they kept): a server that
/// picked up the rotations refuses them, keeps signing with the keys it has, says so in its log
/// at error level and counts it in `/metrics`.
#[tokio::test]
async fn a_server_refuses_keys_rolled_back_past_a_rotation() {
    use crate::support::rise_process::{RiseProcess, run};
    let postgres = Postgres::start().await;
    let url = postgres.create_database("rise_rollback").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = alice_config_on_postgres(dir.path(), &url);
    let show = run(&config, &["keys", "show"]).await;
    assert!(show.status.success(), "{show:?}");
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    let original = shown_kid(&shown, "registry token current ");
    let original_grant = shown_kid(&shown, "grant          current ");

    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let backup: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, value, updated_ms FROM rise_keys ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("reading rise_keys");
    assert_eq!(backup.len(), 4, "current and next of two families");

    let rise = RiseProcess::serve(&config).await;
    assert_eq!(token_kid(&rise, &config).await, original);
    let mut rotated = String::new();
    for args in [&["keys", "rotate"][..], &["keys", "rotate", "--force"][..]] {
        let out = run(&config, args).await;
        assert!(out.status.success(), "{out:?}");
        rotated = shown_kid(
            &String::from_utf8_lossy(&out.stdout),
            "registry token current ",
        );
        // The server follows each rotation: it signs with the new current key.
        let deadline = Instant::now() + Duration::from_secs(20);
        while token_kid(&rise, &config).await != rotated {
            assert!(
                Instant::now() < deadline,
                "rotation to {rotated} not picked up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_ne!(rotated, original);

    // Back to the rows as they were: the original keys are current again, sealed as before.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("DELETE FROM rise_keys")
        .execute(&mut *tx)
        .await
        .expect("delete");
    for (name, value, updated_ms) in &backup {
        sqlx::query("INSERT INTO rise_keys (name, value, updated_ms) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(value)
            .bind(updated_ms)
            .execute(&mut *tx)
            .await
            .expect("restore");
    }
    tx.commit().await.expect("commit");
    let restored = run(&config, &["keys", "show"]).await;
    assert_eq!(
        shown_kid(
            &String::from_utf8_lossy(&restored.stdout),
            "registry token current "
        ),
        original,
        "the store holds the original keys again"
    );

    // The server notices within a few reload intervals (200 ms) and keeps its keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rise
        .logs()
        .contains("that a rotation this server picked up retired")
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            rise.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusal = rise
        .logs()
        .lines()
        .find(|l| l.contains("that a rotation this server picked up retired"))
        .map(str::to_owned)
        .expect("the refusal line");
    let event: Value = serde_json::from_str(&refusal).expect("JSON log line");
    assert_eq!(event["level"], "ERROR", "{refusal}");
    assert!(refusal.contains(&original), "names the key: {refusal}");
    assert!(
        refusal.contains(&original_grant),
        "names the key: {refusal}"
    );
    assert_eq!(
        token_kid(&rise, &config).await,
        rotated,
        "still the rotated key"
    );
    let metrics = http_client()
        .get(format!("{}/metrics", rise.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("rise_signing_key_reloads_total")
                && l.contains("result=\"refused_retired_key\"")
        })
        .unwrap_or_else(|| panic!("no refused_retired_key series:\n{metrics}"));
    let count: f64 = refused
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count >= 1.0, "{refused}");
}

/// `keys rotate` asks each registry whether it trusts the key about to sign, with a real
/// registry: one started with the current bundle says yes; the same registry a rotation later
/// (not restarted, so its bundle lacks the new next key) says no and the rotation is refused;
/// after `registry-config` and a restart it goes through; a registry nobody can reach is a
/// warning only.
#[tokio::test]
async fn keys_rotate_asks_registries_whether_they_trust_the_next_key() {
    use crate::support::rise_process::run;
    let dir = tempfile::tempdir().expect("temp dir");
    let preliminary = alice_config(dir.path(), "rise.toml", "", "");
    let start_registry = || async {
        let snippet = run(&preliminary, &["registry-config"]).await;
        assert!(snippet.status.success(), "{snippet:?}");
        DistributionRegistry::start(token_auth_from_snippet(&String::from_utf8_lossy(
            &snippet.stdout,
        )))
        .await
    };
    // Backdate the last rotation of both families past the longest grant lifetime (12 h), as
    // if a day had passed.
    let a_day_later = || {
        for family in [&GRANT_KEYS, &REGISTRY_TOKEN_KEYS] {
            let previous = dir.path().join("data/keys").join(family.files[2]);
            std::fs::File::options()
                .write(true)
                .open(&previous)
                .and_then(|f| {
                    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(13 * 3600))
                })
                .expect("backdating the last rotation");
        }
    };
    let show = |config: std::path::PathBuf| async move {
        let out = run(&config, &["keys", "show"]).await;
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let registry = start_registry().await;
    let config = alice_config_for(dir.path(), "rise.toml", "", "", registry.addr());
    let next = shown_kid(&show(config.clone()).await, "registry token next    ");
    let rotate = run(&config, &["keys", "rotate"]).await;
    let said = String::from_utf8_lossy(&rotate.stdout);
    assert!(rotate.status.success(), "{rotate:?}");
    assert!(
        said.contains(&format!("registry default trusts the next key {next}")),
        "{said}"
    );
    assert_eq!(shown_kid(&said, "registry token current "), next);
    let records = operator_records(&config).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["operation"], "rotate_keys");
    assert_eq!(records[0]["result"], "granted");
    let reason = records[0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&format!("registry tokens now signed with {next}")),
        "{reason}"
    );
    assert!(
        said.contains(&format!(
            "audit record {}: rotated the keys",
            records[0]["id"]
        )),
        "{said}"
    );

    // A day later, the registry still runs with the old bundle: it lacks the new next key.
    a_day_later();
    let new_next = shown_kid(&show(config.clone()).await, "registry token next    ");
    let refused = run(&config, &["keys", "rotate"]).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        err.contains(&format!(
            "registry default refused a token signed with the next key {new_next}"
        )),
        "{err}"
    );
    assert!(
        err.contains("invalid_token"),
        "the registry's reason: {err}"
    );
    assert!(err.contains("restart the registry"), "{err}");
    assert_eq!(
        shown_kid(&show(config.clone()).await, "registry token current "),
        next,
        "a refused rotation changes nothing"
    );

    // `registry-config` and a restart with the new bundle: the rotation goes through.
    drop(registry);
    let registry = start_registry().await;
    let config = alice_config_for(dir.path(), "rise.toml", "", "", registry.addr());
    let rotate = run(&config, &["keys", "rotate"]).await;
    assert!(rotate.status.success(), "{rotate:?}");
    let said = String::from_utf8_lossy(&rotate.stdout);
    assert_eq!(shown_kid(&said, "registry token current "), new_next);

    // Nobody answers at the configured address: a warning, and the rotation goes through.
    a_day_later();
    let config = alice_config(dir.path(), "rise.toml", "", "");
    let rotate = run(&config, &["keys", "rotate"]).await;
    assert!(rotate.status.success(), "{rotate:?}");
    let warned = String::from_utf8_lossy(&rotate.stderr);
    assert!(
        warned.contains("warning: could not ask registry default whether it trusts the next key"),
        "{warned}"
    );
    assert!(warned.contains("127.0.0.1:1"), "{warned}");
    let records = operator_records(&config).await;
    assert_eq!(
        records.len(),
        3,
        "three rotations went through, the refused one is not recorded: {records:?}"
    );
    assert!(records.iter().all(|r| r["operation"] == "rotate_keys"));
    let agent = records[2]["caller"]["user_agent"].as_str().expect("agent");
    assert!(agent.ends_with(" keys rotate"), "{agent}");
}

/// The audit records of operator commands (issuer `operator`), from `rise-backend audit export`.
async fn operator_records(config: &std::path::Path) -> Vec<Value> {
    let export = crate::support::rise_process::run(config, &["audit", "export"]).await;
    assert!(export.status.success(), "{export:?}");
    String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
        .filter(|r| r["caller"]["issuer"] == "operator")
        .collect()
}

/// `rise-backend grants revoke` with the real binary on PostgreSQL: a running server (another
/// process) refuses the caller's grant at `/token` within its reload interval, with the reason;
/// `grants list` shows the revocation; a subject of an issuer that is not configured, or not in
/// `ISSUER/SUBJECT` form, is refused.
#[tokio::test]
async fn grants_revoke_reaches_a_running_server() {
    use crate::support::rise_process::{RiseProcess, run};
    let postgres = Postgres::start().await;
    let url = postgres.create_database("rise_grants").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = alice_config_on_postgres(dir.path(), &url);
    let rise = RiseProcess::serve(&config).await;
    let issued = run(&config, &["token", "issue", "--sub", "alice"]).await;
    assert!(issued.status.success(), "{issued:?}");
    let http = http_client();
    let grant = || async {
        let body: Value = http
            .get(format!(
                "{}/registry/credentials?project=my-app",
                rise.url()
            ))
            .bearer_auth(String::from_utf8_lossy(&issued.stdout).trim())
            .send()
            .await
            .expect("credentials")
            .json()
            .await
            .expect("JSON");
        body["credentials"]["password"]
            .as_str()
            .expect("password")
            .to_owned()
    };
    let (leaked, password) = (grant().await, grant().await);
    let exchange_with = |password: String| {
        let http = &http;
        let url = rise.url();
        async move {
            let response = http
                .get(format!(
                    "{url}/token?service=rise-registry&scope=repository:my-app:push"
                ))
                .basic_auth("rise", Some(&password))
                .send()
                .await
                .expect("token");
            let status = response.status();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let exchange = || exchange_with(password.clone());
    assert_eq!(exchange_with(leaked.clone()).await.0, StatusCode::OK);
    assert_eq!(exchange().await.0, StatusCode::OK);

    // Standard input is read up to 64 KiB, not to its end: a wrong pipe fails at once.
    let mut cmd =
        crate::support::rise_process::command(&config, &["grants", "revoke", "--password-stdin"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("grants revoke");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        // Fails (broken pipe) once the command stops reading.
        let _ = stdin.write_all(&vec![b'x'; 1024 * 1024]).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("in time")
        .expect("output");
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("more than 64 KiB"), "{said}");

    // A grant found leaked, given on standard input: that grant alone is refused.
    let mut cmd = crate::support::rise_process::command(
        &config,
        &[
            "grants",
            "revoke",
            "--password-stdin",
            "--reason",
            "in a build log",
        ],
    );
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("grants revoke");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{leaked}\n").as_bytes())
            .await
            .expect("stdin");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("in time")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("a grant of local/alice for registry default, credential id "),
        "{said}"
    );
    for output in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(output).contains(&leaked),
            "the grant is never echoed"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while exchange_with(leaked.clone()).await.0 != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "the leaked grant is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        exchange().await.0,
        StatusCode::OK,
        "the other grant still works"
    );

    let revoke = run(
        &config,
        &[
            "grants",
            "revoke",
            "--subject",
            "local/alice",
            "--reason",
            "laptop stolen",
        ],
    )
    .await;
    assert!(revoke.status.success(), "{revoke:?}");
    let said = String::from_utf8_lossy(&revoke.stdout);
    assert!(said.starts_with("subject local/alice  revoked "), "{said}");
    assert!(said.contains("(laptop stolen)"), "{said}");
    assert!(said.contains("keys.reload_interval (200ms)"), "{said}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = exchange().await;
        if status == StatusCode::UNAUTHORIZED {
            break body;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            Instant::now() < deadline,
            "still accepted 20 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["error"], "grant_revoked", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("laptop stolen"), "{message}");
    assert!(
        message.contains("ask /registry/credentials for a new one"),
        "{message}"
    );

    let list = run(&config, &["grants", "list"]).await;
    assert!(list.status.success(), "{list:?}");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.starts_with("credential "), "{listed}");
    assert!(listed.contains("(in a build log)"), "{listed}");
    assert!(
        listed.contains("\nsubject local/alice  revoked "),
        "{listed}"
    );

    let unknown = run(&config, &["grants", "revoke", "--subject", "corp/alice"]).await;
    assert!(!unknown.status.success(), "{unknown:?}");
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("issuer \"corp\" is not configured"), "{err}");
    let malformed = run(&config, &["grants", "revoke", "--subject", "alice"]).await;
    assert_eq!(malformed.status.code(), Some(2), "{malformed:?}");
    let err = String::from_utf8_lossy(&malformed.stderr);
    assert!(err.contains("ISSUER/SUBJECT"), "{err}");
    let list = run(&config, &["grants", "list"]).await;
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).lines().count(),
        2,
        "refused revocations recorded nothing"
    );

    // Both revocations are in the audit chain, under the operator's account.
    let records = operator_records(&config).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| {
        r["operation"] == "revoke"
            && r["result"] == "granted"
            && !r["caller"]["subject"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
    }));
    let credential_id = records[0]["credential_id"].as_str().expect("credential id");
    assert_eq!(
        records[0]["reason"],
        format!("revoked credential {credential_id}: in a build log")
    );
    assert_eq!(
        records[1]["reason"],
        "revoked subject local/alice: laptop stolen"
    );
    let agent = records[1]["caller"]["user_agent"].as_str().expect("agent");
    assert!(agent.ends_with(" grants revoke"), "{agent}");
}

/// Operator commands whose standard output is a pipe nobody reads any more (`| head -1`, a
/// reader that died): each still finishes what it started, its audit record included, and exits
/// with failure saying why, never with a panic between the action and its record.
#[tokio::test]
async fn operator_commands_finish_when_nobody_reads_their_output() {
    use crate::support::rise_process::command;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = alice_config(dir.path(), "rise.toml", "", "");
    // The server's state first: `grants revoke` refuses a data directory where none ran.
    let setup = crate::support::rise_process::run(&config, &["check-config", "--offline"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let unread = |args: &'static [&'static str]| {
        let mut cmd = command(&config, args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        async move {
            let mut child = cmd.spawn().expect("spawn rise-backend");
            drop(child.stdout.take());
            tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
                .await
                .expect("in time")
                .expect("output")
        }
    };
    for args in [
        &[
            "grants",
            "revoke",
            "--credential",
            "abc",
            "--reason",
            "leaked",
        ][..],
        &["keys", "rotate"][..],
    ] {
        let out = unread(args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("standard output was closed"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let records = operator_records(&config).await;
    let operations: Vec<_> = records.iter().map(|r| &r["operation"]).collect();
    assert_eq!(operations, ["revoke", "rotate_keys"], "{records:?}");
    assert_eq!(records[0]["reason"], "revoked credential abc: leaked");
}

/// `keys rotate` when a key cannot be read (a damaged file) refuses before moving any, even
/// forced: rotating would retire the damaged key into `previous`, where it breaks every later
/// load, and the rotation would go unrecorded.
#[tokio::test]
async fn keys_rotate_moves_nothing_when_a_key_is_damaged() {
    use crate::support::rise_process::run;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = alice_config(dir.path(), "rise.toml", "", "");
    // `check-config` builds what `serve` builds, the keys included.
    let setup = run(&config, &["check-config", "--offline"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let keys = dir.path().join("data/keys");
    std::fs::write(keys.join("registry-token-current.pem"), "damaged\n").expect("damage");
    let files = || {
        let mut files = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&keys).expect("keys dir") {
            let path = entry.expect("entry").path();
            files.insert(path.clone(), std::fs::read(&path).expect("read"));
        }
        files
    };
    let before = files();

    let rotate = run(&config, &["keys", "rotate", "--force"]).await;
    assert!(!rotate.status.success(), "{rotate:?}");
    let err = String::from_utf8_lossy(&rotate.stderr);
    assert!(err.contains("nothing was rotated"), "{err}");
    assert!(err.contains("the current key"), "{err}");
    assert_eq!(files(), before, "the key files are as they were");
    assert!(operator_records(&config).await.is_empty());
}

/// `keys show` and `grants list` only read; `grants revoke`, `keys rotate` and `keys reseal` act
/// on what a server's database and key directory hold. Pointed at a data directory where no server ran (a mistyped
/// `server.data_dir`, an empty directory, none at all) they fail naming the database they
/// looked for, and create nothing: no database, no keys shown as if they were the server's, no
/// revocation or rotation reported done that no server would see. With the database found elsewhere (`database.url`) but no keys in the data
/// directory, `keys show` names the missing key directory, again creating nothing.
#[tokio::test]
async fn read_only_commands_create_nothing_where_no_server_ran() {
    use crate::support::rise_process::run;
    let listing = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .expect("data dir")
            .map(|e| e.expect("entry").path())
            .collect()
    };
    let empty = tempfile::tempdir().expect("temp dir");
    let empty_config = alice_config(empty.path(), "rise.toml", "", "");
    let empty_data = empty.path().join("data");
    std::fs::create_dir(&empty_data).expect("empty data dir");
    let missing = tempfile::tempdir().expect("temp dir");
    let missing_config = alice_config(missing.path(), "rise.toml", "", "");
    let missing_data = missing.path().join("data");

    for (config, data) in [
        (&empty_config, &empty_data),
        (&missing_config, &missing_data),
    ] {
        for args in [
            &["keys", "show"][..],
            &["grants", "list"][..],
            &["grants", "revoke", "--credential", "abc"][..],
            &["keys", "reseal"][..],
            &["keys", "rotate"][..],
        ] {
            let out = run(config, args).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            let command = args[..2].join(" ");
            assert!(
                err.contains(&format!(
                    "`{command}` works on the database of an existing server and creates none"
                )),
                "{err}"
            );
            assert!(
                err.contains(&format!(
                    "there is no SQLite database {}",
                    data.join("rise.db").display()
                )),
                "{err}"
            );
            assert!(err.contains("server.data_dir"), "{err}");
            assert!(err.contains("`serve` creates it on first start"), "{err}");
            assert!(out.stdout.is_empty(), "{out:?}");
        }
    }
    assert_eq!(listing(&empty_data), Vec::<std::path::PathBuf>::new());
    assert!(!missing_data.exists(), "no data directory made");

    // The database of a server that ran elsewhere, named by database.url; no keys beside it.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let elsewhere_config = alice_config(elsewhere.path(), "rise.toml", "", "");
    let setup = run(&elsewhere_config, &["registry-config"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let database = format!(
        "url = {:?}",
        format!("sqlite:{}", elsewhere.path().join("data/rise.db").display())
    );
    let keyless = alice_config(empty.path(), "keyless.toml", &database, "");
    let out = run(&keyless, &["keys", "show"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains(&format!(
            "there is no key directory {}",
            empty_data.join("keys").display()
        )),
        "{err}"
    );
    assert!(err.contains("check server.data_dir"), "{err}");
    assert_eq!(listing(&empty_data), Vec::<std::path::PathBuf>::new());
    let grants = run(&keyless, &["grants", "list"]).await;
    assert!(grants.status.success(), "{grants:?}");
}

/// Operator commands on PostgreSQL print what they have to say and nothing of the server's: the
/// schema check each makes (`CREATE TABLE IF NOT EXISTS`) adds no "already exists" notice.
#[tokio::test]
async fn commands_on_postgres_do_not_repeat_the_servers_notices() {
    use crate::support::rise_process::run;
    let postgres = Postgres::start().await;
    let url = postgres.create_database("rise_notices").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = alice_config_on_postgres(dir.path(), &url);
    for _ in 0..2 {
        let out = run(&config, &["keys", "show"]).await;
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("already exists"), "{err}");
    }
}
