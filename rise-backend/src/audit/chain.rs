//! The hash chain: `hash = SHA-256(prev_hash || canonical(id, fields))`, hex-encoded.
//!
//! The canonical form is a length-prefixed encoding of the *stored* column values, in a fixed
//! order, so verification recomputes it from exactly what the database holds: a change to any
//! column of a record, or to its position (`id`), changes its hash.

use sha2::{Digest, Sha256};

use super::RecordFields;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Version tag of the canonical encoding; bump it (and keep the old one for verification) if the
/// set of hashed columns ever changes.
const CANONICAL_VERSION: &str = "rise-audit-v1";

/// The hash of record `id` with `fields`, chained to `prev_hash` (lowercase hex).
pub fn seal(prev_hash: &str, id: i64, fields: &RecordFields) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical(id, fields));
    data_encoding::HEXLOWER.encode(&h.finalize())
}

/// An unambiguous byte encoding: each value is tagged, and strings carry their length, so no two
/// different records encode alike.
fn canonical(id: i64, f: &RecordFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    put_str(&mut out, Some(CANONICAL_VERSION));
    put_int(&mut out, Some(id));
    put_int(&mut out, Some(f.time_ms));
    put_str(&mut out, Some(&f.request_id));
    put_str(&mut out, Some(&f.operation));
    put_str(&mut out, Some(&f.issuer));
    put_str(&mut out, Some(&f.subject));
    put_str(&mut out, Some(&f.groups));
    put_str(&mut out, f.client_ip.as_deref());
    put_str(&mut out, f.user_agent.as_deref());
    put_str(&mut out, f.project.as_deref());
    put_str(&mut out, f.registry.as_deref());
    put_str(&mut out, f.repository.as_deref());
    put_str(&mut out, Some(&f.actions_requested));
    put_str(&mut out, Some(&f.actions_granted));
    put_str(&mut out, Some(&f.result));
    put_str(&mut out, Some(&f.reason));
    put_int(&mut out, f.expires_ms);
    put_str(&mut out, f.fingerprint.as_deref());
    put_str(&mut out, f.credential_id.as_deref());
    out
}

fn put_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn put_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> RecordFields {
        RecordFields {
            time_ms: 1_700_000_000_000,
            request_id: "r1".into(),
            operation: "credentials".into(),
            issuer: "local".into(),
            subject: "alice".into(),
            groups: "[]".into(),
            client_ip: Some("127.0.0.1".into()),
            user_agent: None,
            project: Some("my-app".into()),
            registry: Some("default".into()),
            repository: Some("my-app".into()),
            actions_requested: "pull,push".into(),
            actions_granted: "pull,push".into(),
            result: "granted".into(),
            reason: "issued".into(),
            expires_ms: Some(1_700_000_900_000),
            fingerprint: Some("sha256:00".into()),
            credential_id: None,
        }
    }

    #[test]
    fn every_field_and_the_link_change_the_hash() {
        let base = seal(GENESIS, 1, &fields());
        assert_eq!(base.len(), 64);
        assert_eq!(base, seal(GENESIS, 1, &fields()), "deterministic");
        assert_ne!(base, seal(&base, 1, &fields()), "prev_hash is hashed");
        assert_ne!(base, seal(GENESIS, 2, &fields()), "position is hashed");
        let variants: [fn(&mut RecordFields); 10] = [
            |f| f.time_ms += 1,
            |f| f.subject = "mallory".into(),
            |f| f.groups = "[\"admins\"]".into(),
            |f| f.client_ip = None,
            |f| f.user_agent = Some(String::new()),
            |f| f.actions_granted = "pull".into(),
            |f| f.result = "denied".into(),
            |f| f.expires_ms = None,
            |f| f.fingerprint = Some("sha256:01".into()),
            |f| f.credential_id = Some("x".into()),
        ];
        for change in variants {
            let mut f = fields();
            change(&mut f);
            assert_ne!(base, seal(GENESIS, 1, &f));
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = fields();
        a.issuer = "ab".into();
        a.subject = "c".into();
        let mut b = fields();
        b.issuer = "a".into();
        b.subject = "bc".into();
        assert_ne!(seal(GENESIS, 1, &a), seal(GENESIS, 1, &b));
        let mut none = fields();
        none.user_agent = None;
        let mut empty = fields();
        empty.user_agent = Some(String::new());
        assert_ne!(seal(GENESIS, 1, &none), seal(GENESIS, 1, &empty));
    }
}
