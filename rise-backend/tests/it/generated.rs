//! Generated requests against the whole HTTP surface, in-process: thousands of methods, paths,
//! query strings, `Authorization` headers and bodies, drawn from a fixed seed (so a failure
//! repeats) and mixing the endpoints' own parameter names and valid values with broken ones.
//! Every refusal must be the documented JSON error, nothing may be an internal error, and
//! afterwards a valid request is still served and the audit chain still verifies.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::support::app::TestRise;

const CONFIG: &str = r#"
[registry]
type = "distribution"
url = "127.0.0.1:5000"
service = "rise-registry"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "local"
groups = ["developers"]
actions = ["push", "pull"]

[projects.readonly]
[[projects.readonly.allow]]
issuer = "local"
groups = ["developers"]
actions = ["pull"]

[audit]
admins = [{ issuer = "local", groups = ["auditors"] }]

[rate_limit]
per_subject = { rate = "1000000/s", burst = 1000000 }
per_ip = { rate = "1000000/s", burst = 1000000 }
"#;

/// SplitMix64: a few lines, and the same sequence on every machine.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// Random bytes, any value.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Every byte of `bytes` percent-encoded: any content, always a valid URI.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The API's routes, each with the method and query a client of it would send.
const ROUTES: &[(Method, &str, &str)] = &[
    (Method::GET, "/registry/credentials", "project=my-app"),
    (
        Method::GET,
        "/registry/credentials",
        "project=readonly&actions=push",
    ),
    (
        Method::GET,
        "/token",
        "service=rise-registry&scope=repository:my-app:push,pull",
    ),
    (
        Method::GET,
        "/token",
        "service=rise-registry&client_id=docker&offline_token=true",
    ),
    (Method::POST, "/token", ""),
    (Method::POST, "/grants/revocations", ""),
    (Method::GET, "/audit", "limit=5"),
    (Method::GET, "/auth/config", ""),
    (Method::GET, "/auth/whoami", ""),
];

/// The operational routes, and paths that are no route.
const OTHER_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/registry",
    "/registry/credentials/",
    "/TOKEN",
    "//token",
    "/token/../audit",
    "/v2/",
];

const KEYS: &[&str] = &[
    "project",
    "actions",
    "ttl",
    "service",
    "scope",
    "account",
    "client_id",
    "offline_token",
    "since",
    "until",
    "limit",
    "subject",
    "issuer",
    "result",
    "cursor",
    "operation",
    "format",
    "grant",
    "credential_id",
    "x",
    "",
];

const VALUES: &[&str] = &[
    "my-app",
    "readonly",
    "other-app",
    "MY-APP",
    "",
    "pull",
    "push",
    "push,pull",
    "delete",
    "pull,,push",
    "*",
    "1h",
    "59s",
    "90000000000000000000",
    "-1",
    "0",
    "15m",
    "127.0.0.1:5000",
    "repository:my-app:push,pull",
    "repository:my-app:*",
    "repository:other-app:pull",
    "repository:my-app",
    "registry:catalog:*",
    "repository:my-app:pull repository:readonly:push",
    "true",
    "docker",
    "2026-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "not-a-time",
    "1000000",
    "granted",
    "%",
    "%zz",
    "%00",
    "..",
    "é😀",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
    "text/plain",
    "multipart/form-data; boundary=x",
];

fn query(d: &mut Draw) -> String {
    let mut pairs = Vec::new();
    for _ in 0..d.below(5) {
        let key = if d.chance(90) {
            d.pick(KEYS).to_owned()
        } else {
            escaped(&d.bytes(12))
        };
        let value = match d.below(10) {
            0 => escaped(&d.bytes(40)),
            1 => "a".repeat(d.below(5000)),
            // Raw: some are not valid percent-encoding, which the URI allows.
            2..=4 => d
                .pick(VALUES)
                .replace(' ', "%20")
                .replace('é', "%C3%A9")
                .replace('😀', "%F0%9F%98%80"),
            _ => url_encode(d.pick(VALUES)),
        };
        pairs.push(format!("{key}={value}"));
    }
    pairs.join("&")
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn authorization(d: &mut Draw, token: &str, auditor: &str) -> Option<String> {
    Some(match d.below(14) {
        0 => return None,
        1..=4 => format!("Bearer {token}"),
        5 => format!("Bearer {auditor}"),
        6 => format!("Basic {}", STANDARD.encode(format!("oidc:{token}"))),
        7 => format!("Basic {}", STANDARD.encode(d.bytes(60))),
        8 => format!("Bearer {}", &token[..d.below(token.len())]),
        9 => format!("bearer  {token}"),
        10 => "Basic !!!".to_owned(),
        11 => format!("Bearer {}.{}.{}", escaped(&d.bytes(8)), "e30", "x"),
        _ => d
            .pick(&["Digest x", "Bearer", "Basic", "", "Bearer a.b", "Token x"])
            .to_owned(),
    })
}

fn body(d: &mut Draw, token: &str) -> Vec<u8> {
    match d.below(6) {
        0 => Vec::new(),
        1 => d.bytes(300),
        2 => format!(
            "grant_type=password&service=127.0.0.1%3A5000&scope=repository%3Amy-app%3Apush&username=oidc&password={token}"
        )
        .into_bytes(),
        3 => br#"{"credential_id": "x", "reason": "leaked"}"#.to_vec(),
        4 => format!("{{\"grant\": {}}}", "[".repeat(d.below(200))).into_bytes(),
        _ => format!("{}={}", d.pick(KEYS), url_encode(d.pick(VALUES))).into_bytes(),
    }
}

#[tokio::test]
async fn generated_requests_get_json_errors_and_break_nothing() {
    let rise = TestRise::from_toml(CONFIG).await;
    let token = rise.token("alice", &["developers"]);
    let auditor = rise.token("audra", &["auditors"]);
    let methods = [
        Method::GET,
        Method::GET,
        Method::GET,
        Method::GET,
        Method::GET,
        Method::POST,
        Method::POST,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
    ];
    let mut d = Draw(0x5249_5345);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for n in 0..3000 {
        let any_method = methods[d.below(methods.len())].clone();
        let (usual_method, path, usual) = match d.below(10) {
            0..=6 => ROUTES[d.below(ROUTES.len())].clone(),
            7 | 8 => (Method::GET, d.pick(OTHER_PATHS), ""),
            _ => (Method::GET, "", ""),
        };
        let method = if d.chance(75) {
            usual_method
        } else {
            any_method
        };
        let path = if path.is_empty() {
            format!("/{}", escaped(&d.bytes(20)))
        } else {
            path.to_owned()
        };
        // The usual query, or only broken parts, or the usual query with broken parts added
        // (which may repeat its parameters).
        let query = match d.below(3) {
            0 => usual.to_owned(),
            1 => query(&mut d),
            _ => format!("{usual}&{}", query(&mut d)),
        };
        let uri = if query.is_empty() && d.chance(50) {
            path
        } else {
            format!("{path}?{query}")
        };
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        if let Some(value) = authorization(&mut d, &token, &auditor) {
            request = request.header("authorization", value);
        }
        if d.chance(40) {
            request = request.header("content-type", d.pick(CONTENT_TYPES));
        }
        if d.chance(20) {
            request = request.header("user-agent", escaped(&d.bytes(30)));
        }
        let body = if method == Method::POST || d.chance(5) {
            body(&mut d, &token)
        } else {
            Vec::new()
        };
        let request = request.body(Body::from(body)).expect("a valid request");
        let (status, body) = rise.send(request).await;
        *statuses.entry(status.as_u16()).or_default() += 1;
        let what = format!("request {n}: {method} {uri}");
        assert!(!status.is_server_error(), "{what}: {status} {body}");
        if status.is_client_error() && method != Method::HEAD {
            let object = body
                .as_object()
                .unwrap_or_else(|| panic!("{what}: {status} {body}"));
            let nonempty = |k: &str| {
                object
                    .get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            };
            assert!(
                nonempty("error") && nonempty("message") && object.len() == 2,
                "{what}: {status} {body}"
            );
        }
    }
    // The mix reached past authentication to every kind of answer.
    for status in [200, 400, 401, 403, 404, 405] {
        assert!(
            statuses.get(&status).copied().unwrap_or(0) >= 20,
            "{statuses:?}"
        );
    }

    let (status, body) = rise
        .get("/registry/credentials?project=my-app", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report = rise_backend::audit::verify(rise.state.audit.store())
        .await
        .expect("verify");
    assert!(report.broken.is_none(), "{:?}", report.broken);
    assert!(
        report.records > 100,
        "{} records; {statuses:?}",
        report.records
    );
}
