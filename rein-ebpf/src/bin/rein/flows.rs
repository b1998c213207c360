//! TCP flows under a limit: counted by the cgroup programs, paced or windowed by the sock_ops
//! program.
//!
//! The egress and ingress programs see every packet with the cgroups it is charged to, so they
//! count the flow under each rule and record the flow's share in the socket's local storage,
//! one storage per direction. Only a sock_ops program may call `bpf_setsockopt`, so it applies
//! the egress share as the socket's `SO_MAX_PACING_RATE` (at the connection's start and on each
//! RTT sample after), and the ingress share as its receive window clamp (on each segment it
//! sends, mostly ACKs, just before TCP picks the window they advertise).
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, BPF_TCP_LISTEN, bpf_sock,
    },
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_setsockopt,
        bpf_sk_fullsock, bpf_sk_storage_get,
    },
    macros::btf_map,
    programs::{SkBuffContext, SockOpsContext},
};
use rein_common::{
    Direction, EpochCount, FlowState, IngressFlowState,
    abi::trace::{EVENT_PACING, EVENT_WINDOW},
    share::{
        EPOCH_NS, FLOW_FINISHED, FLOW_REGISTERED_BEFORE, PURE_ACK_MAX_BYTES, UNCLAMPED,
        UNCLAMPED_WINDOW, cwnd_clamp, epoch_of, notsent_lowat, other_units, pacing_rate,
        receive_window, register_threshold, share, tcp_rate,
    },
};
use rein_ebpf::{atomic::Word, parse::skb};

use crate::{limit::RuleRef, trace};

/// Per-socket flow state: written by the egress program, applied by the sock_ops program.
#[btf_map]
static REIN_FLOWS: SkStorage<FlowState> = SkStorage::new();

/// The same for flows received under ingress rules: written by the ingress program, applied by
/// the sock_ops program as a receive window, read by the queue program.
#[btf_map]
pub static REIN_INGRESS_FLOWS: SkStorage<IngressFlowState> = SkStorage::new();

const IPPROTO_TCP: u32 = 6;
const AF_INET6: u32 = 10;
const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;
const SOL_TCP: i32 = 6;
const TCP_BPF_SNDCWND_CLAMP: i32 = 1002;
const TCP_WINDOW_CLAMP: i32 = 10;
const TCP_NOTSENT_LOWAT: i32 = 25;

/// The socket storage of flows in `direction`.
#[inline(always)]
fn flows_map(direction: Direction) -> *mut c_void {
    match direction {
        Direction::Egress => ptr::from_ref(&REIN_FLOWS).cast_mut().cast(),
        Direction::Ingress => ptr::from_ref(&REIN_INGRESS_FLOWS).cast_mut().cast(),
    }
}

/// The full TCP socket that sends or receives this packet (not a listener), or null.
#[inline(always)]
pub fn tcp_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: the context is valid for the program's run; the kernel checks the pointers.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return ptr::null_mut();
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() || (*full).protocol != IPPROTO_TCP || (*full).state == BPF_TCP_LISTEN {
            return ptr::null_mut();
        }
        full
    }
}

/// The full TCP socket of this packet, as [`tcp_socket`], unless the packet is a pure ACK (at
/// most [`PURE_ACK_MAX_BYTES`], no SYN, no FIN: the handshake still opens the flow's storage,
/// and a FIN still releases it). A connection that only acknowledges in a direction (a
/// download's ACKs going out, an upload's coming in) is no flow there: its ACKs would register
/// it and halve the real flows' shares (an upload beside a download in one cgroup got 48 of
/// 100 Mbit/s), and they would go uncounted as the other traffic the shares must leave room
/// for (then 84). A pure ACK is counted as other traffic.
#[inline(always)]
pub fn tcp_socket_with_data(ctx: &SkBuffContext) -> *mut bpf_sock {
    let socket = tcp_socket(ctx);
    if socket.is_null() {
        return socket;
    }
    // SAFETY: the context is valid for the program's run.
    let length = unsafe { (*ctx.skb.skb).len } as u64;
    if length <= PURE_ACK_MAX_BYTES && skb::tcp_flags(ctx) & (skb::TCP_SYN | skb::TCP_FIN) == 0 {
        return ptr::null_mut();
    }
    socket
}

/// `FlowState::registered` values.
const UNREGISTERED: u32 = 0;
const REGISTERED: u32 = 1;
const REGISTERING: u32 = 2;

/// One packet's part in sharing its limits: the flow registers under each rule it is charged
/// to (once an epoch, when it has sent enough), and keeps the smallest share it meets.
///
/// What the walk learns is kept in the socket's storage, not in locals: the verifier walks
/// every cgroup level, and locals holding different known values at each level would multiply
/// the states it must explore.
pub struct Sharing<'a> {
    ctx: &'a SkBuffContext,
    socket: *mut bpf_sock,
    map: *mut c_void,
    state: *mut FlowState,
    epoch: u32,
    /// How far into `epoch` the packet is.
    elapsed_ns: u64,
    bytes: u64,
    /// The packet carries the flow's FIN: take the flow out of the counts now rather than two
    /// epochs after its last packet, so the others get its share back at once. Read only for
    /// packets under a rule.
    fin: bool,
}

impl<'a> Sharing<'a> {
    /// The packet's part, for a packet under at least one rule: a TCP flow's storage is
    /// opened now, so that the charges of every rule see it in one state.
    #[inline(always)]
    pub fn new(
        ctx: &'a SkBuffContext,
        socket: *mut bpf_sock,
        now: u64,
        bytes: u64,
        direction: Direction,
    ) -> Self {
        let mut sharing = Self {
            ctx,
            socket,
            map: flows_map(direction),
            state: ptr::null_mut(),
            epoch: epoch_of(now),
            elapsed_ns: now % EPOCH_NS,
            bytes,
            fin: false,
        };
        if !socket.is_null() {
            sharing.state = sharing.open();
            if !sharing.state.is_null() {
                sharing.fin = skb::tcp_fin(ctx);
            }
        }
        sharing
    }

    /// The packet is charged to `rule`: count the flow there and take its share. Returns the
    /// flows sharing the rule.
    ///
    /// `direction` is the packet's, passed as a constant rather than kept in `self`: the
    /// verifier then sees which storage the flow's is (a field read back from the stack may
    /// be anything to it).
    #[inline(always)]
    pub fn count_under(&mut self, rule: RuleRef, direction: Direction) -> u32 {
        if self.socket.is_null() {
            // Not a TCP flow's packet: the flows' shares leave room for it; and it may use the
            // flows' leeway (see `charge`), or a ping sent while their trains keep the bucket in
            // debt would never pass.
            // At egress, where flows are paced and must leave room for other traffic.
            if direction == Direction::Egress {
                // SAFETY: a helper without arguments.
                let dither = unsafe { bpf_get_prandom_u32() };
                add(
                    rule.others(),
                    self.epoch,
                    other_units(rule.rate(), self.bytes, dither),
                );
            }
            return self.active(rule);
        }
        if self.state.is_null() {
            return 0;
        }
        let state = self.state;
        // SAFETY: non-null storage of this socket, valid for the program's run; other programs
        // of the socket may run at once on other CPUs, so no reference to it is made.
        let (flags, registered, sent) =
            unsafe { ((*state).flags, (*state).registered, (*state).sent) };
        if flags & FLOW_FINISHED != 0 {
            return self.active(rule);
        }
        if self.fin {
            let now = registered == REGISTERED;
            let before = flags & FLOW_REGISTERED_BEFORE != 0;
            remove(rule.flows(), self.epoch, now, before);
            return self.active(rule);
        }
        let mut active = self.active(rule);
        if registered != REGISTERED && sent as u64 >= register_threshold(rule.rate(), active) {
            add(rule.flows(), self.epoch, 1);
            active = self.active(rule);
            // SAFETY: as above.
            unsafe { (*state).registered = REGISTERING };
        }
        let others = EpochCount(rule.others().load()).peak(self.epoch);
        let own = share(tcp_rate(rule.rate(), others), active);
        // SAFETY: as above.
        unsafe {
            if own < (*state).pending_share {
                (*state).pending_share = own;
            }
        }
        // At least this flow, even before it registers.
        if active == 0 { 1 } else { active }
    }

    /// The flows active under `rule` now (`EpochCount::active`).
    #[inline(always)]
    fn active(&self, rule: RuleRef) -> u32 {
        EpochCount(rule.flows().load()).active(self.epoch, self.elapsed_ns, rule.rate())
    }

    /// Whether the packet is a download that came through its rule's queue (as the tc program
    /// noted in the flow's storage). Asked only when a bucket refuses.
    #[inline(always)]
    pub fn queued(&self, direction: Direction) -> bool {
        if direction == Direction::Egress || self.state.is_null() {
            return false;
        }
        // SAFETY: ingress storage holds an IngressFlowState, whose first field `state` is.
        unsafe { (*self.state.cast::<IngressFlowState>()).queued != 0 }
    }

    /// The socket's storage (created on first use), brought to this epoch and this packet.
    #[inline(always)]
    fn open(&self) -> *mut FlowState {
        // Large enough for either storage's value; a new one starts as NEW with no queue.
        let mut new = IngressFlowState {
            flow: FlowState::NEW,
            queue_cgroup: 0,
            netns_cookie: 0,
            queued: 0,
            _pad: 0,
        };
        // SAFETY: a full socket and a value at least as large as the map's value type.
        let state: *mut FlowState = unsafe {
            bpf_sk_storage_get(
                self.map,
                self.socket.cast(),
                ptr::from_mut(&mut new).cast(),
                BPF_SK_STORAGE_GET_F_CREATE.into(),
            )
        }
        .cast();
        if state.is_null() {
            return state;
        }
        // SAFETY: non-null storage of this socket, valid for the program's run; fields are
        // accessed through the pointer, never a reference (see `count_under`).
        unsafe {
            if (*state).epoch != self.epoch {
                // Whether it counted in the epoch that is now the previous one.
                if (*state).registered == REGISTERED && (*state).epoch.wrapping_add(1) == self.epoch
                {
                    (*state).flags |= FLOW_REGISTERED_BEFORE;
                } else {
                    (*state).flags &= !FLOW_REGISTERED_BEFORE;
                }
                (*state).epoch = self.epoch;
                (*state).sent = 0;
                (*state).registered = UNREGISTERED;
            }
            (*state).sent = (*state).sent.saturating_add(self.bytes as u32);
            (*state).pending_share = u64::MAX;
        }
        state
    }

    /// The walk is over: if the packet `passed`, record the flow's share. (A flow no rule
    /// covers any more is not looked at here: its share lapses, see `FlowState::share_at`.) A
    /// FIN's walk took the flow out of the counts, passed or not: it must not happen twice.
    ///
    /// `queue_cgroup` is the deepest rule's cgroup, whose queue an ingress flow goes through.
    #[inline(always)]
    pub fn finish(self, passed: bool, queue_cgroup: u64, direction: Direction) {
        if self.state.is_null() {
            return;
        }
        if direction == Direction::Ingress {
            // SAFETY: ingress storage holds an IngressFlowState, whose first field `flow` is;
            // the context is the program's.
            unsafe {
                let ingress = self.state.cast::<IngressFlowState>();
                (*ingress).queue_cgroup = queue_cgroup;
                (*ingress).netns_cookie = bpf_get_netns_cookie(self.ctx.skb.skb.cast());
            }
        }
        let state = self.state;
        // SAFETY: non-null storage of this socket, through the pointer (see `count_under`).
        unsafe {
            if self.fin {
                (*state).flags |= FLOW_FINISHED;
                (*state).registered = UNREGISTERED;
            }
            if !passed {
                return;
            }
            if (*state).registered == REGISTERING {
                (*state).registered = REGISTERED;
            }
            // A finished flow's walk sets no share: it keeps the one it had.
            if (*state).pending_share != u64::MAX {
                (*state).share = (*state).pending_share;
            }
        }
    }
}

/// Adds `n` to `count` in `epoch`; returns the count's peak after it.
#[inline(always)]
fn add(count: Word, epoch: u32, n: u32) -> u32 {
    let mut current = count.load();
    let mut attempt = 0;
    while attempt < 8 {
        let next = EpochCount(current).add(epoch, n);
        match count.compare_exchange(current, next.0) {
            Ok(()) => return next.peak(epoch),
            Err(found) => current = found,
        }
        attempt += 1;
    }
    // Contended that hard, the count misses this addition; the caller sees it anyway.
    EpochCount(current).add(epoch, n).peak(epoch)
}

/// Takes one registration back from `count` (this epoch's if `now`, the previous one's if
/// `before`). One attempt only: a loop here multiplies the verifier's states over the cgroup
/// levels past its limit, and if another CPU wins the race the flow still leaves the count
/// within an epoch and a grace of its last packet.
#[inline(always)]
fn remove(count: Word, epoch: u32, now: bool, before: bool) {
    let current = count.load();
    let next = EpochCount(current).remove(epoch, now, before);
    let _ = count.compare_exchange(current, next.0);
}

/// The sock_ops side: turn on RTT callbacks for every TCP connection, and on each callback apply
/// the flow's share (if the egress program gave it one) as its pacing cap, with the window
/// clamp that keeps its segment trains short (`rein_common::share::cwnd_clamp`). While ingress
/// rules exist, also hear of each segment the connection sends, to keep its receive window at
/// what its ingress share needs (`rein_common::share::receive_window`).
#[inline(always)]
pub fn on_sock_ops(ctx: &SockOpsContext, ingress_rules: bool) {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // Every connection, because a rule may come to cover it after it is established.
            let mut flags = ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG;
            if ingress_rules {
                flags |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
            }
            let _ = ctx.set_cb_flags(flags as i32);
            apply_pacing(ctx);
        }
        BPF_SOCK_OPS_RTT_CB => apply_pacing(ctx),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => apply_window(ctx),
        BPF_SOCK_OPS_TCP_CONNECT_CB | BPF_SOCK_OPS_TCP_LISTEN_CB => {
            let rate = if ingress_rules {
                // SAFETY: the program's own context.
                crate::limit::current_task_ingress_rate(unsafe {
                    bpf_get_netns_cookie(ctx.ops.cast())
                })
            } else {
                0
            };
            if rate != 0 && rate <= EXACT_WINDOW_MAX_RATE {
                // Before the window scale is chosen (from the clamp): see OPENING_WINDOW_CLAMP.
                let mut clamp = OPENING_WINDOW_CLAMP;
                let _ = set_option(ctx, SOL_TCP, TCP_WINDOW_CLAMP, &mut clamp);
            }
        }
        _ => {}
    }
}

/// The window clamp of a connection opened (or a listener made) in a cgroup under an ingress
/// rule, set before TCP picks its window scale, which it derives from the clamp: 512 KiB gives
/// a scale of 3, so windows are advertised in steps of 8 bytes and a clamp of whole segments
/// (1448 bytes is 181 steps) is advertised exactly. At the usual scale (7 to 10: steps of 128
/// to 1024 bytes) a one-segment window is rounded up to 1536 or 2048 bytes, and the sender fills
/// the rest with a small segment each round trip: 5% of the bytes on the wire in headers. The
/// cost: the connection's window can never exceed 512 KiB, even once the rule is gone, which
/// holds a lone flow under its share on a path longer than 512 KiB / share: 42 ms at
/// 100 Mbit/s. So only rules of up to [`EXACT_WINDOW_MAX_RATE`] do it; under faster ones the
/// shares are mostly several segments, where one small segment a round trip costs little.
const OPENING_WINDOW_CLAMP: u32 = 65_535 << 3;

/// The fastest ingress rule (bytes/s) whose connections get [`OPENING_WINDOW_CLAMP`]: 100 Mbit/s.
const EXACT_WINDOW_MAX_RATE: u64 = 12_500_000;

/// Clamps the receive window of a flow under an ingress limit to what its share needs, so the
/// sender never has more in flight than that: the rule's queue (`crate::queue`) then holds at
/// most a window per flow, and never overflows. Called as TCP builds each segment's header,
/// before it picks the window the segment advertises. A connection that the ingress program
/// never saw under a rule stops these calls at its first segment after the handshake.
#[inline(always)]
fn apply_window(ctx: &SockOpsContext) {
    // SAFETY: the context is valid for the program's run; the kernel checks the pointers.
    unsafe {
        let socket = (*ctx.ops).__bindgen_anon_2.sk;
        if socket.is_null() {
            return;
        }
        let state: *mut FlowState = bpf_sk_storage_get(
            flows_map(Direction::Ingress),
            socket.cast(),
            ptr::null_mut(),
            0,
        )
        .cast();
        if state.is_null() {
            let flags = ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
            let _ = ctx.set_cb_flags(flags as i32);
            return;
        }
        // A copy, and writes through the pointer: the cgroup and tc programs may use the
        // storage at once on other CPUs, so no reference to it is made.
        let flow = ptr::read(state);
        let now = bpf_ktime_get_ns();
        let share = flow.share_at(epoch_of(now));
        if share == 0 && (flow.applied == 0 || flow.applied == UNCLAMPED_WINDOW) {
            return;
        }
        // Set on every segment, not only when the share changes: TCP's receive buffer tuning
        // raises the clamp as it grows the buffer (and setting an unchanged clamp is cheap).
        let mut window = receive_window(share, (*ctx.ops).mss_cache);
        if set_option(ctx, SOL_TCP, TCP_WINDOW_CLAMP, &mut window) {
            (*state).applied = window;
            // Traced when it changes, not on every segment.
            if window != flow.applied {
                trace::flow_change(
                    ctx.ops,
                    EVENT_WINDOW as u32,
                    Direction::Ingress as u32,
                    window as u64,
                    now,
                );
            }
        }
    }
}

#[inline(always)]
fn apply_pacing(ctx: &SockOpsContext) {
    // SAFETY: the context is valid for the program's run; the kernel checks the pointers.
    unsafe {
        let socket = (*ctx.ops).__bindgen_anon_2.sk;
        if socket.is_null() {
            return;
        }
        let state: *mut FlowState = bpf_sk_storage_get(
            flows_map(Direction::Egress),
            socket.cast(),
            ptr::null_mut(),
            0,
        )
        .cast();
        if state.is_null() {
            return;
        }
        // A copy, and writes through the pointer, as in `apply_window`.
        let flow = ptr::read(state);
        let now = bpf_ktime_get_ns();
        let share = flow.share_at(epoch_of(now));
        let mss = (*ctx.ops).mss_cache;
        // Nothing to lift on a socket that was never capped.
        let pacing = pacing_rate(share, mss, ctx.family() == AF_INET6);
        if pacing != flow.applied && (flow.applied != 0 || share != 0) {
            let mut value = pacing;
            if set_option(ctx, SOL_SOCKET, SO_MAX_PACING_RATE, &mut value) {
                (*state).applied = pacing;
                trace::flow_change(
                    ctx.ops,
                    EVENT_PACING as u32,
                    Direction::Egress as u32,
                    pacing as u64,
                    now,
                );
                // Paced, the flow's backlog waits in its socket: keep it short (see
                // `notsent_lowat`). 0 restores the system's default.
                let mut lowat = notsent_lowat(share);
                let _ = set_option(ctx, SOL_TCP, TCP_NOTSENT_LOWAT, &mut lowat);
            }
        }
        let clamp = cwnd_clamp(share, (*ctx.ops).srtt_us, mss);
        if clamp != flow.clamp && (flow.clamp != 0 || clamp != UNCLAMPED) {
            let mut value = clamp;
            if set_option(ctx, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &mut value) {
                (*state).clamp = clamp;
            }
        }
    }
}

/// `bpf_setsockopt` with a 4-byte value; true when the kernel took it.
#[inline(always)]
fn set_option(ctx: &SockOpsContext, level: i32, name: i32, value: &mut u32) -> bool {
    let len = core::mem::size_of::<u32>() as i32;
    // SAFETY: a sock_ops context and a 4-byte value, as both options take.
    unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            level,
            name,
            ptr::from_mut(value).cast(),
            len,
        ) == 0
    }
}
