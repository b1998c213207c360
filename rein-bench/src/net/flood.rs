//! A UDP flood of small packets (iperf3 -u -l 64, offered at twice the limit) from a client
//! namespace to a server namespace over a veth pair (a /30 of 198.18.0.0/15), against a
//! packet-rate limit on the server's ingress:
//! - rein at XDP and at tc ingress (`rein net add --pps N --burst N/100`, UDP to the server);
//! - tc police with a packet rate (`pkts_rate`/`pkts_burst`) on a u32 filter for UDP at clsact
//!   ingress: the classic policer, where the kernel has it;
//! - ifb + tbf: the classic way to shape ingress (u32 + mirred to an ifb device, tbf on it);
//! - tbf on the client's egress.
//!
//! tbf counts bytes, not packets: it gets N x 106 bytes/s (the flood's frames: 64 bytes of
//! payload + UDP, IP and Ethernet headers) and a burst of 10 ms at that rate, like the others.
//!
//! Delivered: what the iperf3 server received over the measured seconds (the first second, with
//! the burst, is left out: iperf3 -O 1), in packets/s. Offered: what the client sent over the
//! same seconds. Every run gets fresh namespaces, removed with all their links, qdiscs and
//! programs after it (the rein rule is deleted first).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rein_testkit::{
    iperf::{self, ClientOptions, PORT, Server},
    netns::{self, HostPair, Netns},
    process::{self, Cmd},
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    net::rein::{Rein, Rule},
    stop,
};
/// UDP payload of the flood's packets, and their frames' length on the veth.
pub const PAYLOAD: u64 = 64;
const FRAME_BYTES: u64 = PAYLOAD + 8 + 20 + 14;
/// iperf3 -O: the first second (the bucket's burst, the server's start) is left out.
const OMIT: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Limits, in packets/s.
    pub limits: Vec<u64>,
    /// Measured seconds per run.
    pub seconds: u32,
    #[serde(skip)]
    pub pid: u32,
}

impl Config {
    /// Offered packets/s for `limit`.
    fn offered(limit: u64) -> u64 {
        2 * limit
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limiter {
    ReinXdp,
    ReinTc,
    TcPolice,
    IfbTbf,
    TbfEgress,
}

impl Limiter {
    pub const ALL: [Limiter; 5] = [
        Limiter::ReinXdp,
        Limiter::ReinTc,
        Limiter::TcPolice,
        Limiter::IfbTbf,
        Limiter::TbfEgress,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::ReinXdp => "rein XDP (server ingress)",
            Self::ReinTc => "rein tc (server ingress)",
            Self::TcPolice => "tc police pkts_rate (ingress)",
            Self::IfbTbf => "ifb + tbf (server ingress)",
            Self::TbfEgress => "tbf (client egress)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::ReinXdp => "rein XDP",
            Self::ReinTc => "rein tc",
            Self::TcPolice => "tc police",
            Self::IfbTbf => "ifb+tbf",
            Self::TbfEgress => "tbf egress",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodRow {
    pub limiter: Limiter,
    pub limit_pps: u64,
    /// What the client was asked to send.
    pub target_pps: u64,
    pub seconds: u32,
    /// What the client sent and the server received, over the measured seconds.
    pub offered_pps: Option<f64>,
    pub delivered_pps: Option<f64>,
    pub delivered_ratio: Option<f64>,
    /// The limiter's own counts over the whole run (omitted second included): packets it let
    /// through (tbf: sent) and dropped.
    pub limiter_passed: Option<u64>,
    pub limiter_dropped: Option<u64>,
    /// Why the limiter could not run here.
    pub unsupported: Option<String>,
    pub error: Option<String>,
}

impl FloodRow {
    fn new(limiter: Limiter, limit: u64, seconds: u32) -> Self {
        Self {
            limiter,
            limit_pps: limit,
            target_pps: Config::offered(limit),
            seconds,
            offered_pps: None,
            delivered_pps: None,
            delivered_ratio: None,
            limiter_passed: None,
            limiter_dropped: None,
            unsupported: None,
            error: None,
        }
    }
}

/// A limiter that could not be set up because the kernel or iproute2 lacks it.
#[derive(Debug)]
struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

pub fn run(config: &Config, rein: &Rein, rows: &mut Vec<FloodRow>) -> Result<()> {
    for &limit in &config.limits {
        for limiter in Limiter::ALL {
            process::check_interrupted()?;
            eprint!(
                "rein-bench-net: flood {limit} pps, {:<30} ",
                limiter.label()
            );
            let mut row = FloodRow::new(limiter, limit, config.seconds);
            match measure(config, rein, limiter, limit, &mut row) {
                Ok(()) => eprintln!(
                    "delivered/limit {}",
                    row.delivered_ratio
                        .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"))
                ),
                Err(e) if stop::is_interruption(&e) => {
                    eprintln!("interrupted");
                    return Err(e);
                }
                Err(e) => {
                    if let Some(u) = e.downcast_ref::<Unsupported>() {
                        eprintln!("unsupported: {u}");
                        row.unsupported = Some(u.0.clone());
                    } else {
                        eprintln!("FAILED: {e:#}");
                        row.error = Some(format!("{e:#}"));
                    }
                }
            }
            rows.push(row);
        }
    }
    Ok(())
}

/// The limit of one run; dropping it deletes a rein rule (qdiscs and filters go with the
/// namespaces).
enum Applied<'a> {
    Rein(Rule<'a>),
    /// A tbf qdisc on `dev` in `ns`.
    Tbf {
        ns: &'a Netns,
        dev: String,
    },
    /// The police action on the server's ingress.
    Police {
        ns: &'a Netns,
        dev: String,
    },
}

impl Applied<'_> {
    /// (passed, dropped) packets, by the limiter's own count.
    fn counters(&self) -> Result<(u64, u64)> {
        match self {
            Self::Rein(rule) => rule.rein.counters(rule.ns, rule.id),
            Self::Tbf { ns, dev } => {
                let stats = tc_json(ns, &["-s", "qdisc", "show", "dev", dev])?;
                let tbf = stats
                    .as_array()
                    .and_then(|q| q.iter().find(|q| q["kind"] == "tbf"))
                    .context("no tbf qdisc in tc's output")?;
                Ok((u64_field(tbf, "packets")?, u64_field(tbf, "drops")?))
            }
            Self::Police { ns, dev } => {
                let filters = tc_json(ns, &["-s", "filter", "show", "dev", dev, "ingress"])?;
                let stats = find_police(&filters).context("no police action in tc's output")?;
                let (seen, dropped) = (u64_field(stats, "packets")?, u64_field(stats, "drops")?);
                Ok((seen.saturating_sub(dropped), dropped))
            }
        }
    }
}

fn tc(ns: &Netns, args: &[&str]) -> Result<String> {
    let argv = ["tc", "-n", ns.name()]
        .into_iter()
        .chain(args.iter().copied());
    Ok(Cmd::new(argv, netns::QUICK).run()?.stdout)
}

fn tc_json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let argv = ["tc", "-j", "-n", ns.name()]
        .into_iter()
        .chain(args.iter().copied());
    let out = Cmd::new(argv, netns::QUICK).run()?;
    serde_json::from_str(&out.stdout).context("parsing tc -j output")
}

fn u64_field(v: &Value, name: &str) -> Result<u64> {
    v.get(name)
        .and_then(Value::as_u64)
        .with_context(|| format!("no {name} in tc's statistics"))
}

/// The statistics of the first police action anywhere in `v`.
fn find_police(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(map) => {
            if map.get("kind").and_then(Value::as_str) == Some("police")
                && let Some(stats) = map.get("stats")
            {
                return Some(stats);
            }
            map.values().find_map(find_police)
        }
        Value::Array(items) => items.iter().find_map(find_police),
        _ => None,
    }
}

/// Sets `limiter` up at `limit` packets/s with a 10 ms burst.
fn apply<'a>(
    limiter: Limiter,
    rein: &'a Rein,
    pair: &'a HostPair,
    limit: u64,
    pid: u32,
) -> Result<Applied<'a>> {
    let link = &pair.link;
    let burst = (limit / 100).max(1);
    let (limit_s, burst_s) = (limit.to_string(), burst.to_string());
    // tbf: bytes of the flood's frames.
    let tbf = |ns: &'a Netns, dev: &str| -> Result<Applied<'a>> {
        let rate = format!("{}bit", limit * FRAME_BYTES * 8);
        let burst = (burst * FRAME_BYTES).to_string();
        tc(
            ns,
            &[
                "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
                "latency", "20ms",
            ],
        )?;
        Ok(Applied::Tbf {
            ns,
            dev: dev.to_owned(),
        })
    };
    let server = pair.server();
    let udp_to_server = [
        "protocol", "ip", "u32", "match", "ip", "protocol", "17", "0xff",
    ];
    match limiter {
        Limiter::ReinXdp | Limiter::ReinTc => {
            let mut args = vec![
                "--dev",
                &link.server_if,
                "--dir",
                "ingress",
                "--dst",
                &link.server_addr,
                "--proto",
                "udp",
                "--pps",
                &limit_s,
                "--burst",
                &burst_s,
            ];
            if limiter == Limiter::ReinXdp {
                args.push("--xdp");
            }
            let id = rein.add(server, &args)?;
            Ok(Applied::Rein(Rule {
                rein,
                ns: server,
                id,
            }))
        }
        Limiter::TcPolice => {
            tc(server, &["qdisc", "add", "dev", &link.server_if, "clsact"])?;
            let mut args = vec!["filter", "add", "dev", &link.server_if, "ingress"];
            args.extend_from_slice(&udp_to_server);
            args.extend_from_slice(&[
                "action",
                "police",
                "pkts_rate",
                &limit_s,
                "pkts_burst",
                &burst_s,
                "conform-exceed",
                "drop",
            ]);
            tc(server, &args).map_err(|e| {
                anyhow::Error::new(Unsupported(format!(
                    "tc police with pkts_rate: {}",
                    tc_reason(&format!("{e:#}"))
                )))
            })?;
            Ok(Applied::Police {
                ns: server,
                dev: link.server_if.clone(),
            })
        }
        Limiter::IfbTbf => {
            // IFNAMSIZ is 16: "rbi" + a pid of at most 7 digits fits.
            let ifb = format!("rbi{pid}");
            netns::ip(&["-n", server.name(), "link", "add", &ifb, "type", "ifb"])?;
            netns::ip(&["-n", server.name(), "link", "set", &ifb, "up"])?;
            let applied = tbf(server, &ifb)?;
            tc(server, &["qdisc", "add", "dev", &link.server_if, "clsact"])?;
            let mut args = vec!["filter", "add", "dev", &link.server_if, "ingress"];
            args.extend_from_slice(&udp_to_server);
            args.extend_from_slice(&["action", "mirred", "egress", "redirect", "dev", &ifb]);
            tc(server, &args)?;
            Ok(applied)
        }
        Limiter::TbfEgress => tbf(pair.client(), &link.client_if),
    }
}

/// tc's own reason from a failed command's error (`... failed (exit status 2): Error: Failed
/// to load TC action module. / We have an error talking to the kernel`).
fn tc_reason(text: &str) -> String {
    let tail = text.rsplit_once("): ").map_or(text, |(_, tail)| tail);
    tail.split(" / ")
        .find(|part| part.contains("Error"))
        .unwrap_or(tail)
        .trim()
        .to_owned()
}

fn measure(
    config: &Config,
    rein: &Rein,
    limiter: Limiter,
    limit: u64,
    row: &mut FloodRow,
) -> Result<()> {
    let pair = HostPair::create("rein-bench-net")?;
    let applied = apply(limiter, rein, &pair, limit, config.pid)?;
    let deadline = Duration::from_secs(u64::from(config.seconds + OMIT) + 20);
    let server_addr = &pair.link.server_addr;
    let _server = Server::one_off(pair.server(), server_addr, PORT, deadline)?;
    let options = ClientOptions {
        seconds: config.seconds,
        omit: OMIT,
        udp_bitrate: Some((Config::offered(limit) * PAYLOAD * 8).to_string()),
        length: Some(PAYLOAD as u32),
        server_output: true,
        ..ClientOptions::default()
    };
    let client_argv = pair
        .client()
        .exec(&iperf::client_argv(server_addr, PORT, &options));
    let out = Cmd::new(client_argv, deadline).run()?;
    let report: Value = serde_json::from_str(&out.stdout).context("parsing iperf3's JSON")?;
    let offered = packet_rate(report.get("intervals")).context("the client's intervals")?;
    let delivered = packet_rate(report.pointer("/server_output_json/intervals"))
        .context("the server's intervals")?;
    let (passed, dropped) = applied.counters()?;
    row.offered_pps = Some(offered);
    row.delivered_pps = Some(delivered);
    row.delivered_ratio = Some(delivered / limit as f64);
    row.limiter_passed = Some(passed);
    row.limiter_dropped = Some(dropped);
    // The rule goes before the namespaces.
    drop(applied);
    Ok(())
}

/// Packets/s over the intervals iperf3 did not mark omitted.
fn packet_rate(intervals: Option<&Value>) -> Result<f64> {
    let intervals = intervals
        .and_then(Value::as_array)
        .context("no intervals")?;
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for interval in intervals {
        let sum = &interval["sum"];
        if sum["omitted"].as_bool() == Some(true) {
            continue;
        }
        bytes += sum["bytes"].as_f64().context("an interval without bytes")?;
        seconds += sum["seconds"]
            .as_f64()
            .context("an interval without seconds")?;
    }
    if seconds <= 0.0 {
        bail!("no measured intervals");
    }
    Ok(bytes / PAYLOAD as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rates_leave_omitted_intervals_out() {
        let intervals = json!([
            {"sum": {"bytes": 64_000_000, "seconds": 1.0, "omitted": true}},
            {"sum": {"bytes": 640_000, "seconds": 1.0, "omitted": false}},
            {"sum": {"bytes": 1_280_000, "seconds": 1.0, "omitted": false}},
        ]);
        assert_eq!(packet_rate(Some(&intervals)).unwrap(), 15_000.0);
        assert!(packet_rate(Some(&json!([]))).is_err());
        assert!(packet_rate(None).is_err());
    }

    #[test]
    fn picks_the_reason_of_a_tc_error() {
        let e = "`tc -n x filter add ...` failed (exit status 2): Error: Failed to load TC action \
                 module. / We have an error talking to the kernel";
        assert_eq!(tc_reason(e), "Error: Failed to load TC action module.");
        assert_eq!(tc_reason("plain"), "plain");
    }

    #[test]
    fn finds_police_statistics() {
        let filters = json!([{"kind": "u32", "options": {"actions": [
            {"kind": "police", "stats": {"packets": 10, "drops": 4}}
        ]}}]);
        assert_eq!(find_police(&filters).unwrap()["drops"], 4);
        assert!(find_police(&json!([{"kind": "u32"}])).is_none());
    }
}
