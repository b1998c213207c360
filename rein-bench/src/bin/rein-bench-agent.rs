//! `rein-bench-agent`: what declarative limits and the agent cost (issue 12). `rein apply` of
//! 1, 100 and 10,000 `CgroupLimit` resources (each run on a clean instance, repeated), then a
//! `rein agent` holding the largest count: its resident memory and CPU while idle, and the
//! time from an edit of the configuration to the new rate in the kernel's map.
//!
//! Prints a table and writes `agent-latest.json` and `agent-latest.png`. Everything it makes
//! (cgroups, configuration, the instance, the agent) is removed by guards, also on errors and
//! on Ctrl-C.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use plotters::prelude::*;
use rein::{capabilities::cgroup_limit::datapath::Datapath, platform::cgroupfs::CgroupFs};
use rein_bench::{font, stop};
use rein_common::{Direction, RuleKey};
use rein_testkit::{
    http,
    process::{self, Running, wait_until},
    rein_instance::ReinInstance,
    stats,
};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "What rein apply and rein agent cost, from 1 to 10,000 resources")]
struct Args {
    /// Resource counts to apply
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    counts: Vec<usize>,
    /// Runs of each apply
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Seconds the idle agent is watched for
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Edits timed to the kernel
    #[arg(long, default_value_t = 7)]
    edits: usize,
    /// Where the JSON and the plot go
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The rein binary
    #[arg(long, default_value = "target/release/rein")]
    rein: PathBuf,
    /// TrueType font for the plot's text
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

#[derive(Serialize)]
struct ApplyRow {
    resources: usize,
    seconds: Vec<f64>,
    median: f64,
}

#[derive(Serialize)]
struct AgentRow {
    resources: usize,
    /// Resident memory (KiB) once it has applied everything.
    rss_kib: u64,
    /// Share of one CPU while idle.
    idle_cpu: f64,
    idle_seconds: u64,
    /// From the edit's rename to the new rate in the kernel's map.
    edit_to_kernel_seconds: Vec<f64>,
    edit_median: f64,
}

#[derive(Serialize)]
struct Document {
    date: String,
    apply: Vec<ApplyRow>,
    agent: AgentRow,
}

fn main() -> ExitCode {
    stop::exit("rein-bench-agent", bench())
}

fn bench() -> Result<ExitCode> {
    let args = Args::parse();
    if !args.rein.exists() {
        bail!(
            "no rein binary at {} (cargo build --release)",
            args.rein.display()
        );
    }
    font::load_font(&args.font)?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    process::install_signal_handlers()?;
    let binary = fs::canonicalize(&args.rein)?;
    let largest = args.counts.iter().copied().max().unwrap_or(1);
    let cgroups = Cgroups::make(largest)?;

    let mut apply = Vec::new();
    for &count in &args.counts {
        let mut seconds = Vec::new();
        for run in 0..args.repeat {
            process::check_interrupted()?;
            let rein = ReinInstance::new(&binary, format!("rein-ba-{run}"), "rein-bench-agent")?;
            let config = Config::write(&cgroups, count, "10mbit")?;
            let started = Instant::now();
            rein.command()
                .args(["apply", "-f"])
                .arg(&config.file)
                .timeout(Duration::from_secs(600))
                .run()?
                .check("rein apply")?;
            seconds.push(started.elapsed().as_secs_f64());
            rein.purge()?;
        }
        let median = stats::percentile(&seconds, 50.0).unwrap_or(0.0);
        println!("apply {count:>6} resources: median {median:.3} s, runs {seconds:.3?}");
        apply.push(ApplyRow {
            resources: count,
            seconds,
            median,
        });
    }

    // The agent with the largest count.
    let rein = ReinInstance::new(&binary, "rein-ba-agent".into(), "rein-bench-agent")?;
    let config = Config::write(&cgroups, largest, "10mbit")?;
    let port = http::free_port()?;
    let agent = rein
        .command()
        .args(["agent", "--config"])
        .arg(&config.dir)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .timeout(Duration::from_secs(3600))
        .spawn()?;
    let first = cgroups.key(0)?;
    let last = cgroups.key(largest - 1)?;
    let datapath = || Datapath::open(&rein.library_instance());
    let applied = |key: RuleKey, rate: u64| {
        datapath()
            .ok()
            .and_then(|d| d.rule(key))
            .is_some_and(|rule| rule.rate == rate)
    };
    if !wait_until(Duration::from_secs(600), || {
        applied(first, 1_250_000) && applied(last, 1_250_000)
    }) {
        bail!("the agent did not apply {largest} resources in 10 minutes");
    }
    // Settled: the first reconciliations after the apply are over.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_kib, idle_cpu) = watch_idle(&agent, args.idle_seconds)?;
    println!(
        "agent with {largest} resources: {rss_kib} KiB resident, {:.2}% of a CPU idle over {} s",
        idle_cpu * 100.0,
        args.idle_seconds
    );

    let mut edit_to_kernel_seconds = Vec::new();
    for edit in 0..args.edits {
        process::check_interrupted()?;
        // Alternate two rates, so every edit is a change.
        let (rate, bytes) = if edit % 2 == 0 {
            ("20mbit", 2_500_000)
        } else {
            ("10mbit", 1_250_000)
        };
        let new = Config::text(&cgroups, largest, "10mbit", Some((largest - 1, rate)));
        let started = config.replace(&new)?;
        if !wait_until(Duration::from_secs(120), || applied(last, bytes)) {
            bail!("edit {edit} did not reach the kernel in 2 minutes");
        }
        edit_to_kernel_seconds.push(started.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(700));
    }
    let edit_median = stats::percentile(&edit_to_kernel_seconds, 50.0).unwrap_or(0.0);
    println!(
        "edit to kernel with {largest} resources: median {:.3} s, runs {edit_to_kernel_seconds:.3?}",
        edit_median
    );
    drop(agent);
    rein.purge()?;

    let document = Document {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        apply,
        agent: AgentRow {
            resources: largest,
            rss_kib,
            idle_cpu,
            idle_seconds: args.idle_seconds,
            edit_to_kernel_seconds,
            edit_median,
        },
    };
    let json = args.out.join("agent-latest.json");
    fs::write(&json, serde_json::to_string_pretty(&document)?)?;
    let png = args.out.join("agent-latest.png");
    draw(&png, &document)?;
    println!(
        "rein-bench-agent: wrote {} and {}",
        json.display(),
        png.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Resident memory and the share of a CPU the agent uses over `seconds` of idling.
fn watch_idle(agent: &Running, seconds: u64) -> Result<(u64, f64)> {
    let ticks = |pid: u32| -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| -> Result<u64> {
            Ok(fields.get(n - 3).context("a short /proc stat")?.parse()?)
        };
        Ok(field(14)? + field(15)?)
    };
    let pid = agent.pid();
    // SAFETY: sysconf takes a plain integer.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = ticks(pid)?;
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    while waited < Duration::from_secs(seconds) {
        process::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
        waited = started.elapsed();
    }
    let used = (ticks(pid)? - before) as f64 / per_second;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((rss_kib, used / waited.as_secs_f64()))
}

/// The benchmark's cgroups, `/rein-bench-agent/c00000` and on; removed on drop.
struct Cgroups {
    dir: PathBuf,
    count: usize,
}

impl Cgroups {
    fn make(count: usize) -> Result<Self> {
        let fs = CgroupFs::discover()?;
        let dir = fs.mount().join("rein-bench-agent");
        let cgroups = Self { dir, count: 0 };
        let _ = fs::create_dir(&cgroups.dir);
        let mut cgroups = cgroups;
        for n in 0..count {
            let path = cgroups.path(n);
            if !path.exists() {
                fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
            }
            cgroups.count = n + 1;
        }
        Ok(cgroups)
    }

    fn path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("c{n:05}"))
    }

    fn relative(n: usize) -> String {
        format!("/rein-bench-agent/c{n:05}")
    }

    fn key(&self, n: usize) -> Result<RuleKey> {
        let id = CgroupFs::discover()?.resolve(&self.path(n))?.id()?;
        Ok(RuleKey::new(id, Direction::Egress))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for n in 0..self.count {
            let _ = fs::remove_dir(self.path(n));
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A configuration file of `count` resources in a directory of its own; removed on drop.
struct Config {
    dir: PathBuf,
    file: PathBuf,
}

impl Config {
    fn write(cgroups: &Cgroups, count: usize, rate: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("rein-bench-agent-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir)?;
        let config = Self {
            file: dir.join("limits.yaml"),
            dir,
        };
        config.replace(&Self::text(cgroups, count, rate, None))?;
        Ok(config)
    }

    /// `count` CgroupLimits at `rate`, one of them (`changed`) at another.
    fn text(
        _cgroups: &Cgroups,
        count: usize,
        rate: &str,
        changed: Option<(usize, &str)>,
    ) -> String {
        let mut text = String::new();
        for n in 0..count {
            let rate = match changed {
                Some((m, other)) if m == n => other,
                _ => rate,
            };
            text.push_str(&format!(
                "---\napiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: c{n:05}\n\
                 spec:\n  cgroup: {}\n  egress:\n    rate: {rate}\n",
                Cgroups::relative(n)
            ));
        }
        text
    }

    /// Replaces the file as an editor does (a new file renamed over it); when it was renamed.
    fn replace(&self, text: &str) -> Result<Instant> {
        let new = self.dir.join(".limits.yaml.new");
        let mut file = fs::File::create(&new)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&new, &self.file)?;
        Ok(Instant::now())
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn draw(path: &Path, doc: &Document) -> Result<()> {
    let error = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the plot: {e}");
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let (left, right) = root.split_horizontally(600);
    let most = doc
        .apply
        .iter()
        .flat_map(|row| row.seconds.iter().copied())
        .fold(0.001_f64, f64::max);
    let widest = doc
        .apply
        .iter()
        .map(|row| row.resources as f64)
        .fold(1.0_f64, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("rein apply: seconds against resources", (font::FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0.5f64..widest * 2.0).log_scale(),
            (0.01f64..most * 2.0).log_scale(),
        )
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("seconds (log)")
        .x_desc("resources (log)")
        .draw()
        .map_err(|e| error(&e))?;
    for row in &doc.apply {
        let x = row.resources as f64;
        chart
            .draw_series(
                row.seconds
                    .iter()
                    .map(|&s| Circle::new((x, s), 4, BLUE.filled())),
            )
            .map_err(|e| error(&e))?;
        chart
            .draw_series(std::iter::once(Cross::new(
                (x, row.median),
                8,
                RED.stroke_width(2),
            )))
            .map_err(|e| error(&e))?;
    }
    let edits = &doc.agent.edit_to_kernel_seconds;
    let most = edits.iter().copied().fold(0.01_f64, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("agent, {} resources: edit to kernel", doc.agent.resources),
            (font::FONT, 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5f64..(edits.len() as f64 + 0.5), 0f64..most * 1.2)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("seconds")
        .x_desc("edit")
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(
            edits
                .iter()
                .enumerate()
                .map(|(i, &s)| Circle::new((i as f64 + 1.0, s), 4, BLUE.filled())),
        )
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}
