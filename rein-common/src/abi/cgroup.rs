//! The cgroup limiter's maps as both sides see them: rules and their live bucket state, keyed
//! by cgroup and direction; the per-socket state of TCP flows under a limit; the ingress queues.

use crate::{
    abi::Direction,
    algo::{
        bucket::Bucket,
        share::{EpochCount, NO_EPOCH, STALE_EPOCHS},
    },
};

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
/// Name of the socket-local storage of which of a socket's cgroup levels have rules.
pub const RULE_LEVELS_MAP: &str = "REIN_RULE_LEVELS";
/// Name of the one-entry array holding the rules' generation, which userspace bumps after
/// every change to the rule map: a socket's stored levels are good while it is unchanged.
pub const GENERATION_MAP: &str = "REIN_GENERATION";
/// Name of the per-CPU scratch entry the programs put the levels of a socket without storage
/// in.
pub const LEVELS_SCRATCH_MAP: &str = "REIN_LEVELS_SCRATCH";
/// Program names in the object file.
pub const EGRESS_PROGRAM: &str = "rein_egress";
pub const INGRESS_PROGRAM: &str = "rein_ingress";
pub const SOCK_OPS_PROGRAM: &str = "rein_sock_ops";
/// The tc ingress program that sends limited TCP downloads through their rule's queue.
pub const QUEUE_PROGRAM: &str = "rein_queue";

/// Version of the map layout. Pins live in a directory named after it, so a build with another
/// layout never reads maps it does not understand. 5: member rules (`Action::Member`), which
/// older programs would take for rules of their own.
pub const LAYOUT_VERSION: u32 = 5;

/// Key of both maps: a scope (see [`netns_scope`]) and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleKey {
    /// A cgroup by its v2 id (the inode number of its directory), or a network namespace as
    /// [`netns_scope`] gives it.
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

    /// The key of a network namespace's rule.
    pub const fn netns(cookie: u64, direction: Direction) -> Self {
        Self::new(netns_scope(cookie), direction)
    }
}

/// The bit that marks a rule's scope as a network namespace rather than a cgroup. A cgroup id
/// is a kernfs id, `generation << 32 | inode`, whose generation would have to wrap the 32-bit
/// inode numbers 2^31 times to reach it; a namespace cookie counts namespaces from 1. One
/// word then names either, so that every path of the programs that carries a rule's scope
/// (refunds, counters, queues, trace events) carries a namespace's as it does a cgroup's.
pub const NETNS_SCOPE: u64 = 1 << 63;

/// The scope of the rule over every socket of the network namespace with cookie `cookie`.
pub const fn netns_scope(cookie: u64) -> u64 {
    cookie | NETNS_SCOPE
}

/// The namespace cookie of a scope, if it is a namespace's.
pub const fn scope_netns(scope: u64) -> Option<u64> {
    if scope & NETNS_SCOPE != 0 {
        Some(scope & !NETNS_SCOPE)
    } else {
        None
    }
}

/// The bit that marks a rule's scope as a shared limit's group: the one rule whose bucket
/// several member scopes (cgroups, namespaces) charge. No socket's level is ever a group (no
/// cgroup id reaches bit 62, as for [`NETNS_SCOPE`]); a group is reached only through its
/// members' rules ([`Action::Member`]).
pub const GROUP_SCOPE: u64 = 1 << 62;

/// The scope of the rule of the shared limit with group id `id`.
pub const fn group_scope(id: u32) -> u64 {
    id as u64 | GROUP_SCOPE
}

/// The group id of a scope, if it is a shared limit's group.
pub const fn scope_group(scope: u64) -> Option<u32> {
    if scope & (GROUP_SCOPE | NETNS_SCOPE) == GROUP_SCOPE {
        Some(scope as u32)
    } else {
        None
    }
}

/// The level a socket's network namespace rule has among its rules: below its cgroups'
/// (charged last, and the deepest when it comes to the ingress queue).
pub const NETNS_LEVEL: u32 = MAX_CGROUP_DEPTH + 1;

/// `Rule::flags`: only packets whose peer is in the rule's subnets ([`SUBNETS_MAP`]) are
/// charged to it.
pub const RULE_SHAPED_SUBNETS: u32 = 1;
/// `Rule::flags`: packets whose peer is in the rule's subnets pass without being charged.
pub const RULE_UNSHAPED_SUBNETS: u32 = 2;

/// Name of the LPM trie of the subnets of rules with `RULE_*_SUBNETS` flags.
pub const SUBNETS_MAP: &str = "REIN_SUBNETS";
/// Most subnets in the map, over all rules.
pub const MAX_SUBNETS: u32 = 4096;

/// Data of the subnets map's keys (the map's `Key` adds the prefix length in front): a rule's
/// scope, big-endian so that it is the key's first 64 bits, and a peer address, IPv4 as
/// v4-mapped IPv6. A subnet's prefix length is [`SubnetKey::SCOPE_BITS`] plus the address's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubnetKey {
    pub scope: [u8; 8],
    pub address: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SubnetKey>() == 24);

impl SubnetKey {
    /// Bits of the key before the address.
    pub const SCOPE_BITS: u32 = 64;
    /// Bits of a whole key: the prefix length the programs look up with.
    pub const BITS: u32 = Self::SCOPE_BITS + 128;

    pub const fn new(scope: u64, address: [u8; 16]) -> Self {
        Self {
            scope: scope.to_be_bytes(),
            address,
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
/// The discriminant is part of the map value so that other actions (congestion notification,
/// pacing) can be added without changing the layout.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Drop = 0,
    /// Not a limit of its own: the scope is a member of a shared limit, whose group rule (at
    /// `RuleKey(rule.rate, direction)`, see [`Rule::member`]) takes its packets. The programs
    /// follow one hop only: a group rule is never a member.
    Member = 1,
}

/// Value of the rule map: the limit's configuration and its live state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub bucket: Bucket,
    /// An `Action` discriminant.
    pub action: u32,
    /// `RULE_*` bits.
    pub flags: u32,
    /// The limit in IP bytes per second, which TCP flows share by pacing. In a member's rule
    /// (`Action::Member`): its group's scope ([`group_scope`]), and the rest of the rule unused.
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

    /// The rule of a member of the shared limit whose group scope is `group`.
    pub const fn member(group: u64) -> Self {
        Self {
            bucket: Bucket {
                ns_per_byte: 0,
                burst_ns: 0,
                tat: 0,
            },
            action: Action::Member as u32,
            flags: 0,
            rate: group,
            flows: EpochCount(0),
            others: EpochCount(0),
        }
    }

    /// The group scope a member's rule points at; `None` for a rule of its own.
    pub const fn group(&self) -> Option<u64> {
        if self.action == Action::Member as u32 {
            Some(self.rate)
        } else {
            None
        }
    }
}

/// How many of a socket's rules (the shallowest) [`RuleLevels`] keeps the cgroups of: as many
/// as the programs charge without a loop.
pub const KEPT_CGROUPS: usize = 4;

/// Which levels of a socket's cgroup ancestors have a rule in one direction. A socket's cgroup
/// is fixed when the socket is created, so this is found once and kept in its storage until a
/// rule changes (the generation moves on), instead of looking at every level for every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleLevels {
    /// The rules' generation (`GENERATION_MAP`) when the levels were found.
    pub generation: u64,
    /// Bit `level - 1` is set when the ancestor at `level` has a rule.
    pub levels: u32,
    /// 1 once found: a new storage is all zeros, which would read as "no rule".
    pub found: u32,
    /// The cgroups of the first rules, root first, so that a packet needs no helper to find
    /// them; 0 past the last.
    pub cgroups: [u64; KEPT_CGROUPS],
}
const _: () = assert!(core::mem::size_of::<RuleLevels>() == 48);
const _: () = assert!(MAX_CGROUP_DEPTH <= u32::BITS);

/// Value of the rule-level storage: the levels in each direction, indexed by `Direction`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRuleLevels {
    pub by_direction: [RuleLevels; 2],
}
const _: () = assert!(core::mem::size_of::<SocketRuleLevels>() == 96);

/// Per-socket state, in socket-local storage: what the egress program worked out for the flow
/// and what the sock_ops program last applied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// The flow's share in IP bytes/s, the smallest over the rules it is under; 0 when no rule
    /// covers it (any cap it had must be lifted).
    pub share: u64,
    /// The share being worked out for the packet in flight; becomes `share` if it passes.
    pub pending_share: u64,
    /// The epoch that `sent` and `registered` are about.
    pub epoch: u32,
    /// The `SO_MAX_PACING_RATE` last applied to the socket (egress), or its receive window
    /// clamp (ingress); 0 before the first.
    pub applied: u32,
    /// IP bytes sent in `epoch`.
    pub sent: u32,
    /// 1 once the flow has registered (counted itself as active) in `epoch`; 2 while the packet
    /// in flight is registering it (under each of its rules).
    pub registered: u32,
    /// The congestion window clamp last applied to the socket ([`crate::algo::share::cwnd_clamp`]); 0 before the
    /// first.
    pub clamp: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
}

/// Per-socket state of a flow received under ingress rules: the sharing state, and the rule
/// whose queue its packets go through (the deepest rule over the socket's cgroup) and the
/// socket's network namespace, which the tc program cannot find itself (it has no helper for a
/// socket's cgroup ancestors, and its namespace helper answers for the packet's sender).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressFlowState {
    pub flow: FlowState,
    /// The cgroup of the rule whose queue the flow's packets go through; 0 for none.
    pub queue_cgroup: u64,
    /// The socket's network namespace (its cookie): the queue must be a device there.
    pub netns_cookie: u64,
    /// 1 while the tc program sends the flow's packets through the queue, which shapes them.
    pub queued: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<IngressFlowState>() == 64);

/// `FlowState::flags`: the flow was registered in the epoch before `epoch`.
pub const FLOW_REGISTERED_BEFORE: u32 = 1;
/// `FlowState::flags`: the flow has sent its FIN and been taken out of the counts; it never
/// registers again.
pub const FLOW_FINISHED: u32 = 2;
const _: () = assert!(core::mem::size_of::<FlowState>() == 40);

impl FlowState {
    pub const NEW: Self = Self {
        share: 0,
        pending_share: 0,
        epoch: NO_EPOCH,
        applied: 0,
        sent: 0,
        registered: 0,
        clamp: 0,
        flags: 0,
    };

    /// The share that holds at epoch `now`: 0 (no cap) once no packet of the flow has been
    /// charged to a rule for [`STALE_EPOCHS`]. Checked when the cap is applied, per ACK, so that
    /// the per-packet path of flows under no rule never needs to look at their storage.
    #[inline(always)]
    pub const fn share_at(&self, now: u32) -> u64 {
        if now.wrapping_sub(self.epoch) > STALE_EPOCHS {
            0
        } else {
            self.share
        }
    }
}
