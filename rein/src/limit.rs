//! A rate limit as the operator states it, and its translation into the kernel's bucket.
use rein_common::{
    Action, Bucket, Rule,
    bucket::{COST_SHIFT, MAX_NS_PER_BYTE},
};
use serde::{Deserialize, Serialize};

use crate::units::{Rate, Size};

/// Rate and burst of one direction of one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub rate: Rate,
    pub burst: Size,
}

/// The smallest default burst: one 64 KiB GSO packet, the largest unit TCP hands the stack, so a
/// single super-packet never finds the bucket too small.
pub const MIN_DEFAULT_BURST_BYTES: u64 = 64 * 1024;
/// The default burst covers this much time at the rate, as tc-tbf's rule of thumb (burst at
/// least rate / HZ, with HZ = 100) suggests: scheduling and softirq batching jitter of that order
/// then does not cost throughput.
pub const DEFAULT_BURST_MILLIS: u64 = 10;

impl Limit {
    /// The limit with the default burst for `rate`: max(64 KiB, 10 ms at the rate).
    pub fn with_default_burst(rate: Rate) -> Self {
        Self {
            rate,
            burst: default_burst(rate),
        }
    }

    /// The kernel's bucket for this limit, full at time `now_ns`.
    pub fn bucket(&self, now_ns: u64) -> Bucket {
        full_bucket(ns_per_byte(self.rate), self.burst.bytes(), now_ns)
    }
}

impl Limit {
    /// The kernel's rule for this limit, with a full bucket and no flows counted yet.
    pub fn rule(&self, now_ns: u64) -> Rule {
        Rule::new(
            self.bucket(now_ns),
            self.rate.bytes_per_second(),
            Action::Drop,
        )
    }
}

pub fn default_burst(rate: Rate) -> Size {
    let window = rate.bytes_per_second() * DEFAULT_BURST_MILLIS / 1000;
    Size::saturating(window.max(MIN_DEFAULT_BURST_BYTES))
}

/// A full bucket whose unit (a byte, or a packet) costs `ns_per_unit` (shifted by COST_SHIFT),
/// with room for `burst_units`, at time `now_ns`.
pub(crate) fn full_bucket(ns_per_unit: u64, burst_units: u64, now_ns: u64) -> Bucket {
    let burst_ns = (u128::from(burst_units) * u128::from(ns_per_unit)) >> COST_SHIFT;
    Bucket {
        ns_per_byte: ns_per_unit,
        // Cannot exceed u64: at most 2^30 bytes at 8e6 ns a byte.
        burst_ns: u64::try_from(burst_ns).unwrap_or(u64::MAX),
        tat: now_ns,
    }
}

/// Cost of one unit in ns, shifted by COST_SHIFT, at `per_second` units of `ns_per_second`
/// ns each (8e9 for bit rates charged per byte), rounded up so the bucket never exceeds the
/// rate; clamped to what the kernel's arithmetic takes.
pub(crate) fn ns_per_unit(ns_per_second: u64, per_second: u64) -> u64 {
    let numerator = u128::from(ns_per_second) << COST_SHIFT;
    let per_second = u128::from(per_second.max(1));
    u64::try_from(numerator.div_ceil(per_second))
        .unwrap_or(u64::MAX)
        .min(MAX_NS_PER_BYTE)
}

/// Cost of one byte at `rate` (Rate::MIN_BITS keeps it within MAX_NS_PER_BYTE; checked by a
/// test).
fn ns_per_byte(rate: Rate) -> u64 {
    ns_per_unit(8_000_000_000, rate.bits_per_second())
}

#[cfg(test)]
mod tests {
    use rein_common::bucket::MAX_NS_PER_BYTE;

    use super::*;

    #[test]
    fn slowest_rate_cannot_overflow_the_kernel_arithmetic() {
        let slowest = Limit {
            rate: Rate::from_bits(Rate::MIN_BITS).unwrap(),
            burst: Size::from_bytes(Size::MAX_BYTES).unwrap(),
        };
        let bucket = slowest.bucket(0);
        assert!(bucket.ns_per_byte <= MAX_NS_PER_BYTE);
        assert!(bucket.burst_ns < u64::MAX / 2);
    }

    #[test]
    fn exact_rates_have_exact_costs() {
        // 8 Mbit/s is one byte per microsecond.
        let limit = Limit::with_default_burst("8mbit".parse().unwrap());
        let bucket = limit.bucket(0);
        assert_eq!(bucket.cost_ns(1500), 1_500_000);
        assert_eq!(bucket.burst_ns, 65536 * 1000);
    }

    #[test]
    fn default_burst_is_64k_or_10ms() {
        assert_eq!(default_burst("10mbit".parse().unwrap()).bytes(), 65536);
        // 1 Gbit/s for 10 ms is 1.25 MB.
        assert_eq!(default_burst("1gbit".parse().unwrap()).bytes(), 1_250_000);
        assert_eq!(default_burst("1tbit".parse().unwrap()).bytes(), 1 << 30);
    }
}
