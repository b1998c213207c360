//! Reference models of the fixed and the sliding window: exact counts, a 64-bit window index
//! that never wraps, and the sliding weight as an exact fraction.

/// Up to `capacity` per window of `window_ns`, windows aligned to the clock's zero.
#[derive(Debug, Clone)]
pub struct FixedWindowModel {
    window_ns: u64,
    capacity: u64,
    index: u64,
    count: u64,
}

impl FixedWindowModel {
    pub fn new(window_ns: u64, capacity: u64) -> Self {
        Self {
            window_ns,
            capacity,
            index: 0,
            count: 0,
        }
    }

    /// Offers `cost` at `now`; true when it fits in the current window.
    pub fn offer(&mut self, cost: u64, now: u64) -> bool {
        let index = now / self.window_ns;
        if index != self.index {
            self.index = index;
            self.count = 0;
        }
        if self.count + cost > self.capacity {
            return false;
        }
        self.count += cost;
        true
    }
}

/// The sliding window of the classic rate-limiter write-ups: the previous window's count,
/// weighted by the part of it the sliding window still overlaps, plus the current window's.
#[derive(Debug, Clone)]
pub struct SlidingWindowModel {
    window_ns: u64,
    capacity: u64,
    index: u64,
    previous: u64,
    current: u64,
}

impl SlidingWindowModel {
    pub fn new(window_ns: u64, capacity: u64) -> Self {
        Self {
            window_ns,
            capacity,
            index: 0,
            previous: 0,
            current: 0,
        }
    }

    /// Offers `cost` at `now`; true when `previous * (window - elapsed) / window + current +
    /// cost <= capacity`.
    pub fn offer(&mut self, cost: u64, now: u64) -> bool {
        let index = now / self.window_ns;
        if index == self.index + 1 {
            self.previous = self.current;
            self.current = 0;
        } else if index != self.index {
            self.previous = 0;
            self.current = 0;
        }
        self.index = index;
        let w = u128::from(self.window_ns);
        let left = w - u128::from(now % self.window_ns);
        // Compared multiplied through by the window: exact.
        let held = u128::from(self.previous) * left + u128::from(self.current + cost) * w;
        if held > u128::from(self.capacity) * w {
            return false;
        }
        self.current += cost;
        true
    }
}

#[cfg(test)]
mod tests {
    use rein_common::window::{WindowKind, WindowState, WindowVerdict};

    use super::*;
    use crate::model::Xorshift;

    /// The kernel's arithmetic, driven from userspace: what the program does to its state.
    struct KernelWindow {
        kind: WindowKind,
        window_ns: u64,
        capacity: u32,
        state: WindowState,
        last_pass_ns: u64,
    }

    impl KernelWindow {
        fn offer(&mut self, cost: u32, now: u64) -> bool {
            let verdict = self.state.decide(
                self.kind,
                now,
                self.last_pass_ns,
                self.window_ns,
                self.capacity,
                cost,
            );
            match verdict {
                WindowVerdict::Pass { state } => {
                    self.state = state;
                    self.last_pass_ns = now;
                    true
                }
                WindowVerdict::Refuse => false,
            }
        }
    }

    /// Random traffic offered at about `load` times the capacity, with idle gaps of up to 3
    /// windows now and then; returns (kernel passes, disagreements).
    fn replay(kind: WindowKind, window_ns: u64, capacity: u32, seed: u64) -> (u64, u64) {
        let mut kernel = KernelWindow {
            kind,
            window_ns,
            capacity,
            state: WindowState::default(),
            last_pass_ns: 0,
        };
        let mut fixed = FixedWindowModel::new(window_ns, capacity.into());
        let mut sliding = SlidingWindowModel::new(window_ns, capacity.into());
        let mut random = Xorshift(seed);
        let mut now = 1_000 * window_ns;
        let (mut kernel_passes, mut disagreements) = (0, 0);
        for _ in 0..200_000 {
            let cost = 1 + random.next_u64() % u64::from(capacity / 8).max(1);
            // Mostly about 2x the capacity per window; sometimes a long gap.
            now += if random.next_u64().is_multiple_of(500) {
                random.next_u64() % (3 * window_ns)
            } else {
                random.next_u64() % (window_ns * cost / u64::from(capacity)).max(1)
            };
            let by_kernel = kernel.offer(cost as u32, now);
            let by_model = match kind {
                WindowKind::Fixed => fixed.offer(cost, now),
                WindowKind::Sliding => sliding.offer(cost, now),
            };
            if by_kernel != by_model {
                disagreements += 1;
                // The kernel may only be the stricter one.
                assert!(
                    by_model,
                    "the kernel passed what the model refused at {now}"
                );
                // Keep the two in step: the model takes back what the kernel refused.
                match kind {
                    WindowKind::Fixed => fixed.count -= cost,
                    WindowKind::Sliding => sliding.current -= cost,
                }
            }
            kernel_passes += u64::from(by_kernel);
        }
        (kernel_passes, disagreements)
    }

    #[test]
    fn the_kernel_fixed_window_matches_the_model_on_every_packet() {
        for (window_ns, capacity) in [(1_000_000_000, 1_000_000), (1_000_000, 100), (7_777, 3)] {
            let (passes, disagreements) = replay(WindowKind::Fixed, window_ns, capacity, 0x5eed);
            assert_eq!(
                disagreements, 0,
                "window {window_ns} ns, capacity {capacity}"
            );
            assert!((10_000..190_000).contains(&passes), "{passes} passed");
        }
    }

    #[test]
    fn the_kernel_sliding_window_is_never_looser_and_rarely_stricter() {
        for (window_ns, capacity) in [(1_000_000_000, 1_000_000), (1_000_000, 100), (7_777, 3)] {
            let (passes, disagreements) = replay(WindowKind::Sliding, window_ns, capacity, 0xfeed);
            assert!((10_000..190_000).contains(&passes), "{passes} passed");
            // The weight is rounded up to 1/65,536 of a window.
            assert!(
                disagreements * 1000 <= passes,
                "window {window_ns} ns, capacity {capacity}: {disagreements} disagreements"
            );
        }
    }

    #[test]
    fn the_sliding_window_smooths_the_edge_the_fixed_one_lets_through() {
        // A full window's worth just before an edge and again just after it: the fixed window
        // passes both (twice the capacity within a few ns), the sliding one only the first.
        let w = 1_000_000_000;
        let mut fixed = FixedWindowModel::new(w, 100);
        let mut sliding = SlidingWindowModel::new(w, 100);
        assert!(fixed.offer(100, 10 * w - 10) && sliding.offer(100, 10 * w - 10));
        assert!(fixed.offer(100, 10 * w + 10));
        assert!(!sliding.offer(100, 10 * w + 10));
        // Half a window on, half of the previous window still counts.
        assert!(sliding.offer(49, 10 * w + w / 2));
        assert!(!sliding.offer(2, 10 * w + w / 2));
    }
}
