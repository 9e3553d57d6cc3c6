//! Brokered registry credentials cached per caller token and scope (`<cache>/credentials.json`,
//! 0600), so the credential helper does not ask the backend on every `docker` call, and asks again
//! once a cached credential is within the margin of its expiry. The cache is an optimisation: with
//! no cache directory it is empty, and an entry that cannot be believed is a miss.
//!
//! Architecture invariant: a cached credential is served only to the very token the backend
//! issued it to (the key holds a SHA-256 of the token, never its unverified claims, which anyone
//! can copy into a token of their own), and never once that token's `exp` has passed. A new token
//! asks the backend once, which checks it and writes the audit record. Entries written under other
//! keys (older versions keyed on `iss` + `sub`) are never matched: they are misses.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Grant, MAX_CREDENTIAL_LIFETIME};
use crate::context::Context;
use crate::error::CliError;
use crate::fsutil;
use crate::jwt;
use crate::registries::{canonical_host, same_host, split_server_url};
use crate::session::{secret_serde, unix_now};

/// Fresh credentials are fetched when a cached one expires within this long, unless configured.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(300);

/// Who asked for what: the cache key's parts.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub backend: &'a str,
    /// The registry host the credential is for (as the container tool named it).
    pub registry: &'a str,
    /// The caller's token: the key holds its SHA-256, and a token past its `exp` gets nothing.
    pub caller: &'a SecretString,
    pub project: &'a str,
    pub actions: &'a str,
}

impl Scope<'_> {
    /// A hash, so the file does not list who used which project in clear.
    fn key(&self) -> String {
        let mut h = Sha256::new();
        let registry = canonical_host(self.registry).to_ascii_lowercase();
        let caller = Sha256::digest(self.caller.expose_secret().as_bytes());
        for part in [
            self.backend.as_bytes(),
            registry.as_bytes(),
            caller.as_slice(),
            self.project.as_bytes(),
            self.actions.as_bytes(),
        ] {
            h.update(part);
            h.update([0u8]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    #[serde(default)]
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    backend: String,
    registry_url: String,
    username: String,
    #[serde(with = "secret_serde")]
    password: secrecy::SecretString,
    /// Unix seconds.
    expires_at: u64,
    repository: String,
    image: String,
    project: String,
    #[serde(default)]
    actions: Vec<String>,
}

/// A cached grant for `scope` that is for its registry and still valid for longer than `margin`,
/// while the caller's token has not expired.
pub fn get(ctx: &Context, scope: &Scope<'_>, margin: Duration) -> Result<Option<Grant>, CliError> {
    if jwt::has_expired(scope.caller.expose_secret(), unix_now()) {
        return Ok(None);
    }
    let file: CacheFile = read(ctx)?;
    let Some(e) = file.entries.get(&scope.key()) else {
        return Ok(None);
    };
    if !same_host(split_server_url(&e.registry_url).0, scope.registry) {
        return Ok(None);
    }
    // The file is ours but may be edited or corrupt: an expiry past any believable lifetime
    // (or past what a SystemTime holds) is a miss, not a panic.
    let now = SystemTime::now();
    let latest = now.checked_add(MAX_CREDENTIAL_LIFETIME);
    let Some(expires_at) = UNIX_EPOCH
        .checked_add(Duration::from_secs(e.expires_at))
        .filter(|t| latest.is_some_and(|latest| *t <= latest))
    else {
        return Ok(None);
    };
    let fresh_enough = expires_at
        .duration_since(now)
        .is_ok_and(|left| left > margin);
    if !fresh_enough {
        return Ok(None);
    }
    Ok(Some(Grant {
        registry_url: e.registry_url.clone(),
        username: e.username.clone(),
        password: e.password.clone(),
        expires_at,
        repository: e.repository.clone(),
        image: e.image.clone(),
        project: e.project.clone(),
        actions: e.actions.clone(),
        warnings: Vec::new(),
    }))
}

/// Remember `grant` for `scope`, dropping expired entries.
pub fn put(ctx: &Context, scope: &Scope<'_>, grant: &Grant) -> Result<(), CliError> {
    let now = unix(SystemTime::now());
    let entry = Entry {
        backend: scope.backend.to_owned(),
        registry_url: grant.registry_url.clone(),
        username: grant.username.clone(),
        password: grant.password.clone(),
        expires_at: unix(grant.expires_at),
        repository: grant.repository.clone(),
        image: grant.image.clone(),
        project: grant.project.clone(),
        actions: grant.actions.clone(),
    };
    update(ctx, |file| {
        file.entries.retain(|_, e| e.expires_at > now);
        file.entries.insert(scope.key(), entry);
        true
    })
}

/// Forget the cached credential for `scope`, if any.
pub fn remove(ctx: &Context, scope: &Scope<'_>) -> Result<(), CliError> {
    if ctx.credentials_cache_file().is_err() {
        return Ok(());
    }
    update(ctx, |file| file.entries.remove(&scope.key()).is_some())
}

/// Forget cached credentials for a registry host (helper `erase`) or a backend (`rise logout`).
/// Returns how many were removed.
pub fn forget(
    ctx: &Context,
    registry_host: Option<&str>,
    backend: Option<&str>,
) -> Result<usize, CliError> {
    let Ok(path) = ctx.credentials_cache_file() else {
        return Ok(0);
    };
    if !path.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    update(ctx, |file| {
        let before = file.entries.len();
        file.entries.retain(|_, e| {
            let host_matches = registry_host.is_some_and(|h| same_host(&e.registry_url, h));
            let backend_matches = backend.is_some_and(|b| e.backend == b);
            !(host_matches || backend_matches)
        });
        removed = before - file.entries.len();
        removed > 0
    })?;
    Ok(removed)
}

/// Usernames of cached credentials by registry host (helper `list`).
pub fn usernames(ctx: &Context) -> Result<BTreeMap<String, String>, CliError> {
    let file: CacheFile = read(ctx)?;
    Ok(file
        .entries
        .into_values()
        .map(|e| (e.registry_url, e.username))
        .collect())
}

/// Apply `change` to the cache file under its lock, reading the file under it: Docker runs
/// helpers in parallel, and an unlocked read-modify-write loses the entries written beside it,
/// or brings back one that an `erase` or `rise logout` beside it just removed. `change` says
/// whether there is anything to write.
fn update(ctx: &Context, change: impl FnOnce(&mut CacheFile) -> bool) -> Result<(), CliError> {
    let path = ctx.credentials_cache_file()?;
    let _lock = fsutil::lock_file(&ctx.credentials_cache_lock_file()?)?;
    let mut file = read(ctx)?;
    if change(&mut file) {
        fsutil::write_json_private(&path, &file)?;
    }
    Ok(())
}

/// The cache as it is now. Unlocked: every write replaces the file whole (a rename), so a
/// reader sees one version or the other.
fn read(ctx: &Context) -> Result<CacheFile, CliError> {
    let Ok(path) = ctx.credentials_cache_file() else {
        return Ok(CacheFile::default());
    };
    // A cache that cannot be parsed (older version, truncated) is worthless, not an error.
    match fsutil::read_json_or_default(&path) {
        Ok(f) => Ok(f),
        Err(CliError::Input(_)) => Ok(CacheFile::default()),
        Err(e) => Err(e),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// An unsigned JWT with these claims (the cache never verifies one: the backend does).
    fn token(claims: &str) -> SecretString {
        format!("eyJhbGciOiJub25lIn0.{}.sig", URL_SAFE_NO_PAD.encode(claims)).into()
    }

    /// A context whose cache lives in `dir`.
    fn cache_in(dir: &tempfile::TempDir) -> Context {
        Context::from_env([(
            "RISE_CACHE_DIR".to_owned(),
            dir.path().display().to_string(),
        )])
    }

    /// `caller` asking for my-app on 127.0.0.1:5000, with every action.
    fn my_app_scope(caller: &SecretString) -> Scope<'_> {
        Scope {
            backend: "http://b",
            registry: "127.0.0.1:5000",
            caller,
            project: "my-app",
            actions: "",
        }
    }

    fn alice() -> SecretString {
        token(r#"{"iss":"https://idp","sub":"alice","exp":99999999999,"jti":"1"}"#)
    }

    fn grant(password: &str, ttl: Duration) -> Grant {
        Grant {
            registry_url: "127.0.0.1:5000".into(),
            username: "rise".into(),
            password: password.to_owned().into(),
            expires_at: SystemTime::now() + ttl,
            repository: "my-app".into(),
            image: "127.0.0.1:5000/my-app".into(),
            project: "my-app".into(),
            actions: vec!["pull".into(), "push".into()],
            warnings: vec![],
        }
    }

    #[test]
    fn cached_until_inside_the_margin_and_keyed_by_token_and_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::from_env([
            (
                "RISE_CONFIG_DIR".to_owned(),
                dir.path().join("c").display().to_string(),
            ),
            (
                "RISE_CACHE_DIR".to_owned(),
                dir.path().join("k").display().to_string(),
            ),
        ]);
        let (alice_token, bob_token) = (alice(), token(r#"{"iss":"https://idp","sub":"bob"}"#));
        let alice = Scope {
            backend: "http://b",
            registry: "127.0.0.1:5000",
            caller: &alice_token,
            project: "my-app",
            actions: "push,pull",
        };
        let bob = Scope {
            caller: &bob_token,
            ..alice.clone()
        };
        let pull = Scope {
            actions: "pull",
            ..alice.clone()
        };
        let elsewhere = Scope {
            registry: "registry.example.com",
            ..alice.clone()
        };
        put(&ctx, &alice, &grant("s1", Duration::from_secs(600))).expect("put");
        let got = get(&ctx, &alice, Duration::from_secs(60))
            .expect("get")
            .expect("cached");
        assert_eq!(got.password.expose_secret(), "s1");
        assert!(get(&ctx, &bob, Duration::ZERO).expect("get").is_none());
        assert!(get(&ctx, &pull, Duration::ZERO).expect("get").is_none());
        assert!(
            get(&ctx, &elsewhere, Duration::ZERO)
                .expect("get")
                .is_none()
        );
        // Inside the margin: not handed out.
        assert!(
            get(&ctx, &alice, Duration::from_secs(900))
                .expect("get")
                .is_none()
        );
        assert_eq!(
            usernames(&ctx)
                .expect("list")
                .get("127.0.0.1:5000")
                .map(String::as_str),
            Some("rise")
        );
        assert_eq!(
            forget(&ctx, Some("127.0.0.1:5000"), None).expect("forget"),
            1
        );
        assert!(get(&ctx, &alice, Duration::ZERO).expect("get").is_none());
    }

    #[test]
    fn a_cached_credential_for_another_registry_is_a_miss_and_can_be_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = cache_in(&dir);
        let caller = alice();
        let scope = Scope {
            backend: "http://b",
            registry: "registry.example.com",
            caller: &caller,
            project: "my-app",
            actions: "",
        };
        // Written under this scope's key, but the grant names 127.0.0.1:5000.
        put(&ctx, &scope, &grant("s1", Duration::from_secs(600))).expect("put");
        assert!(get(&ctx, &scope, Duration::ZERO).expect("get").is_none());
        let docker_hub = Scope {
            registry: "index.docker.io",
            ..scope.clone()
        };
        let mut hub_grant = grant("s2", Duration::from_secs(600));
        hub_grant.registry_url = "docker.io".into();
        put(&ctx, &docker_hub, &hub_grant).expect("put");
        assert!(
            get(&ctx, &docker_hub, Duration::ZERO)
                .expect("get")
                .is_some()
        );
        remove(&ctx, &docker_hub).expect("remove");
        assert!(
            get(&ctx, &docker_hub, Duration::ZERO)
                .expect("get")
                .is_none()
        );
    }

    #[test]
    fn a_credential_is_served_only_to_the_token_it_was_issued_to_while_it_lasts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = cache_in(&dir);
        let issued_to = alice();
        let scope = my_app_scope(&issued_to);
        put(&ctx, &scope, &grant("s1", Duration::from_secs(600))).expect("put");
        assert!(get(&ctx, &scope, Duration::ZERO).expect("get").is_some());
        // Same iss and sub: a later token of alice's, or one anybody could forge.
        for other in [
            token(r#"{"iss":"https://idp","sub":"alice","exp":99999999999,"jti":"2"}"#),
            token(r#"{"iss":"https://idp","sub":"alice"}"#),
        ] {
            let scope = Scope {
                caller: &other,
                ..scope.clone()
            };
            assert!(get(&ctx, &scope, Duration::ZERO).expect("get").is_none());
        }
        // A token past its exp gets nothing, not even what was cached for it.
        let expired = token(r#"{"iss":"https://idp","sub":"alice","exp":1000}"#);
        let scope = Scope {
            caller: &expired,
            ..scope.clone()
        };
        put(&ctx, &scope, &grant("s2", Duration::from_secs(600))).expect("put");
        assert!(get(&ctx, &scope, Duration::ZERO).expect("get").is_none());
    }

    #[test]
    fn entries_of_the_old_iss_and_sub_keys_are_misses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = cache_in(&dir);
        // As written before keys held the token's hash: sha256("http://b\0https://idp alice\0my-app\0\0").
        let mut old = Sha256::new();
        for part in ["http://b", "https://idp alice", "my-app", ""] {
            old.update(part.as_bytes());
            old.update([0u8]);
        }
        let old_key: String = old.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let entry = serde_json::json!({
            "backend": "http://b", "registry_url": "127.0.0.1:5000", "username": "rise",
            "password": "s1", "expires_at": unix(SystemTime::now()) + 600,
            "repository": "my-app", "image": "127.0.0.1:5000/my-app", "project": "my-app",
        });
        let path = ctx.credentials_cache_file().expect("dir");
        std::fs::write(
            &path,
            serde_json::json!({"entries": {old_key: entry}}).to_string(),
        )
        .expect("write");
        let caller = alice();
        let scope = my_app_scope(&caller);
        assert!(get(&ctx, &scope, Duration::ZERO).expect("get").is_none());
        put(&ctx, &scope, &grant("s2", Duration::from_secs(600))).expect("put");
        assert_eq!(
            get(&ctx, &scope, Duration::ZERO)
                .expect("get")
                .expect("cached")
                .password
                .expose_secret(),
            "s2"
        );
    }

    #[test]
    fn an_unbelievable_cached_expiry_is_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = cache_in(&dir);
        let caller = alice();
        let scope = my_app_scope(&caller);
        put(&ctx, &scope, &grant("s1", Duration::from_secs(600))).expect("put");
        let path = ctx.credentials_cache_file().expect("dir");
        let text = std::fs::read_to_string(&path).expect("read");
        let mut doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        for expires_at in [u64::MAX, 100_000_000_000] {
            for entry in doc["entries"]
                .as_object_mut()
                .expect("entries")
                .values_mut()
            {
                entry["expires_at"] = expires_at.into();
            }
            std::fs::write(&path, doc.to_string()).expect("write");
            assert!(
                get(&ctx, &scope, Duration::ZERO).expect("get").is_none(),
                "{expires_at}"
            );
        }
    }

    #[test]
    fn entries_put_side_by_side_all_stay() {
        // Docker runs helpers in parallel: each put re-reads the file under the lock.
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = cache_in(&dir);
        let callers: Vec<SecretString> = (0..16)
            .map(|i| token(&format!(r#"{{"sub":"user{i}","exp":99999999999}}"#)))
            .collect();
        let scope = |caller| Scope {
            backend: "http://b",
            registry: "127.0.0.1:5000",
            caller,
            project: "my-app",
            actions: "",
        };
        std::thread::scope(|threads| {
            for caller in &callers {
                let ctx = &ctx;
                threads.spawn(move || {
                    put(ctx, &scope(caller), &grant("s", Duration::from_secs(600))).expect("put");
                });
            }
        });
        for (i, caller) in callers.iter().enumerate() {
            assert!(
                get(&ctx, &scope(caller), Duration::ZERO)
                    .expect("get")
                    .is_some(),
                "user{i}'s entry was lost"
            );
        }
    }

    #[test]
    fn without_a_cache_directory_the_cache_is_empty() {
        let ctx = Context::with_platform_dirs([], None, None);
        let caller = alice();
        let scope = my_app_scope(&caller);
        assert!(get(&ctx, &scope, Duration::ZERO).expect("get").is_none());
        assert!(usernames(&ctx).expect("list").is_empty());
        assert_eq!(forget(&ctx, Some("h"), None).expect("forget"), 0);
        let err = put(&ctx, &scope, &grant("s1", Duration::from_secs(600)))
            .expect_err("nowhere to write");
        assert!(err.to_string().contains("RISE_CACHE_DIR"), "{err}");
    }
}
