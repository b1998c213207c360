//! Watching limits as an operator would: a real Prometheus scraping rein's `/metrics` while
//! iperf3 runs under a limit, and `rein top` in tmux read off the screen.
//!
//! Each test runs its own instance, namespaces, Prometheus (temporary directory, free port) and
//! tmux server (its own socket); all go on drop, also when the test fails. Needs root, a bpffs,
//! cgroup v2, iperf3, prometheus and tmux (`scripts/setup`).
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rein::observe::metrics;
use rein_testkit::{
    agent::{Agent, Config, cgroup_limit},
    cgroup::in_cgroup,
    files::Files,
    http,
    iperf::{self, ClientOptions, Measured, PORT as IPERF3_PORT, Server, TCP_PAYLOAD_SHARE},
    netns::{HostPair, unique_suffix},
    process::{Cmd, Running, wait_until},
    rein_instance::ReinInstance,
};
use serde_json::Value;

/// Traffic tests share two cores: one at a time, so their rates measure rein, not the scheduler.
static TRAFFIC: Mutex<()> = Mutex::new(());

fn traffic() -> MutexGuard<'static, ()> {
    TRAFFIC.lock().unwrap_or_else(|e| e.into_inner())
}

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

const LIMIT: &str = "20mbit";
const LIMIT_BITS: f64 = 20e6;

/// An iperf3 client in the client namespace of `pair` and in `cgroup`, uploading to the
/// server.
fn upload(pair: &HostPair, cgroup: &Path, opts: &ClientOptions) -> Cmd {
    let argv = pair.client().exec(&iperf::client_argv(
        &pair.link.server_addr,
        IPERF3_PORT,
        opts,
    ));
    in_cgroup(cgroup, &argv, opts.timeout())
}

fn iperf_server(pair: &HostPair) -> Server {
    Server::start(
        pair.server(),
        &pair.link.server_addr,
        IPERF3_PORT,
        Duration::from_secs(120),
    )
    .unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// rein's metrics server, in this process, on a free port of 127.0.0.1; stopped on drop.
struct MetricsServer {
    server: Arc<metrics::Server>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MetricsServer {
    fn start(instance: rein::Instance) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Arc::new(metrics::Server::from_listener(listener, instance).unwrap());
        let running = Arc::clone(&server);
        let thread = Some(thread::spawn(move || running.run()));
        Self { server, thread }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr().unwrap()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's prometheus, scraping `target` every second, with its config and storage in a
/// temporary directory; killed on drop.
struct Prometheus {
    addr: SocketAddr,
    _process: Running,
    _dir: Files,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = Files::new("t-prometheus");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: rein\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", http::free_port().unwrap())
            .parse()
            .unwrap();
        let process = Cmd::new(["prometheus"], Duration::from_secs(300))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .spawn()
            .unwrap();
        let prometheus = Self {
            addr,
            _process: process,
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            http::get(addr, "/-/ready").is_ok_and(|(code, _)| code == 200)
        });
        assert!(ready, "prometheus did not become ready on {addr}");
        prometheus
    }

    /// The instant vector of `query` at unix time `at`: each series' labels and value.
    fn query(&self, query: &str, at: f64) -> Vec<(Value, f64)> {
        let target = format!("/api/v1/query?query={}&time={at:.3}", url_encode(query));
        let (code, body) = http::get(self.addr, &target).unwrap();
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {code} {body:?}: {e}"));
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }
}

#[test]
fn metrics_are_served_on_metrics_only() {
    let rein = instance();
    let app = rein.cgroup("app");
    rein.rein(&["set", "--cgroup", app.to_str().unwrap(), "--egress", LIMIT])
        .ok();
    let server = MetricsServer::start(rein.library_instance());
    let (code, body) = http::get(server.addr(), "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let relative = rein.relative(&app);
    for line in [
        format!(
            "rein_cgroup_rate_bytes_per_second{{cgroup=\"{relative}\",direction=\"egress\"}} 2500000"
        ),
        format!("rein_cgroup_burst_bytes{{cgroup=\"{relative}\",direction=\"egress\"}} 65536"),
        format!("rein_cgroup_passed_bytes_total{{cgroup=\"{relative}\",direction=\"egress\"}} "),
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&line)),
            "no line {line:?} in:\n{body}"
        );
    }
    assert!(body.ends_with("# EOF\n"), "{body}");
    // `rein metrics` prints the same families.
    let printed = rein.rein(&["metrics"]).ok().to_owned();
    assert!(printed.contains(&format!(
        "rein_cgroup_rate_bytes_per_second{{cgroup=\"{relative}\""
    )));
    assert_eq!(http::get(server.addr(), "/other").unwrap().0, 404);

    // Metrics never wait for the lock that a command (or the agent) holds.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(rein.lock_path())
        .unwrap();
    // SAFETY: flock on a descriptor the test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    rein.rein(&["list"])
        .refused(&["another rein command is running"]);
    let printed = rein.rein(&["metrics"]).ok().to_owned();
    assert!(printed.contains(&relative), "{printed}");
    assert_eq!(http::get(server.addr(), "/metrics").unwrap().0, 200);
    drop(lock);
    drop(server);
    rein.rein(&["unset", "--cgroup", app.to_str().unwrap()])
        .ok();
    rein.assert_no_trace("`rein unset` after the metrics");
}

#[test]
fn an_ingress_queue_is_measured_where_rein_runs() {
    let rein = instance();
    let app = rein.cgroup("app");
    let app = app.to_str().unwrap();
    let relative = rein.relative(Path::new(app));
    let pair = HostPair::create("oq").unwrap();
    let ns = pair.client().name();
    rein.rein_in(ns, &["set", "--cgroup", app, "--ingress", "10mbit"])
        .ok();
    let there = rein.rein_in(ns, &["metrics"]).ok().to_owned();
    for series in [
        "rein_ingress_queue_backlog_bytes",
        "rein_ingress_queue_backlog_packets",
        "rein_ingress_queue_dropped_packets_total",
    ] {
        let series = format!("{series}{{cgroup=\"{relative}\"}}");
        assert_eq!(
            http::sample(&there, &series),
            Some(0.0),
            "{series} in:\n{there}"
        );
    }
    let ingress = format!("{{cgroup=\"{relative}\",direction=\"ingress\"}}");
    assert_eq!(
        http::sample(
            &there,
            &format!("rein_cgroup_rate_bytes_per_second{ingress}")
        ),
        Some(1_250_000.0),
        "{there}"
    );
    // Elsewhere the limit is there, its queue (a device of that namespace) is not.
    let here = rein.rein(&["metrics"]).ok().to_owned();
    assert!(here.contains(&ingress), "{here}");
    assert!(
        !here.contains("rein_ingress_queue_backlog_bytes{"),
        "{here}"
    );
    rein.rein_in(ns, &["unset", "--cgroup", app]).ok();
    rein.assert_no_trace("`rein unset` of the ingress limit");
}

#[test]
fn a_net_rule_and_its_top_sources_are_in_the_metrics() {
    let rein = instance();
    let pair = HostPair::create("on").unwrap();
    let ns = pair.server().name();
    let dev = &pair.link.server_if;
    rein.rein_in(
        ns,
        &[
            "net",
            "add",
            "--dev",
            dev,
            "--dir",
            "ingress",
            "--rate",
            "10mbit",
            "--per-source",
        ],
    )
    .ok();
    let ping = pair
        .client()
        .exec(&["ping", "-c", "5", "-i", "0.2", &pair.link.server_addr]);
    Cmd::new(ping, Duration::from_secs(15))
        .output()
        .unwrap()
        .check("ping")
        .unwrap();
    let text = metrics::gather(&rein.library_instance()).unwrap();
    let labels =
        format!("{{rule=\"1\",device=\"{dev}\",hook=\"tc-ingress\",direction=\"ingress\"}}");
    let value = |name: &str| http::sample(&text, &format!("{name}{labels}"));
    assert_eq!(
        value("rein_net_rate_bytes_per_second"),
        Some(1_250_000.0),
        "{text}"
    );
    assert_eq!(value("rein_net_burst_bytes"), Some(65_536.0), "{text}");
    assert_eq!(value("rein_net_attached"), Some(1.0), "{text}");
    assert_eq!(value("rein_net_dropped_packets_total"), Some(0.0), "{text}");
    let passed = value("rein_net_passed_packets_total").unwrap_or_default();
    assert!(passed >= 5.0, "{passed} packets passed:\n{text}");
    let source = format!("{{rule=\"1\",source=\"{}\"}}", pair.link.client_addr);
    let from_client = http::sample(
        &text,
        &format!("rein_net_source_passed_packets_total{source}"),
    );
    assert!(
        from_client >= Some(5.0),
        "{source}: {from_client:?}\n{text}"
    );
    rein.rein_in(ns, &["net", "del", "1"]).ok();
    rein.assert_no_trace("`rein net del` after the metrics");
}

/// Commands change the limits (a rate changed, a limit added and removed, the datapath
/// installed and uninstalled with it) while metrics are read without the lock: every read
/// succeeds and finds the limit that stays.
#[test]
fn metrics_are_read_beside_commands_that_change_the_limits() {
    let rein = instance();
    let app = rein.cgroup("app");
    let other = rein.cgroup("other");
    let relative = rein.relative(&app);
    let stays = format!("rein_cgroup_rate_bytes_per_second{{cgroup=\"{relative}\"");
    let (app, other) = (app.to_str().unwrap(), other.to_str().unwrap());
    let instance = rein.library_instance();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (done, stays) = (Arc::clone(&done), stays.clone());
        thread::spawn(move || {
            let mut reads = 0;
            let mut found = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let text = metrics::gather(&instance).unwrap();
                thread::sleep(Duration::from_millis(2));
                reads += 1;
                found += usize::from(text.contains(&stays));
            }
            (reads, found)
        })
    };
    for round in 0..6 {
        let rate = if round % 2 == 0 { "10mbit" } else { "20mbit" };
        rein.rein(&["set", "--cgroup", app, "--egress", rate]).ok();
        rein.rein(&["set", "--cgroup", other, "--ingress", rate])
            .ok();
        rein.rein(&["unset", "--cgroup", other]).ok();
        rein.rein(&["unset", "--cgroup", app]).ok();
        rein.rein(&["set", "--cgroup", app, "--egress", rate]).ok();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, found) = reader.join().unwrap();
    eprintln!("{reads} reads beside the commands, {found} with the limit");
    assert!(
        reads >= 10 && found > 0,
        "{reads} reads, {found} with {stays}"
    );
    rein.rein(&["unset", "--cgroup", app]).ok();
    rein.assert_no_trace("`rein unset` after the metrics");
}

#[test]
fn prometheus_sees_the_rate_iperf3_measures() {
    let _traffic = traffic();
    let rein = instance();
    let app = rein.cgroup("app");
    // As an operator runs it: the limit declared in the agent's configuration, and Prometheus
    // scraping the agent.
    let config = Config::new();
    config.write(
        "app.yaml",
        &cgroup_limit("app", &rein.relative(&app), LIMIT),
    );
    let agent = Agent::start(&rein, &config.dir, &["--remove-on-exit"]);
    let prometheus = Prometheus::start(agent.metrics);
    let scraped = wait_until(Duration::from_secs(15), || {
        prometheus
            .query("up{job=\"rein\"}", unix_now())
            .first()
            .is_some_and(|(_, up)| *up == 1.0)
    });
    assert!(scraped, "prometheus never scraped rein's /metrics");

    let pair = HostPair::create("ob").unwrap();
    let _iperf_server = iperf_server(&pair);
    // One second of slow start left out of iperf3's sums; the query's window lies inside the
    // eight measured seconds.
    let opts = ClientOptions {
        seconds: 8,
        omit: 1,
        ..ClientOptions::default()
    };
    let started = unix_now();
    let measured: Measured = iperf::run_client(&upload(&pair, &app, &opts), false, false).unwrap();
    let ended = unix_now();
    // A scrape after the query's time, so that the window's samples are all in.
    thread::sleep(Duration::from_secs(3));

    // The window: from two seconds into the measured part to one second before its end.
    let at = ended - 1.0;
    let window = (at - (started + f64::from(opts.omit) + 2.0)).floor() as u32;
    assert!(window >= 4, "iperf3 took {:.1} s", ended - started);
    let relative = rein.relative(&app);
    let query = format!(
        "rate(rein_cgroup_passed_bytes_total{{cgroup=\"{relative}\",direction=\"egress\"}}[{window}s])"
    );
    let result = prometheus.query(&query, at);
    assert_eq!(result.len(), 1, "{query}: {result:?}");
    let ip_bytes_per_second = result[0].1;
    // rein counts IP bytes; iperf3 counts TCP payload, 1448 of each 1500-byte segment.
    let payload_bps = ip_bytes_per_second * 8.0 * TCP_PAYLOAD_SHARE;
    let ratio = payload_bps / measured.received_bps;
    eprintln!(
        "prometheus {query} = {:.0} B/s ({:.3} Mbit/s of payload); iperf3 {:.3} Mbit/s: {ratio:.4}",
        ip_bytes_per_second,
        payload_bps / 1e6,
        measured.received_bps / 1e6
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "Prometheus' rate {:.3} Mbit/s of payload is {ratio:.4} of iperf3's {:.3} Mbit/s",
        payload_bps / 1e6,
        measured.received_bps / 1e6
    );
    // And it was a limited transfer: near the limit, not above it.
    let of_limit = ip_bytes_per_second * 8.0 / LIMIT_BITS;
    assert!(
        (0.85..=1.02).contains(&of_limit),
        "the rate was {of_limit:.3} of the limit"
    );

    drop(prometheus);
    let out = agent.stop(libc::SIGTERM);
    assert!(out.status.success(), "{out}");
    rein.assert_no_trace("the agent's --remove-on-exit after the Prometheus scrape");
}

// ---------------------------------------------------------------------------
// rein top
// ---------------------------------------------------------------------------

/// A tmux server of the test's own (its own socket), killed with its sessions on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self {
            socket: format!("rein-t-{}", unique_suffix()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        Cmd::new(["tmux", "-L", &self.socket], Duration::from_secs(10))
            .args(args)
            .output()
            .unwrap()
            .check("tmux")
            .unwrap()
            .stdout
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Cmd::new(
            ["tmux", "-L", &self.socket, "kill-server"],
            Duration::from_secs(10),
        )
        .output();
    }
}

/// The rate `rein top` shows on the row of `cgroup`'s egress limit, in bit/s.
fn shown_rate(screen: &str, cgroup: &str) -> Option<f64> {
    let line = screen.lines().find(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&cgroup) && fields.get(2) == Some(&"egress")
    })?;
    let rate = line.split_whitespace().nth(3)?;
    let units = [("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)];
    units.iter().find_map(|(unit, size)| {
        rate.strip_suffix(unit)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n * size)
    })
}

#[test]
fn top_in_tmux_shows_a_limited_transfer_near_its_limit_and_quits_on_q() {
    let _traffic = traffic();
    let rein = instance();
    let app = rein.cgroup("app");
    rein.rein(&["set", "--cgroup", app.to_str().unwrap(), "--egress", LIMIT])
        .ok();
    let relative = rein.relative(&app);

    let tmux = Tmux::new();
    // The shell says how rein top ended, and stays, so the screen can be read after it.
    let command = format!(
        "env -u REIN_BPFFS -u REIN_BTF -u REIN_RUN_DIR -u REIN_LOG REIN_INSTANCE={} {} top; \
         echo rein-top-exited=$?; sleep 60",
        rein.name(),
        rein.binary().display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "200",
        "-y",
        "50",
        &command,
    ]);

    let pair = HostPair::create("ot").unwrap();
    let _iperf_server = iperf_server(&pair);
    let opts = ClientOptions {
        seconds: 10,
        ..ClientOptions::default()
    };
    let client = upload(&pair, &app, &opts).spawn().unwrap();

    // Past slow start, the row shows the rate of the last second: near the limit.
    let mut last = String::new();
    let mut rates = Vec::new();
    let near = wait_until(Duration::from_secs(9), || {
        last = tmux.screen();
        let rate = shown_rate(&last, &relative);
        if rate.is_some() && rate != rates.last().copied() {
            rates.push(rate.unwrap_or_default());
        }
        rate.is_some_and(|r| (0.9..=1.05).contains(&(r / LIMIT_BITS)))
    });
    assert!(
        near,
        "rein top never showed {relative} near {LIMIT} (rates seen: {rates:?}):\n{last}"
    );
    eprintln!(
        "rein top showed {:?} bit/s under {LIMIT}:\n{last}",
        rates.last()
    );
    assert!(last.contains("20.00Mbit"), "the limit column:\n{last}");
    assert!(last.contains("q quit"), "the footer:\n{last}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let exited = wait_until(Duration::from_secs(5), || {
        tmux.screen().contains("rein-top-exited=0")
    });
    assert!(exited, "rein top did not exit on q:\n{}", tmux.screen());

    client.wait().unwrap().check("iperf3").unwrap();
    drop(tmux);
    rein.rein(&["unset", "--cgroup", app.to_str().unwrap()])
        .ok();
    rein.assert_no_trace("`rein unset` after rein top");
}
