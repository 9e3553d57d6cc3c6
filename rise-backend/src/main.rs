//! `rise-backend`: the Rise credential broker.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rise_backend::auth::LocalIssuer;
use rise_backend::config::{Config, Sources};
use tracing_subscriber::EnvFilter;

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
    /// Load and validate the configuration, then exit.
    CheckConfig,
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&Sources::from_process(cli.config))?;
    match cli.command {
        Command::Serve => rise_backend::server::serve(config).await,
        Command::CheckConfig => {
            rise_backend::server::build_state(&config).await?;
            println!("configuration is valid");
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
            println!("{}", issuer.issue(&sub, &groups, ttl)?);
            Ok(())
        }
        Command::RegistryConfig { registry } => {
            let snippet = rise_backend::registry::providers::distribution::registry_config_snippet(
                &config,
                registry.as_deref(),
            )?;
            print!("{snippet}");
            Ok(())
        }
    }
}
