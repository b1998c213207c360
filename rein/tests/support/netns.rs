//! Test support: throwaway network namespaces joined by veth pairs, plus
//! bounded iperf3 and ping helpers.
//!
//! Included from integration tests with
//! `#[path = "support/netns.rs"] mod netns;`, so it uses nothing from the
//! including crate (std and `serde_json` only).
//!
//! Rules this module enforces for every test that uses it:
//! - test hosts are namespaces the test creates itself, joined by veth pairs;
//! - addresses come only from 198.18.0.0/15 (IPv4) and 2001:2::/48 (IPv6
//!   benchmarking range);
//! - every namespace and link name carries a per-test unique suffix, so tests
//!   can run in parallel (threads or processes);
//! - everything is removed by `Drop`, so cleanup also happens when a test
//!   panics;
//! - every traffic generator is bounded in count and time.
//!
//! Drop order matters: declare an `Iperf3Server` *after* the `HostPair` it
//! runs in, so it is dropped (killed) first. `HostPair` kills any leftover
//! process inside its namespaces anyway, so a wrong order only costs a
//! little time, never a leak.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::{
    fs::File,
    io::Read,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// Default iperf3 port. Every `HostPair` has its own namespaces, so tests
/// never contend for it.
pub const IPERF3_PORT: u16 = 5201;

/// Per-process counter: guarantees distinct suffixes between threads of one
/// test binary; pid and time bits separate concurrent test binaries.
static SUFFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// `ip netns add` / `ip netns del` set up and tear down the shared
/// `/run/netns` mount; running them from many threads at once is a known
/// source of spurious failures, so calls from one process are serialized.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// How long setup waits for links and addresses to become usable.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Number of distinct /30 subnets handed out: 198.18.0.0/23 .. 198.19.255.0,
/// i.e. second octet 18 or 19 and any third octet, all inside 198.18.0.0/15.
const SUBNET_SLOTS: u32 = 512;

// ---------------------------------------------------------------------------
// Unique names
// ---------------------------------------------------------------------------

/// A short (8 chars, `[0-9a-z]`) string unique per call across parallel test
/// threads and processes: 4 chars of pid, 2 of a per-process counter, 2 of
/// clock bits. Short enough that `vc-<suffix>` (11 chars) fits IFNAMSIZ (15).
pub fn unique_suffix() -> String {
    next_id().0
}

/// Returns a unique suffix and a subnet slot (`0..SUBNET_SLOTS`) derived from
/// the same counter, so parallel pairs in one process also get distinct
/// address blocks (purely cosmetic: namespaces isolate them anyway).
fn next_id() -> (String, u32) {
    let pid = std::process::id();
    let count = SUFFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let suffix = format!(
        "{}{}{}",
        base36(pid, 4),
        base36(count, 2),
        base36(nanos >> 10, 2)
    );
    let slot = pid.wrapping_mul(37).wrapping_add(count) % SUBNET_SLOTS;
    (suffix, slot)
}

/// Lowercase base-36 of `value`, keeping only the low `width` digits.
fn base36(mut value: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Running `ip`
// ---------------------------------------------------------------------------

/// Runs `ip <args>`; on failure returns a message with the command line and
/// its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Like [`ip`] but panics with the message; used for setup steps, where
/// already-created resources are cleaned up by their guards during unwinding.
fn ip_or_panic(what: &str, args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("netns setup: {what}: {e}"))
}

/// `ip netns exec <ns> <program> <args...>`. `ip netns exec` execs the
/// program directly (no extra fork), so the child's pid is the program's.
pub fn ns_exec(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}

// ---------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------

/// A network namespace owned by the test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up. Returns `Err` if it already
    /// exists (so a caller can retry with another suffix); never deletes a
    /// namespace it did not create.
    fn create(name: &str) -> Result<Netns, String> {
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip(&["netns", "add", name])?;
        }
        // From here on the guard owns the namespace, so a panic removes it.
        let ns = Netns {
            name: name.to_owned(),
        };
        ip_or_panic("bring lo up", &["-n", name, "link", "set", "lo", "up"]);
        Ok(ns)
    }

    /// Creates a namespace named `<prefix>-<unique suffix>` with `lo` up.
    pub fn new(prefix: &str) -> Netns {
        let mut last_err = String::new();
        for _ in 0..5 {
            match Netns::create(&format!("{prefix}-{}", unique_suffix())) {
                Ok(ns) => return ns,
                Err(e) => last_err = e,
            }
        }
        panic!("netns setup: cannot create a namespace: {last_err}");
    }

    /// `ip netns exec <self> <program> <args...>`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        ns_exec(&self.name, program, args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process still inside keeps the namespace (and its veth) alive
        // after `ip netns del`; anything in here was started by this test.
        kill_processes_in(&self.name);
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// SIGKILLs every process whose network namespace is `ns` (all started by
/// the test that owns `ns`), then waits briefly for them to go away.
fn kill_processes_in(ns: &str) {
    let pids = |ns: &str| -> Vec<String> {
        ip(&["netns", "pids", ns])
            .map(|out| out.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let found = pids(ns);
    if found.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(&found)
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids(ns).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Host pair
// ---------------------------------------------------------------------------

/// Two namespaces, "client" (`rc-<suffix>`) and "server" (`rs-<suffix>`),
/// joined by a veth pair (`vc-<suffix>` <-> `vs-<suffix>`), with IPv4 and
/// IPv6 addresses on both ends. Address fields hold bare addresses (no
/// prefix length), ready for `-c`/`-B`/ping.
#[derive(Debug)]
pub struct HostPair {
    pub suffix: String,
    pub client_ns: String,
    pub server_ns: String,
    /// veth end inside `client_ns`.
    pub client_if: String,
    /// veth end inside `server_ns`.
    pub server_if: String,
    /// 198.18.0.0/15 address, /30 subnet shared with `server_addr`.
    pub client_addr: String,
    pub server_addr: String,
    /// 2001:2::/48 address, /64 subnet shared with `server_addr6`.
    pub client_addr6: String,
    pub server_addr6: String,
    // The guards that delete the namespaces (and with them the veth) on
    // drop; fields drop in declaration order, so the server side goes first.
    server: Netns,
    client: Netns,
}

impl HostPair {
    pub fn new() -> HostPair {
        // Retry on the (unlikely) chance that a suffix is already taken by a
        // concurrent test process.
        let mut attempt = 0;
        let (suffix, slot, client) = loop {
            let (suffix, slot) = next_id();
            match Netns::create(&format!("rc-{suffix}")) {
                Ok(ns) => break (suffix, slot, ns),
                Err(e) if attempt >= 4 => panic!("netns setup: client namespace: {e}"),
                Err(_) => attempt += 1,
            }
        };
        let server = Netns::create(&format!("rs-{suffix}"))
            .unwrap_or_else(|e| panic!("netns setup: server namespace: {e}"));

        let client_if = format!("vc-{suffix}");
        let server_if = format!("vs-{suffix}");
        // Create both ends directly inside their namespaces so nothing ever
        // appears in the host's namespace, even briefly.
        ip_or_panic(
            "create veth pair",
            &[
                "link",
                "add",
                &client_if,
                "netns",
                &client.name,
                "type",
                "veth",
                "peer",
                "name",
                &server_if,
                "netns",
                &server.name,
            ],
        );

        // 198.{18,19}.X.0/30: stays inside 198.18.0.0/15.
        let octet2 = 18 + slot / 256;
        let octet3 = slot % 256;
        let client_addr = format!("198.{octet2}.{octet3}.1");
        let server_addr = format!("198.{octet2}.{octet3}.2");
        // 2001:2:0:X::/64: one /64 of the 2001:2::/48 benchmarking range.
        let client_addr6 = format!("2001:2:0:{slot:x}::1");
        let server_addr6 = format!("2001:2:0:{slot:x}::2");

        for (ns, dev, v4, v6) in [
            (&client.name, &client_if, &client_addr, &client_addr6),
            (&server.name, &server_if, &server_addr, &server_addr6),
        ] {
            let v4 = format!("{v4}/30");
            let v6 = format!("{v6}/64");
            ip_or_panic(
                "add IPv4 address",
                &["-n", ns, "addr", "add", &v4, "dev", dev],
            );
            // nodad: the address is usable at once instead of after ~1 s of
            // duplicate address detection.
            ip_or_panic(
                "add IPv6 address",
                &["-n", ns, "-6", "addr", "add", &v6, "dev", dev, "nodad"],
            );
            ip_or_panic("bring veth up", &["-n", ns, "link", "set", dev, "up"]);
        }

        wait_usable(&client.name, &client_if);
        wait_usable(&server.name, &server_if);

        HostPair {
            suffix,
            client_ns: client.name.clone(),
            server_ns: server.name.clone(),
            client_if,
            server_if,
            client_addr,
            server_addr,
            client_addr6,
            server_addr6,
            server,
            client,
        }
    }

    /// Gives the client `count` more IPv4 addresses (/32s from the pair's /24, outside its
    /// /30, still in 198.18.0.0/15), with routes to them in the server, so that clients can
    /// bind (`-B`) to several sources. They go with the namespaces.
    pub fn add_client_addresses(&self, count: u8) -> Vec<String> {
        assert!(count <= 200, "at most 200 extra client addresses");
        let (network, _) = self
            .client_addr
            .rsplit_once('.')
            .expect("an IPv4 client address");
        (0..count)
            .map(|i| {
                let addr = format!("{network}.{}", 10 + u32::from(i));
                let host = format!("{addr}/32");
                ip_or_panic(
                    "add a client address",
                    &[
                        "-n",
                        &self.client_ns,
                        "addr",
                        "add",
                        &host,
                        "dev",
                        &self.client_if,
                    ],
                );
                ip_or_panic(
                    "route to a client address",
                    &[
                        "-n",
                        &self.server_ns,
                        "route",
                        "add",
                        &host,
                        "dev",
                        &self.server_if,
                    ],
                );
                addr
            })
            .collect()
    }

    /// Command running `program` inside the client namespace.
    pub fn client_exec(&self, program: &str, args: &[&str]) -> Command {
        ns_exec(&self.client_ns, program, args)
    }

    /// Command running `program` inside the server namespace.
    pub fn server_exec(&self, program: &str, args: &[&str]) -> Command {
        ns_exec(&self.server_ns, program, args)
    }
}

impl Default for HostPair {
    fn default() -> Self {
        HostPair::new()
    }
}

/// `ip -d link show dev <dev>` inside `ns` (attached XDP programs show as `prog/xdp ...`);
/// the error message if it fails.
pub fn link_details(ns: &str, dev: &str) -> String {
    ip(&["-n", ns, "-d", "link", "show", "dev", dev]).unwrap_or_else(|e| e)
}

/// Waits until `dev` in `ns` is operationally up (both veth ends up) and has
/// no tentative IPv6 address left; panics after `SETUP_TIMEOUT`.
fn wait_usable(ns: &str, dev: &str) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let link = ip(&["-n", ns, "-o", "link", "show", "dev", dev]).unwrap_or_default();
        let tentative =
            ip(&["-n", ns, "-6", "addr", "show", "dev", dev, "tentative"]).unwrap_or_else(|e| e);
        if link.contains("state UP") && tentative.trim().is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "netns setup: {dev} in {ns} not usable after {SETUP_TIMEOUT:?}: \
                 link: {} / tentative: {}",
                link.trim(),
                tentative.trim()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// iperf3
// ---------------------------------------------------------------------------

/// An `iperf3 -s` running in a namespace; killed and reaped on drop.
///
/// Runs without `-1` so one server can serve several client runs in a test
/// (and a failed client run does not leave it in a half-finished state).
#[derive(Debug)]
pub struct Iperf3Server {
    pub ns: String,
    pub bind_addr: String,
    pub port: u16,
    child: Child,
    log_path: PathBuf,
}

impl Iperf3Server {
    /// Starts the server and returns once its control port is listening
    /// (polls `ss` for up to 5 s, then panics with the server's log).
    pub fn start(ns: &str, bind_addr: &str, port: u16) -> Iperf3Server {
        let log_path =
            std::env::temp_dir().join(format!("iperf3-server-{ns}-{port}-{}.log", unique_suffix()));
        // Output goes to a file rather than a pipe: nobody reads it while the
        // server runs, and a full pipe would stall the server.
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let port_arg = port.to_string();
        let child = ns_exec(ns, "iperf3", &["-s", "-p", &port_arg, "-B", bind_addr])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn iperf3 server in {ns}: {e}"));
        let mut server = Iperf3Server {
            ns: ns.to_owned(),
            bind_addr: bind_addr.to_owned(),
            port,
            child,
            log_path,
        };
        server.wait_listening();
        server
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{}", self.port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "iperf3 server in {} exited early ({status}): {}",
                    self.ns,
                    self.log()
                );
            }
            let listening = ns_exec(&self.ns, "ss", &["-ltnH", &filter])
                .stdin(Stdio::null())
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
                .unwrap_or(false);
            if listening {
                return;
            }
            if Instant::now() >= deadline {
                // Drop (kill + reap + remove log) runs during unwinding.
                panic!(
                    "iperf3 server in {} not listening on {}:{} after 5 s: {}",
                    self.ns,
                    self.bind_addr,
                    self.port,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Client-side iperf3 options. `Default`: 3 s, TCP, forward, 1 stream, IPv4.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub seconds: u32,
    /// `Some(rate)` (iperf3 syntax, e.g. "50M") switches to UDP at that rate.
    pub udp_bitrate: Option<String>,
    /// `-R`: the server sends, the client receives.
    pub reverse: bool,
    /// `-P`: parallel streams.
    pub streams: u32,
    /// `-6`: only use IPv6.
    pub ipv6: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            seconds: 3,
            udp_bitrate: None,
            reverse: false,
            streams: 1,
            ipv6: false,
        }
    }
}

impl ClientOptions {
    pub fn is_udp(&self) -> bool {
        self.udp_bitrate.is_some()
    }
}

/// Arguments (after the program name) for an iperf3 client run:
/// `-c ADDR -p PORT -t SECS --json --connect-timeout 3000 [-6] [-u -b RATE]
/// [-R] [-P N]`. The caller prefixes its own wrapper, e.g.
/// `ip netns exec NS iperf3 <these>`.
pub fn iperf3_client_args(server_addr: &str, port: u16, opts: &ClientOptions) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-c".into(),
        server_addr.into(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        // -t 0 would mean "run forever" to some iperf3 versions.
        opts.seconds.max(1).to_string(),
        "--json".into(),
        // Fail fast instead of hanging on the kernel's SYN retries.
        "--connect-timeout".into(),
        "3000".into(),
    ];
    if opts.ipv6 {
        args.push("-6".into());
    }
    if let Some(rate) = &opts.udp_bitrate {
        args.extend(["-u".into(), "-b".into(), rate.clone()]);
    }
    if opts.reverse {
        args.push("-R".into());
    }
    if opts.streams > 1 {
        args.extend(["-P".into(), opts.streams.to_string()]);
    }
    args
}

/// A sensible overall timeout for a client run with `opts`: the test time
/// plus connect timeout plus slack for setup and result exchange.
pub fn iperf3_timeout(opts: &ClientOptions) -> Duration {
    Duration::from_secs(u64::from(opts.seconds.max(1)) + 15)
}

/// Summary of an iperf3 client run (`--json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Iperf3Result {
    /// Goodput measured by the receiving side.
    pub bits_per_second: f64,
    /// Rate at which the sending side pushed data.
    pub sent_bits_per_second: f64,
    /// TCP retransmissions seen by the sender (0 for UDP).
    pub retransmits: u64,
    /// Bytes that arrived at the receiving side.
    pub bytes: u64,
    /// UDP datagram loss seen by the receiver (0 for TCP).
    pub lost_percent: f64,
    /// Mean TCP RTT in microseconds, averaged over streams; `None` for UDP and
    /// for `-R` (the sender is then the server, whose tcp_info the client
    /// does not get: iperf3 reports 0 there).
    pub mean_rtt_us: Option<f64>,
    /// Each TCP stream's goodput at the receiving side (empty for UDP).
    pub stream_bits_per_second: Vec<f64>,
}

impl Iperf3Result {
    /// Jain's fairness index over the streams' goodputs: 1 when all are equal, 1/n when one
    /// stream has it all.
    pub fn jain(&self) -> f64 {
        let rates = &self.stream_bits_per_second;
        let sum: f64 = rates.iter().sum();
        let squares: f64 = rates.iter().map(|r| r * r).sum();
        if squares == 0.0 {
            return 0.0;
        }
        sum * sum / (rates.len() as f64 * squares)
    }
}

/// Parses iperf3 `--json` client output (checked against iperf3 3.12).
/// Missing fields read as 0 / `None`; panics only if `json` is not JSON.
///
/// 3.12 emits `end.sum_sent` and `end.sum_received` for both TCP and UDP
/// (UDP also has `end.sum`, which mixes sender bytes with receiver loss);
/// older UDP output only has `end.sum`, from which goodput is derived.
pub fn parse_iperf3_json(json: &str, udp: bool) -> Iperf3Result {
    let root: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("iperf3 output is not JSON ({e}): {}", truncate(json, 4000)));
    let end = &root["end"];
    let sent = &end["sum_sent"];
    let received = &end["sum_received"];

    if udp {
        let sum = &end["sum"];
        let lost_percent = f64_or(received, "lost_percent")
            .or_else(|| f64_or(sum, "lost_percent"))
            .unwrap_or(0.0);
        let sent_bps = f64_or(sent, "bits_per_second")
            .or_else(|| f64_or(sum, "bits_per_second"))
            .unwrap_or(0.0);
        let bits_per_second = f64_or(received, "bits_per_second")
            .unwrap_or_else(|| sent_bps * (1.0 - lost_percent / 100.0));
        let bytes = u64_or(received, "bytes")
            .or_else(|| u64_or(sum, "bytes"))
            .unwrap_or(0);
        Iperf3Result {
            bits_per_second,
            sent_bits_per_second: sent_bps,
            retransmits: 0,
            bytes,
            lost_percent,
            mean_rtt_us: None,
            stream_bits_per_second: Vec::new(),
        }
    } else {
        Iperf3Result {
            bits_per_second: f64_or(received, "bits_per_second").unwrap_or(0.0),
            sent_bits_per_second: f64_or(sent, "bits_per_second").unwrap_or(0.0),
            retransmits: u64_or(sent, "retransmits").unwrap_or(0),
            bytes: u64_or(received, "bytes").unwrap_or(0),
            lost_percent: 0.0,
            mean_rtt_us: mean_sender_rtt(end),
            stream_bits_per_second: stream_goodputs(end),
        }
    }
}

/// Average of `end.streams[*].sender.mean_rtt` over streams whose sender is
/// the local side (`"sender": true`); only there is the RTT real.
fn mean_sender_rtt(end: &Value) -> Option<f64> {
    let rtts: Vec<f64> = end["streams"]
        .as_array()?
        .iter()
        .map(|stream| &stream["sender"])
        .filter(|sender| sender["sender"].as_bool().unwrap_or(false))
        .filter_map(|sender| sender["mean_rtt"].as_f64())
        .collect();
    if rtts.is_empty() {
        None
    } else {
        Some(rtts.iter().sum::<f64>() / rtts.len() as f64)
    }
}

/// `end.streams[*].receiver.bits_per_second`.
fn stream_goodputs(end: &Value) -> Vec<f64> {
    end["streams"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .filter_map(|stream| stream["receiver"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default()
}

fn f64_or(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

fn u64_or(v: &Value, key: &str) -> Option<u64> {
    let field = v.get(key)?;
    // iperf3 prints integers, but accept a float rendering too.
    field.as_u64().or_else(|| field.as_f64().map(|f| f as u64))
}

/// Runs a fully built iperf3 client command (possibly wrapped, e.g. by
/// `rein run ... --`), bounded by `timeout`, and parses its JSON.
///
/// The command runs in its own process group so that on timeout the wrapper
/// and everything it started get SIGTERM (a chance to clean up), then
/// SIGKILL. Panics with stderr and stdout if it times out, fails, or iperf3
/// reports an error.
pub fn run_iperf3_client(mut cmd: Command, udp: bool, timeout: Duration) -> Iperf3Result {
    use std::os::unix::process::CommandExt;

    let described = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {described}: {e}"));

    // Drain both pipes on threads: a long run's JSON exceeds the pipe buffer
    // and would otherwise block the child.
    let stdout_rx = drain(child.stdout.take());
    let stderr_rx = drain(child.stderr.take());

    let (status, timed_out) = wait_bounded(&mut child, timeout);
    // If a grandchild survived and still holds the pipe, don't hang on it.
    let collect =
        |rx: mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let stdout = collect(stdout_rx);
    let stderr = collect(stderr_rx);

    let fail = |why: String| -> ! {
        panic!(
            "iperf3 client {why}\ncommand: {described}\nstderr:\n{}\nstdout:\n{}",
            stderr.trim(),
            truncate(stdout.trim(), 8000)
        )
    };
    if timed_out {
        fail(format!("timed out after {timeout:?} and was killed"));
    }
    // iperf3 --json reports its own errors in the JSON and exits non-zero.
    if let Ok(v) = serde_json::from_str::<Value>(&stdout)
        && let Some(err) = v.get("error").and_then(Value::as_str)
    {
        // 3.12 exits 0 even then (e.g. "Connection refused"), so this check
        // must come before the exit status one.
        fail(format!("reported error: {err}"));
    }
    match status {
        Some(s) if s.success() => {}
        Some(s) => fail(format!("failed ({s})")),
        None => fail("could not be waited for".to_owned()),
    }
    parse_iperf3_json(&stdout, udp)
}

/// Reads a pipe to the end on a thread and sends the text on the channel.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let _ = tx.send(text);
    });
    rx
}

/// Waits for `child` up to `timeout`; on expiry terminates its whole process
/// group (TERM, then KILL after 2 s) and reaps it. Returns the exit status
/// (if any) and whether it timed out.
fn wait_bounded(child: &mut Child, timeout: Duration) -> (Option<ExitStatus>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(status), false),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => break,
            Err(_) => return (child.wait().ok(), false),
        }
    }
    // process_group(0) made the child's pid its process group id.
    let group = format!("-{}", child.id());
    signal_group("-TERM", &group);
    let grace = Instant::now() + Duration::from_secs(2);
    while Instant::now() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            // The leader is gone; make sure nothing else in the group lingers.
            signal_group("-KILL", &group);
            return (Some(status), true);
        }
        thread::sleep(Duration::from_millis(20));
    }
    signal_group("-KILL", &group);
    let _ = child.kill();
    (child.wait().ok(), true)
}

fn signal_group(signal: &str, group: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", group])
        .stderr(Stdio::null())
        .status();
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

// ---------------------------------------------------------------------------
// ping
// ---------------------------------------------------------------------------

/// Average RTT in ms of `count` pings (0.2 s apart) from `ns` to `addr`, or
/// `None` if no reply came back. Bounded by `-W 1` per probe and an overall
/// `-w` deadline.
pub fn ping_avg_ms(ns: &str, addr: &str, count: u32) -> Option<f64> {
    // ping -c 0 would mean "forever".
    let count = count.max(1);
    // Interval time for all probes plus one reply timeout plus slack.
    let deadline_s = u64::from(count).div_ceil(5) + 2;
    let output = ns_exec(
        ns,
        "ping",
        &[
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-w",
            &deadline_s.to_string(),
            "-q",
            addr,
        ],
    )
    .stdin(Stdio::null())
    .output()
    .ok()?;
    parse_ping_avg_ms(&String::from_utf8_lossy(&output.stdout))
}

/// Extracts avg from iputils' `rtt min/avg/max/mdev = a/b/c/d ms` line.
fn parse_ping_avg_ms(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    values.split('/').nth(1)?.trim().parse().ok()
}
