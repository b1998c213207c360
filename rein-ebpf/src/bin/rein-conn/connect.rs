//! The connect programs. A connection is charged to one rule per scope the caller is in (the
//! most specific of that scope for its destination), most specific scope first: its cgroups
//! deepest first, its network namespace, every caller. Each rule takes its token at once; when
//! one has none, the tokens already taken go back and the connection is refused. No rule: the
//! connection goes through untouched.
//!
//! Refused is `connect()` failing at once with ECONNREFUSED, what a peer refusing it would
//! say, so clients fail fast and their retry logic applies (without `bpf_set_retval` a refused
//! connect is EPERM, which clients treat as a local configuration error).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_for_each_map_elem, bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie,
            bpf_loop, bpf_map_delete_elem, bpf_set_retval,
        },
    },
    macros::{cgroup_sock_addr, map},
    maps::{
        Array, HashMap, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::SockAddrContext,
};
use rein_common::{
    conn::{
        self, Attempt, CONN_FLAG_PER_CALLER, CONN_MAX_CGROUP_LEVEL, CONN_SCOPE_ALL,
        CONN_SCOPE_BITS, CONN_SCOPE_CGROUP, CONN_SCOPE_NETNS, CONN_SWAP_ATTEMPTS, CallerKey,
        CallerState, ConnBucket, ConnCounters, ConnKey, ConnMatch, ConnRule, ConnScope, ConnShapes,
        MAX_CONN_CALLERS, MAX_CONN_RULES, conn_variant_bit,
    },
    net::{ADDR_BYTES, FAMILY_IPV4, FAMILY_IPV6, PORT_ANY, PROTOCOL_ANY},
};
use rein_ebpf::atomic::Word;

#[map(name = "REIN_CONN_RULES")]
static REIN_CONN_RULES: HashMap<u32, ConnRule> =
    HashMap::with_max_entries(MAX_CONN_RULES, BPF_F_NO_PREALLOC);

#[map(name = "REIN_CONN_COUNTERS")]
static REIN_CONN_COUNTERS: PerCpuHashMap<u32, ConnCounters> =
    PerCpuHashMap::with_max_entries(MAX_CONN_RULES, BPF_F_NO_PREALLOC);

#[map(name = "REIN_CONN_DESTINATIONS")]
static REIN_CONN_DESTINATIONS: LpmTrie<ConnKey, ConnMatch> =
    LpmTrie::with_max_entries(MAX_CONN_RULES, BPF_F_NO_PREALLOC);

/// One entry: which lookups to make.
#[map(name = "REIN_CONN_SHAPES")]
static REIN_CONN_SHAPES: Array<ConnShapes> = Array::with_max_entries(1, 0);

#[map(name = "REIN_CONN_CALLERS")]
static REIN_CONN_CALLERS: HashMap<CallerKey, CallerState> =
    HashMap::with_max_entries(MAX_CONN_CALLERS, BPF_F_NO_PREALLOC);

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;
const E2BIG: i32 = 7;
/// A cgroup scope per level, the network namespace, every caller.
const MAX_SCOPES: usize = CONN_MAX_CGROUP_LEVEL as usize + 3;
/// The word a caller's bucket holds while the reclaim deletes it: both forms refuse it, so a
/// connection racing the deletion is refused (fail-closed), never let through for free.
const TOMBSTONE: u64 = u64::MAX;
/// Variant bits of the cgroup scope kind: four per kind.
const CGROUP_VARIANTS: u32 = 0xf << (CONN_SCOPE_CGROUP as u32 * 4);
const NETNS_VARIANTS: u32 = 0xf << (CONN_SCOPE_NETNS as u32 * 4);

/// Where a connection goes, as the trie keys name it.
#[repr(C)]
pub struct Destination {
    pub family: u8,
    pub protocol: u8,
    /// Host order; 0 when the connect names none.
    pub port: u16,
    pub addr: [u8; ADDR_BYTES],
    address_bits: u32,
}

#[cgroup_sock_addr(connect4)]
pub fn rein_conn_connect4(ctx: SockAddrContext) -> i32 {
    let sock = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run; each field is read whole, as the
    // verifier allows.
    let (ip, port, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sock).user_ip4),
            core::ptr::read_volatile(&raw const (*sock).user_port),
            core::ptr::read_volatile(&raw const (*sock).protocol),
        )
    };
    admit(&ctx, ipv4(ip, port, protocol))
}

#[cgroup_sock_addr(connect6)]
pub fn rein_conn_connect6(ctx: SockAddrContext) -> i32 {
    let sock = ctx.sock_addr;
    // SAFETY: as in connect4.
    let (words, port, protocol) = unsafe {
        (
            [
                core::ptr::read_volatile(&raw const (*sock).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sock).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sock).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sock).user_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*sock).user_port),
            core::ptr::read_volatile(&raw const (*sock).protocol),
        )
    };
    // ::ffff:a.b.c.d goes to a.b.c.d over IPv4: the rules for a.b.c.d hold.
    let mapped = words[0] == 0 && words[1] == 0 && words[2] == u32::from_be(0xffff);
    let destination = if mapped {
        ipv4(words[3], port, protocol)
    } else {
        let mut addr = [0u8; ADDR_BYTES];
        for (i, word) in words.iter().enumerate() {
            // The words hold the address in network order, as memory does.
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        Destination {
            family: FAMILY_IPV6,
            protocol: protocol as u8,
            port: u16::from_be(port as u16),
            addr,
            address_bits: 128,
        }
    };
    admit(&ctx, destination)
}

/// `ip` and `port` as the context holds them: network order in memory.
#[inline(always)]
fn ipv4(ip: u32, port: u32, protocol: u32) -> Destination {
    let mut addr = [0u8; ADDR_BYTES];
    addr[..4].copy_from_slice(&ip.to_ne_bytes());
    Destination {
        family: FAMILY_IPV4,
        protocol: protocol as u8,
        port: u16::from_be(port as u16),
        addr,
        address_bits: 32,
    }
}

/// What the loops over the scopes share: the connection, and the rule of each scope (in
/// charging order, [`NO_RULE`] where a scope has none). The loops run in `bpf_loop` callbacks,
/// which the verifier walks about once each: written in line, 34 scopes of lookups and takes
/// are more paths than it walks (it gave up at a million instructions). Scope `i` is slot `i`
/// rather than the next free one: a count that grows by one per rule would be a new state for
/// the verifier at every iteration.
#[repr(C)]
struct Connection {
    destination: Destination,
    shapes: ConnShapes,
    netns: u64,
    now: u64,
    ids: [u32; MAX_SCOPES],
    /// Whether any scope has a rule.
    found: u32,
    /// The scope whose rule refused; `MAX_SCOPES` when none did.
    refused_at: u32,
    table_full: u32,
}

/// A scope without a rule for the connection.
const NO_RULE: u32 = u32::MAX;

#[inline(always)]
fn admit(ctx: &SockAddrContext, destination: Destination) -> i32 {
    // Without the map entry (never written), every lookup is made.
    let shapes = REIN_CONN_SHAPES.get(0).copied().unwrap_or(ConnShapes {
        variants: u32::MAX,
        cgroup_levels: u32::MAX,
    });
    if shapes.variants == 0 {
        return ALLOW;
    }
    let mut connection = Connection {
        destination,
        shapes,
        // SAFETY: the context is the program's own.
        netns: unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) },
        now: 0,
        ids: [NO_RULE; MAX_SCOPES],
        found: 0,
        refused_at: MAX_SCOPES as u32,
        table_full: 0,
    };
    run_loop(MAX_SCOPES as u32, find_rule as *mut c_void, &mut connection);
    if connection.found == 0 {
        return ALLOW;
    }
    // SAFETY: a helper without arguments.
    connection.now = unsafe { bpf_ktime_get_ns() };
    run_loop(
        MAX_SCOPES as u32,
        take_token as *mut c_void,
        &mut connection,
    );
    if connection.refused_at >= MAX_SCOPES as u32 {
        run_loop(
            MAX_SCOPES as u32,
            count_allowed as *mut c_void,
            &mut connection,
        );
        return ALLOW;
    }
    run_loop(
        connection.refused_at,
        give_back as *mut c_void,
        &mut connection,
    );
    let at = connection.refused_at as usize;
    if at < MAX_SCOPES {
        let (rule, table_full) = (connection.ids[at], connection.table_full != 0);
        count_refused(rule, connection.netns, table_full);
        crate::trace::refusal(
            &connection.destination,
            rule,
            connection.netns,
            table_full,
            connection.now,
        );
    }
    // SAFETY: a plain helper; connect4/connect6 may set their return value.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}

/// Calls `callback` with indexes 0..`count` and the connection, until it returns 1.
#[inline(always)]
fn run_loop(count: u32, callback: *mut c_void, connection: &mut Connection) {
    // SAFETY: the callback has the signature bpf_loop calls it with, and the connection
    // outlives the call.
    unsafe { bpf_loop(count, callback, (&raw mut *connection).cast(), 0) };
}

/// Scope `index` of the connection (cgroup levels deepest first, then the network namespace,
/// then every caller): its most specific rule goes into `ids`.
#[inline(never)]
extern "C" fn find_rule(index: u64, connection: *mut Connection) -> i64 {
    // SAFETY: bpf_loop passes the connection `admit` gave it, on its stack.
    let connection = unsafe { &mut *connection };
    let variants = connection.shapes.variants;
    let levels = MAX_SCOPES as u64 - 2;
    let found = if index < levels {
        let level = (levels - 1 - index) as u32;
        if variants & CGROUP_VARIANTS == 0 || connection.shapes.cgroup_levels & (1 << level) == 0 {
            return 0;
        }
        // SAFETY: a plain helper.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        // 0: the caller's cgroup is not that deep.
        if id == 0 {
            return 0;
        }
        best(CONN_SCOPE_CGROUP, id, &connection.destination, variants)
    } else if index == levels {
        if variants & NETNS_VARIANTS == 0 {
            return 0;
        }
        best(
            CONN_SCOPE_NETNS,
            connection.netns,
            &connection.destination,
            variants,
        )
    } else {
        best(CONN_SCOPE_ALL, 0, &connection.destination, variants)
    };
    if let Some(id) = found
        && let Some(slot) = connection.ids.get_mut(index as usize)
    {
        *slot = id;
        connection.found = 1;
    }
    0
}

/// Takes a token from rule `index`; on a refusal, notes where and stops the loop.
#[inline(never)]
extern "C" fn take_token(index: u64, connection: *mut Connection) -> i64 {
    // SAFETY: as in `find_rule`.
    let connection = unsafe { &mut *connection };
    let Some(&id) = connection.ids.get(index as usize) else {
        return 1;
    };
    if id == NO_RULE {
        return 0;
    }
    let table_full = match charge(id, connection.netns, connection.now) {
        Charge::Taken | Charge::NoRule => return 0,
        Charge::Refused => 0,
        Charge::TableFull => 1,
    };
    connection.refused_at = index as u32;
    connection.table_full = table_full;
    1
}

/// Gives back the token rule `index` took.
#[inline(never)]
extern "C" fn give_back(index: u64, connection: *mut Connection) -> i64 {
    // SAFETY: as in `find_rule`.
    let connection = unsafe { &*connection };
    let Some(&id) = connection.ids.get(index as usize) else {
        return 1;
    };
    if id == NO_RULE {
        return 0;
    }
    if let Some(rule) = RuleRef::get(id) {
        swap(
            id,
            rule.per_caller(),
            connection.netns,
            connection.now,
            true,
        );
    }
    0
}

/// Counts the connection as allowed on rule `index` (and its caller's entry).
#[inline(never)]
extern "C" fn count_allowed(index: u64, connection: *mut Connection) -> i64 {
    // SAFETY: as in `find_rule`.
    let connection = unsafe { &*connection };
    let Some(&id) = connection.ids.get(index as usize) else {
        return 1;
    };
    if id == NO_RULE {
        return 0;
    }
    if let Some(counters) = counters(id) {
        // SAFETY: a per-CPU map value valid for the program's run; changed by atomics only (a
        // softirq may interrupt a program on the same CPU).
        unsafe { Word::new(&raw mut (*counters).allowed) }.add(1);
    }
    let Some(rule) = RuleRef::get(id) else {
        return 0;
    };
    if rule.per_caller()
        && let Some(caller) = REIN_CONN_CALLERS.get_ptr_mut(CallerKey::new(id, connection.netns))
    {
        // SAFETY: a map value valid for the program's run; counters change by atomics only,
        // `last_ns` is a plain store (the last one wins).
        unsafe {
            Word::new(&raw mut (*caller).allowed).add(1);
            Word::new(&raw mut (*caller).last_ns).store(connection.now);
        }
    }
    0
}

/// The most specific rule of one scope for the destination: for each way a rule may name
/// protocol and port that some rule uses, the longest prefix.
#[inline(always)]
fn best(kind: u8, id: u64, destination: &Destination, variants: u32) -> Option<u32> {
    let mut best: Option<ConnMatch> = None;
    // (protocol, port), (any, port), (protocol, any), (any, any); the port only when the
    // connect names one.
    for variant in 0..4u32 {
        let names_port = variant < 2;
        let names_protocol = variant % 2 == 0;
        if names_port && destination.port == PORT_ANY {
            continue;
        }
        if variants & conn_variant_bit(kind, names_port, names_protocol) == 0 {
            continue;
        }
        let protocol = if names_protocol {
            destination.protocol
        } else {
            PROTOCOL_ANY
        };
        let port = if names_port {
            destination.port
        } else {
            PORT_ANY
        };
        let key = Key::new(
            CONN_SCOPE_BITS + destination.address_bits,
            ConnKey {
                scope: ConnScope::new(kind, id, destination.family, protocol, port),
                addr: destination.addr,
            },
        );
        if let Some(found) = REIN_CONN_DESTINATIONS.get(key) {
            let better = match best {
                Some(b) => found.specificity > b.specificity,
                None => true,
            };
            if better {
                best = Some(*found);
            }
        }
    }
    best.map(|found| found.rule)
}

enum Charge {
    Taken,
    Refused,
    /// A per-caller rule had no entry for the caller and the callers table no room for one.
    TableFull,
    /// Removed since the trie named it: it limits nothing.
    NoRule,
}

/// A rule in the map, which every CPU reads and updates at once: its limit is read field by
/// field, its state changed through atomics only, and no reference to it is ever made.
#[derive(Clone, Copy)]
struct RuleRef(*mut ConnRule);

impl RuleRef {
    #[inline(always)]
    fn get(id: u32) -> Option<Self> {
        REIN_CONN_RULES.get_ptr_mut(id).map(Self)
    }

    #[inline(always)]
    fn per_caller(self) -> bool {
        // SAFETY: a map value valid for the program's run (RCU); userspace writes it whole.
        unsafe { (*self.0).flags & CONN_FLAG_PER_CALLER != 0 }
    }

    #[inline(always)]
    fn bucket(self) -> ConnBucket {
        let rule = self.0;
        // SAFETY: as in `per_caller`.
        let limit = unsafe {
            ConnRule {
                form: (*rule).form,
                flags: 0,
                cost_ns: (*rule).cost_ns,
                burst_ns: (*rule).burst_ns,
                anchor_ns: (*rule).anchor_ns,
                fill_ns: (*rule).fill_ns,
                max_tokens: (*rule).max_tokens,
                tokens_per_fill: (*rule).tokens_per_fill,
                state: 0,
            }
        };
        ConnBucket::of(&limit)
    }

    #[inline(always)]
    fn state(self) -> Word {
        // SAFETY: a map value valid for the program's run; its state changes by atomics only.
        unsafe { Word::new(&raw mut (*self.0).state) }
    }
}

/// Takes one token from rule `id` (its shared bucket, or the caller's own).
#[inline(always)]
fn charge(id: u32, netns: u64, now: u64) -> Charge {
    let Some(rule) = RuleRef::get(id) else {
        return Charge::NoRule;
    };
    let per_caller = rule.per_caller();
    if per_caller && caller_entry(&CallerKey::new(id, netns), now).is_none() {
        return Charge::TableFull;
    }
    if swap(id, per_caller, netns, now, false) {
        Charge::Taken
    } else {
        Charge::Refused
    }
}

/// One take (or refund) from a bucket: up to [`CONN_SWAP_ATTEMPTS`] of
/// `rein_common::conn::attempt`, each deciding on the word it loads.
#[repr(C)]
struct Swap {
    id: u32,
    per_caller: u32,
    netns: u64,
    now: u64,
    refund: u32,
    done: u32,
}

/// Whether the take (or refund) of `id`'s bucket went through. The attempts run in a
/// `bpf_loop`: in line, the verifier walks every attempt's every branch for both forms and
/// both kinds of bucket, and gives up.
#[inline(always)]
fn swap(id: u32, per_caller: bool, netns: u64, now: u64, refund: bool) -> bool {
    let mut swap = Swap {
        id,
        per_caller: per_caller as u32,
        netns,
        now,
        refund: refund as u32,
        done: 0,
    };
    // SAFETY: the callback has the signature bpf_loop calls it with, and `swap` outlives the
    // call.
    unsafe {
        bpf_loop(
            CONN_SWAP_ATTEMPTS,
            swap_once as *mut c_void,
            (&raw mut swap).cast(),
            0,
        )
    };
    swap.done != 0
}

/// One attempt: 1 ends the loop (swapped, or refused, or the bucket is gone).
#[inline(never)]
extern "C" fn swap_once(_attempt: u64, swap: *mut Swap) -> i64 {
    // SAFETY: bpf_loop passes the `Swap` that `swap` gave it, on its stack.
    let swap = unsafe { &mut *swap };
    let Some(rule) = RuleRef::get(swap.id) else {
        return 1;
    };
    let word = if swap.per_caller != 0 {
        match REIN_CONN_CALLERS.get_ptr_mut(CallerKey::new(swap.id, swap.netns)) {
            Some(caller) => caller_state(caller),
            None => return 1,
        }
    } else {
        rule.state()
    };
    match conn::attempt(&word, &rule.bucket(), swap.now, swap.refund != 0) {
        Attempt::Swapped => {
            swap.done = 1;
            1
        }
        Attempt::Refused => 1,
        Attempt::Lost => 0,
    }
}

#[inline(always)]
fn caller_state(caller: *mut CallerState) -> Word {
    // SAFETY: a map value valid for the program's run (RCU); changed by atomics only.
    unsafe { Word::new(&raw mut (*caller).state) }
}

/// The caller's entry, made (a full bucket) if it has none. With the table full, entries whose
/// bucket is full again go first; None when there is still no room.
#[inline(always)]
fn caller_entry(key: &CallerKey, now: u64) -> Option<*mut CallerState> {
    if let Some(caller) = REIN_CONN_CALLERS.get_ptr_mut(key) {
        return Some(caller);
    }
    // BPF_NOEXIST: two CPUs meeting a new caller at once keep the first entry.
    let inserted = REIN_CONN_CALLERS.insert(key, CallerState::default(), BPF_NOEXIST as u64);
    if inserted == Err(-E2BIG) {
        reclaim(now);
        let _ = REIN_CONN_CALLERS.insert(key, CallerState::default(), BPF_NOEXIST as u64);
    }
    REIN_CONN_CALLERS.get_ptr_mut(key)
}

#[repr(C)]
struct ReclaimContext {
    now: u64,
}

/// Deletes the callers' entries that carry nothing: a full bucket (what a new entry starts
/// with) or a rule that is gone.
#[inline(always)]
fn reclaim(now: u64) {
    let mut context = ReclaimContext { now };
    // SAFETY: the callback has the signature the helper calls it with; the context outlives
    // the call.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const REIN_CONN_CALLERS).cast_mut().cast(),
            reclaim_entry as *mut c_void,
            (&raw mut context).cast(),
            0,
        )
    };
}

/// One entry of the reclaim; 0 goes on to the next.
#[inline(never)]
extern "C" fn reclaim_entry(
    map: *mut c_void,
    key: *mut CallerKey,
    value: *mut CallerState,
    context: *mut ReclaimContext,
) -> i64 {
    // SAFETY: the helper passes the entry's key and value and our context, all valid for the
    // call.
    let (rule_id, now) = unsafe { ((*key).rule, (*context).now) };
    let word = caller_state(value);
    let gone = match RuleRef::get(rule_id) {
        None => true,
        Some(rule) => {
            let current = word.load();
            // Swapped for the tombstone first: a take racing the check cannot land on an
            // entry about to go and get its token back for free.
            rule.bucket().is_full(current, now) && word.compare_exchange(current, TOMBSTONE).is_ok()
        }
    };
    if gone {
        // SAFETY: the map and key the helper passed; hash maps allow deleting the current
        // entry from the callback.
        unsafe { bpf_map_delete_elem(map, key.cast()) };
    }
    0
}

#[inline(always)]
fn counters(id: u32) -> Option<*mut ConnCounters> {
    REIN_CONN_COUNTERS.get_ptr_mut(id)
}

#[inline(always)]
fn count_refused(id: u32, netns: u64, table_full: bool) {
    if let Some(counters) = counters(id) {
        // SAFETY: as in `count_allowed`.
        unsafe {
            Word::new(&raw mut (*counters).refused).add(1);
            if table_full {
                Word::new(&raw mut (*counters).refused_table_full).add(1);
            }
        }
    }
    if !table_full
        && let Some(rule) = RuleRef::get(id)
        && rule.per_caller()
        && let Some(caller) = REIN_CONN_CALLERS.get_ptr_mut(CallerKey::new(id, netns))
    {
        // SAFETY: as in `count_allowed`.
        unsafe { Word::new(&raw mut (*caller).refused) }.add(1);
    }
}
