//! What the agent knows of the cluster for its node, and what it declares from it: the seam
//! between the watchers (which fill a [`World`]) and the translations of pods, policies and
//! rate limits into rein resources (which fill [`Declarations`]).
use std::{collections::BTreeMap, path::PathBuf};

use rein::declarative::Declared;

/// A pod of this node, as the agent found it on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Where its traffic can be limited; `None` while its cgroup is not there (yet).
    pub place: Option<PodPlace>,
}

/// Where a pod's limit goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodPlace {
    /// A pod with a network namespace of its own: every socket in it, whatever its cgroup;
    /// downloads are queued in that namespace.
    Netns(PathBuf),
    /// A pod on the host's network: its cgroup (path from the cgroup v2 root).
    Cgroup(String),
}

/// A Kubernetes object a problem or a condition is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Why something an object asks for is not applied: reported as an Event on it (a pod) or in
/// its status (a custom resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    /// A CamelCase reason, as Events and conditions have.
    pub reason: &'static str,
    /// One line naming the problem.
    pub message: String,
}

/// What the agent declares to rein, and what it could not.
#[derive(Clone, Debug, Default)]
pub struct Declarations {
    /// Each with the object it was made from as its location (`Pod default/web-0`), which
    /// rein's errors name.
    pub resources: Vec<Declared>,
    pub problems: Vec<Problem>,
}
