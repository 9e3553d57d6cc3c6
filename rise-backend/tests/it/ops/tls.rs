//! HTTPS end to end: `dev-cert` makes a CA and certificate, Rise serves them, a client that trusts
//! only that CA connects; new certificates are picked up on file change and on SIGHUP; plain HTTP
//! on a non-loopback address is refused.

use std::path::Path;
use std::time::Duration;

use rise_backend::tls::write_dev_cert;
use tokio::process::Command;
use tokio::time::Instant;

use super::{Served, closed_by_server, https_client, leaf_der, load_config, presented_der};
use crate::support::process::{
    COMMAND_TIMEOUT, ChildProcess, STARTUP_TIMEOUT, run_ok, run_with_timeout,
};

/// How long a reload may take to show before the test gives up (polling, not a timing claim).
const RELOAD_DEADLINE: Duration = Duration::from_secs(20);

fn tls_section(dir: &Path, watch_interval: &str) -> String {
    format!(
        "[server.tls]\ncertificate = {cert:?}\nkey = {key:?}\nwatch_interval = {watch_interval:?}\n",
        cert = dir.join("cert.pem").display().to_string(),
        key = dir.join("key.pem").display().to_string(),
    )
}

/// `kill -HUP pid`.
async fn sighup(pid: u32) {
    let mut cmd = Command::new("kill");
    cmd.args(["-HUP", &pid.to_string()]);
    run_ok(cmd, COMMAND_TIMEOUT).await.expect("kill -HUP");
}

/// GET `url` and return the certificate the server presented.
async fn presented(client: &reqwest::Client, url: &str) -> reqwest::Result<Vec<u8>> {
    let response = client.get(url).send().await?;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    Ok(presented_der(&response))
}

/// Poll until the server presents `expected` (a new connection each time).
async fn wait_for_certificate(client: &reqwest::Client, url: &str, expected: &[u8]) {
    let deadline = Instant::now() + RELOAD_DEADLINE;
    loop {
        let got = presented(client, url).await;
        if got.as_deref().ok() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still presents another certificate after {RELOAD_DEADLINE:?} ({got:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn https_with_the_dev_ca_end_to_end() {
    let certs = tempfile::tempdir().expect("temp dir");
    let files = write_dev_cert(certs.path(), &[], false).expect("dev cert");
    let (config, _dir) = load_config(&tls_section(certs.path(), "0s"), "");
    assert!(config.server.public_url().starts_with("https://"));
    let served = Served::start(config).await;
    let port = served.addr.port();

    let client = https_client(&[&files.ca]);
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{port}/healthz");
        let response = client.get(&url).send().await.expect(&url);
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(presented_der(&response), leaf_der(&files.certificate));
        assert_eq!(response.text().await.expect("body"), "ok");
    }
    // HTTP/2 (negotiated by ALPN) takes header lists as long as HTTP/1.1 heads: a 20 KiB
    // bearer token is read, and refused in JSON as the malformed token it is.
    let response = client
        .get(format!(
            "https://127.0.0.1:{port}/registry/credentials?project=my-app"
        ))
        .bearer_auth("a".repeat(20 * 1024))
        .send()
        .await
        .expect("a long header over HTTP/2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    super::expect_json_error(
        response,
        reqwest::StatusCode::UNAUTHORIZED,
        "malformed_token",
    )
    .await;
    // Bytes that are not HTTP, inside TLS: the HTTP parser's refusal is in JSON there too.
    let answer = super::raw_exchange(tls_connect(port, &files.ca).await, b"GARBAGE\r\n\r\n").await;
    super::expect_json_refusal(&answer, 400, "bad_request");

    // A client that does not trust the dev CA refuses the server.
    let other = tempfile::tempdir().expect("temp dir");
    let other_files = write_dev_cert(other.path(), &[], false).expect("dev cert");
    let stranger = https_client(&[&other_files.ca]);
    let err = stranger
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect_err("untrusted certificate");
    assert!(err.is_connect(), "{err:?}");
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = crate::support::process::http_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was served: {plain:?}"
    );
    served.shutdown().await.expect("graceful shutdown");
}

/// A TLS connection to `port` trusting only `ca`, with no ALPN (so HTTP/1.1).
async fn tls_connect(
    port: u16,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA") {
        roots
            .add(cert.expect("valid PEM"))
            .expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("a name"), tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn a_changed_certificate_file_is_served_to_new_connections() {
    let certs = tempfile::tempdir().expect("temp dir");
    let first = write_dev_cert(certs.path(), &[], false).expect("dev cert");
    let first_ca = certs.path().join("first-ca.pem");
    std::fs::copy(&first.ca, &first_ca).expect("keep the first CA");
    let first_leaf = leaf_der(&first.certificate);
    let (config, _dir) = load_config(&tls_section(certs.path(), "100ms"), "");
    let served = Served::start(config).await;
    let url = format!("https://127.0.0.1:{}/healthz", served.addr.port());

    let second = write_dev_cert(certs.path(), &[], true).expect("replacement");
    let second_leaf = leaf_der(&second.certificate);
    assert_ne!(first_leaf, second_leaf);
    let client = https_client(&[&first_ca, &second.ca]);
    wait_for_certificate(&client, &url, &second_leaf).await;

    // A broken replacement is refused and the last good certificate stays.
    std::fs::write(&second.key, "not a key").expect("break the key");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        presented(&client, &url).await.expect("still serving"),
        second_leaf
    );
    served.shutdown().await.expect("graceful shutdown");
}

/// The real binary: `dev-cert`, then `serve` with file watching off; SIGHUP makes new connections
/// get the new certificate.
#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_real_binary() {
    let bin = env!("CARGO_BIN_EXE_rise-backend");
    let work = tempfile::tempdir().expect("temp dir");
    let certs = work.path().join("tls");
    let dev_cert = |force: bool| {
        let mut cmd = Command::new(bin);
        cmd.arg("dev-cert").arg("--out").arg(&certs);
        if force {
            cmd.arg("--force");
        }
        run_ok(cmd, COMMAND_TIMEOUT)
    };
    let output = dev_cert(false).await.expect("dev-cert");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("[server.tls]"), "{printed}");
    assert!(printed.contains("update-ca-certificates"), "{printed}");
    let refused = run_with_timeout(
        {
            let mut cmd = Command::new(bin);
            cmd.arg("dev-cert").arg("--out").arg(&certs);
            cmd
        },
        COMMAND_TIMEOUT,
    )
    .await
    .expect("runs");
    assert!(!refused.status.success(), "overwrote without --force");

    let config = work.path().join("rise.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n{tls}",
            data = work.path().join("data").display().to_string(),
            tls = tls_section(&certs, "0s"),
        ),
    )
    .expect("config");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RISE_LOG_FORMAT", "json")
        .env("RISE_LOG", "info");
    let mut server = ChildProcess::spawn("rise-backend", cmd).expect("spawn rise-backend");
    let line = server
        .wait_for_line(
            "listening",
            |l| l.contains("rise-backend listening"),
            STARTUP_TIMEOUT,
        )
        .await
        .expect("rise-backend starts");
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    let addr = event["fields"]["addr"]
        .as_str()
        .expect("addr field")
        .to_owned();
    assert_eq!(event["fields"]["tls"], true, "{line}");
    let url = format!("https://{addr}/healthz");

    let first_ca = work.path().join("first-ca.pem");
    std::fs::copy(certs.join("ca.pem"), &first_ca).expect("keep the first CA");
    let first_leaf = leaf_der(&certs.join("cert.pem"));
    dev_cert(true).await.expect("dev-cert --force");
    let second_leaf = leaf_der(&certs.join("cert.pem"));
    let client = https_client(&[&first_ca, &certs.join("ca.pem")]);
    assert_eq!(
        presented(&client, &url).await.expect("request"),
        first_leaf,
        "without SIGHUP (watching is off) the old certificate stays"
    );

    sighup(server.pid().expect("running")).await;
    wait_for_certificate(&client, &url, &second_leaf).await;
    assert!(
        server.logs().contains("TLS certificate reloaded"),
        "{}",
        server.logs().text()
    );
    assert!(
        server.try_status().is_none(),
        "SIGHUP must not stop the server"
    );
}

#[tokio::test]
async fn plain_http_on_a_non_loopback_address_is_refused() {
    let bin = env!("CARGO_BIN_EXE_rise-backend");
    let work = tempfile::tempdir().expect("temp dir");
    let config = work.path().join("rise.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"0.0.0.0:0\"\ndata_dir = {:?}\n",
            work.path().join("data").display().to_string()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg("--config").arg(&config);
    let output = run_with_timeout(cmd, COMMAND_TIMEOUT).await.expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served plain HTTP on 0.0.0.0");
    assert!(
        stderr.contains("not a loopback address")
            && stderr.contains("danger_insecure_http_on_non_loopback"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("listening"),
        "it must refuse before binding: {stderr}"
    );
}

/// `check-config` loads what `serve` loads: a certificate that cannot be read fails it, named
/// once with its cause.
#[tokio::test]
async fn check_config_reads_the_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing");
    let config =
        crate::support::rise_process::write_config(dir.path(), &tls_section(&missing, "10s"));
    let out = crate::support::rise_process::run(&config, &["check-config"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("loading [server.tls]"), "{stderr}");
    assert!(stderr.contains("cert.pem"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause once: {stderr}"
    );
}

/// `check-config` fails where `serve` would never become ready: an issuer whose keys cannot be
/// fetched, or no registry at all (any configuration file replaces the embedded demo); both are
/// named. With a registry and reachable issuers it passes.
#[tokio::test]
async fn check_config_fails_what_serve_would_never_make_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = "[registry]\ntype = \"distribution\"\nurl = \"127.0.0.1:5000\"\n";
    let unreachable = "[auth.issuers.corp]\nissuer = \"http://127.0.0.1:1\"\naudience = \"rise\"\ninsecure_http = true\n";
    for (tables, failing) in [
        (String::new(), "registries failing"),
        (
            format!("{registry}{unreachable}"),
            "issuer corp keys failing",
        ),
    ] {
        let config = crate::support::rise_process::write_config(dir.path(), &tables);
        let out = crate::support::rise_process::run(&config, &["check-config"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tables}: {stderr}");
        assert!(
            stderr.contains("serve would not be ready") && stderr.contains(failing),
            "{tables}: {stderr}"
        );
    }
    let config = crate::support::rise_process::write_config(dir.path(), registry);
    let out = crate::support::rise_process::run(&config, &["check-config"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Offline (an image build without the network): the issuer is not asked at all; a
    // listener in its place sees no connection.
    let issuer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    issuer.set_nonblocking(true).expect("nonblocking");
    let listening = format!(
        "[auth.issuers.corp]\nissuer = \"http://{}\"\naudience = \"rise\"\ninsecure_http = true\n",
        issuer.local_addr().expect("addr")
    );
    let config =
        crate::support::rise_process::write_config(dir.path(), &format!("{registry}{listening}"));
    let out = crate::support::rise_process::run(&config, &["check-config", "--offline"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("offline"),
        "{stderr}"
    );
    assert!(
        matches!(issuer.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "check-config --offline connected to the issuer: {stderr}"
    );
}

/// Plain HTTP, the real binary: SIGHUP (`systemctl reload`, log rotation) is logged and
/// ignored, where it used to end the process.
#[tokio::test]
async fn plain_http_survives_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = crate::support::rise_process::write_serve_config(dir.path(), "");
    let mut server = crate::support::rise_process::RiseProcess::serve(&config).await;
    sighup(server.pid().expect("running")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.logs().contains("SIGHUP ignored") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.logs().contains("SIGHUP ignored"),
        "{}",
        server.logs()
    );
    assert!(
        server.try_status().is_none(),
        "SIGHUP must not stop the server"
    );
    let ok = crate::support::process::http_client()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .expect("request after SIGHUP");
    assert_eq!(ok.status(), reqwest::StatusCode::OK);
}

/// Over HTTPS the connection cap applies before the handshake: a connection that holds the only
/// slot without ever starting TLS keeps an HTTPS client out (closed unanswered). The server closes
/// the holder once `header_read_timeout` passes without a handshake (not axum-server's 10 s), and
/// the client is then served.
#[tokio::test]
async fn the_connection_cap_applies_before_the_tls_handshake() {
    let certs = tempfile::tempdir().expect("temp dir");
    let files = write_dev_cert(certs.path(), &[], false).expect("dev cert");
    let (config, _dir) = load_config(
        &format!(
            "max_connections = 1\nheader_read_timeout = \"1s\"\n{}",
            tls_section(certs.path(), "0s")
        ),
        "",
    );
    let served = Served::start(config).await;
    let url = format!("https://127.0.0.1:{}/healthz", served.addr.port());
    let client = https_client(&[&files.ca]);

    let mut holder = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    // Give the server the moment it needs to accept the holder first.
    let mut kept_out = false;
    for _ in 0..50 {
        if client.get(&url).send().await.is_err() {
            kept_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        kept_out,
        "an HTTPS client got in while the only slot was held"
    );

    // Closed by the server well before the 10 s default handshake timeout.
    assert!(
        closed_by_server(&mut holder, Duration::from_secs(6)).await,
        "a connection that never starts TLS keeps its slot"
    );
    let deadline = Instant::now() + RELOAD_DEADLINE;
    loop {
        match client.get(&url).send().await {
            Ok(response) => {
                assert_eq!(response.status(), reqwest::StatusCode::OK);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.shutdown().await.expect("graceful shutdown");
}
