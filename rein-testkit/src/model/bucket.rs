//! Reference model of the token bucket, written the textbook way (a token count refilled by
//! elapsed time) in exact integer arithmetic. The kernel stores its bucket differently (as a
//! theoretical arrival time); tests hold both to this model.
use rein::{clock::Clock, limit::Limit};

/// Tokens are counted in nanobits: a byte is 8e9 of them, and one nanosecond at `r` bit/s adds
/// `r`. Everything is an integer, so the model has no rounding of its own.
const NANOBITS_PER_BYTE: i128 = 8_000_000_000;

#[derive(Debug, Clone)]
pub struct TokenBucketModel {
    rate_bits: i128,
    capacity: i128,
    tokens: i128,
    last_ns: u64,
}

impl TokenBucketModel {
    /// A full bucket at `clock`'s time.
    pub fn new(limit: Limit, clock: &dyn Clock) -> Self {
        let capacity = i128::from(limit.burst.bytes()) * NANOBITS_PER_BYTE;
        Self {
            rate_bits: i128::from(limit.rate.bits_per_second()),
            capacity,
            tokens: capacity,
            last_ns: clock.now_ns(),
        }
    }

    /// Offers a packet of `bytes` at `clock`'s time. As in the kernel, a packet passes when the
    /// bucket holds `min(bytes, burst)`, and may leave the bucket in debt.
    pub fn offer(&mut self, bytes: u64, clock: &dyn Clock) -> bool {
        self.refill(clock.now_ns());
        let cost = i128::from(bytes) * NANOBITS_PER_BYTE;
        if self.tokens >= cost.min(self.capacity) {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Bytes the bucket holds now (negative while in debt).
    pub fn tokens_bytes(&self) -> f64 {
        self.tokens as f64 / NANOBITS_PER_BYTE as f64
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = i128::from(now_ns.saturating_sub(self.last_ns));
        self.tokens = (self.tokens + elapsed * self.rate_bits).min(self.capacity);
        self.last_ns = self.last_ns.max(now_ns);
    }
}

#[cfg(test)]
mod tests {
    use rein_common::{Bucket, Verdict};

    use super::*;
    use crate::{FakeClock, model::Xorshift};

    /// The kernel's arithmetic, driven from userspace: what the eBPF program does to `tat`.
    struct KernelBucket(Bucket);

    impl KernelBucket {
        fn offer(&mut self, bytes: u64, now: u64) -> bool {
            let cost = self.0.cost_ns(bytes);
            match Bucket::decide(self.0.tat, now, cost, self.0.burst_ns) {
                Verdict::Pass { tat } => {
                    self.0.tat = tat;
                    true
                }
                Verdict::Refuse => false,
            }
        }
    }

    fn limit(rate: &str, burst: &str) -> Limit {
        Limit {
            rate: rate.parse().unwrap(),
            burst: burst.parse().unwrap(),
        }
    }

    #[test]
    fn kernel_arithmetic_matches_the_model_exactly_when_costs_are_whole() {
        // At 8 Mbit/s a byte costs exactly 1000 ns, so the two must agree on every packet.
        for burst in ["1500", "10k", "64k"] {
            let limit = limit("8mbit", burst);
            let clock = FakeClock::new(1_000_000_000);
            let mut model = TokenBucketModel::new(limit, &clock);
            let mut kernel = KernelBucket(limit.bucket(clock.now_ns()));
            let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
            let mut passed = 0;
            for i in 0..200_000 {
                clock.advance(random.next_u64() % 3_000_000);
                let bytes = 40 + random.next_u64() % 65_000;
                let expected = model.offer(bytes, &clock);
                assert_eq!(
                    kernel.offer(bytes, clock.now_ns()),
                    expected,
                    "packet {i} of {bytes} bytes, burst {burst}: model has {} bytes",
                    model.tokens_bytes()
                );
                passed += u32::from(expected);
            }
            assert!(
                (1_000..199_000).contains(&passed),
                "the scenario must exercise both verdicts: {passed} passed"
            );
        }
    }

    #[test]
    fn kernel_arithmetic_tracks_the_model_at_awkward_rates() {
        // Rates whose byte cost is not a whole number of ns: the kernel rounds the cost up, so
        // it may refuse a packet the model passes, never the other way round by more than
        // rounding, and the bytes passed stay within 0.01% of the model's.
        for rate in ["3mbit", "77777kbit", "999mbit", "1kbit"] {
            let limit = limit(rate, "64k");
            let clock = FakeClock::new(0);
            let mut model = TokenBucketModel::new(limit, &clock);
            let mut kernel = KernelBucket(limit.bucket(0));
            let mut random = Xorshift(12345);
            let (mut model_bytes, mut kernel_bytes) = (0u64, 0u64);
            let bytes_per_s = limit.rate.bytes_per_second();
            for _ in 0..100_000 {
                // Offer about twice the rate so the bucket is the bottleneck.
                let bytes = 64 + random.next_u64() % 3000;
                clock.advance(bytes * 1_000_000_000 / (2 * bytes_per_s) + 1);
                if model.offer(bytes, &clock) {
                    model_bytes += bytes;
                }
                if kernel.offer(bytes, clock.now_ns()) {
                    kernel_bytes += bytes;
                }
            }
            let ratio = kernel_bytes as f64 / model_bytes as f64;
            assert!(
                (0.9999..=1.0001).contains(&ratio),
                "{rate}: kernel {kernel_bytes} B, model {model_bytes} B"
            );
        }
    }

    #[test]
    fn long_idle_at_the_highest_rate_refills_to_the_burst_only() {
        let limit = limit("1tbit", "1m");
        let clock = FakeClock::new(0);
        let mut kernel = KernelBucket(limit.bucket(0));
        let mut model = TokenBucketModel::new(limit, &clock);
        // Empty the bucket, then idle for ~500 years of nanoseconds.
        while kernel.offer(60_000, 0) {}
        clock.advance(1u64 << 61);
        let mut passed = 0;
        while kernel.offer(1500, clock.now_ns()) {
            assert!(model.offer(1500, &clock));
            passed += 1500;
        }
        assert_eq!(passed, (1 << 20) / 1500 * 1500);
    }

    #[test]
    fn the_rate_holds_over_any_window() {
        // Saturating load for 10 s of fake time at 10 Mbit/s: what passes in every 1 s window
        // is at most one second of rate plus the burst and one packet.
        let limit = limit("10mbit", "64k");
        let mut kernel = KernelBucket(limit.bucket(0));
        let mut passed_at = Vec::new();
        let mut now = 0u64;
        while now < 10_000_000_000 {
            if kernel.offer(1500, now) {
                passed_at.push(now);
            }
            now += 100_000;
        }
        let per_second = limit.rate.bytes_per_second();
        for start in (0..9_000_000_000u64).step_by(250_000_000) {
            let bytes = passed_at
                .iter()
                .filter(|&&t| t >= start && t < start + 1_000_000_000)
                .count() as u64
                * 1500;
            assert!(
                bytes <= per_second + 65536 + 1500,
                "window at {start}: {bytes} B"
            );
        }
        let total = passed_at.len() as u64 * 1500;
        let expected = per_second * 10 + 65536;
        assert!(
            total.abs_diff(expected) <= 3000,
            "{total} B passed, {expected} expected"
        );
    }
}
