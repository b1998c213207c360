//! One rein command at a time per instance: an exclusive flock on a file in the state directory.
use std::{
    fs::{self, File, OpenOptions},
    os::fd::AsRawFd,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use crate::error::{Error, IoContext, Result};

/// Held for as long as the value lives; the kernel drops the lock with the file.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock, waiting up to `patience` (zero: not at all) for another command to
    /// finish; fails with [`Error::Busy`] after that.
    pub fn acquire(state_dir: &Path, patience: Duration) -> Result<Self> {
        let path = state_dir.join("lock");
        let deadline = Instant::now() + patience;
        loop {
            fs::create_dir_all(state_dir)
                .context(|| format!("cannot create {}", state_dir.display()))?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // The holder we waited for may have removed the file (a tidy-up removes the
                // state directory): a lock on a deleted file excludes nobody, so start again.
                if is_same_file(&file, &path) {
                    return Ok(Self { _file: file });
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(path));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}
