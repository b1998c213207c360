//! The document (`net-latest.json`) and the text tables.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::net::{
    cli::CliTiming,
    flood::{self, FloodRow},
    object::MAPS,
    sketch,
    testrun::{self, Case, Hook},
};

#[derive(Debug, Serialize)]
pub struct Document {
    pub generated: String,
    pub command: Vec<String>,
    pub kernel: String,
    pub cpus: usize,
    pub quick: bool,
    pub sections: Vec<String>,
    pub settings: Settings,
    pub wall_seconds: f64,
    pub section_seconds: Vec<SectionTime>,
    pub testrun: testrun::Results,
    pub sketch: sketch::Results,
    pub cli: Vec<CliTiming>,
    pub flood: Vec<FloodRow>,
    /// Sections that failed, with why.
    pub errors: Vec<String>,
}

/// What the sections were run with.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub testrun: testrun::Config,
    pub sketch: sketch::Config,
    pub cli_reps: u32,
    pub flood: flood::Config,
    /// The flood offers twice the limit, in UDP datagrams of this many bytes.
    pub flood_payload_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct SectionTime {
    pub section: String,
    pub seconds: f64,
}

pub fn write_json(path: &Path, document: &Document) -> Result<()> {
    let text = serde_json::to_string_pretty(document).context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Columns: the header, and whether the column is text (left-aligned) or a number.
struct Table {
    header: Vec<String>,
    text_columns: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<S: Into<String>>(header: impl IntoIterator<Item = S>, text_columns: usize) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            text_columns,
            rows: Vec::new(),
        }
    }

    fn render(&self, out: &mut String) {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String], out: &mut String| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i < self.text_columns {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                } else {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&self.header, out);
        for row in &self.rows {
            line(row, out);
        }
    }
}

/// 1, 10k, 1M.
pub fn count(n: u32) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn bytes(n: f64) -> String {
    let a = n.abs();
    if a >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if a >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// All tables, in the order of the sections.
pub fn tables(doc: &Document) -> String {
    let mut out = String::new();
    if !doc.testrun.timings.is_empty() {
        testrun_table(&doc.testrun, &mut out);
        memory_table(&doc.testrun, &mut out);
        updates_table(&doc.testrun, &doc.cli, &mut out);
    } else if !doc.cli.is_empty() {
        updates_table(&doc.testrun, &doc.cli, &mut out);
    }
    if !doc.flood.is_empty() {
        flood_table(&doc.flood, &mut out);
    }
    if !doc.sketch.model.is_empty() || !doc.sketch.kernel.is_empty() {
        sketch_tables(&doc.sketch, &mut out);
    }
    for error in &doc.errors {
        let _ = writeln!(out, "FAILED: {error}");
    }
    out
}

fn testrun_table(results: &testrun::Results, out: &mut String) {
    let levels = results.levels();
    let _ = writeln!(
        out,
        "\n1. ns per packet: BPF_PROG_TEST_RUN, best of {} calls of {} runs each (the kernel's \
         average per run, whole ns; medians in the JSON); 106-byte IPv4 / 126-byte IPv6 UDP \
         frames",
        results.rounds, results.repeat
    );
    let mut header = vec!["program".to_owned(), "case".to_owned()];
    header.extend(
        levels
            .iter()
            .map(|&l| format!("{} rule{}", count(l), if l == 1 { "" } else { "s" })),
    );
    let last = levels.last().copied();
    let (second, last_label) = match (levels.get(1), last) {
        (Some(&a), Some(b)) if levels.len() > 2 => (Some(a), format!("{}->{}", count(a), count(b))),
        _ => (None, String::new()),
    };
    if second.is_some() {
        header.push(format!("change {last_label}"));
    }
    header.push("over pass-through".to_owned());
    let mut table = Table::new(header, 2);
    for hook in Hook::ALL {
        for case in Case::ALL {
            let mut row = vec![hook.label().to_owned(), case.label().to_owned()];
            let ns = |rules: u32| results.timing(hook, case, rules).map(|t| t.ns);
            for &level in &levels {
                row.push(ns(level).map_or_else(|| "-".to_owned(), |v| v.to_string()));
            }
            if let (Some(second), Some(last)) = (second, last) {
                row.push(match (ns(second), ns(last)) {
                    (Some(a), Some(b)) if a > 0 => {
                        format!(
                            "{:+.1}%",
                            (f64::from(b) - f64::from(a)) / f64::from(a) * 100.0
                        )
                    }
                    _ => "-".to_owned(),
                });
            }
            let over = last.and_then(|l| {
                let pass = results.timing(hook, Case::PassThrough, l)?.ns;
                let own = ns(l)?;
                (case != Case::PassThrough).then(|| i64::from(own) - i64::from(pass))
            });
            row.push(over.map_or_else(|| "-".to_owned(), |v| format!("{v:+}")));
            table.rows.push(row);
        }
    }
    table.render(out);
}

fn memory_table(results: &testrun::Results, out: &mut String) {
    let Some(empty) = results.memory.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\n2. Memory (tc ingress object). memlock = the kernel's own estimate per map \
         (/proc/self/fdinfo); slab+percpu = SUnreclaim + Percpu of /proc/meminfo, system-wide"
    );
    let mut parts = Vec::new();
    for name in MAPS {
        if let Some(m) = empty.memlock(name) {
            parts.push(format!(
                "{} {}",
                name.trim_start_matches("REIN_NET_"),
                bytes(m as f64)
            ));
        }
    }
    let _ = writeln!(
        out,
        "empty object: {} in all ({})",
        bytes(empty.total() as f64),
        parts.join(", ")
    );
    let mut table = Table::new(
        vec![
            "rules",
            "memlock of rule maps, added",
            "per rule",
            "slab+percpu, added",
            "per rule",
        ],
        0,
    );
    for per in &results.per_rule {
        let rules = f64::from(per.rules);
        table.rows.push(vec![
            count(per.rules),
            bytes(per.memlock_bytes_per_rule * rules),
            format!("{:.0} B", per.memlock_bytes_per_rule),
            bytes(per.kernel_bytes_per_rule * rules),
            format!("{:.0} B", per.kernel_bytes_per_rule),
        ]);
    }
    table.render(out);
    if let Some(s) = &results.sketch_memory {
        let _ = writeln!(
            out,
            "sketch {}: {} per rule ({} cells x 8 B); the sketch array all sketch rules share \
             ({} cells) has memlock {} (preallocated, whatever the rules)",
            s.size,
            bytes(s.rule_bytes as f64),
            s.rule_bytes / 8,
            s.array_cells,
            s.array_memlock.map_or_else(
                || "unknown".to_owned(),
                |m| format!("{m} B = {}", bytes(m as f64))
            ),
        );
    }
}

fn updates_table(results: &testrun::Results, cli: &[CliTiming], out: &mut String) {
    if !results.updates.is_empty() {
        let _ = writeln!(
            out,
            "\n3. Updates through NetDatapath (one syscall per map entry; times of the attempt \
             that succeeded, total with the ENOMEM retries)"
        );
        let mut table = Table::new(
            vec![
                "program",
                "op",
                "rules",
                "count",
                "total s",
                "mean us",
                "p99 us",
                "max us",
                "ENOMEM retries",
            ],
            3,
        );
        for u in &results.updates {
            table.rows.push(vec![
                u.hook.label().to_owned(),
                u.operation.to_owned(),
                format!("{} -> {}", count(u.from_rules), count(u.to_rules)),
                u.count.to_string(),
                format!("{:.2}", u.total_s),
                format!("{:.1}", u.mean_us),
                format!("{:.1}", u.p99_us),
                format!("{:.0}", u.max_us),
                format!("{} ({:.2} s)", u.enomem_retries, u.retry_s),
            ]);
        }
        table.render(out);
    }
    if !cli.is_empty() {
        let reps = cli.first().map_or(0, |c| c.samples_ms.len());
        let _ = writeln!(
            out,
            "\n   The rein CLI on a veth in a namespace (whole command, {reps} times each), ms"
        );
        let mut table = Table::new(vec!["hook", "call", "median", "max"], 2);
        for c in cli {
            table.rows.push(vec![
                c.hook.to_owned(),
                c.action.label().to_owned(),
                format!("{:.1}", c.median_ms),
                format!("{:.1}", c.max_ms),
            ]);
        }
        table.render(out);
    }
}

fn flood_table(rows: &[FloodRow], out: &mut String) {
    let seconds = rows.first().map_or(0, |r| r.seconds);
    let _ = writeln!(
        out,
        "\n4. UDP flood between two namespaces (iperf3 -u -l 64 at 2x the limit, {seconds} s \
         measured after 1 s left out); burst 10 ms at the limit; tbf limits bytes (106 per \
         frame); passed/dropped are the limiter's own counts over the whole run"
    );
    let mut table = Table::new(
        vec![
            "limit pps",
            "limiter",
            "offered pps",
            "delivered pps",
            "delivered/limit",
            "passed",
            "dropped",
        ],
        2,
    );
    let mut notes = Vec::new();
    for r in rows {
        let mut row = vec![r.limit_pps.to_string(), r.limiter.label().to_owned()];
        if let Some(why) = r.unsupported.as_ref().or(r.error.as_ref()) {
            let kind = if r.unsupported.is_some() {
                "unsupported"
            } else {
                "FAILED"
            };
            row.push(kind.to_owned());
            let note = format!("{}: {kind}: {why}", r.limiter.label());
            if !notes.contains(&note) {
                notes.push(note);
            }
        } else {
            row.extend([
                opt(r.offered_pps, 0),
                opt(r.delivered_pps, 0),
                opt(r.delivered_ratio, 3),
                r.limiter_passed
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                r.limiter_dropped
                    .map_or_else(|| "-".into(), |v| v.to_string()),
            ]);
        }
        table.rows.push(row);
    }
    table.render(out);
    if rows
        .iter()
        .any(|r| r.offered_pps.is_some_and(|o| o < 1.5 * r.limit_pps as f64))
    {
        notes.push(
            "offered below 2x the limit: the limiter held the sender back (a queue, not a drop: \
             the packets it holds keep the sender's socket buffer full)"
                .to_owned(),
        );
    }
    for note in notes {
        let _ = writeln!(out, "   {note}");
    }
}

fn sketch_tables(results: &sketch::Results, out: &mut String) {
    if let Some(first) = results.model.first() {
        let _ = writeln!(
            out,
            "\n5. Count-min sketch (conservative update) vs exact counts: rein's model, {} \
             packets from {} IPv6 sources seen (Zipf, exponent {}); overestimate = estimate - \
             exact, in packets (% of all packets)",
            first.packets, first.sources_seen, results.exponent
        );
        let pct = |v: f64| format!("{v:.1} ({:.3}%)", v / f64::from(first.packets) * 100.0);
        let mut table = Table::new(
            vec![
                "sketch",
                "memory",
                "mean over",
                "p99 over",
                "max over",
                "bound e/w*N",
                "top-10 max over",
            ],
            1,
        );
        for m in &results.model {
            table.rows.push(vec![
                format!("{}x{}", m.width, m.depth),
                bytes(m.memory_bytes as f64),
                pct(m.mean_over),
                pct(m.p99_over),
                pct(m.max_over),
                format!("{:.0}", m.bound),
                format!(
                    "{} ({:.3}% of its count)",
                    m.top10_max_over(),
                    m.top10_max_relative() * 100.0
                ),
            ]);
        }
        table.render(out);
    }
    if let Some(first) = results.kernel.first() {
        let _ = writeln!(
            out,
            "\n   The kernel (XDP, BPF_PROG_TEST_RUN): {} packets from {} sources (Zipf), \
             per-source fixed window of {} packets; light = at most {} packets in the trace",
            first.packets, first.sources, first.capacity, first.capacity
        );
        let mut table = Table::new(
            vec![
                "mode",
                "light pkts",
                "light refused (false limiting)",
                "light srcs hit",
                "heavy srcs",
                "heavy passed",
                "heavy cut short (worst)",
                "kernel = model",
            ],
            1,
        );
        for k in &results.kernel {
            table.rows.push(vec![
                k.mode.clone(),
                k.light_packets.to_string(),
                format!("{} ({:.3}%)", k.light_refused, k.false_limiting() * 100.0),
                k.light_sources_hit.to_string(),
                k.heavy_sources.to_string(),
                k.heavy_passed.to_string(),
                format!("{} ({})", k.heavy_cut_short, k.heavy_worst_short),
                k.model_mismatches.map_or_else(
                    || "-".to_owned(),
                    |m| {
                        if m == 0 {
                            "yes".to_owned()
                        } else {
                            format!("no: {m} packets differ")
                        }
                    },
                ),
            ]);
        }
        table.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes() {
        assert_eq!(count(1), "1");
        assert_eq!(count(10_000), "10k");
        assert_eq!(count(1_000_000), "1M");
        assert_eq!(count(12_345), "12345");
        assert_eq!(bytes(131_072.0), "128.0 KiB");
        assert_eq!(bytes(356.0), "356 B");
        assert_eq!(bytes(16_778_112.0), "16.0 MiB");
    }

    #[test]
    fn tables_align() {
        let mut table = Table::new(vec!["name", "n"], 1);
        table.rows.push(vec!["a".into(), "1000".into()]);
        table.rows.push(vec!["longer".into(), "2".into()]);
        let mut out = String::new();
        table.render(&mut out);
        assert_eq!(out, "name       n\na       1000\nlonger     2\n");
    }
}
