//! A private rein instance (`REIN_INSTANCE=<name>`: its own pins under /sys/fs/bpf/<name>,
//! cgroups under <cgroup2>/<name>, state and lock under /run/<name>), so that tests and
//! benchmarks run beside each other and beside any other rein on the machine.
//!
//! Commands run in the caller's network namespace or in another through `nsenter --net` (not
//! `ip netns exec`, whose private mount of /sys hides bpffs and cgroup v2). On drop the instance
//! is purged, and whatever a purge left (pins, cgroups, state) is removed by hand, along with the
//! cgroups a test made through [`ReinInstance::cgroup`].
//!
//! Tests and benchmarks differ in two things: a test's commands start without the caller's
//! `REIN_*` variables (a benchmark's keep them, `REIN_LOG` say, except `REIN_INSTANCE`), and a
//! cleanup that needed the hand fails a test (a panic, unless it panicked already) but only
//! warns in a benchmark.
//!
//! Drop order: declare the instance before the processes that run under its limits, so that
//! they are killed before it purges.
use std::{
    cell::RefCell,
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    cgroup,
    error::{Result, bail},
    netns::Netns,
    process::{Cmd, Output},
};

/// How long one rein command may take (a `run` gets its own deadline).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variables rein reads; a test's commands start without the caller's values.
const REIN_ENV: [&str; 6] = [
    "REIN_INSTANCE",
    "REIN_BPFFS",
    "REIN_BTF",
    "REIN_RUN_DIR",
    "REIN_LOG",
    "REIN_NET_MAX_RULES",
];

#[derive(Debug, Clone, Copy)]
enum Owner {
    Test,
    /// The benchmark's name, for its warnings.
    Benchmark(&'static str),
}

#[derive(Debug)]
pub struct ReinInstance {
    binary: PathBuf,
    name: String,
    cgroup2: PathBuf,
    /// Cgroups made by [`ReinInstance::cgroup`], in order.
    created: RefCell<Vec<PathBuf>>,
    owner: Owner,
}

impl ReinInstance {
    /// A benchmark's instance `name` of the rein at `binary`; fails if the instance exists
    /// already.
    pub fn new(binary: impl Into<PathBuf>, name: String, program: &'static str) -> Result<Self> {
        Self::owned_by(binary.into(), name, Owner::Benchmark(program))
    }

    fn owned_by(binary: PathBuf, name: String, owner: Owner) -> Result<Self> {
        let valid = name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            bail!("bad instance name {name:?}");
        }
        let cgroup2 = cgroup::cgroup2_mount()?;
        // Checked before the guard exists: an instance that is not ours is never purged.
        let leftovers = leftovers_of(&name, &cgroup2);
        if !leftovers.is_empty() {
            bail!("instance {name} exists already: {leftovers:?}");
        }
        Ok(Self {
            binary,
            name,
            cgroup2,
            created: RefCell::new(Vec::new()),
            owner,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The environment variable that selects the instance.
    pub fn env(&self) -> (&'static str, &str) {
        ("REIN_INSTANCE", &self.name)
    }

    /// `rein` for this instance.
    pub fn command(&self) -> Cmd {
        self.isolate(Cmd::new([&self.binary], COMMAND_TIMEOUT))
    }

    /// `rein` for this instance inside the network namespace `netns` (a name under /run/netns).
    pub fn command_in(&self, netns: &str) -> Cmd {
        let argv = [
            PathBuf::from("nsenter"),
            PathBuf::from(format!("--net=/run/netns/{netns}")),
            self.binary.clone(),
        ];
        self.isolate(Cmd::new(argv, COMMAND_TIMEOUT))
    }

    /// [`ReinInstance::command_in`] for a namespace of ours.
    pub fn command_in_ns(&self, netns: &Netns) -> Cmd {
        self.command_in(netns.name())
    }

    fn isolate(&self, cmd: Cmd) -> Cmd {
        let (key, value) = self.env();
        let cmd = match self.owner {
            Owner::Test => REIN_ENV.iter().fold(cmd, |cmd, var| cmd.env_remove(var)),
            Owner::Benchmark(_) => cmd,
        };
        cmd.env(key, value)
    }

    /// `/sys/fs/bpf/<name>`.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.name)
    }

    /// `/run/<name>`.
    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.name)
    }

    /// `/run/<name>.lock`: rein never removes its lock file (one that could be removed would
    /// exclude nobody), so the instance's owner does, once it is done with it.
    pub fn lock_path(&self) -> PathBuf {
        Path::new("/run").join(format!("{}.lock", self.name))
    }

    /// The instance as rein's library sees it, for tests that hold it open in-process.
    pub fn library_instance(&self) -> rein::Instance {
        rein::Instance::new(&self.name).unwrap_or_else(|e| panic!("instance {}: {e}", self.name))
    }

    /// `<cgroup2>/<name>`: the instance's own cgroup subtree.
    pub fn subtree(&self) -> PathBuf {
        self.cgroup2.join(&self.name)
    }

    pub fn cgroup2(&self) -> &Path {
        &self.cgroup2
    }

    /// What the instance left on the system: pin directory, cgroup subtree, state directory.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers_of(&self.name, &self.cgroup2)
    }

    /// `rein purge`, then by hand whatever it left, and the cgroups made through
    /// [`ReinInstance::cgroup`]; fails saying what needed the hand.
    pub fn purge(&self) -> Result<()> {
        let mut problems = Vec::new();
        match self.command().arg("purge").cleanup().output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!("purge failed: {out}")),
            Err(e) => problems.push(format!("purge failed: {e}")),
        }
        let leftovers = self.leftovers();
        if !leftovers.is_empty() {
            problems.push(format!("left after purge: {leftovers:?}"));
            self.force_clean();
        }
        for dir in self.created.take().iter().rev() {
            if dir.exists() && !cgroup::remove_tree(dir) {
                problems.push(format!("cannot remove cgroup {}", dir.display()));
            }
        }
        let _ = fs::remove_file(self.lock_path());
        if !problems.is_empty() {
            bail!("cleanup of instance {}: {}", self.name, problems.join("; "));
        }
        Ok(())
    }

    /// Removes what the instance left, without rein: processes in its subtree are killed (only
    /// its owner can have put them there).
    fn force_clean(&self) {
        let subtree = self.subtree();
        if subtree.exists() {
            cgroup::remove_tree(&subtree);
        }
        let _ = fs::remove_dir_all(self.pin_dir());
        let _ = fs::remove_dir_all(self.state_dir());
    }
}

/// The `rein` binary of the build `sibling` belongs to (a binary of the calling crate:
/// `env!("CARGO_BIN_EXE_<name>")`), built there once per test process: `cargo test -p <crate>`
/// builds only that crate's binaries, and a test of rein-kube or rein-cni drives rein too.
/// Panics when rein cannot be built.
pub fn rein_binary_beside(sibling: &str) -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let sibling = Path::new(sibling);
        let (Some(profile_dir), Some(target_dir)) =
            (sibling.parent(), sibling.parent().and_then(Path::parent))
        else {
            panic!("{} is not in a target directory", sibling.display());
        };
        let mut argv = vec![
            env!("CARGO").to_owned(),
            "build".into(),
            "--locked".into(),
            "-p".into(),
            "rein".into(),
            "--bin".into(),
            "rein".into(),
            "--target-dir".into(),
            target_dir.display().to_string(),
        ];
        if profile_dir.ends_with("release") {
            argv.push("--release".into());
        }
        Cmd::new(argv, Duration::from_secs(900))
            .run()
            .unwrap_or_else(|e| panic!("cannot build rein: {e}"));
        profile_dir.join("rein")
    })
}

/// Helpers for tests: they panic with the command and its output when rein cannot run or says
/// something unexpected.
impl ReinInstance {
    /// A test's instance `rein-t-<unique suffix>` of the rein at `binary`.
    pub fn for_test(binary: &str) -> Self {
        let name = format!("rein-t-{}", crate::netns::unique_suffix());
        Self::owned_by(binary.into(), name, Owner::Test).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `cmd` to its end.
    fn finish(cmd: &Cmd) -> Output {
        cmd.output().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `rein <args>` to completion.
    pub fn rein(&self, args: &[&str]) -> Output {
        Self::finish(&self.command().args(args))
    }

    /// Runs `rein <args>` with extra environment variables.
    pub fn rein_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let cmd = env
            .iter()
            .fold(self.command(), |cmd, (key, value)| cmd.env(key, value));
        Self::finish(&cmd.args(args))
    }

    /// Runs `rein <args>` inside the network namespace `netns` to completion.
    pub fn rein_in(&self, netns: &str, args: &[&str]) -> Output {
        Self::finish(&self.command_in(netns).args(args))
    }

    /// Makes the test cgroup `<cgroup2>/<name>-<path>` (with any missing parents inside it:
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

    /// Asserts the instance left nothing behind.
    pub fn assert_no_trace(&self, after: &str) {
        let leftovers = self.leftovers();
        assert!(
            leftovers.is_empty(),
            "after {after}, instance {} left {leftovers:?}",
            self.name
        );
    }
}

impl Drop for ReinInstance {
    fn drop(&mut self) {
        if let Err(e) = self.purge() {
            match self.owner {
                Owner::Test if !thread::panicking() => panic!("{e}"),
                Owner::Test => eprintln!("{e}"),
                Owner::Benchmark(program) => eprintln!("{program}: warning: {e}"),
            }
        }
    }
}

/// What tests expect of a rein command's output.
impl Output {
    /// Asserts the command succeeded; returns its stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "command failed:\n{self}");
        &self.stdout
    }

    /// Asserts the command succeeded and printed `added rule ID: ...` (`rein net add`,
    /// `rein conn add`); returns the id.
    pub fn added_rule_id(&self) -> u32 {
        self.ok()
            .trim()
            .strip_prefix("added rule ")
            .and_then(|rest| rest.split(':').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no `added rule ID:` in the output:\n{self}"))
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

fn pin_dir(name: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(name)
}

fn state_dir(name: &str) -> PathBuf {
    Path::new("/run").join(name)
}

/// The pin directory, cgroup subtree and state directory of the instance `name` that exist.
fn leftovers_of(name: &str, cgroup2: &Path) -> Vec<String> {
    [pin_dir(name), cgroup2.join(name), state_dir(name)]
        .into_iter()
        .filter(|dir| dir.exists())
        .map(|dir| format!("{} ({})", dir.display(), listing(&dir)))
        .collect()
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
