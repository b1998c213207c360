//! BandwidthPolicies end to end on a node: the agent's translation of a policy applied through
//! rein's library as the Kubernetes declarer, with two pods (each a network namespace of its
//! own) sending real iperf3 traffic. A `Shared` policy holds the two pods' sum at its rate while
//! each alone gets all of it; a `PerPod` policy gives each its own; a policy removed frees the
//! pods. Needs root, a bpffs at /sys/fs/bpf, cgroup v2 and iperf3.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use common::node::{apply_declared, rein_binary};
use rein_kube::{
    crd::{BandwidthPolicy, declare_policies},
    world::{Declarations, NodePod, PodPlace},
};
use rein_testkit::{
    iperf::{self, ClientOptions, PORT, Server, assert_near, measured},
    netns::HostPair,
    process::{Cmd, Running, one_at_a_time},
    rein_instance::ReinInstance,
};
use serde_json::{Value, json};

/// A pod of the test: its network namespace (the pair's client) and a peer to send to.
struct Pod {
    pair: HostPair,
    _server: Server,
}

impl Pod {
    fn new() -> Self {
        let pair = HostPair::create("rkp").unwrap();
        let server = Server::start(
            pair.server(),
            &pair.link.server_addr,
            PORT,
            Duration::from_secs(90),
        )
        .unwrap();
        Self {
            pair,
            _server: server,
        }
    }

    /// The pod as the agent finds it on the node.
    fn node_pod(&self, name: &str) -> NodePod {
        NodePod {
            namespace: "batch".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: BTreeMap::from([("app".into(), "crunch".into())]),
            annotations: BTreeMap::new(),
            place: Some(PodPlace::Netns(PathBuf::from(self.pair.client().path()))),
        }
    }

    /// An upload from the pod to its peer, started now.
    fn upload(&self) -> Running {
        let options = ClientOptions {
            seconds: 4,
            omit: 1,
            ..ClientOptions::default()
        };
        let argv = self.pair.client().exec(&iperf::client_argv(
            &self.pair.link.server_addr,
            PORT,
            &options,
        ));
        Cmd::new(argv, Duration::from_secs(30)).spawn().unwrap()
    }
}

fn policy(mode: &str, rate: &str) -> BandwidthPolicy {
    serde_json::from_value(json!({
        "apiVersion": "rein.dev/v1alpha1",
        "kind": "BandwidthPolicy",
        "metadata": {"name": "crunch", "namespace": "batch", "uid": "uid-policy",
                     "generation": 1, "creationTimestamp": "2026-11-26T19:00:00Z"},
        "spec": {"podSelector": {"matchLabels": {"app": "crunch"}},
                 "egress": {"rate": rate}, "mode": mode}
    }))
    .unwrap()
}

/// What the agent does on a reconcile: the policies' declarations for the node's pods, applied
/// as the Kubernetes declarer's whole (Exact).
fn reconcile(rein: &ReinInstance, policies: &[BandwidthPolicy], pods: &[NodePod]) {
    let mut out = Declarations::default();
    declare_policies(policies, pods, &mut out);
    apply_declared(rein, out);
}

fn list(rein: &ReinInstance) -> Value {
    serde_json::from_str(rein.rein(&["list", "--json"]).ok()).unwrap()
}

/// A Shared policy over two pods: their uploads together hold at its rate, one alone gets all
/// of it; the policy removed, neither is limited and nothing of it is left.
#[test]
fn a_shared_policy_holds_two_pods_sum_at_its_rate() {
    let _traffic = one_at_a_time();
    let rein = ReinInstance::for_test(rein_binary().to_str().unwrap());
    let (one, two) = (Pod::new(), Pod::new());
    let pods = [one.node_pod("crunch-0"), two.node_pod("crunch-1")];
    let shared = policy("Shared", "20M");
    reconcile(&rein, std::slice::from_ref(&shared), &pods);
    let groups = list(&rein)["shared"].clone();
    let [group] = groups.as_array().unwrap().as_slice() else {
        panic!("{groups}");
    };
    assert_eq!(group["name"], "policy.batch.crunch", "{group}");
    assert_eq!(group["members"].as_array().unwrap().len(), 2, "{group}");

    let (a, b) = (one.upload(), two.upload());
    let both = [measured(a), measured(b)];
    let sum: f64 = both.iter().map(|m| m.received_bps).sum();
    assert_near("two pods together", sum, 20e6, 0.80..=1.03);
    for result in &both {
        assert!(result.received_bps > 0.2 * 20e6, "a pod starved: {both:?}");
    }
    let alone = measured(one.upload());
    assert_near("one pod alone", alone.received_bps, 20e6, 0.85..=1.03);

    // Applying the same world again changes nothing (the agent reconciles every second).
    let before = list(&rein);
    reconcile(&rein, std::slice::from_ref(&shared), &pods);
    assert_eq!(
        list(&rein)["shared"][0]["group"],
        before["shared"][0]["group"]
    );

    // The policy deleted: the pods are free, and nothing of it is left.
    reconcile(&rein, &[], &pods);
    let after = list(&rein);
    assert!(
        after["shared"].as_array().is_none_or(Vec::is_empty),
        "{after}"
    );
    let free = measured(two.upload());
    assert!(
        free.received_bps > 4.0 * 20e6,
        "a pod of a deleted policy is still limited: {:.1} Mbit/s",
        free.received_bps / 1e6
    );
}

/// The same pods under a PerPod policy: each has the rate of its own, so together they get
/// twice it.
#[test]
fn a_per_pod_policy_gives_each_pod_its_rate() {
    let _traffic = one_at_a_time();
    let rein = ReinInstance::for_test(rein_binary().to_str().unwrap());
    let (one, two) = (Pod::new(), Pod::new());
    let pods = [one.node_pod("crunch-0"), two.node_pod("crunch-1")];
    reconcile(&rein, &[policy("PerPod", "10M")], &pods);
    let (a, b) = (one.upload(), two.upload());
    let both = [measured(a), measured(b)];
    for (pod, result) in both.iter().enumerate() {
        assert_near(
            &format!("pod {pod}"),
            result.received_bps,
            10e6,
            0.85..=1.03,
        );
    }
    reconcile(&rein, &[], &pods);
    let listed = list(&rein);
    assert!(
        listed["netns"].as_array().is_none_or(Vec::is_empty),
        "{listed}"
    );
}
