//! Revoked grants. A grant is a bearer secret that lives up to `max_ttl`; when one leaks, or a
//! caller's access must end now, `rise-backend grants revoke` records a [`Revocation`] in the
//! store. Every server re-reads the active revocations each `keys.reload_interval` and `/token`
//! refuses the grants they match, so a revoked grant stops working within that interval plus the
//! lifetime of a registry token already handed out (`token_ttl`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::bail;

use super::Grant;
use crate::audit::{from_unix_ms, unix_ms};
use crate::config::Config;
use crate::store::{Revocation, Store, StoreError};

/// `Revocation::kind` of one grant, by its credential id.
pub const CREDENTIAL: &str = "credential";
/// `Revocation::kind` of every grant of one caller (`ISSUER/SUBJECT`) issued before a time.
pub const SUBJECT: &str = "subject";

/// Why a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub at: SystemTime,
    pub reason: String,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the Rise grant was revoked at {}",
            crate::audit::rfc3339_seconds(self.at)
        )?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        f.write_str(": ask /registry/credentials for a new one")
    }
}

/// The active revocations, indexed for `/token`.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Credential id → the revocation.
    credentials: HashMap<String, Revocation>,
    /// `(issuer, subject)` → the revocation with the latest `before_ms`. A grant issued in that
    /// millisecond's second or earlier is refused.
    subjects: HashMap<(String, String), Revocation>,
}

impl Revocations {
    pub fn new(rows: Vec<Revocation>) -> Self {
        let mut this = Self::default();
        for r in rows {
            match r.kind.as_str() {
                CREDENTIAL => {
                    this.credentials.insert(r.value.clone(), r);
                }
                SUBJECT => {
                    let Some((issuer, subject)) = r.value.split_once('/') else {
                        continue;
                    };
                    let key = (issuer.to_owned(), subject.to_owned());
                    let later = this
                        .subjects
                        .get(&key)
                        .is_none_or(|known| known.before_ms < r.before_ms);
                    if later {
                        this.subjects.insert(key, r);
                    }
                }
                // A kind this version does not know (written by a newer one): skipped.
                _ => {}
            }
        }
        this
    }

    /// Whether `grant` is revoked, and by what.
    pub fn check(&self, grant: &Grant) -> Option<Revoked> {
        if self.is_empty() {
            return None;
        }
        let c = &grant.claims;
        let by_credential = self.credentials.get(&c.jti);
        let issued_ms = i64::try_from(c.iat.saturating_mul(1000)).unwrap_or(i64::MAX);
        let by_subject = self
            .subjects
            .get(&(c.idp.clone(), c.sub.clone()))
            // `iat` is in whole seconds: a grant of the revocation's own second is covered.
            .filter(|r| issued_ms <= r.before_ms);
        by_credential.or(by_subject).map(|r| Revoked {
            at: from_unix_ms(r.created_ms),
            reason: r.reason.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty() && self.subjects.is_empty()
    }
}

/// The current [`Revocations`], replaced whole on each reload.
#[derive(Debug, Default)]
pub struct LiveRevocations(RwLock<Arc<Revocations>>);

impl LiveRevocations {
    pub fn get(&self) -> Arc<Revocations> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-read the active revocations from `store`; on an error the loaded ones stay.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let rows = store.revocations_active(unix_ms(SystemTime::now())).await?;
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Revocations::new(rows));
        Ok(())
    }
}

/// What the audit log says was done: `revoked KIND VALUE`, and the reason if one was given.
pub fn audit_reason(r: &Revocation) -> String {
    if r.reason.is_empty() {
        format!("revoked {} {}", r.kind, r.value)
    } else {
        format!("revoked {} {}: {}", r.kind, r.value, r.reason)
    }
}

/// How far the clocks of replicas may disagree (they must run NTP, which keeps them within
/// milliseconds). A grant's `iat` comes from the clock of the replica that issued it, a
/// revocation's times from the clock of the one that stored it; this margin keeps a replica
/// whose clock runs ahead from issuing grants that escape a subject revocation, at the price of
/// also covering that subject's grants of the next two seconds.
pub const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// A revocation made now: of `kind` and `value`, covering grants issued up to now plus
/// [`CLOCK_SKEW`], kept until every such grant has expired (`longest_grant` from then, plus
/// the skew again).
pub fn revoke_now(kind: &str, value: &str, reason: &str, longest_grant: Duration) -> Revocation {
    let now = unix_ms(SystemTime::now());
    let skew = i64::try_from(CLOCK_SKEW.as_millis()).unwrap_or(i64::MAX);
    let before_ms = now.saturating_add(skew);
    let until_ms = before_ms
        .saturating_add(i64::try_from(longest_grant.as_millis()).unwrap_or(i64::MAX))
        .saturating_add(skew)
        .saturating_add(1000);
    Revocation {
        kind: kind.to_owned(),
        value: value.to_owned(),
        before_ms,
        created_ms: now,
        until_ms,
        reason: reason.to_owned(),
    }
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One grant, by the credential id the audit log records for it.
    Credential(String),
    /// Every grant issued until now to the caller `issuer` (a configured issuer name, as the
    /// audit log names it) / `subject`.
    Subject { issuer: String, subject: String },
}

impl Target {
    /// `ISSUER/SUBJECT` as the audit log and `rise audit` show callers.
    pub fn subject(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((issuer, subject)) if !issuer.is_empty() && !subject.is_empty() => {
                Ok(Target::Subject {
                    issuer: issuer.to_owned(),
                    subject: subject.to_owned(),
                })
            }
            _ => {
                Err("give ISSUER/SUBJECT, as the audit log names callers (e.g. local/alice)".into())
            }
        }
    }
}

/// What a leaked password is, for `grants revoke --password-stdin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeakedGrant {
    /// A grant of this Rise, still valid: revoke its credential id.
    Live {
        credential_id: String,
        /// `ISSUER/SUBJECT`.
        caller: String,
        /// The configured name of the registry it is for.
        registry: String,
    },
    /// A grant of this Rise that has expired already: nothing left to revoke.
    Expired,
}

/// Identify `password` as a grant signed with one of `keys`, without ever printing it.
pub fn identify(keys: &super::GrantKeys, password: &str) -> anyhow::Result<LeakedGrant> {
    use super::{GrantCheck, GrantError};
    match keys.check(password.trim()) {
        GrantCheck::Valid(grant) => Ok(LeakedGrant::Live {
            caller: format!("{}/{}", grant.claims.idp, grant.claims.sub),
            credential_id: grant.claims.jti,
            registry: grant.claims.reg,
        }),
        GrantCheck::Invalid(GrantError::Expired) => Ok(LeakedGrant::Expired),
        GrantCheck::Invalid(e) => bail!(
            "this is not a grant this Rise accepts ({e}); if it is one signed with a key retired since, it is refused already"
        ),
        GrantCheck::NotAGrant => bail!(
            "this is not a Rise grant: revoke other registries' credentials by --credential (the audit log's credential_id) and --registry"
        ),
    }
}

/// Record the revocation of `target` in `store` (see [`prepare`]), for a server configured by
/// `config`.
pub async fn revoke(
    config: &Config,
    store: &Store,
    target: &Target,
    reason: &str,
) -> anyhow::Result<Revocation> {
    let known = |issuer: &str| {
        (issuer == crate::config::LOCAL_ISSUER_NAME && config.auth.local.enabled)
            || config.auth.issuers.contains_key(issuer)
    };
    let revocation =
        prepare(target, reason, super::longest_grant(config), known).map_err(anyhow::Error::msg)?;
    store.revocation_add(&revocation).await?;
    Ok(revocation)
}

/// The revocation of `target` made now, covering grants issued until now and kept until the
/// longest grant (`longest_grant`) has expired. Refuses, saying what to fix: a caller of an
/// issuer `issuer_known` does not know (a typo would revoke nothing), a malformed credential
/// id, a reason over 200 characters or with control characters.
pub fn prepare(
    target: &Target,
    reason: &str,
    longest_grant: Duration,
    issuer_known: impl Fn(&str) -> bool,
) -> Result<Revocation, String> {
    if longest_grant.is_zero() {
        return Err("no Distribution registry is configured: there are no grants to revoke".into());
    }
    if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err("the reason must be one line of at most 200 characters".into());
    }
    match target {
        Target::Credential(id) => {
            if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
                return Err(
                    "give the credential id as the audit log shows it (credential_id)".into(),
                );
            }
            Ok(revoke_now(CREDENTIAL, id, reason, longest_grant))
        }
        Target::Subject { issuer, subject } => {
            if !issuer_known(issuer) {
                return Err(format!(
                    "issuer {:?} is not configured: give the issuer's name from the configuration, as the audit log shows it",
                    issuer.chars().take(80).collect::<String>()
                ));
            }
            if subject.len() > 1024 || subject.chars().any(char::is_control) {
                return Err("the subject must be one line of at most 1024 bytes".into());
            }
            Ok(revoke_now(
                SUBJECT,
                &format!("{issuer}/{subject}"),
                reason,
                longest_grant,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::providers::distribution::grant::GrantClaims;

    fn grant(idp: &str, sub: &str, jti: &str, iat_ms: i64) -> Grant {
        let claims: GrantClaims = serde_json::from_value(serde_json::json!({
            "iss": "rise:registry-grant",
            "sub": sub,
            "idp": idp,
            "reg": "default",
            "repo": "my-app",
            "act": ["push", "pull"],
            "iat": iat_ms / 1000,
            "exp": iat_ms / 1000 + 3600,
            "jti": jti,
        }))
        .expect("claims");
        Grant { claims }
    }

    fn row(kind: &str, value: &str, before_ms: i64) -> Revocation {
        Revocation {
            kind: kind.into(),
            value: value.into(),
            before_ms,
            created_ms: before_ms,
            until_ms: before_ms + 3_600_000,
            reason: "leaked".into(),
        }
    }

    #[test]
    fn a_revocation_matches_its_credential_or_the_callers_earlier_grants() {
        let t = 1_800_000_000_000;
        let revoked = Revocations::new(vec![
            row(CREDENTIAL, "cred-1", t),
            row(SUBJECT, "local/alice", t),
            // An earlier revocation of the same caller does not shadow the later one.
            row(SUBJECT, "local/alice", t - 60_000),
            row("someday", "x", t),
            row(SUBJECT, "malformed", t),
        ]);
        // The credential, whenever it was issued.
        let by_id = revoked.check(&grant("corp", "bob", "cred-1", t + 5_000));
        assert_eq!(by_id.map(|r| r.reason), Some("leaked".to_owned()));
        // alice's grants up to the revocation's second; not later ones, not others'.
        assert!(
            revoked
                .check(&grant("local", "alice", "a", t - 3_600_000))
                .is_some()
        );
        assert!(revoked.check(&grant("local", "alice", "b", t)).is_some());
        assert!(
            revoked
                .check(&grant("local", "alice", "c", t + 1_000))
                .is_none()
        );
        assert!(
            revoked
                .check(&grant("corp", "alice", "d", t - 1_000))
                .is_none()
        );
        assert!(
            revoked
                .check(&grant("local", "bob", "e", t - 1_000))
                .is_none()
        );
        let message = revoked
            .check(&grant("local", "alice", "a", t - 1_000))
            .expect("revoked")
            .to_string();
        assert!(
            message.starts_with("the Rise grant was revoked at 2027-01-15T"),
            "{message}"
        );
        assert!(message.contains("(leaked)"), "{message}");
        assert!(Revocations::new(Vec::new()).is_empty());
    }

    #[test]
    fn a_revocation_allows_for_replicas_clocks() {
        let longest = Duration::from_secs(3600);
        let before = unix_ms(SystemTime::now());
        let r = revoke_now(SUBJECT, "local/alice", "", longest);
        let after = unix_ms(SystemTime::now());
        let skew = i64::try_from(CLOCK_SKEW.as_millis()).expect("fits");
        assert!((before..=after).contains(&r.created_ms));
        assert_eq!(r.before_ms, r.created_ms + skew);
        assert_eq!(r.until_ms, r.before_ms + 3_600_000 + skew + 1000);
        let revoked = Revocations::new(vec![r.clone()]);
        // Stamped by a replica whose clock runs 1.5 s ahead, just before the revocation.
        let fast = grant("local", "alice", "f", r.created_ms - 100 + 1_500);
        assert!(revoked.check(&fast).is_some());
        // Past the margin: a grant from after the revocation, allowed again.
        let later = grant("local", "alice", "l", r.before_ms + 1_000);
        assert!(revoked.check(&later).is_none());
    }

    #[test]
    fn subjects_are_issuer_slash_subject() {
        assert_eq!(
            Target::subject("local/ci:repo/app"),
            Ok(Target::Subject {
                issuer: "local".into(),
                subject: "ci:repo/app".into()
            })
        );
        for bad in ["alice", "/alice", "local/", ""] {
            assert!(Target::subject(bad).is_err(), "{bad}");
        }
    }
}
