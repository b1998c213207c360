//! The cgroup programs' trace events (`rein trace`): refusals by a limit, and the pacing rates
//! and window clamps the sock_ops program sets. Each is emitted from one function, not in line,
//! so the verifier checks its body once per call site rather than along every path of the walk;
//! and each is called only after the trace's lease is checked in line, so that without a trace
//! an event costs one array lookup.

use core::ptr;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_ops},
    helpers::generated::bpf_sk_storage_get,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use rein_common::{
    KEPT_CGROUPS, SocketRuleLevels,
    abi::trace::{
        EVENT_CGROUP_REFUSED, TRACE_FAMILY_IPV4, TRACE_FAMILY_IPV6, TRACE_RING_BYTES, TraceBudget,
        TraceControl, TraceEvent,
    },
};
use rein_ebpf::{parse::skb, trace::TraceMaps};

use crate::limit::REIN_RULE_LEVELS;

#[map(name = "REIN_TRACE")]
static REIN_TRACE: Array<TraceControl> = Array::with_max_entries(1, 0);

#[map(name = "REIN_TRACE_BUDGET")]
static REIN_TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REIN_TRACE_EVENTS")]
static REIN_TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

const MAPS: TraceMaps<'static> = TraceMaps {
    control: &REIN_TRACE,
    budget: &REIN_TRACE_BUDGET,
    events: &REIN_TRACE_EVENTS,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// A packet refused by the limit of `cgroup_id`, of `bytes` IP bytes, at `now`.
#[inline(always)]
pub(crate) fn refusal(skb: *mut __sk_buff, cgroup_id: u64, direction: u32, bytes: u64, now: u64) {
    if MAPS.on(now) {
        send_refusal(skb, cgroup_id, direction, bytes, now);
    }
}

#[inline(never)]
fn send_refusal(skb: *mut __sk_buff, cgroup_id: u64, direction: u32, bytes: u64, now: u64) {
    if !MAPS.admit(now) {
        return;
    }
    let mut event = TraceEvent::EMPTY;
    event.time_ns = now;
    event.kind = EVENT_CGROUP_REFUSED;
    event.cgroup_id = cgroup_id;
    event.hook = direction as u8;
    event.value = bytes;
    skb::fill_tuple(&SkBuffContext::new(skb), &mut event);
    MAPS.send(&event);
}

/// The sock_ops program set `value` (an `EVENT_PACING` rate or `EVENT_WINDOW` clamp) on the
/// flow of `ops`, under the rules of `direction`, at `now`.
#[inline(always)]
pub(crate) fn flow_change(ops: *mut bpf_sock_ops, kind: u32, direction: u32, value: u64, now: u64) {
    if MAPS.on(now) {
        send_flow_change(ops, kind, direction, value, now);
    }
}

#[inline(never)]
fn send_flow_change(ops: *mut bpf_sock_ops, kind: u32, direction: u32, value: u64, now: u64) {
    if !MAPS.admit(now) {
        return;
    }
    let mut event = TraceEvent::EMPTY;
    event.time_ns = now;
    event.kind = kind as u8;
    event.hook = direction as u8;
    event.value = value;
    // SAFETY: the program's own context; the kernel checks the socket pointer it gives.
    unsafe {
        let family = (*ops).family;
        if family == AF_INET {
            event.family = TRACE_FAMILY_IPV4;
            event.source[..4].copy_from_slice(&(*ops).local_ip4.to_ne_bytes());
            event.destination[..4].copy_from_slice(&(*ops).remote_ip4.to_ne_bytes());
        } else if family == AF_INET6 {
            event.family = TRACE_FAMILY_IPV6;
            // Word by word: the context allows only 4-byte reads of the addresses.
            let mut word = 0;
            while word < 4 {
                let at = word * 4;
                let (local, remote) = (
                    ptr::read_volatile(&raw const (*ops).local_ip6[word]),
                    ptr::read_volatile(&raw const (*ops).remote_ip6[word]),
                );
                event.source[at..at + 4].copy_from_slice(&local.to_ne_bytes());
                event.destination[at..at + 4].copy_from_slice(&remote.to_ne_bytes());
                word += 1;
            }
        }
        event.protocol = 6;
        // The local port in host order; the remote one in network order, in the upper half on
        // a little-endian machine (the kernel shifts it there).
        event.source_port = (*ops).local_port as u16;
        event.destination_port = u16::from_be(((*ops).remote_port >> 16) as u16);
        // The deepest of the first rules over the socket, as the cgroup programs kept them.
        let socket = (*ops).__bindgen_anon_2.sk;
        if !socket.is_null() {
            let storage: *const SocketRuleLevels = bpf_sk_storage_get(
                ptr::from_ref(&REIN_RULE_LEVELS).cast_mut().cast(),
                socket.cast(),
                ptr::null_mut(),
                0,
            )
            .cast();
            if !storage.is_null() {
                let cgroups = (*storage).by_direction[(direction & 1) as usize].cgroups;
                let mut kept = 0;
                while kept < KEPT_CGROUPS {
                    if cgroups[kept] != 0 {
                        event.cgroup_id = cgroups[kept];
                    }
                    kept += 1;
                }
            }
        }
    }
    MAPS.send(&event);
}
