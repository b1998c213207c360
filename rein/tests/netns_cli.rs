//! Limits per network namespace end to end: `rein set --netns`, `unset --netns` and `list`
//! with real traffic between namespaces, bad input, a namespace that goes while limited, and
//! the declarative form (`CgroupLimit` with `netns:`) through `rein apply|diff|delete` and the
//! agent, next to a namespace the CNI plugin limited. Needs root, a bpffs at /sys/fs/bpf and
//! cgroup v2; every test has its own instance and namespaces.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fs, path::Path, sync::MutexGuard, time::Duration};

use rein::{
    Engine,
    capabilities::{
        cgroup_limit::LimitSpec,
        netns_limit::{self, Attachment, NetnsLimit},
    },
};
use rein_testkit::{
    agent::{Agent, Config},
    files::Files,
    iperf::{self, ClientOptions, PORT, Server},
    netns::{HostPair, Netns, ip, queue_devices},
    process::{Cmd, one_at_a_time, wait_until},
    rein_instance::ReinInstance,
};
use serde_json::Value;

/// Traffic tests share two cores: one at a time.
fn traffic() -> MutexGuard<'static, ()> {
    one_at_a_time()
}

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

/// The namespace limits of `rein list --json`.
fn namespaces(rein: &ReinInstance) -> Vec<Value> {
    let out = rein.rein(&["list", "--json"]);
    let list: Value = serde_json::from_str(out.ok()).unwrap();
    list["netns"].as_array().cloned().unwrap_or_default()
}

/// The limit `rein list --json` shows for the namespace at `path`.
fn limit_of(rein: &ReinInstance, path: &str) -> Option<Value> {
    namespaces(rein)
        .into_iter()
        .find(|ns| ns["netns"].as_str() == Some(path))
}

/// Every file under the instance's pin directory, relative to it (empty when there is none).
fn pins(rein: &ReinInstance) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(&path, root, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&rein.pin_dir(), &rein.pin_dir(), &mut out);
    out.sort();
    out
}

/// One iperf3 run from the client of `pair` to `addr` in its server (`reverse`: into the
/// client), with a one-off server there.
fn transfer(pair: &HostPair, addr: &str, seconds: u32, reverse: bool) -> iperf::Measured {
    let _server =
        Server::one_off(pair.server(), addr, PORT, Duration::from_secs(30)).expect("iperf3 server");
    let opts = ClientOptions {
        seconds,
        omit: 1,
        reverse,
        server_output: true,
        ..ClientOptions::default()
    };
    let argv = iperf::client_argv(addr, PORT, &opts);
    let cmd = Cmd::new(pair.client().exec(&argv), opts.timeout());
    iperf::run_client(&cmd, false, reverse).expect("iperf3 client")
}

#[test]
fn a_namespace_limit_holds_both_ways_and_unset_leaves_nothing() {
    let _traffic = traffic();
    let rein = instance();
    let pair = HostPair::create("rns").unwrap();
    let path = pair.client().path();
    let pins_before = pins(&rein);

    let out = rein.rein(&[
        "set",
        "--netns",
        &path,
        "--egress",
        "20mbit",
        "--ingress",
        "30mbit",
    ]);
    assert!(
        out.ok()
            .contains(&format!("limited network namespace {path}")),
        "{out}"
    );
    let listed = limit_of(&rein, &path).expect("rein list shows the namespace");
    assert_eq!(listed["egress"]["rate_bits_per_second"], 20_000_000);
    assert_eq!(listed["ingress"]["rate_bits_per_second"], 30_000_000);
    assert_eq!(listed["origin"]["kind"], "manual");
    assert!(!pins(&rein).is_empty(), "a limit in force is pinned");
    assert_eq!(
        queue_devices(pair.client().name()).unwrap().len(),
        1,
        "the ingress queue lives in the namespace"
    );

    for (reverse, limit) in [(false, 20e6), (true, 30e6)] {
        let measured = transfer(&pair, &pair.link.server_addr, 4, reverse);
        let share = measured.received_bps / limit;
        let retransmits = measured.retransmits.unwrap_or(u64::MAX);
        eprintln!(
            "{}: {:.2} Mbit/s, {share:.3} of the limit, {retransmits} retransmits",
            if reverse { "into A" } else { "out of A" },
            measured.received_bps / 1e6
        );
        assert!(
            (0.88..=1.02).contains(&share),
            "goodput {share:.3} of the limit ({measured:?})"
        );
        assert!(
            retransmits <= 20,
            "{retransmits} retransmits ({measured:?})"
        );
    }

    let metrics = rein.rein(&["metrics"]);
    let series =
        format!("rein_netns_rate_bytes_per_second{{netns=\"{path}\",direction=\"ingress\"}}");
    assert_eq!(
        rein_testkit::http::sample(metrics.ok(), &series),
        Some(3_750_000.0),
        "{metrics}"
    );
    let passed = format!("rein_netns_passed_bytes_total{{netns=\"{path}\",direction=\"egress\"}}");
    assert!(
        rein_testkit::http::sample(&metrics.stdout, &passed).unwrap_or(0.0) > 1e6,
        "{metrics}"
    );

    let out = rein.rein(&["unset", "--netns", &path]);
    assert!(out.ok().contains("removed the limit"), "{out}");
    assert!(namespaces(&rein).is_empty());
    assert!(queue_devices(pair.client().name()).unwrap().is_empty());
    assert_eq!(pins(&rein), pins_before, "unset left pins behind");
    rein.rein(&["unset", "--netns", &path])
        .refused(&["has no rein limit"]);
}

#[test]
fn bad_namespaces_are_refused_and_a_vanished_one_is_forgotten() {
    let rein = instance();
    let ns = Netns::create("rnb").unwrap();
    let path = ns.path();
    // A limit elsewhere, so that there is state to leave unchanged.
    let other = Netns::create("rnb").unwrap();
    rein.rein(&["set", "--netns", &other.path(), "--egress", "5mbit"])
        .ok();
    let state_before = namespaces(&rein);
    let pins_before = pins(&rein);

    let missing = format!("/run/netns/rein-missing-{}", ns.name());
    for (bad, needles) in [
        (
            missing.as_str(),
            vec!["no network namespace", missing.as_str()],
        ),
        ("/tmp", vec!["no network namespace", "/tmp"]),
    ] {
        rein.rein(&["set", "--netns", bad, "--egress", "1mbit"])
            .refused(&needles);
    }
    rein.rein(&["set", "--netns", &path, "--burst", "64k"])
        .refused(&["has no limit yet", &path]);
    rein.rein(&["set", "--netns", &path])
        .refused(&["nothing to set"]);
    assert_eq!(namespaces(&rein), state_before);
    assert_eq!(pins(&rein), pins_before);

    // A namespace deleted while limited: the next command forgets it.
    rein.rein(&["set", "--netns", &path, "--ingress", "10mbit"])
        .ok();
    assert!(limit_of(&rein, &path).is_some());
    drop(ns);
    assert!(
        limit_of(&rein, &path).is_none(),
        "the vanished namespace is still listed"
    );
    assert!(limit_of(&rein, &other.path()).is_some());
}

/// A `CgroupLimit` of the namespace at `netns`, with `rest` of its spec.
fn netns_limit_file(name: &str, netns: &str, rest: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: {name}\nspec:\n  \
         netns: {netns}\n{rest}"
    )
}

#[test]
fn subnets_of_a_declared_namespace_limit_are_left_unlimited_or_alone_limited() {
    let _traffic = traffic();
    let rein = instance();
    let pair = HostPair::create("rnu").unwrap();
    let path = pair.client().path();
    // A second peer in the server, on the same link.
    let (network, _) = pair.link.server_addr.rsplit_once('.').unwrap();
    let second = format!("{network}.200");
    let host = format!("{second}/32");
    ip(&[
        "-n",
        pair.server().name(),
        "addr",
        "add",
        &host,
        "dev",
        &pair.link.server_if,
    ])
    .unwrap();
    ip(&[
        "-n",
        pair.client().name(),
        "route",
        "add",
        &host,
        "dev",
        &pair.link.client_if,
    ])
    .unwrap();

    let files = Files::new("netns-subnets");
    let peer = format!("{}/32", pair.link.server_addr);
    let limit = 20e6;
    for (field, unlimited, limited) in [
        ("unshapedSubnets", &pair.link.server_addr, &second),
        ("shapedSubnets", &second, &pair.link.server_addr),
    ] {
        let file = files.write(
            "pod.yaml",
            &netns_limit_file(
                "pod",
                &path,
                &format!("  egress:\n    rate: 20mbit\n  {field}: [{peer}]\n"),
            ),
        );
        rein.rein(&["apply", "-f", &file]).ok();
        let listed = limit_of(&rein, &path).unwrap();
        assert_eq!(listed["declared_by"], "pod");
        let free = transfer(&pair, unlimited, 2, false).received_bps;
        let held = transfer(&pair, limited, 2, false).received_bps;
        eprintln!(
            "{field} [{peer}]: {:.1} Mbit/s to {unlimited}, {:.2} Mbit/s to {limited}",
            free / 1e6,
            held / 1e6
        );
        assert!(free > 5.0 * limit, "{field}: {unlimited} got {free} bit/s");
        assert!(
            (0.85..=1.02).contains(&(held / limit)),
            "{field}: {limited} got {held} bit/s"
        );
    }
    rein.rein(&["delete", "-f", &files.dir()]).ok();
    assert!(namespaces(&rein).is_empty());
}

#[test]
fn apply_diff_get_and_delete_a_namespace_limit_and_refuse_the_cni_plugins() {
    let rein = instance();
    let pod = Netns::create("rnd").unwrap();
    let cni = Netns::create("rnd").unwrap();
    let files = Files::new("netns-declare");
    let file = files.write(
        "pod.yaml",
        &netns_limit_file("pod", &pod.path(), "  ingress:\n    rate: 10mbit\n"),
    );

    let out = rein.rein(&["diff", "-f", &file]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stdout.contains(&pod.path()), "{out}");
    assert!(namespaces(&rein).is_empty(), "diff changed something");
    let out = rein.rein(&["apply", "-f", &file]);
    assert!(
        out.ok()
            .contains(&format!("limit network namespace {}", pod.path())),
        "{out}"
    );
    assert_eq!(
        rein.rein(&["apply", "-f", &file]).ok(),
        "nothing to change\n"
    );
    let listed = limit_of(&rein, &pod.path()).unwrap();
    assert_eq!(listed["ingress"]["rate_bits_per_second"], 10_000_000);
    assert_eq!(listed["declared_by"], "pod");
    let get: Vec<Value> = serde_json::from_str(rein.rein(&["get", "-o", "json"]).ok()).unwrap();
    assert_eq!(get.len(), 1, "{get:#?}");
    assert_eq!(get[0]["spec"]["netns"], pod.path().as_str());
    assert_eq!(get[0]["status"]["origin"], "declared");
    // What get shows declares the same again.
    let yaml = rein.rein(&["get", "-o", "yaml"]);
    let shown = files.write("shown.yaml.out", yaml.ok());
    assert_eq!(
        rein.rein(&["apply", "-f", &shown]).ok(),
        "nothing to change\n"
    );
    // An edit changes it in place.
    files.write(
        "pod.yaml",
        &netns_limit_file("pod", &pod.path(), "  ingress:\n    rate: 12mbit\n"),
    );
    assert!(rein.rein(&["apply", "-f", &file]).ok().contains("change"));

    // The CNI plugin's namespace: a file neither takes it over nor, by leaving it out,
    // removes it.
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    let attachment = Attachment {
        network: "testnet".into(),
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
    };
    let cni_limit = NetnsLimit {
        egress: Some(LimitSpec {
            rate: "7mbit".parse().unwrap(),
            burst: None,
        }),
        ..NetnsLimit::default()
    };
    netns_limit::attach(&mut engine, Path::new(&cni.path()), attachment, cni_limit).unwrap();
    drop(engine);
    let cni_file = files.write(
        "cni.yaml",
        &netns_limit_file("taken", &cni.path(), "  egress:\n    rate: 1mbit\n"),
    );
    rein.rein(&["apply", "-f", &cni_file]).refused(&[
        "CgroupLimit taken",
        &cni.path(),
        "CNI plugin",
        "c0ffee",
    ]);
    // A hand-set namespace is refused as a hand-set cgroup is.
    let hand = Netns::create("rnd").unwrap();
    rein.rein(&["set", "--netns", &hand.path(), "--egress", "3mbit"])
        .ok();
    let hand_file = files.write(
        "hand.yaml",
        &netns_limit_file("hand", &hand.path(), "  egress:\n    rate: 1mbit\n"),
    );
    rein.rein(&["apply", "-f", &hand_file])
        .refused(&["set by hand", "rein unset --netns"]);
    // A missing namespace is refused by a command.
    let missing = files.write(
        "missing.yaml",
        &netns_limit_file(
            "gone",
            "/run/netns/rein-no-such-ns",
            "  egress:\n    rate: 1mbit\n",
        ),
    );
    rein.rein(&["apply", "-f", &missing])
        .refused(&["gone", "no network namespace /run/netns/rein-no-such-ns"]);

    let out = rein.rein(&["delete", "-f", &file]);
    assert!(
        out.ok().contains("remove the limit of network namespace"),
        "{out}"
    );
    assert!(limit_of(&rein, &pod.path()).is_none());
    let cni_listed = limit_of(&rein, &cni.path()).expect("the CNI plugin's limit stays");
    assert_eq!(cni_listed["egress"]["rate_bits_per_second"], 7_000_000);
    assert_eq!(cni_listed["origin"]["kind"], "cni");
    assert!(limit_of(&rein, &hand.path()).is_some());
}

#[test]
fn the_agent_follows_a_namespace_limit_and_leaves_the_cni_plugins_alone() {
    let rein = instance();
    let pod = Netns::create("rna").unwrap();
    let cni = Netns::create("rna").unwrap();
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    let attachment = Attachment {
        network: "testnet".into(),
        container_id: "beef".into(),
        ifname: "eth0".into(),
    };
    let cni_limit = NetnsLimit {
        ingress: Some(LimitSpec {
            rate: "7mbit".parse().unwrap(),
            burst: None,
        }),
        ..NetnsLimit::default()
    };
    netns_limit::attach(&mut engine, Path::new(&cni.path()), attachment, cni_limit).unwrap();
    drop(engine);

    let config = Config::new();
    config.write(
        "pod.yaml",
        &netns_limit_file("pod", &pod.path(), "  egress:\n    rate: 10mbit\n"),
    );
    config.write(
        "cni.yaml",
        &netns_limit_file("taken", &cni.path(), "  ingress:\n    rate: 1mbit\n"),
    );
    let agent = Agent::start(&rein, &config.dir, &[]);
    let rate_of = |path: &str, direction: &str| {
        limit_of(&rein, path).and_then(|l| l[direction]["rate_bits_per_second"].as_u64())
    };
    // `rein list` may find the agent holding the instance: asked again.
    let rate_becomes = |path: &str, direction: &str, bits: Option<u64>| {
        wait_until(Duration::from_secs(10), || {
            let out = rein.rein(&["list", "--json"]);
            out.status.success() && rate_of(path, direction) == bits
        })
    };
    assert!(
        rate_becomes(&pod.path(), "egress", Some(10_000_000)),
        "the agent did not apply the namespace limit"
    );
    let series = format!(
        "rein_netns_rate_bytes_per_second{{netns=\"{}\",direction=\"egress\"}}",
        pod.path()
    );
    assert_eq!(agent.sample(&series), Some(1_250_000.0));
    config.write(
        "pod.yaml",
        &netns_limit_file("pod", &pod.path(), "  egress:\n    rate: 20mbit\n"),
    );
    assert!(
        rate_becomes(&pod.path(), "egress", Some(20_000_000)),
        "the agent did not follow an edit"
    );
    // The file gone, the agent (exact) removes what it declared, and only that.
    config.remove("pod.yaml");
    assert!(
        rate_becomes(&pod.path(), "egress", None),
        "the agent did not remove the namespace limit"
    );
    assert_eq!(rate_of(&cni.path(), "ingress"), Some(7_000_000));
    assert_eq!(agent.sample("rein_agent_config_valid"), Some(1.0));
    let out = agent.stop(libc::SIGTERM);
    assert!(
        out.stderr.contains("taken: leaving it alone") && out.stderr.contains("CNI plugin"),
        "the agent did not warn about the CNI plugin's namespace:\n{out}"
    );
    assert_eq!(rate_of(&cni.path(), "ingress"), Some(7_000_000));
}
