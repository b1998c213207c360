//! The connect programs (`rein-conn`) in the kernel, with real connects: each test loads the
//! object into a throwaway rein instance, attaches it to a cgroup of its own (never the root),
//! and connects from a child process it moves into that cgroup, to addresses of a test network
//! namespace. BPF_PROG_TEST_RUN cannot run cgroup_sock_addr programs (checked below), so the
//! verdicts are real connect() results, held to the textbook model (`rein_testkit::model`) at
//! the clock reads around each connect. Needs root.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    fs,
    io::Read,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use aya::EbpfLoader;
use rein::{
    capabilities::conn_limits::datapath::{ConnDatapath, load_programs},
    platform::bpf,
};
use rein_common::{
    conn::{
        CONN_FLAG_PER_CALLER, CONN_FORM_FILL, CONN_FORM_RATE, CONN_SCOPE_ALL, CONN_SCOPE_BITS,
        CONN_SCOPE_CGROUP, CallerState, ConnBucket, ConnKey, ConnRule, ConnScope, ConnShapes,
        conn_variant_bit,
    },
    net::{FAMILY_IPV4, FAMILY_IPV6, PROTOCOL_TCP, specificity},
};
use rein_testkit::{
    connect::{self, Reply},
    model::{Bracket, ConnBucketModel, Xorshift},
    netns::Netns,
    rein_instance::ReinInstance,
};

const SERVER4: &str = "198.18.0.1";
const SERVER6: &str = "2001:2::1";
const LIMITED_PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;
const ECONNREFUSED: i32 = 111;

fn monotonic_ns() -> u64 {
    rein::clock::Clock::now_ns(&rein::clock::MonotonicClock)
}

/// A throwaway instance with the connect programs attached to a test cgroup; everything goes
/// on drop (the datapath first: `rein purge` does not know it yet).
struct Fixture {
    datapath: ConnDatapath,
    instance: rein::Instance,
    cgroup: PathBuf,
    /// The lookups of the rules put so far.
    shapes: ConnShapes,
    _rein: ReinInstance,
}

impl Fixture {
    fn new() -> Self {
        Self::with_callers(None)
    }

    fn with_callers(callers: Option<u32>) -> Self {
        let rein = ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"));
        let instance = rein.library_instance();
        let cgroup = rein.cgroup("conn");
        let datapath = match callers {
            Some(entries) => ConnDatapath::open_or_create_with_callers(&instance, entries),
            None => ConnDatapath::open_or_create(&instance),
        }
        .unwrap();
        let fixture = Self {
            datapath,
            instance,
            cgroup,
            shapes: ConnShapes::default(),
            _rein: rein,
        };
        ConnDatapath::attach_to(&fixture.instance, &fs::File::open(&fixture.cgroup).unwrap())
            .unwrap();
        assert!(ConnDatapath::is_attached(&fixture.instance));
        fixture
    }

    fn cgroup_id(&self) -> u64 {
        fs::metadata(&self.cgroup).unwrap().ino()
    }

    /// Rule `id` on `prefix` (address/bits) for callers in `scope`, and the lookups for it.
    fn put(&mut self, id: u32, scope: (u8, u64), target: Target, rule: ConnRule) {
        let (family, addr, bits) = address(target.prefix);
        let key = ConnKey {
            scope: ConnScope::new(scope.0, scope.1, family, target.protocol, target.port),
            addr,
        };
        let names_port = target.port != 0;
        let names_protocol = target.protocol != 0;
        self.datapath
            .put(
                id,
                &[(key, CONN_SCOPE_BITS + bits)],
                specificity(bits, names_port, names_protocol, true),
                rule,
            )
            .unwrap();
        let shapes = &mut self.shapes;
        shapes.variants |= conn_variant_bit(scope.0, names_port, names_protocol);
        if scope.0 == CONN_SCOPE_CGROUP {
            // The test cgroup is a child of the root.
            shapes.cgroup_levels |= 1 << 1;
        }
        self.datapath.set_shapes(self.shapes).unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        ConnDatapath::uninstall(&self.instance);
        assert!(!ConnDatapath::is_installed(&self.instance) || thread::panicking());
    }
}

#[derive(Clone, Copy)]
struct Target {
    prefix: &'static str,
    protocol: u8,
    port: u16,
}

fn address(prefix: &str) -> (u8, [u8; 16], u32) {
    let (ip, bits) = prefix.split_once('/').unwrap();
    let mut addr = [0u8; 16];
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (FAMILY_IPV4, addr, bits.parse().unwrap())
        }
        IpAddr::V6(v6) => {
            addr.copy_from_slice(&v6.octets());
            (FAMILY_IPV6, addr, bits.parse().unwrap())
        }
    }
}

fn rate_rule(cost_ns: u64, burst: u64, flags: u32) -> ConnRule {
    ConnRule {
        form: CONN_FORM_RATE,
        flags,
        cost_ns,
        burst_ns: burst * cost_ns,
        anchor_ns: 0,
        fill_ns: 0,
        max_tokens: 0,
        tokens_per_fill: 0,
        state: 0,
    }
}

fn fill_rule(anchor_ns: u64, fill_ns: u64, max_tokens: u32, per_fill: u32) -> ConnRule {
    ConnRule {
        form: CONN_FORM_FILL,
        flags: 0,
        cost_ns: 0,
        burst_ns: 0,
        anchor_ns,
        fill_ns,
        max_tokens,
        tokens_per_fill: per_fill,
        state: 0,
    }
}

/// A test network namespace with the server addresses on its loopback, and TCP listeners on
/// both ports (accepting until drop).
struct Server {
    _listening: connect::Server,
    netns: Netns,
}

impl Server {
    fn new(prefix: &str) -> Self {
        let netns = Netns::with_loopback(
            prefix,
            &[&format!("{SERVER4}/32"), &format!("{SERVER6}/128")],
        )
        .unwrap();
        let addrs: Vec<SocketAddr> = [SERVER4, SERVER6]
            .iter()
            .flat_map(|ip| {
                [LIMITED_PORT, OTHER_PORT].map(|port| SocketAddr::new(ip.parse().unwrap(), port))
            })
            .collect();
        let listening = connect::Server::start(&netns, &addrs, Reply::Close).unwrap();
        Self {
            _listening: listening,
            netns,
        }
    }
}

/// One connect a child makes: where to, how, and how long it sleeps after.
#[derive(Clone, Copy)]
struct Plan {
    addr: SocketAddr,
    /// `libc::SOCK_STREAM` or `libc::SOCK_DGRAM` (a connected UDP socket).
    kind: i32,
    /// An AF_INET6 socket even for an IPv4 address (which it reaches as ::ffff:a.b.c.d).
    mapped: bool,
    sleep_ns: u64,
}

fn tcp(ip: &str, port: u16) -> Plan {
    Plan {
        addr: SocketAddr::new(ip.parse().unwrap(), port),
        kind: libc::SOCK_STREAM,
        mapped: false,
        sleep_ns: 0,
    }
}

fn udp(ip: &str, port: u16) -> Plan {
    Plan {
        kind: libc::SOCK_DGRAM,
        ..tcp(ip, port)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    before: u64,
    after: u64,
    errno: i64,
}

impl Outcome {
    fn allowed(&self) -> bool {
        self.errno == 0
    }
}

/// A socket address as connect() takes it.
fn sockaddr(plan: &Plan) -> (libc::sockaddr_storage, libc::socklen_t, i32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let ip6 = match (plan.addr.ip(), plan.mapped) {
        (IpAddr::V4(v4), false) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: plan.addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
            return (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
                libc::AF_INET,
            );
        }
        (IpAddr::V4(v4), true) => v4.to_ipv6_mapped(),
        (IpAddr::V6(v6), _) => v6,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as u16,
        sin6_port: plan.addr.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: ip6.octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: as above, for sockaddr_in6.
    unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
    (
        storage,
        std::mem::size_of::<libc::sockaddr_in6>() as u32,
        libc::AF_INET6,
    )
}

fn now_raw() -> u64 {
    // SAFETY: all-zero is a valid timespec, filled by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * SECOND + ts.tv_nsec as u64
}

/// Runs `plans` from a child process moved into `cgroup` and entered into `netns`: sockets
/// made there carry the cgroup, so the programs attached to it see their connects. After a
/// fork only raw system calls run (no allocation): everything is prepared before.
fn connects(cgroup: &Path, netns: &Netns, plans: &[Plan]) -> Vec<Outcome> {
    let addrs: Vec<_> = plans.iter().map(sockaddr).collect();
    let mut outcomes = vec![Outcome::default(); plans.len()];
    let ns = fs::File::open(netns.path()).unwrap();
    let (mut go, mut results) = ([0i32; 2], [0i32; 2]);
    // SAFETY: arrays of two fds for the kernel to fill.
    unsafe {
        assert_eq!(libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::pipe2(results.as_mut_ptr(), libc::O_CLOEXEC), 0);
    }
    // SAFETY: the child only makes raw system calls on memory prepared before, then exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw system calls on fds and buffers this process owns; `_exit` never returns.
        unsafe {
            let mut byte = 0u8;
            libc::read(go[0], std::ptr::from_mut(&mut byte).cast(), 1);
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                libc::_exit(2);
            }
            for ((plan, (addr, len, family)), outcome) in
                plans.iter().zip(&addrs).zip(outcomes.iter_mut())
            {
                let fd = libc::socket(*family, plan.kind | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    libc::_exit(3);
                }
                outcome.before = now_raw();
                let ret = libc::connect(fd, std::ptr::from_ref(addr).cast(), *len);
                outcome.after = now_raw();
                outcome.errno = if ret == 0 {
                    0
                } else {
                    i64::from(*libc::__errno_location())
                };
                libc::close(fd);
                if plan.sleep_ns > 0 {
                    let ts = libc::timespec {
                        tv_sec: (plan.sleep_ns / SECOND) as i64,
                        tv_nsec: (plan.sleep_ns % SECOND) as i64,
                    };
                    libc::nanosleep(&ts, std::ptr::null_mut());
                }
            }
            let bytes = std::mem::size_of_val(outcomes.as_slice());
            let mut written = 0;
            while written < bytes {
                let n = libc::write(
                    results[1],
                    outcomes.as_ptr().cast::<u8>().add(written).cast(),
                    bytes - written,
                );
                if n <= 0 {
                    libc::_exit(4);
                }
                written += n as usize;
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the fds are ours; each end is owned once.
    let (go_read, go_write, results_read, results_write) = unsafe {
        (
            OwnedFd::from_raw_fd(go[0]),
            fs::File::from_raw_fd(go[1]),
            fs::File::from_raw_fd(results[0]),
            OwnedFd::from_raw_fd(results[1]),
        )
    };
    drop((go_read, results_write));
    let moved = fs::write(cgroup.join("cgroup.procs"), pid.to_string());
    let mut go_write = go_write;
    let _ = std::io::Write::write_all(&mut go_write, b"g");
    drop(go_write);
    let mut bytes = Vec::new();
    let mut results_read = results_read;
    let _ = results_read.read_to_end(&mut bytes);
    let mut status = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    moved.unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "client exited with {status:#x}"
    );
    assert_eq!(bytes.len(), std::mem::size_of_val(outcomes.as_slice()));
    // SAFETY: the child wrote whole Outcomes of plain integers.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            outcomes.as_mut_ptr().cast::<u8>(),
            bytes.len(),
        );
    }
    outcomes
}

/// Random connects and sleeps against one rule; every verdict the model is sure of must be the
/// kernel's, and the counters must say what the connects saw.
fn decides_as_its_model(
    fixture: &Fixture,
    server: &Server,
    id: u32,
    model: ConnBucketModel,
    plan: Plan,
    seed: u64,
) {
    let mut model = Bracket::new(model);
    let mut random = Xorshift(seed);
    let plans: Vec<Plan> = (0..150)
        .map(|_| Plan {
            sleep_ns: random.next_u64() % (6 * MS),
            ..plan
        })
        .collect();
    let outcomes = connects(&fixture.cgroup, &server.netns, &plans);
    let mut compared = 0;
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            outcome.errno == 0 || outcome.errno == i64::from(ECONNREFUSED),
            "connect {i}: errno {}",
            outcome.errno
        );
        if let Some(expected) = model.follow(outcome.allowed(), outcome.before, outcome.after) {
            compared += 1;
            assert_eq!(
                outcome.allowed(),
                expected,
                "connect {i} at {}..{}",
                outcome.before,
                outcome.after
            );
        }
    }
    let allowed = outcomes.iter().filter(|o| o.allowed()).count() as u64;
    let refused = outcomes.len() as u64 - allowed;
    eprintln!("compared {compared} of 150 connects: {allowed} allowed, {refused} refused");
    assert!(compared > 100, "{compared} compared");
    assert!(
        refused > 10 && allowed > 10,
        "{allowed} allowed, {refused} refused"
    );
    let counters = fixture.datapath.counters(id);
    assert_eq!(
        (
            counters.allowed,
            counters.refused,
            counters.refused_table_full
        ),
        (allowed, refused, 0)
    );
}

const ALL: (u8, u64) = (CONN_SCOPE_ALL, 0);

#[test]
fn the_rate_form_decides_as_its_model() {
    let server = Server::new("cr");
    let mut fixture = Fixture::new();
    // 200/s with a burst of 4, TCP to a listener.
    fixture.put(
        1,
        ALL,
        Target {
            prefix: "198.18.0.1/32",
            protocol: PROTOCOL_TCP,
            port: LIMITED_PORT,
        },
        rate_rule(5 * MS, 4, 0),
    );
    decides_as_its_model(
        &fixture,
        &server,
        1,
        ConnBucketModel::rate(5 * MS, 4),
        tcp(SERVER4, LIMITED_PORT),
        0x00c0_ffee,
    );
}

#[test]
fn the_fill_form_decides_as_its_model() {
    let server = Server::new("cf");
    let mut fixture = Fixture::new();
    // 3 at most, 2 more every 20 ms; connected UDP.
    let anchor = monotonic_ns();
    fixture.put(
        2,
        ALL,
        Target {
            prefix: "198.18.0.0/24",
            protocol: 0,
            port: 0,
        },
        fill_rule(anchor, 20 * MS, 3, 2),
    );
    decides_as_its_model(
        &fixture,
        &server,
        2,
        ConnBucketModel::fill(anchor, 20 * MS, 3, 2),
        udp(SERVER4, 53),
        0x0f11_0f11,
    );
}

#[test]
fn a_refused_connect_fails_at_once_with_econnrefused_and_only_its_destination() {
    let server = Server::new("ce");
    let mut fixture = Fixture::new();
    let limited = Target {
        prefix: "198.18.0.1/32",
        protocol: PROTOCOL_TCP,
        port: LIMITED_PORT,
    };
    fixture.put(3, ALL, limited, rate_rule(100 * SECOND, 2, 0));
    fixture.put(
        4,
        ALL,
        Target {
            prefix: "2001:2::/64",
            protocol: 0,
            port: 0,
        },
        rate_rule(100 * SECOND, 1, 0),
    );
    let mapped = Plan {
        mapped: true,
        ..tcp(SERVER4, LIMITED_PORT)
    };
    let plans = [
        tcp(SERVER4, LIMITED_PORT),
        tcp(SERVER4, LIMITED_PORT),
        tcp(SERVER4, LIMITED_PORT),
        // Another port of the same address: no rule.
        tcp(SERVER4, OTHER_PORT),
        tcp(SERVER4, OTHER_PORT),
        tcp(SERVER4, OTHER_PORT),
        // ::ffff:198.18.0.1 from an IPv6 socket: the IPv4 rule, empty by now.
        mapped,
        // The IPv6 rule: one, then refused, whatever the port.
        tcp(SERVER6, OTHER_PORT),
        tcp(SERVER6, LIMITED_PORT),
    ];
    let outcomes = connects(&fixture.cgroup, &server.netns, &plans);
    let errnos: Vec<i64> = outcomes.iter().map(|o| o.errno).collect();
    let refused = i64::from(ECONNREFUSED);
    assert_eq!(errnos, [0, 0, refused, 0, 0, 0, refused, 0, refused]);
    for outcome in outcomes.iter().filter(|o| !o.allowed()) {
        let took = outcome.after - outcome.before;
        eprintln!("refused connect took {} us", took / 1000);
        assert!(took < 50 * MS, "a refused connect took {took} ns");
    }
    let c3 = fixture.datapath.counters(3);
    assert_eq!((c3.allowed, c3.refused), (2, 2));
    let c4 = fixture.datapath.counters(4);
    assert_eq!((c4.allowed, c4.refused), (1, 1));
}

#[test]
fn per_caller_buckets_are_one_per_network_namespace() {
    let (a, b) = (Server::new("cpa"), Server::new("cpb"));
    let mut fixture = Fixture::new();
    let target = Target {
        prefix: "198.18.0.0/15",
        protocol: 0,
        port: 0,
    };
    fixture.put(
        5,
        ALL,
        target,
        rate_rule(100 * SECOND, 2, CONN_FLAG_PER_CALLER),
    );
    let plans = [udp(SERVER4, 53); 3];
    for server in [&a, &b] {
        let allowed: Vec<bool> = connects(&fixture.cgroup, &server.netns, &plans)
            .iter()
            .map(Outcome::allowed)
            .collect();
        assert_eq!(allowed, [true, true, false]);
    }
    let callers = fixture.datapath.callers(5);
    assert_eq!(callers.len(), 2, "{callers:?}");
    assert_ne!(callers[0].0, callers[1].0);
    for (_, state) in &callers {
        assert_eq!((state.allowed, state.refused), (2, 1));
        assert!(state.last_ns > 0);
    }
    let counters = fixture.datapath.counters(5);
    assert_eq!((counters.allowed, counters.refused), (4, 2));
    // The shared bucket is untouched: per-caller rules charge the callers' own.
    assert_eq!(fixture.datapath.rule(5).unwrap().state, 0);
    fixture.datapath.remove(
        5,
        &[(
            ConnKey {
                scope: ConnScope::new(CONN_SCOPE_ALL, 0, FAMILY_IPV4, 0, 0),
                addr: address("198.18.0.0/15").1,
            },
            CONN_SCOPE_BITS + 15,
        )],
    );
    assert!(fixture.datapath.callers(5).is_empty());
    assert!(fixture.datapath.rule_ids().is_empty());
}

#[test]
fn every_scope_must_allow_and_a_refusal_gives_earlier_tokens_back() {
    let server = Server::new("cs");
    let mut fixture = Fixture::new();
    let target = Target {
        prefix: "198.18.0.0/16",
        protocol: 0,
        port: 0,
    };
    let cgroup = (CONN_SCOPE_CGROUP, fixture.cgroup_id());
    fixture.put(6, cgroup, target, rate_rule(100 * SECOND, 3, 0));
    fixture.put(7, ALL, target, rate_rule(100 * SECOND, 1, 0));
    let allowed: Vec<bool> = connects(&fixture.cgroup, &server.netns, &[udp(SERVER4, 53); 3])
        .iter()
        .map(Outcome::allowed)
        .collect();
    assert_eq!(allowed, [true, false, false]);
    let now = monotonic_ns();
    let cgroup_rule = fixture.datapath.rule(6).unwrap();
    // One token taken, the two refused connections' given back.
    assert_eq!(
        ConnBucket::of(&cgroup_rule).tokens(cgroup_rule.state, now),
        2
    );
    let (c6, c7) = (fixture.datapath.counters(6), fixture.datapath.counters(7));
    assert_eq!((c6.allowed, c6.refused), (1, 0));
    assert_eq!((c7.allowed, c7.refused), (1, 2));
    // Without the every-caller rule, the cgroup's two tokens are there to take.
    fixture.datapath.remove(
        7,
        &[(
            ConnKey {
                scope: ConnScope::new(CONN_SCOPE_ALL, 0, FAMILY_IPV4, 0, 0),
                addr: address("198.18.0.0/16").1,
            },
            CONN_SCOPE_BITS + 16,
        )],
    );
    let allowed: Vec<bool> = connects(&fixture.cgroup, &server.netns, &[udp(SERVER4, 53); 3])
        .iter()
        .map(Outcome::allowed)
        .collect();
    assert_eq!(allowed, [true, true, false]);
}

#[test]
fn a_full_callers_table_reclaims_full_buckets_and_refuses_only_mid_burst() {
    let servers = [Server::new("cta"), Server::new("ctb"), Server::new("ctc")];
    let mut fixture = Fixture::with_callers(Some(2));
    let target = Target {
        prefix: "198.18.0.0/15",
        protocol: 0,
        port: 0,
    };
    // One connection per 1.5 s, burst 1: a caller's bucket is mid-burst for 1.5 s after it
    // connects (long enough for the next two connects on a loaded machine), then full again.
    let cost = 1_500 * MS;
    fixture.put(8, ALL, target, rate_rule(cost, 1, CONN_FLAG_PER_CALLER));
    // Userspace drops only the entries of rules that are gone: full buckets are the programs'
    // to drop, with a tombstone swapped in first (userspace has no compare-and-swap).
    fixture
        .datapath
        .restore_callers(9999, &[(7, CallerState::default())]);
    assert_eq!(fixture.datapath.remove_orphan_callers(), 1);
    assert_eq!(fixture.datapath.remove_orphan_callers(), 0);
    let one = [udp(SERVER4, 53)];
    let connect = |server: &Server| connects(&fixture.cgroup, &server.netns, &one)[0];
    let first = connect(&servers[0]);
    assert!(first.allowed());
    assert!(connect(&servers[1]).allowed());
    // No room, and both entries mid-burst: refused, and counted as the table's fault.
    let refused = connect(&servers[2]);
    assert!(
        refused.before - first.after < cost,
        "too slow to test this: {} ms between the connects",
        (refused.before - first.after) / MS
    );
    assert_eq!(refused.errno, i64::from(ECONNREFUSED));
    let counters = fixture.datapath.counters(8);
    assert_eq!(
        (
            counters.allowed,
            counters.refused,
            counters.refused_table_full
        ),
        (2, 1, 1)
    );
    assert_eq!(fixture.datapath.callers(8).len(), 2);
    thread::sleep(Duration::from_nanos(cost + 50 * MS));
    // Both full again: reclaimed, and the third caller gets an entry.
    assert!(connect(&servers[2]).allowed());
    let callers = fixture.datapath.callers(8);
    assert_eq!(callers.len(), 1, "{callers:?}");
    // Lossless: the first caller's bucket was full, and a new entry starts full.
    assert!(connect(&servers[0]).allowed());
    let counters = fixture.datapath.counters(8);
    assert_eq!(
        (
            counters.allowed,
            counters.refused,
            counters.refused_table_full
        ),
        (4, 1, 1)
    );
    // Userspace drops none of these: it leaves full buckets to the programs.
    assert_eq!(fixture.datapath.remove_orphan_callers(), 0);
    assert_eq!(fixture.datapath.callers(8).len(), 2);
}

#[test]
fn the_programs_stay_small_for_the_verifier_and_cannot_be_test_run() {
    let mut ebpf = EbpfLoader::new().load(bpf::conn_object()).unwrap();
    load_programs(&mut ebpf).unwrap();
    for (name, program) in ebpf.programs() {
        let verified = program
            .info()
            .unwrap()
            .verified_instruction_count()
            .unwrap();
        eprintln!("{name}: {verified} verified instructions");
        // Half the verifier's million, as every rein program keeps.
        assert!(verified > 0 && verified <= 500_000, "{name}: {verified}");
        // BPF_PROG_TEST_RUN has no runner for cgroup_sock_addr programs: ENOTSUPP (524).
        let fd = program.fd().unwrap().as_fd().as_raw_fd();
        let mut attr = [0u64; 16];
        attr[0] = fd as u64;
        // SAFETY: a zeroed bpf_attr with prog_fd set, of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                10, // BPF_PROG_TEST_RUN
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((ret, errno), (-1, Some(524)), "{name}");
    }
}

#[test]
fn the_datapath_reloads_changes_collects_and_leaves_nothing() {
    let server = Server::new("cd");
    let mut fixture = Fixture::new();
    let target = Target {
        prefix: "198.18.0.0/24",
        protocol: 0,
        port: 0,
    };
    fixture.put(9, ALL, target, rate_rule(100 * SECOND, 2, 0));
    let one = [udp(SERVER4, 53)];
    assert!(connects(&fixture.cgroup, &server.netns, &one)[0].allowed());
    // Attaching again changes nothing; a reload swaps both programs under the same links and
    // maps: the bucket keeps its one token.
    let cgroup = fs::File::open(&fixture.cgroup).unwrap();
    ConnDatapath::attach_to(&fixture.instance, &cgroup).unwrap();
    let reload = ConnDatapath::prepare_reload(&fixture.instance)
        .unwrap()
        .expect("links to reload");
    assert_eq!(reload.swap_programs().unwrap(), 2);
    let allowed: Vec<bool> = connects(&fixture.cgroup, &server.netns, &[udp(SERVER4, 53); 2])
        .iter()
        .map(Outcome::allowed)
        .collect();
    assert_eq!(allowed, [true, false]);
    // A changed limit keeps the bucket's state: still empty, at the new burst of 3 two are
    // left.
    fixture
        .datapath
        .change_rule(9, rate_rule(100 * SECOND, 4, 0))
        .unwrap();
    let allowed: Vec<bool> = connects(&fixture.cgroup, &server.netns, &[udp(SERVER4, 53); 3])
        .iter()
        .map(Outcome::allowed)
        .collect();
    assert_eq!(allowed, [true, true, false]);
    assert!(matches!(
        fixture.datapath.change_rule(12, rate_rule(SECOND, 1, 0)),
        Err(rein::Error::NoSuchConnRule(12))
    ));
    // A rule whose trie entry the kernel refuses (a prefix longer than the key) leaves nothing.
    let (family, addr, _) = address("198.18.1.0/24");
    let bad = ConnKey {
        scope: ConnScope::new(CONN_SCOPE_ALL, 0, family, 0, 0),
        addr,
    };
    assert!(
        fixture
            .datapath
            .put(
                10,
                &[(bad, CONN_SCOPE_BITS + 200)],
                0,
                rate_rule(SECOND, 1, 0)
            )
            .is_err()
    );
    assert_eq!(fixture.datapath.rule_ids(), [9]);
    assert_eq!(fixture.datapath.counters(10), Default::default());
    // Garbage: every rule no record holds goes, with its trie entry.
    let held = std::collections::HashSet::from([9]);
    assert_eq!(fixture.datapath.remove_rules_except(&held), 0);
    assert_eq!(
        fixture
            .datapath
            .remove_rules_except(&std::collections::HashSet::new()),
        1
    );
    assert!(fixture.datapath.rule_ids().is_empty());
    assert!(connects(&fixture.cgroup, &server.netns, &one)[0].allowed());
    ConnDatapath::uninstall(&fixture.instance);
    assert!(!ConnDatapath::is_installed(&fixture.instance));
    assert!(!ConnDatapath::is_attached(&fixture.instance));
    let left: Vec<_> = fs::read_dir(fixture.instance.pin_dir())
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Detached: nothing limits the cgroup any more.
    assert!(
        connects(&fixture.cgroup, &server.netns, &[udp(SERVER4, 53); 3])
            .iter()
            .all(Outcome::allowed)
    );
}

/// The network namespace cookie of `netns`, as the programs read it (SO_NETNS_COOKIE).
fn netns_cookie(netns: &Netns) -> u64 {
    rein::platform::netns::cookie_of(Path::new(&netns.path())).unwrap()
}

#[test]
fn a_namespace_rule_limits_its_namespace_only() {
    let (a, b) = (Server::new("cna"), Server::new("cnb"));
    let mut fixture = Fixture::new();
    let target = Target {
        prefix: "198.18.0.1/32",
        protocol: rein_common::net::PROTOCOL_UDP,
        port: 53,
    };
    let scope = (rein_common::conn::CONN_SCOPE_NETNS, netns_cookie(&a.netns));
    fixture.put(11, scope, target, rate_rule(100 * SECOND, 1, 0));
    for (server, expected) in [(&a, [true, false]), (&b, [true, true])] {
        let allowed: Vec<bool> = connects(&fixture.cgroup, &server.netns, &[udp(SERVER4, 53); 2])
            .iter()
            .map(Outcome::allowed)
            .collect();
        assert_eq!(allowed, expected, "{}", server.netns.name());
    }
    let counters = fixture.datapath.counters(11);
    assert_eq!((counters.allowed, counters.refused), (1, 1));
}
