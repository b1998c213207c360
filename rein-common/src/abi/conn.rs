//! New-connection limits on local callers (`rein conn`, outbound): the keys the `connect4` and
//! `connect6` programs look a connection up by, and the rule they charge it to.
//!
//! A rule names a destination prefix (with a protocol and a port, each optional) and a
//! scope: every caller, the callers in one cgroup (with its descendants), or the callers in one
//! network namespace. The program finds, for each scope the caller is in, the most specific
//! rule of that scope for the destination (three lookups at most per scope, fewer with
//! [`ConnShapes`]); the connection must conform to every rule found: a service's limit and a
//! client's limit both hold. A rule that has room takes the connection's token at once, with a
//! compare-and-swap of its one-word state; if a later rule refuses, the earlier ones get their
//! token back.
//!
//! The scope makes up the first 16 bytes of the key, matched in full before the destination's
//! prefix.

use crate::abi::net::ADDR_BYTES;

/// Bits of a [`ConnScope`]: the part of a [`ConnKey`] that always matches in full.
pub const CONN_SCOPE_BITS: u32 = 128;

/// `ConnScope::kind`: every caller.
pub const CONN_SCOPE_ALL: u8 = 0;
/// `ConnScope::kind`: the callers of one network namespace (`id` is its cookie).
pub const CONN_SCOPE_NETNS: u8 = 1;
/// `ConnScope::kind`: the callers in one cgroup or below it (`id` is the cgroup's id).
pub const CONN_SCOPE_CGROUP: u8 = 2;

/// Deepest cgroup level (the root is level 0) whose rules the programs look up.
pub const CONN_MAX_CGROUP_LEVEL: u32 = 31;

/// Names of the maps and programs in the `rein-conn` object.
pub const CONN_RULES_MAP: &str = "REIN_CONN_RULES";
pub const CONN_COUNTERS_MAP: &str = "REIN_CONN_COUNTERS";
pub const CONN_DESTINATIONS_MAP: &str = "REIN_CONN_DESTINATIONS";
pub const CONN_SHAPES_MAP: &str = "REIN_CONN_SHAPES";
pub const CONN_CALLERS_MAP: &str = "REIN_CONN_CALLERS";
pub const CONN_CONNECT4_PROGRAM: &str = "rein_conn_connect4";
pub const CONN_CONNECT6_PROGRAM: &str = "rein_conn_connect6";

/// The most rules the tables can be made for (userspace sizes them, up to this).
pub const MAX_CONN_RULES: u32 = 1 << 21;
/// Callers with a bucket of their own (`--per-caller`) at once, over all rules. Entries whose
/// bucket is full again carry nothing and are dropped when room is needed.
pub const MAX_CONN_CALLERS: u32 = 1 << 16;

/// Where and for whom a rule holds, as the first 16 bytes of a [`ConnKey`]. The id is split in
/// two halves: the trie's key follows its 4-byte prefix length unaligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnScope {
    /// One of the `CONN_SCOPE_*` values.
    pub kind: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6` (`crate::abi::net`).
    pub family: u8,
    /// An IP protocol number, or `PROTOCOL_ANY`.
    pub protocol: u8,
    pub _pad: u8,
    /// Destination port in host order, or `PORT_ANY`.
    pub port: u16,
    pub _pad2: u16,
    /// The cgroup id or network namespace cookie (0 for every caller): low and high halves.
    pub id_low: u32,
    pub id_high: u32,
}
const _: () = assert!(core::mem::size_of::<ConnScope>() * 8 == CONN_SCOPE_BITS as usize);

impl ConnScope {
    pub const fn new(kind: u8, id: u64, family: u8, protocol: u8, port: u16) -> Self {
        Self {
            kind,
            family,
            protocol,
            _pad: 0,
            port,
            _pad2: 0,
            id_low: id as u32,
            id_high: (id >> 32) as u32,
        }
    }
}

/// Key of the destination prefix trie (after the trie's 4-byte prefix length):
/// [`CONN_SCOPE_BITS`] plus the destination prefix are significant. An IPv4 address fills the
/// first four bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub scope: ConnScope,
    pub addr: [u8; ADDR_BYTES],
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 32);

/// What a key leads to: a rule, and how specific the match is within its scope
/// (`crate::abi::net::specificity`, with `destination` set).
pub use crate::abi::net::RuleMatch as ConnMatch;

/// Which lookups the programs make: one bit per (scope kind, way of naming protocol and
/// port) in `variants` ([`conn_variant_bit`]), and one bit per cgroup level that has
/// cgroup-scoped rules in `cgroup_levels`. A host with only per-service rules for every caller
/// makes one lookup per connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnShapes {
    pub variants: u32,
    pub cgroup_levels: u32,
}
const _: () = assert!(core::mem::size_of::<ConnShapes>() == 8);

/// The bit of [`ConnShapes::variants`] for rules of scope `kind` naming (or not) a port and a
/// protocol.
pub const fn conn_variant_bit(kind: u8, names_port: bool, names_protocol: bool) -> u32 {
    let variant = match (names_port, names_protocol) {
        (true, true) => 0,
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => 3,
    };
    1 << (kind as u32 * 4 + variant)
}

/// `ConnRule::form`: a continuous token bucket (`--rate N/s --burst B`), kept as a theoretical
/// arrival time (`crate::algo::bucket`) with the cost of one connection in ns.
pub const CONN_FORM_RATE: u32 = 0;
/// `ConnRule::form`: `tokens_per_fill` tokens added at each `fill_ns` boundary after
/// `anchor_ns`, up to `max_tokens` (`crate::algo::conn::FillBucket`).
pub const CONN_FORM_FILL: u32 = 1;

/// `ConnRule::flags`: each caller network namespace has its own bucket, in the callers map.
pub const CONN_FLAG_PER_CALLER: u32 = 1;

/// Value of the rule map: the limit and the shared bucket's live state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRule {
    /// `CONN_FORM_RATE` or `CONN_FORM_FILL`.
    pub form: u32,
    /// `CONN_FLAG_*` bits.
    pub flags: u32,
    /// Rate form: ns one connection costs, and the burst as the time the rate needs for it.
    pub cost_ns: u64,
    pub burst_ns: u64,
    /// Fill form: when fill interval 0 began (CLOCK_MONOTONIC), the interval, and the bucket.
    pub anchor_ns: u64,
    pub fill_ns: u64,
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    /// The shared bucket (rules without `CONN_FLAG_PER_CALLER`): the rate form's `tat`, or the
    /// fill form's packed word (`crate::algo::conn`). 0 is a full bucket in both forms.
    /// Compare-and-swap only.
    pub state: u64,
}
const _: () = assert!(core::mem::size_of::<ConnRule>() == 56);

/// Per-CPU counters of one rule: connections allowed and refused, and of the refused, those
/// refused because the callers table had no room for a new caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounters {
    pub allowed: u64,
    pub refused: u64,
    pub refused_table_full: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<ConnCounters>() == 32);

impl ConnCounters {
    /// Sum of two counters, for folding per-CPU values.
    pub const fn plus(self, other: Self) -> Self {
        Self {
            allowed: self.allowed.wrapping_add(other.allowed),
            refused: self.refused.wrapping_add(other.refused),
            refused_table_full: self
                .refused_table_full
                .wrapping_add(other.refused_table_full),
            _reserved: 0,
        }
    }
}

/// Key of the callers map: a per-caller rule and the caller's network namespace cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallerKey {
    pub rule: u32,
    pub _pad: u32,
    pub netns: u64,
}
const _: () = assert!(core::mem::size_of::<CallerKey>() == 16);

impl CallerKey {
    pub const fn new(rule: u32, netns: u64) -> Self {
        Self {
            rule,
            _pad: 0,
            netns,
        }
    }
}

/// One caller's bucket (same encoding as `ConnRule::state`) and counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallerState {
    pub state: u64,
    pub allowed: u64,
    pub refused: u64,
    /// When the caller last connected (a plain store: for `list` and reclaiming only).
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CallerState>() == 32);
