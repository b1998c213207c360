//! One row per scenario and limiter: the text table and the JSON file.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    cli::{Direction, Limiter, Mix, Proto, Rate, Scenario},
    traffic::Traffic,
};

/// What one scenario measured through one limiter. Absent values are `null` in the JSON and `-`
/// in the table.
///
/// A side-by-side row is two clients, each under its own limit of `rate`; a start/stop row is one
/// limited client with flow A for the whole run and flow B for `b_seconds` of it (see
/// [`Traffic`] for how their numbers are combined).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub limiter: Limiter,
    /// `single`, `side-by-side` or `start-stop` (rows of older documents have none: single).
    pub mix: Mix,
    pub direction: Direction,
    pub proto: Proto,
    /// The limit, in bit/s.
    pub rate_bps: u64,
    pub rate: String,
    /// Per client; flow A's for start/stop.
    pub flows: u32,
    /// The receiver's rate over the measured seconds / the limit. Side by side: the mean of the
    /// two clients' ratios. Start/stop: (A's bytes + B's bytes) / (limit x A's seconds).
    pub goodput_ratio: Option<f64>,
    /// Side by side: the lower of the two clients' goodput ratios.
    pub worst_goodput: Option<f64>,
    /// Start/stop: when flow B started, in whole seconds after A's measured seconds began, and
    /// how many seconds it ran.
    pub b_start_s: Option<u32>,
    pub b_seconds: Option<u32>,
    /// The receivers' rate (side by side: both clients' summed).
    pub received_bps: Option<f64>,
    pub sent_bps: Option<f64>,
    /// TCP: the sender's retransmissions over the measured seconds (summed over both clients or
    /// flows).
    pub retransmits: Option<u64>,
    /// TCP: mean over the streams of the sender's smoothed RTT, in µs (side by side: the mean of
    /// the two clients'; start/stop: flow A's).
    pub tcp_rtt_us: Option<f64>,
    /// TCP: ping from the limited side to the server during the run (side by side: from client 1
    /// only, under its limit, while both clients run).
    pub ping_avg_ms: Option<f64>,
    pub ping_p99_ms: Option<f64>,
    /// Echo requests asked for (`ping -c`), sent (ping's own count: it sends fewer when the
    /// kernel refuses some locally) and answered.
    pub ping_requested: Option<u32>,
    pub ping_sent: Option<u32>,
    pub ping_replies: Option<u32>,
    /// TCP with more than one flow: Jain's index over the streams' receiver rates. Side by side:
    /// over the two clients' goodput ratios.
    pub jain: Option<f64>,
    /// The receiver's largest full 1-s interval rate / the limit. Side by side: the higher of the
    /// two clients'. Start/stop: of A's and B's intervals summed, B's shifted by its start
    /// (approximate: whole seconds).
    pub max_1s_ratio: Option<f64>,
    pub udp_lost_percent: Option<f64>,
    /// Busy CPU seconds of the whole machine during the run, per GB (1e9 bytes) received.
    pub cpu_s_per_gb: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub wall_seconds: Option<f64>,
    /// Why the run gave no measurement.
    pub error: Option<String>,
}

impl Row {
    /// A row with the scenario filled in and nothing measured yet.
    pub fn new(scenario: &Scenario, limiter: Limiter) -> Self {
        Self {
            limiter,
            mix: scenario.mix,
            direction: scenario.direction,
            proto: scenario.proto,
            rate_bps: scenario.rate.bits_per_second(),
            rate: scenario.rate.to_string(),
            flows: scenario.flows,
            goodput_ratio: None,
            worst_goodput: None,
            b_start_s: None,
            b_seconds: None,
            received_bps: None,
            sent_bps: None,
            retransmits: None,
            tcp_rtt_us: None,
            ping_avg_ms: None,
            ping_p99_ms: None,
            ping_requested: None,
            ping_sent: None,
            ping_replies: None,
            jain: None,
            max_1s_ratio: None,
            udp_lost_percent: None,
            cpu_s_per_gb: None,
            cpu_seconds: None,
            wall_seconds: None,
            error: None,
        }
    }

    pub fn failed(scenario: &Scenario, limiter: Limiter, error: &anyhow::Error) -> Self {
        Self {
            error: Some(format!("{error:#}")),
            ..Self::new(scenario, limiter)
        }
    }

    /// Fills in what the traffic measured.
    pub fn set_traffic(&mut self, t: Traffic) {
        self.goodput_ratio = Some(t.goodput_ratio);
        self.worst_goodput = t.worst_goodput;
        self.received_bps = Some(t.received_bps);
        self.sent_bps = t.sent_bps;
        self.retransmits = t.retransmits;
        self.tcp_rtt_us = t.rtt_us;
        self.jain = t.jain;
        self.max_1s_ratio = t.max_1s_ratio;
        self.udp_lost_percent = t.udp_lost_percent;
    }

    /// The scenario this row belongs to.
    pub fn scenario(&self) -> Scenario {
        Scenario {
            mix: self.mix,
            direction: self.direction,
            proto: self.proto,
            rate: Rate(self.rate_bps),
            flows: self.flows,
        }
    }
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn int<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

const LEGEND: &str = "
goodput   receiver's rate / limit (TCP payload is at most 1448/1500 = 0.965 of the IP bytes)
pair      (flows column) two clients at once, each its own namespaces, limit at the rate and server,
          1 TCP flow each: goodput = mean of the two clients' goodput, worst = the lower one,
          jain = over the two, max1s = the higher client's; retrans summed, rtt_us the mean; ping
          from client 1 only
churn     (flows column) one limited client: TCP flow A for the whole run, flow B (to a second
          server port) for the middle third: goodput = (A's + B's bytes) / (limit x A's seconds),
          max1s = of A's and B's 1-s intervals summed (aligned to whole seconds, approximate);
          retrans summed, rtt_us A's
retrans   TCP retransmissions of the sender; rtt_us: its mean smoothed RTT over the streams
ping_*    ms, ping from the client to the server during TCP runs; pings: replies / requested
jain      Jain's fairness over the streams' rates; max1s: the largest 1-s rate at the receiver / limit
udp_lost% UDP offered at 2x the limit: datagrams iperf3 sent that did not arrive (0 when the limit
          blocks the sender's socket instead of dropping)
cpu_s/GB  busy CPU seconds of the whole machine (/proc/stat) per GB received
";

const HEADER: [&str; 16] = [
    "limiter",
    "dir",
    "proto",
    "rate",
    "flows",
    "goodput",
    "worst",
    "retrans",
    "rtt_us",
    "ping_avg",
    "ping_p99",
    "pings",
    "jain",
    "max1s",
    "udp_lost%",
    "cpu_s/GB",
];

fn cells(row: &Row) -> Vec<String> {
    let pings = match (row.ping_replies, row.ping_requested) {
        (Some(replies), Some(asked)) => format!("{replies}/{asked}"),
        _ => "-".to_owned(),
    };
    vec![
        row.limiter.to_string(),
        row.direction.to_string(),
        row.proto.to_string(),
        row.rate.clone(),
        row.scenario().flows_label(),
        num(row.goodput_ratio, 3),
        num(row.worst_goodput, 3),
        int(row.retransmits),
        num(row.tcp_rtt_us, 0),
        num(row.ping_avg_ms, 2),
        num(row.ping_p99_ms, 2),
        pings,
        num(row.jain, 3),
        num(row.max_1s_ratio, 3),
        num(row.udp_lost_percent, 1),
        num(row.cpu_s_per_gb, 2),
    ]
}

/// The table: one row per scenario and limiter, a blank line between scenarios (rows of one
/// scenario are adjacent, in the order they were run), failures listed below it.
pub fn table(rows: &[Row]) -> String {
    let mut lines: Vec<Option<Vec<String>>> =
        vec![Some(HEADER.iter().map(|h| (*h).to_owned()).collect())];
    let mut previous: Option<&Row> = None;
    for row in rows {
        if previous.is_some_and(|p| p.scenario() != row.scenario()) {
            lines.push(None);
        }
        let mut c = cells(row);
        if row.error.is_some() {
            c[5] = "FAILED".to_owned();
        }
        lines.push(Some(c));
        previous = Some(row);
    }
    let mut widths = [0usize; HEADER.len()];
    for line in lines.iter().flatten() {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        match line {
            None => out.push('\n'),
            Some(cells) => {
                let mut text = String::new();
                for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                    // Names left-aligned, numbers right-aligned.
                    if i < 3 {
                        let _ = write!(text, "{cell:<w$}  ");
                    } else {
                        let _ = write!(text, "{cell:>w$}  ");
                    }
                }
                out.push_str(text.trim_end());
                out.push('\n');
            }
        }
    }
    out.push_str(LEGEND);
    let failures: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    if !failures.is_empty() {
        out.push_str("\nfailed runs:\n");
        for r in failures {
            let what = match r.mix {
                Mix::Single => format!("{} x{}", r.rate, r.flows),
                Mix::SideBySide | Mix::StartStop => r.scenario().traffic_label(),
            };
            let _ = writeln!(
                out,
                "  {} {} {} {what}: {}",
                r.limiter,
                r.direction,
                r.proto,
                r.error.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

/// The JSON document written to `latest.json`.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub generated: String,
    pub command: Vec<String>,
    pub kernel: String,
    pub seconds: u32,
    pub omitted_seconds: u32,
    pub rows: &'a [Row],
}

pub fn write_json(path: &Path, document: &Document<'_>) -> Result<()> {
    let text = serde_json::to_string_pretty(document).context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(flows: u32) -> Scenario {
        Scenario {
            mix: Mix::Single,
            direction: Direction::Egress,
            proto: Proto::Tcp,
            rate: Rate(10_000_000),
            flows,
        }
    }

    #[test]
    fn table_groups_scenarios_and_lists_failures() {
        let mut a = Row::new(&scenario(1), Limiter::Rein);
        a.goodput_ratio = Some(0.9651);
        a.retransmits = Some(0);
        a.ping_requested = Some(30);
        a.ping_replies = Some(29);
        let b = Row::failed(&scenario(1), Limiter::Tbf, &anyhow::anyhow!("tc said no"));
        let c = Row::new(&scenario(4), Limiter::Rein);
        let text = table(&[a, b, c]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("limiter  dir"), "{text}");
        assert!(
            lines[1].contains("0.965") && lines[1].contains("29/30"),
            "{text}"
        );
        assert!(lines[2].contains("FAILED"), "{text}");
        assert_eq!(lines[3], "", "{text}");
        assert!(lines[4].starts_with("rein"), "{text}");
        assert!(text.contains("tbf egress tcp 10M x1: tc said no"), "{text}");
    }

    #[test]
    fn pair_and_churn_rows() {
        let pair = Scenario {
            mix: Mix::SideBySide,
            ..scenario(1)
        };
        let churn = Scenario {
            mix: Mix::StartStop,
            ..scenario(1)
        };
        let mut a = Row::new(&pair, Limiter::Rein);
        a.goodput_ratio = Some(0.72);
        a.worst_goodput = Some(0.48);
        a.jain = Some(0.9);
        let b = Row::new(&pair, Limiter::Tbf);
        let c = Row::failed(&churn, Limiter::Cni, &anyhow::anyhow!("no gateway"));
        let text = table(&[a, b, c]);
        let lines: Vec<&str> = text.lines().collect();
        let words =
            |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() };
        assert_eq!(
            words(lines[0])[4..8],
            ["flows", "goodput", "worst", "retrans"]
        );
        let first = words(lines[1]);
        assert_eq!(first[3..7], ["10M", "pair", "0.720", "0.480"], "{text}");
        assert_eq!(first[12], "0.900", "{text}");
        // A scenario of its own: a blank line before it.
        assert_eq!(lines[3], "", "{text}");
        assert!(
            lines[4].contains("churn") && lines[4].contains("FAILED"),
            "{text}"
        );
        assert!(
            text.contains("cni egress tcp 10M churn: no gateway"),
            "{text}"
        );
        assert!(
            text.contains("\npair ") && text.contains("\nchurn "),
            "{text}"
        );

        let mut row = Row::new(&churn, Limiter::Rein);
        row.b_start_s = Some(1);
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["mix"], "start-stop");
        assert_eq!(v["b_start_s"], 1);
        assert!(v["worst_goodput"].is_null());
        assert_eq!(row.scenario(), churn);
    }

    #[test]
    fn rows_serialise_with_nulls() {
        let row = Row::new(&scenario(4), Limiter::Cni);
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["limiter"], "cni");
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["rate_bps"], 10_000_000);
        assert!(v["jain"].is_null());
        assert_eq!(v["mix"], "single");
    }
}
