//! The connect programs' trace events (`rein trace`): connects a rule refused, with who called
//! and where to. Built in one function, not in line, called only after the trace's lease is
//! checked in line: without a trace a refusal costs one array lookup.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use rein_common::abi::trace::{
    CONN_REFUSED_CALLERS_FULL, CONN_REFUSED_NO_TOKEN, EVENT_CONN_REFUSED, TRACE_RING_BYTES,
    TraceBudget, TraceControl, TraceEvent,
};
use rein_ebpf::trace::TraceMaps;

use crate::connect::Destination;

#[map(name = "REIN_CONN_TRACE")]
static REIN_CONN_TRACE: Array<TraceControl> = Array::with_max_entries(1, 0);

#[map(name = "REIN_CONN_TRACE_BUDGET")]
static REIN_CONN_TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REIN_CONN_TRACE_EVENTS")]
static REIN_CONN_TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

const MAPS: TraceMaps<'static> = TraceMaps {
    control: &REIN_CONN_TRACE,
    budget: &REIN_CONN_TRACE_BUDGET,
    events: &REIN_CONN_TRACE_EVENTS,
};

/// A connect to `destination` from network namespace `netns`, refused by rule `rule` (for want
/// of a callers' entry when `table_full`), at `now`.
#[inline(always)]
pub fn refusal(destination: &Destination, rule: u32, netns: u64, table_full: bool, now: u64) {
    if MAPS.on(now) {
        send_refusal(destination, rule, netns, table_full, now);
    }
}

#[inline(never)]
fn send_refusal(destination: &Destination, rule: u32, netns: u64, table_full: bool, now: u64) {
    if !MAPS.admit(now) {
        return;
    }
    let mut event = TraceEvent::EMPTY;
    event.time_ns = now;
    event.kind = EVENT_CONN_REFUSED;
    event.rule = rule;
    event.reason = if table_full {
        CONN_REFUSED_CALLERS_FULL
    } else {
        CONN_REFUSED_NO_TOKEN
    };
    event.family = destination.family;
    event.protocol = destination.protocol;
    event.destination = destination.addr;
    event.destination_port = destination.port;
    event.netns = netns;
    let pid_tgid = bpf_get_current_pid_tgid();
    event.pid = pid_tgid as u32;
    event.tgid = (pid_tgid >> 32) as u32;
    // A thread whose name cannot be read is still reported, nameless.
    if let Ok(comm) = bpf_get_current_comm() {
        event.comm = comm;
    }
    MAPS.send(&event);
}
