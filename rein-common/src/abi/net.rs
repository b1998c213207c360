//! Limits on interfaces that follow addresses (`rein net`): the keys the tc and XDP programs
//! look a packet up by, and the rule they apply to it.
//!
//! A rule names an interface and a direction, and any of: a source prefix, a destination
//! prefix, an exact (source, destination) pair, a protocol and a destination port. The kernel
//! finds a packet's candidates with three lookups for each way of naming its protocol and port
//! ((protocol, port), (any, port), (protocol, any), (any, any)): the longest source prefix, the
//! longest destination prefix and the exact pair. The most specific candidate wins
//! ([`specificity`]).
//!
//! The interface, direction, family, protocol and port make up a [`Scope`], the leading bits of
//! every key: in the prefix tries they are matched in full before the address's prefix is.

use crate::{
    abi::Counters,
    algo::{bucket::Bucket, window::WindowState},
};

/// Bytes of the longest address (IPv6); an IPv4 address fills the first four.
pub const ADDR_BYTES: usize = 16;

/// Bits of a [`Scope`]: the part of a [`PrefixKey`] that always matches in full.
pub const SCOPE_BITS: u32 = 96;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const PROTOCOL_ANY: u8 = 0;
pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;

pub const PORT_ANY: u16 = 0;

/// Names of the maps and programs in the `rein-net` object.
pub const NET_RULES_MAP: &str = "REIN_NET_RULES";
pub const NET_COUNTERS_MAP: &str = "REIN_NET_COUNTERS";
pub const NET_SOURCES_MAP: &str = "REIN_NET_SOURCES";
pub const NET_DESTINATIONS_MAP: &str = "REIN_NET_DESTINATIONS";
pub const NET_PAIRS_MAP: &str = "REIN_NET_PAIRS";
pub const NET_TC_INGRESS_PROGRAM: &str = "rein_net_tc_ingress";
pub const NET_TC_EGRESS_PROGRAM: &str = "rein_net_tc_egress";
pub const NET_XDP_PROGRAM: &str = "rein_net_xdp";
/// Pass-everything programs: the benchmark's baseline.
pub const NET_PASS_TC_PROGRAM: &str = "rein_net_pass_tc";
pub const NET_PASS_XDP_PROGRAM: &str = "rein_net_pass_xdp";
pub const NET_PER_SOURCE_MAP: &str = "REIN_NET_PER_SOURCE";
pub const NET_SKETCH_MAP: &str = "REIN_NET_SKETCH";
pub const NET_HEAVY_MAP: &str = "REIN_NET_HEAVY";
pub const NET_SHAPES_MAP: &str = "REIN_NET_SHAPES";
/// One entry: the union of the `shape_bit`s of the new-connection rules, which only a TCP SYN
/// looks up (a map of its own: a pinned map's size is part of the layout).
pub const NET_SYN_SHAPES_MAP: &str = "REIN_NET_SYN_SHAPES";
/// The connection attempts a new-connection rule admitted ([`SynKey`]): their retransmitted
/// SYNs pass without a charge.
pub const NET_SYN_ADMITTED_MAP: &str = "REIN_NET_SYN_ADMITTED";

/// `Scope::kind` of rules that limit traffic (every rule before new-connection limits).
pub const KIND_TRAFFIC: u8 = 0;
/// `Scope::kind` of rules that limit new TCP connections: only a SYN without ACK looks them up.
pub const KIND_CONNECTIONS: u8 = 1;

/// Connection attempts remembered at once, over all rules (least recently seen go first).
pub const MAX_ADMITTED_SYNS: u32 = 1 << 16;

/// The lookup maps, as [`shape_bit`] numbers them.
pub const SHAPE_DESTINATION: u32 = 0;
pub const SHAPE_SOURCE: u32 = 1;
pub const SHAPE_PAIR: u32 = 2;

/// The bit of one lookup the programs may make: one of the three maps for one way of naming
/// protocol and port. The shapes map holds the union of the bits of every rule, and the programs
/// skip the lookups whose bit is clear: a host with only destination-prefix rules makes one
/// lookup per packet, not twelve.
pub const fn shape_bit(names_port: bool, names_protocol: bool, map: u32) -> u32 {
    let variant = match (names_port, names_protocol) {
        (true, true) => 0,
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => 3,
    };
    1 << (variant * 3 + map)
}

/// `Scope::direction` of rules the XDP program applies: apart from tc ingress rules on the same
/// interface, so that a packet both hooks see is charged once, by the hook its rule names.
pub const HOOK_XDP: u8 = 2;

/// The most rules the programs' tables can be made for (userspace sizes them, up to this).
pub const MAX_NET_RULES: u32 = 1 << 20;

/// Sources the exact per-source mode tracks at once, over all rules (least recently seen go
/// first).
pub const MAX_TRACKED_SOURCES: u32 = 1 << 16;
/// Cells of all count-min sketches together (8 bytes each).
pub const MAX_SKETCH_CELLS: u32 = 1 << 20;
/// Rows a sketch may have.
pub const MAX_SKETCH_DEPTH: u32 = 8;
/// Heavy sources the sketch mode remembers, over all rules, for `list`.
pub const MAX_HEAVY_SOURCES: u32 = 4096;

/// Where and for what a rule holds, as the first 12 bytes of every key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub ifindex: u32,
    /// A `crate::Direction` discriminant.
    pub direction: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// An IP protocol number, or [`PROTOCOL_ANY`].
    pub protocol: u8,
    /// [`KIND_TRAFFIC`] or [`KIND_CONNECTIONS`]: both kinds of rule share the tries, so a
    /// service may have a traffic limit and a new-connection limit at once.
    pub kind: u8,
    /// Destination port in host order, or [`PORT_ANY`].
    pub port: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<Scope>() * 8 == SCOPE_BITS as usize);

impl Scope {
    pub const fn new(ifindex: u32, direction: u8, family: u8, protocol: u8, port: u16) -> Self {
        Self {
            ifindex,
            direction,
            family,
            protocol,
            kind: KIND_TRAFFIC,
            port,
            _pad2: 0,
        }
    }

    /// The same scope for rules of `kind`.
    pub const fn of_kind(self, kind: u8) -> Self {
        Self { kind, ..self }
    }
}

/// Key of the source and destination prefix tries (the data after the trie's 4-byte prefix
/// length): [`SCOPE_BITS`] plus the address prefix are significant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    pub scope: Scope,
    pub addr: [u8; ADDR_BYTES],
}
const _: () = assert!(core::mem::size_of::<PrefixKey>() == 28);

/// Key of the exact (source, destination) pair map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub scope: Scope,
    pub source: [u8; ADDR_BYTES],
    pub destination: [u8; ADDR_BYTES],
}
const _: () = assert!(core::mem::size_of::<PairKey>() == 44);

/// What a key leads to: a rule, and how specific the match through this key is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub rule: u32,
    pub specificity: u32,
}
const _: () = assert!(core::mem::size_of::<RuleMatch>() == 8);

/// How specific a rule is, the larger the more: first the address bits it fixes (a pair fixes
/// both addresses, so it beats any prefix; a rule without addresses fixes none), then a named
/// port, then a named protocol, and last a destination prefix over a source prefix of the same
/// length. Two rules cannot tie: they would have the same key.
pub const fn specificity(
    address_bits: u32,
    names_port: bool,
    names_protocol: bool,
    destination: bool,
) -> u32 {
    (address_bits << 3)
        | ((names_port as u32) << 2)
        | ((names_protocol as u32) << 1)
        | destination as u32
}

/// `NetRule::algorithm` values.
pub const ALGORITHM_TOKEN_BUCKET: u32 = 0;
pub const ALGORITHM_FIXED_WINDOW: u32 = 1;
pub const ALGORITHM_SLIDING_WINDOW: u32 = 2;

/// `NetRule::flags`: the limit counts packets, not bytes.
pub const FLAG_PACKETS: u32 = 1;
/// `NetRule::flags`: each source address has its own bucket or windows (exact, least recently
/// seen evicted first).
pub const FLAG_PER_SOURCE: u32 = 2;
/// `NetRule::flags` with [`FLAG_PER_SOURCE`]: sources are counted in the rule's count-min
/// sketch instead of exactly.
pub const FLAG_SKETCH: u32 = 4;
/// `NetRule::flags`: a new-connection limit (a token bucket): a SYN costs `bucket.ns_per_byte`
/// ns as it is, unshifted, so that rates down to one an hour fit (a packet bucket's shifted
/// cost holds no less than 60 a second).
pub const FLAG_CONNECTIONS: u32 = 8;

/// Value of the rule map: the limit and its live state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRule {
    /// One of the `ALGORITHM_*` values.
    pub algorithm: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Token bucket: its cost is per byte, or per packet with [`FLAG_PACKETS`].
    pub bucket: Bucket,
    /// Windows: their length, capacity (in units) and bytes per unit (1 for packets).
    pub window_ns: u64,
    pub capacity: u32,
    pub unit: u32,
    /// Windows: the counts (compare-and-swap only) and when a packet last passed.
    pub window: WindowState,
    pub last_pass_ns: u64,
    /// Sketch mode: the rule's cells are `sketch_offset..+width*depth` of the sketch map.
    pub sketch_offset: u32,
    pub sketch_width: u32,
    pub sketch_depth: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NetRule>() == 80);

/// Key of the per-source state (exact mode) and of the heavy sources (sketch mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub rule: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; ADDR_BYTES],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 24);

impl SourceKey {
    pub const fn new(rule: u32, family: u8, addr: [u8; ADDR_BYTES]) -> Self {
        Self {
            rule,
            family,
            _pad: [0; 3],
            addr,
        }
    }
}

/// One source's limit state and counters. In exact mode `state` is the source's bucket `tat`
/// or [`WindowState`]; for a heavy source of a sketch it is the last estimate (units of the
/// window, or ns of debt for a bucket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    pub state: u64,
    pub last_pass_ns: u64,
    pub counters: Counters,
}
const _: () = assert!(core::mem::size_of::<SourceState>() == 48);

/// Key of the admitted connection attempts: the rule, the connection's addresses and ports,
/// and the SYN's initial sequence number (a retransmitted SYN repeats it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SynKey {
    pub rule: u32,
    pub family: u8,
    pub _pad: u8,
    pub source_port: u16,
    pub source: [u8; ADDR_BYTES],
    pub destination: [u8; ADDR_BYTES],
    pub port: u16,
    pub _pad2: u16,
    pub isn: u32,
}
const _: () = assert!(core::mem::size_of::<SynKey>() == 48);
