//! The interface rules: tc programs for ingress and egress and an XDP program for ingress. Each
//! parses the packet's addresses, protocol and destination port, finds the most specific rule
//! for them on its interface and direction (`rein_common::net`), and passes the packet if the
//! rule's token bucket or window has room.
//!
//! Packets the parser does not understand (not IP, truncated, malformed) pass untouched; so
//! does everything no rule matches.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_loop},
    macros::{classifier, map, xdp},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TcContext, XdpContext},
};
use rein_common::{
    Bucket, Counters, Direction,
    bucket::MAX_CHARGED_BYTES,
    net::{
        ALGORITHM_FIXED_WINDOW, ALGORITHM_TOKEN_BUCKET, FLAG_CONNECTIONS, FLAG_PACKETS,
        FLAG_PER_SOURCE, FLAG_SKETCH, HOOK_XDP, KIND_CONNECTIONS, KIND_TRAFFIC, MAX_ADMITTED_SYNS,
        MAX_HEAVY_SOURCES, MAX_NET_RULES, MAX_TRACKED_SOURCES, NetRule, PORT_ANY, PROTOCOL_ANY,
        PairKey, PrefixKey, RuleMatch, SCOPE_BITS, SHAPE_DESTINATION, SHAPE_PAIR, SHAPE_SOURCE,
        Scope, SourceKey, SourceState, SynKey, shape_bit,
    },
    window::{WindowKind, WindowState, WindowVerdict, cost_units},
};
use rein_ebpf::{
    atomic::{CountersRef, Word},
    parse::frame::Packet,
    take,
};

use crate::{sketch::charge_sketch, trace};

// Rules and prefixes a host may hold (userspace sizes the tables at most this large): flat
// lookups keep the cost independent of the count.
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

/// One entry: the union of every rule's `shape_bit`s.
#[map(name = "REIN_NET_SHAPES")]
static REIN_NET_SHAPES: Array<u32> = Array::with_max_entries(1, 0);

/// One entry: the union of the new-connection rules' `shape_bit`s (none until one is added).
#[map(name = "REIN_NET_SYN_SHAPES")]
static REIN_NET_SYN_SHAPES: Array<u32> = Array::with_max_entries(1, 0);

/// Connection attempts a new-connection rule admitted; the value is unused.
#[map(name = "REIN_NET_SYN_ADMITTED")]
static REIN_NET_SYN_ADMITTED: LruHashMap<SynKey, u8> =
    LruHashMap::with_max_entries(MAX_ADMITTED_SYNS, 0);

/// Where a SYN's `SynKey` is built (one entry per CPU).
#[map(name = "REIN_NET_SYN_SCRATCH")]
static REIN_NET_SYN_SCRATCH: PerCpuArray<SynKey> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REIN_NET_PER_SOURCE")]
static REIN_NET_PER_SOURCE: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(MAX_TRACKED_SOURCES, 0);

#[map(name = "REIN_NET_HEAVY")]
pub static REIN_NET_HEAVY: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(MAX_HEAVY_SOURCES, 0);

#[classifier]
pub fn rein_net_tc_ingress(ctx: TcContext) -> i32 {
    match try_tc(&ctx, Direction::Ingress) {
        Ok(action) | Err(action) => action,
    }
}

#[classifier]
pub fn rein_net_tc_egress(ctx: TcContext) -> i32 {
    match try_tc(&ctx, Direction::Egress) {
        Ok(action) | Err(action) => action,
    }
}

#[xdp]
pub fn rein_net_xdp(ctx: XdpContext) -> u32 {
    match try_xdp(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Err: a frame the parser does not understand, which passes untouched.
#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> Result<u32, u32> {
    // SAFETY: the context is valid for the program's run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let packet = Packet::parse(ctx.data(), ctx.data_end()).ok_or(xdp_action::XDP_PASS)?;
    // XDP sees single frames: one packet, charged what arrived (the frame less its L2
    // header), never the length its IP header claims, which the sender writes. The program
    // is not loaded for multi-buffer frames (no xdp.frags), so the linear data is the frame.
    let frame = (ctx.data_end() - ctx.data()) as u64;
    let amount = Amount {
        bytes: frame.saturating_sub(packet.l2_bytes),
        packets: 1,
    };
    Ok(if admit(&packet, ifindex, HOOK_XDP, amount) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    })
}

/// Baselines for the benchmark: programs that pass everything, so that the cost of running a
/// program at all can be told from the cost of rein's lookups. Never attached by rein.
#[classifier]
pub fn rein_net_pass_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[xdp]
pub fn rein_net_pass_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Err: a frame the parser does not understand, which passes untouched.
#[inline(always)]
fn try_tc(ctx: &TcContext, direction: Direction) -> Result<i32, i32> {
    // SAFETY: the context is valid for the program's run.
    let (ifindex, len, segs) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).ifindex, (*skb).len, (*skb).gso_segs)
    };
    let packet = Packet::parse(ctx.data(), ctx.data_end()).ok_or(TC_ACT_OK)?;
    // What arrived (skb->len, never the length the IP header claims), less the L2 header. A
    // GSO packet stands for `segs` packets, each with its own headers (see the cgroup
    // programs' `rein_ebpf::parse::skb`); skb->len counts them once.
    let segs = if segs == 0 { 1 } else { segs as u64 };
    let ip_len = (len as u64).saturating_sub(packet.l2_bytes);
    // Clamped where the charge clamps anyway (no packet comes near 1 MiB): the bound is the
    // same on every parsing path, whereas unclamped the verifier carried each path's own range
    // of header lengths through the rule lookups and charges and could not merge them (600k
    // verified instructions against 250k).
    let amount = Amount {
        bytes: (ip_len + (segs - 1) * packet.header_bytes).min(MAX_CHARGED_BYTES),
        packets: segs,
    };
    Ok(if admit(&packet, ifindex, direction as u8, amount) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    })
}

/// What a packet is charged: IP bytes, or packets (a GSO packet is several).
#[derive(Clone, Copy)]
pub struct Amount {
    pub bytes: u64,
    pub packets: u64,
}

/// Finds the packet's rule and charges it; true when the packet may pass. `hook` is a
/// `Direction`, or `HOOK_XDP`.
#[inline(always)]
fn admit(packet: &Packet, ifindex: u32, hook: u8, amount: Amount) -> bool {
    // Every other packet pays this one branch.
    if packet.opens_connection() && !admit_connection(packet, ifindex, hook, amount) {
        return false;
    }
    let Some(found) = best_match(packet, ifindex, hook, KIND_TRAFFIC, traffic_shapes()) else {
        return true;
    };
    charge_rule(packet, found, hook, amount)
}

/// A SYN against the new-connection rules: false when its rule refuses the attempt. A
/// retransmitted SYN of an admitted attempt passes without a charge (it is the same attempt);
/// one of a refused attempt is a new attempt.
#[inline(always)]
fn admit_connection(packet: &Packet, ifindex: u32, hook: u8, amount: Amount) -> bool {
    // Without the map, or before any rule: no lookup.
    let shapes = REIN_NET_SYN_SHAPES.get(0).copied().unwrap_or(0);
    if shapes == 0 {
        return true;
    }
    let Some(found) = best_match(packet, ifindex, hook, KIND_CONNECTIONS, shapes) else {
        return true;
    };
    // The key is built in a per-CPU scratch entry: the programs' stack, shared with the
    // sketch walk's callback, has no room for it.
    let Some(attempt) = REIN_NET_SYN_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's scratch entry, used by this program run alone (no preemption between
    // the writes and the lookups below).
    let attempt = unsafe {
        *attempt = SynKey {
            rule: found.rule,
            family: packet.family,
            _pad: 0,
            source_port: packet.source_port,
            source: packet.source,
            destination: packet.destination,
            port: packet.port,
            _pad2: 0,
            isn: packet.sequence,
        };
        &*attempt
    };
    // SAFETY: a plain-data value, only tested for presence.
    if unsafe { REIN_NET_SYN_ADMITTED.get(attempt) }.is_some() {
        return true;
    }
    let passed = charge_rule(packet, found, hook, amount);
    if passed {
        let _ = REIN_NET_SYN_ADMITTED.insert(attempt, 0u8, 0);
    }
    passed
}

/// The traffic rules' lookups; without the map (never written), every lookup is made.
#[inline(always)]
fn traffic_shapes() -> u32 {
    REIN_NET_SHAPES.get(0).copied().unwrap_or(u32::MAX)
}

/// Charges the packet to the rule `found` leads to; true when it may pass.
#[inline(always)]
fn charge_rule(packet: &Packet, found: RuleMatch, hook: u8, amount: Amount) -> bool {
    let Some(rule) = rule(found.rule) else {
        return true;
    };
    let config = rule.config();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let passed = if config.flags & FLAG_PER_SOURCE == 0 {
        charge(rule, &config, now, amount)
    } else {
        let key = SourceKey::new(found.rule, packet.family, packet.source);
        if config.flags & FLAG_SKETCH == 0 {
            charge_source(&config, &key, now, amount)
        } else {
            charge_sketch(&config, &key, now, amount)
        }
    };
    if let Some(counters) = counters(found.rule) {
        count(counters, passed, amount);
    }
    if !passed {
        trace::refusal(packet, found.rule, hook, amount.bytes, now);
    }
    passed
}

/// The most specific rule of `kind` among the longest source prefix, the longest destination
/// prefix and the exact pair, for each way a rule may name the packet's protocol and port.
/// The four ways are walked with `bpf_loop`, whose callback the verifier checks once: a SYN
/// makes this search twice (new-connection rules, then traffic rules), which inline would
/// double the paths the verifier walks. The walk and its keys live in a per-CPU scratch
/// entry, not on the stack, which the programs' other frames fill.
#[inline(always)]
fn best_match(
    packet: &Packet,
    ifindex: u32,
    direction: u8,
    kind: u8,
    shapes: u32,
) -> Option<RuleMatch> {
    let walk = REIN_NET_MATCH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry, used by this program run alone (XDP and tc run
    // without migration or preemption between these writes and the reads below).
    unsafe {
        (*walk).ifindex = ifindex;
        (*walk).address_bits = packet.address_bits;
        (*walk).shapes = shapes;
        (*walk).port = packet.port;
        (*walk).direction = direction;
        (*walk).family = packet.family;
        (*walk).protocol = packet.protocol;
        (*walk).kind = kind;
        (*walk).found = 0;
        (*walk).source = packet.source;
        (*walk).destination = packet.destination;
        bpf_loop(4, match_variant as *mut c_void, core::ptr::null_mut(), 0);
        ((*walk).found != 0).then_some((*walk).best)
    }
}

/// What the lookup callback needs, the keys it builds, and the best match so far.
#[repr(C)]
pub struct MatchWalk {
    ifindex: u32,
    address_bits: u32,
    shapes: u32,
    port: u16,
    direction: u8,
    family: u8,
    protocol: u8,
    kind: u8,
    found: u8,
    _pad: u8,
    best: RuleMatch,
    source: [u8; 16],
    destination: [u8; 16],
    prefix: Key<PrefixKey>,
    pair: PairKey,
}

/// Where [`best_match`] walks (one entry per CPU).
#[map(name = "REIN_NET_MATCH_SCRATCH")]
static REIN_NET_MATCH_SCRATCH: PerCpuArray<MatchWalk> = PerCpuArray::with_max_entries(1, 0);

/// One way of naming protocol and port: `variant` 0 to 3 is (protocol, port), (any, port),
/// (protocol, any), (any, any); the port only for a packet that has one.
extern "C" fn match_variant(variant: u32, _ctx: *mut c_void) -> i64 {
    let Some(walk) = REIN_NET_MATCH_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch entry, which `best_match` filled for this walk.
    let walk = unsafe { &mut *walk };
    let names_port = variant < 2;
    if names_port && walk.port == PORT_ANY {
        return 0;
    }
    let names_protocol = variant.is_multiple_of(2);
    let protocol = if names_protocol {
        walk.protocol
    } else {
        PROTOCOL_ANY
    };
    let port = if names_port { walk.port } else { PORT_ANY };
    let scope =
        Scope::new(walk.ifindex, walk.direction, walk.family, protocol, port).of_kind(walk.kind);
    let bits = SCOPE_BITS + walk.address_bits;
    let shapes = walk.shapes;
    let wanted = |map| shapes & shape_bit(names_port, names_protocol, map) != 0;
    if wanted(SHAPE_DESTINATION) {
        walk.prefix = Key::new(
            bits,
            PrefixKey {
                scope,
                addr: walk.destination,
            },
        );
        if let Some(found) = REIN_NET_DESTINATIONS.get(&walk.prefix) {
            walk.offer(*found);
        }
    }
    if wanted(SHAPE_SOURCE) {
        walk.prefix = Key::new(
            bits,
            PrefixKey {
                scope,
                addr: walk.source,
            },
        );
        if let Some(found) = REIN_NET_SOURCES.get(&walk.prefix) {
            walk.offer(*found);
        }
    }
    if wanted(SHAPE_PAIR) {
        walk.pair = PairKey {
            scope,
            source: walk.source,
            destination: walk.destination,
        };
        // SAFETY: a plain-data key; the value is copied out at once.
        // By reference: by value the key would be copied onto the stack this scratch spares.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let found = unsafe { REIN_NET_PAIRS.get(&walk.pair) };
        if let Some(found) = found {
            walk.offer(*found);
        }
    }
    0
}

impl MatchWalk {
    #[inline(always)]
    fn offer(&mut self, found: RuleMatch) {
        if self.found == 0 || found.specificity > self.best.specificity {
            self.best = found;
            self.found = 1;
        }
    }
}

/// Rule `id`, if it exists.
#[inline(always)]
fn rule(id: u32) -> Option<RuleRef> {
    REIN_NET_RULES.get_ptr_mut(id).map(RuleRef)
}

/// A rule in the map, which every CPU reads and updates at once: its configuration is read
/// field by field, its live state changed through atomics only, and no reference to it is
/// ever made.
#[derive(Clone, Copy)]
struct RuleRef(*mut NetRule);

/// What userspace set for a rule (it writes a rule whole), apart from its live state.
#[derive(Clone, Copy)]
pub struct Config {
    pub algorithm: u32,
    pub flags: u32,
    /// `tat` left 0: the live one is `RuleRef::tat`.
    pub bucket: Bucket,
    pub window_ns: u64,
    pub capacity: u32,
    pub unit: u32,
    pub sketch_offset: u32,
    pub sketch_width: u32,
    pub sketch_depth: u32,
}

impl RuleRef {
    #[inline(always)]
    fn config(self) -> Config {
        let rule = self.0;
        // SAFETY: a map value, valid for the program's run (RCU); these fields change only when
        // userspace writes the whole rule.
        unsafe {
            Config {
                algorithm: (*rule).algorithm,
                flags: (*rule).flags,
                bucket: Bucket {
                    ns_per_byte: (*rule).bucket.ns_per_byte,
                    burst_ns: (*rule).bucket.burst_ns,
                    tat: 0,
                },
                window_ns: (*rule).window_ns,
                capacity: (*rule).capacity,
                unit: (*rule).unit,
                sketch_offset: (*rule).sketch_offset,
                sketch_width: (*rule).sketch_width,
                sketch_depth: (*rule).sketch_depth,
            }
        }
    }

    #[inline(always)]
    fn tat(self) -> Word {
        // SAFETY: a map value valid for the program's run; changed by atomics only.
        unsafe { Word::new(&raw mut (*self.0).bucket.tat) }
    }

    #[inline(always)]
    fn window(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(&raw mut (*self.0).window.0) }
    }

    #[inline(always)]
    fn last_pass(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(&raw mut (*self.0).last_pass_ns) }
    }
}

#[inline(always)]
fn counters(id: u32) -> Option<CountersRef> {
    let ptr = REIN_NET_COUNTERS.get_ptr_mut(id)?;
    // SAFETY: a per-CPU map value valid for the program's run; changed by atomics only.
    Some(unsafe { CountersRef::new(ptr) })
}

/// What a packet costs a rule: bytes, or packets with `FLAG_PACKETS`.
#[inline(always)]
pub fn quantity(rule: &Config, amount: Amount) -> u64 {
    if rule.flags & FLAG_PACKETS != 0 {
        amount.packets
    } else {
        amount.bytes
    }
}

/// What `quantity` costs a rule's token bucket, in ns: a new-connection rule's SYN its raw
/// cost (one SYN per charge), any other rule's bytes or packets at its shifted cost.
#[inline(always)]
pub fn bucket_cost(rule: &Config, quantity: u64) -> u64 {
    if rule.flags & FLAG_CONNECTIONS != 0 {
        rule.bucket.ns_per_byte
    } else {
        rule.bucket.cost_ns(quantity)
    }
}

#[inline(always)]
fn window_kind(rule: &Config) -> WindowKind {
    if rule.algorithm == ALGORITHM_FIXED_WINDOW {
        WindowKind::Fixed
    } else {
        WindowKind::Sliding
    }
}

/// Takes the packet from the rule's bucket or window; false when it has no room.
#[inline(always)]
fn charge(rule: RuleRef, config: &Config, now: u64, amount: Amount) -> bool {
    let quantity = quantity(config, amount);
    if config.algorithm == ALGORITHM_TOKEN_BUCKET {
        let cost = bucket_cost(config, quantity);
        return take::take(rule.tat(), now, cost, config.bucket.burst_ns);
    }
    take_window(
        rule.window(),
        rule.last_pass(),
        window_kind(config),
        now,
        config.window_ns,
        config.capacity,
        cost_units(quantity, config.unit),
    )
}

/// Takes `cost` units from a window state shared by all CPUs; false when it has no room.
#[inline(always)]
fn take_window(
    field: Word,
    last_pass: Word,
    kind: WindowKind,
    now: u64,
    window_ns: u64,
    capacity: u32,
    cost: u32,
) -> bool {
    let last_pass_ns = last_pass.load();
    let mut state = field.load();
    let mut attempt = 0;
    while attempt < 8 {
        match WindowState(state).decide(kind, now, last_pass_ns, window_ns, capacity, cost) {
            WindowVerdict::Refuse => return false,
            WindowVerdict::Pass { state: next } => match field.compare_exchange(state, next.0) {
                Ok(()) => {
                    // Only tells a long idle period apart: a racy store is enough.
                    last_pass.store(now);
                    return true;
                }
                Err(found) => state = found,
            },
        }
        attempt += 1;
    }
    false
}

/// Exact per-source mode: the source's own bucket or windows, with the rule's parameters.
#[inline(always)]
fn charge_source(rule: &Config, key: &SourceKey, now: u64, amount: Amount) -> bool {
    let Some(source) = source_state(&REIN_NET_PER_SOURCE, key) else {
        // The table refused a new entry: count the packet against nothing rather than drop it.
        return true;
    };
    let quantity = quantity(rule, amount);
    let passed = if rule.algorithm == ALGORITHM_TOKEN_BUCKET {
        take::take(
            source.state(),
            now,
            bucket_cost(rule, quantity),
            rule.bucket.burst_ns,
        )
    } else {
        take_window(
            source.state(),
            source.last_pass(),
            window_kind(rule),
            now,
            rule.window_ns,
            rule.capacity,
            cost_units(quantity, rule.unit),
        )
    };
    count(source.counters(), passed, amount);
    passed
}

/// A source's entry in `map`, made (empty: a full bucket, empty windows) if it has none.
#[inline(always)]
pub fn source_state(
    map: &'static LruHashMap<SourceKey, SourceState>,
    key: &SourceKey,
) -> Option<SourceRef> {
    if let Some(ptr) = map.get_ptr_mut(key) {
        return Some(SourceRef(ptr));
    }
    // BPF_NOEXIST: two CPUs meeting a new source at once keep the first entry.
    let _ = map.insert(key, SourceState::default(), 1);
    map.get_ptr_mut(key).map(SourceRef)
}

/// A source's entry, which every CPU updates at once: through atomics, never a reference.
#[derive(Clone, Copy)]
pub struct SourceRef(*mut SourceState);

impl SourceRef {
    /// Its bucket's `tat` or its windows' counts.
    #[inline(always)]
    pub fn state(self) -> Word {
        // SAFETY: a map value valid for the program's run (RCU); changed by atomics only.
        unsafe { Word::new(&raw mut (*self.0).state) }
    }

    #[inline(always)]
    fn last_pass(self) -> Word {
        // SAFETY: as in `state`.
        unsafe { Word::new(&raw mut (*self.0).last_pass_ns) }
    }

    #[inline(always)]
    pub fn counters(self) -> CountersRef {
        // SAFETY: as in `state`.
        unsafe { CountersRef::new(&raw mut (*self.0).counters) }
    }
}

/// Adds a packet to a rule's or a source's counters.
#[inline(always)]
pub fn count(counters: CountersRef, passed: bool, amount: Amount) {
    counters.add(passed, amount.packets, amount.bytes);
}
