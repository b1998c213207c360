//! Child processes that always end: every one runs in its own process group, with a deadline, and
//! is killed (the whole group: SIGTERM, then SIGKILL) when the deadline passes, when a benchmark
//! is interrupted (SIGINT, SIGTERM, SIGHUP) or when its handle is dropped.
use std::{
    ffi::{OsStr, OsString},
    fmt, fs,
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

use crate::error::{Error, Result, bail};

/// Set by the signal handlers; every wait loop checks it.
static STOP: AtomicBool = AtomicBool::new(false);

/// How long a process group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// How long the output of an exited child is waited for (a grandchild that outlived it may still
/// hold the pipe).
const DRAIN: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(20);

/// Makes SIGINT, SIGTERM and SIGHUP set the stop flag instead of killing the process, so that it
/// can stop its children and remove what it made.
pub fn install_signal_handlers() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, &STOP)
            .map_err(|e| Error::failed(format!("installing a handler for signal {signal}: {e}")))?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails with [`Error::Interrupted`] once a stop signal has arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// What a finished child left.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
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

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`\n  exit: {}\n  stdout: {}\n  stderr: {}",
            self.command,
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
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
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
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
        S: AsRef<OsStr>,
    {
        Self {
            argv: argv.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            env_removed: Vec::new(),
            stdin: None,
            timeout,
            cleanup: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs(mut self, vars: &[(String, String)]) -> Self {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    /// Starts the command without `key`, whatever the caller's environment holds.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_removed.push(key.as_ref().to_owned());
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Marks a cleanup command: it runs even after a stop signal.
    pub fn cleanup(mut self) -> Self {
        self.cleanup = true;
        self
    }

    /// The command line, for messages.
    pub fn line(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts the command in its own process group. The handle kills the group when dropped.
    pub fn spawn(&self) -> Result<Running> {
        if !self.cleanup {
            check_interrupted()?;
        }
        let Some((program, args)) = self.argv.split_first() else {
            bail!("empty command line");
        };
        let mut command = Command::new(program);
        command.args(args);
        for key in &self.env_removed {
            command.env_remove(key);
        }
        command
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
            .map_err(|e| Error::failed(format!("cannot start `{}`: {e}", self.line())))?;
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
            pipe.write_all(data).map_err(|e| {
                Error::failed(format!("writing the input of `{}`: {e}", running.line))
            })?;
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
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit; on its deadline or a stop signal kills its group and fails.
    pub fn wait(mut self) -> Result<Output> {
        let status = loop {
            if let Some(status) = self.try_reap()? {
                break status;
            }
            if !self.cleanup && interrupted() {
                self.kill();
                return Err(Error::Interrupted);
            }
            if Instant::now() >= self.deadline {
                self.kill();
                bail!(
                    "`{}` did not finish within {} s and was killed",
                    self.line,
                    self.timeout.as_secs_f64()
                );
            }
            thread::sleep(POLL);
        };
        Ok(Output {
            command: self.line.clone(),
            status,
            stdout: drain(self.stdout.take()),
            stderr: drain(self.stderr.take()),
        })
    }

    /// [`Running::wait`], with the deadline brought forward to `limit` from now if that is
    /// sooner.
    pub fn wait_within(mut self, limit: Duration) -> Result<Output> {
        let sooner = Instant::now() + limit;
        if sooner < self.deadline {
            self.deadline = sooner;
            self.timeout = limit;
        }
        self.wait()
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
                .map_err(|e| Error::failed(format!("waiting for `{}`: {e}", self.line)))?;
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

/// Whether `pid` is a zombie (state Z in /proc/PID/stat).
pub fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

/// `/proc/sys/kernel/pid_max` + 1: a pid no process can have.
pub fn impossible_pid() -> Result<u32> {
    let text = fs::read_to_string("/proc/sys/kernel/pid_max")
        .map_err(|e| Error::failed(format!("reading pid_max: {e}")))?;
    let max: u32 = text
        .trim()
        .parse()
        .map_err(|e| Error::failed(format!("pid_max {text:?}: {e}")))?;
    Ok(max + 1)
}

/// The one lock of this test binary for tests that count against rates or time on two shared
/// cores, so they run one at a time; a test that panicked holding it leaves it usable.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
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
    fn stdin_and_environment_are_passed() {
        let out = Cmd::new(["cat"], Duration::from_secs(5))
            .stdin("hello")
            .run()
            .unwrap();
        assert_eq!(out.stdout, "hello");
        let out = Cmd::new(
            ["sh", "-c", "echo ${A-unset} ${HOME-unset}"],
            Duration::from_secs(5),
        )
        .env("A", "a")
        .env_remove("HOME")
        .run()
        .unwrap();
        assert_eq!(out.stdout, "a unset\n");
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

    #[test]
    fn an_earlier_deadline_for_one_wait() {
        let sleeper = Cmd::new(["sleep", "30"], Duration::from_secs(60))
            .spawn()
            .unwrap();
        let start = Instant::now();
        assert!(sleeper.wait_within(Duration::from_millis(200)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn zombies_and_impossible_pids() {
        let mut child = Cmd::new(["true"], Duration::from_secs(5)).spawn().unwrap();
        assert!(wait_until(Duration::from_secs(5), || is_zombie(
            child.pid()
        )));
        assert!(child.finished().unwrap());
        assert!(!is_zombie(impossible_pid().unwrap()));
    }
}
