//! What rein prints: tables for people, JSON for programs.
use std::fmt::Write as _;

use rein::{
    Plan,
    capabilities::{
        cgroup_limit::{DirectionView, LimitSpec, Origin, RuleView, SetOutcome},
        conn_limits::{ConnRuleRecord, ConnRuleView, request::ScopeRequest, spec::ConnRuleSpec},
        net_rules::{
            NetRuleRecord, NetRuleView,
            spec::{NetLimit, NetRuleSpec, Per, Sources},
        },
        netns_limit::{NetnsOrigin, NetnsRecord, NetnsView, Subnets},
        shared_limit::{SharedRecord, SharedView},
    },
    declarative::{Declarer, DirectionLimit, LimitScope, Listed, ListedSpec, RateLimitRule},
    doctor::Check,
    units::{Period, Rate, Size},
};

pub fn set_outcome(outcome: &SetOutcome) -> String {
    let record = &outcome.record;
    let mut text = format!(
        "limited {}: egress {}, ingress {}",
        record.cgroup,
        spec(record.egress),
        spec(record.ingress)
    );
    if let Some(moved) = &outcome.moved {
        let _ = write!(
            text,
            "\nmoved pid {} from {} to {}",
            moved.pid, moved.from, moved.to
        );
        if moved.sockets_left_behind > 0 {
            let _ = write!(
                text,
                "\nnote: pid {} had {} socket(s) open before the move; the kernel keeps a \
                 socket in the cgroup that created it, so their traffic is not limited. New \
                 sockets are. To cover existing connections, limit the original cgroup in \
                 place: rein set --cgroup {} ...",
                moved.pid, moved.sockets_left_behind, moved.from
            );
        }
    }
    text
}

fn spec(spec: Option<LimitSpec>) -> String {
    match spec {
        None => "unlimited".into(),
        Some(LimitSpec { rate, burst: None }) => {
            format!(
                "{rate} (burst {} default)",
                rein::limit::default_burst(rate)
            )
        }
        Some(LimitSpec {
            rate,
            burst: Some(burst),
        }) => format!("{rate} (burst {burst})"),
    }
}

/// Who declared a limit: `declared web` (the files), `kubernetes pod.default.web` (the node
/// agent).
fn declared(owner: &str) -> String {
    match Declarer::of(owner) {
        (Declarer::Files, name) => format!("declared {name}"),
        (declarer, name) => format!("{declarer} {name}"),
    }
}

pub fn list(views: &[RuleView]) -> String {
    if views.is_empty() {
        return "no limits\n".into();
    }
    let mut rows = vec![limit_header("CGROUP", "PIDS")];
    for view in views {
        let origin = match (&view.origin, &view.declared_by) {
            (_, Some(owner)) => declared(owner),
            (Origin::Run { owner }, None) => format!("run by {owner}"),
            (Origin::Pid { pid, .. }, None) => format!("pid {pid}"),
            (Origin::Cgroup, None) => "cgroup".into(),
        };
        let pids = if view.processes.is_empty() {
            "-".into()
        } else {
            let shown: Vec<String> = view.processes.iter().take(8).map(u32::to_string).collect();
            let more = view.processes.len().saturating_sub(8);
            if more > 0 {
                format!("{} +{more}", shown.join(","))
            } else {
                shown.join(",")
            }
        };
        push_limit_rows(
            &mut rows,
            &view.cgroup,
            &origin,
            [&view.egress, &view.ingress],
            &pids,
        );
    }
    table(&rows)
}

/// The header of a table of limits, named by what they limit and their last column.
fn limit_header(subject: &str, last: &str) -> [String; 9] {
    [
        subject,
        "ORIGIN",
        "DIR",
        "RATE",
        "BURST",
        "TCP FLOWS",
        "PASSED",
        "DROPPED",
        last,
    ]
    .map(String::from)
}

/// A limit's rows, a direction each: what it limits, its origin, the direction's figures, and
/// the last column (`PIDS`, `PEERS`).
fn push_limit_rows(
    rows: &mut Vec<[String; 9]>,
    subject: &str,
    origin: &str,
    directions: [&Option<DirectionView>; 2],
    last: &str,
) {
    for (name, direction) in ["egress", "ingress"].into_iter().zip(directions) {
        let Some(d) = direction else { continue };
        rows.push([
            subject.to_owned(),
            origin.to_owned(),
            name.into(),
            rate(d),
            burst(d),
            if name == "egress" {
                d.tcp_flows.to_string()
            } else {
                "-".into()
            },
            format!("{} pkt / {}", d.passed_packets, bytes(d.passed_bytes)),
            format!("{} pkt / {}", d.dropped_packets, bytes(d.dropped_bytes)),
            last.to_owned(),
        ]);
    }
}

/// What `set --netns` did.
pub fn netns_set(record: &NetnsRecord) -> String {
    let mut line = format!("limited network namespace {}:", record.netns);
    for (name, spec) in [("egress", record.egress), ("ingress", record.ingress)] {
        if let Some(spec) = spec {
            let limit = spec.effective();
            let _ = write!(line, " {name} {} burst {}", limit.rate, limit.burst);
        }
    }
    line
}

/// What `share` did.
pub fn shared_set(record: &SharedRecord) -> String {
    let mut line = format!(
        "shared limit {} over {} members:",
        record.name,
        record.members.len()
    );
    for (name, spec) in [("egress", record.egress), ("ingress", record.ingress)] {
        if let Some(spec) = spec {
            let limit = spec.effective();
            let _ = write!(line, " {name} {} burst {}", limit.rate, limit.burst);
        }
    }
    line
}

/// The table of shared limits: a row per direction with the members' sum, then a row per
/// member and direction with its own traffic.
pub fn shared_list(views: &[SharedView]) -> String {
    let mut rows = vec![limit_header("SHARED", "MEMBERS")];
    for view in views {
        let origin = match &view.declared_by {
            Some(name) => format!("declared {name}"),
            None => "shared".into(),
        };
        push_limit_rows(
            &mut rows,
            &view.name,
            &origin,
            [&view.egress, &view.ingress],
            &view.members.len().to_string(),
        );
        for member in &view.members {
            for (name, traffic) in [("egress", &member.egress), ("ingress", &member.ingress)] {
                let Some(t) = traffic else { continue };
                rows.push([
                    format!("  {} {}", member.kind, member.path),
                    "member".into(),
                    name.into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("{} pkt / {}", t.passed_packets, bytes(t.passed_bytes)),
                    format!("{} pkt / {}", t.dropped_packets, bytes(t.dropped_bytes)),
                    "-".into(),
                ]);
            }
        }
    }
    table(&rows)
}

/// The table of limited network namespaces.
pub fn netns_list(views: &[NetnsView]) -> String {
    let mut rows = vec![limit_header("NETNS", "PEERS")];
    for view in views {
        let origin = match (&view.origin, &view.declared_by) {
            (_, Some(owner)) => declared(owner),
            (NetnsOrigin::Cni(a), None) => {
                let id: String = a.container_id.chars().take(12).collect();
                format!("cni {} {id}/{}", a.network, a.ifname)
            }
            (NetnsOrigin::Manual, None) => "netns".into(),
        };
        let peers = match &view.subnets {
            None => "all".into(),
            Some(Subnets::Unshaped(nets)) => format!("all but {} subnets", nets.len()),
            Some(Subnets::Shaped(nets)) => format!("{} subnets", nets.len()),
        };
        push_limit_rows(
            &mut rows,
            &view.netns,
            &origin,
            [&view.egress, &view.ingress],
            &peers,
        );
    }
    table(&rows)
}

/// What an apply or a delete changed, a line each.
pub fn plan(plan: &Plan) -> String {
    if plan.is_empty() {
        "nothing to change\n".into()
    } else {
        plan.to_string()
    }
}

/// `rein get`'s table: a resource a line, with where it came from.
pub fn resources(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return "no resources\n".into();
    }
    let mut rows = vec![["KIND", "NAME", "ORIGIN", "TARGET", "LIMIT"].map(String::from)];
    let direction = |name: &str, limit: Option<DirectionLimit>| {
        limit.map(|l| match l.burst {
            Some(burst) => format!("{name} {} burst {burst}", l.rate),
            None => format!("{name} {}", l.rate),
        })
    };
    for item in listed {
        let (target, limit) = match &item.spec {
            ListedSpec::CgroupLimit(spec) => {
                let target = match &spec.scope {
                    LimitScope::Cgroup(cgroup) if cgroup.is_glob() => format!(
                        "{} ({} cgroups)",
                        cgroup.as_str(),
                        item.status.cgroups.len()
                    ),
                    LimitScope::Cgroup(cgroup) => cgroup.as_str().to_owned(),
                    LimitScope::Netns { path, subnets } => {
                        let peers = match subnets {
                            None => String::new(),
                            Some(Subnets::Unshaped(nets)) => {
                                format!(" (all but {} subnets)", nets.len())
                            }
                            Some(Subnets::Shaped(nets)) => format!(" ({} subnets)", nets.len()),
                        };
                        format!("netns {}{peers}", path.as_str())
                    }
                };
                let limits: Vec<String> = [
                    direction("egress", spec.egress),
                    direction("ingress", spec.ingress),
                ]
                .into_iter()
                .flatten()
                .collect();
                (target, limits.join(", "))
            }
            ListedSpec::SharedLimit(spec) => {
                let limits: Vec<String> = [
                    direction("egress", spec.egress()),
                    direction("ingress", spec.ingress()),
                ]
                .into_iter()
                .flatten()
                .collect();
                (
                    format!(
                        "{} members ({} cgroups, {} netns)",
                        item.status.cgroups.len(),
                        spec.cgroups().len(),
                        spec.netns().len()
                    ),
                    format!("shared {}", limits.join(", ")),
                )
            }
            ListedSpec::NetRule(spec) => net_target_and_limit(spec.rule()),
            ListedSpec::RateLimit(spec) => match spec.rule() {
                RateLimitRule::Outbound(rule) => {
                    let scope = match &rule.scope {
                        ScopeRequest::All => "outbound".to_owned(),
                        ScopeRequest::Cgroup(path) => format!("outbound cgroup {}", path.display()),
                        ScopeRequest::Netns(path) => format!("outbound netns {}", path.display()),
                    };
                    let per_caller = if rule.per_caller { " per caller" } else { "" };
                    (
                        format!("{scope} {}", rule.destination),
                        format!("{}{per_caller}", rule.limit),
                    )
                }
                RateLimitRule::Inbound(rule) => net_target_and_limit(rule),
            },
        };
        rows.push([
            item.kind.name().to_owned(),
            item.metadata.name.clone(),
            item.status.origin.name().to_owned(),
            target,
            limit,
        ]);
    }
    table(&rows)
}

fn rate(d: &DirectionView) -> String {
    Rate::from_bits(d.rate_bits_per_second)
        .map_or_else(|_| d.rate_bits_per_second.to_string(), |r| r.to_string())
}

fn burst(d: &DirectionView) -> String {
    let size = Size::from_bytes(d.burst_bytes)
        .map_or_else(|_| d.burst_bytes.to_string(), |s| s.to_string());
    if d.burst_is_default {
        format!("{size}*")
    } else {
        size
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// One line about a rule: where, what it matches, how it limits.
pub fn net_rule(record: &NetRuleRecord) -> String {
    let spec = &record.spec;
    format!(
        "rule {}: {} on {}, {}: {}{}",
        record.id,
        spec.hook.name(),
        spec.device,
        net_match(spec),
        net_limit(&spec.limit),
        net_sources(spec.sources)
    )
}

/// `rein get`'s target and limit columns of a net rule (an inbound connection limit is one).
fn net_target_and_limit(rule: &NetRuleSpec) -> (String, String) {
    (
        format!("{} {}", rule.device, rule.hook.name()),
        format!(
            "{}: {}{}",
            net_match(rule),
            net_limit(&rule.limit),
            net_sources(rule.sources)
        ),
    )
}

fn net_match(spec: &NetRuleSpec) -> String {
    let mut parts = Vec::new();
    if let Some(source) = spec.source {
        parts.push(format!("from {source}"));
    }
    if let Some(destination) = spec.destination {
        parts.push(format!("to {destination}"));
    }
    if let Some(protocol) = spec.protocol {
        parts.push(protocol.name().to_owned());
    }
    if let Some(port) = spec.port {
        parts.push(format!("port {port}"));
    }
    if parts.is_empty() {
        "all IP traffic".into()
    } else {
        parts.join(" ")
    }
}

fn net_amount(per: Per, amount: u64) -> String {
    match per {
        Per::Bytes => {
            Size::from_bytes(amount).map_or_else(|_| format!("{amount}b"), |s| s.to_string())
        }
        Per::Packets => format!("{amount} packets"),
    }
}

fn net_limit(limit: &NetLimit) -> String {
    match *limit {
        NetLimit::Connections { rate, burst } => {
            format!("{rate} new connections (burst {burst})")
        }
        NetLimit::TokenBucket { per, rate, burst } => {
            let rate = match per {
                Per::Bytes => Rate::from_bits(rate * 8)
                    .map_or_else(|_| format!("{rate} bytes/s"), |r| r.to_string()),
                Per::Packets => format!("{rate} pps"),
            };
            format!("{rate} (token bucket, burst {})", net_amount(per, burst))
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
            let kind = if matches!(limit, NetLimit::FixedWindow { .. }) {
                "fixed"
            } else {
                "sliding"
            };
            let window = Period::try_from(window_ns)
                .map_or_else(|_| format!("{window_ns}ns"), |p| p.to_string());
            format!("{} per {window} ({kind} window)", net_amount(per, capacity))
        }
    }
}

fn net_sources(sources: Sources) -> String {
    match sources {
        Sources::Shared => String::new(),
        Sources::Exact => ", per source".into(),
        Sources::Sketch { size } => format!(
            ", per source in a {size} sketch ({})",
            bytes(size.memory_bytes())
        ),
    }
}

pub fn net_list(views: &[NetRuleView]) -> String {
    if views.is_empty() {
        return "no rein net rules\n".into();
    }
    let mut rows =
        vec![["ID", "DEV", "HOOK", "MATCH", "LIMIT", "PASSED", "DROPPED"].map(String::from)];
    for view in views {
        let spec = &view.record.spec;
        rows.push([
            view.record.id.to_string(),
            if view.attached {
                spec.device.clone()
            } else {
                format!("{} (gone)", spec.device)
            },
            spec.hook.name().into(),
            net_match(spec),
            format!("{}{}", net_limit(&spec.limit), net_sources(spec.sources)),
            format!("{} pkt / {}", view.passed_packets, bytes(view.passed_bytes)),
            format!(
                "{} pkt / {}",
                view.dropped_packets,
                bytes(view.dropped_bytes)
            ),
        ]);
        for source in &view.top_sources {
            rows.push([
                String::new(),
                String::new(),
                String::new(),
                format!("  source {}", source.address),
                String::new(),
                format!(
                    "{} pkt / {}",
                    source.passed_packets,
                    bytes(source.passed_bytes)
                ),
                format!(
                    "{} pkt / {}",
                    source.dropped_packets,
                    bytes(source.dropped_bytes)
                ),
            ]);
        }
    }
    table(&rows)
}

/// One line about a conn rule: what it counts, whose, how many.
pub fn conn_rule(record: &ConnRuleRecord) -> String {
    let spec = &record.spec;
    format!(
        "rule {}: connections {} from {}: {}",
        record.id,
        conn_match(spec),
        spec.scope,
        conn_limit(spec)
    )
}

fn conn_match(spec: &ConnRuleSpec) -> String {
    let protocol = spec.protocol.map_or("tcp+udp", |p| p.name());
    format!("to {} {protocol}", spec.destination)
}

fn conn_limit(spec: &ConnRuleSpec) -> String {
    if spec.per_caller {
        format!("{}, per caller netns", spec.limit)
    } else {
        spec.limit.to_string()
    }
}

/// `rein conn list`: outbound rules, then inbound ones (net rules counting connections).
pub fn conn_list(views: &[ConnRuleView], inbound: &[NetRuleView]) -> String {
    if views.is_empty() && inbound.is_empty() {
        return "no rein conn rules\n".into();
    }
    let mut out = String::new();
    if !views.is_empty() {
        out.push_str("outbound:\n");
        out.push_str(&outbound_conn_list(views));
    }
    if !inbound.is_empty() {
        out.push_str("inbound:\n");
        out.push_str(&net_list(inbound));
    }
    out
}

fn outbound_conn_list(views: &[ConnRuleView]) -> String {
    let mut rows = vec![
        [
            "ID", "MATCH", "SCOPE", "LIMIT", "ALLOWED", "REFUSED", "TOKENS",
        ]
        .map(String::from),
    ];
    for view in views {
        let spec = &view.record.spec;
        let refused = if view.refused_table_full > 0 {
            format!(
                "{} ({} callers table full)",
                view.refused, view.refused_table_full
            )
        } else {
            view.refused.to_string()
        };
        rows.push([
            view.record.id.to_string(),
            conn_match(spec),
            spec.scope.to_string(),
            conn_limit(spec),
            view.allowed.to_string(),
            refused,
            view.tokens.map_or_else(|| "-".into(), |t| t.to_string()),
        ]);
        for caller in &view.top_callers {
            rows.push([
                String::new(),
                format!("  caller netns {}", caller.netns),
                String::new(),
                String::new(),
                caller.allowed.to_string(),
                caller.refused.to_string(),
                caller.tokens.to_string(),
            ]);
        }
    }
    table(&rows)
}

pub fn doctor(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let status = if check.ok { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "{status} {:<9} {}", check.name, check.detail);
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "     {:<9} fix: {fix}", "");
        }
    }
    out
}
