//! Taking from a token bucket that every CPU shares: the bucket's decision ([`Bucket::decide`])
//! on its one-word state, then a compare-and-swap of that word.
//!
//! Generic over the word, so that userspace tests can drive it with a word that loses races on
//! purpose; the kernel's word is a map field updated with BPF atomics.

use crate::algo::bucket::{Bucket, Verdict};

/// A `u64` that several CPUs update at once.
pub trait AtomicWord {
    fn load(&self) -> u64;
    /// Replaces `expected` with `new`; on failure returns the value found.
    fn compare_exchange(&self, expected: u64, new: u64) -> Result<(), u64>;
    /// Adds `value`, whatever the word holds.
    fn add(&self, value: u64);
}

/// Compare-and-swaps `take` tries before it stops racing and adds. Few: a lost race costs
/// nothing now, and the kernel's verifier walks every attempt of every level of the cgroup
/// walk as a path of its own (8 attempts took the cgroup programs over its limit).
pub const SWAP_ATTEMPTS: u32 = 2;

/// Takes `cost_ns` from the bucket whose state (`tat`) is `tat`, at `now`, allowing it
/// `room_ns` of debt; false when it has no room.
///
/// Another CPU may move the bucket between the load and the swap: the swap then fails and the
/// decision is made again on the value found. A bucket's room is not a reason to refuse, so
/// after [`SWAP_ATTEMPTS`] lost races a packet that the last value seen has room for is charged
/// by an atomic addition instead and passes.
#[inline(always)]
pub fn take<W: AtomicWord>(tat: &W, now: u64, cost_ns: u64, room_ns: u64) -> bool {
    let mut current = tat.load();
    let mut attempt = 0;
    while attempt < SWAP_ATTEMPTS {
        match Bucket::decide(current, now, cost_ns, room_ns) {
            Verdict::Refuse => return false,
            Verdict::Pass { tat: next } => match tat.compare_exchange(current, next) {
                Ok(()) => return true,
                Err(found) => current = found,
            },
        }
        attempt += 1;
    }
    // Lost every race. The CPUs that won charged the bucket, so the value last seen is as
    // fresh as any: if it has room, the packet is charged by addition, which cannot lose. It
    // over-admits by at most the packets racing at the same time; and if the value was still
    // below `now` (a full bucket), the addition only leaves the bucket fuller than it should.
    match Bucket::decide(current, now, cost_ns, room_ns) {
        Verdict::Refuse => false,
        Verdict::Pass { .. } => {
            tat.add(cost_ns);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use super::*;

    /// A word that another CPU moves `races` times before each swap could land: each failed
    /// swap finds the value moved on by `step`.
    struct ContendedWord {
        value: Cell<u64>,
        races: Cell<u32>,
        step: u64,
    }

    impl ContendedWord {
        fn new(value: u64, races: u32, step: u64) -> Self {
            Self {
                value: Cell::new(value),
                races: Cell::new(races),
                step,
            }
        }
    }

    impl AtomicWord for ContendedWord {
        fn load(&self) -> u64 {
            self.value.get()
        }

        fn compare_exchange(&self, expected: u64, new: u64) -> Result<(), u64> {
            if self.races.get() > 0 {
                self.races.set(self.races.get() - 1);
                self.value.set(self.value.get() + self.step);
                return Err(self.value.get());
            }
            if self.value.get() != expected {
                return Err(self.value.get());
            }
            self.value.set(new);
            Ok(())
        }

        fn add(&self, value: u64) {
            self.value.set(self.value.get() + value);
        }
    }

    const NOW: u64 = 1_000_000_000;
    const ROOM: u64 = 1_000_000;

    #[test]
    fn an_uncontended_take_charges_the_cost() {
        let word = ContendedWord::new(NOW, 0, 0);
        assert!(take(&word, NOW, 1000, ROOM));
        assert_eq!(word.load(), NOW + 1000);
    }

    #[test]
    fn a_full_bucket_refuses_without_a_swap() {
        let word = ContendedWord::new(NOW + ROOM, 0, 0);
        assert!(!take(&word, NOW, 1000, ROOM));
        assert_eq!(word.load(), NOW + ROOM);
    }

    #[test]
    fn a_few_lost_races_still_swap() {
        let races = SWAP_ATTEMPTS - 1;
        let word = ContendedWord::new(NOW, races, 100);
        assert!(take(&word, NOW, 1000, ROOM));
        assert_eq!(word.load(), NOW + 100 * u64::from(races) + 1000);
    }

    /// Fault 7: a bucket with room refused a packet because other CPUs kept winning the swap.
    #[test]
    fn contention_alone_never_refuses_a_bucket_with_room() {
        for races in [SWAP_ATTEMPTS, SWAP_ATTEMPTS + 1, 100, u32::MAX] {
            let word = ContendedWord::new(NOW, races, 10);
            let before_ours = NOW + 10 * u64::from(races.min(SWAP_ATTEMPTS));
            assert!(take(&word, NOW, 1000, ROOM), "{races} lost races");
            // Charged exactly once, on top of what the other CPUs charged.
            assert_eq!(word.load(), before_ours + 1000, "{races} lost races");
        }
    }

    /// The races end with the bucket full: the packet is refused, not charged.
    #[test]
    fn contention_that_fills_the_bucket_refuses() {
        let word = ContendedWord::new(NOW, u32::MAX, ROOM);
        assert!(!take(&word, NOW, 1000, ROOM));
        assert_eq!(word.load(), NOW + ROOM);
    }
}
