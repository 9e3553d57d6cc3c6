//! Configuration: built-in defaults, then TOML files (later override earlier), then environment
//! variables `RISE_<SECTION>__<KEY>` (e.g. the seed's `RISE_REGISTRY__PASSWORD`).
//!
//! Every component owns one serde struct; they compose into [`Config`]. Every struct denies
//! unknown fields, so a typo is an error that names the key and the file that set it.
//! Secret-bearing keys may be given as `<key>_file` (a path whose content is the secret).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use secrecy::SecretString;

use crate::policy::{Pattern, Rule};
use crate::ratelimit::RateLimitConfig;
use crate::registry::providers::{LONGEST_MAX_TTL, ProviderConfig};
use crate::registry::{Actions, ProjectName, RepositoryName};
use crate::tls::TlsConfig;

/// The name under which the seed's single `[registry]` table is known.
pub const DEFAULT_REGISTRY: &str = "default";

/// Keys whose values are secrets: they may be given as `<key>_file`, and are never logged.
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "token",
    "access_token",
    "admin_token",
    "client_secret",
    "private_key",
    "service_account_key",
    "api_key",
    "sealing_key",
    "previous_sealing_key",
];

/// Built-in defaults under every configuration.
const BUILTIN_DEFAULTS: &str = include_str!("defaults.toml");
/// The embedded demo used when no configuration file is given: a local Distribution registry on
/// 127.0.0.1:5000 and a project `my-app` any local-issuer token may push to.
const EMBEDDED_DEMO: &str = include_str!("embedded-demo.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    /// The seed's single registry; known as `default`.
    #[serde(default)]
    pub registry: Option<ProviderConfig>,
    /// Additional named registries.
    #[serde(default)]
    pub registries: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub projects: BTreeMap<ProjectName, ProjectConfig>,
    pub rate_limit: RateLimitConfig,
    /// Where durable state (the audit log) lives; SQLite in `data_dir` unless a URL is given.
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Where generated signing keys live (files, or sealed in a shared database).
    #[serde(default)]
    pub keys: crate::keyring::KeysConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The URL clients and registries use to reach Rise (the token realm is `<public_url>/token`).
    /// Defaults to `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where state lives for the embedded default: SQLite database and generated keys.
    pub data_dir: PathBuf,
    /// Serve HTTPS with this certificate and key (reloaded on SIGHUP and when the files change).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP on a non-loopback `listen` address. Only behind a TLS-terminating proxy:
    /// otherwise tokens and credentials cross the network in clear text.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub danger_insecure_http_on_non_loopback: bool,
    /// The header a trusted proxy puts the client's address in (`x-forwarded-for`, `forwarded`).
    /// Honoured only on connections from `trusted_proxies`.
    #[serde(default)]
    pub trusted_proxy_header: Option<String>,
    /// Networks of the proxies in front of Rise, e.g. `["127.0.0.1/32", "10.0.0.0/8"]`.
    #[serde(default, deserialize_with = "lenient::networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a client may take to send a request's headers before its connection is closed.
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The most connections served at once; one arriving beyond them is closed at once. The
    /// default is what the open-file limit leaves after a reserve for the broker's own files
    /// and connections, at most 16384 ([`crate::connections::default_max_connections`]).
    #[serde(
        default = "crate::connections::default_max_connections",
        deserialize_with = "lenient::u64"
    )]
    pub max_connections: u64,
}

impl ServerConfig {
    /// The host of an explicit `https://` `public_url`: the name the certificate must cover.
    pub fn public_tls_host(&self) -> Option<String> {
        let url = reqwest::Url::parse(self.public_url.as_deref()?.trim()).ok()?;
        (url.scheme() == "https")
            .then(|| url.host_str().map(str::to_owned))
            .flatten()
    }

    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.tls.is_some() => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew allowed on `exp`/`nbf`/`iat`; at most 60 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    pub local: LocalIssuerConfig,
    #[serde(default)]
    pub issuers: BTreeMap<String, OidcIssuerConfig>,
    /// The issuer `rise login` uses by default (one of `issuers`, with a `client_id`). Without
    /// it, the only issuer that has a `client_id`.
    #[serde(default)]
    pub login_issuer: Option<String>,
}

/// The built-in development issuer, whose tokens `rise-backend token issue` mints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalIssuerConfig {
    #[serde(deserialize_with = "lenient::bool")]
    pub enabled: bool,
    /// The `iss` of local tokens.
    pub issuer: String,
    pub audience: String,
    /// The longest lifetime `token issue` will mint.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

/// `[database]`: the durable store. Without `url`, Rise keeps its state in SQLite at
/// `<data_dir>/rise.db`; with `url = "postgres://..."` several replicas share one PostgreSQL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db` (or `sqlite:PATH`). A secret: it usually carries a
    /// password, so it is redacted in `Debug` and never logged.
    #[serde(default)]
    pub url: Option<SecretString>,
    /// A file whose content is the URL (e.g. a mounted secret); exclusive with `url`.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connections in the pool (PostgreSQL); SQLite uses a small fixed pool.
    #[serde(
        default = "defaults::db_max_connections",
        deserialize_with = "lenient::u64"
    )]
    pub max_connections: u64,
    /// How long a request may wait for a pooled connection.
    #[serde(default = "defaults::db_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            max_connections: defaults::db_max_connections(),
            acquire_timeout: defaults::db_acquire_timeout(),
        }
    }
}

impl DatabaseConfig {
    /// The configured URL, read from `url_file` when given that way; `None` means SQLite in
    /// the data directory.
    pub fn resolve_url(&self) -> Result<Option<SecretString>, ConfigError> {
        match (&self.url, &self.url_file) {
            (Some(_), Some(_)) => Err(ConfigError::Semantic(
                "both database.url and database.url_file are set; give the URL one way".into(),
            )),
            (Some(url), None) => Ok(Some(url.clone())),
            (None, Some(path)) => {
                let text = read_secret_file(path)
                    .map_err(|m| ConfigError::Semantic(format!("database.url_file: {m}")))?;
                Ok(Some(SecretString::from(
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                )))
            }
            (None, None) => Ok(None),
        }
    }
}

/// `[audit]`: who may read the audit log, and the bounds of the audit writer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Principals that may read `GET /audit`, e.g.
    /// `admins = [{ issuer = "local", subject = "admin" }]`. Empty: nobody (use the CLI).
    #[serde(default)]
    pub admins: Vec<AdminRule>,
    /// Records waiting for the writer; beyond this, requests fail with 503 instead of
    /// queueing without bound.
    #[serde(
        default = "defaults::audit_queue_capacity",
        deserialize_with = "lenient::u64"
    )]
    pub queue_capacity: u64,
    /// Most records committed in one transaction.
    #[serde(
        default = "defaults::audit_max_batch",
        deserialize_with = "lenient::u64"
    )]
    pub max_batch: u64,
    /// How long a request waits for its record to be committed before failing with 503.
    #[serde(default = "defaults::audit_commit_timeout", with = "humantime_serde")]
    pub commit_timeout: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            admins: Vec::new(),
            queue_capacity: defaults::audit_queue_capacity(),
            max_batch: defaults::audit_max_batch(),
            commit_timeout: defaults::audit_commit_timeout(),
        }
    }
}

/// One audit administrator: the matching part of a policy rule (no actions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRule {
    /// The configured issuer name (`local` or a key of `[auth.issuers]`).
    pub issuer: String,
    #[serde(default)]
    pub subject: Option<Pattern>,
    #[serde(default)]
    pub groups: Vec<Pattern>,
    #[serde(default, deserialize_with = "crate::policy::claim_patterns")]
    pub claims: BTreeMap<String, Pattern>,
}

impl AdminRule {
    /// The equivalent policy rule, so admins are matched exactly like project rules.
    pub fn to_rule(&self) -> Rule {
        Rule {
            actions: Actions::PULL,
            issuer: Some(self.issuer.clone()),
            subject: self.subject.clone(),
            groups: self.groups.clone(),
            claims: self.claims.clone(),
            any_subject: false,
        }
    }
}

/// The name the local issuer has in policy rules.
pub const LOCAL_ISSUER_NAME: &str = "local";
/// The issuer of audit records of `rise-backend` commands run by an operator (`grants revoke`,
/// `keys rotate`, `keys reseal`); reserved like [`LOCAL_ISSUER_NAME`].
pub const OPERATOR_ISSUER_NAME: &str = "operator";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The issuer URL; must equal the tokens' `iss`.
    pub issuer: String,
    /// The audience tokens must carry.
    pub audience: String,
    /// Skip discovery and fetch keys from here.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default = "defaults::subject_claim")]
    pub subject_claim: String,
    #[serde(default = "defaults::groups_claim")]
    pub groups_claim: String,
    /// Accepted algorithms; default RS256, ES256 and EdDSA.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// How long fetched keys are trusted before a background refetch.
    #[serde(default = "defaults::jwks_cache_ttl", with = "humantime_serde")]
    pub jwks_cache_ttl: Duration,
    /// Minimum time between refetches triggered by unknown `kid`s.
    #[serde(default = "defaults::jwks_refresh_floor", with = "humantime_serde")]
    pub jwks_refresh_floor: Duration,
    /// The longest a token may still be valid when presented: a token expiring later (a
    /// misconfigured issuer, or one minted to be kept) is refused.
    #[serde(default = "defaults::max_token_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// OAuth client id the CLI uses for `rise login` (published by the backend).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Scopes `rise login` asks for (published by the backend); the CLI's default
    /// (`openid offline_access`) when absent.
    #[serde(default)]
    pub login_scopes: Option<Vec<String>>,
    /// Allow `http://` issuer URLs (tests, local development). Never for production.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub insecure_http: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Name of the registry (`default` is the `[registry]` table).
    #[serde(default = "defaults::registry")]
    pub registry: String,
    /// Repository name inside the registry; defaults to the project name.
    #[serde(default)]
    pub repository: Option<RepositoryName>,
    /// Lifetime of issued credentials when the caller does not ask for less.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Who may do what. Rules are alternatives; the first that matches grants its actions, and
    /// the actions of all matching rules are combined.
    #[serde(default)]
    pub allow: Vec<Rule>,
}

mod defaults {
    use std::time::Duration;

    pub fn subject_claim() -> String {
        "sub".into()
    }
    pub fn groups_claim() -> String {
        "groups".into()
    }
    pub fn jwks_cache_ttl() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn jwks_refresh_floor() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_token_lifetime() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn registry() -> String {
        super::DEFAULT_REGISTRY.into()
    }
    pub fn db_max_connections() -> u64 {
        10
    }
    pub fn db_acquire_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn audit_queue_capacity() -> u64 {
        8192
    }
    pub fn audit_max_batch() -> u64 {
        1024
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn audit_commit_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// Accepts native TOML values and the strings environment variables carry.
pub mod lenient {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: Error>(self, b: bool) -> Result<bool, E> {
                Ok(b)
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<bool, E> {
                match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    _ => Err(E::custom("expected true or false")),
                }
            }
            fn visit_i64<E: Error>(self, _: i64) -> Result<bool, E> {
                Err(E::custom(
                    "expected true or false (without quotes), not a number",
                ))
            }
            fn visit_u64<E: Error>(self, _: u64) -> Result<bool, E> {
                Err(E::custom(
                    "expected true or false (without quotes), not a number",
                ))
            }
        }
        d.deserialize_any(V)
    }

    /// A list of networks (`a.b.c.d/n`, `v6/n`; a bare address is a single host), as a TOML
    /// array or a comma-separated string.
    pub fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum L {
            L(Vec<String>),
            S(String),
        }
        let items = match L::deserialize(d)? {
            L::L(v) => v,
            L::S(s) => s.split(',').map(str::to_owned).collect(),
        };
        items
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        D::Error::custom(format!(
                            "invalid network {s:?}: give an address or CIDR such as 10.0.0.0/8"
                        ))
                    })
            })
            .collect()
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number, 0 or more")
            }
            fn visit_u64<E: Error>(self, n: u64) -> Result<u64, E> {
                Ok(n)
            }
            fn visit_i64<E: Error>(self, n: i64) -> Result<u64, E> {
                u64::try_from(n).map_err(|_| E::custom("expected a whole number, 0 or more"))
            }
            fn visit_f64<E: Error>(self, _: f64) -> Result<u64, E> {
                Err(E::custom(
                    "expected a whole number, 0 or more, not a fraction",
                ))
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<u64, E> {
                s.trim()
                    .parse()
                    .map_err(|_| E::custom("expected a whole number, 0 or more"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Config {
    fn validate_server(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        // An empty path would put the database and the keys in whatever directory Rise was
        // started from.
        if server.data_dir.to_string_lossy().trim().is_empty() {
            return Err(ConfigError::Semantic(
                "server.data_dir is empty: give the directory where Rise keeps its database and keys, e.g. /var/lib/rise, or leave it unset for the default .rise".into(),
            ));
        }
        if let Some(raw) = &server.public_url {
            // Registries and clients are sent to `<public_url>/token`: it must be a plain
            // http(s) base URL.
            let shown = crate::secrets::shown_url(raw);
            let bad = |why: &str| {
                Err(ConfigError::Semantic(format!(
                    "server.public_url {shown:?} {why}; give the URL clients reach Rise at, e.g. https://rise.example.com"
                )))
            };
            match reqwest::Url::parse(raw.trim()) {
                Err(e) => return bad(&format!("is not a URL ({e})")),
                Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                    return bad("is not http(s)");
                }
                Ok(url) if url.host_str().is_none_or(str::is_empty) => return bad("has no host"),
                Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                    return bad("must not contain credentials");
                }
                Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                    return bad("must not have a query or fragment");
                }
                Ok(_) => {}
            }
        }
        if server.tls.is_none()
            && !server.listen.ip().is_loopback()
            && !server.danger_insecure_http_on_non_loopback
        {
            return Err(ConfigError::Semantic(format!(
                "server.listen = {} is not a loopback address and [server.tls] is not set: tokens \
                 and credentials would cross the network unencrypted. Set [server.tls] certificate \
                 and key (`rise-backend dev-cert` makes a local pair), or, only behind a \
                 TLS-terminating proxy, set server.danger_insecure_http_on_non_loopback = true",
                server.listen
            )));
        }
        match (
            &server.trusted_proxy_header,
            server.trusted_proxies.is_empty(),
        ) {
            (Some(_), true) => {
                return Err(ConfigError::Semantic(
                    "server.trusted_proxy_header is set but server.trusted_proxies is empty: the \
                     header is honoured only from trusted proxies; list their networks"
                        .into(),
                ));
            }
            (None, false) => {
                return Err(ConfigError::Semantic(
                    "server.trusted_proxies is set but server.trusted_proxy_header is not: name \
                     the header the proxies put the client address in (e.g. x-forwarded-for)"
                        .into(),
                ));
            }
            (Some(name), false) => {
                if axum::http::HeaderName::from_bytes(name.trim().as_bytes()).is_err() {
                    return Err(ConfigError::Semantic(format!(
                        "server.trusted_proxy_header {name:?} is not a valid HTTP header name"
                    )));
                }
            }
            (None, true) => {}
        }
        Ok(())
    }
}

/// A configuration problem, with the key and the source that set it where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a `source`: error chains would print it twice.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{message} (key `{key}`, set in {source_name})")]
    Invalid {
        key: String,
        source_name: String,
        message: String,
    },
    #[error("{0}")]
    Semantic(String),
}

/// A `RISE_` environment variable whose value is not UTF-8. Named, never shown: it may be a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "environment variable {name} is not valid UTF-8 (its value is not shown: it may be a secret); set it to UTF-8 text or unset it"
)]
pub struct NotUnicodeVariable {
    pub name: String,
}

/// Where configuration comes from, in order of increasing precedence.
#[derive(Default, Clone)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    /// `(name, value)` pairs, normally the process's `RISE_` variables ([`rise_variables`]).
    pub env: Vec<(String, String)>,
}

/// Names the variables, never their values: the environment holds passwords and keys.
impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("files", &self.files)
            .field(
                "env",
                &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Sources {
    /// `files` and this process's `RISE_` variables.
    pub fn from_process(files: Vec<PathBuf>) -> Result<Self, NotUnicodeVariable> {
        Ok(Self {
            files,
            env: rise_variables(std::env::vars_os())?,
        })
    }
}

/// The `RISE_` variables of `vars` (normally `std::env::vars_os()`). Other variables are none of
/// Rise's business and are skipped even when they are not UTF-8 (`std::env::vars` would panic,
/// printing the value). A `RISE_` variable that is not UTF-8 is an error naming it.
pub fn rise_variables(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, NotUnicodeVariable> {
    let mut found = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str().filter(|n| n.starts_with("RISE_")) else {
            continue;
        };
        let value = value.into_string().map_err(|_| NotUnicodeVariable {
            name: name.to_owned(),
        })?;
        found.push((name.to_owned(), value));
    }
    Ok(found)
}

impl Config {
    /// Load and validate configuration from `sources`.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut tree = Table::new();
        let mut provenance = Provenance::default();
        merge_source(
            &mut tree,
            &mut provenance,
            "built-in defaults",
            parse_builtin(BUILTIN_DEFAULTS),
        );
        if sources.files.is_empty() {
            merge_source(
                &mut tree,
                &mut provenance,
                "the embedded demo configuration",
                parse_builtin(EMBEDDED_DEMO),
            );
        }
        for path in &sources.files {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.clone(),
                error,
            })?;
            // The position, not toml's full report: that quotes the line, which may hold a secret.
            let table: Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.clone(),
                message: match e.span() {
                    Some(span) => {
                        let (line, column) = line_and_column(&text, span.start);
                        format!("line {line}, column {column}: {}", e.message().trim_end())
                    }
                    None => e.message().trim_end().to_owned(),
                },
            })?;
            merge_source(
                &mut tree,
                &mut provenance,
                &path.display().to_string(),
                table,
            );
        }
        // The variable that set each key. Each variable is a source of its own, and a later
        // source's form of a secret replaces an earlier one's (see `merge_table`): without this,
        // `X` and `X_FILE` both set here would pick one by the order of the environment.
        let mut set_by: BTreeMap<Vec<String>, &str> = BTreeMap::new();
        for (name, value) in &sources.env {
            let Some(path) = env_key_path(name)? else {
                continue;
            };
            if let Some((key, parents)) = path.split_last()
                && let Some(other) = other_form_of_secret(key)
                && let Some(other_name) =
                    set_by.get(&[parents, std::slice::from_ref(&other)].concat())
            {
                let (base, file, base_name, file_name) = if key.ends_with("_file") {
                    (other.as_str(), key.as_str(), *other_name, name.as_str())
                } else {
                    (key.as_str(), other.as_str(), name.as_str(), *other_name)
                };
                return Err(ConfigError::Invalid {
                    key: dotted(parents, file),
                    source_name: format!("environment variables {base_name} and {file_name}"),
                    message: both_ways(base, file),
                });
            }
            if let Some(other_name) = set_by.get(&path) {
                // Names that differ only in case: which wins would depend on the environment's order.
                let (first, second) = if *other_name < name.as_str() {
                    (*other_name, name.as_str())
                } else {
                    (name.as_str(), *other_name)
                };
                return Err(ConfigError::Semantic(format!(
                    "environment variables {first} and {second} both set `{}` (names are read without regard to case); keep one",
                    path.join(".")
                )));
            }
            set_by.insert(path.clone(), name);
            let source = format!("environment variable {name}");
            let mut table = Table::new();
            insert_path(&mut table, &path, Value::String(value.clone()));
            merge_source(&mut tree, &mut provenance, &source, table);
        }
        resolve_secret_files(&mut tree, &mut Vec::new(), &provenance)?;
        let config: Config = deserialize_with_key(tree, &provenance)?;
        config.validate()?;
        Ok(config)
    }

    /// All registries by name, the seed's `[registry]` as `default`.
    pub fn all_registries(&self) -> impl Iterator<Item = (&str, &ProviderConfig)> {
        self.registry
            .iter()
            .map(|r| (DEFAULT_REGISTRY, r))
            .chain(self.registries.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.rate_limit.validate().map_err(ConfigError::Semantic)?;
        self.keys.validate().map_err(ConfigError::Semantic)?;
        if self.auth.leeway > Duration::from_secs(60) {
            return Err(ConfigError::Semantic(
                "auth.leeway may be at most 60s: a larger clock skew lets expired tokens in".into(),
            ));
        }
        if self.registry.is_some() && self.registries.contains_key(DEFAULT_REGISTRY) {
            return Err(ConfigError::Semantic(
                "both [registry] and [registries.default] are set: they name the same registry; keep one".into(),
            ));
        }
        for name in self.registries.keys() {
            if ProjectName::parse(name).is_err() {
                return Err(ConfigError::Semantic(format!(
                    "registry name {name:?} is invalid: use lowercase letters, digits, '-', '_' and '.'"
                )));
            }
        }
        for name in self.auth.issuers.keys() {
            if name == LOCAL_ISSUER_NAME {
                return Err(ConfigError::Semantic(format!(
                    "auth.issuers.{LOCAL_ISSUER_NAME} is reserved for the built-in development issuer; pick another name"
                )));
            }
            if name == OPERATOR_ISSUER_NAME {
                return Err(ConfigError::Semantic(format!(
                    "auth.issuers.{OPERATOR_ISSUER_NAME} is reserved: the audit log names operators running rise-backend commands with it; pick another name"
                )));
            }
            // Callers are written ISSUER/SUBJECT (audit tables, `grants revoke --subject`), and
            // environment variable names are read in lower case and split on `__`
            // (`RISE_AUTH__ISSUERS__CORP__AUDIENCE`): the rule of registry names, without `__`.
            if ProjectName::parse(name).is_err() || name.contains("__") {
                return Err(ConfigError::Semantic(format!(
                    "issuer name {:?} is invalid: use lowercase letters, digits, '-', '_' (not two in a row) and '.'; renaming an issuer ends the grants of its callers",
                    name.chars().take(80).collect::<String>()
                )));
            }
        }
        if let Some(name) = &self.auth.login_issuer
            && self
                .auth
                .issuers
                .get(name)
                .is_none_or(|i| i.client_id.is_none())
        {
            return Err(ConfigError::Semantic(format!(
                "auth.login_issuer names {name:?}, which is not an issuer under [auth.issuers] with a client_id"
            )));
        }
        for (project, p) in &self.projects {
            if !self.all_registries().any(|(name, _)| name == p.registry) {
                return Err(ConfigError::Semantic(format!(
                    "project {project} uses registry {:?}, which is not configured (configure [registry] or [registries.{}])",
                    p.registry, p.registry
                )));
            }
            for (i, rule) in p.allow.iter().enumerate() {
                if let Some(issuer) = &rule.issuer
                    && issuer != LOCAL_ISSUER_NAME
                    && !self.auth.issuers.contains_key(issuer)
                {
                    return Err(ConfigError::Semantic(format!(
                        "projects.{project}.allow[{i}] names issuer {issuer:?}, which is not configured under [auth.issuers]"
                    )));
                }
                rule.validate().map_err(|m| {
                    ConfigError::Semantic(format!("projects.{project}.allow[{i}]: {m}"))
                })?;
            }
        }
        for (i, admin) in self.audit.admins.iter().enumerate() {
            if admin.issuer != LOCAL_ISSUER_NAME && !self.auth.issuers.contains_key(&admin.issuer) {
                return Err(ConfigError::Semantic(format!(
                    "audit.admins[{i}] names issuer {:?}, which is not configured under [auth.issuers]",
                    admin.issuer
                )));
            }
            admin
                .to_rule()
                .validate()
                .map_err(|m| ConfigError::Semantic(format!("audit.admins[{i}]: {m}")))?;
        }
        self.validate_bounds()?;
        self.database.resolve_url()?;
        Ok(())
    }

    /// Numbers and durations within what Rise can honour: a zero timeout that fails every
    /// request, or a lifetime or queue so large that it overflows, is refused here by key.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Semantic(message));
        let audit = &self.audit;
        if !(1..=MAX_AUDIT_QUEUE).contains(&audit.queue_capacity) {
            return fail(format!(
                "audit.queue_capacity must be between 1 and {MAX_AUDIT_QUEUE}"
            ));
        }
        if !(1..=MAX_AUDIT_QUEUE).contains(&audit.max_batch) {
            return fail(format!(
                "audit.max_batch must be between 1 and {MAX_AUDIT_QUEUE}"
            ));
        }
        if self.server.max_connections == 0 {
            return fail(
                "server.max_connections must be at least 1 (leave it out for the default, which the open-file limit sets)"
                    .into(),
            );
        }
        if !(1..=MAX_DB_CONNECTIONS).contains(&self.database.max_connections) {
            return fail(format!(
                "database.max_connections must be between 1 and {MAX_DB_CONNECTIONS}"
            ));
        }
        let mut durations = vec![
            (
                "audit.commit_timeout".to_owned(),
                audit.commit_timeout,
                MIN_TIMEOUT,
                MAX_WAIT,
            ),
            (
                "server.header_read_timeout".to_owned(),
                self.server.header_read_timeout,
                MIN_TIMEOUT,
                MAX_WAIT,
            ),
            (
                "database.acquire_timeout".to_owned(),
                self.database.acquire_timeout,
                MIN_TIMEOUT,
                MAX_WAIT,
            ),
            (
                "auth.local.max_ttl".to_owned(),
                self.auth.local.max_ttl,
                Duration::from_secs(60),
                LONGEST_MAX_TTL,
            ),
        ];
        for (name, issuer) in &self.auth.issuers {
            let key = format!("auth.issuers.{name}");
            durations.push((
                format!("{key}.jwks_cache_ttl"),
                issuer.jwks_cache_ttl,
                Duration::from_secs(1),
                LONGEST_MAX_TTL,
            ));
            durations.push((
                format!("{key}.max_token_lifetime"),
                issuer.max_token_lifetime,
                Duration::from_secs(60),
                LONGEST_MAX_TTL,
            ));
            // 0s is allowed: refetch on every unknown key id (tests, key rotation drills).
            durations.push((
                format!("{key}.jwks_refresh_floor"),
                issuer.jwks_refresh_floor,
                Duration::ZERO,
                LONGEST_MAX_TTL,
            ));
        }
        for (name, registry) in self.all_registries() {
            if let Some(max_ttl) = registry.max_ttl() {
                let key = match name {
                    DEFAULT_REGISTRY if self.registry.is_some() => "registry.max_ttl".to_owned(),
                    name => format!("registries.{name}.max_ttl"),
                };
                // Zero and other lower bounds are each provider's own rule.
                if max_ttl > LONGEST_MAX_TTL {
                    return fail(format!(
                        "{key} = {} is too long: Rise hands out short-lived credentials; give at most {}",
                        shown_duration(max_ttl),
                        shown_duration(LONGEST_MAX_TTL)
                    ));
                }
            }
        }
        for (project, p) in &self.projects {
            if let Some(ttl) = p.ttl {
                // Shorter than a caller may ask for (60s) is allowed: grants that expire while
                // a push runs are how renewal is tested.
                durations.push((
                    format!("projects.{project}.ttl"),
                    ttl,
                    Duration::from_secs(1),
                    LONGEST_MAX_TTL,
                ));
            }
        }
        for (key, value, min, max) in durations {
            if value < min || value > max {
                return fail(format!(
                    "{key} = {} is out of range: give a duration from {} to {}",
                    shown_duration(value),
                    shown_duration(min),
                    shown_duration(max),
                ));
            }
        }
        Ok(())
    }
}

/// `d` as the config spells it: whole days as `365d`, anything else as humantime writes it.
fn shown_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// The longest audit queue and batch: far beyond any need, and within Tokio's channel limits.
const MAX_AUDIT_QUEUE: u64 = 1 << 20;
const MAX_DB_CONNECTIONS: u64 = 10_000;
/// Bounds of the waits a request or a start-up may spend (commit, pool acquire).
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn parse_builtin(text: &str) -> Table {
    // The built-in files are part of the binary and covered by tests; failing here is a build defect.
    #[allow(clippy::expect_used)]
    toml::from_str(text).expect("built-in configuration is valid TOML")
}

/// `RISE_REGISTRY__PASSWORD` -> `["registry", "password"]`. Variables without `__` (such as the
/// CLI's `RISE_TOKEN`) are not configuration. An empty key (`RISE_REGISTRY__PASSWORD__`,
/// `RISE_REGISTRY____PASSWORD`) is a typo, and an error rather than a setting silently ignored.
fn env_key_path(name: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(rest) = name.strip_prefix("RISE_") else {
        return Ok(None);
    };
    if !rest.contains("__") {
        return Ok(None);
    }
    let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Semantic(format!(
            "environment variable {name} has an empty key: `__` separates keys, so it may not start or end with `__` or repeat it; write RISE_<SECTION>__<KEY>, e.g. RISE_REGISTRY__PASSWORD"
        )));
    }
    Ok(Some(parts))
}

fn insert_path(table: &mut Table, path: &[String], value: Value) {
    let (last, parents) = match path.split_last() {
        Some(x) => x,
        None => return,
    };
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => cur = t,
            _ => return,
        }
    }
    cur.insert(last.clone(), value);
}

/// Which source set each dotted key.
#[derive(Debug, Default)]
struct Provenance(BTreeMap<String, String>);

impl Provenance {
    /// The source of `key` or of its nearest ancestor.
    fn source_of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(s) = self.0.get(k) {
                return s.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return "the configuration".into(),
            }
        }
    }
}

fn merge_source(tree: &mut Table, prov: &mut Provenance, source: &str, overlay: Table) {
    merge_table(tree, prov, source, overlay, "");
}

fn merge_table(
    base: &mut Table,
    prov: &mut Provenance,
    source: &str,
    overlay: Table,
    prefix: &str,
) {
    for (k, v) in overlay {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge_table(b, prov, source, o, &key),
            (_, v) => {
                // A secret given one way here replaces the other way from an earlier source:
                // `RISE_REGISTRY__PASSWORD` overrides a file's `password_file`, and vice versa.
                if let Some(other) = other_form_of_secret(&k) {
                    let other_key = dotted_under(prefix, &other);
                    if prov.0.get(&other_key).is_some_and(|s| s != source) {
                        base.remove(&other);
                        prov.0.remove(&other_key);
                    }
                }
                // A table replaced wholesale (e.g. `[registry]` of another `type`) takes all its
                // keys from the new source.
                prov.0
                    .retain(|existing, _| !existing.starts_with(&format!("{key}.")));
                mark(prov, source, &key, &v);
                base.insert(k, v);
            }
        }
    }
}

/// `password_file` for `password` and back, for the secret keys (and the database URL).
fn other_form_of_secret(key: &str) -> Option<String> {
    let is_secret = |k: &str| SECRET_KEYS.contains(&k) || k == "url";
    match key.strip_suffix("_file") {
        Some(base) if is_secret(base) => Some(base.to_owned()),
        Some(_) => None,
        None if is_secret(key) => Some(format!("{key}_file")),
        None => None,
    }
}

fn dotted_under(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn mark(prov: &mut Provenance, source: &str, key: &str, v: &Value) {
    prov.0.insert(key.to_owned(), source.to_owned());
    if let Value::Table(t) = v {
        for (k, v) in t {
            mark(prov, source, &format!("{key}.{k}"), v);
        }
    }
}

/// Replace `<secret>_file = "/path"` with `<secret> = "<file content>"`.
fn resolve_secret_files(
    table: &mut Table,
    path: &mut Vec<String>,
    prov: &Provenance,
) -> Result<(), ConfigError> {
    let file_keys: Vec<String> = table
        .keys()
        .filter(|k| {
            k.strip_suffix("_file")
                .is_some_and(|base| SECRET_KEYS.contains(&base))
        })
        .cloned()
        .collect();
    for fk in file_keys {
        let base = fk.trim_end_matches("_file").to_owned();
        let dotted = dotted(path, &fk);
        if table.contains_key(&base) {
            return Err(ConfigError::Invalid {
                source_name: prov.source_of(&dotted),
                key: dotted,
                message: both_ways(&base, &fk),
            });
        }
        let Some(Value::String(file)) = table.remove(&fk) else {
            return Err(ConfigError::Invalid {
                source_name: prov.source_of(&dotted),
                key: dotted,
                message: "expected a file path string".into(),
            });
        };
        let content =
            read_secret_file(Path::new(&file)).map_err(|message| ConfigError::Invalid {
                source_name: prov.source_of(&dotted),
                key: dotted.clone(),
                message,
            })?;
        let secret = content.trim_end_matches(['\n', '\r']).to_owned();
        table.insert(base, Value::String(secret));
    }
    for (k, v) in table.iter_mut() {
        if let Value::Table(t) = v {
            path.push(k.clone());
            resolve_secret_files(t, path, prov)?;
            path.pop();
        }
    }
    Ok(())
}

/// The error for a secret given as `base` and as `file` in one source.
fn both_ways(base: &str, file: &str) -> String {
    format!("both `{base}` and `{file}` are set; give the secret one way")
}

/// The most a secret file may hold. Keys and tokens are far smaller: a bigger file is the wrong
/// path, and reading it whole could take all memory (`/dev/zero` never ends).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The content of the secret file at `path` (a regular file, after symlinks, of at most
/// [`MAX_SECRET_FILE`] bytes). The error names the path and the problem, never the content.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let unreadable = |e: std::io::Error| format!("cannot read secret file {shown}: {}", e.kind());
    let not_regular = || {
        format!(
            "secret file {shown} is not a regular file (a device, pipe or directory); give the path of a file holding only the secret"
        )
    };
    // Checked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // And again on what was opened, in case the path changed in between.
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_SECRET_FILE + 1),
        &mut bytes,
    )
    .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "secret file {shown} is larger than {} KiB, the most a secret file may hold; give the path of a file holding only the secret",
            MAX_SECRET_FILE / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("secret file {shown} is not UTF-8 text"))
}

/// serde quotes a mistyped value (`invalid type: string "hunter2", expected ...`); a secret put in
/// the wrong key, or given as a number, must not reach the log that way. Field names
/// (`unknown field `x``) are kept: they are keys, not values.
fn redact_quoted_values(message: &str) -> String {
    // serde names the offending value first, in quotes or backticks: `invalid type: integer
    // `12345`, expected a string`, `invalid value: string "x", ...`, `unknown variant `x`, ...`.
    // The expectations after it are the program's own words and stay.
    let names_a_value = ["invalid type:", "invalid value:", "unknown variant"]
        .iter()
        .any(|p| message.starts_with(p));
    if !names_a_value {
        return message.to_owned();
    }
    let Some(open) = message.find(['"', '`']) else {
        return message.to_owned();
    };
    let quote = &message[open..=open];
    let Some(len) = message[open + 1..].find(quote) else {
        return format!("{}{quote}<redacted>", &message[..open]);
    };
    format!(
        "{}{quote}<redacted>{quote}{}",
        &message[..open],
        &message[open + 1 + len + 1..]
    )
}

fn dotted(path: &[String], key: &str) -> String {
    let mut s = path.join(".");
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(key);
    s
}

/// Deserialize, turning serde's error into one that names the full key and its source. Values are
/// never quoted in the message, so a mistyped secret does not leak into logs.
fn deserialize_with_key(tree: Table, prov: &Provenance) -> Result<Config, ConfigError> {
    // Kept to look inside a registry table when the error stops at it (see below).
    let registries = (
        tree.get("registry").cloned(),
        tree.get("registries").cloned(),
    );
    let value = Value::Table(tree);
    let result: Result<Config, serde_path_to_error::Error<toml::de::Error>> =
        serde_path_to_error::deserialize(value);
    result.map_err(|err| {
        let mut key = err.path().to_string();
        // A registry table is read through its `type` tag, where serde loses the path: find
        // the field by reading the table as its type's own struct.
        let table = match key.split_once('.') {
            None if key == "registry" => registries.0.as_ref(),
            Some(("registries", name)) if !name.contains('.') => {
                registries.1.as_ref().and_then(|r| r.get(name))
            }
            _ => None,
        };
        if let Some(inner) = table
            .and_then(Value::as_table)
            .and_then(crate::registry::providers::error_path)
        {
            key = format!("{key}.{inner}");
        }
        let message = redact_quoted_values(err.inner().message());
        // serde reports an unknown field by name; the path may or may not already end with it.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
            && key.rsplit('.').next() != Some(field)
        {
            key = if key == "." || key.is_empty() {
                field.to_owned()
            } else {
                format!("{key}.{field}")
            };
        }
        ConfigError::Invalid {
            source_name: prov.source_of(&key),
            key,
            message,
        }
    })
}

/// Loading configuration text in unit tests, through the real loader.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::Write;

    use secrecy::ExposeSecret;

    use super::{Config, Sources};
    use crate::secrets::SecretSource;

    /// `text` as the only configuration file, with `env` as the environment.
    pub(crate) fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        Config::load(&Sources {
            files: vec![f.path().to_owned()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .map_err(|e| e.to_string())
    }

    /// The literal value of a secret key, if it was given as one.
    pub(crate) fn value(source: Option<&SecretSource>) -> Option<&str> {
        match source {
            Some(SecretSource::Value(v)) => Some(v.expose_secret()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn load(
        files: &[&tempfile::NamedTempFile],
        env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        Config::load(&Sources {
            files: files.iter().map(|f| f.path().to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn embedded_default_has_demo_project() {
        let c = load(&[], &[]).expect("embedded config loads");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:3000");
        let demo = ProjectName::parse("my-app").expect("valid");
        assert!(c.projects.contains_key(&demo));
        assert!(c.registry.is_some());
        assert!(c.auth.local.enabled);
        assert_eq!(
            c.audit.admins.len(),
            1,
            "local auditors read the demo's log"
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        let err = load(&[&f], &[]).expect_err("typo must fail").to_string();
        assert!(err.contains("(key `server.lisen`, set in "), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        let err = load(&[], &[("RISE_SERVER__LISTN", "x")])
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("(key `server.listn`, set in "), "{err}");
        let f = file("lisen = 3\n");
        let err = load(&[&f], &[]).expect_err("typo must fail").to_string();
        assert!(err.contains("(key `lisen`, set in "), "{err}");
    }

    #[test]
    fn a_missing_file_is_named_once_with_its_error() {
        let err = load_paths(&["/nonexistent/rise.toml"]).expect_err("missing");
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(
            chain.matches("No such file or directory").count(),
            1,
            "{chain}"
        );
        assert!(chain.contains("/nonexistent/rise.toml"), "{chain}");
    }

    fn load_paths(paths: &[&str]) -> Result<Config, ConfigError> {
        Config::load(&Sources {
            files: paths.iter().map(std::path::PathBuf::from).collect(),
            env: Vec::new(),
        })
    }

    #[test]
    fn later_files_and_env_override() {
        let a = file("[server]\nlisten = \"127.0.0.1:1\"\n");
        let b = file("[server]\nlisten = \"127.0.0.1:2\"\n");
        let c = load(&[&a, &b], &[]).expect("loads");
        assert_eq!(c.server.listen.port(), 2);
        let c = load(&[&a, &b], &[("RISE_SERVER__LISTEN", "127.0.0.1:7")]).expect("loads");
        assert_eq!(c.server.listen.port(), 7);
    }

    #[test]
    fn a_secret_from_the_environment_replaces_the_file_form_and_back() {
        let registry = "[registry]\ntype = \"artifactory\"\nbase_url = \"https://jfrog.example\"\nrepository = \"docker-local\"\nusername = \"u\"\n";
        let mut secret = tempfile::NamedTempFile::new().expect("temp file");
        secret.write_all(b"from-file\n").expect("write");
        let path = secret.path().display().to_string();
        let password = |c: &Config| match &c.registry {
            Some(ProviderConfig::Artifactory(a)) => {
                test_support::value(a.password.as_ref()).map(str::to_owned)
            }
            _ => None,
        };

        let f = file(&format!("{registry}password_file = {path:?}\n"));
        let c = load(&[&f], &[("RISE_REGISTRY__PASSWORD", "from-env")]).expect("env wins");
        assert_eq!(password(&c).as_deref(), Some("from-env"));

        let f = file(&format!("{registry}password = \"inline\"\n"));
        let c = load(&[&f], &[("RISE_REGISTRY__PASSWORD_FILE", &path)]).expect("env wins");
        assert_eq!(password(&c).as_deref(), Some("from-file"));

        // Both ways in one source is still a mistake.
        let f = file(&format!(
            "{registry}password = \"x\"\npassword_file = {path:?}\n"
        ));
        let err = load(&[&f], &[]).expect_err("both").to_string();
        assert!(err.contains("give the secret one way"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_must_be_small_regular_files() {
        let registry = "[registry]\ntype = \"artifactory\"\nbase_url = \"https://jfrog.example\"\nrepository = \"docker-local\"\nusername = \"u\"\n";
        let with_password_file = |path: &Path| {
            file(&format!(
                "{registry}password_file = {:?}\n",
                path.display().to_string()
            ))
        };
        let limit = usize::try_from(MAX_SECRET_FILE).expect("small");

        let largest = file(&"s".repeat(limit));
        let dir = tempfile::tempdir().expect("temp dir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(largest.path(), &link).expect("symlink");
        load(&[&with_password_file(&link)], &[]).expect("64 KiB, through a symlink");

        let too_big = file(&"s".repeat(limit + 1));
        let cases = [
            (too_big.path(), "is larger than 64 KiB"),
            (Path::new("/dev/null"), "is not a regular file"),
            (dir.path(), "is not a regular file"),
        ];
        for (path, problem) in cases {
            let err = load(&[&with_password_file(path)], &[])
                .expect_err(problem)
                .to_string();
            assert!(err.contains(problem), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("registry.password_file"), "{err}");
            assert!(!err.contains("sss"), "content shown: {err}");
        }

        let database = |path: &Path| {
            file(&format!(
                "[database]\nurl_file = {:?}\n",
                path.display().to_string()
            ))
        };
        for (path, problem) in cases {
            let err = load(&[&database(path)], &[])
                .expect_err(problem)
                .to_string();
            assert!(err.contains("database.url_file"), "{err}");
            assert!(err.contains(problem), "{err}");
        }
    }

    #[test]
    fn every_ecr_credential_may_come_from_a_file() {
        let key_id = file("AKIAFROMFILE\n");
        let f = file(&format!(
            "[registry]\ntype = \"ecr\"\nregion = \"us-east-1\"\naccount_id = \"123456789012\"\naccess_key_id_file = {:?}\nsecret_access_key = \"s\"\n",
            key_id.path().display().to_string()
        ));
        let c = load(&[&f], &[]).expect("access_key_id_file is a secret source");
        let Some(ProviderConfig::Ecr(ecr)) = &c.registry else {
            panic!("expected an ECR registry: {:?}", c.registry);
        };
        assert_eq!(
            test_support::value(ecr.access_key_id.as_ref()),
            Some("AKIAFROMFILE")
        );
    }

    #[test]
    fn a_secret_given_both_ways_in_the_environment_is_refused_in_either_order() {
        let registry = file(
            "[registry]\ntype = \"artifactory\"\nbase_url = \"https://jfrog.example\"\nrepository = \"docker-local\"\nusername = \"u\"\n",
        );
        let secret = file("from-file\n");
        let path = secret.path().display().to_string();
        for (files, value, file_form, expected) in [
            (
                vec![&registry],
                ("RISE_REGISTRY__PASSWORD", "inline"),
                ("RISE_REGISTRY__PASSWORD_FILE", path.as_str()),
                "both `password` and `password_file` are set; give the secret one way (key `registry.password_file`, set in environment variables RISE_REGISTRY__PASSWORD and RISE_REGISTRY__PASSWORD_FILE)",
            ),
            (
                vec![],
                ("RISE_DATABASE__URL", "postgres://rise:hunter2@db/rise"),
                ("RISE_DATABASE__URL_FILE", path.as_str()),
                "both `url` and `url_file` are set; give the secret one way (key `database.url_file`, set in environment variables RISE_DATABASE__URL and RISE_DATABASE__URL_FILE)",
            ),
        ] {
            for env in [[value, file_form], [file_form, value]] {
                let err = load(&files, &env).expect_err(expected).to_string();
                assert_eq!(err, expected, "{env:?}");
            }
        }
    }

    #[test]
    fn variables_naming_one_key_in_two_cases_are_refused_in_either_order() {
        let one = ("RISE_SERVER__LISTEN", "127.0.0.1:3001");
        let other = ("RISE_server__listen", "127.0.0.1:3002");
        for env in [[one, other], [other, one]] {
            let err = load(&[], &env).expect_err("ambiguous").to_string();
            assert_eq!(
                err,
                "environment variables RISE_SERVER__LISTEN and RISE_server__listen both set `server.listen` (names are read without regard to case); keep one",
                "{env:?}"
            );
        }
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = load(&[], &[("RISE_SERVER__LISTEN", "nope")])
            .expect_err("invalid address")
            .to_string();
        assert!(err.contains("RISE_SERVER__LISTEN"), "{err}");
    }

    #[test]
    fn non_config_env_vars_are_ignored() {
        load(
            &[],
            &[("RISE_TOKEN", "x"), ("RISE_", "y"), ("RISE_LOG", "z")],
        )
        .expect("plain RISE_ vars are not configuration");
    }

    #[test]
    fn an_env_name_with_an_empty_key_is_a_typo() {
        for name in [
            "RISE_REGISTRY__PASSWORD__",
            "RISE_REGISTRY____PASSWORD",
            "RISE___REGISTRY__PASSWORD",
            "RISE_A____B",
        ] {
            let err = load(&[], &[(name, "hunter2")]).expect_err(name).to_string();
            assert!(
                err.starts_with(&format!("environment variable {name} has an empty key")),
                "{err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn non_loopback_without_tls_is_refused() {
        for listen in ["0.0.0.0:3000", "[::]:3000", "192.0.2.1:3000"] {
            let f = file(&format!("[server]\nlisten = \"{listen}\"\n"));
            let err = load(&[&f], &[])
                .expect_err("plain HTTP on the network")
                .to_string();
            assert!(
                err.contains("danger_insecure_http_on_non_loopback"),
                "{err}"
            );
            assert!(err.contains("[server.tls]"), "{err}");
            load(
                &[&f],
                &[("RISE_SERVER__DANGER_INSECURE_HTTP_ON_NON_LOOPBACK", "true")],
            )
            .expect("explicitly allowed");
        }
        for listen in ["127.0.0.1:3000", "127.0.0.2:3000", "[::1]:3000"] {
            let f = file(&format!("[server]\nlisten = \"{listen}\"\n"));
            load(&[&f], &[]).expect("loopback needs no TLS");
        }
        let f = file(
            "[server]\nlisten = \"0.0.0.0:3000\"\n[server.tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n",
        );
        let c = load(&[&f], &[]).expect("TLS on the network");
        assert_eq!(c.server.public_url(), "https://0.0.0.0:3000");
    }

    #[test]
    fn an_empty_data_dir_is_refused() {
        for empty in ["", "  "] {
            let err = load(&[], &[("RISE_SERVER__DATA_DIR", empty)])
                .expect_err("empty")
                .to_string();
            assert!(err.contains("server.data_dir is empty"), "{err}");
            let f = file(&format!("[server]\ndata_dir = {empty:?}\n"));
            let err = load(&[&f], &[]).expect_err("empty").to_string();
            assert!(err.contains("server.data_dir is empty"), "{err}");
        }
    }

    #[test]
    fn trusted_proxies_need_a_header_and_vice_versa() {
        let f = file("[server]\ntrusted_proxy_header = \"x-forwarded-for\"\n");
        let err = load(&[&f], &[]).expect_err("no proxies").to_string();
        assert!(err.contains("trusted_proxies"), "{err}");
        let f = file("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
        let err = load(&[&f], &[]).expect_err("no header").to_string();
        assert!(err.contains("trusted_proxy_header"), "{err}");
        let f = file(
            "[server]\ntrusted_proxy_header = \"x-forwarded-for\"\ntrusted_proxies = [\"127.0.0.1/32\", \"::1\"]\n",
        );
        let c = load(&[&f], &[]).expect("both");
        assert_eq!(c.server.trusted_proxies.len(), 2);
        let c = load(
            &[],
            &[
                ("RISE_SERVER__TRUSTED_PROXY_HEADER", "forwarded"),
                ("RISE_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
            ],
        )
        .expect("from the environment");
        assert_eq!(c.server.trusted_proxies.len(), 2);
        let err = load(
            &[],
            &[
                ("RISE_SERVER__TRUSTED_PROXY_HEADER", "x-f"),
                ("RISE_SERVER__TRUSTED_PROXIES", "10.0.0.0/33"),
            ],
        )
        .expect_err("bad network")
        .to_string();
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn rate_limits_layer_and_validate() {
        let c = load(&[], &[]).expect("defaults");
        assert!(c.rate_limit.enabled);
        assert_eq!(c.rate_limit.per_subject.burst, 50);
        assert!(c.rate_limit.per_project.is_none());
        // A file may change one key of a quota; the rest keeps its default.
        let f = file("[rate_limit.per_subject]\nrate = \"100000/s\"\n");
        let c = load(&[&f], &[]).expect("raised");
        assert_eq!(c.rate_limit.per_subject.burst, 50);
        assert!((c.rate_limit.per_subject.rate.as_per_second() - 100_000.0).abs() < 1e-6);
        let c = load(
            &[],
            &[
                ("RISE_RATE_LIMIT__ENABLED", "false"),
                ("RISE_RATE_LIMIT__PER_PROJECT__RATE", "5/min"),
                ("RISE_RATE_LIMIT__PER_PROJECT__BURST", "7"),
            ],
        )
        .expect("from the environment");
        assert!(!c.rate_limit.enabled);
        assert_eq!(c.rate_limit.per_project.map(|q| q.burst), Some(7));
        let err = load(&[], &[("RISE_RATE_LIMIT__PER_IP__BURST", "0")])
            .expect_err("zero burst")
            .to_string();
        assert!(err.contains("rate_limit.per_ip"), "{err}");
        let f = file("[rate_limit]\nper_user = { rate = 1, burst = 1 }\n");
        let err = load(&[&f], &[]).expect_err("typo").to_string();
        assert!(err.contains("rate_limit.per_user"), "{err}");
        let err = load(&[], &[("RISE_RATE_LIMIT__PER_IP__RATE", "fast")])
            .expect_err("bad rate")
            .to_string();
        assert!(err.contains("RISE_RATE_LIMIT__PER_IP__RATE"), "{err}");
    }

    #[test]
    fn mistyped_values_are_not_echoed() {
        let f = file(
            "[server]\nlisten = \"127.0.0.1:1\"\n[auth.local]\nenabled = \"hunter2-secret\"\n",
        );
        let err = load(&[&f], &[]).expect_err("not a bool").to_string();
        assert!(!err.contains("hunter2-secret"), "{err}");
        assert!(err.contains("auth.local.enabled"), "{err}");
    }

    #[test]
    fn numbers_and_durations_out_of_range_are_named() {
        let registry = "[registry]\ntype = \"distribution\"\nurl = \"127.0.0.1:5000\"\n";
        for (toml, expected) in [
            (
                "[audit]\nqueue_capacity = 9223372036854775807\n".to_owned(),
                "audit.queue_capacity must be between 1 and 1048576",
            ),
            ("[audit]\nmax_batch = 0\n".to_owned(), "audit.max_batch must be between"),
            (
                "[database]\nmax_connections = 0\n".to_owned(),
                "database.max_connections must be between",
            ),
            (
                "[audit]\ncommit_timeout = \"0s\"\n".to_owned(),
                "audit.commit_timeout = 0s is out of range: give a duration from 1ms to 10m",
            ),
            (
                "[database]\nacquire_timeout = \"1year\"\n".to_owned(),
                "database.acquire_timeout = ",
            ),
            (
                "[auth.local]\nmax_ttl = \"0s\"\n".to_owned(),
                "auth.local.max_ttl = 0s is out of range: give a duration from 1m to 365d",
            ),
            (
                "[auth.issuers.corp]\nissuer = \"https://idp.example\"\naudience = \"rise\"\njwks_cache_ttl = \"0s\"\n".to_owned(),
                "auth.issuers.corp.jwks_cache_ttl = 0s is out of range",
            ),
            (
                format!("{registry}[projects.app]\nttl = \"0s\"\n"),
                "projects.app.ttl = 0s is out of range: give a duration from 1s to 365d",
            ),
            (
                format!("{registry}max_ttl = \"10000y\"\n"),
                "registry.max_ttl = 3652500d is too long",
            ),
            (
                "[registries.big]\ntype = \"distribution\"\nurl = \"r.example\"\nmax_ttl = \"366d\"\n"
                    .to_owned(),
                "registries.big.max_ttl = 366d is too long: Rise hands out short-lived credentials; give at most 365d",
            ),
        ] {
            let f = file(&toml);
            let err = load(&[&f], &[]).expect_err(&toml).to_string();
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }

    #[test]
    fn syntax_errors_give_the_position_and_not_the_line() {
        let f = file("[registry]\npassword = \"hunter2\" junk\n");
        let err = load(&[&f], &[]).expect_err("bad TOML").to_string();
        assert!(err.contains("line 2, column "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn mistyped_flags_and_numbers_say_what_is_expected() {
        let f = file("[server]\ndanger_insecure_http_on_non_loopback = 1\n");
        let err = load(&[&f], &[]).expect_err("number").to_string();
        assert!(err.contains("expected true or false"), "{err}");
        assert!(!err.contains("untagged"), "{err}");
        let f = file("[audit]\nmax_batch = -1\n");
        let err = load(&[&f], &[]).expect_err("negative").to_string();
        assert!(err.contains("expected a whole number"), "{err}");
        assert!(err.contains("audit.max_batch"), "{err}");
    }

    #[test]
    fn public_url_must_be_an_http_base_url() {
        for (url, part) in [
            ("rise example com", "is not a URL"),
            ("ftp://rise.example", "is not http(s)"),
            (
                "https://admin:hunter2@rise.example",
                "must not contain credentials",
            ),
            ("https://admin:hunter2@rise.example:99999", "is not a URL"),
            ("https://rise.example/?a=b", "query"),
        ] {
            let f = file(&format!("[server]\npublic_url = {url:?}\n"));
            let err = load(&[&f], &[]).expect_err(url).to_string();
            assert!(err.contains("server.public_url"), "{err}");
            assert!(err.contains(part), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let f = file("[server]\npublic_url = \"https://rise.example/base/\"\n");
        let config = load(&[&f], &[]).expect("valid");
        assert_eq!(config.server.public_url(), "https://rise.example/base");
    }

    #[test]
    fn sources_debug_names_variables_but_not_values() {
        let sources = Sources {
            files: Vec::new(),
            env: vec![("RISE_REGISTRY__PASSWORD".into(), "hunter2".into())],
        };
        let printed = format!("{sources:?}");
        assert!(printed.contains("RISE_REGISTRY__PASSWORD"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[cfg(unix)]
    #[test]
    fn a_non_utf8_rise_variable_is_named_and_others_are_skipped() {
        use std::os::unix::ffi::OsStringExt;
        let os = |s: &str| OsString::from(s);
        let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());

        let vars = rise_variables([
            (os("RISE_SERVER__LISTEN"), os("127.0.0.1:7")),
            (os("LANG_UNRELATED"), bytes(b"hunter2-s3cret\xff")),
            (bytes(b"RISE_\xff"), os("x")),
            (os("PATH"), os("/bin")),
        ])
        .expect("only RISE_ values must be UTF-8");
        assert_eq!(
            vars,
            vec![("RISE_SERVER__LISTEN".to_owned(), "127.0.0.1:7".to_owned())]
        );

        let err = rise_variables([(os("RISE_REGISTRY__PASSWORD"), bytes(b"hunter2-s3cret\xff"))])
            .expect_err("not UTF-8")
            .to_string();
        assert!(err.contains("RISE_REGISTRY__PASSWORD"), "{err}");
        assert!(err.contains("not valid UTF-8"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// Every token of an OIDC issuer may not be an audit administrator, nor push, by accident.
    #[test]
    fn rules_for_oidc_issuers_must_narrow_who_they_admit() {
        let issuer = "[registry]\ntype = \"distribution\"\nurl = \"127.0.0.1:5000\"\n\n[auth.issuers.github]\nissuer = \"https://token.actions.githubusercontent.com\"\naudience = \"rise\"\n";
        let f = file(&format!(
            "{issuer}[audit]\nadmins = [{{ issuer = \"github\" }}]\n"
        ));
        let e = load(&[&f], &[]).expect_err("issuer-only admin").to_string();
        assert!(
            e.contains("audit.admins[0]") && e.contains("every token"),
            "{e}"
        );
        let f = file(&format!(
            "{issuer}[projects.app]\n[[projects.app.allow]]\nissuer = \"github\"\nactions = [\"push\"]\n"
        ));
        let e = load(&[&f], &[]).expect_err("issuer-only rule").to_string();
        assert!(
            e.contains("projects.app.allow[0]") && e.contains("any_subject"),
            "{e}"
        );
        let f = file(&format!(
            "{issuer}[projects.app]\n[[projects.app.allow]]\nissuer = \"github\"\nany_subject = true\nactions = [\"pull\"]\n"
        ));
        load(&[&f], &[]).expect("deliberately open");
    }

    #[test]
    fn leeway_is_capped() {
        let f = file("[auth]\nleeway = \"5m\"\n");
        let err = load(&[&f], &[]).expect_err("too lenient").to_string();
        assert!(err.contains("60s"), "{err}");
    }

    #[test]
    fn database_url_is_secret_and_may_come_from_a_file() {
        let c = load(&[], &[]).expect("loads");
        assert!(
            c.database.resolve_url().expect("no url").is_none(),
            "SQLite by default"
        );

        let url = "postgres://rise:hunter2@db.internal/rise";
        let c = load(&[], &[("RISE_DATABASE__URL", url)]).expect("loads");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "password in Debug: {debug}");
        let resolved = c.database.resolve_url().expect("url").expect("set");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&resolved), url);

        let secret = file(&format!("{url}\n"));
        let f = file(&format!(
            "[database]\nurl_file = {:?}\n",
            secret.path().display().to_string()
        ));
        let c = load(&[&f], &[]).expect("loads");
        let resolved = c.database.resolve_url().expect("url").expect("set");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&resolved), url);

        // The environment overrides the file, whichever form each uses.
        let other = "postgres://rise:hunter3@db.internal/rise";
        let c = load(&[&f], &[("RISE_DATABASE__URL", other)]).expect("env wins");
        let resolved = c.database.resolve_url().expect("url").expect("set");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&resolved), other);

        let both = file(&format!(
            "[database]\nurl = {url:?}\nurl_file = {:?}\n",
            secret.path().display().to_string()
        ));
        let err = load(&[&both], &[]).expect_err("both ways").to_string();
        assert!(err.contains("one way"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_bad_value_in_a_registry_table_is_named_with_its_field() {
        let f =
            file("[registry]\ntype = \"distribution\"\nurl = \"r.example.com\"\ntoken_ttl = 5\n");
        let err = load(&[&f], &[]).expect_err("a number").to_string();
        assert!(err.contains("(key `registry.token_ttl`, set in "), "{err}");
        let f = file(
            "[registries.jfrog]\ntype = \"artifactory\"\nbase_url = \"https://a.example.com\"\nrepository = \"docker\"\npassword = 12345\n",
        );
        let err = load(&[&f], &[]).expect_err("a number").to_string();
        assert!(
            err.contains("(key `registries.jfrog.password`, set in "),
            "{err}"
        );
        assert!(!err.contains("12345"), "values are never quoted: {err}");
    }

    #[test]
    fn serde_messages_lose_the_value_they_quote() {
        for (message, redacted) in [
            (
                "invalid type: integer `12345`, expected a string",
                "invalid type: integer `<redacted>`, expected a string",
            ),
            (
                "invalid type: string \"hunter2\", expected a sequence",
                "invalid type: string \"<redacted>\", expected a sequence",
            ),
            (
                "unknown variant `s3cret`, expected `static` or `access_token`",
                "unknown variant `<redacted>`, expected `static` or `access_token`",
            ),
            (
                "invalid value: string \"unterminated",
                "invalid value: string \"<redacted>",
            ),
            (
                "unknown field `pasword`, expected one of `password`",
                "unknown field `pasword`, expected one of `password`",
            ),
            ("missing field `url`", "missing field `url`"),
        ] {
            assert_eq!(redact_quoted_values(message), redacted);
        }
    }

    /// Issuer names follow registry names: no '/' (callers are written ISSUER/SUBJECT), and
    /// nothing the environment's lower-case names could not reach (`Corp`).
    #[test]
    fn issuer_names_are_lowercase_without_a_slash() {
        for name in ["corp/eu", "Corp", "corp eu", "corp__eu"] {
            let bad = file(&format!(
                "[auth.issuers.\"{name}\"]\nissuer = \"https://idp.example.com\"\naudience = \"rise\"\n"
            ));
            let err = load(&[&bad], &[]).expect_err(name).to_string();
            assert!(
                err.contains(&format!("issuer name {name:?} is invalid")),
                "{err}"
            );
        }
        let good = file(
            "[auth.issuers.corp-eu]\nissuer = \"https://idp.example.com\"\naudience = \"rise\"\n",
        );
        load(&[&good], &[]).expect("lowercase with a hyphen");
    }

    #[test]
    fn built_in_issuer_names_are_reserved() {
        for name in [LOCAL_ISSUER_NAME, OPERATOR_ISSUER_NAME] {
            let taken = file(&format!(
                "[auth.issuers.{name}]\nissuer = \"https://idp.example.com\"\naudience = \"rise\"\n"
            ));
            let err = load(&[&taken], &[]).expect_err("reserved").to_string();
            assert!(
                err.contains(&format!("auth.issuers.{name} is reserved")),
                "{err}"
            );
        }
    }

    #[test]
    fn audit_admins_must_name_a_configured_issuer() {
        let ok = file("[audit]\nadmins = [{ issuer = \"local\", subject = \"admin\" }]\n");
        let c = load(&[&ok], &[]).expect("loads");
        assert_eq!(c.audit.admins.len(), 1);
        let bad = file("[audit]\nadmins = [{ issuer = \"corp\", subject = \"admin\" }]\n");
        let err = load(&[&bad], &[]).expect_err("unknown issuer").to_string();
        assert!(err.contains("audit.admins[0]"), "{err}");
        let typo = file("[audit]\nadmins = [{ issuer = \"local\", subjet = \"admin\" }]\n");
        let err = load(&[&typo], &[]).expect_err("typo").to_string();
        assert!(err.contains("subjet"), "{err}");
    }
}
