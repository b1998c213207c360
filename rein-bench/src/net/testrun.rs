//! ns per packet of the tc ingress, tc egress and XDP programs through `BPF_PROG_TEST_RUN`
//! (`repeat` runs per call, the kernel's average), against the pass-through program of the
//! same type, with 1, 10k and 1M rules installed; and, on the way, the time of each put, the
//! time of removes, and the kernel memory the rules take.
//!
//! Each hook gets its own private copy of the object, because a rule belongs to one hook and a
//! map holds at most 2^20 entries: 1M rules of one hook fill most of a map. The rules at each
//! level are the few the measured packets hit ([`fixed_rules`]: an IPv4 /32, an IPv6 /128, a
//! per-source exact and a per-source sketch rule, plus a covering /25 and /64, a source /16,
//! a UDP port rule for both families and an address pair), the rest destination prefixes
//! ([`bulk_cidr`]: the 511 /24s and then the /32s of 198.18.1.0-198.19.255.255, alternating
//! with IPv6 /128s and /64s in 2001:2::/48), all in the scope the packets are looked up in
//! (interface 1, the loopback device `BPF_PROG_TEST_RUN` runs tc programs on, and the
//! program's hook). Every measurement checks that its packet was charged to the rule it was
//! meant for (or to none) and passed.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rein::{
    capabilities::net_rules::spec::{
        Cidr, NetHook, NetLimit, NetMatch, Per, Protocol, SketchSize, Sources,
    },
    clock::{Clock, MonotonicClock},
};
use rein_common::net::{
    NET_PASS_TC_PROGRAM, NET_PASS_XDP_PROGRAM, NET_SKETCH_MAP, NET_TC_EGRESS_PROGRAM,
    NET_TC_INGRESS_PROGRAM, NET_XDP_PROGRAM, NetRule,
};
use rein_testkit::{process::check_interrupted, stats};
use serde::Serialize;

use crate::net::{
    frame,
    memory::{self, kernel_bytes},
    object::{Object, RULE_MAPS},
};

/// The interface `BPF_PROG_TEST_RUN` runs tc programs on (loopback), and the one XDP test runs
/// report as their ingress interface.
const LOOPBACK: u32 = 1;
const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;

/// UDP payload of the measured packets: 106-byte IPv4 frames, 126-byte IPv6 frames.
const PAYLOAD: usize = 64;
const PORT: u16 = 9;
const CLIENT_V4: &str = "198.18.0.100";
const CLIENT_V6: &str = "2001:2::100";

/// Runs before the measured rounds of a case (and not counted).
const WARMUP: u32 = 10_000;

/// Ids of the rules the measured packets hit, and of the others that share their lookups.
const IPV4_RULE: u32 = 1;
const IPV6_RULE: u32 = 2;
const EXACT_RULE: u32 = 3;
const SKETCH_RULE: u32 = 4;
const FIXED_IDS: std::ops::RangeInclusive<u32> = 1..=9;
/// Bulk rule `k` has id `FIRST_BULK_ID + k`.
const FIRST_BULK_ID: u32 = 1000;

/// The /24s and /32s of 198.18.1.0-198.19.255.255 (198.18.0.0/24 is left to the measured
/// packets).
const V4_NETWORKS: u32 = 511;
const V4_HOSTS: u32 = V4_NETWORKS * 256;
const V4_BASE: u32 = u32::from_be_bytes([198, 18, 1, 0]);

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Rule counts to measure at, ascending; 1 means each case's rule alone.
    pub levels: Vec<u32>,
    /// Runs per `BPF_PROG_TEST_RUN` call.
    pub repeat: u32,
    /// Calls per measurement: the least is reported.
    pub rounds: u32,
    /// Removes timed after the largest level (first hook only).
    pub removes: u32,
    pub sketch: SketchSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::TcIngress, Hook::TcEgress, Hook::Xdp];

    fn net_hook(self) -> NetHook {
        match self {
            Self::TcIngress => NetHook::TcIngress,
            Self::TcEgress => NetHook::TcEgress,
            Self::Xdp => NetHook::Xdp,
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::TcIngress => NET_TC_INGRESS_PROGRAM,
            Self::TcEgress => NET_TC_EGRESS_PROGRAM,
            Self::Xdp => NET_XDP_PROGRAM,
        }
    }

    fn pass_program(self) -> &'static str {
        match self {
            Self::TcIngress | Self::TcEgress => NET_PASS_TC_PROGRAM,
            Self::Xdp => NET_PASS_XDP_PROGRAM,
        }
    }

    fn pass_verdict(self) -> u32 {
        match self {
            Self::TcIngress | Self::TcEgress => TC_ACT_OK,
            Self::Xdp => XDP_PASS,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::TcIngress => "tc ingress",
            Self::TcEgress => "tc egress",
            Self::Xdp => "XDP",
        }
    }
}

/// What is measured: a program and a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// The pass-everything program of the same type (no maps): the cost of running a program.
    PassThrough,
    /// rein's program, an IPv4 packet that no rule matches (all lookups, no rule).
    NoMatch,
    /// An IPv4 packet under a shared token bucket on its destination /32.
    Ipv4,
    /// An IPv6 packet under a shared token bucket on its destination /128.
    Ipv6,
    /// An IPv4 packet under a per-source rule (exact table).
    PerSourceExact,
    /// An IPv4 packet under a per-source rule (count-min sketch).
    PerSourceSketch,
}

impl Case {
    pub const ALL: [Case; 6] = [
        Case::PassThrough,
        Case::NoMatch,
        Case::Ipv4,
        Case::Ipv6,
        Case::PerSourceExact,
        Case::PerSourceSketch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::PassThrough => "pass-through program",
            Self::NoMatch => "no rule matches",
            Self::Ipv4 => "IPv4 /32 rule",
            Self::Ipv6 => "IPv6 /128 rule",
            Self::PerSourceExact => "per-source exact",
            Self::PerSourceSketch => "per-source sketch",
        }
    }

    /// The rule the packet must be charged to.
    fn rule(self) -> Option<u32> {
        match self {
            Self::PassThrough | Self::NoMatch => None,
            Self::Ipv4 => Some(IPV4_RULE),
            Self::Ipv6 => Some(IPV6_RULE),
            Self::PerSourceExact => Some(EXACT_RULE),
            Self::PerSourceSketch => Some(SKETCH_RULE),
        }
    }

    /// The one rule installed for the 1-rule measurement.
    fn alone(self) -> u32 {
        self.rule().unwrap_or(IPV4_RULE)
    }

    fn frame(self) -> Result<Vec<u8>> {
        let (source, destination) = match self {
            Self::PassThrough | Self::Ipv4 => (CLIENT_V4, "198.18.0.2"),
            Self::NoMatch => (CLIENT_V4, "198.18.0.200"),
            Self::Ipv6 => (CLIENT_V6, "2001:2::2"),
            Self::PerSourceExact => (CLIENT_V4, "198.18.0.3"),
            Self::PerSourceSketch => (CLIENT_V4, "198.18.0.4"),
        };
        frame::udp(addr(source)?, addr(destination)?, PORT, PAYLOAD)
    }
}

fn addr(text: &str) -> Result<IpAddr> {
    text.parse()
        .with_context(|| format!("{text} is not an address"))
}

fn cidr(text: &str) -> Result<Cidr> {
    text.parse()
        .with_context(|| format!("{text} is not a prefix"))
}

/// One measurement: a case at a hook with `rules` rules installed.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub hook: Hook,
    pub case: Case,
    pub rules: u32,
    /// The least over the rounds of the kernel's average ns per run: the round least disturbed
    /// by the rest of the machine (interrupts, other tasks on the 2 CPUs).
    pub ns: u32,
    pub median_ns: u32,
    pub max_ns: u32,
    pub rounds_ns: Vec<u32>,
}

/// Timed puts (or removes) of rules into a hook's maps.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateTiming {
    pub hook: Hook,
    /// `put` or `remove`.
    pub operation: &'static str,
    /// Rules installed before and after.
    pub from_rules: u32,
    pub to_rules: u32,
    pub count: u32,
    /// The successful attempts' time, plus the ENOMEM retries' with their pauses.
    pub total_s: f64,
    /// Of the successful attempts.
    pub mean_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Puts that failed with ENOMEM and were tried again (see [`put`]), and the seconds that
    /// cost.
    pub enomem_retries: u32,
    pub retry_s: f64,
}

impl UpdateTiming {
    fn new(
        hook: Hook,
        operation: &'static str,
        (from_rules, to_rules): (u32, u32),
        puts: &[Put],
    ) -> Self {
        let us: Vec<f64> = puts.iter().map(|p| p.time.as_secs_f64() * 1e6).collect();
        let retry_s: f64 = puts.iter().map(|p| p.waited.as_secs_f64()).sum();
        Self {
            hook,
            operation,
            from_rules,
            to_rules,
            count: u32::try_from(puts.len()).unwrap_or(u32::MAX),
            total_s: us.iter().sum::<f64>() / 1e6 + retry_s,
            mean_us: stats::mean(&us).unwrap_or(0.0),
            p99_us: stats::percentile(&us, 99.0).unwrap_or(0.0),
            max_us: us.iter().copied().fold(0.0, f64::max),
            enomem_retries: puts.iter().map(|p| p.retries).sum(),
            retry_s,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    pub name: String,
    pub memlock: u64,
}

/// The maps' memory with `rules` rules installed (tc ingress object).
#[derive(Debug, Clone, Serialize)]
pub struct MemorySnapshot {
    pub rules: u32,
    pub maps: Vec<MapMemory>,
    /// SUnreclaim + Percpu of /proc/meminfo (system-wide).
    pub kernel_bytes: u64,
}

impl MemorySnapshot {
    fn take(object: &Object, rules: u32) -> Result<Self> {
        let maps = object
            .map_ids()
            .iter()
            .map(|&(name, id)| {
                Ok(MapMemory {
                    name: name.to_owned(),
                    memlock: memory::memlock(id)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            rules,
            maps,
            kernel_bytes: kernel_bytes()?,
        })
    }

    pub fn memlock(&self, name: &str) -> Option<u64> {
        self.maps.iter().find(|m| m.name == name).map(|m| m.memlock)
    }

    /// memlock of the maps rules have entries in.
    pub fn rule_maps(&self) -> u64 {
        RULE_MAPS.iter().filter_map(|name| self.memlock(name)).sum()
    }

    pub fn total(&self) -> u64 {
        self.maps.iter().map(|m| m.memlock).sum()
    }
}

/// Memory per rule between an empty object and `level`.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPerRule {
    pub rules: u32,
    /// From memlock of the rule maps.
    pub memlock_bytes_per_rule: f64,
    /// From SUnreclaim + Percpu (system-wide).
    pub kernel_bytes_per_rule: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SketchMemory {
    pub size: String,
    /// width x depth x 8.
    pub rule_bytes: u64,
    /// memlock of the sketch array, which all sketch rules share (2^20 cells).
    pub array_memlock: Option<u64>,
    pub array_cells: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub repeat: u32,
    pub rounds: u32,
    pub timings: Vec<Timing>,
    pub updates: Vec<UpdateTiming>,
    pub memory: Vec<MemorySnapshot>,
    pub per_rule: Vec<MemoryPerRule>,
    pub sketch_memory: Option<SketchMemory>,
}

impl Results {
    pub fn timing(&self, hook: Hook, case: Case, rules: u32) -> Option<&Timing> {
        self.timings
            .iter()
            .find(|t| t.hook == hook && t.case == case && t.rules == rules)
    }

    pub fn levels(&self) -> Vec<u32> {
        let mut levels: Vec<u32> = self.timings.iter().map(|t| t.rules).collect();
        levels.sort_unstable();
        levels.dedup();
        levels
    }
}

/// Runs the whole section; `results` keeps what was measured when it fails.
pub fn run(config: &Config, results: &mut Results) -> Result<()> {
    results.repeat = config.repeat;
    results.rounds = config.rounds;
    // The maps of a run just before (this bench's or a test's) may still be being freed.
    settle();
    for (i, &hook) in Hook::ALL.iter().enumerate() {
        let phase = Phase {
            config,
            hook,
            track: i == 0,
        };
        let mut object = Object::load(&[hook.program(), hook.pass_program()])?;
        phase.run(&mut object, results)?;
        drop(object);
        settle();
    }
    Ok(())
}

/// The measurements of one hook on one object.
struct Phase<'a> {
    config: &'a Config,
    hook: Hook,
    /// Memory and removes are taken for the first hook only.
    track: bool,
}

impl Phase<'_> {
    fn run(&self, object: &mut Object, results: &mut Results) -> Result<()> {
        let hook = self.hook;
        let now = MonotonicClock.now_ns();
        let fixed = fixed_rules(hook, self.config.sketch, now)?;
        let empty = if self.track {
            let snapshot = MemorySnapshot::take(object, 0)?;
            results.sketch_memory = Some(SketchMemory {
                size: self.config.sketch.to_string(),
                rule_bytes: self.config.sketch.memory_bytes(),
                array_memlock: snapshot.memlock(NET_SKETCH_MAP),
                array_cells: rein_common::net::MAX_SKETCH_CELLS,
            });
            results.memory.push(snapshot.clone());
            Some(snapshot)
        } else {
            None
        };

        if self.config.levels.contains(&1) {
            eprintln!("rein-bench-net: {}: 1 rule", hook.label());
            for case in Case::ALL {
                let (id, matching, rule) = fixed
                    .iter()
                    .find(|(id, _, _)| *id == case.alone())
                    .context("the case's rule is missing")?;
                put(object, *id, matching, *rule)?;
                let timing = self.measure(object, case, 1);
                remove(object, *id, matching);
                results.timings.push(timing?);
            }
        }

        let other = NetLimit::TokenBucket {
            per: Per::Packets,
            rate: 1000,
            burst: 100,
        }
        .rule(now);
        let mut installed = 0u32;
        let mut bulk = 0u32;
        let mut times = Vec::new();
        for &level in self.config.levels.iter().filter(|&&l| l > 1) {
            let from = installed;
            eprintln!(
                "rein-bench-net: {}: installing rules {} to {level}",
                hook.label(),
                from + 1
            );
            times.clear();
            if installed == 0 {
                for (id, matching, rule) in &fixed {
                    times.push(put(object, *id, matching, *rule)?);
                    installed += 1;
                }
            }
            while installed < level {
                let (id, matching) = bulk_rule(hook, bulk)?;
                times.push(put(object, id, &matching, other)?);
                bulk += 1;
                installed += 1;
                if bulk.is_multiple_of(4096) {
                    check_interrupted()?;
                }
            }
            results
                .updates
                .push(UpdateTiming::new(hook, "put", (from, installed), &times));
            if let Some(empty) = &empty {
                let snapshot = MemorySnapshot::take(object, installed)?;
                let per = |a: u64, b: u64| (a as f64 - b as f64) / f64::from(installed);
                results.per_rule.push(MemoryPerRule {
                    rules: installed,
                    memlock_bytes_per_rule: per(snapshot.rule_maps(), empty.rule_maps()),
                    kernel_bytes_per_rule: per(snapshot.kernel_bytes, empty.kernel_bytes),
                });
                results.memory.push(snapshot);
            }
            eprintln!("rein-bench-net: {}: {installed} rules", hook.label());
            for case in Case::ALL {
                results.timings.push(self.measure(object, case, installed)?);
            }
        }

        if self.track && bulk > 0 {
            let count = self.config.removes.min(bulk);
            eprintln!("rein-bench-net: {}: removing {count} rules", hook.label());
            times.clear();
            for k in (bulk - count..bulk).rev() {
                let (id, matching) = bulk_rule(hook, k)?;
                let t = Instant::now();
                remove(object, id, &matching);
                times.push(Put {
                    time: t.elapsed(),
                    ..Put::default()
                });
                if k.is_multiple_of(1024) {
                    check_interrupted()?;
                }
            }
            results.updates.push(UpdateTiming::new(
                hook,
                "remove",
                (installed, installed - count),
                &times,
            ));
        }
        Ok(())
    }

    /// Runs `case` `rounds` times `repeat` times (after a warm-up) and checks that every run
    /// passed and was charged to the case's rule.
    fn measure(&self, object: &Object, case: Case, rules: u32) -> Result<Timing> {
        let hook = self.hook;
        let program = if case == Case::PassThrough {
            hook.pass_program()
        } else {
            hook.program()
        };
        let frame = case.frame()?;
        let before = charged(object);
        let check = |verdict: u32| -> Result<()> {
            if verdict != hook.pass_verdict() {
                bail!(
                    "{} / {}: verdict {verdict}, expected {} (pass)",
                    hook.label(),
                    case.label(),
                    hook.pass_verdict()
                );
            }
            Ok(())
        };
        check(object.run(program, &frame, WARMUP)?.verdict)?;
        let mut rounds_ns = Vec::new();
        for _ in 0..self.config.rounds {
            check_interrupted()?;
            let run = object.run(program, &frame, self.config.repeat)?;
            check(run.verdict)?;
            rounds_ns.push(run.ns);
        }
        let after = charged(object);
        let runs =
            u64::from(WARMUP) + u64::from(self.config.repeat) * u64::from(self.config.rounds);
        for ((id, b), (_, a)) in before.iter().zip(&after) {
            let expected = if case.rule() == Some(*id) { runs } else { 0 };
            if a - b != expected {
                bail!(
                    "{} / {} with {rules} rules: rule {id} was charged {} packets, expected \
                     {expected}",
                    hook.label(),
                    case.label(),
                    a - b
                );
            }
        }
        let mut sorted = rounds_ns.clone();
        sorted.sort_unstable();
        Ok(Timing {
            hook,
            case,
            rules,
            ns: sorted.first().copied().unwrap_or(0),
            median_ns: sorted.get(sorted.len() / 2).copied().unwrap_or(0),
            max_ns: sorted.last().copied().unwrap_or(0),
            rounds_ns,
        })
    }
}

/// Passed + dropped packets of each fixed rule.
fn charged(object: &Object) -> Vec<(u32, u64)> {
    FIXED_IDS
        .map(|id| {
            let c = object.maps.counters(id);
            (id, c.passed_packets + c.dropped_packets)
        })
        .collect()
}

/// How often, and how long apart, a put that failed for want of memory is tried again.
const ENOMEM_ATTEMPTS: u32 = 200;
const ENOMEM_WAIT: Duration = Duration::from_millis(10);

/// What installing one rule took.
#[derive(Debug, Clone, Copy, Default)]
struct Put {
    /// The attempt that succeeded.
    time: Duration,
    /// Failed attempts (ENOMEM) before it, and the time they took with the waits after them.
    retries: u32,
    waited: Duration,
}

/// Installs rule `id`. The per-CPU counters of a rule come from the kernel's per-CPU allocator,
/// which cannot grow inside a map update: installing rules back to back runs it dry (ENOMEM)
/// until its background worker adds memory, so such a put is tried again after a pause.
fn put(object: &mut Object, id: u32, matching: &NetMatch, rule: NetRule) -> Result<Put> {
    let mut done = Put::default();
    loop {
        let t = Instant::now();
        match object.maps.put(id, matching, rule) {
            Ok(()) => {
                done.time = t.elapsed();
                return Ok(done);
            }
            Err(rein::Error::Bpf { message, .. })
                if message.contains("os error 12") && done.retries < ENOMEM_ATTEMPTS =>
            {
                std::thread::sleep(ENOMEM_WAIT);
                done.retries += 1;
                done.waited += t.elapsed();
            }
            Err(e) => return Err(e).with_context(|| format!("installing rule {id}")),
        }
    }
}

/// Removes rule `id` (rein's remove ignores missing pieces).
fn remove(object: &mut Object, id: u32, matching: &NetMatch) {
    object.maps.remove(id, matching);
}

/// The rules the measured packets hit or look past: (id, match, kernel rule).
fn fixed_rules(hook: Hook, sketch: SketchSize, now: u64) -> Result<Vec<(u32, NetMatch, NetRule)>> {
    // Never refuses at the rates a test run reaches (1 ns a packet, a burst of 1M).
    let open = NetLimit::TokenBucket {
        per: Per::Packets,
        rate: 1_000_000_000,
        burst: 1_000_000,
    };
    let other = NetLimit::TokenBucket {
        per: Per::Packets,
        rate: 1000,
        burst: 100,
    };
    let rule = |limit: NetLimit, sources: Sources| {
        let mut rule = limit.rule(now);
        sources.apply(&mut rule, 0);
        rule
    };
    let at = |src: Option<&str>, dst: Option<&str>, proto: Option<Protocol>, port: Option<u16>| {
        let src = src.map(cidr).transpose()?;
        let dst = dst.map(cidr).transpose()?;
        NetMatch::new(LOOPBACK, hook.net_hook(), src, dst, proto, port).context("a fixed rule")
    };
    let shared = Sources::Shared;
    Ok(vec![
        (
            IPV4_RULE,
            at(None, Some("198.18.0.2"), None, None)?,
            rule(open, shared),
        ),
        (
            IPV6_RULE,
            at(None, Some("2001:2::2"), None, None)?,
            rule(open, shared),
        ),
        (
            EXACT_RULE,
            at(None, Some("198.18.0.3"), None, None)?,
            rule(open, Sources::Exact),
        ),
        (
            SKETCH_RULE,
            at(None, Some("198.18.0.4"), None, None)?,
            rule(open, Sources::Sketch { size: sketch }),
        ),
        // Less specific rules the measured packets also find, and rules in the other tables.
        (
            5,
            at(None, Some("198.18.0.0/25"), None, None)?,
            rule(other, shared),
        ),
        (
            6,
            at(Some("198.19.0.0/16"), None, None, None)?,
            rule(other, shared),
        ),
        (
            7,
            at(None, None, Some(Protocol::Udp), Some(53))?,
            rule(other, shared),
        ),
        (
            8,
            at(Some("198.19.0.1"), Some("198.18.0.2"), None, None)?,
            rule(other, shared),
        ),
        (
            9,
            at(None, Some("2001:2::/64"), None, None)?,
            rule(other, shared),
        ),
    ])
}

/// Bulk rule `k`: first the 511 IPv4 /24s, then IPv4 /32s alternating with IPv6 rules until
/// the /32s run out, then IPv6 rules (a /64 every 64th, /128s otherwise).
pub fn bulk_cidr(k: u32) -> Result<Cidr> {
    let v4 = |a: u32, len: u32| cidr(&format!("{}/{len}", std::net::Ipv4Addr::from(a)));
    if k < V4_NETWORKS {
        return v4(V4_BASE + (k << 8), 24);
    }
    let j = k - V4_NETWORKS;
    let m = if j < 2 * V4_HOSTS {
        if j.is_multiple_of(2) {
            return v4(V4_BASE + j / 2, 32);
        }
        j / 2
    } else {
        j - V4_HOSTS
    };
    if m % 64 == 63 {
        return cidr(&format!("2001:2:0:{:x}::/64", 0x8000 + m / 64));
    }
    cidr(&format!(
        "2001:2:0:{:x}::{:x}/128",
        1 + (m >> 16),
        m & 0xffff
    ))
}

fn bulk_rule(hook: Hook, k: u32) -> Result<(u32, NetMatch)> {
    let matching = NetMatch::new(
        LOOPBACK,
        hook.net_hook(),
        None,
        Some(bulk_cidr(k)?),
        None,
        None,
    )
    .context("a bulk rule")?;
    Ok((FIRST_BULK_ID + k, matching))
}

/// Waits (at most 20 s) until the kernel has freed the maps of dropped objects: until the
/// system's slab and per-CPU memory stop falling, so that freeing does not run beside the
/// measurements.
fn settle() {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = kernel_bytes().unwrap_or(0);
    let mut steady = 0;
    while steady < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = kernel_bytes().unwrap_or(0);
        if last.saturating_sub(now) < 1 << 20 {
            steady += 1;
        } else {
            steady = 0;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn bulk_prefixes_are_distinct_and_stay_in_the_test_ranges() {
        let mut seen = HashSet::new();
        let v4_range: Cidr = "198.18.0.0/15".parse().unwrap();
        let (mut v4, mut v6) = (0, 0);
        for k in (0..300_000).chain(1_000_000..1_000_100) {
            let c = bulk_cidr(k).unwrap();
            assert!(seen.insert(c), "{c} twice (k = {k})");
            match c.addr() {
                IpAddr::V4(a) => {
                    v4 += 1;
                    let bits = u32::from(a);
                    let IpAddr::V4(range) = v4_range.addr() else {
                        unreachable!()
                    };
                    assert_eq!(bits >> 17, u32::from(range) >> 17, "{c}");
                    assert!(bits >= V4_BASE, "{c} is in the measured /24");
                }
                IpAddr::V6(a) => {
                    v6 += 1;
                    assert_eq!(&a.segments()[..3], &[0x2001, 2, 0], "{c}");
                    assert_ne!(a.segments()[3], 0, "{c} is in the measured /64");
                }
            }
        }
        assert_eq!(v4, V4_NETWORKS + V4_HOSTS);
        assert!(v6 > 100_000);
    }
}
