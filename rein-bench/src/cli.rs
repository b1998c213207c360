//! Command-line flags, resolved into the list of scenarios to run.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Runs iperf3 scenarios through rein, tc tbf, the reference CNI bandwidth plugin and rein's CNI
/// plugin, each in throwaway network namespaces, and prints one table (plus JSON and a PNG plot).
/// Needs root.
#[derive(Debug, Parser)]
#[command(name = "rein-bench", version)]
pub struct Args {
    /// Limits to test, in bit/s (k, M, G = powers of 1000) [default: 10M,100M,1G]
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<Rate>>,

    /// Numbers of parallel TCP flows [default: 1,4,16]
    #[arg(long, value_delimiter = ',')]
    pub flows: Option<Vec<u32>>,

    /// One UDP run per rate and direction, offered at twice the limit (the default)
    #[arg(long, overrides_with = "no_udp")]
    pub udp: bool,

    /// No UDP runs
    #[arg(long, overrides_with = "udp")]
    pub no_udp: bool,

    /// Directions: egress = the client uploads, ingress = the client downloads (iperf3 -R)
    #[arg(long, value_delimiter = ',', default_value = "egress,ingress")]
    pub directions: Vec<Direction>,

    /// Limiters to compare
    #[arg(long, value_delimiter = ',', default_value = "rein,tbf,cni,rein-cni")]
    pub limiters: Vec<Limiter>,

    /// Kinds of scenario: single = one client (each --flows count, and UDP); side-by-side = two
    /// clients at once, each under its own limit; start-stop = one client whose second flow joins
    /// for the middle third of the run. The last two: TCP, 1 flow per client, every rate and
    /// direction [default: all three; single with --quick]
    #[arg(long, value_delimiter = ',')]
    pub mixes: Option<Vec<Mix>>,

    /// Measured seconds per iperf3 run (-t) [default: 5]
    #[arg(long)]
    pub seconds: Option<u32>,

    /// Seconds of slow start run first and left out of every result (iperf3 -O)
    // 2, not 1: through tbf, slow start loses over a thousand segments in the first second, their
    // repair runs into the second, and the data held back behind the holes reaches the receiver
    // then: with -O 1 that second showed 1.25x the limit and the goodput 1.03.
    #[arg(long, default_value_t = 2)]
    pub omit: u32,

    /// A short matrix: rates 10M,100M, flows 1,4, 4 seconds, single runs only (flags given
    /// explicitly still win)
    #[arg(long)]
    pub quick: bool,

    /// Directory for latest.json and latest.png
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,

    /// The rein binary [default: `rein` next to this executable]
    #[arg(long)]
    pub rein: Option<PathBuf>,

    /// rein's CNI plugin [default: `rein-cni` next to this executable]
    #[arg(long)]
    pub rein_cni: Option<PathBuf>,

    /// TrueType font for the plot's text
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

/// A rate in bit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Rate(pub u64);

impl Rate {
    pub fn bits_per_second(self) -> u64 {
        self.0
    }

    /// The rate in the largest of G, M, k and 1 that divides it exactly, with that unit's index
    /// (0 for G ... 3 for 1).
    fn scaled(self) -> (u64, usize) {
        const UNITS: [u64; 4] = [1_000_000_000, 1_000_000, 1_000, 1];
        let i = UNITS
            .iter()
            .position(|unit| self.0.is_multiple_of(*unit))
            .unwrap_or(UNITS.len() - 1);
        (self.0 / UNITS[i], i)
    }

    /// tc(8) syntax, as rein and tc take it: `10mbit`, `1gbit`.
    pub fn tc(self) -> String {
        let (n, unit) = self.scaled();
        format!("{n}{}", ["gbit", "mbit", "kbit", "bit"][unit])
    }

    /// The iperf3 -b syntax for `factor` times this rate.
    pub fn iperf(self, factor: u64) -> String {
        self.0.saturating_mul(factor).to_string()
    }

    /// The burst every limiter gets: max(64 KiB, 10 ms at the rate), in bytes. That is rein's
    /// default burst and tc-tbf's rule of thumb (burst >= rate / HZ), so all three limiters get
    /// the same bucket.
    pub fn burst_bytes(self) -> u64 {
        (self.0 / 800).max(64 * 1024)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, unit) = self.scaled();
        write!(f, "{n}{}", ["G", "M", "k", ""][unit])
    }
}

impl FromStr for Rate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let body = lower.strip_suffix("bit").unwrap_or(&lower);
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, unit) = body.split_at(split);
        let number: f64 = number
            .parse()
            .with_context(|| format!("`{s}` is not a rate (examples: 10M, 100M, 1G)"))?;
        let scale = match unit {
            "" => 1.0,
            "k" => 1e3,
            "m" => 1e6,
            "g" => 1e9,
            _ => bail!("`{s}`: unknown unit `{unit}` (use k, M or G)"),
        };
        let bits = (number * scale).round();
        if !(1e3..=1e11).contains(&bits) {
            bail!("`{s}`: the rate must be between 1k and 100G");
        }
        Ok(Self(bits as u64))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The client uploads.
    Egress,
    /// The client downloads (iperf3 -R).
    Ingress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Limiter {
    Rein,
    Tbf,
    Cni,
    /// rein's CNI plugin in the reference plugin's place: the same conflist but the type.
    #[serde(rename = "rein-cni")]
    ReinCni,
}

impl fmt::Display for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rein => "rein",
            Self::Tbf => "tbf",
            Self::Cni => "cni",
            Self::ReinCni => "rein-cni",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// What runs at once under the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// One client: one iperf3 run of `flows` TCP streams, or of UDP.
    Single,
    /// Two clients at once, each a complete stack of its own (namespaces, limit at the same rate,
    /// iperf3 server): does each get its own limit while the other runs?
    SideBySide,
    /// One client (one limited context) with flow A for the whole run and flow B joining for the
    /// middle third: does the limit hold, and is it shared, as a flow comes and goes?
    StartStop,
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single => "single",
            Self::SideBySide => "side-by-side",
            Self::StartStop => "start-stop",
        })
    }
}

/// One measurement, run once through each limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    pub mix: Mix,
    pub direction: Direction,
    pub proto: Proto,
    pub rate: Rate,
    /// Parallel streams per client (1 for UDP, side by side and start/stop: there, flow B is a
    /// second iperf3 client).
    pub flows: u32,
}

impl Scenario {
    /// A short label for the progress lines: `E 10M x4`, `I 1G udp`, `E 10M pair`.
    pub fn label(&self) -> String {
        let dir = match self.direction {
            Direction::Egress => "E",
            Direction::Ingress => "I",
        };
        format!("{dir} {}", self.traffic_label())
    }

    /// The label without the direction, for the plot (one panel per direction): `10M x4`,
    /// `1G udp`, `10M pair` (side by side), `10M churn` (start/stop).
    pub fn traffic_label(&self) -> String {
        match (self.mix, self.proto) {
            (Mix::Single, Proto::Tcp) => format!("{} x{}", self.rate, self.flows),
            (Mix::Single, Proto::Udp) => format!("{} udp", self.rate),
            (Mix::SideBySide, _) => format!("{} {}", self.rate, PAIR),
            (Mix::StartStop, _) => format!("{} {}", self.rate, CHURN),
        }
    }

    /// What the table's flows column shows: the number of flows, or the kind of a two-client or
    /// two-flow scenario.
    pub fn flows_label(&self) -> String {
        match self.mix {
            Mix::Single => self.flows.to_string(),
            Mix::SideBySide => PAIR.to_owned(),
            Mix::StartStop => CHURN.to_owned(),
        }
    }
}

/// The short names of the side-by-side and start/stop scenarios in the table and the plot.
pub const PAIR: &str = "pair";
pub const CHURN: &str = "churn";

/// The smallest --seconds a start/stop run takes: B must have a second of A's measured time
/// before and after it.
pub const START_STOP_MIN_SECONDS: u32 = 3;

/// When flow B of a start/stop run starts, in whole seconds after A's measured (not omitted)
/// seconds begin, and how many seconds it runs: the middle third of `seconds`, in whole seconds
/// (iperf3 -t takes whole seconds; at least 1) and centred, rounding down. From
/// [`START_STOP_MIN_SECONDS`] on, at least one second of A alone is measured on each side.
pub fn start_stop_window(seconds: u32) -> (u32, u32) {
    let length = (seconds / 3).max(1);
    (seconds.saturating_sub(length) / 2, length)
}

/// The flags, with defaults and `--quick` applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub scenarios: Vec<Scenario>,
    pub limiters: Vec<Limiter>,
    /// Measured seconds (iperf3 -t).
    pub seconds: u32,
    /// Seconds of slow start run first and left out of the results (iperf3 -O).
    pub omit: u32,
    pub out: PathBuf,
    pub rein: PathBuf,
    pub rein_cni: PathBuf,
    pub font: PathBuf,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self> {
        let quick = args.quick;
        let rates = args.rates.unwrap_or_else(|| {
            let defaults: &[u64] = if quick {
                &[10_000_000, 100_000_000]
            } else {
                &[10_000_000, 100_000_000, 1_000_000_000]
            };
            defaults.iter().copied().map(Rate).collect()
        });
        let flows = args
            .flows
            .unwrap_or_else(|| if quick { vec![1, 4] } else { vec![1, 4, 16] });
        let seconds = args.seconds.unwrap_or(if quick { 4 } else { 5 });
        let udp = !args.no_udp;
        let mixes = args.mixes.unwrap_or_else(|| {
            if quick {
                vec![Mix::Single]
            } else {
                vec![Mix::Single, Mix::SideBySide, Mix::StartStop]
            }
        });
        if rates.is_empty()
            || args.directions.is_empty()
            || args.limiters.is_empty()
            || mixes.is_empty()
        {
            bail!("--rates, --directions, --limiters and --mixes each need at least one value");
        }
        if flows.iter().any(|&n| !(1..=128).contains(&n)) {
            bail!("--flows: each number must be between 1 and 128");
        }
        if !(1..=120).contains(&seconds) {
            bail!("--seconds must be between 1 and 120");
        }
        if args.omit > 10 {
            bail!("--omit must be between 0 and 10");
        }
        if mixes.contains(&Mix::StartStop) && seconds < START_STOP_MIN_SECONDS {
            bail!(
                "--mixes start-stop needs --seconds {START_STOP_MIN_SECONDS} or more (flow B joins \
                 for the middle third)"
            );
        }
        let rein = match args.rein {
            Some(path) => path,
            None => std::env::current_exe()
                .context("finding this executable")?
                .with_file_name("rein"),
        };
        let rein_cni = match args.rein_cni {
            Some(path) => path,
            None => std::env::current_exe()
                .context("finding this executable")?
                .with_file_name("rein-cni"),
        };
        let (rates, flows, mixes) = (dedup(rates), dedup(flows), dedup(mixes));
        let mut scenarios = Vec::new();
        for &direction in &dedup(args.directions) {
            for &rate in &rates {
                // The kinds in the order given, so that the rows of one rate stay together.
                for &mix in &mixes {
                    let tcp = |flows| Scenario {
                        mix,
                        direction,
                        proto: Proto::Tcp,
                        rate,
                        flows,
                    };
                    match mix {
                        Mix::Single => {
                            scenarios.extend(flows.iter().map(|&n| tcp(n)));
                            if udp {
                                scenarios.push(Scenario {
                                    proto: Proto::Udp,
                                    ..tcp(1)
                                });
                            }
                        }
                        Mix::SideBySide | Mix::StartStop => scenarios.push(tcp(1)),
                    }
                }
            }
        }
        if scenarios.is_empty() {
            bail!("nothing to run: no TCP flows and --no-udp");
        }
        Ok(Self {
            scenarios,
            limiters: dedup(args.limiters),
            seconds,
            omit: args.omit,
            out: args.out,
            rein,
            rein_cni,
            font: args.font,
        })
    }

    /// Seconds one iperf3 run lasts, slow start included.
    pub fn run_seconds(&self) -> u32 {
        self.seconds + self.omit
    }

    /// A rough upper bound of the whole run, for the banner.
    pub fn estimate(&self) -> Duration {
        let runs = (self.scenarios.len() * self.limiters.len()) as u64;
        Duration::from_secs(runs * (u64::from(self.run_seconds()) + 3))
    }
}

/// Keeps the first of each value, in order.
pub fn dedup<T: PartialEq>(values: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> Config {
        let mut full = vec!["rein-bench"];
        full.extend_from_slice(argv);
        Config::from_args(Args::try_parse_from(full).unwrap()).unwrap()
    }

    #[test]
    fn rates_parse_and_print() {
        for (text, bits, shown, tc) in [
            ("10M", 10_000_000, "10M", "10mbit"),
            ("100m", 100_000_000, "100M", "100mbit"),
            ("1G", 1_000_000_000, "1G", "1gbit"),
            ("1.5G", 1_500_000_000, "1500M", "1500mbit"),
            ("20mbit", 20_000_000, "20M", "20mbit"),
            ("64k", 64_000, "64k", "64kbit"),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.0, bits, "{text}");
            assert_eq!(rate.to_string(), shown, "{text}");
            assert_eq!(rate.tc(), tc, "{text}");
        }
        for bad in ["", "M", "10X", "0", "1T", "-5M"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn burst_follows_the_rule_of_thumb() {
        assert_eq!(Rate(10_000_000).burst_bytes(), 65_536);
        assert_eq!(Rate(100_000_000).burst_bytes(), 125_000);
        assert_eq!(Rate(1_000_000_000).burst_bytes(), 1_250_000);
    }

    #[test]
    fn defaults_and_quick() {
        let full = config(&[]);
        assert_eq!(full.seconds, 5);
        // 2 directions x 3 rates x (3 TCP + 1 UDP + a pair + a churn).
        assert_eq!(full.scenarios.len(), 36);
        let count = |c: &Config, mix| c.scenarios.iter().filter(|s| s.mix == mix).count();
        assert_eq!(count(&full, Mix::Single), 24);
        assert_eq!(count(&full, Mix::SideBySide), 6);
        assert_eq!(count(&full, Mix::StartStop), 6);
        assert_eq!(
            full.limiters,
            [Limiter::Rein, Limiter::Tbf, Limiter::Cni, Limiter::ReinCni]
        );

        let quick = config(&["--quick"]);
        assert_eq!(quick.seconds, 4);
        assert_eq!(quick.scenarios.len(), 2 * 2 * 3);
        assert!(quick.scenarios.iter().all(|s| s.mix == Mix::Single));

        let mixed = config(&["--quick", "--seconds", "2", "--no-udp", "--rates", "1G"]);
        assert_eq!(mixed.seconds, 2);
        assert_eq!(mixed.scenarios.len(), 2 * 2);
        assert!(mixed.scenarios.iter().all(|s| s.proto == Proto::Tcp));
    }

    #[test]
    fn scenario_order_groups_by_direction_then_rate() {
        let c = config(&[
            "--rates",
            "10M,1G",
            "--flows",
            "1",
            "--directions",
            "ingress",
        ]);
        let labels: Vec<String> = c.scenarios.iter().map(Scenario::label).collect();
        assert_eq!(
            labels,
            [
                "I 10M x1",
                "I 10M udp",
                "I 10M pair",
                "I 10M churn",
                "I 1G x1",
                "I 1G udp",
                "I 1G pair",
                "I 1G churn"
            ]
        );
        assert_eq!(c.scenarios[1].traffic_label(), "10M udp");
    }

    #[test]
    fn mixes_flag() {
        // Only the new kinds: TCP, 1 flow per client, every rate and direction; --flows and
        // --no-udp do not matter to them.
        let c = config(&["--rates", "10M,1G", "--mixes", "side-by-side,start-stop"]);
        let labels: Vec<String> = c.scenarios.iter().map(Scenario::label).collect();
        assert_eq!(
            labels,
            [
                "E 10M pair",
                "E 10M churn",
                "E 1G pair",
                "E 1G churn",
                "I 10M pair",
                "I 10M churn",
                "I 1G pair",
                "I 1G churn"
            ]
        );
        assert!(
            c.scenarios
                .iter()
                .all(|s| s.proto == Proto::Tcp && s.flows == 1)
        );

        // The explicit flag wins over --quick, in the order given, each kind once.
        let c = config(&["--quick", "--mixes", "start-stop,single,start-stop"]);
        // 2 directions x 2 rates x (a churn + 2 TCP + 1 UDP).
        assert_eq!(c.scenarios.len(), 2 * 2 * 4);
        assert_eq!(c.scenarios[0].label(), "E 10M churn");
        assert_eq!(c.scenarios[1].label(), "E 10M x1");

        let c = config(&["--mixes", "side-by-side", "--rates", "100M", "--no-udp"]);
        assert_eq!(c.scenarios.len(), 2);
    }

    #[test]
    fn mixes_refused() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["rein-bench"];
            full.extend_from_slice(argv);
            Args::try_parse_from(full)
                .map_err(anyhow::Error::from)
                .and_then(Config::from_args)
        };
        assert!(parse(&["--mixes", "pair"]).is_err());
        // B needs a measured second before and after it.
        let err = parse(&["--mixes", "start-stop", "--seconds", "2"]).unwrap_err();
        assert!(err.to_string().contains("--seconds 3"), "{err}");
        assert!(parse(&["--mixes", "side-by-side", "--seconds", "1"]).is_ok());
        assert!(parse(&["--mixes", "start-stop", "--seconds", "3"]).is_ok());
        // --quick's default has no start/stop run, so its seconds may be short.
        assert!(parse(&["--quick", "--seconds", "1"]).is_ok());
        assert!(parse(&["--seconds", "2"]).is_err());
    }

    #[test]
    fn labels() {
        let s = Scenario {
            mix: Mix::SideBySide,
            direction: Direction::Ingress,
            proto: Proto::Tcp,
            rate: Rate(100_000_000),
            flows: 1,
        };
        assert_eq!(s.label(), "I 100M pair");
        assert_eq!(s.traffic_label(), "100M pair");
        assert_eq!(s.flows_label(), "pair");
        let churn = Scenario {
            mix: Mix::StartStop,
            ..s
        };
        assert_eq!(churn.label(), "I 100M churn");
        assert_eq!(churn.flows_label(), "churn");
        let single = Scenario {
            mix: Mix::Single,
            flows: 4,
            ..s
        };
        assert_eq!(single.traffic_label(), "100M x4");
        assert_eq!(single.flows_label(), "4");
        assert_eq!(Mix::SideBySide.to_string(), "side-by-side");
    }

    #[test]
    fn flow_b_takes_the_middle_third() {
        // (start after A's measured seconds begin, length)
        assert_eq!(start_stop_window(3), (1, 1));
        assert_eq!(start_stop_window(4), (1, 1));
        assert_eq!(start_stop_window(5), (2, 1));
        assert_eq!(start_stop_window(6), (2, 2));
        assert_eq!(start_stop_window(10), (3, 3));
        assert_eq!(start_stop_window(120), (40, 40));
        // At least a second of A alone on each side.
        for seconds in START_STOP_MIN_SECONDS..=120 {
            let (start, length) = start_stop_window(seconds);
            assert!(start >= 1 && length >= 1, "{seconds}");
            assert!(start + length < seconds, "{seconds}");
        }
    }

    #[test]
    fn repeated_values_run_once() {
        let c = config(&["--rates", "10M,10M,1G", "--flows", "4,1,4", "--no-udp"]);
        let labels: Vec<String> = c.scenarios.iter().map(Scenario::label).collect();
        assert_eq!(
            labels,
            [
                "E 10M x4",
                "E 10M x1",
                "E 10M pair",
                "E 10M churn",
                "E 1G x4",
                "E 1G x1",
                "E 1G pair",
                "E 1G churn",
                "I 10M x4",
                "I 10M x1",
                "I 10M pair",
                "I 10M churn",
                "I 1G x4",
                "I 1G x1",
                "I 1G pair",
                "I 1G churn"
            ]
        );
    }
}
