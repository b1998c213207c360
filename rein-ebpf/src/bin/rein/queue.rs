//! The way into an ingress rule's queue: a tc ingress program on the devices of the namespace
//! where the rule's queue lives (an ifb device with a tbf qdisc at the rule's rate).
//!
//! A receiver cannot pace its sender, and the cgroup ingress hook can only pass or drop, so a
//! download under a limit is slowed by a queue. The flow's receive window (set by the sock_ops
//! program, see `flows::apply_window`) bounds what the sender has in flight, hence what waits in
//! the queue: the rate is exact, nothing overflows, and the delay stays a window's time at the
//! share. Only flows whose window is clamped go through the queue; everything else (other
//! protocols, connections opened before rein attached) is left to the cgroup's bucket.
use core::ptr;

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock},
    helpers::generated::{bpf_redirect, bpf_sk_release, bpf_sk_storage_get, bpf_skc_lookup_tcp},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use rein_common::{Direction, IngressFlowState, MAX_RULES, QueueKey, share::UNCLAMPED_WINDOW};
use rein_ebpf::parse::tuple::tcp_tuple;

use crate::{flows::REIN_INGRESS_FLOWS, limit::has_rules};

/// The shaping queue (an ifb device's ifindex) of an ingress rule, in one network namespace.
#[map(name = "REIN_QUEUES")]
static REIN_QUEUES: HashMap<QueueKey, u32> = HashMap::with_max_entries(MAX_RULES, 0);

/// tcx: let the next program (or the stack) have the packet.
const TCX_NEXT: i32 = -1;

#[classifier]
pub fn rein_queue(ctx: TcContext) -> i32 {
    match try_queue(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Err: the packet goes on as it came.
#[inline(always)]
fn try_queue(ctx: &TcContext) -> Result<i32, i32> {
    if !has_rules(Direction::Ingress) {
        return Err(TCX_NEXT);
    }
    let ifindex = queue_of(ctx).ok_or(TCX_NEXT)?;
    // SAFETY: a helper taking plain values.
    Ok(unsafe { bpf_redirect(ifindex, 0) as i32 })
}

/// The queue this packet goes to: that of the deepest ingress rule over the cgroup of the TCP
/// socket it is for (as the cgroup ingress program noted it), in this namespace, if that
/// socket's window is clamped.
#[inline(always)]
fn queue_of(ctx: &TcContext) -> Option<u32> {
    let (mut tuple, size) = tcp_tuple(ctx.data(), ctx.data_end())?;
    let skb = ctx.skb.skb;
    // SAFETY: the context, a tuple of the size given; the socket is released below.
    let socket = unsafe {
        bpf_skc_lookup_tcp(
            skb.cast(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if socket.is_null() {
        return None;
    }
    let queue = socket_queue(socket);
    // SAFETY: the reference taken by the lookup.
    unsafe { bpf_sk_release(socket.cast()) };
    queue
}

#[inline(always)]
fn socket_queue(socket: *mut bpf_sock) -> Option<u32> {
    let map = ptr::from_ref(&REIN_INGRESS_FLOWS).cast_mut().cast();
    // SAFETY: a socket from the lookup; the helper returns null for one that is not full.
    let state: *mut IngressFlowState =
        unsafe { bpf_sk_storage_get(map, socket.cast(), ptr::null_mut(), 0) }.cast();
    if state.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket, valid for the program's run; the cgroup
    // programs and sock_ops may use it at once on other CPUs, so it is read and written
    // through the pointer, never a reference.
    let (applied, queue_cgroup, netns_cookie, queued_before) = unsafe {
        (
            (*state).flow.applied,
            (*state).queue_cgroup,
            (*state).netns_cookie,
            (*state).queued,
        )
    };
    let mut ifindex = 0u32;
    if applied != 0 && applied != UNCLAMPED_WINDOW {
        let key = QueueKey {
            cgroup_id: queue_cgroup,
            netns_cookie,
        };
        // SAFETY: a plain value read from the map.
        if let Some(found) = unsafe { REIN_QUEUES.get(key) } {
            ifindex = *found;
        }
    }
    let queued = u32::from(ifindex != 0);
    if queued_before != queued {
        // SAFETY: as above.
        unsafe { (*state).queued = queued };
    }
    if ifindex == 0 { None } else { Some(ifindex) }
}
