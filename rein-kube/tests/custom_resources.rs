//! The custom resources through the agent: the test's API server serves pods, Services,
//! BandwidthPolicies and RateLimits with the payloads an API server sends, and the agent runs
//! against it on a node made by the test (a kubepods tree with pods in network namespaces of
//! their own, sending real iperf3 traffic). A Shared BandwidthPolicy holds two pods' sum at its
//! rate while each alone gets all of it; deleting it frees them; its status is Accepted; an
//! invalid one is refused in its status and changes nothing; every request the agent makes is
//! one its ClusterRole grants. Needs root, a bpffs at /sys/fs/bpf, cgroup v2 and iperf3.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    api::{self, Api, PODS, POLICIES, PodSpec, WATCHED},
    node::{Driver, Node, RunningAgent, TestPod},
};
use rein_testkit::{
    iperf::{self, ClientOptions, PORT, Server, assert_near, measured},
    process::{Cmd, Running, one_at_a_time, wait_until},
};
use serde_json::{Value, json};

const NODE: &str = "node-a";

fn uid() -> String {
    let suffix = rein_testkit::netns::unique_suffix();
    format!("7a1c2a4e-7b1d-4c9a-9e39-2f6a{suffix:0>8}")
}

fn eventually(what: &str, done: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(5), done), "never: {what}");
}

fn pod_json(name: &str, pod: &TestPod) -> Value {
    api::pod(&PodSpec {
        namespace: "batch",
        name,
        uid: &pod.uid,
        node: NODE,
        qos: "BestEffort",
        host_network: false,
        annotations: &[],
        labels: &[("app", "crunch")],
    })
}

fn policy(name: &str, spec: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "batch", "uid": format!("uid-{name}"),
                     "generation": 1, "resourceVersion": "1",
                     "creationTimestamp": "2026-11-26T19:00:00Z"},
        "spec": spec
    })
}

fn upload(pod: &TestPod) -> Running {
    let pair = pod.pair();
    let options = ClientOptions {
        seconds: 4,
        omit: 1,
        ..ClientOptions::default()
    };
    let argv = pair
        .client()
        .exec(&iperf::client_argv(&pair.link.server_addr, PORT, &options));
    Cmd::new(argv, Duration::from_secs(30)).spawn().unwrap()
}

/// The last status the agent wrote for `name` of `plural`.
fn status_of(api: &Api, plural: &str, name: &str) -> Option<Value> {
    let suffix = format!("/{plural}/{name}/status");
    api.status_patches()
        .into_iter()
        .rev()
        .find(|(path, _)| path.ends_with(&suffix))
        .map(|(_, patch)| patch["status"].clone())
}

fn shared(node: &Node) -> Vec<Value> {
    node.list()["shared"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_shared_policy_through_the_agent_holds_two_pods_sum_and_goes_with_the_policy() {
    let _traffic = one_at_a_time();
    let node = Node::new(Driver::Systemd);
    let (one, two) = (
        TestPod::in_netns(&node, "BestEffort", &uid()),
        TestPod::in_netns(&node, "BestEffort", &uid()),
    );
    let _servers: Vec<Server> = [&one, &two]
        .iter()
        .map(|pod| {
            let pair = pod.pair();
            Server::start(
                pair.server(),
                &pair.link.server_addr,
                PORT,
                Duration::from_secs(90),
            )
            .unwrap()
        })
        .collect();
    let api = Api::new(WATCHED);
    api.add(&PODS, pod_json("crunch-0", &one));
    api.add(&PODS, pod_json("crunch-1", &two));
    api.add(
        &POLICIES,
        policy(
            "crunch",
            json!({"podSelector": {"matchLabels": {"app": "crunch"}},
                   "egress": {"rate": "20M"}, "mode": "Shared"}),
        ),
    );
    let agent = RunningAgent::start(&api, &node, NODE);
    eventually("one shared limit over the two pods", || {
        shared(&node)
            .first()
            .is_some_and(|g| g["members"].as_array().is_some_and(|m| m.len() == 2))
    });
    let group = shared(&node)[0].clone();
    assert_eq!(group["name"], "policy.batch.crunch", "{group:#}");
    eventually("the policy's status", || {
        status_of(&api, "bandwidthpolicies", "crunch").is_some()
    });
    let status = status_of(&api, "bandwidthpolicies", "crunch").unwrap();
    assert_eq!(status["conditions"][0]["type"], "Accepted", "{status:#}");
    assert_eq!(status["conditions"][0]["status"], "True", "{status:#}");
    assert_eq!(status["observedGeneration"], 1, "{status:#}");

    let (a, b) = (upload(&one), upload(&two));
    let both = [measured(a), measured(b)];
    let sum: f64 = both.iter().map(|m| m.received_bps).sum();
    assert_near("two pods together", sum, 20e6, 0.80..=1.03);
    let alone = measured(upload(&one));
    assert_near("one pod alone", alone.received_bps, 20e6, 0.85..=1.03);

    // An invalid policy selecting the same pods: refused in its status, nothing changes.
    api.add(
        &POLICIES,
        policy(
            "typo",
            json!({"podSelector": {}, "egress": {"rate": "20Mbps"}}),
        ),
    );
    eventually("the invalid policy's status", || {
        status_of(&api, "bandwidthpolicies", "typo").is_some()
    });
    let status = status_of(&api, "bandwidthpolicies", "typo").unwrap();
    let condition = &status["conditions"][0];
    assert_eq!(
        (&condition["status"], &condition["reason"]),
        (&json!("False"), &json!("Invalid")),
        "{status:#}"
    );
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("egress.rate"),
        "{status:#}"
    );
    assert_eq!(shared(&node)[0]["group"], group["group"]);
    // With the statuses in place the agent writes them no more: a patch a second from every
    // node would be a flap.
    let patches = |name: &str| {
        let suffix = format!("/bandwidthpolicies/{name}/status");
        api.status_patches()
            .iter()
            .filter(|(path, _)| path.ends_with(&suffix))
            .count()
    };
    let written = (patches("crunch"), patches("typo"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (patches("crunch"), patches("typo")),
        written,
        "the statuses were written again"
    );

    // The policy deleted: the pods are free and nothing of it is left.
    api.delete(&POLICIES, "batch", "crunch");
    eventually("the shared limit goes with the policy", || {
        shared(&node).is_empty()
    });
    let free = measured(upload(&two));
    assert!(
        free.received_bps > 4.0 * 20e6,
        "a pod of a deleted policy is still limited: {:.1} Mbit/s",
        free.received_bps / 1e6
    );
    let list = node.list();
    assert_eq!(list["netns"], json!([]), "{list:#}");

    // Every request the agent made is one deploy/rbac.yaml grants: list and watch of the four
    // kinds, status patches of the custom resources (and Events, which none needed here).
    for request in api.requests() {
        let (method, uri) = request.split_once(' ').unwrap();
        let path = uri.split('?').next().unwrap();
        let granted = match method {
            "GET" => WATCHED.iter().any(|kind| kind.path == path),
            "PATCH" => {
                path.starts_with("/apis/rein.dev/v1alpha1/namespaces/")
                    && (path.contains("/bandwidthpolicies/") || path.contains("/ratelimits/"))
                    && path.ends_with("/status")
                    || path.starts_with("/apis/events.k8s.io/v1/namespaces/")
            }
            "POST" => path.starts_with("/apis/events.k8s.io/v1/namespaces/"),
            _ => false,
        };
        assert!(granted, "the agent's ClusterRole does not grant {request}");
    }
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
    agent.stop();
}
