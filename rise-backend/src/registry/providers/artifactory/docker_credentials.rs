//! The backend host's Docker credentials: `config.json` (in `$DOCKER_CONFIG` or `~/.docker`) and
//! the credential helpers it names.
//!
//! Lookup follows the Docker CLI: a `credHelpers` entry for the host wins, then the global
//! `credsStore`, then an inline `auths` entry. Keys are compared as Docker compares them: scheme
//! and path are dropped (`https://company.jfrog.io/v1/` is `company.jfrog.io`).
//!
//! A helper is the executable `docker-credential-<name>`, run as `docker-credential-<name> get`
//! with the host on stdin; it answers `{"ServerURL": .., "Username": .., "Secret": ..}` on stdout.
//! Rise runs it with a timeout and kills it when the timeout passes, so a hung helper costs one
//! bounded wait, never a hung request. Its stdout is a secret and is never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::redact_for_log;
use crate::registry::ProviderError;

const HELPER_OPERATION: &str = "docker credential helper";
/// The message helpers print when they hold nothing for the host (docker-credential-helpers'
/// `credentials.NewErrCredentialsNotFound`).
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";
/// The user name helpers return for an OAuth identity token instead of a password.
const IDENTITY_TOKEN_USER: &str = "<token>";

/// A user name and its secret (password, access token or identity token).
#[derive(Debug, Clone)]
pub struct DockerCredential {
    pub username: String,
    pub secret: SecretString,
}

/// Where the backend host's Docker credentials live; read on every use, so a `docker login`
/// after Rise started takes effect without a restart.
#[derive(Debug, Clone)]
pub struct DockerCredentialSource {
    /// The directory holding `config.json`.
    config_dir: PathBuf,
    /// Where to look for `docker-credential-*`; `None` means the process `PATH`.
    helper_dirs: Option<Vec<PathBuf>>,
    timeout: Duration,
}

impl DockerCredentialSource {
    /// `config_dir` defaults to `$DOCKER_CONFIG`, then `$HOME/.docker`.
    pub fn new(
        config_dir: Option<PathBuf>,
        helper_dirs: Option<Vec<PathBuf>>,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let config_dir = match config_dir {
            Some(dir) => dir,
            None => default_config_dir().ok_or_else(|| {
                ProviderError::Misconfigured(
                    "use_credential_helper is set but neither DOCKER_CONFIG nor HOME is set; set docker_config_dir".into(),
                )
            })?,
        };
        Ok(Self {
            config_dir,
            helper_dirs,
            timeout,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join("config.json")
    }

    /// The credential for `host` (`host[:port]`, no scheme).
    pub async fn get(&self, host: &str) -> Result<DockerCredential, ProviderError> {
        let path = self.config_path();
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            ProviderError::Misconfigured(format!(
                "cannot read Docker config {}: {}; run `docker login {host}` as the user Rise runs as, or set docker_config_dir",
                path.display(),
                e.kind()
            ))
        })?;
        let config = DockerConfigFile::parse(&text).map_err(|m| {
            ProviderError::Misconfigured(format!("Docker config {}: {m}", path.display()))
        })?;
        match config.lookup(host) {
            Lookup::Helper(name) => self.run_helper(&name, host).await,
            Lookup::Inline(credential) => Ok(credential),
            Lookup::Invalid(message) => Err(ProviderError::Misconfigured(format!(
                "Docker config {}: {message}",
                path.display()
            ))),
            Lookup::Missing => Err(ProviderError::Misconfigured(format!(
                "Docker config {} has no credentials for {host}: run `docker login {host}` as the user Rise runs as",
                path.display()
            ))),
        }
    }

    async fn run_helper(&self, name: &str, host: &str) -> Result<DockerCredential, ProviderError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ProviderError::Misconfigured(format!(
                "credential helper name {:?} is invalid: use letters, digits, '-', '_' and '.'",
                name.chars().take(40).collect::<String>()
            )));
        }
        let program = format!("docker-credential-{name}");
        let executable = self.find_executable(&program).ok_or_else(|| {
            ProviderError::Misconfigured(format!(
                "credential helper {program} is not installed (searched {}); install it or fix credHelpers/credsStore in {}",
                self.search_description(),
                self.config_path().display()
            ))
        })?;
        let mut child = tokio::process::Command::new(&executable)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // On timeout the future holding the child is dropped; this kills the helper.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ProviderError::Misconfigured(format!(
                    "cannot run credential helper {}: {}",
                    executable.display(),
                    e.kind()
                ))
            })?;
        let stdin = child.stdin.take();
        let exchange = async move {
            if let Some(mut stdin) = stdin {
                // A helper that exits without reading stdin makes this fail; its exit status
                // then tells what went wrong, so the write error itself is not interesting.
                let _ = stdin.write_all(host.as_bytes()).await;
                drop(stdin);
            }
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ProviderError::Timeout {
                operation: HELPER_OPERATION,
                after: self.timeout,
            })?
            .map_err(|e| ProviderError::Upstream {
                operation: HELPER_OPERATION,
                detail: format!("{program}: waiting for the helper failed: {}", e.kind()),
            })?;
        if !output.status.success() {
            // A failed `get` prints its error on stdout; neither stream carries the secret then,
            // but both are redacted and truncated as any upstream text is.
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stdout.trim() == HELPER_NOT_FOUND {
                return Err(ProviderError::Misconfigured(format!(
                    "credential helper {program} holds no credentials for {host}: run `docker login {host}` as the user Rise runs as"
                )));
            }
            return Err(ProviderError::Upstream {
                operation: HELPER_OPERATION,
                detail: format!(
                    "{program} get exited with {}: stdout {:?}, stderr {:?}",
                    output.status,
                    redact_for_log(&stdout, &[]),
                    redact_for_log(&stderr, &[])
                ),
            });
        }
        parse_helper_output(&output.stdout).map_err(|message| ProviderError::Upstream {
            operation: HELPER_OPERATION,
            detail: format!("{program} get: {message}"),
        })
    }

    fn find_executable(&self, program: &str) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match &self.helper_dirs {
            Some(dirs) => dirs.clone(),
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        };
        dirs.into_iter()
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    }

    fn search_description(&self) -> String {
        match &self.helper_dirs {
            Some(dirs) => {
                let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                format!("credential_helper_dirs [{}]", list.join(", "))
            }
            None => "PATH".into(),
        }
    }
}

fn default_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker"))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// The parts of Docker's `config.json` that hold credentials. Other keys belong to Docker and
/// are ignored, so this struct deliberately does not deny unknown fields.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<SecretString>,
    /// Older configs store these separately.
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
    /// Used instead of the password when set (Docker's OAuth refresh token; for Artifactory an
    /// access or identity token).
    #[serde(default)]
    identitytoken: Option<SecretString>,
}

#[derive(Debug)]
pub(crate) enum Lookup {
    Helper(String),
    Inline(DockerCredential),
    /// An entry exists but cannot be used; the message says why (without the secret).
    Invalid(String),
    Missing,
}

impl DockerConfigFile {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        // serde_json's message can quote a value it could not use; report only where it failed.
        serde_json::from_str(text).map_err(|e| {
            format!(
                "not valid Docker config JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })
    }

    pub(crate) fn lookup(&self, host: &str) -> Lookup {
        let wanted = docker_hostname(host);
        if let Some(helper) = self
            .cred_helpers
            .iter()
            .find(|(k, _)| docker_hostname(k) == wanted)
            .map(|(_, v)| v)
        {
            return Lookup::Helper(helper.clone());
        }
        if let Some(store) = self.creds_store.as_deref().filter(|s| !s.is_empty()) {
            return Lookup::Helper(store.to_owned());
        }
        match self
            .auths
            .iter()
            .find(|(k, _)| docker_hostname(k) == wanted)
        {
            Some((_, entry)) => entry.credential(),
            None => Lookup::Missing,
        }
    }
}

impl AuthEntry {
    fn credential(&self) -> Lookup {
        use secrecy::ExposeSecret;
        let (username, password) = match (&self.auth, &self.username) {
            (Some(auth), _) => {
                let Ok(decoded) = base64::engine::general_purpose::STANDARD
                    .decode(auth.expose_secret().trim().as_bytes())
                else {
                    return Lookup::Invalid("the `auth` entry is not valid base64".into());
                };
                let Ok(decoded) = String::from_utf8(decoded) else {
                    return Lookup::Invalid("the `auth` entry is not UTF-8".into());
                };
                let Some((user, pass)) = decoded.split_once(':') else {
                    return Lookup::Invalid("the `auth` entry is not `user:password`".into());
                };
                (user.to_owned(), SecretString::from(pass.to_owned()))
            }
            (None, Some(user)) => (
                user.clone(),
                self.password
                    .clone()
                    .unwrap_or_else(|| SecretString::from(String::new())),
            ),
            (None, None) => {
                if self.identitytoken.is_some() {
                    return Lookup::Invalid(
                        "the entry has an identitytoken but no user name (`auth` decoding to `user:`)"
                            .into(),
                    );
                }
                return Lookup::Missing;
            }
        };
        if username.is_empty() {
            return Lookup::Invalid("the entry has an empty user name".into());
        }
        let secret = match &self.identitytoken {
            Some(token) if !token.expose_secret().is_empty() => token.clone(),
            _ => password,
        };
        if secret.expose_secret().is_empty() {
            return Lookup::Invalid(format!("the entry for user {username} has no password"));
        }
        Lookup::Inline(DockerCredential { username, secret })
    }
}

/// Docker's `ConvertToHostname`: drop `http://`/`https://` and everything from the first `/`.
fn docker_hostname(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: SecretString,
}

fn parse_helper_output(stdout: &[u8]) -> Result<DockerCredential, String> {
    // Never include the output in the message: on success it is the secret.
    let out: HelperOutput = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "malformed output ({:?} at line {}, column {}); expected {{\"Username\":..,\"Secret\":..}}",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if out.username == IDENTITY_TOKEN_USER {
        return Err(
            "the helper returned an OAuth identity token (user <token>), which Artifactory cannot use without a user name; log in with a user name and password or access token".into(),
        );
    }
    if out.username.is_empty() {
        return Err("the helper returned an empty user name".into());
    }
    Ok(DockerCredential {
        username: out.username,
        secret: out.secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn check(config: &str, host: &str, expect: &str) {
        let parsed = DockerConfigFile::parse(config).expect("valid test config");
        let got = match parsed.lookup(host) {
            Lookup::Helper(name) => format!("helper {name}"),
            Lookup::Inline(c) => format!("inline {}:{}", c.username, c.secret.expose_secret()),
            Lookup::Invalid(m) => format!("invalid {m}"),
            Lookup::Missing => "missing".into(),
        };
        assert!(
            got.starts_with(expect),
            "{host} in {config}: got {got:?}, expected {expect:?}"
        );
    }

    #[test]
    fn auths_with_base64_auth() {
        let config = format!(
            r#"{{"auths":{{"company.jfrog.io":{{"auth":"{}"}}}}}}"#,
            b64("svc:pa:ss")
        );
        // The password may itself contain ':'; only the first one separates.
        check(&config, "company.jfrog.io", "inline svc:pa:ss");
        check(&config, "other.jfrog.io", "missing");
    }

    #[test]
    fn auths_keys_are_compared_as_docker_hostnames() {
        let config = format!(
            r#"{{"auths":{{"https://company.jfrog.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        check(&config, "company.jfrog.io", "inline u:p");
        let config = format!(
            r#"{{"auths":{{"127.0.0.1:8082":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        check(&config, "127.0.0.1:8082", "inline u:p");
        check(&config, "127.0.0.1", "missing");
    }

    #[test]
    fn identitytoken_replaces_the_password() {
        let config = format!(
            r#"{{"auths":{{"company.jfrog.io":{{"auth":"{}","identitytoken":"idt-123"}}}}}}"#,
            b64("svc:")
        );
        check(&config, "company.jfrog.io", "inline svc:idt-123");
        let config = r#"{"auths":{"company.jfrog.io":{"identitytoken":"idt-123"}}}"#;
        check(
            config,
            "company.jfrog.io",
            "invalid the entry has an identitytoken",
        );
    }

    #[test]
    fn separate_username_and_password() {
        let config = r#"{"auths":{"company.jfrog.io":{"username":"svc","password":"pw"}}}"#;
        check(config, "company.jfrog.io", "inline svc:pw");
    }

    #[test]
    fn unusable_auth_entries_say_why() {
        check(
            r#"{"auths":{"h":{"auth":"%%%"}}}"#,
            "h",
            "invalid the `auth` entry is not valid base64",
        );
        let config = format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("nocolon"));
        check(
            &config,
            "h",
            "invalid the `auth` entry is not `user:password`",
        );
        let config = format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("svc:"));
        check(
            &config,
            "h",
            "invalid the entry for user svc has no password",
        );
        // An entry that only records a login made through a credential store holds no secret.
        check(r#"{"auths":{"h":{}}}"#, "h", "missing");
    }

    #[test]
    fn cred_helpers_win_over_store_and_auths() {
        let config = format!(
            r#"{{"credsStore":"desktop","credHelpers":{{"company.jfrog.io":"rise-test"}},"auths":{{"company.jfrog.io":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        check(&config, "company.jfrog.io", "helper rise-test");
        // Other hosts fall back to the global store, as in the Docker CLI.
        check(&config, "other.example", "helper desktop");
    }

    #[test]
    fn creds_store_wins_over_auths() {
        let config = format!(
            r#"{{"credsStore":"pass","auths":{{"company.jfrog.io":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        check(&config, "company.jfrog.io", "helper pass");
        let config = format!(
            r#"{{"credsStore":"","auths":{{"company.jfrog.io":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        check(&config, "company.jfrog.io", "inline u:p");
    }

    #[test]
    fn unknown_docker_keys_are_ignored() {
        let config = format!(
            r#"{{"psFormat":"x","proxies":{{}},"auths":{{"h":{{"auth":"{}","email":"a@b"}}}}}}"#,
            b64("u:p")
        );
        check(&config, "h", "inline u:p");
    }

    #[test]
    fn malformed_config_does_not_echo_values() {
        let err = DockerConfigFile::parse(r#"{"auths":{"h":{"auth":12345678}}}"#)
            .expect_err("auth must be a string");
        assert!(!err.contains("12345678"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn helper_output_parsing() {
        let ok = parse_helper_output(br#"{"ServerURL":"h","Username":"svc","Secret":"s3"}"#)
            .expect("valid output");
        assert_eq!(ok.username, "svc");
        assert_eq!(ok.secret.expose_secret(), "s3");
        let err = parse_helper_output(br#"{"ServerURL":"h","Username":"<token>","Secret":"s3"}"#)
            .expect_err("identity token");
        assert!(err.contains("identity token"), "{err}");
        let err = parse_helper_output(br#"{"Username":"svc","Secret":"very-secret-value"#)
            .expect_err("truncated");
        assert!(!err.contains("very-secret-value"), "{err}");
        let err =
            parse_helper_output(br#"{"Username":"svc","Secret":42}"#).expect_err("wrong type");
        assert!(!err.contains("42,"), "{err}");
    }
}
