//! The test's API server against kube's own watcher: what the agent's tests stand on. The
//! list and watch payloads must be what kube-runtime parses from a real API server.
// clippy.toml allows unwrap/expect in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::api::{self, Api, PODS, PodSpec};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};

fn spec<'a>(name: &'a str, node: &'a str, annotations: &'a [(&'a str, &'a str)]) -> PodSpec<'a> {
    PodSpec {
        namespace: "default",
        name,
        uid: "5f0c2a4e-7b1d-4c9a-9e39-2f6a8d1c0b11",
        node,
        qos: "BestEffort",
        host_network: false,
        annotations,
        labels: &[("app", "demo")],
    }
}

/// Waits until the store holds what `done` wants.
async fn until(store: &reflector::Store<Pod>, done: impl Fn(&[std::sync::Arc<Pod>]) -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done(&store.state()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the store never got there: {:?}", store.state()));
}

#[tokio::test]
async fn kube_watcher_lists_then_follows_adds_changes_and_deletes_of_its_node() {
    let server = Api::new(&[PODS]);
    server.add(&PODS, api::pod(&spec("before", "node-a", &[])));
    server.add(&PODS, api::pod(&spec("elsewhere", "node-b", &[])));
    let client = server.client();
    let (store, writer) = reflector::store::<Pod>();
    let config = watcher::Config::default().fields("spec.nodeName=node-a");
    let stream = watcher(kube::Api::<Pod>::all(client), config)
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(stream.for_each(|event| async move {
        event.unwrap();
    }));
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    let names = |pods: &[std::sync::Arc<Pod>]| {
        let mut names: Vec<String> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&store.state()), ["before"]);

    server.add(
        &PODS,
        api::pod(&spec(
            "web",
            "node-a",
            &[("kubernetes.io/egress-bandwidth", "10M")],
        )),
    );
    server.add(&PODS, api::pod(&spec("other", "node-b", &[])));
    until(&store, |pods| names(pods) == ["before", "web"]).await;
    server.modify(&PODS, "default", "web", |pod| {
        pod["metadata"]["annotations"]["kubernetes.io/egress-bandwidth"] = "20M".into();
    });
    until(&store, |pods| {
        pods.iter().any(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/egress-bandwidth"))
                == Some(&"20M".to_owned())
        })
    })
    .await;
    server.bookmark(&PODS);
    // A watch the server ends is watched again from where it was: nothing listed twice.
    server.close_watches();
    server.delete(&PODS, "default", "before");
    until(&store, |pods| names(pods) == ["web"]).await;
    let pod = store.state()[0].clone();
    assert_eq!(
        pod.status.as_ref().unwrap().qos_class.as_deref(),
        Some("BestEffort")
    );
    assert_eq!(
        pod.metadata.uid.as_deref(),
        Some("5f0c2a4e-7b1d-4c9a-9e39-2f6a8d1c0b11")
    );

    let requests = server.requests();
    let lists = requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 1, "{requests:#?}");
    assert!(
        requests
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{requests:#?}"
    );
    assert!(server.unknown_requests().is_empty());
    task.abort();
}
