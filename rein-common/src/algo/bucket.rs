//! The token bucket as the kernel runs it: a virtual-scheduling form (GCRA) that keeps its whole
//! state in one `u64`, so two CPUs update it with a single compare-and-swap and no lock.
//!
//! Instead of a token count, the bucket stores `tat`, the time at which it would be full again.
//! A bucket with `burst` bytes of room and a cost of `c` ns per byte:
//! - has `burst - (tat - now) / c` tokens when `tat > now`, and is full otherwise;
//! - passes a packet of `n` bytes when it holds `min(n, burst)` tokens, then moves `tat` on by
//!   `n * c`. A packet larger than the whole burst (a 64 KiB GSO packet against a small burst)
//!   passes from a full bucket and leaves it in debt, so the long-run rate stays exact.
//!
//! No multiplication involves elapsed time, so nothing overflows after a long idle period:
//! idling only makes `max(tat, now)` pick `now`.

/// Fixed-point shift of [`Bucket::ns_per_byte`].
pub const COST_SHIFT: u32 = 20;

/// Largest length charged for one packet. A packet cannot be larger (GSO tops out far below),
/// but the clamp keeps `bytes * ns_per_byte` inside `u64` whatever the kernel hands over.
pub const MAX_CHARGED_BYTES: u64 = 1 << 20;

/// Largest cost of one byte, in ns shifted by [`COST_SHIFT`], such that the charge of
/// [`MAX_CHARGED_BYTES`] cannot overflow: the slowest rate a bucket can have.
pub const MAX_NS_PER_BYTE: u64 = u64::MAX / MAX_CHARGED_BYTES;

/// Configuration and state of one token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Cost of one byte in nanoseconds, shifted left by [`COST_SHIFT`]; rounded up so the bucket
    /// never lets more through than its rate.
    pub ns_per_byte: u64,
    /// The burst, as the time the rate needs to send it: how far `tat` may run ahead of now.
    pub burst_ns: u64,
    /// Theoretical arrival time (CLOCK_MONOTONIC ns): when the bucket is full again. Shared by
    /// all CPUs; updated only by compare-and-swap.
    pub tat: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 24);

/// Outcome of offering a packet to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The packet conforms; the bucket's `tat` becomes this value.
    Pass { tat: u64 },
    /// The packet does not conform; the bucket is unchanged.
    Refuse,
}

impl Bucket {
    /// Time, in ns, that `bytes` take at this bucket's rate.
    #[inline(always)]
    pub const fn cost_ns(&self, bytes: u64) -> u64 {
        let bytes = if bytes > MAX_CHARGED_BYTES {
            MAX_CHARGED_BYTES
        } else {
            bytes
        };
        // Userspace never writes a cost above MAX_NS_PER_BYTE; clamp anyway so that a corrupt
        // map value cannot wrap into a tiny cost. (No u128 here: the BPF target has none.)
        let ns_per_byte = if self.ns_per_byte > MAX_NS_PER_BYTE {
            MAX_NS_PER_BYTE
        } else {
            self.ns_per_byte
        };
        (bytes * ns_per_byte) >> COST_SHIFT
    }

    /// Offers a packet costing `cost_ns` to a bucket whose state is `tat`, at time `now`.
    #[inline(always)]
    pub const fn decide(tat: u64, now: u64, cost_ns: u64, burst_ns: u64) -> Verdict {
        let start = if tat > now { tat } else { now };
        // How much of the burst is used up, in ns; more than burst_ns only while in debt.
        let used = start - now;
        let needed = if cost_ns < burst_ns {
            cost_ns
        } else {
            burst_ns
        };
        if used.saturating_add(needed) > burst_ns {
            Verdict::Refuse
        } else {
            Verdict::Pass {
                tat: start.saturating_add(cost_ns),
            }
        }
    }
}
