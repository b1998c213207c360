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

use crate::{Bucket, window::WindowState};

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
    pub _pad: u8,
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
            _pad: 0,
            port,
            _pad2: 0,
        }
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
}
const _: () = assert!(core::mem::size_of::<NetRule>() == 64);
