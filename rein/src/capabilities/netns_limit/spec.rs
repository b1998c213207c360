//! A network namespace's limit as the operator (or a container runtime, through the CNI
//! plugin) states it: which namespace, each direction's rate and burst, the subnets left
//! unlimited or alone limited, and who set it.
use ipnet::IpNet;
use rein_common::Direction;
use serde::{Deserialize, Serialize};

use crate::capabilities::cgroup_limit::{DeclaredBy, LimitChange, LimitSpec};

/// One limited network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRecord {
    /// The path the namespace was named by (`/run/netns/NAME`, `/proc/PID/ns/net`, a CNI
    /// runtime's `CNI_NETNS`).
    pub netns: String,
    /// The namespace's cookie: which namespace the path led to when the limit was set. A path
    /// that leads elsewhere later names another namespace, which this limit does not cover.
    pub cookie: u64,
    /// The namespace's inode (as `stat` of its path gives it): a cheap way to see, on every
    /// command, that the path still leads to the namespace.
    pub inode: u64,
    pub egress: Option<LimitSpec>,
    pub ingress: Option<LimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Subnets>,
    pub origin: NetnsOrigin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<DeclaredBy>,
}

impl NetnsRecord {
    pub fn spec(&self, direction: Direction) -> Option<LimitSpec> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }

    /// The attachment the record was made for, if a CNI runtime made it.
    pub fn attachment(&self) -> Option<&Attachment> {
        match &self.origin {
            NetnsOrigin::Cni(attachment) => Some(attachment),
            NetnsOrigin::Manual => None,
        }
    }
}

/// Which peers a namespace's limit covers: by default every one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subnets {
    /// Traffic with peers in these subnets is not limited (cluster-internal traffic, say).
    Unshaped(Vec<IpNet>),
    /// Only traffic with peers in these subnets is limited.
    Shaped(Vec<IpNet>),
}

impl Subnets {
    pub fn nets(&self) -> &[IpNet] {
        match self {
            Subnets::Unshaped(nets) | Subnets::Shaped(nets) => nets,
        }
    }
}

/// Who set a namespace's limit, which decides who may take it away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NetnsOrigin {
    /// `rein set --netns`, or a declarative file.
    Manual,
    /// The CNI plugin, for one attachment of a container to a network.
    Cni(Attachment),
}

/// A container's attachment to a CNI network: what a runtime's ADD, CHECK and DEL name, and
/// what its GC lists as still valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name (the conflist's `name`).
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// A namespace's limit as a whole, as the CNI plugin states it on ADD: what is not given is
/// not limited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsLimit {
    pub egress: Option<LimitSpec>,
    pub ingress: Option<LimitSpec>,
    pub subnets: Option<Subnets>,
}

/// A change by hand (`rein set --netns`): what is `None` stays as it was.
pub type NetnsChange = LimitChange;

/// The namespace limits' section of the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub rules: Vec<NetnsRecord>,
}

impl Section {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn find(&self, cookie: u64) -> Option<&NetnsRecord> {
        self.rules.iter().find(|r| r.cookie == cookie)
    }

    pub fn find_attachment(&self, container_id: &str, ifname: &str) -> Option<&NetnsRecord> {
        self.rules.iter().find(|r| {
            r.attachment()
                .is_some_and(|a| a.container_id == container_id && a.ifname == ifname)
        })
    }

    pub fn remove(&mut self, cookie: u64) -> Option<NetnsRecord> {
        let index = self.rules.iter().position(|r| r.cookie == cookie)?;
        Some(self.rules.remove(index))
    }

    /// Inserts or replaces the record of `record.cookie`.
    pub fn upsert(&mut self, record: NetnsRecord) {
        match self.rules.iter_mut().find(|r| r.cookie == record.cookie) {
            Some(existing) => *existing = record,
            None => self.rules.push(record),
        }
    }
}
