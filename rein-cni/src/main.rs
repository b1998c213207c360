//! The `rein-cni` binary: the CNI environment and stdin in, one JSON object on stdout, the exit
//! status the spec asks for. Logs go to stderr, and only when `REIN_LOG` asks for them: a
//! runtime keeps a plugin's stderr.
use std::{
    io::{self, Write as _},
    process::ExitCode,
};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let response = rein_cni::plugin::handle(&|var| std::env::var(var).ok(), &mut io::stdin());
    // A runtime that cannot read the answer fails the command anyway: nothing better to do.
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(response.stdout.as_bytes());
    if !response.stdout.is_empty() {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
    eprint!("{}", response.stderr);
    if response.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
