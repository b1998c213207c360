//! Fixed and sliding windows as the kernel runs them, with their whole changing state in one
//! `u64` so that CPUs update it with a single compare-and-swap, as the token bucket does.
//!
//! - A **fixed window** passes up to `capacity` in each window of `window_ns` (aligned to the
//!   monotonic clock), and forgets everything when the next window starts.
//! - A **sliding window** also weighs the previous window by how much of it the sliding window
//!   still overlaps: a packet passes when `previous * (window - elapsed) / window + current`
//!   plus the packet stays within `capacity` (`elapsed` is the time into the current window).
//!
//! Counts are kept in *units* (a byte, a packet, or for large byte capacities a few bytes, see
//! [`unit_for`]) so that a window's count fits 24 bits. The state packs the window's index (low
//! 16 bits, compared for equality only), the previous window's count (next 24) and the current
//! window's count (top 24). A 16-bit index comes round again after 65,536 windows, so a rule
//! idle for exactly that long would read stale counts; the caller also keeps the time of the
//! last pass (written without an atomic: it only has to tell a long idle period apart) and any
//! state older than two windows counts as empty.
//!
//! The sliding weight is rounded up, to 1/65,536 of a window: the kernel never passes what the
//! exact computation refuses, and refuses in addition only within that sliver.

/// Largest count a window holds, in units: `capacity` is at most this.
pub const MAX_WINDOW_UNITS: u32 = 1 << 22;

/// The largest cost of one packet, in units; a packet costing more than `capacity` never passes.
const MAX_COST_UNITS: u32 = 1 << 23;

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Fixed-point scale of the sliding weight.
const WEIGHT_ONE: u64 = 1 << 16;

/// Bytes per unit for a byte capacity of `capacity` bytes: 1 up to [`MAX_WINDOW_UNITS`] bytes,
/// then just enough that the capacity fits (a 1 GiB window counts in 256-byte units).
pub const fn unit_for(capacity: u64) -> u32 {
    if capacity <= MAX_WINDOW_UNITS as u64 {
        1
    } else {
        capacity.div_ceil(MAX_WINDOW_UNITS as u64) as u32
    }
}

/// The cost in units of `amount` bytes (or packets) at `unit` per unit, rounded up.
#[inline(always)]
pub const fn cost_units(amount: u64, unit: u32) -> u32 {
    let unit = if unit == 0 { 1 } else { unit as u64 };
    let units = amount.div_ceil(unit);
    if units > MAX_COST_UNITS as u64 {
        MAX_COST_UNITS
    } else {
        units as u32
    }
}

/// Which window algorithm a [`WindowState`] follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    Fixed,
    Sliding,
}

/// The packed counts of a window limit (see the module docs).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowState(pub u64);

/// Outcome of offering a packet to a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowVerdict {
    /// The packet fits; the state becomes this value.
    Pass { state: WindowState },
    /// The packet does not fit; the state is unchanged.
    Refuse,
}

impl WindowState {
    #[inline(always)]
    const fn pack(index: u16, previous: u32, current: u32) -> Self {
        Self(
            index as u64
                | ((previous as u64 & COUNT_MASK) << 16)
                | ((current as u64 & COUNT_MASK) << (16 + COUNT_BITS)),
        )
    }

    #[inline(always)]
    const fn index(self) -> u16 {
        self.0 as u16
    }

    #[inline(always)]
    const fn previous(self) -> u32 {
        ((self.0 >> 16) & COUNT_MASK) as u32
    }

    #[inline(always)]
    const fn current(self) -> u32 {
        ((self.0 >> (16 + COUNT_BITS)) & COUNT_MASK) as u32
    }

    /// (previous, current) counts as seen from window `index`; `stale` when the last pass was
    /// two windows ago or more.
    #[inline(always)]
    const fn view(self, index: u16, stale: bool) -> (u32, u32) {
        if stale {
            (0, 0)
        } else if self.index() == index {
            (self.previous(), self.current())
        } else if self.index().wrapping_add(1) == index {
            (self.current(), 0)
        } else {
            (0, 0)
        }
    }

    /// Whether the state is older than two windows: the last pass was that long ago, and the
    /// state is still the one that pass wrote (its index is the last pass's window). Another
    /// CPU may have written a fresh state before it wrote the time of its pass; that state is
    /// then not taken for stale.
    #[inline(always)]
    const fn is_stale(self, now: u64, last_pass_ns: u64, window_ns: u64) -> bool {
        now.saturating_sub(last_pass_ns) >= 2 * window_ns
            && self.index() == (last_pass_ns / window_ns) as u16
    }

    /// The count the limit holds against at `now`, in units: the current window's, plus for a
    /// sliding window the previous one's weighted by the overlap (rounded up).
    #[inline(always)]
    pub const fn count(self, kind: WindowKind, now: u64, last_pass_ns: u64, window_ns: u64) -> u32 {
        let window_ns = if window_ns == 0 { 1 } else { window_ns };
        let stale = self.is_stale(now, last_pass_ns, window_ns);
        let (previous, current) = self.view((now / window_ns) as u16, stale);
        match kind {
            WindowKind::Fixed => current,
            WindowKind::Sliding => {
                let left = window_ns - now % window_ns;
                // window_ns < 2^47 (checked where rules are made), so the shift cannot overflow.
                let weight = (left * WEIGHT_ONE).div_ceil(window_ns);
                let weighted = (previous as u64 * weight).div_ceil(WEIGHT_ONE);
                current + weighted as u32
            }
        }
    }

    /// Offers a packet costing `cost` units at `now` to a window limit of `capacity` units per
    /// `window_ns`.
    #[inline(always)]
    pub const fn decide(
        self,
        kind: WindowKind,
        now: u64,
        last_pass_ns: u64,
        window_ns: u64,
        capacity: u32,
        cost: u32,
    ) -> WindowVerdict {
        let window_ns = if window_ns == 0 { 1 } else { window_ns };
        let count = self.count(kind, now, last_pass_ns, window_ns);
        if count as u64 + cost as u64 > capacity as u64 {
            return WindowVerdict::Refuse;
        }
        let index = (now / window_ns) as u16;
        let stale = self.is_stale(now, last_pass_ns, window_ns);
        let (previous, current) = self.view(index, stale);
        WindowVerdict::Pass {
            state: Self::pack(index, previous, current + cost),
        }
    }
}

impl WindowState {
    /// A count-min sketch cell raised so that it counts at least `target` at `now` (conservative
    /// update: a cell above the estimate already over-counts and is left alone). Cells never go
    /// stale by time: the index tells windows apart.
    #[inline(always)]
    pub const fn raise_to(self, kind: WindowKind, now: u64, window_ns: u64, target: u32) -> Self {
        let window_ns = if window_ns == 0 { 1 } else { window_ns };
        let index = (now / window_ns) as u16;
        let (previous, current) = self.view(index, false);
        let count = self.count(kind, now, now, window_ns);
        let current = if count < target {
            current + (target - count)
        } else {
            current
        };
        let current = if current as u64 > COUNT_MASK {
            COUNT_MASK as u32
        } else {
            current
        };
        Self::pack(index, previous, current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000_000_000;

    fn pass(state: WindowState, kind: WindowKind, now: u64, last: u64, cost: u32) -> WindowState {
        match state.decide(kind, now, last, W, 100, cost) {
            WindowVerdict::Pass { state } => state,
            WindowVerdict::Refuse => panic!("refused at {now}"),
        }
    }

    #[test]
    fn a_fixed_window_forgets_at_its_edge() {
        let kind = WindowKind::Fixed;
        let s = pass(WindowState::default(), kind, 5 * W, 0, 60);
        let s = pass(s, kind, 5 * W + 1, 5 * W, 40);
        assert_eq!(
            s.decide(kind, 6 * W - 1, 5 * W, W, 100, 1),
            WindowVerdict::Refuse
        );
        let s = pass(s, kind, 6 * W, 5 * W, 100);
        assert_eq!(s.count(kind, 6 * W + 5, 6 * W, W), 100);
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window_by_its_overlap() {
        let kind = WindowKind::Sliding;
        let s = pass(WindowState::default(), kind, 5 * W, 0, 80);
        // A quarter into the next window, 3/4 of the 80 still count: 60.
        assert_eq!(s.count(kind, 6 * W + W / 4, 5 * W, W), 60);
        let s = pass(s, kind, 6 * W + W / 4, 5 * W, 40);
        assert_eq!(
            s.decide(kind, 6 * W + W / 4, 6 * W, W, 100, 1),
            WindowVerdict::Refuse
        );
        // Half-way, 40 + 40 = 80: room for 20.
        assert_eq!(s.count(kind, 6 * W + W / 2, 6 * W, W), 80);
    }

    #[test]
    fn a_long_idle_period_empties_the_window_whatever_the_index() {
        let kind = WindowKind::Sliding;
        let s = pass(WindowState::default(), kind, 5 * W, 0, 100);
        // 65,536 windows later the 16-bit index is the same again.
        let later = 5 * W + 65_536 * W;
        assert_eq!(s.count(kind, later, 5 * W, W), 0);
        assert_eq!(s.count(kind, 5 * W + 2, 5 * W, W), 100);
    }

    #[test]
    fn a_fresh_state_is_not_taken_for_stale_before_its_pass_time_is_written() {
        let kind = WindowKind::Fixed;
        // The last pass, long ago, in window 5; another CPU has just written window 9's state
        // but not yet the time of its pass.
        let fresh = pass(WindowState::default(), kind, 9 * W, 5 * W, 70);
        assert_eq!(fresh.count(kind, 9 * W + 1, 5 * W, W), 70);
        // The state the old pass wrote is stale.
        let old = pass(WindowState::default(), kind, 5 * W, 0, 70);
        assert_eq!(old.count(kind, 9 * W, 5 * W, W), 0);
    }

    #[test]
    fn raising_a_cell_lifts_its_count_to_the_target_only() {
        let kind = WindowKind::Sliding;
        let s = pass(WindowState::default(), kind, 5 * W, 0, 80);
        let now = 6 * W + W / 4;
        // 60 of the previous window still count; raising to 70 adds 10 to the current one.
        let raised = s.raise_to(kind, now, W, 70);
        assert_eq!(raised.count(kind, now, now, W), 70);
        assert_eq!(raised.raise_to(kind, now, W, 50), raised);
    }

    #[test]
    fn units_keep_large_capacities_within_24_bits() {
        assert_eq!(unit_for(1_000_000), 1);
        assert_eq!(unit_for(1 << 30), 256);
        assert_eq!(cost_units(1500, 256), 6);
        assert_eq!(cost_units(1 << 40, 1), MAX_COST_UNITS);
        assert_eq!(cost_units(7, 0), 7);
    }
}
