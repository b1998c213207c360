//! `rein agent` for tests: a configuration directory as the agent wants it, resources in it,
//! and a running agent to talk to (its metrics, its signals).
// Helpers of tests: they panic on purpose, as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    http,
    netns::unique_suffix,
    process::{Cmd, Output, Running, wait_until},
    rein_instance::ReinInstance,
};

/// A configuration directory of the test's own, root's and not writable by others (the agent
/// refuses anything else); removed on drop.
pub struct Config {
    pub dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("rein-agent-{}", unique_suffix()));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// Writes `file` as an editor does: a new file renamed over the old.
    pub fn write(&self, file: &str, text: &str) {
        let new = self.dir.join(format!(".{file}.new"));
        fs::write(&new, text).unwrap();
        fs::set_permissions(&new, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&new, self.dir.join(file)).unwrap();
    }

    pub fn remove(&self, file: &str) {
        fs::remove_file(self.dir.join(file)).unwrap();
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A `CgroupLimit` resource of `cgroup` at `egress`.
pub fn cgroup_limit(name: &str, cgroup: &str, egress: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: {name}\nspec:\n  \
         cgroup: {cgroup}\n  egress:\n    rate: {egress}\n"
    )
}

/// A running `rein agent`; killed on drop.
pub struct Agent {
    running: Option<Running>,
    pub metrics: SocketAddr,
}

impl Agent {
    pub fn start(rein: &ReinInstance, config: &Path, extra: &[&str]) -> Self {
        Self::start_with(rein.command(), config, extra)
    }

    pub fn start_with(command: Cmd, config: &Path, extra: &[&str]) -> Self {
        let metrics: SocketAddr = format!("127.0.0.1:{}", http::free_port().unwrap())
            .parse()
            .unwrap();
        let running = command
            .args(["agent", "--config"])
            .arg(config)
            .args(["--metrics-addr", &metrics.to_string()])
            .args(extra)
            .timeout(Duration::from_secs(120))
            .spawn()
            .unwrap();
        let agent = Self {
            running: Some(running),
            metrics,
        };
        assert!(
            wait_until(Duration::from_secs(10), || agent.metrics_text().is_some()),
            "the agent did not serve its metrics"
        );
        agent
    }

    pub fn metrics_text(&self) -> Option<String> {
        match http::get(self.metrics, "/metrics") {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    pub fn sample(&self, series: &str) -> Option<f64> {
        http::sample(&self.metrics_text()?, series)
    }

    pub fn pid(&self) -> u32 {
        self.running.as_ref().unwrap().pid()
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) with plain integers, to the agent this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Stops the agent with `signal` and returns what it printed.
    pub fn stop(mut self, signal: libc::c_int) -> Output {
        self.signal(signal);
        self.running
            .take()
            .unwrap()
            .wait_within(Duration::from_secs(10))
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            drop(running);
        }
    }
}
