//! A directory of a test's own for the files it hands to rein (YAML manifests, configs).
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::netns::unique_suffix;

/// A new directory under the temporary directory, removed with its contents on drop. A test
/// helper: it panics when the file system refuses.
pub struct Files(PathBuf);

impl Files {
    /// `rein-<what>-<unique suffix>`, so that tests running side by side never share one.
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rein-{what}-{}", unique_suffix()));
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory, as a command line takes it.
    pub fn dir(&self) -> String {
        self.0.display().to_string()
    }

    /// Writes `name` with `text` and returns its path, as a command line takes it.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        if let Err(e) = fs::write(&path, text) {
            panic!("writing {}: {e}", path.display());
        }
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
