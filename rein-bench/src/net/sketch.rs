//! How much the count-min sketch of per-source rules overestimates, and what that does to
//! limiting.
//!
//! - The model: rein's reference `CountMinModel` (the kernel decides exactly as it does: see
//!   rein's datapath tests, and the check below) is fed a heavy-tailed trace (Zipf: the source
//!   of rank r sends in proportion to 1/r^s) of IPv6 sources; each source's estimate is
//!   compared with its exact count.
//! - The kernel: a smaller trace of the same kind goes through the XDP program
//!   (`BPF_PROG_TEST_RUN`, one packet a call) under a per-source fixed window of `capacity`
//!   packets an hour, once with the exact per-source table and once per sketch size, each in
//!   its own copy of the object. Light sources (at most `capacity` packets in the trace) are
//!   never refused by the exact table; what the sketch refuses of theirs is false limiting.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use rein::{
    capabilities::net_rules::spec::{Cidr, NetHook, NetLimit, NetMatch, Per, SketchSize, Sources},
    clock::{Clock, MonotonicClock},
};
use rein_common::net::NET_XDP_PROGRAM;
use rein_testkit::{
    model::{CountMinModel, Xorshift},
    process::check_interrupted,
    stats,
};
use serde::Serialize;

use crate::net::{frame, object::Object};

/// The rule id of the model and of the kernel rules (it seeds the sketch's hashes).
const RULE: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const LOOPBACK: u32 = 1;
const SERVER: &str = "2001:2::2";
const HOUR_NS: u64 = 3_600_000_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The model's trace.
    pub packets: u32,
    pub sources: u32,
    pub widths: Vec<u32>,
    pub depth: u32,
    /// Zipf exponent of both traces.
    pub exponent: f64,
    /// The kernel's trace and limit.
    pub kernel_packets: u32,
    pub kernel_sources: u32,
    pub capacity: u64,
    pub kernel_sketches: Vec<SketchSize>,
}

/// The model's estimates for one sketch size.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub width: u32,
    pub depth: u32,
    pub memory_bytes: u64,
    pub packets: u32,
    /// Sources that sent at least one packet (the others have no count to compare).
    pub sources_seen: u32,
    /// Estimate - exact count over the sources seen, in packets.
    pub mean_over: f64,
    pub p99_over: f64,
    pub max_over: f64,
    /// The textbook bound: with probability 1 - e^-depth, a source's overestimate is at most
    /// e / width x packets.
    pub bound: f64,
    /// The 10 heaviest sources: exact counts and overestimates.
    pub top10_exact: Vec<u64>,
    pub top10_over: Vec<u64>,
}

impl ModelRow {
    pub fn top10_max_over(&self) -> u64 {
        self.top10_over.iter().copied().max().unwrap_or(0)
    }

    /// The largest overestimate of a top-10 source relative to its count.
    pub fn top10_max_relative(&self) -> f64 {
        self.top10_over
            .iter()
            .zip(&self.top10_exact)
            .map(|(&o, &e)| o as f64 / e.max(1) as f64)
            .fold(0.0, f64::max)
    }
}

/// One kernel run: the exact table or a sketch.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    /// `exact` or the sketch's size.
    pub mode: String,
    pub sketch_bytes: Option<u64>,
    pub packets: u32,
    pub sources: u32,
    pub capacity: u64,
    /// Packets of light sources (at most `capacity` in the trace), and how many were refused.
    pub light_packets: u64,
    pub light_refused: u64,
    /// Light sources that lost at least one packet.
    pub light_sources_hit: u32,
    pub heavy_sources: u32,
    /// Packets of heavy sources that passed (the exact table passes `capacity` of each).
    pub heavy_passed: u64,
    /// Heavy sources that passed fewer than `capacity`, and the largest shortfall.
    pub heavy_cut_short: u32,
    pub heavy_worst_short: u64,
    /// Sketch: packets on which the kernel decided otherwise than the model.
    pub model_mismatches: Option<u64>,
}

impl KernelRow {
    pub fn false_limiting(&self) -> f64 {
        self.light_refused as f64 / self.light_packets.max(1) as f64
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub exponent: f64,
    pub model: Vec<ModelRow>,
    pub kernel: Vec<KernelRow>,
}

/// Sources ranked 1..=n, each drawn with probability proportional to 1/rank^exponent.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: u32, exponent: f64) -> Self {
        let mut sum = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                sum += 1.0 / f64::from(rank).powf(exponent);
                sum
            })
            .collect();
        Self { cumulative }
    }

    /// A source index, 0 for the heaviest.
    fn sample(&self, random: &mut Xorshift) -> u32 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = (random.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let i = self.cumulative.partition_point(|&c| c <= u);
        u32::try_from(i.min(self.cumulative.len().saturating_sub(1))).unwrap_or(0)
    }

    /// `packets` draws.
    fn trace(&self, packets: u32, seed: u64) -> Vec<u32> {
        let mut random = Xorshift(seed);
        (0..packets).map(|_| self.sample(&mut random)).collect()
    }
}

/// Source `i` of a trace: 2001:2:0:1::/64 + i.
fn source(i: u32) -> Ipv6Addr {
    let [a, b, c, d] = i.to_be_bytes();
    Ipv6Addr::new(
        0x2001,
        2,
        0,
        1,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    )
}

/// Counts per source index.
fn counts(trace: &[u32], sources: u32) -> Vec<u64> {
    let mut counts = vec![0u64; sources as usize];
    for &s in trace {
        counts[s as usize] += 1;
    }
    counts
}

pub fn run(config: &Config, results: &mut Results) -> Result<()> {
    results.exponent = config.exponent;
    let trace = Zipf::new(config.sources, config.exponent).trace(config.packets, 0x5eed_cafe);
    let exact = counts(&trace, config.sources);
    let mut heaviest: Vec<u32> = (0..config.sources).collect();
    heaviest.sort_by_key(|&s| std::cmp::Reverse(exact[s as usize]));
    heaviest.truncate(10);
    let addresses: Vec<[u8; 16]> = (0..config.sources).map(|i| source(i).octets()).collect();
    for &width in &config.widths {
        check_interrupted()?;
        eprintln!("rein-bench-net: sketch model {width}x{}", config.depth);
        let mut model = CountMinModel::new(RULE, width, config.depth);
        for &s in &trace {
            model.add(&addresses[s as usize], 1);
        }
        let over: Vec<f64> = (0..config.sources as usize)
            .filter(|&s| exact[s] > 0)
            .map(|s| (model.estimate(&addresses[s]) - exact[s]) as f64)
            .collect();
        results.model.push(ModelRow {
            width,
            depth: config.depth,
            memory_bytes: u64::from(width) * u64::from(config.depth) * 8,
            packets: config.packets,
            sources_seen: u32::try_from(over.len()).unwrap_or(u32::MAX),
            mean_over: stats::mean(&over).unwrap_or(0.0),
            p99_over: stats::percentile(&over, 99.0).unwrap_or(0.0),
            max_over: over.iter().copied().fold(0.0, f64::max),
            bound: std::f64::consts::E / f64::from(width) * f64::from(config.packets),
            top10_exact: heaviest.iter().map(|&s| exact[s as usize]).collect(),
            top10_over: heaviest
                .iter()
                .map(|&s| model.estimate(&addresses[s as usize]) - exact[s as usize])
                .collect(),
        });
    }
    kernel(config, results)
}

/// The kernel runs: exact, then each sketch size.
fn kernel(config: &Config, results: &mut Results) -> Result<()> {
    let sources = config.kernel_sources;
    let trace = Zipf::new(sources, config.exponent).trace(config.kernel_packets, 0x0dd_ba11_5eed);
    let exact = counts(&trace, sources);
    let server: IpAddr = SERVER.parse().context("the server address")?;
    let frames: Vec<Vec<u8>> = (0..sources)
        .map(|i| frame::udp(IpAddr::V6(source(i)), server, 53, 64))
        .collect::<Result<_>>()?;
    let modes = std::iter::once(None).chain(config.kernel_sketches.iter().copied().map(Some));
    for sketch in modes {
        check_interrupted()?;
        let mode = sketch.map_or_else(|| "exact".to_owned(), |s| format!("sketch {s}"));
        eprintln!("rein-bench-net: sketch kernel run, {mode}");
        let mut object = Object::load(&[NET_XDP_PROGRAM])?;
        let destination: Cidr = SERVER.parse().context("the server prefix")?;
        let matching = NetMatch::new(LOOPBACK, NetHook::Xdp, None, Some(destination), None, None)?;
        let limit = NetLimit::window(false, Per::Packets, config.capacity, HOUR_NS)?;
        let mut rule = limit.rule(MonotonicClock.now_ns());
        let sources_mode = match sketch {
            Some(size) => Sources::Sketch { size },
            None => Sources::Exact,
        };
        sources_mode.apply(&mut rule, 0);
        object.maps.put(RULE, &matching, rule)?;
        let mut model = sketch.map(|s| CountMinModel::new(RULE, s.width(), s.depth()));
        let mut mismatches = 0u64;
        let mut passed = vec![0u64; sources as usize];
        for (n, &s) in trace.iter().enumerate() {
            if n % 4096 == 0 {
                check_interrupted()?;
            }
            let verdict = object.run(NET_XDP_PROGRAM, &frames[s as usize], 1)?.verdict;
            let pass = match verdict {
                XDP_PASS => true,
                XDP_DROP => false,
                other => bail!("unexpected XDP verdict {other}"),
            };
            passed[s as usize] += u64::from(pass);
            if let Some(model) = &mut model
                && model.offer(&source(s).octets(), 1, config.capacity) != pass
            {
                mismatches += 1;
            }
        }
        let mut row = KernelRow {
            mode,
            sketch_bytes: sketch.map(|s| s.memory_bytes()),
            packets: config.kernel_packets,
            sources,
            capacity: config.capacity,
            light_packets: 0,
            light_refused: 0,
            light_sources_hit: 0,
            heavy_sources: 0,
            heavy_passed: 0,
            heavy_cut_short: 0,
            heavy_worst_short: 0,
            model_mismatches: model.map(|_| mismatches),
        };
        for (&sent, &got) in exact.iter().zip(&passed) {
            if sent <= config.capacity {
                row.light_packets += sent;
                row.light_refused += sent - got;
                row.light_sources_hit += u32::from(got < sent);
            } else {
                row.heavy_sources += 1;
                row.heavy_passed += got;
                let short = config.capacity.saturating_sub(got);
                row.heavy_cut_short += u32::from(short > 0);
                row.heavy_worst_short = row.heavy_worst_short.max(short);
            }
        }
        results.kernel.push(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_fall_off() {
        let trace = Zipf::new(1000, 1.0).trace(100_000, 42);
        let c = counts(&trace, 1000);
        // Rank 1 gets 1/H(1000) = 13.4 % of the draws, rank 2 half that.
        assert!((12_500..14_300).contains(&c[0]), "{}", c[0]);
        assert!((5_900..7_500).contains(&c[1]), "{}", c[1]);
        assert!(c[0] > c[9] * 5);
        assert_eq!(c.iter().sum::<u64>(), 100_000);
    }

    #[test]
    fn sources_are_distinct_test_addresses() {
        assert_eq!(source(0).to_string(), "2001:2:0:1::");
        assert_eq!(source(0x1_0002).to_string(), "2001:2:0:1::1:2");
    }
}
