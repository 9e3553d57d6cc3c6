//! `docker-credential-rise`: a Docker credential helper that hands container tools short-lived
//! credentials brokered by Rise. See [`rise_cli::helper`].

use std::io::{Read, Write};
use std::process::ExitCode;

use rise_cli::context::Context;
use rise_cli::helper;

fn main() -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    let mut input = String::new();
    if matches!(action.as_str(), "get" | "store" | "erase") {
        // Bounded: a server URL or a small JSON document.
        let _ = std::io::stdin().take(64 * 1024).read_to_string(&mut input);
    }
    // The context only names directories; an action that needs one and has none says so.
    let ctx = Context::from_process();
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(helper::handle(&ctx, &action, &input)),
        Err(e) => helper::Outcome {
            stdout: format!("docker-credential-rise: cannot start: {e}\n"),
            status: 1,
            ..Default::default()
        },
    };
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    ExitCode::from(u8::try_from(outcome.status).unwrap_or(1))
}
