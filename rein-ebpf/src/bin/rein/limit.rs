//! The cgroup limit: a token bucket per cgroup and direction, charged at cgroup_skb egress and
//! ingress for the socket's cgroup and its ancestors, and the sock_ops program that applies the
//! flows' shares (`crate::flows`).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_ktime_get_ns, bpf_loop,
        bpf_skb_ancestor_cgroup_id, generated::bpf_sk_storage_get,
    },
    macros::{btf_map, cgroup_skb, map, sock_ops},
    maps::{
        Array, HashMap, PerCpuArray, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SkBuffContext, SockOpsContext},
};
use rein_common::{
    Action, Bucket, Counters, Direction, KEPT_CGROUPS, MAX_CGROUP_DEPTH, MAX_RULES, MAX_SUBNETS,
    NETNS_LEVEL, RULE_SHAPED_SUBNETS, RULE_UNSHAPED_SUBNETS, Rule, RuleKey, RuleLevels,
    SocketRuleLevels, SubnetKey, netns_scope,
};
use rein_ebpf::{
    atomic::{CountersRef, Word},
    parse::skb,
    take,
};

use crate::{flows, trace};

#[map(name = "REIN_RULES")]
static REIN_RULES: HashMap<RuleKey, Rule> = HashMap::with_max_entries(2 * MAX_RULES, 0);

#[map(name = "REIN_COUNTERS")]
static REIN_COUNTERS: PerCpuHashMap<RuleKey, Counters> =
    PerCpuHashMap::with_max_entries(2 * MAX_RULES, 0);

/// The subnets of namespace rules that limit only some peers (`RULE_*_SUBNETS`).
#[map(name = "REIN_SUBNETS")]
static REIN_SUBNETS: LpmTrie<SubnetKey, u32> =
    LpmTrie::with_max_entries(MAX_SUBNETS, BPF_F_NO_PREALLOC);

/// How many rules each direction has (userspace keeps it in step with `REIN_RULES`).
#[map(name = "REIN_RULE_COUNTS")]
static REIN_RULE_COUNTS: Array<u32> = Array::with_max_entries(2, 0);

/// Which of each socket's cgroup levels have rules (`rule_levels`).
#[btf_map]
pub(crate) static REIN_RULE_LEVELS: SkStorage<SocketRuleLevels> = SkStorage::new();

/// The rules' generation: userspace bumps it after every change to `REIN_RULES`.
#[map(name = "REIN_GENERATION")]
static REIN_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Where the levels found for a packet without socket storage are put, to be read back (see
/// `rule_levels`).
#[map(name = "REIN_LEVELS_SCRATCH")]
static REIN_LEVELS_SCRATCH: PerCpuArray<RuleLevels> = PerCpuArray::with_max_entries(1, 0);

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
    match limit(&ctx, Direction::Egress) {
        PASS => PASS,
        _ => DROP_NOTIFY_CONGESTION,
    }
}

#[cgroup_skb(ingress)]
pub fn rein_ingress(ctx: SkBuffContext) -> i32 {
    if !has_rules(Direction::Ingress) {
        return PASS;
    }
    limit(&ctx, Direction::Ingress)
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
/// passes it only if all of them have room. Rules are charged from the root down; when a deeper
/// bucket refuses, what was charged to the shallower ones is given back.
///
/// A TCP flow's packet is counted under each rule on the way, and the flow given the smallest
/// share it finds.
#[inline(always)]
fn limit(ctx: &SkBuffContext, direction: Direction) -> i32 {
    let Found {
        mut levels,
        cgroups,
    } = rule_levels(ctx, direction);
    if levels & NETNS_BIT != 0 && !netns_rule_covers(ctx, direction) {
        levels &= !NETNS_BIT;
    }
    if levels == 0 {
        return PASS;
    }
    let tcp = flows::tcp_socket_with_data(ctx);
    let skb = ctx.skb.skb;
    let bytes = skb::ip_bytes(ctx);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut walk = Walk {
        skb,
        flow: flows::Sharing::new(ctx, tcp, now, bytes, direction),
        now,
        bytes,
        left: levels,
        charged: 0,
        refused: 0,
        deepest: 0,
    };
    // Up to [`INLINE_RULES`] rules in line, where the usual cgroups' are, at no cost; more, all
    // through bpf_loop (see `Walk`). One function per direction, so that it is a constant in
    // each.
    if more_than_inline(levels) {
        let callback = match direction {
            Direction::Egress => charge_round::<false> as *mut c_void,
            Direction::Ingress => charge_round::<true> as *mut c_void,
        };
        // The loop gets a copy: the walk itself never has its address taken, so the compiler
        // keeps it in registers on the usual path.
        let mut deep = Deep { walk, cgroups };
        // SAFETY: the callback reads and writes only the copy, which outlives the loop.
        unsafe { bpf_loop(NETNS_LEVEL, callback, ptr::from_mut(&mut deep).cast(), 0) };
        walk = deep.walk;
    } else {
        match direction {
            Direction::Egress => charge_inline::<false>(&mut walk, &cgroups),
            Direction::Ingress => charge_inline::<true>(&mut walk, &cgroups),
        }
    }
    let Walk {
        flow,
        charged,
        refused,
        deepest,
        ..
    } = walk;
    if refused == 0 {
        flow.finish(true, deepest, direction);
        return PASS;
    }
    flow.finish(false, deepest, direction);

    // A deeper rule refused: give back what the shallower rules were charged and counted, and
    // count the drop against the rule that refused.
    let mut left = charged;
    let mut round = 0;
    while left != 0 && round < NETNS_LEVEL {
        let level = lowest_level(left);
        left &= left - 1;
        if let Some(cgroup_id) = scope_at(skb, level)
            && let Some(rule) = rule(cgroup_id, direction)
        {
            refund(rule, bytes);
            count_pass(cgroup_id, direction, bytes, false);
        }
        round += 1;
    }
    if let Some(counters) = counters(refused, direction) {
        counters.add(false, 1, bytes);
    }
    trace::refusal(skb, refused, direction as u32, bytes, now);
    DROP
}

/// The rules over a socket in one direction: the levels of its cgroup's ancestors that have
/// one (bit `level - 1` for each), and the cgroups of the first [`KEPT_CGROUPS`].
struct Found {
    levels: u32,
    cgroups: [u64; KEPT_CGROUPS],
}

/// The rules over the packet's socket in `direction`, as kept in the socket's storage since the
/// last rule change; else found now, and kept. A packet without a full socket of its own (a
/// SYN-ACK has its request's) has no storage: its rules are found every time.
#[inline(always)]
fn rule_levels(ctx: &SkBuffContext, direction: Direction) -> Found {
    let skb = ctx.skb.skb;
    // Read before the rules are looked at: a rule written after this read comes with a new
    // generation, so levels found without it are found again on the next packet.
    let generation = REIN_GENERATION.get(0).copied().unwrap_or(0);
    // SAFETY: the program's own context.
    let socket = unsafe { (*skb).__bindgen_anon_2.sk };
    let storage: *mut SocketRuleLevels = if socket.is_null() {
        ptr::null_mut()
    } else {
        // SAFETY: a socket from the context (the helper gives nothing for one that is not a
        // full socket) and no initial value: a new storage is all zeros.
        unsafe {
            bpf_sk_storage_get(
                ptr::from_ref(&REIN_RULE_LEVELS).cast_mut().cast(),
                socket.cast(),
                ptr::null_mut(),
                BPF_SK_STORAGE_GET_F_CREATE.into(),
            )
        }
        .cast()
    };
    let stored: *mut RuleLevels = if storage.is_null() {
        match REIN_LEVELS_SCRATCH.get_ptr_mut(0) {
            Some(scratch) => scratch,
            // Cannot happen: the array has its one entry on every CPU.
            None => {
                return Found {
                    levels: 0,
                    cgroups: [0; KEPT_CGROUPS],
                };
            }
        }
    } else {
        // SAFETY: non-null storage of this socket; `direction` indexes the array.
        let stored = unsafe { &raw mut (*storage).by_direction[direction as usize] };
        // SAFETY: storage of this socket, valid for the program's run, read and written
        // through the pointer only (another CPU may run a program of the socket at once).
        let (found, stored_generation) = unsafe { ((*stored).found, (*stored).generation) };
        if found != 0 && stored_generation == generation {
            // SAFETY: as above.
            return unsafe { read_found(stored) };
        }
        stored
    };
    let mut levels = 0u32;
    let mut kept = 0usize;
    let mut level = 1u32;
    while level <= MAX_CGROUP_DEPTH {
        let Some(cgroup_id) = ancestor(skb, level) else {
            break;
        };
        if rule(cgroup_id, direction).is_some() {
            levels |= 1 << (level - 1);
            if kept < KEPT_CGROUPS {
                // SAFETY: as below.
                unsafe { (*stored).cgroups[kept] = cgroup_id };
                kept += 1;
            }
        }
        level += 1;
    }
    // The namespace's rule, below the cgroups'.
    let netns = netns_scope_of(skb);
    if rule(netns, direction).is_some() {
        levels |= NETNS_BIT;
        if kept < KEPT_CGROUPS {
            // SAFETY: as below.
            unsafe { (*stored).cgroups[kept] = netns };
        }
    }
    // SAFETY: the socket's storage as above, or this CPU's scratch entry. Two CPUs finding a
    // socket's rules at once write the same thing; a packet that reads halfway through a
    // write is charged as at the generation before, or to a rule of another of its levels.
    unsafe {
        (*stored).levels = levels;
        (*stored).generation = generation;
        (*stored).found = 1;
        // Read back, not used as found: a value read from a map is unknown to the verifier,
        // which would otherwise follow each set of levels the walk can find, 2^16 of them,
        // as a path of its own through the rest of the program.
        read_found(stored)
    }
}

/// The rules kept at `stored`.
///
/// # Safety
/// `stored` points at a map value valid for the program's run.
#[inline(always)]
unsafe fn read_found(stored: *const RuleLevels) -> Found {
    // SAFETY: the caller's.
    unsafe {
        Found {
            levels: ptr::read_volatile(&raw const (*stored).levels),
            cgroups: ptr::read_volatile(&raw const (*stored).cgroups),
        }
    }
}

/// The lowest level in a non-empty set of levels.
#[inline(always)]
fn lowest_level(levels: u32) -> u32 {
    levels.trailing_zeros() + 1
}

/// One packet's charge of its rules: in line when there are at most [`INLINE_RULES`], else
/// all from a `bpf_loop` callback ([`charge_round`]), which the verifier checks as one body
/// rather than once per rule and path. Unrolled over 16 levels, the programs came near the
/// verifier's limit; through the loop, each rule costs a call (about 20 ns). The loop starts
/// from the walk's first state, never after rules charged in line: the verifier would check it
/// again for each way those could have gone.
struct Walk<'a> {
    skb: *mut __sk_buff,
    flow: flows::Sharing<'a>,
    now: u64,
    bytes: u64,
    /// The levels whose rules are still to charge.
    left: u32,
    /// The levels whose rules took the packet.
    charged: u32,
    /// The cgroup whose rule refused the packet; 0 while none has.
    refused: u64,
    /// The deepest rule met: an ingress flow's queue.
    deepest: u64,
}

/// Rules charged in line, each a copy of the charge for the verifier to check; 4 cover the
/// usual cases (Kubernetes limits a pod's cgroup and maybe its containers', systemd a slice
/// and a service).
const INLINE_RULES: usize = KEPT_CGROUPS;

/// Whether `levels` holds more than [`INLINE_RULES`].
#[inline(always)]
fn more_than_inline(levels: u32) -> bool {
    let mut rest = levels;
    let mut round = 0;
    while round < INLINE_RULES {
        rest &= rest.wrapping_sub(1);
        round += 1;
    }
    rest != 0
}

/// Charges the (at most [`INLINE_RULES`]) rules in line, their cgroups as kept.
#[inline(always)]
fn charge_inline<const INGRESS: bool>(walk: &mut Walk, cgroups: &[u64; KEPT_CGROUPS]) {
    let mut round = 0;
    while round < INLINE_RULES {
        if walk.left == 0 {
            return;
        }
        let bit = take_lowest(&mut walk.left);
        if !charge_cgroup::<INGRESS>(walk, bit, cgroups[round]) {
            return;
        }
        round += 1;
    }
}

/// The loop's context: the walk, and the cgroups kept for its first rounds.
struct Deep<'a> {
    walk: Walk<'a>,
    cgroups: [u64; KEPT_CGROUPS],
}

/// Round `index` of `bpf_loop`: 1 stops the loop.
extern "C" fn charge_round<const INGRESS: bool>(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the context given to it, which lives on the program's stack, and
    // nothing else uses it while the loop runs.
    let deep = unsafe { &mut *context.cast::<Deep>() };
    let walk = &mut deep.walk;
    if walk.left == 0 {
        return 1;
    }
    let level = lowest_level(walk.left);
    let bit = take_lowest(&mut walk.left);
    // Past the kept cgroups, the loop asks for each.
    let cgroup_id = match deep.cgroups.get(index as usize) {
        Some(&cgroup_id) => cgroup_id,
        // Both asked for and one picked without a jump: a branch to one helper or the other
        // made the verifier follow the loop's rounds twice over, doubling the program (and
        // the context has no room left for the namespace on the stack).
        None => pick(
            level == NETNS_LEVEL,
            netns_scope_of(walk.skb),
            ancestor(walk.skb, level).unwrap_or(0),
        ),
    };
    if charge_cgroup::<INGRESS>(walk, bit, cgroup_id) {
        0
    } else {
        1
    }
}

/// `yes` if `condition`, else `no`, computed without a jump.
#[inline(always)]
fn pick(condition: bool, yes: u64, no: u64) -> u64 {
    let mask = u64::from(condition).wrapping_neg();
    no ^ ((no ^ yes) & mask)
}

/// Takes the lowest bit out of `levels`, and returns it.
#[inline(always)]
fn take_lowest(levels: &mut u32) -> u32 {
    let bit = *levels & levels.wrapping_neg();
    *levels &= !bit;
    bit
}

/// Charges the rule of `cgroup_id`, at the level `bit` stands for. False when the walk is over:
/// at a refusal.
#[inline(always)]
fn charge_cgroup<const INGRESS: bool>(walk: &mut Walk, bit: u32, cgroup_id: u64) -> bool {
    let direction = if INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    // A rule removed since the levels were found: the next packet finds them again.
    let Some(rule) = rule(cgroup_id, direction) else {
        return true;
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
    walk.charged |= bit;
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
/// runs for (in process context: the one connecting or listening) and over the namespace with
/// cookie `netns_cookie`; 0 when none covers it. A namespace rule that limits only some peers
/// is left out: the clamp would hold every connection's window, the unlimited ones' too.
#[inline(always)]
pub(crate) fn current_task_ingress_rate(netns_cookie: u64) -> u64 {
    let mut smallest = match rule(netns_scope(netns_cookie), Direction::Ingress) {
        Some(rule) if rule.flags() == 0 => rule.rate(),
        _ => 0,
    };
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

/// The bit of a socket's levels that stands for its network namespace's rule.
const NETNS_BIT: u32 = 1 << (NETNS_LEVEL - 1);

/// The scope of the rule at `level` of a packet's socket: a cgroup ancestor, or at
/// [`NETNS_LEVEL`] its network namespace.
#[inline(always)]
fn scope_at(skb: *mut __sk_buff, level: u32) -> Option<u64> {
    if level == NETNS_LEVEL {
        Some(netns_scope_of(skb))
    } else {
        ancestor(skb, level)
    }
}

/// The scope of the rule over every socket of the packet's socket's network namespace.
#[inline(always)]
fn netns_scope_of(skb: *mut __sk_buff) -> u64 {
    // SAFETY: the program's own context; at the cgroup hooks the helper answers for the
    // socket's namespace.
    netns_scope(unsafe { bpf_get_netns_cookie(skb.cast()) })
}

/// Whether the packet's namespace rule charges it: yes unless the rule limits only some peers
/// (`RULE_*_SUBNETS`) and this packet's peer (its destination at egress, its source at
/// ingress) is not one of them. Asked per packet: a UDP socket's peer changes from one to the
/// next.
#[inline(always)]
fn netns_rule_covers(ctx: &SkBuffContext, direction: Direction) -> bool {
    let scope = netns_scope_of(ctx.skb.skb);
    let Some(rule) = rule(scope, direction) else {
        return true;
    };
    let flags = rule.flags();
    if flags & (RULE_SHAPED_SUBNETS | RULE_UNSHAPED_SUBNETS) == 0 {
        return true;
    }
    let Some(address) = peer_address(ctx, direction) else {
        // Neither IPv4 nor IPv6: charged, as every packet of the namespace is by default.
        return true;
    };
    let listed = REIN_SUBNETS
        .get(Key::new(SubnetKey::BITS, SubnetKey::new(scope, address)))
        .is_some();
    if flags & RULE_SHAPED_SUBNETS != 0 {
        listed
    } else {
        !listed
    }
}

/// The packet's peer address as IPv6 (IPv4 v4-mapped): its destination at egress, its source
/// at ingress (cgroup_skb sees the packet from its IP header on).
#[inline(always)]
fn peer_address(ctx: &SkBuffContext, direction: Direction) -> Option<[u8; 16]> {
    let first: u8 = ctx.load(0).ok()?;
    let mut address = [0u8; 16];
    match first >> 4 {
        4 => {
            let offset = match direction {
                Direction::Egress => 16,
                Direction::Ingress => 12,
            };
            let v4: [u8; 4] = ctx.load(offset).ok()?;
            address[10] = 0xff;
            address[11] = 0xff;
            address[12..].copy_from_slice(&v4);
        }
        6 => {
            let offset = match direction {
                Direction::Egress => 24,
                Direction::Ingress => 8,
            };
            address = ctx.load(offset).ok()?;
        }
        _ => return None,
    }
    Some(address)
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

/// The rule of `cgroup_id` in `direction`, if it has one: for a member of a shared limit, its
/// group's rule, whose bucket and counts every member charges. One hop only, never a loop: a
/// group's rule is never a member's (userspace writes no other), and a member pointing at a
/// member would only charge that member's unused bucket.
#[inline(always)]
pub(crate) fn rule(cgroup_id: u64, direction: Direction) -> Option<RuleRef> {
    let own = REIN_RULES.get_ptr_mut(RuleKey::new(cgroup_id, direction))?;
    // SAFETY: a map value, valid for the program's run; userspace writes `action` and `rate`
    // only when it writes the whole rule.
    let (action, group) = unsafe { ((*own).action, (*own).rate) };
    if action != Action::Member as u32 {
        return Some(RuleRef(own));
    }
    let group = REIN_RULES.get_ptr_mut(RuleKey::new(group, direction))?;
    Some(RuleRef(group))
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

    /// The rule's `RULE_*` flags.
    #[inline(always)]
    fn flags(self) -> u32 {
        // SAFETY: as in `rate`.
        unsafe { (*self.0).flags }
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
