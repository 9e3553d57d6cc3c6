use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Run a binary with a clean environment and private config/cache directories under `home`.
fn run(bin: &str, args: &[&str], home: &Path, extra: &[(&str, &str)]) -> (String, String, i32) {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("HOME", home)
        .env("RISE_CONFIG_DIR", home.join("config"))
        .env("RISE_CACHE_DIR", home.join("cache"))
        .env("COLUMNS", "100")
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let Output {
        stdout,
        stderr,
        status,
    } = cmd.output().expect("running the binary");
    (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
        status.code().unwrap_or(-1),
    )
}

fn rise(args: &[&str], home: &Path) -> (String, String, i32) {
    run(env!("CARGO_BIN_EXE_rise"), args, home, &[])
}

#[test]
fn help_texts() {
    let home = tempfile::tempdir().expect("tempdir");
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help_registry_login", vec!["registry", "login", "--help"]),
        (
            "help_registry_credentials",
            vec!["registry", "credentials", "--help"],
        ),
        ("help_push", vec!["push", "--help"]),
        ("help_login", vec!["login", "--help"]),
    ] {
        let (stdout, _, code) = rise(&args, home.path());
        assert_eq!(code, 0, "{name}");
        insta::assert_snapshot!(name, stdout);
    }
}

#[test]
fn local_errors_say_what_to_do_and_exit_with_documented_codes() {
    let home = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &[&str], i32)] = &[
        ("no_backend", &["whoami"], 7),
        (
            "not_logged_in",
            &["--backend", "http://127.0.0.1:9", "whoami"],
            3,
        ),
        (
            "bad_backend_url",
            &["--backend", "rise.example.com", "whoami"],
            7,
        ),
        (
            "missing_image",
            &[
                "--backend",
                "http://127.0.0.1:9",
                "push",
                "--project",
                "p",
                "/nonexistent/image",
                "--tag",
                "v1",
            ],
            7,
        ),
        (
            "bad_tag",
            &[
                "--backend",
                "http://127.0.0.1:9",
                "push",
                "--project",
                "p",
                ".",
                "--tag",
                "v:1",
            ],
            7,
        ),
        ("usage", &["push"], 2),
    ];
    for (name, args, expected) in cases {
        let (_, stderr, code) = rise(args, home.path());
        assert_eq!(code, *expected, "{name}: {stderr}");
        insta::assert_snapshot!(*name, stderr);
    }
}

#[test]
fn unreachable_backend_is_exit_code_6() {
    let home = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on: bind one and let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let backend = format!("http://127.0.0.1:{port}");
    let (_, stderr, code) = run(
        env!("CARGO_BIN_EXE_rise"),
        &[
            "--backend",
            &backend,
            "registry",
            "credentials",
            "--project",
            "p",
        ],
        home.path(),
        &[("RISE_TOKEN", "t")],
    );
    assert_eq!(code, 6, "{stderr}");
    insta::assert_snapshot!(stderr.replace(&backend, "http://127.0.0.1:PORT"));
}

#[test]
fn credential_helper_protocol_without_a_mapping() {
    let home = tempfile::tempdir().expect("tempdir");
    let helper = env!("CARGO_BIN_EXE_docker-credential-rise");
    let mut child = Command::new(helper)
        .env_clear()
        .env("RISE_CONFIG_DIR", home.path().join("config"))
        .env("RISE_CACHE_DIR", home.path().join("cache"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"registry.example.com\n").expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "credentials not found in native keychain"
    );
    let (stdout, _, code) = run(helper, &["list"], home.path(), &[]);
    assert_eq!((stdout.as_str(), code), ("{}\n", 0));
    let (stdout, _, code) = run(helper, &["bogus"], home.path(), &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!("helper_usage", stdout);
}

#[test]
fn unsafe_backend_urls_and_tokens_are_refused_before_anything_is_sent() {
    let home = tempfile::tempdir().expect("tempdir");
    let rise = env!("CARGO_BIN_EXE_rise");
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        (
            "password_in_backend_url",
            &["--backend", "http://admin:hunter2@127.0.0.1:9", "whoami"],
            &[("RISE_TOKEN", "t")],
        ),
        (
            "plain_http_backend",
            &["--backend", "http://rise.invalid", "whoami"],
            &[("RISE_TOKEN", "t")],
        ),
        (
            "token_with_a_line_break",
            &["--backend", "http://127.0.0.1:9", "whoami"],
            &[("RISE_TOKEN", "abc\ndef")],
        ),
    ];
    for (name, args, env) in cases {
        let (_, stderr, code) = run(rise, args, home.path(), env);
        assert_eq!(code, 7, "{name}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{name}: {stderr}");
        assert!(!stderr.contains("abc"), "{name}: {stderr}");
        insta::assert_snapshot!(*name, stderr);
    }
    let (_, stderr, code) = run(
        rise,
        &[
            "--backend",
            "http://admin:hunter2@127.0.0.1:9",
            "registry",
            "login",
            "--project",
            "p",
        ],
        home.path(),
        &[("RISE_TOKEN", "t")],
    );
    assert_eq!(code, 7, "{stderr}");
    assert!(
        !home.path().join("config").exists(),
        "nothing is stored for a refused URL"
    );
}

#[test]
fn helper_version_without_home() {
    let out = Command::new(env!("CARGO_BIN_EXE_docker-credential-rise"))
        .env_clear()
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("docker-credential-rise "));
}
