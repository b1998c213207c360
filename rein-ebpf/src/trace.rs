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
    /// Whether a trace holds a live lease at `now`: the first thing every event checks.
    #[inline(always)]
    pub fn on(&self, now: u64) -> bool {
        self.control
            .get(0)
            .is_some_and(|control| control.until_ns > now)
    }

    /// Sends `event` if this CPU's budget for the current second has room and the ring buffer
    /// takes it; otherwise counts it as skipped. Call only when [`Self::on`].
    #[inline(always)]
    pub fn send(&self, event: &TraceEvent) {
        let cap = self
            .control
            .get(0)
            .map_or(0, |control| control.events_per_second as u64);
        let Some(budget) = self.budget.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's entry of a per-CPU array, valid for the program's run; only
        // programs on this CPU touch it, by plain reads and writes (see `TraceBudget`).
        unsafe {
            if event.time_ns.wrapping_sub((*budget).second_ns) >= SECOND_NS {
                (*budget).second_ns = event.time_ns;
                (*budget).emitted = 0;
            }
            if (*budget).emitted >= cap || self.events.output::<TraceEvent>(event, 0).is_err() {
                (*budget).skipped += 1;
                return;
            }
            (*budget).emitted += 1;
        }
    }
}
