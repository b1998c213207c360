//! Types shared by rein's kernel programs and its userspace: map keys and values with a fixed
//! `#[repr(C)]` layout, and the pure arithmetic of the limiter so both sides compute alike.
//!
//! Every struct spells out its padding and asserts its size: the kernel and userspace must agree
//! byte for byte, and implicit padding is uninitialised memory in a map key.
#![no_std]

pub mod bucket;
pub mod net;
pub mod share;
pub mod window;

pub use bucket::{Bucket, Verdict};
pub use share::{EpochCount, FlowState, IngressFlowState};

/// Depth of the cgroup tree that the datapath searches for rules, counted from the v2 root
/// (level 0). A socket in a deeper cgroup is still covered by rules on its first
/// `MAX_CGROUP_DEPTH` levels of ancestors.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Maximum number of rules (per direction) the rule map holds.
pub const MAX_RULES: u32 = 16_384;

/// Name of the map of rules and bucket state, as pinned under the instance's bpffs directory.
pub const RULES_MAP: &str = "REIN_RULES";
/// Name of the per-CPU map of counters.
pub const COUNTERS_MAP: &str = "REIN_COUNTERS";
/// Name of the array, indexed by `Direction`, of how many rules each direction has: a packet
/// whose direction has none passes without a look at its cgroups.
pub const RULE_COUNTS_MAP: &str = "REIN_RULE_COUNTS";
/// Name of the socket-local storage of TCP flows under a limit.
pub const FLOWS_MAP: &str = "REIN_FLOWS";
/// Name of the socket-local storage of TCP flows received under an ingress limit.
pub const INGRESS_FLOWS_MAP: &str = "REIN_INGRESS_FLOWS";
/// Name of the map from an ingress rule (and network namespace) to its shaping queue.
pub const QUEUES_MAP: &str = "REIN_QUEUES";
/// Program names in the object file.
pub const EGRESS_PROGRAM: &str = "rein_egress";
pub const INGRESS_PROGRAM: &str = "rein_ingress";
pub const SOCK_OPS_PROGRAM: &str = "rein_sock_ops";
/// The tc ingress program that sends limited TCP downloads through their rule's queue.
pub const QUEUE_PROGRAM: &str = "rein_queue";

/// Version of the map layout. Pins live in a directory named after it, so a build with another
/// layout never reads maps it does not understand.
pub const LAYOUT_VERSION: u32 = 4;

/// Which way a packet crosses the socket.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Egress = 0,
    Ingress = 1,
}

/// Key of both maps: a cgroup (by its v2 id, the inode number of its directory) and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleKey {
    pub cgroup_id: u64,
    pub direction: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RuleKey>() == 16);

impl RuleKey {
    pub const fn new(cgroup_id: u64, direction: Direction) -> Self {
        Self {
            cgroup_id,
            direction: direction as u32,
            _pad: 0,
        }
    }
}

/// Key of the queue map: an ingress rule's cgroup, and the network namespace (its cookie) whose
/// devices lead into the queue. A queue is a device, and devices belong to one namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub cgroup_id: u64,
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<QueueKey>() == 16);

/// What the datapath does with a packet the bucket refuses.
///
/// Only `Drop` exists now; the discriminant is part of the map value so that other actions
/// (congestion notification, pacing) can be added without changing the layout.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Drop = 0,
}

/// Value of the rule map: the limit's configuration and its live state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub bucket: Bucket,
    /// An `Action` discriminant.
    pub action: u32,
    /// Reserved for flags of later mechanisms; zero.
    pub flags: u32,
    /// The limit in IP bytes per second, which TCP flows share by pacing.
    pub rate: u64,
    /// The TCP flows currently sharing the rate. Shared by all CPUs; compare-and-swap only.
    pub flows: EpochCount,
    /// Other traffic (not TCP) at egress, in units of `share::other_units`, which the flows'
    /// shares leave room for. Shared by all CPUs; compare-and-swap only.
    pub others: EpochCount,
}
const _: () = assert!(core::mem::size_of::<Rule>() == 56);

impl Rule {
    pub const fn new(bucket: Bucket, rate: u64, action: Action) -> Self {
        Self {
            bucket,
            action: action as u32,
            flags: 0,
            rate,
            flows: EpochCount(0),
            others: EpochCount(0),
        }
    }
}

/// Per-CPU counters of one rule and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 32);

impl Counters {
    /// Sum of two counters, for folding per-CPU values.
    pub const fn plus(self, other: Self) -> Self {
        Self {
            passed_packets: self.passed_packets.wrapping_add(other.passed_packets),
            passed_bytes: self.passed_bytes.wrapping_add(other.passed_bytes),
            dropped_packets: self.dropped_packets.wrapping_add(other.dropped_packets),
            dropped_bytes: self.dropped_bytes.wrapping_add(other.dropped_bytes),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::RuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::QueueKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IngressFlowState {}
    // SAFETY: plain #[repr(C)] data, every bit pattern valid, no implicit padding.
    unsafe impl aya::Pod for super::net::PrefixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::net::PairKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::net::RuleMatch {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::net::NetRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::net::SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::net::SourceState {}
}
