//! Tracing verdicts (`rein trace`): a ring buffer of events each object's programs write while a
//! trace runs, the one-entry control a trace keeps alive, and the per-CPU budget that caps the
//! events and counts what it skipped. Each object (cgroup programs, interface programs, connect
//! programs) has its own three maps, pinned with its others, so a trace attaches to whichever
//! datapath runs.

/// Name of the cgroup object's one-entry [`TraceControl`] array.
pub const TRACE_MAP: &str = "REIN_TRACE";
/// Name of the cgroup object's ring buffer of [`TraceEvent`]s.
pub const TRACE_EVENTS_MAP: &str = "REIN_TRACE_EVENTS";
/// Name of the cgroup object's per-CPU [`TraceBudget`] array.
pub const TRACE_BUDGET_MAP: &str = "REIN_TRACE_BUDGET";
/// The same three maps of the interface object.
pub const NET_TRACE_MAP: &str = "REIN_NET_TRACE";
pub const NET_TRACE_EVENTS_MAP: &str = "REIN_NET_TRACE_EVENTS";
pub const NET_TRACE_BUDGET_MAP: &str = "REIN_NET_TRACE_BUDGET";
/// The same three maps of the connect object.
pub const CONN_TRACE_MAP: &str = "REIN_CONN_TRACE";
pub const CONN_TRACE_EVENTS_MAP: &str = "REIN_CONN_TRACE_EVENTS";
pub const CONN_TRACE_BUDGET_MAP: &str = "REIN_CONN_TRACE_BUDGET";

/// Bytes of each ring buffer (a power of two of pages): about 2,300 events.
pub const TRACE_RING_BYTES: u32 = 256 * 1024;

/// Events each CPU may emit per second while a trace runs; past that they are counted as
/// skipped. Bounds what a trace adds to the datapath under a flood.
pub const TRACE_EVENTS_PER_SECOND: u32 = 10_000;

/// How long a trace's lease lasts: `rein trace` renews it every second, so a trace killed
/// without a chance to clear it stops costing anything this long after.
pub const TRACE_LEASE_NS: u64 = 3_000_000_000;

/// The control entry: programs emit events only while `until_ns` (CLOCK_MONOTONIC, as
/// `bpf_ktime_get_ns`) is in the future. 0 when no trace runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceControl {
    pub until_ns: u64,
    /// The events each CPU may emit per second.
    pub events_per_second: u32,
    /// The process of the trace that last renewed the lease (for its exit to clear only its
    /// own).
    pub pid: u32,
}
const _: () = assert!(core::mem::size_of::<TraceControl>() == 16);

/// One CPU's budget: the events emitted in the second that began at `second_ns`, and every
/// event skipped (over the budget, or the ring buffer full). Updated without atomics: only
/// programs on its own CPU write it, and a count lost to an interrupting program is a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceBudget {
    pub second_ns: u64,
    pub emitted: u64,
    pub skipped: u64,
}
const _: () = assert!(core::mem::size_of::<TraceBudget>() == 24);

/// `TraceEvent::kind`: a cgroup limit refused a packet (`cgroup_id` is the limit's cgroup).
pub const EVENT_CGROUP_REFUSED: u8 = 1;
/// A net rule refused a packet (`rule` is its id).
pub const EVENT_NET_REFUSED: u8 = 2;
/// The sock_ops program set a flow's pacing rate (`value`, bytes/s; 0 lifts it).
pub const EVENT_PACING: u8 = 3;
/// The sock_ops program changed a flow's receive window clamp (`value`, bytes).
pub const EVENT_WINDOW: u8 = 4;
/// An ingress limit's queue (its tbf qdisc) was full and dropped a packet (`cgroup_id` is the
/// limit's cgroup, `value` the packet's IP bytes).
pub const EVENT_QUEUE_OVERFLOW: u8 = 5;
/// A connection limit refused a `connect()` (`rule` is its id, `reason` why; the caller in
/// `pid`, `tgid`, `comm` and `netns`; the destination in `destination`, `destination_port`,
/// `protocol`; no source: the socket may not be bound yet).
pub const EVENT_CONN_REFUSED: u8 = 6;

/// `TraceEvent::reason` of a refused connect: the rule's bucket had no token.
pub const CONN_REFUSED_NO_TOKEN: u8 = 1;
/// A per-caller rule had no bucket for the caller and the callers table no room for one.
pub const CONN_REFUSED_CALLERS_FULL: u8 = 2;

/// The program that sees queue overflows, on the `kfree_skb` raw tracepoint. Unlike the others
/// it is attached only while a trace runs, by the trace itself (its link dies with the trace).
pub const QUEUE_OVERFLOW_PROGRAM: &str = "rein_queue_overflow";
/// The tracepoint it is attached to.
pub const QUEUE_OVERFLOW_TRACEPOINT: &str = "kfree_skb";
/// Name of its one-entry [`OverflowConfig`] array (each trace's own, never pinned).
pub const OVERFLOW_CONFIG_MAP: &str = "REIN_OVERFLOW_CONFIG";
/// Name of its hash of queue device names (`[u8; 16]`, NUL-padded) to their limit's cgroup.
pub const QUEUE_DEVICES_MAP: &str = "REIN_QUEUE_DEVICES";
/// Entries of that hash.
pub const MAX_QUEUE_DEVICES: u32 = 4096;

/// What the overflow program needs from the running kernel, which the trace reads from its BTF
/// (`/sys/kernel/btf/vmlinux`) as it starts: the drop reasons a qdisc gives a packet it drops
/// (`u32::MAX` for one this kernel lacks), and the byte offsets of the few fields it reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverflowConfig {
    pub reasons: [u32; 3],
    /// The trace that attached this program: it emits only while that trace holds the lease,
    /// so that two traces at once do not report each overflow twice.
    pub pid: u32,
    /// `sk_buff.dev`, `.len`, `.head`, `.data`, `.network_header`; `net_device.name`.
    pub skb_dev: u32,
    pub skb_len: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_network_header: u32,
    pub dev_name: u32,
}
const _: () = assert!(core::mem::size_of::<OverflowConfig>() == 40);

/// `TraceEvent::hook`: a `Direction` (0 egress, 1 ingress), or this for XDP (ingress).
pub const TRACE_HOOK_XDP: u8 = 2;

/// `TraceEvent::family`.
pub const TRACE_FAMILY_IPV4: u8 = 4;
pub const TRACE_FAMILY_IPV6: u8 = 6;

/// One event. Addresses are in network order (an IPv4 address in the first 4 bytes), ports in
/// host order; 0 where unknown (no socket, not TCP or UDP, a later fragment).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub time_ns: u64,
    /// The limit's cgroup (refusals by a cgroup limit), or the deepest limit over the flow's
    /// socket (pacing, window); 0 when not known.
    pub cgroup_id: u64,
    /// Refusals: the packet's IP bytes; pacing and window: the value set.
    pub value: u64,
    /// The net rule that refused; 0 for other events.
    pub rule: u32,
    pub kind: u8,
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub source: [u8; 16],
    pub destination: [u8; 16],
    pub source_port: u16,
    pub destination_port: u16,
    /// Refused connects: the calling thread and its process (`bpf_get_current_pid_tgid`); 0 for
    /// other events (a packet has no caller).
    pub pid: u32,
    pub tgid: u32,
    /// Refused connects: `CONN_REFUSED_*`; 0 for other events.
    pub reason: u8,
    pub _pad: [u8; 3],
    /// Refused connects: the caller's network namespace cookie; 0 for other events.
    pub netns: u64,
    /// Refused connects: the calling thread's name, NUL-padded; zeros for other events.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 104);

impl TraceEvent {
    pub const EMPTY: Self = Self {
        time_ns: 0,
        cgroup_id: 0,
        value: 0,
        rule: 0,
        kind: 0,
        hook: 0,
        family: 0,
        protocol: 0,
        source: [0; 16],
        destination: [0; 16],
        source_port: 0,
        destination_port: 0,
        pid: 0,
        tgid: 0,
        reason: 0,
        _pad: [0; 3],
        netns: 0,
        comm: [0; 16],
    };
}
