//! How a benchmark stops: an interruption (a stop signal, see
//! `rein_testkit::process::install_signal_handlers`) told apart from a failure, and the exit
//! code.
use std::process::ExitCode;

use anyhow::Result;
use rein_testkit::process;

/// Whether `e` comes from a stop signal: the run was cut short, it did not fail.
pub fn is_interruption(e: &anyhow::Error) -> bool {
    process::interrupted()
        || e.downcast_ref::<rein_testkit::Error>()
            .is_some_and(rein_testkit::Error::is_interrupted)
}

/// A benchmark binary's exit: its own code, or its error on one line and 130 when a stop
/// signal ended it (as a shell reports SIGINT), 1 otherwise.
pub fn exit(program: &str, result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            if process::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
