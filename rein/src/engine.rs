//! The engine every command and (later) the agent drive: it holds the instance's lock, and
//! takes the instance from what it holds to a desired state through a plan, all-or-nothing.
//!
//! ```text
//! desired state ──plan──▶ steps (what would change) ──apply──▶ kernel + state file
//! ```
//!
//! A plan's steps run under one undo list: a step that fails undoes every step before it, of
//! every capability, and the state file is written only once all have succeeded. The engine
//! knows capabilities only through [`crate::capabilities::REGISTRY`].
use std::{fmt, fs, path::PathBuf, time::Duration};

use serde::Serialize;

use crate::{
    capabilities::{
        Context, REGISTRY,
        cgroup_limit::{self, RuleRecord, RuleView},
        conn_limits::{self, ConnRuleView, WantedConnRule},
        ingress_queue::{self, QueueView},
        net_rules::{self, NetRuleView, WantedNetRule},
        netns_limit::{self, NetnsRecord, NetnsView},
        shared_limit::{self, SharedRecord, SharedView},
    },
    error::{Error, Result},
    instance::Instance,
    platform::{self, bpf},
    store::{InstanceLock, State, Undo},
};

/// What an instance should hold: each capability's part.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Limited cgroups, one record per cgroup.
    pub cgroup_limits: Vec<RuleRecord>,
    /// `rein net` rules; a rule without an id is new.
    pub net_rules: Vec<WantedNetRule>,
    /// `rein conn` rules; a rule without an id is new.
    pub conn_rules: Vec<WantedConnRule>,
    /// Limited network namespaces, one record per namespace.
    pub netns_limits: Vec<NetnsRecord>,
    /// Shared limits, one record per name.
    pub shared_limits: Vec<SharedRecord>,
}

impl Desired {
    /// What `state` holds, as a desired state: planning it changes nothing.
    pub fn from_state(state: &State) -> Self {
        Self {
            cgroup_limits: state.cgroup_limits.rules.clone(),
            netns_limits: state.netns_limits.rules.clone(),
            shared_limits: state.shared_limits.groups.clone(),
            net_rules: state
                .net_rules
                .net
                .iter()
                .map(|record| WantedNetRule {
                    id: Some(record.id),
                    spec: record.spec.clone(),
                    declared_by: record.declared_by.clone(),
                })
                .collect(),
            conn_rules: state
                .conn_limits
                .rules
                .iter()
                .map(|record| WantedConnRule {
                    id: Some(record.id),
                    spec: record.spec.clone(),
                    declared_by: record.declared_by.clone(),
                })
                .collect(),
        }
    }
}

/// One change a plan makes, applied under the plan's undo list.
pub trait Step: fmt::Display {
    /// Makes the change in the kernel and in `state`, registering in `undo` how to take the
    /// kernel side back.
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()>;
}

/// The steps from what an instance holds to a desired state, in order.
#[derive(Default)]
pub struct Plan {
    steps: Vec<Box<dyn Step>>,
}

impl Plan {
    pub fn push(&mut self, step: impl Step + 'static) {
        self.steps.push(Box::new(step));
    }

    /// Whether the instance already is as desired.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// What would change, a line each.
    pub fn changes(&self) -> impl Iterator<Item = String> + '_ {
        self.steps.iter().map(ToString::to_string)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.changes()).finish()
    }
}

/// What `purge` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PurgeReport {
    pub rules: usize,
    pub cgroups: usize,
    pub processes_moved: usize,
    pub datapath: bool,
}

/// Every limit of the instance with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub cgroups: Vec<RuleView>,
    /// Limited network namespaces.
    pub netns: Vec<NetnsView>,
    /// Shared limits, each with its members.
    pub shared: Vec<SharedView>,
    pub net: Vec<NetRuleView>,
    /// `rein conn` rules (outbound new-connection limits).
    pub conn: Vec<ConnRuleView>,
    /// The ingress limits' download queues in the reader's network namespace.
    pub queues: Vec<QueueView>,
}

impl Status {
    fn of(cx: &Context, state: &State) -> Result<Self> {
        Ok(Self {
            cgroups: cgroup_limit::status(cx, state)?,
            netns: netns_limit::status(cx, state)?,
            shared: shared_limit::status(cx, state)?,
            net: net_rules::status(cx, state)?,
            conn: conn_limits::status(cx, state)?,
            queues: ingress_queue::status(cx, state),
        })
    }

    /// Every limit with its counters, read without the instance's lock, so that metrics and
    /// `rein top` never wait for (or hold up) a command or the agent. Safe beside a writer:
    /// the state file is replaced by a rename, so it is read whole, old or new; the maps are
    /// only read (never the rule counts a datapath's `open` rewrites); and a datapath removed
    /// while it is read reads as none. Nothing stale is tidied: that is for the writers.
    pub fn read(instance: Instance) -> Result<Self> {
        check_prerequisites(&instance)?;
        let cx = crate::capabilities::context(instance)?;
        let state = State::load(&state_path(&cx.instance))?;
        Self::of(&cx, &state)
    }
}

/// An instance of rein, locked for the lifetime of the value.
pub struct Engine {
    cx: Context,
    _lock: InstanceLock,
}

impl Engine {
    /// Opens the instance, failing if another rein command holds it for longer than a
    /// command waits: the agent holds it for a moment each second, which must not refuse
    /// a command that comes at that moment.
    pub fn open(instance: Instance) -> Result<Self> {
        Self::open_waiting(instance, COMMAND_PATIENCE)
    }

    /// Opens the instance, waiting up to `patience` for another command to finish. What went
    /// stale since the last command (see [`crate::capabilities`]'s `collect_garbage`) is
    /// tidied first.
    pub fn open_waiting(instance: Instance, patience: Duration) -> Result<Self> {
        check_prerequisites(&instance)?;
        let cx = crate::capabilities::context(instance)?;
        let lock = InstanceLock::acquire(&cx.instance.lock_path(), patience)?;
        let engine = Self { cx, _lock: lock };
        engine.collect_garbage()?;
        Ok(engine)
    }

    pub fn instance(&self) -> &Instance {
        &self.cx.instance
    }

    /// What capabilities' operations work with (the cgroup v2 mount, the instance), e.g. to
    /// expand a `CgroupLimit` glob.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    fn state_path(&self) -> PathBuf {
        state_path(&self.cx.instance)
    }

    /// The state file as it is.
    pub fn state(&self) -> Result<State> {
        State::load(&self.state_path())
    }

    /// What the instance holds now, as a desired state to change and plan.
    pub fn desired(&self) -> Result<Desired> {
        Ok(Desired::from_state(&self.state()?))
    }

    /// The steps that would take the instance to `desired`; nothing changes.
    pub fn plan(&self, desired: &Desired) -> Result<Plan> {
        plan(&self.cx, &self.state()?, desired)
    }

    /// Applies a plan, all-or-nothing.
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        let mut transaction = self.begin()?;
        transaction.apply(plan)?;
        transaction.commit()
    }

    /// Starts a transaction: plans and steps of its own (a cgroup made, a process moved)
    /// under one undo list, kept only by [`Transaction::commit`].
    pub fn begin(&mut self) -> Result<Transaction<'_>> {
        Ok(Transaction {
            state: self.state()?,
            engine: self,
            undo: Undo::new(),
        })
    }

    /// Every limit with its counters.
    pub fn status(&self) -> Result<Status> {
        Status::of(&self.cx, &self.state()?)
    }

    /// Swaps in this build's programs, keeping links, rules, bucket state and queues; rules
    /// the maps lack (a build with a new map layout starts with empty maps) are written again
    /// from the state file. Every capability's programs are loaded and verified before any is
    /// swapped in, so a program this kernel refuses changes nothing.
    pub fn reload(&mut self) -> Result<usize> {
        let state = self.state()?;
        if !REGISTRY.iter().any(|c| c.is_installed(&self.cx)) {
            return Err(Error::NotInstalled);
        }
        let prepared = REGISTRY
            .iter()
            .map(|capability| {
                tracing::debug!("loading the programs of {}", capability.name());
                capability.prepare_reload(&self.cx)
            })
            .collect::<Result<Vec<_>>>()?;
        // Rules before programs: programs of a new map layout find their rules in place.
        let mut undo = Undo::new();
        let restored = restore(&self.cx, &state, &mut undo)?;
        for reload in prepared.into_iter().flatten() {
            reload.swap()?;
        }
        undo.commit();
        Ok(restored)
    }

    /// Writes again the rules the state file holds and the maps lack (removed by hand, say);
    /// how many.
    pub fn repair(&mut self) -> Result<usize> {
        let state = self.state()?;
        let mut undo = Undo::new();
        let restored = restore(&self.cx, &state, &mut undo)?;
        undo.commit();
        Ok(restored)
    }

    /// Removes everything the instance created: rules, programs, pins, cgroups and state.
    /// Processes are never killed: moved ones go home, the rest to the cgroup v2 root.
    pub fn purge(&mut self) -> Result<PurgeReport> {
        // A corrupt state file must not stop a purge.
        let state = self.state().unwrap_or_default();
        let mut report = PurgeReport {
            datapath: self.cx.instance.pin_dir().exists(),
            ..PurgeReport::default()
        };
        for capability in REGISTRY {
            capability.purge(&self.cx, &state, &mut report);
        }
        bpf::remove_pin_tree(&self.cx.instance.pin_dir());
        remove_state_dir(&self.cx.instance);
        Ok(report)
    }

    fn collect_garbage(&self) -> Result<()> {
        let Ok(mut state) = self.state() else {
            // A corrupt state file is reported by the command that reads it.
            return Ok(());
        };
        let before = state.clone();
        for capability in REGISTRY {
            capability.collect_garbage(&self.cx, &mut state)?;
        }
        if state != before {
            save_or_tidy(&self.cx, &state, &self.state_path())?;
        } else {
            // Programs and maps the state has no rule for (their rules were orphans) go too.
            for capability in REGISTRY {
                capability.remove_if_unused(&self.cx, &state);
            }
        }
        Ok(())
    }
}

impl Drop for Engine {
    /// A command on an instance that holds nothing (`list` on a clean machine) leaves no state
    /// directory behind. The lock file stays: it is never removed (see `store::lock`).
    fn drop(&mut self) {
        if !self.state_path().exists() && !REGISTRY.iter().any(|c| c.is_installed(&self.cx)) {
            remove_state_dir(&self.cx.instance);
        }
    }
}

/// How long a command waits for another to finish before it is refused.
const COMMAND_PATIENCE: Duration = Duration::from_secs(2);

/// Every capability's rules that `state` holds and the maps lack, written again.
fn restore(cx: &Context, state: &State, undo: &mut Undo) -> Result<usize> {
    let mut restored = 0;
    for capability in REGISTRY {
        restored += capability.restore(cx, state, undo)?;
    }
    Ok(restored)
}

/// Changes under way: kept by [`Transaction::commit`], undone if dropped.
pub struct Transaction<'a> {
    engine: &'a Engine,
    state: State,
    undo: Undo,
}

impl Transaction<'_> {
    pub fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn context(&self) -> &Context {
        &self.engine.cx
    }

    /// What the state holds at this point of the transaction, as a desired state.
    pub fn desired(&self) -> Desired {
        Desired::from_state(&self.state)
    }

    /// The steps from this point of the transaction to `desired`.
    pub fn plan(&self, desired: &Desired) -> Result<Plan> {
        plan(&self.engine.cx, &self.state, desired)
    }

    /// Applies the steps of `plan`; a failure undoes everything the transaction did.
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        for step in &plan.steps {
            tracing::debug!("applying: {step}");
            step.apply(&self.engine.cx, &mut self.state, &mut self.undo)?;
        }
        Ok(())
    }

    /// Registers how to undo a step taken outside a plan.
    pub(crate) fn undo_with(&mut self, step: impl FnOnce() + 'static) {
        self.undo.push(step);
    }

    /// Writes the state file and keeps everything; what no rule needs any more goes.
    pub fn commit(self) -> Result<()> {
        save_or_tidy(&self.engine.cx, &self.state, &self.engine.state_path())?;
        self.undo.commit();
        Ok(())
    }
}

fn plan(cx: &Context, state: &State, desired: &Desired) -> Result<Plan> {
    let mut plan = Plan::default();
    for capability in REGISTRY {
        capability.plan(cx, state, desired, &mut plan)?;
    }
    Ok(plan)
}

/// Saves the state; what no rule needs any more goes, and every trace of an instance that
/// holds nothing.
fn save_or_tidy(cx: &Context, state: &State, path: &std::path::Path) -> Result<()> {
    // Saved first: a failure to save leaves everything to the undo list, nothing removed.
    if !state.is_empty() {
        state.save(path)?;
    }
    for capability in REGISTRY {
        capability.remove_if_unused(cx, state);
    }
    if state.is_empty() {
        remove_state_dir(&cx.instance);
    }
    Ok(())
}

pub(crate) fn state_path(instance: &Instance) -> PathBuf {
    instance.state_dir().join("state.json")
}

fn remove_state_dir(instance: &Instance) {
    let _ = fs::remove_dir_all(instance.state_dir());
}

/// Checks what every command needs before anything is touched.
pub fn check_prerequisites(instance: &Instance) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    if platform::filesystem_magic(instance.bpffs()).ok() != Some(platform::BPF_FS_MAGIC) {
        return Err(Error::NoBpffs(instance.bpffs().clone()));
    }
    if !instance.btf().exists() {
        return Err(Error::NoBtf(instance.btf().clone()));
    }
    Ok(())
}
