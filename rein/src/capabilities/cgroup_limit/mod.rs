//! Limits per cgroup (and so per process, container or pod): a token bucket per direction in
//! the cgroup programs, TCP flows paced (egress) or windowed (ingress) at their share.
//!
//! `set`, `unset` and `rein run` are transactions on the engine: a cgroup made or a process
//! moved, and the plan from the state to the state with the changed record.
use std::{
    collections::HashSet,
    fmt, fs, thread,
    time::{Duration, Instant},
};

use rein_common::{Direction, Rule, RuleKey, scope_group, scope_netns, share::epoch_of};
use serde::Serialize;

pub mod datapath;
mod spec;

pub use spec::{DeclaredBy, LimitChange, LimitSpec, Origin, RuleRecord, Section, Target};

use self::datapath::{DIRECTIONS, Datapath};
use super::{Capability, Context, PreparedReload, rule_steps::plan_keyed, shared_limit};
use crate::{
    engine::{Desired, Engine, Plan, PurgeReport, Step},
    error::{Error, Result},
    platform::{cgroupfs::Cgroup, procfs},
    store::{State, Undo},
};

/// A process moved by `set --pid`.
#[derive(Clone, Debug, Serialize)]
pub struct Moved {
    pub pid: u32,
    pub from: String,
    pub to: String,
    /// Sockets the process had open before the move: they keep their old cgroup.
    pub sockets_left_behind: usize,
}

#[derive(Clone, Debug)]
pub struct SetOutcome {
    pub record: RuleRecord,
    pub moved: Option<Moved>,
}

/// One limited cgroup as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub origin: Origin,
    /// The declarative resource the limit belongs to (`rein apply`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
    pub processes: Vec<u32>,
    pub egress: Option<DirectionView>,
    pub ingress: Option<DirectionView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DirectionView {
    pub rate_bits_per_second: u64,
    pub burst_bytes: u64,
    pub burst_is_default: bool,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// TCP flows sharing the limit now (flows that sent in the last 100-200 ms).
    pub tcp_flows: u32,
}

/// A cgroup made by `rein run`, to be torn down when its command ends.
#[derive(Clone, Debug)]
pub struct RunCgroup {
    pub cgroup: Cgroup,
    pub cgroup_id: u64,
}

/// Limits a process or a cgroup, or changes an existing limit.
pub fn set(engine: &mut Engine, target: &Target, change: LimitChange) -> Result<SetOutcome> {
    if change == LimitChange::default() {
        return Err(Error::NothingToSet);
    }
    let mut tx = engine.begin()?;
    let cx = tx.context().clone();
    let outcome = match target {
        Target::Cgroup(path) => {
            let cgroup = cx.cgroups.resolve(path)?;
            let id = cgroup.id()?;
            let existing = tx.state().cgroup_limits.find(id).cloned();
            let origin = existing
                .as_ref()
                .map_or(Origin::Cgroup, |r| r.origin.clone());
            let record = RuleRecord::merged(existing.as_ref(), change, &cgroup, id, origin)?;
            SetOutcome {
                record,
                moved: None,
            }
        }
        Target::Pid(pid) => {
            let pid = *pid;
            if !procfs::process_exists(pid) {
                return Err(Error::NoSuchProcess(pid));
            }
            let current = cx.cgroups.of_pid(pid)?;
            let current_id = current.id()?;
            match tx.state().cgroup_limits.find(current_id) {
                // Already in a cgroup rein made for it (or for its `rein run`): change that.
                Some(existing) if existing.origin != Origin::Cgroup => SetOutcome {
                    record: RuleRecord::merged(
                        Some(existing),
                        change,
                        &current,
                        current_id,
                        existing.origin.clone(),
                    )?,
                    moved: None,
                },
                _ => {
                    // Validate before touching anything.
                    RuleRecord::merged(None, change, &current, current_id, Origin::Cgroup)?;
                    let subtree = subtree(&mut tx, &cx)?;
                    let cgroup = subtree.child(&format!("pid-{pid}"));
                    create_cgroup(&mut tx, &cgroup)?;
                    let id = cgroup.id()?;
                    let origin = Origin::Pid {
                        pid,
                        home: current.relative().to_owned(),
                    };
                    SetOutcome {
                        record: RuleRecord::merged(None, change, &cgroup, id, origin)?,
                        moved: Some(Moved {
                            pid,
                            from: current.relative().to_owned(),
                            to: cgroup.relative().to_owned(),
                            sockets_left_behind: 0,
                        }),
                    }
                }
            }
        }
    };
    let mut desired = tx.desired();
    upsert(&mut desired, outcome.record.clone());
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    let mut outcome = outcome;
    if let Some(moved) = outcome.moved.as_mut() {
        // The limit first, then the process: it never runs unlimited in its new cgroup.
        moved.sockets_left_behind = procfs::count_sockets(moved.pid);
        let cgroup = cx.cgroups.at(&moved.to)?;
        cgroup.add_process(moved.pid)?;
        let (home, pid) = (cx.cgroups.at(&moved.from)?, moved.pid);
        tx.undo_with(move || {
            let _ = home.add_process(pid);
        });
    }
    tx.commit()?;
    Ok(outcome)
}

/// Removes a limit; a process that `set --pid` moved goes back where it was.
pub fn unset(engine: &mut Engine, target: &Target) -> Result<RuleRecord> {
    let mut tx = engine.begin()?;
    let cx = tx.context().clone();
    let (cgroup, shown) = match target {
        Target::Cgroup(path) => (cx.cgroups.resolve(path)?, path.display().to_string()),
        Target::Pid(pid) => {
            if !procfs::process_exists(*pid) {
                return Err(Error::NoSuchProcess(*pid));
            }
            (cx.cgroups.of_pid(*pid)?, format!("pid {pid}"))
        }
    };
    let id = cgroup.id()?;
    let record = tx
        .state()
        .cgroup_limits
        .find(id)
        .cloned()
        .ok_or(Error::NotLimited(shown))?;
    if let (Target::Pid(pid), Origin::Cgroup) = (target, &record.origin) {
        return Err(Error::LimitedThroughCgroup {
            pid: *pid,
            cgroup: record.cgroup.clone(),
        });
    }
    let mut desired = tx.desired();
    desired.cgroup_limits.retain(|r| r.cgroup_id != id);
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(record)
}

/// Creates the cgroup of a `rein run` and its rule.
pub fn start_run(engine: &mut Engine, change: LimitChange) -> Result<RunCgroup> {
    if change.egress.is_none() && change.ingress.is_none() {
        return Err(if change.burst.is_some() {
            Error::BurstWithoutRate("the command".into())
        } else {
            Error::NothingToSet
        });
    }
    let mut tx = engine.begin()?;
    let cx = tx.context().clone();
    let owner = std::process::id();
    let subtree = subtree(&mut tx, &cx)?;
    let cgroup = (0u32..)
        .map(|n| subtree.child(&format!("run-{owner}-{n}")))
        .find(|c| !c.exists())
        .ok_or_else(|| Error::NoSuchCgroup("run".into()))?;
    create_cgroup(&mut tx, &cgroup)?;
    let id = cgroup.id()?;
    let record = RuleRecord::merged(None, change, &cgroup, id, Origin::Run { owner })?;
    let mut desired = tx.desired();
    upsert(&mut desired, record);
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(RunCgroup {
        cgroup,
        cgroup_id: id,
    })
}

/// Tears down a `rein run` cgroup: what the command left running is killed, then the rule
/// and the cgroup go.
pub fn finish_run(engine: &mut Engine, run: &RunCgroup) -> Result<()> {
    if run.cgroup.exists() && !run.cgroup.processes_recursive().is_empty() {
        run.cgroup.kill_all()?;
        wait_until_empty(&run.cgroup, Duration::from_secs(5));
    }
    let mut tx = engine.begin()?;
    let mut desired = tx.desired();
    desired
        .cgroup_limits
        .retain(|r| r.cgroup_id != run.cgroup_id);
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    remove_tree(&run.cgroup)?;
    Ok(())
}

/// Every limited cgroup with its processes, limits and counters.
/// Only reads: it may run without the instance's lock (see `Status::read`).
pub fn status(cx: &Context, state: &State) -> Result<Vec<RuleView>> {
    let datapath = open_for_reading(cx)?;
    let now = cx.now_ns();
    let view_of = |record: &RuleRecord, direction: Direction| {
        direction_view(
            datapath.as_ref(),
            RuleKey::new(record.cgroup_id, direction),
            record.spec(direction),
            now,
        )
    };
    state
        .cgroup_limits
        .rules
        .iter()
        .map(|record| {
            let processes = cx
                .cgroups
                .at(&record.cgroup)
                .map(|c| c.processes_recursive())
                .unwrap_or_default();
            Ok(RuleView {
                cgroup: record.cgroup.clone(),
                cgroup_id: record.cgroup_id,
                origin: record.origin.clone(),
                declared_by: record.declared_by.as_ref().map(|by| by.name.clone()),
                processes,
                egress: view_of(record, Direction::Egress),
                ingress: view_of(record, Direction::Ingress),
            })
        })
        .collect()
}

/// The datapath's maps to read, if it is installed.
pub(crate) fn open_for_reading(cx: &Context) -> Result<Option<Datapath>> {
    match Datapath::open(&cx.instance) {
        Ok(datapath) => Ok(Some(datapath)),
        // Not installed, or uninstalled by a command while this reads.
        Err(_) if !Datapath::is_installed(&cx.instance) => Ok(None),
        Err(error) => Err(error),
    }
}

/// One direction of a scope's limit with its counters, as `list` shows it.
pub(crate) fn direction_view(
    datapath: Option<&Datapath>,
    key: RuleKey,
    spec: Option<LimitSpec>,
    now: u64,
) -> Option<DirectionView> {
    let spec = spec?;
    let limit = spec.effective();
    let counters = datapath.map(|d| d.counters(key)).unwrap_or_default();
    let tcp_flows = datapath
        .and_then(|d| d.rule(key))
        .map(|rule| rule.flows.peak(epoch_of(now)))
        .unwrap_or(0);
    Some(DirectionView {
        rate_bits_per_second: limit.rate.bits_per_second(),
        burst_bytes: limit.burst.bytes(),
        burst_is_default: spec.burst.is_none(),
        passed_packets: counters.passed_packets,
        passed_bytes: counters.passed_bytes,
        dropped_packets: counters.dropped_packets,
        dropped_bytes: counters.dropped_bytes,
        tcp_flows,
    })
}

fn upsert(desired: &mut Desired, record: RuleRecord) {
    match desired
        .cgroup_limits
        .iter_mut()
        .find(|r| r.cgroup_id == record.cgroup_id)
    {
        Some(existing) => *existing = record,
        None => desired.cgroup_limits.push(record),
    }
}

/// The instance's cgroup subtree (`/rein`), created if needed.
fn subtree(tx: &mut crate::engine::Transaction<'_>, cx: &Context) -> Result<Cgroup> {
    let subtree = cx.cgroups.root().child(cx.instance.cgroup_subtree());
    if subtree.create()? {
        let created = subtree.clone();
        tx.undo_with(move || {
            let _ = created.remove();
        });
    }
    Ok(subtree)
}

fn create_cgroup(tx: &mut crate::engine::Transaction<'_>, cgroup: &Cgroup) -> Result<()> {
    cgroup.create()?;
    let created = cgroup.clone();
    tx.undo_with(move || {
        let _ = created.remove();
    });
    Ok(())
}

/// Sets the limit of a cgroup, or changes it.
struct SetLimit {
    before: Option<RuleRecord>,
    after: RuleRecord,
}

impl fmt::Display for SetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.before.is_some() {
            "change"
        } else {
            "limit"
        };
        write!(f, "{verb} cgroup {}", self.after.cgroup)?;
        write_limits(f, |d| self.after.spec(d))
    }
}

/// `, egress RATE burst BYTES, ingress ...` for each direction `spec` limits: how a plan step
/// that sets a limit on a scope ends.
pub(crate) fn write_limits(
    f: &mut fmt::Formatter<'_>,
    spec: impl Fn(Direction) -> Option<LimitSpec>,
) -> fmt::Result {
    for direction in DIRECTIONS {
        if let Some(spec) = spec(direction) {
            let limit = spec.effective();
            let name = match direction {
                Direction::Egress => "egress",
                Direction::Ingress => "ingress",
            };
            write!(f, ", {name} {} burst {}", limit.rate, limit.burst)?;
        }
    }
    Ok(())
}

impl Step for SetLimit {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        write_rules(cx, &self.after, undo)?;
        state.cgroup_limits.upsert(self.after.clone());
        Ok(())
    }
}

/// Removes the limit of a cgroup; a cgroup rein made for a process goes, and the process
/// goes home.
struct RemoveLimit {
    record: RuleRecord,
}

impl fmt::Display for RemoveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "remove the limit of cgroup {}", self.record.cgroup)
    }
}

impl Step for RemoveLimit {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let record = &self.record;
        remove_rules(cx, record.cgroup_id, undo)?;
        if let Origin::Pid { home, .. } = &record.origin {
            let cgroup = cx.cgroups.at(&record.cgroup)?;
            let home = cx.cgroups.at(home)?;
            let home = if home.exists() {
                home
            } else {
                cx.cgroups.root()
            };
            for pid in cgroup.processes() {
                // A process that exits meanwhile has nothing left to move.
                let _ = home.add_process(pid);
            }
            cgroup.remove()?;
        }
        state.cgroup_limits.remove(record.cgroup_id);
        Ok(())
    }
}

/// The datapath, installed now if this is the first rule; the undo uninstalls it again.
pub(crate) fn datapath(cx: &Context, undo: &mut Undo) -> Result<Datapath> {
    if Datapath::is_installed(&cx.instance) {
        return Datapath::open(&cx.instance);
    }
    let datapath = Datapath::install(&cx.instance, &cx.cgroups.root())?;
    let instance = cx.instance.clone();
    undo.push(move || Datapath::uninstall(&instance));
    Ok(datapath)
}

/// Writes both directions of a record into the kernel maps, keeping live bucket state.
fn write_rules(cx: &Context, record: &RuleRecord, undo: &mut Undo) -> Result<()> {
    write_scope_rules(cx, record.cgroup_id, |d| record.spec(d), 0, undo)
}

/// Whether a direction `spec` limits has no rule of `scope` in the maps: what a restore after a
/// reload writes again.
pub(crate) fn scope_rule_missing(
    datapath: &Datapath,
    scope: u64,
    spec: impl Fn(Direction) -> Option<LimitSpec>,
) -> bool {
    DIRECTIONS
        .iter()
        .any(|d| spec(*d).is_some() && datapath.rule(RuleKey::new(scope, *d)).is_none())
}

/// Writes both directions' rules of a scope (a cgroup, or a namespace as
/// `rein_common::netns_scope` names it) with `flags`, keeping live bucket state; the datapath
/// is installed with the first rule.
pub(crate) fn write_scope_rules(
    cx: &Context,
    scope: u64,
    spec: impl Fn(Direction) -> Option<LimitSpec>,
    flags: u32,
    undo: &mut Undo,
) -> Result<()> {
    let mut datapath = datapath(cx, undo)?;
    let now = cx.now_ns();
    for direction in DIRECTIONS {
        let key = RuleKey::new(scope, direction);
        let previous = datapath.rule(key);
        match spec(direction) {
            Some(spec) => {
                let mut rule = spec.effective().rule(now);
                rule.flags = flags;
                if let Some(previous) = previous {
                    // Keep the bucket's debt across a change, but never more than a burst,
                    // and keep counting the flows that share the limit.
                    rule.bucket.tat = previous.bucket.tat.clamp(now, now + rule.bucket.burst_ns);
                    rule.flows = previous.flows;
                }
                datapath.put_rule(key, rule)?;
            }
            None => datapath.remove_rule(key),
        }
        undo_rule(cx, undo, key, previous);
    }
    Ok(())
}

/// Removes both directions' rules of a scope from the kernel maps, if they are there.
pub(crate) fn remove_rules(cx: &Context, cgroup_id: u64, undo: &mut Undo) -> Result<()> {
    remove_rules_where(cx, cgroup_id, |_| true, undo)
}

/// Removes the rules of a scope whose present rule (none: no rule) `remove` picks, each
/// with its undo.
pub(crate) fn remove_rules_where(
    cx: &Context,
    scope: u64,
    remove: impl Fn(Option<Rule>) -> bool,
    undo: &mut Undo,
) -> Result<()> {
    if !Datapath::is_installed(&cx.instance) {
        return Ok(());
    }
    let mut datapath = Datapath::open(&cx.instance)?;
    for direction in DIRECTIONS {
        let key = RuleKey::new(scope, direction);
        let previous = datapath.rule(key);
        if remove(previous) {
            datapath.remove_rule(key);
            undo_rule(cx, undo, key, previous);
        }
    }
    Ok(())
}

pub(crate) fn undo_rule(
    cx: &Context,
    undo: &mut Undo,
    key: RuleKey,
    previous: Option<rein_common::Rule>,
) {
    let instance = cx.instance.clone();
    undo.push(move || {
        if let Ok(mut datapath) = Datapath::open(&instance) {
            match previous {
                Some(rule) => {
                    let _ = datapath.put_rule(key, rule);
                }
                None => datapath.remove_rule(key),
            }
        }
    });
}

/// The cgroup limits, as the engine drives them.
pub(crate) struct CgroupLimits;

impl Capability for CgroupLimits {
    fn name(&self) -> &'static str {
        "cgroup limits"
    }

    fn plan(&self, _cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        plan_keyed(
            plan,
            &state.cgroup_limits.rules,
            &desired.cgroup_limits,
            |r| r.cgroup_id,
            |record| RemoveLimit { record },
            |before, after| SetLimit { before, after },
        );
        Ok(())
    }

    fn is_installed(&self, cx: &Context) -> bool {
        Datapath::is_installed(&cx.instance)
    }

    fn prepare_reload(&self, cx: &Context) -> Result<Option<Box<dyn PreparedReload>>> {
        if !Datapath::is_installed(&cx.instance) {
            return Ok(None);
        }
        Ok(Some(Box::new(Datapath::prepare_reload(&cx.instance)?)))
    }

    fn restore(&self, cx: &Context, state: &State, _undo: &mut Undo) -> Result<usize> {
        if !Datapath::is_installed(&cx.instance) {
            return Ok(0);
        }
        let mut datapath = Datapath::open(&cx.instance)?;
        let now = cx.now_ns();
        let mut restored = 0;
        for record in &state.cgroup_limits.rules {
            for direction in DIRECTIONS {
                let key = RuleKey::new(record.cgroup_id, direction);
                if let Some(spec) = record.spec(direction)
                    && datapath.rule(key).is_none()
                {
                    datapath.put_rule(key, spec.effective().rule(now))?;
                    restored += 1;
                }
            }
        }
        Ok(restored)
    }

    /// Drops records whose cgroup is gone, and the leftovers of `rein run`s whose rein
    /// process died and whose command has ended; then the rules in the maps that no record
    /// owns.
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        let mut stale = Vec::new();
        for record in &state.cgroup_limits.rules {
            let cgroup = cx.cgroups.at(&record.cgroup)?;
            let vanished = !cgroup.exists() || cgroup.id().ok() != Some(record.cgroup_id);
            let abandoned = match record.origin {
                Origin::Run { owner } => {
                    !procfs::process_exists(owner) && cgroup.processes_recursive().is_empty()
                }
                Origin::Pid { pid, .. } => {
                    !procfs::process_exists(pid) && cgroup.processes_recursive().is_empty()
                }
                Origin::Cgroup => false,
            };
            if vanished || abandoned {
                stale.push(record.clone());
            }
        }
        for record in &stale {
            tracing::info!("removing the stale rule of {}", record.cgroup);
            if record.origin != Origin::Cgroup {
                let _ = remove_tree(&cx.cgroups.at(&record.cgroup)?);
            }
            state.cgroup_limits.remove(record.cgroup_id);
        }
        if Datapath::is_installed(&cx.instance) {
            let mut datapath = Datapath::open(&cx.instance)?;
            let limited: HashSet<u64> = state
                .cgroup_limits
                .rules
                .iter()
                .map(|r| r.cgroup_id)
                .collect();
            // A namespace's rules are the namespace limits' to collect, a shared limit's (its
            // group's and its members') the shared limits'.
            for key in datapath.rule_keys() {
                if scope_netns(key.cgroup_id).is_none()
                    && scope_group(key.cgroup_id).is_none()
                    && !limited.contains(&key.cgroup_id)
                    && !shared_limit::is_member_rule(&datapath, key)
                {
                    tracing::info!("removing the orphaned rule of cgroup {}", key.cgroup_id);
                    datapath.remove_rule(key);
                }
            }
            // Once a command, from the map itself: a count a crash left wrong is put right.
            datapath.sync_rule_counts()?;
        }
        Ok(())
    }

    fn remove_if_unused(&self, cx: &Context, state: &State) {
        // The namespace and shared limits share the datapath.
        if !state.cgroup_limits.is_empty()
            || !state.netns_limits.is_empty()
            || !state.shared_limits.is_empty()
        {
            return;
        }
        Datapath::uninstall(&cx.instance);
        let subtree = cx.cgroups.root().child(cx.instance.cgroup_subtree());
        if subtree.exists() && subtree.processes_recursive().is_empty() {
            let _ = remove_tree(&subtree);
        }
    }

    fn purge(&self, cx: &Context, state: &State, report: &mut PurgeReport) {
        report.rules += state.cgroup_limits.rules.len();
        for record in &state.cgroup_limits.rules {
            if let Origin::Pid { home, .. } = &record.origin
                && let (Ok(cgroup), Ok(home)) = (cx.cgroups.at(&record.cgroup), cx.cgroups.at(home))
                && home.exists()
            {
                for pid in cgroup.processes() {
                    report.processes_moved += usize::from(home.add_process(pid).is_ok());
                }
            }
        }
        Datapath::uninstall(&cx.instance);
        let subtree = cx.cgroups.root().child(cx.instance.cgroup_subtree());
        if subtree.exists() {
            let root = cx.cgroups.root();
            for pid in subtree.processes_recursive() {
                report.processes_moved += usize::from(root.add_process(pid).is_ok());
            }
            report.cgroups += remove_tree(&subtree).unwrap_or(0);
        }
    }
}

fn wait_until_empty(cgroup: &Cgroup, patience: Duration) {
    let deadline = Instant::now() + patience;
    while !cgroup.processes_recursive().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Removes a cgroup and its (empty) descendants, deepest first; returns how many went.
fn remove_tree(cgroup: &Cgroup) -> Result<usize> {
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(cgroup.path()) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                removed += remove_tree(&cgroup.child(&name))?;
            }
        }
    }
    if cgroup.exists() {
        cgroup.remove()?;
        removed += 1;
    }
    Ok(removed)
}
