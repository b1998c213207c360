//! Shared limits end to end: `rein share` over two cgroups and over two network namespaces with
//! real iperf3 flows (their sum holds at the limit, each alone gets all of it), a change of
//! rate that keeps the group, a member taken out and freed, a reload, a shared ingress limit,
//! bad input that changes nothing, and the declarative `SharedLimit`. Needs root, a bpffs at
//! /sys/fs/bpf, cgroup v2 and iperf3; every test has its own instance, cgroups and namespaces.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, sync::MutexGuard, time::Duration};

use rein_testkit::{
    cgroup::in_cgroup,
    files::Files,
    iperf::{self, ClientOptions, Measured, PORT, Server, assert_near},
    netns::HostPair,
    process::{Cmd, Running, one_at_a_time},
    rein_instance::ReinInstance,
};
use serde_json::Value;

fn traffic() -> MutexGuard<'static, ()> {
    one_at_a_time()
}

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

/// The shared limits of `rein list --json`.
fn shared(rein: &ReinInstance) -> Vec<Value> {
    let out = rein.rein(&["list", "--json"]);
    let list: Value = serde_json::from_str(out.ok()).unwrap();
    list["shared"].as_array().cloned().unwrap_or_default()
}

fn group_named(rein: &ReinInstance, name: &str) -> Option<Value> {
    shared(rein)
        .into_iter()
        .find(|g| g["name"].as_str() == Some(name))
}

/// What `rein list --json` and the state file say, to compare before and after a refusal.
fn snapshot(rein: &ReinInstance) -> (String, String) {
    let list = rein.rein(&["list", "--json"]).ok().to_owned();
    let state = std::fs::read_to_string(rein.state_dir().join("state.json")).unwrap_or_default();
    (list, state)
}

fn server(pair: &HostPair, port: u16) -> Server {
    Server::start(
        pair.server(),
        &pair.link.server_addr,
        port,
        Duration::from_secs(60),
    )
    .unwrap()
}

fn options(reverse: bool) -> ClientOptions {
    ClientOptions {
        seconds: 4,
        omit: 1,
        reverse,
        ..ClientOptions::default()
    }
}

/// An iperf3 client in `cgroup` (or in the client namespace only, without one) to `pair`'s
/// server on `port`, started now.
fn client(pair: &HostPair, port: u16, cgroup: Option<&Path>, opts: &ClientOptions) -> Running {
    let argv = pair
        .client()
        .exec(&iperf::client_argv(&pair.link.server_addr, port, opts));
    let timeout = Duration::from_secs(30);
    match cgroup {
        Some(cgroup) => in_cgroup(cgroup, &argv, timeout).spawn().unwrap(),
        None => Cmd::new(argv, timeout).spawn().unwrap(),
    }
}

fn finish(child: Running, reverse: bool) -> Measured {
    let out = child.wait().unwrap();
    assert!(out.status.success(), "iperf3 failed:\n{out}");
    iperf::parse(&out.stdout, false, reverse).unwrap()
}

/// Clients started together; their results in order.
fn together(clients: Vec<Running>, reverse: bool) -> Vec<Measured> {
    clients.into_iter().map(|c| finish(c, reverse)).collect()
}

fn sum(results: &[Measured]) -> f64 {
    results.iter().map(|r| r.received_bps).sum()
}

fn retransmits(results: &[Measured]) -> u64 {
    results.iter().filter_map(|r| r.retransmits).sum()
}

fn member_passed_bytes(group: &Value, path: &str) -> u64 {
    group["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str() == Some(path))
        .and_then(|m| m["egress"]["passed_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no member {path} in {group}"))
}

/// Two cgroups in one shared egress limit: two flows together hold at the limit, one alone gets
/// all of it; a new rate keeps the group and its counts; a member taken out is free again.
#[test]
fn two_cgroups_share_one_egress_limit() {
    let _traffic = traffic();
    let rein = instance();
    let pair = HostPair::create("rsh").unwrap();
    let (a, b) = (rein.cgroup("a"), rein.cgroup("b"));
    let (a_rel, b_rel) = (rein.relative(&a), rein.relative(&b));
    let _servers = [server(&pair, PORT), server(&pair, PORT + 1)];
    let share = |rate: &str, members: &[&str]| {
        let mut args = vec!["share", "web", "--egress", rate];
        for member in members {
            args.extend(["--cgroup", member]);
        }
        rein.rein(&args).ok().to_owned()
    };
    let out = share("20mbit", &[&a_rel, &b_rel]);
    assert!(out.contains("shared limit web over 2 members"), "{out}");

    let both = together(
        vec![
            client(&pair, PORT, Some(&a), &options(false)),
            client(&pair, PORT + 1, Some(&b), &options(false)),
        ],
        false,
    );
    eprintln!("two flows: {} retransmissions", retransmits(&both));
    assert_near("two members together", sum(&both), 20e6, 0.80..=1.03);
    for result in &both {
        assert!(
            result.received_bps > 0.2 * 20e6,
            "one member starved: {both:?}"
        );
    }
    let alone = finish(client(&pair, PORT, Some(&a), &options(false)), false);
    assert_near("one member alone", alone.received_bps, 20e6, 0.85..=1.03);

    // A new rate: the same group, its members' counts go on.
    let before = group_named(&rein, "web").unwrap();
    share("40mbit", &[&a_rel, &b_rel]);
    let after = group_named(&rein, "web").unwrap();
    assert_eq!(before["group"], after["group"], "the group was re-made");
    assert!(
        member_passed_bytes(&after, &a_rel) >= member_passed_bytes(&before, &a_rel),
        "counts reset: {before} then {after}"
    );
    assert_eq!(after["egress"]["rate_bits_per_second"], 40_000_000);
    let faster = finish(client(&pair, PORT + 1, Some(&b), &options(false)), false);
    assert_near(
        "a member at the new rate",
        faster.received_bps,
        40e6,
        0.85..=1.03,
    );

    // b leaves: unlimited again, and only a is left in the group.
    share("40mbit", &[&a_rel]);
    let left = group_named(&rein, "web").unwrap();
    assert_eq!(left["members"].as_array().unwrap().len(), 1, "{left}");
    let free = finish(client(&pair, PORT + 1, Some(&b), &options(false)), false);
    assert!(
        free.received_bps > 4.0 * 40e6,
        "a member taken out is still limited: {:.1} Mbit/s",
        free.received_bps / 1e6
    );

    rein.rein(&["unshare", "web"]).ok();
    assert!(shared(&rein).is_empty());
}

/// Two network namespaces (pods) in one shared egress limit: their flows together hold at it.
#[test]
fn two_namespaces_share_one_egress_limit() {
    let _traffic = traffic();
    let rein = instance();
    let (one, two) = (
        HostPair::create("rsn").unwrap(),
        HostPair::create("rsm").unwrap(),
    );
    let _servers = [server(&one, PORT), server(&two, PORT)];
    rein.rein(&[
        "share",
        "pods",
        "--egress",
        "20mbit",
        "--netns",
        &one.client().path(),
        "--netns",
        &two.client().path(),
    ])
    .ok();
    let both = together(
        vec![
            client(&one, PORT, None, &options(false)),
            client(&two, PORT, None, &options(false)),
        ],
        false,
    );
    eprintln!("two pods: {} retransmissions", retransmits(&both));
    assert_near("two pods together", sum(&both), 20e6, 0.80..=1.03);
    let group = group_named(&rein, "pods").unwrap();
    for member in group["members"].as_array().unwrap() {
        assert_eq!(member["kind"], "netns", "{member}");
        assert!(
            member["egress"]["passed_bytes"].as_u64().unwrap() > 1_000_000,
            "a pod's own traffic went uncounted: {member}"
        );
    }
    rein.rein(&["unshare", "pods"]).ok();
}

/// Downloads into two cgroups under one shared ingress limit: both go through the group's one
/// queue (the members' windows held at their share), so the sum holds. The figures and
/// retransmissions are printed.
#[test]
fn a_shared_ingress_limit_holds_the_sum_of_two_downloads() {
    let _traffic = traffic();
    let rein = instance();
    let pair = HostPair::create("rsi").unwrap();
    let (a, b) = (rein.cgroup("a"), rein.cgroup("b"));
    let _servers = [server(&pair, PORT), server(&pair, PORT + 1)];
    // rein runs in the client's namespace, where downloads arrive and the group's queue must be.
    rein.rein_in(
        pair.client().name(),
        &[
            "share",
            "down",
            "--ingress",
            "20mbit",
            "--cgroup",
            &rein.relative(&a),
            "--cgroup",
            &rein.relative(&b),
        ],
    )
    .ok();
    let both = together(
        vec![
            client(&pair, PORT, Some(&a), &options(true)),
            client(&pair, PORT + 1, Some(&b), &options(true)),
        ],
        true,
    );
    eprintln!(
        "two downloads: {:.1} Mbit/s, {} retransmissions",
        sum(&both) / 1e6,
        retransmits(&both)
    );
    assert_near("two downloads together", sum(&both), 20e6, 0.85..=1.03);
    assert!(retransmits(&both) <= 20, "{both:?}");
    let alone = finish(client(&pair, PORT, Some(&a), &options(true)), true);
    eprintln!(
        "one download alone: {:.1} Mbit/s, {} retransmissions",
        alone.received_bps / 1e6,
        alone.retransmits.unwrap_or(0)
    );
    assert_near("one download alone", alone.received_bps, 20e6, 0.85..=1.03);
}

/// `rein reload` keeps a shared limit: the same group and members, and it still holds.
#[test]
fn reload_keeps_the_group() {
    let _traffic = traffic();
    let rein = instance();
    let pair = HostPair::create("rsr").unwrap();
    let a = rein.cgroup("a");
    let _server = server(&pair, PORT);
    rein.rein(&[
        "share",
        "kept",
        "--egress",
        "20mbit",
        "--cgroup",
        &rein.relative(&a),
    ])
    .ok();
    let before = group_named(&rein, "kept").unwrap();
    rein.rein(&["reload"]).ok();
    let after = group_named(&rein, "kept").unwrap();
    assert_eq!(before["group"], after["group"]);
    assert_eq!(before["members"].as_array().unwrap().len(), 1);
    let result = finish(client(&pair, PORT, Some(&a), &options(false)), false);
    assert_near("after a reload", result.received_bps, 20e6, 0.85..=1.03);
}

/// Bad input: one line naming the problem, a failing exit, and nothing changed.
#[test]
fn bad_input_changes_nothing() {
    let rein = instance();
    let (a, b) = (rein.cgroup("a"), rein.cgroup("b"));
    let inner = rein.cgroup("b/inner");
    let (a_rel, b_rel, inner_rel) = (rein.relative(&a), rein.relative(&b), rein.relative(&inner));
    let namespace = rein_testkit::netns::Netns::create("rsbad").unwrap();
    let namespace_path = namespace.path();
    // Nothing there yet: refused, and no trace of rein.
    for (args, needle) in [
        (
            vec!["share", "Web", "--egress", "1mbit", "--cgroup", &a_rel],
            "invalid shared limit name",
        ),
        (
            vec!["share", "web", "--egress", "1mbit"],
            "--cgroup, --pid or --netns",
        ),
        (
            vec!["share", "web", "--cgroup", &a_rel],
            "--egress or --ingress",
        ),
        (
            vec!["share", "web", "--ingress-burst", "10k", "--cgroup", &a_rel],
            "--ingress-burst needs --ingress",
        ),
        (
            vec!["share", "web", "--egress", "fast", "--cgroup", &a_rel],
            "--egress",
        ),
        (
            vec![
                "share",
                "web",
                "--egress",
                "1mbit",
                "--cgroup",
                "/no-such-cgroup-xyz",
            ],
            "no cgroup",
        ),
        (
            vec!["share", "web", "--egress", "1mbit", "--cgroup", "/"],
            "root",
        ),
        (
            vec![
                "share",
                "web",
                "--egress",
                "1mbit",
                "--netns",
                "/run/netns/no-such-ns-xyz",
            ],
            "no-such-ns-xyz",
        ),
        (
            vec!["share", "web", "--egress", "1mbit", "--pid", "0"],
            "--pid",
        ),
        (
            vec![
                "share", "web", "--egress", "1mbit", "--cgroup", &b_rel, "--cgroup", &inner_rel,
            ],
            "charged twice",
        ),
        (
            vec![
                "share",
                "web",
                "--ingress",
                "1mbit",
                "--cgroup",
                &a_rel,
                "--netns",
                &namespace_path,
            ],
            "ingress limit of its own",
        ),
        (vec!["unshare", "web"], "no shared limit web"),
    ] {
        let out = rein.rein(&args);
        let message = out.refused(&[needle]);
        assert_eq!(message.trim().lines().count(), 1, "not one line: {message}");
        rein.assert_no_trace(&format!("`rein {}`", args.join(" ")));
    }
    // With limits in place: a member limited elsewhere is refused, and nothing moves.
    rein.rein(&["set", "--cgroup", &a_rel, "--egress", "5mbit"])
        .ok();
    rein.rein(&["share", "one", "--egress", "10mbit", "--cgroup", &b_rel])
        .ok();
    let before = snapshot(&rein);
    for (args, needle) in [
        (
            vec!["share", "two", "--egress", "1mbit", "--cgroup", &a_rel],
            "rein set --cgroup",
        ),
        (
            vec!["share", "two", "--egress", "1mbit", "--cgroup", &b_rel],
            "shared limit one",
        ),
        (
            vec![
                "share", "one", "--egress", "1mbit", "--cgroup", &b_rel, "--cgroup", &a_rel,
            ],
            "limit of its own",
        ),
        (
            vec!["set", "--cgroup", &b_rel, "--egress", "1mbit"],
            "shared limit one",
        ),
    ] {
        rein.rein(&args).refused(&[needle]);
        assert_eq!(
            snapshot(&rein),
            before,
            "`rein {}` changed something",
            args.join(" ")
        );
    }
    rein.rein(&["unshare", "one"]).ok();
    rein.rein(&["unset", "--cgroup", &a_rel]).ok();
}

/// A `SharedLimit` in a file: apply makes it (members by glob),
/// a second apply changes nothing, a new rate changes it in place, delete removes it.
#[test]
fn a_shared_limit_is_applied_changed_and_deleted_from_a_file() {
    let rein = instance();
    let (a, b) = (rein.cgroup("pod-a"), rein.cgroup("pod-b"));
    let prefix = rein.relative(&a).trim_end_matches("pod-a").to_owned();
    let files = Files::new("shared");
    let write = |rate: &str| {
        files.write(
            "shared.yaml",
            &format!(
                "apiVersion: rein.dev/v1alpha1\nkind: SharedLimit\nmetadata:\n  name: pods\nspec:\n  cgroups:\n    - \"{prefix}pod-*\"\n  egress:\n    rate: {rate}\n"
            ),
        )
    };
    let file = write("10mbit");
    let path = file.as_str();
    rein.rein(&["apply", "-f", path]).ok();
    let group = group_named(&rein, "pods").expect("applied");
    assert_eq!(group["declared_by"], "pods");
    let members: Vec<&str> = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(members.len(), 2, "{group}");
    assert!(
        members.contains(&rein.relative(&a).as_str())
            && members.contains(&rein.relative(&b).as_str())
    );
    // Unchanged: nothing to do.
    let diff = rein.rein(&["diff", "-f", path]);
    assert_eq!(diff.status.code(), Some(0), "{diff}");
    // By hand it is the file's.
    rein.rein(&[
        "share",
        "pods",
        "--egress",
        "1mbit",
        "--cgroup",
        &rein.relative(&a),
    ])
    .refused(&["SharedLimit pods"]);
    let file = write("30mbit");
    rein.rein(&["apply", "-f", &file]).ok();
    let changed = group_named(&rein, "pods").unwrap();
    assert_eq!(changed["group"], group["group"]);
    assert_eq!(changed["egress"]["rate_bits_per_second"], 30_000_000);
    let got = rein.rein(&["get", "sharedlimit", "-o", "json"]);
    assert!(got.ok().contains("\"pods\""), "{got}");
    rein.rein(&["delete", "-f", &file]).ok();
    assert!(shared(&rein).is_empty());
}

/// A member whose cgroup goes leaves the limit at the next command; the limit and its other
/// member stay. A member namespace that goes leaves the same way.
#[test]
fn a_vanished_member_leaves_its_shared_limit() {
    let rein = instance();
    let (a, b) = (rein.cgroup("a"), rein.cgroup("b"));
    let pair = HostPair::create("rsg").unwrap();
    let gone = HostPair::create("rsh").unwrap();
    rein.rein(&[
        "share",
        "gc",
        "--egress",
        "10mbit",
        "--cgroup",
        &rein.relative(&a),
        "--cgroup",
        &rein.relative(&b),
        "--netns",
        &pair.client().path(),
        "--netns",
        &gone.client().path(),
    ])
    .ok();
    assert_eq!(
        group_named(&rein, "gc").unwrap()["members"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    std::fs::remove_dir(&b).unwrap();
    drop(gone);
    let group = group_named(&rein, "gc").unwrap();
    let members: Vec<String> = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        members,
        [rein.relative(&a), pair.client().path()],
        "the vanished members are still listed"
    );
    rein.rein(&["unshare", "gc"]).ok();
}
