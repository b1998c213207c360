//! Command-line flags of `rein-bench-conn`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::conn::latency;

/// Benchmarks `rein conn`: the latency of connect() with rein's connect programs attached and
/// 0 to 1M rules, and of a refused connect. Prints the table and writes conn-latest.json and
/// conn-latest.png. Needs root.
#[derive(Debug, Parser)]
#[command(name = "rein-bench-conn", version)]
pub struct Args {
    /// A few seconds: 100k instead of 1M rules, fewer connects, 3 rounds (flags given
    /// explicitly still win)
    #[arg(long)]
    pub quick: bool,

    /// Rounds; each round measures every variant once, in an order that rotates
    #[arg(long)]
    pub rounds: Option<u32>,

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

#[derive(Debug, Clone)]
pub struct Config {
    pub quick: bool,
    pub latency: latency::Config,
    pub out: PathBuf,
    pub rein: PathBuf,
    pub font: PathBuf,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self> {
        let quick = args.quick;
        let rounds = args.rounds.unwrap_or(if quick { 3 } else { 5 });
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
        if rounds == 0 || connects < 100 {
            bail!("--rounds must be at least 1 and --connects at least 100");
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

    /// A rough upper bound of the run time, in seconds: filling the maps (about 10 us a rule)
    /// and the connects (about 10 us each).
    pub fn estimate_seconds(&self) -> u64 {
        let c = &self.latency;
        let rules: u64 = c.rules.iter().map(|&n| u64::from(n)).sum();
        let connects = u64::from(c.rounds) * u64::from(c.connects) * (c.rules.len() as u64 + 3);
        (rules + connects) / 100_000 + 5
    }
}
