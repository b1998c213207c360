//! The cgroup limit: a token bucket per cgroup and direction, charged at cgroup_skb egress and
//! ingress for the socket's cgroup and its ancestors, and the sock_ops program that applies the
//! flows' shares (`crate::flows`).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns, bpf_loop, bpf_skb_ancestor_cgroup_id,
    },
    macros::{cgroup_skb, map, sock_ops},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{SkBuffContext, SockOpsContext},
};
use rein_common::{Bucket, Counters, Direction, MAX_CGROUP_DEPTH, MAX_RULES, Rule, RuleKey};
use rein_ebpf::{
    atomic::{CountersRef, Word},
    parse::skb,
    take,
};

use crate::flows;

#[map(name = "REIN_RULES")]
static REIN_RULES: HashMap<RuleKey, Rule> = HashMap::with_max_entries(2 * MAX_RULES, 0);

#[map(name = "REIN_COUNTERS")]
static REIN_COUNTERS: PerCpuHashMap<RuleKey, Counters> =
    PerCpuHashMap::with_max_entries(2 * MAX_RULES, 0);

/// How many rules each direction has (userspace keeps it in step with `REIN_RULES`).
#[map(name = "REIN_RULE_COUNTS")]
static REIN_RULE_COUNTS: Array<u32> = Array::with_max_entries(2, 0);

/// cgroup_skb return codes. At egress, bit 1 adds a congestion notification: the dropped
/// packet then reads as NET_XMIT_DROP, so UDP senders see what a full qdisc would give them
/// (ENOBUFS, which UDP swallows) rather than EPERM, and TCP enters CWR. Ingress allows 0 and 1.
const PASS: i32 = 1;
const DROP: i32 = 0;
const DROP_NOTIFY_CONGESTION: i32 = 2;

/// The most TCP sends in one go: a full GSO packet.
const TCP_TRAIN_BYTES: u64 = 64 * 1024;

#[cgroup_skb(egress)]
pub fn rein_egress(ctx: SkBuffContext) -> i32 {
    if !has_rules(Direction::Egress) {
        return PASS;
    }
    let tcp = flows::tcp_socket_with_data(&ctx);
    match limit(&ctx, Direction::Egress, tcp) {
        PASS => PASS,
        _ => DROP_NOTIFY_CONGESTION,
    }
}

#[cgroup_skb(ingress)]
pub fn rein_ingress(ctx: SkBuffContext) -> i32 {
    if !has_rules(Direction::Ingress) {
        return PASS;
    }
    let tcp = flows::tcp_socket_with_data(&ctx);
    limit(&ctx, Direction::Ingress, tcp)
}

#[sock_ops]
pub fn rein_sock_ops(ctx: SockOpsContext) -> u32 {
    flows::on_sock_ops(&ctx, has_rules(Direction::Ingress));
    1
}

/// Whether any cgroup has a rule in `direction`. The programs see every packet of the machine;
/// with rules in one direction only (the usual case), the other costs one array lookup.
#[inline(always)]
pub(crate) fn has_rules(direction: Direction) -> bool {
    REIN_RULE_COUNTS
        .get(direction as u32)
        .is_some_and(|count| *count > 0)
}

/// Charges the packet to the bucket of every rule on the socket's cgroup and its ancestors, and
/// passes it only if all of them have room. Levels are walked from the root down; when a deeper
/// bucket refuses, what was charged to the shallower ones is given back.
///
/// `tcp` is the TCP socket that sends or receives the packet (else null): its flow is counted
/// under each rule on the way, and given the smallest share it finds.
#[inline(always)]
fn limit(ctx: &SkBuffContext, direction: Direction, tcp: *mut aya_ebpf::bindings::bpf_sock) -> i32 {
    let skb = ctx.skb.skb;
    let bytes = skb::ip_bytes(ctx);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    // One walk from the root down: charge each rule's bucket and count the pass as we go, so
    // a packet that passes (nearly all do) costs a single walk.
    let mut walk = Walk {
        skb,
        flow: flows::Sharing::new(ctx, tcp, now, bytes, direction),
        now,
        bytes,
        refused: 0,
        deepest: 0,
        loop_from: 0,
        loop_first: (0, RuleRef(ptr::null_mut())),
    };
    // The first levels inline, where the usual cgroups are, at no cost; the rest through
    // bpf_loop (see `Walk`). One function per direction, so that it is a constant in each.
    let (deeper_rule, callback) = match direction {
        Direction::Egress => (
            walk_inline::<false>(&mut walk),
            walk_level::<false> as *mut c_void,
        ),
        Direction::Ingress => (
            walk_inline::<true>(&mut walk),
            walk_level::<true> as *mut c_void,
        ),
    };
    if let Some((from, cgroup_id, rule)) = deeper_rule {
        if ancestor(skb, from + 1).is_none() {
            // Usually the deep rule is the socket's own cgroup's: charged in line, with no
            // loop. (One round of it cost about 10 ns a packet: a call, and the copies of
            // the walk.) The code is shared by every level the rule can be at, and the level is
            // not used past here, so the verifier goes through it as one.
            let _ = match direction {
                Direction::Egress => charge_level::<false>(&mut walk, cgroup_id, rule),
                Direction::Ingress => charge_level::<true>(&mut walk, cgroup_id, rule),
            };
        } else {
            // The loop charges from the rule's level down to the socket's cgroup.
            walk.loop_from = from;
            walk.loop_first = (cgroup_id, rule);
            // The loop gets a copy: the walk itself never has its address taken, so the
            // compiler keeps it in registers on the usual path.
            let mut deep = walk;
            // SAFETY: the callback reads and writes only the copy, which outlives the loop.
            unsafe {
                bpf_loop(
                    MAX_CGROUP_DEPTH + 1 - from,
                    callback,
                    ptr::from_mut(&mut deep).cast(),
                    0,
                )
            };
            walk = deep;
        }
    }
    let Walk {
        flow,
        refused,
        deepest,
        ..
    } = walk;
    if refused == 0 {
        flow.finish(true, deepest, direction);
        return PASS;
    }
    flow.finish(false, deepest, direction);

    // A deeper rule refused: give back what the shallower rules (the levels above the cgroup
    // that refused) were charged and counted, and count the drop against the rule that refused.
    let mut level = 1u32;
    while level <= MAX_CGROUP_DEPTH {
        let Some(cgroup_id) = ancestor(skb, level) else {
            break;
        };
        if cgroup_id == refused {
            break;
        }
        if let Some(rule) = rule(cgroup_id, direction) {
            refund(rule, bytes);
            count_pass(cgroup_id, direction, bytes, false);
        }
        level += 1;
    }
    if let Some(counters) = counters(refused, direction) {
        counters.add(false, 1, bytes);
    }
    DROP
}

/// One packet's walk over its cgroup's ancestors. Levels 1 to [`INLINE_LEVELS`] are charged
/// in line and deeper ones looked at in line. The first rule below the inline levels is
/// charged in line too when it is the socket's own cgroup's; otherwise it is charged, with the
/// levels below it, from a `bpf_loop` callback ([`walk_level`]), which the verifier checks as
/// one body rather than once per level and path. Unrolled, the 16 levels took the
/// cgroup_skb programs to 0.92 of the verifier's million-instruction limit, and one more
/// branch in the body made the ingress program too large to load. Through `bpf_loop` alone,
/// each level cost a call: 20-35 ns more a packet at depth 2.
struct Walk<'a> {
    skb: *mut __sk_buff,
    flow: flows::Sharing<'a>,
    now: u64,
    bytes: u64,
    /// The cgroup whose rule refused the packet; 0 while none has. Its cgroup, not its level:
    /// a level is a different constant on each path to a refusal, which the verifier must
    /// then tell apart down to the refunds.
    refused: u64,
    /// The deepest rule met: an ingress flow's queue.
    deepest: u64,
    /// The level at which the loop starts, and the cgroup and rule found there.
    loop_from: u32,
    loop_first: (u64, RuleRef),
}

/// Levels charged in line. Below them, the levels are looked at in line too (an ancestor and a
/// lookup each), and the first that has a rule is charged in line if it is the socket's own
/// cgroup, else the loop charges from it. Each level charged in line costs ~80k verified
/// instructions; 4 cover the usual rules (Kubernetes puts a pod's cgroup at level 3 and its
/// containers' at 4, systemd a service's at 2 and a session's at 3).
const INLINE_LEVELS: u32 = 4;

/// Charges levels 1 to [`INLINE_LEVELS`] in line, then looks further down for a rule; the
/// level of the first one found, its cgroup and its rule, if there is one.
#[inline(always)]
fn walk_inline<const INGRESS: bool>(walk: &mut Walk) -> Option<(u32, u64, RuleRef)> {
    let direction = if INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let mut level = 1;
    while level <= INLINE_LEVELS {
        if !visit::<INGRESS>(walk, level) {
            return None;
        }
        level += 1;
    }
    while level <= MAX_CGROUP_DEPTH {
        let cgroup_id = ancestor(walk.skb, level)?;
        if let Some(rule) = rule(cgroup_id, direction) {
            return Some((level, cgroup_id, rule));
        }
        level += 1;
    }
    None
}

/// Level `walk.loop_from + index`, as `bpf_loop`'s callback: 1 stops the loop.
extern "C" fn walk_level<const INGRESS: bool>(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the walk given to it, which lives on the program's stack, and
    // nothing else uses it while the loop runs.
    let walk = unsafe { &mut *context.cast::<Walk>() };
    let going_on = if index == 0 {
        // Found by `walk_inline`: no second ancestor and lookup.
        let (cgroup_id, rule) = walk.loop_first;
        charge_level::<INGRESS>(walk, cgroup_id, rule)
    } else {
        visit::<INGRESS>(walk, walk.loop_from + index)
    };
    if going_on { 0 } else { 1 }
}

/// Charges the rule of the cgroup at `level`, if it has one. False when the walk is over:
/// past the socket's own cgroup, or at a refusal.
#[inline(always)]
fn visit<const INGRESS: bool>(walk: &mut Walk, level: u32) -> bool {
    let direction = if INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let Some(cgroup_id) = ancestor(walk.skb, level) else {
        return false;
    };
    match rule(cgroup_id, direction) {
        Some(rule) => charge_level::<INGRESS>(walk, cgroup_id, rule),
        None => true,
    }
}

/// Charges `rule`, on the cgroup `cgroup_id`; false if it refuses.
#[inline(always)]
fn charge_level<const INGRESS: bool>(walk: &mut Walk, cgroup_id: u64, rule: RuleRef) -> bool {
    let direction = if INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    walk.deepest = cgroup_id;
    // Counted before the charge: how many flows share the rule sets TCP's leeway.
    let flows = walk.flow.count_under(rule, direction);
    // A download that came through its rule's queue was shaped there, exactly, but tbf charges
    // a GRO packet's headers once: refusing what the bucket thinks is over would only make TCP
    // retransmit. It passes uncharged.
    if !charge(rule, walk.now, walk.bytes, flows) && !walk.flow.queued(direction) {
        walk.refused = cgroup_id;
        return false;
    }
    count_pass(cgroup_id, direction, walk.bytes, true);
    true
}

/// Counts a passed packet (or takes the count back, when a deeper rule refused it after all).
#[inline(always)]
fn count_pass(cgroup_id: u64, direction: Direction, bytes: u64, passed: bool) {
    if let Some(counters) = counters(cgroup_id, direction) {
        if passed {
            counters.add(true, 1, bytes);
        } else {
            counters.sub(true, 1, bytes);
        }
    }
}

/// The smallest rate (bytes/s) of the ingress rules over the cgroup of the task the program
/// runs for (in process context: the one connecting or listening); 0 when none covers it.
#[inline(always)]
pub(crate) fn current_task_ingress_rate() -> u64 {
    let mut smallest = 0u64;
    let mut level = 1u32;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: a helper taking a plain value.
        let cgroup_id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if cgroup_id == 0 {
            break;
        }
        if let Some(rule) = rule(cgroup_id, Direction::Ingress)
            && (smallest == 0 || rule.rate() < smallest)
        {
            smallest = rule.rate();
        }
        level += 1;
    }
    smallest
}

#[inline(always)]
fn ancestor(skb: *mut __sk_buff, level: u32) -> Option<u64> {
    // Returns 0 when the socket's cgroup is shallower than `level` (or there is no socket).
    // SAFETY: the program's own context.
    match unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) } {
        0 => None,
        id => Some(id),
    }
}

/// The rule of `cgroup_id` in `direction`, if it has one.
#[inline(always)]
pub(crate) fn rule(cgroup_id: u64, direction: Direction) -> Option<RuleRef> {
    let ptr = REIN_RULES.get_ptr_mut(RuleKey::new(cgroup_id, direction))?;
    Some(RuleRef(ptr))
}

/// A rule in the map, which every CPU reads and updates at once: its configuration is read
/// field by field, its live state (bucket, counts) changed through atomics only, and no
/// reference to it is ever made.
#[derive(Clone, Copy)]
pub(crate) struct RuleRef(*mut Rule);

impl RuleRef {
    /// The limit in IP bytes per second.
    #[inline(always)]
    pub(crate) fn rate(self) -> u64 {
        // SAFETY: a map value, valid for the program's run (RCU); userspace writes `rate` only
        // when it writes the whole rule.
        unsafe { (*self.0).rate }
    }

    /// The bucket's configuration (its `tat` left 0: that is `tat()`).
    #[inline(always)]
    fn bucket(self) -> Bucket {
        // SAFETY: as in `rate`.
        let (ns_per_byte, burst_ns) =
            unsafe { ((*self.0).bucket.ns_per_byte, (*self.0).bucket.burst_ns) };
        Bucket {
            ns_per_byte,
            burst_ns,
            tat: 0,
        }
    }

    #[inline(always)]
    fn tat(self) -> Word {
        // SAFETY: a map value valid for the program's run; `tat` changes by atomics only.
        unsafe { Word::new(&raw mut (*self.0).bucket.tat) }
    }

    /// The TCP flows sharing the rule (an `EpochCount`).
    #[inline(always)]
    pub(crate) fn flows(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(&raw mut (*self.0).flows.0) }
    }

    /// The rule's other traffic (an `EpochCount`).
    #[inline(always)]
    pub(crate) fn others(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(&raw mut (*self.0).others.0) }
    }
}

/// The counters of `cgroup_id` in `direction` on this CPU.
#[inline(always)]
fn counters(cgroup_id: u64, direction: Direction) -> Option<CountersRef> {
    let ptr = REIN_COUNTERS.get_ptr_mut(RuleKey::new(cgroup_id, direction))?;
    // SAFETY: a map value, valid for the program's run (RCU); counters change by atomics only.
    Some(unsafe { CountersRef::new(ptr) })
}

/// Takes `bytes` from the rule's bucket; false when the bucket has no room.
///
/// While `tcp_flows` TCP flows share the rule, the bucket may go further into debt: one 64 KiB
/// segment train per flow. The flows pace themselves just under their share, so their long-run
/// rate stays under the limit, but at a short round trip TCP sends up to 64 KiB at once and then
/// waits (its TSO autosizing adds `gso_max_size >> (min_rtt_us >> tcp_tso_rtt_log)`), and the
/// trains of several flows can line up. Refusing such a train would stall the flow until an ACK
/// or a timer, because a refusal at cgroup egress is a local drop, not a loss. Past that leeway
/// TCP is refused like anything else, which caps a flow that overrides its pacing.
///
/// Other packets get the same room: the trains keep the bucket in that debt much of the time,
/// and a ping or a DNS query sent beside the flows must still pass.
#[inline(always)]
fn charge(rule: RuleRef, now: u64, bytes: u64, tcp_flows: u32) -> bool {
    let bucket = rule.bucket();
    let cost = bucket.cost_ns(bytes);
    // tcp_flows <= 2^16 and the cost of 64 KiB < 2^43 (at 1 kbit/s): no overflow.
    let room = bucket.burst_ns + tcp_flows as u64 * bucket.cost_ns(TCP_TRAIN_BYTES);
    take::take(rule.tat(), now, cost, room)
}

/// Gives back the cost of `bytes` charged by `charge`.
#[inline(always)]
fn refund(rule: RuleRef, bytes: u64) {
    let cost = rule.bucket().cost_ns(bytes);
    rule.tat().sub(cost);
}
