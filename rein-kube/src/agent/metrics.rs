//! The agent's own metrics, added to every scrape of rein's `/metrics` (served by rein's
//! [`Server`](rein::observe::metrics::Server), so the instance's per-limit series are there too).
//!
//! Cardinality is bounded by the node: the per-pod series are those of this node's limited
//! pods only, made afresh at each scrape from the pods the last apply limited, so a pod that
//! goes takes its series with it.
use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError, atomic::AtomicI64},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use rein::{
    Instance, capabilities::cgroup_limit::DirectionView, declarative::Declarer, engine::Status,
};

/// What a pod is to the agent, for `rein_kube_pods{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodState {
    /// Its limit is in the kernel.
    Limited,
    /// Its annotations or labels are refused (an Event says why).
    Invalid,
    /// It asks for a limit, but its cgroup or network namespace is not there yet.
    Waiting,
    /// rein's CNI plugin holds its limit.
    Cni,
}

impl PodState {
    pub const ALL: [PodState; 4] = [Self::Limited, Self::Invalid, Self::Waiting, Self::Cni];

    pub fn name(self) -> &'static str {
        match self {
            Self::Limited => "limited",
            Self::Invalid => "invalid",
            Self::Waiting => "waiting",
            Self::Cni => "cni",
        }
    }
}

/// A limited pod, by the name of the rein resource that limits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitedPod {
    pub namespace: String,
    pub pod: String,
}

#[derive(Debug, Default)]
struct State {
    pods: BTreeMap<PodState, usize>,
    /// By resource name.
    limited: BTreeMap<String, LimitedPod>,
    applies_changed: u64,
    applies_unchanged: u64,
    applies_failed: u64,
    /// Resources left out of the last apply because rein refused them.
    refused: usize,
    events: u64,
    event_errors: u64,
    watch_restarts: BTreeMap<&'static str, u64>,
    watch_errors: BTreeMap<&'static str, u64>,
    /// Custom resources by kind and state (see [`Metrics::set_custom_resources`]).
    custom: BTreeMap<(String, String), usize>,
}

/// How an apply ended, for `rein_kube_applies_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyResult {
    Changed,
    Unchanged,
    Failed,
}

/// The agent's metrics, shared between its loop and the metrics thread.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every field is a plain value written whole: a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pods of the node by state, and the limited ones by the resource that limits them,
    /// as the last apply left them.
    pub fn set_pods(
        &self,
        states: impl IntoIterator<Item = PodState>,
        limited: BTreeMap<String, LimitedPod>,
    ) {
        let mut counts = BTreeMap::new();
        for state in states {
            *counts.entry(state).or_insert(0) += 1;
        }
        let mut state = self.state();
        state.pods = counts;
        state.limited = limited;
    }

    pub fn applied(&self, result: ApplyResult) {
        let mut state = self.state();
        match result {
            ApplyResult::Changed => state.applies_changed += 1,
            ApplyResult::Unchanged => state.applies_unchanged += 1,
            ApplyResult::Failed => state.applies_failed += 1,
        }
    }

    /// How many resources the last apply left out, rein refusing them.
    pub fn set_refused(&self, count: usize) {
        self.state().refused = count;
    }

    pub fn event_published(&self, ok: bool) {
        let mut state = self.state();
        if ok {
            state.events += 1;
        } else {
            state.event_errors += 1;
        }
    }

    /// A watch that listed again (its history expired, or after an error).
    pub fn watch_restarted(&self, resource: &'static str) {
        *self.state().watch_restarts.entry(resource).or_insert(0) += 1;
    }

    /// A watch or list request that failed (it is tried again with a backoff).
    pub fn watch_failed(&self, resource: &'static str) {
        *self.state().watch_errors.entry(resource).or_insert(0) += 1;
    }

    /// How many custom resources of `kind` (`BandwidthPolicy`, `RateLimit`) are in `state`
    /// (`accepted`, `invalid`), for `rein_kube_custom_resources{kind,state}`: the custom
    /// resources' translation sets them on each reconciliation.
    pub fn set_custom_resources(&self, kind: &str, state: &str, count: usize) {
        self.state()
            .custom
            .insert((kind.to_owned(), state.to_owned()), count);
    }

    /// Registers the agent's families under `rein_kube_`; the per-pod ones from `status` (the
    /// instance's limits now), matched to pods by the resource that declared each.
    pub fn register(&self, registry: &mut Registry, status: Option<&Status>) {
        let state = self.state();
        let registry = registry.sub_registry_with_prefix("kube");

        let pods = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        for kind in PodState::ALL {
            let count = state.pods.get(&kind).copied().unwrap_or(0);
            pods.get_or_create(&vec![("state", kind.name())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        registry.register(
            "pods",
            "Pods of this node that ask for a limit, by state (limited, invalid, waiting, cni)",
            pods,
        );

        let applies = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        for (result, count) in [
            ("changed", state.applies_changed),
            ("unchanged", state.applies_unchanged),
            ("failed", state.applies_failed),
        ] {
            applies
                .get_or_create(&vec![("result", result)])
                .inc_by(count);
        }
        registry.register(
            "applies",
            "Applies of the node's declarations to the kernel, by result",
            applies,
        );
        let counter = |value: u64| {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            counter
        };
        let refused = Gauge::<i64>::default();
        refused.set(i64::try_from(state.refused).unwrap_or(i64::MAX));
        registry.register(
            "refused_resources",
            "Resources the last apply left out because rein refused them (an Event or a status \
             condition says why)",
            refused,
        );
        registry.register(
            "events",
            "Events the agent published",
            counter(state.events),
        );
        registry.register(
            "event_errors",
            "Events the API server refused or the agent could not send",
            counter(state.event_errors),
        );
        for (name, help, counts) in [
            (
                "watch_restarts",
                "Watches that listed again (history expired, or after an error), by resource",
                &state.watch_restarts,
            ),
            (
                "watch_errors",
                "Failed list or watch requests (tried again with a backoff), by resource",
                &state.watch_errors,
            ),
        ] {
            let family = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
            for (resource, count) in counts {
                family
                    .get_or_create(&vec![("resource", *resource)])
                    .inc_by(*count);
            }
            registry.register(name, help, family);
        }
        let custom = Family::<Vec<(&'static str, String)>, Gauge>::default();
        for ((kind, condition), count) in &state.custom {
            custom
                .get_or_create(&vec![("kind", kind.clone()), ("state", condition.clone())])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        registry.register(
            "custom_resources",
            "Custom resources the agent reads, by kind and state",
            custom,
        );

        let Some(status) = status else { return };
        type PodLabels = Vec<(&'static str, String)>;
        let rate = Family::<PodLabels, Gauge>::default();
        let passed = Family::<PodLabels, Counter>::default();
        let dropped = Family::<PodLabels, Counter>::default();
        let burst = Family::<PodLabels, Gauge<i64, AtomicI64>>::default();
        let cgroups = status
            .cgroups
            .iter()
            .map(|v| (v.declared_by.as_deref(), [&v.egress, &v.ingress]));
        let namespaces = status
            .netns
            .iter()
            .map(|v| (v.declared_by.as_deref(), [&v.egress, &v.ingress]));
        for (declared_by, views) in cgroups.chain(namespaces) {
            // Only the agent's own declarations: a file's resource may bear the same name.
            let Some(pod) = declared_by
                .map(Declarer::of)
                .and_then(|(by, name)| (by == Declarer::Kubernetes).then_some(name))
                .and_then(|name| state.limited.get(name))
            else {
                continue;
            };
            for (direction, view) in ["egress", "ingress"].into_iter().zip(views) {
                let Some(view) = view else { continue };
                let labels = vec![
                    ("namespace", pod.namespace.clone()),
                    ("pod", pod.pod.clone()),
                    ("direction", direction.to_owned()),
                ];
                let DirectionView {
                    rate_bits_per_second,
                    burst_bytes,
                    passed_bytes,
                    dropped_bytes,
                    ..
                } = *view;
                rate.get_or_create(&labels)
                    .set(i64::try_from(rate_bits_per_second).unwrap_or(i64::MAX));
                burst
                    .get_or_create(&labels)
                    .set(i64::try_from(burst_bytes).unwrap_or(i64::MAX));
                passed.get_or_create(&labels).inc_by(passed_bytes);
                dropped.get_or_create(&labels).inc_by(dropped_bytes);
            }
        }
        registry.register(
            "pod_limit_bits_per_second",
            "A limited pod's rate, in bits per second as its annotation says",
            rate,
        );
        registry.register_with_unit("pod_burst", "A limited pod's burst", Unit::Bytes, burst);
        registry.register_with_unit(
            "pod_passed",
            "IP bytes a limited pod's limit passed",
            Unit::Bytes,
            passed,
        );
        registry.register_with_unit(
            "pod_dropped",
            "IP bytes a limited pod's limit dropped (or queued too long)",
            Unit::Bytes,
            dropped,
        );
    }
}

/// The instance's limits now, for a scrape; `None` (and no per-pod series) when they cannot
/// be read.
pub fn read_status(instance: &Instance) -> Option<Status> {
    match Status::read(instance.clone()) {
        Ok(status) => Some(status),
        Err(error) => {
            tracing::debug!("no per-pod metrics in this scrape: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text;
    use rein::capabilities::netns_limit::{NetnsOrigin, NetnsView};

    use super::*;

    fn view(path: &str, declared_by: Option<&str>) -> NetnsView {
        NetnsView {
            netns: path.into(),
            cookie: 7,
            origin: NetnsOrigin::Manual,
            declared_by: declared_by.map(str::to_owned),
            subnets: None,
            egress: Some(DirectionView {
                rate_bits_per_second: 10_000_000,
                burst_bytes: 65_536,
                burst_is_default: true,
                passed_packets: 10,
                passed_bytes: 15_000,
                dropped_packets: 1,
                dropped_bytes: 1_500,
                tcp_flows: 1,
            }),
            ingress: None,
        }
    }

    #[test]
    fn per_pod_series_are_those_of_the_agents_limited_pods_only() {
        let metrics = Metrics::default();
        let web = LimitedPod {
            namespace: "default".into(),
            pod: "web".into(),
        };
        metrics.set_pods(
            [PodState::Limited, PodState::Waiting],
            [("pod.default.web".to_owned(), web)].into(),
        );
        let status = Status {
            cgroups: vec![],
            netns: vec![
                view("/run/netns/a", Some("kubernetes:pod.default.web")),
                // A file's resource of the same name, and a pod the agent no longer limits.
                view("/run/netns/b", Some("pod.default.web")),
                view("/run/netns/c", Some("kubernetes:pod.default.gone")),
                view("/run/netns/d", None),
            ],
            net: vec![],
            conn: vec![],
            queues: vec![],
            shared: vec![],
        };
        let mut registry = Registry::with_prefix("rein");
        metrics.register(&mut registry, Some(&status));
        let mut out = String::new();
        text::encode(&mut out, &registry).unwrap();
        let labels = r#"{namespace="default",pod="web",direction="egress"}"#;
        for (series, value) in [
            ("rein_kube_pod_limit_bits_per_second", "10000000"),
            ("rein_kube_pod_burst_bytes", "65536"),
            ("rein_kube_pod_passed_bytes_total", "15000"),
            ("rein_kube_pod_dropped_bytes_total", "1500"),
        ] {
            let line = format!("{series}{labels} {value}\n");
            assert!(out.contains(&line), "no {line:?} in:\n{out}");
        }
        assert_eq!(
            out.matches("rein_kube_pod_limit_bits_per_second{").count(),
            1,
            "{out}"
        );
        for (state, count) in [("limited", 1), ("waiting", 1), ("invalid", 0), ("cni", 0)] {
            let line = format!("rein_kube_pods{{state=\"{state}\"}} {count}\n");
            assert!(out.contains(&line), "no {line:?} in:\n{out}");
        }

        // The pod gone, its series go.
        metrics.set_pods([], BTreeMap::new());
        let mut registry = Registry::with_prefix("rein");
        metrics.register(&mut registry, Some(&status));
        let mut out = String::new();
        text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains("pod=\"web\""), "{out}");
    }
}
