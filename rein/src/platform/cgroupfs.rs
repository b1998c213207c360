//! The cgroup v2 hierarchy: finding it, naming cgroups in it, moving processes between them.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use rein_common::MAX_CGROUP_DEPTH;

use crate::{
    error::{Error, IoContext, Result},
    platform,
};

/// The mounted cgroup v2 hierarchy.
#[derive(Clone, Debug)]
pub struct CgroupFs {
    mount: PathBuf,
}

impl CgroupFs {
    /// Finds the cgroup v2 mount in /proc/self/mountinfo: on hybrid systems it is not
    /// /sys/fs/cgroup (here it is /sys/fs/cgroup/unified).
    pub fn discover() -> Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .context(|| "cannot read /proc/self/mountinfo".into())?;
        let mount = parse_mountinfo(&mountinfo).ok_or(Error::NoCgroup2)?;
        Ok(Self { mount })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    pub fn root(&self) -> Cgroup {
        Cgroup {
            relative: "/".into(),
            path: self.mount.clone(),
        }
    }

    /// The cgroup at `relative`, a path from the v2 root such as `/rein/pid-42`.
    pub fn at(&self, relative: &str) -> Result<Cgroup> {
        let mut path = self.mount.clone();
        let mut normal = String::new();
        for component in Path::new(relative).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    path.push(name);
                    normal.push('/');
                    normal.push_str(&name.to_string_lossy());
                }
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Error::BadCgroupPath(relative.to_owned()));
                }
            }
        }
        if normal.is_empty() {
            normal.push('/');
        }
        Ok(Cgroup {
            relative: normal,
            path,
        })
    }

    /// What the operator means by `path`: a directory in the v2 mount
    /// (`/sys/fs/cgroup/unified/app`) or a path from its root as /proc/PID/cgroup prints it
    /// (`/app`). It must exist, lie in cgroup v2, not be the root, and be shallow enough.
    pub fn resolve(&self, path: &Path) -> Result<Cgroup> {
        let shown = path.display().to_string();
        let cgroup = if let Ok(relative) = path.strip_prefix(&self.mount) {
            self.at(&relative.to_string_lossy())?
        } else if path.is_absolute() && path.exists() && !self.mount.join(strip_root(path)).exists()
        {
            return Err(Error::OutsideCgroup2 {
                path: path.to_owned(),
                mount: self.mount.clone(),
            });
        } else {
            self.at(&path.to_string_lossy())?
        };
        if !cgroup.path.is_dir() {
            return Err(Error::NoSuchCgroup(shown));
        }
        match platform::filesystem_magic(&cgroup.path) {
            Ok(platform::CGROUP2_SUPER_MAGIC) => {}
            _ => {
                return Err(Error::OutsideCgroup2 {
                    path: path.to_owned(),
                    mount: self.mount.clone(),
                });
            }
        }
        if cgroup.is_root() {
            return Err(Error::RootCgroup);
        }
        cgroup.check_depth()?;
        Ok(cgroup)
    }

    /// The cgroup v2 a process is in, from /proc/PID/cgroup.
    pub fn of_pid(&self, pid: u32) -> Result<Cgroup> {
        let text = match fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoSuchProcess(pid));
            }
            Err(error) => {
                return Err(Error::Io {
                    context: format!("cannot read the cgroup of pid {pid}"),
                    source: error,
                });
            }
        };
        let relative = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or(Error::NoCgroup2)?;
        self.at(relative.trim())
    }
}

/// The cgroup v1 hierarchies' mounts in /proc/self/mountinfo: on a hybrid host, a
/// container runtime or kubelet with the cgroupfs driver may make its cgroups only there.
pub fn v1_mounts() -> Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context(|| "cannot read /proc/self/mountinfo".into())?;
    Ok(parse_v1_mounts(&mountinfo))
}

fn strip_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn parse_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 0:30 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw,..."
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn parse_v1_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            (fstype == "cgroup").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A cgroup in the v2 hierarchy, named by its path from the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    relative: String,
    path: PathBuf,
}

impl Cgroup {
    /// Path from the v2 root, as /proc/PID/cgroup shows it.
    pub fn relative(&self) -> &str {
        &self.relative
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_root(&self) -> bool {
        self.relative == "/"
    }

    /// Level in the tree: the root is 0.
    pub fn depth(&self) -> usize {
        self.relative.split('/').filter(|c| !c.is_empty()).count()
    }

    pub fn check_depth(&self) -> Result<()> {
        if self.depth() > MAX_CGROUP_DEPTH as usize {
            return Err(Error::CgroupTooDeep {
                path: self.relative.clone(),
                depth: self.depth(),
                max: MAX_CGROUP_DEPTH,
            });
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// The cgroup's id, which is what bpf_skb_cgroup_id returns: the inode of its directory.
    pub fn id(&self) -> Result<u64> {
        fs::metadata(&self.path)
            .map(|m| m.ino())
            .context(|| format!("cannot read cgroup {}", self.relative))
    }

    pub fn child(&self, name: &str) -> Cgroup {
        let relative = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.relative)
        };
        Cgroup {
            relative,
            path: self.path.join(name),
        }
    }

    /// Creates the directory; true if it was created, false if it was there already.
    pub fn create(&self) -> Result<bool> {
        match fs::create_dir(&self.path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(Error::Io {
                context: format!("cannot create cgroup {}", self.relative),
                source: error,
            }),
        }
    }

    /// Removes the (empty) cgroup; a cgroup that is already gone is fine.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::Io {
                context: format!("cannot remove cgroup {}", self.relative),
                source: error,
            }),
        }
    }

    /// Processes directly in this cgroup.
    pub fn processes(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Processes in this cgroup and all its descendants.
    pub fn processes_recursive(&self) -> Vec<u32> {
        let mut pids = self.processes();
        if let Ok(entries) = fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    pids.extend(self.child(&name).processes_recursive());
                }
            }
        }
        pids.sort_unstable();
        pids
    }

    /// Moves a process (all its threads) into this cgroup; [`Error::ProcessExited`] if it is
    /// gone or exiting.
    pub fn add_process(&self, pid: u32) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        let result = fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .and_then(|mut file| file.write_all(pid.to_string().as_bytes()));
        match result {
            // The kernel skips an exiting task (a zombie) without an error: check the move took.
            Ok(()) if self.holds(pid) => Ok(()),
            Ok(()) => Err(Error::ProcessExited(pid)),
            // ESRCH: the process is gone, or is a zombie that can no longer move.
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {
                Err(Error::ProcessExited(pid))
            }
            Err(error) => Err(Error::Io {
                context: format!("cannot move pid {pid} into cgroup {}", self.relative),
                source: error,
            }),
        }
    }

    /// Whether /proc/PID/cgroup names this cgroup.
    fn holds(&self, pid: u32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("0::"))
                .is_some_and(|path| path.trim() == self.relative)
        })
    }

    /// Kills every process in the cgroup and its descendants (cgroup.kill, Linux 5.14+).
    pub fn kill_all(&self) -> Result<()> {
        fs::write(self.path.join("cgroup.kill"), b"1")
            .context(|| format!("cannot kill the processes of cgroup {}", self.relative))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_a_hybrid_system() {
        let mountinfo = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:29 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:31 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            parse_mountinfo(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mountinfo("36 35 0:30 / /x rw - cgroup cgroup rw"),
            None
        );
        assert_eq!(
            parse_v1_mounts(mountinfo),
            [PathBuf::from("/sys/fs/cgroup/systemd")]
        );
        assert_eq!(
            parse_mountinfo("1 2 0:3 / /a\\040b rw - cgroup2 cgroup2 rw"),
            Some(PathBuf::from("/a b"))
        );
    }

    #[test]
    fn cgroup_paths_are_normalised_and_cannot_escape() {
        let fs = CgroupFs {
            mount: PathBuf::from("/cg"),
        };
        let cgroup = fs.at("/a//b/./c").unwrap();
        assert_eq!(cgroup.relative(), "/a/b/c");
        assert_eq!(cgroup.path(), Path::new("/cg/a/b/c"));
        assert_eq!(cgroup.depth(), 3);
        assert!(fs.at("/").unwrap().is_root());
        assert!(matches!(
            fs.at("/a/../../etc"),
            Err(Error::BadCgroupPath(_))
        ));
        assert_eq!(fs.root().child("rein").relative(), "/rein");
    }
}
