//! The rejection matrix, with keys generated here; and the JWKS refresh rules against a small
//! in-test JWKS server (the real oidc-provider is exercised in `tests/it/auth.rs`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::config::LocalIssuerConfig;

const NOW: i64 = 1_700_000_000;
const CORP: &str = "https://idp.corp.example";
const WIDE: &str = "https://wide.example";

struct TestKeys {
    rsa: EncodingKey,
    rsa_public_pem: String,
    ec: EncodingKey,
    other_ec: EncodingKey,
    ec384: EncodingKey,
    ed: EncodingKey,
    /// rcgen writes PKCS#8 v2 Ed25519 keys, which `Jwk::from_encoding_key` does not read.
    ed_public: Vec<u8>,
}

/// Generated once per test process: RSA generation is slow in debug builds.
fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key");
        let ec = |alg| {
            let kp = rcgen::KeyPair::generate_for(alg).expect("EC key");
            EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("EC PEM")
        };
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        TestKeys {
            rsa: EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("RSA PEM"),
            rsa_public_pem: rsa.public_key_pem(),
            ec: ec(&rcgen::PKCS_ECDSA_P256_SHA256),
            other_ec: ec(&rcgen::PKCS_ECDSA_P256_SHA256),
            ec384: ec(&rcgen::PKCS_ECDSA_P384_SHA384),
            ed: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("Ed PEM"),
            ed_public: ed.public_key_raw().to_vec(),
        }
    })
}

/// A public JWK for `key` under `kid`; with the JWK `alg` member unless `with_alg` is false.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, with_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    let mut value = serde_json::to_value(jwk).expect("JWK serializes");
    if !with_alg && let Some(obj) = value.as_object_mut() {
        obj.remove("alg");
    }
    value
}

fn corp_jwks() -> Value {
    let k = keys();
    json!({"keys": [
        jwk(&k.rsa, Algorithm::RS256, "rsa", true),
        jwk(&k.ec, Algorithm::ES256, "ec", true),
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
               "x": URL_SAFE_NO_PAD.encode(&k.ed_public)}),
    ]})
}

fn fixed_issuer(name: &str, iss: &str, jwks: &Value, algorithms: &[Algorithm]) -> Issuer {
    let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes()).expect("JWKS parses");
    assert!(skipped.is_empty(), "{skipped:?}");
    Issuer {
        name: name.to_owned(),
        iss: iss.to_owned(),
        audience: "rise".to_owned(),
        subject_claim: "sub".to_owned(),
        groups_claim: "groups".to_owned(),
        algorithms: algorithms.to_vec(),
        keys: Keys::Fixed(set),
        max_lifetime: Duration::from_secs(24 * 3600),
    }
}

/// `corp`: the default algorithms plus RS512, JWKs carrying `alg`. `wide`: every algorithm,
/// JWKs without `alg`, so only the key type constrains the algorithm.
fn authenticator() -> Authenticator {
    let k = keys();
    let mut corp_algorithms = DEFAULT_ALGORITHMS.to_vec();
    corp_algorithms.push(Algorithm::RS512);
    let wide_jwks = json!({"keys": [
        jwk(&k.rsa, Algorithm::RS256, "rsa", false),
        jwk(&k.ec384, Algorithm::ES384, "ec384", false),
    ]});
    let wide_algorithms = ["RS256", "RS384", "RS512", "PS256", "ES384"]
        .map(|a| asymmetric_algorithm(a).expect("supported"));
    Authenticator::new(
        vec![
            fixed_issuer("corp", CORP, &corp_jwks(), &corp_algorithms),
            fixed_issuer("wide", WIDE, &wide_jwks, &wide_algorithms),
        ],
        Duration::from_secs(60),
    )
    .expect("distinct issuers")
}

fn claims() -> Value {
    json!({
        "iss": CORP,
        "aud": "rise",
        "sub": "alice",
        "groups": ["devs"],
        "iat": NOW,
        "exp": NOW + 300,
    })
}

/// `claims()` with `changes` applied; a `null` removes the claim.
fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    if let (Some(obj), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (k, v) in changes {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signs")
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, &keys().rsa, Some("rsa"), claims)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Expect a principal with this subject, or exactly this error (for `MalformedToken`, only the
/// variant: its message is prose).
#[track_caller]
fn check_with(auth: &Authenticator, token: &str, now: i64, expect: Result<&str, AuthError>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let got = runtime.block_on(auth.verify_at(token, now));
    match (&got, &expect) {
        (Ok(p), Ok(subject)) => assert_eq!(p.subject, *subject),
        (Err(AuthError::MalformedToken(_)), Err(AuthError::MalformedToken(_))) => {}
        (Err(e), Err(expected)) => assert_eq!(e, expected),
        _ => panic!("got {got:?}, expected {expect:?}"),
    }
}

#[track_caller]
fn check(token: &str, expect: Result<&str, AuthError>) {
    check_with(&authenticator(), token, NOW, expect);
}

fn malformed() -> Result<&'static str, AuthError> {
    Err(AuthError::MalformedToken(String::new()))
}

fn not_allowed(alg: &str) -> Result<&'static str, AuthError> {
    Err(AuthError::AlgorithmNotAllowed(alg.to_owned()))
}

#[test]
fn accepted_algorithms() {
    let k = keys();
    check(&rs256(&claims()), Ok("alice"));
    check(
        &sign(Algorithm::ES256, &k.ec, Some("ec"), &claims()),
        Ok("alice"),
    );
    check(
        &sign(Algorithm::EdDSA, &k.ed, Some("ed"), &claims()),
        Ok("alice"),
    );
    let wide = claims_with(json!({"iss": WIDE}));
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        check(&sign(alg, &k.rsa, Some("rsa"), &wide), Ok("alice"));
    }
    check(
        &sign(Algorithm::ES384, &k.ec384, Some("ec384"), &wide),
        Ok("alice"),
    );
}

#[test]
fn algorithm_rejections() {
    let k = keys();
    let header = |v: Value| format!("{}.{}.", b64(&v), b64(&claims()));
    // `alg: none`, with and without a signature part.
    check(
        &header(json!({"alg": "none", "kid": "rsa"})),
        not_allowed("none"),
    );
    check(
        &format!("{}sig", header(json!({"alg": "none"}))),
        not_allowed("none"),
    );
    check(&header(json!({"alg": "None"})), not_allowed("None"));
    check(&header(json!({"alg": "XYZ512"})), not_allowed("XYZ512"));
    // Algorithm confusion: HS256 keyed with the issuer's RSA public key, as an attacker would.
    let confused = EncodingKey::from_secret(k.rsa_public_pem.as_bytes());
    check(
        &sign(Algorithm::HS256, &confused, Some("rsa"), &claims()),
        not_allowed("HS256"),
    );
    check(
        &sign(Algorithm::HS512, &confused, None, &claims()),
        not_allowed("HS512"),
    );
    // The key type dictates the algorithm: an RS256 header naming the EC key.
    check(
        &sign(Algorithm::RS256, &k.rsa, Some("ec"), &claims()),
        not_allowed("RS256"),
    );
    // The JWK says RS256; the header says RS512 (which the issuer does allow in general).
    check(
        &sign(Algorithm::RS512, &k.rsa, Some("rsa"), &claims()),
        not_allowed("RS512"),
    );
    // Not in the issuer's `algorithms`.
    check(
        &sign(Algorithm::RS384, &k.rsa, Some("rsa"), &claims()),
        not_allowed("RS384"),
    );
    check(
        &sign(Algorithm::ES384, &k.ec384, Some("ec"), &claims()),
        not_allowed("ES384"),
    );
}

#[test]
fn key_and_signature_rejections() {
    let k = keys();
    check(
        &sign(Algorithm::ES256, &k.ec, Some("nope"), &claims()),
        Err(AuthError::UnknownKey("nope".into())),
    );
    // No kid while the issuer publishes three keys.
    check(&sign(Algorithm::ES256, &k.ec, None, &claims()), malformed());
    // Signed by another key under the issuer's kid.
    check(
        &sign(Algorithm::ES256, &k.other_ec, Some("ec"), &claims()),
        Err(AuthError::BadSignature),
    );
    // A genuine signature over a different payload.
    let genuine = rs256(&claims());
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let forged_payload = b64(&claims_with(json!({"sub": "mallory"})));
    parts[1] = &forged_payload;
    check(&parts.join("."), Err(AuthError::BadSignature));
    // A signature that is not base64url at all.
    check(
        &format!("{}.{}.!!!", parts[0], b64(&claims())),
        Err(AuthError::BadSignature),
    );
}

#[test]
fn issuer_routing() {
    check(
        &rs256(&claims_with(json!({"iss": "https://evil.example"}))),
        Err(AuthError::UnknownIssuer("https://evil.example".into())),
    );
    check(
        &rs256(&claims_with(json!({"iss": null}))),
        Err(AuthError::MissingClaim("iss".into())),
    );
    check(&rs256(&claims_with(json!({"iss": 7}))), malformed());
    // The issuer named in `iss` must also be the one whose key signed.
    let k = keys();
    check(
        &sign(
            Algorithm::ES384,
            &k.ec384,
            Some("ec384"),
            &claims_with(json!({"iss": CORP})),
        ),
        not_allowed("ES384"),
    );
    check(
        &sign(
            Algorithm::ES256,
            &k.ec,
            Some("ec"),
            &claims_with(json!({"iss": WIDE})),
        ),
        not_allowed("ES256"),
    );
}

#[test]
fn time_rejections() {
    let c = |changes| rs256(&claims_with(changes));
    check(&c(json!({"exp": NOW - 120})), Err(AuthError::Expired));
    check(&c(json!({"exp": NOW - 60})), Err(AuthError::Expired));
    check(&c(json!({"exp": NOW - 30})), Ok("alice"));
    check(&c(json!({"exp": NOW as f64 + 10.5})), Ok("alice"));
    check(
        &c(json!({"exp": null})),
        Err(AuthError::MissingClaim("exp".into())),
    );
    check(&c(json!({"exp": "tomorrow"})), malformed());
    check(&c(json!({"exp": 1e300})), malformed());
    check(&c(json!({"nbf": NOW + 120})), Err(AuthError::NotYetValid));
    check(&c(json!({"nbf": NOW + 30})), Ok("alice"));
    check(&c(json!({"nbf": "soon"})), malformed());
    check(&c(json!({"iat": NOW + 3600})), Err(AuthError::NotYetValid));
    check(&c(json!({"iat": null})), Ok("alice"));
    // Valid for longer than the issuer's max_token_lifetime (24 h here, with the 60 s leeway).
    let day = 24 * 3600;
    check(&c(json!({"exp": NOW + day + 60})), Ok("alice"));
    check(
        &c(json!({"exp": NOW + day + 61})),
        Err(AuthError::LifetimeTooLong("1day".into())),
    );
    check(
        &c(json!({"exp": i64::MAX})),
        Err(AuthError::LifetimeTooLong("1day".into())),
    );
}

#[test]
fn audience_and_claim_rejections() {
    let c = |changes| rs256(&claims_with(changes));
    let wrong = || {
        Err(AuthError::WrongAudience {
            expected: "rise".into(),
        })
    };
    check(&c(json!({"aud": "other"})), wrong());
    check(&c(json!({"aud": ["other"]})), wrong());
    check(&c(json!({"aud": []})), wrong());
    check(&c(json!({"aud": null})), wrong());
    check(&c(json!({"aud": 1})), wrong());
    check(&c(json!({"aud": ["other", "rise"]})), Ok("alice"));
    check(
        &c(json!({"sub": null})),
        Err(AuthError::MissingClaim("sub".into())),
    );
    check(
        &c(json!({"sub": ""})),
        Err(AuthError::MissingClaim("sub".into())),
    );
    check(&c(json!({"sub": 42})), Ok("42"));
    for sub in [
        "mallory\n2026-01-01T00:00:00Z  INFO forged",
        "a\u{0}b",
        "tab\there",
        "line\u{2028}separator",
        "admin\u{202E}nimda",
    ] {
        check(
            &c(json!({ "sub": sub })),
            Err(AuthError::MalformedToken(
                "claim `sub` contains control characters".into(),
            )),
        );
    }
    check(
        &c(json!({"groups": ["ok", "bad\r\nline"]})),
        Err(AuthError::MalformedToken(
            "claim `groups` contains control characters".into(),
        )),
    );
    check(&c(json!({"groups": "admins"})), Ok("alice"));
    check(&c(json!({"groups": ["a", 1]})), malformed());
    check(&c(json!({"groups": {"a": 1}})), malformed());
}

#[test]
fn malformed_tokens() {
    let genuine = rs256(&claims());
    let (head, _) = genuine.split_once('.').expect("three parts");
    check("", malformed());
    check("abc", malformed());
    check("a.b", malformed());
    check("a.b.c.d", malformed());
    check("a.b.c.d.e", malformed());
    check("!!.!!.!!", malformed());
    check(&format!("{head}.!!.sig"), malformed());
    check(&format!("{head}.{}.sig", b64(&json!([1, 2]))), malformed());
    check(
        &format!("{}.{}.sig", b64(&json!({"kid": "rsa"})), b64(&claims())),
        malformed(),
    );
    check(&"a".repeat(MAX_TOKEN_BYTES + 1), malformed());
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".into());
    header.crit = Some(vec!["exp".into()]);
    let crit = jsonwebtoken::encode(&header, &claims(), &keys().rsa).expect("signs");
    check(&crit, malformed());
    // `crit` must be a non-empty array when present (RFC 7515 §4.1.11): any value is refused,
    // null and [] included.
    for crit in [json!(null), json!([])] {
        let head = b64(&json!({"alg": "RS256", "kid": "rsa", "crit": crit}));
        let signing_input = format!("{head}.{}", b64(&claims()));
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &keys().rsa, Algorithm::RS256)
                .expect("signs");
        check(&format!("{signing_input}.{signature}"), malformed());
    }
}

#[test]
fn error_messages_do_not_echo_long_attacker_input() {
    let long = "x".repeat(10_000);
    let token = rs256(&claims_with(json!({"iss": long})));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let err = runtime
        .block_on(authenticator().verify_at(&token, NOW))
        .expect_err("unknown issuer");
    assert!(err.to_string().len() < 200, "{err}");
    assert!(!err.to_string().contains(&token));
}

#[test]
fn principal_carries_issuer_name_url_and_all_claims() {
    let token = rs256(&claims_with(
        json!({"groups": "admins", "repo": "org/app", "exp": NOW + 100}),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let p = runtime
        .block_on(authenticator().verify_at(&token, NOW))
        .expect("valid");
    assert_eq!(p.issuer, "corp");
    assert_eq!(p.issuer_url, CORP);
    assert_eq!(p.groups, ["admins"]);
    assert_eq!(p.claims.get("repo"), Some(&json!("org/app")));
    assert_eq!(
        p.expires_at,
        UNIX_EPOCH + Duration::from_secs((NOW + 100) as u64)
    );
}

#[test]
fn claim_mapping_is_per_issuer() {
    let mut issuer = fixed_issuer("corp", CORP, &corp_jwks(), &DEFAULT_ALGORITHMS);
    issuer.subject_claim = "email".into();
    issuer.groups_claim = "roles".into();
    let auth = Authenticator::new(vec![issuer], Duration::from_secs(60)).expect("one issuer");
    let token = rs256(&claims_with(
        json!({"email": "alice@corp.example", "roles": ["ops"]}),
    ));
    check_with(&auth, &token, NOW, Ok("alice@corp.example"));
    check_with(
        &auth,
        &rs256(&claims()),
        NOW,
        Err(AuthError::MissingClaim("email".into())),
    );
}

#[test]
fn verified_cache_rechecks_the_time_window() {
    let auth = authenticator();
    let token = rs256(&claims_with(json!({"nbf": NOW})));
    check_with(&auth, &token, NOW, Ok("alice"));
    check_with(&auth, &token, NOW + 100, Ok("alice"));
    // Past exp + leeway: the cached entry must not be served.
    check_with(&auth, &token, NOW + 360, Err(AuthError::Expired));
    // The clock went back before nbf - leeway.
    let auth = authenticator();
    check_with(&auth, &token, NOW, Ok("alice"));
    check_with(&auth, &token, NOW - 120, Err(AuthError::NotYetValid));
}

#[test]
fn duplicate_issuer_urls_are_refused() {
    let a = fixed_issuer("a", CORP, &corp_jwks(), &DEFAULT_ALGORITHMS);
    let b = fixed_issuer("b", CORP, &corp_jwks(), &DEFAULT_ALGORITHMS);
    let err = Authenticator::new(vec![a, b], Duration::ZERO)
        .expect_err("ambiguous")
        .to_string();
    assert!(err.contains("both have issuer URL"), "{err}");
}

fn local_config() -> LocalIssuerConfig {
    LocalIssuerConfig {
        enabled: true,
        issuer: "rise-local".into(),
        audience: "rise".into(),
        max_ttl: Duration::from_secs(3600),
    }
}

fn auth_config(issuers: BTreeMap<String, OidcIssuerConfig>) -> AuthConfig {
    AuthConfig {
        leeway: Duration::from_secs(60),
        local: local_config(),
        issuers,
        login_issuer: None,
    }
}

use std::collections::BTreeMap;

#[tokio::test]
async fn local_issuer_tokens_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = LocalIssuer::load_or_create(dir.path(), &local_config()).expect("key");
    let token = local
        .issue("alice", &["devs".into()], Duration::from_secs(600))
        .expect("issued");
    let auth = Authenticator::from_config(&auth_config(BTreeMap::new()), Some(local))
        .await
        .expect("config");
    let p = auth.verify(&token).await.expect("valid");
    assert_eq!(
        (p.issuer.as_str(), p.issuer_url.as_str(), p.subject.as_str()),
        ("local", "rise-local", "alice")
    );
    assert_eq!(p.groups, ["devs"]);
    for claim in ["iat", "nbf", "exp", "jti", "aud"] {
        assert!(p.claims.contains_key(claim), "{claim} missing");
    }
    // A second process loading the same data dir verifies the first one's tokens.
    let again = LocalIssuer::load_or_create(dir.path(), &local_config()).expect("key");
    let auth = Authenticator::from_config(&auth_config(BTreeMap::new()), Some(again))
        .await
        .expect("config");
    auth.verify(&token).await.expect("same key");
    // A token minted with another data directory's key: the error says where the key lives.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other = LocalIssuer::load_or_create(elsewhere.path(), &local_config()).expect("key");
    let foreign = other
        .issue("alice", &[], Duration::from_secs(600))
        .expect("issued");
    let refused = auth.verify(&foreign).await.expect_err("another key");
    assert!(
        matches!(refused, AuthError::UnknownLocalKey(_)),
        "{refused:?}"
    );
    assert_eq!(refused.code(), "unknown_key");
    assert!(refused.to_string().contains("data directory"), "{refused}");
    // Without the local issuer, its tokens are from an unknown issuer.
    let auth = Authenticator::from_config(&auth_config(BTreeMap::new()), None)
        .await
        .expect("config");
    assert_eq!(
        auth.verify(&token).await,
        Err(AuthError::UnknownIssuer("rise-local".into()))
    );
}

// --- JWKS fetching and refresh, against an in-test JWKS server ---

/// A minimal OIDC issuer: discovery and JWKS, with switchable keys and availability.
struct FakeIdp {
    base: String,
    jwks: std::sync::Mutex<Value>,
    jwks_hits: AtomicU64,
    up: AtomicBool,
    discovery_issuer: std::sync::Mutex<Option<String>>,
}

impl FakeIdp {
    async fn start(jwks: Value) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let idp = Arc::new(FakeIdp {
            base,
            jwks: std::sync::Mutex::new(jwks),
            jwks_hits: AtomicU64::new(0),
            up: AtomicBool::new(true),
            discovery_issuer: std::sync::Mutex::new(None),
        });
        let state = Arc::clone(&idp);
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(
                    |axum::extract::State(idp): axum::extract::State<Arc<FakeIdp>>| async move {
                        if !idp.up.load(Ordering::SeqCst) {
                            return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                        }
                        let issuer = idp
                            .discovery_issuer
                            .lock()
                            .expect("lock")
                            .clone()
                            .unwrap_or_else(|| idp.base.clone());
                        Ok(axum::Json(
                            json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", idp.base)}),
                        ))
                    },
                ),
            )
            .route(
                "/jwks",
                axum::routing::get(
                    |axum::extract::State(idp): axum::extract::State<Arc<FakeIdp>>| async move {
                        idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
                        if !idp.up.load(Ordering::SeqCst) {
                            return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                        }
                        Ok(axum::Json(idp.jwks.lock().expect("lock").clone()))
                    },
                ),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        idp
    }

    fn hits(&self) -> u64 {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().expect("lock") = jwks;
    }

    fn config(&self, floor: Duration, ttl: Duration) -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: self.base.clone(),
            audience: "rise".into(),
            jwks_uri: None,
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            algorithms: None,
            jwks_cache_ttl: ttl,
            jwks_refresh_floor: floor,
            max_token_lifetime: Duration::from_secs(24 * 3600),
            client_id: None,
            login_scopes: None,
            insecure_http: true,
        }
    }

    async fn authenticator(&self, floor: Duration, ttl: Duration) -> Authenticator {
        let issuers = BTreeMap::from([("corp".to_owned(), self.config(floor, ttl))]);
        Authenticator::from_config(&auth_config(issuers), None)
            .await
            .expect("config")
    }

    fn token(&self, key: &EncodingKey, kid: &str) -> String {
        let claims = json!({
            "iss": self.base, "aud": "rise", "sub": "alice",
            "exp": unix_now() + 300, "jti": uuid::Uuid::new_v4().to_string(),
        });
        sign(Algorithm::ES256, key, Some(kid), &claims)
    }
}

const LONG: Duration = Duration::from_secs(3600);

fn ec_jwks(kid: &str, key: &EncodingKey) -> Value {
    json!({"keys": [jwk(key, Algorithm::ES256, kid, true)]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_costs_one_fetch() {
    let k = keys();
    let idp = FakeIdp::start(ec_jwks("ec", &k.ec)).await;
    let auth = Arc::new(idp.authenticator(Duration::from_secs(30), LONG).await);
    auth.verify(&idp.token(&k.ec, "ec")).await.expect("valid");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let auth = Arc::clone(&auth);
            let token = idp.token(&k.ec, &format!("random-{i}-{}", uuid::Uuid::new_v4()));
            tokio::spawn(async move { auth.verify(&token).await })
        })
        .collect();
    for task in tasks {
        let result = task.await.expect("task");
        assert!(
            matches!(result, Err(AuthError::UnknownKey(_))),
            "{result:?}"
        );
    }
    assert_eq!(
        idp.hits(),
        1,
        "the warm-up fetch only; the floor forbids more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let k = keys();
    // Start with a key set that lacks the token's key; every request misses at once.
    let idp = FakeIdp::start(json!({"keys": []})).await;
    idp.up.store(false, Ordering::SeqCst);
    let auth = Arc::new(idp.authenticator(Duration::ZERO, LONG).await);
    let token = idp.token(&k.ec, "ec");
    assert_eq!(
        auth.verify(&token).await,
        Err(AuthError::IssuerUnavailable("corp".into()))
    );
    idp.set_jwks(ec_jwks("ec", &k.ec));
    idp.up.store(true, Ordering::SeqCst);
    let before = idp.hits();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let auth = Arc::clone(&auth);
            let token = idp.token(&k.ec, "ec");
            tokio::spawn(async move { auth.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("valid once fetched");
    }
    assert_eq!(idp.hits() - before, 1, "one fetch served all 50 misses");
}

#[tokio::test]
async fn rotation_is_picked_up_and_withdrawn_keys_stop_verifying() {
    let k = keys();
    let idp = FakeIdp::start(ec_jwks("old", &k.ec)).await;
    let auth = idp.authenticator(Duration::ZERO, LONG).await;
    let old = idp.token(&k.ec, "old");
    auth.verify(&old).await.expect("old key");
    idp.set_jwks(ec_jwks("new", &k.other_ec));
    auth.verify(&idp.token(&k.other_ec, "new"))
        .await
        .expect("new kid triggers a refetch");
    // The old token was verified (and cached) under the old key set; it must not be served.
    assert_eq!(
        auth.verify(&old).await,
        Err(AuthError::UnknownKey("old".into()))
    );
}

#[tokio::test]
async fn cached_keys_survive_an_outage() {
    let k = keys();
    let idp = FakeIdp::start(ec_jwks("ec", &k.ec)).await;
    let auth = idp.authenticator(Duration::ZERO, Duration::ZERO).await;
    auth.verify(&idp.token(&k.ec, "ec")).await.expect("valid");
    idp.up.store(false, Ordering::SeqCst);
    // A fresh token (not in the verified cache) still verifies; refreshes fail meanwhile.
    auth.verify(&idp.token(&k.ec, "ec"))
        .await
        .expect("cached keys");
    // An unknown kid while keys are cached is the caller's problem, not an outage.
    assert_eq!(
        auth.verify(&idp.token(&k.ec, "other")).await,
        Err(AuthError::UnknownKey("other".into()))
    );
    auth.verify(&idp.token(&k.ec, "ec"))
        .await
        .expect("still cached");
}

/// Wait (bounded) until no background refresh runs and the fetch count is stable.
async fn settle(auth: &Authenticator, idp: &FakeIdp) -> u64 {
    let Keys::Remote(remote) = &auth.issuers[0].keys else {
        panic!("a remote issuer");
    };
    for _ in 0..500 {
        let hits = idp.hits();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !remote.background_refresh_running() && idp.hits() == hits {
            return hits;
        }
    }
    panic!("background refreshes never settled");
}

#[tokio::test]
async fn stale_keys_are_refreshed_in_the_background() {
    let k = keys();
    let idp = FakeIdp::start(ec_jwks("ec", &k.ec)).await;
    let auth = idp.authenticator(Duration::ZERO, Duration::ZERO).await;
    let token = idp.token(&k.ec, "ec");
    auth.verify(&token).await.expect("valid");
    let before = settle(&auth, &idp).await;
    // The refreshes returned the same JWKS, so the token is still a verified-cache hit...
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let cached_generation = auth
        .verified
        .entries
        .read()
        .expect("lock")
        .get(&digest)
        .map(|v| v.generation);
    assert_eq!(
        cached_generation,
        Some(auth.issuers[0].generation_for_reuse())
    );
    // ...and reusing it notices the stale keys like a fresh verification would.
    auth.verify(&token).await.expect("valid");
    assert!(settle(&auth, &idp).await > before, "no refresh on reuse");
    let before = idp.hits();
    auth.verify(&idp.token(&k.ec, "ec")).await.expect("valid");
    assert!(
        settle(&auth, &idp).await > before,
        "no refresh on a new token"
    );
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let k = keys();
    let idp = FakeIdp::start(ec_jwks("ec", &k.ec)).await;
    *idp.discovery_issuer.lock().expect("lock") = Some("https://impostor.example".into());
    let auth = idp.authenticator(Duration::ZERO, LONG).await;
    assert_eq!(
        auth.verify(&idp.token(&k.ec, "ec")).await,
        Err(AuthError::IssuerUnavailable("corp".into()))
    );
    assert_eq!(idp.hits(), 0, "the JWKS of an impostor is never fetched");
}

#[tokio::test]
async fn oversized_jwks_is_refused() {
    let k = keys();
    let padding = "x".repeat(300 * 1024);
    let mut jwks = ec_jwks("ec", &k.ec);
    jwks["padding"] = json!(padding);
    let idp = FakeIdp::start(jwks).await;
    let auth = idp.authenticator(Duration::ZERO, LONG).await;
    assert_eq!(
        auth.verify(&idp.token(&k.ec, "ec")).await,
        Err(AuthError::IssuerUnavailable("corp".into()))
    );
}

#[tokio::test]
async fn explicit_jwks_uri_skips_discovery() {
    let k = keys();
    let idp = FakeIdp::start(ec_jwks("ec", &k.ec)).await;
    // Discovery would point elsewhere; the configured jwks_uri wins.
    *idp.discovery_issuer.lock().expect("lock") = Some("https://impostor.example".into());
    let mut config = idp.config(Duration::ZERO, LONG);
    config.jwks_uri = Some(format!("{}/jwks", idp.base));
    let auth = Authenticator::from_config(
        &auth_config(BTreeMap::from([("corp".to_owned(), config)])),
        None,
    )
    .await
    .expect("config");
    auth.verify(&idp.token(&k.ec, "ec")).await.expect("valid");
}

#[tokio::test]
async fn insecure_urls_and_bad_algorithms_are_config_errors() {
    let idp = FakeIdp::start(json!({"keys": []})).await;
    let check_err = |config: OidcIssuerConfig, needle: &'static str| async move {
        let err = Authenticator::from_config(
            &auth_config(BTreeMap::from([("corp".to_owned(), config)])),
            None,
        )
        .await
        .expect_err("invalid")
        .to_string();
        assert!(err.contains(needle), "{err}");
    };
    let mut c = idp.config(LONG, LONG);
    c.insecure_http = false;
    check_err(c, "insecure_http").await;
    let mut c = idp.config(LONG, LONG);
    c.algorithms = Some(vec!["HS256".into()]);
    check_err(c, "\"HS256\" is not supported").await;
    let mut c = idp.config(LONG, LONG);
    c.algorithms = Some(vec![]);
    check_err(c, "empty").await;
}
