//! Authentication against the real oidc-provider: every key type it signs with, audience
//! checks, key rotation without restarting Rise, the bound on JWKS refetches, and verification
//! from cached keys while the issuer is down. Driven through the HTTP router in-process.
//!
//! JWKS fetches are counted by a [`RecordingProxy`] between Rise and the provider (the issuer's
//! `jwks_uri` points at the proxy), so the counts do not rely on anything inside Rise.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rise_backend::auth::{AuthError, Authenticator};
use rise_backend::config::{Config, Sources};
use rise_backend::http::AppState;
use rise_backend::policy::Policy;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::oidc::{OidcProvider, decode_jwt};
use crate::support::recording_proxy::RecordingProxy;

/// Rise with one OIDC issuer named `oidc` and a project `my-app` that only `alice` may pull: a
/// token of `ci-app` that authenticates is answered 403 naming its subject and issuer, which
/// shows how the token was mapped without needing a registry.
struct Rise {
    app: Router,
    auth: Arc<Authenticator>,
    _dir: tempfile::TempDir,
}

/// How the `oidc` issuer is configured.
struct IssuerSetup<'a> {
    issuer: &'a str,
    jwks_uri: Option<String>,
    refresh_floor: &'a str,
}

impl Rise {
    async fn start(setup: IssuerSetup<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let jwks_uri = setup
            .jwks_uri
            .map(|uri| format!("jwks_uri = {}\n", toml_string(&uri)))
            .unwrap_or_default();
        let config_text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
data_dir = {data_dir}

[auth]
leeway = "30s"

[auth.local]
enabled = false

[auth.issuers.oidc]
issuer = {issuer}
audience = "rise"
insecure_http = true
jwks_refresh_floor = {floor}
{jwks_uri}
[registry]
type = "distribution"
url = "127.0.0.1:5000"

[projects.my-app]

[[projects.my-app.allow]]
issuer = "oidc"
subject = "alice"
actions = ["pull"]
"#,
            data_dir = toml_string(&dir.path().display().to_string()),
            issuer = toml_string(setup.issuer),
            floor = toml_string(setup.refresh_floor),
        );
        let path = dir.path().join("rise.toml");
        std::fs::write(&path, config_text).expect("writing the config");
        let config = Config::load(&Sources {
            files: vec![path],
            env: Vec::new(),
        })
        .expect("valid config");
        let auth = Arc::new(
            Authenticator::from_config(&config.auth, None)
                .await
                .expect("authenticator"),
        );
        let state = AppState {
            auth: Arc::clone(&auth),
            policy: Arc::new(Policy::from_config(&config).expect("policy")),
            registries: Arc::new(HashMap::new()),
            default_ttl: std::time::Duration::from_secs(3600),
            audit: rise_backend::audit::AuditLog::start(
                rise_backend::store::Store::open_sqlite(&dir.path().join("rise.db"), true)
                    .await
                    .expect("audit store"),
                rise_backend::audit::AuditSettings::default(),
            ),
            rate_limits: Arc::new(rise_backend::http::RateLimits::disabled()),
            body_deadline: std::time::Duration::from_secs(10),
            token_service: None,
            auth_meta: Arc::new(rise_backend::http::meta::AuthMeta::from_config(
                &config.auth,
            )),
        };
        Rise {
            app: rise_backend::http::app(state),
            auth,
            _dir: dir,
        }
    }

    /// `GET /registry/credentials?project=my-app` with `token`: status and JSON body.
    async fn credentials(&self, token: &str) -> (StatusCode, Value) {
        let request = Request::get("/registry/credentials?project=my-app")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&body)));
        (status, json)
    }

    /// Assert the token authenticated as `ci-app` of issuer `oidc`.
    #[track_caller]
    fn assert_authenticated((status, body): (StatusCode, Value)) {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"], "forbidden", "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("subject ci-app (issuer oidc)"),
            "{message}"
        );
    }

    #[track_caller]
    fn assert_refused(
        (status, body): (StatusCode, Value),
        expected_status: StatusCode,
        code: &str,
    ) {
        assert_eq!(status, expected_status, "{body}");
        assert_eq!(body["error"], code, "{body}");
    }
}

fn toml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// `token` with its header's `kid` replaced (the signature no longer matters: the key lookup
/// fails first).
fn with_kid(token: &str, kid: &str) -> String {
    let (header, _) = decode_jwt(token);
    let mut header = header;
    header["kid"] = json!(kid);
    let rest = token.split_once('.').map(|(_, rest)| rest).expect("a JWT");
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

#[tokio::test]
async fn every_algorithm_of_the_provider_is_accepted() {
    let oidc = OidcProvider::start().await;
    let rise = Rise::start(IssuerSetup {
        issuer: oidc.issuer(),
        jwks_uri: None,
        refresh_floor: "30s",
    })
    .await;
    for (resource, alg) in [
        ("rise", "RS256"),
        ("rise-es256", "ES256"),
        ("rise-eddsa", "EdDSA"),
    ] {
        let token = oidc.client_credentials_token("ci-app", resource).await;
        assert_eq!(decode_jwt(&token).0["alg"], alg);
        Rise::assert_authenticated(rise.credentials(&token).await);
        let principal = rise.auth.verify(&token).await.expect("valid token");
        assert_eq!(principal.issuer, "oidc");
        assert_eq!(principal.issuer_url, oidc.issuer());
        assert_eq!(principal.subject, "ci-app");
        assert_eq!(principal.groups, ["ci"]);
        assert_eq!(principal.claims["client_id"], "ci-app");
    }
}

/// The characters a compact JWS is written in, with the separator.
const JWS_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

#[tokio::test]
async fn no_one_character_change_to_a_valid_token_is_accepted() {
    let oidc = OidcProvider::start().await;
    let rise = Rise::start(IssuerSetup {
        issuer: oidc.issuer(),
        jwks_uri: None,
        refresh_floor: "1h",
    })
    .await;
    for resource in ["rise", "rise-es256", "rise-eddsa"] {
        let token = oidc.client_credentials_token("ci-app", resource).await;
        let alg = decode_jwt(&token).0["alg"].clone();
        Rise::assert_authenticated(rise.credentials(&token).await);
        // Every position, each changed to another character of the alphabet (a different one
        // per position, so every kind of change is tried somewhere): header, claims, the
        // separators, and the signature's last character, whose low bits are padding.
        let mut refusals: HashMap<String, usize> = HashMap::new();
        for (i, original) in token.bytes().enumerate() {
            let at = JWS_CHARS
                .iter()
                .position(|&c| c == original)
                .expect("JWS char");
            let replacement = JWS_CHARS[(at + 1 + i % (JWS_CHARS.len() - 1)) % JWS_CHARS.len()];
            assert_ne!(replacement, original);
            let mut mutated = token.clone().into_bytes();
            mutated[i] = replacement;
            let mutated = String::from_utf8(mutated).expect("ASCII");
            let (status, body) = rise.credentials(&mutated).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{alg} token with position {i} of {} changed from {:?} to {:?} was not refused: {body}",
                token.len(),
                original as char,
                replacement as char
            );
            let code = body["error"].as_str().expect("an error code").to_owned();
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            *refusals.entry(code).or_default() += 1;
        }
        // The signature's last character carries 4 padding bits of its 6 (256- and 64-byte
        // signatures leave one byte for the last two characters): 15 others decode to the same
        // signature under a lenient decoder, and are refused all the same. All 64 others (the
        // alphabet and the separator) are tried.
        let last = token.len() - 1;
        for &replacement in JWS_CHARS.iter().filter(|&&c| c != token.as_bytes()[last]) {
            let mutated = format!("{}{}", &token[..last], replacement as char);
            let (status, body) = rise.credentials(&mutated).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{alg} token ending in {:?} instead was not refused: {body}",
                replacement as char
            );
        }
        // Changes to the signature are caught by the signature check, not by something before.
        assert!(
            refusals.get("bad_signature").copied().unwrap_or(0) > 40,
            "{alg}: {refusals:?}"
        );
        // The original is still good: nothing above poisoned a cache.
        Rise::assert_authenticated(rise.credentials(&token).await);
    }
}

#[tokio::test]
async fn wrong_audience_and_unknown_issuer_are_refused() {
    let oidc = OidcProvider::start().await;
    let rise = Rise::start(IssuerSetup {
        issuer: oidc.issuer(),
        jwks_uri: None,
        refresh_floor: "30s",
    })
    .await;
    let token = oidc
        .client_credentials_token("ci-app", "other-audience")
        .await;
    Rise::assert_refused(
        rise.credentials(&token).await,
        StatusCode::UNAUTHORIZED,
        "wrong_audience",
    );
    // A second, equally real provider that Rise does not trust.
    let stranger = OidcProvider::start().await;
    let token = stranger.client_credentials_token("ci-app", "rise").await;
    Rise::assert_refused(
        rise.credentials(&token).await,
        StatusCode::UNAUTHORIZED,
        "unknown_issuer",
    );
}

#[tokio::test]
async fn key_rotation_is_picked_up_without_a_restart() {
    let oidc = OidcProvider::start().await;
    let proxy = RecordingProxy::start(oidc.issuer()).await;
    let rise = Rise::start(IssuerSetup {
        issuer: oidc.issuer(),
        jwks_uri: Some(format!("{}/jwks", proxy.url())),
        refresh_floor: "0s",
    })
    .await;
    let before = oidc.client_credentials_token("ci-app", "rise-es256").await;
    Rise::assert_authenticated(rise.credentials(&before).await);
    let fetches = proxy.count("/jwks");
    assert!(fetches >= 1, "keys were fetched");

    let new_kids = oidc.rotate_keys().await;
    let after = oidc.client_credentials_token("ci-app", "rise-es256").await;
    let kid = decode_jwt(&after).0["kid"].as_str().map(str::to_owned);
    assert!(
        kid.as_ref().is_some_and(|k| new_kids.contains(k)),
        "{kid:?} not in {new_kids:?}"
    );
    Rise::assert_authenticated(rise.credentials(&after).await);
    assert_eq!(
        proxy.count("/jwks"),
        fetches + 1,
        "one refetch for the new kid"
    );
    // The old keys are no longer published: tokens they signed stop verifying, even though the
    // old token was verified (and cached) before.
    Rise::assert_refused(
        rise.credentials(&before).await,
        StatusCode::UNAUTHORIZED,
        "unknown_key",
    );
}

fn random_kid() -> String {
    format!("random-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once() {
    let oidc = OidcProvider::start().await;
    let proxy = RecordingProxy::start(oidc.issuer()).await;
    let rise = Arc::new(
        Rise::start(IssuerSetup {
            issuer: oidc.issuer(),
            jwks_uri: Some(format!("{}/jwks", proxy.url())),
            refresh_floor: "300s",
        })
        .await,
    );
    let token = oidc.client_credentials_token("ci-app", "rise").await;
    Rise::assert_authenticated(rise.credentials(&token).await);
    let fetches = proxy.count("/jwks");
    assert!(fetches >= 1, "keys were fetched");

    // A concurrent burst (single flight) and then a sequential trickle (the refresh floor).
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let rise = Arc::clone(&rise);
            let token = with_kid(&token, &random_kid());
            tokio::spawn(async move { rise.credentials(&token).await })
        })
        .collect();
    for request in burst {
        Rise::assert_refused(
            request.await.expect("request task"),
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        );
    }
    for _ in 0..20 {
        Rise::assert_refused(
            rise.credentials(&with_kid(&token, &random_kid())).await,
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        );
    }
    let total = proxy.count("/jwks");
    assert!(
        total <= 2,
        "{total} JWKS fetches in all, {fetches} before 70 tokens with unknown kids"
    );
    // The genuine token is unaffected.
    Rise::assert_authenticated(rise.credentials(&token).await);
}

#[tokio::test]
async fn tokens_of_a_stopped_issuer_verify_from_cached_keys() {
    let oidc = OidcProvider::start().await;
    let issuer = oidc.issuer().to_owned();
    let rise = Rise::start(IssuerSetup {
        issuer: &issuer,
        jwks_uri: None,
        refresh_floor: "0s",
    })
    .await;
    let first = oidc.client_credentials_token("ci-app", "rise").await;
    let second = oidc.client_credentials_token("ci-app", "rise-eddsa").await;
    Rise::assert_authenticated(rise.credentials(&first).await);
    drop(oidc);

    // `second` was never verified, so this is a real signature check with the cached keys.
    Rise::assert_authenticated(rise.credentials(&second).await);
    // A kid the cache lacks: the refetch fails, but keys are cached, so this is the caller's
    // unknown key, not an outage.
    Rise::assert_refused(
        rise.credentials(&with_kid(&second, "never-published"))
            .await,
        StatusCode::UNAUTHORIZED,
        "unknown_key",
    );

    // A Rise that never saw the keys cannot verify anything: 503, not 401.
    let cold = Rise::start(IssuerSetup {
        issuer: &issuer,
        jwks_uri: None,
        refresh_floor: "0s",
    })
    .await;
    Rise::assert_refused(
        cold.credentials(&second).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "issuer_unavailable",
    );
    assert_eq!(
        cold.auth.verify(&second).await,
        Err(AuthError::IssuerUnavailable("oidc".into()))
    );
}
