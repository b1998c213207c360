//! One rein command at a time per instance: an exclusive flock on a file that is never
//! unlinked. A lock on a file that a tidy-up could remove would exclude nobody: the next
//! command would create a new file and lock that while the first still runs.
use std::{
    fs::{File, OpenOptions},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use rustix::fs::{FlockOperation, flock};

use crate::error::{Error, IoContext, Result};

/// Held for as long as the value lives; the kernel drops the lock with the file.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock on `path`, waiting up to `patience` (zero: not at all) for another
    /// command to finish; fails with [`Error::Busy`] after that.
    pub fn acquire(path: &Path, patience: Duration) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .context(|| format!("cannot open {}", path.display()))?;
        let deadline = Instant::now() + patience;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Self { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::Busy(path.to_owned())),
                Err(error) => {
                    return Err(Error::Io {
                        context: format!("cannot lock {}", path.display()),
                        source: error.into(),
                    });
                }
            }
        }
    }
}
