//! One row per scenario and limiter: the text table and the JSON file.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{Direction, Limiter, Proto, Rate, Scenario};

/// What one scenario measured through one limiter. Absent values are `null` in the JSON and `-`
/// in the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub limiter: Limiter,
    pub direction: Direction,
    pub proto: Proto,
    /// The limit, in bit/s.
    pub rate_bps: u64,
    pub rate: String,
    pub flows: u32,
    /// The receiver's rate over the measured seconds / the limit.
    pub goodput_ratio: Option<f64>,
    pub received_bps: Option<f64>,
    pub sent_bps: Option<f64>,
    /// TCP: the sender's retransmissions over the measured seconds.
    pub retransmits: Option<u64>,
    /// TCP: mean over the streams of the sender's smoothed RTT, in µs.
    pub tcp_rtt_us: Option<f64>,
    /// TCP: ping from the limited side to the server during the run.
    pub ping_avg_ms: Option<f64>,
    pub ping_p99_ms: Option<f64>,
    /// Echo requests asked for (`ping -c`), sent (ping's own count: it sends fewer when the
    /// kernel refuses some locally) and answered.
    pub ping_requested: Option<u32>,
    pub ping_sent: Option<u32>,
    pub ping_replies: Option<u32>,
    /// TCP with more than one flow: Jain's index over the streams' receiver rates.
    pub jain: Option<f64>,
    /// The receiver's largest full 1-s interval rate / the limit.
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
            direction: scenario.direction,
            proto: scenario.proto,
            rate_bps: scenario.rate.bits_per_second(),
            rate: scenario.rate.to_string(),
            flows: scenario.flows,
            goodput_ratio: None,
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

    /// The scenario this row belongs to.
    pub fn scenario(&self) -> Scenario {
        Scenario {
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
retrans   TCP retransmissions of the sender; rtt_us: its mean smoothed RTT over the streams
ping_*    ms, ping from the client to the server during TCP runs; pings: replies / requested
jain      Jain's fairness over the streams' rates; max1s: the largest 1-s rate at the receiver / limit
udp_lost% UDP offered at 2x the limit: datagrams iperf3 sent that did not arrive (0 when the limit
          blocks the sender's socket instead of dropping)
cpu_s/GB  busy CPU seconds of the whole machine (/proc/stat) per GB received
";

const HEADER: [&str; 15] = [
    "limiter",
    "dir",
    "proto",
    "rate",
    "flows",
    "goodput",
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
        row.flows.to_string(),
        num(row.goodput_ratio, 3),
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
            let _ = writeln!(
                out,
                "  {} {} {} {} x{}: {}",
                r.limiter,
                r.direction,
                r.proto,
                r.rate,
                r.flows,
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
    fn rows_serialise_with_nulls() {
        let row = Row::new(&scenario(4), Limiter::Cni);
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["limiter"], "cni");
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["rate_bps"], 10_000_000);
        assert!(v["jain"].is_null());
    }
}
