//! What Harbor's and Quay's providers share about the robot accounts they create, which neither
//! upstream expires on time: a name that carries the robot's Rise expiry
//! (`<prefix><Unix seconds><separator><nonce>`) and a description that starts with
//! [`DESCRIPTION_MARKER`]. Rise's reapers delete only robots with both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::registry::{Actions, CredentialRequest};

use super::upstream;

/// The start of every description Rise writes; the reaper deletes only robots that carry it.
const DESCRIPTION_MARKER: &str = "Rise robot until ";
/// Hex digits of the random part of a robot name.
pub(crate) const NONCE_LEN: usize = 12;

/// The expiry of a robot asked to live `ttl`, within `max_ttl` and at least a second: in whole
/// Unix seconds, rounded down (never longer than asked: the name carries seconds), and as a time.
pub(crate) fn expiry(ttl: Duration, max_ttl: Duration) -> (u64, SystemTime) {
    let ttl = ttl.min(max_ttl).max(Duration::from_secs(1));
    let expiry = unix_seconds(SystemTime::now() + ttl);
    (expiry, UNIX_EPOCH + Duration::from_secs(expiry))
}

/// The random part of a robot name: [`NONCE_LEN`] lowercase hex digits.
pub(crate) fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..NONCE_LEN].to_owned()
}

/// The expiry carried by `rest`, the part of a robot name after Rise's prefix, when it is
/// exactly `<digits><separator><NONCE_LEN lowercase hex digits>`.
pub(crate) fn parse_expiry(rest: &str, separator: char) -> Option<u64> {
    let (expiry, nonce) = rest.split_once(separator)?;
    let hex = nonce.len() == NONCE_LEN
        && nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let digits =
        !expiry.is_empty() && expiry.len() <= 19 && expiry.bytes().all(|b| b.is_ascii_digit());
    if hex && digits {
        expiry.parse().ok()
    } else {
        None
    }
}

/// Whether a robot's description is one Rise wrote.
pub(crate) fn is_rise_description(description: Option<&str>) -> bool {
    description.is_some_and(|d| d.starts_with(DESCRIPTION_MARKER))
}

/// A robot's description: until when, for whom and for which request it was made, cut to the
/// upstream's `max_len`.
pub(crate) fn description(
    expires_at: SystemTime,
    request: &CredentialRequest,
    granted_actions: Actions,
    max_len: usize,
) -> String {
    upstream::truncate(
        &format!(
            "{DESCRIPTION_MARKER}{} for {} of issuer {}: registry {}, project {} ({}), request {}",
            crate::audit::rfc3339_seconds(expires_at),
            request.principal.subject,
            request.principal.issuer,
            request.registry,
            request.project,
            granted_actions,
            request.request_id
        ),
        max_len,
    )
}

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_expiry() {
        let n = nonce();
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(
            parse_expiry(&format!("1764331200-{n}"), '-'),
            Some(1_764_331_200)
        );
        assert_eq!(
            parse_expiry("1764331200_3f2a9c1b07de", '_'),
            Some(1_764_331_200)
        );
        for other in [
            "1764331200-3f2a9c1b07de", // the other separator
            "1764331200_3f2a9c1b07d",  // short nonce
            "1764331200_3f2a9c1b07dz",
            "1764331200_3F2A9C1B07DE",
            "17643x1200_3f2a9c1b07de",
            "_3f2a9c1b07de",
            "99999999999999999999_3f2a9c1b07de",
        ] {
            assert_eq!(parse_expiry(other, '_'), None, "{other}");
        }
    }

    #[test]
    fn expiry_is_whole_seconds_within_the_limits() {
        let max = Duration::from_secs(3600);
        let now = unix_seconds(SystemTime::now());
        let (secs, at) = expiry(Duration::from_secs(7200), max);
        assert!((now + 3600..=now + 3601).contains(&secs), "{secs} {now}");
        assert_eq!(at, UNIX_EPOCH + Duration::from_secs(secs));
        let (secs, _) = expiry(Duration::ZERO, max);
        assert!(secs <= unix_seconds(SystemTime::now()) + 1);
    }

    #[test]
    fn descriptions_are_recognised() {
        assert!(is_rise_description(Some(
            "Rise robot until 2026-01-01T00:00:00Z"
        )));
        assert!(!is_rise_description(Some("ci robot")));
        assert!(!is_rise_description(None));
    }
}
