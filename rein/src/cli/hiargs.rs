//! The command line resolved into typed requests: every value parsed, every combination checked.
use std::{ffi::OsString, path::PathBuf};

use rein::{
    capabilities::{
        cgroup_limit::{LimitChange, LimitSpec, Target},
        conn_limits::{
            request::{ConnRuleRequest, NewConnRule, RequestError as ConnRequestError},
            spec::{ConnError, parse_port},
        },
        net_rules::{
            conn::InboundRequest,
            request::{Algorithm, MAX_PPS, NetRuleRequest, OptionNames, RequestError},
            spec::{NetError, NetRuleSpec, Protocol},
        },
        shared_limit::{MemberRequest, SharedName, SharedRequest},
    },
    declarative::Kind,
    units::UnitError,
};
use rein_common::Direction;

use super::lowargs::{
    LowArgs, LowCommand, LowConnAdd, LowConnCommand, LowLimits, LowNetAdd, LowNetCommand, LowShare,
    LowTarget,
};

#[derive(Debug)]
pub enum HiCommand {
    Run {
        change: LimitChange,
        command: Vec<OsString>,
    },
    Set {
        target: Target,
        change: LimitChange,
    },
    Unset {
        target: Target,
    },
    SetNetns {
        netns: PathBuf,
        change: LimitChange,
    },
    UnsetNetns {
        netns: PathBuf,
    },
    Share(SharedRequest),
    Unshare(SharedName),
    List {
        json: bool,
    },
    Reload,
    Metrics,
    Top,
    Agent(rein::agent::Options),
    Purge,
    Doctor {
        json: bool,
    },
    Trace {
        /// The cgroup as given; resolved when the trace starts.
        cgroup: Option<std::path::PathBuf>,
        rule: Option<u32>,
        drops_only: bool,
        json: bool,
    },
    NetAdd(NetRuleSpec),
    NetDel(u32),
    NetList {
        json: bool,
    },
    ConnAdd(NewConnRule),
    /// `rein conn add --dev`: a net rule that counts new connections.
    ConnAddInbound(NetRuleSpec),
    ConnDel(u32),
    ConnList {
        json: bool,
    },
    Apply(Vec<PathBuf>),
    Diff(Vec<PathBuf>),
    Delete(Vec<PathBuf>),
    Get {
        kind: Option<Kind>,
        format: Format,
    },
    Schema,
}

/// How `get` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("--{flag}: {source}")]
    Net {
        flag: &'static str,
        #[source]
        source: NetError,
    },
    #[error("--{flag}: {value:?} is not {expected}")]
    Bad {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0:?} is not a rule id (see rein net list, rein conn list)")]
    BadRuleId(String),
    #[error(transparent)]
    Rule(#[from] RequestError),
    #[error("--{flag}: {source}")]
    Conn {
        flag: &'static str,
        #[source]
        source: ConnError,
    },
    #[error(transparent)]
    ConnRule(#[from] ConnRequestError),
    #[error("--{flag}: {source}")]
    Unit {
        flag: &'static str,
        #[source]
        source: UnitError,
    },
    #[error("--{flag} applies to {applies_to}")]
    OtherDirection {
        flag: &'static str,
        applies_to: &'static str,
    },
    #[error("--{flag} is required: {what}")]
    Missing {
        flag: &'static str,
        what: &'static str,
    },
    #[error("--pid: {0:?} is not a process id")]
    BadPid(String),
    #[error("{0:?} is not a kind: CgroupLimit, NetRule, RateLimit or SharedLimit")]
    BadKind(String),
    #[error("{0}")]
    Library(#[from] rein::error::Error),
    #[error("--{0} needs --{1}")]
    Needs(&'static str, &'static str),
}

pub fn resolve(low: LowArgs) -> Result<HiCommand, ArgError> {
    Ok(match low.command {
        LowCommand::Run { limits, command } => HiCommand::Run {
            change: change(&limits)?,
            command,
        },
        LowCommand::Set {
            target: LowTarget {
                netns: Some(netns), ..
            },
            limits,
        } => HiCommand::SetNetns {
            netns,
            change: change(&limits)?,
        },
        LowCommand::Set { target: t, limits } => HiCommand::Set {
            target: target(t)?,
            change: change(&limits)?,
        },
        LowCommand::Unset {
            target: LowTarget {
                netns: Some(netns), ..
            },
        } => HiCommand::UnsetNetns { netns },
        LowCommand::Unset { target: t } => HiCommand::Unset { target: target(t)? },
        LowCommand::Share(share) => HiCommand::Share(shared(&share)?),
        LowCommand::Unshare { name } => HiCommand::Unshare(SharedName::new(name.trim())?),
        LowCommand::List { json } => HiCommand::List { json },
        LowCommand::Reload => HiCommand::Reload,
        LowCommand::Metrics => HiCommand::Metrics,
        LowCommand::Top => HiCommand::Top,
        LowCommand::Agent {
            config,
            metrics_addr,
            remove_on_exit,
        } => HiCommand::Agent(rein::agent::Options {
            config,
            metrics_addr: metrics_addr.trim().parse().map_err(|_| ArgError::Bad {
                flag: "metrics-addr",
                value: metrics_addr.clone(),
                expected: "an address and port such as 127.0.0.1:9810",
            })?,
            remove_on_exit,
        }),
        LowCommand::Purge => HiCommand::Purge,
        LowCommand::Doctor { json } => HiCommand::Doctor { json },
        LowCommand::Apply { files } => HiCommand::Apply(files.files),
        LowCommand::Diff { files } => HiCommand::Diff(files.files),
        LowCommand::Delete { files } => HiCommand::Delete(files.files),
        LowCommand::Get { kind: k, output } => HiCommand::Get {
            kind: k.map(|k| kind(&k)).transpose()?,
            format: match output.as_deref().map(str::trim) {
                None => Format::Table,
                Some("json") => Format::Json,
                Some("yaml") => Format::Yaml,
                Some(other) => {
                    return Err(ArgError::Bad {
                        flag: "output",
                        value: other.to_owned(),
                        expected: "json or yaml",
                    });
                }
            },
        },
        LowCommand::Schema => HiCommand::Schema,
        LowCommand::Trace {
            cgroup,
            rule,
            drops_only,
            json,
        } => HiCommand::Trace {
            cgroup,
            rule: rule.map(|id| rule_id(&id)).transpose()?,
            drops_only,
            json,
        },
        LowCommand::Net { command } => match command {
            LowNetCommand::Add(add) => HiCommand::NetAdd(net_rule(&add)?),
            LowNetCommand::Del { id } => HiCommand::NetDel(rule_id(&id)?),
            LowNetCommand::List { json } => HiCommand::NetList { json },
        },
        LowCommand::Conn { command } => match command {
            LowConnCommand::Add(add) => match add.dev.as_deref() {
                Some(device) => HiCommand::ConnAddInbound(conn_inbound(device, &add)?),
                None => HiCommand::ConnAdd(conn_rule(&add)?),
            },
            LowConnCommand::Del { id } => HiCommand::ConnDel(rule_id(&id)?),
            LowConnCommand::List { json } => HiCommand::ConnList { json },
        },
    })
}

/// An inbound conn rule (`rein conn add --dev ...`): a net rule counting TCP SYNs.
fn conn_inbound(device: &str, add: &LowConnAdd) -> Result<NetRuleSpec, ArgError> {
    let outbound_only = [
        ("max-tokens", add.max_tokens.is_some()),
        ("tokens-per-fill", add.tokens_per_fill.is_some()),
        ("fill-interval", add.fill_interval.is_some()),
        ("cgroup", add.cgroup.is_some()),
        ("netns", add.netns.is_some()),
        ("per-caller", add.per_caller),
    ];
    if let Some((flag, _)) = outbound_only.iter().find(|(_, given)| *given) {
        return Err(ArgError::OtherDirection {
            flag,
            applies_to: "outbound rules (without --dev): inbound rules limit the SYNs a device receives",
        });
    }
    if let Some(proto) = add.proto.as_deref()
        && protocol(Some(proto))? != Some(Protocol::Tcp)
    {
        return Err(ArgError::Bad {
            flag: "proto",
            value: proto.to_owned(),
            expected: "tcp: inbound rules count TCP SYNs",
        });
    }
    let rate = add.rate.as_deref().ok_or(ArgError::Missing {
        flag: "rate",
        what: "new connections per second or minute, e.g. 100/s",
    })?;
    let dport = add.dport.as_deref().ok_or(ArgError::Missing {
        flag: "dport",
        what: "the service's TCP port",
    })?;
    let port = dport_value(dport)?;
    let burst = add
        .burst
        .as_deref()
        .map(|b| {
            b.trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(ArgError::Bad {
                    flag: "burst",
                    value: b.to_owned(),
                    expected: "a number of connections, at least 1",
                })
        })
        .transpose()?;
    let request = InboundRequest {
        device: device.to_owned(),
        port,
        destination: optional(&add.dst, net("dst"))?,
        rate: rate.parse().map_err(unit("rate"))?,
        burst,
        per_source: add.per_source,
        sketch: optional(&add.sketch, net("sketch"))?,
        xdp: add.xdp,
    };
    Ok(request.resolve()?)
}

/// An optional flag's value parsed as `T`, a failure named by `error` (see [`unit`], [`net`],
/// [`conn`]).
fn optional<T: std::str::FromStr>(
    value: &Option<String>,
    error: impl FnOnce(T::Err) -> ArgError,
) -> Result<Option<T>, ArgError> {
    value.as_deref().map(str::parse).transpose().map_err(error)
}

fn unit(flag: &'static str) -> impl FnOnce(UnitError) -> ArgError {
    move |source| ArgError::Unit { flag, source }
}

fn net(flag: &'static str) -> impl FnOnce(NetError) -> ArgError {
    move |source| ArgError::Net { flag, source }
}

fn conn(flag: &'static str) -> impl FnOnce(ConnError) -> ArgError {
    move |source| ArgError::Conn { flag, source }
}

/// `--dport`: a port from 1 to 65535.
fn dport_value(value: &str) -> Result<u16, ArgError> {
    parse_port(value).map_err(|_| ArgError::Bad {
        flag: "dport",
        value: value.to_owned(),
        expected: "a port from 1 to 65535",
    })
}

/// A net rule's id, as `rein net list` shows it.
fn rule_id(id: &str) -> Result<u32, ArgError> {
    id.trim()
        .parse::<u32>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ArgError::BadRuleId(id.to_owned()))
}

fn net_rule(add: &LowNetAdd) -> Result<NetRuleSpec, ArgError> {
    let direction = match add.dir.trim().to_ascii_lowercase().as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => {
            return Err(ArgError::Bad {
                flag: "dir",
                value: add.dir.clone(),
                expected: "ingress or egress",
            });
        }
    };
    let protocol = protocol(add.proto.as_deref())?;
    let port = add.dport.as_deref().map(dport_value).transpose()?;
    let algorithm = match add.algo.as_deref().map(|a| a.trim().to_ascii_lowercase()) {
        None => Algorithm::TokenBucket,
        Some(name) => [
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ]
        .into_iter()
        .find(|algorithm| algorithm.name() == name)
        .ok_or(ArgError::Bad {
            flag: "algo",
            value: name,
            expected: "token-bucket, fixed-window or sliding-window",
        })?,
    };
    let request = NetRuleRequest {
        device: add.dev.clone(),
        direction,
        xdp: add.xdp,
        source: optional(&add.src, net("src"))?,
        destination: optional(&add.dst, net("dst"))?,
        protocol,
        port,
        rate: optional(&add.rate, unit("rate"))?,
        pps: add
            .pps
            .as_deref()
            .map(|pps| packets(pps, "pps", "a packet rate from 1 to 1000000000"))
            .transpose()?,
        connections: None,
        burst: add.burst.clone(),
        algorithm,
        window: optional(&add.window, unit("window"))?,
        per_source: add.per_source,
        sketch: optional(&add.sketch, net("sketch"))?,
    };
    Ok(request.resolve(&OptionNames::FLAGS)?)
}

fn protocol(proto: Option<&str>) -> Result<Option<Protocol>, ArgError> {
    match proto.map(|p| p.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(p) if p == "tcp" => Ok(Some(Protocol::Tcp)),
        Some(p) if p == "udp" => Ok(Some(Protocol::Udp)),
        Some(p) => Err(ArgError::Bad {
            flag: "proto",
            value: p,
            expected: "tcp or udp",
        }),
    }
}

/// An outbound conn rule (`rein conn add --dst ...`).
fn conn_rule(add: &LowConnAdd) -> Result<NewConnRule, ArgError> {
    let inbound_only = [
        ("dport", add.dport.is_some()),
        ("per-source", add.per_source),
        ("sketch", add.sketch.is_some()),
        ("xdp", add.xdp),
    ];
    if let Some((flag, _)) = inbound_only.iter().find(|(_, given)| *given) {
        return Err(ArgError::OtherDirection {
            flag,
            applies_to: "inbound rules (with --dev); outbound rules take the port in --dst IP:PORT",
        });
    }
    let count = |flag: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| ArgError::Bad {
                    flag,
                    value: v.to_owned(),
                    expected: "a whole number",
                })
            })
            .transpose()
    };
    let request = ConnRuleRequest {
        destination: optional(&add.dst, conn("dst"))?,
        protocol: protocol(add.proto.as_deref())?,
        rate: optional(&add.rate, unit("rate"))?,
        burst: count("burst", &add.burst)?,
        max_tokens: count("max-tokens", &add.max_tokens)?,
        tokens_per_fill: count("tokens-per-fill", &add.tokens_per_fill)?,
        fill_interval: optional(&add.fill_interval, unit("fill-interval"))?,
        cgroup: add.cgroup.clone(),
        netns: add.netns.clone(),
        per_caller: add.per_caller,
    };
    Ok(request.resolve()?)
}

/// A count of packets from 1 to `MAX_PPS`.
fn packets(value: &str, flag: &'static str, expected: &'static str) -> Result<u64, ArgError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_PPS).contains(n))
        .ok_or_else(|| ArgError::Bad {
            flag,
            value: value.to_owned(),
            expected,
        })
}

/// `rein share`: a name, at least one direction, at least one member.
fn shared(share: &LowShare) -> Result<SharedRequest, ArgError> {
    let direction = |rate: &Option<String>,
                     burst: &Option<String>,
                     rate_flag: &'static str,
                     burst_flag: &'static str|
     -> Result<Option<LimitSpec>, ArgError> {
        let rate = optional(rate, unit(rate_flag))?;
        let burst = optional(burst, unit(burst_flag))?;
        match (rate, burst) {
            (Some(rate), burst) => Ok(Some(LimitSpec { rate, burst })),
            (None, Some(_)) => Err(ArgError::Needs(burst_flag, rate_flag)),
            (None, None) => Ok(None),
        }
    };
    let egress = direction(&share.egress, &share.egress_burst, "egress", "egress-burst")?;
    let ingress = direction(
        &share.ingress,
        &share.ingress_burst,
        "ingress",
        "ingress-burst",
    )?;
    if egress.is_none() && ingress.is_none() {
        return Err(ArgError::Missing {
            flag: "egress",
            what: "a shared limit needs --egress or --ingress",
        });
    }
    let mut members: Vec<MemberRequest> = share
        .cgroup
        .iter()
        .cloned()
        .map(MemberRequest::Cgroup)
        .collect();
    for pid in &share.pid {
        match pid.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => members.push(MemberRequest::Pid(pid)),
            _ => return Err(ArgError::BadPid(pid.clone())),
        }
    }
    members.extend(share.netns.iter().cloned().map(MemberRequest::Netns));
    if members.is_empty() {
        return Err(ArgError::Missing {
            flag: "cgroup",
            what: "give the members with --cgroup, --pid or --netns",
        });
    }
    Ok(SharedRequest {
        name: SharedName::new(share.name.trim())?,
        egress,
        ingress,
        members,
    })
}

fn change(limits: &LowLimits) -> Result<LimitChange, ArgError> {
    Ok(LimitChange {
        egress: optional(&limits.egress, unit("egress"))?,
        ingress: optional(&limits.ingress, unit("ingress"))?,
        burst: optional(&limits.burst, unit("burst"))?,
    })
}

/// A kind as kubectl takes it: any case, singular or plural.
fn kind(name: &str) -> Result<Kind, ArgError> {
    let wanted = name.trim().to_ascii_lowercase();
    Kind::ALL
        .into_iter()
        .find(|kind| {
            let kind = kind.name().to_ascii_lowercase();
            wanted == kind || wanted == format!("{kind}s")
        })
        .ok_or_else(|| ArgError::BadKind(name.to_owned()))
}

fn target(low: LowTarget) -> Result<Target, ArgError> {
    match (low.pid, low.cgroup) {
        (Some(pid), _) => match pid.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(Target::Pid(pid)),
            _ => Err(ArgError::BadPid(pid)),
        },
        (None, Some(path)) => Ok(Target::Cgroup(path)),
        // clap's group makes one of the two required.
        (None, None) => Err(ArgError::BadPid(String::new())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rein::capabilities::net_rules::spec::{NetHook, NetLimit, Per};

    use super::*;

    fn parse(args: &[&str]) -> Result<HiCommand, ArgError> {
        resolve(LowArgs::try_parse_from(args).unwrap())
    }

    #[test]
    fn conn_add_with_a_device_is_a_new_connection_net_rule() {
        let add = |extra: &[&str]| {
            let mut args = vec!["rein", "conn", "add", "--dev", "eth0"];
            args.extend_from_slice(extra);
            match parse(&args) {
                Ok(HiCommand::ConnAddInbound(spec)) => Ok(spec),
                Ok(other) => panic!("{other:?}"),
                Err(error) => Err(error.to_string()),
            }
        };
        let spec = add(&["--dport", "443", "--rate", "30/min", "--per-source"]).unwrap();
        assert_eq!(
            (spec.limit, spec.protocol, spec.port, spec.hook),
            (
                NetLimit::Connections {
                    rate: "30/min".parse().unwrap(),
                    burst: 5
                },
                Some(rein::capabilities::net_rules::spec::Protocol::Tcp),
                Some(443),
                NetHook::TcIngress
            )
        );
        let spec = add(&["--dport", "22", "--rate", "200/s", "--xdp"]).unwrap();
        assert_eq!(
            (spec.limit, spec.hook),
            (
                NetLimit::Connections {
                    rate: "200/s".parse().unwrap(),
                    burst: 200
                },
                NetHook::Xdp
            )
        );
        for (extra, needle) in [
            (&["--dport", "1", "--rate", "0/s"][..], "--rate"),
            (&["--dport", "1", "--rate", "5"], "--rate"),
            (
                &["--dport", "1", "--rate", "5/s", "--burst", "0"],
                "--burst",
            ),
            (&["--dport", "65536", "--rate", "5/s"], "--dport"),
            (&["--rate", "5/s"], "--dport is required"),
            (
                &["--dport", "1", "--rate", "5/s", "--sketch", "64x1"],
                "--per-source",
            ),
        ] {
            let error = add(extra).unwrap_err();
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
    }

    #[test]
    fn run_takes_limits_and_a_command() {
        match parse(&[
            "rein", "run", "--egress", "10mbit", "--", "iperf3", "-c", "x",
        ])
        .unwrap()
        {
            HiCommand::Run { change, command } => {
                assert_eq!(change.egress.unwrap().bits_per_second(), 10_000_000);
                assert_eq!(change.ingress, None);
                assert_eq!(command, ["iperf3", "-c", "x"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let error = parse(&["rein", "set", "--pid", "1", "--egress", "-5mbit"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--egress: \"-5mbit\" must be greater than zero"
        );
        let error = parse(&["rein", "set", "--pid", "abc", "--egress", "1mbit"]).unwrap_err();
        assert!(error.to_string().contains("not a process id"));
        let error = parse(&["rein", "set", "--pid", "-3", "--egress", "1mbit"]).unwrap_err();
        assert!(error.to_string().contains("not a process id"));
        let error = parse(&["rein", "set", "--cgroup", "/x", "--burst", "1q"]).unwrap_err();
        assert!(error.to_string().starts_with("--burst: "));
    }

    fn net_add(extra: &[&str]) -> Result<NetRuleSpec, ArgError> {
        let mut args = vec!["rein", "net", "add", "--dev", "eth0", "--dir", "ingress"];
        args.extend_from_slice(extra);
        match parse(&args)? {
            HiCommand::NetAdd(spec) => Ok(spec),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn net_rules_resolve_rates_windows_and_conflicts() {
        // tc units: bits per second, counted against IP bytes.
        let spec = net_add(&["--rate", "10mbit"]).unwrap();
        assert_eq!(
            spec.limit,
            NetLimit::TokenBucket {
                per: Per::Bytes,
                rate: 1_250_000,
                burst: 64 * 1024
            }
        );
        assert_eq!(spec.hook, NetHook::TcIngress);
        // A window holds the rate times its length.
        let spec = net_add(&[
            "--pps",
            "1000",
            "--algo",
            "sliding-window",
            "--window",
            "100ms",
        ])
        .unwrap();
        assert_eq!(
            spec.limit,
            NetLimit::SlidingWindow {
                per: Per::Packets,
                capacity: 100,
                window_ns: 100_000_000
            }
        );
        let spec = net_add(&[
            "--pps",
            "5000",
            "--xdp",
            "--per-source",
            "--sketch",
            "1024x2",
        ]);
        let spec = spec.unwrap();
        assert_eq!(
            (spec.hook, spec.limit),
            (
                NetHook::Xdp,
                NetLimit::TokenBucket {
                    per: Per::Packets,
                    rate: 5000,
                    burst: 50
                }
            )
        );
        for (extra, needle) in [
            (
                &["--rate", "1mbit", "--window", "1s"][..],
                "--window belongs",
            ),
            (
                &["--rate", "1mbit", "--algo", "fixed-window", "--burst", "9k"],
                "--burst belongs",
            ),
            (&["--pps", "30"], "at least 60"),
            (
                &[
                    "--rate",
                    "1mbit",
                    "--src",
                    "10.0.0.0/8",
                    "--dst",
                    "10.0.0.1",
                ],
                "single",
            ),
        ] {
            let error = net_add(extra).unwrap_err().to_string();
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
    }

    #[test]
    fn conn_add_refuses_the_flags_of_the_other_direction() {
        let message = |args: &[&str]| {
            let mut all = vec!["rein", "conn", "add"];
            all.extend_from_slice(args);
            match parse(&all) {
                Err(error) => error.to_string(),
                Ok(command) => panic!("{args:?} parsed as {command:?}"),
            }
        };
        let inbound = ["--dev", "eth0", "--dport", "443", "--rate", "10/s"];
        for (flag, value) in [
            ("--per-caller", None),
            ("--cgroup", Some("/x")),
            ("--max-tokens", Some("5")),
        ] {
            let mut args = inbound.to_vec();
            args.push(flag);
            args.extend(value);
            assert!(
                message(&args).contains("applies to outbound rules"),
                "{flag}"
            );
        }
        let mut udp = inbound.to_vec();
        udp.extend(["--proto", "udp"]);
        assert!(message(&udp).contains("TCP SYNs"));
        for flag in [["--dport", "80"], ["--sketch", "64x2"]] {
            let mut args = vec!["--dst", "198.18.0.1", "--rate", "10/s"];
            args.extend(flag);
            assert!(
                message(&args).contains("applies to inbound rules"),
                "{flag:?}"
            );
        }
        assert!(message(&["--dev", "eth0", "--dport", "443"]).contains("--rate is required"));
    }

    fn conn_add(extra: &[&str]) -> Result<NewConnRule, ArgError> {
        let mut args = vec!["rein", "conn", "add"];
        args.extend_from_slice(extra);
        match parse(&args)? {
            HiCommand::ConnAdd(rule) => Ok(rule),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conn_rules_resolve_both_forms_and_refuse_bad_input() {
        use rein::capabilities::conn_limits::{request::ScopeRequest, spec::ConnLimit};
        let rule = conn_add(&[
            "--dst",
            "198.18.13.1:80",
            "--rate",
            "100/s",
            "--burst",
            "20",
        ])
        .unwrap();
        assert_eq!(rule.destination.port, Some(80));
        assert_eq!((rule.protocol, &rule.scope), (None, &ScopeRequest::All));
        assert!(matches!(rule.limit, ConnLimit::Rate { burst: 20, .. }));
        let rule = conn_add(&[
            "--dst",
            "[fd00:13::1]:443",
            "--proto",
            "tcp",
            "--max-tokens",
            "5",
            "--tokens-per-fill",
            "2",
            "--fill-interval",
            "1s",
            "--netns",
            "/run/netns/x",
            "--per-caller",
        ])
        .unwrap();
        assert_eq!(rule.scope, ScopeRequest::Netns("/run/netns/x".into()));
        assert!(rule.per_caller);
        assert_eq!(
            rule.limit,
            ConnLimit::Fill {
                max_tokens: 5,
                tokens_per_fill: 2,
                fill_ns: 1_000_000_000
            }
        );
        let fill = [
            "--max-tokens",
            "5",
            "--tokens-per-fill",
            "2",
            "--fill-interval",
        ];
        for (extra, needle) in [
            (&["--dst", "198.18.13.1", "--rate", "0/s"][..], "--rate"),
            (
                &["--dst", "198.18.13.1", "--rate", "5/s", "--burst", "0"],
                "burst of 0",
            ),
            (
                &["--dst", "198.18.13.1", "--rate", "5/s", "--burst", "-1"],
                "--burst",
            ),
            (&["--dst", "198.18.13.1:0", "--rate", "5/s"], "port"),
            (&["--dst", "198.18.13.1:70000", "--rate", "5/s"], "port"),
            (&["--dst", "198.18.13.1/24", "--rate", "5/s"], "host bits"),
            (
                &["--dst", "198.18.13.1", "--rate", "5/s", "--proto", "icmp"],
                "tcp or udp",
            ),
            (&["--dst", "198.18.13.1"], "give --rate"),
            (&["--rate", "5/s"], "--dst"),
            (
                &["--dst", "198.18.13.1", "--rate", "5/s", "--max-tokens", "3"],
                "not both",
            ),
            (
                &[
                    "--dst",
                    "198.18.13.1",
                    "--max-tokens",
                    "0",
                    "--tokens-per-fill",
                    "1",
                    "--fill-interval",
                    "1s",
                ],
                "0 tokens",
            ),
            (
                &[
                    "--dst",
                    "198.18.13.1",
                    "--max-tokens",
                    "16777216",
                    "--tokens-per-fill",
                    "1",
                    "--fill-interval",
                    "1s",
                ],
                "16777216 tokens",
            ),
            (
                &[
                    "--dst",
                    "198.18.13.1",
                    "--max-tokens",
                    "5",
                    "--tokens-per-fill",
                    "0",
                    "--fill-interval",
                    "1s",
                ],
                "0 tokens per fill",
            ),
            (
                &[
                    "--dst",
                    "198.18.13.1",
                    fill[0],
                    fill[1],
                    fill[2],
                    fill[3],
                    fill[4],
                    "0s",
                ],
                "--fill-interval",
            ),
            (
                &[
                    "--dst",
                    "198.18.13.1",
                    "--rate",
                    "5/s",
                    "--cgroup",
                    "/a",
                    "--netns",
                    "/b",
                ],
                "not both",
            ),
        ] {
            let error = conn_add(extra).unwrap_err().to_string();
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
    }

    #[test]
    fn get_takes_kinds_as_kubectl_does() {
        for (args, kind) in [
            (&["rein", "get"][..], None),
            (&["rein", "get", "cgrouplimits"], Some(Kind::CgroupLimit)),
            (
                &["rein", "get", "NetRule", "-o", "yaml"],
                Some(Kind::NetRule),
            ),
        ] {
            match parse(args).unwrap() {
                HiCommand::Get { kind: k, .. } => assert_eq!(k, kind, "{args:?}"),
                other => panic!("{other:?}"),
            }
        }
        let error = parse(&["rein", "get", "pods"]).unwrap_err().to_string();
        assert!(error.contains("not a kind"), "{error}");
        let error = parse(&["rein", "get", "-o", "xml"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("json or yaml"), "{error}");
        assert!(LowArgs::try_parse_from(["rein", "apply"]).is_err());
    }

    #[test]
    fn a_target_is_required_and_unique() {
        assert!(LowArgs::try_parse_from(["rein", "set", "--egress", "1mbit"]).is_err());
        assert!(
            LowArgs::try_parse_from(["rein", "unset", "--pid", "1", "--cgroup", "/x"]).is_err()
        );
    }
}
