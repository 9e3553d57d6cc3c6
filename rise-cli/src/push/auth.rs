//! The registry's token exchange, done by Rise itself rather than by the registry client.
//!
//! A registry with token auth answers `GET /v2/` with `WWW-Authenticate: Bearer realm=...`, and
//! the client is expected to send its user name and password to that realm. The registry client
//! would send the grant's password to whatever realm the registry names, even over plain http to
//! another machine. So Rise reads the challenge, checks the realm, trades the grant for a
//! registry token there, checks the token, and hands the registry client only that token.
//!
//! Architecture invariant: the grant's password is sent only to a realm that is https (or plain
//! http when the registry itself is spoken to over http: loopback or `--insecure-http`) and that
//! is the registry's host, the Rise backend's host, or a host of the registry's own domain
//! (`auth.docker.io` for `index.docker.io`, `gitlab.com` for `registry.gitlab.com`). A plain
//! http realm must be the registry's own host and port, or the backend's when the backend itself
//! is plain http: the same host and port under another scheme is not the same server.
//! A registry that asks for Basic auth gets the password itself, as `docker login` would give it.

use std::time::{Duration, SystemTime};

use oci_client::secrets::RegistryAuth;
use secrecy::ExposeSecret;

use crate::backend::{Grant, describe_reqwest, printable, without_userinfo};
use crate::body::read_bounded;
use crate::error::CliError;

/// The most of a token endpoint's answer Rise reads; tokens are a few KiB.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Where one registry is and how it is spoken to.
pub struct Target<'a> {
    /// The registry as the client resolves it (`index.docker.io`, `127.0.0.1:5000`).
    pub registry: &'a str,
    /// Plain http (loopback or `--insecure-http`) instead of https.
    pub plain_http: bool,
    pub repository: &'a str,
    /// The Rise backend's base URL: a realm there may receive the grant.
    pub backend_url: &'a str,
}

/// What to give the registry client for a grant, and until when it holds.
pub struct SessionAuth {
    pub auth: RegistryAuth,
    /// When a registry token expires (by its `expires_in`); `None` for Basic, anonymous, or a
    /// token endpoint that does not say.
    pub token_expires_at: Option<SystemTime>,
}

/// The auth to give the registry client for `grant`: a registry token from a checked realm, the
/// grant itself for a registry that asks for Basic auth, or none for a registry that asks none.
pub async fn registry_auth(
    http: &reqwest::Client,
    target: &Target<'_>,
    grant: &Grant,
) -> Result<SessionAuth, CliError> {
    let plain = |auth| SessionAuth {
        auth,
        token_expires_at: None,
    };
    let scheme = if target.plain_http { "http" } else { "https" };
    let probe_url = format!("{scheme}://{}/v2/", target.registry);
    let registry_url = reqwest::Url::parse(&probe_url).map_err(|_| {
        CliError::Unavailable(format!(
            "the backend named an invalid registry {:?}; ask the Rise operator to check its registry settings",
            printable(target.registry, 200)
        ))
    })?;
    let unreachable = |e: &reqwest::Error| {
        CliError::Unavailable(format!(
            "cannot reach the registry {}: {}; check your network and try again",
            target.registry,
            describe_reqwest(e)
        ))
    };
    let probe = http
        .get(registry_url.clone())
        .send()
        .await
        .map_err(|e| unreachable(&e))?;
    let challenges: Vec<String> = probe
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    drop(probe);
    let Some(challenge) = challenges.iter().find_map(|c| bearer_challenge(c)) else {
        // No challenge: the registry wants no credential (the registry client would send none).
        if challenges.is_empty() {
            return Ok(plain(RegistryAuth::Anonymous));
        }
        // Basic: the registry itself receives the password. The registry client probes again
        // before its first request; only a registry that changes its answer in between could
        // still name a realm, and such a registry is given the password by Basic auth anyway.
        return Ok(plain(RegistryAuth::Basic(
            grant.username.clone(),
            grant.password.expose_secret().to_owned(),
        )));
    };
    let realm = check_realm(&challenge, &registry_url, target)?;
    let shown = printable(&without_userinfo(realm.as_str()), 200);
    let scope = format!("repository:{}:pull,push", target.repository);
    let mut query = vec![("scope", scope.as_str())];
    if let Some(service) = &challenge.service {
        query.push(("service", service.as_str()));
    }
    let asked_at = SystemTime::now();
    let response = http
        .get(realm.clone())
        .query(&query)
        .basic_auth(&grant.username, Some(grant.password.expose_secret()))
        .send()
        .await
        .map_err(|e| {
            CliError::Unavailable(format!(
                "cannot reach the registry's token endpoint {shown}: {}; check your network and try again",
                describe_reqwest(&e)
            ))
        })?;
    let status = response.status();
    let body = read_bounded(response, MAX_TOKEN_RESPONSE).await.ok();
    match status.as_u16() {
        200 => {}
        401 | 403 => {
            return Err(CliError::RegistryDenied(format!(
                "the registry's token endpoint {shown} refused the credential Rise issued (HTTP {}); ask the Rise operator to check the registry's token setup",
                status.as_u16()
            )));
        }
        code => {
            return Err(CliError::Registry(format!(
                "the registry's token endpoint {shown} failed with HTTP {code}; try again later"
            )));
        }
    }
    let (token, expires_in) = body.as_deref().and_then(parse_token).ok_or_else(|| {
        CliError::Registry(format!(
            "the registry's token endpoint {shown} answered without a usable token; ask the Rise operator to check the registry's token setup"
        ))
    })?;
    Ok(SessionAuth {
        auth: RegistryAuth::Bearer(token),
        // Counted from before the request: never later than the token's own expiry.
        token_expires_at: expires_in.and_then(|s| asked_at.checked_add(Duration::from_secs(s))),
    })
}

/// A `Bearer` challenge's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: Option<String>,
    pub service: Option<String>,
}

/// The first `Bearer` challenge in a `WWW-Authenticate` value (RFC 9110 §11.6.1: challenges
/// separated by commas, each a scheme followed by `name=value` or `name="quoted"` parameters).
pub fn bearer_challenge(header: &str) -> Option<Challenge> {
    let mut rest = header;
    let mut current: Option<Challenge> = None;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return current;
        }
        let end = rest.find([' ', '\t', ',', '=']).unwrap_or(rest.len());
        if end == 0 {
            // A stray `=` (the padding of a token68 such as `Basic dXNlcg==`).
            rest = &rest[1..];
            continue;
        }
        let (token, after) = rest.split_at(end);
        let after_ws = after.trim_start_matches([' ', '\t']);
        if let Some(value_start) = after_ws.strip_prefix('=')
            && !value_start.starts_with('=')
        {
            let (value, remaining) = param_value(value_start.trim_start_matches([' ', '\t']));
            if let Some(c) = current.as_mut() {
                if token.eq_ignore_ascii_case("realm") {
                    c.realm = Some(value);
                } else if token.eq_ignore_ascii_case("service") {
                    c.service = Some(value);
                }
            }
            rest = remaining;
        } else {
            // An auth scheme (or a token68, skipped): a Bearer challenge so far is complete.
            if current.is_some() {
                return current;
            }
            if token.eq_ignore_ascii_case("bearer") {
                current = Some(Challenge {
                    realm: None,
                    service: None,
                });
            }
            rest = after;
        }
    }
}

/// A parameter value (quoted-string with `\` escapes, or a token) and what follows it.
fn param_value(s: &str) -> (String, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = s.find([' ', '\t', ',']).unwrap_or(s.len());
        (s[..end].to_owned(), &s[end..])
    }
}

/// The realm, if the grant's password may go there (see the module's invariant).
fn check_realm(
    challenge: &Challenge,
    registry: &reqwest::Url,
    target: &Target<'_>,
) -> Result<reqwest::Url, CliError> {
    let host = target.registry;
    let Some(raw) = challenge.realm.as_deref() else {
        return Err(CliError::Registry(format!(
            "the registry {host} asks for a token but names no token endpoint (realm); ask the Rise operator to check the registry's token setup"
        )));
    };
    let shown = printable(&without_userinfo(raw), 200);
    let refuse = |why: &str| {
        CliError::Registry(format!(
            "the registry {host} sends clients to the token endpoint {shown}, {why}: Rise did not send it the credential; ask the Rise operator to check the registry's token realm"
        ))
    };
    let realm = reqwest::Url::parse(raw).map_err(|_| refuse("which is not a URL"))?;
    if !realm.username().is_empty() || realm.password().is_some() {
        return Err(refuse("which carries a user name or password"));
    }
    match realm.scheme() {
        "https" => {}
        "http" if target.plain_http => {}
        "http" => {
            return Err(refuse(
                "which is plain http:// and would receive the credential in clear text",
            ));
        }
        _ => return Err(refuse("which is not an https:// URL")),
    }
    // A plain http realm is the registry itself (spoken to over http anyway) or a plain http
    // backend: `http://backend:443` is not the https backend, and would get the grant in clear.
    let backend = reqwest::Url::parse(target.backend_url).ok();
    let on_backend = backend.as_ref().is_some_and(|b| {
        same_authority(&realm, b) && (realm.scheme() == "https" || b.scheme() == realm.scheme())
    });
    let trusted = same_authority(&realm, registry)
        || on_backend
        || (realm.scheme() == "https" && same_domain(&realm, registry));
    if !trusted {
        return Err(refuse("which is neither the registry nor the Rise backend"));
    }
    Ok(realm)
}

/// Same host and port (the scheme's default port when none is given).
fn same_authority(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.host_str()
        .zip(b.host_str())
        .is_some_and(|(x, y)| x.eq_ignore_ascii_case(y))
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `realm`'s host is the registry's host or inside it, or both share one registrable domain
/// (`auth.docker.io` for `index.docker.io`: `docker.io`). The public suffix list decides what
/// is registrable, so `x.co.uk` never trusts `evil.co.uk`, nor `a.github.io` `b.github.io`.
fn same_domain(realm: &reqwest::Url, registry: &reqwest::Url) -> bool {
    let domain = |u: &reqwest::Url| {
        u.host_str()
            .filter(|h| !h.starts_with('[') && h.parse::<std::net::IpAddr>().is_err())
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
    };
    let (Some(r), Some(g)) = (domain(realm), domain(registry)) else {
        return false;
    };
    if r == g || r.ends_with(&format!(".{g}")) {
        return true;
    }
    match (psl::domain_str(&r), psl::domain_str(&g)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The token of a token endpoint's JSON answer (`token`, or OAuth's `access_token`), if it can
/// be sent in an `Authorization` header: visible ASCII only.
fn parse_token(body: &[u8]) -> Option<(String, Option<u64>)> {
    #[derive(serde::Deserialize)]
    struct Wire {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let wire: Wire = serde_json::from_slice(body).ok()?;
    let token = wire.token.filter(|t| !t.is_empty()).or(wire.access_token)?;
    let fits = !token.is_empty()
        && token.len() <= MAX_TOKEN_RESPONSE
        && token.bytes().all(|b| b.is_ascii_graphic());
    fits.then_some((token, wire.expires_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(realm: &str, service: Option<&str>) -> Option<Challenge> {
        Some(Challenge {
            realm: Some(realm.to_owned()),
            service: service.map(str::to_owned),
        })
    }

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#
            ),
            challenge("https://auth.docker.io/token", Some("registry.docker.io"))
        );
        assert_eq!(
            bearer_challenge(r#"bearer realm=https://r/t, service = "a\"b""#),
            challenge("https://r/t", Some("a\"b"))
        );
        assert_eq!(
            bearer_challenge(r#"Basic realm="x", Bearer realm="https://r/t""#),
            challenge("https://r/t", None)
        );
        assert_eq!(
            bearer_challenge(r#"Bearer realm="https://r/t", Basic realm="x""#),
            challenge("https://r/t", None)
        );
        assert_eq!(bearer_challenge(r#"Basic realm="registry""#), None);
        assert_eq!(bearer_challenge("Basic dXNlcg=="), None);
        assert_eq!(bearer_challenge(""), None);
    }

    #[test]
    fn realms_that_may_receive_the_grant() {
        let check_with = |backend_url: &str, registry: &str, plain_http: bool, realm: &str| {
            let scheme = if plain_http { "http" } else { "https" };
            let url = reqwest::Url::parse(&format!("{scheme}://{registry}/v2/")).expect("url");
            let target = Target {
                registry,
                plain_http,
                repository: "my-app",
                backend_url,
            };
            check_realm(&challenge(realm, None).expect("some"), &url, &target).map(|_| ())
        };
        let check = |registry: &str, plain_http: bool, realm: &str| {
            check_with("https://rise.example.com", registry, plain_http, realm)
        };
        // A plain http backend (on this machine) may take the grant over http, and over https.
        for realm in [
            "http://127.0.0.1:3000/token",
            "https://127.0.0.1:3000/token",
        ] {
            check_with("http://127.0.0.1:3000", "127.0.0.1:5000", true, realm).expect(realm);
        }
        for (registry, plain, realm) in [
            ("index.docker.io", false, "https://auth.docker.io/token"),
            ("ghcr.io", false, "https://ghcr.io/token"),
            ("registry.gitlab.com", false, "https://gitlab.com/jwt/auth"),
            ("registry.x.co.uk", false, "https://auth.x.co.uk/token"),
            (
                "registry.corp.internal",
                false,
                "https://auth.corp.internal/token",
            ),
            ("reg.example.com", false, "https://rise.example.com/token"),
            ("127.0.0.1:5000", true, "http://127.0.0.1:5000/token"),
            ("127.0.0.1:5000", true, "https://rise.example.com/token"),
        ] {
            check(registry, plain, realm).expect(realm);
        }
        for (registry, plain, realm) in [
            ("reg.example.com", false, "http://reg.example.com/token"),
            ("ghcr.io", false, "https://evil.io/token"),
            ("x.co.uk", false, "https://evil.co.uk/token"),
            ("a.github.io", false, "https://b.github.io/token"),
            (
                "registry.example.com",
                false,
                "https://example.com.evil.org/token",
            ),
            ("reg.example.com", false, "https://example.org/token"),
            ("127.0.0.1:5000", true, "http://127.0.0.1:5001/token"),
            ("127.0.0.1:5000", true, "http://192.0.2.2:5000/token"),
            // The https backend's host and port, but plain http: the grant would go in clear.
            ("127.0.0.1:5000", true, "http://rise.example.com:443/token"),
            ("127.0.0.1:5000", true, "http://rise.example.com/token"),
            (
                "reg.example.com",
                false,
                "https://u:p@reg.example.com/token",
            ),
            ("reg.example.com", false, "ftp://reg.example.com/token"),
            ("10.0.0.1:5000", false, "https://10.0.0.2:5000/token"),
        ] {
            let err = check(registry, plain, realm).expect_err(realm).to_string();
            assert!(err.contains("did not send it the credential"), "{err}");
            assert!(!err.contains("u:p"), "{err}");
        }
    }

    #[test]
    fn tokens_must_fit_a_header() {
        assert_eq!(
            parse_token(br#"{"token":"abc.def"}"#),
            Some(("abc.def".to_owned(), None))
        );
        assert_eq!(
            parse_token(br#"{"token":"","access_token":"xyz","expires_in":300}"#),
            Some(("xyz".to_owned(), Some(300)))
        );
        for bad in [
            r#"{"token":"tok\n123"}"#,
            r#"{"token":"tok 123"}"#,
            r#"{"token":"tök"}"#,
            r#"{"token":""}"#,
            r#"{}"#,
            "not json",
        ] {
            assert_eq!(parse_token(bad.as_bytes()), None, "{bad}");
        }
    }
}
