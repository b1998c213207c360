//! Command-line flags of `rein-bench-net`, resolved into the configuration of each section.

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use rein::capabilities::net_rules::spec::SketchSize;

use crate::net::{
    flood::{self, Limiter},
    sketch, testrun,
};

/// Benchmarks `rein net` (the tc and XDP programs of issue 4): ns per packet with up to 1M
/// rules, memory and update latency, a UDP flood against rein and the classic tc tools, and the
/// count-min sketch's overestimation. Prints the tables and writes net-latest.json and
/// net-latest.png. Needs root.
#[derive(Debug, Parser)]
#[command(name = "rein-bench-net", version)]
pub struct Args {
    /// Under a minute: rules up to 100k, fewer runs, one flood limit of 3 s, a smaller trace
    /// (flags given explicitly still win)
    #[arg(long)]
    pub quick: bool,

    /// Sections to run
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "testrun,sketch,cli,flood"
    )]
    pub sections: Vec<Section>,

    /// Rule counts for the test runs (1 = each measured rule alone) [default: 1,10000,1000000;
    /// --quick: 1,10000,100000]
    #[arg(long, value_delimiter = ',')]
    pub rules: Option<Vec<u32>>,

    /// Runs per BPF_PROG_TEST_RUN call [default: 100000; --quick: 20000]
    #[arg(long)]
    pub repeat: Option<u32>,

    /// Calls per measurement, of which the least is reported
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,

    /// Flood limits, in packets/s (offered at twice each) [default: 10000,50000; --quick: 10000]
    #[arg(long, value_delimiter = ',')]
    pub limits: Option<Vec<u64>>,

    /// Measured seconds of each flood (after 1 s left out) [default: 5; --quick: 3]
    #[arg(long)]
    pub seconds: Option<u32>,

    /// Repetitions of each timed rein CLI call [default: 5; --quick: 3]
    #[arg(long)]
    pub cli_reps: Option<u32>,

    /// Directory for net-latest.json and net-latest.png
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,

    /// The rein binary [default: `rein` next to this executable]
    #[arg(long)]
    pub rein: Option<PathBuf>,

    /// TrueType font for the plot's text
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// ns per packet, memory, put/remove times (BPF_PROG_TEST_RUN, no network)
    Testrun,
    /// sketch overestimation: the model, and the kernel against its exact table
    Sketch,
    /// latency of `rein net add` / `rein net del`
    Cli,
    /// UDP flood between namespaces: rein XDP and tc against tc police, ifb+tbf, tbf
    Flood,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Testrun => "testrun",
            Self::Sketch => "sketch",
            Self::Cli => "cli",
            Self::Flood => "flood",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub quick: bool,
    pub sections: Vec<Section>,
    pub testrun: testrun::Config,
    pub sketch: sketch::Config,
    pub cli_reps: u32,
    pub flood: flood::Config,
    pub out: PathBuf,
    pub rein: PathBuf,
    pub font: PathBuf,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self> {
        let quick = args.quick;
        let pick = |given: Option<u32>, default: u32, fast: u32| {
            given.unwrap_or(if quick { fast } else { default })
        };
        let mut levels = args.rules.unwrap_or_else(|| {
            if quick {
                vec![1, 10_000, 100_000]
            } else {
                vec![1, 10_000, 1_000_000]
            }
        });
        levels.sort_unstable();
        levels.dedup();
        // The fixed rules alone are 9; a map takes 2^20 entries (and the UDP port rule has two
        // in one map).
        if let Some(&bad) = levels
            .iter()
            .find(|&&l| l != 1 && !(10..=1_040_000).contains(&l))
        {
            bail!("--rules {bad}: each count must be 1 or 10 to 1040000");
        }
        let repeat = pick(args.repeat, 100_000, 20_000);
        if repeat == 0 || args.rounds == 0 {
            bail!("--repeat and --rounds must be at least 1");
        }
        let limits = args.limits.unwrap_or_else(|| {
            if quick {
                vec![10_000]
            } else {
                vec![10_000, 50_000]
            }
        });
        if let Some(&bad) = limits.iter().find(|&&l| !(100..=500_000).contains(&l)) {
            bail!("--limits {bad}: a limit must be 100 to 500000 packets/s");
        }
        let seconds = pick(args.seconds, 5, 3);
        if !(1..=60).contains(&seconds) {
            bail!("--seconds must be 1 to 60");
        }
        let size = |text: &str| -> Result<SketchSize> {
            text.parse().with_context(|| format!("sketch size {text}"))
        };
        let rein = match args.rein {
            Some(path) => path,
            None => std::env::current_exe()
                .context("finding this executable")?
                .with_file_name("rein"),
        };
        Ok(Self {
            quick,
            sections: args.sections,
            testrun: testrun::Config {
                levels,
                repeat,
                rounds: args.rounds,
                removes: if quick { 1000 } else { 10_000 },
                sketch: size("4096x4")?,
            },
            sketch: sketch::Config {
                packets: if quick { 200_000 } else { 1_000_000 },
                sources: if quick { 20_000 } else { 100_000 },
                widths: vec![1024, 4096, 16_384],
                depth: 4,
                exponent: 1.0,
                kernel_packets: if quick { 20_000 } else { 50_000 },
                kernel_sources: if quick { 2000 } else { 5000 },
                capacity: 50,
                kernel_sketches: vec![size("256x4")?, size("1024x4")?, size("4096x4")?],
            },
            cli_reps: pick(args.cli_reps, 5, 3).max(1),
            flood: flood::Config {
                limits,
                seconds,
                pid: std::process::id(),
            },
            out: args.out,
            rein,
            font: args.font,
        })
    }

    pub fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    /// A rough upper estimate of the run's length, for the first line of output.
    pub fn estimate(&self) -> Duration {
        // Rates measured on the project's 2-CPU VM, rounded up.
        let mut seconds = 0.0;
        if self.runs(Section::Testrun) {
            let rules = f64::from(self.testrun.levels.last().copied().unwrap_or(1));
            let runs = f64::from(self.testrun.repeat) * f64::from(self.testrun.rounds) + 10_000.0;
            let measurements = self.testrun.levels.len() as f64 * 6.0;
            // 3 programs: ~12 us a put, ~0.6 us a run, a few seconds to load, remove and settle.
            seconds += 3.0 * (rules * 12e-6 + measurements * runs * 0.6e-6 + 4.0);
        }
        if self.runs(Section::Sketch) {
            let kernel = self.sketch.kernel_sketches.len() as f64 + 1.0;
            seconds += f64::from(self.sketch.packets) * self.sketch.widths.len() as f64 * 0.4e-6
                + f64::from(self.sketch.kernel_packets) * kernel * 5e-6
                + 1.0;
        }
        if self.runs(Section::Cli) {
            seconds += f64::from(self.cli_reps) * 1.0 + 1.0;
        }
        if self.runs(Section::Flood) {
            // 4 of the 5 limiters run here (no police action in the kernel).
            let runs = (self.flood.limits.len() * Limiter::ALL.len()) as f64;
            seconds += runs * (f64::from(self.flood.seconds) + 2.0);
        }
        Duration::from_secs_f64(seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> Result<Config> {
        let mut full = vec!["rein-bench-net"];
        full.extend_from_slice(argv);
        Config::from_args(Args::try_parse_from(full)?)
    }

    #[test]
    fn defaults_and_quick() {
        let full = config(&[]).unwrap();
        assert_eq!(full.testrun.levels, [1, 10_000, 1_000_000]);
        assert_eq!(full.flood.limits, [10_000, 50_000]);
        assert_eq!(full.sections.len(), 4);
        assert!(
            full.estimate() < Duration::from_secs(300),
            "{:?}",
            full.estimate()
        );
        let quick = config(&["--quick"]).unwrap();
        assert_eq!(quick.testrun.levels, [1, 10_000, 100_000]);
        assert_eq!(quick.flood.seconds, 3);
        assert!(
            quick.estimate() < Duration::from_secs(60),
            "{:?}",
            quick.estimate()
        );
        let explicit = config(&["--quick", "--rules", "1000,1", "--limits", "20000"]).unwrap();
        assert_eq!(explicit.testrun.levels, [1, 1000]);
        assert_eq!(explicit.flood.limits, [20_000]);
    }

    #[test]
    fn refuses_what_cannot_run() {
        assert!(config(&["--rules", "2000000"]).is_err());
        assert!(config(&["--rules", "5"]).is_err());
        assert!(config(&["--limits", "10"]).is_err());
        assert!(config(&["--repeat", "0"]).is_err());
        assert!(config(&["--sections", "nope"]).is_err());
    }
}
