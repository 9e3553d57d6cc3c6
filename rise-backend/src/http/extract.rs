//! Extractors: the authenticated [`Principal`], a request id and the client's address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::auth::{AuthError, Principal};

/// The caller, authenticated from `Authorization: Bearer <jwt>`.
pub struct Caller(pub Arc<Principal>);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        Ok(Caller(state.auth.verify(token).await?))
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(AuthError::MissingHeader)?
        .to_str()
        .map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token)
}

/// A per-request id: the caller's `X-Request-Id` when it is short and printable, else a new one.
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()));
        Ok(RequestId(match given {
            Some(v) => v.to_owned(),
            None => uuid::Uuid::new_v4().to_string(),
        }))
    }
}

/// The client's address and the `User-Agent`, for the audit log. The address is the one the rate
/// limits resolved ([`super::ClientIp`]: the TCP peer, or what a configured trusted proxy reports;
/// a forwarding header from anyone else is ignored), else the TCP peer; absent when the router runs
/// without `ConnectInfo`, as in `oneshot` tests.
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// Longest `User-Agent` kept; longer values are cut so a client cannot bloat the audit log.
/// Characters that could disguise a log line or an audit table are dropped from it.
const MAX_USER_AGENT: usize = 256;

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<super::ClientIp>()
            .and_then(|super::ClientIp(ip)| *ip)
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| addr.ip())
            });
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .filter(|c| !crate::auth::is_deceptive_char(*c))
                    .take(MAX_USER_AGENT)
                    .collect::<String>()
            })
            .filter(|v| !v.is_empty());
        Ok(ClientInfo { ip, user_agent })
    }
}

/// Whether the request's `Content-Type` is `expected` (parameters such as `charset` aside; media
/// types are case-insensitive, RFC 9110 8.3.1). A request without one passes: clients that send
/// a body without saying its type are read as the endpoint's. With `structured_suffix`, a
/// `+json`-style subtype of `expected`'s suffix passes too (`application/merge+json`).
pub(super) fn media_type_is(headers: &HeaderMap, expected: &str, structured_suffix: bool) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case(expected)
        || (structured_suffix
            && expected.split_once('/').is_some_and(|(kind, sub)| {
                media.split_once('/').is_some_and(|(k, s)| {
                    k.eq_ignore_ascii_case(kind)
                        && s.len() > sub.len()
                        && s.to_ascii_lowercase().ends_with(&format!("+{sub}"))
                })
            }))
}
