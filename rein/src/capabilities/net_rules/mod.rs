//! `rein net`: limits on interfaces by address, service and source, each rule all-or-nothing
//! like the cgroup limits.
use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rein_common::{
    Counters,
    net::{FAMILY_IPV4, MAX_SKETCH_CELLS},
};
use serde::{Deserialize, Serialize};

pub mod conn;
pub mod datapath;
pub mod request;
pub mod spec;

use self::{
    datapath::{Attachment, NetDatapath, Shapes, SourceEntry},
    spec::{NetRuleSpec, Sources},
};
use super::{
    Capability, Context, PreparedReload,
    rule_steps::{Change, RuleStep, rule_steps},
};
use crate::{
    engine::{Desired, Engine, Plan, PurgeReport, Step},
    error::{Error, IoContext, Result},
    platform::netns,
    store::{State, Undo},
};

/// How many sources `list` shows for a per-source rule.
const TOP_SOURCES: usize = 5;

/// One `rein net` rule: what the operator asked, and where it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRuleRecord {
    pub id: u32,
    #[serde(flatten)]
    pub spec: NetRuleSpec,
    pub ifindex: u32,
    /// The network namespace of the device (its cookie, never reused while the machine runs).
    pub netns: u64,
    /// The kernel id of the link the rule was attached with: the rule applies while that link
    /// runs on its device.
    #[serde(default)]
    pub link_id: u32,
    /// Sketch rules: the first of their cells in the sketch map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch_offset: Option<u32>,
    /// The name of the declarative `NetRule` the rule belongs to (`rein apply`); none for a
    /// rule added by hand. Absent from files written before declarative limits; older rein
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

/// The `rein net` section of the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Absent from files written before `rein net` existed.
    #[serde(default)]
    pub net: Vec<NetRuleRecord>,
    /// The next rule's id: ids are not reused while the instance lives, so a script never
    /// deletes a rule that replaced the one it meant.
    #[serde(default)]
    pub next_net_id: u32,
}

impl Section {
    pub fn is_empty(&self) -> bool {
        self.net.is_empty()
    }

    pub fn find(&self, id: u32) -> Option<&NetRuleRecord> {
        self.net.iter().find(|r| r.id == id)
    }

    /// An id no rule has had.
    pub fn next_id(&self) -> u32 {
        let after_largest = self.net.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        after_largest.max(self.next_net_id)
    }
}

/// A rule as a desired state names it; one without an id is new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedNetRule {
    pub id: Option<u32>,
    pub spec: NetRuleSpec,
    pub declared_by: Option<String>,
}

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

/// Adds a rule on an interface of the calling thread's network namespace.
pub fn add(engine: &mut Engine, spec: NetRuleSpec) -> Result<NetRuleRecord> {
    let mut tx = engine.begin()?;
    let mut desired = tx.desired();
    desired.net_rules.push(WantedNetRule {
        id: None,
        spec,
        declared_by: None,
    });
    let plan = tx.plan(&desired)?;
    let id = tx.state().next_rule_id();
    tx.apply(&plan)?;
    let record = tx.state().net_rules.find(id).cloned();
    tx.commit()?;
    record.ok_or(Error::NoSuchNetRule(id))
}

/// Deletes rule `id`; the interface's program goes with its last rule.
pub fn delete(engine: &mut Engine, id: u32) -> Result<NetRuleRecord> {
    delete_where(engine, id, |_| Ok(()))
}

/// Deletes rule `id` if `allowed` accepts it, decided under the instance's lock.
fn delete_where(
    engine: &mut Engine,
    id: u32,
    allowed: impl FnOnce(&NetRuleRecord) -> Result<()>,
) -> Result<NetRuleRecord> {
    let mut tx = engine.begin()?;
    let record = tx
        .state()
        .net_rules
        .find(id)
        .cloned()
        .ok_or(Error::NoSuchNetRule(id))?;
    allowed(&record)?;
    let mut desired = tx.desired();
    desired.net_rules.retain(|rule| rule.id != Some(id));
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(record)
}

/// Every `rein net` rule with its counters and, for per-source rules, its top sources.
/// Only reads: it may run without the instance's lock (see `Status::read`).
pub fn status(cx: &Context, state: &State) -> Result<Vec<NetRuleView>> {
    let rules = &state.net_rules.net;
    let datapath = match NetDatapath::open(&cx.instance) {
        Ok(datapath) => Some(datapath),
        // Not installed, or uninstalled by a command while this reads.
        Err(_) if !NetDatapath::is_installed(&cx.instance) => None,
        Err(error) => return Err(error),
    };
    let per_source = |sketch: bool| {
        let wanted = rules.iter().any(|r| match r.spec.sources {
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
    Ok(rules
        .iter()
        .map(|record| {
            let counters = datapath
                .as_ref()
                .map(|d| d.counters(record.id))
                .unwrap_or_default();
            let (top, sketch_bytes) = match record.spec.sources {
                Sources::Sketch { size } => (heavy.remove(&record.id), Some(size.memory_bytes())),
                Sources::Exact => (exact.remove(&record.id), None),
                Sources::Shared => (None, None),
            };
            let top_sources = top.unwrap_or_default().iter().map(source_view).collect();
            view(
                record.clone(),
                is_live(cx, record),
                counters,
                sketch_bytes,
                top_sources,
            )
        })
        .collect())
}

/// Whether `after` differs from `before` in its limit's numbers only: the same packets, the
/// same kind of limit (token bucket, fixed or sliding window) of the same unit.
fn only_the_limit_changed(before: &NetRuleSpec, after: &NetRuleSpec) -> bool {
    let same_kind = std::mem::discriminant(&before.limit) == std::mem::discriminant(&after.limit)
        && before.limit.per() == after.limit.per();
    let with_new_limit = NetRuleSpec {
        limit: after.limit,
        ..before.clone()
    };
    same_kind && with_new_limit == *after
}

/// Changes a rule's limit in place: its rate and burst (or capacity), keeping what the bucket
/// owes (at most the new burst) or what the window counted, its counters, its per-source
/// state and its place in the lookups.
struct ChangeLimit {
    record: NetRuleRecord,
    spec: NetRuleSpec,
    declared_by: Option<String>,
}

impl fmt::Display for ChangeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "change net rule {} on {}",
            self.record.id, self.record.spec.device
        )
    }
}

impl Step for ChangeLimit {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let id = self.record.id;
        if NetDatapath::is_installed(&cx.instance) {
            let mut datapath = NetDatapath::open(&cx.instance)?;
            if let Some(previous) = datapath.rule(id) {
                let now = cx.now_ns();
                let mut rule = self.spec.rule(now, self.record.sketch_offset.unwrap_or(0));
                carry_state(&mut rule, &previous, now);
                datapath.change_limit(id, rule)?;
                let cx = cx.clone();
                undo.push(move || {
                    if let Ok(mut datapath) = NetDatapath::open(&cx.instance) {
                        let _ = datapath.change_limit(id, previous);
                    }
                });
            }
        }
        if let Some(record) = state.net_rules.net.iter_mut().find(|r| r.id == id) {
            record.spec = self.spec.clone();
            record.declared_by = self.declared_by.clone();
        }
        Ok(())
    }
}

/// What a rule's kernel state owes or counted, carried into its new limit: a bucket's debt up
/// to the new burst (as a cgroup limit's), a window's counts when its length is the same.
fn carry_state(
    rule: &mut rein_common::net::NetRule,
    previous: &rein_common::net::NetRule,
    now: u64,
) {
    if rule.algorithm == rein_common::net::ALGORITHM_TOKEN_BUCKET {
        rule.bucket.tat = previous.bucket.tat.clamp(now, now + rule.bucket.burst_ns);
    } else if rule.window_ns == previous.window_ns {
        rule.window = previous.window;
        rule.last_pass_ns = previous.last_pass_ns;
    }
}

/// Adds a rule: its program on its interface, its entries in the maps.
struct AddRule {
    id: u32,
    spec: NetRuleSpec,
    declared_by: Option<String>,
}

impl fmt::Display for AddRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "add net rule {} on {}", self.id, self.spec.device)
    }
}

impl Step for AddRule {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let spec = self.spec.clone();
        let device = netns::device(&spec.device)
            .context(|| format!("cannot look up device {}", spec.device))?
            .ok_or_else(|| Error::NoSuchDevice(spec.device.clone()))?;
        if ![netns::ARPHRD_ETHER, netns::ARPHRD_LOOPBACK].contains(&device.link_type) {
            return Err(Error::NotEthernet {
                device: spec.device.clone(),
                link_type: device.link_type,
            });
        }
        let netns = netns::cookie().context(|| "cannot read the network namespace".into())?;
        let matching = spec.matching(device.ifindex)?;
        for other in &state.net_rules.net {
            if other.ifindex != device.ifindex || !is_live(cx, other) {
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
            Sources::Sketch { size } => Some(free_sketch_cells(state, size.cells())?),
            Sources::Shared | Sources::Exact => None,
        };
        let mut record = NetRuleRecord {
            id: self.id,
            spec,
            ifindex: device.ifindex,
            netns,
            link_id: 0,
            sketch_offset,
            declared_by: self.declared_by.clone(),
        };

        if !NetDatapath::is_installed(&cx.instance) {
            let instance = cx.instance.clone();
            undo.push(move || NetDatapath::uninstall(&instance));
        }
        let mut datapath = NetDatapath::open_or_create(&cx.instance)?;
        // Rules whose device is gone (deleted, or its namespace with it) stay listed, but their
        // entries must not match the traffic of a new device that got the same index.
        for gone in state
            .net_rules
            .net
            .iter()
            .filter(|r| r.ifindex == device.ifindex && !is_live(cx, r))
        {
            if let Ok(matching) = gone.spec.matching(gone.ifindex) {
                datapath.remove(gone.id, &matching);
            }
        }
        let at = attachment(&record);
        // Also when a pin is left by a link whose device went away: the new device gets the
        // program, and the undo removes it again.
        let (link_id, attached) = NetDatapath::attach(&cx.instance, &record.spec.device, at)?;
        if attached {
            let instance = cx.instance.clone();
            undo.push(move || NetDatapath::detach(&instance, at));
        }
        record.link_id = link_id;
        if let (Some(offset), Sources::Sketch { size }) = (sketch_offset, record.spec.sources) {
            datapath.clear_sketch(offset, size.cells())?;
        }
        let now = cx.now_ns();
        datapath.put(
            record.id,
            &matching,
            record.spec.rule(now, sketch_offset.unwrap_or(0)),
        )?;
        {
            let (instance, id) = (cx.instance.clone(), record.id);
            undo.push(move || {
                if let Ok(mut datapath) = NetDatapath::open(&instance) {
                    datapath.remove(id, &matching);
                }
            });
        }
        state.net_rules.next_net_id = record.id + 1;
        state.net_rules.net.push(record);
        // The gone rules' lookups go from the shapes too.
        write_shapes(cx, &mut datapath, state)
    }
}

/// Removes a rule's entries from the maps. Its program leaves the interface once the state
/// is saved without the rule (`remove_if_unused`).
struct RemoveRule {
    record: NetRuleRecord,
}

impl fmt::Display for RemoveRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delete net rule {} on {}",
            self.record.id, self.record.spec.device
        )
    }
}

impl Step for RemoveRule {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let record = &self.record;
        let live = is_live(cx, record);
        state.net_rules.net.retain(|r| r.id != record.id);
        if !NetDatapath::is_installed(&cx.instance) {
            return Ok(());
        }
        let mut datapath = NetDatapath::open(&cx.instance)?;
        if let Ok(matching) = record.spec.matching(record.ifindex) {
            let was_there = datapath.rule(record.id).is_some();
            datapath.remove(record.id, &matching);
            if was_there && live {
                // Back with a full bucket: a bucket's kernel state cannot be put back exactly,
                // and a full one errs toward passing, never toward a drop.
                let cx = cx.clone();
                let (id, spec, offset) = (record.id, record.spec.clone(), record.sketch_offset);
                undo.push(move || {
                    if let Ok(mut datapath) = NetDatapath::open(&cx.instance) {
                        let rule = spec.rule(cx.now_ns(), offset.unwrap_or(0));
                        let _ = datapath.put(id, &matching, rule);
                    }
                });
            }
        }
        write_shapes(cx, &mut datapath, state)
    }
}

/// Whether a rule applies: the link it was attached with still runs on its device.
fn is_live(cx: &Context, record: &NetRuleRecord) -> bool {
    attachment(record).live_link(&cx.instance) == Some(record.link_id)
}

/// Writes the lookups the rules that still apply need (their devices not gone).
fn write_shapes(cx: &Context, datapath: &mut NetDatapath, state: &State) -> Result<()> {
    let shapes = state
        .net_rules
        .net
        .iter()
        .filter(|r| is_live(cx, r))
        .filter_map(|r| r.spec.matching(r.ifindex).ok())
        .fold(Shapes::default(), |mut shapes, matching| {
            if matching.is_connections() {
                shapes.connections |= matching.shape_bits();
            } else {
                shapes.traffic |= matching.shape_bits();
            }
            shapes
        });
    datapath.set_shapes(shapes)
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
        .net_rules
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

/// Detaches the programs of interfaces no rule that applies uses any more: an attachment is
/// used while a rule attached with its link (`is_live`, asked once per attachment).
fn detach_unused(cx: &Context, state: &State) {
    for at in NetDatapath::attachments(&cx.instance) {
        let live = at.live_link(&cx.instance);
        let used = live.is_some()
            && state
                .net_rules
                .net
                .iter()
                .any(|r| attachment(r) == at && Some(r.link_id) == live);
        if !used {
            NetDatapath::detach(&cx.instance, at);
        }
    }
}

/// The interface rules, as the engine drives them.
pub(crate) struct NetRules;

impl Capability for NetRules {
    fn name(&self) -> &'static str {
        "net rules"
    }

    fn plan(&self, _cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        // A rule whose limit alone changed (its rate, burst, capacity, not its kind) is changed
        // in place, keeping its bucket or window; any other change removes it and adds it
        // again under its id.
        let steps = rule_steps(
            &state.net_rules.net,
            |r| r.id,
            &desired.net_rules,
            |w| w.id,
            |r, w| {
                Change::between(
                    r.spec == w.spec && r.declared_by == w.declared_by,
                    only_the_limit_changed(&r.spec, &w.spec),
                )
            },
            state.next_rule_id(),
            Error::NoSuchNetRule,
        )?;
        for step in steps {
            match step {
                RuleStep::Remove(record) => plan.push(RemoveRule {
                    record: record.clone(),
                }),
                RuleStep::ChangeLimit(record, wanted) => plan.push(ChangeLimit {
                    record: record.clone(),
                    spec: wanted.spec.clone(),
                    declared_by: wanted.declared_by.clone(),
                }),
                RuleStep::Add(id, wanted) => plan.push(AddRule {
                    id,
                    spec: wanted.spec.clone(),
                    declared_by: wanted.declared_by.clone(),
                }),
            }
        }
        Ok(())
    }

    fn is_installed(&self, cx: &Context) -> bool {
        NetDatapath::is_installed(&cx.instance)
    }

    fn prepare_reload(&self, cx: &Context) -> Result<Option<Box<dyn PreparedReload>>> {
        Ok(NetDatapath::prepare_reload(&cx.instance)?
            .map(|reload| Box::new(reload) as Box<dyn PreparedReload>))
    }

    /// Writes again the rules the maps lack (after a reload into a new map layout).
    fn restore(&self, cx: &Context, state: &State, _undo: &mut Undo) -> Result<usize> {
        if state.net_rules.is_empty() {
            return Ok(0);
        }
        // Maps of a new layout are created here, before any program uses them.
        let mut datapath = NetDatapath::open_or_create(&cx.instance)?;
        let now = cx.now_ns();
        let mut restored = 0;
        for record in &state.net_rules.net {
            // A rule whose device is gone stays out of the maps (see AddRule).
            if datapath.rule(record.id).is_some() || !is_live(cx, record) {
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
        write_shapes(cx, &mut datapath, state)?;
        Ok(restored)
    }

    /// Removes the map entries of rules the state does not hold (a command that died between
    /// its map writes and its save), and the programs of interfaces no rule uses.
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        if !NetDatapath::is_installed(&cx.instance) {
            return Ok(());
        }
        let mut datapath = NetDatapath::open(&cx.instance)?;
        let held: HashSet<u32> = state.net_rules.net.iter().map(|r| r.id).collect();
        let orphans = datapath.remove_rules_except(&held);
        if orphans > 0 {
            tracing::info!("removed {orphans} orphaned net rule(s) from the maps");
            write_shapes(cx, &mut datapath, state)?;
        }
        detach_unused(cx, state);
        Ok(())
    }

    fn remove_if_unused(&self, cx: &Context, state: &State) {
        if state.net_rules.is_empty() {
            NetDatapath::uninstall(&cx.instance);
        } else {
            detach_unused(cx, state);
        }
    }

    fn purge(&self, cx: &Context, state: &State, report: &mut PurgeReport) {
        report.rules += state.net_rules.net.len();
        NetDatapath::uninstall(&cx.instance);
    }
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
