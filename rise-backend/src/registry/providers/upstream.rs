//! One HTTP exchange with a provider's upstream API, the same for every provider that speaks
//! HTTP through `reqwest` (Artifactory, Google, ACR, GHCR, Docker Hub, Harbor, Quay).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode, Url};

use crate::registry::ProviderError;

/// The HTTP client of an upstream API: `connect_timeout` to connect, `timeout` for a whole
/// exchange (connecting, sending and reading the whole body: the bound on every call), Rise's
/// user agent, `headers` on every request, and no redirects: a redirect would resend
/// credentials somewhere the operator did not configure.
pub(crate) fn http_client(
    connect_timeout: Duration,
    timeout: Duration,
    headers: HeaderMap,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .user_agent(concat!("rise-backend/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// A reply read in full (within the caller's bound), before it is interpreted.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends `builder` and reads the reply body, at most `max_body` bytes, timing the exchange for
/// `rise_upstream_request_duration_seconds` whatever its outcome.
///
/// The client's timeout (`timeout` is what it was set to) becomes [`ProviderError::Timeout`]; any
/// other transport failure, or a longer body, [`ProviderError::Upstream`]. reqwest's errors name the
/// URL and the I/O cause, never headers or bodies, so credentials sent in either stay out of the
/// error; providers never put a secret in a URL.
pub(crate) async fn exchange(
    provider: &'static str,
    operation: &'static str,
    timeout: Duration,
    max_body: usize,
    builder: RequestBuilder,
) -> Result<Reply, ProviderError> {
    let started = Instant::now();
    let result = read(operation, timeout, max_body, builder).await;
    crate::metrics::record_upstream_latency(provider, operation, started.elapsed());
    result
}

async fn read(
    operation: &'static str,
    timeout: Duration,
    max_body: usize,
    builder: RequestBuilder,
) -> Result<Reply, ProviderError> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            ProviderError::Timeout {
                operation,
                after: timeout,
            }
        } else {
            ProviderError::Upstream {
                operation,
                detail: format!("{e:#}"),
            }
        }
    };
    let mut response = builder.send().await.map_err(transport)?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > max_body {
            return Err(ProviderError::Upstream {
                operation,
                detail: format!("HTTP {status} with a body over {max_body} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The error for a JSON body of `len` bytes, answered with `status`, that does not parse: where
/// parsing stopped, never the body (on success it may hold a secret).
pub(crate) fn malformed(
    operation: &'static str,
    status: impl std::fmt::Display,
    e: &serde_json::Error,
    len: usize,
) -> ProviderError {
    ProviderError::Upstream {
        operation,
        detail: format!(
            "HTTP {status} with a malformed body ({:?} at line {}, column {}; {len} bytes)",
            e.classify(),
            e.line(),
            e.column(),
        ),
    }
}

/// The configured URL `key` of an upstream API: `https://` (or `http://` with `insecure_http`),
/// with a host, without credentials (they belong in their own secret keys, not in a URL that is
/// logged), query or fragment. The path is kept; providers add their own rules about it.
/// `example` is shown when `raw` is not a URL at all.
pub(crate) fn endpoint_url(
    key: &str,
    raw: &str,
    insecure_http: bool,
    example: Option<&str>,
) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        let hint = example
            .map(|e| format!("; use e.g. {e}"))
            .unwrap_or_default();
        format!(
            "{key} {:?} is not a URL ({e}){hint}",
            crate::secrets::shown_url(raw)
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" if insecure_http => {}
        "http" => {
            return Err(format!(
                "{key} uses http://, which sends credentials in clear text; use https:// (or insecure_http = true for local tests)"
            ));
        }
        other => return Err(format!("{key} scheme {other:?} is not http(s)")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{key} must not contain credentials; give them in their own (secret) keys"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{key} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key} must not have a query or fragment"));
    }
    Ok(url)
}

/// The longest Rise keeps one of its own upstream access tokens before asking for a new one,
/// whatever lifetime the upstream claims: a larger claim only means an earlier refresh (and an
/// absurd one cannot overflow the deadline arithmetic).
pub(crate) const LONGEST_TOKEN_CACHE: Duration = Duration::from_secs(24 * 3600);

/// The lifetime to cache an upstream token for, given the `expires_in` seconds it claims.
pub(crate) fn cache_lifetime(expires_in_secs: u64) -> Duration {
    Duration::from_secs(expires_in_secs).min(LONGEST_TOKEN_CACHE)
}

/// `host` or `host:port` of the URL given as `key`: what clients log in to when the registry is
/// served at the same address as the API.
pub(crate) fn host_and_port(key: &str, url: &Url) -> Result<String, String> {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => Ok(format!("{host}:{port}")),
        (Some(host), None) => Ok(host.to_owned()),
        (None, _) => Err(format!("{key} has no host")),
    }
}

/// `s` cut to at most `max` bytes, at a character boundary: a text field within an upstream's
/// documented length limit.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_token_lifetimes_are_bounded() {
        assert_eq!(cache_lifetime(3600), Duration::from_secs(3600));
        assert_eq!(cache_lifetime(u64::MAX), LONGEST_TOKEN_CACHE);
        // The deadline arithmetic the providers do cannot overflow any more.
        assert!(
            Instant::now()
                .checked_add(cache_lifetime(u64::MAX))
                .is_some()
        );
    }

    #[test]
    fn endpoint_urls_are_https_with_a_host_and_nothing_secret() {
        let ok = endpoint_url("k", "https://api.example.com/v1", false, None).expect("https");
        assert_eq!(ok.path(), "/v1");
        for (raw, insecure, part) in [
            ("http://127.0.0.1:1", false, "clear text"),
            ("https://u:p@host", false, "must not contain credentials"),
            ("https://u@host", false, "must not contain credentials"),
            ("ftp://host", false, "is not http(s)"),
            ("ftp://host", true, "is not http(s)"),
            ("host", false, "is not a URL"),
            ("https://host/?x=1", false, "query"),
            ("https://host/#f", false, "fragment"),
            ("https://u:p@host:99999", false, "is not a URL"),
        ] {
            let e = endpoint_url("api_url", raw, insecure, None).expect_err(raw);
            assert!(e.starts_with("api_url "), "{raw}: {e}");
            assert!(e.contains(part), "{raw}: {e}");
            assert!(!e.contains(":p@"), "{raw}: the password is not echoed: {e}");
        }
        assert!(endpoint_url("k", "http://127.0.0.1:1", true, None).is_ok());
        let e = endpoint_url("url", "nope", false, Some("https://quay.io")).expect_err("hint");
        assert!(e.ends_with("; use e.g. https://quay.io"), "{e}");
    }

    #[test]
    fn hosts_keep_their_port() {
        let url = |s| Url::parse(s).expect("valid");
        assert_eq!(
            host_and_port("url", &url("https://h.example/x")),
            Ok("h.example".to_owned())
        );
        assert_eq!(
            host_and_port("url", &url("http://127.0.0.1:8080/")),
            Ok("127.0.0.1:8080".to_owned())
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate(&"x".repeat(300), 200).len(), 200);
    }
}
