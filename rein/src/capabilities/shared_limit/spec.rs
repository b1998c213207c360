//! A shared limit as the operator (or the Kubernetes agent) states it: a name, the group id its
//! kernel rule lives under, the member cgroups and network namespaces whose traffic the one
//! bucket per direction takes, and each direction's rate and burst.
use rein_common::{Direction, group_scope, netns_scope};
use serde::{Deserialize, Serialize};

use crate::capabilities::cgroup_limit::LimitSpec;

/// One shared limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRecord {
    pub name: String,
    /// The group's id: its rules are at `rein_common::group_scope(group)`. Allocated when the
    /// limit is made and kept while it lives, so a change keeps the bucket.
    pub group: u32,
    pub members: Vec<Member>,
    pub egress: Option<LimitSpec>,
    pub ingress: Option<LimitSpec>,
    /// The `SharedLimit` resource the limit belongs to (`rein apply`); none when set by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

impl SharedRecord {
    pub fn spec(&self, direction: Direction) -> Option<LimitSpec> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }

    /// The scope of the group's rules.
    pub fn scope(&self) -> u64 {
        group_scope(self.group)
    }
}

/// A member of a shared limit: a cgroup (everything below it too), or a network namespace
/// (every socket in it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Member {
    Cgroup {
        /// Path from the cgroup v2 root.
        path: String,
        id: u64,
    },
    Netns {
        /// The path the namespace was named by.
        path: String,
        cookie: u64,
        /// As in `NetnsRecord::inode`: how a later command sees the path still leads there.
        inode: u64,
    },
}

impl Member {
    /// The scope of the member's rules (its cgroup id, or its namespace's scope word).
    pub fn scope(&self) -> u64 {
        match self {
            Member::Cgroup { id, .. } => *id,
            Member::Netns { cookie, .. } => netns_scope(*cookie),
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Member::Cgroup { path, .. } | Member::Netns { path, .. } => path,
        }
    }

    /// `cgroup /a/b` or `netns /run/netns/x`.
    pub fn label(&self) -> String {
        match self {
            Member::Cgroup { path, .. } => format!("cgroup {path}"),
            Member::Netns { path, .. } => format!("netns {path}"),
        }
    }
}

/// The shared limits' section of the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub groups: Vec<SharedRecord>,
}

impl Section {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn find(&self, name: &str) -> Option<&SharedRecord> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn remove(&mut self, name: &str) -> Option<SharedRecord> {
        let index = self.groups.iter().position(|g| g.name == name)?;
        Some(self.groups.remove(index))
    }

    /// Inserts or replaces the record of `record.name`.
    pub fn upsert(&mut self, record: SharedRecord) {
        match self.groups.iter_mut().find(|g| g.name == record.name) {
            Some(existing) => *existing = record,
            None => self.groups.push(record),
        }
    }
}

/// A group id no record in `taken` has: one past the largest, so an id is not reused while a
/// later group holds a larger one (and ids stay small: a group scope keeps them in 32 bits).
pub fn next_group<'a>(taken: impl IntoIterator<Item = &'a SharedRecord>) -> u32 {
    taken
        .into_iter()
        .map(|g| g.group)
        .max()
        .unwrap_or(0)
        .saturating_add(1)
}
