//! Time behind a seam: the kernel reads CLOCK_MONOTONIC (bpf_ktime_get_ns), userspace reads
//! the same clock through [`MonotonicClock`], and tests drive a fake one (rein-testkit).

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
