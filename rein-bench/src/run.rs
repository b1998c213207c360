//! One measurement: fresh namespaces, a limiter, an iperf3 server, the client (with ping, for
//! TCP) under the limit, and the row it gives. Everything made for the run is removed before
//! the next one starts, in reverse order of creation (server, limiter, namespaces).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cli::{Config, Limiter, Proto, Scenario},
    cpu, iperf, limiters,
    limiters::Rein,
    netns::Hosts,
    ping::{self, Pings},
    report::Row,
    stats,
};

/// What the client may take beyond its iperf3 seconds: rein's set-up and tear-down, the
/// connection, ping's deadline and the results exchange.
const CLIENT_SLACK: Duration = Duration::from_secs(25);

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

impl<'a> Bench<'a> {
    pub fn new(config: &'a Config) -> Result<Self> {
        let pid = std::process::id();
        let work = WorkDir::create(pid)?;
        let rein = config
            .limiters
            .contains(&Limiter::Rein)
            .then(|| Rein::new(&config.rein, pid));
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
        std::fs::create_dir(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let run_seconds = self.config.run_seconds();
        let timeout = Duration::from_secs(u64::from(run_seconds)) + CLIENT_SLACK;

        let hosts = Hosts::create(self.pid, self.runs)?;
        let limited = limiters::apply(
            limiter,
            self.rein.as_ref(),
            &hosts,
            scenario.direction,
            scenario.rate,
            &run_dir,
            self.pid,
        )?;
        let server = iperf::server(&hosts.server, &limited.server_addr, timeout)?;

        let iperf_args = iperf::client_args(
            scenario,
            &limited.server_addr,
            self.config.seconds,
            self.config.omit,
        );
        let files = RunFiles::new(&run_dir);
        let ping_args = match scenario.proto {
            Proto::Tcp => Some(ping::args(&limited.server_addr, run_seconds)),
            Proto::Udp => None,
        };
        let script = client_script(&iperf_args, ping_args.as_deref(), &files)?;
        let inner = ["sh", "-c", &script];
        let client = limited.client(hosts.client.exec(&inner), timeout);

        let started = Instant::now();
        let output = client.output()?;
        let wall = started.elapsed().as_secs_f64();

        let measured = match iperf::parse(&output.stdout, scenario) {
            Ok(m) => m,
            Err(e) if !output.status.success() => {
                let stderr = output.stderr.trim();
                bail!("{e:#}; the client exited with {}: {stderr}", output.status)
            }
            Err(e) => return Err(e),
        };
        let cpu_seconds = cpu::busy_seconds(&read(&files.cpu_after)?)?
            - cpu::busy_seconds(&read(&files.cpu_before)?)?;
        let pings = match scenario.proto {
            Proto::Tcp => Some(Pings::parse(&read(&files.ping).unwrap_or_default())),
            Proto::Udp => None,
        };

        // Tear down in reverse order before the next run: server, limit, namespaces.
        drop(server);
        drop(limited);
        drop(hosts);

        let limit = scenario.rate.bits_per_second() as f64;
        let mut row = Row::new(scenario, limiter);
        row.goodput_ratio = Some(measured.received_bps / limit);
        row.received_bps = Some(measured.received_bps);
        row.sent_bps = measured.sent_bps;
        row.retransmits = measured.retransmits;
        row.tcp_rtt_us = measured.rtt_us;
        row.jain = stats::jain(&measured.stream_bps);
        row.max_1s_ratio = measured.max_interval_bps.map(|bps| bps / limit);
        row.udp_lost_percent = measured.udp_lost_percent;
        row.cpu_seconds = Some(cpu_seconds);
        row.cpu_s_per_gb =
            (measured.total_bytes > 0.0).then(|| cpu_seconds / (measured.total_bytes / 1e9));
        row.wall_seconds = Some(wall);
        if let Some(p) = pings {
            row.ping_avg_ms = p.avg();
            row.ping_p99_ms = p.p99();
            row.ping_requested = Some(ping::count(run_seconds));
            row.ping_sent = Some(p.sent);
            row.ping_replies = Some(p.rtts_ms.len() as u32);
        }
        Ok(row)
    }
}

/// Where the client's script leaves what it measured beside iperf3's JSON (on its stdout).
struct RunFiles {
    ping: PathBuf,
    cpu_before: PathBuf,
    cpu_after: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path) -> Self {
        Self {
            ping: dir.join("ping.txt"),
            cpu_before: dir.join("stat.before"),
            cpu_after: dir.join("stat.after"),
        }
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The client's `sh -c` script: /proc/stat copied just before and after iperf3 (so the CPU time
/// covers the transfer, not rein's set-up and tear-down), and ping, for TCP, beside iperf3 in the
/// same limited context (for rein: inside the same `rein run`, so in the same cgroup). ping ends
/// by itself at its deadline; the script waits for it and exits with iperf3's status.
fn client_script(iperf: &[String], ping: Option<&[String]>, files: &RunFiles) -> Result<String> {
    let path = |p: &Path| shell_words(&[p.to_string_lossy().into_owned()]);
    let ping = match ping {
        Some(args) => format!("{} >{} 2>&1 & ", shell_words(args)?, path(&files.ping)?),
        None => String::new(),
    };
    Ok(format!(
        "head -n1 /proc/stat >{before}; {ping}{iperf}; rc=$?; head -n1 /proc/stat >{after}; \
         wait; exit $rc",
        before = path(&files.cpu_before)?,
        after = path(&files.cpu_after)?,
        iperf = shell_words(iperf)?,
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
        assert_eq!(
            client_script(&iperf, Some(&ping), &files).unwrap(),
            "head -n1 /proc/stat >/tmp/rb-1/run-2/stat.before; ping 198.18.0.2 \
             >/tmp/rb-1/run-2/ping.txt 2>&1 & iperf3 -c 198.18.0.2; rc=$?; head -n1 /proc/stat \
             >/tmp/rb-1/run-2/stat.after; wait; exit $rc"
        );
        assert!(
            !client_script(&iperf, None, &files)
                .unwrap()
                .contains("ping")
        );
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
