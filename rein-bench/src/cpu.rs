//! Whole-machine CPU time from /proc/stat.

use anyhow::{Context, Result};

/// Busy CPU time of all CPUs, in seconds, from a copy of /proc/stat (its first line is enough):
/// user + nice + system + irq + softirq + steal of the aggregate `cpu` line (guest time is
/// already inside user and nice).
pub fn busy_seconds(stat: &str) -> Result<f64> {
    let ticks = busy_ticks(stat).context("no aggregate cpu line in a copy of /proc/stat")?;
    Ok(ticks as f64 / ticks_per_second())
}

/// (softirq, busy) CPU time of all CPUs, in seconds, from a copy of /proc/stat; busy as in
/// [`busy_seconds`].
pub fn softirq_and_busy_seconds(stat: &str) -> Option<(f64, f64)> {
    let hz = ticks_per_second();
    let ticks = cpu_ticks(stat)?;
    Some((ticks.softirq as f64 / hz, ticks.busy as f64 / hz))
}

struct Ticks {
    softirq: u64,
    busy: u64,
}

fn cpu_ticks(stat: &str) -> Option<Ticks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(Ticks {
        softirq: at(6),
        busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
    })
}

fn busy_ticks(stat: &str) -> Option<u64> {
    cpu_ticks(stat).map(|ticks| ticks.busy)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) only reads a constant of the C library.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_busy_fields() {
        let stat = "cpu  100 2 30 9999 50 4 5 6 70 8\ncpu0 1 1 1 1 1 1 1 1 1 1\n";
        assert_eq!(busy_ticks(stat), Some(100 + 2 + 30 + 4 + 5 + 6));
        assert_eq!(busy_ticks("intr 5\n"), None);
        let (softirq, busy) = softirq_and_busy_seconds(stat).unwrap();
        let hz = ticks_per_second();
        assert_eq!(softirq, 5.0 / hz);
        assert_eq!(busy, (100 + 2 + 30 + 4 + 5 + 6) as f64 / hz);
        assert!(softirq_and_busy_seconds("intr 5\n").is_none());
    }

    #[test]
    fn reads_this_machine() {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(busy_seconds(&stat).unwrap() > 0.0);
        assert!(busy_seconds("").is_err());
    }
}
