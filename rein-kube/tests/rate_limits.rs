//! RateLimits end to end on a node: the agent's translation of a RateLimit and its Service
//! applied through rein's library as the Kubernetes declarer, with real connects from a pod's
//! network namespace to the Service's cluster IPs (an IPv4 and an IPv6 address of a peer
//! namespace stand for them): the burst passes, the next connect is refused at once; a changed
//! Service moves the limit to its new port; a podSelector limits the selected pod only; a
//! deleted RateLimit leaves nothing. Needs root, a bpffs at /sys/fs/bpf and cgroup v2.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use common::node::{apply_declared, rein_binary};
use k8s_openapi::api::core::v1::Service;
use rein_kube::{
    crd::{RateLimit, declare_rate_limits},
    world::{Declarations, NodePod, PodPlace},
};
use rein_testkit::{
    connect::{self, Reply, Server},
    netns::HostPair,
    rein_instance::ReinInstance,
};
use serde_json::{Value, json};

/// The Service: its cluster IPs are the peer's two addresses, its ports `ports` (name, port).
fn service(pair: &HostPair, ports: &[(&str, u16)]) -> Service {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port)| json!({"name": name, "port": port, "protocol": "TCP", "targetPort": port}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop", "uid": "uid-svc",
                     "resourceVersion": "7"},
        "spec": {
            "clusterIP": pair.link.server_addr,
            "clusterIPs": [pair.link.server_addr, pair.link.server_addr6],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack",
            "ports": ports,
            "type": "ClusterIP"
        }
    }))
    .unwrap()
}

fn rate_limit(extra: Value) -> RateLimit {
    let mut spec = json!({"service": {"name": "api"}, "rate": "1/h", "burst": 3});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "rein.dev/v1alpha1",
        "kind": "RateLimit",
        "metadata": {"name": "api-connects", "namespace": "shop", "uid": "uid-rl",
                     "generation": 1, "creationTimestamp": "2026-11-26T19:00:00Z"},
        "spec": spec
    }))
    .unwrap()
}

/// What the agent does on a reconcile: the RateLimits' declarations, applied as the Kubernetes
/// declarer's whole (Exact).
fn reconcile(rein: &ReinInstance, limits: &[RateLimit], services: &[Service], pods: &[NodePod]) {
    let mut out = Declarations::default();
    declare_rate_limits(limits, services, pods, &mut out);
    apply_declared(rein, out);
}

/// The connects that pass out of `n` from the pod to `addr`, the others refused at once.
fn allowed(pair: &HostPair, addr: SocketAddr, n: u64) -> u64 {
    let seen = connect::connect_n(pair.client(), addr, n).unwrap();
    assert!(seen.other.is_empty(), "{addr}: {seen:?}");
    assert_eq!(seen.allowed + seen.refused, n, "{addr}: {seen:?}");
    seen.allowed
}

fn conn_rules(rein: &ReinInstance) -> Vec<Value> {
    let list: Value = serde_json::from_str(rein.rein(&["list", "--json"]).ok()).unwrap();
    list["conn"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_rate_limit_holds_connects_to_every_cluster_ip_and_follows_the_service() {
    let rein = ReinInstance::for_test(rein_binary().to_str().unwrap());
    let pair = HostPair::create("rkr").unwrap();
    let at = |addr: &str, port: u16| SocketAddr::new(addr.parse().unwrap(), port);
    let (v4, v6) = (&pair.link.server_addr, &pair.link.server_addr6);
    let addrs: Vec<SocketAddr> = [8080, 9090]
        .into_iter()
        .flat_map(|port| [at(v4, port), at(v6, port)])
        .collect();
    let _server = Server::start(pair.server(), &addrs, Reply::Close).unwrap();
    let pod = NodePod {
        namespace: "shop".into(),
        name: "web-0".into(),
        uid: "uid-web-0".into(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        annotations: BTreeMap::new(),
        place: Some(PodPlace::Netns(PathBuf::from(pair.client().path()))),
    };
    let pods = [pod];

    // Every process of the node: a bucket of 3 per cluster IP of the Service's one port.
    let limit = rate_limit(json!({}));
    let services = [service(&pair, &[("http", 8080)])];
    reconcile(&rein, std::slice::from_ref(&limit), &services, &pods);
    assert_eq!(conn_rules(&rein).len(), 2, "{:?}", conn_rules(&rein));
    assert_eq!(allowed(&pair, at(v4, 8080), 6), 3);
    assert_eq!(allowed(&pair, at(v6, 8080), 6), 3);
    assert_eq!(
        allowed(&pair, at(v4, 9090), 6),
        6,
        "another port is not the Service's"
    );

    // The Service moves to 9090: the limit follows it, 8080 is free.
    let moved = [service(&pair, &[("http", 9090)])];
    reconcile(&rein, std::slice::from_ref(&limit), &moved, &pods);
    assert_eq!(allowed(&pair, at(v4, 8080), 6), 6);
    assert_eq!(allowed(&pair, at(v4, 9090), 6), 3);
    // Unchanged, a reconcile keeps the rules and their buckets (still empty).
    reconcile(&rein, std::slice::from_ref(&limit), &moved, &pods);
    assert_eq!(allowed(&pair, at(v4, 9090), 2), 0);

    // Only the selected pods count: a selector this pod does not match frees it...
    let others = rate_limit(json!({"podSelector": {"matchLabels": {"app": "db"}}}));
    reconcile(&rein, std::slice::from_ref(&others), &moved, &pods);
    assert!(conn_rules(&rein).is_empty(), "{:?}", conn_rules(&rein));
    assert_eq!(allowed(&pair, at(v6, 9090), 6), 6);
    // ...one that matches gives it a bucket of its own, in its namespace.
    let mine = rate_limit(json!({"podSelector": {"matchLabels": {"app": "web"}}}));
    reconcile(&rein, std::slice::from_ref(&mine), &moved, &pods);
    let rules = conn_rules(&rein);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| r.to_string().contains(&pair.client().path())),
        "{rules:?}"
    );
    assert_eq!(allowed(&pair, at(v6, 9090), 6), 3);

    // Deleted: nothing left, every connect passes.
    reconcile(&rein, &[], &moved, &pods);
    assert!(conn_rules(&rein).is_empty());
    assert_eq!(allowed(&pair, at(v6, 9090), 6), 6);
}
