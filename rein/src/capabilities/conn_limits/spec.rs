//! A new-connection limit (`rein conn`, outbound) as the operator gave it: which connects it
//! counts (a destination, a protocol, a port, and whose), how many it lets through, and where
//! the kernel finds it (`rein_common::abi::conn`).
use std::{fmt, net::IpAddr, path::PathBuf, str::FromStr};

use rein_common::{
    conn::{
        CONN_FLAG_PER_CALLER, CONN_FORM_FILL, CONN_FORM_RATE, CONN_SCOPE_ALL, CONN_SCOPE_BITS,
        CONN_SCOPE_CGROUP, CONN_SCOPE_NETNS, ConnBucket, ConnKey, ConnRule, ConnScope, FillBucket,
        MAX_FILL_TOKENS, MIN_FILL_NS, conn_variant_bit,
    },
    net::{PORT_ANY, PROTOCOL_ANY, specificity},
};
use serde::{Deserialize, Serialize};

use crate::{
    capabilities::net_rules::spec::{Cidr, NetError, Protocol},
    units::{EventRate, Period},
};

/// Largest burst: far more connections than a host opens at once, and small enough that the
/// burst of the slowest rate (1/h) still fits the kernel's nanoseconds.
pub const MAX_BURST: u64 = 1_000_000;

/// Why a destination or a limit of a conn rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Address(#[from] NetError),
    #[error(
        "{0:?} is not a destination: write IP, IP/PREFIX, IP:PORT, IP/PREFIX:PORT or \
         [IPV6]:PORT"
    )]
    NotADestination(String),
    #[error("{0:?} is not a port from 1 to 65535")]
    BadPort(String),
    #[error("a burst of {0} is not from 1 to {MAX_BURST} connections")]
    BadBurst(u64),
    #[error("a bucket of {0} tokens is not from 1 to {MAX_FILL_TOKENS}")]
    BadMaxTokens(u64),
    #[error("{0} tokens per fill is not from 1 to {MAX_FILL_TOKENS}")]
    BadTokensPerFill(u64),
    #[error("a fill interval of {0} ns is shorter than {MIN_FILL_NS} ns (1ms)")]
    FillTooShort(u64),
}

/// Where connections go: an address or a prefix, and a port or every port. Parsed from
/// `IP[/PREFIX][:PORT]`, an IPv6 address with a port in brackets (`[2001:db8::1]:443`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub cidr: Cidr,
    pub port: Option<u16>,
}

impl FromStr for Destination {
    type Err = ConnError;

    fn from_str(input: &str) -> Result<Self, ConnError> {
        let trimmed = input.trim();
        let (address, port) = if let Some(rest) = trimmed.strip_prefix('[') {
            let (address, after) = rest
                .split_once(']')
                .ok_or_else(|| ConnError::NotADestination(input.to_owned()))?;
            match after {
                "" => (address, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (address, Some(port)),
                    None => return Err(ConnError::NotADestination(input.to_owned())),
                },
            }
        } else {
            // One colon is IPv4's port; an IPv6 address has two or more, and takes its port
            // in brackets only.
            match trimmed.matches(':').count() {
                1 => trimmed
                    .split_once(':')
                    .map(|(address, port)| (address, Some(port)))
                    .ok_or_else(|| ConnError::NotADestination(input.to_owned()))?,
                _ => (trimmed, None),
            }
        };
        let cidr: Cidr = address.parse()?;
        let port = port.map(parse_port).transpose()?;
        Ok(Self { cidr, port })
    }
}

/// A port from 1 to 65535 (0 is "any port" to the kernel, so never a port of its own).
pub fn parse_port(input: &str) -> Result<u16, ConnError> {
    input
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|&port| port != PORT_ANY)
        .ok_or_else(|| ConnError::BadPort(input.to_owned()))
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.cidr.addr()) {
            (None, _) => write!(f, "{}", self.cidr),
            (Some(port), IpAddr::V4(_)) => write!(f, "{}:{port}", self.cidr),
            (Some(port), IpAddr::V6(_)) => write!(f, "[{}]:{port}", self.cidr),
        }
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whose connects a rule counts, resolved to what the kernel keys on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ConnScopeSpec {
    /// Every process of the machine.
    All,
    /// The processes in one cgroup v2 and below it.
    Cgroup {
        /// Path from the cgroup v2 root.
        path: String,
        id: u64,
        /// Its level in the tree (the root is 0): the programs look up one ancestor per level.
        level: u32,
    },
    /// The processes of one network namespace.
    Netns {
        /// As the operator named it (e.g. /run/netns/x).
        path: PathBuf,
        cookie: u64,
    },
}

impl ConnScopeSpec {
    fn kind(&self) -> u8 {
        match self {
            Self::All => CONN_SCOPE_ALL,
            Self::Netns { .. } => CONN_SCOPE_NETNS,
            Self::Cgroup { .. } => CONN_SCOPE_CGROUP,
        }
    }

    fn id(&self) -> u64 {
        match self {
            Self::All => 0,
            Self::Netns { cookie, .. } => *cookie,
            Self::Cgroup { id, .. } => *id,
        }
    }
}

impl fmt::Display for ConnScopeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => write!(f, "every process"),
            Self::Cgroup { path, .. } => write!(f, "cgroup {path}"),
            Self::Netns { path, .. } => write!(f, "netns {}", path.display()),
        }
    }
}

/// How many connections a rule lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "kebab-case")]
pub enum ConnLimit {
    /// A continuous token bucket: `rate`, up to `burst` at once.
    Rate { rate: EventRate, burst: u64 },
    /// `max_tokens` to start with, `tokens_per_fill` more at each `fill_ns` boundary.
    Fill {
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_ns: u64,
    },
}

/// The default burst of `--rate`: one second at the rate, at least 5 (as iptables' `limit`),
/// so a client that opens its connections together is not refused at once.
pub const MIN_DEFAULT_BURST: u64 = 5;

impl ConnLimit {
    /// A token bucket, checked.
    pub fn rate(rate: EventRate, burst: Option<u64>) -> Result<Self, ConnError> {
        let burst = burst.unwrap_or_else(|| Self::default_burst(rate));
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(ConnError::BadBurst(burst));
        }
        Ok(Self::Rate { rate, burst })
    }

    pub fn default_burst(rate: EventRate) -> u64 {
        rate.per_second_ceil().clamp(MIN_DEFAULT_BURST, MAX_BURST)
    }

    /// A fill bucket, checked.
    pub fn fill(
        max_tokens: u64,
        tokens_per_fill: u64,
        interval: Period,
    ) -> Result<Self, ConnError> {
        let in_range = |n: u64| (1..=u64::from(MAX_FILL_TOKENS)).contains(&n);
        if !in_range(max_tokens) {
            return Err(ConnError::BadMaxTokens(max_tokens));
        }
        if !in_range(tokens_per_fill) {
            return Err(ConnError::BadTokensPerFill(tokens_per_fill));
        }
        let fill_ns = interval.nanos();
        if fill_ns < MIN_FILL_NS {
            return Err(ConnError::FillTooShort(fill_ns));
        }
        // In range by the checks above.
        Ok(Self::Fill {
            max_tokens: max_tokens as u32,
            tokens_per_fill: tokens_per_fill as u32,
            fill_ns,
        })
    }

    /// The kernel's rule, with a full bucket, a fill form's intervals counted from `now_ns`.
    pub fn rule(&self, now_ns: u64, per_caller: bool) -> ConnRule {
        let empty = ConnRule {
            form: CONN_FORM_RATE,
            flags: if per_caller { CONN_FLAG_PER_CALLER } else { 0 },
            cost_ns: 0,
            burst_ns: 0,
            anchor_ns: 0,
            fill_ns: 0,
            max_tokens: 0,
            tokens_per_fill: 0,
            state: 0,
        };
        match *self {
            Self::Rate { rate, burst } => {
                let cost_ns = rate.cost_ns();
                ConnRule {
                    cost_ns,
                    // At most an hour times MAX_BURST: far within u64.
                    burst_ns: cost_ns.saturating_mul(burst),
                    ..empty
                }
            }
            Self::Fill {
                max_tokens,
                tokens_per_fill,
                fill_ns,
            } => ConnRule {
                form: CONN_FORM_FILL,
                anchor_ns: now_ns,
                fill_ns,
                max_tokens,
                tokens_per_fill,
                ..empty
            },
        }
    }
}

impl fmt::Display for ConnLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Rate { rate, burst } => write!(f, "{rate} (burst {burst})"),
            Self::Fill {
                max_tokens,
                tokens_per_fill,
                fill_ns,
            } => {
                let interval = Period::try_from(fill_ns)
                    .map_or_else(|_| format!("{fill_ns}ns"), |p| p.to_string());
                write!(
                    f,
                    "{tokens_per_fill} per {interval} (up to {max_tokens} at once)"
                )
            }
        }
    }
}

/// Billionths of a token: the rate form holds fractions of a connection.
const NANO_TOKENS: u128 = 1_000_000_000;

/// The word of bucket `word` of rule `old` at `now`, carried into rule `new` (whose fill form,
/// if any, already has its anchor): the new bucket holds what the old one held, never more
/// than its own size. An edit of a limit thus hands out no fresh burst, and a lowered burst
/// takes away what is above it.
pub fn carry_bucket(old: &ConnRule, word: u64, new: &ConnRule, now: u64) -> u64 {
    let held: u128 = match ConnBucket::of(old) {
        ConnBucket::Rate { cost_ns, burst_ns } => {
            let owed = word.saturating_sub(now).min(burst_ns);
            u128::from(burst_ns - owed) * NANO_TOKENS / u128::from(cost_ns.max(1))
        }
        ConnBucket::Fill(fill) => u128::from(fill.tokens(word, now)) * NANO_TOKENS,
    };
    match ConnBucket::of(new) {
        ConnBucket::Rate { cost_ns, burst_ns } => {
            let held_ns = u64::try_from(held * u128::from(cost_ns) / NANO_TOKENS)
                .unwrap_or(u64::MAX)
                .min(burst_ns);
            // A full bucket is any time not after now; `now` itself keeps the word non-zero
            // only if it was.
            now.saturating_add(burst_ns - held_ns)
        }
        ConnBucket::Fill(fill) => {
            let tokens = u64::try_from(held / NANO_TOKENS)
                .unwrap_or(u64::MAX)
                .min(u64::from(fill.max_tokens));
            FillBucket::word(fill.interval(now), u64::from(fill.max_tokens) - tokens)
        }
    }
}

/// A `rein conn` rule as the operator gave it, its scope resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRuleSpec {
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    pub scope: ConnScopeSpec,
    pub limit: ConnLimit,
    /// Each caller network namespace has a bucket of its own.
    #[serde(default)]
    pub per_caller: bool,
}

impl ConnRuleSpec {
    /// The rule's key in the destination trie and its prefix length (scope bits included).
    pub fn key(&self) -> (ConnKey, u32) {
        let cidr = self.destination.cidr;
        let scope = ConnScope::new(
            self.scope.kind(),
            self.scope.id(),
            cidr.family(),
            self.protocol.map_or(PROTOCOL_ANY, Protocol::number),
            self.destination.port.unwrap_or(PORT_ANY),
        );
        (
            ConnKey {
                scope,
                addr: cidr.bytes(),
            },
            CONN_SCOPE_BITS + cidr.length(),
        )
    }

    /// How specific the match is within its scope: a longer prefix, then a port, then a
    /// protocol.
    pub fn specificity(&self) -> u32 {
        specificity(
            self.destination.cidr.length(),
            self.destination.port.is_some(),
            self.protocol.is_some(),
            true,
        )
    }

    /// The rule's bit of `ConnShapes::variants`.
    pub fn variant_bit(&self) -> u32 {
        conn_variant_bit(
            self.scope.kind(),
            self.destination.port.is_some(),
            self.protocol.is_some(),
        )
    }

    /// The rule's bit of `ConnShapes::cgroup_levels`, for cgroup-scoped rules.
    pub fn cgroup_level_bit(&self) -> u32 {
        match self.scope {
            ConnScopeSpec::Cgroup { level, .. } => 1u32.checked_shl(level).unwrap_or(0),
            _ => 0,
        }
    }

    /// The kernel's rule, fresh at `now_ns`.
    pub fn rule(&self, now_ns: u64) -> ConnRule {
        self.limit.rule(now_ns, self.per_caller)
    }
}

#[cfg(test)]
mod tests {
    use rein_common::conn::ConnShapes;

    use super::*;

    #[test]
    fn destinations_take_ports_and_brackets() {
        let d: Destination = "198.18.13.1:443".parse().unwrap();
        assert_eq!(
            (d.cidr.to_string(), d.port),
            ("198.18.13.1".into(), Some(443))
        );
        let d: Destination = "198.18.13.0/24".parse().unwrap();
        assert_eq!((d.cidr.length(), d.port), (24, None));
        let d: Destination = "198.18.13.0/24:80".parse().unwrap();
        assert_eq!((d.cidr.length(), d.port), (24, Some(80)));
        let d: Destination = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!((d.cidr.length(), d.port), (128, Some(443)));
        assert_eq!(d.to_string(), "[2001:db8::1]:443");
        let d: Destination = "fd00:13::/64".parse().unwrap();
        assert_eq!((d.cidr.length(), d.port), (64, None));
        let d: Destination = "[fd00:13::/64]:53".parse().unwrap();
        assert_eq!(d.to_string(), "[fd00:13::/64]:53");
        for (bad, needle) in [
            ("198.18.13.1:0", "port"),
            ("198.18.13.1:65536", "port"),
            ("198.18.13.1:x", "port"),
            ("198.18.13.1/24", "host bits"),
            ("198.18.13.0/33", "longer"),
            ("[2001:db8::1]443", "not a destination"),
            ("[2001:db8::1", "not a destination"),
            ("example.com", "not an address"),
        ] {
            let error = bad.parse::<Destination>().unwrap_err().to_string();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }

    #[test]
    fn an_edited_limit_keeps_what_the_bucket_held() {
        let now = 1_000_000_000_000;
        let rate = |r: &str, burst| {
            ConnLimit::rate(r.parse().unwrap(), Some(burst))
                .unwrap()
                .rule(now, false)
        };
        let tokens = |rule: &ConnRule, word| ConnBucket::of(rule).tokens(word, now);
        // 10/s burst 10, 8 taken: 2 held.
        let old = rate("10/s", 10);
        let word = now + 8 * 100_000_000;
        assert_eq!(tokens(&old, word), 2);
        // A faster rate and a bigger burst: still 2, not a fresh 100.
        let new = rate("100/s", 100);
        assert_eq!(tokens(&new, carry_bucket(&old, word, &new, now)), 2);
        // A smaller burst takes away what is above it.
        let full = rate("1/s", 1);
        assert_eq!(tokens(&full, carry_bucket(&old, 0, &full, now)), 1);
        // Into the fill form, keeping its anchor's intervals.
        let second = Period::try_from(1_000_000_000).unwrap();
        let mut fill = ConnLimit::fill(50, 5, second).unwrap().rule(now, false);
        fill.anchor_ns = now - 2_500_000_000;
        let carried = carry_bucket(&old, word, &fill, now);
        assert_eq!(tokens(&fill, carried), 2);
        // Its next fill is at the anchor's next boundary, half a second away.
        assert_eq!(ConnBucket::of(&fill).tokens(carried, now + 499_000_000), 2);
        assert_eq!(ConnBucket::of(&fill).tokens(carried, now + 500_000_000), 7);
        // And back: the fill bucket's 2 tokens are 2 at the new rate.
        assert_eq!(tokens(&old, carry_bucket(&fill, carried, &old, now)), 2);
    }

    #[test]
    fn limits_are_checked() {
        let rate: EventRate = "100/s".parse().unwrap();
        assert_eq!(
            ConnLimit::rate(rate, None).unwrap(),
            ConnLimit::Rate { rate, burst: 100 }
        );
        let slow: EventRate = "30/min".parse().unwrap();
        assert_eq!(ConnLimit::default_burst(slow), MIN_DEFAULT_BURST);
        assert_eq!(ConnLimit::rate(rate, Some(0)), Err(ConnError::BadBurst(0)));
        let second = Period::try_from(1_000_000_000).unwrap();
        assert!(ConnLimit::fill(0, 1, second).is_err());
        assert!(ConnLimit::fill(5, 0, second).is_err());
        assert!(ConnLimit::fill(u64::from(MAX_FILL_TOKENS) + 1, 1, second).is_err());
        assert!(ConnLimit::fill(u64::from(MAX_FILL_TOKENS), 1, second).is_ok());
    }

    #[test]
    fn a_rate_rule_costs_its_rate_and_bursts_its_burst() {
        let rate: EventRate = "100/s".parse().unwrap();
        let rule = ConnLimit::rate(rate, Some(20)).unwrap().rule(7, true);
        assert_eq!(rule.form, CONN_FORM_RATE);
        assert_eq!((rule.cost_ns, rule.burst_ns), (10_000_000, 200_000_000));
        assert_eq!((rule.flags, rule.state), (CONN_FLAG_PER_CALLER, 0));
        let second = Period::try_from(1_000_000_000).unwrap();
        let rule = ConnLimit::fill(5, 2, second).unwrap().rule(7, false);
        assert_eq!(rule.form, CONN_FORM_FILL);
        assert_eq!(
            (
                rule.anchor_ns,
                rule.fill_ns,
                rule.max_tokens,
                rule.tokens_per_fill
            ),
            (7, 1_000_000_000, 5, 2)
        );
    }

    #[test]
    fn keys_hold_scope_protocol_and_port() {
        let spec = |destination: &str, protocol, scope| ConnRuleSpec {
            destination: destination.parse().unwrap(),
            protocol,
            scope,
            limit: ConnLimit::rate("1/s".parse().unwrap(), None).unwrap(),
            per_caller: false,
        };
        let cgroup = ConnScopeSpec::Cgroup {
            path: "/a/b".into(),
            id: 0x1_0000_0002,
            level: 2,
        };
        let rule = spec("198.18.13.0/24:80", Some(Protocol::Tcp), cgroup);
        let (key, length) = rule.key();
        assert_eq!(length, CONN_SCOPE_BITS + 24);
        assert_eq!(
            (key.scope.kind, key.scope.protocol, key.scope.port),
            (CONN_SCOPE_CGROUP, rein_common::net::PROTOCOL_TCP, 80)
        );
        assert_eq!((key.scope.id_low, key.scope.id_high), (2, 1));
        assert_eq!(key.addr[..4], [198, 18, 13, 0]);
        assert_eq!(rule.cgroup_level_bit(), 4);
        let any = spec("fd00:13::/64", None, ConnScopeSpec::All);
        let (key, _) = any.key();
        assert_eq!(
            (key.scope.protocol, key.scope.port),
            (PROTOCOL_ANY, PORT_ANY)
        );
        // The same prefix naming a port and a protocol ranks higher.
        let prefix_only = spec("198.18.13.0/24", None, ConnScopeSpec::All);
        assert!(rule.specificity() > prefix_only.specificity());
        // Every scope kind and way of naming protocol and port has its own bit.
        let shapes = ConnShapes {
            variants: rule.variant_bit() | any.variant_bit(),
            cgroup_levels: 0,
        };
        assert_eq!(shapes.variants.count_ones(), 2);
    }
}
