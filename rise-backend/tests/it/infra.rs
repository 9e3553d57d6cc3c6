//! The test infrastructure itself: each real dependency starts and behaves as the other tests
//! assume. A failure here means the environment is broken (run `scripts/setup-test-deps.sh`),
//! not Rise.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::image::{OciLayout, sha256_digest};
use crate::support::moto::Moto;
use crate::support::oidc::{OidcProvider, decode_jwt};
use crate::support::postgres::Postgres;
use crate::support::process::http_client;
use crate::support::registry::{DistributionRegistry, TokenAuth};
use crate::support::skopeo::{self, Creds};

#[tokio::test]
async fn oidc_provider_issues_jwt_access_tokens_for_every_key_type() {
    let oidc = OidcProvider::start().await;
    assert!(
        oidc.issuer().starts_with("http://127.0.0.1:"),
        "{}",
        oidc.issuer()
    );

    let discovery = oidc.discovery().await;
    assert_eq!(discovery["issuer"], oidc.issuer());
    assert_eq!(discovery["jwks_uri"], oidc.jwks_uri());
    assert_eq!(discovery["token_endpoint"], oidc.token_endpoint());
    assert_eq!(
        discovery["device_authorization_endpoint"],
        oidc.device_authorization_endpoint()
    );

    let jwks = oidc.jwks().await;
    let keys = jwks["keys"].as_array().expect("keys");
    let mut kinds: Vec<(String, String)> = keys
        .iter()
        .map(|k| {
            assert_eq!(k["use"], "sig");
            assert!(k.get("d").is_none(), "private key material published: {k}");
            (
                k["kty"].as_str().unwrap_or_default().to_owned(),
                k["alg"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [("EC", "ES256"), ("OKP", "EdDSA"), ("RSA", "RS256")]
            .map(|(kty, alg)| (kty.to_owned(), alg.to_owned()))
    );
    let kids = oidc.published_kids().await;

    for (resource, alg, aud) in [
        ("rise", "RS256", "rise"),
        ("rise-es256", "ES256", "rise"),
        ("rise-eddsa", "EdDSA", "rise"),
        ("other-audience", "RS256", "other-audience"),
    ] {
        let token = oidc.client_credentials_token("ci-app", resource).await;
        let (header, claims) = decode_jwt(&token);
        assert_eq!(header["alg"], alg, "{resource}: {header}");
        assert_eq!(header["typ"], "at+jwt", "{resource}: {header}");
        let kid = header["kid"].as_str().expect("kid");
        assert!(kids.iter().any(|k| k == kid), "{kid} not in {kids:?}");
        assert_eq!(claims["aud"], aud, "{resource}: {claims}");
        assert_eq!(claims["iss"], oidc.issuer());
        assert_eq!(claims["sub"], "ci-app");
        assert_eq!(claims["client_id"], "ci-app");
        assert_eq!(claims["groups"], json!(["ci"]));

        let verified = oidc
            .verify_jwt(&token, aud)
            .await
            .unwrap_or_else(|err| panic!("{resource}: {err:#}"));
        assert_eq!(verified["jti"], claims["jti"]);
    }

    let token = oidc.client_credentials_token("ci-other", "rise").await;
    assert_eq!(decode_jwt(&token).1["groups"], json!(["other"]));

    let (status, body) = oidc
        .token_request(
            Some(("ci-app", "wrong-secret")),
            &[
                ("grant_type", "client_credentials"),
                ("resource", "urn:rise"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");

    // A bare audience is not a resource indicator (RFC 8707 wants an absolute URI).
    let (status, body) = oidc
        .token_request(
            Some(("ci-app", "ci-secret")),
            &[("grant_type", "client_credentials"), ("resource", "rise")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_target");
}

#[tokio::test]
async fn oidc_provider_rotates_keys_on_the_same_port() {
    let oidc = OidcProvider::start().await;
    let old_kids = oidc.published_kids().await;
    let old_token = oidc.client_credentials_token("ci-app", "rise").await;
    let old_kid = decode_jwt(&old_token).0["kid"].clone();

    let new_kids = oidc.rotate_keys().await;
    assert_eq!(new_kids.len(), 3);
    let old: HashSet<_> = old_kids.iter().collect();
    assert!(
        new_kids.iter().all(|kid| !old.contains(kid)),
        "{old_kids:?} vs {new_kids:?}"
    );
    assert_eq!(oidc.published_kids().await, new_kids);

    for resource in ["rise", "rise-es256", "rise-eddsa"] {
        let token = oidc.client_credentials_token("ci-app", resource).await;
        let kid = decode_jwt(&token).0["kid"]
            .as_str()
            .expect("kid")
            .to_owned();
        assert!(
            new_kids.contains(&kid),
            "{resource}: {kid} not in {new_kids:?}"
        );
        oidc.verify_jwt(&token, "rise")
            .await
            .unwrap_or_else(|err| panic!("{resource}: {err:#}"));
    }
    assert_ne!(
        decode_jwt(&oidc.client_credentials_token("ci-app", "rise").await).0["kid"],
        old_kid
    );
    let err = oidc
        .verify_jwt(&old_token, "rise")
        .await
        .expect_err("old kid must be gone");
    assert!(format!("{err:#}").contains("is not published"), "{err:#}");

    // A rollover that keeps the previous keys published.
    let newest = oidc.rotate_keys_keeping_previous().await;
    let published = oidc.published_kids().await;
    assert_eq!(published.len(), 6, "{published:?}");
    assert!(
        newest
            .iter()
            .chain(&new_kids)
            .all(|kid| published.contains(kid))
    );
    let token = oidc.client_credentials_token("ci-app", "rise-es256").await;
    assert!(
        newest.contains(
            &decode_jwt(&token).0["kid"]
                .as_str()
                .expect("kid")
                .to_owned()
        )
    );
}

#[tokio::test]
async fn oidc_provider_device_login_without_a_browser() {
    let oidc = OidcProvider::start().await;

    let authorization = oidc
        .device_authorization("openid groups offline_access", Some("rise-es256"))
        .await;
    assert_eq!(authorization.interval, 1);
    let (status, pending) = oidc.device_token(&authorization.device_code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(pending["error"], "authorization_pending");

    oidc.approve_device(&authorization.user_code, "alice")
        .await
        .expect("approving as alice");
    let (status, tokens) = oidc.device_token(&authorization.device_code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (header, claims) = decode_jwt(tokens["access_token"].as_str().expect("access_token"));
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "rise");
    assert_eq!(claims["client_id"], "rise-cli");
    assert_eq!(claims["groups"], json!(["developers"]));

    let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");
    let refreshed = oidc.refresh(refresh_token).await.expect("refresh");
    assert_eq!(decode_jwt(&refreshed.access_token).1["sub"], "alice");

    let mallory = oidc.user_token("mallory", "rise").await;
    assert_eq!(decode_jwt(&mallory).1["groups"], json!([]));

    let authorization = oidc.device_authorization("openid", None).await;
    let err = oidc
        .approve_device(&authorization.user_code, "nobody")
        .await
        .expect_err("unknown account must not log in");
    eprintln!("expected failure: {err:#}");
}

#[tokio::test]
async fn registry_without_auth_round_trips_an_image_with_skopeo() {
    let registry = DistributionRegistry::start_without_auth().await;
    assert!(
        registry.addr().starts_with("127.0.0.1:"),
        "{}",
        registry.addr()
    );

    let work = tempfile::tempdir().expect("temp dir");
    let layout = OciLayout::create(&work.path().join("image"), 2).expect("OCI layout");
    assert_eq!(layout.layers.len(), 2);

    let reference = format!("{}/my-app:v1", registry.addr());
    skopeo::copy_to_registry(&layout.dir, &reference, Creds::Anonymous)
        .await
        .unwrap_or_else(|stderr| panic!("push failed: {stderr}\nregistry:\n{}", registry.logs()));

    let inspected = skopeo::inspect(&reference, Creds::Anonymous)
        .await
        .unwrap_or_else(|stderr| panic!("inspect failed: {stderr}"));
    assert_eq!(inspected["Digest"], layout.manifest_digest.as_str());
    assert_eq!(
        inspected["Layers"],
        json!(
            layout
                .layers
                .iter()
                .map(|l| l.digest.clone())
                .collect::<Vec<_>>()
        )
    );
    let raw = skopeo::inspect_raw(&reference, Creds::Anonymous)
        .await
        .unwrap_or_else(|stderr| panic!("inspect --raw failed: {stderr}"));
    assert_eq!(sha256_digest(&raw), layout.manifest_digest);

    let pulled = work.path().join("pulled");
    skopeo::copy_from_registry(&reference, &pulled, Creds::Anonymous)
        .await
        .unwrap_or_else(|stderr| panic!("pull failed: {stderr}"));
    assert_eq!(
        OciLayout::read_manifest_digest(&pulled).expect("pulled index.json"),
        layout.manifest_digest
    );

    registry
        .wait_for_log("/v2/my-app/manifests/v1", Duration::from_secs(5))
        .await
        .expect("the registry logs requests");

    // Anything else is 404, not an auth challenge.
    let response = http_client()
        .get(format!("{}/v2/", registry.url()))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn registry_with_token_auth_challenges_clients() {
    let work = tempfile::tempdir().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["rise-test-issuer".to_owned()])
        .expect("self-signed certificate");
    let bundle = work.path().join("bundle.pem");
    std::fs::write(&bundle, certified.cert.pem()).expect("writing the bundle");

    // Nothing listens on the realm: clients can be challenged but never get a token.
    let realm = "http://127.0.0.1:9/token";
    let registry = DistributionRegistry::start(TokenAuth {
        realm: realm.to_owned(),
        service: "rise-test-registry".to_owned(),
        issuer: "rise-test-issuer".to_owned(),
        rootcertbundle: bundle,
    })
    .await;

    let response = http_client()
        .get(format!("{}/v2/", registry.url()))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .expect("WWW-Authenticate")
        .to_owned();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("realm=\"{realm}\""))
            && challenge.contains("service=\"rise-test-registry\""),
        "{challenge}"
    );

    let bogus = http_client()
        .get(format!("{}/v2/", registry.url()))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .expect("GET /v2/ with a bogus token");
    assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);
    let challenge = bogus
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    registry
        .wait_for_log(
            "error authorizing context: malformed token",
            Duration::from_secs(5),
        )
        .await
        .expect("the registry logs why it rejected the token");

    let layout = OciLayout::create(&work.path().join("image"), 1).expect("OCI layout");
    let stderr = skopeo::copy_to_registry(
        &layout.dir,
        &format!("{}/my-app:v1", registry.addr()),
        Creds::basic("user", "password"),
    )
    .await
    .expect_err("a push without a token service must fail");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
}

#[tokio::test]
async fn moto_serves_its_state() {
    let moto = Moto::start().await;
    assert!(
        moto.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        moto.endpoint()
    );
    let data = moto.data_json().await;
    assert!(data.is_object(), "{data}");
    moto.reset().await;
    assert!(moto.data_json().await.is_object());
}

#[tokio::test]
async fn postgres_accepts_connections() {
    let postgres = Postgres::start().await;
    let pool = sqlx::PgPool::connect(&postgres.url())
        .await
        .unwrap_or_else(|err| {
            panic!(
                "connecting to {}: {err}\n{}",
                postgres.url(),
                postgres.logs()
            )
        });
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&pool)
        .await
        .expect("select 1");
    assert_eq!(one, 1);
    pool.close().await;

    let url = postgres.create_database("rise_infra").await;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connecting to the new database");
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&pool)
        .await
        .expect("current_database()");
    assert_eq!(name, "rise_infra");
    pool.close().await;
}
