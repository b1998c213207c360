//! Child processes that always end: every one runs in its own process group, with a deadline, and
//! is killed (the whole group: SIGTERM, then SIGKILL) when the deadline passes, when the bench is
//! interrupted (SIGINT, SIGTERM, SIGHUP) or when its handle is dropped.

use std::{
    fmt,
    io::{Read, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Set by the signal handlers; every wait loop checks it.
static STOP: AtomicBool = AtomicBool::new(false);

/// How long a process group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// How long the output of an exited child is waited for (a grandchild that outlived it may still
/// hold the pipe).
const DRAIN: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(20);

/// The error a wait returns when the bench was interrupted: the caller stops everything and
/// unwinds, so that the guards clean up.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Makes SIGINT, SIGTERM and SIGHUP set the stop flag instead of killing the bench, so that it can
/// stop its children and remove what it made.
pub fn install_signal_handlers() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, &STOP)
            .with_context(|| format!("installing a handler for signal {signal}"))?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A benchmark binary's exit: its own code, or its error on one line and 130 when a stop
/// signal ended it (as a shell reports SIGINT), 1 otherwise.
pub fn exit(program: &str, result: Result<std::process::ExitCode>) -> std::process::ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            if interrupted() {
                std::process::ExitCode::from(130)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Fails with [`Interrupted`] once a stop signal has arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// What a finished child left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fails unless the child exited with status 0; the error quotes its stderr.
    pub fn check(self, what: &str) -> Result<Self> {
        if self.status.success() {
            return Ok(self);
        }
        bail!(
            "{what} failed ({}): {}",
            describe(self.status),
            last_lines(&self.stderr, &self.stdout)
        )
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The end of stderr, or of stdout when stderr is empty, on one line.
fn last_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no output".to_owned()
    } else {
        tail.join(" / ")
    }
}

/// A command line with its environment, stdin and deadline.
#[derive(Debug, Clone)]
pub struct Cmd {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    /// Cleanup commands must run after an interruption too: they ignore the stop flag (but still
    /// have their deadline).
    cleanup: bool,
}

impl Cmd {
    pub fn new<I, S>(argv: I, timeout: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            stdin: None,
            timeout,
            cleanup: false,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn envs(mut self, vars: &[(String, String)]) -> Self {
        self.env.extend_from_slice(vars);
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Marks a cleanup command: it runs even after a stop signal.
    pub fn cleanup(mut self) -> Self {
        self.cleanup = true;
        self
    }

    pub fn line(&self) -> String {
        self.argv.join(" ")
    }

    /// Starts the command in its own process group. The handle kills the group when dropped.
    pub fn spawn(&self) -> Result<Running> {
        if !self.cleanup {
            check_interrupted()?;
        }
        let (program, args) = self.argv.split_first().context("empty command line")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.line()))?;
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let mut running = Running {
            line: self.line(),
            child,
            reaped: None,
            stdout,
            stderr,
            deadline: Instant::now() + self.timeout,
            timeout: self.timeout,
            cleanup: self.cleanup,
        };
        if let Some(data) = &self.stdin
            && let Some(mut pipe) = running.child.stdin.take()
        {
            // Small inputs (a CNI config): the pipe buffer takes them whole.
            pipe.write_all(data)
                .with_context(|| format!("writing the input of `{}`", running.line))?;
        }
        Ok(running)
    }

    /// Runs the command to its end and returns its output, whatever its exit status.
    pub fn output(&self) -> Result<Output> {
        self.spawn()?.wait()
    }

    /// Runs the command and fails unless it exits with status 0.
    pub fn run(&self) -> Result<Output> {
        self.output()?.check(&format!("`{}`", self.line()))
    }
}

type Pipe = mpsc::Receiver<Vec<u8>>;

/// Reads a pipe to its end on a thread; the bytes arrive on the channel.
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> Option<Pipe> {
    let mut pipe = pipe?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    Some(rx)
}

fn drain(pipe: Option<Pipe>) -> String {
    pipe.and_then(|rx| rx.recv_timeout(DRAIN).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A started child. Dropping it kills its process group.
#[derive(Debug)]
pub struct Running {
    line: String,
    child: Child,
    reaped: Option<ExitStatus>,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
    deadline: Instant,
    timeout: Duration,
    cleanup: bool,
}

impl Running {
    /// Waits for the child to exit; on its deadline or a stop signal kills its group and fails.
    pub fn wait(mut self) -> Result<Output> {
        let status = loop {
            if let Some(status) = self.try_reap()? {
                break status;
            }
            if !self.cleanup && interrupted() {
                self.kill();
                return Err(Interrupted.into());
            }
            if Instant::now() >= self.deadline {
                self.kill();
                bail!(
                    "`{}` did not finish within {} s and was killed",
                    self.line,
                    self.timeout.as_secs()
                );
            }
            thread::sleep(POLL);
        };
        Ok(Output {
            status,
            stdout: drain(self.stdout.take()),
            stderr: drain(self.stderr.take()),
        })
    }

    /// Whether the child has exited (it is reaped then; [`Running::wait`] still gives its
    /// output).
    pub fn finished(&mut self) -> Result<bool> {
        Ok(self.try_reap()?.is_some())
    }

    fn try_reap(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.line))?;
        }
        Ok(self.reaped)
    }

    /// SIGTERM to the group, then SIGKILL after the grace period, and reaps the child. The group
    /// is signalled only while its leader is not reaped, so its id cannot have been reused.
    fn kill(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        let until = Instant::now() + GRACE;
        while Instant::now() < until {
            if matches!(self.try_reap(), Ok(Some(_)) | Err(_)) {
                return;
            }
            thread::sleep(POLL);
        }
        signal_group(pgid, libc::SIGKILL);
        if let Ok(status) = self.child.wait() {
            self.reaped = Some(status);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid names
    // the process group this handle created (process_group(0) made the child its leader).
    unsafe {
        libc::kill(-pgid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status() {
        let out = Cmd::new(
            ["sh", "-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(5),
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let err = out.check("the script").unwrap_err().to_string();
        assert!(
            err.contains("exit status 3") && err.contains("err"),
            "{err}"
        );
    }

    #[test]
    fn stdin_is_passed() {
        let out = Cmd::new(["cat"], Duration::from_secs(5))
            .stdin("hello")
            .run()
            .unwrap();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn deadline_kills_the_whole_group() {
        let start = Instant::now();
        let err = Cmd::new(
            ["sh", "-c", "sleep 30 & sleep 30; wait"],
            Duration::from_millis(300),
        )
        .output()
        .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        // The background sleep held stdout too: it was killed with its group, so nothing waited
        // for it.
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
