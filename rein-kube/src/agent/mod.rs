//! `rein-kube agent`: the node agent's loop. It watches the pods of its node (and the custom
//! resources and Services), turns them into rein resources, and applies them through rein's
//! engine as the Kubernetes declarer, on every change (after a short debounce) and every
//! second (cgroups and network namespaces come and go without an API event).
//!
//! The limits live in the kernel, not in the agent. Started again, it applies nothing until
//! every watch has listed (an apply before would remove the limits of pods not known yet),
//! then adopts what the instance holds: the same declarations plan nothing, so no rule is
//! rewritten and no bucket reset; what no pod claims any more is removed.
pub mod events;
pub mod metrics;
pub mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    net::TcpListener,
    pin::pin,
    sync::Arc,
    thread,
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, Client, runtime::watcher};
use rein::{
    Engine, Instance,
    declarative::{self, Declared, Declarer, Mode, Resources},
    observe::metrics::Server,
};
use tokio::sync::Notify;

use self::{
    events::{LIMITED, LIMITED_BY_CNI, Notice, Publisher},
    metrics::{ApplyResult, LimitedPod, Metrics, PodState},
    watch::Watch,
};
use crate::{
    crd::{self, BandwidthPolicy, RateLimit},
    places::{PlacesOptions, PodPlaces, QosClass},
    pod_limits::{self, pod_ref},
    pods,
    world::{Declarations, NodePod, ObjectRef, PodPlace, Problem},
};

/// How the agent runs.
#[derive(Debug)]
pub struct Options {
    /// The node whose pods it limits.
    pub node: String,
    /// The rein instance it applies to.
    pub instance: Instance,
    /// Where the pods' cgroups are, a path from the cgroup v2 root: `/kubepods.slice` or
    /// `/kubepods`, whichever is there, when `None`.
    pub kubepods_root: Option<String>,
    /// Where `/metrics` is served; none when `None`.
    pub metrics: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Rein(#[from] rein::Error),
    #[error("cannot start the metrics thread: {0}")]
    Thread(std::io::Error),
    #[error("a watch ended before it listed")]
    Unlisted,
}

/// The reason of a problem that rein refused a pod's resource (its cgroup or namespace held by
/// a hand or by the files).
pub const CANNOT_LIMIT: &str = "CannotLimit";

/// How long a change waits for more before the agent reconciles: a rollout changes many
/// pods at once.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often the agent reconciles with no event: pods' cgroups and namespaces appear (the
/// API says a pod is there before its sandbox is), and what drifted is put right.
const TICK: Duration = Duration::from_secs(1);

/// How long an apply waits for a rein command that holds the instance.
const PATIENCE: Duration = Duration::from_secs(2);

/// Every watch of the agent. A kind is wired here and nowhere else: a field and its
/// [`Watch::start`] (the custom resources and Services cluster-wide, like the pods but without
/// the node's field selector), its wait in [`Watches::listed`] (no apply before every kind has
/// listed), its store copied in [`Watches::snapshot`], and its translation called in [`world`].
/// The custom resources' statuses are written after the apply in [`Agent::reconcile`], from the
/// problems of their objects, and their counts given to [`Metrics::set_custom_resources`].
struct Watches {
    pods: Watch<Pod>,
    rate_limits: Watch<RateLimit>,
    policies: Watch<BandwidthPolicy>,
    services: Watch<Service>,
}

impl Watches {
    fn start(client: &Client, node: &str, changed: &Arc<Notify>, metrics: &Arc<Metrics>) -> Self {
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        Self {
            pods: Watch::start(
                Api::all(client.clone()),
                on_node,
                "pods",
                false,
                Arc::clone(changed),
                Arc::clone(metrics),
            ),
            rate_limits: Watch::start(
                Api::all(client.clone()),
                watcher::Config::default(),
                "ratelimits",
                true,
                Arc::clone(changed),
                Arc::clone(metrics),
            ),
            policies: Watch::start(
                Api::all(client.clone()),
                watcher::Config::default(),
                "bandwidthpolicies",
                true,
                Arc::clone(changed),
                Arc::clone(metrics),
            ),
            services: Watch::start(
                Api::all(client.clone()),
                watcher::Config::default(),
                "services",
                false,
                Arc::clone(changed),
                Arc::clone(metrics),
            ),
        }
    }

    /// Whether every watch has listed.
    async fn listed(&self) -> bool {
        self.pods.listed().await
            && self.rate_limits.listed().await
            && self.policies.listed().await
            && self.services.listed().await
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pods: self.pods.store.state(),
            rate_limits: owned(self.rate_limits.store.state()),
            policies: owned(self.policies.store.state()),
            services: owned(self.services.store.state()),
        }
    }
}

fn owned<K: Clone>(items: Vec<Arc<K>>) -> Vec<K> {
    items.iter().map(|item| (**item).clone()).collect()
}

/// What the watches hold at one reconciliation.
#[derive(Clone)]
struct Snapshot {
    pods: Vec<Arc<Pod>>,
    rate_limits: Vec<RateLimit>,
    policies: Vec<BandwidthPolicy>,
    services: Vec<Service>,
}

/// What the node asks for, found from a [`Snapshot`] (reads the cgroup and proc trees).
struct World {
    pods: Vec<NodePod>,
    /// Pods that ask for a limit, with their state before the apply.
    asking: Vec<(ObjectRef, PodState)>,
    declarations: Declarations,
}

/// A pod as the agent finds it on the node; `None` for one that does not run (finished, or
/// without a UID yet).
fn node_pod(pod: &Pod, places: &PodPlaces) -> Option<(NodePod, Option<Problem>)> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut node_pod = NodePod {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        place: None,
    };
    let qos = status
        .and_then(|s| s.qos_class.as_deref())
        .and_then(QosClass::parse);
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let problem = match places.find(&pod_ref(&node_pod), qos, host_network) {
        Ok(place) => {
            node_pod.place = place;
            None
        }
        Err(problem) => Some(*problem),
    };
    Some((node_pod, problem))
}

/// Turns what the watches hold into declarations: the one place where a kind's translation
/// is wired.
fn world(snapshot: &Snapshot, places: &PodPlaces) -> World {
    let mut declarations = Declarations::default();
    let mut pods = Vec::new();
    let mut asking = Vec::new();
    for pod in &snapshot.pods {
        let Some((pod, place_problem)) = node_pod(pod, places) else {
            continue;
        };
        // Only a pod that asks for a limit is told about its place: the others' are nobody's
        // business.
        match pod_limits::pod_limits(&pod) {
            Ok(limits) if limits.is_empty() => {}
            Ok(_) => match place_problem {
                Some(problem) => {
                    asking.push((pod_ref(&pod), PodState::Invalid));
                    declarations.problems.push(problem);
                }
                None if pod.place.is_none() => asking.push((pod_ref(&pod), PodState::Waiting)),
                None => asking.push((pod_ref(&pod), PodState::Limited)),
            },
            // Told by `declare_pods`.
            Err(_) => asking.push((pod_ref(&pod), PodState::Invalid)),
        }
        pods.push(pod);
    }
    pods::declare_pods(&pods, &mut declarations);
    // The custom resources' translations follow the pods', on the same `pods` (a policy
    // selects among them).
    crd::declare_policies(&snapshot.policies, &pods, &mut declarations);
    crd::declare_rate_limits(
        &snapshot.rate_limits,
        &snapshot.services,
        &pods,
        &mut declarations,
    );
    World {
        pods,
        asking,
        declarations,
    }
}

/// What one apply did.
struct Applied {
    /// The resources in force (by name), after those rein refused were left out.
    in_force: Vec<String>,
    /// The pods rein's CNI plugin holds, and the problems of the declarations.
    declarations: Declarations,
    /// What changed, a line each.
    changes: Vec<String>,
    /// Why resources were left out.
    refused: Vec<Problem>,
}

/// Applies `world`'s declarations as the Kubernetes declarer, all-or-nothing. The pods
/// rein's CNI plugin limits are left to it. A resource rein refuses (`Error::InResource`) is
/// left out, reported as a problem of `owners[name]`, and the rest is applied again: one bad
/// pod must not keep the node's other pods unlimited.
fn apply(
    instance: &Instance,
    world: &World,
    owners: &HashMap<String, ObjectRef>,
) -> Result<Applied, rein::Error> {
    let mut engine = Engine::open_waiting(instance.clone(), PATIENCE)?;
    let mut declarations = world.declarations.clone();
    pods::yield_to_cni(&engine.state()?, &world.pods, &mut declarations)?;
    crd::bandwidth_policy::yield_shared_to_cni(&engine.state()?, &world.pods, &mut declarations)?;
    let mut resources = Resources {
        items: std::mem::take(&mut declarations.resources),
    };
    let mut refused = Vec::new();
    loop {
        match declarative::apply_as(&mut engine, &resources, Mode::Exact, Declarer::Kubernetes) {
            Ok(plan) => {
                declarations.resources = resources.items;
                return Ok(Applied {
                    in_force: declarations
                        .resources
                        .iter()
                        .map(|d| d.resource.name().to_string())
                        .collect(),
                    declarations,
                    changes: plan.changes().collect(),
                    refused,
                });
            }
            Err(error) => {
                let Some((kind, name)) = error.resource() else {
                    return Err(error);
                };
                let before = resources.items.len();
                resources.items.retain(|d: &Declared| {
                    !(d.resource.kind() == kind && d.resource.name().as_str() == name)
                });
                if resources.items.len() == before {
                    return Err(error);
                }
                tracing::debug!("leaving {kind} {name} out: {error}");
                match owners.get(name) {
                    Some(object) => refused.push(Problem {
                        object: object.clone(),
                        reason: CANNOT_LIMIT,
                        message: rein_cause(&error),
                    }),
                    // Every declared resource has its object in `owners`: a kind wired without
                    // is still said, here.
                    None => tracing::warn!("{error}"),
                }
            }
        }
    }
}

/// The cause of an error in a resource, without the resource's location and name (the Event
/// is on the object already).
fn rein_cause(error: &rein::Error) -> String {
    match error {
        rein::Error::InResource { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// The agent between reconciliations.
struct Agent {
    client: Client,
    instance: Instance,
    places: Arc<PodPlaces>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
}

impl Agent {
    async fn reconcile(&mut self, snapshot: Snapshot) {
        let (instance, places) = (self.instance.clone(), Arc::clone(&self.places));
        let custom = snapshot.clone();
        let started = std::time::Instant::now();
        // The engine is synchronous, reads the cgroup tree and holds the instance's lock.
        let outcome = tokio::task::spawn_blocking(move || {
            let world = world(&snapshot, &places);
            // The object of each resource, for the problem of one rein refuses.
            let owners: HashMap<String, ObjectRef> = world
                .pods
                .iter()
                .filter_map(|p| {
                    let name = pods::resource_name(&p.namespace, &p.name).ok()?;
                    Some((name.to_string(), pod_ref(p)))
                })
                .collect();
            let applied = apply(&instance, &world, &owners);
            (world, owners, applied)
        })
        .await;
        let (world, owners, applied) = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!("the reconciliation stopped: {error}");
                self.metrics.applied(ApplyResult::Failed);
                return;
            }
        };
        let applied = match applied {
            Ok(applied) => applied,
            Err(error) => {
                // Nothing was applied (rein's plans are all-or-nothing): the next tick tries
                // again. The problems of the pods are still told.
                tracing::error!("cannot apply the node's limits: {error}");
                self.metrics.applied(ApplyResult::Failed);
                let on_pods = pod_problems(&world.declarations.problems);
                self.publisher.more_problems(&on_pods, &self.metrics).await;
                return;
            }
        };
        for change in &applied.changes {
            tracing::info!("{change}");
        }
        tracing::debug!("reconciled in {:?}", started.elapsed());
        self.metrics.applied(if applied.changes.is_empty() {
            ApplyResult::Unchanged
        } else {
            ApplyResult::Changed
        });
        self.metrics.set_refused(applied.refused.len());
        let mut problems = applied.declarations.problems.clone();
        problems.extend(applied.refused.iter().cloned());
        self.tell(&problems).await;
        self.tell_limited(&world.pods, &applied.changes).await;
        self.count(&world, &owners, &applied, &problems);
        let writes = crd::write_statuses(
            &self.client,
            &custom.rate_limits,
            &custom.policies,
            &custom.services,
            &problems,
        )
        .await;
        for (object, error) in writes.failed {
            tracing::warn!(
                "status of {} {}/{}: {error}",
                object.kind,
                object.namespace,
                object.name
            );
        }
        for ((kind, reason), count) in
            crd::status::counts(&custom.rate_limits, &custom.policies, &problems)
        {
            self.metrics.set_custom_resources(kind, &reason, count);
        }
    }

    /// Events for the pods' problems.
    async fn tell(&mut self, problems: &[Problem]) {
        let on_pods = pod_problems(problems);
        self.publisher.problems(&on_pods, &self.metrics).await;
    }

    /// A `Limited` Event on each pod whose limit this apply set or changed, saying what.
    async fn tell_limited(&self, pods: &[NodePod], changes: &[String]) {
        for change in changes {
            let Some(pod) = pods.iter().find(|pod| sets_limit_of(change, pod)) else {
                continue;
            };
            let notice = Notice {
                object: pod_ref(pod),
                reason: LIMITED,
                message: change.clone(),
                warning: false,
            };
            self.publisher.once(&notice, &self.metrics).await;
        }
    }

    fn count(
        &self,
        world: &World,
        owners: &HashMap<String, ObjectRef>,
        applied: &Applied,
        problems: &[Problem],
    ) {
        let mut states: BTreeMap<&ObjectRef, PodState> = world
            .asking
            .iter()
            .map(|(object, state)| (object, *state))
            .collect();
        for problem in problems {
            let state = if problem.reason == LIMITED_BY_CNI {
                PodState::Cni
            } else {
                PodState::Invalid
            };
            if let Some(entry) = states.get_mut(&problem.object) {
                *entry = state;
            }
        }
        let limited: BTreeMap<String, LimitedPod> = applied
            .in_force
            .iter()
            .filter_map(|name| {
                let object = owners.get(name)?;
                (states.get(object) == Some(&PodState::Limited)).then(|| {
                    (
                        name.clone(),
                        LimitedPod {
                            namespace: object.namespace.clone(),
                            pod: object.name.clone(),
                        },
                    )
                })
            })
            .collect();
        self.metrics.set_pods(states.into_values(), limited);
    }
}

/// The problems of pods: the custom resources' go to their status instead.
fn pod_problems(problems: &[Problem]) -> Vec<Problem> {
    problems
        .iter()
        .filter(|p| p.object.kind == "Pod")
        .cloned()
        .collect()
}

/// Whether a line of a plan sets or changes the limit of `pod`'s place ("limit cgroup /x, ...",
/// "change network namespace /proc/1/ns/net, ...").
fn sets_limit_of(change: &str, pod: &NodePod) -> bool {
    let target = match &pod.place {
        Some(PodPlace::Netns(path)) => format!("network namespace {}", path.display()),
        Some(PodPlace::Cgroup(path)) => format!("cgroup /{}", path.trim_start_matches('/')),
        None => return false,
    };
    ["limit ", "change "].iter().any(|verb| {
        change
            .strip_prefix(verb)
            .and_then(|rest| rest.strip_prefix(target.as_str()))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(','))
    })
}

/// Runs the agent until `stop` completes.
pub async fn run(
    client: Client,
    options: Options,
    stop: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::default());
    let places = PodPlaces::new(PlacesOptions {
        kubepods: options.kubepods_root.clone(),
        v1_kubepods: None,
    })?;
    let server = match options.metrics {
        Some(listener) => Some(serve_metrics(listener, &options.instance, &metrics)?),
        None => None,
    };
    let changed = Arc::new(Notify::new());
    let watches = Watches::start(&client, &options.node, &changed, &metrics);
    let mut agent = Agent {
        client: client.clone(),
        instance: options.instance,
        places: Arc::new(places),
        publisher: Publisher::new(client, &options.node),
        metrics,
    };
    let mut stop = pin!(stop);
    let outcome = async {
        tokio::select! {
            listed = watches.listed() => if !listed {
                return Err(AgentError::Unlisted);
            },
            () = &mut stop => return Ok(()),
        }
        tracing::info!("every watch has listed: reconciling the node");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            agent.reconcile(watches.snapshot()).await;
            tokio::select! {
                () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = tick.tick() => {}
                () = &mut stop => return Ok(()),
            }
        }
    }
    .await;
    if let Some((server, thread)) = server {
        server.stop();
        let _ = thread.join();
    }
    tracing::info!("stopping; the limits stay in force");
    outcome
}

fn serve_metrics(
    listener: TcpListener,
    instance: &Instance,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Server>, thread::JoinHandle<()>), AgentError> {
    let (for_scrape, scraped) = (Arc::clone(metrics), instance.clone());
    let server = Arc::new(
        Server::from_listener(listener, instance.clone())?.with_extra(move |registry| {
            let status = metrics::read_status(&scraped);
            for_scrape.register(registry, status.as_ref());
        }),
    );
    if let Some(addr) = server.local_addr() {
        tracing::info!("serving metrics on http://{addr}/metrics");
    }
    let serving = Arc::clone(&server);
    let thread = thread::Builder::new()
        .name("rein-kube-metrics".into())
        .spawn(move || serving.run())
        .map_err(AgentError::Thread)?;
    Ok((server, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(place: Option<PodPlace>) -> NodePod {
        NodePod {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            place,
        }
    }

    #[test]
    fn a_plan_line_is_matched_to_the_pod_whose_place_it_limits() {
        let netns = pod(Some(PodPlace::Netns("/proc/42/ns/net".into())));
        assert!(sets_limit_of(
            "limit network namespace /proc/42/ns/net, egress 10mbit burst 64k",
            &netns
        ));
        assert!(sets_limit_of(
            "change network namespace /proc/42/ns/net, ingress 1mbit burst 64k",
            &netns
        ));
        assert!(!sets_limit_of(
            "limit network namespace /proc/421/ns/net, egress 10mbit burst 64k",
            &netns
        ));
        assert!(!sets_limit_of(
            "remove the limit of network namespace /proc/42/ns/net",
            &netns
        ));
        let host = pod(Some(PodPlace::Cgroup("/kubepods/besteffort/podu".into())));
        assert!(sets_limit_of(
            "limit cgroup /kubepods/besteffort/podu, egress 1mbit burst 64k",
            &host
        ));
        assert!(!sets_limit_of(
            "limit cgroup /kubepods/besteffort/podu2, egress 1mbit burst 64k",
            &host
        ));
        assert!(!sets_limit_of("limit cgroup /x, egress 1mbit", &pod(None)));
    }
}
