//! The interface programs' trace events (`rein trace`): packets a rule refused. Built in one
//! function, not in line, called only after the trace's lease is checked in line: without a
//! trace a refusal costs one array lookup.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use rein_common::abi::trace::{
    EVENT_NET_REFUSED, TRACE_RING_BYTES, TraceBudget, TraceControl, TraceEvent,
};
use rein_ebpf::{parse::frame::Packet, trace::TraceMaps};

#[map(name = "REIN_NET_TRACE")]
static REIN_NET_TRACE: Array<TraceControl> = Array::with_max_entries(1, 0);

#[map(name = "REIN_NET_TRACE_BUDGET")]
static REIN_NET_TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REIN_NET_TRACE_EVENTS")]
static REIN_NET_TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

const MAPS: TraceMaps<'static> = TraceMaps {
    control: &REIN_NET_TRACE,
    budget: &REIN_NET_TRACE_BUDGET,
    events: &REIN_NET_TRACE_EVENTS,
};

/// `packet`, of `bytes` IP bytes, refused by rule `rule` at `hook` (a `Direction` or
/// `TRACE_HOOK_XDP`), at `now`.
#[inline(always)]
pub fn refusal(packet: &Packet, rule: u32, hook: u8, bytes: u64, now: u64) {
    if MAPS.on(now) {
        send_refusal(packet, rule, hook, bytes, now);
    }
}

#[inline(never)]
fn send_refusal(packet: &Packet, rule: u32, hook: u8, bytes: u64, now: u64) {
    if !MAPS.admit(now) {
        return;
    }
    let mut event = TraceEvent::EMPTY;
    event.time_ns = now;
    event.kind = EVENT_NET_REFUSED;
    event.rule = rule;
    event.hook = hook;
    event.value = bytes;
    event.family = packet.family;
    event.protocol = packet.protocol;
    event.source = packet.source;
    event.destination = packet.destination;
    event.source_port = packet.source_port;
    event.destination_port = packet.port;
    MAPS.send(&event);
}
