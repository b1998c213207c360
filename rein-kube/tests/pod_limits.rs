//! The node agent end to end: pods' limits from their annotations, applied to real pods (a
//! kubepods tree made by the test, with processes in pod cgroups and network namespaces of
//! their own) while the test's API server adds, changes and removes them, with iperf3 traffic
//! measuring what the kernel does. Needs root, a bpffs at /sys/fs/bpf, cgroup v2 and iperf3.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::MutexGuard,
    thread,
    time::{Duration, Instant},
};

use common::{
    api::{self, Api, PODS, PodSpec, SERVICES, WATCHED},
    node::{Driver, Node, RunningAgent, TestPod},
};
use rein_testkit::{
    http::sample,
    iperf::{self, ClientOptions},
    netns::queue_devices,
    process::{Cmd, one_at_a_time, wait_until},
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const EGRESS: &str = "kubernetes.io/egress-bandwidth";
const INGRESS: &str = "kubernetes.io/ingress-bandwidth";

/// Traffic tests share two cores: one at a time.
fn traffic() -> MutexGuard<'static, ()> {
    one_at_a_time()
}

/// A UID as the API server makes them, unique per call.
fn uid() -> String {
    let suffix = rein_testkit::netns::unique_suffix();
    format!("5f0c2a4e-7b1d-4c9a-9e39-2f6a{suffix:0>8}")
}

fn pod_json(name: &str, pod: &TestPod, qos: &str, annotations: &[(&str, &str)]) -> Value {
    api::pod(&PodSpec {
        namespace: "default",
        name,
        uid: &pod.uid,
        node: NODE,
        qos,
        host_network: pod.pair.is_none(),
        annotations,
        labels: &[("app", "web")],
    })
}

/// Waits up to 5 s for `done`.
fn eventually(what: &str, done: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(5), done), "never: {what}");
}

/// Events of `reason` on the pod `uid`.
fn events_of(api: &Api, uid: &str, reason: &str) -> Vec<Value> {
    api.events()
        .into_iter()
        .filter(|e| e["regarding"]["uid"] == uid && e["reason"] == reason)
        .collect()
}

/// One upload from the pod to its peer, reported every half second by the receiver: each
/// interval's (start, end, bits/s), times from the test's start.
fn upload_intervals(
    pod: &TestPod,
    seconds: u32,
    during: impl FnOnce(Instant),
) -> Vec<(f64, f64, f64)> {
    let pair = pod.pair();
    let addr = &pair.link.server_addr;
    // A one-off server reporting every half second (`Server::one_off` reports every second).
    let port = iperf::PORT.to_string();
    let server_argv = [
        "iperf3", "-s", "-1", "-J", "-i", "0.5", "-B", addr, "-p", &port,
    ];
    let _server = Cmd::new(pair.server().exec(&server_argv), Duration::from_secs(60))
        .spawn()
        .unwrap();
    pair.server().wait_listening(iperf::PORT).unwrap();
    let opts = ClientOptions {
        seconds,
        server_output: true,
        ..ClientOptions::default()
    };
    let mut argv = iperf::client_argv(addr, iperf::PORT, &opts);
    argv.extend(["-i".to_owned(), "0.5".to_owned()]);
    let started = Instant::now();
    let client = Cmd::new(pair.client().exec(&argv), opts.timeout())
        .spawn()
        .unwrap();
    during(started);
    let out = client.wait().unwrap();
    let doc: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}): {out}"));
    doc["server_output_json"]["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("no server intervals: {doc:#}"))
        .iter()
        .map(|i| {
            let sum = &i["sum"];
            (
                sum["start"].as_f64().unwrap(),
                sum["end"].as_f64().unwrap(),
                sum["bits_per_second"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn mean(rates: &[f64]) -> f64 {
    rates.iter().sum::<f64>() / rates.len() as f64
}

#[test]
fn an_egress_annotation_limits_the_pod_follows_its_changes_within_a_second_and_leaves_nothing() {
    let _traffic = traffic();
    let node = Node::new(Driver::Cgroupfs);
    let pod = TestPod::in_netns(&node, "Burstable", &uid());
    let host_pod = TestPod::on_host(&node, "Guaranteed", &uid());
    let api = Api::new(WATCHED);
    api.add(
        &PODS,
        pod_json("web", &pod, "Burstable", &[(EGRESS, "40M")]),
    );
    api.add(
        &PODS,
        pod_json("host", &host_pod, "Guaranteed", &[(EGRESS, "5M")]),
    );
    // A pod of another node, in this node's tree: the agent must not see it.
    let stranger = TestPod::on_host(&node, "BestEffort", &uid());
    let mut other = pod_json("stranger", &stranger, "BestEffort", &[(EGRESS, "1M")]);
    other["spec"]["nodeName"] = json!("node-b");
    api.add(&PODS, other);
    let agent = RunningAgent::start(&api, &node, NODE);

    let path = pod.netns_path();
    eventually("the pod's namespace is limited", || {
        node.netns_limit(&path).is_some()
    });
    let limit = node.netns_limit(&path).unwrap();
    assert_eq!(limit["egress"]["rate_bits_per_second"], 40_000_000);
    assert_eq!(
        limit["declared_by"], "kubernetes:pod.default.web",
        "{limit:#}"
    );
    let host_cgroup = node.rein.relative(&host_pod.cgroup);
    eventually("the host-network pod's cgroup is limited", || {
        node.cgroup_limit(&host_cgroup).is_some()
    });
    assert_eq!(
        node.cgroup_limit(&host_cgroup).unwrap()["egress"]["rate_bits_per_second"],
        5_000_000
    );
    let stranger_cgroup = node.rein.relative(&stranger.cgroup);
    assert!(node.cgroup_limit(&stranger_cgroup).is_none());
    eventually("a Limited Event on the pod", || {
        !events_of(&api, &pod.uid, "Limited").is_empty()
    });
    let limited = &events_of(&api, &pod.uid, "Limited")[0];
    assert_eq!(limited["type"], "Normal");
    assert_eq!(limited["reportingController"], "rein.dev/node-agent");
    assert_eq!(limited["reportingInstance"], NODE);
    assert!(
        limited["note"].as_str().unwrap().contains("egress 40mbit"),
        "{limited:#}"
    );

    let metrics = agent.scrape();
    let series =
        |name: &str| format!("{name}{{namespace=\"default\",pod=\"web\",direction=\"egress\"}}");
    assert_eq!(
        sample(&metrics, &series("rein_kube_pod_limit_bits_per_second")),
        Some(40e6),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"limited\"}"),
        Some(2.0),
        "{metrics}"
    );

    // 40 Mbit/s, then 10 Mbit/s from an annotation change 2.5 s into the upload.
    let mut changed_at = 0.0;
    let intervals = upload_intervals(&pod, 6, |started| {
        thread::sleep(Duration::from_millis(2500));
        api.modify(&PODS, "default", "web", |pod| {
            pod["metadata"]["annotations"][EGRESS] = json!("10M");
        });
        changed_at = started.elapsed().as_secs_f64();
    });
    for (start, end, bps) in &intervals {
        eprintln!("{start:.1}-{end:.1} s: {:.2} Mbit/s", bps / 1e6);
    }
    let before: Vec<f64> = intervals
        .iter()
        .filter(|(start, end, _)| *start >= 1.0 && *end <= changed_at)
        .map(|i| i.2)
        .collect();
    let after: Vec<f64> = intervals
        .iter()
        .filter(|(start, end, _)| *start >= changed_at + 1.0 && end - start >= 0.45)
        .map(|i| i.2)
        .collect();
    eprintln!(
        "changed at {changed_at:.2} s: {:.2} Mbit/s before, {:.2} after",
        mean(&before) / 1e6,
        mean(&after) / 1e6
    );
    assert!(!before.is_empty() && after.len() >= 3, "{intervals:?}");
    assert!(
        (0.8..=1.05).contains(&(mean(&before) / 40e6)),
        "{intervals:?}"
    );
    // Within a second of the change every half second is at the new limit.
    for rate in &after {
        assert!(
            (0.6..=1.25).contains(&(rate / 10e6)),
            "{rate} in {intervals:?}"
        );
    }
    assert!(
        (0.8..=1.05).contains(&(mean(&after) / 10e6)),
        "{intervals:?}"
    );
    let limit = node.netns_limit(&path).unwrap();
    assert_eq!(limit["egress"]["rate_bits_per_second"], 10_000_000);
    assert!(
        events_of(&api, &pod.uid, "Limited")
            .iter()
            .any(|e| e["note"].as_str().unwrap().starts_with("change ")),
        "{:#?}",
        api.events()
    );

    // The annotation removed: unlimited, and nothing of it left.
    api.modify(&PODS, "default", "web", |pod| {
        pod["metadata"]["annotations"] = json!({});
    });
    eventually("the pod's limit is removed", || {
        node.netns_limit(&path).is_none()
    });
    assert!(
        queue_devices(pod.pair().client().name())
            .unwrap()
            .is_empty()
    );
    // The pod deleted: its cgroup limit goes, and so do its metrics.
    api.delete(&PODS, "default", "host");
    eventually("the deleted pod's limit is removed", || {
        node.cgroup_limit(&host_cgroup).is_none()
    });
    let list = node.list();
    assert_eq!(list["netns"], json!([]), "{list:#}");
    assert_eq!(list["cgroups"], json!([]), "{list:#}");
    let metrics = agent.scrape();
    assert!(
        !metrics.contains("rein_kube_pod_limit_bits_per_second{"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"limited\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
    agent.stop();
}

/// One download into the pod from its peer, with a one-off server there.
fn download(pod: &TestPod, seconds: u32) -> iperf::Measured {
    let pair = pod.pair();
    let addr = &pair.link.server_addr;
    let _server =
        iperf::Server::one_off(pair.server(), addr, iperf::PORT, Duration::from_secs(60)).unwrap();
    let opts = ClientOptions {
        seconds,
        omit: 1,
        reverse: true,
        server_output: true,
        ..ClientOptions::default()
    };
    let argv = iperf::client_argv(addr, iperf::PORT, &opts);
    let cmd = Cmd::new(pair.client().exec(&argv), opts.timeout());
    iperf::run_client(&cmd, false, true).unwrap()
}

#[test]
fn an_ingress_annotation_holds_the_pods_downloads_at_the_limit_without_retransmissions() {
    let _traffic = traffic();
    let node = Node::new(Driver::Systemd);
    let pod = TestPod::in_netns(&node, "BestEffort", &uid());
    let api = Api::new(WATCHED);
    api.add(
        &PODS,
        pod_json("db", &pod, "BestEffort", &[(INGRESS, "20M")]),
    );
    let agent = RunningAgent::start(&api, &node, NODE);
    let path = pod.netns_path();
    eventually("the pod's namespace is limited", || {
        node.netns_limit(&path).is_some()
    });
    assert_eq!(
        node.netns_limit(&path).unwrap()["ingress"]["rate_bits_per_second"],
        20_000_000
    );
    assert_eq!(queue_devices(pod.pair().client().name()).unwrap().len(), 1);
    let measured = download(&pod, 4);
    let share = measured.received_bps / 20e6;
    let retransmits = measured.retransmits.unwrap_or(u64::MAX);
    eprintln!(
        "download: {:.2} Mbit/s, {share:.3} of the limit, {retransmits} retransmits",
        measured.received_bps / 1e6
    );
    assert!((0.88..=1.02).contains(&share), "{measured:?}");
    assert!(retransmits <= 20, "{measured:?}");
    let metrics = agent.scrape();
    let passed =
        "rein_kube_pod_passed_bytes_total{namespace=\"default\",pod=\"db\",direction=\"ingress\"}";
    assert!(sample(&metrics, passed).unwrap_or(0.0) > 5e6, "{metrics}");
    api.delete(&PODS, "default", "db");
    eventually("the deleted pod's limit is removed", || {
        node.netns_limit(&path).is_none()
    });
    assert!(
        queue_devices(pod.pair().client().name())
            .unwrap()
            .is_empty()
    );
    agent.stop();
}

#[test]
fn a_bad_annotation_is_told_once_in_an_event_and_applies_nothing() {
    let node = Node::new(Driver::Cgroupfs);
    let pod = TestPod::in_netns(&node, "BestEffort", &uid());
    // A cluster without rein's CRDs installed (their lists not found): the pods' limits and
    // Events do not wait for them.
    let api = Api::new(&[PODS, SERVICES]);
    api.add(
        &PODS,
        pod_json("bad", &pod, "BestEffort", &[(EGRESS, "10Q")]),
    );
    let agent = RunningAgent::start(&api, &node, NODE);
    eventually("an InvalidBandwidth Event", || {
        !events_of(&api, &pod.uid, "InvalidBandwidth").is_empty()
    });
    // Reconciliations go on (a second each): the problem is told once while it lasts.
    thread::sleep(Duration::from_millis(2500));
    let events = events_of(&api, &pod.uid, "InvalidBandwidth");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["name"], "bad");
    assert_eq!(event["reportingController"], "rein.dev/node-agent");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains(EGRESS) && note.contains("10Q"), "{note}");
    let list = node.list();
    assert_eq!(list["netns"], json!([]), "{list:#}");
    let metrics = agent.scrape();
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"invalid\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"limited\"}"),
        Some(0.0),
        "{metrics}"
    );

    // Put right, the pod is limited; made bad again, its limit goes and it is told again.
    api.modify(&PODS, "default", "bad", |pod| {
        pod["metadata"]["annotations"][EGRESS] = json!("10M");
    });
    let path = pod.netns_path();
    eventually("the pod is limited", || node.netns_limit(&path).is_some());
    api.modify(&PODS, "default", "bad", |pod| {
        pod["metadata"]["annotations"][EGRESS] = json!("1.5");
    });
    eventually("the limit of the pod made bad is removed", || {
        node.netns_limit(&path).is_none()
    });
    eventually("a second InvalidBandwidth Event", || {
        events_of(&api, &pod.uid, "InvalidBandwidth").len() == 2
    });
    agent.stop();
}

/// The egress counters `rein list` shows for the namespace at `path`.
fn egress_passed(node: &Node, path: &str) -> u64 {
    node.netns_limit(path).unwrap()["egress"]["passed_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn an_agent_started_again_adopts_the_limits_in_force_and_removes_those_of_vanished_pods() {
    let _traffic = traffic();
    let node = Node::new(Driver::Systemd);
    let kept = TestPod::in_netns(&node, "Guaranteed", &uid());
    let gone = TestPod::in_netns(&node, "Burstable", &uid());
    let api = Api::new(WATCHED);
    api.add(
        &PODS,
        pod_json("kept", &kept, "Guaranteed", &[(EGRESS, "30M")]),
    );
    api.add(
        &PODS,
        pod_json("gone", &gone, "Burstable", &[(EGRESS, "30M")]),
    );
    let agent = RunningAgent::start(&api, &node, NODE);
    let (kept_path, gone_path) = (kept.netns_path(), gone.netns_path());
    eventually("both pods are limited", || {
        node.netns_limit(&kept_path).is_some() && node.netns_limit(&gone_path).is_some()
    });
    // Traffic through the kept pod's limit, so that its counters say whether it is rewritten.
    let measured = upload_intervals(&kept, 1, |_| {});
    assert!(!measured.is_empty());
    let passed = egress_passed(&node, &kept_path);
    assert!(passed > 1_000_000, "{passed}");
    agent.stop();

    // While no agent runs, a pod goes.
    api.delete(&PODS, "default", "gone");
    let limited_events = events_of(&api, &kept.uid, "Limited").len();
    // Nothing is applied before the pods are listed: an apply of what is known then (nothing)
    // would remove every pod's limit.
    api.hold_lists();
    let agent = RunningAgent::start(&api, &node, NODE);
    thread::sleep(Duration::from_millis(2000));
    assert!(node.netns_limit(&kept_path).is_some() && node.netns_limit(&gone_path).is_some());
    api.release_lists();
    eventually("the vanished pod's limit is removed", || {
        node.netns_limit(&gone_path).is_none()
    });
    // An unchanged world writes nothing, though it is reconciled every second.
    let state = node.rein.state_dir().join("state.json");
    let modified = || std::fs::metadata(&state).unwrap().modified().unwrap();
    let before = modified();
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        modified(),
        before,
        "the state was written with nothing changed"
    );
    let limit = node
        .netns_limit(&kept_path)
        .expect("the kept pod's limit stays");
    assert_eq!(limit["egress"]["rate_bits_per_second"], 30_000_000);
    assert_eq!(limit["declared_by"], "kubernetes:pod.default.kept");
    // Adopted, not made again: its counters go on, and nothing was said about it.
    assert!(egress_passed(&node, &kept_path) >= passed);
    assert_eq!(events_of(&api, &kept.uid, "Limited").len(), limited_events);
    let metrics = agent.scrape();
    assert_eq!(
        sample(&metrics, "rein_kube_applies_total{result=\"changed\"}"),
        Some(1.0),
        "only the vanished pod's limit changed: {metrics}"
    );
    agent.stop();
}

#[test]
fn a_pod_whose_cgroup_comes_later_is_limited_then_and_one_rein_refuses_is_left_out_alone() {
    let node = Node::new(Driver::Systemd);
    let held = TestPod::in_netns(&node, "Burstable", &uid());
    let fine = TestPod::in_netns(&node, "BestEffort", &uid());
    // The held pod's namespace is limited by hand: rein refuses to declare over it.
    let held_path = held.netns_path();
    node.rein
        .rein(&["set", "--netns", &held_path, "--egress", "5mbit"])
        .ok();
    let api = Api::new(WATCHED);
    api.add(
        &PODS,
        pod_json("held", &held, "Burstable", &[(EGRESS, "20M")]),
    );
    api.add(
        &PODS,
        pod_json("fine", &fine, "BestEffort", &[(EGRESS, "20M")]),
    );
    // A pod the API knows before its sandbox is made.
    let late_uid = uid();
    let late_json = api::pod(&PodSpec {
        namespace: "default",
        name: "late",
        uid: &late_uid,
        node: NODE,
        qos: "Guaranteed",
        host_network: true,
        annotations: &[(EGRESS, "3M")],
        labels: &[],
    });
    api.add(&PODS, late_json);
    let agent = RunningAgent::start(&api, &node, NODE);

    let fine_path = fine.netns_path();
    eventually("the fine pod is limited", || {
        node.netns_limit(&fine_path).is_some()
    });
    eventually("a CannotLimit Event on the held pod", || {
        !events_of(&api, &held.uid, "CannotLimit").is_empty()
    });
    let event = &events_of(&api, &held.uid, "CannotLimit")[0];
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"].as_str().unwrap().contains(&held_path),
        "{event:#}"
    );
    let hand = node.netns_limit(&held_path).unwrap();
    assert_eq!(
        hand["egress"]["rate_bits_per_second"], 5_000_000,
        "{hand:#}"
    );
    assert!(hand.get("declared_by").is_none(), "{hand:#}");
    let metrics = agent.scrape();
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"waiting\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rein_kube_refused_resources"),
        Some(1.0),
        "{metrics}"
    );

    // The late pod's cgroup and process appear, with no API event: the next tick limits it.
    let late = TestPod::on_host(&node, "Guaranteed", &late_uid);
    let late_cgroup = node.rein.relative(&late.cgroup);
    assert!(
        wait_until(Duration::from_millis(2500), || node
            .cgroup_limit(&late_cgroup)
            .is_some()),
        "the late pod was not limited within 2.5 s"
    );
    let metrics = agent.scrape();
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"waiting\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rein_kube_pods{state=\"limited\"}"),
        Some(2.0),
        "{metrics}"
    );
    // Told once, though refused on every reconcile.
    assert_eq!(events_of(&api, &held.uid, "CannotLimit").len(), 1);

    // The host-network pod's traffic is its cgroup's: an upload by a process of the pod (in a
    // namespace of the test's, as the host's own network is not the test's to load).
    let _traffic = traffic();
    let pair = rein_testkit::netns::HostPair::create("rkh").unwrap();
    let addr = &pair.link.server_addr;
    let _server =
        iperf::Server::one_off(pair.server(), addr, iperf::PORT, Duration::from_secs(60)).unwrap();
    let opts = ClientOptions {
        seconds: 3,
        omit: 1,
        ..ClientOptions::default()
    };
    let argv = pair
        .client()
        .exec(&iperf::client_argv(addr, iperf::PORT, &opts));
    let cmd = rein_testkit::cgroup::in_cgroup(&late.cgroup, &argv, opts.timeout());
    let measured = iperf::run_client(&cmd, false, false).unwrap();
    let share = measured.received_bps / 3e6;
    eprintln!(
        "host-network pod upload: {:.2} Mbit/s, {share:.3} of the limit",
        measured.received_bps / 1e6
    );
    assert!((0.85..=1.05).contains(&share), "{measured:?}");
    agent.stop();
    node.rein.rein(&["unset", "--netns", &held_path]).ok();
}
