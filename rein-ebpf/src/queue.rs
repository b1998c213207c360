//! The way into an ingress rule's queue: a tc ingress program on the devices of the namespace
//! where the rule's queue lives (an ifb device with a tbf qdisc at the rule's rate).
//!
//! A receiver cannot pace its sender, and the cgroup ingress hook can only pass or drop, so a
//! download under a limit is slowed by a queue. The flow's receive window (set by the sock_ops
//! program, see `flow::apply_window`) bounds what the sender has in flight, hence what waits in
//! the queue: the rate is exact, nothing overflows, and the delay stays a window's time at the
//! share. Only flows whose window is clamped go through the queue; everything else (other
//! protocols, connections opened before rein attached) is left to the cgroup's bucket.
use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    helpers::generated::{bpf_redirect, bpf_sk_release, bpf_sk_storage_get, bpf_skc_lookup_tcp},
    programs::TcContext,
};
use rein_common::{Direction, IngressFlowState, QueueKey, share::UNCLAMPED_WINDOW};

use crate::{REIN_INGRESS_FLOWS, REIN_QUEUES, has_rules};

/// tcx: let the next program (or the stack) have the packet.
const TCX_NEXT: i32 = -1;

const ETH_HEADER: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV6_HEADER: usize = 40;
/// IPv4 flags and fragment offset: "more fragments" and the offset.
const IPV4_FRAGMENT: u16 = 0x3fff;

#[inline(always)]
pub fn classify(ctx: &TcContext) -> i32 {
    if !has_rules(Direction::Ingress) {
        return TCX_NEXT;
    }
    match queue_of(ctx) {
        // SAFETY: a helper taking plain values.
        Some(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        None => TCX_NEXT,
    }
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data().checked_add(offset)?;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: checked against the end of the linear data; the verifier checks it again.
    Some(unsafe { ptr::read_unaligned(start as *const T) })
}

/// The queue this packet goes to: that of the deepest ingress rule over the cgroup of the TCP
/// socket it is for (as the cgroup ingress program noted it), in this namespace, if that
/// socket's window is clamped.
#[inline(always)]
fn queue_of(ctx: &TcContext) -> Option<u32> {
    // SAFETY: an all-zero tuple is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = match u16::from_be(read::<u16>(ctx, 12)?) {
        ETH_P_IP => {
            let version_ihl: u8 = read(ctx, ETH_HEADER)?;
            let fragment = u16::from_be(read::<u16>(ctx, ETH_HEADER + 6)?);
            if read::<u8>(ctx, ETH_HEADER + 9)? != IPPROTO_TCP || fragment & IPV4_FRAGMENT != 0 {
                return None;
            }
            let tcp = ETH_HEADER + ((version_ihl & 0x0f) as usize) * 4;
            // SAFETY: writing plain integers into the tuple's IPv4 member.
            unsafe {
                let v4 = &mut tuple.__bindgen_anon_1.ipv4;
                v4.saddr = read(ctx, ETH_HEADER + 12)?;
                v4.daddr = read(ctx, ETH_HEADER + 16)?;
                v4.sport = read(ctx, tcp)?;
                v4.dport = read(ctx, tcp + 2)?;
                size_of_val(v4)
            }
        }
        ETH_P_IPV6 => {
            // TCP right after the fixed header; extension headers are rare on TCP and left to
            // the bucket.
            if read::<u8>(ctx, ETH_HEADER + 6)? != IPPROTO_TCP {
                return None;
            }
            let tcp = ETH_HEADER + IPV6_HEADER;
            // SAFETY: writing plain integers into the tuple's IPv6 member.
            unsafe {
                let v6 = &mut tuple.__bindgen_anon_1.ipv6;
                v6.saddr = read(ctx, ETH_HEADER + 8)?;
                v6.daddr = read(ctx, ETH_HEADER + 24)?;
                v6.sport = read(ctx, tcp)?;
                v6.dport = read(ctx, tcp + 2)?;
                size_of_val(v6)
            }
        }
        _ => return None,
    };
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
    // SAFETY: non-null storage of this socket, valid for the program's run; the tc program
    // and the cgroup ingress program of one flow run one after the other.
    let state = unsafe { &mut *state };
    let applied = state.flow.applied;
    let mut ifindex = 0u32;
    if applied != 0 && applied != UNCLAMPED_WINDOW {
        let key = QueueKey {
            cgroup_id: state.queue_cgroup,
            netns_cookie: state.netns_cookie,
        };
        // SAFETY: a plain value read from the map.
        if let Some(found) = unsafe { REIN_QUEUES.get(&key) } {
            ifindex = *found;
        }
    }
    let queued = u32::from(ifindex != 0);
    if state.queued != queued {
        state.queued = queued;
    }
    if ifindex == 0 { None } else { Some(ifindex) }
}

#[inline(always)]
fn size_of_val<T>(_: &T) -> usize {
    size_of::<T>()
}
