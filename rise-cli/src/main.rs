//! `rise`: the Rise command-line client. Exit codes are documented in [`rise_cli::error`] and in
//! `rise --help`.

use std::process::ExitCode;

use clap::Parser;
use rise_cli::cli::{Cli, run};
use rise_cli::context::Context;
use rise_cli::error::{CliError, Exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    rise_cli::push::quiet_contained_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&CliError::Other(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let result = runtime.block_on(run(cli, Context::from_process()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &CliError) -> ExitCode {
    eprintln!("error: {e}");
    let code: Exit = e.exit();
    ExitCode::from(code as u8)
}
