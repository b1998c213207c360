//! rein's address-aware limits on interfaces (`rein net`): tc programs for ingress and egress
//! and an XDP program for ingress. Each parses the packet's addresses, protocol and destination
//! port, finds the most specific rule for them on its interface and direction
//! (`rein_common::net`), and passes the packet if the rule's token bucket or window has room.
//!
//! Packets the parser does not understand (not IP, truncated, malformed) pass untouched; so
//! does everything no rule matches. A separate object from the cgroup programs, so hosts that
//! only limit cgroups never create these maps.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{
        HashMap, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TcContext, XdpContext},
};
use rein_common::{
    Counters, Direction,
    net::{
        ALGORITHM_FIXED_WINDOW, ALGORITHM_TOKEN_BUCKET, FLAG_PACKETS, NetRule, PORT_ANY,
        PROTOCOL_ANY, PairKey, PrefixKey, RuleMatch, SCOPE_BITS, Scope,
    },
    window::{WindowKind, WindowState, WindowVerdict, cost_units},
};

// Shared with the cgroup programs, which also take counts back (`sub`).
#[path = "atomic.rs"]
#[allow(dead_code)]
mod atomic;
#[path = "net_packet.rs"]
mod net_packet;
#[path = "take.rs"]
mod take;

use net_packet::Packet;

/// Rules and prefixes a host may hold: flat lookups keep the cost independent of the count.
const MAX_NET_RULES: u32 = 1 << 20;

#[map(name = "REIN_NET_RULES")]
static REIN_NET_RULES: HashMap<u32, NetRule> =
    HashMap::with_max_entries(MAX_NET_RULES, BPF_F_NO_PREALLOC);

#[map(name = "REIN_NET_COUNTERS")]
static REIN_NET_COUNTERS: PerCpuHashMap<u32, Counters> =
    PerCpuHashMap::with_max_entries(MAX_NET_RULES, BPF_F_NO_PREALLOC);

#[map(name = "REIN_NET_SOURCES")]
static REIN_NET_SOURCES: LpmTrie<PrefixKey, RuleMatch> =
    LpmTrie::with_max_entries(MAX_NET_RULES, 0);

#[map(name = "REIN_NET_DESTINATIONS")]
static REIN_NET_DESTINATIONS: LpmTrie<PrefixKey, RuleMatch> =
    LpmTrie::with_max_entries(MAX_NET_RULES, 0);

#[map(name = "REIN_NET_PAIRS")]
static REIN_NET_PAIRS: HashMap<PairKey, RuleMatch> =
    HashMap::with_max_entries(MAX_NET_RULES, BPF_F_NO_PREALLOC);

#[classifier]
pub fn rein_net_tc_ingress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, Direction::Ingress)
}

#[classifier]
pub fn rein_net_tc_egress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, Direction::Egress)
}

#[xdp]
pub fn rein_net_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: the context is valid for the program's run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(packet) = Packet::parse(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_PASS;
    };
    // XDP sees single frames: one packet, its IP bytes.
    let amount = Amount {
        bytes: packet.ip_bytes,
        packets: 1,
    };
    if admit(&packet, ifindex, Direction::Ingress, amount) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn tc_verdict(ctx: &TcContext, direction: Direction) -> i32 {
    // SAFETY: the context is valid for the program's run.
    let (ifindex, len, segs) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).ifindex, (*skb).len, (*skb).gso_segs)
    };
    let Some(packet) = Packet::parse(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK;
    };
    // A GSO packet stands for `segs` packets, each with its own headers (see the cgroup
    // programs' `packet.rs`); skb->len counts the L2 header and the other headers once.
    let segs = if segs == 0 { 1 } else { segs as u64 };
    let ip_len = (len as u64).saturating_sub(packet.l2_bytes);
    let amount = Amount {
        bytes: ip_len + (segs - 1) * packet.header_bytes,
        packets: segs,
    };
    if admit(&packet, ifindex, direction, amount) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// What a packet is charged: IP bytes, or packets (a GSO packet is several).
#[derive(Clone, Copy)]
struct Amount {
    bytes: u64,
    packets: u64,
}

/// Finds the packet's rule and charges it; true when the packet may pass.
#[inline(always)]
fn admit(packet: &Packet, ifindex: u32, direction: Direction, amount: Amount) -> bool {
    let Some(found) = best_match(packet, ifindex, direction as u8) else {
        return true;
    };
    let Some(rule) = rule(found.rule) else {
        return true;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let passed = charge(rule, now, amount);
    if let Some(counters) = counters(found.rule) {
        if passed {
            atomic::add(&mut counters.passed_packets, amount.packets);
            atomic::add(&mut counters.passed_bytes, amount.bytes);
        } else {
            atomic::add(&mut counters.dropped_packets, amount.packets);
            atomic::add(&mut counters.dropped_bytes, amount.bytes);
        }
    }
    passed
}

/// The most specific rule among the longest source prefix, the longest destination prefix and
/// the exact pair, for each way a rule may name the packet's protocol and port.
#[inline(always)]
fn best_match(packet: &Packet, ifindex: u32, direction: u8) -> Option<RuleMatch> {
    let mut best: Option<RuleMatch> = None;
    // (protocol, port), (any, port), (protocol, any), (any, any); the port only for a packet
    // that has one.
    for variant in 0..4u32 {
        let names_port = variant < 2;
        if names_port && packet.port == PORT_ANY {
            continue;
        }
        let protocol = if variant % 2 == 0 {
            packet.protocol
        } else {
            PROTOCOL_ANY
        };
        let port = if names_port { packet.port } else { PORT_ANY };
        let scope = Scope::new(ifindex, direction, packet.family, protocol, port);
        let bits = SCOPE_BITS + packet.address_bits;
        for found in [
            REIN_NET_DESTINATIONS.get(Key::new(
                bits,
                PrefixKey {
                    scope,
                    addr: packet.destination,
                },
            )),
            REIN_NET_SOURCES.get(Key::new(
                bits,
                PrefixKey {
                    scope,
                    addr: packet.source,
                },
            )),
            // SAFETY: a plain-data key; the value is copied out at once.
            unsafe {
                REIN_NET_PAIRS.get(&PairKey {
                    scope,
                    source: packet.source,
                    destination: packet.destination,
                })
            },
        ]
        .into_iter()
        .flatten()
        {
            let better = match best {
                Some(b) => found.specificity > b.specificity,
                None => true,
            };
            if better {
                best = Some(*found);
            }
        }
    }
    best
}

#[inline(always)]
fn rule(id: u32) -> Option<&'static mut NetRule> {
    let ptr = REIN_NET_RULES.get_ptr_mut(&id)?;
    // SAFETY: valid for the program's run (RCU); shared fields change through atomics only.
    Some(unsafe { &mut *ptr })
}

#[inline(always)]
fn counters(id: u32) -> Option<&'static mut Counters> {
    let ptr = REIN_NET_COUNTERS.get_ptr_mut(&id)?;
    // SAFETY: as for `rule`; per-CPU.
    Some(unsafe { &mut *ptr })
}

/// Takes the packet from the rule's bucket or window; false when it has no room.
#[inline(always)]
fn charge(rule: &mut NetRule, now: u64, amount: Amount) -> bool {
    let quantity = if rule.flags & FLAG_PACKETS != 0 {
        amount.packets
    } else {
        amount.bytes
    };
    if rule.algorithm == ALGORITHM_TOKEN_BUCKET {
        return charge_bucket(rule, now, quantity);
    }
    let kind = if rule.algorithm == ALGORITHM_FIXED_WINDOW {
        WindowKind::Fixed
    } else {
        WindowKind::Sliding
    };
    charge_window(rule, kind, now, quantity)
}

#[inline(always)]
fn charge_bucket(rule: &mut NetRule, now: u64, quantity: u64) -> bool {
    let (cost, burst_ns) = (rule.bucket.cost_ns(quantity), rule.bucket.burst_ns);
    take::take(&mut rule.bucket, now, cost, burst_ns)
}

#[inline(always)]
fn charge_window(rule: &mut NetRule, kind: WindowKind, now: u64, quantity: u64) -> bool {
    let cost = cost_units(quantity, rule.unit);
    let (window_ns, capacity) = (rule.window_ns, rule.capacity);
    let last_pass_ns = atomic::load(&rule.last_pass_ns);
    let mut state = atomic::load(&rule.window.0);
    let mut attempt = 0;
    while attempt < 8 {
        match WindowState(state).decide(kind, now, last_pass_ns, window_ns, capacity, cost) {
            WindowVerdict::Refuse => return false,
            WindowVerdict::Pass { state: next } => {
                match atomic::compare_exchange(&mut rule.window.0, state, next.0) {
                    Ok(()) => {
                        // Only tells a long idle period apart: a racy store is enough.
                        rule.last_pass_ns = now;
                        return true;
                    }
                    Err(found) => state = found,
                }
            }
        }
        attempt += 1;
    }
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
