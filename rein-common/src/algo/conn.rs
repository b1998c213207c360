//! New-connection buckets as the kernel runs them: both forms keep their whole state in one
//! `u64`, 0 being a full bucket, so that a connection takes its token with one
//! compare-and-swap and a caller's entry starts full without being written.
//!
//! - The **rate form** (`--rate N/s --burst B`) is the token bucket of [`crate::algo::bucket`]
//!   with a whole connection as its unit: `cost_ns` is the time the rate needs for one
//!   connection and `burst_ns` is `B * cost_ns`.
//! - The **fill form** (`max_tokens`, `tokens_per_fill`, `fill_interval`, as Envoy and KMesh
//!   document it) holds `max_tokens` when it starts and gains `tokens_per_fill` at each
//!   interval boundary (intervals counted from the rule's `anchor_ns`), never more than
//!   `max_tokens`. Its word packs the index of the interval it was last taken in (high 40
//!   bits) and the tokens *used* (low 24): the tokens it holds are `max_tokens - used`, after
//!   the fills since that interval are taken off `used`.
//!
//! A take never checks and then decrements: it decides on the word it loaded and swaps in the
//! result only if the word is still the one it loaded ([`attempt`]).

use crate::{
    abi::conn::{CONN_FORM_FILL, ConnRule},
    algo::{
        bucket::{Bucket, Verdict},
        take::AtomicWord,
    },
};

const USED_BITS: u32 = 24;
const USED_MASK: u64 = (1 << USED_BITS) - 1;
const MAX_INTERVAL: u64 = (1 << (64 - USED_BITS)) - 1;

/// Most tokens a fill-form bucket holds.
pub const MAX_FILL_TOKENS: u32 = (1 << USED_BITS) - 1;

/// Shortest fill interval: with 40 bits of interval index, 1 ms lasts 34 years.
pub const MIN_FILL_NS: u64 = 1_000_000;

/// Compare-and-swaps a take tries before it gives up and refuses. Each lost race is another
/// CPU changing the same bucket in the same instant; a connection is never let through without
/// its token.
pub const CONN_SWAP_ATTEMPTS: u32 = 16;

/// A fill-form bucket's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillBucket {
    pub anchor_ns: u64,
    pub fill_ns: u64,
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
}

impl FillBucket {
    /// The interval `now` falls in (0 before the anchor; the index stops at the last one 40
    /// bits hold, 34 years of 1 ms intervals).
    #[inline(always)]
    pub const fn interval(&self, now: u64) -> u64 {
        if now <= self.anchor_ns || self.fill_ns == 0 {
            return 0;
        }
        let interval = (now - self.anchor_ns) / self.fill_ns;
        if interval > MAX_INTERVAL {
            MAX_INTERVAL
        } else {
            interval
        }
    }

    /// Tokens used of the bucket whose word is `word`, as of interval `interval`.
    #[inline(always)]
    pub const fn used(&self, word: u64, interval: u64) -> u64 {
        let last = word >> USED_BITS;
        let used = word & USED_MASK;
        if interval <= last {
            return used;
        }
        if self.tokens_per_fill == 0 {
            return used;
        }
        // Not `saturating_mul`: its overflow check is a 128-bit multiply, which BPF has no
        // instruction for. `used` is below 2^24, so one fill per interval since `last` is
        // enough to know the bucket is empty of use; below that, the product fits.
        let fills = interval - last;
        if fills >= used {
            return 0;
        }
        used.saturating_sub(fills * self.tokens_per_fill as u64)
    }

    /// Tokens the bucket holds at `now`.
    #[inline(always)]
    pub const fn tokens(&self, word: u64, now: u64) -> u32 {
        let used = self.used(word, self.interval(now));
        let max = self.max_tokens as u64;
        if used >= max { 0 } else { (max - used) as u32 }
    }

    /// Offers one connection at `now`: the word after taking its token, or None.
    #[inline(always)]
    pub const fn decide(&self, word: u64, now: u64) -> Option<u64> {
        let interval = self.interval(now);
        let last = word >> USED_BITS;
        let used = self.used(word, interval);
        if used >= self.max_tokens as u64 {
            return None;
        }
        let interval = if interval > last { interval } else { last };
        Some((interval << USED_BITS) | (used + 1))
    }

    /// The word of a bucket last taken in interval `interval` with `used` tokens used (`used`
    /// at most [`MAX_FILL_TOKENS`]): for userspace carrying a bucket into a changed limit.
    #[inline(always)]
    pub const fn word(interval: u64, used: u64) -> u64 {
        let interval = if interval > MAX_INTERVAL {
            MAX_INTERVAL
        } else {
            interval
        };
        (interval << USED_BITS) | (used & USED_MASK)
    }

    /// The word with one token given back.
    #[inline(always)]
    pub const fn refund(word: u64) -> u64 {
        if word & USED_MASK == 0 {
            word
        } else {
            word - 1
        }
    }
}

/// A connection rule's bucket, either form, as the kernel reads it from a [`ConnRule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnBucket {
    Rate { cost_ns: u64, burst_ns: u64 },
    Fill(FillBucket),
}

impl ConnBucket {
    #[inline(always)]
    pub const fn of(rule: &ConnRule) -> Self {
        if rule.form == CONN_FORM_FILL {
            Self::Fill(FillBucket {
                anchor_ns: rule.anchor_ns,
                fill_ns: rule.fill_ns,
                max_tokens: rule.max_tokens,
                tokens_per_fill: rule.tokens_per_fill,
            })
        } else {
            Self::Rate {
                cost_ns: rule.cost_ns,
                burst_ns: rule.burst_ns,
            }
        }
    }

    /// Offers one connection at `now` to the bucket whose word is `word`: the word after taking
    /// its token, or None.
    #[inline(always)]
    pub const fn decide(&self, word: u64, now: u64) -> Option<u64> {
        match *self {
            Self::Rate { cost_ns, burst_ns } => {
                match Bucket::decide(word, now, cost_ns, burst_ns) {
                    Verdict::Pass { tat } => Some(tat),
                    Verdict::Refuse => None,
                }
            }
            Self::Fill(fill) => fill.decide(word, now),
        }
    }

    /// The word with the token of one connection given back.
    #[inline(always)]
    pub const fn refund(&self, word: u64) -> u64 {
        match *self {
            // Only ever the latest take's cost: `tat` moved on by at least that much.
            Self::Rate { cost_ns, .. } => word.saturating_sub(cost_ns),
            Self::Fill(_) => FillBucket::refund(word),
        }
    }

    /// Whole tokens (connections) the bucket holds at `now`.
    #[inline(always)]
    pub const fn tokens(&self, word: u64, now: u64) -> u64 {
        match *self {
            Self::Rate { cost_ns, burst_ns } => {
                let used = word.saturating_sub(now);
                if cost_ns == 0 || used >= burst_ns {
                    0
                } else {
                    (burst_ns - used) / cost_ns
                }
            }
            Self::Fill(fill) => fill.tokens(word, now) as u64,
        }
    }

    /// Whether the bucket is full at `now`: its word then says nothing a fresh (0) word does
    /// not, and a caller's entry holding it can go.
    #[inline(always)]
    pub const fn is_full(&self, word: u64, now: u64) -> bool {
        match *self {
            Self::Rate { .. } => word <= now,
            Self::Fill(fill) => fill.used(word, fill.interval(now)) == 0,
        }
    }
}

/// What one compare-and-swap on a bucket's word did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The token was taken (or given back).
    Swapped,
    /// The bucket has no token: nothing written.
    Refused,
    /// Another CPU changed the word first: try again, up to [`CONN_SWAP_ATTEMPTS`] times, each
    /// deciding afresh on the word it loads. A connection is refused after the last lost race,
    /// never let through without its token.
    Lost,
}

/// One attempt to take one connection's token (or, with `refund`, to give back the token a
/// take took when a later rule refused the connection). The kernel runs the attempts in a
/// `bpf_loop`, whose callback is verified once rather than once per attempt.
#[inline(always)]
pub fn attempt<W: AtomicWord>(word: &W, bucket: &ConnBucket, now: u64, refund: bool) -> Attempt {
    let current = word.load();
    let next = if refund {
        Some(bucket.refund(current))
    } else {
        bucket.decide(current, now)
    };
    let Some(next) = next else {
        return Attempt::Refused;
    };
    match word.compare_exchange(current, next) {
        Ok(()) => Attempt::Swapped,
        Err(_) => Attempt::Lost,
    }
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use super::*;

    /// The kernel's loop over [`attempt`]: whether the token was taken.
    fn take<W: AtomicWord>(word: &W, bucket: &ConnBucket, now: u64) -> bool {
        (0..CONN_SWAP_ATTEMPTS)
            .map(|_| attempt(word, bucket, now, false))
            .find(|outcome| *outcome != Attempt::Lost)
            == Some(Attempt::Swapped)
    }

    fn refund<W: AtomicWord>(word: &W, bucket: &ConnBucket) {
        let _ = (0..CONN_SWAP_ATTEMPTS).find(|_| attempt(word, bucket, 0, true) != Attempt::Lost);
    }

    struct Plain(Cell<u64>);

    impl AtomicWord for Plain {
        fn load(&self) -> u64 {
            self.0.get()
        }
        fn compare_exchange(&self, expected: u64, new: u64) -> Result<(), u64> {
            if self.0.get() == expected {
                self.0.set(new);
                Ok(())
            } else {
                Err(self.0.get())
            }
        }
        fn add(&self, value: u64) {
            self.0.set(self.0.get() + value);
        }
    }

    /// Another CPU wins every swap, moving the word on each time.
    struct AlwaysRaced(Cell<u64>);

    impl AtomicWord for AlwaysRaced {
        fn load(&self) -> u64 {
            self.0.get()
        }
        fn compare_exchange(&self, _expected: u64, _new: u64) -> Result<(), u64> {
            self.0.set(self.0.get() + 1);
            Err(self.0.get())
        }
        fn add(&self, value: u64) {
            self.0.set(self.0.get() + value);
        }
    }

    const SECOND: u64 = 1_000_000_000;

    fn fill(max: u32, per_fill: u32, fill_ns: u64) -> ConnBucket {
        ConnBucket::Fill(FillBucket {
            anchor_ns: 5 * SECOND,
            fill_ns,
            max_tokens: max,
            tokens_per_fill: per_fill,
        })
    }

    #[test]
    fn the_rate_form_lets_the_burst_through_then_one_per_cost() {
        // 100/s with a burst of 20.
        let bucket = ConnBucket::Rate {
            cost_ns: SECOND / 100,
            burst_ns: 20 * SECOND / 100,
        };
        let word = Plain(Cell::new(0));
        let now = 7 * SECOND;
        let burst = (0..50).filter(|_| take(&word, &bucket, now)).count();
        assert_eq!(burst, 20);
        assert_eq!(bucket.tokens(word.load(), now), 0);
        // Over the next second, one every 10 ms.
        let later = (1..=1000)
            .filter(|ms| take(&word, &bucket, now + ms * 1_000_000))
            .count();
        assert_eq!(later, 100);
    }

    #[test]
    fn the_fill_form_starts_full_and_fills_at_boundaries_only() {
        let bucket = fill(5, 2, SECOND);
        let word = Plain(Cell::new(0));
        let start = 5 * SECOND + SECOND / 2;
        assert_eq!(bucket.tokens(0, start), 5);
        assert_eq!((0..9).filter(|_| take(&word, &bucket, start)).count(), 5);
        // Just before the boundary: nothing yet.
        assert!(!take(&word, &bucket, 6 * SECOND - 1));
        // At it: two tokens.
        assert_eq!(bucket.tokens(word.load(), 6 * SECOND), 2);
        assert_eq!(
            (0..9).filter(|_| take(&word, &bucket, 6 * SECOND)).count(),
            2
        );
        // Long idle: full again, never more than the maximum.
        assert_eq!(bucket.tokens(word.load(), 1000 * SECOND), 5);
        assert!(bucket.is_full(word.load(), 1000 * SECOND));
        assert!(!bucket.is_full(word.load(), 6 * SECOND));
    }

    #[test]
    fn a_refund_gives_back_exactly_one_token() {
        let now = 9 * SECOND;
        for bucket in [
            fill(3, 1, SECOND),
            ConnBucket::Rate {
                cost_ns: 1000,
                burst_ns: 3000,
            },
        ] {
            let word = Plain(Cell::new(0));
            assert!(take(&word, &bucket, now) && take(&word, &bucket, now));
            assert_eq!(bucket.tokens(word.load(), now), 1, "{bucket:?}");
            refund(&word, &bucket);
            assert_eq!(bucket.tokens(word.load(), now), 2, "{bucket:?}");
        }
    }

    #[test]
    fn lost_races_never_let_a_connection_through_without_its_token() {
        let bucket = fill(100, 1, SECOND);
        let word = AlwaysRaced(Cell::new(0));
        assert!(!take(&word, &bucket, 6 * SECOND));
    }

    #[test]
    fn an_empty_bucket_refuses_without_writing() {
        let bucket = fill(1, 1, SECOND);
        let word = Plain(Cell::new(0));
        assert!(take(&word, &bucket, 6 * SECOND));
        let before = word.load();
        assert!(!take(&word, &bucket, 6 * SECOND));
        assert_eq!(word.load(), before);
    }

    #[test]
    fn fills_count_exactly_without_a_wide_multiply() {
        // 10 used, 3 per fill: 1, 2, 3 intervals later 7, 4, 1 used; 4 later none.
        let bucket = FillBucket {
            anchor_ns: 0,
            fill_ns: SECOND,
            max_tokens: 10,
            tokens_per_fill: 3,
        };
        let word = (5 << USED_BITS) | 10;
        let used: [u64; 5] = core::array::from_fn(|i| bucket.used(word, 5 + i as u64));
        assert_eq!(used, [10, 7, 4, 1, 0]);
        // No fill at all.
        let none = FillBucket {
            tokens_per_fill: 0,
            ..bucket
        };
        assert_eq!(none.used(word, 1 << 30), 10);
    }

    #[test]
    fn huge_idle_periods_and_fills_do_not_overflow() {
        let bucket = fill(MAX_FILL_TOKENS, u32::MAX, MIN_FILL_NS);
        let word = Plain(Cell::new(0));
        assert!(take(&word, &bucket, u64::MAX));
        assert_eq!(
            bucket.tokens(word.load(), u64::MAX),
            MAX_FILL_TOKENS as u64 - 1
        );
    }
}
