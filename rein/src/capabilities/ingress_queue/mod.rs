//! Downloads under an ingress limit are queued, not policed: a queue per ingress rule (an ifb
//! device with a tbf qdisc at the rule's rate) in the network namespace rein runs in, and a tc
//! program on that namespace's devices that sends the rule's TCP downloads through it.
//!
//! The queues follow the cgroup limits' ingress rules: this capability has no section of its
//! own in the state, it plans from the cgroup limits' records what queues there must be.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
};

use rein_common::{Rule, netns_scope, scope_netns};
use serde::Serialize;

pub mod datapath;

use self::datapath::{device_name, tbf_for};
use super::{
    Capability, Context, PreparedReload,
    cgroup_limit::{LimitSpec, RuleRecord},
    netns_limit::NetnsRecord,
    shared_limit::{Member, SharedRecord},
};
use crate::{
    engine::{Desired, Plan, PurgeReport, Step},
    error::{Error, Result},
    instance::Instance,
    platform::{netlink, netns},
    store::{State, Undo},
};

/// The kernel rule whose rate and burst a record's ingress queue has.
fn ingress_rule(spec: Option<LimitSpec>) -> Option<Rule> {
    spec.map(|spec| spec.effective().rule(0))
}

/// A limit with a download queue: a cgroup's, whose queue is in the namespace rein runs in, or
/// a network namespace's, whose queue is in that namespace (its sockets' packets arrive on its
/// devices).
#[derive(Clone, Debug)]
struct Queued {
    scope: u64,
    /// `cgroup /path` or `network namespace /run/netns/x`.
    label: String,
    netns: Option<String>,
    rule: Rule,
    /// Other cgroups whose downloads go through this queue: a shared limit's member cgroups
    /// (in the namespace rein runs in; member namespaces have none, their bucket polices).
    aliases: Vec<u64>,
}

/// The queues `cgroup_limits`, `netns_limits` and `shared_limits` call for.
fn queued(
    cgroup_limits: &[RuleRecord],
    netns_limits: &[NetnsRecord],
    shared_limits: &[SharedRecord],
) -> Vec<Queued> {
    let cgroups = cgroup_limits.iter().filter_map(|record| {
        Some(Queued {
            scope: record.cgroup_id,
            label: format!("cgroup {}", record.cgroup),
            netns: None,
            rule: ingress_rule(record.ingress)?,
            aliases: Vec::new(),
        })
    });
    let namespaces = netns_limits.iter().filter_map(|record| {
        Some(Queued {
            scope: netns_scope(record.cookie),
            label: format!("network namespace {}", record.netns),
            netns: Some(record.netns.clone()),
            rule: ingress_rule(record.ingress)?,
            aliases: Vec::new(),
        })
    });
    let shared = shared_limits.iter().filter_map(|record| {
        Some(Queued {
            scope: record.scope(),
            label: format!("shared limit {}", record.name),
            netns: None,
            rule: ingress_rule(record.ingress)?,
            aliases: record
                .members
                .iter()
                .filter_map(|m| match m {
                    Member::Cgroup { id, .. } => Some(*id),
                    Member::Netns { .. } => None,
                })
                .collect(),
        })
    });
    cgroups.chain(namespaces).chain(shared).collect()
}

/// Every queue the state calls for.
fn queued_in(state: &State) -> Vec<Queued> {
    queued(
        &state.cgroup_limits.rules,
        &state.netns_limits.rules,
        &state.shared_limits.groups,
    )
}

/// Runs `f` in the namespace where a queue lives: `netns`, or this one.
fn within<T: Send>(netns: Option<&str>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    match netns {
        None => f(),
        Some(path) => netns::run_in(Path::new(path), f)
            .map_err(|_| Error::NoSuchNetns(PathBuf::from(path)))?,
    }
}

/// Removes a queue; when its namespace is gone (and its devices with it), what is left of it
/// elsewhere: its map entries and the pins of its namespace's links.
fn remove_queue(instance: &Instance, scope: u64, netns: Option<&str>) {
    let removed = within(netns, || {
        datapath::remove(instance, scope);
        Ok(())
    });
    if removed.is_err() {
        datapath::remove(instance, scope);
    }
    if let Some(cookie) = scope_netns(scope) {
        datapath::detach_netns(instance, cookie);
    }
}

/// The download queue of a cgroup's ingress limit, as its qdisc counts.
#[derive(Clone, Debug, Serialize)]
pub struct QueueView {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub device: String,
    /// Bytes and packets waiting now.
    pub backlog_bytes: u64,
    pub backlog_packets: u64,
    /// Packets the queue dropped because it was full.
    pub dropped_packets: u64,
}

/// The queues of the ingress limits that are in this network namespace (a queue lives where
/// the `rein` that set its limit ran; the others cannot be read from here).
pub fn status(cx: &Context, state: &State) -> Vec<QueueView> {
    state
        .cgroup_limits
        .rules
        .iter()
        .filter(|record| record.ingress.is_some())
        .filter_map(|record| {
            let device = device_name(&cx.instance, record.cgroup_id);
            let ifindex = netns::device(&device).ok()??.ifindex;
            let stats = match netlink::root_qdisc_stats(ifindex) {
                Ok(stats) => stats?,
                Err(error) => {
                    tracing::debug!("cannot read the queue {device}: {error}");
                    return None;
                }
            };
            Some(QueueView {
                cgroup: record.cgroup.clone(),
                cgroup_id: record.cgroup_id,
                device,
                backlog_bytes: u64::from(stats.backlog_bytes),
                backlog_packets: u64::from(stats.backlog_packets),
                dropped_packets: u64::from(stats.dropped_packets),
            })
        })
        .collect()
}

/// Makes the queue of an ingress rule, or changes its rate in place.
struct SetQueue {
    queued: Queued,
    previous: Option<Rule>,
}

impl fmt::Display for SetQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tbf = tbf_for(&self.queued.rule);
        let (verb, preposition) = if self.previous.is_some() {
            ("change the download queue of", "to")
        } else {
            ("queue the downloads of", "at")
        };
        write!(
            f,
            "{verb} {} {preposition} {} bytes/s, burst {} bytes",
            self.queued.label, tbf.rate_bytes_per_second, tbf.burst_bytes
        )
    }
}

impl Step for SetQueue {
    fn apply(&self, cx: &Context, _state: &mut State, undo: &mut Undo) -> Result<()> {
        let Queued {
            scope,
            netns,
            rule,
            aliases,
            ..
        } = self.queued.clone();
        let instance = cx.instance.clone();
        let previous = self.previous;
        // Registered first: a queue half made in another namespace is taken away too.
        let (undo_instance, undo_netns) = (instance.clone(), netns.clone());
        undo.push(move || restore_queue(&undo_instance, scope, undo_netns.as_deref(), previous));
        within(netns.as_deref(), || {
            // A queue re-made would drop what waits in it: one in place only changes its rate.
            if previous.is_some() && datapath::is_set(&instance, scope) {
                datapath::change(&instance, scope, &rule)?;
            } else {
                datapath::set(&instance, scope, &rule)?;
            }
            if aliases.is_empty() {
                Ok(())
            } else {
                datapath::set_aliases(&instance, scope, &aliases)
            }
        })
    }
}

/// Removes the queue of a limit whose ingress rule goes.
struct RemoveQueue {
    queued: Queued,
}

impl fmt::Display for RemoveQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "remove the download queue of {}", self.queued.label)
    }
}

impl Step for RemoveQueue {
    fn apply(&self, cx: &Context, _state: &mut State, undo: &mut Undo) -> Result<()> {
        let Queued {
            scope, netns, rule, ..
        } = self.queued.clone();
        remove_queue(&cx.instance, scope, netns.as_deref());
        let instance = cx.instance.clone();
        undo.push(move || restore_queue(&instance, scope, netns.as_deref(), Some(rule)));
        Ok(())
    }
}

fn restore_queue(instance: &Instance, scope: u64, netns: Option<&str>, previous: Option<Rule>) {
    match previous {
        Some(rule) => {
            let _ = within(netns, || {
                if datapath::is_set(instance, scope) {
                    datapath::change(instance, scope, &rule)
                } else {
                    datapath::set(instance, scope, &rule)
                }
            });
        }
        None => remove_queue(instance, scope, netns),
    }
}

/// Whether the queue of `scope` is in place (in `netns`, or here).
fn is_set(instance: &Instance, scope: u64, netns: Option<&str>) -> bool {
    within(netns, || Ok(datapath::is_set(instance, scope))).unwrap_or(false)
}

/// Whether the download queue of a namespace's limit (`scope`) is in place in the namespace
/// at `netns`.
pub(crate) fn is_queued(cx: &Context, scope: u64, netns: &str) -> bool {
    is_set(&cx.instance, scope, Some(netns))
}

/// The download queues, as the engine drives them.
pub(crate) struct IngressQueues;

impl Capability for IngressQueues {
    fn name(&self) -> &'static str {
        "ingress queues"
    }

    fn plan(&self, cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        let held = queued_in(state);
        let wanted = queued(
            &desired.cgroup_limits,
            &desired.netns_limits,
            &desired.shared_limits,
        );
        // By scope: the agent plans 10,000 limits every few seconds.
        let wanted_by_scope: HashMap<u64, &Queued> = wanted.iter().map(|q| (q.scope, q)).collect();
        let held_by_scope: HashMap<u64, &Queued> = held.iter().map(|q| (q.scope, q)).collect();
        for queue in &held {
            // A namespace's queue whose path now leads elsewhere is another queue.
            if wanted_by_scope
                .get(&queue.scope)
                .is_none_or(|w| w.netns != queue.netns)
            {
                plan.push(RemoveQueue {
                    queued: queue.clone(),
                });
            }
        }
        for queue in &wanted {
            let held = held_by_scope
                .get(&queue.scope)
                .filter(|held| held.netns == queue.netns);
            let previous = held.map(|held| held.rule);
            // A queue re-made would lose what waits in it: only a new rate or burst, or a
            // missing queue, re-makes it (a change of the egress limit does not); new members
            // of a shared limit only change its aliases.
            let same = previous.is_some_and(|p| tbf_for(&p) == tbf_for(&queue.rule))
                && held.is_some_and(|held| held.aliases == queue.aliases);
            if !same || !is_set(&cx.instance, queue.scope, queue.netns.as_deref()) {
                plan.push(SetQueue {
                    queued: queue.clone(),
                    previous,
                });
            }
        }
        Ok(())
    }

    fn is_installed(&self, cx: &Context) -> bool {
        datapath::is_attached(&cx.instance)
    }

    fn prepare_reload(&self, cx: &Context) -> Result<Option<Box<dyn PreparedReload>>> {
        Ok(datapath::prepare_reload(&cx.instance)?
            .map(|reload| Box::new(reload) as Box<dyn PreparedReload>))
    }

    /// Makes the queues that are missing (never the ones in place: they hold packets), and
    /// puts the queue program on devices that appeared since.
    fn restore(&self, cx: &Context, state: &State, undo: &mut Undo) -> Result<usize> {
        for queue in queued_in(state) {
            let netns = queue.netns.as_deref();
            if is_set(&cx.instance, queue.scope, netns) {
                continue;
            }
            // A namespace that is gone has nothing to queue; the next command collects its
            // limit.
            if netns.is_some_and(|path| !Path::new(path).exists()) {
                continue;
            }
            let (instance, scope) = (cx.instance.clone(), queue.scope);
            within(netns, || {
                datapath::set(&instance, scope, &queue.rule)?;
                if queue.aliases.is_empty() {
                    Ok(())
                } else {
                    datapath::set_aliases(&instance, scope, &queue.aliases)
                }
            })?;
            let owned = queue.netns.clone();
            undo.push(move || remove_queue(&instance, scope, owned.as_deref()));
        }
        if datapath::is_attached(&cx.instance) {
            datapath::attach(&cx.instance)?;
        }
        Ok(0)
    }

    /// Removes the queues (map entries, and devices in this namespace) of limits without an
    /// ingress rule, and puts the queue program on devices that appeared since the last
    /// command in a namespace that has queues.
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        let queues = queued_in(state);
        let wanted: HashSet<u64> = queues.iter().map(|q| q.scope).collect();
        // A shared limit's members' entries are its queue's, not orphans.
        let aliases: HashSet<u64> = queues.iter().flat_map(|q| q.aliases.clone()).collect();
        let cookie = netns::cookie().ok();
        let mut queued_here = false;
        for key in datapath::entries(&cx.instance) {
            if wanted.contains(&key.cgroup_id) || aliases.contains(&key.cgroup_id) {
                queued_here |= Some(key.netns_cookie) == cookie;
                continue;
            }
            tracing::info!("removing the orphaned queue of scope {:#x}", key.cgroup_id);
            datapath::forget(&cx.instance, &key);
            if let Some(cookie) = scope_netns(key.cgroup_id) {
                datapath::detach_netns(&cx.instance, cookie);
            }
        }
        let expected: Vec<String> = wanted
            .iter()
            .map(|scope| device_name(&cx.instance, *scope))
            .collect();
        for name in datapath::devices(&cx.instance) {
            if !expected.contains(&name) {
                tracing::info!("removing the orphaned queue device {name}");
                let _ = netlink::delete_link(&name);
            }
        }
        // Best effort: a device that refuses the program must not stop every command; the
        // next `set` of an ingress limit reports it.
        if queued_here && let Err(error) = datapath::attach(&cx.instance) {
            tracing::warn!("cannot put the queue program on a new device: {error}");
        }
        Ok(())
    }

    fn remove_if_unused(&self, cx: &Context, state: &State) {
        if queued_in(state).is_empty() {
            datapath::remove_all(&cx.instance);
        }
    }

    fn purge(&self, cx: &Context, state: &State, _report: &mut PurgeReport) {
        for queue in queued_in(state) {
            if queue.netns.is_some() {
                remove_queue(&cx.instance, queue.scope, queue.netns.as_deref());
            }
        }
        datapath::remove_all(&cx.instance);
    }
}
