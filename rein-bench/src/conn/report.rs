//! The statistics, the document (`conn-latest.json`) and the text table.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::conn::{
    args::Section,
    flood::{self, FloodRow, LegitRow},
    latency,
};

/// The value at quantile `q` (0..=1) of ascending `sorted`, by nearest rank; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median and range of one figure over the rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median (the mean of the middle two for an even count) and the extremes; all 0 when
    /// empty.
    pub fn of(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n == 0 {
            return Self::default();
        }
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }

    /// `123 (120-130)`, whole ns.
    fn text(&self) -> String {
        format!("{:.0} ({:.0}-{:.0})", self.median, self.min, self.max)
    }
}

/// One round of one variant: the quantiles of its connects' latencies, in ns.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Round {
    pub median_ns: u64,
    pub p99_ns: u64,
}

impl Round {
    /// The round of `samples` (ns, in any order).
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        Self {
            median_ns: quantile(samples, 0.5),
            p99_ns: quantile(samples, 0.99),
        }
    }
}

/// A variant's result over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub variant: latency::Variant,
    pub label: String,
    pub rounds: Vec<Round>,
    /// Median over the rounds of each round's median, and its range.
    pub median_ns: Spread,
    /// Median over the rounds of each round's 99th percentile, and its range.
    pub p99_ns: Spread,
    /// `median_ns.median` minus that of "no program"; None for it, or when it was not
    /// measured.
    pub over_none_ns: Option<f64>,
}

impl Row {
    pub fn new(variant: latency::Variant, rounds: Vec<Round>) -> Self {
        let medians: Vec<f64> = rounds.iter().map(|r| r.median_ns as f64).collect();
        let p99s: Vec<f64> = rounds.iter().map(|r| r.p99_ns as f64).collect();
        Self {
            label: variant.label(),
            variant,
            median_ns: Spread::of(&medians),
            p99_ns: Spread::of(&p99s),
            rounds,
            over_none_ns: None,
        }
    }
}

/// Fills in each row's difference to the row of no program.
pub fn compare_to_none(rows: &mut [Row]) {
    let none = rows
        .iter()
        .find(|r| r.variant == latency::Variant::NoProgram)
        .map(|r| r.median_ns.median);
    for row in rows {
        row.over_none_ns = match (none, row.variant) {
            (_, latency::Variant::NoProgram) | (None, _) => None,
            (Some(none), _) => Some(row.median_ns.median - none),
        };
    }
}

#[derive(Debug, Serialize)]
pub struct Document {
    pub generated: String,
    pub command: Vec<String>,
    pub kernel: String,
    pub cpus: usize,
    pub quick: bool,
    pub sections: Vec<Section>,
    pub settings: latency::Config,
    pub flood_settings: flood::Config,
    pub wall_seconds: f64,
    /// Seconds spent writing the rules into the maps, per rule count.
    pub fill_seconds: Vec<(u32, f64)>,
    pub latency: Vec<Row>,
    pub flood: Vec<FloodRow>,
    pub legit: Vec<LegitRow>,
    /// What failed, with why.
    pub errors: Vec<String>,
}

pub fn write_json(path: &Path, document: &Document) -> Result<()> {
    let text = serde_json::to_string_pretty(document).context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The table, text columns left-aligned and numbers right-aligned.
fn render(header: &[&str], text_columns: usize, rows: &[Vec<String>], out: &mut String) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            if i < text_columns {
                text.push_str(cell);
                text.push_str(&pad);
            } else {
                text.push_str(&pad);
                text.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn tables(doc: &Document) -> String {
    let mut out = String::new();
    if !doc.latency.is_empty() {
        let s = &doc.settings;
        let _ = writeln!(
            out,
            "\n1. connect() latency, ns: non-blocking TCP connect to a black-holed neighbour \
             (returns EINPROGRESS once the SYN is sent), {} connects per variant per round, {} \
             rounds; median over rounds (min-max of the rounds)",
            s.connects, s.rounds
        );
        let rows: Vec<Vec<String>> = doc
            .latency
            .iter()
            .map(|r| {
                vec![
                    r.label.clone(),
                    r.median_ns.text(),
                    r.p99_ns.text(),
                    r.over_none_ns
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:+.0}")),
                ]
            })
            .collect();
        render(
            &["variant", "median", "p99", "median - no program"],
            1,
            &rows,
            &mut out,
        );
        for (rules, seconds) in &doc.fill_seconds {
            let _ = writeln!(
                out,
                "   {} rule{} written through ConnDatapath in {seconds:.1} s",
                count(*rules),
                if *rules == 1 { "" } else { "s" }
            );
        }
    }
    if !doc.flood.is_empty() {
        flood_tables(doc, &mut out);
    }
    for error in &doc.errors {
        let _ = writeln!(out, "FAILED: {error}");
    }
    out
}

fn flood_tables(doc: &Document, out: &mut String) {
    let f = &doc.flood_settings;
    let _ = writeln!(
        out,
        "\n2. Spoofed SYN flood, {} SYN/s offered for {} s from a client namespace over veth, \
         aggregate limit {}/s burst {} (nft ct count: {} connections); admitted = SYNs past \
         the limiter (an nftables counter after it); per second of the flood's own duration; \
         cores = CPU-seconds per second, system-wide (the sender's too in busy); median \
         (min-max) of {} rounds",
        f.offered, f.seconds, f.limit, f.burst, f.limit, f.rounds
    );
    let rows: Vec<Vec<String>> = doc
        .flood
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                format!("{:.0}", r.offered.median),
                format!("{:.0}", r.admitted.median),
                format!("{:.0}", r.dropped.median),
                format!(
                    "{:.0} ({:.0}-{:.0})",
                    r.admitted_per_second.median,
                    r.admitted_per_second.min,
                    r.admitted_per_second.max
                ),
                format!("{:.3}", r.admitted_over_limit.median),
                format!(
                    "{:.2} ({:.2}-{:.2})",
                    r.softirq_cores.median, r.softirq_cores.min, r.softirq_cores.max
                ),
                format!("{:.2}", r.busy_cores.median),
            ]
        })
        .collect();
    render(
        &[
            "limiter",
            "offered",
            "admitted",
            "dropped",
            "admitted/s",
            "/limit",
            "softirq cores",
            "busy cores",
        ],
        1,
        &rows,
        out,
    );
    if doc.legit.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n   A legitimate client (its own address) connecting at {}/s beside the same flood, \
         per-source limit {}/s burst {}: connections established in {} s (expected burst + \
         rate x seconds)",
        f.per_source_rate, f.per_source_rate, f.per_source_burst, f.seconds
    );
    let rows: Vec<Vec<String>> = doc
        .legit
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.expected.to_string(),
                format!(
                    "{:.0} ({:.0}-{:.0})",
                    r.established.median, r.established.min, r.established.max
                ),
                format!("{:.2}", r.ratio.median),
                format!("{:.0}", r.flood_sent.median),
            ]
        })
        .collect();
    render(
        &["limiter", "expected", "established", "ratio", "flood SYNs"],
        1,
        &rows,
        out,
    );
}

/// 1, 10k, 1M.
pub fn count(n: u32) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::latency::Variant;

    #[test]
    fn quantiles_by_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&sorted, 0.5), 50);
        assert_eq!(quantile(&sorted, 0.99), 99);
        assert_eq!(quantile(&sorted, 1.0), 100);
        assert_eq!(quantile(&sorted, 0.0), 1);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn spread_takes_the_middle_and_the_range() {
        let odd = Spread::of(&[5.0, 1.0, 3.0]);
        assert_eq!((odd.median, odd.min, odd.max), (3.0, 1.0, 5.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 10.0]);
        assert_eq!((even.median, even.min, even.max), (3.0, 1.0, 10.0));
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    #[test]
    fn a_round_sorts_its_samples() {
        let mut samples: Vec<u64> = (1..=200).rev().collect();
        let round = Round::of(&mut samples);
        assert_eq!((round.median_ns, round.p99_ns), (100, 198));
    }

    #[test]
    fn rows_compare_to_no_program() {
        let round = |m, p| Round {
            median_ns: m,
            p99_ns: p,
        };
        let mut rows = vec![
            Row::new(Variant::NoProgram, vec![round(100, 200), round(110, 210)]),
            Row::new(Variant::Rules(1), vec![round(150, 300), round(130, 250)]),
        ];
        compare_to_none(&mut rows);
        assert_eq!(rows[0].over_none_ns, None);
        assert_eq!(rows[0].median_ns.median, 105.0);
        assert_eq!(rows[1].over_none_ns, Some(35.0));
        assert_eq!(rows[1].p99_ns.min, 250.0);
        // Without a row of no program there is nothing to compare to.
        let mut alone = vec![Row::new(Variant::Rules(1), vec![round(1, 1)])];
        compare_to_none(&mut alone);
        assert_eq!(alone[0].over_none_ns, None);
    }

    #[test]
    fn table_aligns_and_shows_the_difference() {
        let mut rows = vec![
            Row::new(
                Variant::NoProgram,
                vec![Round {
                    median_ns: 1000,
                    p99_ns: 2000,
                }],
            ),
            Row::new(
                Variant::Rules(1_000_000),
                vec![Round {
                    median_ns: 1250,
                    p99_ns: 2600,
                }],
            ),
        ];
        compare_to_none(&mut rows);
        let doc = Document {
            generated: String::new(),
            command: Vec::new(),
            kernel: String::new(),
            cpus: 2,
            quick: false,
            sections: vec![Section::Latency],
            settings: latency::Config {
                rounds: 1,
                connects: 100,
                rules: vec![1_000_000],
            },
            flood_settings: flood::Config {
                rounds: 1,
                seconds: 3,
                offered: 200_000,
                limit: 1000,
                burst: 100,
                per_source_rate: 10,
                per_source_burst: 5,
            },
            wall_seconds: 0.0,
            fill_seconds: vec![(1_000_000, 9.5)],
            latency: rows,
            flood: vec![FloodRow::new(
                flood::Limiter::NftLimit,
                1000,
                vec![flood::FloodRound {
                    seconds: 3.0,
                    offered: 600_000,
                    admitted: 3_150,
                    softirq_seconds: 0.9,
                    busy_seconds: 3.0,
                }],
            )],
            legit: vec![LegitRow::new(
                flood::PerSource::NftMeter,
                35,
                &[(34, 600_000)],
            )],
            errors: vec!["x: y".into()],
        };
        let text = tables(&doc);
        assert!(
            text.contains(
                "no program              1000 (1000-1000)  2000 (2000-2000)                    -\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "1M rules, one matching  1250 (1250-1250)  2600 (2600-2600)                 +250\n"
            ),
            "{text}"
        );
        assert!(text.contains("1M rules written through ConnDatapath in 9.5 s"));
        assert!(
            text.contains(
                "nft limit rate   600000      3150   596850  1050 (1050-1050)   1.050  0.30 (0.30-0.30)        1.00\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("nft meter ip saddr limit        35   34 (34-34)   0.97      600000\n"),
            "{text}"
        );
        assert!(text.ends_with("FAILED: x: y\n"));
    }

    #[test]
    fn counts_read_short() {
        assert_eq!(count(1), "1");
        assert_eq!(count(10_000), "10k");
        assert_eq!(count(1_000_000), "1M");
        assert_eq!(count(1500), "1500");
    }
}
