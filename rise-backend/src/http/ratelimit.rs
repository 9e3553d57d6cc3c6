//! Rate limits at the HTTP edge: which buckets a request draws from, the client address behind
//! trusted proxies, and the 429 a denial becomes.
//!
//! Two places draw:
//! - [`limit_by_client_ip`], a `route_layer` on the limited routes, runs before authentication:
//!   it draws from the client address's bucket, refuses an address whose failed-authentication
//!   bucket is spent, and counts every 401 its route answers against the address.
//! - [`RateLimits::check_caller`], which a handler calls once it knows who the caller is (and for
//!   which project): the subject's bucket and, if configured, the project's.
//!
//! A denial is an [`ApiError::RateLimited`]: 429, `Retry-After`, and the JSON error body. Every such
//! response carries the [`RateLimited`] decision in its extensions, so an audit layer can record
//! the denial without knowing where it was made.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::{ApiError, AppState};
use crate::config::ServerConfig;
use crate::ratelimit::{
    BucketKey, Decision, InMemoryRateLimiter, Quota, RateLimitConfig, RateLimiter,
};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    Subject,
    ClientIp,
    Project,
    AuthFailures,
}

impl LimitScope {
    /// Stable name, used as the metrics label and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Subject => "subject",
            LimitScope::ClientIp => "client_ip",
            LimitScope::Project => "project",
            LimitScope::AuthFailures => "auth_failures",
        }
    }
}

/// A request refused by a rate limit. Found in the extensions of every 429 response Rise sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limited ({}): retry after {:?}", .scope.as_str(), .retry_after)]
pub struct RateLimited {
    pub scope: LimitScope,
    /// When the same request would be allowed again.
    pub retry_after: Duration,
}

impl RateLimited {
    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        };
        rounded.max(1)
    }

    /// What the caller reads in the JSON error body.
    pub fn message(&self) -> String {
        let what = match self.scope {
            LimitScope::Subject => "too many requests for this caller",
            LimitScope::ClientIp => "too many requests from this address",
            LimitScope::Project => "too many requests for this project",
            LimitScope::AuthFailures => "too many failed authentications from this address",
        };
        format!("{what}; retry after {} s", self.retry_after_secs())
    }
}

/// The quotas in force, the limiter holding the buckets, and how to find the client's address.
#[derive(Debug)]
pub struct RateLimits {
    limiter: Arc<dyn RateLimiter>,
    /// `None` when rate limiting is turned off.
    quotas: Option<Quotas>,
    client_ip: ClientIpResolver,
}

#[derive(Debug, Clone, Copy)]
struct Quotas {
    per_subject: Quota,
    per_ip: Quota,
    per_project: Option<Quota>,
    auth_failures_per_ip: Quota,
}

impl RateLimits {
    /// The limits of validated configuration, over an in-memory limiter.
    pub fn from_config(server: &ServerConfig, config: &RateLimitConfig) -> anyhow::Result<Self> {
        let limiter = Arc::new(InMemoryRateLimiter::new(config.max_buckets));
        Self::with_limiter(server, config, limiter)
    }

    /// The limits of validated configuration, over any limiter (a shared one, or one with a test
    /// clock).
    pub fn with_limiter(
        server: &ServerConfig,
        config: &RateLimitConfig,
        limiter: Arc<dyn RateLimiter>,
    ) -> anyhow::Result<Self> {
        let quotas = config.enabled.then(|| Quotas {
            per_subject: config.per_subject.share(config.replicas),
            per_ip: config.per_ip.share(config.replicas),
            per_project: config.per_project.map(|q| q.share(config.replicas)),
            auth_failures_per_ip: config.auth_failures_per_ip.share(config.replicas),
        });
        Ok(RateLimits {
            limiter,
            quotas,
            client_ip: ClientIpResolver::from_config(server)?,
        })
    }

    /// No limits at all; the client address is the TCP peer.
    pub fn disabled() -> Self {
        RateLimits {
            limiter: Arc::new(InMemoryRateLimiter::new(1_000)),
            quotas: None,
            client_ip: ClientIpResolver::default(),
        }
    }

    /// Draw from the caller's bucket and, when per-project limits are configured, the project's.
    /// Call once per request, after authentication and before any provider work.
    pub async fn check_caller(
        &self,
        issuer: &str,
        subject: &str,
        project: Option<&str>,
    ) -> Result<(), RateLimited> {
        let Some(q) = &self.quotas else {
            return Ok(());
        };
        let key = BucketKey::Subject { issuer, subject };
        self.draw(key, q.per_subject, LimitScope::Subject).await?;
        if let (Some(project), Some(quota)) = (project, q.per_project) {
            self.draw(BucketKey::Project(project), quota, LimitScope::Project)
                .await?;
        }
        Ok(())
    }

    /// Before authentication: refuse an address whose failed authentications are spent, then
    /// draw from its request bucket.
    pub async fn check_client_ip(&self, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        let (Some(q), Some(ip)) = (&self.quotas, ip) else {
            return Ok(());
        };
        if let Decision::Denied { retry_after } = self
            .limiter
            .peek(BucketKey::auth_failures(ip), q.auth_failures_per_ip)
            .await
        {
            return Err(rejected(LimitScope::AuthFailures, retry_after));
        }
        self.draw(BucketKey::client_ip(ip), q.per_ip, LimitScope::ClientIp)
            .await
    }

    /// Count one failed authentication against the client's address.
    pub async fn record_auth_failure(&self, ip: Option<IpAddr>) {
        if let (Some(q), Some(ip)) = (&self.quotas, ip) {
            // A spent bucket stays spent; there is nothing more to do with the answer.
            let _ = self
                .limiter
                .acquire(BucketKey::auth_failures(ip), q.auth_failures_per_ip)
                .await;
        }
    }

    /// The client's address for a request that reached Rise from `peer`.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        self.client_ip.resolve(peer, headers)
    }

    async fn draw(
        &self,
        key: BucketKey<'_>,
        quota: Quota,
        scope: LimitScope,
    ) -> Result<(), RateLimited> {
        match self.limiter.acquire(key, quota).await {
            Decision::Allowed => Ok(()),
            Decision::Denied { retry_after } => Err(rejected(scope, retry_after)),
        }
    }
}

fn rejected(scope: LimitScope, retry_after: Duration) -> RateLimited {
    crate::metrics::record_rate_limited(scope.as_str());
    RateLimited { scope, retry_after }
}

/// Middleware for the limited routes (`route_layer`): limits by client address before the
/// handler runs, and counts the handler's 401s as failed authentications of that address. Puts
/// the [`ClientIp`] into the request's extensions for the handler and for audit.
pub async fn limit_by_client_ip(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = peer_addr(request.extensions());
    let ip = state.rate_limits.client_ip(peer, request.headers());
    request.extensions_mut().insert(ClientIp(ip));
    if let Err(limited) = state.rate_limits.check_client_ip(ip).await {
        return ApiError::from(limited).into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        state.rate_limits.record_auth_failure(ip).await;
    }
    response
}

/// The client's address: the TCP peer, or the address a trusted proxy reports. `None` when
/// unknown (a request served without a socket, as in-process tests are); address limits do not
/// apply then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<Arc<AppState>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return Ok(*ip);
        }
        let peer = peer_addr(&parts.extensions);
        Ok(ClientIp(state.rate_limits.client_ip(peer, &parts.headers)))
    }
}

/// The TCP peer: `ConnectInfo` from the server, or `MockConnectInfo` in tests.
fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|MockConnectInfo(addr)| *addr)
        })
}

/// Finds the client behind trusted proxies (`[server] trusted_proxy_header`, `trusted_proxies`).
///
/// The header is honoured only when the TCP peer is a trusted proxy, and is read from the right:
/// each trusted proxy appends the address it received the request from, so the right-most address
/// that is not itself a trusted proxy is the client. Anything left of it was written by the client
/// and is ignored. Understands `X-Forwarded-For`-style lists (`a, b`, with optional ports) and
/// RFC 7239 `Forwarded` elements (`for=a;proto=https, for="[v6]:port"`).
#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    header: Option<HeaderName>,
    trusted: Vec<IpNet>,
}

impl ClientIpResolver {
    pub fn from_config(server: &ServerConfig) -> anyhow::Result<Self> {
        let header = match &server.trusted_proxy_header {
            Some(name) => Some(HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                anyhow::anyhow!("server.trusted_proxy_header {name:?} is not a valid header name")
            })?),
            None => None,
        };
        Ok(ClientIpResolver {
            header,
            trusted: server.trusted_proxies.clone(),
        })
    }

    pub fn resolve(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip().to_canonical();
        let Some(header) = &self.header else {
            return Some(peer);
        };
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        // Header lines in order, then entries right to left. Split the raw bytes: a client's
        // own garbage (non-ASCII bytes) in the line a proxy appended to spoils only its entry,
        // never the addresses the proxies added after it.
        let entries: Vec<&str> = headers
            .get_all(header)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|entry| std::str::from_utf8(entry).unwrap_or(""))
            .collect();
        let mut nearest = peer;
        for entry in entries.iter().rev() {
            match parse_forwarded_entry(entry) {
                Some(ip) if self.is_trusted(ip) => nearest = ip,
                Some(ip) => return Some(ip),
                // A trusted proxy wrote something that is no address ("unknown", an obfuscated
                // identifier): the client is behind the nearest proxy we know.
                None => return Some(nearest),
            }
        }
        // Every hop is a trusted proxy: the left-most is as close to the client as we can see.
        Some(nearest)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// One element of `X-Forwarded-For` (`192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`) or of `Forwarded` (`for=192.0.2.1;proto=https`, `for="[2001:db8::1]"`).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let value = if entry.contains('=') {
        entry.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })?
    } else {
        entry
    };
    let value = value.trim_matches('"');
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .and_then(|v| v.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn resolver(header: &str, trusted: &[&str]) -> ClientIpResolver {
        ClientIpResolver {
            header: Some(HeaderName::from_bytes(header.as_bytes()).expect("header name")),
            trusted: trusted.iter().map(|n| n.parse().expect("cidr")).collect(),
        }
    }

    fn check(r: &ClientIpResolver, peer: &str, values: &[&str], expect: &str) {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                r.header.clone().expect("configured"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let peer: SocketAddr = peer.parse().expect("peer");
        let got = r.resolve(Some(peer), &headers);
        assert_eq!(
            got,
            Some(expect.parse().expect("ip")),
            "peer {peer}, header {values:?}"
        );
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_and_only_from_trusted_peers() {
        let r = resolver("x-forwarded-for", &["127.0.0.1/32", "10.0.0.0/8"]);
        // Untrusted peer: the header is the client's invention.
        check(&r, "192.0.2.9:1000", &["203.0.113.5"], "192.0.2.9");
        // Trusted peer, no header: the proxy itself.
        check(&r, "127.0.0.1:1000", &[], "127.0.0.1");
        check(&r, "127.0.0.1:1000", &["203.0.113.5"], "203.0.113.5");
        // A spoofed left-most entry is ignored: the right-most untrusted address is the client.
        check(
            &r,
            "127.0.0.1:1000",
            &["1.2.3.4, 203.0.113.5"],
            "203.0.113.5",
        );
        check(
            &r,
            "127.0.0.1:1000",
            &["1.2.3.4, 203.0.113.5, 10.1.1.1"],
            "203.0.113.5",
        );
        // Several header lines are one list, in order.
        check(
            &r,
            "127.0.0.1:1000",
            &["1.2.3.4", "203.0.113.5, 10.1.1.1"],
            "203.0.113.5",
        );
        // Ports and IPv6.
        check(&r, "127.0.0.1:1000", &["203.0.113.5:4711"], "203.0.113.5");
        check(&r, "127.0.0.1:1000", &["[2001:db8::1]:4711"], "2001:db8::1");
        check(&r, "127.0.0.1:1000", &["2001:db8::1"], "2001:db8::1");
        check(
            &r,
            "[::ffff:127.0.0.1]:1000",
            &["203.0.113.5"],
            "203.0.113.5",
        );
        // Garbage written by a trusted hop: the nearest known proxy.
        check(
            &r,
            "127.0.0.1:1000",
            &["203.0.113.5, unknown, 10.1.1.1"],
            "10.1.1.1",
        );
        check(&r, "127.0.0.1:1000", &["nonsense"], "127.0.0.1");
        // Every hop trusted: the left-most.
        check(&r, "127.0.0.1:1000", &["10.2.2.2, 10.1.1.1"], "10.2.2.2");
    }

    /// A proxy appends the client's address to the line the client sent: non-ASCII bytes the
    /// client put there spoil only its own entry.
    #[test]
    fn client_garbage_in_the_forwarded_line_does_not_hide_the_client() {
        let r = resolver("x-forwarded-for", &["127.0.0.2/32"]);
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.55").expect("obs-text is allowed"),
        );
        let peer: SocketAddr = "127.0.0.2:1000".parse().expect("peer");
        assert_eq!(
            r.resolve(Some(peer), &headers),
            Some("203.0.113.55".parse().expect("ip"))
        );
    }

    #[test]
    fn rfc7239_forwarded() {
        let r = resolver("forwarded", &["127.0.0.1/32"]);
        check(
            &r,
            "127.0.0.1:1000",
            &["for=1.2.3.4, for=203.0.113.5;proto=https;by=127.0.0.1"],
            "203.0.113.5",
        );
        check(
            &r,
            "127.0.0.1:1000",
            &["for=\"[2001:db8:cafe::17]:4711\""],
            "2001:db8:cafe::17",
        );
        check(&r, "127.0.0.1:1000", &["For=_hidden"], "127.0.0.1");
    }

    #[test]
    fn unknown_peer_is_unknown_client() {
        let r = resolver("x-forwarded-for", &["127.0.0.1/32"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        assert_eq!(r.resolve(None, &headers), None);
        assert_eq!(ClientIpResolver::default().resolve(None, &headers), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let r = |ms| RateLimited {
            scope: LimitScope::Subject,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(r(0).retry_after_secs(), 1);
        assert_eq!(r(1).retry_after_secs(), 1);
        assert_eq!(r(1000).retry_after_secs(), 1);
        assert_eq!(r(1001).retry_after_secs(), 2);
        assert_eq!(r(6000).retry_after_secs(), 6);
    }
}
