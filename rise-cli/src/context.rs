//! Where the client keeps its files and which environment it runs in.
//!
//! Files (all written atomically with mode 0600):
//! - `<config>/login.json`: stored logins (tokens with refresh tokens), per backend.
//! - `<config>/registries.json`: registry host (and path) -> project, for the credential helper.
//! - `<cache>/credentials.json`: brokered registry credentials, per caller token and scope.
//!
//! `<config>` is `$RISE_CONFIG_DIR`, else the platform config directory + `/rise`
//! (`$XDG_CONFIG_HOME/rise` or `~/.config/rise` on Linux). `<cache>` is `$RISE_CACHE_DIR`, else the
//! platform cache directory + `/rise`. Neither has to exist up front: a command that needs no file
//! (`docker-credential-rise version`, `rise whoami` with `RISE_TOKEN` and `RISE_BACKEND`) works
//! without a home directory, and one that does says which variable to set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::CliError;

/// Environment variables the client reads.
pub mod vars {
    pub const BACKEND: &str = "RISE_BACKEND";
    pub const TOKEN: &str = "RISE_TOKEN";
    pub const TOKEN_FILE: &str = "RISE_TOKEN_FILE";
    pub const CONFIG_DIR: &str = "RISE_CONFIG_DIR";
    pub const CACHE_DIR: &str = "RISE_CACHE_DIR";
    pub const CREDENTIAL_MARGIN: &str = "RISE_CREDENTIAL_MARGIN";
    pub const DOCKER_CONFIG: &str = "DOCKER_CONFIG";
    pub const REGISTRY_AUTH_FILE: &str = "REGISTRY_AUTH_FILE";
    pub const XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
    pub const HOME: &str = "HOME";
    /// `1` or `true`: allow `http://` backend and identity-provider URLs on hosts other than this
    /// machine. Tokens then travel in clear text: for test networks only.
    pub const INSECURE_HTTP_BACKEND: &str = "RISE_INSECURE_HTTP_BACKEND";
}

/// How long any one HTTP request to the backend or the identity provider may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The directories and environment one invocation works with.
#[derive(Debug, Clone)]
pub struct Context {
    /// `None` when neither `RISE_CONFIG_DIR` nor a home directory names one.
    config_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    env: BTreeMap<String, String>,
}

/// Which URLs may carry tokens: `https://` anywhere, `http://` only to this machine unless
/// `RISE_INSECURE_HTTP_BACKEND` allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    HttpsOrLoopback,
    InsecureHttpAllowed,
}

impl Context {
    /// From the process environment.
    pub fn from_process() -> Self {
        Self::from_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// From explicit variables (tests), with the platform's directories as defaults.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::with_platform_dirs(
            vars,
            dirs::config_dir().map(|d| d.join("rise")),
            dirs::cache_dir().map(|d| d.join("rise")),
        )
    }

    /// From explicit variables and the directories to use when the variables name none.
    pub fn with_platform_dirs(
        vars: impl IntoIterator<Item = (String, String)>,
        platform_config_dir: Option<PathBuf>,
        platform_cache_dir: Option<PathBuf>,
    ) -> Self {
        let env: BTreeMap<String, String> =
            vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let config_dir = env
            .get(vars::CONFIG_DIR)
            .map(PathBuf::from)
            .or(platform_config_dir);
        let cache_dir = env
            .get(vars::CACHE_DIR)
            .map(PathBuf::from)
            .or(platform_cache_dir);
        Self {
            config_dir,
            cache_dir,
            env,
        }
    }

    /// The configuration directory, or what to set when there is none.
    pub fn config_dir(&self) -> Result<&Path, CliError> {
        self.config_dir.as_deref().ok_or_else(|| {
            CliError::Input(format!(
                "cannot find your configuration directory: set {} or HOME",
                vars::CONFIG_DIR
            ))
        })
    }

    /// The cache directory, or what to set when there is none.
    pub fn cache_dir(&self) -> Result<&Path, CliError> {
        self.cache_dir.as_deref().ok_or_else(|| {
            CliError::Input(format!(
                "cannot find your cache directory: set {} or HOME",
                vars::CACHE_DIR
            ))
        })
    }

    /// A non-empty environment variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    pub fn login_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.config_dir()?.join("login.json"))
    }

    /// The lock taken while `login.json` is renewed or rewritten.
    pub fn login_lock_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.config_dir()?.join("login.lock"))
    }

    pub fn registries_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.config_dir()?.join("registries.json"))
    }

    pub fn credentials_cache_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.cache_dir()?.join("credentials.json"))
    }

    /// Whether `http://` URLs to other machines may carry tokens (`RISE_INSECURE_HTTP_BACKEND`).
    pub fn transport(&self) -> Transport {
        match self.var(vars::INSECURE_HTTP_BACKEND) {
            Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => Transport::InsecureHttpAllowed,
            _ => Transport::HttpsOrLoopback,
        }
    }

    /// The HTTP client for the backend and the identity provider, with bounded timeouts. It
    /// follows no redirects: a redirect would re-send tokens, codes and passwords to a URL that
    /// was never checked to be fit to carry them, so a 3xx is an error naming the status.
    pub fn http(&self) -> Result<reqwest::Client, CliError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("rise-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(format!("cannot set up the HTTP client: {e}")))
    }
}

/// Parse a duration given as seconds (`300`) or humantime (`5m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|_| format!("invalid duration {s:?}: give seconds (300) or a duration (5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dirs_win() {
        let c = Context::from_env([
            ("RISE_CONFIG_DIR".to_owned(), "/c".to_owned()),
            ("RISE_CACHE_DIR".to_owned(), "/k".to_owned()),
            ("RISE_TOKEN".to_owned(), String::new()),
        ]);
        assert_eq!(c.login_file().expect("dir"), PathBuf::from("/c/login.json"));
        assert_eq!(
            c.credentials_cache_file().expect("dir"),
            PathBuf::from("/k/credentials.json")
        );
        assert_eq!(c.var("RISE_TOKEN"), None, "empty variables count as unset");
    }

    #[test]
    fn no_home_is_an_error_only_for_what_needs_a_directory() {
        let c =
            Context::with_platform_dirs([("RISE_TOKEN".to_owned(), "t".to_owned())], None, None);
        let err = c.login_file().expect_err("no config dir").to_string();
        assert!(err.contains("set RISE_CONFIG_DIR or HOME"), "{err}");
        let err = c
            .credentials_cache_file()
            .expect_err("no cache dir")
            .to_string();
        assert!(err.contains("set RISE_CACHE_DIR or HOME"), "{err}");
        assert_eq!(c.var("RISE_TOKEN"), Some("t"));
    }

    #[test]
    fn insecure_http_is_an_explicit_opt_in() {
        let with = |v: &str| {
            Context::from_env([("RISE_INSECURE_HTTP_BACKEND".to_owned(), v.to_owned())]).transport()
        };
        assert_eq!(
            Context::from_env([]).transport(),
            Transport::HttpsOrLoopback
        );
        assert_eq!(with("0"), Transport::HttpsOrLoopback);
        assert_eq!(with("1"), Transport::InsecureHttpAllowed);
        assert_eq!(with("TRUE"), Transport::InsecureHttpAllowed);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
    }
}
