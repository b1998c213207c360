//! The bucket of an inbound new-connection limit (`rein conn add --dev`): a count of
//! connection tokens, refilled by elapsed time at the rate, holding at most the burst. Kept in
//! exact integer arithmetic: tokens are counted in ns of the rate (one connection = `cost_ns`).

/// A new-connection bucket: `rate` connections per `period_ns`, `burst` of them at once.
#[derive(Debug, Clone)]
pub struct SynBucketModel {
    /// ns one connection takes at the rate (rounded up, as the kernel's).
    cost_ns: u128,
    capacity_ns: u128,
    tokens_ns: u128,
    last_ns: u64,
}

impl SynBucketModel {
    /// A full bucket at `now_ns`.
    pub fn new(count: u64, period_ns: u64, burst: u64, now_ns: u64) -> Self {
        let cost_ns = u128::from(period_ns.div_ceil(count));
        let capacity_ns = cost_ns * u128::from(burst);
        Self {
            cost_ns,
            capacity_ns,
            tokens_ns: capacity_ns,
            last_ns: now_ns,
        }
    }

    /// Offers one SYN at `now_ns`: true when a connection token is there (then it is taken).
    pub fn offer(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        if self.tokens_ns >= self.cost_ns {
            self.tokens_ns -= self.cost_ns;
            true
        } else {
            false
        }
    }

    /// Brings the bucket to `now_ns` without offering anything.
    pub fn refill(&mut self, now_ns: u64) {
        let elapsed = u128::from(now_ns.saturating_sub(self.last_ns));
        self.tokens_ns = (self.tokens_ns + elapsed).min(self.capacity_ns);
        self.last_ns = self.last_ns.max(now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_then_the_rate() {
        let mut bucket = SynBucketModel::new(10, 1_000_000_000, 3, 0);
        assert!((0..3).all(|_| bucket.offer(0)));
        assert!(!bucket.offer(0));
        assert!(!bucket.offer(99_999_999));
        assert!(bucket.offer(100_000_000));
        assert!(!bucket.offer(100_000_000));
    }
}
