//! Events on pods (problems of custom resources go to their status instead): why a pod's limit is not applied, who holds it, and what was applied.
//!
//! A problem is published once while it lasts, keyed by the pod's UID, the reason and the
//! message: a reconciliation every second must not post an Event every second. One that
//! went and comes back is published again.
use std::collections::HashSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::metrics::Metrics;
use crate::world::{ObjectRef, Problem};

/// The reporting controller of the agent's Events.
pub const CONTROLLER: &str = "rein.dev/node-agent";

/// The reason of an Event saying a pod's limit is applied or changed.
pub const LIMITED: &str = "Limited";

/// The reason of a problem that rein's CNI plugin holds the pod's limit (not an error).
pub const LIMITED_BY_CNI: &str = "LimitedByCni";

/// What the agent says about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Notice {
    pub object: ObjectRef,
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

impl Notice {
    /// A pod's problem: a warning, except the CNI plugin's ownership, which is how a node
    /// with rein-cni works.
    pub fn of_problem(problem: &Problem) -> Self {
        Self {
            object: problem.object.clone(),
            reason: problem.reason,
            message: problem.message.clone(),
            warning: problem.reason != LIMITED_BY_CNI,
        }
    }
}

pub struct Publisher {
    client: Client,
    reporter: Reporter,
    /// The problems published and still there.
    lasting: HashSet<Notice>,
}

impl Publisher {
    /// Events reported by [`CONTROLLER`] on `node`.
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: Some(node.to_owned()),
        };
        Self {
            client,
            reporter,
            lasting: HashSet::new(),
        }
    }

    /// Publishes the problems not published yet, and forgets those gone.
    pub async fn problems(&mut self, problems: &[Problem], metrics: &Metrics) {
        let now: HashSet<Notice> = problems.iter().map(Notice::of_problem).collect();
        self.lasting.retain(|notice| now.contains(notice));
        self.publish_new(now, metrics).await;
    }

    /// Publishes the problems not published yet, forgetting none: when the apply failed, the
    /// problems it would have found are not known, and those told must not be told again.
    pub async fn more_problems(&mut self, problems: &[Problem], metrics: &Metrics) {
        let now: HashSet<Notice> = problems.iter().map(Notice::of_problem).collect();
        self.publish_new(now, metrics).await;
    }

    async fn publish_new(&mut self, now: HashSet<Notice>, metrics: &Metrics) {
        for notice in now {
            if self.lasting.contains(&notice) {
                continue;
            }
            if self.publish(&notice, metrics).await {
                self.lasting.insert(notice);
            }
        }
    }

    /// Publishes a one-off notice (a limit applied or changed).
    pub async fn once(&self, notice: &Notice, metrics: &Metrics) {
        self.publish(notice, metrics).await;
    }

    /// Whether the Event was posted; one that was not is tried again on the next
    /// reconciliation.
    async fn publish(&self, notice: &Notice, metrics: &Metrics) -> bool {
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.to_owned(),
            note: Some(notice.message.clone()),
            action: "Limit".into(),
            secondary: None,
        };
        let object = &notice.object;
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(object.kind.into()),
            name: Some(object.name.clone()),
            namespace: Some(object.namespace.clone()),
            uid: Some(object.uid.clone()),
            ..ObjectReference::default()
        };
        // A recorder of its own: kube's folds Events of the same object and reason into a
        // series that keeps the first one's message, and a changed limit or a new problem
        // must say what it is now. Repeats are the publisher's to avoid.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &reference).await {
            Ok(()) => {
                tracing::info!(
                    "{} {}/{}: {}: {}",
                    object.kind,
                    object.namespace,
                    object.name,
                    notice.reason,
                    notice.message
                );
                metrics.event_published(true);
                true
            }
            Err(error) => {
                tracing::warn!(
                    "cannot publish the Event {} on {} {}/{}: {error}",
                    notice.reason,
                    object.kind,
                    object.namespace,
                    object.name
                );
                metrics.event_published(false);
                false
            }
        }
    }
}
