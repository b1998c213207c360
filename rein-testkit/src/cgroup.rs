//! Cgroup v2 from the outside: where it is mounted, which processes a directory holds, and
//! removing a tree a test made.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    error::{Error, Result},
    process::{Cmd, wait_until},
};

/// `argv`, started by a shell that first moves itself into `cgroup` (so all of its traffic is
/// the cgroup's), bounded by `timeout`.
pub fn in_cgroup<S: AsRef<std::ffi::OsStr>>(cgroup: &Path, argv: &[S], timeout: Duration) -> Cmd {
    Cmd::new(["sh", "-c", r#"echo $$ > "$0" && exec "$@""#], timeout)
        .arg(cgroup.join("cgroup.procs"))
        .args(argv)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (on hybrid systems it is not
/// /sys/fs/cgroup).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::failed(format!("reading /proc/self/mountinfo: {e}")))?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_point(mount_point)))
        })
        .ok_or_else(|| Error::failed("no cgroup2 hierarchy in /proc/self/mountinfo"))
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_point(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
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
pub fn move_to(dir: &Path, pid: u32) -> Result<()> {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
        .map_err(|e| Error::failed(format!("moving pid {pid} into {}: {e}", dir.display())))
}

/// Kills what is in the cgroup `dir` and its descendants (only their owner can have put
/// processes there) and removes them, deepest first. Whether `dir` is gone.
pub fn remove_tree(dir: &Path) -> bool {
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    wait_until(Duration::from_secs(2), || procs_of(dir).is_empty());
    fs::remove_dir(dir).is_ok() || !dir.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_and_our_cgroup() {
        assert!(cgroup2_mount().unwrap().join("cgroup.procs").exists());
        assert!(cgroup_of(std::process::id()).unwrap().starts_with('/'));
        assert_eq!(unescape_mount_point("/a\\040b"), "/a b");
    }
}
