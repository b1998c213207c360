//! The cgroup programs' trace events (`rein trace`): refusals by a limit, and the pacing rates
//! and window clamps the sock_ops program sets. Each is emitted from one function, not in line,
//! so the verifier checks its body once per call site rather than along every path of the walk;
//! and each is called only after the trace's lease is checked in line, so that without a trace
//! an event costs one array lookup.
//!
//! Queue overflows are seen by a program of their own, on the `kfree_skb` tracepoint, which only
//! a running trace attaches: without a trace it is not in the kernel at all.

use core::ptr;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_ops},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_sk_storage_get},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, SkBuffContext},
};
use rein_common::{
    Direction, KEPT_CGROUPS, SocketRuleLevels,
    abi::trace::{
        EVENT_CGROUP_REFUSED, EVENT_QUEUE_OVERFLOW, MAX_QUEUE_DEVICES, OverflowConfig,
        TRACE_FAMILY_IPV4, TRACE_FAMILY_IPV6, TRACE_RING_BYTES, TraceBudget, TraceControl,
        TraceEvent,
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

/// The kernel's drop reasons and field offsets, written by the trace that loaded this program.
#[map(name = "REIN_OVERFLOW_CONFIG")]
static REIN_OVERFLOW_CONFIG: Array<OverflowConfig> = Array::with_max_entries(1, 0);

/// The queue devices' names (NUL-padded), each to the cgroup of its limit, kept by the trace.
#[map(name = "REIN_QUEUE_DEVICES")]
static REIN_QUEUE_DEVICES: HashMap<[u8; 16], u64> = HashMap::with_max_entries(MAX_QUEUE_DEVICES, 0);

/// A packet freed as dropped (`kfree_skb(skb, location, reason, rx_sk)`): a queue overflow if a
/// qdisc dropped it on one of rein's queue devices. Attached only while a trace runs.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn rein_queue_overflow(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    queue_overflow(skb as *const u8, reason as u32);
    0
}

#[inline(always)]
fn queue_overflow(skb: *const u8, reason: u32) -> Option<()> {
    let config = REIN_OVERFLOW_CONFIG.get(0)?;
    if reason != config.reasons[0] && reason != config.reasons[1] && reason != config.reasons[2] {
        return None;
    }
    // SAFETY: reads of kernel memory through the helper, which checks them; the offsets are
    // those of this kernel's BTF.
    let name: [u8; 16] = unsafe {
        let dev: *const u8 = bpf_probe_read_kernel(skb.add(config.skb_dev as usize).cast()).ok()?;
        if dev.is_null() {
            return None;
        }
        bpf_probe_read_kernel(dev.add(config.dev_name as usize).cast()).ok()?
    };
    // SAFETY: a plain value read from the map.
    let cgroup_id = unsafe { *REIN_QUEUE_DEVICES.get(name)? };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Only the program of the trace holding the lease reports, so each overflow is seen once.
    if !MAPS.on(now) || MAPS.control.get(0)?.pid != config.pid || !MAPS.admit(now) {
        return None;
    }
    let mut event = TraceEvent::EMPTY;
    event.time_ns = now;
    event.kind = EVENT_QUEUE_OVERFLOW;
    event.cgroup_id = cgroup_id;
    event.hook = Direction::Ingress as u8;
    fill_dropped(skb, config, &mut event);
    MAPS.send(&event);
    Some(())
}

/// The IP bytes and the 5-tuple of a dropped packet, read from its linear part (where its
/// headers are); left 0 where they cannot be read.
#[inline(always)]
fn fill_dropped(skb: *const u8, config: &OverflowConfig, event: &mut TraceEvent) -> Option<()> {
    // SAFETY: reads of kernel memory through the helper, which checks them; the offsets are
    // those of this kernel's BTF.
    unsafe {
        let len: u32 = bpf_probe_read_kernel(skb.add(config.skb_len as usize).cast()).ok()?;
        let head: u64 = bpf_probe_read_kernel(skb.add(config.skb_head as usize).cast()).ok()?;
        let data: u64 = bpf_probe_read_kernel(skb.add(config.skb_data as usize).cast()).ok()?;
        let network: u16 =
            bpf_probe_read_kernel(skb.add(config.skb_network_header as usize).cast()).ok()?;
        let ip = head + network as u64;
        // The link header in front of the IP header (the queue sees Ethernet frames).
        let link = ip.wrapping_sub(data);
        event.value = if link < 256 && link <= len as u64 {
            len as u64 - link
        } else {
            len as u64
        };
        let header: [u8; 40] = bpf_probe_read_kernel(ip as *const [u8; 40]).ok()?;
        let ports_at = match header[0] >> 4 {
            4 => {
                event.family = TRACE_FAMILY_IPV4;
                event.protocol = header[9];
                event.source[..4].copy_from_slice(&header[12..16]);
                event.destination[..4].copy_from_slice(&header[16..20]);
                // A later fragment has no ports.
                if u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0 {
                    return None;
                }
                ((header[0] & 0x0f) as u64) * 4
            }
            6 => {
                event.family = TRACE_FAMILY_IPV6;
                event.protocol = header[6];
                event.source.copy_from_slice(&header[8..24]);
                event.destination.copy_from_slice(&header[24..40]);
                40
            }
            _ => return None,
        };
        if event.protocol == 6 || event.protocol == 17 {
            let ports: [u8; 4] = bpf_probe_read_kernel((ip + ports_at) as *const [u8; 4]).ok()?;
            event.source_port = u16::from_be_bytes([ports[0], ports[1]]);
            event.destination_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    Some(())
}
