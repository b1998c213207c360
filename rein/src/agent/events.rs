//! What wakes the agent: its configuration changing on disk, a signal, or the one-second tick
//! on which it repairs drift and covers cgroups created since.
use std::{
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::Duration,
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher,
    event::{CreateKind, RemoveKind},
};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::{Handle, Signals},
};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A file of the configuration was written, created, renamed or removed.
    ConfigChanged,
    /// SIGHUP: read the configuration again.
    Reload,
    /// A cgroup was made or removed where the configuration's resources point.
    CgroupsChanged,
    /// SIGTERM or SIGINT.
    Stop,
    /// Nothing happened for a tick.
    Tick,
}

/// The agent's event sources, stopped on drop.
pub struct Events {
    receiver: Receiver<Event>,
    sender: Sender<Event>,
    // Held for their effect: dropping a watcher stops it.
    _watcher: RecommendedWatcher,
    cgroups: Option<RecommendedWatcher>,
    signals: Handle,
}

impl Events {
    /// Watches `config` (a file or a directory) and the agent's signals.
    ///
    /// A file is watched through its directory: editors and configuration management replace
    /// a file by renaming a new one over it, which a watch on the file itself stops seeing.
    pub fn start(config: &Path) -> Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let sender_for_cgroups = sender.clone();
        let watcher = watch(config, sender.clone())?;
        let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])
            .map_err(|e| Error::Agent(format!("cannot catch signals: {e}")))?;
        let handle = signals.handle();
        thread::Builder::new()
            .name("rein-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let event = if signal == SIGHUP {
                        Event::Reload
                    } else {
                        Event::Stop
                    };
                    if sender.send(event).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Agent(format!("cannot start the signal thread: {e}")))?;
        Ok(Self {
            receiver,
            sender: sender_for_cgroups,
            _watcher: watcher,
            cgroups: None,
            signals: handle,
        })
    }

    /// Watches `dirs` (each with whether its subdirectories are watched too) for cgroups made
    /// or removed, instead of what was watched before. Only directories count: cgroupfs also
    /// reports every change of files such as `memory.events`, which must not wake the agent.
    pub fn watch_cgroups(&mut self, dirs: &[(PathBuf, bool)]) {
        self.cgroups = None;
        if dirs.is_empty() {
            return;
        }
        let sender = self.sender.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                Ok(event) => matches!(
                    event.kind,
                    EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
                ),
                // An overflowed queue may have lost a cgroup.
                Err(_) => true,
            };
            if relevant {
                let _ = sender.send(Event::CgroupsChanged);
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!("cannot watch cgroups ({error}); they are looked at every tick");
                return;
            }
        };
        for (dir, recursive) in dirs {
            let mode = if *recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            // A directory not there yet is found by the periodic reconciliation.
            if let Err(error) = watcher.watch(dir, mode) {
                tracing::debug!("not watching {}: {error}", dir.display());
            }
        }
        self.cgroups = Some(watcher);
    }

    /// The next event, or [`Event::Tick`] after `tick` without one. Changes that come in a
    /// burst (an editor writes, renames and touches) arrive as one.
    pub fn next(&self, tick: Duration) -> Event {
        match self.receiver.recv_timeout(tick) {
            Ok(first @ (Event::ConfigChanged | Event::CgroupsChanged)) => {
                // Let the writer finish, then take what it did as one change. A signal that
                // came meanwhile wins: a stop must not wait for the next change.
                thread::sleep(SETTLE);
                let mut event = first;
                while let Ok(next) = self.receiver.try_recv() {
                    event = match (event, next) {
                        // A stop or a reload wins; a change of the files covers cgroups too.
                        (Event::Stop, _) | (_, Event::Stop) => Event::Stop,
                        (Event::Reload, _) | (_, Event::Reload) => Event::Reload,
                        (Event::ConfigChanged, _) | (_, Event::ConfigChanged) => {
                            Event::ConfigChanged
                        }
                        _ => event,
                    };
                }
                event
            }
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => Event::Tick,
            // Both sources gone cannot happen while `self` holds them; stopping is the safe
            // answer if it ever did.
            Err(RecvTimeoutError::Disconnected) => Event::Stop,
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.signals.close();
    }
}

/// How long a burst of file events is given to end.
const SETTLE: Duration = Duration::from_millis(100);

fn watch(config: &Path, sender: Sender<Event>) -> Result<RecommendedWatcher> {
    let (dir, only): (PathBuf, Option<PathBuf>) = if config.is_dir() {
        (config.to_path_buf(), None)
    } else {
        let dir = match config.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, Some(config.to_path_buf()))
    };
    let file_name = only
        .as_ref()
        .and_then(|p| p.file_name().map(ToOwned::to_owned));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // An overflowed queue loses which files changed, not that something did.
            let _ = sender.send(Event::ConfigChanged);
            return;
        };
        if event.kind.is_access() {
            return;
        }
        let ours = match &file_name {
            None => true,
            Some(name) => event
                .paths
                .iter()
                .any(|path| path.file_name() == Some(name.as_os_str())),
        };
        if ours {
            let _ = sender.send(Event::ConfigChanged);
        }
    })
    .map_err(|e| Error::Agent(format!("cannot watch {}: {e}", dir.display())))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Agent(format!("cannot watch {}: {e}", dir.display())))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rein-events-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_replaced_by_rename_is_a_change_and_its_neighbours_are_not() {
        let dir = scratch("rename");
        let config = dir.join("rein.yaml");
        fs::write(&config, "a").unwrap();
        let events = Events::start(&config).unwrap();
        fs::write(dir.join("other.yaml"), "b").unwrap();
        assert_eq!(events.next(Duration::from_millis(300)), Event::Tick);
        let new = dir.join(".rein.yaml.tmp");
        fs::write(&new, "c").unwrap();
        fs::rename(&new, &config).unwrap();
        assert_eq!(events.next(Duration::from_secs(2)), Event::ConfigChanged);
        drop(events);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_file_in_a_watched_directory_is_a_change() {
        let dir = scratch("dir");
        let events = Events::start(&dir).unwrap();
        fs::write(dir.join("limits.yaml"), "a").unwrap();
        assert_eq!(events.next(Duration::from_secs(2)), Event::ConfigChanged);
        assert_eq!(events.next(Duration::from_millis(300)), Event::Tick);
        drop(events);
        fs::remove_dir_all(&dir).unwrap();
    }
}
