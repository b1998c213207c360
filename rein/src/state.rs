//! The instance's record of what the operator asked for: which cgroups are limited, at what
//! rates, and where moved processes came from. The kernel maps hold the same limits (and the live
//! buckets); this file holds what the maps cannot, so `list` and `unset` can explain and undo.
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, IoContext, Result},
    net::NetRuleSpec,
    units::{Rate, Size},
};

/// 2 added `rein net` rules: version 1 files still load; an older rein refuses version 2 rather
/// than dropping the rules it does not know on its next save.
const STATE_VERSION: u32 = 2;
const OLDEST_READABLE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub rules: Vec<RuleRecord>,
    /// `rein net` rules (absent from files written before they existed).
    #[serde(default)]
    pub net: Vec<NetRuleRecord>,
    /// The next `rein net` rule's id: ids are not reused while the instance lives, so a script
    /// never deletes a rule that replaced the one it meant.
    #[serde(default)]
    pub next_net_id: u32,
}

/// One `rein net` rule: what the operator asked, and where it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRuleRecord {
    pub id: u32,
    #[serde(flatten)]
    pub spec: NetRuleSpec,
    pub ifindex: u32,
    /// The network namespace of the device (its cookie, never reused while the machine runs).
    pub netns: u64,
    /// The kernel id of the link the rule was attached with: the rule applies while that link
    /// runs on its device.
    #[serde(default)]
    pub link_id: u32,
    /// Sketch rules: the first of their cells in the sketch map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch_offset: Option<u32>,
}

/// One limited cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// Path from the cgroup v2 root.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub egress: Option<LimitSpec>,
    pub ingress: Option<LimitSpec>,
    pub origin: Origin,
}

/// A direction's limit as the operator gave it: the burst is `None` when it was left to the
/// default, so that a new rate brings its own default burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub rate: Rate,
    pub burst: Option<Size>,
}

/// How the cgroup came to be limited, which decides what `unset` undoes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// Created by `rein run`, whose process is `owner`; removed when the command ends.
    Run { owner: u32 },
    /// Created by `rein set --pid` for `pid`, moved there from `home`.
    Pid { pid: u32, home: String },
    /// An existing cgroup limited in place.
    Cgroup,
}

impl State {
    pub fn load(path: &Path) -> Result<Self> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    version: STATE_VERSION,
                    ..Self::default()
                });
            }
            Err(error) => {
                return Err(Error::Io {
                    context: format!("cannot read {}", path.display()),
                    source: error,
                });
            }
        };
        let mut state: Self = serde_json::from_str(&text).map_err(|error| Error::CorruptState {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        if !(OLDEST_READABLE_VERSION..=STATE_VERSION).contains(&state.version) {
            return Err(Error::CorruptState {
                path: path.to_owned(),
                reason: format!("version {} is not {STATE_VERSION}", state.version),
            });
        }
        // Written back in this version's form.
        state.version = STATE_VERSION;
        Ok(state)
    }

    /// Writes the state so that a crash leaves either the old or the new file, never half.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|error| Error::CorruptState {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        let temporary = temporary_path(path);
        let write = || -> io::Result<()> {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut file = fs::File::create(&temporary)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&temporary, path)
        };
        write().context(|| format!("cannot write {}", path.display()))
    }

    pub fn find(&self, cgroup_id: u64) -> Option<&RuleRecord> {
        self.rules.iter().find(|r| r.cgroup_id == cgroup_id)
    }

    pub fn find_mut(&mut self, cgroup_id: u64) -> Option<&mut RuleRecord> {
        self.rules.iter_mut().find(|r| r.cgroup_id == cgroup_id)
    }

    pub fn remove(&mut self, cgroup_id: u64) -> Option<RuleRecord> {
        let index = self.rules.iter().position(|r| r.cgroup_id == cgroup_id)?;
        Some(self.rules.remove(index))
    }

    /// Whether the instance holds nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.net.is_empty()
    }

    pub fn net_rule(&self, id: u32) -> Option<&NetRuleRecord> {
        self.net.iter().find(|r| r.id == id)
    }

    /// An id no rule has had.
    pub fn next_net_id(&self) -> u32 {
        let after_largest = self.net.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        after_largest.max(self.next_net_id)
    }

    /// Inserts or replaces the record of `record.cgroup_id`.
    pub fn upsert(&mut self, record: RuleRecord) {
        match self.find_mut(record.cgroup_id) {
            Some(existing) => *existing = record,
            None => self.rules.push(record),
        }
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("rein-state-test-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut state = State::load(&path).unwrap();
        assert!(state.rules.is_empty());
        state.upsert(RuleRecord {
            cgroup: "/rein/pid-1".into(),
            cgroup_id: 7,
            egress: Some(LimitSpec {
                rate: "10mbit".parse().unwrap(),
                burst: None,
            }),
            ingress: None,
            origin: Origin::Pid {
                pid: 1,
                home: "/".into(),
            },
        });
        state.save(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded.rules, state.rules);

        fs::write(&path, "{not json").unwrap();
        let error = State::load(&path).unwrap_err().to_string();
        assert!(error.contains("unreadable"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
