//! `rein run`: a command in a fresh limited cgroup, torn down when the command ends.
use std::{
    ffi::OsString,
    fs::OpenOptions,
    io,
    os::{
        fd::AsRawFd,
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::Command,
    thread,
    time::Duration,
};

use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM},
    iterator::{SignalsInfo, exfiltrator::WithOrigin},
};

use crate::{
    capabilities::cgroup_limit::{self, LimitChange},
    engine::Engine,
    error::{Error, IoContext, Result},
    instance::Instance,
    platform::cgroupfs::Cgroup,
};

/// How long tear-down waits for another rein command to release the instance.
const TEARDOWN_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `command` limited by `change` and returns the exit code rein should exit with: the
/// command's own, or 128 + the signal that killed it, as a shell reports it.
pub fn run(instance: &Instance, change: LimitChange, command: &[OsString]) -> Result<i32> {
    let (program, args) = command.split_first().ok_or(Error::NothingToSet)?;
    // From here on a terminating signal must not kill rein halfway through setting up; it is
    // handled (forwarded, or ending the run before it starts) and rein cleans up.
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .context(|| "cannot install signal handlers".into())?;
    // Hold the instance lock only while setting up and tearing down, so other rein commands
    // (list, set) work while the command runs.
    let run = cgroup_limit::start_run(&mut Engine::open(instance.clone())?, change)?;

    let interrupted = signals.pending().last().map(|info| 128 + info.signal);
    let outcome = match interrupted {
        // Asked to stop before the command started: do not start it.
        Some(code) => {
            signals.handle().close();
            Ok(code)
        }
        None => spawn_and_wait(&run.cgroup, program, args, signals),
    };

    let mut engine = Engine::open_waiting(instance.clone(), TEARDOWN_PATIENCE)?;
    cgroup_limit::finish_run(&mut engine, &run)?;
    outcome
}

fn spawn_and_wait(
    cgroup: &Cgroup,
    program: &OsString,
    args: &[OsString],
    mut signals: SignalsInfo<WithOrigin>,
) -> Result<i32> {
    // Open cgroup.procs before forking: between fork and exec only async-signal-safe calls are
    // allowed, and a write(2) to an open descriptor is one. Writing "0" moves the writer, so
    // the command is limited before its first instruction (no window to open a socket).
    let procs_path = cgroup.path().join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .context(|| format!("cannot open {}", procs_path.display()))?;
    let procs_fd = procs.as_raw_fd();
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: the closure only calls write(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }

    // Signals sent to rein by another process reach the command too; Ctrl-C from the terminal
    // already reaches the whole foreground group, so it is not sent twice. rein itself keeps
    // running either way, to clean up.
    let handle = signals.handle();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            handle.close();
            return Err(Error::Io {
                context: format!("cannot run {}", program.to_string_lossy()),
                source: error,
            });
        }
    };
    drop(procs);
    let child_pid = child.id() as libc::pid_t;
    let forwarder = thread::spawn(move || {
        for info in signals.forever() {
            if info.process.is_some() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(child_pid, info.signal) };
            }
        }
    });
    let status = child.wait();
    handle.close();
    let _ = forwarder.join();
    let status = status.context(|| "cannot wait for the command".into())?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1))
}
