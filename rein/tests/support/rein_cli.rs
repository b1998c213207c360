//! Test support: runs the `rein` binary against a throwaway instance of its own.
//!
//! Included from integration tests with
//! `#[path = "support/rein_cli.rs"] mod rein_cli;`. Uses std, libc and `serde_json` only.
//!
//! A [`ReinInstance`] names an instance `rein-t-<suffix>` (set through `REIN_INSTANCE` on every
//! command it builds), creates the test's own cgroups as `<cgroup2>/rein-t-<suffix>-<name>`, and
//! on drop runs `rein purge`, checks that no pin directory, cgroup subtree or state directory of
//! the instance is left, and removes whatever is, along with the test's cgroups, even when the
//! test panicked.
//!
//! Drop order: declare the `ReinInstance` first, so child processes (held in [`ChildGuard`]s
//! declared later) are killed before it purges and removes cgroups.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::{
    cell::RefCell,
    fmt, fs,
    io::Read,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The binary under test.
pub const REIN: &str = env!("CARGO_BIN_EXE_rein");

/// How long any single rein command (other than `run`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variables rein reads; every command starts without the caller's values.
const REIN_ENV: [&str; 5] = [
    "REIN_INSTANCE",
    "REIN_BPFFS",
    "REIN_BTF",
    "REIN_RUN_DIR",
    "REIN_LOG",
];

/// The cgroup v2 mount point, from /proc/self/mountinfo (on hybrid systems it is not
/// /sys/fs/cgroup).
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| {
                PathBuf::from(
                    mount_point
                        .replace("\\040", " ")
                        .replace("\\011", "\t")
                        .replace("\\012", "\n")
                        .replace("\\134", "\\"),
                )
            })
        })
        .expect("no cgroup2 hierarchy in /proc/self/mountinfo")
}

/// The cgroup v2 of a process as /proc/PID/cgroup shows it (`/a/b`), `None` if it is gone.
pub fn cgroup_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(|p| p.trim().to_owned()))
}

/// Processes directly in the cgroup directory `dir`.
pub fn procs_of(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Moves `pid` into the cgroup directory `dir`.
pub fn move_to(dir: &Path, pid: u32) {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("cannot move pid {pid} into {}: {e}", dir.display()));
}

/// What a finished command did.
pub struct Outcome {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n  exit: {}\n  stdout: {}\n  stderr: {}",
            self.command,
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the command succeeded; returns its stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "command failed:\n{self}");
        &self.stdout
    }

    /// Asserts rein refused cleanly: a non-zero exit (not a crash), nothing on stdout, and
    /// exactly one line on stderr, `rein: ...`, containing every needle. Returns that line.
    pub fn refused(&self, needles: &[&str]) -> &str {
        match self.status.code() {
            Some(code) if code != 0 => {}
            _ => panic!("expected a non-zero exit code:\n{self}"),
        }
        let line = self.stderr.trim_end();
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "expected exactly one line on stderr:\n{self}"
        );
        assert!(line.starts_with("rein: "), "expected `rein: ...`:\n{self}");
        for needle in needles {
            assert!(
                line.contains(needle),
                "expected {needle:?} in the error:\n{self}"
            );
        }
        assert!(self.stdout.trim().is_empty(), "expected no stdout:\n{self}");
        line
    }
}

/// Runs `cmd` with stdin closed and both outputs captured; kills it and panics after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Outcome {
    let command = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command} did not finish within {timeout:?}");
        }
    };
    // A grandchild that survived could hold a pipe open: do not hang on it.
    let collect =
        |rx: mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    Outcome {
        command,
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn describe(cmd: &Command) -> String {
    let env: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    let args: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("`{} {}`", env.join(" "), args.join(" "))
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(e) => panic!("cannot wait for pid {}: {e}", child.id()),
        }
    }
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

/// A child process that is killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        Self(child)
    }

    /// `sleep <seconds>`: a process to limit that ends by itself.
    pub fn sleep(seconds: u32) -> Self {
        let mut cmd = Command::new("sleep");
        cmd.arg(seconds.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self::spawn(&mut cmd)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One rein instance owned by a test.
pub struct ReinInstance {
    /// `rein-t-<suffix>`.
    pub name: String,
    /// The cgroup v2 mount.
    pub cgroup2: PathBuf,
    /// Cgroups the test created, in creation order.
    created: RefCell<Vec<PathBuf>>,
}

impl ReinInstance {
    /// An instance named `rein-t-<suffix>`; `suffix` must be unique per test.
    pub fn new(suffix: &str) -> Self {
        let name = format!("rein-t-{suffix}");
        assert!(
            name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "bad instance name {name:?}"
        );
        let instance = Self {
            name,
            cgroup2: cgroup2_mount(),
            created: RefCell::new(Vec::new()),
        };
        let leftovers = instance.leftovers();
        assert!(
            leftovers.is_empty(),
            "instance {} exists before the test: {leftovers:?}",
            instance.name
        );
        instance
    }

    /// `rein` for this instance, with the default system paths.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(REIN);
        for var in REIN_ENV {
            cmd.env_remove(var);
        }
        cmd.env("REIN_INSTANCE", &self.name);
        cmd
    }

    /// `rein` for this instance inside the network namespace `/run/netns/<netns>`, through
    /// `nsenter --net`: only the network namespace changes, so bpffs and cgroup v2 stay visible
    /// (`ip netns exec` remounts /sys, which hides them).
    pub fn command_in(&self, netns: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}")).arg(REIN);
        for var in REIN_ENV {
            cmd.env_remove(var);
        }
        cmd.env("REIN_INSTANCE", &self.name);
        cmd
    }

    /// Runs `rein <args>` inside the network namespace `netns` to completion.
    pub fn rein_in(&self, netns: &str, args: &[&str]) -> Outcome {
        let mut cmd = self.command_in(netns);
        cmd.args(args);
        run_bounded(cmd, COMMAND_TIMEOUT)
    }

    /// Runs `rein <args>` to completion.
    pub fn rein(&self, args: &[&str]) -> Outcome {
        self.rein_env(&[], args)
    }

    /// Runs `rein <args>` with extra environment variables.
    pub fn rein_env(&self, env: &[(&str, &str)], args: &[&str]) -> Outcome {
        let mut cmd = self.command();
        cmd.envs(env.iter().copied()).args(args);
        run_bounded(cmd, COMMAND_TIMEOUT)
    }

    /// `/sys/fs/bpf/<name>`.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf").join(&self.name)
    }

    /// `/run/<name>`.
    pub fn state_dir(&self) -> PathBuf {
        Path::new("/run").join(&self.name)
    }

    /// `/run/<name>.lock`: never removed by rein (a lock file that could be removed would
    /// exclude nobody), so the test removes it.
    pub fn lock_path(&self) -> PathBuf {
        Path::new("/run").join(format!("{}.lock", self.name))
    }

    /// `<cgroup2>/<name>`: the instance's own cgroup subtree.
    pub fn subtree(&self) -> PathBuf {
        self.cgroup2.join(&self.name)
    }

    /// Creates the test cgroup `<cgroup2>/<name>-<path>` (with any missing parents inside it:
    /// `parent/child`) and returns its directory; removed on drop.
    pub fn cgroup(&self, path: &str) -> PathBuf {
        let mut dir = self
            .cgroup2
            .join(format!("{}-{}", self.name, path.trim_start_matches('/')));
        let target = dir.clone();
        let mut missing = Vec::new();
        while !dir.exists() {
            missing.push(dir.clone());
            if !dir.pop() {
                break;
            }
        }
        for dir in missing.into_iter().rev() {
            fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
            self.created.borrow_mut().push(dir);
        }
        target
    }

    /// A cgroup directory as a path from the v2 root (`/rein-t-x-app`).
    pub fn relative(&self, dir: &Path) -> String {
        let relative = dir
            .strip_prefix(&self.cgroup2)
            .unwrap_or_else(|_| panic!("{} is not in cgroup v2", dir.display()));
        format!("/{}", relative.display())
    }

    /// The cgroup limits of `rein list --json`.
    pub fn list(&self) -> Vec<Value> {
        self.list_part("cgroups")
    }

    /// The `rein net` rules of `rein list --json`.
    pub fn net_rules(&self) -> Vec<Value> {
        self.list_part("net")
    }

    fn list_part(&self, part: &str) -> Vec<Value> {
        let out = self.rein(&["list", "--json"]);
        let stdout = out.ok();
        match serde_json::from_str::<Value>(stdout) {
            Ok(Value::Object(mut parts)) => match parts.remove(part) {
                Some(Value::Array(rules)) => rules,
                _ => panic!("`rein list --json` has no {part} array:\n{out}"),
            },
            _ => panic!("`rein list --json` did not print a JSON object:\n{out}"),
        }
    }

    /// The rule `rein list --json` shows for the cgroup `relative`.
    pub fn rule(&self, relative: &str) -> Option<Value> {
        self.list()
            .into_iter()
            .find(|rule| rule["cgroup"].as_str() == Some(relative))
    }

    /// What the instance left on the system: pin directory, cgroup subtree, state directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for dir in [self.pin_dir(), self.subtree(), self.state_dir()] {
            if dir.exists() {
                found.push(format!("{} ({})", dir.display(), listing(&dir)));
            }
        }
        found
    }

    /// Asserts the instance left nothing behind.
    pub fn assert_no_trace(&self, after: &str) {
        let leftovers = self.leftovers();
        assert!(
            leftovers.is_empty(),
            "after {after}, instance {} left {leftovers:?}",
            self.name
        );
    }

    /// Removes what the instance left, without rein: processes in its subtree are killed
    /// (only the test can have put them there).
    fn force_clean(&self) {
        let subtree = self.subtree();
        if subtree.exists() {
            let _ = fs::write(subtree.join("cgroup.kill"), "1");
            remove_cgroup_tree(&subtree);
        }
        let _ = fs::remove_dir_all(self.pin_dir());
        let _ = fs::remove_dir_all(self.state_dir());
    }

    /// The instance as the library sees it, for tests that hold it open in-process.
    pub fn library_instance(&self) -> rein::Instance {
        rein::Instance::new(&self.name).expect("a valid instance name")
    }
}

impl Drop for ReinInstance {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        let purge = self.rein(&["purge"]);
        if !purge.status.success() {
            problems.push(format!("purge failed: {purge}"));
        }
        let leftovers = self.leftovers();
        if !leftovers.is_empty() {
            problems.push(format!("left after purge: {leftovers:?}"));
            self.force_clean();
        }
        for dir in self.created.borrow().iter().rev() {
            if !dir.exists() {
                continue;
            }
            // Only the test's own processes can be in its cgroups.
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            let empty = wait_until(Duration::from_secs(2), || procs_of(dir).is_empty());
            if !empty || fs::remove_dir(dir).is_err() {
                problems.push(format!("cannot remove test cgroup {}", dir.display()));
            }
        }
        let _ = fs::remove_file(self.lock_path());
        if !problems.is_empty() && !thread::panicking() {
            panic!("cleanup of instance {}: {}", self.name, problems.join("; "));
        }
    }
}

/// Removes a cgroup directory and its descendants, deepest first, after they empty.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    wait_until(Duration::from_secs(2), || procs_of(dir).is_empty());
    let _ = fs::remove_dir(dir);
}

/// Entries of a directory, for messages; a cgroup's interface files are left out.
fn listing(dir: &Path) -> String {
    let is_cgroup = dir.join("cgroup.procs").exists();
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !is_cgroup || e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(", ")
}

/// `/proc/sys/kernel/pid_max` + 1: a pid no process can have.
pub fn impossible_pid() -> u32 {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("read pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    max + 1
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

/// A signal's exit code as a shell reports it.
pub fn signal_code(status: &ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}
