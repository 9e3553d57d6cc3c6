//! The `rise` command line: argument definitions and one function per command.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;

use crate::auth_file::{self, AuthFile};
use crate::backend::{Backend, CredentialQuery, Grant, WhoAmI, format_rfc3339, printable};
use crate::cache;
use crate::context::{Context, parse_duration};
use crate::error::{CliError, EXIT_CODES_HELP};
use crate::oidc;
use crate::push::{self, Broker, PushOptions, progress::Reporter};
use crate::registries::{Mapping, RegistryMap};
use crate::session::{self, StoredLogin, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "rise",
    version,
    about = "Sign in to Rise, get short-lived registry credentials, push images",
    long_about = "Sign in to Rise, get short-lived registry credentials for a project, and push images \
                  without a container daemon.\n\n\
                  In CI, set RISE_TOKEN (or RISE_TOKEN_FILE) to the job's OIDC token and RISE_BACKEND \
                  to the backend URL instead of running `rise login`.",
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Rise backend URL, https:// (http:// only to this machine, unless
    /// RISE_INSECURE_HTTP_BACKEND=1) [default: the backend of the last `rise login`]
    #[arg(long, global = true, env = "RISE_BACKEND", value_name = "URL")]
    pub backend: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in with the backend's identity provider (device code by default)
    Login(LoginArgs),
    /// Forget the stored login for the backend (and revoke its refresh token)
    Logout,
    /// Show who the backend takes you for
    Whoami,
    /// Registry credentials and container-tool setup
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Push an OCI image layout or a `docker save` archive to the project's registry
    Push(PushArgs),
    /// Read the backend's audit log (audit administrators only)
    Audit(AuditArgs),
    /// Revoke grants already handed out (audit administrators only)
    #[command(subcommand)]
    Grants(GrantsCommand),
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Make the backend refuse grants from now on: one by its credential id, or every grant a
    /// caller was issued until now
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
pub struct RevokeArgs {
    /// One grant, by its credential id (`rise audit --format jsonl` shows credential_id)
    #[arg(long, group = "target")]
    pub credential: Option<String>,
    /// Every grant of this caller until now: ISSUER/SUBJECT, as `rise audit` shows callers
    #[arg(long, group = "target")]
    pub subject: Option<String>,
    /// Why: recorded, and shown to whoever presents a revoked grant
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records of this project
    #[arg(long)]
    pub project: Option<String>,
    /// Only records of this caller subject
    #[arg(long)]
    pub subject: Option<String>,
    /// Only records of callers of this issuer (its name in the backend's configuration)
    #[arg(long)]
    pub issuer: Option<String>,
    /// Only records with this result
    #[arg(long, value_enum)]
    pub result: Option<AuditResult>,
    /// From this time on: RFC 3339 (2026-01-02T03:04:05Z), Unix seconds, or a duration ago (1h, 7d)
    #[arg(long, value_parser = parse_time_arg)]
    pub since: Option<String>,
    /// Before this time (same forms as --since)
    #[arg(long, value_parser = parse_time_arg)]
    pub until: Option<String>,
    /// Records after this id (the cursor printed at the end of a page)
    #[arg(long, default_value_t = 0)]
    pub after_id: i64,
    /// Records per page (1..=1000)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Follow the cursor through every page instead of stopping after one
    #[arg(long)]
    pub all: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = AuditFormat::Table)]
    pub format: AuditFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditResult {
    Granted,
    Denied,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    /// One line per record: id, time, result, operation, caller, project, actions, reason
    Table,
    /// The backend's records as JSON lines, complete (hashes, fingerprints, client address)
    Jsonl,
}

/// `--since`/`--until`: passed on as RFC 3339 or Unix seconds; a duration means that long ago.
fn parse_time_arg(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.parse::<u64>().is_ok() || humantime::parse_rfc3339_weak(s).is_ok() {
        return Ok(s.to_owned());
    }
    match humantime::parse_duration(s) {
        Ok(ago) => std::time::SystemTime::now()
            .checked_sub(ago)
            .and_then(format_rfc3339)
            .ok_or_else(|| format!("{s} ago is before 1970: give a shorter duration or a date")),
        Err(_) => Err(format!(
            "invalid time {s:?}: give RFC 3339 (2026-01-02T03:04:05Z), Unix seconds, or a duration ago such as 1h"
        )),
    }
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Which of the backend's identity providers to use [default: the backend's default]
    #[arg(long, value_name = "NAME")]
    pub issuer: Option<String>,
    /// Sign in in a browser (authorization code + PKCE, redirect to 127.0.0.1) instead of with a device code
    #[arg(long)]
    pub browser: bool,
    /// With --browser: print the sign-in URL instead of opening a browser
    #[arg(long, requires = "browser")]
    pub no_open: bool,
    /// OAuth scopes to ask for [default: the backend's, else "openid offline_access"]
    #[arg(long)]
    pub scope: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Print short-lived credentials for a project's repository
    Credentials(CredentialsArgs),
    /// Set up docker/podman/skopeo/buildah to use Rise credentials for a project's registry
    Login(RegistryLoginArgs),
}

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// The Rise project
    #[arg(long)]
    pub project: String,
    /// Actions to ask for: pull, push or push,pull [default: all the project allows you]
    #[arg(long)]
    pub actions: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Lifetime to ask for (at least 60s), e.g. 15m [default: the project's]
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The backend's JSON response
    Json,
    /// RISE_REGISTRY_* variables, one per line, for `set -a; . file` or $GITHUB_ENV
    Env,
    /// A Docker config.json with the credential under `auths` (for DOCKER_CONFIG or REGISTRY_AUTH_FILE)
    DockerConfig,
}

#[derive(Debug, Args)]
pub struct RegistryLoginArgs {
    /// The Rise project
    #[arg(long)]
    pub project: String,
    /// Which tools' auth file to set up: docker ($DOCKER_CONFIG/config.json or ~/.docker/config.json),
    /// podman ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or /run/containers/UID/auth.json; also skopeo and buildah), or all
    #[arg(long, value_enum, default_value_t = ClientKind::Docker)]
    pub client: ClientKind,
    /// Write the short-lived credential itself into `auths` instead of registering the helper
    #[arg(long)]
    pub store_password: bool,
    /// Actions the helper asks for: pull, push or push,pull [default: all the project allows you]
    #[arg(long)]
    pub actions: Option<String>,
    /// The helper fetches fresh credentials when cached ones expire within this long
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub margin: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    Docker,
    Podman,
    All,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The Rise project
    #[arg(long)]
    pub project: String,
    /// An OCI image layout directory or a `docker save` archive
    #[arg(value_name = "IMAGE_SOURCE")]
    pub source: PathBuf,
    /// The tag to push as
    #[arg(long)]
    pub tag: String,
    /// Which image of a source that holds several (its ref name or RepoTags entry)
    #[arg(long = "ref", value_name = "NAME")]
    pub reference: Option<String>,
    /// Blobs uploaded at once
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
    /// Renew the credential before a step when it expires within this long
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub refresh_margin: Duration,
    /// Upload at most this many bytes per second per blob, e.g. 500K, 10M
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub limit_rate: Option<u64>,
    /// Lifetime to ask for each credential (at least 60s) [default: the project's]
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Speak plain HTTP to the registry (it already does for 127.0.0.0/8 and localhost). Never
    /// for registries reached over a network: credentials would travel in clear text
    #[arg(long)]
    pub insecure_http: bool,
}

/// `500K`, `10M`, `1G` or plain bytes.
fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&s[..i], 1024),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&s[..i], 1024 * 1024),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&s[..i], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    match num.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n.saturating_mul(mult)),
        _ => Err(format!(
            "invalid rate {s:?}: give bytes per second such as 500K or 10M"
        )),
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli, ctx: Context) -> Result<(), CliError> {
    let backend_flag = cli.backend.as_deref();
    match cli.command {
        Command::Login(args) => login(&ctx, backend_flag, args).await,
        Command::Logout => logout(&ctx, backend_flag).await,
        Command::Whoami => whoami(&ctx, backend_flag).await,
        Command::Registry(RegistryCommand::Credentials(args)) => {
            credentials(&ctx, backend_flag, args).await
        }
        Command::Registry(RegistryCommand::Login(args)) => {
            registry_login(&ctx, backend_flag, args).await
        }
        Command::Push(args) => push_image(&ctx, backend_flag, args).await,
        Command::Audit(args) => audit(&ctx, backend_flag, args).await,
        Command::Grants(GrantsCommand::Revoke(args)) => revoke(&ctx, backend_flag, args).await,
    }
}

async fn revoke(
    ctx: &Context,
    backend_flag: Option<&str>,
    args: RevokeArgs,
) -> Result<(), CliError> {
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let http = ctx.http()?;
    let backend = Backend::new(&backend_url, http.clone(), ctx.transport())?;
    let caller = session::caller_token(ctx, &http, backend.url()).await?;
    let mut body = serde_json::json!({ "reason": args.reason });
    match (args.credential, args.subject) {
        (Some(id), None) => body["credential"] = id.into(),
        (None, Some(subject)) => body["subject"] = subject.into(),
        _ => {
            return Err(CliError::Input("give --credential or --subject".to_owned()));
        }
    }
    let done = backend.revoke_grants(&caller.token, &body).await?;
    let field = |name: &str| done[name].as_str().unwrap_or_default().to_owned();
    out(&format!(
        "revoked {} {}; in force until {}\n",
        field("kind"),
        field("value"),
        field("in_force_until")
    ))?;
    note(
        "every backend replica refuses it within its key reload interval; registry tokens already handed out expire within minutes",
    );
    Ok(())
}

async fn audit(ctx: &Context, backend_flag: Option<&str>, args: AuditArgs) -> Result<(), CliError> {
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let http = ctx.http()?;
    let backend = Backend::new(&backend_url, http.clone(), ctx.transport())?;
    let caller = session::caller_token(ctx, &http, backend.url()).await?;
    let mut query = crate::backend::AuditQuery {
        project: args.project,
        subject: args.subject,
        issuer: args.issuer,
        result: args.result.map(|r| {
            match r {
                AuditResult::Granted => "granted",
                AuditResult::Denied => "denied",
                AuditResult::Failed => "failed",
            }
            .to_owned()
        }),
        since: args.since,
        until: args.until,
        after_id: args.after_id,
        limit: args.limit,
    };
    let mut shown = 0usize;
    // The header only once the first page came back: a refusal prints an error, not a table.
    let mut header = args.format == AuditFormat::Table;
    loop {
        let page = backend.audit(&caller.token, &query).await?;
        let mut text = String::new();
        if std::mem::take(&mut header) {
            text.push_str(&audit_header());
            text.push('\n');
        }
        for record in &page.records {
            match args.format {
                AuditFormat::Jsonl => {
                    text.push_str(&record.to_string());
                    text.push('\n');
                }
                AuditFormat::Table => {
                    let parsed: crate::backend::AuditRecord =
                        serde_json::from_value(record.clone()).unwrap_or_default();
                    text.push_str(&audit_row(&parsed));
                    text.push('\n');
                }
            }
        }
        shown += page.records.len();
        out(&text)?;
        match page.next_after_id {
            Some(next) if args.all => query.after_id = next,
            Some(next) => {
                note(&format!(
                    "{shown} records shown; more after id {next}: add --after-id {next}, or --all"
                ));
                return Ok(());
            }
            None => break,
        }
    }
    if shown == 0 {
        note("no audit records match");
    }
    Ok(())
}

fn audit_header() -> String {
    format!(
        "{:>7}  {:<24}  {:<7}  {:<11}  {:<32}  {:<16}  {:<9}  REASON",
        "ID", "TIME", "RESULT", "OPERATION", "CALLER", "PROJECT", "ACTIONS"
    )
}

/// One table line; values are cut to their column so one long subject cannot skew the table.
pub fn audit_row(r: &crate::backend::AuditRecord) -> String {
    let cut = |s: &str, n: usize| -> String {
        if s.chars().count() <= n {
            s.to_owned()
        } else {
            let mut t: String = s.chars().take(n - 1).collect();
            t.push('…');
            t
        }
    };
    let caller = format!("{}/{}", r.caller.issuer, r.caller.subject);
    let actions = if r.actions_granted.is_empty() {
        "-".to_owned()
    } else {
        r.actions_granted.join(",")
    };
    format!(
        "{:>7}  {:<24}  {:<7}  {:<11}  {:<32}  {:<16}  {:<9}  {}",
        r.id,
        cut(&r.time, 24),
        cut(&r.result, 7),
        cut(&r.operation, 11),
        cut(&caller, 32),
        cut(r.project.as_deref().unwrap_or("-"), 16),
        cut(&actions, 9),
        r.reason
    )
}

fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|e| CliError::Other(format!("cannot write to standard output: {e}")))
}

fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

async fn login(ctx: &Context, backend_flag: Option<&str>, args: LoginArgs) -> Result<(), CliError> {
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let http = ctx.http()?;
    let backend = Backend::new(&backend_url, http.clone(), ctx.transport())?;
    let config = backend.auth_config().await?;
    let wanted = args.issuer.clone().or(config.default_issuer.clone());
    let issuer = match (&wanted, config.issuers.as_slice()) {
        (_, []) => {
            return Err(CliError::Auth(format!(
                "the backend {backend_url} offers no sign-in for people (no issuer with a client_id); use RISE_TOKEN, or ask its operator to set one up"
            )));
        }
        (Some(name), list) => list.iter().find(|i| &i.name == name).ok_or_else(|| {
            CliError::Input(format!(
                "the backend {backend_url} has no sign-in issuer {name:?}; choose one of: {}",
                list.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        (None, [one]) => one,
        (None, list) => {
            return Err(CliError::Input(format!(
                "the backend {backend_url} offers several issuers: pick one with --issuer ({})",
                list.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let scope = args
        .scope
        .clone()
        .or_else(|| issuer.scopes.as_ref().map(|s| s.join(" ")))
        .unwrap_or_else(|| oidc::DEFAULT_SCOPES.to_owned());
    let meta = oidc::discover(&http, ctx.transport(), &issuer.issuer).await?;
    let tokens = if args.browser {
        let no_open = args.no_open;
        oidc::auth_code_flow(&http, &meta, &issuer.client_id, &scope, |url| {
            note(&format!(
                "To sign in, open this URL in a browser:\n\n    {url}\n"
            ));
            if !no_open {
                open_browser(url);
            }
            note("Waiting for the browser to finish signing in...");
        })
        .await?
    } else {
        oidc::device_flow(&http, &meta, &issuer.client_id, &scope, |code| {
            note(&device_prompt(code));
        })
        .await?
    };
    let login = StoredLogin::new(&issuer.name, &meta, &issuer.client_id, tokens, None);
    let has_refresh = login.refresh_token.is_some();
    let token = login.bearer().clone();
    session::save_login(ctx, &backend_url, login)?;
    let me = backend.whoami(&token).await?;
    out(&format!(
        "Logged in to {backend_url} as {} (issuer {}).\n",
        printable(&me.subject, MAX_SHOWN),
        printable(&me.issuer, MAX_SHOWN)
    ))?;
    if !has_refresh {
        note(
            "note: the identity provider issued no refresh token: run `rise login` again when the token expires",
        );
    }
    Ok(())
}

/// The most characters of a server's text (a name, a warning) shown on one line.
const MAX_SHOWN: usize = 300;

/// What the person is asked to do in the device flow; the provider's text is made printable.
fn device_prompt(code: &oidc::DeviceCode) -> String {
    let url = code
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&code.verification_uri);
    format!(
        "To sign in, open {}\nand confirm the code {}\nWaiting for you to finish signing in...",
        printable(url, 2000),
        printable(&code.user_code, 64)
    )
}

/// `rise whoami`'s lines about the caller, from the backend's text made printable.
fn whoami_lines(me: &WhoAmI) -> String {
    let mut text = format!(
        "subject: {}\nissuer:  {}\n",
        printable(&me.subject, MAX_SHOWN),
        printable(&me.issuer, MAX_SHOWN)
    );
    if !me.groups.is_empty() {
        let groups: Vec<String> = me.groups.iter().map(|g| printable(g, MAX_SHOWN)).collect();
        text.push_str(&format!("groups:  {}\n", groups.join(", ")));
    }
    if let Some(exp) = &me.expires_at {
        text.push_str(&format!("expires: {}\n", printable(exp, 64)));
    }
    text
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

async fn logout(ctx: &Context, backend_flag: Option<&str>) -> Result<(), CliError> {
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let removed = session::remove_login(ctx, &backend_url)?;
    cache::forget(ctx, None, Some(&backend_url))?;
    let Some(login) = removed else {
        out(&format!("Not logged in to {backend_url}; nothing to do.\n"))?;
        return Ok(());
    };
    let mut revoked = false;
    if let (Some(endpoint), Some(refresh)) = (&login.revocation_endpoint, &login.refresh_token) {
        revoked = oidc::revoke(
            &ctx.http()?,
            ctx.transport(),
            endpoint,
            &login.client_id,
            refresh,
        )
        .await;
    }
    out(&format!(
        "Logged out of {backend_url}{}.\n",
        if revoked {
            " and revoked the refresh token"
        } else {
            ""
        }
    ))
}

async fn whoami(ctx: &Context, backend_flag: Option<&str>) -> Result<(), CliError> {
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let http = ctx.http()?;
    let backend = Backend::new(&backend_url, http.clone(), ctx.transport())?;
    let caller = session::caller_token(ctx, &http, backend.url()).await?;
    let me = backend.whoami(&caller.token).await?;
    let source = match &caller.source {
        TokenSource::Env => "RISE_TOKEN".to_owned(),
        TokenSource::File(p) => format!("RISE_TOKEN_FILE ({})", p.display()),
        TokenSource::Login => "rise login".to_owned(),
    };
    let mut text = whoami_lines(&me);
    text.push_str(&format!("backend: {backend_url}\ntoken:   from {source}\n"));
    out(&text)
}

async fn fetch_grant(
    ctx: &Context,
    backend_flag: Option<&str>,
    query: &CredentialQuery,
) -> Result<(Backend, crate::backend::GrantResponse), CliError> {
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let http = ctx.http()?;
    let backend = Backend::new(&backend_url, http.clone(), ctx.transport())?;
    let caller = session::caller_token(ctx, &http, backend.url()).await?;
    let response = backend.credentials(&caller.token, query).await?;
    Ok((backend, response))
}

async fn credentials(
    ctx: &Context,
    backend_flag: Option<&str>,
    args: CredentialsArgs,
) -> Result<(), CliError> {
    let query = CredentialQuery {
        project: args.project,
        actions: args.actions,
        ttl: args.ttl,
    };
    let (_, response) = fetch_grant(ctx, backend_flag, &query).await?;
    for w in &response.grant.warnings {
        note(&format!("warning: {}", printable(w, MAX_SHOWN)));
    }
    // Exposed because the user asked for the credential on stdout.
    let text = match args.format {
        Format::Json => format!("{}\n", response.body.expose_secret().trim_end()),
        Format::Env => env_lines(&response.grant)?,
        Format::DockerConfig => docker_config(&response.grant)?,
    };
    out(&text)
}

/// `RISE_REGISTRY_*=value` lines, single-quoted where the shell needs it.
pub fn env_lines(g: &Grant) -> Result<String, CliError> {
    let expires = g.expires_at_rfc3339()?;
    let vars = [
        ("RISE_REGISTRY_URL", g.registry_url.as_str()),
        ("RISE_REGISTRY_USERNAME", g.username.as_str()),
        ("RISE_REGISTRY_PASSWORD", g.password.expose_secret()),
        ("RISE_REGISTRY_REPOSITORY", g.repository.as_str()),
        ("RISE_REGISTRY_IMAGE", g.image.as_str()),
        ("RISE_REGISTRY_EXPIRES_AT", expires.as_str()),
    ];
    Ok(vars
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect())
}

fn shell_quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+=,".contains(&b));
    if plain {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

/// A Docker config.json holding the credential under `auths` (Docker Hub under Docker's key for
/// it, which the containers tools read too).
pub fn docker_config(g: &Grant) -> Result<String, CliError> {
    let auth = STANDARD.encode(format!("{}:{}", g.username, g.password.expose_secret()));
    let key = AuthFile::Docker.registry_key(&g.registry_url);
    let doc = serde_json::json!({ "auths": { key: { "auth": auth } } });
    serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| CliError::Other(format!("cannot encode the config: {e}")))
}

async fn registry_login(
    ctx: &Context,
    backend_flag: Option<&str>,
    args: RegistryLoginArgs,
) -> Result<(), CliError> {
    let query = CredentialQuery {
        project: args.project.clone(),
        actions: args.actions.clone(),
        ttl: None,
    };
    // Asking once proves the caller may use the project and tells where its registry is.
    let (backend, response) = fetch_grant(ctx, backend_flag, &query).await?;
    let grant = response.grant;
    let host = crate::registries::canonical_host(&grant.registry_url).to_owned();
    let files: Vec<AuthFile> = match args.client {
        ClientKind::Docker => vec![AuthFile::Docker],
        ClientKind::Podman => vec![AuthFile::Containers],
        ClientKind::All => vec![AuthFile::Docker, AuthFile::Containers],
    };
    let mut text = String::new();
    // Every file is read and checked before any is written; notes are shown once all are.
    let mut edits = auth_file::Edits::default();
    let mut notes = Vec::new();
    if args.store_password {
        // Everything that can fail on the grant is checked before a file is touched.
        let expires = grant.expires_at_rfc3339()?;
        let left = grant
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // Podman and skopeo look up `auths` by host/repository too, so several projects on one
        // host keep separate entries there; Docker only looks up the host.
        for file in files {
            let path = file.path(ctx)?;
            let registry_key = file.registry_key(&host);
            let key = match file {
                AuthFile::Docker => registry_key.clone(),
                AuthFile::Containers => format!("{registry_key}/{}", grant.repository),
            };
            notes.extend(edits.store_password(
                &path,
                &key,
                &registry_key,
                &grant.username,
                &grant.password,
            )?);
            text.push_str(&format!(
                "Stored a credential for {key} in {}.\n",
                path.display()
            ));
        }
        text.push_str(&format!(
            "It expires in {} (at {expires}): run this again then, or leave out --store-password to use the credential helper.\n",
            humantime::format_duration(Duration::from_secs(left.as_secs())),
        ));
        edits.write()?;
    } else {
        for file in files {
            let path = file.path(ctx)?;
            let key = file.registry_key(&host);
            notes.extend(edits.register_helper(&path, &key)?);
            text.push_str(&format!(
                "Registered the Rise credential helper for {key} in {}.\n",
                path.display()
            ));
        }
        // The mapping goes in first (a helper entry without it would fail every pull), and is
        // put back as it was should an auth file then fail: all change or none.
        let registries = ctx.registries_file()?;
        let mapping_before = crate::fsutil::read_optional(&registries)?;
        RegistryMap::register(
            ctx,
            Mapping {
                host: host.clone(),
                repository: grant.repository.clone(),
                project: args.project.clone(),
                backend: backend.url().to_owned(),
                actions: args.actions.clone(),
                margin_secs: Some(args.margin.as_secs()),
            },
        )?;
        if let Err(failed) = edits.write() {
            let restored = match &mapping_before {
                Some(bytes) => crate::fsutil::write_private(&registries, bytes),
                None => std::fs::remove_file(&registries)
                    .map_err(|e| CliError::file("remove", &registries, &e)),
            };
            return Err(match restored {
                Ok(()) => failed,
                Err(e) => CliError::Input(format!(
                    "{failed}; but {} keeps the new mapping for {host} ({e}): fix both causes and run this again (the mapping is harmless without a helper entry)",
                    registries.display()
                )),
            });
        }
        text.push_str(&format!(
            "Pushes to {}:TAG now use short-lived credentials for project {}.\n",
            grant.image, args.project
        ));
    }
    for n in notes {
        note(&format!("note: {n}"));
    }
    if !args.store_password && !helper_on_path(ctx) {
        note(
            "warning: docker-credential-rise is not on your PATH: container tools will not find the helper; install it next to `rise`",
        );
    }
    out(&text)
}

fn helper_on_path(_ctx: &Context) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| dir.join("docker-credential-rise").is_file())
}

async fn push_image(
    ctx: &Context,
    backend_flag: Option<&str>,
    args: PushArgs,
) -> Result<(), CliError> {
    push::validate_tag(&args.tag)?;
    let image = push::source::open(&args.source, args.reference.as_deref())?;
    let backend_url = session::resolve_backend(ctx, backend_flag)?;
    let http = ctx.http()?;
    let broker = Broker {
        ctx: ctx.clone(),
        http: http.clone(),
        backend: Backend::new(&backend_url, http, ctx.transport())?,
        query: CredentialQuery {
            project: args.project.clone(),
            actions: Some("push,pull".into()),
            ttl: args.ttl,
        },
    };
    let options = PushOptions {
        tag: args.tag.clone(),
        jobs: usize::from(args.jobs),
        refresh_margin: args.refresh_margin,
        limit_rate: args.limit_rate,
        insecure_http: args.insecure_http,
    };
    let reporter = Reporter::for_stderr();
    let outcome = push::push(&broker, &image, &options, &reporter).await?;
    reporter.note(&format!(
        "pushed {} blobs, {} already present{}",
        outcome.pushed,
        outcome.skipped,
        match outcome.renewals {
            0 => String::new(),
            1 => ", renewed the credential once".to_owned(),
            n => format!(", renewed the credential {n} times"),
        }
    ));
    out(&format!("{}@{}\n", outcome.reference, outcome.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            registry_url: "127.0.0.1:5000".into(),
            username: "rise".into(),
            password: "pa'ss word".to_owned().into(),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            repository: "my-app".into(),
            image: "127.0.0.1:5000/my-app".into(),
            project: "my-app".into(),
            actions: vec!["pull".into(), "push".into()],
            warnings: vec![],
        }
    }

    #[test]
    fn env_format_quotes_for_the_shell() {
        insta::assert_snapshot!(env_lines(&grant()).expect("lines"), @r"
        RISE_REGISTRY_URL=127.0.0.1:5000
        RISE_REGISTRY_USERNAME=rise
        RISE_REGISTRY_PASSWORD='pa'\''ss word'
        RISE_REGISTRY_REPOSITORY=my-app
        RISE_REGISTRY_IMAGE=127.0.0.1:5000/my-app
        RISE_REGISTRY_EXPIRES_AT=2027-01-15T08:00:00Z
        ");
    }

    #[test]
    fn docker_config_format() {
        insta::assert_snapshot!(docker_config(&grant()).expect("json"), @r#"
        {
          "auths": {
            "127.0.0.1:5000": {
              "auth": "cmlzZTpwYSdzcyB3b3Jk"
            }
          }
        }
        "#);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500K"), Ok(500 * 1024));
        assert_eq!(parse_rate("2m"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_rate("100"), Ok(100));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    use crate::testing::{FakeServer, credentials_body, route};

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("rise").chain(args.iter().copied())).expect("args")
    }

    fn ctx_in(dir: &std::path::Path, extra: &[(&str, &str)]) -> Context {
        let mut vars = vec![
            ("RISE_CONFIG_DIR", dir.join("config").display().to_string()),
            ("RISE_CACHE_DIR", dir.join("cache").display().to_string()),
            ("DOCKER_CONFIG", dir.join("docker").display().to_string()),
            (
                "REGISTRY_AUTH_FILE",
                dir.join("containers/auth.json").display().to_string(),
            ),
            ("RISE_TOKEN", "t".to_owned()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        Context::from_env(vars.into_iter().map(|(k, v)| (k.to_owned(), v)))
    }

    #[tokio::test]
    async fn an_expiry_past_year_9999_writes_nothing_and_panics_nowhere() {
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("127.0.0.1:5000", 10_000_000_000_000),
        )]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = ctx_in(dir.path(), &[]);
        for args in [
            vec![
                "registry",
                "credentials",
                "--project",
                "my-app",
                "--format",
                "env",
            ],
            vec![
                "registry",
                "login",
                "--project",
                "my-app",
                "--store-password",
                "--client",
                "all",
            ],
            vec!["registry", "login", "--project", "my-app"],
        ] {
            let mut full = vec!["--backend", server.url.as_str()];
            full.extend(args.iter().copied());
            let err = run(parse(&full), ctx.clone())
                .await
                .expect_err("invalid expiry");
            assert!(matches!(err, CliError::Unavailable(_)), "{args:?}: {err}");
            assert!(err.to_string().contains("sent an invalid expiry"), "{err}");
        }
        for written in [
            "docker/config.json",
            "containers/auth.json",
            "config/registries.json",
        ] {
            assert!(!dir.path().join(written).exists(), "{written} was written");
        }
    }

    #[tokio::test]
    async fn whoami_with_a_token_and_a_backend_needs_no_home() {
        let server = FakeServer::start(vec![route(
            "GET /auth/whoami",
            200,
            r#"{"subject":"alice","issuer":"https://idp"}"#,
        )]);
        let ctx =
            Context::with_platform_dirs([("RISE_TOKEN".to_owned(), "t".to_owned())], None, None);
        run(parse(&["--backend", &server.url, "whoami"]), ctx)
            .await
            .expect("no config directory needed");
    }

    #[tokio::test]
    async fn a_password_in_the_backend_url_is_refused_and_never_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = ctx_in(dir.path(), &[]);
        for args in [
            vec!["whoami"],
            vec!["registry", "login", "--project", "my-app"],
            vec!["login"],
        ] {
            let mut full = vec!["--backend", "http://admin:hunter2@127.0.0.1:9"];
            full.extend(args.iter().copied());
            let err = run(parse(&full), ctx.clone()).await.expect_err("refused");
            assert!(matches!(err, CliError::Input(_)), "{args:?}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert!(!dir.path().join("config").exists());
    }

    #[test]
    fn times_before_1970_are_refused_not_formatted() {
        assert!(parse_time_arg("1h").is_ok());
        let err = parse_time_arg("100years").expect_err("before 1970");
        assert!(err.contains("before 1970"), "{err}");
    }

    fn read_json(path: &std::path::Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
    }

    #[tokio::test]
    async fn docker_hub_is_registered_where_each_tool_looks_and_the_helper_answers() {
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("docker.io", 3600),
        )]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = ctx_in(dir.path(), &[]);
        let base = [
            "--backend",
            server.url.as_str(),
            "registry",
            "login",
            "--project",
            "my-app",
        ];
        let mut args = base.to_vec();
        args.extend(["--client", "all"]);
        run(parse(&args), ctx.clone()).await.expect("helper");
        let docker = read_json(&dir.path().join("docker/config.json"));
        assert_eq!(docker["credHelpers"]["https://index.docker.io/v1/"], "rise");
        assert!(docker["credHelpers"].get("docker.io").is_none(), "{docker}");
        let containers = read_json(&dir.path().join("containers/auth.json"));
        assert_eq!(containers["credHelpers"]["docker.io"], "rise");
        // What Docker asks the helper for Docker Hub.
        let out = crate::helper::handle(&ctx, "get", "https://index.docker.io/v1/\n").await;
        assert_eq!(out.status, 0, "{out:?}");
        let creds: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(creds["ServerURL"], "https://index.docker.io/v1/");
        assert_eq!(creds["Secret"], "s3cret-password");
        let out = crate::helper::handle(&ctx, "get", "docker.io").await;
        assert_eq!(out.status, 0, "{out:?}");

        args.push("--store-password");
        run(parse(&args), ctx.clone()).await.expect("store");
        let docker = read_json(&dir.path().join("docker/config.json"));
        assert!(docker["auths"]["https://index.docker.io/v1/"]["auth"].is_string());
        assert!(
            docker["credHelpers"]
                .get("https://index.docker.io/v1/")
                .is_none()
        );
        let containers = read_json(&dir.path().join("containers/auth.json"));
        assert!(containers["auths"]["docker.io/my-app"]["auth"].is_string());
        assert!(containers["credHelpers"].get("docker.io").is_none());

        let g = Grant {
            registry_url: "docker.io".into(),
            ..grant()
        };
        let doc: serde_json::Value =
            serde_json::from_str(&docker_config(&g).expect("json")).expect("json");
        assert!(doc["auths"]["https://index.docker.io/v1/"]["auth"].is_string());
    }

    #[tokio::test]
    async fn registry_login_for_all_clients_changes_both_files_or_neither() {
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("127.0.0.1:5000", 3600),
        )]);
        let docker_seed = br#"{"auths":{"other.io":{"auth":"eDp5"}},"psFormat":"x"}"#;
        // (the containers file's path, what to seed it with, whether Docker's file exists first)
        let cases: [(&str, Option<&[u8]>, bool); 4] = [
            ("containers/auth.json", Some(b"{nope"), true),
            ("containers/auth.json", Some(b"[]"), false),
            // A regular file where its directory should be: refused even as root.
            ("blocker/auth.json", None, true),
            // Absent when read; once Docker's file is written its directory cannot be made.
            ("docker/config.json/auth.json", None, false),
        ];
        for store in [true, false] {
            for (containers, seed, docker_exists) in cases {
                let dir = tempfile::tempdir().expect("tempdir");
                let containers = dir.path().join(containers);
                std::fs::write(dir.path().join("blocker"), "").expect("blocker");
                if let Some(seed) = seed {
                    std::fs::create_dir_all(containers.parent().expect("parent")).expect("dir");
                    std::fs::write(&containers, seed).expect("seed");
                }
                let docker = dir.path().join("docker/config.json");
                if docker_exists {
                    std::fs::create_dir_all(dir.path().join("docker")).expect("dir");
                    std::fs::write(&docker, docker_seed).expect("seed");
                }
                let auth_file = containers.display().to_string();
                let ctx = ctx_in(dir.path(), &[("REGISTRY_AUTH_FILE", &auth_file)]);
                let registries = ctx.registries_file().expect("registries.json");
                let mapping_before = std::fs::read(&registries).ok();
                let mut args = vec![
                    "--backend",
                    server.url.as_str(),
                    "registry",
                    "login",
                    "--project",
                    "my-app",
                    "--client",
                    "all",
                ];
                if store {
                    args.push("--store-password");
                }
                let shown = seed.map(String::from_utf8_lossy);
                let case = format!("store={store} {auth_file} {shown:?} docker={docker_exists}");
                let err = run(parse(&args), ctx).await.expect_err(&case).to_string();
                if docker_exists {
                    assert_eq!(std::fs::read(&docker).expect("read"), docker_seed, "{case}");
                } else {
                    assert!(!docker.exists(), "{case}: {err}");
                }
                if let Some(seed) = seed {
                    assert_eq!(std::fs::read(&containers).expect("read"), seed, "{case}");
                }
                // The helper's project mapping is put back too.
                assert_eq!(std::fs::read(&registries).ok(), mapping_before, "{case}");
                let named = containers.parent().expect("parent").display().to_string();
                assert!(err.contains(&named), "{case}: {err}");
                assert!(err.contains("nothing was changed"), "{case}: {err}");
                assert!(!err.contains("s3cret"), "{case}: {err}");
                assert!(
                    !err.contains(&STANDARD.encode("rise:s3cret-password")),
                    "{case}: {err}"
                );
            }
        }
    }

    #[test]
    fn server_text_is_made_printable() {
        let me = WhoAmI {
            subject: "alice\x1b]0;pwned\x07".into(),
            issuer: "https://idp\nsubject: root".into(),
            groups: vec!["ops\r".into()],
            expires_at: Some("soon\x1b[2J".into()),
        };
        let text = whoami_lines(&me);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 4, "{text:?}");
        assert!(text.contains("subject: alice?]0;pwned?"), "{text:?}");
        let prompt = device_prompt(&oidc::DeviceCode {
            user_code: "AB\x1b[1mCD".into(),
            verification_uri: "https://idp/device\x1b[2J".into(),
            verification_uri_complete: None,
        });
        assert!(!prompt.contains('\x1b'), "{prompt:?}");
        assert!(prompt.contains("AB?[1mCD"), "{prompt:?}");
    }
}
