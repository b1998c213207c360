//! Emitting trace events (`rein trace`): the gate every event passes first, so that without a
//! trace a refusal costs one array lookup, and the per-CPU budget that caps what a trace adds to
//! the datapath under a flood. The maps live in each binary and are passed in.

use aya_ebpf::maps::{Array, PerCpuArray, RingBuf};
use rein_common::abi::trace::{TraceBudget, TraceControl, TraceEvent};

/// One object's trace maps.
pub struct TraceMaps<'a> {
    pub control: &'a Array<TraceControl>,
    pub budget: &'a PerCpuArray<TraceBudget>,
    pub events: &'a RingBuf,
}

const SECOND_NS: u64 = 1_000_000_000;

impl TraceMaps<'_> {
    /// Whether a trace holds a live lease at `now`: the first and, without a trace, only check,
    /// made in line by the caller before it calls the function that builds the event.
    #[inline(always)]
    pub fn on(&self, now: u64) -> bool {
        self.control
            .get(0)
            .is_some_and(|control| control.until_ns > now)
    }

    /// Whether to build an event at `now` under a live lease: this CPU's budget for the current
    /// second has room, which this takes. Over the budget, the event is counted as skipped
    /// before anything is built, so a flood costs a trace two lookups a packet.
    #[inline(always)]
    pub fn admit(&self, now: u64) -> bool {
        let Some(control) = self.control.get(0) else {
            return false;
        };
        let cap = control.events_per_second as u64;
        let Some(budget) = self.budget.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: this CPU's entry of a per-CPU array, valid for the program's run; only
        // programs on this CPU touch it, by plain reads and writes (see `TraceBudget`).
        unsafe {
            if now.wrapping_sub((*budget).second_ns) >= SECOND_NS {
                (*budget).second_ns = now;
                (*budget).emitted = 0;
            }
            if (*budget).emitted >= cap {
                (*budget).skipped += 1;
                return false;
            }
            (*budget).emitted += 1;
        }
        true
    }

    /// Sends an event [`Self::admit`] let through; counts it as skipped if the ring buffer is
    /// full (the trace is not reading fast enough).
    #[inline(always)]
    pub fn send(&self, event: &TraceEvent) {
        if self.events.output::<TraceEvent>(event, 0).is_ok() {
            return;
        }
        if let Some(budget) = self.budget.get_ptr_mut(0) {
            // SAFETY: as in `admit`.
            unsafe { (*budget).skipped += 1 };
        }
    }
}
