//! A private rein instance for a benchmark run (`REIN_INSTANCE=<name>`: its own pins, cgroups,
//! state and lock), purged on drop so that no run leaves rein's programs behind.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::proc::Cmd;

/// Deadline of the purge on drop.
const PURGE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct ReinInstance {
    pub binary: PathBuf,
    pub name: String,
    /// The benchmark's name, for its warnings.
    program: &'static str,
}

impl ReinInstance {
    pub fn new(binary: &Path, name: String, program: &'static str) -> Self {
        Self {
            binary: binary.to_owned(),
            name,
            program,
        }
    }

    /// The environment variable that selects the instance.
    pub fn env(&self) -> (&'static str, &str) {
        ("REIN_INSTANCE", &self.name)
    }
}

impl Drop for ReinInstance {
    fn drop(&mut self) {
        let (key, value) = self.env();
        let purge = Cmd::new(
            [self.binary.to_string_lossy().as_ref(), "purge"],
            PURGE_TIMEOUT,
        )
        .env(key, value)
        .cleanup();
        if let Err(e) = purge.run() {
            eprintln!("{}: warning: {e:#}", self.program);
        }
    }
}
