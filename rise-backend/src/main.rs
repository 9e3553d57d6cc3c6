//! `rise-backend`: the Rise credential broker.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rise_backend::audit::{AuditFilter, AuditLog, AuditRecord, CallerInfo, Operation, Outcome};
use rise_backend::auth::LocalIssuer;
use rise_backend::config::{Config, Sources};
use tracing_subscriber::EnvFilter;

/// Set when a line for standard output could not be written (a pipe whose reader has gone,
/// `| head -1`): the command still finishes, and exits with failure.
static STDOUT_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `println!` that never panics: a command must not stop between what it does and its audit
/// record because nobody reads what it says. A failed write is remembered in [`STDOUT_LOST`].
macro_rules! say {
    ($($arg:tt)*) => {
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            STDOUT_LOST.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
}

/// The most `grants revoke --password-stdin` reads: a grant is a few hundred bytes.
const MAX_GRANT_INPUT: usize = 64 * 1024;

/// How long `check-config` waits for the issuers' first key fetch (each fetch is bounded by the
/// same timeout as when serving).
const CHECK_CONFIG_READY_WAIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "rise-backend",
    version,
    about = "Rise: a container-registry credential broker"
)]
struct Cli {
    /// Configuration files, layered in order over the built-in defaults (repeatable). Without
    /// any, Rise runs on its embedded default configuration.
    #[arg(
        long = "config",
        short = 'c',
        global = true,
        env = "RISE_CONFIG",
        value_delimiter = ','
    )]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve,
    /// Tokens of the local development issuer.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the `auth: token:` section a Distribution registry needs, and write the certificate
    /// bundle it refers to.
    RegistryConfig {
        /// Which distribution registry (default: the only one).
        #[arg(long)]
        registry: Option<String>,
    },
    /// Load and validate the configuration, build what `serve` builds, and run its readiness
    /// checks (the issuers' keys fetched, a registry configured, the database answering); exit.
    CheckConfig {
        /// Skip the issuers' keys and the readiness checks (for image builds and CI without the
        /// network). The database is still opened and secrets still read: a PostgreSQL `url`
        /// or an `aws-secretsmanager:` reference must be reachable.
        #[arg(long)]
        offline: bool,
    },
    /// Make a local CA and a server certificate for HTTPS in development (`ca.pem`, `cert.pem`,
    /// `key.pem`), and print how to use and trust them.
    DevCert {
        /// Where to write the files (default: `tls/` in the data directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// More names or addresses the certificate is for, besides localhost, 127.0.0.1 and ::1
        /// (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// The audit log: verify its hash chain, or export it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The keys Rise generated: show them, rotate them, or reseal them under a new sealing key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Credentials already handed out: revoke them before they expire (Distribution grants at
    /// `/token`; Artifactory, ACR, Docker Hub, Harbor and Quay credentials upstream).
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// Refuse grants at `/token` from now on: one grant by its credential id (the audit log's
    /// `credential_id`), or every grant a caller was issued until now. Running servers apply it
    /// within `keys.reload_interval`; a registry token already traded for a grant lives on for
    /// at most the registry's `token_ttl`. New grants are unaffected: to shut a caller out,
    /// change the policy.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
    Revoke {
        /// The credential id of one grant, as the audit log shows it.
        #[arg(long, group = "target")]
        credential: Option<String>,
        /// The grant itself, read from standard input (as found leaked in a log): never give
        /// it on the command line, where other users and the shell history see it.
        #[arg(long, group = "target")]
        password_stdin: bool,
        /// Every grant of this caller until now: `ISSUER/SUBJECT`, as the audit log names
        /// callers (e.g. `local/alice`, `github/repo:org/app:ref:refs/heads/main`).
        #[arg(long, group = "target", value_parser = rise_backend::registry::providers::distribution::revocation::Target::subject)]
        subject: Option<rise_backend::registry::providers::distribution::revocation::Target>,
        /// The registry that issued it, as the audit log names it (default: `default`, or the
        /// only one). For an Artifactory, ACR, Docker Hub, Harbor or Quay registry,
        /// `--credential` deletes the credential upstream itself, at once; ECR, Google and GHCR
        /// credentials cannot be revoked.
        #[arg(long)]
        registry: Option<String>,
        /// Why, for whoever is refused and for the record (one line).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The revocations in force (until every grant they cover has expired). Only reads: with
    /// SQLite, a data directory without the server's database is an error.
    List,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the key IDs of the registry token keys (current, next, previous) and of the grant
    /// keys, and where they are kept. Only reads: with SQLite, a data directory without the
    /// server's database or key directory is an error (`serve` creates them).
    Show,
    /// Rotate the registry token keys and the grant keys: the next key (already in registries'
    /// certificate bundles) starts signing, the current one is retired but stays trusted, and a
    /// fresh next key is made. Running servers pick it up within `keys.reload_interval`. Then
    /// run `registry-config` and restart registries at leisure, before the next rotation.
    /// Refused within the longest grant lifetime (`max_ttl`) plus three `keys.reload_interval`s
    /// of the last rotation, because a second rotation retires the keys of grants still in
    /// use, and when a Distribution registry refuses a token signed with the `next` key (each
    /// is asked first).
    Rotate {
        /// Rotate even so (grants issued before the previous rotation stop working; a
        /// registry that does not trust the new key refuses every token).
        #[arg(long)]
        force: bool,
    },
    /// Change the sealing key of keys kept in PostgreSQL: seal every key still sealed with
    /// `keys.previous_sealing_key` with `keys.sealing_key`. First give every replica the new
    /// `sealing_key` and the old one as `previous_sealing_key` (they open keys sealed with
    /// either), then run this, then remove `previous_sealing_key`.
    Reseal,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain from the first record and report the first broken link (exit
    /// status 1 when there is one). Prints the head as ID:HASH: keep it outside the database
    /// and pass it back with --anchor to detect a rewritten or cut-back chain.
    Verify {
        /// A record ID:HASH noted earlier (repeatable); it must still be in the chain.
        #[arg(long = "anchor")]
        anchors: Vec<rise_backend::audit::Anchor>,
    },
    /// Print records as JSON lines, oldest first.
    Export {
        /// Only records at or after this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = parse_time)]
        since: Option<SystemTime>,
        /// Only records before this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = parse_time)]
        until: Option<SystemTime>,
        /// Only records of this project.
        #[arg(long)]
        project: Option<String>,
        /// Only records of this caller subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only records of callers of this issuer (its name in the configuration, `local` or
        /// `operator`).
        #[arg(long)]
        issuer: Option<String>,
        /// granted, denied or failed.
        #[arg(long, value_parser = parse_outcome)]
        result: Option<Outcome>,
    },
}

fn parse_time(v: &str) -> Result<SystemTime, String> {
    rise_backend::audit::parse_time(v).map_err(str::to_owned)
}

fn parse_outcome(v: &str) -> Result<Outcome, String> {
    Outcome::parse(v).ok_or_else(|| "use granted, denied or failed".to_owned())
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token of the local development issuer.
    Issue {
        /// The subject (`sub`) of the token.
        #[arg(long)]
        sub: String,
        /// Groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m or 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// jemalloc for the whole process, Rust and C alike (see the workspace manifest for why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) if STDOUT_LOST.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!(
                "error: standard output was closed: some of what the command printed was lost"
            );
            std::process::ExitCode::FAILURE
        }
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("RISE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("RISE_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal, never into a file or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Before loading the configuration: the certificate may be what makes it valid.
    if let Command::DevCert { out, hosts, force } = &cli.command {
        let dir = match out {
            Some(dir) => dir.clone(),
            None => Config::load(&Sources::from_process(cli.config.clone())?)?
                .server
                .data_dir
                .join("tls"),
        };
        let files = rise_backend::tls::write_dev_cert(&dir, hosts, *force)?;
        say!("{}", dev_cert_instructions(&files).trim_end());
        return Ok(());
    }
    let config = Config::load(&Sources::from_process(cli.config)?)?;
    match cli.command {
        Command::Serve => rise_backend::server::serve(config).await,
        Command::DevCert { .. } => Ok(()),
        Command::CheckConfig { offline } => {
            let state = if offline {
                rise_backend::server::build_state_offline(&config).await?
            } else {
                rise_backend::server::build_state(&config).await?
            };
            // What `serve` loads next: a certificate that cannot be read fails here too.
            if let Some(tls) = &config.server.tls {
                rise_backend::tls::TlsReloader::load_for(
                    tls.clone(),
                    config.server.public_tls_host(),
                )
                .await
                .context("loading [server.tls]")?;
            }
            if offline {
                say!("configuration is valid (offline: issuer keys and readiness not checked)");
                return Ok(());
            }
            // What `serve`'s /readyz would say, once the issuers' keys had their first fetch
            // (started in the background when the state was built).
            let deadline = tokio::time::Instant::now() + CHECK_CONFIG_READY_WAIT;
            while !state.auth.issuers_without_keys().is_empty()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Err(failing) = rise_backend::http::readiness(&state).await {
                anyhow::bail!(
                    "serve would not be ready: {} failing (the lines above say why); /readyz would answer 503",
                    failing.join(", ")
                );
            }
            say!("configuration is valid");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Issue { sub, groups, ttl },
        } => {
            anyhow::ensure!(
                config.auth.local.enabled,
                "the local development issuer is disabled (auth.local.enabled = false)"
            );
            std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
                format!(
                    "creating data directory {}",
                    config.server.data_dir.display()
                )
            })?;
            let issuer = LocalIssuer::load_or_create(&config.server.data_dir, &config.auth.local)?;
            say!("{}", issuer.issue(&sub, &groups, ttl)?);
            Ok(())
        }
        Command::RegistryConfig { registry } => {
            let keyring = open_keyring(&config).await?;
            let snippet =
                rise_backend::registry::providers::distribution::registry_config_snippet_from(
                    &config,
                    registry.as_deref(),
                    &keyring,
                )
                .await?;
            say!("{}", snippet.trim_end());
            Ok(())
        }
        Command::Audit { command } => run_audit(&config, command).await,
        Command::Keys { command } => run_keys(&config, command).await,
        Command::Grants { command } => run_grants(&config, command).await,
    }
}

/// The registry `grants revoke` acts on: `name`, else `default`, else the only one.
fn revoking_registry<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> anyhow::Result<(
    &'a str,
    &'a rise_backend::registry::providers::ProviderConfig,
)> {
    let all: Vec<_> = config.all_registries().collect();
    let names = || all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    let found = match name {
        Some(name) => all.iter().find(|(n, _)| *n == name),
        None if all.len() == 1 => all.first(),
        None => all.iter().find(|(n, _)| *n == "default"),
    };
    match (found, name) {
        (Some(found), _) => Ok(*found),
        (None, Some(name)) => anyhow::bail!(
            "no registry {name:?} is configured (configured: {})",
            names()
        ),
        (None, None) => anyhow::bail!(
            "several registries are configured ({}): give --registry, as the audit log names it",
            names()
        ),
    }
}

async fn run_grants(config: &Config, command: GrantsCommand) -> anyhow::Result<()> {
    use rise_backend::registry::providers::distribution::revocation::{self, Target};
    let store = match &command {
        GrantsCommand::List => open_existing_store(config, "grants list").await?,
        // A revocation written into a new database (a mistyped data directory) would be
        // reported done while no server ever reads it.
        GrantsCommand::Revoke { .. } => open_existing_store(config, "grants revoke").await?,
    };
    let show = |r: &rise_backend::store::Revocation| {
        let until = rise_backend::audit::from_unix_ms(r.until_ms);
        let at = rise_backend::audit::from_unix_ms(r.created_ms);
        format!(
            "{} {}  revoked {}  in force until {}{}",
            r.kind,
            r.value,
            rise_backend::audit::rfc3339_seconds(at),
            rise_backend::audit::rfc3339_seconds(until),
            if r.reason.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.reason)
            }
        )
    };
    match command {
        GrantsCommand::Revoke {
            credential,
            password_stdin,
            subject,
            mut registry,
            reason,
        } => {
            use rise_backend::registry::RegistryProvider as _;
            use rise_backend::registry::providers::ProviderConfig;
            let target = match (credential, subject, password_stdin) {
                (Some(id), None, false) => Target::Credential(id),
                (None, Some(subject), false) => subject,
                (None, None, true) => {
                    use revocation::LeakedGrant;
                    // Room for the whole limit up front: no reallocation leaves a copy behind.
                    let mut password = secrecy::zeroize::Zeroizing::new(String::with_capacity(
                        MAX_GRANT_INPUT + 1,
                    ));
                    std::io::Read::read_to_string(
                        &mut std::io::Read::take(std::io::stdin(), MAX_GRANT_INPUT as u64 + 1),
                        &mut password,
                    )
                    .context("reading the grant from standard input")?;
                    if password.len() > MAX_GRANT_INPUT {
                        anyhow::bail!(
                            "standard input holds more than 64 KiB; a grant is a few hundred bytes: give only the leaked password"
                        );
                    }
                    let keys = rise_backend::registry::providers::distribution::GrantKeys::load(
                        &open_keyring(config).await?,
                    )
                    .await?;
                    match revocation::identify(&keys, &password)? {
                        LeakedGrant::Expired => {
                            say!("the grant has expired already: nothing to revoke");
                            return Ok(());
                        }
                        LeakedGrant::Live {
                            credential_id,
                            caller,
                            registry: for_registry,
                        } => {
                            if registry.as_ref().is_some_and(|r| *r != for_registry) {
                                anyhow::bail!(
                                    "this grant is for registry {for_registry}, not the one --registry names"
                                );
                            }
                            say!(
                                "a grant of {caller} for registry {for_registry}, credential id {credential_id}"
                            );
                            registry = Some(for_registry);
                            Target::Credential(credential_id)
                        }
                    }
                }
                _ => anyhow::bail!("give one of --credential, --subject, --password-stdin"),
            };
            let (name, provider) = revoking_registry(config, registry.as_deref())?;
            match (provider, &target) {
                (ProviderConfig::Distribution(_), _) => {}
                (ProviderConfig::Artifactory(c), Target::Credential(id)) => {
                    rise_backend::registry::providers::artifactory::ArtifactoryProvider::from_config(
                        name, c,
                    )
                    .await?
                    .revoke(id)
                    .await?;
                    say!(
                        "revoked Artifactory token {id} of registry {name}: Artifactory refuses it from now on"
                    );
                    return record_operator_action(
                        config,
                        &store,
                        Operation::Revoke,
                        "grants revoke",
                        |r| {
                            r.registry = Some(name.to_owned());
                            r.credential_id = Some(id.clone());
                            format!("revoked Artifactory token {id} of registry {name}")
                        },
                    )
                    .await;
                }
                (ProviderConfig::Artifactory(_), Target::Subject { .. }) => anyhow::bail!(
                    "registry {name} is an Artifactory registry: revoke its tokens one by one with --credential (the audit log's credential_id); --subject revokes grants of Distribution registries"
                ),
                (ProviderConfig::Ecr(_), _) => anyhow::bail!(
                    "registry {name} is an ECR registry: its credentials cannot be revoked before they expire; revoke the push role's active sessions in IAM to cut them short"
                ),
                (other, Target::Credential(id)) => {
                    let provider =
                        rise_backend::server::build_provider(name, other, config, None).await?;
                    provider.revoke(id).await.with_context(|| {
                        format!(
                            "revoking credential {id} of {} registry {name}",
                            other.kind()
                        )
                    })?;
                    say!(
                        "revoked credential {id} of {} registry {name}: the registry refuses it from now on",
                        other.kind()
                    );
                    return record_operator_action(
                        config,
                        &store,
                        Operation::Revoke,
                        "grants revoke",
                        |r| {
                            r.registry = Some(name.to_owned());
                            r.credential_id = Some(id.clone());
                            format!(
                                "revoked {} credential {id} of registry {name}",
                                other.kind()
                            )
                        },
                    )
                    .await;
                }
                (other, Target::Subject { .. }) => anyhow::bail!(
                    "registry {name} is a {} registry: revoke its credentials one by one with --credential (the audit log's credential_id); --subject revokes grants of Distribution registries",
                    other.kind()
                ),
            }
            let done = revocation::revoke(config, &store, &target, &reason).await?;
            say!("{}", show(&done));
            record_operator_action(config, &store, Operation::Revoke, "grants revoke", |r| {
                if let Target::Credential(id) = &target {
                    r.credential_id = Some(id.clone());
                }
                revocation::audit_reason(&done)
            })
            .await?;
            let ttls = config
                .all_registries()
                .filter_map(|(_, r)| match r {
                    rise_backend::registry::providers::ProviderConfig::Distribution(d) => {
                        Some(d.token_ttl)
                    }
                    _ => None,
                })
                .max()
                .unwrap_or_default();
            say!(
                "servers refuse it at /token within keys.reload_interval ({}); registry tokens already handed out expire within {}",
                humantime::format_duration(config.keys.reload_interval),
                humantime::format_duration(ttls)
            );
        }
        GrantsCommand::List => {
            let now = rise_backend::audit::unix_ms(SystemTime::now());
            let active = store.revocations_active(now).await?;
            if active.is_empty() {
                say!("no revocations in force");
            }
            for r in &active {
                say!("{}", show(r));
            }
        }
    }
    Ok(())
}

/// Append the record of an operator command that has taken effect to the audit chain, under
/// issuer `operator` and the account running it (`SUDO_USER`, else `USER`/`LOGNAME`, else the
/// uid). `describe` fills in the record and returns what was done. When the record cannot be
/// written the command fails saying so: the action stays in force either way.
async fn record_operator_action(
    config: &Config,
    store: &rise_backend::store::Store,
    operation: Operation,
    command: &str,
    describe: impl FnOnce(&mut AuditRecord) -> String,
) -> anyhow::Result<()> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let caller = CallerInfo::operator(operator_account(), command);
    let mut record = AuditRecord::begin(operation, &request_id, caller);
    let done = describe(&mut record);
    record.done(done.clone());
    let audit = AuditLog::start(
        store.clone(),
        rise_backend::audit::AuditSettings::from(&config.audit),
    );
    match audit.record(&record).await {
        Ok(id) => {
            say!("audit record {id}: {done}");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "done and in force, but its audit record could not be written ({e}): record it by hand"
        )),
    }
}

/// Who is running this command, as the environment names them; the uid when it does not.
fn operator_account() -> String {
    let named = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    named("SUDO_USER")
        .or_else(|| named("USER"))
        .or_else(|| named("LOGNAME"))
        .unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata("/proc/self")
                .map(|m| format!("uid {}", m.uid()))
                .unwrap_or_else(|_| "unknown".to_owned())
        })
}

/// The database a server with this configuration uses, creating the data directory and the
/// SQLite file if needed.
async fn open_store(config: &Config) -> anyhow::Result<rise_backend::store::Store> {
    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "creating data directory {}",
            config.server.data_dir.display()
        )
    })?;
    rise_backend::store::Store::open(&config.database, &config.server.data_dir)
        .await
        .context("opening the database")
}

/// The database of an existing server, for commands that read it or act on what it holds: with
/// SQLite, a missing database file is an error naming it (the check `audit verify` makes), never
/// a new, empty database, whose fresh keys would be shown as the server's, or whose revocation
/// no server would ever read.
async fn open_existing_store(
    config: &Config,
    command: &str,
) -> anyhow::Result<rise_backend::store::Store> {
    rise_backend::store::Store::open_existing(&config.database, &config.server.data_dir)
        .await
        .with_context(|| {
            format!(
                "`{command}` works on the database of an existing server and creates none (`serve` creates it on first start)"
            )
        })
}

/// The keyring a server with this configuration uses (opening the database when keys live there).
async fn open_keyring(config: &Config) -> anyhow::Result<rise_backend::keyring::Keyring> {
    let store = open_store(config).await?;
    rise_backend::keyring::Keyring::for_store(&store, &config.server.data_dir, &config.keys)
}

async fn run_keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    use rise_backend::keyring::Keyring;
    use rise_backend::registry::providers::distribution::{
        GRANT_KEYS, GrantKeys, KeySet, REGISTRY_TOKEN_KEYS,
    };
    let (store, keyring) = match &command {
        KeysCommand::Show => {
            let store = open_existing_store(config, "keys show").await?;
            let keyring = Keyring::for_store(&store, &config.server.data_dir, &config.keys)?
                .existing_key_dir_only();
            (store, keyring)
        }
        KeysCommand::Reseal => {
            let store = open_existing_store(config, "keys reseal").await?;
            let keyring = Keyring::for_store(&store, &config.server.data_dir, &config.keys)?;
            (store, keyring)
        }
        // A rotation in a directory where no server ran (a mistyped data_dir) would report
        // done while the server's keys, perhaps compromised, stay in use.
        KeysCommand::Rotate { .. } => {
            let store = open_existing_store(config, "keys rotate").await?;
            let keyring = Keyring::for_store(&store, &config.server.data_dir, &config.keys)?
                .existing_key_dir_only();
            (store, keyring)
        }
    };
    if let KeysCommand::Reseal = command {
        let done = keyring.reseal().await?;
        say!(
            "sealed {} keys with keys.sealing_key ({} already were)",
            done.resealed,
            done.already
        );
        if done.resealed > 0 {
            record_operator_action(config, &store, Operation::ResealKeys, "keys reseal", |_| {
                format!(
                    "resealed {} keys with keys.sealing_key ({} already were)",
                    done.resealed, done.already
                )
            })
            .await?;
        }
        if done.changed_meanwhile > 0 {
            anyhow::bail!(
                "{} keys changed while resealing (a rotation ran): run `keys reseal` again",
                done.changed_meanwhile
            );
        }
        say!(
            "once every replica runs with this keys.sealing_key, remove keys.previous_sealing_key"
        );
        return Ok(());
    }
    if let KeysCommand::Rotate { force } = command {
        // The keys this rotation is to promote, read before any check: if another rotation
        // moves them meanwhile, ours fails and changes nothing.
        let expected = (
            keyring.next_key(&REGISTRY_TOKEN_KEYS).await?,
            keyring.next_key(&GRANT_KEYS).await?,
        );
        // Every key must load before any moves: a broken `current` retired into `previous`
        // would break every later load, this command's and the servers', once it is too late.
        let before = async {
            anyhow::Ok((
                KeySet::load(&keyring).await?,
                GrantKeys::load(&keyring).await?,
            ))
        }
        .await
        .context("nothing was rotated")?;
        let longest_grant = rise_backend::registry::providers::distribution::longest_grant(config);
        // The later of the two families' rotations: one that rotated only the first family
        // (it failed half-way) counts too.
        let last = [
            keyring.last_rotation(&REGISTRY_TOKEN_KEYS).await?,
            keyring.last_rotation(&GRANT_KEYS).await?,
        ]
        .into_iter()
        .flatten()
        .max();
        // A server still signs with the old key until it reloads, which may take as long as
        // it stays ready with failing reloads: its grants live on for the longest grant
        // lifetime after that.
        let wait = longest_grant.saturating_add(
            config
                .keys
                .reload_interval
                .saturating_mul(rise_backend::registry::providers::distribution::STALE_RELOADS),
        );
        if let Some(last) = last
            && let Ok(since) = last.elapsed()
            && since < wait
            && !force
        {
            anyhow::bail!(
                "the keys were rotated {} ago, within the longest grant lifetime plus three keys.reload_interval ({}): another rotation now would invalidate grants issued before the last one, and registries not yet restarted with the new bundle would refuse tokens. Wait, or pass --force",
                humantime::format_duration(Duration::from_secs(since.as_secs())),
                humantime::format_duration(wait)
            );
        }
        check_registries_trust_next(config, &keyring, force).await?;
        // Grant keys first: should the token keys then fail, a forced re-run rotates the grant
        // keys once more (grants from before the previous rotation stop verifying) but never
        // promotes a token key the registries were not checked to trust.
        keyring.rotate_from(&GRANT_KEYS, &expected.1).await?;
        keyring
            .rotate_from(&REGISTRY_TOKEN_KEYS, &expected.0)
            .await
            .context("the grant keys were rotated, the registry token keys not: fix the cause, then run `keys rotate --force` (it rotates the grant keys once more)")?;
        say!("rotated the registry token keys and the grant keys");
        // The rotation promoted exactly the next keys loaded above (the second of each set):
        // recorded at once, before reading the keys back can fail.
        let token_kid = before
            .0
            .trusted()
            .nth(1)
            .map(|c| c.kid().to_owned())
            .unwrap_or_default();
        let grant_kid = before.1.kids().nth(1).unwrap_or_default().to_owned();
        record_operator_action(config, &store, Operation::RotateKeys, "keys rotate", |_| {
            format!(
                "rotated the keys: registry tokens now signed with {token_kid}, grants with {grant_kid}{}",
                if force { " (forced)" } else { "" }
            )
        })
        .await?;
    }
    let signing = KeySet::load(&keyring).await?;
    let grant = GrantKeys::load(&keyring).await?;
    say!("keys in {}", keyring.describe());
    let slots = ["current", "next", "previous"];
    for (slot, cert) in slots.iter().zip(signing.trusted()) {
        say!("registry token {slot:<8} {}", cert.kid());
    }
    for (slot, kid) in slots.iter().zip(grant.kids()) {
        say!("grant          {slot:<8} {kid}");
    }
    if let Some(sealing) = keyring.sealing().await? {
        say!(
            "sealed with keys.sealing_key: {}; with keys.previous_sealing_key: {}",
            sealing.already,
            sealing.resealed
        );
    }
    if let KeysCommand::Rotate { .. } = command {
        say!(
            "servers sign with the new current key within keys.reload_interval ({}); run `rise-backend registry-config` and restart registries before the next rotation so they trust the new next key",
            humantime::format_duration(config.keys.reload_interval)
        );
    }
    Ok(())
}

/// Before a rotation: ask every Distribution registry whether it trusts the `next` key, which
/// the rotation makes the signing key. A registry that refuses it would refuse every token after
/// the rotation: refused unless `force`. A registry that cannot be asked is a warning.
async fn check_registries_trust_next(
    config: &Config,
    keyring: &rise_backend::keyring::Keyring,
    force: bool,
) -> anyhow::Result<()> {
    use rise_backend::registry::providers::distribution::probe::{Trust, next_key_trust};
    let (kid, answers) = next_key_trust(config, keyring).await?;
    let mut refused = Vec::new();
    for (name, answer) in answers {
        match answer {
            Trust::Trusted { url } => {
                say!("registry {name} trusts the next key {kid} (asked {url})");
            }
            Trust::Refused { url, reason } => refused.push(format!(
                "registry {name} refused a token signed with the next key {kid} ({url}: {reason})"
            )),
            Trust::Unknown { reason } => eprintln!(
                "warning: could not ask registry {name} whether it trusts the next key {kid}: {reason}. Make sure it runs with the bundle of `rise-backend registry-config`"
            ),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    if force {
        for r in &refused {
            eprintln!("warning: {r}; rotating anyway (--force)");
        }
        return Ok(());
    }
    anyhow::bail!(
        "{}. After this rotation it would refuse every token Rise signs: its bundle predates the last rotation (or its auth.token issuer or service differ from Rise's). Run `rise-backend registry-config`, install the bundle and restart the registry, then rotate; or pass --force",
        refused.join("; ")
    )
}

async fn run_audit(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    let store =
        rise_backend::store::Store::open_existing(&config.database, &config.server.data_dir)
            .await
            .context("opening the audit store")?;
    match command {
        AuditCommand::Verify { anchors } => {
            let report = rise_backend::audit::verify_anchored(&store, &anchors).await?;
            match report.broken {
                None => {
                    say!(
                        "audit chain intact: {} records, head {}:{}{}",
                        report.records,
                        report.head_id,
                        report.head_hash,
                        if anchors.is_empty() {
                            String::new()
                        } else {
                            format!(", {} anchor(s) found", anchors.len())
                        }
                    );
                    Ok(())
                }
                Some(broken) => anyhow::bail!(
                    "audit chain BROKEN: {broken} ({} records before it verified)",
                    report.records
                ),
            }
        }
        AuditCommand::Export {
            since,
            until,
            project,
            subject,
            issuer,
            result,
        } => {
            let mut filter = AuditFilter {
                project,
                subject,
                issuer,
                result,
                since,
                until,
                limit: rise_backend::http::audit::MAX_LIMIT,
                ..AuditFilter::default()
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            loop {
                let page = store.audit_page(&filter).await?;
                for record in &page {
                    writeln!(out, "{}", rise_backend::http::audit::export_line(record))?;
                }
                match page.last() {
                    Some(last) if page.len() == filter.limit as usize => filter.after_id = last.id,
                    _ => break,
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}

fn dev_cert_instructions(files: &rise_backend::tls::DevCertFiles) -> String {
    let ca = files.ca.display();
    format!(
        "Wrote a development CA and a server certificate for {names}:
  CA certificate:      {ca}
  server certificate:  {cert}
  server key:          {key} (mode 0600)

Serve HTTPS with this in the configuration (the files are reloaded on SIGHUP and when they change):
  [server.tls]
  certificate = {cert:?}
  key = {key:?}

Trust the CA on this machine only. Its private key was discarded and it is limited to the names
above, so it can vouch for nothing else:
  curl:           curl --cacert {ca} https://localhost:3000/healthz
  Debian/Ubuntu:  sudo cp {ca} /usr/local/share/ca-certificates/rise-dev.crt && sudo update-ca-certificates
  macOS:          sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}
",
        names = files.names.join(", "),
        cert = files.certificate.display().to_string(),
        key = files.key.display().to_string(),
    )
}
