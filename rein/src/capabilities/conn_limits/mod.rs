//! `rein conn`: limits on the new connections local processes open (outbound), checked at
//! `connect()` by the `rein-conn` programs at the cgroup v2 root. A refused connect fails at
//! once with ECONNREFUSED; nothing is sent.
use std::{collections::HashSet, fmt};

use rein_common::conn::{CONN_FORM_FILL, ConnBucket, ConnRule, ConnShapes};
use serde::{Deserialize, Serialize};

pub mod datapath;
pub mod request;
pub mod spec;

use self::{
    datapath::ConnDatapath,
    request::NewConnRule,
    spec::{ConnLimit, ConnRuleSpec},
};
use super::{
    Capability, Context, PreparedReload,
    rule_steps::{Change, RuleStep, rule_steps},
};
use crate::{
    engine::{Desired, Engine, Plan, PurgeReport, Step},
    error::{Error, Result},
    store::{State, Undo},
};

/// How many callers `list` shows for a per-caller rule.
const TOP_CALLERS: usize = 5;

/// One `rein conn` rule: what the operator asked, under its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRuleRecord {
    /// From the sequence `rein net` rules take theirs from: an id names one rule of either.
    pub id: u32,
    #[serde(flatten)]
    pub spec: ConnRuleSpec,
    /// Fill form: where its intervals are counted from (CLOCK_MONOTONIC), kept across changes
    /// of its limit and reloads so that fills stay at the same instants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_ns: Option<u64>,
    /// The name of the declarative `RateLimit` the rule belongs to; none for `rein conn add`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

impl ConnRuleRecord {
    /// The kernel's rule, fresh at `now_ns`, its fill intervals from the recorded anchor (when
    /// it is not in the future: a clock that started again after a reboot).
    fn rule(&self, now_ns: u64) -> ConnRule {
        let mut rule = self.spec.rule(now_ns);
        if let Some(anchor) = self.anchor_ns.filter(|&a| a <= now_ns) {
            rule.anchor_ns = anchor;
        }
        rule
    }
}

/// The `rein conn` section of the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    #[serde(default)]
    pub rules: Vec<ConnRuleRecord>,
    /// One past the largest id a conn rule has had: ids are not reused while the instance
    /// lives (see `State::next_rule_id`).
    #[serde(default)]
    pub next_id: u32,
}

impl Section {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn find(&self, id: u32) -> Option<&ConnRuleRecord> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// An id no conn rule has had.
    pub fn next_id(&self) -> u32 {
        let after_largest = self.rules.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        after_largest.max(self.next_id)
    }
}

/// A rule as a desired state names it; one without an id is new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedConnRule {
    pub id: Option<u32>,
    pub spec: ConnRuleSpec,
    pub declared_by: Option<String>,
}

/// One `rein conn` rule as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnRuleView {
    #[serde(flatten)]
    pub record: ConnRuleRecord,
    pub allowed: u64,
    pub refused: u64,
    /// Of the refused, those refused because the callers table had no room for a new caller.
    pub refused_table_full: u64,
    /// Whole connections the shared bucket holds now (rules without `per_caller`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Per-caller rules: the callers that connected the most.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_callers: Vec<CallerView>,
}

/// One caller network namespace of a per-caller rule.
#[derive(Clone, Debug, Serialize)]
pub struct CallerView {
    /// The caller's network namespace cookie.
    pub netns: u64,
    pub allowed: u64,
    pub refused: u64,
    pub tokens: u64,
}

/// The id the first new rule of `desired` gets: after every rule of either kind, and after the
/// new `rein net` rules planned before this capability's.
fn first_new_id(state: &State, desired: &Desired) -> u32 {
    let new_net_rules = desired.net_rules.iter().filter(|w| w.id.is_none()).count();
    state.next_rule_id() + u32::try_from(new_net_rules).unwrap_or(u32::MAX)
}

/// Adds a rule; its cgroup or network namespace is looked up here.
pub fn add(engine: &mut Engine, rule: NewConnRule) -> Result<ConnRuleRecord> {
    let mut tx = engine.begin()?;
    let spec = rule.resolve(tx.context())?;
    let mut desired = tx.desired();
    desired.conn_rules.push(WantedConnRule {
        id: None,
        spec,
        declared_by: None,
    });
    let plan = tx.plan(&desired)?;
    let id = first_new_id(tx.state(), &desired);
    tx.apply(&plan)?;
    let record = tx.state().conn_limits.find(id).cloned();
    tx.commit()?;
    record.ok_or(Error::NoSuchConnRule(id))
}

/// Deletes rule `id`; the programs go with the last rule.
pub fn delete(engine: &mut Engine, id: u32) -> Result<ConnRuleRecord> {
    let mut tx = engine.begin()?;
    let record = tx
        .state()
        .conn_limits
        .find(id)
        .cloned()
        .ok_or(Error::NoSuchConnRule(id))?;
    let mut desired = tx.desired();
    desired.conn_rules.retain(|rule| rule.id != Some(id));
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(record)
}

/// Every `rein conn` rule with its counters, its bucket and its top callers. Only reads: it
/// may run without the instance's lock (see `Status::read`).
pub fn status(cx: &Context, state: &State) -> Result<Vec<ConnRuleView>> {
    let rules = &state.conn_limits.rules;
    let datapath = match ConnDatapath::open(&cx.instance) {
        Ok(datapath) => Some(datapath),
        // Not installed, or uninstalled by a command while this reads.
        Err(_) if !ConnDatapath::is_installed(&cx.instance) => None,
        Err(error) => return Err(error),
    };
    let now = cx.now_ns();
    Ok(rules
        .iter()
        .map(|record| {
            let Some(datapath) = &datapath else {
                return view(record, Default::default(), None, Vec::new());
            };
            let counters = datapath.counters(record.id);
            let rule = datapath.rule(record.id);
            let bucket = rule.as_ref().map(ConnBucket::of);
            let tokens = match (&rule, &bucket) {
                (Some(rule), Some(bucket)) if !record.spec.per_caller => {
                    Some(bucket.tokens(rule.state, now))
                }
                _ => None,
            };
            let mut callers = if record.spec.per_caller {
                datapath.callers(record.id)
            } else {
                Vec::new()
            };
            callers.sort_by_key(|(_, c)| std::cmp::Reverse(c.allowed.saturating_add(c.refused)));
            let top_callers = callers
                .into_iter()
                .take(TOP_CALLERS)
                .map(|(netns, caller)| CallerView {
                    netns,
                    allowed: caller.allowed,
                    refused: caller.refused,
                    tokens: bucket.map_or(0, |b| b.tokens(caller.state, now)),
                })
                .collect();
            view(record, counters, tokens, top_callers)
        })
        .collect())
}

fn view(
    record: &ConnRuleRecord,
    counters: rein_common::conn::ConnCounters,
    tokens: Option<u64>,
    top_callers: Vec<CallerView>,
) -> ConnRuleView {
    ConnRuleView {
        record: record.clone(),
        allowed: counters.allowed,
        refused: counters.refused,
        refused_table_full: counters.refused_table_full,
        tokens,
        top_callers,
    }
}

/// Adds a rule: its entry in the maps, and the programs at the cgroup v2 root if they are not
/// there yet.
struct AddRule {
    id: u32,
    spec: ConnRuleSpec,
    declared_by: Option<String>,
}

impl fmt::Display for AddRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "add conn rule {} to {} for {}",
            self.id, self.spec.destination, self.spec.scope
        )
    }
}

impl Step for AddRule {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let key = self.spec.key();
        // One entry per key: a second rule would overwrite the first's.
        if let Some(other) = state.conn_limits.rules.iter().find(|r| r.spec.key() == key) {
            return Err(Error::DuplicateConnRule(other.id));
        }
        if !ConnDatapath::is_installed(&cx.instance) {
            let instance = cx.instance.clone();
            undo.push(move || ConnDatapath::uninstall(&instance));
        }
        let mut datapath = ConnDatapath::open_or_create(&cx.instance)?;
        let rule = self.spec.rule(cx.now_ns());
        datapath.put(self.id, &[key], self.spec.specificity(), rule)?;
        {
            let (instance, id) = (cx.instance.clone(), self.id);
            undo.push(move || {
                if let Ok(mut datapath) = ConnDatapath::open(&instance) {
                    datapath.remove(id, &[key]);
                }
            });
        }
        state.conn_limits.next_id = state.conn_limits.next_id.max(self.id + 1);
        state.conn_limits.rules.push(ConnRuleRecord {
            id: self.id,
            spec: self.spec.clone(),
            anchor_ns: (rule.form == CONN_FORM_FILL).then_some(rule.anchor_ns),
            declared_by: self.declared_by.clone(),
        });
        write_shapes(&mut datapath, state)?;
        // Last: the programs find the rule and its lookups in place.
        ConnDatapath::attach(&cx.instance)
    }
}

/// Whether `after` differs from `before` in its limit alone: the same connections counted the
/// same way (destination, protocol, scope, one bucket or one per caller).
fn only_the_limit_changed(before: &ConnRuleSpec, after: &ConnRuleSpec) -> bool {
    let with_new_limit = ConnRuleSpec {
        limit: after.limit,
        ..before.clone()
    };
    with_new_limit == *after
}

/// Changes a rule's limit in place (either form into either), keeping its counters, its place
/// in the trie, a fill form's anchor, and what its buckets hold (up to the new size: see
/// `spec::carry_bucket`).
struct ChangeLimit {
    record: ConnRuleRecord,
    spec: ConnRuleSpec,
    declared_by: Option<String>,
}

impl fmt::Display for ChangeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "change conn rule {} to {} for {}: {}",
            self.record.id, self.spec.destination, self.spec.scope, self.spec.limit
        )
    }
}

impl Step for ChangeLimit {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let id = self.record.id;
        let now = cx.now_ns();
        let mut anchor_ns = None;
        let previous = ConnDatapath::is_installed(&cx.instance)
            .then(|| ConnDatapath::open(&cx.instance))
            .transpose()?
            .and_then(|datapath| datapath.rule(id).map(|rule| (datapath, rule)));
        if let Some((mut datapath, previous)) = previous {
            let mut rule = self.spec.rule(now);
            if rule.form == CONN_FORM_FILL {
                // Intervals stay where they were; a rule new to the fill form starts them now.
                if previous.form == CONN_FORM_FILL {
                    rule.anchor_ns = previous.anchor_ns;
                }
                anchor_ns = Some(rule.anchor_ns);
            }
            let callers = datapath.callers(id);
            datapath.change_rule_with(id, rule, |word| {
                spec::carry_bucket(&previous, word, &rule, now)
            })?;
            datapath.rewrite_callers(id, |word| spec::carry_bucket(&previous, word, &rule, now));
            let cx = cx.clone();
            undo.push(move || {
                if let Ok(mut datapath) = ConnDatapath::open(&cx.instance) {
                    let _ = datapath.change_rule_with(id, previous, |_| previous.state);
                    datapath.restore_callers(id, &callers);
                }
            });
        } else if let ConnLimit::Fill { .. } = self.spec.limit {
            anchor_ns = Some(self.record.anchor_ns.unwrap_or(now));
        }
        if let Some(record) = state.conn_limits.rules.iter_mut().find(|r| r.id == id) {
            record.spec = self.spec.clone();
            record.declared_by = self.declared_by.clone();
            record.anchor_ns = anchor_ns;
        }
        Ok(())
    }
}

/// Removes a rule's entries from the maps. The programs leave the cgroup root once the state
/// is saved without rules (`remove_if_unused`).
struct RemoveRule {
    record: ConnRuleRecord,
}

impl fmt::Display for RemoveRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delete conn rule {} to {} for {}",
            self.record.id, self.record.spec.destination, self.record.spec.scope
        )
    }
}

impl Step for RemoveRule {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let record = &self.record;
        state.conn_limits.rules.retain(|r| r.id != record.id);
        if !ConnDatapath::is_installed(&cx.instance) {
            return Ok(());
        }
        let mut datapath = ConnDatapath::open(&cx.instance)?;
        let key = record.spec.key();
        if datapath.rule(record.id).is_some() {
            datapath.remove(record.id, &[key]);
            // Back with a full bucket: a bucket's state cannot be put back exactly, and a full
            // one errs toward letting a connection through.
            let cx = cx.clone();
            let record = record.clone();
            undo.push(move || {
                if let Ok(mut datapath) = ConnDatapath::open(&cx.instance) {
                    let rule = record.rule(cx.now_ns());
                    let _ = datapath.put(record.id, &[key], record.spec.specificity(), rule);
                }
            });
        }
        write_shapes(&mut datapath, state)
    }
}

/// Writes the lookups the rules need: a bit per scope kind and way of naming protocol and port,
/// a bit per cgroup level with cgroup-scoped rules.
fn write_shapes(datapath: &mut ConnDatapath, state: &State) -> Result<()> {
    let shapes = state
        .conn_limits
        .rules
        .iter()
        .fold(ConnShapes::default(), |shapes, r| ConnShapes {
            variants: shapes.variants | r.spec.variant_bit(),
            cgroup_levels: shapes.cgroup_levels | r.spec.cgroup_level_bit(),
        });
    datapath.set_shapes(shapes)
}

/// Whether a cgroup-scoped rule's cgroup is gone (removed, or a new one under its path).
fn cgroup_gone(cx: &Context, record: &ConnRuleRecord) -> bool {
    match &record.spec.scope {
        spec::ConnScopeSpec::Cgroup { path, id, .. } => match cx.cgroups.at(path) {
            Ok(cgroup) => !cgroup.exists() || cgroup.id().ok() != Some(*id),
            Err(_) => true,
        },
        spec::ConnScopeSpec::All | spec::ConnScopeSpec::Netns { .. } => false,
    }
}

/// The outbound connection limits, as the engine drives them.
pub(crate) struct ConnLimits;

impl Capability for ConnLimits {
    fn name(&self) -> &'static str {
        "conn limits"
    }

    fn plan(&self, _cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        // A rule whose limit alone changed keeps its bucket (a fresh one would hand out a
        // burst at every edit); any other change removes it and adds it again under its id.
        let steps = rule_steps(
            &state.conn_limits.rules,
            |r| r.id,
            &desired.conn_rules,
            |w| w.id,
            |r, w| {
                Change::between(
                    r.spec == w.spec && r.declared_by == w.declared_by,
                    only_the_limit_changed(&r.spec, &w.spec),
                )
            },
            first_new_id(state, desired),
            Error::NoSuchConnRule,
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
        ConnDatapath::is_installed(&cx.instance)
    }

    fn prepare_reload(&self, cx: &Context) -> Result<Option<Box<dyn PreparedReload>>> {
        Ok(ConnDatapath::prepare_reload(&cx.instance)?
            .map(|reload| Box::new(reload) as Box<dyn PreparedReload>))
    }

    /// Writes again the rules the maps lack (after a reload into a new map layout, or entries
    /// removed by hand), and the programs if their links went.
    fn restore(&self, cx: &Context, state: &State, _undo: &mut Undo) -> Result<usize> {
        if state.conn_limits.is_empty() {
            return Ok(0);
        }
        // Maps of a new layout are created here, before any program uses them.
        let mut datapath = ConnDatapath::open_or_create(&cx.instance)?;
        let now = cx.now_ns();
        let mut restored = 0;
        for record in &state.conn_limits.rules {
            if datapath.rule(record.id).is_some() {
                continue;
            }
            let spec = &record.spec;
            datapath.put(
                record.id,
                &[spec.key()],
                spec.specificity(),
                record.rule(now),
            )?;
            restored += 1;
        }
        write_shapes(&mut datapath, state)?;
        ConnDatapath::attach(&cx.instance)?;
        Ok(restored)
    }

    /// Drops the rules whose cgroup is gone (as cgroup limits do), removes the map entries no
    /// rule owns (a command that died between its map writes and its save), and the callers
    /// whose bucket is full again (they hold nothing a fresh entry would not).
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        let stale: Vec<ConnRuleRecord> = state
            .conn_limits
            .rules
            .iter()
            .filter(|r| cgroup_gone(cx, r))
            .cloned()
            .collect();
        for record in &stale {
            tracing::info!(
                "removing conn rule {}: its {} is gone",
                record.id,
                record.spec.scope
            );
        }
        state
            .conn_limits
            .rules
            .retain(|r| !stale.iter().any(|s| s.id == r.id));
        if !ConnDatapath::is_installed(&cx.instance) {
            return Ok(());
        }
        let mut datapath = ConnDatapath::open(&cx.instance)?;
        for record in &stale {
            datapath.remove(record.id, &[record.spec.key()]);
        }
        let held: HashSet<u32> = state.conn_limits.rules.iter().map(|r| r.id).collect();
        let orphans = datapath.remove_rules_except(&held);
        if orphans > 0 {
            tracing::info!("removed {orphans} orphaned conn rule(s) from the maps");
        }
        if orphans > 0 || !stale.is_empty() {
            write_shapes(&mut datapath, state)?;
        }
        let orphans = datapath.remove_orphan_callers();
        if orphans > 0 {
            tracing::info!("removed {orphans} caller entries of rules no longer in the maps");
        }
        Ok(())
    }

    fn remove_if_unused(&self, cx: &Context, state: &State) {
        let present =
            ConnDatapath::is_installed(&cx.instance) || ConnDatapath::is_attached(&cx.instance);
        if state.conn_limits.is_empty() && present {
            ConnDatapath::uninstall(&cx.instance);
        }
    }

    fn purge(&self, cx: &Context, state: &State, report: &mut PurgeReport) {
        report.rules += state.conn_limits.rules.len();
        ConnDatapath::uninstall(&cx.instance);
    }
}
