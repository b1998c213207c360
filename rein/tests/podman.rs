//! Through a real container runtime (issue 14): podman with its CNI backend starts a container
//! on a network of the test's own whose conflist chains a shaping plugin after `bridge` and
//! `host-local`, and iperf3 on the host measures it through the bridge, into the container and
//! out of it. The reference `bandwidth` plugin sets the figures a drop-in must meet; the same
//! test with `"type"` changed and the drop-in in `NetworkOptions::plugins` holds it to them.
//! Needs root, podman, runc, busybox-static, iperf3 and containernetworking-plugins
//! (scripts/setup).

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    time::Duration,
};

use rein_testkit::{
    cgroup,
    iperf::{ClientOptions, Measured},
    podman::{CniNetwork, Container, NetworkOptions, bandwidth_entry},
    process::{Cmd, one_at_a_time},
};

const LIMIT_BPS: u64 = 20_000_000;
/// 64 KiB, as tbf's usual burst: under 1% of what 3 s at the limit carry.
const BURST_BITS: u64 = 524_288;

/// Goodput over the limit that a limiter must hold: iperf3 counts 1448 of every 1500 IP bytes
/// (0.965) and the reference plugin's tbf counts L2 bytes (0.956, kernel notes); the burst adds
/// under 1%. The margins are wide for two shared cores.
const LOW: f64 = 0.80;
const HIGH: f64 = 1.05;

/// How much faster than the limit the same network without a shaping plugin must carry: the
/// bridge and veth carry gigabits, so anything less means the limit was not what limited.
const UNSHAPED_FACTOR: f64 = 5.0;

fn measure(container: &Container<'_>, reverse: bool, seconds: u32) -> Measured {
    let options = ClientOptions {
        seconds,
        reverse,
        ..ClientOptions::default()
    };
    container.iperf3(&options).unwrap()
}

fn report(what: &str, m: &Measured) {
    eprintln!(
        "{what}: {:.2} Mbit/s ({:.3} of the limit), {} retransmits",
        m.received_bps / 1e6,
        m.received_bps / LIMIT_BPS as f64,
        m.retransmits
            .map_or("unknown".to_owned(), |r| r.to_string())
    );
}

/// The ifb device a `bandwidth`-style plugin redirects `veth`'s ingress (the container's upload)
/// to, from the action of its ingress filter.
fn ifb_of(veth: &str) -> Option<String> {
    let out = Cmd::new(
        ["tc", "filter", "show", "dev", veth, "ingress"],
        Duration::from_secs(10),
    )
    .run()
    .ok()?;
    let (_, after) = out.stdout.split_once("to device ")?;
    let name = after
        .split(|c: char| c == ')' || c.is_whitespace())
        .next()?;
    Some(name.to_owned())
}

fn link_exists(dev: &str) -> bool {
    Path::new("/sys/class/net").join(dev).exists()
}

/// The reference plugin, chained through podman, holds the container to its rate into it and out
/// of it, and without it the same network is far faster.
#[test]
fn reference_bandwidth_plugin_limits_a_podman_container_both_ways() {
    let _alone = one_at_a_time();
    let shaped = CniNetwork::create(&NetworkOptions {
        shaping: Some(bandwidth_entry("bandwidth", LIMIT_BPS, BURST_BITS)),
        ..NetworkOptions::default()
    })
    .unwrap();
    let container = shaped.iperf3_server().unwrap();
    // The plugin ran for this container: its tbf is on the container's host veth.
    let veth = container.host_veth().unwrap();
    let qdisc = Cmd::new(
        ["tc", "qdisc", "show", "dev", &veth],
        Duration::from_secs(10),
    )
    .run()
    .unwrap()
    .stdout;
    assert!(qdisc.contains("tbf") && qdisc.contains("20Mbit"), "{qdisc}");

    let limit = LIMIT_BPS as f64;
    for (reverse, what) in [
        (false, "into the container"),
        (true, "out of the container"),
    ] {
        let m = measure(&container, reverse, 3);
        report(&format!("bandwidth plugin, {what}"), &m);
        let share = m.received_bps / limit;
        assert!(
            (LOW..=HIGH).contains(&share),
            "{what}: {:.2} Mbit/s is {share:.3} of the {} Mbit/s limit",
            m.received_bps / 1e6,
            LIMIT_BPS / 1_000_000
        );
    }
    drop(container);
    drop(shaped);

    let unshaped = CniNetwork::create(&NetworkOptions::default()).unwrap();
    let container = unshaped.iperf3_server().unwrap();
    for (reverse, what) in [
        (false, "into the container"),
        (true, "out of the container"),
    ] {
        let m = measure(&container, reverse, 2);
        report(&format!("no shaping plugin, {what}"), &m);
        assert!(
            m.received_bps > UNSHAPED_FACTOR * limit,
            "{what} without the plugin: {:.2} Mbit/s, not over {UNSHAPED_FACTOR} times the limit",
            m.received_bps / 1e6
        );
    }
}

/// What the harness tells about a container is the container's, and a test that fails leaves
/// nothing behind: the container (in `podman ps -a`), its namespace and cgroup, the plugin's ifb,
/// the bridge, host-local's leases and the configuration.
#[test]
fn a_failed_test_leaves_no_container_network_or_files() {
    struct Seen {
        id: String,
        pid: u32,
        cgroup: PathBuf,
        veth: String,
        ifb: String,
        bridge: String,
        leases: PathBuf,
        config: PathBuf,
    }
    let mut seen = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let network = CniNetwork::create(&NetworkOptions {
            shaping: Some(bandwidth_entry("bandwidth", LIMIT_BPS, BURST_BITS)),
            ..NetworkOptions::default()
        })
        .unwrap();
        let container = network.iperf3_server().unwrap();

        let subnet_prefix = network.gateway().trim_end_matches(".1");
        assert!(
            container.ip().starts_with(subnet_prefix) && container.ip() != network.gateway(),
            "{} is not a host of {}",
            container.ip(),
            network.subnet()
        );
        let own = fs::read_link("/proc/self/ns/net").unwrap();
        let its = fs::read_link(container.netns()).unwrap();
        assert_ne!(own, its, "the container shares the test's namespace");
        let cgroup = container.cgroup().unwrap();
        assert!(
            cgroup::procs_of(&cgroup).contains(&container.pid()),
            "{} does not hold pid {}",
            cgroup.display(),
            container.pid()
        );
        assert!(cgroup.to_string_lossy().contains(container.id()));
        // iperf3 inside answers as the container (busybox's applets work too).
        let hostname = container.exec(&["hostname"]).unwrap().stdout;
        assert!(container.id().starts_with(hostname.trim()), "{hostname}");

        let veth = container.host_veth().unwrap();
        let ifb = ifb_of(&veth).expect("the bandwidth plugin made no ifb");
        assert!(link_exists(&veth) && link_exists(&ifb) && link_exists(network.bridge()));
        let leases = Path::new("/var/lib/cni/networks").join(network.name());
        assert!(leases.is_dir());
        seen = Some(Seen {
            id: container.id().to_owned(),
            pid: container.pid(),
            cgroup,
            veth,
            ifb,
            bridge: network.bridge().to_owned(),
            leases,
            config: network.config_dir(),
        });
        panic!("a test failing with its container running");
    }));
    assert!(outcome.is_err());
    let seen = seen.expect("the test failed before it started its container");

    let ps = Cmd::new(
        ["podman", "ps", "-a", "--no-trunc", "--format", "{{.ID}}"],
        Duration::from_secs(60),
    )
    .run()
    .unwrap()
    .stdout;
    assert!(!ps.contains(&seen.id), "still in podman ps -a: {ps}");
    assert!(!Path::new(&format!("/proc/{}", seen.pid)).exists());
    assert!(!seen.cgroup.exists(), "{}", seen.cgroup.display());
    for dev in [&seen.veth, &seen.ifb, &seen.bridge] {
        assert!(!link_exists(dev), "{dev} is left");
    }
    assert!(!seen.leases.exists(), "{}", seen.leases.display());
    assert!(!seen.config.exists(), "{}", seen.config.display());
}
