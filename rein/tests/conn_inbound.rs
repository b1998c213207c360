//! End to end tests of inbound new-connection limits (`rein conn add --dev`, issue 13 test 4):
//! a rule on the server's veth, real TCP connects from three client addresses counted against
//! the rate and burst, a bounded flood of SYNs with spoofed sources beside them (raw socket in
//! the client namespace), on tc and on XDP, with exact per-source tables and with the sketch;
//! and bad input, which changes nothing. Needs root and a bpffs at /sys/fs/bpf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    thread,
    time::Duration,
};

use rein_testkit::{
    connect::{Reply, Server},
    netns::HostPair,
    process::one_at_a_time,
    rein_instance::ReinInstance,
    syn::{count_connects, syn_flood},
};
use serde_json::Value;

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

/// The service's port, private to the server's namespace.
const PORT: u16 = 8443;
const RATE: u64 = 10;
const BURST: u64 = 5;
const SECONDS: u64 = 2;

/// A TCP server in `pair`'s server namespace that accepts and closes connections until
/// dropped.
fn listen(pair: &HostPair) -> Server {
    let addr = SocketAddr::new(pair.link.server_addr.parse().unwrap(), PORT);
    Server::start(pair.server(), &[addr], Reply::Close).unwrap()
}

/// Three clients connecting for `SECONDS` each from its own address, beside a flood of
/// `flood_per_second` spoofed SYNs (none when 0): the connections each established, and the
/// SYNs the flood sent.
fn run_clients(pair: &HostPair, flood_per_second: u64) -> (Vec<u64>, u64) {
    let sources = pair.add_client_addresses(3).unwrap();
    let server = SocketAddrV4::new(pair.link.server_addr.parse().unwrap(), PORT);
    let client = pair.client();
    thread::scope(|scope| {
        let flood = (flood_per_second > 0).then(|| {
            scope.spawn(move || {
                client
                    .run(|| {
                        syn_flood(
                            server,
                            flood_per_second,
                            Duration::from_secs(SECONDS) + Duration::from_millis(300),
                        )
                    })
                    .unwrap()
                    .unwrap()
            })
        });
        // Let the flood start first.
        thread::sleep(Duration::from_millis(if flood.is_some() { 200 } else { 0 }));
        let counts: Vec<_> = sources
            .iter()
            .map(|source| {
                let source: Ipv4Addr = source.parse().unwrap();
                scope.spawn(move || {
                    client
                        .run(|| {
                            // A refused SYN is given up after 50 ms (half a token at the rate), so
                            // a client is never idle long enough for its bucket to overflow.
                            count_connects(
                                source,
                                server,
                                Duration::from_secs(SECONDS),
                                Duration::from_millis(50),
                            )
                        })
                        .unwrap()
                        .unwrap()
                })
            })
            .collect();
        let counts = counts.into_iter().map(|c| c.join().unwrap()).collect();
        let flooded = flood.map_or(0, |f| f.join().unwrap());
        (counts, flooded)
    })
}

fn add_rule(rein: &ReinInstance, pair: &HostPair, extra: &[&str]) -> u64 {
    let (rate, burst) = (format!("{RATE}/s"), BURST.to_string());
    let mut args = vec![
        "conn",
        "add",
        "--dev",
        &pair.link.server_if,
        "--dport",
        "8443",
        "--rate",
        &rate,
        "--burst",
        &burst,
        "--per-source",
    ];
    args.extend_from_slice(extra);
    let out = rein.rein_in(pair.server().name(), &args);
    assert!(out.status.success(), "{out:?}");
    let listed = inbound(rein, pair);
    assert_eq!(listed.len(), 1, "{listed:?}");
    listed[0]["id"].as_u64().unwrap()
}

fn inbound(rein: &ReinInstance, pair: &HostPair) -> Vec<Value> {
    let out = rein.rein_in(pair.server().name(), &["conn", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    listed["inbound"].as_array().unwrap().clone()
}

/// Each of three clients gets its own rate and burst, within 10%, with a flood of spoofed SYNs
/// from many /16s running beside them.
fn each_client_keeps_its_rate_under_a_flood(extra: &[&str]) {
    let _traffic = one_at_a_time();
    let rein = instance();
    let pair = HostPair::create("rci").unwrap();
    let _server = listen(&pair);
    let id = add_rule(&rein, &pair, extra);
    let (counts, flooded) = run_clients(&pair, 15_000);
    let expected = (BURST + RATE * SECONDS) as f64;
    eprintln!(
        "{extra:?}: clients established {counts:?} (expected {expected}), flood sent {flooded}"
    );
    assert!(flooded > 15_000, "the flood sent only {flooded} SYNs");
    for count in &counts {
        let ratio = *count as f64 / expected;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{extra:?}: a client established {count}, expected {expected}: {counts:?}"
        );
    }
    let listed = inbound(&rein, &pair);
    let rule = listed
        .iter()
        .find(|r| r["id"].as_u64() == Some(id))
        .unwrap();
    // The clients' refused SYNs at least.
    assert!(rule["dropped_packets"].as_u64().unwrap() > 0, "{rule}");
}

#[test]
fn per_source_syn_rates_hold_under_a_spoofed_flood_at_tc() {
    each_client_keeps_its_rate_under_a_flood(&[]);
}

#[test]
fn per_source_syn_rates_hold_under_a_spoofed_flood_at_xdp() {
    each_client_keeps_its_rate_under_a_flood(&["--xdp"]);
}

#[test]
fn per_source_syn_rates_hold_under_a_spoofed_flood_in_a_sketch_at_tc() {
    // 64k columns: the flood's 30,000 sources put under one SYN a second on a cell.
    each_client_keeps_its_rate_under_a_flood(&["--sketch", "65536x4"]);
}

#[test]
fn per_source_syn_rates_hold_under_a_spoofed_flood_in_a_sketch_at_xdp() {
    each_client_keeps_its_rate_under_a_flood(&["--xdp", "--sketch", "65536x4"]);
}

#[test]
fn conn_lists_and_deletes_its_rules_and_net_shows_them() {
    let rein = instance();
    let pair = HostPair::create("rcl").unwrap();
    let ns = pair.server().name();
    let dev = &pair.link.server_if;
    let id = add_rule(&rein, &pair, &[]);
    // A traffic rule on the same service: another kind, no duplicate.
    let out = rein.rein_in(
        ns,
        &[
            "net", "add", "--dev", dev, "--dir", "ingress", "--proto", "tcp", "--dport", "8443",
            "--rate", "10mbit",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let net = rein.rein_in(ns, &["net", "list"]);
    assert!(
        net.stdout.contains("10/s new connections (burst 5)"),
        "{}",
        net.stdout
    );
    assert_eq!(inbound(&rein, &pair).len(), 1);
    let traffic_id = (id + 1).to_string();
    let refused = rein.rein_in(ns, &["conn", "del", &traffic_id]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("limits traffic"),
        "{}",
        refused.stderr
    );
    let out = rein.rein_in(ns, &["conn", "del", &id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(inbound(&rein, &pair).is_empty());
    assert_eq!(rein.net_rules().len(), 1);
}

#[test]
fn bad_input_is_one_line_and_changes_nothing() {
    let rein = instance();
    let pair = HostPair::create("rcb").unwrap();
    let ns = pair.server().name();
    let dev = pair.link.server_if.as_str();
    let cases: [(&[&str], &str); 7] = [
        (&["--dev", dev, "--dport", "80", "--rate", "0/s"], "--rate"),
        (
            &[
                "--dev", dev, "--dport", "80", "--rate", "5/s", "--burst", "0",
            ],
            "--burst",
        ),
        (
            &["--dev", "nosuch0", "--dport", "80", "--rate", "5/s"],
            "nosuch0",
        ),
        (
            &["--dev", dev, "--dport", "70000", "--rate", "5/s"],
            "--dport",
        ),
        (&["--dev", dev, "--dport", "0", "--rate", "5/s"], "--dport"),
        (
            &[
                "--dev", dev, "--dport", "80", "--rate", "5/s", "--sketch", "1024x4",
            ],
            "--per-source",
        ),
        (&["--dev", dev, "--rate", "5/s"], "--dport"),
    ];
    for (args, needle) in cases {
        let mut argv = vec!["conn", "add"];
        argv.extend_from_slice(args);
        let out = rein.rein_in(ns, &argv);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = out.stderr.trim();
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        // clap's usage lines aside, rein's own errors are one line.
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(needle) || stderr.lines().count() <= 4,
            "{args:?}: {stderr}"
        );
        if !first.starts_with("error: the following required") {
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        }
        assert!(rein.net_rules().is_empty(), "{args:?} left a rule");
        let pins = rein.pin_dir();
        let net_links = pins.join("net");
        assert!(
            !net_links.exists() || std::fs::read_dir(&net_links).unwrap().next().is_none(),
            "{args:?} left a link pin"
        );
    }
}
