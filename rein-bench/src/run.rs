//! One measurement: fresh namespaces, a limiter, an iperf3 server, the client (with ping, for
//! TCP) under the limit, and the row it gives. Everything made for the run is removed before
//! the next one starts, in reverse order of creation (server, limiter, namespaces).
//!
//! By kind of scenario:
//! - single: one such stack and one iperf3 client;
//! - side by side: two complete stacks, each with its own namespaces, limit and server, and their
//!   two clients started together. Each client's script first says it is ready (it runs under
//!   its limit: for rein, inside its own `rein run`, so in its own cgroup) and waits for a go file
//!   the bench makes once both are ready. The clients are started one after the other because
//!   `rein run` refuses to set up while another rein command holds the instance; the gate makes
//!   their traffic start together anyway (within the scripts' 10 ms poll). ping runs in client 1
//!   only;
//! - start/stop: one stack with two servers; in the one limited context flow A runs for the whole
//!   run and flow B joins for the middle third of A's measured seconds, then stops.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rein_testkit::{
    iperf::Server,
    netns::Hosts,
    ping::{self, Pings},
    process::{self, Cmd, Output, Running},
};

use crate::{
    cli::{self, Config, Limiter, Mix, Proto, Scenario},
    cpu,
    iperf::{self, Measured},
    limiters,
    limiters::{Limited, Rein},
    report::Row,
    traffic::Traffic,
};

/// What the client may take beyond its iperf3 seconds: rein's set-up and tear-down, the
/// connection, ping's deadline and the results exchange.
const CLIENT_SLACK: Duration = Duration::from_secs(25);

/// How long a side-by-side client may take to be ready (rein's set-up, `ip netns exec`).
const GATE: Duration = Duration::from_secs(20);

/// How often a side-by-side client's script looks for the go file, in seconds (`sleep`'s
/// syntax), and how many looks it has: as long as both clients may take to be ready, so that a
/// script left waiting ends by itself.
const GATE_POLL: &str = "0.01";
const GATE_POLLS: u64 = 2 * GATE.as_secs() * 100;

/// A side-by-side client's exit status when its go file never came.
const GATE_EXIT: u8 = 97;

/// A scratch directory, `/tmp/rein-bench-<pid>`, removed on drop.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn create(pid: u32) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("rein-bench-{pid}"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("rein-bench: warning: removing {}: {e}", self.0.display());
        }
    }
}

/// Everything that lives for the whole bench. Dropping it purges the rein instance, then removes
/// the scratch directory.
#[derive(Debug)]
pub struct Bench<'a> {
    config: &'a Config,
    pid: u32,
    runs: u32,
    rein: Option<Rein>,
    work: WorkDir,
}

/// One client's stack for a run: its namespaces, its limit and its iperf3 servers. The fields drop
/// in order, the reverse of creation: servers, limit, namespaces.
#[derive(Debug)]
struct Stack {
    _servers: Vec<Server>,
    limited: Limited,
    hosts: Hosts,
}

impl Stack {
    /// Where the servers listen.
    fn addr(&self) -> &str {
        &self.limited.server_addr
    }

    /// `sh -c SCRIPT` in the client namespace, under the limit.
    fn client(&self, script: &str, timeout: Duration) -> Cmd {
        let inner = ["sh", "-c", script];
        self.limited.client(self.hosts.client.exec(&inner), timeout)
    }
}

impl<'a> Bench<'a> {
    pub fn new(config: &'a Config) -> Result<Self> {
        let pid = std::process::id();
        let work = WorkDir::create(pid)?;
        // rein-cni limits through the same private instance, whose purge cleans up after both.
        let rein = [Limiter::Rein, Limiter::ReinCni]
            .iter()
            .any(|l| config.limiters.contains(l))
            .then(|| limiters::rein_instance(&config.rein, pid))
            .transpose()?;
        Ok(Self {
            config,
            pid,
            runs: 0,
            rein,
            work,
        })
    }

    /// Runs `scenario` through `limiter` once.
    pub fn measure(&mut self, scenario: &Scenario, limiter: Limiter) -> Result<Row> {
        self.runs += 1;
        let run_dir = self.work.path().join(format!("run-{}", self.runs));
        create_dir(&run_dir)?;
        match scenario.mix {
            Mix::Single => self.single(scenario, limiter, &run_dir),
            Mix::SideBySide => self.side_by_side(scenario, limiter, &run_dir),
            Mix::StartStop => self.start_stop(scenario, limiter, &run_dir),
        }
    }

    /// The deadline of a client (and of its servers).
    fn client_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.run_seconds())) + CLIENT_SLACK
    }

    /// Makes a stack: namespaces `id`, `limiter` between them (`dir` is its scratch directory)
    /// and a server on each of `ports`. On an error, what was made is removed (in reverse).
    fn stack(
        &self,
        scenario: &Scenario,
        limiter: Limiter,
        id: &str,
        dir: &Path,
        ports: &[u16],
        timeout: Duration,
    ) -> Result<Stack> {
        let hosts = Hosts::create(&format!("rein-bench-{id}"))?;
        let limited = limiters::apply(
            limiter,
            limiters::ReinSetup {
                instance: self.rein.as_ref(),
                cni_plugin: &self.config.rein_cni,
            },
            &hosts,
            scenario.direction,
            scenario.rate,
            dir,
            self.pid,
        )?;
        let mut servers = Vec::with_capacity(ports.len());
        for &port in ports {
            servers.push(iperf::server(
                &hosts.server,
                &limited.server_addr,
                port,
                timeout,
            )?);
        }
        Ok(Stack {
            _servers: servers,
            limited,
            hosts,
        })
    }

    /// `iperf3 -c` arguments of flow A (the only flow of a single run).
    fn iperf_args(&self, scenario: &Scenario, stack: &Stack) -> Vec<String> {
        iperf::client_args(
            scenario,
            stack.addr(),
            iperf::PORT,
            self.config.seconds,
            self.config.omit,
        )
    }

    /// One client, one iperf3 run.
    fn single(&self, scenario: &Scenario, limiter: Limiter, run_dir: &Path) -> Result<Row> {
        let timeout = self.client_timeout();
        let id = self.runs.to_string();
        let stack = self.stack(scenario, limiter, &id, run_dir, &[iperf::PORT], timeout)?;

        let iperf_args = self.iperf_args(scenario, &stack);
        let files = RunFiles::new(run_dir);
        let ping_args = match scenario.proto {
            Proto::Tcp => Some(ping::args(stack.addr(), self.config.run_seconds())),
            Proto::Udp => None,
        };
        let script = client_script(
            &Script {
                iperf: &iperf_args,
                ping: ping_args.as_deref(),
                ..Script::default()
            },
            &files,
        )?;

        let started = Instant::now();
        let output = stack.client(&script, timeout).output()?;
        let wall = started.elapsed().as_secs_f64();

        let measured = parse_client(&output, scenario)?;
        let (before, after) = files.cpu_busy()?;
        let pings = ping_args.is_some().then(|| files.pings());

        // Tear down in reverse order before the next run: server, limit, namespaces.
        drop(stack);

        let traffic = Traffic::single(&measured, limit(scenario));
        Ok(self.row(scenario, limiter, traffic, after - before, pings, wall))
    }

    /// Two clients at once, each in its own stack under its own limit.
    fn side_by_side(&self, scenario: &Scenario, limiter: Limiter, run_dir: &Path) -> Result<Row> {
        // Both clients may wait at the gate for both to be ready.
        let timeout = self.client_timeout() + 2 * GATE;
        let dirs = [run_dir.join("client-1"), run_dir.join("client-2")];
        for dir in &dirs {
            create_dir(dir)?;
        }
        let stack = |client: usize| {
            let id = format!("{}-{}", self.runs, client + 1);
            self.stack(
                scenario,
                limiter,
                &id,
                &dirs[client],
                &[iperf::PORT],
                timeout,
            )
        };
        let one = stack(0)?;
        let two = stack(1)?;

        let files = [RunFiles::new(&dirs[0]), RunFiles::new(&dirs[1])];
        let go = run_dir.join("go");
        let args = [
            self.iperf_args(scenario, &one),
            self.iperf_args(scenario, &two),
        ];
        // ping from client 1 only: the latency one client sees under its limit while its
        // neighbour runs too.
        let ping_args = ping::args(one.addr(), self.config.run_seconds());
        let scripts = [
            client_script(
                &Script {
                    iperf: &args[0],
                    ping: Some(&ping_args),
                    gate: Some(&go),
                    ..Script::default()
                },
                &files[0],
            )?,
            client_script(
                &Script {
                    iperf: &args[1],
                    gate: Some(&go),
                    ..Script::default()
                },
                &files[1],
            )?,
        ];

        // One after the other up to the gate (see the module's comment), then both at once.
        let first = wait_ready(one.client(&scripts[0], timeout).spawn()?, &files[0].ready)
            .context("client 1")?;
        let second = wait_ready(two.client(&scripts[1], timeout).spawn()?, &files[1].ready)
            .context("client 2")?;
        std::fs::write(&go, "").with_context(|| format!("creating {}", go.display()))?;
        let started = Instant::now();
        // If the first fails, dropping the second kills it.
        let outputs = [first.wait()?, second.wait()?];
        let wall = started.elapsed().as_secs_f64();

        let measured = [
            parse_client(&outputs[0], scenario).context("client 1")?,
            parse_client(&outputs[1], scenario).context("client 2")?,
        ];
        // The machine's CPU time from the first copy of /proc/stat to the last.
        let (cpu_1, cpu_2) = (files[0].cpu_busy()?, files[1].cpu_busy()?);
        let cpu_seconds = cpu_1.1.max(cpu_2.1) - cpu_1.0.min(cpu_2.0);
        let pings = files[0].pings();

        // Tear down, the later stack first.
        drop(two);
        drop(one);

        let traffic = Traffic::side_by_side([&measured[0], &measured[1]], limit(scenario));
        Ok(self.row(scenario, limiter, traffic, cpu_seconds, Some(pings), wall))
    }

    /// One limited client: flow A throughout, flow B for the middle third.
    fn start_stop(&self, scenario: &Scenario, limiter: Limiter, run_dir: &Path) -> Result<Row> {
        let timeout = self.client_timeout();
        let id = self.runs.to_string();
        let ports = [iperf::PORT, iperf::JOINER_PORT];
        let stack = self.stack(scenario, limiter, &id, run_dir, &ports, timeout)?;

        let (b_start, b_seconds) = cli::start_stop_window(self.config.seconds);
        let a_args = self.iperf_args(scenario, &stack);
        // B runs inside A's measured seconds, so none of it is left out: its own slow start is
        // part of what a joining flow does to the limit.
        let b_args = iperf::client_args(scenario, stack.addr(), iperf::JOINER_PORT, b_seconds, 0);
        let ping_args = ping::args(stack.addr(), self.config.run_seconds());
        let files = RunFiles::new(run_dir);
        let script = client_script(
            &Script {
                iperf: &a_args,
                ping: Some(&ping_args),
                // Counted from A's start: after A's omitted seconds.
                joiner: Some((self.config.omit + b_start, &b_args)),
                ..Script::default()
            },
            &files,
        )?;

        let started = Instant::now();
        let output = stack.client(&script, timeout).output()?;
        let wall = started.elapsed().as_secs_f64();

        let a = parse_client(&output, scenario).context("flow A")?;
        let b = iperf::parse(&read(&files.joiner)?, scenario).context("flow B")?;
        let (before, after) = files.cpu_busy()?;
        let pings = files.pings();

        drop(stack);

        let traffic = Traffic::start_stop(
            &a,
            &b,
            (b_start, b_seconds),
            self.config.seconds,
            limit(scenario),
        );
        let mut row = self.row(
            scenario,
            limiter,
            traffic,
            after - before,
            Some(pings),
            wall,
        );
        row.b_start_s = Some(b_start);
        row.b_seconds = Some(b_seconds);
        Ok(row)
    }

    /// The row of a finished run.
    fn row(
        &self,
        scenario: &Scenario,
        limiter: Limiter,
        traffic: Traffic,
        cpu_seconds: f64,
        pings: Option<Pings>,
        wall: f64,
    ) -> Row {
        let mut row = Row::new(scenario, limiter);
        let total_bytes = traffic.total_bytes;
        row.set_traffic(traffic);
        row.cpu_seconds = Some(cpu_seconds);
        row.cpu_s_per_gb = (total_bytes > 0.0).then(|| cpu_seconds / (total_bytes / 1e9));
        row.wall_seconds = Some(wall);
        if let Some(p) = pings {
            row.ping_avg_ms = p.avg();
            row.ping_p99_ms = p.p99();
            row.ping_requested = Some(ping::count(self.config.run_seconds()));
            row.ping_sent = Some(p.sent);
            row.ping_replies = Some(p.rtts_ms.len() as u32);
        }
        row
    }
}

/// The scenario's limit in bit/s.
fn limit(scenario: &Scenario) -> f64 {
    scenario.rate.bits_per_second() as f64
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))
}

/// iperf3's JSON on a client's stdout; when there is none, the error says how the client ended.
fn parse_client(output: &Output, scenario: &Scenario) -> Result<Measured> {
    iperf::parse_output(output, scenario)
}

/// Waits until a side-by-side client's script has touched `ready`, that is runs under its limit
/// (for rein: its `rein run` is set up and has let go of the instance, so the next one may start).
/// Fails with the client's own error if it ends first, and after [`GATE`].
fn wait_ready(mut client: Running, ready: &Path) -> Result<Running> {
    let deadline = Instant::now() + GATE;
    loop {
        if ready.exists() {
            return Ok(client);
        }
        process::check_interrupted()?;
        if client.finished()? {
            client.wait()?.check("the client")?;
            bail!("the client ended before it was ready");
        }
        if Instant::now() >= deadline {
            bail!("the client was not ready within {} s", GATE.as_secs());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Where the client's script leaves what it measured beside iperf3's JSON (on its stdout).
struct RunFiles {
    ping: PathBuf,
    cpu_before: PathBuf,
    cpu_after: PathBuf,
    /// Start/stop: flow B's JSON.
    joiner: PathBuf,
    /// Side by side: made by the script once it runs under the limit.
    ready: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path) -> Self {
        Self {
            ping: dir.join("ping.txt"),
            cpu_before: dir.join("stat.before"),
            cpu_after: dir.join("stat.after"),
            joiner: dir.join("joiner.json"),
            ready: dir.join("ready"),
        }
    }

    /// The machine's busy CPU seconds at the two copies of /proc/stat.
    fn cpu_busy(&self) -> Result<(f64, f64)> {
        Ok((
            cpu::busy_seconds(&read(&self.cpu_before)?)?,
            cpu::busy_seconds(&read(&self.cpu_after)?)?,
        ))
    }

    /// What ping printed; none when it left no file.
    fn pings(&self) -> Pings {
        Pings::parse(&read(&self.ping).unwrap_or_default())
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// What a client's script runs.
#[derive(Debug, Default)]
struct Script<'a> {
    /// iperf3 (flow A), its JSON on the script's stdout.
    iperf: &'a [String],
    /// ping beside it, into [`RunFiles::ping`].
    ping: Option<&'a [String]>,
    /// Start/stop: flow B's iperf3, started this many seconds after A, its JSON into
    /// [`RunFiles::joiner`] (so that the two documents never mix on stdout).
    joiner: Option<(u32, &'a [String])>,
    /// Side by side: the go file. The script makes [`RunFiles::ready`], then waits for the go
    /// file before anything else.
    gate: Option<&'a Path>,
}

/// The client's `sh -c` script: /proc/stat copied just before and after iperf3 (so the CPU time
/// covers the transfer, not rein's set-up and tear-down), and ping, for TCP, beside iperf3 in the
/// same limited context (for rein: inside the same `rein run`, so in the same cgroup). ping ends
/// by itself at its deadline; the script waits for it and exits with iperf3's status (with a flow
/// B: A's, or B's when A's is 0).
fn client_script(script: &Script<'_>, files: &RunFiles) -> Result<String> {
    let path = |p: &Path| shell_words(&[p.to_string_lossy().into_owned()]);
    let gate = match script.gate {
        // Bounded: a script whose go file never comes gives up by itself.
        Some(go) => format!(
            ": >{ready}; n=0; while [ ! -e {go} ] && [ $n -lt {GATE_POLLS} ]; do \
             sleep {GATE_POLL}; n=$((n+1)); done; [ -e {go} ] || exit {GATE_EXIT}; ",
            ready = path(&files.ready)?,
            go = path(go)?,
        ),
        None => String::new(),
    };
    let ping = match script.ping {
        Some(args) => format!("{} >{} 2>&1 & ", shell_words(args)?, path(&files.ping)?),
        None => String::new(),
    };
    let iperf = shell_words(script.iperf)?;
    let traffic = match script.joiner {
        None => format!("{iperf}; rc=$?"),
        // A in the background; B in the foreground after the sleep (it ends before A does).
        Some((delay, joiner)) => format!(
            "{iperf} & a=$!; sleep {delay}; {joiner} >{out}; b=$?; wait $a; rc=$?; \
             [ $rc -ne 0 ] || rc=$b",
            joiner = shell_words(joiner)?,
            out = path(&files.joiner)?,
        ),
    };
    Ok(format!(
        "{gate}head -n1 /proc/stat >{before}; {ping}{traffic}; head -n1 /proc/stat >{after}; \
         wait; exit $rc",
        before = path(&files.cpu_before)?,
        after = path(&files.cpu_after)?,
    ))
}

/// Joins words for `sh -c`, refusing any that would need quoting (all of them are numbers,
/// addresses, flags and paths the bench made itself).
fn shell_words(words: &[String]) -> Result<String> {
    for w in words {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,".contains(c));
        if !plain {
            bail!("`{w}` cannot go into a shell command line unquoted");
        }
    }
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script() {
        let files = RunFiles::new(Path::new("/tmp/rb-1/run-2"));
        let iperf = [
            "iperf3".to_owned(),
            "-c".to_owned(),
            "198.18.0.2".to_owned(),
        ];
        let ping = ["ping".to_owned(), "198.18.0.2".to_owned()];
        let with_ping = Script {
            iperf: &iperf,
            ping: Some(&ping),
            ..Script::default()
        };
        assert_eq!(
            client_script(&with_ping, &files).unwrap(),
            "head -n1 /proc/stat >/tmp/rb-1/run-2/stat.before; ping 198.18.0.2 \
             >/tmp/rb-1/run-2/ping.txt 2>&1 & iperf3 -c 198.18.0.2; rc=$?; head -n1 /proc/stat \
             >/tmp/rb-1/run-2/stat.after; wait; exit $rc"
        );
        let without = Script {
            iperf: &iperf,
            ..Script::default()
        };
        assert!(!client_script(&without, &files).unwrap().contains("ping"));
    }

    #[test]
    fn script_with_a_joining_flow() {
        let files = RunFiles::new(Path::new("/tmp/rb-1/run-3"));
        let a = ["iperf3".to_owned(), "-p".to_owned(), "5201".to_owned()];
        let b = ["iperf3".to_owned(), "-p".to_owned(), "5202".to_owned()];
        let script = Script {
            iperf: &a,
            joiner: Some((3, &b)),
            ..Script::default()
        };
        assert_eq!(
            client_script(&script, &files).unwrap(),
            "head -n1 /proc/stat >/tmp/rb-1/run-3/stat.before; iperf3 -p 5201 & a=$!; sleep 3; \
             iperf3 -p 5202 >/tmp/rb-1/run-3/joiner.json; b=$?; wait $a; rc=$?; [ $rc -ne 0 ] \
             || rc=$b; head -n1 /proc/stat >/tmp/rb-1/run-3/stat.after; wait; exit $rc"
        );
    }

    #[test]
    fn script_behind_a_gate() {
        let files = RunFiles::new(Path::new("/tmp/rb-1/run-4/client-2"));
        let iperf = ["iperf3".to_owned()];
        let go = Path::new("/tmp/rb-1/run-4/go");
        let script = Script {
            iperf: &iperf,
            gate: Some(go),
            ..Script::default()
        };
        let text = client_script(&script, &files).unwrap();
        assert!(
            text.starts_with(
                ": >/tmp/rb-1/run-4/client-2/ready; n=0; while [ ! -e /tmp/rb-1/run-4/go ] && \
                 [ $n -lt 4000 ]; do sleep 0.01; n=$((n+1)); done; [ -e /tmp/rb-1/run-4/go ] || \
                 exit 97; head -n1 /proc/stat"
            ),
            "{text}"
        );
    }

    /// The scripts run as they are meant to, with `true`/`false`/`echo` for iperf3 and ping.
    #[test]
    fn scripts_run() {
        let dir = std::env::temp_dir().join(format!("rein-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = RunFiles::new(&dir);
        let words = |w: &[&str]| -> Vec<String> { w.iter().map(|s| (*s).to_owned()).collect() };
        let run = |script: &Script<'_>| {
            let text = client_script(script, &files).unwrap();
            Cmd::new(["sh", "-c", &text], Duration::from_secs(10))
                .output()
                .unwrap()
        };

        // Flow A on stdout, flow B in its file; A's status, else B's.
        let (a, b) = (words(&["echo", "A"]), words(&["echo", "B"]));
        let out = run(&Script {
            iperf: &a,
            joiner: Some((0, &b)),
            ..Script::default()
        });
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, "A\n");
        assert_eq!(read(&files.joiner).unwrap(), "B\n");
        assert!(files.cpu_busy().is_ok());
        let fails = words(&["false"]);
        let out = run(&Script {
            iperf: &a,
            joiner: Some((0, &fails)),
            ..Script::default()
        });
        assert_eq!(out.status.code(), Some(1));

        // Behind the gate: ready at once, then nothing until the go file.
        let go = dir.join("go");
        let gated = Script {
            iperf: &a,
            gate: Some(&go),
            ..Script::default()
        };
        let text = client_script(&gated, &files).unwrap();
        let client = Cmd::new(["sh", "-c", &text], Duration::from_secs(10))
            .spawn()
            .unwrap();
        let client = wait_ready(client, &files.ready).unwrap();
        std::fs::write(&go, "").unwrap();
        let out = client.wait().unwrap();
        assert_eq!(out.stdout, "A\n");

        // A client that ends before it is ready fails the wait with its own error.
        let early = Cmd::new(
            ["sh", "-c", "echo no cgroup >&2; exit 2"],
            Duration::from_secs(10),
        )
        .spawn()
        .unwrap();
        let err = wait_ready(early, &dir.join("never")).unwrap_err();
        assert!(format!("{err:#}").contains("no cgroup"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shell_words_refuses_specials() {
        let ok = [
            "ping".to_owned(),
            "-c".to_owned(),
            "/tmp/x-1/p.txt".to_owned(),
        ];
        assert_eq!(shell_words(&ok).unwrap(), "ping -c /tmp/x-1/p.txt");
        for bad in ["a b", "$(x)", "", "a;b", "'"] {
            assert!(shell_words(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
