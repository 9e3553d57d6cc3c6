//! Crash safety of the audit log, and the `audit` subcommands: the real `rise-backend` binary, hammered with concurrent
//! credential requests, is SIGKILLed mid-run. After a restart on the same data directory, every
//! credential any client received has its audit record, and the hash chain verifies.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rise_backend::auth::LocalIssuer;
use rise_backend::config::{Config, Sources};
use tokio::sync::Mutex;

use crate::support::process::http_client;
use crate::support::rise_process::{self, RiseProcess};

const CLIENTS: usize = 32;
/// Grants received before the kill: enough that many commits are in flight when it lands.
const GRANTS_BEFORE_KILL: usize = 400;

fn config_text(data_dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = {data_dir:?}

[registry]
type = "distribution"
url = "127.0.0.1:5000"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
actions = ["push", "pull"]

# 32 clients on one address as fast as they can: far above the default per-address limit.
[rate_limit]
per_ip = {{ rate = "1000000/s", burst = 1000000 }}
per_subject = {{ rate = "1000000/s", burst = 1000000 }}
"#,
        data_dir = data_dir.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_credential_a_client_received_is_audited_after_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("rise.toml");
    std::fs::write(&config_path, config_text(&dir.path().join("data"))).expect("write config");
    let config = Config::load(&Sources {
        files: vec![config_path.clone()],
        env: vec![],
    })
    .expect("config is valid");

    let mut rise = RiseProcess::serve(&config_path).await;
    // The server created the local issuer's key in the data dir; mint callers' tokens with it.
    let issuer = LocalIssuer::load_or_create(&config.server.data_dir, &config.auth.local)
        .expect("local issuer");
    let url = format!("{}/registry/credentials?project=my-app", rise.url());

    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let granted = Arc::new(AtomicUsize::new(0));
    let failed_after_kill = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let token = issuer
            .issue(&format!("client-{c}"), &[], Duration::from_secs(600))
            .expect("mint token");
        let (url, received, granted, failed, killed) = (
            url.clone(),
            received.clone(),
            granted.clone(),
            failed_after_kill.clone(),
            killed.clone(),
        );
        clients.spawn(async move {
            let http = http_client();
            loop {
                let reply = http.get(&url).bearer_auth(&token).send().await;
                let body = match reply {
                    Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await,
                    Ok(r) => panic!("unexpected {} before the kill", r.status()),
                    Err(e) => Err(e),
                };
                match body {
                    Ok(body) => {
                        let password = body["credentials"]["password"]
                            .as_str()
                            .expect("a 200 carries a password")
                            .to_owned();
                        received
                            .lock()
                            .await
                            .push(rise_backend::audit::fingerprint(&password));
                        granted.fetch_add(1, Ordering::SeqCst);
                    }
                    // The server is gone: this client's in-flight request got nothing.
                    Err(_) if killed.load(Ordering::SeqCst) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => panic!("request failed before the kill: {e}"),
                }
            }
        });
    }

    // A client that fails before the kill (a 429, a refused request) ends its task with a
    // panic: surface it at once rather than wait for grants that will never come.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while granted.load(Ordering::SeqCst) < GRANTS_BEFORE_KILL {
        if let Some(joined) = clients.try_join_next() {
            joined.expect("a client failed before the kill");
            panic!("a client stopped before the kill");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {GRANTS_BEFORE_KILL} credentials within 120 s",
            granted.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    rise.kill().await;
    while let Some(joined) = clients.join_next().await {
        joined.expect("client task");
    }
    let received = received.lock().await.clone();
    assert!(received.len() >= GRANTS_BEFORE_KILL);
    assert!(
        failed_after_kill.load(Ordering::SeqCst) > 0,
        "the kill should have caught requests in flight"
    );

    // Restart on the same data dir: the chain continues where it was.
    let rise = RiseProcess::serve(&config_path).await;
    let token = issuer
        .issue("after-restart", &[], Duration::from_secs(600))
        .expect("mint token");
    let reply = http_client()
        .get(format!(
            "{}/registry/credentials?project=my-app",
            rise.url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request after restart");
    assert!(reply.status().is_success(), "{}", reply.status());
    let body: serde_json::Value = reply.json().await.expect("JSON body");
    let after_restart = rise_backend::audit::fingerprint(
        body["credentials"]["password"]
            .as_str()
            .expect("a 200 carries a password"),
    );
    drop(rise);

    let verify = rise_process::run(&config_path, &["audit", "verify"]).await;
    let verify_out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && verify_out.contains("audit chain intact"),
        "audit verify failed: {verify_out}{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let export = rise_process::run(&config_path, &["audit", "export"]).await;
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let exported: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .collect();
    assert!(
        exported
            .iter()
            .all(|r| r["caller"]["client_ip"] == "127.0.0.1"),
        "the TCP peer is recorded"
    );
    let audited: HashSet<String> = exported
        .iter()
        .filter(|r| r["result"] == "granted")
        .filter_map(|r| r["credential_fingerprint"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = received.iter().filter(|f| !audited.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} credentials clients received have no audit record: {:?}",
        missing.len(),
        received.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        audited.contains(&after_restart),
        "the restarted server records too"
    );
}

/// `rise-backend audit verify` exits non-zero and names the first broken record; `audit export`
/// filters by time and by issuer.
#[tokio::test]
async fn audit_cli_verifies_and_exports() {
    use rise_backend::audit::{AuditLog, AuditRecord, AuditSettings, CallerInfo, Operation};

    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config_path = dir.path().join("rise.toml");
    std::fs::write(&config_path, config_text(&data_dir)).expect("write config");

    let missing = rise_process::run(&config_path, &["audit", "verify"]).await;
    assert!(
        !missing.status.success(),
        "verify must not report a missing database as an intact empty log"
    );

    std::fs::create_dir_all(&data_dir).expect("data dir");
    let store = rise_backend::store::Store::open_sqlite(&data_dir.join("rise.db"), true)
        .await
        .expect("store");
    let log = AuditLog::start(store.clone(), AuditSettings::default());
    for (i, secs) in [1_000_000_000u64, 1_500_000_000, 1_700_000_000]
        .iter()
        .enumerate()
    {
        let mut r = AuditRecord::begin(
            Operation::Credentials,
            &format!("r{i}"),
            CallerInfo {
                issuer: if i == 1 { "corp" } else { "local" }.into(),
                subject: format!("user{i}"),
                groups: vec![],
                client_ip: None,
                user_agent: None,
            },
        );
        r.time = std::time::UNIX_EPOCH + Duration::from_secs(*secs);
        r.refused(false, "forbidden");
        log.record(&r).await.expect("commit");
    }

    let ok = rise_process::run(&config_path, &["audit", "verify"]).await;
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("audit chain intact: 3 records"), "{out}");

    let export = rise_process::run(
        &config_path,
        &["audit", "export", "--since", "2020-01-01T00:00:00Z"],
    )
    .await;
    let subjects: Vec<String> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .map(|r| {
            r["caller"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(subjects, ["user2"]);
    let by_issuer = rise_process::run(&config_path, &["audit", "export", "--issuer", "corp"]).await;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&by_issuer.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["caller"]["subject"], "user1");

    sqlx::query("UPDATE audit_log SET reason = 'issued' WHERE id = 2")
        .execute(store.sqlite_pool().expect("SQLite"))
        .await
        .expect("tamper");
    let broken = rise_process::run(&config_path, &["audit", "verify"]).await;
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success(), "tampering went unnoticed");
    assert!(err.contains("record 2 was altered"), "{err}");
    assert!(err.contains("1 records before it verified"), "{err}");
}
