//! The instance's record of what the operator asked for, a section per capability. The kernel
//! maps hold the same limits (and the live buckets); this file holds what the maps cannot
//! (cgroup paths, where moved processes came from, which bursts were explicit), so `list` and
//! `unset` can explain and undo, and `reload` can write back what a new map layout lacks.
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    capabilities::{cgroup_limit, conn_limits, net_rules, netns_limit, shared_limit},
    error::{Error, IoContext, Result},
};

/// 2 added `rein net` rules, 3 `rein conn` rules, 4 namespace limits, 5 shared limits: older
/// files still load; an older rein refuses a newer version rather than dropping the rules it
/// does not know on its next save.
const STATE_VERSION: u32 = 5;
const OLDEST_READABLE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Each capability's section. Flattened: the file keeps the shape it had before
    /// capabilities had sections, so files of every version still load and older rein
    /// versions read what this one writes.
    #[serde(flatten)]
    pub cgroup_limits: cgroup_limit::Section,
    #[serde(flatten)]
    pub net_rules: net_rules::Section,
    /// Absent from files written before `rein conn` existed.
    #[serde(default)]
    pub conn_limits: conn_limits::Section,
    /// Absent from files written before namespace limits existed.
    #[serde(default)]
    pub netns_limits: netns_limit::Section,
    /// Absent from files written before shared limits existed.
    #[serde(default, rename = "shared_limits")]
    pub shared_limits: shared_limit::Section,
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

    /// Whether the instance holds nothing.
    pub fn is_empty(&self) -> bool {
        self.cgroup_limits.is_empty()
            && self.net_rules.is_empty()
            && self.conn_limits.is_empty()
            && self.netns_limits.is_empty()
            && self.shared_limits.is_empty()
    }

    /// The id of the next `rein net` or `rein conn` rule: one sequence for both, so an id names
    /// exactly one rule of either kind, and none is reused while the instance lives.
    pub fn next_rule_id(&self) -> u32 {
        self.net_rules.next_id().max(self.conn_limits.next_id())
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
    use crate::capabilities::cgroup_limit::{LimitSpec, Origin, RuleRecord};

    /// A file written before declarative limits (no `declared_by` anywhere) loads, its
    /// limits set by hand.
    #[test]
    fn a_state_from_before_declarative_limits_loads() {
        let json = r#"{"version":2,"rules":[{"cgroup":"/app","cgroup_id":7,
            "egress":{"rate":10000000,"burst":null},"ingress":null,"origin":{"kind":"cgroup"}}],
            "net":[{"id":1,"device":"eth0","hook":"tc-ingress","limit":{"algorithm":
            "token-bucket","per":"bytes","rate":1250000,"burst":65536},"sources":{"kind":
            "shared"},"ifindex":2,"netns":4026531840,"link_id":9}],"next_net_id":2}"#;
        let state: State = serde_json::from_str(json).unwrap();
        assert_eq!(state.cgroup_limits.rules[0].declared_by, None);
        assert_eq!(state.net_rules.net[0].declared_by, None);
        // Nor `rein conn` rules: none, and the next id after the net rule's.
        assert!(state.conn_limits.is_empty());
        assert_eq!(state.next_rule_id(), 2);
        // Nor shared limits: an empty section.
        assert!(state.shared_limits.is_empty());
    }

    #[test]
    fn a_shared_limit_round_trips_with_its_group_and_members() {
        use crate::capabilities::shared_limit::{Member, SharedRecord};
        let mut state = State::default();
        state.shared_limits.upsert(SharedRecord {
            name: "web".into(),
            group: 3,
            members: vec![
                Member::Cgroup {
                    path: "/pod-a".into(),
                    id: 11,
                },
                Member::Netns {
                    path: "/run/netns/b".into(),
                    cookie: 5,
                    inode: 4026532000,
                },
            ],
            egress: Some(LimitSpec {
                rate: "10mbit".parse().unwrap(),
                burst: None,
            }),
            ingress: None,
            declared_by: Some("web".into()),
        });
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"shared_limits\""), "{json}");
        let loaded: State = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded.shared_limits, state.shared_limits);
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("rein-state-test-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut state = State::load(&path).unwrap();
        assert!(state.cgroup_limits.rules.is_empty());
        state.cgroup_limits.upsert(RuleRecord {
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
            declared_by: None,
        });
        state.save(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded.cgroup_limits.rules, state.cgroup_limits.rules);

        // A limit set by hand is written as before declarative limits: a file an older rein
        // reads as its own.
        let json = fs::read_to_string(&path).unwrap();
        assert!(!json.contains("declared_by"), "{json}");

        fs::write(&path, "{not json").unwrap();
        let error = State::load(&path).unwrap_err().to_string();
        assert!(error.contains("unreadable"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
