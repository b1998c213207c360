//! `rein trace` end to end: a trace started with a filter sees the UDP packets a cgroup limit
//! refuses, with the limit, direction and 5-tuple, and not another cgroup's; an unfiltered trace
//! sees both; a trace ended by SIGINT leaves the datapath's lease cleared, so the programs stop
//! building events; a trace shows the pacing and window clamps set on limited TCP flows; and it
//! shows the overflows of an ingress limit's queue, as the qdisc counts them; and it shows the
//! connects a connection limit refuses, with the rule, the caller and the destination, which
//! the connect programs write nothing of while no trace runs.
//!
//! Runs its own instance and namespaces (removed on drop, on failure too). Needs root, a bpffs
//! at /sys/fs/bpf, cgroup v2 and iperf3.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use aya::maps::{Array, Map, MapData, RingBuf};
use rein::clock::Clock;
use rein_common::abi::trace::{
    CONN_TRACE_EVENTS_MAP, CONN_TRACE_MAP, TRACE_BUDGET_MAP, TRACE_EVENTS_MAP, TRACE_MAP,
    TraceControl,
};
use rein_testkit::{
    cgroup::in_cgroup,
    connect::{self, Reply},
    iperf::{self, ClientOptions, PORT as IPERF3_PORT, Server},
    netns::HostPair,
    process::{Cmd, Output, Running, wait_until},
    rein_instance::ReinInstance,
};

/// The cgroup datapath's trace control, read from its pin.
fn trace_control(rein: &ReinInstance) -> TraceControl {
    let pin = rein.library_instance().maps_dir().join(TRACE_MAP);
    let map = Map::from_map_data(MapData::from_pin(&pin).unwrap()).unwrap();
    let control: Array<_, TraceControl> = Array::try_from(map).unwrap();
    control.get(&0, 0).unwrap()
}

/// `rein trace ARGS`, until signalled; killed on drop.
fn start_trace(rein: &ReinInstance, args: &[&str]) -> Running {
    rein.command()
        .arg("trace")
        .args(args)
        .timeout(Duration::from_secs(120))
        .spawn()
        .unwrap()
}

/// SIGINT, as Ctrl-C sends it, and the trace's output once it has exited.
fn interrupt(trace: Running) -> Output {
    // SAFETY: kill(2) with plain integers, to a child this test started and has not reaped.
    unsafe { libc::kill(trace.pid() as libc::pid_t, libc::SIGINT) };
    let output = trace.wait_within(Duration::from_secs(10)).unwrap();
    assert!(
        output.status.success(),
        "rein trace did not exit cleanly:\n{output}"
    );
    output
}

/// 2 s of UDP at 50 Mbit/s from `cgroup` in the client namespace to the server.
fn udp_flood(pair: &HostPair, cgroup: &Path) {
    let opts = ClientOptions {
        seconds: 2,
        udp_bitrate: Some("50M".into()),
        ..ClientOptions::default()
    };
    let argv = pair.client().exec(&iperf::client_argv(
        &pair.link.server_addr,
        IPERF3_PORT,
        &opts,
    ));
    let cmd = in_cgroup(cgroup, &argv, opts.timeout());
    iperf::run_client(&cmd, true, false).unwrap();
}

/// Two namespaces of the test's own joined by a veth pair, and an iperf3 server in the server's;
/// the server goes first on drop, then the namespaces.
fn pair_with_server(prefix: &str) -> (HostPair, Server) {
    let pair = HostPair::create(prefix).unwrap();
    let server = Server::start(
        pair.server(),
        &pair.link.server_addr,
        IPERF3_PORT,
        Duration::from_secs(120),
    )
    .unwrap();
    (pair, server)
}

#[test]
fn a_trace_shows_its_cgroups_refused_udp_and_clears_its_lease_on_sigint() {
    let rein = instance();
    let (pair, _server) = pair_with_server("rtr");
    let traced = rein.cgroup("traced");
    let other = rein.cgroup("other");
    let (traced_name, other_name) = (rein.relative(&traced), rein.relative(&other));
    for dir in [&traced, &other] {
        rein.rein(&[
            "set",
            "--cgroup",
            dir.to_str().unwrap(),
            "--egress",
            "5mbit",
        ])
        .ok();
    }
    assert_eq!(trace_control(&rein).until_ns, 0, "a lease before any trace");

    let filtered = start_trace(&rein, &["--cgroup", &traced_name, "--json"]);
    let everything = start_trace(&rein, &["--drops-only"]);
    assert!(
        wait_until(Duration::from_secs(10), || trace_control(&rein).until_ns
            != 0),
        "rein trace never took the lease"
    );
    udp_flood(&pair, &traced);
    udp_flood(&pair, &other);

    // The unfiltered trace saw both cgroups' refusals: the filter had something to leave out.
    let everything = interrupt(everything);
    for name in [&traced_name, &other_name] {
        let wanted = format!("refused egress cgroup {name} ");
        assert!(
            everything
                .stdout
                .lines()
                .any(|line| line.contains(&wanted) && line.contains(" udp ")),
            "no `{wanted}` line from the unfiltered trace:\n{everything}"
        );
    }
    // The filtered trace renews the lease under its own pid within a second; its exit clears it.
    std::thread::sleep(Duration::from_millis(1500));
    let filtered = interrupt(filtered);

    for (what, output) in [("--drops-only", &everything), ("--json", &filtered)] {
        let sample: Vec<&str> = output.stdout.lines().take(3).collect();
        eprintln!("rein trace {what}:\n{}", sample.join("\n"));
    }
    let destination = format!("{}:{IPERF3_PORT}", pair.link.server_addr);
    let mut refusals = 0;
    for line in filtered.stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{filtered}"));
        assert!(
            !line.contains(&other_name),
            "the --cgroup filter let another cgroup's event through: {line}"
        );
        if event["event"] == "refused" {
            assert_eq!(event["cgroup"], traced_name.as_str(), "{line}");
            assert_eq!(event["limit"], format!("cgroup {traced_name}"), "{line}");
            assert_eq!(event["direction"], "egress", "{line}");
            assert_eq!(event["protocol"], "udp", "{line}");
            assert_eq!(event["destination"], destination.as_str(), "{line}");
            let source = event["source"].as_str().unwrap();
            assert!(
                source.starts_with(&format!("{}:", pair.link.client_addr)),
                "{line}"
            );
            assert!(event["bytes"].as_u64().unwrap() > 1000, "{line}");
            refusals += 1;
        }
    }
    assert!(refusals > 100, "{refusals} refusals traced:\n{filtered}");
    assert_eq!(
        trace_control(&rein),
        TraceControl::default(),
        "SIGINT left the lease set"
    );
}

/// A limited TCP upload, then a download: the trace shows the pacing rate sock_ops sets on the
/// upload and the window clamp it sets on the download, each with the flow's addresses and
/// the limit's cgroup.
#[test]
fn a_trace_shows_pacing_and_window_changes_of_limited_tcp() {
    let rein = instance();
    let (pair, _server) = pair_with_server("rtw");
    let limited = rein.cgroup("tcp");
    let name = rein.relative(&limited);
    // In the client's namespace, where downloads arrive and their queue must be.
    rein.command_in_ns(pair.client())
        .args(["set", "--cgroup", limited.to_str().unwrap()])
        .args(["--egress", "10mbit", "--ingress", "10mbit"])
        .run()
        .unwrap();
    let trace = start_trace(&rein, &["--cgroup", &name, "--json"]);
    assert!(
        wait_until(Duration::from_secs(10), || trace_control(&rein).until_ns
            != 0),
        "rein trace never took the lease"
    );
    for reverse in [false, true] {
        let opts = ClientOptions {
            seconds: 2,
            reverse,
            ..ClientOptions::default()
        };
        let argv = pair.client().exec(&iperf::client_argv(
            &pair.link.server_addr,
            IPERF3_PORT,
            &opts,
        ));
        let cmd = in_cgroup(&limited, &argv, opts.timeout());
        iperf::run_client(&cmd, false, reverse).unwrap();
    }
    let output = interrupt(trace);
    let events: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let destination = format!("{}:{IPERF3_PORT}", pair.link.server_addr);
    let local = format!("{}:", pair.link.client_addr);
    for (kind, value) in [("pacing", "rate"), ("window", "window")] {
        let found: Vec<&serde_json::Value> = events
            .iter()
            .filter(|event| event["event"] == kind)
            .collect();
        eprintln!("{} {kind} events, first {:?}", found.len(), found.first());
        assert!(
            found.iter().any(|event| {
                event["cgroup"] == name.as_str()
                    && event["destination"] == destination.as_str()
                    && event["source"].as_str().unwrap().starts_with(&local)
                    && event[value].as_u64().unwrap() > 0
            }),
            "no {kind} event of the limited flows:\n{output}"
        );
    }
}

/// A flood of small UDP datagrams (64-byte payloads at 50 Mbit/s: about 97,000 packets a second
/// offered, nearly all refused) is more than the per-CPU budget of 10,000 events a second: the
/// trace prints at most that many refusals a second per CPU and says how many it skipped.
#[test]
fn a_flood_is_sampled_and_the_skipped_events_counted() {
    let rein = instance();
    let (pair, _server) = pair_with_server("rtf");
    let flooder = rein.cgroup("flood");
    rein.rein(&[
        "set",
        "--cgroup",
        flooder.to_str().unwrap(),
        "--egress",
        "1mbit",
    ])
    .ok();
    let trace = start_trace(&rein, &["--json", "--drops-only"]);
    assert!(
        wait_until(Duration::from_secs(10), || trace_control(&rein).until_ns
            != 0),
        "rein trace never took the lease"
    );
    let started = std::time::Instant::now();
    let opts = ClientOptions {
        seconds: 3,
        udp_bitrate: Some("50M".into()),
        length: Some(64),
        ..ClientOptions::default()
    };
    let argv = pair.client().exec(&iperf::client_argv(
        &pair.link.server_addr,
        IPERF3_PORT,
        &opts,
    ));
    let cmd = in_cgroup(&flooder, &argv, opts.timeout());
    let sent = iperf::run_client(&cmd, true, false).unwrap();
    // Past the next report of the skipped count (once a second).
    std::thread::sleep(Duration::from_millis(1500));
    let output = interrupt(trace);
    let seconds = started.elapsed().as_secs_f64();
    let (mut refused, mut skipped) = (0u64, 0u64);
    for line in output.stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        match event["event"].as_str() {
            Some("refused") => refused += 1,
            Some("skipped") => skipped += event["events"].as_u64().unwrap(),
            _ => panic!("an event --drops-only should leave out: {line}"),
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let most = 10_000.0 * cpus * (seconds + 1.0);
    eprintln!(
        "{refused} refusals traced and {skipped} skipped in {seconds:.1} s (at most {most:.0} \
         traced); iperf3: {sent:?}"
    );
    assert!(refused > 1000, "{refused} refusals traced");
    assert!(skipped > 0, "a flood with nothing skipped:\n{output}");
    assert!(
        (refused as f64) <= most,
        "{refused} refusals traced in {seconds:.1} s, over the budget"
    );
}

/// A `rein net` rule at tc ingress refusing UDP: a `--rule` trace shows its refusals with the
/// rule, the hook and the 5-tuple.
#[test]
fn a_trace_shows_a_net_rules_refusals() {
    let rein = instance();
    let (pair, _server) = pair_with_server("rtn");
    let port = IPERF3_PORT.to_string();
    let added = rein.rein_in(
        pair.server().name(),
        &[
            "net",
            "add",
            "--dev",
            &pair.link.server_if,
            "--dir",
            "ingress",
            "--dst",
            &pair.link.server_addr,
            "--proto",
            "udp",
            "--dport",
            &port,
            "--rate",
            "5mbit",
        ],
    );
    let id: u32 = added.added_rule_id();
    let trace = start_trace(&rein, &["--rule", &id.to_string(), "--json"]);
    let pin = rein
        .library_instance()
        .maps_dir()
        .join(rein_common::abi::trace::NET_TRACE_MAP);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let map = Map::from_map_data(MapData::from_pin(&pin).unwrap()).unwrap();
            let control: Array<_, TraceControl> = Array::try_from(map).unwrap();
            control.get(&0, 0).unwrap().until_ns != 0
        }),
        "rein trace never took the lease"
    );
    let opts = ClientOptions {
        seconds: 2,
        udp_bitrate: Some("50M".into()),
        ..ClientOptions::default()
    };
    let cmd = Cmd::new(
        pair.client().exec(&iperf::client_argv(
            &pair.link.server_addr,
            IPERF3_PORT,
            &opts,
        )),
        opts.timeout(),
    );
    iperf::run_client(&cmd, true, false).unwrap();
    let output = interrupt(trace);
    let destination = format!("{}:{IPERF3_PORT}", pair.link.server_addr);
    let refusals = output
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"] == "refused")
        .inspect(|event| {
            assert_eq!(event["rule"], id, "{event}");
            assert_eq!(event["limit"], format!("rule {id}"), "{event}");
            assert_eq!(event["direction"], "ingress", "{event}");
            assert_eq!(event["protocol"], "udp", "{event}");
            assert_eq!(event["destination"], destination.as_str(), "{event}");
            let source = event["source"].as_str().unwrap();
            assert!(
                source.starts_with(&format!("{}:", pair.link.client_addr)),
                "{event}"
            );
        })
        .count();
    assert!(refusals > 100, "{refusals} refusals traced:\n{output}");
}

/// The connect object's trace control, read from its pin.
fn conn_trace_control(rein: &ReinInstance) -> TraceControl {
    let pin = rein.library_instance().maps_dir().join(CONN_TRACE_MAP);
    let map = Map::from_map_data(MapData::from_pin(&pin).unwrap()).unwrap();
    let control: Array<_, TraceControl> = Array::try_from(map).unwrap();
    control.get(&0, 0).unwrap()
}

/// A connection limit with room for 2 connects a minute: 3 connects refused before a trace
/// start write nothing to the connect object's ring buffer; the 5 refused while a `--rule ID
/// --drops-only --json` trace runs are each shown with the rule, why, the calling process,
/// thread, its name and network namespace, and the destination; after the trace exits (its
/// lease cleared) a refused connect writes nothing again.
#[test]
fn a_trace_shows_refused_connects_with_rule_caller_and_destination() {
    let rein = instance();
    let ns = rein_testkit::netns::Netns::with_loopback("rtc", &["198.18.13.200/32"]).unwrap();
    let server =
        connect::Server::start(&ns, &["198.18.13.200:0".parse().unwrap()], Reply::Close).unwrap();
    let destination = server.addr().to_string();
    let added = rein.rein(&[
        "conn",
        "add",
        "--dst",
        &destination,
        "--rate",
        "1/min",
        "--burst",
        "2",
    ]);
    let id: u32 = added.added_rule_id();
    let events_pin = rein
        .library_instance()
        .maps_dir()
        .join(CONN_TRACE_EVENTS_MAP);
    let mut events =
        RingBuf::try_from(Map::from_map_data(MapData::from_pin(&events_pin).unwrap()).unwrap())
            .unwrap();
    let untraced = connect::connect_n(&ns, server.addr(), 5).unwrap();
    assert_eq!((untraced.allowed, untraced.refused), (2, 3), "{untraced:?}");
    assert!(
        events.next().is_none(),
        "a refused connect wrote an event with no trace running"
    );

    let trace = start_trace(
        &rein,
        &["--rule", &id.to_string(), "--drops-only", "--json"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || conn_trace_control(&rein)
            .until_ns
            != 0),
        "rein trace never took the connect object's lease"
    );
    // The caller as the kernel names it: this process, the thread that connects, its name.
    let (tid, comm, traced) = ns
        .run(|| {
            // SAFETY: a plain syscall without arguments.
            let tid = unsafe { libc::gettid() } as u64;
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            let refused = (0..5)
                .filter(|_| {
                    std::net::TcpStream::connect_timeout(&server.addr(), Duration::from_secs(2))
                        .is_err_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
                })
                .count();
            (tid, comm.trim_end().to_owned(), refused)
        })
        .unwrap();
    assert_eq!(traced, 5, "not every traced connect was refused");
    // What the trace read arrives within its 200 ms poll.
    std::thread::sleep(Duration::from_millis(500));
    let output = interrupt(trace);
    let cookie = rein::platform::netns::cookie_of(Path::new(&ns.path())).unwrap();
    let refusals: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"] == "refused-connect")
        .collect();
    assert_eq!(refusals.len(), 5, "{output}");
    for event in &refusals {
        assert_eq!(event["rule"], id, "{event}");
        assert_eq!(event["limit"], format!("rule {id}"), "{event}");
        assert_eq!(event["reason"], "no-token", "{event}");
        assert_eq!(event["pid"], std::process::id(), "{event}");
        assert_eq!(event["tid"], tid, "{event}");
        assert_eq!(event["comm"], comm.as_str(), "{event}");
        assert_eq!(event["netns"], cookie, "{event}");
        assert_eq!(event["protocol"], "tcp", "{event}");
        assert_eq!(event["destination"], destination.as_str(), "{event}");
    }

    assert_eq!(conn_trace_control(&rein), TraceControl::default());
    while events.next().is_some() {}
    let after = connect::connect_n(&ns, server.addr(), 1).unwrap();
    assert_eq!(after.refused, 1, "{after:?}");
    assert!(
        events.next().is_none(),
        "a refused connect wrote an event after the trace ended"
    );

    // The lease alone gates: with a budget but a lease just expired nothing is written, and
    // with the same lease in the future the refusal is.
    let mut control: Array<_, TraceControl> = Array::try_from(
        Map::from_map_data(
            MapData::from_pin(rein.library_instance().maps_dir().join(CONN_TRACE_MAP)).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let now = rein::clock::MonotonicClock.now_ns();
    for (until_ns, written) in [(now, false), (now + 3_000_000_000, true)] {
        let lease = TraceControl {
            until_ns,
            events_per_second: 10_000,
            pid: std::process::id(),
        };
        control.set(0, lease, 0).unwrap();
        let seen = connect::connect_n(&ns, server.addr(), 1).unwrap();
        assert_eq!(seen.refused, 1, "{seen:?}");
        assert_eq!(
            events.next().is_some(),
            written,
            "lease until {until_ns}, now {now}"
        );
    }
    control.set(0, TraceControl::default(), 0).unwrap();
}

/// A datapath installed by a rein from before `rein trace` has no trace maps: a trace says
/// what to do, and after `rein reload` (which creates them and swaps in programs that use
/// them) it runs. With nothing installed, a trace is refused and leaves nothing behind.
#[test]
fn a_datapath_without_trace_maps_gets_them_with_a_reload() {
    let rein = instance();
    rein.rein(&["trace"]).refused(&["nothing to trace"]);
    rein.assert_no_trace("`rein trace` with nothing installed");
    let app = rein.cgroup("app");
    rein.rein(&[
        "set",
        "--cgroup",
        app.to_str().unwrap(),
        "--egress",
        "10mbit",
    ])
    .ok();
    let maps = rein.library_instance().maps_dir();
    for name in [TRACE_MAP, TRACE_EVENTS_MAP, TRACE_BUDGET_MAP] {
        std::fs::remove_file(maps.join(name)).unwrap();
    }
    rein.rein(&["trace"])
        .refused(&["nothing to trace", "rein reload"]);
    rein.rein(&["reload"]).ok();
    let trace = start_trace(&rein, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || trace_control(&rein).until_ns
            != 0),
        "rein trace never took the lease after the reload"
    );
    interrupt(trace);
    assert_eq!(trace_control(&rein), TraceControl::default());
}

/// Whether process `pid` holds a BPF link on the `kfree_skb` raw tracepoint.
fn holds_kfree_skb_link(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_to_string(fd.path()).is_ok_and(|info| {
            info.lines()
                .any(|line| line == "link_type:\traw_tracepoint")
                && info.lines().any(|line| line == "tp_name:\tkfree_skb")
        })
    })
}

/// The drops `tc -s qdisc` counts on a queue device in `ns`.
fn queue_drops(ns: &rein_testkit::netns::Netns, device: &str) -> u64 {
    let output = Cmd::new(
        ns.exec(&["tc", "-s", "qdisc", "show", "dev", device]),
        Duration::from_secs(10),
    )
    .run()
    .unwrap();
    output
        .stdout
        .split_once("dropped ")
        .and_then(|(_, rest)| rest.split(',').next())
        .and_then(|dropped| dropped.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop count for {device}:\n{output}"))
}

/// TCP downloads into two cgroups under ingress limits, with QUEUE_STREAMS parallel streams
/// each: more at once than the queue (made small) holds, so its tbf drops. The trace filtered on
/// one cgroup shows that cgroup's overflows only, as many as the qdisc counted at most, with
/// the queue's device and the download's tuple; a `--drops-only` trace shows both cgroups'.
#[test]
fn a_trace_shows_queue_overflows_of_its_cgroups_ingress_limit() {
    const QUEUE_STREAMS: u32 = 64;
    let rein = instance();
    let (pair, _server) = pair_with_server("rtq");
    let other_port = IPERF3_PORT + 1;
    let _other_server = Server::start(
        pair.server(),
        &pair.link.server_addr,
        other_port,
        Duration::from_secs(120),
    )
    .unwrap();
    let traced = rein.cgroup("queued");
    let other = rein.cgroup("other");
    let (traced_name, other_name) = (rein.relative(&traced), rein.relative(&other));
    for dir in [&traced, &other] {
        rein.command_in_ns(pair.client())
            .args([
                "set",
                "--cgroup",
                dir.to_str().unwrap(),
                "--ingress",
                "20mbit",
            ])
            .run()
            .unwrap();
    }
    let instance = rein.library_instance();
    let device = |dir: &Path| {
        let id = std::fs::metadata(dir).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        rein::capabilities::ingress_queue::datapath::device_name(&instance, id.unwrap())
    };
    let (traced_device, other_device) = (device(&traced), device(&other));
    // A queue of rein's holds at least 2 MiB, and the windows rein clamps keep it far from full
    // (64 streams overflowed it in 1 run of 4): for the test it is cut to 30 kB at the same
    // rate, which 64 streams' first windows overflow every time.
    for name in [&traced_device, &other_device] {
        Cmd::new(
            pair.client().exec(&[
                "tc", "qdisc", "change", "dev", name, "root", "tbf", "rate", "20mbit", "burst",
                "64kb", "limit", "30kb",
            ]),
            Duration::from_secs(10),
        )
        .run()
        .unwrap();
        assert_eq!(queue_drops(pair.client(), name), 0);
    }
    let filtered = start_trace(&rein, &["--cgroup", &traced_name, "--json"]);
    let everything = start_trace(&rein, &["--drops-only", "--json"]);
    assert!(
        wait_until(Duration::from_secs(10), || trace_control(&rein).until_ns
            != 0),
        "rein trace never took the lease"
    );
    // Each trace holds its own link on the tracepoint (none is pinned: it goes with the trace).
    for trace in [&filtered, &everything] {
        assert!(
            wait_until(Duration::from_secs(10), || holds_kfree_skb_link(
                trace.pid()
            )),
            "rein trace never attached its queue overflow program"
        );
    }
    let downloads: Vec<_> = [(&traced, IPERF3_PORT), (&other, other_port)]
        .into_iter()
        .map(|(dir, port)| {
            let opts = ClientOptions {
                seconds: 3,
                reverse: true,
                streams: QUEUE_STREAMS,
                ..ClientOptions::default()
            };
            let argv = pair
                .client()
                .exec(&iperf::client_argv(&pair.link.server_addr, port, &opts));
            in_cgroup(dir, &argv, Duration::from_secs(60))
                .spawn()
                .unwrap()
        })
        .collect();
    for download in downloads {
        download.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (everything, filtered) = (interrupt(everything), interrupt(filtered));
    let (traced_drops, other_drops) = (
        queue_drops(pair.client(), &traced_device),
        queue_drops(pair.client(), &other_device),
    );
    let overflows = |output: &Output, device: &str| -> Vec<serde_json::Value> {
        output
            .stdout
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["event"] == "queue-overflow" && event["device"] == device)
            .collect()
    };
    let traced_seen = overflows(&filtered, &traced_device);
    let everything_seen = (
        overflows(&everything, &traced_device).len(),
        overflows(&everything, &other_device).len(),
    );
    eprintln!(
        "qdisc drops: {traced_device} {traced_drops}, {other_device} {other_drops}; traced \
         overflows: --cgroup {}, --drops-only {everything_seen:?}; first {:?}",
        traced_seen.len(),
        traced_seen.first()
    );
    assert!(
        traced_drops > 0 && other_drops > 0,
        "a queue never overflowed"
    );
    // Each drop is one event (far under the budget); a few may be lost by two readers of the
    // one ring buffer.
    let traced_count = traced_seen.len() as u64;
    assert!(
        traced_count <= traced_drops && traced_count * 10 >= traced_drops * 9,
        "{traced_count} overflows traced of {traced_drops} drops:\n{filtered}"
    );
    assert!(
        !filtered.stdout.contains(&other_device) && !filtered.stdout.contains(&other_name),
        "the --cgroup filter let another cgroup's overflow through:\n{filtered}"
    );
    assert!(
        everything_seen.0 > 0 && everything_seen.1 > 0,
        "the unfiltered trace missed a cgroup's overflows:\n{everything}"
    );
    let destination = format!("{}:", pair.link.client_addr);
    for event in &traced_seen {
        assert_eq!(event["cgroup"], traced_name.as_str(), "{event}");
        assert_eq!(event["protocol"], "tcp", "{event}");
        assert_eq!(
            event["source"],
            format!("{}:{IPERF3_PORT}", pair.link.server_addr),
            "{event}"
        );
        assert!(
            event["destination"]
                .as_str()
                .unwrap()
                .starts_with(&destination),
            "{event}"
        );
        assert!(event["bytes"].as_u64().unwrap() > 0, "{event}");
    }
}

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}
