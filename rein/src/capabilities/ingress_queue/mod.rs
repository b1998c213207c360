//! Downloads under an ingress limit are queued, not policed: a queue per ingress rule (an ifb
//! device with a tbf qdisc at the rule's rate) in the network namespace rein runs in, and a tc
//! program on that namespace's devices that sends the rule's TCP downloads through it.
//!
//! The queues follow the cgroup limits' ingress rules: this capability has no section of its
//! own in the state, it plans from the cgroup limits' records what queues there must be.
use std::{collections::HashMap, fmt};

use rein_common::{Direction, Rule};
use serde::Serialize;

pub mod datapath;

use self::datapath::{device_name, tbf_for};
use super::{Capability, Context, PreparedReload, cgroup_limit::RuleRecord};
use crate::{
    engine::{Desired, Plan, PurgeReport, Step},
    error::Result,
    instance::Instance,
    platform::{netlink, netns},
    store::{State, Undo},
};

/// The kernel rule whose rate and burst a record's ingress queue has.
fn ingress_rule(record: &RuleRecord) -> Option<Rule> {
    record
        .spec(Direction::Ingress)
        .map(|spec| spec.effective().rule(0))
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

/// Makes the queue of a cgroup's ingress rule, or changes its rate in place.
struct SetQueue {
    cgroup: String,
    cgroup_id: u64,
    rule: Rule,
    previous: Option<Rule>,
}

impl fmt::Display for SetQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tbf = tbf_for(&self.rule);
        let (verb, preposition) = if self.previous.is_some() {
            ("change the download queue of", "to")
        } else {
            ("queue the downloads of", "at")
        };
        write!(
            f,
            "{verb} cgroup {} {preposition} {} bytes/s, burst {} bytes",
            self.cgroup, tbf.rate_bytes_per_second, tbf.burst_bytes
        )
    }
}

impl Step for SetQueue {
    fn apply(&self, cx: &Context, _state: &mut State, undo: &mut Undo) -> Result<()> {
        // A queue re-made would drop what waits in it: one in place only changes its rate.
        if self.previous.is_some() && datapath::is_set(&cx.instance, self.cgroup_id) {
            datapath::change(&cx.instance, self.cgroup_id, &self.rule)?;
        } else {
            datapath::set(&cx.instance, self.cgroup_id, &self.rule)?;
        }
        let (instance, cgroup_id, previous) = (cx.instance.clone(), self.cgroup_id, self.previous);
        undo.push(move || restore_queue(&instance, cgroup_id, previous));
        Ok(())
    }
}

/// Removes the queue of a cgroup whose ingress rule goes.
struct RemoveQueue {
    cgroup: String,
    cgroup_id: u64,
    previous: Rule,
}

impl fmt::Display for RemoveQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "remove the download queue of cgroup {}", self.cgroup)
    }
}

impl Step for RemoveQueue {
    fn apply(&self, cx: &Context, _state: &mut State, undo: &mut Undo) -> Result<()> {
        datapath::remove(&cx.instance, self.cgroup_id);
        let (instance, cgroup_id, previous) =
            (cx.instance.clone(), self.cgroup_id, Some(self.previous));
        undo.push(move || restore_queue(&instance, cgroup_id, previous));
        Ok(())
    }
}

fn restore_queue(instance: &Instance, cgroup_id: u64, previous: Option<Rule>) {
    match previous {
        Some(rule) if datapath::is_set(instance, cgroup_id) => {
            let _ = datapath::change(instance, cgroup_id, &rule);
        }
        Some(rule) => {
            let _ = datapath::set(instance, cgroup_id, &rule);
        }
        None => datapath::remove(instance, cgroup_id),
    }
}

/// The download queues, as the engine drives them.
pub(crate) struct IngressQueues;

impl Capability for IngressQueues {
    fn name(&self) -> &'static str {
        "ingress queues"
    }

    fn plan(&self, cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        let held = &state.cgroup_limits;
        // By id: the agent plans 10,000 limits every few seconds.
        let wanted_by_id: HashMap<u64, &RuleRecord> = desired
            .cgroup_limits
            .iter()
            .map(|r| (r.cgroup_id, r))
            .collect();
        let held_by_id: HashMap<u64, &RuleRecord> =
            held.rules.iter().map(|r| (r.cgroup_id, r)).collect();
        for record in &held.rules {
            let wanted = wanted_by_id
                .get(&record.cgroup_id)
                .and_then(|r| ingress_rule(r));
            if let (Some(previous), None) = (ingress_rule(record), wanted) {
                plan.push(RemoveQueue {
                    cgroup: record.cgroup.clone(),
                    cgroup_id: record.cgroup_id,
                    previous,
                });
            }
        }
        for record in &desired.cgroup_limits {
            let Some(rule) = ingress_rule(record) else {
                continue;
            };
            let previous = held_by_id
                .get(&record.cgroup_id)
                .and_then(|r| ingress_rule(r));
            // A queue re-made would lose what waits in it: only a new rate or burst, or a
            // missing queue, re-makes it (a change of the egress limit does not).
            let same = previous.is_some_and(|p| tbf_for(&p) == tbf_for(&rule));
            if !same || !datapath::is_set(&cx.instance, record.cgroup_id) {
                plan.push(SetQueue {
                    cgroup: record.cgroup.clone(),
                    cgroup_id: record.cgroup_id,
                    rule,
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
        for record in &state.cgroup_limits.rules {
            if let Some(rule) = ingress_rule(record)
                && !datapath::is_set(&cx.instance, record.cgroup_id)
            {
                datapath::set(&cx.instance, record.cgroup_id, &rule)?;
                let (instance, cgroup_id) = (cx.instance.clone(), record.cgroup_id);
                undo.push(move || datapath::remove(&instance, cgroup_id));
            }
        }
        if datapath::is_attached(&cx.instance) {
            datapath::attach(&cx.instance)?;
        }
        Ok(0)
    }

    /// Removes the queues (map entries, and devices in this namespace) of cgroups without an
    /// ingress rule, and puts the queue program on devices that appeared since the last
    /// command in a namespace that has queues.
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        let wanted = |cgroup_id: u64| {
            state
                .cgroup_limits
                .find(cgroup_id)
                .is_some_and(|r| r.ingress.is_some())
        };
        let cookie = netns::cookie().ok();
        let mut queued_here = false;
        for key in datapath::entries(&cx.instance) {
            if wanted(key.cgroup_id) {
                queued_here |= Some(key.netns_cookie) == cookie;
                continue;
            }
            tracing::info!("removing the orphaned queue of cgroup {}", key.cgroup_id);
            datapath::forget(&cx.instance, &key);
        }
        let expected: Vec<String> = state
            .cgroup_limits
            .rules
            .iter()
            .filter(|r| r.ingress.is_some())
            .map(|r| device_name(&cx.instance, r.cgroup_id))
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
        if !state
            .cgroup_limits
            .rules
            .iter()
            .any(|r| r.ingress.is_some())
        {
            datapath::remove_all(&cx.instance);
        }
    }

    fn purge(&self, cx: &Context, _state: &State, _report: &mut PurgeReport) {
        datapath::remove_all(&cx.instance);
    }
}
