//! `rein net`: rules on interfaces, each all-or-nothing like the cgroup limits.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rein_common::{
    Counters,
    net::{FAMILY_IPV4, MAX_SKETCH_CELLS},
};
use serde::Serialize;

use super::Rein;
use crate::{
    clock::Clock,
    error::{Error, IoContext, Result},
    net::{NetRuleSpec, Sources},
    net_datapath::{Attachment, NetDatapath, SourceEntry},
    state::{NetRuleRecord, State},
    sys,
    undo::Undo,
};

/// How many sources `list` shows for a per-source rule.
const TOP_SOURCES: usize = 5;

/// One `rein net` rule as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NetRuleView {
    #[serde(flatten)]
    pub record: NetRuleRecord,
    /// Whether the rule's program is on its device (false once the device was deleted; adding a
    /// rule on the device again reattaches it).
    pub attached: bool,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Kernel memory of the rule's sketch, for sketch rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sketch_bytes: Option<u64>,
    /// Per-source rules: the sources that sent the most (a sketch rule knows the heavy ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_sources: Vec<SourceView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceView {
    pub address: IpAddr,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

impl Rein {
    /// Adds a rule on an interface of the calling thread's network namespace.
    pub fn net_add(&mut self, spec: NetRuleSpec) -> Result<NetRuleRecord> {
        let mut state = self.load_state()?;
        let device = sys::device(&spec.device)
            .context(|| format!("cannot look up device {}", spec.device))?
            .ok_or_else(|| Error::NoSuchDevice(spec.device.clone()))?;
        if ![sys::ARPHRD_ETHER, sys::ARPHRD_LOOPBACK].contains(&device.link_type) {
            return Err(Error::NotEthernet {
                device: spec.device.clone(),
                link_type: device.link_type,
            });
        }
        let netns = sys::netns_cookie().context(|| "cannot read the network namespace".into())?;
        let matching = spec.matching(device.ifindex)?;
        for other in &state.net {
            if other.ifindex != device.ifindex || !self.is_live(other) {
                continue;
            }
            if other.netns != netns {
                return Err(Error::IfindexInOtherNetns {
                    ifindex: device.ifindex,
                    rule: other.id,
                });
            }
            if other
                .spec
                .matching(other.ifindex)
                .is_ok_and(|theirs| theirs.overlaps(&matching))
            {
                return Err(Error::DuplicateNetRule(other.id));
            }
        }
        let sketch_offset = match spec.sources {
            Sources::Sketch { size } => Some(free_sketch_cells(&state, size.cells())?),
            Sources::Shared | Sources::Exact => None,
        };
        let mut record = NetRuleRecord {
            id: state.next_net_id(),
            spec,
            ifindex: device.ifindex,
            netns,
            link_id: 0,
            sketch_offset,
        };

        let mut undo = Undo::new();
        if !NetDatapath::is_installed(&self.instance) {
            let instance = self.instance.clone();
            undo.push(move || NetDatapath::uninstall(&instance));
        }
        let mut datapath = NetDatapath::open_or_create(&self.instance)?;
        // Rules whose device is gone (deleted, or its namespace with it) stay listed, but their
        // entries must not match the traffic of a new device that got the same index.
        for gone in state
            .net
            .iter()
            .filter(|r| r.ifindex == device.ifindex && !self.is_live(r))
        {
            if let Ok(matching) = gone.spec.matching(gone.ifindex) {
                datapath.remove(gone.id, &matching);
            }
        }
        let at = attachment(&record);
        // Also when a pin is left by a link whose device went away: the new device gets the
        // program, and the undo removes it again.
        let (link_id, attached) = NetDatapath::attach(&self.instance, &record.spec.device, at)?;
        if attached {
            let instance = self.instance.clone();
            undo.push(move || NetDatapath::detach(&instance, at));
        }
        record.link_id = link_id;
        if let (Some(offset), Sources::Sketch { size }) = (sketch_offset, record.spec.sources) {
            datapath.clear_sketch(offset, size.cells())?;
        }
        let now = self.clock.now_ns();
        datapath.put(
            record.id,
            &matching,
            record.spec.rule(now, sketch_offset.unwrap_or(0)),
        )?;
        {
            let (instance, id) = (self.instance.clone(), record.id);
            undo.push(move || {
                if let Ok(mut datapath) = NetDatapath::open(&instance) {
                    datapath.remove(id, &matching);
                }
            });
        }
        state.net.push(record.clone());
        state.next_net_id = record.id + 1;
        // The gone rules' lookups go from the shapes too.
        self.write_shapes(&mut datapath, &state)?;
        state.save(&self.state_path())?;
        undo.commit();
        Ok(record)
    }

    /// Deletes rule `id`; the interface's program goes with its last rule.
    pub fn net_del(&mut self, id: u32) -> Result<NetRuleRecord> {
        let mut state = self.load_state()?;
        let index = state
            .net
            .iter()
            .position(|r| r.id == id)
            .ok_or(Error::NoSuchNetRule(id))?;
        let record = state.net.remove(index);
        let live = self.is_live(&record);
        // The state first: a failure below leaves a rule that is gone from the state, never
        // one that is listed but not enforced.
        state.save(&self.state_path())?;
        if NetDatapath::is_installed(&self.instance) {
            let mut datapath = NetDatapath::open(&self.instance)?;
            if let Ok(matching) = record.spec.matching(record.ifindex) {
                datapath.remove(record.id, &matching);
            }
            self.write_shapes(&mut datapath, &state)?;
        }
        let at = attachment(&record);
        let shared = state
            .net
            .iter()
            .any(|r| attachment(r) == at && r.link_id == record.link_id);
        if live && !shared {
            NetDatapath::detach(&self.instance, at);
        }
        self.save_or_tidy(&state)?;
        Ok(record)
    }

    /// Whether a rule applies: the link it was attached with still runs on its device.
    fn is_live(&self, record: &NetRuleRecord) -> bool {
        attachment(record).live_link(&self.instance) == Some(record.link_id)
    }

    /// Every `rein net` rule with its counters and, for per-source rules, its top sources.
    pub fn net_list(&self) -> Result<Vec<NetRuleView>> {
        let state = self.load_state()?;
        let datapath = if NetDatapath::is_installed(&self.instance) {
            Some(NetDatapath::open(&self.instance)?)
        } else {
            None
        };
        let per_source = |sketch: bool| {
            let wanted = state.net.iter().any(|r| match r.spec.sources {
                Sources::Exact => !sketch,
                Sources::Sketch { .. } => sketch,
                Sources::Shared => false,
            });
            match &datapath {
                Some(d) if wanted => d.top_sources_by_rule(sketch, TOP_SOURCES),
                _ => Default::default(),
            }
        };
        let (mut exact, mut heavy) = (per_source(false), per_source(true));
        Ok(state
            .net
            .iter()
            .map(|record| {
                let counters = datapath
                    .as_ref()
                    .map(|d| d.counters(record.id))
                    .unwrap_or_default();
                let (top, sketch_bytes) = match record.spec.sources {
                    Sources::Sketch { size } => {
                        (heavy.remove(&record.id), Some(size.memory_bytes()))
                    }
                    Sources::Exact => (exact.remove(&record.id), None),
                    Sources::Shared => (None, None),
                };
                let top_sources = top.unwrap_or_default().iter().map(source_view).collect();
                let attached = self.is_live(record);
                view(
                    record.clone(),
                    attached,
                    counters,
                    sketch_bytes,
                    top_sources,
                )
            })
            .collect())
    }

    /// Writes again the rules the maps lack (after a reload into a new map layout).
    pub(super) fn restore_net_rules(&self, state: &State) -> Result<usize> {
        if state.net.is_empty() {
            return Ok(0);
        }
        // Maps of a new layout are created here, before any program uses them.
        let mut datapath = NetDatapath::open_or_create(&self.instance)?;
        let now = self.clock.now_ns();
        let mut restored = 0;
        for record in &state.net {
            // A rule whose device is gone stays out of the maps (see net_add).
            if datapath.rule(record.id).is_some() || !self.is_live(record) {
                continue;
            }
            let matching = record.spec.matching(record.ifindex)?;
            if let (Some(offset), Sources::Sketch { size }) =
                (record.sketch_offset, record.spec.sources)
            {
                datapath.clear_sketch(offset, size.cells())?;
            }
            let rule = record.spec.rule(now, record.sketch_offset.unwrap_or(0));
            datapath.put(record.id, &matching, rule)?;
            restored += 1;
        }
        self.write_shapes(&mut datapath, state)?;
        Ok(restored)
    }

    /// Writes the lookups the rules that still apply need (their devices not gone).
    fn write_shapes(&self, datapath: &mut NetDatapath, state: &State) -> Result<()> {
        let shapes = state
            .net
            .iter()
            .filter(|r| self.is_live(r))
            .filter_map(|r| r.spec.matching(r.ifindex).ok())
            .fold(0, |shapes, matching| shapes | matching.shape_bits());
        datapath.set_shapes(shapes)
    }
}

fn attachment(record: &NetRuleRecord) -> Attachment {
    Attachment {
        netns: record.netns,
        ifindex: record.ifindex,
        hook: record.spec.hook,
    }
}

/// The first run of `needed` sketch cells no sketch rule uses.
fn free_sketch_cells(state: &State, needed: u32) -> Result<u32> {
    let mut used: Vec<(u32, u32)> = state
        .net
        .iter()
        .filter_map(|r| match (r.sketch_offset, r.spec.sources) {
            (Some(offset), Sources::Sketch { size }) => Some((offset, offset + size.cells())),
            _ => None,
        })
        .collect();
    used.sort_unstable();
    let mut start = 0u32;
    let mut largest = 0u32;
    for (offset, end) in used
        .into_iter()
        .chain([(MAX_SKETCH_CELLS, MAX_SKETCH_CELLS)])
    {
        let gap = offset.saturating_sub(start);
        if gap >= needed {
            return Ok(start);
        }
        largest = largest.max(gap);
        start = start.max(end);
    }
    Err(Error::SketchFull {
        needed,
        free: largest,
        total: MAX_SKETCH_CELLS,
    })
}

fn view(
    record: NetRuleRecord,
    attached: bool,
    counters: Counters,
    sketch_bytes: Option<u64>,
    top_sources: Vec<SourceView>,
) -> NetRuleView {
    NetRuleView {
        record,
        attached,
        passed_packets: counters.passed_packets,
        passed_bytes: counters.passed_bytes,
        dropped_packets: counters.dropped_packets,
        dropped_bytes: counters.dropped_bytes,
        sketch_bytes,
        top_sources,
    }
}

fn source_view(entry: &SourceEntry) -> SourceView {
    let address = if entry.key.family == FAMILY_IPV4 {
        let [a, b, c, d, ..] = entry.key.addr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(entry.key.addr))
    };
    let counters = entry.state.counters;
    SourceView {
        address,
        passed_packets: counters.passed_packets,
        passed_bytes: counters.passed_bytes,
        dropped_packets: counters.dropped_packets,
        dropped_bytes: counters.dropped_bytes,
    }
}
