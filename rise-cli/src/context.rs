//! Where the client keeps its files and which environment it runs in.
//!
//! Files (all written atomically with mode 0600):
//! - `<config>/login.json`: stored logins (tokens with refresh tokens), per backend.
//! - `<config>/registries.json`: registry host (and path) -> project, for the credential helper.
//! - `<cache>/credentials.json`: brokered registry credentials, per identity and scope.
//!
//! `<config>` is `$RISE_CONFIG_DIR`, else the platform config directory + `/rise`
//! (`$XDG_CONFIG_HOME/rise` or `~/.config/rise` on Linux). `<cache>` is `$RISE_CACHE_DIR`, else the
//! platform cache directory + `/rise`.

use std::collections::BTreeMap;
use std::path::PathBuf;
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
}

/// How long any one HTTP request to the backend or the identity provider may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The directories and environment one invocation works with.
#[derive(Debug, Clone)]
pub struct Context {
    pub config_dir: PathBuf,
    pub cache_dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Context {
    /// From the process environment.
    pub fn from_process() -> Result<Self, CliError> {
        Self::from_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// From explicit variables (tests).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, CliError> {
        let env: BTreeMap<String, String> =
            vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let config_dir = match env.get(vars::CONFIG_DIR) {
            Some(d) => PathBuf::from(d),
            None => dirs::config_dir()
                .ok_or_else(|| {
                    CliError::Input(format!(
                        "cannot find your configuration directory: set {} or HOME",
                        vars::CONFIG_DIR
                    ))
                })?
                .join("rise"),
        };
        let cache_dir = match env.get(vars::CACHE_DIR) {
            Some(d) => PathBuf::from(d),
            None => dirs::cache_dir()
                .ok_or_else(|| {
                    CliError::Input(format!(
                        "cannot find your cache directory: set {} or HOME",
                        vars::CACHE_DIR
                    ))
                })?
                .join("rise"),
        };
        Ok(Self {
            config_dir,
            cache_dir,
            env,
        })
    }

    /// A non-empty environment variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    pub fn login_file(&self) -> PathBuf {
        self.config_dir.join("login.json")
    }

    pub fn registries_file(&self) -> PathBuf {
        self.config_dir.join("registries.json")
    }

    pub fn credentials_cache_file(&self) -> PathBuf {
        self.cache_dir.join("credentials.json")
    }

    /// The HTTP client for the backend and the identity provider, with bounded timeouts.
    pub fn http(&self) -> Result<reqwest::Client, CliError> {
        reqwest::Client::builder()
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
        ])
        .expect("context");
        assert_eq!(c.login_file(), PathBuf::from("/c/login.json"));
        assert_eq!(
            c.credentials_cache_file(),
            PathBuf::from("/k/credentials.json")
        );
        assert_eq!(c.var("RISE_TOKEN"), None, "empty variables count as unset");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
    }
}
