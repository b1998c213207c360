//! A minimal root filesystem for containers started with `podman run --rootfs`: no image can be
//! pulled on the project's machines, so the container's files are the host's own busybox-static
//! (with a link per applet), iperf3 and the libraries `ldd` lists for it, and the few /etc files
//! iperf3 and podman expect.
//!
//! One copy serves every container of a test process at once ([`Rootfs::shared`]): it is built
//! when the first one asks and removed when the last holder lets it go.
use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use crate::{
    error::{Context, Error, Result, bail},
    netns::unique_suffix,
    process::Cmd,
};

/// The programs a container of the harness runs, found on the host's PATH.
const PROGRAMS: [&str; 2] = ["busybox", "iperf3"];

/// Mount points podman fills (bind mounts of its own files, /proc, /sys, /dev): made here so that
/// podman never writes into a rootfs that other containers are using.
const DIRS: [&str; 8] = ["bin", "dev", "etc", "proc", "root", "run", "sys", "tmp"];

const ETC: [(&str, &str); 7] = [
    (
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    ),
    ("group", "root:x:0:\nnogroup:x:65534:\n"),
    (
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
    ),
    ("hosts", "127.0.0.1 localhost\n"),
    ("hostname", ""),
    ("resolv.conf", ""),
    ("services", ""),
];

/// The rootfs directory, removed on drop.
#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
}

impl Rootfs {
    /// The rootfs of this test process, built now if no holder keeps one alive.
    pub fn shared() -> Result<Arc<Self>> {
        static SHARED: Mutex<Weak<Rootfs>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rootfs) = shared.upgrade() {
            return Ok(rootfs);
        }
        let rootfs = Arc::new(Self::build()?);
        *shared = Arc::downgrade(&rootfs);
        Ok(rootfs)
    }

    /// A new rootfs in `rein-rootfs-<unique suffix>` under the temporary directory.
    pub fn build() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("rein-rootfs-{}", unique_suffix()));
        fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
        // From here on the guard owns the directory, so an error removes it.
        let rootfs = Self { dir };
        rootfs.fill()?;
        Ok(rootfs)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn fill(&self) -> Result<()> {
        for dir in DIRS {
            mkdir(&self.dir.join(dir))?;
        }
        // iperf3 keeps its buffer in a file under /tmp; the container may run as anyone.
        let tmp = self.dir.join("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
            .map_err(|e| io_error("setting the mode of", &tmp, e))?;
        for (name, text) in ETC {
            let path = self.dir.join("etc").join(name);
            fs::write(&path, text).map_err(|e| io_error("writing", &path, e))?;
        }
        for program in PROGRAMS {
            let host = find_program(program)?;
            self.copy_in(&host, &self.dir.join("bin").join(program))?;
            for library in libraries(&host)? {
                let inside = self.inside(&library);
                if !inside.exists() {
                    self.copy_in(&library, &inside)?;
                }
            }
        }
        self.link_applets()
    }

    /// `path` (absolute, on the host) at the same place in the rootfs.
    fn inside(&self, path: &Path) -> PathBuf {
        self.dir.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Copies the file `from` (following links: the libraries are links to versioned names) to
    /// `to`, making its directory.
    fn copy_in(&self, from: &Path, to: &Path) -> Result<()> {
        if let Some(parent) = to.parent() {
            mkdir(parent)?;
        }
        fs::copy(from, to).map_err(|e| {
            Error::failed(format!(
                "copying {} to {}: {e}",
                from.display(),
                to.display()
            ))
        })?;
        Ok(())
    }

    /// `/bin/<applet>` → busybox for every applet it has, `sh` among them, so that a container
    /// runs `sh -c ...` as anywhere else.
    fn link_applets(&self) -> Result<()> {
        let busybox = self.dir.join("bin/busybox");
        let list = Cmd::new([&busybox], Duration::from_secs(10))
            .arg("--list")
            .run()
            .context("listing busybox's applets")?;
        for applet in list.stdout.lines().map(str::trim) {
            if applet.is_empty() || applet.contains('/') {
                continue;
            }
            let link = self.dir.join("bin").join(applet);
            if !link.exists() {
                symlink("busybox", &link).map_err(|e| io_error("linking", &link, e))?;
            }
        }
        if !self.dir.join("bin/sh").exists() {
            bail!("busybox at {} has no sh applet", busybox.display());
        }
        Ok(())
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// `program` on PATH (and the usual system directories, which a test's PATH may lack).
fn find_program(program: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} is not installed (scripts/setup installs it)"))
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader among them; none for a
/// static binary.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Cmd::new(["ldd"], Duration::from_secs(10))
        .arg(binary)
        .output()?;
    // ldd fails on a static binary, saying so; anything else is a failure.
    let combined = format!("{}{}", out.stdout, out.stderr);
    if !out.status.success() && combined.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let out = out.check(&format!("ldd {}", binary.display()))?;
    Ok(parse_ldd(&out.stdout))
}

/// The absolute paths in `ldd`'s lines: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let target = match line.split_once("=>") {
                Some((_, after)) => after,
                None => line,
            };
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::failed(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007fab)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fab)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007fab)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libiperf.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    /// Every library iperf3 needs is in the rootfs, and the directory goes with the last holder.
    #[test]
    fn shared_rootfs_holds_iperf3_and_goes_with_its_last_holder() {
        let first = Rootfs::shared().unwrap();
        let second = Rootfs::shared().unwrap();
        assert_eq!(first.path(), second.path());
        let dir = first.path().to_owned();
        for library in libraries(&find_program("iperf3").unwrap()).unwrap() {
            assert!(first.inside(&library).is_file(), "{}", library.display());
        }
        assert!(dir.join("bin/sh").exists() && dir.join("bin/iperf3").is_file());
        drop(first);
        assert!(dir.exists());
        drop(second);
        assert!(!dir.exists());
    }
}
