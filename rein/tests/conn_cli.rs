//! End-to-end tests of `rein conn` (issue 13): rules on the connections processes open, real
//! connects from inside throwaway network namespaces, what the rules' counters show, and what
//! bad input and removal leave behind.
//!
//! A rule for every process applies to the whole machine (the programs sit at the cgroup v2
//! root), so each test's rules name addresses of 198.18.13.240-254 and fd00:13::/64 that no
//! other test uses (the testkit's host pairs take .1, .2 and .10-.209 of a /24), one address per
//! test, and the clients and servers of a test live in namespaces of its own, each server on
//! its namespace's loopback. Clients are threads of this process that entered a namespace
//! (a network namespace is per thread), or, for the cgroup-scoped rule, curl in a cgroup. Needs
//! root, a bpffs at /sys/fs/bpf and curl.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_links,
};
use rein_testkit::{
    cgroup::in_cgroup,
    connect::{self, Connects, Reply, Server},
    netns::Netns,
    process::{one_at_a_time, wait_until},
    rein_instance::ReinInstance,
};
use serde_json::Value;

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

// ---------------------------------------------------------------------------
// Namespaces, servers and clients
// ---------------------------------------------------------------------------

/// A namespace of the test's own with `addresses` on its loopback.
fn namespace(addresses: &[&str]) -> Netns {
    Netns::with_loopback("rcn", addresses).unwrap()
}

/// A server on `ip` in `ns` that answers curl.
fn listen(ns: &Netns, ip: &str) -> Server {
    Server::start(ns, &[SocketAddr::new(ip.parse().unwrap(), 0)], Reply::Http).unwrap()
}

/// What an exact token bucket of `per_second` and `burst`, full at the first attempt, lets
/// through of `attempts`: the limit the client's own pace allows (a client preempted while the
/// bucket is full loses what would have come over the burst).
fn model_allowed(attempts: &[Instant], per_second: f64, burst: f64) -> u64 {
    let Some(&start) = attempts.first() else {
        return 0;
    };
    let (mut tokens, mut last, mut allowed) = (burst, start, 0);
    for &at in attempts {
        tokens = (tokens + (at - last).as_secs_f64() * per_second).min(burst);
        last = at;
        if tokens >= 1.0 {
            tokens -= 1.0;
            allowed += 1;
        }
    }
    allowed
}

fn connect_for(ns: &Netns, addr: SocketAddr, period: Duration, max: u64) -> Connects {
    connect::connect_for(ns, addr, period, max).unwrap()
}

fn connect_n(ns: &Netns, addr: SocketAddr, n: u64) -> Connects {
    connect::connect_n(ns, addr, n).unwrap()
}

/// Only ECONNREFUSED, each at once: under 50 ms, the time the thread waited for a CPU not
/// counted.
fn assert_clean(what: &str, seen: &Connects) {
    assert!(seen.other.is_empty(), "{what}: other failures: {seen:?}");
    assert!(
        seen.slowest_refusal < Duration::from_millis(50),
        "{what}: a refusal took {:?}: {seen:?}",
        seen.slowest_refusal
    );
}

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

/// `rein conn add <args>`; returns the new rule's id.
fn add(rein: &ReinInstance, args: &[&str]) -> u32 {
    let mut full = vec!["conn", "add"];
    full.extend_from_slice(args);
    let out = rein.rein(&full);
    out.added_rule_id()
}

/// Every outbound rule `rein conn list --json` shows.
fn rules(rein: &ReinInstance) -> Vec<Value> {
    let out = rein.rein(&["conn", "list", "--json"]);
    let listed: Value = serde_json::from_str(out.ok())
        .unwrap_or_else(|e| panic!("`rein conn list --json` is not JSON ({e}):\n{out}"));
    listed["outbound"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"outbound\" array in {listed}"))
        .clone()
}

/// Rule `id` as `rein conn list --json` shows it.
fn rule(rein: &ReinInstance, id: u32) -> Value {
    rules(rein)
        .into_iter()
        .find(|r| r["id"].as_u64() == Some(u64::from(id)))
        .unwrap_or_else(|| panic!("rule {id} is not listed"))
}

fn counter(value: &Value, name: &str) -> u64 {
    value[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {value}"))
}

/// The ids of the links pinned under the instance's pin directory.
fn pinned_link_ids(dir: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(pinned) = PinnedLink::from_pin(&path) {
                ids.push(FdLink::from(pinned).info().unwrap().id());
            }
        }
    }
    ids
}

fn live_link_ids() -> BTreeSet<u32> {
    loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .collect()
}

/// Purges the instance and checks it left nothing: no pins, no state, and none of its links.
fn purge_leaves_nothing(rein: &ReinInstance) {
    let links = pinned_link_ids(&rein.pin_dir());
    assert!(
        !links.is_empty(),
        "no links pinned under {:?}",
        rein.pin_dir()
    );
    let out = rein.rein(&["purge"]);
    assert!(out.ok().contains("purged"), "{out}");
    rein.assert_no_trace("purge");
    let gone = wait_until(Duration::from_secs(3), || {
        let live = live_link_ids();
        links.iter().all(|id| !live.contains(id))
    });
    assert!(gone, "links {links:?} outlive the purge");
}

/// A rate of `per_second` with `burst` that started full lets `burst` through at once and
/// `per_second` a second after: within 5% of what an exact bucket lets through of the same
/// attempts (`burst + per_second * seconds` when the client never paused for longer than the
/// burst lasts), and never 5% over that.
fn assert_rate(what: &str, seen: &Connects, per_second: f64, burst: f64, seconds: f64) {
    let ideal = burst + per_second * seconds;
    let model = model_allowed(&seen.attempts, per_second, burst) as f64;
    let allowed = seen.allowed as f64;
    eprintln!(
        "{what}: {allowed} allowed; an exact bucket: {model} of these attempts, {ideal} at most"
    );
    assert!(
        (allowed - model).abs() <= (model * 0.05).max(1.0),
        "{what}: {allowed} allowed, the model {model} ± 5%: {seen:?}"
    );
    assert!(
        allowed <= ideal * 1.05,
        "{what}: {allowed} allowed, over {ideal} + 5%: {seen:?}"
    );
    assert!(seen.refused > 0, "{what}: nothing refused: {seen:?}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 100/s with a burst of 20 against a client that connects as fast as it can for 2 s: 20 + 200
/// through, the rest refused at once with ECONNREFUSED; the rule's counters are what the client
/// saw; another destination is untouched; deleting the rule frees the connects; a purge
/// leaves nothing.
#[test]
fn a_rate_limits_new_connections_and_refuses_at_once() {
    let _timed = one_at_a_time();
    let rein = instance();
    let ns = namespace(&["198.18.13.241/32", "198.18.13.251/32"]);
    let limited = listen(&ns, "198.18.13.241");
    let other = listen(&ns, "198.18.13.251");
    let dst = format!("198.18.13.241:{}", limited.port());
    let id = add(&rein, &["--dst", &dst, "--rate", "100/s", "--burst", "20"]);
    let listed = rule(&rein, id);
    assert_eq!(listed["tokens"].as_u64(), Some(20), "{listed}");

    let seen = connect_for(&ns, limited.addr(), Duration::from_secs(2), 1_000_000);
    eprintln!("100/s burst 20 for 2 s: {seen:?}");
    assert_clean("100/s", &seen);
    assert_rate("100/s", &seen, 100.0, 20.0, 2.0);
    let listed = rule(&rein, id);
    assert_eq!(counter(&listed, "allowed"), seen.allowed, "{listed}");
    assert_eq!(counter(&listed, "refused"), seen.refused, "{listed}");
    assert_eq!(counter(&listed, "refused_table_full"), 0, "{listed}");

    let untouched = connect_n(&ns, other.addr(), 300);
    assert_eq!(
        (untouched.allowed, untouched.refused),
        (300, 0),
        "{untouched:?}"
    );

    // Also by `rein list`, table and JSON.
    let out = rein.rein(&["list"]);
    assert!(out.ok().contains(&dst), "{out}");
    let out = rein.rein(&["list", "--json"]);
    let all: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(all["conn"][0]["id"].as_u64(), Some(u64::from(id)), "{out}");

    rein.rein(&["conn", "del", &id.to_string()]).ok();
    let free = connect_n(&ns, limited.addr(), 300);
    assert_eq!((free.allowed, free.refused), (300, 0), "{free:?}");
    assert!(rules(&rein).is_empty());
    // The last rule took the programs and maps with it.
    assert!(pinned_link_ids(&rein.pin_dir()).is_empty());

    add(&rein, &["--dst", &dst, "--rate", "100/s"]);
    purge_leaves_nothing(&rein);
    let free = connect_n(&ns, limited.addr(), 300);
    assert_eq!((free.allowed, free.refused), (300, 0), "{free:?}");
}

/// The same for IPv6, and for an IPv6 socket that connects to an IPv4 address (`::ffff:a.b.c.d`),
/// which an IPv4 rule covers.
#[test]
fn ipv6_and_v4_mapped_destinations_are_limited_too() {
    let _timed = one_at_a_time();
    let rein = instance();
    let ns = namespace(&["fd00:13::242/128", "198.18.13.242/32"]);
    let v6 = listen(&ns, "fd00:13::242");
    let v4 = listen(&ns, "198.18.13.242");
    add(
        &rein,
        &[
            "--dst",
            "fd00:13::242",
            "--proto",
            "tcp",
            "--rate",
            "100/s",
            "--burst",
            "20",
        ],
    );
    add(
        &rein,
        &[
            "--dst",
            "198.18.13.242/32",
            "--rate",
            "100/s",
            "--burst",
            "20",
        ],
    );
    let mapped: SocketAddr = format!("[::ffff:198.18.13.242]:{}", v4.port())
        .parse()
        .unwrap();
    for (what, addr) in [("IPv6", v6.addr()), ("v4-mapped", mapped)] {
        let seen = connect_for(&ns, addr, Duration::from_secs(2), 1_000_000);
        eprintln!("{what}, 100/s burst 20 for 2 s: {seen:?}");
        assert_clean(what, &seen);
        assert_rate(what, &seen, 100.0, 20.0, 2.0);
    }
}

/// `--per-caller`: each caller network namespace has a budget of its own, and `list` shows
/// each caller by its namespace's cookie.
#[test]
fn each_caller_namespace_gets_its_own_budget() {
    let _timed = one_at_a_time();
    let rein = instance();
    let (a, b) = (
        namespace(&["198.18.13.243/32"]),
        namespace(&["198.18.13.243/32"]),
    );
    let (server_a, server_b) = (listen(&a, "198.18.13.243"), listen(&b, "198.18.13.243"));
    let id = add(
        &rein,
        &[
            "--dst",
            "198.18.13.243",
            "--rate",
            "10/s",
            "--burst",
            "5",
            "--per-caller",
        ],
    );
    let (seen_a, seen_b) = thread::scope(|scope| {
        let first =
            scope.spawn(|| connect_for(&a, server_a.addr(), Duration::from_secs(1), 100_000));
        let second =
            scope.spawn(|| connect_for(&b, server_b.addr(), Duration::from_secs(1), 100_000));
        (first.join().unwrap(), second.join().unwrap())
    });
    eprintln!("per caller, 10/s burst 5 for 1 s: {seen_a:?} {seen_b:?}");
    for (what, seen) in [("caller a", &seen_a), ("caller b", &seen_b)] {
        assert_clean(what, seen);
        // 5 + 10 each: a shared bucket would have let 15 through in all.
        assert_rate(what, seen, 10.0, 5.0, 1.0);
    }
    let listed = rule(&rein, id);
    assert_eq!(counter(&listed, "allowed"), seen_a.allowed + seen_b.allowed);
    assert_eq!(counter(&listed, "refused"), seen_a.refused + seen_b.refused);
    let callers = listed["top_callers"].as_array().unwrap();
    assert_eq!(callers.len(), 2, "{listed}");
    for (ns, seen) in [(&a, &seen_a), (&b, &seen_b)] {
        let cookie = rein::platform::netns::cookie_of(Path::new(&ns.path())).unwrap();
        let caller = callers
            .iter()
            .find(|c| c["netns"].as_u64() == Some(cookie))
            .unwrap_or_else(|| panic!("no caller {cookie} in {listed}"));
        assert_eq!(counter(caller, "allowed"), seen.allowed, "{listed}");
        assert_eq!(counter(caller, "refused"), seen.refused, "{listed}");
    }
    // The same rule scoped to namespace a alone: b is free.
    rein.rein(&["conn", "del", &id.to_string()]).ok();
    let netns_a = a.path();
    add(
        &rein,
        &[
            "--dst",
            "198.18.13.243",
            "--rate",
            "1/min",
            "--burst",
            "2",
            "--netns",
            &netns_a,
        ],
    );
    let seen_a = connect_n(&a, server_a.addr(), 10);
    let seen_b = connect_n(&b, server_b.addr(), 10);
    assert_eq!((seen_a.allowed, seen_a.refused), (2, 8), "{seen_a:?}");
    assert_eq!((seen_b.allowed, seen_b.refused), (10, 0), "{seen_b:?}");
}

/// The fill form: 5 to start with, 2 more at each 1 s boundary, never more than 5.
#[test]
fn the_fill_form_fills_at_interval_boundaries() {
    let _timed = one_at_a_time();
    let rein = instance();
    let ns = namespace(&["198.18.13.244/32"]);
    let server = listen(&ns, "198.18.13.244");
    let id = add(
        &rein,
        &[
            "--dst",
            "198.18.13.244",
            "--proto",
            "tcp",
            "--max-tokens",
            "5",
            "--tokens-per-fill",
            "2",
            "--fill-interval",
            "1s",
        ],
    );
    let first = connect_n(&ns, server.addr(), 12);
    // Just after the next boundary the bucket holds two, and holds two until the one after.
    let filled = wait_until(Duration::from_millis(1500), || {
        rule(&rein, id)["tokens"].as_u64() != Some(0)
    });
    assert!(filled, "no fill within 1.5 s: {}", rule(&rein, id));
    assert_eq!(rule(&rein, id)["tokens"].as_u64(), Some(2));
    let second = connect_n(&ns, server.addr(), 12);
    // Three or four boundaries: 6 or 8 tokens, of which the bucket holds 5.
    thread::sleep(Duration::from_millis(3500));
    let third = connect_n(&ns, server.addr(), 12);
    for (what, seen, expected) in [
        ("full", &first, 5),
        ("one fill", &second, 2),
        ("capped", &third, 5),
    ] {
        assert_clean(what, seen);
        assert_eq!(
            (seen.allowed, seen.refused),
            (expected, 12 - expected),
            "{what}"
        );
    }
    let listed = rule(&rein, id);
    assert_eq!(counter(&listed, "allowed"), 12, "{listed}");
    assert_eq!(counter(&listed, "refused"), 24, "{listed}");
    assert_eq!(listed["tokens"].as_u64(), Some(0), "{listed}");
}

/// `--cgroup`: the processes of the cgroup (and below it) are limited, others are not; a rule
/// whose cgroup is removed goes with it.
#[test]
fn a_cgroup_rule_limits_that_cgroup_only() {
    let _timed = one_at_a_time();
    let rein = instance();
    let ns = namespace(&["198.18.13.245/32"]);
    let server = listen(&ns, "198.18.13.245");
    let cgroup = rein.cgroup("conn/child");
    let parent = cgroup.parent().unwrap().to_path_buf();
    let relative = rein.relative(&parent);
    let id = add(
        &rein,
        &[
            "--dst",
            &format!("198.18.13.245:{}", server.port()),
            "--max-tokens",
            "3",
            "--tokens-per-fill",
            "1",
            "--fill-interval",
            "1h",
            "--cgroup",
            &relative,
        ],
    );
    let listed = rule(&rein, id);
    assert_eq!(listed["scope"]["path"].as_str(), Some(relative.as_str()));
    let curls = |dir: &PathBuf| -> Vec<String> {
        let script = format!(
            "for i in 1 2 3 4 5 6; do curl -sS -o /dev/null --max-time 5 \
             http://198.18.13.245:{}/ 2>&1; echo \"exit $?\"; done",
            server.port()
        );
        let argv = [
            "nsenter".to_owned(),
            format!("--net={}", ns.path()),
            "sh".to_owned(),
            "-c".to_owned(),
            script,
        ];
        let out = in_cgroup(dir, &argv, Duration::from_secs(60))
            .run()
            .unwrap();
        out.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("exit "))
            .map(str::to_owned)
            .collect()
    };
    // In a child of the cgroup: three through, then curl's "failed to connect" (7).
    let exits = curls(&cgroup);
    assert_eq!(exits, ["0", "0", "0", "7", "7", "7"]);
    // A thread of this process is not in it.
    let outside = connect_n(&ns, server.addr(), 10);
    assert_eq!((outside.allowed, outside.refused), (10, 0), "{outside:?}");
    let listed = rule(&rein, id);
    assert_eq!(
        (counter(&listed, "allowed"), counter(&listed, "refused")),
        (3, 3)
    );
    // The cgroup goes: so does its rule, at the next command.
    assert!(rein_testkit::cgroup::remove_tree(&parent));
    assert!(rules(&rein).is_empty());
}

/// Bad input: one line naming the problem, a non-zero exit, and nothing changed.
#[test]
fn bad_input_changes_nothing() {
    let _timed = one_at_a_time();
    let rein = instance();
    let dst = "198.18.13.246";
    let id = add(&rein, &["--dst", dst, "--rate", "5/s"]);
    let before = rules(&rein);
    let state = fs::read_to_string(rein.state_dir().join("state.json")).unwrap();
    let missing_cgroup = format!("/{}-no-such-cgroup", rein.name());
    let fill = [
        "--max-tokens",
        "5",
        "--tokens-per-fill",
        "2",
        "--fill-interval",
    ];
    for (args, needles) in [
        (&["--dst", dst, "--rate", "0/s"][..], &["--rate"][..]),
        (
            &["--dst", dst, "--rate", "5/s", "--burst", "0"],
            &["burst of 0"],
        ),
        (
            &[
                "--dst", dst, fill[0], fill[1], fill[2], fill[3], fill[4], "0s",
            ],
            &["--fill-interval"],
        ),
        (
            &["--dst", dst, fill[0], "0", fill[2], fill[3], fill[4], "1s"],
            &["0 tokens"],
        ),
        (
            &[
                "--dst", dst, fill[0], "16777216", fill[2], fill[3], fill[4], "1s",
            ],
            &["16777216"],
        ),
        (
            &["--dst", dst, fill[0], fill[1], fill[2], "0", fill[4], "1s"],
            &["per fill"],
        ),
        (
            &["--dst", dst, "--rate", "5/s", fill[0], fill[1]],
            &["not both"],
        ),
        (&["--dst", dst], &["give --rate"]),
        (&["--dst", "198.18.13.246:0", "--rate", "5/s"], &["port"]),
        (
            &["--dst", "198.18.13.246:65536", "--rate", "5/s"],
            &["port"],
        ),
        (
            &["--dst", "198.18.13.246/24", "--rate", "5/s"],
            &["host bits"],
        ),
        (
            &["--dst", "198.18.13.300", "--rate", "5/s"],
            &["not an address"],
        ),
        (
            &[
                "--dst", dst, "--rate", "5/s", "--cgroup", "/x", "--netns", "/y",
            ],
            &["--cgroup or --netns"],
        ),
        (
            &["--dst", dst, "--rate", "5/s", "--cgroup", &missing_cgroup],
            &["no cgroup"],
        ),
        (
            &[
                "--dst",
                dst,
                "--rate",
                "5/s",
                "--netns",
                "/run/netns/rein-no-such-ns",
            ],
            &["no network namespace"],
        ),
        (
            &["--dst", dst, "--rate", "9/s"],
            &["already", &id.to_string()],
        ),
    ] {
        let mut full = vec!["conn", "add"];
        full.extend_from_slice(args);
        rein.rein(&full).refused(needles);
    }
    rein.rein(&["conn", "del", "9999"])
        .refused(&["no rein conn rule 9999"]);
    rein.rein(&["conn", "del", "x"]).refused(&["not a rule id"]);
    assert_eq!(rules(&rein), before);
    let after = fs::read_to_string(rein.state_dir().join("state.json")).unwrap();
    assert_eq!(after, state);
}

/// One id sequence for `rein net` and `rein conn`: an id names one rule of either kind.
#[test]
fn net_and_conn_rules_share_their_ids() {
    let _timed = one_at_a_time();
    let rein = instance();
    let ns = namespace(&[]);
    let first = add(&rein, &["--dst", "198.18.13.247", "--rate", "5/s"]);
    let out = rein.rein_in(
        ns.name(),
        &[
            "net", "add", "--dev", "lo", "--dir", "egress", "--rate", "10mbit",
        ],
    );
    let net_id: u32 = out.added_rule_id();
    let second = add(&rein, &["--dst", "198.18.13.248", "--rate", "5/s"]);
    assert_eq!((net_id, second), (first + 1, first + 2));
    rein.rein(&["net", "del", &first.to_string()])
        .refused(&["no rein net rule"]);
    rein.rein(&["conn", "del", &net_id.to_string()])
        .refused(&["limits traffic, not new connections"]);
    rein.rein(&["conn", "del", "9999"])
        .refused(&["no rein conn rule 9999"]);
    // A reload keeps the rules and their programs.
    rein.rein(&["reload"]).ok();
    assert_eq!(rules(&rein).len(), 2);
}

/// What the maps hold follows the state file: an entry no rule owns (a command that died
/// between its map writes and its save) goes at the next command, and a rule missing from the
/// maps (removed by hand) comes back with `reload`, limiting again.
#[test]
fn the_maps_follow_the_state_file() {
    use rein::capabilities::conn_limits::{
        datapath::ConnDatapath,
        spec::{ConnLimit, ConnRuleSpec, ConnScopeSpec},
    };
    let _timed = one_at_a_time();
    let rein = instance();
    let ns = namespace(&["198.18.13.249/32"]);
    let server = listen(&ns, "198.18.13.249");
    let id = add(
        &rein,
        &["--dst", "198.18.13.249", "--rate", "1/min", "--burst", "3"],
    );
    let library = rein.library_instance();
    let orphan = ConnRuleSpec {
        destination: "198.18.13.250".parse().unwrap(),
        protocol: None,
        scope: ConnScopeSpec::All,
        limit: ConnLimit::rate("1/min".parse().unwrap(), Some(1)).unwrap(),
        per_caller: false,
    };
    let mine = ConnRuleSpec {
        destination: "198.18.13.249".parse().unwrap(),
        limit: ConnLimit::rate("1/min".parse().unwrap(), Some(3)).unwrap(),
        ..orphan.clone()
    };
    {
        let mut datapath = ConnDatapath::open(&library).unwrap();
        datapath
            .put(9999, &[orphan.key()], orphan.specificity(), orphan.rule(0))
            .unwrap();
        // As if removed by hand.
        datapath.remove(id, &[mine.key()]);
        assert!(datapath.rule(id).is_none());
    }
    rein.rein(&["conn", "list"]).ok();
    let datapath = ConnDatapath::open(&library).unwrap();
    assert_eq!(
        datapath.rule_ids(),
        Vec::<u32>::new(),
        "the orphan outlived a command"
    );
    let free = connect_n(&ns, server.addr(), 5);
    assert_eq!((free.allowed, free.refused), (5, 0), "{free:?}");
    let out = rein.rein(&["reload"]);
    assert!(out.ok().contains("restored 1 rule"), "{out}");
    assert_eq!(datapath.rule_ids(), vec![id]);
    let seen = connect_n(&ns, server.addr(), 5);
    assert_eq!((seen.allowed, seen.refused), (3, 2), "{seen:?}");
}
