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
//!
//! Proxies: `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lower-case forms)
//! are honoured as reqwest would honour them, with one exception: this machine (127.0.0.0/8,
//! `::1`, `localhost`) is always reached directly. Plain `http://` is allowed only to this
//! machine, and a proxy may be on another one: through it, tokens would leave in clear text.

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
/// Destinations never reached through a proxy (reqwest's `NO_PROXY` syntax): this machine.
const THIS_MACHINE: &str = "localhost,127.0.0.0/8,::1";

/// The directories and environment one invocation works with.
#[derive(Clone)]
pub struct Context {
    /// `None` when neither `RISE_CONFIG_DIR` nor a home directory names one.
    config_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    env: BTreeMap<String, String>,
}

/// Names the environment's variables, never their values (`RISE_TOKEN`, proxy passwords).
impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config_dir", &self.config_dir)
            .field("cache_dir", &self.cache_dir)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The proxies the environment names, each with the variable it came from, and the
/// destinations reached directly (`NO_PROXY` and, always, [`THIS_MACHINE`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Proxies {
    pub http: Option<(&'static str, String)>,
    pub https: Option<(&'static str, String)>,
    pub no_proxy: String,
}

/// Names the variables, never their URLs: a proxy URL may carry a password.
impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = |p: &Option<(&'static str, String)>| p.as_ref().map(|(name, _)| *name);
        f.debug_struct("Proxies")
            .field("http", &from(&self.http))
            .field("https", &from(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
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

    /// The lock taken while `registries.json` is rewritten.
    pub fn registries_lock_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.config_dir()?.join("registries.lock"))
    }

    pub fn credentials_cache_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.cache_dir()?.join("credentials.json"))
    }

    /// The lock taken while `credentials.json` is rewritten.
    pub fn credentials_cache_lock_file(&self) -> Result<PathBuf, CliError> {
        Ok(self.cache_dir()?.join("credentials.lock"))
    }

    /// Whether `http://` URLs to other machines may carry tokens (`RISE_INSECURE_HTTP_BACKEND`).
    pub fn transport(&self) -> Transport {
        match self.var(vars::INSECURE_HTTP_BACKEND) {
            Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => Transport::InsecureHttpAllowed,
            _ => Transport::HttpsOrLoopback,
        }
    }

    /// The proxies to use, read as reqwest reads them from the environment (upper case first,
    /// `ALL_PROXY` for a scheme without its own, none at all under CGI, where `HTTP_PROXY` may
    /// come from a request header), except that [`THIS_MACHINE`] is always reached directly.
    pub fn proxies(&self) -> Proxies {
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| self.var(name).map(|v| (name, v.to_owned())))
        };
        let no_proxy = match first(["NO_PROXY", "no_proxy"]) {
            Some((_, list)) => format!("{list},{THIS_MACHINE}"),
            None => THIS_MACHINE.to_owned(),
        };
        if self.var("REQUEST_METHOD").is_some() {
            return Proxies {
                http: None,
                https: None,
                no_proxy,
            };
        }
        let all = first(["ALL_PROXY", "all_proxy"]);
        Proxies {
            http: first(["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
            https: first(["HTTPS_PROXY", "https_proxy"]).or(all),
            no_proxy,
        }
    }

    /// A client builder that uses [`Context::proxies`] and nothing else (not the process
    /// environment, which reqwest would read without sparing this machine).
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, CliError> {
        let proxies = self.proxies();
        let mut builder = reqwest::Client::builder().no_proxy();
        let direct = || reqwest::NoProxy::from_string(&proxies.no_proxy);
        let invalid = |name: &str| {
            CliError::Input(format!(
                "{name} is not a proxy URL: give one such as http://proxy.example.com:3128, or unset it"
            ))
        };
        if let Some((name, url)) = &proxies.http {
            let proxy = reqwest::Proxy::http(url.as_str()).map_err(|_| invalid(name))?;
            builder = builder.proxy(proxy.no_proxy(direct()));
        }
        if let Some((name, url)) = &proxies.https {
            let proxy = reqwest::Proxy::https(url.as_str()).map_err(|_| invalid(name))?;
            builder = builder.proxy(proxy.no_proxy(direct()));
        }
        Ok(builder)
    }

    /// The HTTP client for the backend and the identity provider, with bounded timeouts. It
    /// follows no redirects: a redirect would re-send tokens, codes and passwords to a URL that
    /// was never checked to be fit to carry them, so a 3xx is an error naming the status.
    pub fn http(&self) -> Result<reqwest::Client, CliError> {
        self.client_builder()?
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

    fn with(vars: &[(&str, &str)]) -> Context {
        Context::from_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn a_proxy_password_is_not_in_debug() {
        let ctx = with(&[
            ("HTTPS_PROXY", "http://user:pr0xy-s3cret@proxy:3128"),
            ("RISE_TOKEN", "eyJ-t0ken-s3cret"),
        ]);
        for shown in [format!("{:?}", ctx.proxies()), format!("{ctx:?}")] {
            assert!(
                shown.contains("HTTPS_PROXY") && !shown.contains("s3cret"),
                "{shown}"
            );
        }
    }

    #[test]
    fn proxies_are_read_as_reqwest_reads_them_but_never_cover_this_machine() {
        let proxy = |v: &str| Some(("", v.to_owned()));
        let check = |vars: &[(&str, &str)], http, https, no_proxy: &str| {
            let mut got = with(vars).proxies();
            // Which variable a proxy came from matters for messages only.
            got.http = got.http.map(|(_, url)| ("", url));
            got.https = got.https.map(|(_, url)| ("", url));
            let want = Proxies {
                http,
                https,
                no_proxy: no_proxy.to_owned(),
            };
            assert_eq!(got, want, "{vars:?}");
        };
        check(&[], None, None, "localhost,127.0.0.0/8,::1");
        check(
            &[("HTTP_PROXY", "http://p:1"), ("http_proxy", "http://q:1")],
            proxy("http://p:1"),
            None,
            "localhost,127.0.0.0/8,::1",
        );
        check(
            &[("all_proxy", "http://a:1"), ("HTTPS_PROXY", "http://s:1")],
            proxy("http://a:1"),
            proxy("http://s:1"),
            "localhost,127.0.0.0/8,::1",
        );
        check(
            &[("ALL_PROXY", "http://a:1"), ("no_proxy", ".corp")],
            proxy("http://a:1"),
            proxy("http://a:1"),
            ".corp,localhost,127.0.0.0/8,::1",
        );
        // CGI: HTTP_PROXY may have come from a request's Proxy header.
        check(
            &[("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "http://evil:1")],
            None,
            None,
            "localhost,127.0.0.0/8,::1",
        );
        assert_eq!(
            with(&[("http_proxy", "http://p:1")]).proxies().http,
            Some(("http_proxy", "http://p:1".to_owned()))
        );
    }

    #[tokio::test]
    async fn this_machine_is_reached_directly_and_other_hosts_through_the_proxy() {
        use crate::testing::{FakeServer, route};
        let proxy = FakeServer::start(vec![]);
        let backend = FakeServer::start(vec![route("GET /auth/config", 200, "{}")]);
        let ctx = with(&[("HTTP_PROXY", &proxy.url), ("ALL_PROXY", &proxy.url)]);
        let http = ctx.http().expect("client");
        let got = http
            .get(format!("{}/auth/config", backend.url))
            .bearer_auth("secret-token")
            .send()
            .await
            .expect("direct");
        assert_eq!(got.status(), 200);
        assert!(proxy.heads().is_empty(), "{:?}", proxy.heads());
        assert_eq!(backend.requests().len(), 1);
        // Elsewhere the proxy is still used (it answers 404 itself: nothing leaves this machine).
        let got = http
            .get("http://rise.example.com/auth/config")
            .send()
            .await
            .expect("proxied");
        assert_eq!(got.status(), 404);
        assert_eq!(
            proxy.requests(),
            ["GET http://rise.example.com/auth/config HTTP/1.1"]
        );
    }

    #[test]
    fn a_proxy_that_is_not_a_url_is_named() {
        let err = with(&[("HTTPS_PROXY", "http://[broken")])
            .http()
            .expect_err("invalid")
            .to_string();
        assert!(err.starts_with("HTTPS_PROXY is not a proxy URL"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
    }
}
