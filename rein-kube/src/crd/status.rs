//! The status of the custom resources: the `Accepted` condition, the generation it is about,
//! and (for a `RateLimit`) how many destinations it limits. Every node's agent computes it from
//! what every node sees alike (the resource and the Services, never its own pods), and writes
//! it only when it differs from what is there, so the agents of a cluster converge on one
//! status with one write each at most, and never flap.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{BandwidthPolicy, RateLimit, object_ref, rate_limit, reasons};
use crate::world::{ObjectRef, Problem};

/// The one condition type: whether the agents took the resource as it is.
pub const ACCEPTED: &str = "Accepted";

/// The field manager of the agents' status writes.
pub const FIELD_MANAGER: &str = "rein-kube";

/// What a resource's status should say, times left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: accepted; otherwise the reason and message of the refusal.
    pub refused: Option<(String, String)>,
    pub observed_generation: Option<i64>,
    /// A `RateLimit`'s count of destinations (cluster IPs times ports).
    pub destinations: Option<u32>,
}

impl Verdict {
    fn new(object: &ObjectRef, generation: Option<i64>, problems: &[Problem]) -> Self {
        let refused = problems
            .iter()
            .find(|p| &p.object == object && reasons::ALL.contains(&p.reason))
            .map(|p| (p.reason.to_owned(), p.message.clone()));
        Self {
            refused,
            observed_generation: generation,
            destinations: None,
        }
    }

    /// The `Accepted` condition, keeping the transition time of `current` when its status is
    /// the same (the time it last changed, as Kubernetes conditions keep it).
    pub fn condition(&self, current: &[Condition], now: &Time) -> Condition {
        let (status, reason, message) = match &self.refused {
            None => (
                "True",
                ACCEPTED.to_owned(),
                "applied on every node".to_owned(),
            ),
            Some((reason, message)) => ("False", reason.clone(), message.clone()),
        };
        let since = current
            .iter()
            .find(|c| c.type_ == ACCEPTED && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: ACCEPTED.to_owned(),
            status: status.to_owned(),
            reason,
            message,
            observed_generation: self.observed_generation,
            last_transition_time: since,
        }
    }

    /// Whether a status with these conditions, generation and count says what this verdict
    /// says (transition times aside: two agents that write one verdict a moment apart agree).
    pub fn holds_in(
        &self,
        conditions: &[Condition],
        observed_generation: Option<i64>,
        destinations: Option<u32>,
    ) -> bool {
        let wanted = self.condition(&[], &Time(Timestamp::UNIX_EPOCH));
        let [current] = conditions else {
            return false;
        };
        current.type_ == wanted.type_
            && current.status == wanted.status
            && current.reason == wanted.reason
            && current.message == wanted.message
            && current.observed_generation == wanted.observed_generation
            && observed_generation == self.observed_generation
            && destinations == self.destinations
    }

    /// The merge patch of the status subresource: every field named, `null` for none, so
    /// a count that went away is removed rather than kept.
    fn patch(
        &self,
        current: &[Condition],
        now: &Time,
        with_destinations: bool,
    ) -> serde_json::Value {
        let mut status = json!({
            "observedGeneration": self.observed_generation,
            "conditions": [self.condition(current, now)],
        });
        if with_destinations && let Some(fields) = status.as_object_mut() {
            fields.insert("destinations".into(), json!(self.destinations));
        }
        json!({ "status": status })
    }
}

/// What each `RateLimit` should say: refused with its problem, or accepted with the count of
/// its destinations.
pub fn rate_limit_verdicts<'a>(
    rate_limits: &'a [RateLimit],
    services: &[Service],
    problems: &[Problem],
) -> Vec<(&'a RateLimit, Verdict)> {
    rate_limits
        .iter()
        .map(|limit| {
            let object = object_ref("RateLimit", limit);
            let mut verdict = Verdict::new(&object, limit.metadata.generation, problems);
            if verdict.refused.is_none() {
                verdict.destinations = rate_limit::resolve(limit, services)
                    .ok()
                    .map(|targets| u32::try_from(targets.len()).unwrap_or(u32::MAX));
            }
            (limit, verdict)
        })
        .collect()
}

/// What each `BandwidthPolicy` should say.
pub fn policy_verdicts<'a>(
    policies: &'a [BandwidthPolicy],
    problems: &[Problem],
) -> Vec<(&'a BandwidthPolicy, Verdict)> {
    policies
        .iter()
        .map(|policy| {
            let object = object_ref("BandwidthPolicy", policy);
            (
                policy,
                Verdict::new(&object, policy.metadata.generation, problems),
            )
        })
        .collect()
}

/// The custom resources by kind and condition reason (`Accepted`, or why not), for the
/// agent's metrics.
pub fn counts(
    rate_limits: &[RateLimit],
    policies: &[BandwidthPolicy],
    problems: &[Problem],
) -> BTreeMap<(&'static str, String), usize> {
    let mut counts = BTreeMap::new();
    let reason = |verdict: &Verdict| {
        verdict
            .refused
            .as_ref()
            .map_or_else(|| ACCEPTED.to_owned(), |(reason, _)| reason.clone())
    };
    for (_, verdict) in rate_limit_verdicts(rate_limits, &[], problems) {
        *counts.entry(("RateLimit", reason(&verdict))).or_default() += 1;
    }
    for (_, verdict) in policy_verdicts(policies, problems) {
        *counts
            .entry(("BandwidthPolicy", reason(&verdict)))
            .or_default() += 1;
    }
    counts
}

/// What [`write_statuses`] did.
#[derive(Debug, Default)]
pub struct StatusWrites {
    /// Statuses patched.
    pub written: usize,
    /// Statuses that could not be (the next reconcile tries again): the object and why.
    pub failed: Vec<(ObjectRef, kube::Error)>,
}

/// Patches the status of every custom resource whose status says something else than what
/// `problems` (the declarations' problems) and `services` make of it. Resources deleted
/// meanwhile are skipped.
pub async fn write_statuses(
    client: &Client,
    rate_limits: &[RateLimit],
    policies: &[BandwidthPolicy],
    services: &[Service],
    problems: &[Problem],
) -> StatusWrites {
    let now = Time(Timestamp::now());
    let mut writes = StatusWrites::default();
    for (limit, verdict) in rate_limit_verdicts(rate_limits, services, problems) {
        let status = limit.status.clone().unwrap_or_default();
        if verdict.holds_in(
            &status.conditions,
            status.observed_generation,
            status.destinations,
        ) {
            continue;
        }
        let patch = verdict.patch(&status.conditions, &now, true);
        let api: Api<RateLimit> =
            Api::namespaced(client.clone(), &limit.namespace().unwrap_or_default());
        record(
            &mut writes,
            object_ref("RateLimit", limit),
            api.patch_status(&limit.name_any(), &params(), &Patch::Merge(&patch))
                .await
                .map(drop),
        );
    }
    for (policy, verdict) in policy_verdicts(policies, problems) {
        let status = policy.status.clone().unwrap_or_default();
        if verdict.holds_in(&status.conditions, status.observed_generation, None) {
            continue;
        }
        let patch = verdict.patch(&status.conditions, &now, false);
        let api: Api<BandwidthPolicy> =
            Api::namespaced(client.clone(), &policy.namespace().unwrap_or_default());
        record(
            &mut writes,
            object_ref("BandwidthPolicy", policy),
            api.patch_status(&policy.name_any(), &params(), &Patch::Merge(&patch))
                .await
                .map(drop),
        );
    }
    writes
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn record(writes: &mut StatusWrites, object: ObjectRef, result: Result<(), kube::Error>) {
    match result {
        Ok(()) => writes.written += 1,
        // Deleted since it was seen: nothing to say about it.
        Err(kube::Error::Api(status)) if status.code == 404 || status.is_not_found() => {}
        Err(error) => writes.failed.push((object, error)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::Value;

    use super::*;

    /// A request the API server got: method, path and query, content type, body.
    #[derive(Debug)]
    struct Seen {
        method: String,
        uri: String,
        content_type: String,
        body: Value,
    }

    /// A client over a mocked API server that answers every request with `status` (and the
    /// object itself as the body for a 200), and what it was asked.
    fn api_server(
        status: StatusCode,
    ) -> (Client, Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default(),
                    body: body.clone(),
                });
                let answer = if status == StatusCode::OK {
                    // The object as it is after the patch is all kube reads back; its kind
                    // is in the path.
                    let kind = if parts.uri.path().contains("/ratelimits/") {
                        "RateLimit"
                    } else {
                        "BandwidthPolicy"
                    };
                    json!({
                        "apiVersion": "rein.dev/v1alpha1",
                        "kind": kind,
                        "metadata": {"name": "x", "namespace": "shop"},
                        "spec": if kind == "RateLimit" {
                            json!({"service": {"name": "api"}})
                        } else {
                            json!({"podSelector": {}})
                        },
                        "status": body["status"],
                    })
                } else {
                    json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": "refused",
                        "reason": status.canonical_reason().unwrap_or_default().replace(' ', ""),
                        "code": status.as_u16()
                    })
                };
                let response = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), seen, server)
    }

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.14.7", "clusterIPs": ["10.96.14.7", "fd00::e07"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn rate_limit(status: Option<Value>) -> RateLimit {
        let mut object = json!({
            "apiVersion": "rein.dev/v1alpha1",
            "kind": "RateLimit",
            "metadata": {"name": "api-connects", "namespace": "shop", "uid": "u1",
                         "generation": 3},
            "spec": {"service": {"name": "api"}, "rate": "100/s"}
        });
        if let Some(status) = status {
            object["status"] = status;
        }
        serde_json::from_value(object).unwrap()
    }

    fn policy(status: Option<Value>) -> BandwidthPolicy {
        let mut object = json!({
            "apiVersion": "rein.dev/v1alpha1",
            "kind": "BandwidthPolicy",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u2", "generation": 1},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "egress": {"rate": "10M"}}
        });
        if let Some(status) = status {
            object["status"] = status;
        }
        serde_json::from_value(object).unwrap()
    }

    async fn write(
        status: StatusCode,
        limits: &[RateLimit],
        policies: &[BandwidthPolicy],
        problems: &[Problem],
    ) -> (StatusWrites, Vec<Seen>) {
        let (client, seen, server) = api_server(status);
        let writes = write_statuses(&client, limits, policies, &[service()], problems).await;
        drop(client);
        server.await.unwrap();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        (writes, seen)
    }

    #[tokio::test]
    async fn a_new_resource_gets_its_status_and_then_is_left_alone() {
        let (writes, seen) = write(StatusCode::OK, &[rate_limit(None)], &[policy(None)], &[]).await;
        assert_eq!((writes.written, writes.failed.len()), (2, 0));
        let [limit, policy_patch] = seen.as_slice() else {
            panic!("{seen:?}");
        };
        assert_eq!(limit.method, "PATCH");
        assert!(
            limit.uri.starts_with(
                "/apis/rein.dev/v1alpha1/namespaces/shop/ratelimits/api-connects/status?"
            ),
            "{}",
            limit.uri
        );
        assert!(
            limit.uri.contains("fieldManager=rein-kube"),
            "{}",
            limit.uri
        );
        assert_eq!(limit.content_type, "application/merge-patch+json");
        let status = &limit.body["status"];
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["destinations"], 2);
        let condition = &status["conditions"][0];
        assert_eq!(
            (
                &condition["type"],
                &condition["status"],
                &condition["reason"]
            ),
            (&json!("Accepted"), &json!("True"), &json!("Accepted"))
        );
        assert_eq!(condition["observedGeneration"], 3);
        assert!(
            policy_patch.uri.starts_with(
                "/apis/rein.dev/v1alpha1/namespaces/shop/bandwidthpolicies/web/status?"
            ),
            "{}",
            policy_patch.uri
        );
        assert!(policy_patch.body["status"].get("destinations").is_none());

        // Another node wrote the same a moment earlier (its own transition time): nothing to
        // write, whoever wrote first.
        let mut written = status.clone();
        written["conditions"][0]["lastTransitionTime"] = json!("2026-11-26T18:00:00Z");
        let mut written_policy = policy_patch.body["status"].clone();
        written_policy["conditions"][0]["lastTransitionTime"] = json!("2026-11-26T18:00:01Z");
        let (writes, seen) = write(
            StatusCode::OK,
            &[rate_limit(Some(written))],
            &[policy(Some(written_policy))],
            &[],
        )
        .await;
        assert_eq!(writes.written, 0);
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[tokio::test]
    async fn a_problem_turns_the_condition_false_and_clears_the_count() {
        let accepted = json!({
            "observedGeneration": 3,
            "destinations": 2,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "applied on every node", "observedGeneration": 3,
                            "lastTransitionTime": "2026-11-26T18:00:00Z"}]
        });
        let problem = Problem {
            object: ObjectRef {
                kind: "RateLimit",
                namespace: "shop".into(),
                name: "api-connects".into(),
                uid: "u1".into(),
            },
            reason: "NoClusterIP",
            message: "Service shop/api is headless".into(),
        };
        let (writes, seen) = write(
            StatusCode::OK,
            &[rate_limit(Some(accepted.clone()))],
            &[],
            std::slice::from_ref(&problem),
        )
        .await;
        assert_eq!(writes.written, 1);
        let [patch] = seen.as_slice() else {
            panic!("{seen:?}");
        };
        let status = &patch.body["status"];
        // Named, so the merge removes it.
        assert_eq!(status.get("destinations"), Some(&Value::Null));
        let condition = &status["conditions"][0];
        assert_eq!(
            (
                &condition["status"],
                &condition["reason"],
                &condition["message"]
            ),
            (
                &json!("False"),
                &json!("NoClusterIP"),
                &json!("Service shop/api is headless")
            )
        );
        assert_ne!(condition["lastTransitionTime"], "2026-11-26T18:00:00Z");

        // A new generation alone is a write too, and keeps the time of the last transition.
        let (_, seen) = write(
            StatusCode::OK,
            &[rate_limit(Some(json!({
                "observedGeneration": 2,
                "destinations": 2,
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "applied on every node", "observedGeneration": 2,
                                "lastTransitionTime": "2026-11-26T18:00:00Z"}]
            })))],
            &[],
            &[],
        )
        .await;
        let [patch] = seen.as_slice() else {
            panic!("{seen:?}");
        };
        assert_eq!(patch.body["status"]["observedGeneration"], 3);
        assert_eq!(
            patch.body["status"]["conditions"][0]["lastTransitionTime"],
            "2026-11-26T18:00:00Z"
        );
    }

    #[tokio::test]
    async fn a_deleted_resource_is_skipped_and_a_refusal_is_reported() {
        let (writes, seen) = write(StatusCode::NOT_FOUND, &[rate_limit(None)], &[], &[]).await;
        assert_eq!(
            (seen.len(), writes.written, writes.failed.len()),
            (1, 0, 0),
            "{:?}",
            writes.failed
        );
        let (writes, _) = write(StatusCode::FORBIDDEN, &[rate_limit(None)], &[], &[]).await;
        assert_eq!(writes.written, 0);
        let [(object, _)] = writes.failed.as_slice() else {
            panic!("{:?}", writes.failed);
        };
        assert_eq!(object.name, "api-connects");
    }

    #[tokio::test]
    async fn what_one_node_alone_sees_is_no_condition() {
        // An apply this node refused (a hand-made rule in the way, say) is this node's: the
        // other nodes would write Accepted back, and the two would flap.
        let refused_here = Problem {
            object: object_ref("RateLimit", &rate_limit(None)),
            reason: "ApplyRefused",
            message: "conn rule 7 holds the destination".into(),
        };
        let (_, seen) = write(StatusCode::OK, &[rate_limit(None)], &[], &[refused_here]).await;
        let [patch] = seen.as_slice() else {
            panic!("{seen:?}");
        };
        assert_eq!(patch.body["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn counts_by_kind_and_reason() {
        let problem = Problem {
            object: object_ref("RateLimit", &rate_limit(None)),
            reason: "ServiceNotFound",
            message: String::new(),
        };
        let mut other = rate_limit(None);
        other.metadata.uid = Some("u3".into());
        let counts = counts(&[rate_limit(None), other], &[policy(None)], &[problem]);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                (("BandwidthPolicy", "Accepted".to_owned()), 1),
                (("RateLimit", "Accepted".to_owned()), 1),
                (("RateLimit", "ServiceNotFound".to_owned()), 1),
            ]
        );
    }
}
