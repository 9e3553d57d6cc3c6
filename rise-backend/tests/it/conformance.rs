//! One contract suite over every `RegistryProvider` the tests can build at the library level,
//! each against its upstream: the documented-API fakes in `support::fake_*`, and moto for ECR.
//!
//! Each provider is a [`Case`]: its `Arc<dyn RegistryProvider>` plus an [`Upstream`] adapter that
//! tells the contracts what only the upstream knows (does it still accept a credential, did it
//! delete anything) and how to make it fail. Each contract is one generic `async fn`; the
//! `conformance!` table at the bottom runs every contract over every case as its own test
//! (`conformance::<case>::<contract>`), with the case name in every assertion message.
//!
//! Where a provider's module documentation says it deviates from a contract, the deviation is
//! spelled out in its [`Expect`], citing the documentation, instead of weakening the contract.
//!
//! The Distribution provider signs grants itself: its "upstream" is its own grant check, it has
//! nothing to break, and it is built through a `TokenService` over a file keyring.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rise_backend::keyring::{KEYS_DIR, Keyring};
use rise_backend::registry::providers::acr::{AcrConfig, AcrProvider};
use rise_backend::registry::providers::artifactory::{ArtifactoryConfig, ArtifactoryProvider};
use rise_backend::registry::providers::distribution::{
    DistributionProvider, GrantCheck, TokenService,
};
use rise_backend::registry::providers::dockerhub::{DockerhubConfig, DockerhubProvider};
use rise_backend::registry::providers::ecr::{EcrConfig, EcrProvider};
use rise_backend::registry::providers::ghcr::{GhcrConfig, GhcrProvider};
use rise_backend::registry::providers::google::{GoogleConfig, GoogleProvider};
use rise_backend::registry::providers::harbor::{HarborConfig, HarborProvider};
use rise_backend::registry::providers::quay::{QuayConfig, QuayProvider};
use rise_backend::registry::{
    Action, Actions, CredentialRequest, IssuedCredential, ProviderError, RegistryProvider,
    RepositoryName,
};
use secrecy::ExposeSecret;

use crate::support::moto::{ACCOUNT_ID, Moto};
use crate::support::provider_calls::{self, GUARD};
use crate::support::rise::ReservedRise;
use crate::support::{
    fake_acr, fake_artifactory, fake_dockerhub, fake_ghcr, fake_google, fake_harbor, fake_quay,
};

/// Clock slack between Rise, the fake and the test.
const SLACK: Duration = Duration::from_secs(5);
/// The lifetime asked for: 15 minutes, the shortest session STS grants (ECR), so every provider
/// can honour it as asked.
const TTL: Duration = Duration::from_secs(900);
/// Far above every provider's `max_ttl`.
const HUGE_TTL: Duration = Duration::from_secs(48 * 3600);
/// The project and repository every case asks for; every fake knows it.
const PROJECT: &str = "my-app";

/// Revocation ids no provider issues: empty, path tricks, oversized, control characters, and
/// shapes of other providers' ids (Harbor's robot names, Quay's `org+robot`, encoded paths).
fn garbage_ids() -> Vec<String> {
    vec![
        String::new(),
        "../x".into(),
        "9".repeat(10_000),
        "\0".into(),
        "robot$admin".into(),
        "acme+not-rise".into(),
        "%2e%2e%2fx".into(),
        "rise-1/../../x".into(),
    ]
}

/// How a contract makes the upstream fail.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakage {
    /// The upstream answers 500 with its error body (which may carry token-like text).
    Status500,
    /// The upstream answers success with a body cut off mid-token.
    Garbage,
    /// The upstream accepts the connection and never answers.
    Hang,
    /// Nothing listens any more.
    Stopped,
}

const ALL_BREAKAGES: &[Breakage] = &[
    Breakage::Status500,
    Breakage::Garbage,
    Breakage::Hang,
    Breakage::Stopped,
];

/// What only the upstream (the fake) knows, and how to make it fail.
trait Upstream: Send + Sync {
    /// Everything that must never appear in `Debug` output or an error: Rise's own credentials,
    /// text the fake injects into error bodies, and every credential the fake has minted.
    fn secrets(&self) -> Vec<String>;

    /// Would the upstream let `c` do `action` on the case's repository? `None` when the fake
    /// cannot tell.
    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool>;

    /// How many deletions (or, for a fake without a delete endpoint, calls) the upstream has
    /// recorded; `None` when it cannot tell.
    fn deletions(&self) -> Option<usize>;

    /// Make the upstream fail as `how` says; false when this upstream cannot.
    fn break_upstream(&self, how: Breakage) -> bool;
}

/// What a case's provider documents about itself where it deviates from the plain contract.
struct Expect {
    /// `IssuedCredential::revocable`.
    revocable: bool,
    /// Whether a revocable credential is revoked through `RegistryProvider::revoke` (rather than
    /// by another part of Rise).
    revoke_through_provider: bool,
    /// Whether concurrent issues must hand out distinct passwords.
    distinct_passwords: bool,
    /// Whether distinct credentials carry distinct `credential_id`s.
    distinct_ids: bool,
    /// Whether `repository_path` shows a `{project}` placeholder where the credential has the
    /// project's name.
    repository_path_has_project_placeholder: bool,
    /// Whether issuing calls an upstream that can fail.
    calls_upstream: bool,
}

impl Expect {
    /// The plain contract, no deviation.
    const PLAIN: Expect = Expect {
        revocable: true,
        revoke_through_provider: true,
        distinct_passwords: true,
        distinct_ids: true,
        repository_path_has_project_placeholder: false,
        calls_upstream: true,
    };
}

struct Case {
    name: &'static str,
    provider: Arc<dyn RegistryProvider>,
    upstream: Box<dyn Upstream>,
    expect: Expect,
}

type Start = fn() -> Pin<Box<dyn Future<Output = Case> + Send>>;

// ---------------------------------------------------------------------------------------------
// Contracts
// ---------------------------------------------------------------------------------------------

/// A push credential names the provider's registry, has a user name and password, expires in
/// the future but no later than asked, grants push and pull, and the upstream agrees.
async fn push_issue(case: Case) {
    let name = case.name;
    let c = issue(&case, Actions::PUSH_PULL, TTL)
        .await
        .unwrap_or_else(|e| panic!("{name}: push issue failed: {e}"));
    assert_eq!(
        c.registry_url,
        case.provider.registry_url(),
        "{name}: registry_url"
    );
    let path = case.provider.repository_path(&repository());
    if case.expect.repository_path_has_project_placeholder {
        assert!(
            path.contains("{project}"),
            "{name}: repository_path {path:?} has no {{project}} placeholder"
        );
    }
    assert_eq!(
        c.repository,
        path.replace("{project}", PROJECT),
        "{name}: repository"
    );
    assert!(!c.username.is_empty(), "{name}: empty username");
    assert!(
        !c.password.expose_secret().is_empty(),
        "{name}: empty password"
    );
    let now = SystemTime::now();
    assert!(
        c.expires_at > now,
        "{name}: expires_at is not in the future"
    );
    assert!(
        c.expires_at <= now + TTL + SLACK,
        "{name}: expires_at is {:?} after now, more than the {TTL:?} asked",
        c.expires_at.duration_since(now).unwrap_or_default()
    );
    for action in [Action::Pull, Action::Push] {
        assert!(
            c.granted_actions.contains(action),
            "{name}: granted_actions {:?} lack {action:?}",
            c.granted_actions.to_vec()
        );
        if let Some(allowed) = case.upstream.allows(&c, action) {
            assert!(allowed, "{name}: the upstream refuses {action:?}");
        }
    }
}

/// A pull credential can pull; whatever the upstream really lets it do, `granted_actions` says.
async fn pull_only_issue(case: Case) {
    let name = case.name;
    let c = issue(&case, Actions::PULL, TTL)
        .await
        .unwrap_or_else(|e| panic!("{name}: pull issue failed: {e}"));
    assert!(
        c.granted_actions.contains(Action::Pull),
        "{name}: granted_actions {:?} lack pull",
        c.granted_actions.to_vec()
    );
    if let Some(allowed) = case.upstream.allows(&c, Action::Pull) {
        assert!(allowed, "{name}: the upstream refuses pull");
    }
    if let Some(allowed) = case.upstream.allows(&c, Action::Push) {
        assert_eq!(
            allowed,
            c.granted_actions.contains(Action::Push),
            "{name}: the upstream {} push but granted_actions say {:?}",
            if allowed { "allows" } else { "refuses" },
            c.granted_actions.to_vec()
        );
    }
}

/// A TTL above `max_ttl` is capped to it.
async fn ttl_capped(case: Case) {
    let name = case.name;
    let max = case.provider.max_ttl();
    assert!(
        max < HUGE_TTL,
        "{name}: max_ttl {max:?} is not below the test's ask"
    );
    let c = issue(&case, Actions::PUSH_PULL, HUGE_TTL)
        .await
        .unwrap_or_else(|e| panic!("{name}: issue with ttl above max_ttl failed: {e}"));
    let now = SystemTime::now();
    assert!(
        c.expires_at > now,
        "{name}: expires_at is not in the future"
    );
    assert!(
        c.expires_at <= now + max + SLACK,
        "{name}: expires_at is {:?} after now, beyond max_ttl {max:?}",
        c.expires_at.duration_since(now).unwrap_or_default()
    );
}

/// Neither the provider's `Debug` (after it has fetched and cached whatever it caches) nor the
/// credential's shows a secret or the minted password.
async fn debug_redacts(case: Case) {
    let name = case.name;
    let c = issue(&case, Actions::PUSH_PULL, TTL)
        .await
        .unwrap_or_else(|e| panic!("{name}: push issue failed: {e}"));
    let mut secrets = case.upstream.secrets();
    secrets.push(c.password.expose_secret().to_owned());
    let provider = format!("{:?}", case.provider);
    let credential = format!("{c:?}");
    assert_no_secret(name, "Debug of the provider", &provider, &secrets);
    assert_no_secret(name, "Debug of the credential", &credential, &secrets);
}

/// A revocable credential is revoked upstream; a non-revocable one's `revoke` is an error (and
/// changes nothing). Ids the provider never issued are errors and delete nothing.
async fn revoke(case: Case) {
    let name = case.name;
    let c = issue(&case, Actions::PUSH_PULL, TTL)
        .await
        .unwrap_or_else(|e| panic!("{name}: push issue failed: {e}"));
    assert_eq!(
        c.revocable, case.expect.revocable,
        "{name}: revocable is {} but the provider documents {}",
        c.revocable, case.expect.revocable
    );

    let deletions = case.upstream.deletions();
    for id in garbage_ids() {
        let shown: String = id.chars().take(20).collect();
        let result = tokio::time::timeout(GUARD, case.provider.revoke(&id))
            .await
            .unwrap_or_else(|_| panic!("{name}: revoke({shown:?}) hangs"));
        let e = result.expect_err(&format!("{name}: revoke({shown:?}) succeeded"));
        assert_no_secret(
            name,
            "a refused revocation",
            &format!("{e} {e:?}"),
            &case.upstream.secrets(),
        );
    }
    assert_eq!(
        case.upstream.deletions(),
        deletions,
        "{name}: a garbage revocation reached the upstream"
    );
    if let Some(allowed) = case.upstream.allows(&c, Action::Pull) {
        assert!(
            allowed,
            "{name}: a garbage revocation cut off a live credential"
        );
    }

    let id = c.credential_id.clone().unwrap_or_default();
    let result = tokio::time::timeout(GUARD, case.provider.revoke(&id))
        .await
        .unwrap_or_else(|_| panic!("{name}: revoke hangs"));
    if case.expect.revocable {
        assert!(
            c.credential_id.is_some(),
            "{name}: revocable without a credential_id"
        );
    }
    if case.expect.revocable && case.expect.revoke_through_provider {
        result.unwrap_or_else(|e| panic!("{name}: revoke({id:?}) failed: {e}"));
        if let (Some(before), Some(after)) = (deletions, case.upstream.deletions()) {
            assert!(after > before, "{name}: revoke deleted nothing upstream");
        }
        if let Some(allowed) = case.upstream.allows(&c, Action::Pull) {
            assert!(
                !allowed,
                "{name}: the upstream still accepts a revoked credential"
            );
        }
    } else {
        assert!(
            result.is_err(),
            "{name}: revoke through the provider succeeded where it documents none"
        );
        if let Some(allowed) = case.upstream.allows(&c, Action::Pull) {
            assert!(
                allowed,
                "{name}: a refused revocation cut the credential off"
            );
        }
    }
}

/// An upstream that fails gives an error, in bounded time, that shows no secret; a hanging one
/// gives [`ProviderError::Timeout`].
async fn upstream_failure(start: Start) {
    let mut tried = 0;
    let mut name = "";
    for &how in ALL_BREAKAGES {
        let case = start().await;
        name = case.name;
        if !case.expect.calls_upstream {
            // Nothing upstream to fail: issuing must keep working.
            issue(&case, Actions::PUSH_PULL, TTL)
                .await
                .unwrap_or_else(|e| panic!("{name}: issue without an upstream failed: {e}"));
            assert!(
                !case.upstream.break_upstream(how),
                "{name}: documented as calling no upstream, yet its upstream can be broken"
            );
            tried += 1;
            continue;
        }
        if !case.upstream.break_upstream(how) {
            continue;
        }
        tried += 1;
        let request = request(Actions::PUSH_PULL, TTL);
        let result = tokio::time::timeout(GUARD, case.provider.issue(&request))
            .await
            .unwrap_or_else(|_| panic!("{name}: issue against a {how:?} upstream hangs"));
        let e = match result {
            Ok(c) => panic!(
                "{name}: issue against a {how:?} upstream succeeded: {:?}",
                c.credential_id
            ),
            Err(e) => e,
        };
        assert!(
            !matches!(e, ProviderError::Unsupported(_)),
            "{name}: a {how:?} upstream is reported as unsupported: {e}"
        );
        if how == Breakage::Hang {
            assert!(
                matches!(e, ProviderError::Timeout { .. }),
                "{name}: a hanging upstream is not a timeout: {e}"
            );
        }
        assert_no_secret(
            name,
            &format!("the error of a {how:?} upstream"),
            &format!("{e} {e:?}"),
            &case.upstream.secrets(),
        );
    }
    assert!(tried > 0, "{name}: no breakage applies");
}

/// Concurrent push issues for one project all succeed, each with its own credential.
async fn concurrent_issues(case: Case) {
    let name = case.name;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let provider = case.provider.clone();
        let mut request = request(Actions::PUSH_PULL, TTL);
        request.request_id = format!("req-conformance-{i}");
        tasks.spawn(async move { tokio::time::timeout(GUARD, provider.issue(&request)).await });
    }
    let mut passwords = HashSet::new();
    let mut ids = HashSet::new();
    let mut issued = 0;
    while let Some(joined) = tasks.join_next().await {
        let c = joined
            .unwrap_or_else(|e| panic!("{name}: a concurrent issue panicked: {e}"))
            .unwrap_or_else(|_| panic!("{name}: a concurrent issue hangs"))
            .unwrap_or_else(|e| panic!("{name}: a concurrent issue failed: {e}"));
        issued += 1;
        passwords.insert(c.password.expose_secret().to_owned());
        if let Some(id) = c.credential_id
            && !ids.insert(id)
        {
            assert!(
                !case.expect.distinct_ids,
                "{name}: two credentials share an id"
            );
        }
    }
    assert_eq!(issued, 8, "{name}: issued");
    if case.expect.distinct_passwords {
        assert_eq!(
            passwords.len(),
            8,
            "{name}: concurrent issues share passwords"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn repository() -> RepositoryName {
    RepositoryName::parse(PROJECT).expect("valid repository")
}

fn request(actions: Actions, ttl: Duration) -> CredentialRequest {
    CredentialRequest {
        request_id: "req-conformance".into(),
        ..provider_calls::request(PROJECT, actions, ttl)
    }
}

async fn issue(
    case: &Case,
    actions: Actions,
    ttl: Duration,
) -> Result<IssuedCredential, ProviderError> {
    tokio::time::timeout(GUARD, case.provider.issue(&request(actions, ttl)))
        .await
        .unwrap_or_else(|_| panic!("{}: issue hangs", case.name))
}

fn assert_no_secret(name: &str, what: &str, shown: &str, secrets: &[String]) {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        let head: String = s.chars().take(12).collect();
        assert!(
            !shown.contains(s.as_str()),
            "{name}: {what} shows a secret starting {head:?}: {shown}"
        );
    }
}

fn deletes<'a>(methods: impl Iterator<Item = &'a str>) -> usize {
    methods.filter(|m| m.eq_ignore_ascii_case("DELETE")).count()
}

/// The provider's `request_timeout` in every case, so a hanging upstream ends quickly.
const TIMEOUT_TOML: &str = "request_timeout = \"1s\"\n";

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

struct Artifactory(fake_artifactory::FakeArtifactory);

fn start_artifactory() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        use fake_artifactory::*;
        let fake = FakeArtifactory::start().await;
        let text = format!(
            "base_url = \"{}\"\nrepository = \"docker-local\"\ninsecure_http = true\nadmin_token = \"{ADMIN_TOKEN}\"\n{TIMEOUT_TOML}",
            fake.base_url()
        );
        let config: ArtifactoryConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = ArtifactoryProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "artifactory",
            provider: Arc::new(provider),
            upstream: Box::new(Artifactory(fake)),
            // Module doc: access tokens carry `force_revocable` by default and are revoked by id.
            expect: Expect::PLAIN,
        }
    })
}

impl Upstream for Artifactory {
    fn secrets(&self) -> Vec<String> {
        use fake_artifactory::*;
        let mut s: Vec<String> = [ADMIN_TOKEN, ADMIN_PASSWORD, SERVICE_PASSWORD]
            .map(str::to_owned)
            .into();
        s.extend(self.0.tokens().into_iter().map(|t| t.access_token));
        s
    }

    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        let action = match action {
            Action::Pull => 'r',
            Action::Push => 'w',
        };
        Some(self.0.authorize(
            &c.username,
            c.password.expose_secret(),
            "docker-local/my-app/latest/manifest.json",
            action,
        ))
    }

    fn deletions(&self) -> Option<usize> {
        Some(deletes(self.0.requests().iter().map(|r| r.method.as_str())))
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_artifactory::Failure;
        match how {
            Breakage::Status500 => self.0.set_failure(Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Some(Failure::Malformed)),
            Breakage::Hang => self.0.set_failure(Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

const GOOGLE_PUSH: &str = "rise-my-app-push@my-gcp.iam.gserviceaccount.com";
const GOOGLE_PULL: &str = "rise-my-app-pull@my-gcp.iam.gserviceaccount.com";

struct Google(fake_google::FakeGoogle);

fn start_google() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        let fake = fake_google::FakeGoogle::start().await;
        fake.allow_impersonation(GOOGLE_PUSH);
        fake.allow_impersonation(GOOGLE_PULL);
        let text = format!(
            "registry_host = \"europe-docker.pkg.dev\"\niam_credentials_url = \"{}\"\ninsecure_http = true\nrepository_prefix = \"my-gcp/{{repository}}\"\npush_service_account = \"rise-{{project}}-push@my-gcp.iam.gserviceaccount.com\"\npull_service_account = \"rise-{{project}}-pull@my-gcp.iam.gserviceaccount.com\"\nservice_account_key = '''{}'''\n{TIMEOUT_TOML}",
            fake.iam_url(),
            fake.key_json()
        );
        let config: GoogleConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = GoogleProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "google",
            provider: Arc::new(provider),
            upstream: Box::new(Google(fake)),
            // Module doc ("Lifetime, refresh, revocation"): a Google access token can only be
            // revoked by presenting it, Rise keeps none, so `revocable` is false and `revoke` is
            // unsupported.
            expect: Expect {
                revocable: false,
                ..Expect::PLAIN
            },
        }
    })
}

impl Upstream for Google {
    fn secrets(&self) -> Vec<String> {
        use fake_google::*;
        let mut s = self.0.secrets();
        s.extend([INJECTED_SECRET, GARBAGE_SECRET, "BEGIN PRIVATE KEY"].map(str::to_owned));
        // A line from inside the PEM body.
        s.extend(self.0.private_key_pem().lines().nth(3).map(str::to_owned));
        s
    }

    /// What the account the token was minted for may do: the operator grants the push account
    /// writer and the pull account reader (module doc, "Least-privilege setup").
    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        let minted = self
            .0
            .minted()
            .into_iter()
            .find(|t| t.access_token == c.password.expose_secret());
        Some(minted.is_some_and(|t| match action {
            Action::Pull => t.service_account == GOOGLE_PUSH || t.service_account == GOOGLE_PULL,
            Action::Push => t.service_account == GOOGLE_PUSH,
        }))
    }

    /// The fake has no delete endpoint: any call counts, since an unsupported revocation must
    /// make none.
    fn deletions(&self) -> Option<usize> {
        Some(self.0.requests().len())
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_google::{Endpoint, Failure};
        match how {
            Breakage::Status500 => self
                .0
                .set_failure(Endpoint::Iam, Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Endpoint::Iam, Some(Failure::Garbage)),
            Breakage::Hang => self.0.set_failure(Endpoint::Iam, Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

struct Acr(fake_acr::FakeAcr);

fn start_acr() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        use fake_acr::*;
        let fake = FakeAcr::start().await;
        let text = format!(
            "{}client_secret = \"{CLIENT_SECRET}\"\n{TIMEOUT_TOML}",
            fake.config()
        );
        let config: AcrConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = AcrProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "acr",
            provider: Arc::new(provider),
            upstream: Box::new(Acr(fake)),
            expect: Expect::PLAIN,
        }
    })
}

impl Upstream for Acr {
    fn secrets(&self) -> Vec<String> {
        use fake_acr::*;
        let mut s: Vec<String> = [CLIENT_SECRET, INJECTED_SECRET, GARBAGE_SECRET]
            .map(str::to_owned)
            .into();
        s.extend(self.0.arm_tokens());
        for token in self.0.tokens().into_values() {
            s.extend(
                [token.password1, token.password2]
                    .into_iter()
                    .flatten()
                    .map(|p| p.value),
            );
        }
        s
    }

    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        Some(self.0.authorize(
            &c.username,
            c.password.expose_secret(),
            PROJECT,
            action.as_str(),
        ))
    }

    fn deletions(&self) -> Option<usize> {
        Some(deletes(self.0.requests().iter().map(|r| r.method.as_str())))
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_acr::{Endpoint, Failure};
        match how {
            Breakage::Status500 => self
                .0
                .set_failure(Endpoint::Arm, Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Endpoint::Arm, Some(Failure::Garbage)),
            Breakage::Hang => self.0.set_failure(Endpoint::Arm, Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

struct Ghcr(fake_ghcr::FakeGhcr);

fn start_ghcr() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        use fake_ghcr::*;
        let fake = FakeGhcr::start().await;
        let text = format!(
            "owner = \"{OWNER}\"\napp_id = \"{APP_ID}\"\ninstallation_id = {INSTALLATION_ID}\nprivate_key = '''{}'''\napi_url = \"{}\"\ninsecure_http = true\n{TIMEOUT_TOML}",
            app_key().private_pem,
            fake.api_url()
        );
        let config: GhcrConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = GhcrProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "ghcr",
            provider: Arc::new(provider),
            upstream: Box::new(Ghcr(fake)),
            // Module doc ("Lifetime, refresh, revocation"): GitHub revokes an installation token
            // only when presented with it and Rise stores none, so `revoke` is unsupported and
            // `revocable` is false.
            expect: Expect {
                revocable: false,
                ..Expect::PLAIN
            },
        }
    })
}

impl Upstream for Ghcr {
    fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = vec!["BEGIN PRIVATE KEY".into()];
        s.extend(
            fake_ghcr::app_key()
                .private_pem
                .lines()
                .nth(3)
                .map(str::to_owned),
        );
        s.extend(self.0.tokens().into_iter().map(|t| t.token));
        s.extend(self.0.jwts().into_iter().map(|j| j.raw));
        s
    }

    /// GitHub's rules for a token's `packages` permission on its repositories: `read` pulls,
    /// `write` pushes and pulls.
    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        let Some(token) = self.0.token(c.password.expose_secret()) else {
            return Some(false);
        };
        let level = token.permissions.get("packages").map(String::as_str);
        let reaches = token.repositories.iter().any(|r| r == PROJECT);
        Some(
            !token.revoked
                && reaches
                && match action {
                    Action::Pull => matches!(level, Some("read" | "write" | "admin")),
                    Action::Push => matches!(level, Some("write" | "admin")),
                },
        )
    }

    fn deletions(&self) -> Option<usize> {
        Some(deletes(self.0.requests().iter().map(|r| r.method.as_str())))
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_ghcr::Failure;
        match how {
            Breakage::Status500 => self.0.set_failure(Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Some(Failure::Garbage)),
            Breakage::Hang => self.0.set_failure(Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

struct DockerHub(fake_dockerhub::FakeDockerHub);

fn start_dockerhub() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        use fake_dockerhub::*;
        let fake = FakeDockerHub::start().await;
        // Background cleanup off: its deletions would blur the revocation counts.
        let text = format!(
            "organization = \"{ORG}\"\napi_url = \"{}\"\ninsecure_http = true\nusername = \"{OWNER_USER}\"\npassword = \"{OWNER_PASSWORD}\"\ndelete_expired = false\n{TIMEOUT_TOML}",
            fake.api_url()
        );
        let config: DockerhubConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = DockerhubProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "dockerhub",
            provider: Arc::new(provider),
            upstream: Box::new(DockerHub(fake)),
            expect: Expect::PLAIN,
        }
    })
}

impl Upstream for DockerHub {
    fn secrets(&self) -> Vec<String> {
        use fake_dockerhub::*;
        let mut s: Vec<String> = [OWNER_PASSWORD, OWNER_PAT, MEMBER_PASSWORD, INJECTED_SECRET]
            .map(str::to_owned)
            .into();
        s.extend(self.0.oats().into_iter().map(|o| o.token));
        s
    }

    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        Some(self.0.authorize(
            &c.username,
            c.password.expose_secret(),
            &format!("{}/{PROJECT}", fake_dockerhub::ORG),
            action.as_str(),
        ))
    }

    fn deletions(&self) -> Option<usize> {
        Some(deletes(self.0.requests().iter().map(|r| r.method.as_str())))
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_dockerhub::{Endpoint, Failure};
        match how {
            Breakage::Status500 => self
                .0
                .set_failure(Endpoint::Create, Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Endpoint::Create, Some(Failure::Garbage)),
            Breakage::Hang => self.0.set_failure(Endpoint::Create, Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

struct Harbor(fake_harbor::FakeHarbor);

fn start_harbor() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        use fake_harbor::*;
        let fake = FakeHarbor::start().await;
        let text = format!(
            "url = \"{}\"\nproject = \"{{project}}\"\nusername = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\ninsecure_http = true\n{TIMEOUT_TOML}",
            fake.url()
        );
        let config: HarborConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = HarborProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "harbor",
            provider: Arc::new(provider),
            upstream: Box::new(Harbor(fake)),
            // `HarborProvider::repository_path` doc: with a `{project}` template the Harbor
            // project depends on the Rise project, which that method is not given, so the
            // template is shown as is; the issued credential carries the real path.
            expect: Expect {
                repository_path_has_project_placeholder: true,
                ..Expect::PLAIN
            },
        }
    })
}

impl Upstream for Harbor {
    fn secrets(&self) -> Vec<String> {
        use fake_harbor::*;
        let mut s: Vec<String> = [ADMIN_PASSWORD, DEV_PASSWORD, INJECTED_SECRET]
            .map(str::to_owned)
            .into();
        s.extend(
            self.0
                .robots()
                .into_iter()
                .chain(self.0.deleted())
                .map(|r| r.secret),
        );
        s
    }

    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        Some(self.0.authorize(
            &c.username,
            c.password.expose_secret(),
            &format!("{PROJECT}/{PROJECT}"),
            action.as_str(),
        ))
    }

    fn deletions(&self) -> Option<usize> {
        Some(deletes(self.0.requests().iter().map(|r| r.method.as_str())))
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_harbor::Failure;
        match how {
            Breakage::Status500 => self.0.set_failure(Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Some(Failure::Garbage)),
            Breakage::Hang => self.0.set_failure(Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

struct Quay(fake_quay::FakeQuay);

fn start_quay() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        use fake_quay::*;
        let fake = FakeQuay::start().await;
        let text = format!(
            "url = \"{}\"\norganization = \"{ORG}\"\ntoken = \"{OAUTH_TOKEN}\"\ninsecure_http = true\n{TIMEOUT_TOML}",
            fake.url()
        );
        let config: QuayConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = QuayProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "quay",
            provider: Arc::new(provider),
            upstream: Box::new(Quay(fake)),
            expect: Expect::PLAIN,
        }
    })
}

impl Upstream for Quay {
    fn secrets(&self) -> Vec<String> {
        use fake_quay::*;
        let mut s: Vec<String> = [OAUTH_TOKEN, ORG_ONLY_TOKEN, INJECTED_SECRET, GARBAGE_SECRET]
            .map(str::to_owned)
            .into();
        s.extend(
            self.0
                .robots()
                .into_iter()
                .chain(self.0.deleted())
                .map(|r| r.token),
        );
        s
    }

    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        Some(self.0.authorize(
            &c.username,
            c.password.expose_secret(),
            &format!("{}/{PROJECT}", fake_quay::ORG),
            action.as_str(),
        ))
    }

    fn deletions(&self) -> Option<usize> {
        Some(deletes(self.0.requests().iter().map(|r| r.method.as_str())))
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        use fake_quay::Failure;
        match how {
            Breakage::Status500 => self.0.set_failure(Some(Failure::Status(500))),
            Breakage::Garbage => self.0.set_failure(Some(Failure::Garbage)),
            Breakage::Hang => self.0.set_failure(Some(Failure::Hang)),
            Breakage::Stopped => self.0.stop(),
        }
        true
    }
}

/// What moto's ECR authorization token decodes to after `AWS:`, whoever asks.
const MOTO_PASSWORD: &str = "123456789012-auth-token";
const ECR_STATIC_SECRET: &str = "conformance-static-secret";

/// moto, dropped (killed) to break the upstream.
struct Ecr(Mutex<Option<Moto>>);

fn start_ecr() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        let moto = Moto::start().await;
        // With a push role, so each credential is its own STS session of the asked lifetime
        // (module doc, "Scope" and "Lifetime"); without one the token lives 12 h whatever is
        // asked, which the doc states and `ecr.rs` covers.
        let text = format!(
            "region = \"us-east-1\"\naccount_id = \"{ACCOUNT_ID}\"\naccess_key_id = \"AKIDCONFORMANCE\"\nsecret_access_key = \"{ECR_STATIC_SECRET}\"\nendpoint_url = \"{}\"\nconnect_timeout = \"1s\"\ntimeout = \"5s\"\npush_role_arn = \"arn:aws:iam::{ACCOUNT_ID}:role/rise-push\"\n",
            moto.endpoint()
        );
        let config: EcrConfig = toml::from_str(&text).expect("valid test TOML");
        let provider = EcrProvider::from_config("default", &config)
            .await
            .expect("valid provider configuration");
        Case {
            name: "ecr",
            provider: Arc::new(provider),
            upstream: Box::new(Ecr(Mutex::new(Some(moto)))),
            expect: Expect {
                // Module doc ("Refresh and revocation"): ECR authorization tokens cannot be
                // revoked.
                revocable: false,
                // Not a provider deviation: moto's authorization token is the same string for
                // every caller (`MOTO_PASSWORD`); real ECR's differ per session.
                distinct_passwords: false,
                ..Expect::PLAIN
            },
        }
    })
}

impl Upstream for Ecr {
    fn secrets(&self) -> Vec<String> {
        vec![ECR_STATIC_SECRET.into(), MOTO_PASSWORD.into()]
    }

    /// moto stores session policies without evaluating them.
    fn allows(&self, _: &IssuedCredential, _: Action) -> Option<bool> {
        None
    }

    fn deletions(&self) -> Option<usize> {
        None
    }

    fn break_upstream(&self, how: Breakage) -> bool {
        if how != Breakage::Stopped {
            return false;
        }
        drop(self.0.lock().expect("moto slot").take());
        true
    }
}

/// Rise's own token server: the "upstream" that accepts or refuses a grant is the provider's
/// own `/token` check.
struct Distribution {
    provider: Arc<DistributionProvider>,
    /// Holds the data dir (and the keys in it).
    reserved: ReservedRise,
}

fn start_distribution() -> Pin<Box<dyn Future<Output = Case> + Send>> {
    Box::pin(async {
        let reserved = ReservedRise::bind().await;
        let config = reserved.load_config(&format!(
            "{}[registry]\ntype = \"distribution\"\nurl = \"127.0.0.1:5000\"\n",
            reserved.server_toml()
        ));
        let keyring = Keyring::files(reserved.data_dir()).expect("file keyring");
        let service = TokenService::from_config(&config, &keyring)
            .await
            .expect("token service")
            .expect("a distribution registry is configured");
        let provider = service
            .provider("default")
            .expect("the default registry is a distribution registry");
        Case {
            name: "distribution",
            provider: provider.clone(),
            upstream: Box::new(Distribution { provider, reserved }),
            expect: Expect {
                // Grants are revoked by `rise-backend grants revoke` through the store and
                // refused at `/token` (`distribution/mod.rs`, `issue_at`); the provider keeps the
                // trait's default `revoke`, which is unsupported.
                revoke_through_provider: false,
                // The module doc: Rise signs grants itself ("`/registry/credentials` returns a
                // grant ... password a short-lived HS256 JWT"); no upstream call.
                calls_upstream: false,
                ..Expect::PLAIN
            },
        }
    })
}

impl Upstream for Distribution {
    /// Every line of the generated key files that is not a PEM armour line.
    fn secrets(&self) -> Vec<String> {
        let mut s = Vec::new();
        let keys = self.reserved.data_dir().join(KEYS_DIR);
        for entry in std::fs::read_dir(&keys).expect("keys dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("cert") || name.ends_with(".crt") || name.starts_with('.') {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                s.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                        .map(str::to_owned),
                );
            }
        }
        assert!(!s.is_empty(), "distribution: no key material in {keys:?}");
        s
    }

    fn allows(&self, c: &IssuedCredential, action: Action) -> Option<bool> {
        Some(
            match self.provider.check_grant(c.password.expose_secret()) {
                GrantCheck::Valid(grant) => {
                    grant.claims.repo.as_str() == PROJECT
                        && grant.claims.act.contains(action)
                        && self.provider.revoked(&grant).is_none()
                }
                GrantCheck::Invalid(_) | GrantCheck::NotAGrant => false,
            },
        )
    }

    /// Revocations live in the store, not here: nothing to count.
    fn deletions(&self) -> Option<usize> {
        None
    }

    fn break_upstream(&self, _: Breakage) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The table: every contract over every case
// ---------------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($case:ident => $start:path),* $(,)?) => {$(
        mod $case {
            use super::*;

            #[tokio::test]
            async fn push_issue() {
                super::push_issue($start().await).await;
            }

            #[tokio::test]
            async fn pull_only_issue() {
                super::pull_only_issue($start().await).await;
            }

            #[tokio::test]
            async fn ttl_capped() {
                super::ttl_capped($start().await).await;
            }

            #[tokio::test]
            async fn debug_redacts() {
                super::debug_redacts($start().await).await;
            }

            #[tokio::test]
            async fn revoke() {
                super::revoke($start().await).await;
            }

            #[tokio::test]
            async fn upstream_failure() {
                super::upstream_failure($start).await;
            }

            #[tokio::test]
            async fn concurrent_issues() {
                super::concurrent_issues($start().await).await;
            }
        }
    )*};
}

conformance! {
    artifactory => start_artifactory,
    google => start_google,
    acr => start_acr,
    ghcr => start_ghcr,
    dockerhub => start_dockerhub,
    harbor => start_harbor,
    quay => start_quay,
    ecr => start_ecr,
    distribution => start_distribution,
}
