//! `rein trace`: the verdicts of the running datapath as they happen, read from the ring
//! buffers its programs write while a trace holds a lease on them.
//!
//! Each object (cgroup programs, interface programs, connect programs) has a one-entry control array, a ring
//! buffer and a per-CPU budget, pinned with its other maps. The programs check the control's
//! lease (`until_ns`, on CLOCK_MONOTONIC) before building any event: a trace renews it every
//! second and clears it on its way out, and one that dies without clearing stops costing
//! anything [`TRACE_LEASE_NS`] later. Filters are applied here, not in the kernel, so that two
//! traces with different filters see what each asked for.
//!
//! Queue overflows (the tbf qdisc of an ingress limit's queue dropping a packet) happen in no
//! rein program: a trace loads a program of its own on the `kfree_skb` tracepoint, which
//! reports drops by a qdisc on rein's queue devices into the same ring buffer. Only the trace
//! holds its link, so it is in the kernel only while a trace runs.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use rein_common::{
    Direction,
    abi::{
        cgroup::{netns_scope, scope_netns},
        trace::{
            CONN_REFUSED_CALLERS_FULL, CONN_TRACE_BUDGET_MAP, CONN_TRACE_EVENTS_MAP,
            CONN_TRACE_MAP, EVENT_CGROUP_REFUSED, EVENT_CONN_REFUSED, EVENT_NET_REFUSED,
            EVENT_PACING, EVENT_QUEUE_OVERFLOW, EVENT_WINDOW, NET_TRACE_BUDGET_MAP,
            NET_TRACE_EVENTS_MAP, NET_TRACE_MAP, OVERFLOW_CONFIG_MAP, OverflowConfig,
            QUEUE_DEVICES_MAP, QUEUE_OVERFLOW_PROGRAM, QUEUE_OVERFLOW_TRACEPOINT, TRACE_BUDGET_MAP,
            TRACE_EVENTS_MAP, TRACE_EVENTS_PER_SECOND, TRACE_FAMILY_IPV4, TRACE_FAMILY_IPV6,
            TRACE_HOOK_XDP, TRACE_LEASE_NS, TRACE_MAP, TraceBudget, TraceControl, TraceEvent,
        },
    },
};
use serde::Serialize;

use crate::{
    capabilities::{
        cgroup_limit::datapath::load_object, ingress_queue::datapath as queues,
        shared_limit::Member,
    },
    clock::{Clock, MonotonicClock},
    error::{Error, Result, bpf_error},
    instance::Instance,
    platform::{
        bpf::{self, load_error, program_mut},
        btf::Btf,
        cgroupfs::CgroupFs,
    },
};

/// How often the lease is renewed, the skipped count read and the stop flag checked.
const RENEW_EVERY: Duration = Duration::from_secs(1);
const POLL_MS: i32 = 200;

/// Which events a trace prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Only events of the limit of this cgroup (its id).
    pub cgroup: Option<u64>,
    /// Only refusals by this net rule or connection limit (they share their ids).
    pub rule: Option<u32>,
    /// Only what was refused or dropped: refusals (of packets and of connects) and queue
    /// overflows (no pacing or window changes).
    pub drops_only: bool,
}

impl TraceFilter {
    pub fn keeps(&self, event: &TraceEvent) -> bool {
        let drop = matches!(
            event.kind,
            EVENT_CGROUP_REFUSED | EVENT_NET_REFUSED | EVENT_CONN_REFUSED | EVENT_QUEUE_OVERFLOW
        );
        let by_rule = matches!(event.kind, EVENT_NET_REFUSED | EVENT_CONN_REFUSED);
        if self.drops_only && !drop {
            return false;
        }
        if let Some(cgroup) = self.cgroup
            && (by_rule || event.cgroup_id != cgroup)
        {
            return false;
        }
        if let Some(rule) = self.rule
            && (!by_rule || event.rule != rule)
        {
            return false;
        }
        true
    }
}

/// What a trace reports: an event, or how many events the kernel skipped since the last report
/// (over its per-CPU budget, or with the ring buffer full).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TraceRecord {
    Refused {
        /// Seconds since boot (CLOCK_MONOTONIC), as the kernel stamped it.
        time: String,
        /// `cgroup PATH` or `rule ID`.
        limit: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<u32>,
        direction: &'static str,
        bytes: u64,
        protocol: String,
        source: String,
        destination: String,
    },
    /// A connection limit refused a `connect()` (ECONNREFUSED).
    #[serde(rename = "refused-connect")]
    RefusedConnect {
        time: String,
        /// `rule ID`.
        limit: String,
        rule: u32,
        /// `no-token`, or `callers-full` (a per-caller rule with no room for a new caller).
        reason: &'static str,
        /// The caller: its process, thread, the thread's name and its network namespace cookie.
        pid: u32,
        tid: u32,
        comm: String,
        netns: u64,
        protocol: String,
        destination: String,
    },
    Pacing {
        time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
        /// Bytes per second; 0 lifts the cap.
        rate: u64,
        source: String,
        destination: String,
    },
    Window {
        time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
        /// The receive window clamp, bytes.
        window: u64,
        source: String,
        destination: String,
    },
    /// The queue of an ingress limit was full: its tbf qdisc dropped the packet.
    #[serde(rename = "queue-overflow")]
    QueueOverflow {
        time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
        /// The queue device.
        device: String,
        /// The packet's IP bytes.
        bytes: u64,
        protocol: String,
        source: String,
        destination: String,
    },
    Skipped {
        events: u64,
    },
}

impl std::fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flow = |f: &mut std::fmt::Formatter<'_>, source: &str, destination: &str| {
            write!(f, "{source} -> {destination}")
        };
        let cgroup_of = |cgroup: &Option<String>| match cgroup {
            Some(cgroup) => format!("cgroup {cgroup}"),
            None => "cgroup ?".to_owned(),
        };
        match self {
            TraceRecord::Refused {
                time,
                limit,
                direction,
                bytes,
                protocol,
                source,
                destination,
                ..
            } => {
                write!(f, "{time} refused {direction} {limit} {bytes}B {protocol} ")?;
                flow(f, source, destination)
            }
            TraceRecord::RefusedConnect {
                time,
                limit,
                reason,
                pid,
                tid,
                comm,
                netns,
                protocol,
                destination,
                ..
            } => write!(
                f,
                "{time} refused-connect {limit} {reason} {protocol} -> {destination} pid {pid} \
                 tid {tid} comm {comm:?} netns {netns}"
            ),
            TraceRecord::Pacing {
                time,
                cgroup,
                rate,
                source,
                destination,
            } => {
                let rate = if *rate == 0 {
                    "lifted".to_owned()
                } else {
                    format!("{rate}B/s")
                };
                write!(f, "{time} pacing egress {} {rate} tcp ", cgroup_of(cgroup))?;
                flow(f, source, destination)
            }
            TraceRecord::Window {
                time,
                cgroup,
                window,
                source,
                destination,
            } => {
                write!(
                    f,
                    "{time} window ingress {} {window}B tcp ",
                    cgroup_of(cgroup)
                )?;
                flow(f, source, destination)
            }
            TraceRecord::QueueOverflow {
                time,
                cgroup,
                device,
                bytes,
                protocol,
                source,
                destination,
            } => {
                write!(
                    f,
                    "{time} queue-overflow ingress {} {device} {bytes}B {protocol} ",
                    cgroup_of(cgroup)
                )?;
                flow(f, source, destination)
            }
            TraceRecord::Skipped { events } => write!(
                f,
                "skipped {events} events (over {TRACE_EVENTS_PER_SECOND}/s per CPU, or the ring \
                 buffer full)"
            ),
        }
    }
}

/// One object's trace maps, opened from their pins.
struct Source {
    control: Array<MapData, TraceControl>,
    budget: PerCpuArray<MapData, TraceBudget>,
    events: RingBuf<MapData>,
    /// The skipped count already reported (the counters outlive traces).
    skipped: u64,
}

impl Source {
    fn open(instance: &Instance, names: [&str; 3]) -> Result<Option<Self>> {
        let [control, budget, events] = names;
        if !instance.maps_dir().join(control).exists() {
            return Ok(None);
        }
        let open = |name: &str| bpf::open_pinned_map(instance, name);
        let mut source = Self {
            control: Array::try_from(open(control)?).map_err(|e| bpf_error(control)(&e))?,
            budget: PerCpuArray::try_from(open(budget)?).map_err(|e| bpf_error(budget)(&e))?,
            events: RingBuf::try_from(open(events)?).map_err(|e| bpf_error(events)(&e))?,
            skipped: 0,
        };
        source.skipped = source.skipped_total();
        Ok(Some(source))
    }

    fn skipped_total(&self) -> u64 {
        self.budget
            .get(&0, 0)
            .map(|values| values.iter().map(|budget| budget.skipped).sum())
            .unwrap_or(0)
    }
}

/// The queue overflow program, loaded and attached by one trace for its life: its link and
/// maps are this process's only, so they go when it exits, however it exits.
struct OverflowWatch {
    ebpf: Ebpf,
    instance: Instance,
    /// The queue devices the program knows.
    devices: Vec<[u8; 16]>,
}

impl OverflowWatch {
    /// Loads the program with the cgroup object's pinned maps (so it writes to the ring buffer
    /// the trace reads), tells it this kernel's offsets, and attaches it.
    fn attach(instance: &Instance, pid: u32) -> Result<Self> {
        let btf = Btf::kernel()?;
        let reason = |name: &str| {
            btf.enum_value("skb_drop_reason", name)
                .and_then(|value| u32::try_from(value).ok())
                .unwrap_or(u32::MAX)
        };
        let config = OverflowConfig {
            reasons: [
                reason("SKB_DROP_REASON_QDISC_DROP"),
                reason("SKB_DROP_REASON_QDISC_OVERLIMIT"),
                reason("SKB_DROP_REASON_QDISC_CONGESTED"),
            ],
            pid,
            skb_dev: btf.field_offset("sk_buff", "dev")?,
            skb_len: btf.field_offset("sk_buff", "len")?,
            skb_head: btf.field_offset("sk_buff", "head")?,
            skb_data: btf.field_offset("sk_buff", "data")?,
            skb_network_header: btf.field_offset("sk_buff", "network_header")?,
            dev_name: btf.field_offset("net_device", "name")?,
        };
        let mut ebpf = load_object(instance)?;
        let map = ebpf
            .map_mut(OVERFLOW_CONFIG_MAP)
            .ok_or_else(|| bpf::missing_map(OVERFLOW_CONFIG_MAP))?;
        Array::<_, OverflowConfig>::try_from(map)
            .map_err(|e| bpf_error(OVERFLOW_CONFIG_MAP)(&e))?
            .set(0, config, 0)
            .map_err(|e| bpf_error("cannot configure the queue overflow program")(&e))?;
        let mut watch = Self {
            ebpf,
            instance: instance.clone(),
            devices: Vec::new(),
        };
        watch.refresh()?;
        let program = program_mut::<RawTracePoint>(&mut watch.ebpf, QUEUE_OVERFLOW_PROGRAM)?;
        program
            .load()
            .map_err(|e| load_error(QUEUE_OVERFLOW_PROGRAM, &e))?;
        program
            .attach(QUEUE_OVERFLOW_TRACEPOINT)
            .map_err(|e| bpf_error("cannot attach to the kfree_skb tracepoint")(&e))?;
        Ok(watch)
    }

    /// Tells the program the queue devices there are now (of every namespace: a device's name
    /// says its instance and cgroup).
    fn refresh(&mut self) -> Result<()> {
        let wanted: HashMap<[u8; 16], u64> = queues::entries(&self.instance)
            .into_iter()
            .map(|key| {
                let name = queues::device_name(&self.instance, key.cgroup_id);
                let mut padded = [0u8; 16];
                let length = name.len().min(15);
                padded[..length].copy_from_slice(&name.as_bytes()[..length]);
                (padded, key.cgroup_id)
            })
            .collect();
        let map = self
            .ebpf
            .map_mut(QUEUE_DEVICES_MAP)
            .ok_or_else(|| bpf::missing_map(QUEUE_DEVICES_MAP))?;
        let mut devices = BpfHashMap::<_, [u8; 16], u64>::try_from(map)
            .map_err(|e| bpf_error(QUEUE_DEVICES_MAP)(&e))?;
        for gone in self
            .devices
            .iter()
            .filter(|name| !wanted.contains_key(*name))
        {
            let _ = devices.remove(gone);
        }
        for (name, cgroup_id) in &wanted {
            devices
                .insert(name, cgroup_id, 0)
                .map_err(|e| bpf_error("cannot write the queue devices")(&e))?;
        }
        self.devices = wanted.into_keys().collect();
        Ok(())
    }
}

/// A running trace: holds the lease of every datapath there is, and clears it when dropped.
pub struct Tracer {
    sources: Vec<Source>,
    pid: u32,
    /// None without a cgroup datapath, or when the program cannot go on this kernel.
    overflows: Option<OverflowWatch>,
}

impl Tracer {
    /// Opens the trace maps of the installed datapaths and takes the lease.
    pub fn attach(instance: &Instance) -> Result<Self> {
        let mut sources = Vec::new();
        let cgroups = instance.maps_dir().join(TRACE_MAP).exists();
        for names in [
            [TRACE_MAP, TRACE_BUDGET_MAP, TRACE_EVENTS_MAP],
            [NET_TRACE_MAP, NET_TRACE_BUDGET_MAP, NET_TRACE_EVENTS_MAP],
            [CONN_TRACE_MAP, CONN_TRACE_BUDGET_MAP, CONN_TRACE_EVENTS_MAP],
        ] {
            sources.extend(Source::open(instance, names)?);
        }
        if sources.is_empty() {
            return Err(Error::NothingToTrace);
        }
        let pid = std::process::id();
        // Overflows are of the queues of cgroup limits, and go to the cgroup object's ring
        // buffer. A kernel that refuses the program still gets the other events.
        let overflows = if cgroups {
            OverflowWatch::attach(instance, pid)
                .inspect_err(|e| tracing::warn!("queue overflows are not traced: {e}"))
                .ok()
        } else {
            None
        };
        let mut tracer = Self {
            sources,
            pid,
            overflows,
        };
        tracer.renew()?;
        Ok(tracer)
    }

    /// Moves the lease on to [`TRACE_LEASE_NS`] from now, and tells the overflow program of
    /// queues made or removed since.
    pub fn renew(&mut self) -> Result<()> {
        if let Some(watch) = &mut self.overflows {
            watch.refresh()?;
        }
        let control = TraceControl {
            until_ns: MonotonicClock.now_ns() + TRACE_LEASE_NS,
            events_per_second: TRACE_EVENTS_PER_SECOND,
            pid: self.pid,
        };
        for source in &mut self.sources {
            source
                .control
                .set(0, control, 0)
                .map_err(|e| bpf_error("cannot write the trace control")(&e))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for events, and adds every event waiting to `out`.
    pub fn read(&mut self, timeout: Duration, out: &mut Vec<TraceEvent>) -> Result<()> {
        let mut fds: Vec<libc::pollfd> = self
            .sources
            .iter()
            .map(|source| libc::pollfd {
                fd: source.events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds, alive for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    context: "cannot wait for trace events".into(),
                    source: error,
                });
            }
        }
        for source in &mut self.sources {
            while let Some(item) = source.events.next() {
                if item.len() >= size_of::<TraceEvent>() {
                    // SAFETY: the kernel wrote a whole `TraceEvent`, plain integers for which
                    // every bit pattern is valid; the item may be unaligned, hence the read.
                    out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
                }
            }
        }
        Ok(())
    }

    /// Events the kernel skipped since the last call.
    pub fn skipped(&mut self) -> u64 {
        let mut skipped = 0;
        for source in &mut self.sources {
            let total = source.skipped_total();
            skipped += total.saturating_sub(source.skipped);
            source.skipped = total;
        }
        skipped
    }

    /// Ends the lease, unless another trace has taken it since.
    pub fn clear(&mut self) {
        for source in &mut self.sources {
            if source.control.get(&0, 0).is_ok_and(|c| c.pid == self.pid) {
                let _ = source.control.set(0, TraceControl::default(), 0);
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Traces until `stop` is set, passing `emit` each record the filter keeps and, once a second,
/// how many events the kernel skipped. The lease is cleared on the way out, on error too.
pub fn run(
    instance: &Instance,
    filter: &TraceFilter,
    stop: &AtomicBool,
    mut emit: impl FnMut(&TraceRecord) -> std::io::Result<()>,
) -> Result<()> {
    let mut tracer = Tracer::attach(instance)?;
    let mut names = CgroupNames::discover();
    names.instance = Some(instance.clone());
    names.name_namespaces(instance);
    let mut events = Vec::new();
    let mut renewed = Instant::now();
    let write_error = |source| Error::Io {
        context: "cannot write the trace".into(),
        source,
    };
    while !stop.load(Ordering::Relaxed) {
        events.clear();
        tracer.read(Duration::from_millis(POLL_MS as u64), &mut events)?;
        for event in events.iter().filter(|event| filter.keeps(event)) {
            if let Some(record) = decode(event, &mut names) {
                emit(&record).map_err(write_error)?;
            }
        }
        if renewed.elapsed() >= RENEW_EVERY {
            tracer.renew()?;
            renewed = Instant::now();
            let skipped = tracer.skipped();
            if skipped > 0 {
                emit(&TraceRecord::Skipped { events: skipped }).map_err(write_error)?;
            }
        }
    }
    Ok(())
}

/// The record of a raw event; None for a kind this build does not know.
pub fn decode(event: &TraceEvent, names: &mut CgroupNames) -> Option<TraceRecord> {
    let time = format!(
        "{}.{:06}",
        event.time_ns / 1_000_000_000,
        event.time_ns % 1_000_000_000 / 1000
    );
    let source = endpoint(event.family, &event.source, event.source_port);
    let destination = endpoint(event.family, &event.destination, event.destination_port);
    let cgroup = (event.cgroup_id != 0).then(|| names.name(event.cgroup_id));
    Some(match event.kind {
        EVENT_CGROUP_REFUSED | EVENT_NET_REFUSED => {
            let net = event.kind == EVENT_NET_REFUSED;
            let limit = if net {
                format!("rule {}", event.rule)
            } else {
                match event.cgroup_id {
                    0 => "cgroup ?".into(),
                    id => names.limit(id),
                }
            };
            TraceRecord::Refused {
                time,
                limit,
                cgroup: if net { None } else { cgroup },
                rule: net.then_some(event.rule),
                direction: match event.hook {
                    hook if hook == Direction::Egress as u8 => "egress",
                    TRACE_HOOK_XDP => "ingress-xdp",
                    _ => "ingress",
                },
                bytes: event.value,
                protocol: protocol(event.protocol),
                source,
                destination,
            }
        }
        EVENT_CONN_REFUSED => TraceRecord::RefusedConnect {
            time,
            limit: format!("rule {}", event.rule),
            rule: event.rule,
            reason: if event.reason == CONN_REFUSED_CALLERS_FULL {
                "callers-full"
            } else {
                "no-token"
            },
            pid: event.tgid,
            tid: event.pid,
            comm: comm(&event.comm),
            netns: event.netns,
            protocol: protocol(event.protocol),
            destination,
        },
        EVENT_PACING => TraceRecord::Pacing {
            time,
            cgroup,
            rate: event.value,
            source,
            destination,
        },
        EVENT_WINDOW => TraceRecord::Window {
            time,
            cgroup,
            window: event.value,
            source,
            destination,
        },
        EVENT_QUEUE_OVERFLOW => TraceRecord::QueueOverflow {
            time,
            device: match &names.instance {
                Some(instance) => queues::device_name(instance, event.cgroup_id),
                None => "?".into(),
            },
            cgroup,
            bytes: event.value,
            protocol: protocol(event.protocol),
            source,
            destination,
        },
        _ => return None,
    })
}

fn protocol(number: u8) -> String {
    match number {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        other => format!("proto-{other}"),
    }
}

/// A thread's name as the kernel keeps it: up to 16 bytes, NUL-padded, not always UTF-8.
fn comm(bytes: &[u8; 16]) -> String {
    let length = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..length]).into_owned()
}

/// `address:port` (`[address]:port` for IPv6), the port left out when unknown.
fn endpoint(family: u8, address: &[u8; 16], port: u16) -> String {
    let ip = match family {
        TRACE_FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::new(
            address[0], address[1], address[2], address[3],
        )),
        TRACE_FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(*address)),
        _ => return "?".into(),
    };
    match (ip, port) {
        (ip, 0) => ip.to_string(),
        (IpAddr::V4(ip), port) => format!("{ip}:{port}"),
        (IpAddr::V6(ip), port) => format!("[{ip}]:{port}"),
    }
}

/// Cgroup paths by id (the inode of the cgroup's directory), found by a walk of the v2 tree the
/// first time an id is seen, and kept; and the instance whose queue devices overflow.
pub struct CgroupNames {
    mount: Option<PathBuf>,
    names: HashMap<u64, String>,
    instance: Option<Instance>,
}

impl CgroupNames {
    pub fn discover() -> Self {
        Self {
            mount: CgroupFs::discover().ok().map(|fs| fs.mount().to_owned()),
            names: HashMap::new(),
            instance: None,
        }
    }

    /// Names the limited network namespaces' scopes by the paths they were limited by.
    fn name_namespaces(&mut self, instance: &Instance) {
        let Ok(state) = crate::store::State::load(&crate::engine::state_path(instance)) else {
            return;
        };
        for record in &state.netns_limits.rules {
            self.names.insert(
                netns_scope(record.cookie),
                format!("netns {}", record.netns),
            );
        }
        // A member's refusals are its shared limit's: named with it.
        for group in &state.shared_limits.groups {
            for member in &group.members {
                let name = match member {
                    Member::Cgroup { path, .. } => format!("{path} (shared {})", group.name),
                    Member::Netns { path, .. } => {
                        format!("netns {path} (shared {})", group.name)
                    }
                };
                self.names.insert(member.scope(), name);
            }
        }
    }

    /// The limit of a scope: `cgroup /path`, or `netns /path` for a network namespace's.
    pub fn limit(&mut self, id: u64) -> String {
        let name = self.name(id);
        if scope_netns(id).is_some() {
            name
        } else {
            format!("cgroup {name}")
        }
    }

    /// The cgroup's path from the v2 root, or `id N` if it cannot be found; for a network
    /// namespace's scope, `netns` and its path (or cookie).
    pub fn name(&mut self, id: u64) -> String {
        if let Some(name) = self.names.get(&id) {
            return name.clone();
        }
        if let Some(cookie) = scope_netns(id) {
            return format!("netns cookie {cookie}");
        }
        let name = self
            .mount
            .as_deref()
            .and_then(|mount| find_inode(mount, mount, id, 0))
            .unwrap_or_else(|| format!("id {id}"));
        self.names.insert(id, name.clone());
        name
    }
}

/// The path from `mount` of the directory below `dir` with inode `id`.
fn find_inode(mount: &Path, dir: &Path, id: u64, depth: u32) -> Option<String> {
    if fs::metadata(dir).ok()?.ino() == id {
        let relative = dir.strip_prefix(mount).ok()?;
        return Some(format!("/{}", relative.display()));
    }
    if depth >= rein_common::MAX_CGROUP_DEPTH {
        return None;
    }
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|entry| find_inode(mount, &entry.path(), id, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(cgroup_id: u64) -> TraceEvent {
        let mut event = TraceEvent::EMPTY;
        event.time_ns = 12_345_678_901;
        event.kind = EVENT_CGROUP_REFUSED;
        event.cgroup_id = cgroup_id;
        event.hook = Direction::Egress as u8;
        event.value = 1228;
        event.family = TRACE_FAMILY_IPV4;
        event.protocol = 17;
        event.source[..4].copy_from_slice(&[10, 0, 0, 1]);
        event.destination[..4].copy_from_slice(&[10, 0, 0, 2]);
        event.source_port = 40000;
        event.destination_port = 5201;
        event
    }

    #[test]
    fn a_refusal_reads_as_one_line_with_limit_direction_size_and_tuple() {
        let mut names = CgroupNames {
            mount: None,
            names: HashMap::from([(7, "/app".to_owned())]),
            instance: None,
        };
        let record = decode(&refusal(7), &mut names).unwrap();
        assert_eq!(
            record.to_string(),
            "12.345678 refused egress cgroup /app 1228B udp 10.0.0.1:40000 -> 10.0.0.2:5201"
        );
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["event"], "refused");
        assert_eq!(json["cgroup"], "/app");
        assert_eq!(json["destination"], "10.0.0.2:5201");
    }

    #[test]
    fn a_namespace_limit_reads_by_its_path_and_an_unknown_one_by_its_cookie() {
        let mut names = CgroupNames {
            mount: None,
            names: HashMap::from([(netns_scope(9), "netns /run/netns/pod".to_owned())]),
            instance: None,
        };
        let record = decode(&refusal(netns_scope(9)), &mut names).unwrap();
        assert_eq!(
            record.to_string(),
            "12.345678 refused egress netns /run/netns/pod 1228B udp 10.0.0.1:40000 -> 10.0.0.2:5201"
        );
        let unknown = decode(&refusal(netns_scope(10)), &mut names).unwrap();
        assert!(
            unknown.to_string().contains(" netns cookie 10 "),
            "{unknown}"
        );
    }

    #[test]
    fn filters_keep_their_cgroup_rule_and_drops() {
        let mut net = refusal(0);
        net.kind = EVENT_NET_REFUSED;
        net.rule = 3;
        let mut pacing = refusal(7);
        pacing.kind = EVENT_PACING;
        let cgroup = TraceFilter {
            cgroup: Some(7),
            ..TraceFilter::default()
        };
        assert!(cgroup.keeps(&refusal(7)) && cgroup.keeps(&pacing));
        assert!(!cgroup.keeps(&refusal(8)) && !cgroup.keeps(&net));
        let rule = TraceFilter {
            rule: Some(3),
            ..TraceFilter::default()
        };
        assert!(rule.keeps(&net) && !rule.keeps(&refusal(7)));
        let drops = TraceFilter {
            drops_only: true,
            ..TraceFilter::default()
        };
        assert!(drops.keeps(&refusal(7)) && drops.keeps(&net) && !drops.keeps(&pacing));
        // A queue overflow is a drop, of its limit's cgroup, and of no rule.
        let mut overflow = refusal(7);
        overflow.kind = EVENT_QUEUE_OVERFLOW;
        overflow.hook = Direction::Ingress as u8;
        assert!(drops.keeps(&overflow) && cgroup.keeps(&overflow) && !rule.keeps(&overflow));
        overflow.cgroup_id = 8;
        assert!(!cgroup.keeps(&overflow));
    }

    #[test]
    fn a_refused_connect_reads_as_one_line_with_rule_reason_destination_and_caller() {
        let mut names = CgroupNames {
            mount: None,
            names: HashMap::new(),
            instance: None,
        };
        let mut event = TraceEvent::EMPTY;
        event.time_ns = 12_345_678_901;
        event.kind = EVENT_CONN_REFUSED;
        event.rule = 3;
        event.reason = rein_common::abi::trace::CONN_REFUSED_NO_TOKEN;
        event.family = TRACE_FAMILY_IPV4;
        event.protocol = 6;
        event.destination[..4].copy_from_slice(&[10, 0, 0, 2]);
        event.destination_port = 8080;
        (event.pid, event.tgid, event.netns) = (1235, 1234, 4096);
        event.comm[..4].copy_from_slice(b"curl");
        let record = decode(&event, &mut names).unwrap();
        assert_eq!(
            record.to_string(),
            "12.345678 refused-connect rule 3 no-token tcp -> 10.0.0.2:8080 pid 1234 tid 1235 \
             comm \"curl\" netns 4096"
        );
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["event"], "refused-connect");
        assert_eq!(
            (json["rule"].as_u64(), json["pid"].as_u64()),
            (Some(3), Some(1234))
        );
        assert_eq!(json["comm"], "curl");
        event.reason = CONN_REFUSED_CALLERS_FULL;
        let json = serde_json::to_value(decode(&event, &mut names).unwrap()).unwrap();
        assert_eq!(json["reason"], "callers-full");
        // A drop, of its rule, of no cgroup.
        let keeps = |filter: TraceFilter| filter.keeps(&event);
        assert!(keeps(TraceFilter {
            rule: Some(3),
            drops_only: true,
            ..TraceFilter::default()
        }));
        assert!(!keeps(TraceFilter {
            rule: Some(4),
            ..TraceFilter::default()
        }));
        assert!(!keeps(TraceFilter {
            cgroup: Some(0),
            ..TraceFilter::default()
        }));
    }

    #[test]
    fn a_queue_overflow_reads_as_one_line_with_its_cgroup_device_and_tuple() {
        let instance = Instance::new("rein").unwrap();
        let mut names = CgroupNames {
            mount: None,
            names: HashMap::from([(7, "/app".to_owned())]),
            instance: Some(instance.clone()),
        };
        let mut event = refusal(7);
        event.kind = EVENT_QUEUE_OVERFLOW;
        event.hook = Direction::Ingress as u8;
        event.protocol = 6;
        let device = queues::device_name(&instance, 7);
        let record = decode(&event, &mut names).unwrap();
        assert_eq!(
            record.to_string(),
            format!(
                "12.345678 queue-overflow ingress cgroup /app {device} 1228B tcp \
                 10.0.0.1:40000 -> 10.0.0.2:5201"
            )
        );
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["event"], "queue-overflow");
        assert_eq!(json["cgroup"], "/app");
        assert_eq!(json["device"], device.as_str());
        assert_eq!(json["bytes"], 1228);
    }
}
