//! A net rule as an operator asks for it, `rein net add`'s flags or a `NetRule` file's fields
//! alike: each value parsed, their combination not yet checked. [`NetRuleRequest::resolve`]
//! checks it and fills in the defaults once for both, naming the options as the operator wrote
//! them ([`OptionNames`]).
use std::str::FromStr;

use rein_common::Direction;
use serde::{Deserialize, Serialize};

use super::spec::{
    Cidr, NetError, NetHook, NetLimit, NetRuleSpec, Per, Protocol, SketchSize, Sources,
};
use crate::{
    limit::default_burst,
    units::{EventRate, Period, Rate, Size, UnitError},
};

/// Default burst of a packet-rate bucket: 10 ms at the rate, at least 16 packets.
const MIN_DEFAULT_BURST_PACKETS: u64 = 16;
/// Least default burst of a new-connection limit (as iptables' limit match): the default is
/// one second at the rate, at least this many.
pub const MIN_DEFAULT_BURST_CONNECTIONS: u64 = 5;
/// Largest packet rate: far beyond what one host's XDP path drops.
pub const MAX_PPS: u64 = 1_000_000_000;

/// How a rule limits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    TokenBucket,
    FixedWindow,
    SlidingWindow,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::TokenBucket => "token-bucket",
            Self::FixedWindow => "fixed-window",
            Self::SlidingWindow => "sliding-window",
        }
    }
}

/// Every option of a rule, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRuleRequest {
    pub device: String,
    pub direction: Direction,
    pub xdp: bool,
    pub source: Option<Cidr>,
    pub destination: Option<Cidr>,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    /// Bytes per second, or else...
    pub rate: Option<Rate>,
    /// ...packets per second, or else new TCP connections (SYNs) at a rate.
    pub pps: Option<u64>,
    pub connections: Option<EventRate>,
    /// As written: a size with a rate, a count of packets with a packet rate.
    pub burst: Option<String>,
    pub algorithm: Algorithm,
    pub window: Option<Period>,
    pub per_source: bool,
    pub sketch: Option<SketchSize>,
}

/// What the operator calls each option, for the messages.
#[derive(Clone, Copy, Debug)]
pub struct OptionNames {
    pub rate: &'static str,
    pub pps: &'static str,
    pub connections: &'static str,
    pub burst: &'static str,
    pub algorithm: &'static str,
    pub window: &'static str,
    pub xdp: &'static str,
    pub per_source: &'static str,
    pub sketch: &'static str,
}

impl OptionNames {
    /// `rein net add`'s flags.
    pub const FLAGS: OptionNames = OptionNames {
        rate: "--rate",
        pps: "--pps",
        connections: "--connections",
        burst: "--burst",
        algorithm: "--algo",
        window: "--window",
        xdp: "--xdp",
        per_source: "--per-source",
        sketch: "--sketch",
    };

    /// `rein conn add`'s flags (inbound rules), whose `--rate` is a connection rate.
    pub const CONN_FLAGS: OptionNames = OptionNames {
        connections: "--rate",
        ..Self::FLAGS
    };

    /// A `NetRule` file's fields.
    pub const FIELDS: OptionNames = OptionNames {
        rate: "rate",
        pps: "pps",
        connections: "connections",
        burst: "burst",
        algorithm: "algorithm",
        window: "window",
        xdp: "xdp",
        per_source: "perSource",
        sketch: "sketch",
    };
}

/// Why a request does not make a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Conflict(String),
    #[error("{option}: {source}")]
    Unit {
        option: &'static str,
        #[source]
        source: UnitError,
    },
    #[error("{option}: {value:?} is not {expected}")]
    Bad {
        option: &'static str,
        value: String,
        expected: String,
    },
    #[error(transparent)]
    Rule(#[from] NetError),
}

impl NetRuleRequest {
    /// The rule asked for, with the defaults of what was left out.
    pub fn resolve(&self, names: &OptionNames) -> Result<NetRuleSpec, RequestError> {
        let conflict = |message: String| Err(RequestError::Conflict(message));
        let hook = match (self.direction, self.xdp) {
            (Direction::Ingress, false) => NetHook::TcIngress,
            (Direction::Ingress, true) => NetHook::Xdp,
            (Direction::Egress, false) => NetHook::TcEgress,
            (Direction::Egress, true) => {
                return conflict(format!(
                    "{} applies to ingress only: XDP sees the packets a device receives",
                    names.xdp
                ));
            }
        };
        if let Some(rate) = self.connections {
            return self.resolve_connections(names, hook, rate);
        }
        let (per, amount) = match (self.rate, self.pps) {
            (Some(_), Some(_)) => {
                return conflict(format!(
                    "give {} (bytes) or {} (packets), not both",
                    names.rate, names.pps
                ));
            }
            (None, None) => return conflict(format!("give {} or {}", names.rate, names.pps)),
            (Some(rate), None) => (Per::Bytes, rate.bytes_per_second()),
            (None, Some(pps)) if (1..=MAX_PPS).contains(&pps) => (Per::Packets, pps),
            (None, Some(pps)) => {
                return Err(RequestError::Bad {
                    option: names.pps,
                    value: pps.to_string(),
                    expected: format!("a packet rate from 1 to {MAX_PPS}"),
                });
            }
        };
        let limit = match self.algorithm {
            Algorithm::TokenBucket => {
                if self.window.is_some() {
                    return conflict(format!(
                        "{} belongs to {} fixed-window or sliding-window",
                        names.window, names.algorithm
                    ));
                }
                let burst = match (per, self.burst.as_deref()) {
                    (Per::Bytes, Some(burst)) => Size::from_str(burst)
                        .map_err(|source| RequestError::Unit {
                            option: names.burst,
                            source,
                        })?
                        .bytes(),
                    // The rate came from a `Rate`, so it converts back.
                    (Per::Bytes, None) => Rate::from_bits(amount * 8)
                        .map(default_burst)
                        .map_err(|source| RequestError::Unit {
                            option: names.rate,
                            source,
                        })?
                        .bytes(),
                    (Per::Packets, Some(burst)) => burst
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=MAX_PPS).contains(n))
                        .ok_or_else(|| RequestError::Bad {
                            option: names.burst,
                            value: burst.to_owned(),
                            expected: format!("a number of packets (with {})", names.pps),
                        })?,
                    (Per::Packets, None) => (amount / 100).max(MIN_DEFAULT_BURST_PACKETS),
                };
                NetLimit::token_bucket(per, amount, burst)?
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                if self.burst.is_some() {
                    return conflict(format!(
                        "{} belongs to the token bucket; a window holds the rate times {}",
                        names.burst, names.window
                    ));
                }
                let window = self.window.unwrap_or(Period::SECOND).nanos();
                let capacity = (u128::from(amount) * u128::from(window) / 1_000_000_000) as u64;
                let sliding = self.algorithm == Algorithm::SlidingWindow;
                NetLimit::window(sliding, per, capacity, window)?
            }
        };
        self.finish(names, hook, self.protocol, limit)
    }

    /// The rule of a limit, with its sources; its match checked.
    fn finish(
        &self,
        names: &OptionNames,
        hook: NetHook,
        protocol: Option<Protocol>,
        limit: NetLimit,
    ) -> Result<NetRuleSpec, RequestError> {
        let sources = match (self.per_source, self.sketch) {
            (false, None) => Sources::Shared,
            (false, Some(_)) => {
                return Err(RequestError::Conflict(format!(
                    "{} needs {}",
                    names.sketch, names.per_source
                )));
            }
            (true, None) => Sources::Exact,
            (true, Some(size)) => Sources::Sketch { size },
        };
        let spec = NetRuleSpec {
            device: self.device.clone(),
            hook,
            source: self.source,
            destination: self.destination,
            protocol,
            port: self.port,
            limit,
            sources,
        };
        // The combination (a pair of prefixes, mixed families) is checked here too, before any
        // device is looked at.
        spec.matching(0)?;
        Ok(spec)
    }

    /// A new-connection limit: a token bucket of SYNs, TCP implied.
    fn resolve_connections(
        &self,
        names: &OptionNames,
        hook: NetHook,
        rate: EventRate,
    ) -> Result<NetRuleSpec, RequestError> {
        let conflict = |message: String| Err(RequestError::Conflict(message));
        if self.rate.is_some() || self.pps.is_some() {
            return conflict(format!(
                "give {} (bytes), {} (packets) or {} (new connections), one of them",
                names.rate, names.pps, names.connections
            ));
        }
        if self.algorithm != Algorithm::TokenBucket || self.window.is_some() {
            return conflict(format!(
                "{} is a token bucket of connections: no {} or {}",
                names.connections, names.algorithm, names.window
            ));
        }
        if hook == NetHook::TcEgress {
            return conflict(format!(
                "{} counts the connections a device receives: ingress only",
                names.connections
            ));
        }
        let protocol = match self.protocol {
            None | Some(Protocol::Tcp) => Protocol::Tcp,
            Some(Protocol::Udp) => {
                return conflict(format!("{} counts TCP connections", names.connections));
            }
        };
        let burst = match self.burst.as_deref() {
            Some(burst) => burst
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| RequestError::Bad {
                    option: names.burst,
                    value: burst.to_owned(),
                    expected: "a number of connections, at least 1".into(),
                })?,
            None => rate.per_second_ceil().max(MIN_DEFAULT_BURST_CONNECTIONS),
        };
        let limit = NetLimit::connections(rate, burst)?;
        self.finish(names, hook, Some(protocol), limit)
    }

    /// The request that resolves to `rule` (for showing a rule in a file's fields): a window
    /// rule's rate is its capacity over its window, a bucket's burst the one in force.
    pub fn of_rule(rule: &NetRuleSpec) -> Self {
        let (direction, xdp) = match rule.hook {
            NetHook::TcIngress => (Direction::Ingress, false),
            NetHook::TcEgress => (Direction::Egress, false),
            NetHook::Xdp => (Direction::Ingress, true),
        };
        let (algorithm, per, amount, burst, window) = match rule.limit {
            NetLimit::Connections { burst, .. } => {
                (Algorithm::TokenBucket, Per::Packets, 0, Some(burst), None)
            }
            NetLimit::TokenBucket { per, rate, burst } => {
                (Algorithm::TokenBucket, per, rate, Some(burst), None)
            }
            NetLimit::FixedWindow {
                per,
                capacity,
                window_ns,
            }
            | NetLimit::SlidingWindow {
                per,
                capacity,
                window_ns,
            } => {
                let algorithm = if matches!(rule.limit, NetLimit::FixedWindow { .. }) {
                    Algorithm::FixedWindow
                } else {
                    Algorithm::SlidingWindow
                };
                let per_second =
                    u128::from(capacity) * 1_000_000_000 / u128::from(window_ns.max(1));
                let window = Period::try_from(window_ns).ok();
                (algorithm, per, per_second as u64, None, window)
            }
        };
        let connections = match rule.limit {
            NetLimit::Connections { rate, .. } => Some(rate),
            _ => None,
        };
        let (rate, pps, burst) = match per {
            Per::Packets if connections.is_some() => (None, None, burst.map(|b| b.to_string())),
            Per::Bytes => (
                Rate::from_bits(amount.saturating_mul(8)).ok(),
                None,
                burst.map(|b| Size::saturating(b).to_string()),
            ),
            Per::Packets => (None, Some(amount), burst.map(|b| b.to_string())),
        };
        let (per_source, sketch) = match rule.sources {
            Sources::Shared => (false, None),
            Sources::Exact => (true, None),
            Sources::Sketch { size } => (true, Some(size)),
        };
        Self {
            device: rule.device.clone(),
            direction,
            xdp,
            source: rule.source,
            destination: rule.destination,
            protocol: rule.protocol,
            port: rule.port,
            rate,
            pps,
            connections,
            burst,
            algorithm,
            window,
            per_source,
            sketch,
        }
    }
}
