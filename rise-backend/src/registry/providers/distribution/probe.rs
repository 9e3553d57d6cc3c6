//! Does a Distribution registry trust a key? `keys rotate` asks every configured registry before
//! it promotes the `next` key to `current`: a registry that does not trust `next` (its bundle
//! predates the last rotation because it was not restarted) would refuse every token after the
//! rotation.
//!
//! The question is `GET /v2/` with a registry token signed by the key that grants nothing (no
//! `access`) and lives one minute. Distribution checks a token's signature, issuer, audience and
//! expiry on every route, and `/v2/` needs no access, so 200 means trusted and 401 means not.
//! The registry is asked over https, and a loopback one also over plain http (as docker
//! allows); the token grants nothing, and still never crosses a network in clear.

use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;

use super::keys::{KeySet, REGISTRY_TOKEN_KEYS, SigningKey};
use super::token::{self, TokenSpec};
use super::{DistributionConfig, distribution_registries};
use crate::config::Config;
use crate::keyring::Keyring;

/// How long one question to a registry may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The `sub` of the check token, as the registry logs it.
const SUBJECT: &str = "rise-keys-rotate-check";

/// What a registry said about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// It accepted a token signed with the key (at `url`).
    Trusted { url: String },
    /// It refused it: it does not trust the key, or its `auth.token` issuer or service differ
    /// from Rise's. `reason` is the registry's `WWW-Authenticate` error, if any.
    Refused { url: String, reason: String },
    /// It could not be asked: unreachable, or not a registry that uses token authentication.
    Unknown { reason: String },
}

/// An HTTP client for [`check`]: short timeouts, no redirects (the token goes only where asked).
fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rise-backend/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("building the HTTP client for registry checks: {e}"))
}

/// Ask every Distribution registry of `config` whether it trusts the `next` registry token key
/// in `keyring`, the key a rotation makes current. Returns that key's `kid` and each registry's
/// answer, by name (none without Distribution registries).
pub async fn next_key_trust(
    config: &Config,
    keyring: &Keyring,
) -> anyhow::Result<(String, Vec<(String, Trust)>)> {
    let family = keyring.load(&REGISTRY_TOKEN_KEYS).await?;
    let kid = SigningKey::from_pem(&family.next)?.kid().to_owned();
    let registries: Vec<_> = distribution_registries(config).collect();
    if registries.is_empty() {
        return Ok((kid, Vec::new()));
    }
    let http = client()?;
    let mut answers = Vec::with_capacity(registries.len());
    for (name, registry) in registries {
        let key = SigningKey::from_pem(&family.next)?;
        answers.push((name.to_owned(), check(&http, registry, key).await));
    }
    Ok((kid, answers))
}

/// Ask `registry` whether it accepts a token signed with `key`.
pub async fn check(
    http: &reqwest::Client,
    registry: &DistributionConfig,
    key: SigningKey,
) -> Trust {
    let keys = KeySet::new(key, Vec::new());
    let now = SystemTime::now();
    let spec = TokenSpec {
        issuer: &registry.issuer,
        service: &registry.service,
        subject: SUBJECT,
        access: &[],
        now,
        expires_at: now + Duration::from_secs(60),
    };
    let minted = match token::mint(&keys, &spec) {
        Ok(minted) => minted,
        Err(e) => {
            return Trust::Unknown {
                reason: format!("no check token could be made: {e}"),
            };
        }
    };
    let mut unreachable = Vec::new();
    let schemes: &[&str] = if is_loopback(&registry.url) {
        &["https", "http"]
    } else {
        &["https"]
    };
    for scheme in schemes {
        let url = format!("{scheme}://{}/v2/", registry.url);
        // Without a token first: a registry that answers 200 checks no tokens at all, and
        // would say yes to any key.
        match http.get(&url).send().await {
            Err(e) => {
                unreachable.push(describe(&url, e));
                continue;
            }
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {}
            Ok(r) => {
                return Trust::Unknown {
                    reason: format!(
                        "{url} answered HTTP {} without a token: it does not use token authentication",
                        r.status().as_u16()
                    ),
                };
            }
        }
        let answer = http
            .get(&url)
            .bearer_auth(minted.token.expose_secret())
            .send()
            .await;
        return match answer {
            Ok(r) if r.status().is_success() => Trust::Trusted { url },
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => Trust::Refused {
                reason: bearer_error(&r),
                url,
            },
            Ok(r) => Trust::Unknown {
                reason: format!(
                    "{url} answered HTTP {} to the check token",
                    r.status().as_u16()
                ),
            },
            Err(e) => Trust::Unknown {
                reason: describe(&url, e),
            },
        };
    }
    Trust::Unknown {
        reason: format!("cannot reach it ({})", unreachable.join("; ")),
    }
}

/// Whether `host[:port]` names this machine: `localhost` or a loopback address.
fn is_loopback(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `error` (and `error_description`) of a `WWW-Authenticate: Bearer` challenge, or a note
/// that there was none.
fn bearer_error(response: &reqwest::Response) -> String {
    let Some(challenge) = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
    else {
        return "HTTP 401 without a challenge".to_owned();
    };
    let param = |name: &str| {
        let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
        let len = challenge[start..].find('"')?;
        Some(
            challenge[start..start + len]
                .chars()
                .take(200)
                .collect::<String>(),
        )
    };
    match (param("error"), param("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e,
        _ => "HTTP 401".to_owned(),
    }
}

/// The failure and its causes; reqwest's errors never carry headers.
fn describe(url: &str, e: reqwest::Error) -> String {
    if e.is_timeout() {
        format!("{url}: no answer within {TIMEOUT:?}")
    } else {
        let e = e.without_url();
        let mut text = format!("{url}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_are_asked_in_clear() {
        for local in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "LOCALHOST",
            "[::1]:5000",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "registry.example.com",
            "registry.example.com:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]:443",
            "localhost.example.com",
            "",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
