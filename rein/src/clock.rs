//! Time behind a seam: the kernel reads CLOCK_MONOTONIC (bpf_ktime_get_ns), userspace reads
//! the same clock through [`MonotonicClock`], and tests drive a [`FakeClock`].
use std::cell::Cell;

pub trait Clock {
    /// Nanoseconds on CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
    fn now_ns(&self) -> u64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct FakeClock(Cell<u64>);

impl FakeClock {
    pub fn new(start_ns: u64) -> Self {
        Self(Cell::new(start_ns))
    }

    pub fn advance(&self, ns: u64) {
        self.0.set(self.0.get() + ns);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.get()
    }
}
