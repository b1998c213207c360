//! The operations behind rein's commands, each all-or-nothing: a failure midway undoes what was
//! done, and the kernel maps and the state file always agree.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use rein_common::{Counters, Direction, RuleKey, share::epoch_of};
use serde::Serialize;

mod net_rules;

pub use net_rules::{NetRuleView, SourceView};

use crate::{
    cgroup::{Cgroup, CgroupFs},
    clock::{Clock, MonotonicClock},
    datapath::{DIRECTIONS, Datapath},
    error::{Error, Result},
    instance::Instance,
    limit::{Limit, default_burst},
    lock::InstanceLock,
    net_datapath::NetDatapath,
    queue,
    state::{LimitSpec, Origin, RuleRecord, State},
    sys,
    undo::Undo,
    units::{Rate, Size},
};

/// What a command limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A running process, moved into a cgroup of its own.
    Pid(u32),
    /// An existing cgroup, limited in place with everything below it.
    Cgroup(PathBuf),
}

/// Requested changes; what is `None` stays as it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitChange {
    pub egress: Option<Rate>,
    pub ingress: Option<Rate>,
    pub burst: Option<Size>,
}

impl LimitChange {
    fn rate(&self, direction: Direction) -> Option<Rate> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }
}

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

/// What `purge` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PurgeReport {
    pub rules: usize,
    pub cgroups: usize,
    pub processes_moved: usize,
    pub datapath: bool,
}

/// An instance of rein, locked for the lifetime of the value.
pub struct Rein {
    instance: Instance,
    cgroups: CgroupFs,
    clock: MonotonicClock,
    _lock: InstanceLock,
}

impl Rein {
    /// Opens the instance, failing at once if another rein command holds it.
    pub fn open(instance: Instance) -> Result<Self> {
        Self::open_waiting(instance, Duration::ZERO)
    }

    /// Opens the instance, waiting up to `patience` for another command to finish.
    pub fn open_waiting(instance: Instance, patience: Duration) -> Result<Self> {
        check_prerequisites(&instance)?;
        let cgroups = CgroupFs::discover()?;
        let lock = InstanceLock::acquire(&instance.state_dir(), patience)?;
        let mut rein = Self {
            instance,
            cgroups,
            clock: MonotonicClock,
            _lock: lock,
        };
        rein.collect_garbage()?;
        Ok(rein)
    }

    fn state_path(&self) -> PathBuf {
        self.instance.state_dir().join("state.json")
    }

    fn load_state(&self) -> Result<State> {
        State::load(&self.state_path())
    }

    /// The datapath, installed now if this is the first rule; the undo uninstalls it again.
    fn datapath(&self, undo: &mut Undo) -> Result<Datapath> {
        if Datapath::is_installed(&self.instance) {
            return Datapath::open(&self.instance);
        }
        let datapath = Datapath::install(&self.instance, &self.cgroups.root())?;
        let instance = self.instance.clone();
        undo.push(move || Datapath::uninstall(&instance));
        Ok(datapath)
    }

    /// The instance's cgroup subtree (`/rein`), created if needed.
    fn subtree(&self, undo: &mut Undo) -> Result<Cgroup> {
        let subtree = self.cgroups.root().child(self.instance.cgroup_subtree());
        if subtree.create()? {
            let created = subtree.clone();
            undo.push(move || {
                let _ = created.remove();
            });
        }
        Ok(subtree)
    }

    /// Limits a process or a cgroup, or changes an existing limit.
    pub fn set(&mut self, target: &Target, change: LimitChange) -> Result<SetOutcome> {
        if change == LimitChange::default() {
            return Err(Error::NothingToSet);
        }
        let mut state = self.load_state()?;
        let mut undo = Undo::new();
        let outcome = match target {
            Target::Cgroup(path) => {
                let cgroup = self.cgroups.resolve(path)?;
                let id = cgroup.id()?;
                let existing = state.find(id).cloned();
                let origin = existing
                    .as_ref()
                    .map_or(Origin::Cgroup, |r| r.origin.clone());
                let record = merged(existing.as_ref(), change, &cgroup, id, origin)?;
                self.write_rule(&record, &mut undo)?;
                SetOutcome {
                    record,
                    moved: None,
                }
            }
            Target::Pid(pid) => self.set_pid(*pid, change, &state, &mut undo)?,
        };
        state.upsert(outcome.record.clone());
        state.save(&self.state_path())?;
        undo.commit();
        Ok(outcome)
    }

    fn set_pid(
        &self,
        pid: u32,
        change: LimitChange,
        state: &State,
        undo: &mut Undo,
    ) -> Result<SetOutcome> {
        if !sys::process_exists(pid) {
            return Err(Error::NoSuchProcess(pid));
        }
        let current = self.cgroups.of_pid(pid)?;
        let current_id = current.id()?;
        // Already in a cgroup rein made for it (or for its `rein run`): change that limit.
        if let Some(existing) = state.find(current_id)
            && existing.origin != Origin::Cgroup
        {
            let record = merged(
                Some(existing),
                change,
                &current,
                current_id,
                existing.origin.clone(),
            )?;
            self.write_rule(&record, undo)?;
            return Ok(SetOutcome {
                record,
                moved: None,
            });
        }
        // Validate before touching anything.
        let probe = merged(None, change, &current, current_id, Origin::Cgroup)?;
        let subtree = self.subtree(undo)?;
        let cgroup = subtree.child(&format!("pid-{pid}"));
        cgroup.create()?;
        {
            let created = cgroup.clone();
            undo.push(move || {
                let _ = created.remove();
            });
        }
        let id = cgroup.id()?;
        let record = RuleRecord {
            cgroup: cgroup.relative().to_owned(),
            cgroup_id: id,
            origin: Origin::Pid {
                pid,
                home: current.relative().to_owned(),
            },
            ..probe
        };
        self.write_rule(&record, undo)?;
        let sockets_left_behind = count_sockets(pid);
        cgroup.add_process(pid)?;
        {
            let home = current.clone();
            undo.push(move || {
                let _ = home.add_process(pid);
            });
        }
        Ok(SetOutcome {
            record,
            moved: Some(Moved {
                pid,
                from: current.relative().to_owned(),
                to: cgroup.relative().to_owned(),
                sockets_left_behind,
            }),
        })
    }

    /// Writes both directions of a record into the kernel maps, keeping live bucket state.
    fn write_rule(&self, record: &RuleRecord, undo: &mut Undo) -> Result<()> {
        let mut datapath = self.datapath(undo)?;
        let now = self.clock.now_ns();
        for direction in DIRECTIONS {
            let key = RuleKey::new(record.cgroup_id, direction);
            let previous = datapath.rule(key);
            let written = match spec(record, direction) {
                Some(spec) => {
                    let mut rule = effective(spec).rule(now);
                    if let Some(previous) = previous {
                        // Keep the bucket's debt across a change, but never more than a burst,
                        // and keep counting the flows that share the limit.
                        rule.bucket.tat =
                            previous.bucket.tat.clamp(now, now + rule.bucket.burst_ns);
                        rule.flows = previous.flows;
                    }
                    datapath.put_rule(key, rule)?;
                    Some(rule)
                }
                None => {
                    datapath.remove_rule(key);
                    None
                }
            };
            let instance = self.instance.clone();
            let cgroup_id = record.cgroup_id;
            undo.push(move || {
                if let Ok(mut datapath) = Datapath::open(&instance) {
                    match previous {
                        Some(rule) => {
                            let _ = datapath.put_rule(key, rule);
                        }
                        None => datapath.remove_rule(key),
                    }
                }
                if direction == Direction::Ingress {
                    match previous {
                        Some(rule) => {
                            let _ = queue::set(&instance, cgroup_id, &rule);
                        }
                        None => queue::remove(&instance, cgroup_id),
                    }
                }
            });
            if direction == Direction::Ingress {
                match written {
                    // A queue re-made would lose what waits in it: only a new rate or burst, or
                    // a missing queue, re-makes it (a change of the egress limit does not).
                    Some(rule)
                        if previous
                            .is_some_and(|p| queue::tbf_for(&p) == queue::tbf_for(&rule))
                            && queue::is_set(&self.instance, record.cgroup_id) => {}
                    Some(rule) => queue::set(&self.instance, record.cgroup_id, &rule)?,
                    None => queue::remove(&self.instance, record.cgroup_id),
                }
            }
        }
        Ok(())
    }

    /// Removes a limit; a process that `set --pid` moved goes back where it was.
    pub fn unset(&mut self, target: &Target) -> Result<RuleRecord> {
        let mut state = self.load_state()?;
        let (cgroup, shown) = match target {
            Target::Cgroup(path) => (self.cgroups.resolve(path)?, path.display().to_string()),
            Target::Pid(pid) => {
                if !sys::process_exists(*pid) {
                    return Err(Error::NoSuchProcess(*pid));
                }
                (self.cgroups.of_pid(*pid)?, format!("pid {pid}"))
            }
        };
        let id = cgroup.id()?;
        let record = state.find(id).cloned().ok_or(Error::NotLimited(shown))?;
        if let (Target::Pid(pid), Origin::Cgroup) = (target, &record.origin) {
            return Err(Error::LimitedThroughCgroup {
                pid: *pid,
                cgroup: record.cgroup.clone(),
            });
        }
        self.release(&record)?;
        state.remove(id);
        self.save_or_tidy(&state)?;
        Ok(record)
    }

    /// Removes a record's rules and, for cgroups rein made for a process, the cgroup.
    fn release(&self, record: &RuleRecord) -> Result<()> {
        self.remove_rules(record.cgroup_id)?;
        if let Origin::Pid { home, .. } = &record.origin {
            let cgroup = self.cgroups.at(&record.cgroup)?;
            let home = self.cgroups.at(home)?;
            let home = if home.exists() {
                home
            } else {
                self.cgroups.root()
            };
            for pid in cgroup.processes() {
                // A process that exits meanwhile has nothing left to move.
                let _ = home.add_process(pid);
            }
            cgroup.remove()?;
        }
        Ok(())
    }

    /// Removes both directions' rules of a cgroup from the kernel maps, if they are there.
    fn remove_rules(&self, cgroup_id: u64) -> Result<()> {
        if Datapath::is_installed(&self.instance) {
            let mut datapath = Datapath::open(&self.instance)?;
            for direction in DIRECTIONS {
                datapath.remove_rule(RuleKey::new(cgroup_id, direction));
            }
            queue::remove(&self.instance, cgroup_id);
        }
        Ok(())
    }

    /// Saves the state; what no rule needs any more goes: the cgroup programs after the last
    /// cgroup limit, the interface programs' maps after the last `rein net` rule, and every
    /// trace of the instance after both.
    fn save_or_tidy(&self, state: &State) -> Result<()> {
        if state.rules.is_empty() {
            Datapath::uninstall(&self.instance);
            let subtree = self.cgroups.root().child(self.instance.cgroup_subtree());
            if subtree.exists() && subtree.processes_recursive().is_empty() {
                let _ = remove_tree(&subtree);
            }
        }
        if state.net.is_empty() {
            NetDatapath::uninstall(&self.instance);
        }
        if state.is_empty() {
            remove_state_dir(&self.instance.state_dir());
            return Ok(());
        }
        state.save(&self.state_path())
    }

    /// Creates the cgroup of a `rein run` and its rule.
    pub fn start_run(&mut self, change: LimitChange) -> Result<RunCgroup> {
        if change.egress.is_none() && change.ingress.is_none() {
            return Err(if change.burst.is_some() {
                Error::BurstWithoutRate("the command".into())
            } else {
                Error::NothingToSet
            });
        }
        let mut state = self.load_state()?;
        let mut undo = Undo::new();
        let owner = std::process::id();
        let subtree = self.subtree(&mut undo)?;
        let cgroup = (0u32..)
            .map(|n| subtree.child(&format!("run-{owner}-{n}")))
            .find(|c| !c.exists())
            .ok_or_else(|| Error::NoSuchCgroup("run".into()))?;
        cgroup.create()?;
        {
            let created = cgroup.clone();
            undo.push(move || {
                let _ = created.remove();
            });
        }
        let id = cgroup.id()?;
        let record = merged(None, change, &cgroup, id, Origin::Run { owner })?;
        self.write_rule(&record, &mut undo)?;
        state.upsert(record);
        state.save(&self.state_path())?;
        undo.commit();
        Ok(RunCgroup {
            cgroup,
            cgroup_id: id,
        })
    }

    /// Tears down a `rein run` cgroup: what the command left running is killed, then the rule
    /// and the cgroup go.
    pub fn finish_run(&mut self, run: &RunCgroup) -> Result<()> {
        let mut state = self.load_state()?;
        if run.cgroup.exists() && !run.cgroup.processes_recursive().is_empty() {
            run.cgroup.kill_all()?;
            wait_until_empty(&run.cgroup, Duration::from_secs(5));
        }
        if let Some(record) = state.remove(run.cgroup_id) {
            self.release(&record)?;
        }
        remove_tree(&run.cgroup)?;
        self.save_or_tidy(&state)
    }

    /// Every rule with its processes, limits and counters.
    pub fn list(&self) -> Result<Vec<RuleView>> {
        let state = self.load_state()?;
        let datapath = if Datapath::is_installed(&self.instance) {
            Some(Datapath::open(&self.instance)?)
        } else {
            None
        };
        let now = self.clock.now_ns();
        let view_of = |record: &RuleRecord, direction: Direction| {
            let spec = spec(record, direction)?;
            let limit = effective(spec);
            let key = RuleKey::new(record.cgroup_id, direction);
            let counters = datapath
                .as_ref()
                .map(|d| d.counters(key))
                .unwrap_or_default();
            let tcp_flows = datapath
                .as_ref()
                .and_then(|d| d.rule(key))
                .map(|rule| rule.flows.peak(epoch_of(now)))
                .unwrap_or(0);
            Some(direction_view(
                limit,
                spec.burst.is_none(),
                counters,
                tcp_flows,
            ))
        };
        state
            .rules
            .iter()
            .map(|record| {
                let processes = self
                    .cgroups
                    .at(&record.cgroup)
                    .map(|c| c.processes_recursive())
                    .unwrap_or_default();
                Ok(RuleView {
                    cgroup: record.cgroup.clone(),
                    cgroup_id: record.cgroup_id,
                    origin: record.origin.clone(),
                    processes,
                    egress: view_of(record, Direction::Egress),
                    ingress: view_of(record, Direction::Ingress),
                })
            })
            .collect()
    }

    /// Swaps in this build's programs, keeping links, rules and bucket state; rules the maps
    /// lack (a build with a new map layout starts with empty maps) are written again from the
    /// state file.
    pub fn reload(&mut self) -> Result<usize> {
        let state = self.load_state()?;
        // Rules first, then programs: programs of a new map layout find their rules in place.
        let mut restored = self.restore_net_rules(&state)?;
        let net_links = NetDatapath::reload(&self.instance)?;
        if !Datapath::is_installed(&self.instance) {
            if net_links == 0 {
                return Err(Error::NotInstalled);
            }
            return Ok(restored);
        }
        let mut datapath = Datapath::reload(&self.instance)?;
        let now = self.clock.now_ns();
        for record in &state.rules {
            for direction in DIRECTIONS {
                let key = RuleKey::new(record.cgroup_id, direction);
                if let Some(spec) = spec(record, direction)
                    && datapath.rule(key).is_none()
                {
                    datapath.put_rule(key, effective(spec).rule(now))?;
                    restored += 1;
                }
            }
        }
        // Queues anew: devices that appeared since get the (new) tc program too.
        queue::detach(&self.instance);
        for record in &state.rules {
            let key = RuleKey::new(record.cgroup_id, Direction::Ingress);
            if let Some(rule) = datapath.rule(key) {
                queue::set(&self.instance, record.cgroup_id, &rule)?;
            }
        }
        Ok(restored)
    }

    /// Removes everything the instance created: rules, programs, pins, cgroups and state.
    /// Processes are never killed: moved ones go home, the rest to the cgroup v2 root.
    pub fn purge(&mut self) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        // A corrupt state file must not stop a purge.
        let state = self.load_state().unwrap_or_default();
        report.rules = state.rules.len() + state.net.len();
        for record in &state.rules {
            if let Origin::Pid { home, .. } = &record.origin
                && let (Ok(cgroup), Ok(home)) =
                    (self.cgroups.at(&record.cgroup), self.cgroups.at(home))
                && home.exists()
            {
                for pid in cgroup.processes() {
                    report.processes_moved += usize::from(home.add_process(pid).is_ok());
                }
            }
        }
        report.datapath = self.instance.pin_dir().exists();
        queue::remove_all(&self.instance);
        Datapath::remove_all_pins(&self.instance);
        let subtree = self.cgroups.root().child(self.instance.cgroup_subtree());
        if subtree.exists() {
            let root = self.cgroups.root();
            for pid in subtree.processes_recursive() {
                report.processes_moved += usize::from(root.add_process(pid).is_ok());
            }
            report.cgroups = remove_tree(&subtree)?;
        }
        remove_state_dir(&self.instance.state_dir());
        Ok(report)
    }

    /// Drops records whose cgroup is gone, and the leftovers of `rein run`s whose rein process
    /// died and whose command has ended.
    fn collect_garbage(&mut self) -> Result<()> {
        let Ok(mut state) = self.load_state() else {
            return Ok(());
        };
        let mut stale = Vec::new();
        for record in &state.rules {
            let cgroup = self.cgroups.at(&record.cgroup)?;
            let vanished = !cgroup.exists() || cgroup.id().ok() != Some(record.cgroup_id);
            let abandoned = match record.origin {
                Origin::Run { owner } => {
                    !sys::process_exists(owner) && cgroup.processes_recursive().is_empty()
                }
                Origin::Pid { pid, .. } => {
                    !sys::process_exists(pid) && cgroup.processes_recursive().is_empty()
                }
                Origin::Cgroup => false,
            };
            if vanished || abandoned {
                stale.push(record.clone());
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        for record in &stale {
            tracing::info!("removing the stale rule of {}", record.cgroup);
            self.remove_rules(record.cgroup_id)?;
            if record.origin != Origin::Cgroup {
                let _ = remove_tree(&self.cgroups.at(&record.cgroup)?);
            }
            state.remove(record.cgroup_id);
        }
        self.save_or_tidy(&state)
    }
}

impl Drop for Rein {
    /// A command on an instance that holds nothing (`list` on a clean machine) leaves no state
    /// directory behind: the lock file it made goes with it.
    fn drop(&mut self) {
        if !self.state_path().exists()
            && !Datapath::is_installed(&self.instance)
            && !NetDatapath::is_installed(&self.instance)
        {
            remove_state_dir(&self.instance.state_dir());
        }
    }
}

/// Checks what every command needs before anything is touched.
pub fn check_prerequisites(instance: &Instance) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    if sys::filesystem_magic(instance.bpffs()).ok() != Some(sys::BPF_FS_MAGIC) {
        return Err(Error::NoBpffs(instance.bpffs().clone()));
    }
    if !instance.btf().exists() {
        return Err(Error::NoBtf(instance.btf().clone()));
    }
    Ok(())
}

/// The record `existing` becomes with `change` applied.
fn merged(
    existing: Option<&RuleRecord>,
    change: LimitChange,
    cgroup: &Cgroup,
    cgroup_id: u64,
    origin: Origin,
) -> Result<RuleRecord> {
    let direction = |direction: Direction| {
        let old = existing.and_then(|r| spec(r, direction));
        match (change.rate(direction), old) {
            (Some(rate), old) => Some(LimitSpec {
                rate,
                burst: change.burst.or(old.and_then(|o| o.burst)),
            }),
            (None, Some(old)) => Some(LimitSpec {
                rate: old.rate,
                burst: change.burst.or(old.burst),
            }),
            (None, None) => None,
        }
    };
    let egress = direction(Direction::Egress);
    let ingress = direction(Direction::Ingress);
    if egress.is_none() && ingress.is_none() {
        return Err(if change.burst.is_some() {
            Error::BurstWithoutRate(cgroup.relative().to_owned())
        } else {
            Error::NothingToSet
        });
    }
    Ok(RuleRecord {
        cgroup: cgroup.relative().to_owned(),
        cgroup_id,
        egress,
        ingress,
        origin,
    })
}

fn spec(record: &RuleRecord, direction: Direction) -> Option<LimitSpec> {
    match direction {
        Direction::Egress => record.egress,
        Direction::Ingress => record.ingress,
    }
}

fn effective(spec: LimitSpec) -> Limit {
    Limit {
        rate: spec.rate,
        burst: spec.burst.unwrap_or_else(|| default_burst(spec.rate)),
    }
}

fn direction_view(
    limit: Limit,
    burst_is_default: bool,
    counters: Counters,
    tcp_flows: u32,
) -> DirectionView {
    DirectionView {
        rate_bits_per_second: limit.rate.bits_per_second(),
        burst_bytes: limit.burst.bytes(),
        burst_is_default,
        passed_packets: counters.passed_packets,
        passed_bytes: counters.passed_bytes,
        dropped_packets: counters.dropped_packets,
        dropped_bytes: counters.dropped_bytes,
        tcp_flows,
    }
}

/// Sockets among a process's open files.
fn count_sockets(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    fs::read_link(e.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
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

fn remove_state_dir(dir: &Path) {
    // The lock file goes too: flock holds on an unlinked file, and the next command makes a
    // new one.
    let _ = fs::remove_dir_all(dir);
}
