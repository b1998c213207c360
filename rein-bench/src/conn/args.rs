//! Command-line flags of `rein-bench-conn`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::conn::{flood, latency};

/// Benchmarks `rein conn`: the latency of connect() with rein's connect programs attached and
/// 0 to 1M rules, and of a refused connect. Prints the table and writes conn-latest.json and
/// conn-latest.png. Needs root.
#[derive(Debug, Parser)]
#[command(name = "rein-bench-conn", version)]
pub struct Args {
    /// Under a minute: 100k instead of 1M rules, fewer connects, 2 rounds, floods of 2 s (flags
    /// given explicitly still win)
    #[arg(long)]
    pub quick: bool,

    /// Parts to run
    #[arg(long, value_delimiter = ',', default_value = "latency,flood")]
    pub sections: Vec<Section>,

    /// Rounds; each round measures every variant (limiter) once, in an order that rotates
    /// [default: 5; --quick: 2]
    #[arg(long)]
    pub rounds: Option<u32>,

    /// Seconds of each SYN flood [default: 3; --quick: 2]
    #[arg(long)]
    pub seconds: Option<u32>,

    /// SYNs per second the flood offers
    #[arg(long, default_value_t = 200_000)]
    pub offered: u64,

    /// The aggregate SYN limit, per second (nftables ct count: connections), of every limiter
    #[arg(long, default_value_t = 10_000)]
    pub limit: u64,

    /// The aggregate limit's burst, in SYNs
    #[arg(long, default_value_t = 100)]
    pub burst: u64,

    /// The per-source SYN limit per second, which the legitimate client connects at
    #[arg(long, default_value_t = 10)]
    pub per_source_rate: u64,

    /// The per-source limit's burst
    #[arg(long, default_value_t = 5)]
    pub per_source_burst: u64,

    /// Timed connects per variant per round [default: 20000; --quick: 5000]
    #[arg(long)]
    pub connects: Option<u32>,

    /// Rule counts, each matching the client's destination with one of its rules [default:
    /// 1,10000,1000000; --quick: 1,10000,100000]
    #[arg(long, value_delimiter = ',')]
    pub rules: Option<Vec<u32>>,

    /// Directory for conn-latest.json and conn-latest.png
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,

    /// The rein binary (for `rein purge` of the throwaway instances) [default: `rein` next to
    /// this executable]
    #[arg(long)]
    pub rein: Option<PathBuf>,

    /// TrueType font for the plot's text
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// connect() latency with 0 to 1M outbound rules
    Latency,
    /// a spoofed SYN flood against rein (XDP, tc) and nftables
    Flood,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub quick: bool,
    pub sections: Vec<Section>,
    pub latency: latency::Config,
    pub flood: flood::Config,
    pub out: PathBuf,
    pub rein: PathBuf,
    pub font: PathBuf,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self> {
        let quick = args.quick;
        let rounds = args.rounds.unwrap_or(if quick { 2 } else { 5 });
        let seconds = args.seconds.unwrap_or(if quick { 2 } else { 3 });
        let connects = args.connects.unwrap_or(if quick { 5_000 } else { 20_000 });
        let mut rules = args.rules.unwrap_or_else(|| {
            if quick {
                vec![1, 10_000, 100_000]
            } else {
                vec![1, 10_000, 1_000_000]
            }
        });
        rules.sort_unstable();
        rules.dedup();
        if rounds == 0 || connects < 100 || seconds == 0 {
            bail!("--rounds and --seconds must be at least 1, --connects at least 100");
        }
        if args.offered == 0 || args.limit == 0 || args.per_source_rate == 0 {
            bail!("--offered, --limit and --per-source-rate must be at least 1");
        }
        if let Some(&bad) = rules.iter().find(|&&n| n == 0 || n > latency::MAX_RULES) {
            bail!(
                "--rules {bad}: each count must be 1 to {} (0 rules is always measured)",
                latency::MAX_RULES
            );
        }
        let rein = match args.rein {
            Some(path) => path,
            None => std::env::current_exe()
                .context("finding this executable")?
                .with_file_name("rein"),
        };
        Ok(Self {
            quick,
            sections: args.sections,
            flood: flood::Config {
                rounds,
                seconds,
                offered: args.offered,
                limit: args.limit,
                burst: args.burst,
                per_source_rate: args.per_source_rate,
                per_source_burst: args.per_source_burst,
            },
            latency: latency::Config {
                rounds,
                connects,
                rules,
            },
            out: args.out,
            rein,
            font: args.font,
        })
    }

    pub fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    /// A rough upper bound of the run time, in seconds: filling the maps (about 20 us a rule),
    /// the connects (about 10 us each), the floods (with a second of set-up each).
    pub fn estimate_seconds(&self) -> u64 {
        let mut seconds = 5;
        if self.runs(Section::Latency) {
            let c = &self.latency;
            let rules: u64 = c.rules.iter().map(|&n| u64::from(n)).sum();
            let connects = u64::from(c.rounds) * u64::from(c.connects) * (c.rules.len() as u64 + 3);
            seconds += rules / 50_000 + connects / 100_000;
        }
        if self.runs(Section::Flood) {
            let f = &self.flood;
            let runs = (flood::Limiter::ALL.len() + flood::PerSource::ALL.len()) as u64;
            seconds += u64::from(f.rounds) * runs * (u64::from(f.seconds) + 1);
        }
        seconds
    }
}
