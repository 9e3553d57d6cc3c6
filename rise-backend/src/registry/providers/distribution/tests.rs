use std::io::Write;

use secrecy::ExposeSecret;

use super::*;
use crate::config::Sources;
use crate::registry::{Action, ProjectName};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://rise.example:3000/"

[registry]
type = "distribution"
url = "127.0.0.1:5000"
max_ttl = "1h"

[registries.second]
type = "distribution"
url = "127.0.0.1:5001"
service = "second-registry"

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

struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
}

fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = CONFIG.replacen(
        "[server]\n",
        &format!(
            "[server]\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ),
        1,
    );
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    write!(file, "{text}{extra}").expect("write");
    let config = Config::load(&Sources {
        files: vec![file.path().to_owned()],
        env: Vec::new(),
    })
    .expect("config loads");
    Fixture { _dir: dir, config }
}

/// Runs a future whose I/O is all synchronous (the file keyring) to completion.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn token_service(config: &Config) -> anyhow::Result<Option<Arc<TokenService>>> {
    let keyring = crate::keyring::Keyring::files(&config.server.data_dir)?;
    block_on(TokenService::from_config(config, &keyring))
}

fn service(f: &Fixture) -> Arc<TokenService> {
    token_service(&f.config)
        .expect("keys load")
        .expect("distribution registries are configured")
}

fn principal(subject: &str, expires_in: Duration) -> Arc<Principal> {
    Arc::new(Principal {
        issuer: "local".into(),
        issuer_url: "rise-local".into(),
        subject: subject.into(),
        groups: Vec::new(),
        claims: Default::default(),
        expires_at: SystemTime::now() + expires_in,
    })
}

fn request(
    subject: &str,
    registry: &str,
    repo: &str,
    actions: Actions,
    ttl: Duration,
) -> CredentialRequest {
    CredentialRequest {
        request_id: "test".into(),
        principal: principal(subject, Duration::from_secs(24 * 3600)),
        project: ProjectName::parse(repo).expect("valid"),
        registry: registry.into(),
        repository: RepositoryName::parse(repo).expect("valid"),
        actions,
        ttl,
    }
}

fn repo(name: &str) -> RepositoryName {
    RepositoryName::parse(name).expect("valid")
}

fn scopes(list: &[&str]) -> Vec<RepositoryScope> {
    token::parse_scopes(list.iter().copied()).expect("valid scopes")
}

#[test]
fn issue_returns_a_grant_scoped_to_the_repository() {
    let f = fixture("");
    let svc = service(&f);
    let provider = svc.provider("default").expect("default registry");
    let now = SystemTime::now();
    let req = request(
        "alice",
        "default",
        "my-app",
        Actions::PUSH_PULL,
        Duration::from_secs(900),
    );
    let cred = provider.issue_at(&req, now).expect("issued");
    assert_eq!(cred.username, USERNAME);
    assert_eq!(cred.registry_url, "127.0.0.1:5000");
    assert_eq!(cred.repository, "my-app");
    assert_eq!(cred.image_reference(), "127.0.0.1:5000/my-app");
    assert_eq!(cred.granted_actions, Actions::PUSH_PULL);
    assert!(cred.repository_scoped);
    assert!(cred.revocable);
    let expected_exp = now + Duration::from_secs(900);
    let diff = expected_exp
        .duration_since(cred.expires_at)
        .unwrap_or_default();
    assert!(
        diff < Duration::from_secs(1),
        "exp truncated to seconds only"
    );

    let GrantCheck::Valid(grant) = provider.check_grant(cred.password.expose_secret()) else {
        panic!("the issued grant is valid for its registry");
    };
    assert_eq!(grant.claims.sub, "alice");
    assert_eq!(grant.claims.idp, "local");
    assert_eq!(grant.claims.repo, repo("my-app"));
    assert_eq!(grant.claims.act, Actions::PUSH_PULL);
    assert_eq!(
        cred.credential_id.as_deref(),
        Some(grant.claims.jti.as_str())
    );
    assert!(!format!("{cred:?}").contains(cred.password.expose_secret()));
}

#[test]
fn grant_lifetime_is_capped_by_max_ttl_not_by_the_caller_token() {
    let f = fixture("");
    let provider = service(&f).provider("default").expect("default");
    let now = SystemTime::now();
    let long = request(
        "alice",
        "default",
        "my-app",
        Actions::PULL,
        Duration::from_secs(86_400),
    );
    let cred = provider.issue_at(&long, now).expect("issued");
    let lifetime = cred.expires_at.duration_since(now).unwrap_or_default();
    assert!(
        lifetime <= Duration::from_secs(3600),
        "max_ttl is 1h: {lifetime:?}"
    );
    assert!(lifetime > Duration::from_secs(3598));

    let mut short_caller = long.clone();
    short_caller.principal = principal("alice", Duration::from_secs(120));
    let cred = provider.issue_at(&short_caller, now).expect("issued");
    let lifetime = cred.expires_at.duration_since(now).unwrap_or_default();
    assert!(
        lifetime > Duration::from_secs(3598),
        "a grant's lifetime does not depend on the caller's token: {lifetime:?}"
    );
}

#[test]
fn grants_do_not_cross_registries_and_expire() {
    let f = fixture("");
    let svc = service(&f);
    let default = svc.provider("default").expect("default");
    let second = svc.provider("second").expect("second");
    let req = request(
        "alice",
        "default",
        "my-app",
        Actions::PUSH_PULL,
        Duration::from_secs(600),
    );
    let cred = default.issue_at(&req, SystemTime::now()).expect("issued");
    assert!(matches!(
        second.check_grant(cred.password.expose_secret()),
        GrantCheck::Invalid(GrantError::WrongRegistry(r)) if r == "default"
    ));
    let expired = default
        .issue_at(&req, SystemTime::now() - Duration::from_secs(3600))
        .expect("issued");
    assert!(matches!(
        default.check_grant(expired.password.expose_secret()),
        GrantCheck::Invalid(GrantError::Expired)
    ));
    let misrouted = request(
        "alice",
        "second",
        "my-app",
        Actions::PULL,
        Duration::from_secs(600),
    );
    assert!(matches!(
        default.issue_at(&misrouted, SystemTime::now()),
        Err(ProviderError::Misconfigured(_))
    ));
}

#[test]
fn grant_callers_get_their_grant_and_no_more() {
    let f = fixture("");
    let svc = service(&f);
    let provider = svc.provider("default").expect("default");
    let policy = Policy::from_config(&f.config).expect("policy");
    let req = request(
        "alice",
        "default",
        "my-app",
        Actions::PULL,
        Duration::from_secs(600),
    );
    let cred = provider.issue_at(&req, SystemTime::now()).expect("issued");
    let GrantCheck::Valid(grant) = provider.check_grant(cred.password.expose_secret()) else {
        panic!("valid grant");
    };
    let caller = TokenCaller::Grant(grant);
    let access = provider.authorize(
        &caller,
        &scopes(&[
            "repository:my-app:pull,push",
            "repository:other-app:pull,push",
        ]),
        &policy,
    );
    assert_eq!(
        access,
        vec![Access {
            name: repo("my-app"),
            actions: Actions::PULL
        }],
        "a pull grant yields pull on its repository only"
    );
}

#[test]
fn jwt_callers_get_what_policy_allows_on_this_registry() {
    let f = fixture("");
    let svc = service(&f);
    let default = svc.provider("default").expect("default");
    let second = svc.provider("second").expect("second");
    let policy = Policy::from_config(&f.config).expect("policy");
    let wanted = scopes(&[
        "repository:my-app:pull,push",
        "repository:other-app:pull,push",
    ]);
    let check = |provider: &DistributionProvider, subject: &str| -> Vec<(String, Actions)> {
        provider
            .authorize(
                &TokenCaller::Principal(principal(subject, Duration::from_secs(600))),
                &wanted,
                &policy,
            )
            .into_iter()
            .map(|a| (a.name.to_string(), a.actions))
            .collect()
    };
    assert_eq!(
        check(&default, "alice"),
        [("my-app".to_owned(), Actions::PUSH_PULL)]
    );
    assert_eq!(
        check(&default, "bob"),
        [("my-app".to_owned(), Actions::PULL)]
    );
    assert_eq!(
        check(&default, "carol"),
        [("other-app".to_owned(), Actions::PUSH_PULL)]
    );
    assert!(check(&default, "mallory").is_empty());
    assert!(
        check(&second, "alice").is_empty(),
        "projects live on the default registry, not on `second`"
    );
}

#[test]
fn registry_tokens_never_outlive_the_caller() {
    let f = fixture("");
    let provider = service(&f).provider("default").expect("default");
    let now = SystemTime::now();
    let access = [Access {
        name: repo("my-app"),
        actions: Actions::from_iter_actions([Action::Pull]),
    }];
    let long = TokenCaller::Principal(principal("alice", Duration::from_secs(3600)));
    let token = provider
        .registry_token(&long, &access, now)
        .expect("minted");
    assert_eq!(
        token.expires_at.duration_since(token.issued_at).ok(),
        Some(Duration::from_secs(300)),
        "token_ttl defaults to 5 minutes"
    );
    let short = TokenCaller::Principal(principal("alice", Duration::from_secs(30)));
    let token = provider
        .registry_token(&short, &access, now)
        .expect("minted");
    let lifetime = token
        .expires_at
        .duration_since(token.issued_at)
        .unwrap_or_default();
    assert!(lifetime <= Duration::from_secs(31), "{lifetime:?}");
    let gone = TokenCaller::Principal(principal("alice", Duration::ZERO));
    assert!(matches!(
        provider.registry_token(&gone, &access, now + Duration::from_secs(1)),
        Err(MintError::CallerExpired)
    ));
}

#[test]
fn conflicting_or_invalid_registry_config_is_refused() {
    let check = |extra: &str, fragment: &str| {
        let f = fixture(extra);
        let err = token_service(&f.config).expect_err(fragment).to_string();
        assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
    };
    check(
        "[registries.third]\ntype = \"distribution\"\nurl = \"x:1\"\nservice = \"second-registry\"\n",
        "both use service",
    );
    check(
        "[registries.third]\ntype = \"distribution\"\nurl = \"https://x\"\nservice = \"s3\"\n",
        "without a scheme",
    );
    check(
        "[registries.third]\ntype = \"distribution\"\nurl = \"x\"\nservice = \"s3\"\ntoken_ttl = \"2h\"\n",
        "token_ttl",
    );
    check(
        "[registries.third]\ntype = \"distribution\"\nurl = \"x\"\nservice = \"s3\"\nmax_ttl = \"10s\"\n",
        "max_ttl",
    );
    // A line break would write YAML of its own into `registry-config`'s output.
    check(
        "[registries.third]\ntype = \"distribution\"\nurl = \"x\"\nservice = \"s3\\nauth:\\n  htpasswd: {}\"\n",
        "printable ASCII without spaces",
    );
    check(
        "[registries.third]\ntype = \"distribution\"\nurl = \"x\"\nservice = \"s3\"\nissuer = \"a b\"\n",
        "printable ASCII without spaces",
    );
}

#[test]
fn url_is_a_host_and_port_and_never_echoes_credentials() {
    for valid in [
        "x",
        "x:1",
        "localhost:65535",
        "127.0.0.1:5000",
        "10.0.0.1",
        "registry.example.com",
        "my-registry.Example.COM:443",
        "[::1]",
        "[::1]:5000",
        "[2001:db8::1]:5000",
    ] {
        check_address(valid).unwrap_or_else(|e| panic!("{valid}: {e}"));
    }
    for (invalid, problem) in [
        (
            "admin:hunter2@r.example:5000",
            "must not contain credentials",
        ),
        (
            "https://admin:hunter2@r.example",
            "must not contain credentials",
        ),
        ("admin:hunter2/x@r.example", "must not contain credentials"),
        ("", "is empty"),
        ("https://x", "must not have a scheme"),
        ("r.example/v2", "must not have a path"),
        ("r.example?x=1", "must not have a path, query"),
        ("r example", "invalid host"),
        ("-r.example", "invalid host"),
        ("r..example", "invalid host"),
        ("r.example.", "invalid host"),
        ("under_score.example", "invalid host"),
        ("999.0.0.1", "invalid host"),
        (&"a".repeat(64), "invalid host"),
        ("r.example:", "invalid port"),
        ("r.example:0", "invalid port"),
        ("r.example:65536", "invalid port"),
        ("r.example:+80", "invalid port"),
        ("::1", "write an IPv6 address in brackets"),
        ("[::1", "lacks the `]`"),
        ("[r.example]:5000", "invalid IPv6 address"),
        ("[::1]5000", "other than `:port`"),
    ] {
        let err = check_address(invalid).expect_err(invalid);
        assert!(err.starts_with("url "), "{invalid}: {err}");
        assert!(err.contains(problem), "{invalid}: {err}");
        assert!(err.contains("without a scheme or path"), "{invalid}: {err}");
        if invalid.contains('@') {
            assert!(!err.contains("hunter2"), "{invalid}: {err}");
            assert!(!err.contains("r.example"), "{invalid}: {err}");
        }
    }
}

#[test]
fn registry_config_snippet_writes_the_bundle() {
    let f = fixture("");
    let snippet = registry_config_snippet(&f.config, Some("default")).expect("snippet");
    let bundle_path =
        std::path::absolute(f.config.server.data_dir.join(keys::BUNDLE_FILE)).expect("absolute");
    let bundle = std::fs::read_to_string(&bundle_path).expect("bundle written");
    let keys = KeySet::load_or_create(&f.config.server.data_dir).expect("keys");
    assert_eq!(bundle, keys.bundle_pem());
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "current and next"
    );

    let lines: Vec<&str> = snippet.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "auth:",
            "  token:",
            "    realm: \"http://rise.example:3000/token\"",
            "    service: \"rise-registry\"",
            "    issuer: \"rise\"",
            &format!(
                "    rootcertbundle: {:?}",
                bundle_path.display().to_string()
            ),
        ]
    );
    assert!(snippet.contains("REGISTRY_AUTH_TOKEN_REALM=http://rise.example:3000/token"));
    assert!(snippet.contains("REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE="));

    let second = registry_config_snippet(&f.config, Some("second")).expect("snippet");
    assert!(second.contains("service: \"second-registry\""));
    let err = registry_config_snippet(&f.config, None)
        .expect_err("ambiguous")
        .to_string();
    assert!(
        err.contains("--registry") && err.contains("second"),
        "{err}"
    );
    let err = registry_config_snippet(&f.config, Some("nope"))
        .expect_err("unknown")
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn token_service_is_absent_without_distribution_registries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    write!(
        file,
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
        dir.path().display().to_string()
    )
    .expect("write");
    let config = Config::load(&Sources {
        files: vec![file.path().to_owned()],
        env: Vec::new(),
    })
    .expect("loads");
    assert!(token_service(&config).expect("ok").is_none());
    assert!(
        !dir.path().join(keys::KEYS_DIR).exists(),
        "no keys are generated for nothing"
    );
}

/// Copy every file of `from` into `to` (flat directories).
fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// The fixture's key files, with a copy taken when this is made.
struct BackedUpKeys {
    keyring: crate::keyring::Keyring,
    dir: std::path::PathBuf,
    backup: tempfile::TempDir,
}

impl BackedUpKeys {
    fn of(f: &Fixture) -> Self {
        let data_dir = &f.config.server.data_dir;
        let keys = Self {
            keyring: crate::keyring::Keyring::files(data_dir).expect("keyring"),
            dir: crate::keyring::keys_dir(data_dir).expect("keys dir"),
            backup: tempfile::tempdir().expect("tempdir"),
        };
        copy_files(&keys.dir, keys.backup.path());
        keys
    }

    /// `keys rotate`: both families, one step.
    fn rotate(&self) {
        block_on(async {
            self.keyring.rotate(&REGISTRY_TOKEN_KEYS).await?;
            self.keyring.rotate(&grant::GRANT_KEYS).await
        })
        .expect("rotate");
    }

    /// Put the copy back over the key files.
    fn restore(&self) {
        copy_files(self.backup.path(), &self.dir);
    }
}

/// Rotations are picked up; keys restored from before two rotations (a backup, or someone
/// with write access putting back a key they hold) are refused while the loaded keys stay.
#[test]
fn a_retired_key_back_in_the_store_is_refused() {
    let f = fixture("");
    let service = service(&f);
    let keys = BackedUpKeys::of(&f);
    let original = service.signing_kid();

    // Two rotations, each picked up: the original key is `previous`, then retired.
    let mut kids = vec![original.clone()];
    for _ in 0..2 {
        keys.rotate();
        assert!(
            block_on(service.reload_keys()).expect("reload"),
            "picked up"
        );
        kids.push(service.signing_kid());
    }
    assert_eq!(kids.len(), 3);
    assert_ne!(kids[0], kids[1]);
    assert_ne!(kids[1], kids[2]);
    let grant_now = service
        .keys
        .get()
        .grant
        .kids()
        .map(str::to_owned)
        .collect::<Vec<_>>();

    // The store goes back to the backup: the original keys are current again.
    keys.restore();
    let refused = block_on(service.reload_keys()).expect_err("a retired key is refused");
    let message = format!("{refused:#}");
    assert!(refused.is::<RetiredKeyReturned>(), "{message}");
    assert!(
        message.contains("holds keys that a rotation this server picked up retired"),
        "{message}"
    );
    assert!(
        message.contains(&kids[0]),
        "names the signing key: {message}"
    );
    assert_eq!(
        service.signing_kid(),
        kids[2],
        "the loaded keys stay in use"
    );
    assert_eq!(
        service
            .keys
            .get()
            .grant
            .kids()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
        grant_now
    );
    // Still refused on the next reload: the alarm repeats until someone looks.
    assert!(block_on(service.reload_keys()).is_err());

    // A fresh rotation from the restored store still carries the retired key (as `previous`):
    // refused too. Rotating past it brings only keys never retired here: accepted.
    keys.rotate();
    assert!(block_on(service.reload_keys()).is_err());
    keys.rotate();
    assert!(
        block_on(service.reload_keys()).expect("reload"),
        "picked up"
    );
    assert!(!kids.contains(&service.signing_kid()));

    // A server started on the restored store never saw the rotations: it cannot tell.
    keys.restore();
    assert_eq!(self::service(&f).signing_kid(), original);
}

/// A server that reloads less often than the keys rotate still knows which keys left: the
/// original keys, gone after two rotations it saw as one change, are refused when restored.
#[test]
fn keys_retired_between_two_reloads_are_refused_when_restored() {
    let f = fixture("");
    let service = service(&f);
    let keys = BackedUpKeys::of(&f);
    let original_signing = service.signing_kid();
    let original_grant = service.keys.get().grant.kids().next().map(str::to_owned);
    let original_grant = original_grant.expect("a grant key");
    keys.rotate();
    keys.rotate();
    assert!(
        block_on(service.reload_keys()).expect("reload"),
        "picked up"
    );
    let rotated = service.signing_kid();
    assert_ne!(rotated, original_signing);

    keys.restore();
    let refused = block_on(service.reload_keys()).expect_err("the retired keys are refused");
    let message = format!("{refused:#}");
    assert!(refused.is::<RetiredKeyReturned>(), "{message}");
    assert!(message.contains(&original_signing), "{message}");
    assert!(message.contains(&original_grant), "{message}");
    assert_eq!(
        service.signing_kid(),
        rotated,
        "the loaded keys stay in use"
    );
}
