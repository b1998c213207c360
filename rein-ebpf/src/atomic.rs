//! The few atomic operations the BPF instruction set has, on `u64` map fields.
//!
//! `core::sync::atomic` is not available for the BPF target (no CAS in its target spec), but
//! LLVM's BPF backend emits BPF_ATOMIC instructions for these intrinsics, and the kernel
//! supports them on map values.
use core::intrinsics::{self, AtomicOrdering::SeqCst};

#[inline(always)]
pub fn load(field: &u64) -> u64 {
    // An aligned 64-bit load is single-copy atomic; BPF has no ordered load to ask for.
    // SAFETY: `field` is a valid, aligned u64 in a map value.
    unsafe { core::ptr::read_volatile(field) }
}

/// Replaces `expected` with `new`; on failure returns the value found.
#[inline(always)]
pub fn compare_exchange(field: &mut u64, expected: u64, new: u64) -> Result<(), u64> {
    // SAFETY: as in `load`.
    let (found, swapped) =
        unsafe { intrinsics::atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(field, expected, new) };
    if swapped { Ok(()) } else { Err(found) }
}

#[inline(always)]
pub fn add(field: &mut u64, value: u64) {
    // SAFETY: as in `load`.
    unsafe { intrinsics::atomic_xadd::<u64, u64, { SeqCst }>(field, value) };
}

#[inline(always)]
pub fn sub(field: &mut u64, value: u64) {
    // SAFETY: as in `load`.
    unsafe { intrinsics::atomic_xsub::<u64, u64, { SeqCst }>(field, value) };
}
