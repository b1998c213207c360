//! The few atomic operations the BPF instruction set has, on `u64` fields of map values that
//! other CPUs update at the same time.
//!
//! A [`Word`] holds a raw pointer, never a reference: a `&mut` to memory another CPU writes
//! meanwhile is undefined behaviour in Rust, whatever the hardware does.
//!
//! `core::sync::atomic` is not available for the BPF target (no CAS in its target spec), but
//! LLVM's BPF backend emits BPF_ATOMIC instructions for these intrinsics, and the kernel
//! supports them on map values.
use core::intrinsics::{self, AtomicOrdering::SeqCst};

use rein_common::Counters;

/// A `u64` in a map value, shared by every CPU.
#[derive(Clone, Copy)]
pub struct Word(*mut u64);

impl Word {
    /// # Safety
    /// `field` is an aligned `u64` in a map value (or socket storage) that stays valid for the
    /// program's run, and every CPU writes it through atomics only.
    #[inline(always)]
    pub unsafe fn new(field: *mut u64) -> Self {
        Self(field)
    }

    #[inline(always)]
    pub fn load(self) -> u64 {
        // An aligned 64-bit load is single-copy atomic; BPF has no ordered load to ask for.
        // SAFETY: valid and aligned (`new`).
        unsafe { core::ptr::read_volatile(self.0) }
    }

    /// A plain store: an aligned 64-bit store is single-copy atomic too. For values whose
    /// updates may race (the last store wins).
    #[inline(always)]
    pub fn store(self, value: u64) {
        // SAFETY: valid and aligned (`new`).
        unsafe { core::ptr::write_volatile(self.0, value) };
    }

    /// Replaces `expected` with `new`; on failure returns the value found.
    #[inline(always)]
    pub fn compare_exchange(self, expected: u64, new: u64) -> Result<(), u64> {
        // SAFETY: valid and aligned (`new`).
        let (found, swapped) = unsafe {
            intrinsics::atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(self.0, expected, new)
        };
        if swapped { Ok(()) } else { Err(found) }
    }

    #[inline(always)]
    pub fn add(self, value: u64) {
        // SAFETY: valid and aligned (`new`).
        unsafe { intrinsics::atomic_xadd::<u64, u64, { SeqCst }>(self.0, value) };
    }

    #[inline(always)]
    pub fn sub(self, value: u64) {
        // SAFETY: valid and aligned (`new`).
        unsafe { intrinsics::atomic_xsub::<u64, u64, { SeqCst }>(self.0, value) };
    }
}

/// A [`Counters`] in a map value, updated with atomics only: per-CPU maps too, because a
/// softirq on the same CPU can interrupt a program in process context.
#[derive(Clone, Copy)]
pub struct CountersRef(*mut Counters);

impl CountersRef {
    /// # Safety
    /// As [`Word::new`], for each field of `counters`.
    #[inline(always)]
    pub unsafe fn new(counters: *mut Counters) -> Self {
        Self(counters)
    }

    /// The passed (`passed`) or dropped counts.
    #[inline(always)]
    fn words(self, passed: bool) -> (Word, Word) {
        let counters = self.0;
        // SAFETY: valid and aligned (`new`); the fields are projected, never referenced.
        unsafe {
            if passed {
                (
                    Word::new(&raw mut (*counters).passed_packets),
                    Word::new(&raw mut (*counters).passed_bytes),
                )
            } else {
                (
                    Word::new(&raw mut (*counters).dropped_packets),
                    Word::new(&raw mut (*counters).dropped_bytes),
                )
            }
        }
    }

    #[inline(always)]
    pub fn add(self, passed: bool, packets: u64, bytes: u64) {
        let (packets_word, bytes_word) = self.words(passed);
        packets_word.add(packets);
        bytes_word.add(bytes);
    }

    /// Takes back what [`add`](Self::add) counted.
    #[inline(always)]
    pub fn sub(self, passed: bool, packets: u64, bytes: u64) {
        let (packets_word, bytes_word) = self.words(passed);
        packets_word.sub(packets);
        bytes_word.sub(bytes);
    }
}
