//! Address-aware limits on interfaces (`rein net`): what a rule matches and how it limits, and
//! where the kernel finds it (`rein_common::net`).
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use rein_common::{
    Bucket, Direction,
    net::{
        ADDR_BYTES, ALGORITHM_FIXED_WINDOW, ALGORITHM_SLIDING_WINDOW, ALGORITHM_TOKEN_BUCKET,
        FAMILY_IPV4, FAMILY_IPV6, FLAG_CONNECTIONS, FLAG_PACKETS, FLAG_PER_SOURCE, FLAG_SKETCH,
        HOOK_XDP, KIND_CONNECTIONS, KIND_TRAFFIC, MAX_SKETCH_CELLS, MAX_SKETCH_DEPTH, NetRule,
        PORT_ANY, PROTOCOL_ANY, PairKey, PrefixKey, SCOPE_BITS, SHAPE_DESTINATION, SHAPE_PAIR,
        SHAPE_SOURCE, Scope, shape_bit, specificity,
    },
    window::{MAX_WINDOW_UNITS, WindowState, unit_for},
};
use serde::{Deserialize, Serialize};

use crate::{
    limit::{full_bucket, ns_per_unit},
    units::EventRate,
};

/// Why a match or a limit of a net rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an address or a prefix (ADDRESS or ADDRESS/LENGTH)")]
    NotACidr(String),
    #[error("{input:?}: a prefix length of {length} is longer than the address ({max} bits)")]
    PrefixTooLong {
        input: String,
        length: u32,
        max: u32,
    },
    #[error("{0:?} has host bits set after its prefix; write the network address")]
    HostBitsSet(String),
    #[error("the source and the destination are not of the same address family")]
    MixedFamilies,
    #[error(
        "a rule with both a source and a destination matches an address pair: both must be single \
         addresses (/32 or /128)"
    )]
    PairOfPrefixes,
    #[error("a window of 0 holds nothing")]
    EmptyWindow,
    #[error("a window may last at most {max_seconds} s")]
    WindowTooLong { max_seconds: u64 },
    #[error("a capacity of 0 passes nothing")]
    NoCapacity,
    #[error(
        "a token bucket counts at least {min} packets/s; for fewer, use --algo fixed-window or \
         sliding-window"
    )]
    PacketRateTooLow { min: u64 },
    #[error("a capacity of {capacity} packets per window is more than {max}")]
    TooManyPackets { capacity: u64, max: u32 },
    #[error(
        "a new-connection limit counts TCP SYNs a device receives: it needs protocol tcp and \
         ingress (tc or XDP)"
    )]
    ConnectionsNeedTcpIngress,
    #[error("a burst of {burst} connections is out of range: 1 to {max}")]
    ConnectionBurst { burst: u64, max: u64 },
    #[error("{0:?} is not a sketch size: write WIDTHxDEPTH, e.g. 4096x4")]
    NotASketchSize(String),
    #[error(
        "a sketch of {width}x{depth} is out of range: width 64 to {max_cells}, depth 1 to \
         {max_depth}, at most {max_cells} cells"
    )]
    SketchOutOfRange {
        width: u64,
        depth: u64,
        max_depth: u32,
        max_cells: u32,
    },
}

/// An address prefix whose host bits are zero: `10.0.0.0/8`, `2001:db8::/32`, or a single
/// address. An [`IpNet`] that cannot hold host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    pub fn length(&self) -> u32 {
        u32::from(self.0.prefix_len())
    }

    /// The address's bit count: 32 or 128.
    pub fn max_length(&self) -> u32 {
        u32::from(self.0.max_prefix_len())
    }

    /// A single address rather than a prefix.
    pub fn is_address(&self) -> bool {
        self.length() == self.max_length()
    }

    pub(crate) fn family(&self) -> u8 {
        match self.0 {
            IpNet::V4(_) => FAMILY_IPV4,
            IpNet::V6(_) => FAMILY_IPV6,
        }
    }

    pub(crate) fn bytes(&self) -> [u8; ADDR_BYTES] {
        address_bytes(self.addr())
    }
}

/// The address as the kernel keys hold it: IPv4 in the first four bytes.
fn address_bytes(addr: IpAddr) -> [u8; ADDR_BYTES] {
    let mut bytes = [0u8; ADDR_BYTES];
    match addr {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

impl FromStr for Cidr {
    type Err = NetError;

    fn from_str(input: &str) -> Result<Self, NetError> {
        let not_a_cidr = || NetError::NotACidr(input.to_owned());
        let net = match input.split_once('/') {
            None => IpNet::from(input.parse::<IpAddr>().map_err(|_| not_a_cidr())?),
            Some((addr, length)) => {
                let addr: IpAddr = addr.parse().map_err(|_| not_a_cidr())?;
                let length: u8 = length.parse().map_err(|_| not_a_cidr())?;
                IpNet::new(addr, length).map_err(|_| NetError::PrefixTooLong {
                    input: input.to_owned(),
                    length: u32::from(length),
                    max: if addr.is_ipv4() { 32 } else { 128 },
                })?
            }
        };
        if net.trunc() != net {
            return Err(NetError::HostBitsSet(input.to_owned()));
        }
        Ok(Self(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_address() {
            write!(f, "{}", self.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where on an interface a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetHook {
    /// tc clsact ingress (tcx).
    TcIngress,
    /// tc clsact egress (tcx).
    TcEgress,
    /// XDP, for ingress: before the kernel allocates anything for the packet.
    Xdp,
}

impl NetHook {
    pub const ALL: [NetHook; 3] = [NetHook::TcIngress, NetHook::TcEgress, NetHook::Xdp];

    /// `Scope::direction` of the hook's rules.
    pub fn scope_code(self) -> u8 {
        match self {
            Self::TcIngress => Direction::Ingress as u8,
            Self::TcEgress => Direction::Egress as u8,
            Self::Xdp => HOOK_XDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::TcIngress => "tc-ingress",
            Self::TcEgress => "tc-egress",
            Self::Xdp => "xdp",
        }
    }
}

/// Whose traffic a rule's bucket (or window) counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Sources {
    /// All matching traffic together.
    Shared,
    /// Each source address on its own, exactly (a table of the most recent sources).
    Exact,
    /// Each source address, estimated in a count-min sketch of bounded size.
    Sketch { size: SketchSize },
}

/// A count-min sketch's width (cells per row) and depth (rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SketchSize {
    width: u32,
    depth: u32,
}

impl SketchSize {
    pub const MIN_WIDTH: u32 = 64;

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn cells(&self) -> u32 {
        self.width * self.depth
    }

    /// Kernel memory of the sketch's cells: 8 bytes each.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.cells()) * 8
    }
}

impl FromStr for SketchSize {
    type Err = NetError;

    fn from_str(input: &str) -> Result<Self, NetError> {
        let bad = || NetError::NotASketchSize(input.to_owned());
        let (width, depth) = input.split_once(['x', 'X']).ok_or_else(bad)?;
        let width: u64 = width.trim().parse().map_err(|_| bad())?;
        let depth: u64 = depth.trim().parse().map_err(|_| bad())?;
        let fits = (u64::from(Self::MIN_WIDTH)..=u64::from(MAX_SKETCH_CELLS)).contains(&width)
            && (1..=u64::from(MAX_SKETCH_DEPTH)).contains(&depth)
            && width * depth <= u64::from(MAX_SKETCH_CELLS);
        if !fits {
            return Err(NetError::SketchOutOfRange {
                width,
                depth,
                max_depth: MAX_SKETCH_DEPTH,
                max_cells: MAX_SKETCH_CELLS,
            });
        }
        // In range by the check above.
        Ok(Self {
            width: width as u32,
            depth: depth as u32,
        })
    }
}

impl fmt::Display for SketchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.depth)
    }
}

impl Serialize for SketchSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SketchSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// IP protocols a rule may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    pub(crate) fn number(self) -> u8 {
        match self {
            Self::Tcp => rein_common::net::PROTOCOL_TCP,
            Self::Udp => rein_common::net::PROTOCOL_UDP,
        }
    }
}

/// The packets a rule covers, on an interface and in a direction. Parsed, so it cannot hold a
/// combination the kernel cannot look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetMatch {
    ifindex: u32,
    hook: NetHook,
    /// `KIND_TRAFFIC` or `KIND_CONNECTIONS`: part of every key, so the two kinds of rule on
    /// the same packets do not collide.
    kind: u8,
    addresses: Addresses,
    protocol: Option<Protocol>,
    port: Option<u16>,
}

/// Which addresses a rule names: at most one prefix, or an exact pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Addresses {
    Any,
    /// Every address of one family: a `/0` prefix, source or destination alike.
    Family(u8),
    Source(Cidr),
    Destination(Cidr),
    Pair {
        source: Cidr,
        destination: Cidr,
    },
}

/// Where a rule sits in the kernel's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The source prefix trie: the key and its prefix length (scope bits included).
    Source(PrefixKey, u32),
    /// The destination prefix trie.
    Destination(PrefixKey, u32),
    /// The exact pair map.
    Pair(PairKey),
}

impl NetMatch {
    /// A rule without addresses matches both families: pass each family's match separately
    /// (see [`NetMatch::families`]).
    pub fn new(
        ifindex: u32,
        hook: NetHook,
        source: Option<Cidr>,
        destination: Option<Cidr>,
        protocol: Option<Protocol>,
        port: Option<u16>,
    ) -> Result<Self, NetError> {
        let addresses = match (source, destination) {
            (None, None) => Addresses::Any,
            (Some(all), None) | (None, Some(all)) if all.length() == 0 => {
                Addresses::Family(all.family())
            }
            (Some(source), None) => Addresses::Source(source),
            (None, Some(destination)) => Addresses::Destination(destination),
            (Some(source), Some(destination)) => {
                if source.family() != destination.family() {
                    return Err(NetError::MixedFamilies);
                }
                if !source.is_address() || !destination.is_address() {
                    return Err(NetError::PairOfPrefixes);
                }
                Addresses::Pair {
                    source,
                    destination,
                }
            }
        };
        Ok(Self {
            ifindex,
            hook,
            kind: KIND_TRAFFIC,
            addresses,
            protocol,
            // Port 0 is "any" to the kernel.
            port: port.filter(|&p| p != PORT_ANY),
        })
    }

    /// The same match for a new-connection rule: looked up by TCP SYNs only, in keys of their
    /// own.
    pub fn for_connections(self) -> Self {
        Self {
            kind: KIND_CONNECTIONS,
            ..self
        }
    }

    /// Whether TCP SYNs look this rule up (its shape bits go to the SYN shapes).
    pub fn is_connections(&self) -> bool {
        self.kind == KIND_CONNECTIONS
    }

    /// The address families the rule covers: its addresses', or both.
    pub fn families(&self) -> &'static [u8] {
        match self.addresses {
            Addresses::Any => &[FAMILY_IPV4, FAMILY_IPV6],
            Addresses::Family(FAMILY_IPV4) => &[FAMILY_IPV4],
            Addresses::Family(_) => &[FAMILY_IPV6],
            Addresses::Source(c)
            | Addresses::Destination(c)
            | Addresses::Pair { source: c, .. } => {
                if c.family() == FAMILY_IPV4 {
                    &[FAMILY_IPV4]
                } else {
                    &[FAMILY_IPV6]
                }
            }
        }
    }

    /// Whether the two rules would take the same entry of a lookup map (the same packets, in
    /// at least one family): the second would overwrite the first.
    pub fn overlaps(&self, other: &NetMatch) -> bool {
        self.families().iter().any(|family| {
            other.families().contains(family)
                && self.placement(*family).0 == other.placement(*family).0
        })
    }

    /// The lookup the programs must make to find this rule (`rein_common::net::shape_bit`).
    pub fn shape_bits(&self) -> u32 {
        let map = match self.addresses {
            Addresses::Any | Addresses::Family(_) | Addresses::Destination(_) => SHAPE_DESTINATION,
            Addresses::Source(_) => SHAPE_SOURCE,
            Addresses::Pair { .. } => SHAPE_PAIR,
        };
        shape_bit(self.port.is_some(), self.protocol.is_some(), map)
    }

    /// The rule's entry for `family` (one of [`NetMatch::families`]) and its specificity.
    pub fn placement(&self, family: u8) -> (Placement, u32) {
        let scope = Scope::new(
            self.ifindex,
            self.hook.scope_code(),
            family,
            self.protocol.map_or(PROTOCOL_ANY, Protocol::number),
            self.port.unwrap_or(PORT_ANY),
        )
        .of_kind(self.kind);
        let (names_port, names_protocol) = (self.port.is_some(), self.protocol.is_some());
        match self.addresses {
            // Every address of the family: the destination trie's empty prefix.
            Addresses::Any | Addresses::Family(_) => (
                Placement::Destination(
                    PrefixKey {
                        scope,
                        addr: [0; ADDR_BYTES],
                    },
                    SCOPE_BITS,
                ),
                specificity(0, names_port, names_protocol, false),
            ),
            Addresses::Source(cidr) => (
                Placement::Source(
                    PrefixKey {
                        scope,
                        addr: cidr.bytes(),
                    },
                    SCOPE_BITS + cidr.length(),
                ),
                specificity(cidr.length(), names_port, names_protocol, false),
            ),
            Addresses::Destination(cidr) => (
                Placement::Destination(
                    PrefixKey {
                        scope,
                        addr: cidr.bytes(),
                    },
                    SCOPE_BITS + cidr.length(),
                ),
                specificity(cidr.length(), names_port, names_protocol, true),
            ),
            Addresses::Pair {
                source,
                destination,
            } => (
                Placement::Pair(PairKey {
                    scope,
                    source: source.bytes(),
                    destination: destination.bytes(),
                }),
                specificity(2 * source.length(), names_port, names_protocol, true),
            ),
        }
    }
}

/// What a rule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Bytes,
    Packets,
}

/// How a rule limits what it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum NetLimit {
    /// `rate` bytes (or packets) per second with a burst of `burst`.
    TokenBucket { per: Per, rate: u64, burst: u64 },
    /// At most `capacity` bytes (or packets) in each window of `window_ns`.
    FixedWindow {
        per: Per,
        capacity: u64,
        window_ns: u64,
    },
    /// At most `capacity` over any sliding window of `window_ns` (previous window weighted).
    SlidingWindow {
        per: Per,
        capacity: u64,
        window_ns: u64,
    },
    /// At most `rate` new TCP connections (SYNs) with a burst of `burst` of them.
    Connections { rate: EventRate, burst: u64 },
}

/// Largest burst of a new-connection limit: its time at the slowest rate (1/h) fits a u64.
pub const MAX_CONNECTION_BURST: u64 = 1_000_000;

/// The slowest packet rate a token bucket takes: a packet's cost in ns (shifted by
/// `COST_SHIFT`) must stay within what the kernel's arithmetic holds, `MAX_NS_PER_BYTE`.
pub const MIN_BUCKET_PACKET_RATE: u64 = (1_000_000_000u64 << rein_common::bucket::COST_SHIFT)
    .div_ceil(rein_common::bucket::MAX_NS_PER_BYTE);

/// Longest window: the kernel's weight arithmetic needs it under 2^47 ns; an hour is plenty.
pub const MAX_WINDOW_SECONDS: u64 = 3600;

impl NetLimit {
    /// What the limit counts: bytes or packets.
    pub fn per(&self) -> Per {
        match *self {
            Self::TokenBucket { per, .. }
            | Self::FixedWindow { per, .. }
            | Self::SlidingWindow { per, .. } => per,
            // A SYN is a packet.
            Self::Connections { .. } => Per::Packets,
        }
    }

    /// A new-connection limit, checked.
    pub fn connections(rate: EventRate, burst: u64) -> Result<Self, NetError> {
        if !(1..=MAX_CONNECTION_BURST).contains(&burst) {
            return Err(NetError::ConnectionBurst {
                burst,
                max: MAX_CONNECTION_BURST,
            });
        }
        Ok(Self::Connections { rate, burst })
    }

    /// A token bucket of `rate` bytes (or packets) per second and `burst` of them, checked.
    pub fn token_bucket(per: Per, rate: u64, burst: u64) -> Result<Self, NetError> {
        if per == Per::Packets && rate < MIN_BUCKET_PACKET_RATE {
            return Err(NetError::PacketRateTooLow {
                min: MIN_BUCKET_PACKET_RATE,
            });
        }
        Ok(Self::TokenBucket { per, rate, burst })
    }

    /// A window limit, checked.
    pub fn window(
        sliding: bool,
        per: Per,
        capacity: u64,
        window_ns: u64,
    ) -> Result<Self, NetError> {
        if window_ns == 0 {
            return Err(NetError::EmptyWindow);
        }
        if window_ns > MAX_WINDOW_SECONDS * 1_000_000_000 {
            return Err(NetError::WindowTooLong {
                max_seconds: MAX_WINDOW_SECONDS,
            });
        }
        if capacity == 0 {
            return Err(NetError::NoCapacity);
        }
        if per == Per::Packets && capacity > u64::from(MAX_WINDOW_UNITS) {
            return Err(NetError::TooManyPackets {
                capacity,
                max: MAX_WINDOW_UNITS,
            });
        }
        Ok(if sliding {
            Self::SlidingWindow {
                per,
                capacity,
                window_ns,
            }
        } else {
            Self::FixedWindow {
                per,
                capacity,
                window_ns,
            }
        })
    }

    /// The kernel's rule, with a full bucket or empty windows at `now_ns`.
    pub fn rule(&self, now_ns: u64) -> NetRule {
        let flags = |per: Per| if per == Per::Packets { FLAG_PACKETS } else { 0 };
        let empty = NetRule {
            algorithm: ALGORITHM_TOKEN_BUCKET,
            flags: 0,
            bucket: Bucket {
                ns_per_byte: 0,
                burst_ns: 0,
                tat: now_ns,
            },
            window_ns: 0,
            capacity: 0,
            unit: 1,
            window: WindowState::default(),
            last_pass_ns: 0,
            sketch_offset: 0,
            sketch_width: 0,
            sketch_depth: 0,
            _pad: 0,
        };
        match *self {
            // Unshifted (FLAG_CONNECTIONS): at most 3.6e12 ns a connection, times at most
            // MAX_CONNECTION_BURST.
            Self::Connections { rate, burst } => NetRule {
                flags: FLAG_CONNECTIONS | FLAG_PACKETS,
                bucket: Bucket {
                    ns_per_byte: rate.cost_ns(),
                    burst_ns: rate.cost_ns().saturating_mul(burst),
                    tat: now_ns,
                },
                ..empty
            },
            Self::TokenBucket { per, rate, burst } => NetRule {
                flags: flags(per),
                bucket: full_bucket(ns_per_unit(1_000_000_000, rate), burst, now_ns),
                ..empty
            },
            Self::FixedWindow {
                per,
                capacity,
                window_ns,
            }
            | Self::SlidingWindow {
                per,
                capacity,
                window_ns,
            } => {
                let unit = match per {
                    Per::Bytes => unit_for(capacity),
                    Per::Packets => 1,
                };
                NetRule {
                    algorithm: if matches!(self, Self::FixedWindow { .. }) {
                        ALGORITHM_FIXED_WINDOW
                    } else {
                        ALGORITHM_SLIDING_WINDOW
                    },
                    flags: flags(per),
                    window_ns,
                    // At most MAX_WINDOW_UNITS by construction of the unit.
                    capacity: u32::try_from(capacity / u64::from(unit)).unwrap_or(MAX_WINDOW_UNITS),
                    unit,
                    ..empty
                }
            }
        }
    }
}

/// A `rein net` rule as the operator gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRuleSpec {
    pub device: String,
    pub hook: NetHook,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub limit: NetLimit,
    pub sources: Sources,
}

impl NetRuleSpec {
    /// The rule's match on interface `ifindex`, checked.
    pub fn matching(&self, ifindex: u32) -> Result<NetMatch, NetError> {
        let matching = NetMatch::new(
            ifindex,
            self.hook,
            self.source,
            self.destination,
            self.protocol,
            self.port,
        )?;
        if !self.limits_connections() {
            return Ok(matching);
        }
        if self.hook == NetHook::TcEgress || self.protocol != Some(Protocol::Tcp) {
            return Err(NetError::ConnectionsNeedTcpIngress);
        }
        Ok(matching.for_connections())
    }

    /// Whether the rule limits new connections (TCP SYNs) rather than traffic.
    pub fn limits_connections(&self) -> bool {
        matches!(self.limit, NetLimit::Connections { .. })
    }

    /// The kernel's rule, fresh at `now_ns`.
    pub fn rule(&self, now_ns: u64, sketch_offset: u32) -> NetRule {
        let mut rule = self.limit.rule(now_ns);
        self.sources.apply(&mut rule, sketch_offset);
        rule
    }
}

impl Sources {
    /// Sets the rule's per-source mode; a sketch's cells start at `sketch_offset` of the
    /// sketch map.
    pub fn apply(&self, rule: &mut NetRule, sketch_offset: u32) {
        match *self {
            Self::Shared => {}
            Self::Exact => rule.flags |= FLAG_PER_SOURCE,
            Self::Sketch { size } => {
                rule.flags |= FLAG_PER_SOURCE | FLAG_SKETCH;
                rule.sketch_offset = sketch_offset;
                rule.sketch_width = size.width;
                rule.sketch_depth = size.depth;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_refuse_clearly() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!((c.length(), c.to_string()), (8, "10.0.0.0/8".to_owned()));
        assert!("2001:db8::/32".parse::<Cidr>().is_ok());
        assert!("198.18.0.1".parse::<Cidr>().unwrap().is_address());
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(NetError::HostBitsSet("10.0.0.1/8".into()))
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(NetError::PrefixTooLong { .. })
        ));
        assert!(matches!("ten".parse::<Cidr>(), Err(NetError::NotACidr(_))));
        assert!("0.0.0.0/0".parse::<Cidr>().is_ok());
        assert!("::1".parse::<Cidr>().unwrap().is_address());
        assert!("::/0".parse::<Cidr>().is_ok());
        assert!("2001:db8::1/64".parse::<Cidr>().is_err());
    }

    #[test]
    fn a_pair_needs_two_addresses_of_one_family() {
        let net = |s: &str| Some(s.parse::<Cidr>().unwrap());
        let new = |src, dst| NetMatch::new(1, NetHook::TcIngress, src, dst, None, None);
        assert_eq!(
            new(net("10.0.0.0/8"), net("10.0.0.1")),
            Err(NetError::PairOfPrefixes)
        );
        assert_eq!(
            new(net("10.0.0.1"), net("::1")),
            Err(NetError::MixedFamilies)
        );
        assert!(new(net("10.0.0.1"), net("10.0.0.2")).is_ok());
    }

    #[test]
    fn more_specific_rules_rank_higher() {
        let rank = |src: Option<&str>, dst: Option<&str>, proto, port| {
            let m = NetMatch::new(
                1,
                NetHook::TcIngress,
                src.map(|s| s.parse().unwrap()),
                dst.map(|s| s.parse().unwrap()),
                proto,
                port,
            )
            .unwrap();
            m.placement(m.families()[0]).1
        };
        let pair = rank(Some("10.0.0.1"), Some("10.0.0.2"), None, None);
        let host = rank(None, Some("10.0.0.2"), None, None);
        let service = rank(None, Some("10.0.0.2"), Some(Protocol::Tcp), Some(80));
        let net_dst = rank(None, Some("10.0.0.0/24"), None, None);
        let net_src = rank(Some("10.0.0.0/24"), None, None, None);
        let port_only = rank(None, None, None, Some(53));
        let any = rank(None, None, None, None);
        assert!(pair > service && service > host && host > net_dst);
        assert!(net_dst > net_src && net_src > port_only && port_only > any);
    }

    #[test]
    fn windows_are_checked_and_count_in_units() {
        assert_eq!(
            NetLimit::window(false, Per::Bytes, 100, 0),
            Err(NetError::EmptyWindow)
        );
        assert_eq!(
            NetLimit::window(true, Per::Bytes, 0, 1),
            Err(NetError::NoCapacity)
        );
        let big = NetLimit::window(true, Per::Bytes, 1 << 30, 1_000_000_000).unwrap();
        let rule = big.rule(0);
        assert_eq!((rule.unit, rule.capacity), (256, 1 << 22));
        assert_eq!(rule.algorithm, ALGORITHM_SLIDING_WINDOW);
    }

    #[test]
    fn a_packet_bucket_is_refused_where_its_cost_would_not_fit() {
        assert_eq!(MIN_BUCKET_PACKET_RATE, 60);
        assert!(NetLimit::token_bucket(Per::Packets, 59, 16).is_err());
        let slowest = NetLimit::token_bucket(Per::Packets, 60, 16)
            .unwrap()
            .rule(0);
        // Not clamped: 1/60 s a packet.
        let cost = rein_common::Bucket::cost_ns(&slowest.bucket, 1);
        assert!((16_666_666..=16_666_668).contains(&cost), "{cost}");
        assert!(NetLimit::token_bucket(Per::Bytes, 1, 1500).is_ok());
    }

    #[test]
    fn an_empty_prefix_is_every_address_of_its_family() {
        let new = |src: Option<&str>, dst: Option<&str>| {
            NetMatch::new(
                1,
                NetHook::TcIngress,
                src.map(|s| s.parse().unwrap()),
                dst.map(|s| s.parse().unwrap()),
                None,
                None,
            )
            .unwrap()
        };
        let any = new(None, None);
        let all_v4 = new(Some("0.0.0.0/0"), None);
        assert_eq!(all_v4, new(None, Some("0.0.0.0/0")));
        assert_eq!(all_v4.families(), [FAMILY_IPV4]);
        // The same map entry as the IPv4 half of a rule without addresses: a duplicate.
        assert!(any.overlaps(&all_v4) && all_v4.overlaps(&any));
        assert!(!all_v4.overlaps(&new(None, Some("::/0"))));
        assert!(!any.overlaps(&new(None, Some("10.0.0.0/8"))));
    }

    #[test]
    fn sketch_sizes_parse_within_bounds() {
        let size: SketchSize = "4096x4".parse().unwrap();
        assert_eq!((size.cells(), size.memory_bytes()), (16_384, 131_072));
        assert!(matches!(
            "4096".parse::<SketchSize>(),
            Err(NetError::NotASketchSize(_))
        ));
        assert!(matches!(
            "4096x9".parse::<SketchSize>(),
            Err(NetError::SketchOutOfRange { .. })
        ));
        assert!("32x2".parse::<SketchSize>().is_err());
        assert!("1048576x2".parse::<SketchSize>().is_err());
    }
}
