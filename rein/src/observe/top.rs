//! `rein top`: every limit's rate now against its limit, its drops and TCP flows, and a
//! sparkline of its last minute, refreshed every second.
//!
//! The view is a pure function of what was read: [`Readings`] from each [`Status`], kept in a
//! [`History`], made into [`Row`]s and those into lines of text ([`lines`]); the terminal part
//! only draws the lines and reads keys. Rates are differences of the kernel's counters between
//! two reads, so they need no agent: the counters live in the pinned maps.
use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    io,
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::Paragraph,
};

use crate::{
    capabilities::{
        cgroup_limit::DirectionView,
        conn_limits::spec::ConnLimit,
        net_rules::spec::{NetHook, NetLimit, Per},
    },
    engine::Status,
    error::{Error, Result},
    instance::Instance,
};

/// How often the view reads the counters.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Samples kept per limit: a minute of one-second rates needs 61.
const KEPT: usize = 61;
const SPARK_WIDTH: usize = 60;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// What the footer says; keys are lower case.
pub const FOOTER: &str = "sort: n name  r rate  u use of limit  d drops  f flows  \
                          (again: reverse)   q quit";

/// One limit and direction: a row of the view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// `cgroup`, `netns`, `shared`, `net` or `conn`.
    pub kind: &'static str,
    /// The cgroup's or the network namespace's path, or `#id dev hook` of a net rule.
    pub name: String,
    pub direction: &'static str,
}

/// What a row's rate counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// IP bytes (shown in bits per second).
    Bytes,
    /// New connections: allowed ones as the rate, refused ones as the drops.
    Connections,
}

/// What one read found for one limit and direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub key: Key,
    pub measure: Measure,
    /// The limit per second in the reading's measure, when it is one (a packet rate or a
    /// window is not).
    pub limit_per_second: Option<u64>,
    /// The limit as the operator wrote it, shortly.
    pub limit_text: String,
    /// IP bytes passed, or connections allowed.
    pub passed: u64,
    pub dropped_bytes: u64,
    /// Packets dropped, or connections refused.
    pub dropped_packets: u64,
    /// TCP flows sharing the limit (cgroup limits).
    pub tcp_flows: Option<u32>,
}

/// A reading for each direction a bandwidth limit (a cgroup's, a namespace's or a shared one)
/// limits.
fn push_bandwidth(
    out: &mut Vec<Reading>,
    kind: &'static str,
    name: &str,
    egress: &Option<DirectionView>,
    ingress: &Option<DirectionView>,
) {
    for (direction, view) in [("egress", egress), ("ingress", ingress)] {
        let Some(view) = view else { continue };
        out.push(Reading {
            key: Key {
                kind,
                name: name.to_owned(),
                direction,
            },
            measure: Measure::Bytes,
            limit_per_second: Some(view.rate_bits_per_second / 8),
            limit_text: bits(view.rate_bits_per_second as f64),
            passed: view.passed_bytes,
            dropped_bytes: view.dropped_bytes,
            dropped_packets: view.dropped_packets,
            tcp_flows: Some(view.tcp_flows),
        });
    }
}

/// Every limit and direction of a status.
pub fn readings(status: &Status) -> Vec<Reading> {
    let mut out = Vec::new();
    for rule in &status.cgroups {
        push_bandwidth(
            &mut out,
            "cgroup",
            &rule.cgroup,
            &rule.egress,
            &rule.ingress,
        );
    }
    for view in &status.netns {
        push_bandwidth(&mut out, "netns", &view.netns, &view.egress, &view.ingress);
    }
    for view in &status.shared {
        push_bandwidth(&mut out, "shared", &view.name, &view.egress, &view.ingress);
    }
    for view in &status.net {
        let spec = &view.record.spec;
        let direction = match spec.hook {
            NetHook::TcEgress => "egress",
            NetHook::TcIngress | NetHook::Xdp => "ingress",
        };
        let (limit_per_second, limit_text) = match spec.limit {
            NetLimit::Connections { rate, .. } => {
                // A row of connections, like the outbound rules'.
                out.push(Reading {
                    key: Key {
                        kind: "conn",
                        name: format!("#{} {} {}", view.record.id, spec.device, spec.hook.name()),
                        direction: "inbound",
                    },
                    measure: Measure::Connections,
                    limit_per_second: Some(rate.per_second_ceil()),
                    limit_text: format!("{rate}"),
                    passed: view.passed_packets,
                    dropped_bytes: 0,
                    dropped_packets: view.dropped_packets,
                    tcp_flows: None,
                });
                continue;
            }
            NetLimit::TokenBucket {
                per: Per::Bytes,
                rate,
                ..
            } => (Some(rate), bits(rate as f64 * 8.0)),
            NetLimit::TokenBucket {
                per: Per::Packets,
                rate,
                ..
            } => (None, format!("{rate} pkt/s")),
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
                let unit = if per == Per::Bytes { "B" } else { "pkt" };
                (
                    None,
                    format!("{capacity} {unit}/{}ms", window_ns / 1_000_000),
                )
            }
        };
        out.push(Reading {
            key: Key {
                kind: "net",
                name: format!("#{} {} {}", view.record.id, spec.device, spec.hook.name()),
                direction,
            },
            measure: Measure::Bytes,
            limit_per_second,
            limit_text,
            passed: view.passed_bytes,
            dropped_bytes: view.dropped_bytes,
            dropped_packets: view.dropped_packets,
            tcp_flows: None,
        });
    }
    for view in &status.conn {
        let spec = &view.record.spec;
        let limit_per_second = match spec.limit {
            ConnLimit::Rate { rate, .. } => rate.per_second_ceil(),
            ConnLimit::Fill {
                tokens_per_fill,
                fill_ns,
                ..
            } => (u128::from(tokens_per_fill) * 1_000_000_000)
                .div_ceil(u128::from(fill_ns))
                .try_into()
                .unwrap_or(u64::MAX),
        };
        out.push(Reading {
            key: Key {
                kind: "conn",
                name: format!("#{} {}", view.record.id, spec.destination),
                direction: "outbound",
            },
            measure: Measure::Connections,
            limit_per_second: Some(limit_per_second),
            limit_text: match spec.limit {
                ConnLimit::Rate { rate, .. } => rate.to_string(),
                fill => fill.to_string(),
            },
            passed: view.allowed,
            dropped_bytes: 0,
            dropped_packets: view.refused,
            tcp_flows: None,
        });
    }
    out
}

/// The readings of the last minute, per limit.
#[derive(Debug, Default)]
pub struct History {
    /// Per limit: (seconds since the first read, its reading), oldest first.
    limits: BTreeMap<Key, VecDeque<(f64, Reading)>>,
}

impl History {
    /// Adds what a read at `at` seconds found; limits it did not find are gone from the view.
    pub fn observe(&mut self, at: f64, readings: Vec<Reading>) {
        let found: Vec<Key> = readings.iter().map(|r| r.key.clone()).collect();
        self.limits.retain(|key, _| found.contains(key));
        for reading in readings {
            let samples = self.limits.entry(reading.key.clone()).or_default();
            samples.push_back((at, reading));
            while samples.len() > KEPT {
                samples.pop_front();
            }
        }
    }

    /// Every limit's row.
    pub fn rows(&self) -> Vec<Row> {
        self.limits.values().filter_map(row).collect()
    }
}

/// One limit and direction as the view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: Key,
    pub measure: Measure,
    pub limit_text: String,
    pub limit_per_second: Option<u64>,
    /// IP bytes (or connections) per second over the last second; `None` before the second
    /// read.
    pub rate: Option<f64>,
    pub drops_per_second: Option<f64>,
    pub dropped_packets: u64,
    pub tcp_flows: Option<u32>,
    /// Bytes per second of each second of the last minute, oldest first.
    pub history: Vec<f64>,
}

impl Row {
    /// The rate as a share of the limit.
    pub fn use_of_limit(&self) -> Option<f64> {
        let limit = self.limit_per_second.filter(|l| *l > 0)?;
        Some(self.rate? / limit as f64)
    }
}

fn row(samples: &VecDeque<(f64, Reading)>) -> Option<Row> {
    let (_, last) = samples.back()?;
    // A counter that went back (a rule made again) counts from zero.
    let per_second = |a: &(f64, Reading), b: &(f64, Reading), field: fn(&Reading) -> u64| {
        let seconds = b.0 - a.0;
        (seconds > 0.0).then(|| field(&b.1).saturating_sub(field(&a.1)) as f64 / seconds)
    };
    let pairs: Vec<_> = samples
        .iter()
        .zip(samples.iter().skip(1))
        .map(|(a, b)| {
            (
                per_second(a, b, |r| r.passed),
                per_second(a, b, |r| r.dropped_packets),
            )
        })
        .collect();
    let (rate, drops_per_second) = pairs.last().copied().unwrap_or((None, None));
    Some(Row {
        key: last.key.clone(),
        measure: last.measure,
        limit_text: last.limit_text.clone(),
        limit_per_second: last.limit_per_second,
        rate,
        drops_per_second,
        dropped_packets: last.dropped_packets,
        tcp_flows: last.tcp_flows,
        history: pairs.iter().map(|(rate, _)| rate.unwrap_or(0.0)).collect(),
    })
}

/// What the rows are sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Name,
    Rate,
    Use,
    Drops,
    Flows,
}

/// The view's order: a column, and whether reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub by: SortBy,
    pub reversed: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self {
            by: SortBy::Name,
            reversed: false,
        }
    }
}

impl Sort {
    /// The order after pressing `key`; `None` if the key is not a sort key. The same key
    /// again reverses the order.
    pub fn after_key(self, key: char) -> Option<Self> {
        let by = match key {
            'n' => SortBy::Name,
            'r' => SortBy::Rate,
            'u' => SortBy::Use,
            'd' => SortBy::Drops,
            'f' => SortBy::Flows,
            _ => return None,
        };
        Some(Self {
            by,
            reversed: by == self.by && !self.reversed,
        })
    }

    /// Sorts `rows`: names A to Z, numbers largest first (unless reversed).
    pub fn apply(self, rows: &mut [Row]) {
        let number = |row: &Row| match self.by {
            SortBy::Name => 0.0,
            SortBy::Rate => row.rate.unwrap_or(0.0),
            SortBy::Use => row.use_of_limit().unwrap_or(0.0),
            SortBy::Drops => row.drops_per_second.unwrap_or(0.0),
            SortBy::Flows => f64::from(row.tcp_flows.unwrap_or(0)),
        };
        rows.sort_by(|a, b| {
            let order = if self.by == SortBy::Name {
                a.key.cmp(&b.key)
            } else {
                number(b).total_cmp(&number(a)).then(a.key.cmp(&b.key))
            };
            if self.reversed {
                order.reverse()
            } else {
                order
            }
        });
    }
}

/// A rate in IP bits per second, in tc's units (1000-based).
fn bits(bits_per_second: f64) -> String {
    let units = [("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)];
    for (unit, size) in units {
        if bits_per_second >= size {
            return format!("{:.2}{unit}", bits_per_second / size);
        }
    }
    format!("{bits_per_second:.0}bit")
}

/// A sparkline of `rates`, scaled to `top` (the limit) or else to their largest, right-aligned
/// in [`SPARK_WIDTH`] characters.
fn sparkline(rates: &[f64], top: Option<u64>) -> String {
    let recent = &rates[rates.len().saturating_sub(SPARK_WIDTH)..];
    let largest = recent.iter().copied().fold(0.0, f64::max);
    let top = top.map_or(largest, |t| (t as f64).max(largest));
    let mut out = " ".repeat(SPARK_WIDTH - recent.len());
    for rate in recent {
        let level = if top > 0.0 {
            ((rate / top) * (SPARKS.len() - 1) as f64).round() as usize
        } else {
            0
        };
        out.push(SPARKS[level.min(SPARKS.len() - 1)]);
    }
    out
}

/// The header line of the table.
pub fn header() -> String {
    format!(
        "{:<44} {:<7} {:>12} {:>12} {:>6} {:>9} {:>11} {:>5}  {}",
        "LIMIT", "DIR", "RATE", "LIMIT", "USE", "DROPS/s", "DROPPED", "FLOWS", "LAST MINUTE"
    )
}

/// The table's lines, header first, in `sort`'s order.
pub fn lines(rows: &[Row], sort: Sort) -> Vec<String> {
    let mut rows = rows.to_vec();
    sort.apply(&mut rows);
    let mut out = vec![header()];
    for row in &rows {
        let name = format!("{} {}", row.key.kind, row.key.name);
        let name: String = if name.chars().count() > 44 {
            let tail: Vec<char> = name.chars().rev().take(43).collect();
            std::iter::once('…').chain(tail.into_iter().rev()).collect()
        } else {
            name
        };
        let dash = || "-".to_owned();
        let rate = row.rate.map_or_else(dash, |r| match row.measure {
            Measure::Bytes => bits(r * 8.0),
            Measure::Connections => format!("{r:.1} conn/s"),
        });
        let share = row
            .use_of_limit()
            .map_or_else(dash, |u| format!("{:.0}%", u * 100.0));
        let drops = row
            .drops_per_second
            .map_or_else(dash, |d| format!("{d:.0}"));
        let flows = row.tcp_flows.map_or_else(dash, |f| f.to_string());
        let mut line = String::new();
        let _ = write!(
            line,
            "{name:<44} {:<7} {rate:>12} {:>12} {share:>6} {drops:>9} {:>11} {flows:>5}  {}",
            row.key.direction,
            row.limit_text,
            row.dropped_packets,
            sparkline(&row.history, row.limit_per_second),
        );
        out.push(line);
    }
    if rows.is_empty() {
        out.push("no limits".into());
    }
    out
}

/// Runs the view on the terminal until `q` (or Esc, or Ctrl-C).
pub fn run(instance: &Instance) -> Result<()> {
    // Read once before the screen is taken: a reason not to run shows as a plain error.
    let first = Status::read(instance.clone())?;
    let mut terminal = ratatui::try_init().map_err(terminal_error)?;
    let result = view(&mut terminal, instance, first);
    let restored = ratatui::try_restore().map_err(terminal_error);
    result.and(restored)
}

fn terminal_error(error: io::Error) -> Error {
    Error::Io {
        context: "cannot use the terminal".into(),
        source: error,
    }
}

fn view(terminal: &mut DefaultTerminal, instance: &Instance, first: Status) -> Result<()> {
    let start = Instant::now();
    let mut history = History::default();
    history.observe(0.0, readings(&first));
    let mut sort = Sort::default();
    let mut problem: Option<String> = None;
    let mut next_read = start + REFRESH;
    loop {
        let rows = history.rows();
        let table = lines(&rows, sort);
        let status_line = match &problem {
            Some(problem) => format!("cannot read the limits: {problem}"),
            None => format!(
                "rein top — instance {}, {} limit(s), every {} s",
                instance.name(),
                rows.len(),
                REFRESH.as_secs()
            ),
        };
        terminal
            .draw(|frame| {
                let [top, body, footer] = Layout::vertical([
                    Constraint::Length(1),
                    Constraint::Min(1),
                    Constraint::Length(1),
                ])
                .areas(frame.area());
                frame.render_widget(Paragraph::new(status_line.as_str()), top);
                let body_lines: Vec<Line> = table
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let line = Line::from(text.as_str());
                        if i == 0 {
                            line.style(Style::new().add_modifier(Modifier::BOLD))
                        } else {
                            line
                        }
                    })
                    .collect();
                frame.render_widget(Paragraph::new(body_lines), body);
                frame.render_widget(
                    Paragraph::new(FOOTER).style(Style::new().add_modifier(Modifier::REVERSED)),
                    footer,
                );
            })
            .map_err(terminal_error)?;

        let wait = next_read.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(terminal_error)? {
            if let Event::Key(key) = event::read().map_err(terminal_error)?
                && key.kind == KeyEventKind::Press
            {
                let ctrl_c = key.code == KeyCode::Char('c')
                    && key.modifiers.contains(event::KeyModifiers::CONTROL);
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    _ if ctrl_c => return Ok(()),
                    KeyCode::Char(c) => sort = sort.after_key(c).unwrap_or(sort),
                    _ => {}
                }
            }
            continue;
        }
        next_read += REFRESH;
        let now = Instant::now();
        if next_read < now {
            next_read = now + REFRESH;
        }
        match Status::read(instance.clone()) {
            Ok(status) => {
                problem = None;
                history.observe(now.duration_since(start).as_secs_f64(), readings(&status));
            }
            // Shown in place: a command that holds a half-made limit for a moment should not
            // end the view.
            Err(error) => problem = Some(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::cgroup_limit::{DirectionView, Origin, RuleView};

    fn reading(name: &str, passed: u64, dropped: u64, flows: u32) -> Reading {
        Reading {
            key: Key {
                kind: "cgroup",
                name: name.into(),
                direction: "egress",
            },
            measure: Measure::Bytes,
            limit_per_second: Some(2_500_000),
            limit_text: bits(20e6),
            passed,
            dropped_bytes: dropped * 1500,
            dropped_packets: dropped,
            tcp_flows: Some(flows),
        }
    }

    #[test]
    fn rates_are_counter_differences_over_the_time_between_reads() {
        let mut history = History::default();
        history.observe(0.0, vec![reading("/a", 0, 0, 1)]);
        let rows = history.rows();
        assert_eq!(rows[0].rate, None, "one read has no rate yet");
        history.observe(2.0, vec![reading("/a", 5_000_000, 10, 1)]);
        let rows = history.rows();
        assert_eq!(rows[0].rate, Some(2_500_000.0));
        assert_eq!(rows[0].drops_per_second, Some(5.0));
        assert_eq!(rows[0].use_of_limit(), Some(1.0));
        // A counter that starts again (a rule made again) counts as nothing, not as negative.
        history.observe(3.0, vec![reading("/a", 1_000, 10, 1)]);
        assert_eq!(history.rows()[0].rate, Some(0.0));
        // A limit gone from a read is gone from the view.
        history.observe(4.0, vec![reading("/b", 0, 0, 0)]);
        let rows = history.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key.name, "/b");
    }

    #[test]
    fn the_history_keeps_a_minute() {
        let mut history = History::default();
        for second in 0..100u64 {
            history.observe(second as f64, vec![reading("/a", second * 1000, 0, 0)]);
        }
        let rows = history.rows();
        assert_eq!(rows[0].history.len(), 60);
        assert!(rows[0].history.iter().all(|r| *r == 1000.0));
    }

    #[test]
    fn a_row_shows_rate_limit_use_drops_flows_and_sparkline() {
        let mut history = History::default();
        history.observe(0.0, vec![reading("/app", 0, 0, 2)]);
        history.observe(1.0, vec![reading("/app", 2_475_000, 3, 2)]);
        let shown = lines(&history.rows(), Sort::default());
        assert_eq!(shown.len(), 2);
        assert!(shown[0].starts_with("LIMIT"), "{}", shown[0]);
        let fields: Vec<&str> = shown[1].split_whitespace().collect();
        assert_eq!(
            fields[..9],
            [
                "cgroup",
                "/app",
                "egress",
                "19.80Mbit",
                "20.00Mbit",
                "99%",
                "3",
                "3",
                "2"
            ],
            "{}",
            shown[1]
        );
        assert!(shown[1].ends_with('█'), "{}", shown[1]);
        assert_eq!(lines(&[], Sort::default())[1], "no limits");
    }

    #[test]
    fn keys_sort_and_the_same_key_reverses() {
        let mut history = History::default();
        let both = |a: u64, b: u64| vec![reading("/a", a, 0, 1), reading("/b", b, b / 1000, 3)];
        history.observe(0.0, both(0, 0));
        history.observe(1.0, both(1_000, 2_000_000));
        let order = |sort: Sort| -> Vec<String> {
            lines(&history.rows(), sort)[1..]
                .iter()
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
                .collect()
        };
        let by_name = Sort::default();
        assert_eq!(order(by_name), ["/a", "/b"]);
        let by_rate = by_name.after_key('r').unwrap();
        assert_eq!(order(by_rate), ["/b", "/a"]);
        let reversed = by_rate.after_key('r').unwrap();
        assert!(reversed.reversed);
        assert_eq!(order(reversed), ["/a", "/b"]);
        assert_eq!(order(by_name.after_key('d').unwrap()), ["/b", "/a"]);
        assert_eq!(order(by_name.after_key('f').unwrap()), ["/b", "/a"]);
        assert_eq!(order(by_name.after_key('u').unwrap()), ["/b", "/a"]);
        assert_eq!(by_name.after_key('x'), None);
    }

    #[test]
    fn a_status_becomes_a_reading_per_limited_direction() {
        let view = DirectionView {
            rate_bits_per_second: 20_000_000,
            burst_bytes: 65_536,
            burst_is_default: true,
            passed_packets: 10,
            passed_bytes: 15_000,
            dropped_packets: 1,
            dropped_bytes: 1_500,
            tcp_flows: 2,
        };
        let status = Status {
            shared: vec![],
            netns: vec![],
            cgroups: vec![RuleView {
                cgroup: "/app".into(),
                cgroup_id: 7,
                origin: Origin::Cgroup,
                declared_by: None,
                processes: vec![],
                egress: Some(view),
                ingress: None,
            }],
            net: vec![],
            conn: vec![],
            queues: vec![],
        };
        let readings = readings(&status);
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].key.direction, "egress");
        assert_eq!(readings[0].limit_per_second, Some(2_500_000));
        assert_eq!(readings[0].passed, 15_000);
        assert_eq!(readings[0].tcp_flows, Some(2));
    }

    #[test]
    fn a_network_namespace_limit_is_a_row_beside_the_cgroups() {
        use crate::capabilities::netns_limit::{NetnsOrigin, NetnsView};
        let view = |passed_bytes| DirectionView {
            rate_bits_per_second: 20_000_000,
            burst_bytes: 65_536,
            burst_is_default: true,
            passed_packets: 0,
            passed_bytes,
            dropped_packets: 0,
            dropped_bytes: 0,
            tcp_flows: 1,
        };
        let status = |passed| Status {
            shared: vec![],
            cgroups: vec![],
            netns: vec![NetnsView {
                netns: "/run/netns/pod".into(),
                cookie: 9,
                origin: NetnsOrigin::Manual,
                declared_by: None,
                subnets: None,
                egress: None,
                ingress: Some(view(passed)),
            }],
            net: vec![],
            conn: vec![],
            queues: vec![],
        };
        let mut history = History::default();
        history.observe(0.0, readings(&status(0)));
        history.observe(1.0, readings(&status(1_250_000)));
        let rows = history.rows();
        assert_eq!(rows.len(), 1, "one row per limited direction");
        assert_eq!(rows[0].use_of_limit(), Some(0.5));
        let line = &lines(&rows, Sort::default())[1];
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[..6],
            [
                "netns",
                "/run/netns/pod",
                "ingress",
                "10.00Mbit",
                "20.00Mbit",
                "50%"
            ],
            "{line}"
        );
    }

    #[test]
    fn a_connection_limit_is_a_row_of_connections_against_its_rate() {
        use crate::capabilities::conn_limits::{
            ConnRuleRecord, ConnRuleView,
            spec::{ConnRuleSpec, ConnScopeSpec},
        };
        let conn = |allowed, refused| ConnRuleView {
            record: ConnRuleRecord {
                id: 4,
                spec: ConnRuleSpec {
                    destination: "198.18.13.1:80".parse().unwrap(),
                    protocol: None,
                    scope: ConnScopeSpec::All,
                    limit: ConnLimit::rate("20/s".parse().unwrap(), None).unwrap(),
                    per_caller: false,
                },
                anchor_ns: None,
                declared_by: Some("web".into()),
            },
            allowed,
            refused,
            refused_table_full: 0,
            tokens: Some(3),
            top_callers: vec![],
        };
        let status = |allowed, refused| Status {
            shared: vec![],
            cgroups: vec![],
            netns: vec![],
            net: vec![],
            conn: vec![conn(allowed, refused)],
            queues: vec![],
        };
        let mut history = History::default();
        history.observe(0.0, readings(&status(100, 7)));
        history.observe(2.0, readings(&status(120, 37)));
        let rows = history.rows();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row.key.kind, row.key.direction, row.measure),
            ("conn", "outbound", Measure::Connections)
        );
        assert_eq!((row.rate, row.drops_per_second), (Some(10.0), Some(15.0)));
        assert_eq!(row.use_of_limit(), Some(0.5));
        let table = lines(&rows, Sort::default());
        let line = &table[1];
        assert!(line.starts_with("conn #4 198.18.13.1:80"), "{line}");
        assert!(
            line.contains("10.0 conn/s") && line.contains("20/s"),
            "{line}"
        );
        assert!(line.contains("50%") && line.contains(" 15 "), "{line}");
    }

    #[test]
    fn sparklines_scale_to_the_limit() {
        let line = sparkline(&[0.0, 1.25e6, 2.5e6], Some(2_500_000));
        assert_eq!(line.chars().count(), SPARK_WIDTH);
        assert!(line.ends_with("▁▅█"), "{line:?}");
    }
}
