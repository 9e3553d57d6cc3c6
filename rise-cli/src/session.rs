//! Stored logins and the caller's token.
//!
//! The token sent to the backend comes from, in order: `RISE_TOKEN` (CI), the file named by
//! `RISE_TOKEN_FILE` (re-read on every use, for platforms that rotate it), or the login that
//! `rise login` stored for the backend, renewed with its refresh token when it has expired.
//! A token from the environment or a file is checked before it is sent: surrounding whitespace
//! (a file's trailing newline) is dropped, and anything else that cannot be part of a bearer
//! token (spaces, line breaks, control or non-ASCII characters) is refused.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::backend::normalize_url;
use crate::context::{Context, vars};
use crate::error::CliError;
use crate::fsutil;
use crate::jwt;
use crate::oidc::{self, RefreshError, TokenSet};

/// A stored token is renewed when it expires within this long, so it does not expire in flight.
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// A token file larger than this is not a token file (the helper bounds its stdin the same way).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// `login.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFile {
    /// The backend of the last `rise login`; commands use it when no backend is named.
    #[serde(default)]
    pub default_backend: Option<String>,
    #[serde(default)]
    pub logins: BTreeMap<String, StoredLogin>,
}

/// One backend's login.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLogin {
    pub issuer_name: String,
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(with = "secret_serde")]
    pub access_token: SecretString,
    #[serde(default, with = "opt_secret_serde")]
    pub refresh_token: Option<SecretString>,
    #[serde(default, with = "opt_secret_serde")]
    pub id_token: Option<SecretString>,
    /// Unix seconds when the bearer token expires, when known.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl StoredLogin {
    pub fn new(
        issuer_name: &str,
        meta: &oidc::ProviderMetadata,
        client_id: &str,
        tokens: TokenSet,
        previous_refresh: Option<SecretString>,
    ) -> Self {
        let mut login = StoredLogin {
            issuer_name: issuer_name.to_owned(),
            issuer: meta.issuer.clone(),
            client_id: client_id.to_owned(),
            token_endpoint: meta.token_endpoint.clone(),
            revocation_endpoint: meta.revocation_endpoint.clone(),
            access_token: tokens.access_token,
            // A provider that does not rotate refresh tokens omits it on refresh: keep the old one.
            refresh_token: tokens.refresh_token.or(previous_refresh),
            id_token: tokens.id_token,
            expires_at: None,
        };
        login.expires_at = jwt::claims(login.bearer().expose_secret())
            .and_then(|c| c.exp)
            // Saturating: a provider's absurd lifetime must not wrap into a past expiry.
            .or_else(|| tokens.expires_in.map(|s| unix_now().saturating_add(s)));
        login
    }

    /// The token sent to the backend: the access token when it is a JWT (an OAuth resource
    /// server token for the backend's audience), else the ID token (some providers issue opaque
    /// access tokens; their ID token is the JWT a backend can verify).
    pub fn bearer(&self) -> &SecretString {
        if jwt::is_jwt(self.access_token.expose_secret()) {
            return &self.access_token;
        }
        self.id_token.as_ref().unwrap_or(&self.access_token)
    }

    fn needs_renewal(&self) -> bool {
        match self.expires_at {
            Some(exp) => unix_now().saturating_add(RENEW_BEFORE.as_secs()) >= exp,
            None => false,
        }
    }

    pub fn subject(&self) -> Option<String> {
        jwt::claims(self.bearer().expose_secret()).and_then(|c| c.sub)
    }
}

/// Where the caller's token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    File(PathBuf),
    Login,
}

/// The caller's token for one backend, and where it came from.
#[derive(Debug)]
pub struct CallerToken {
    pub token: SecretString,
    pub source: TokenSource,
}

/// The backend to talk to: `--backend`, else `RISE_BACKEND`, else the last `rise login`.
pub fn resolve_backend(ctx: &Context, flag: Option<&str>) -> Result<String, CliError> {
    if let Some(url) = flag.or(ctx.var(vars::BACKEND)) {
        return normalize_url(url, ctx.transport());
    }
    let file: LoginFile = fsutil::read_json_or_default(&ctx.login_file()?)?;
    let url = file.default_backend.ok_or(CliError::NoBackend)?;
    normalize_url(&url, ctx.transport())
}

/// The token to send to `backend` (see the module docs for the order).
pub async fn caller_token(
    ctx: &Context,
    http: &reqwest::Client,
    backend: &str,
) -> Result<CallerToken, CliError> {
    if let Some(token) = ctx.var(vars::TOKEN) {
        let token = checked_token(token, vars::TOKEN)?;
        return Ok(CallerToken {
            token: token.into(),
            source: TokenSource::Env,
        });
    }
    if let Some(path) = ctx.var(vars::TOKEN_FILE) {
        let path = PathBuf::from(path);
        let token = read_token_file(&path)?;
        return Ok(CallerToken {
            token: token.into(),
            source: TokenSource::File(path),
        });
    }
    let token = stored_bearer(ctx, http, backend).await?;
    Ok(CallerToken {
        token,
        source: TokenSource::Login,
    })
}

/// `raw` without surrounding whitespace, refused when empty or when what is left holds anything
/// but printable ASCII (a bearer token never does; such a header could not even be sent).
fn checked_token(raw: &str, from: &str) -> Result<String, CliError> {
    let token = raw.trim();
    if token.is_empty() {
        return Err(CliError::Input(format!("{from} holds no token")));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CliError::Input(format!(
            "the token contains invalid characters (a space, line break, control or non-ASCII character): check {from}; it must hold exactly one token"
        )));
    }
    Ok(token.to_owned())
}

/// The token in `RISE_TOKEN_FILE`, read up to [`MAX_TOKEN_FILE_BYTES`].
fn read_token_file(path: &Path) -> Result<String, CliError> {
    let action = format!("read the token file ({})", vars::TOKEN_FILE);
    let from = format!("the token file {} ({})", path.display(), vars::TOKEN_FILE);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| CliError::file(&action, path, &e))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(CliError::Input(format!(
            "{from} is larger than {} KiB, too large for a token: point {} at the file that holds only the token",
            MAX_TOKEN_FILE_BYTES / 1024,
            vars::TOKEN_FILE
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        CliError::Input(format!(
            "the token contains invalid characters (it is not text): check {from}; it must hold exactly one token"
        ))
    })?;
    checked_token(&text, &from)
}

/// The stored login's bearer token, renewed first when it has (nearly) expired.
async fn stored_bearer(
    ctx: &Context,
    http: &reqwest::Client,
    backend: &str,
) -> Result<SecretString, CliError> {
    let path = ctx.login_file()?;
    let file: LoginFile = fsutil::read_json_or_default(&path)?;
    let login = file
        .logins
        .get(backend)
        .ok_or_else(|| CliError::NotLoggedIn {
            backend: backend.to_owned(),
        })?;
    if !login.needs_renewal() {
        return Ok(login.bearer().clone());
    }
    // Renew under a lock: providers that rotate refresh tokens revoke the whole grant when one
    // is used twice, so two helpers renewing at once would log the user out.
    let _lock = fsutil::lock_file(&ctx.login_lock_file()?)?;
    let mut file: LoginFile = fsutil::read_json_or_default(&path)?;
    let Some(login) = file.logins.get(backend) else {
        return Err(CliError::NotLoggedIn {
            backend: backend.to_owned(),
        });
    };
    if !login.needs_renewal() {
        return Ok(login.bearer().clone());
    }
    let expired = || CliError::LoginExpired {
        backend: backend.to_owned(),
    };
    let refresh_token = login.refresh_token.clone().ok_or_else(expired)?;
    let tokens = match oidc::refresh(
        http,
        ctx.transport(),
        &login.token_endpoint,
        &login.client_id,
        &refresh_token,
    )
    .await
    {
        Ok(t) => t,
        Err(RefreshError::Rejected) => return Err(expired()),
        Err(RefreshError::Failed(e)) => return Err(e),
    };
    let meta = oidc::ProviderMetadata {
        issuer: login.issuer.clone(),
        token_endpoint: login.token_endpoint.clone(),
        device_authorization_endpoint: None,
        authorization_endpoint: None,
        revocation_endpoint: login.revocation_endpoint.clone(),
    };
    let renewed = StoredLogin::new(
        &login.issuer_name,
        &meta,
        &login.client_id,
        tokens,
        Some(refresh_token),
    );
    // A provider may renew with an opaque access token and no ID token: nothing the backend
    // can verify. Sending it would fail as a malformed token; the login has to be redone. The
    // stored login goes: its refresh token was just used, and providers that rotate them treat
    // a second use as theft.
    if !jwt::is_jwt(renewed.bearer().expose_secret()) {
        file.logins.remove(backend);
        fsutil::write_json_private(&path, &file)?;
        return Err(expired());
    }
    let bearer = renewed.bearer().clone();
    file.logins.insert(backend.to_owned(), renewed);
    fsutil::write_json_private(&path, &file)?;
    Ok(bearer)
}

/// Store a fresh login for `backend` and make it the default backend.
pub fn save_login(ctx: &Context, backend: &str, login: StoredLogin) -> Result<(), CliError> {
    let path = ctx.login_file()?;
    let _lock = fsutil::lock_file(&ctx.login_lock_file()?)?;
    let mut file: LoginFile = fsutil::read_json_or_default(&path)?;
    file.logins.insert(backend.to_owned(), login);
    file.default_backend = Some(backend.to_owned());
    fsutil::write_json_private(&path, &file)
}

/// Remove the login for `backend`; returns it so the caller can revoke its refresh token.
pub fn remove_login(ctx: &Context, backend: &str) -> Result<Option<StoredLogin>, CliError> {
    let path = ctx.login_file()?;
    let _lock = fsutil::lock_file(&ctx.login_lock_file()?)?;
    let mut file: LoginFile = fsutil::read_json_or_default(&path)?;
    let removed = file.logins.remove(backend);
    if file.default_backend.as_deref() == Some(backend) {
        file.default_backend = file.logins.keys().next().cloned();
    }
    if removed.is_some() {
        fsutil::write_json_private(&path, &file)?;
    }
    Ok(removed)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serde for a secret that must be written to our own 0600 files.
pub mod secret_serde {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        // Exposed only to be written into a private file.
        s.serialize_str(v.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        Ok(String::deserialize(d)?.into())
    }
}

/// [`secret_serde`] for optional secrets.
pub mod opt_secret_serde {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(v.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(exp: u64) -> String {
        let payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"https://idp","sub":"alice","exp":{exp}}}"#
        ));
        format!("eyJhbGciOiJub25lIn0.{payload}.sig")
    }

    fn ctx(dir: &Path, extra: &[(&str, &str)]) -> Context {
        let mut vars = vec![
            (
                "RISE_CONFIG_DIR".to_owned(),
                dir.join("c").display().to_string(),
            ),
            (
                "RISE_CACHE_DIR".to_owned(),
                dir.join("k").display().to_string(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Context::from_env(vars)
    }

    fn meta() -> oidc::ProviderMetadata {
        oidc::ProviderMetadata {
            issuer: "https://idp".into(),
            token_endpoint: "http://127.0.0.1:9/token".into(),
            device_authorization_endpoint: None,
            authorization_endpoint: None,
            revocation_endpoint: None,
        }
    }

    fn tokens(access: String, id: Option<String>) -> TokenSet {
        TokenSet {
            access_token: access.into(),
            refresh_token: Some("refresh".to_owned().into()),
            id_token: id.map(Into::into),
            expires_in: Some(600),
        }
    }

    #[tokio::test]
    async fn env_token_beats_file_beats_login() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{}\n", jwt(1))).expect("write");
        let http = reqwest::Client::new();
        let file_var = token_file.display().to_string();
        let c = ctx(
            dir.path(),
            &[("RISE_TOKEN", "from-env"), ("RISE_TOKEN_FILE", &file_var)],
        );
        let t = caller_token(&c, &http, "http://b").await.expect("token");
        assert_eq!(t.source, TokenSource::Env);
        assert_eq!(t.token.expose_secret(), "from-env");
        let c = ctx(dir.path(), &[("RISE_TOKEN_FILE", &file_var)]);
        let t = caller_token(&c, &http, "http://b").await.expect("token");
        assert_eq!(t.source, TokenSource::File(token_file.clone()));
        assert_eq!(t.token.expose_secret(), jwt(1));
        let c = ctx(dir.path(), &[]);
        let err = caller_token(&c, &http, "http://b")
            .await
            .expect_err("no login");
        assert!(matches!(err, CliError::NotLoggedIn { .. }), "{err}");
        assert!(
            err.to_string().contains("rise login --backend http://b"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stored_login_is_used_until_it_expires_then_needs_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), &[]);
        let http = reqwest::Client::new();
        let fresh = jwt(unix_now() + 600);
        save_login(
            &c,
            "http://127.0.0.1:9",
            StoredLogin::new("corp", &meta(), "cli", tokens(fresh.clone(), None), None),
        )
        .expect("save");
        assert_eq!(
            resolve_backend(&c, None).expect("default"),
            "http://127.0.0.1:9"
        );
        let t = caller_token(&c, &http, "http://127.0.0.1:9")
            .await
            .expect("token");
        assert_eq!(t.token.expose_secret(), fresh);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(c.login_file().expect("dir"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Expired, and the token endpoint is unreachable: the error says so, it does not panic.
        let stale = jwt(unix_now() - 10);
        save_login(
            &c,
            "http://127.0.0.1:9",
            StoredLogin::new("corp", &meta(), "cli", tokens(stale, None), None),
        )
        .expect("save");
        let err = caller_token(&c, &http, "http://127.0.0.1:9")
            .await
            .expect_err("cannot refresh");
        assert!(matches!(err, CliError::Unavailable(_)), "{err}");
        assert!(
            remove_login(&c, "http://127.0.0.1:9")
                .expect("remove")
                .is_some()
        );
        assert!(matches!(
            resolve_backend(&c, None),
            Err(CliError::NoBackend)
        ));
    }

    #[tokio::test]
    async fn a_renewal_without_a_jwt_asks_for_a_new_login() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), &[]);
        let http = reqwest::Client::new();
        let backend = "http://127.0.0.1:9";
        let fresh_id = jwt(unix_now() + 600);
        for (reply, want) in [
            (
                r#"{"access_token":"opaque","expires_in":600}"#.to_owned(),
                None,
            ),
            (
                format!(r#"{{"access_token":"opaque","id_token":"{fresh_id}","expires_in":600}}"#),
                Some(fresh_id.clone()),
            ),
        ] {
            let idp = crate::testing::FakeServer::start(vec![crate::testing::route(
                "POST /token",
                200,
                &reply,
            )]);
            let mut provider = meta();
            provider.token_endpoint = format!("{}/token", idp.url);
            let stale = jwt(unix_now() - 10);
            save_login(
                &c,
                backend,
                StoredLogin::new("corp", &provider, "cli", tokens(stale.clone(), None), None),
            )
            .expect("save");
            let got = caller_token(&c, &http, backend).await;
            match want {
                None => {
                    let err = got.expect_err("an opaque renewal is not a bearer");
                    assert!(matches!(err, CliError::LoginExpired { .. }), "{err}");
                    // The login is gone, not replaced by the opaque token: its refresh token was
                    // used and must not be sent again.
                    let file: LoginFile =
                        fsutil::read_json_or_default(&c.login_file().expect("path")).expect("read");
                    assert!(!file.logins.contains_key(backend), "login removed");
                    let err = caller_token(&c, &http, backend)
                        .await
                        .expect_err("logged out");
                    assert!(matches!(err, CliError::NotLoggedIn { .. }), "{err}");
                }
                Some(id) => {
                    let t = got.expect("renewed through the ID token");
                    assert_eq!(t.token.expose_secret(), id);
                }
            }
        }
    }

    #[test]
    fn opaque_access_tokens_fall_back_to_the_id_token() {
        let id = jwt(unix_now() + 60);
        let login = StoredLogin::new(
            "corp",
            &meta(),
            "cli",
            tokens("opaque".into(), Some(id.clone())),
            None,
        );
        assert_eq!(login.bearer().expose_secret(), id);
        assert_eq!(login.subject().as_deref(), Some("alice"));
        let debug = format!("{login:?}");
        assert!(
            !debug.contains("opaque") && !debug.contains(&id),
            "secrets leak into Debug: {debug}"
        );
    }

    #[tokio::test]
    async fn tokens_with_line_breaks_or_spaces_are_refused_as_input_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = reqwest::Client::new();
        for bad in ["abc\ndef", "abc def", "abc\u{7f}", "abc\tdef", "abcé"] {
            let c = ctx(dir.path(), &[("RISE_TOKEN", bad)]);
            let err = caller_token(&c, &http, "http://b")
                .await
                .expect_err("refused");
            assert!(matches!(err, CliError::Input(_)), "{bad:?}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains("the token contains invalid characters"),
                "{msg}"
            );
            assert!(msg.contains("RISE_TOKEN"), "{msg}");
            assert!(
                !msg.contains("abc"),
                "the token leaks into the error: {msg}"
            );
        }
        let c = ctx(dir.path(), &[("RISE_TOKEN", "  abc.def-ghi_jkl \n")]);
        let t = caller_token(&c, &http, "http://b").await.expect("trimmed");
        assert_eq!(t.token.expose_secret(), "abc.def-ghi_jkl");

        let file = dir.path().join("token");
        let file_var = file.display().to_string();
        std::fs::write(&file, "first\nsecond\n").expect("write");
        let c = ctx(dir.path(), &[("RISE_TOKEN_FILE", &file_var)]);
        let err = caller_token(&c, &http, "http://b")
            .await
            .expect_err("two lines");
        assert!(matches!(err, CliError::Input(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("the token contains invalid characters"),
            "{msg}"
        );
        assert!(msg.contains("RISE_TOKEN_FILE"), "{msg}");
        assert!(!msg.contains("first"), "{msg}");
        std::fs::write(&file, [b'a', 0xff, b'\n']).expect("write");
        let err = caller_token(&c, &http, "http://b")
            .await
            .expect_err("not text");
        assert!(matches!(err, CliError::Input(_)), "{err}");
        std::fs::write(&file, "one-token\n").expect("write");
        let t = caller_token(&c, &http, "http://b").await.expect("one line");
        assert_eq!(t.token.expose_secret(), "one-token");
    }

    #[tokio::test]
    async fn token_file_reads_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = reqwest::Client::new();
        let file = dir.path().join("token");
        let file_var = file.display().to_string();
        let c = ctx(dir.path(), &[("RISE_TOKEN_FILE", &file_var)]);
        std::fs::write(&file, "a".repeat(64 * 1024 + 1)).expect("write");
        let err = caller_token(&c, &http, "http://b")
            .await
            .expect_err("too large");
        assert!(matches!(err, CliError::Input(_)), "{err}");
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
        std::fs::write(&file, "a".repeat(64 * 1024)).expect("write");
        caller_token(&c, &http, "http://b")
            .await
            .expect("64 KiB is allowed");
        #[cfg(unix)]
        {
            let c = ctx(dir.path(), &[("RISE_TOKEN_FILE", "/dev/zero")]);
            let err = caller_token(&c, &http, "http://b")
                .await
                .expect_err("endless");
            assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
        }
    }

    #[test]
    fn an_absurd_token_lifetime_saturates() {
        let mut t = tokens("opaque".into(), None);
        t.expires_in = Some(u64::MAX);
        let login = StoredLogin::new("corp", &meta(), "cli", t, None);
        assert_eq!(login.expires_at, Some(u64::MAX));
        assert!(!login.needs_renewal());
    }

    #[test]
    fn a_stored_default_backend_is_checked_like_a_given_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), &[]);
        let path = c.login_file().expect("dir");
        fsutil::write_json_private(
            &path,
            &serde_json::json!({"default_backend": "http://rise.example.com", "logins": {}}),
        )
        .expect("seed");
        let err = resolve_backend(&c, None).expect_err("plain http");
        assert!(err.to_string().contains("clear text"), "{err}");
    }

    #[tokio::test]
    async fn a_corrupt_login_file_is_located_but_never_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), &[]);
        let path = c.login_file().expect("dir");
        let login = serde_json::json!({
            "issuer_name": "corp", "issuer": "https://idp", "client_id": "cli",
            "token_endpoint": "https://idp/token", "access_token": "ACCESS-SECRET-abc",
            // A refresh token pasted into the wrong field.
            "refresh_token": 42, "expires_at": "REFRESH-SECRET-abc",
        });
        let doc = serde_json::json!({
            "default_backend": "https://rise.example.com",
            "logins": {"https://rise.example.com": login},
        });
        fsutil::write_json_private(&path, &doc).expect("seed");
        let err = caller_token(&c, &reqwest::Client::new(), "https://rise.example.com")
            .await
            .expect_err("corrupt")
            .to_string();
        assert!(!err.contains("SECRET"), "{err}");
        assert!(err.contains("login.json is not valid"), "{err}");
        assert!(
            err.contains(r#"in "logins" > "https://rise.example.com" > "#),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_login_lock_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), &[]);
        let path = c.login_lock_file().expect("dir");
        drop(fsutil::lock_file(&path).expect("lock"));
        let mode = std::fs::metadata(&path)
            .expect("lock file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
