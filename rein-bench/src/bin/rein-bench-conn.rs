//! `rein-bench-conn`: the benchmark of `rein conn` (issue 13). See `rein_bench::conn`.
//!
//! Bounded: every loop checks the stop flag. Clean: the namespace, the throwaway instances
//! (programs, maps, cgroups) go with guards, also on errors and on Ctrl-C (SIGINT/SIGTERM/SIGHUP
//! only set a flag; the guards then unwind).

use std::{
    process::ExitCode,
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rein_bench::{
    conn::{
        args::{Args, Config, Section},
        flood, latency, plot,
        report::{self, Document},
    },
    font, stop,
};
use rein_testkit::process;

fn main() -> ExitCode {
    stop::exit("rein-bench-conn", bench())
}

fn bench() -> Result<ExitCode> {
    let config = Config::from_args(Args::parse())?;
    preflight(&config)?;
    font::load_font(&config.font)?;
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    process::install_signal_handlers()?;

    let started = Instant::now();
    eprintln!(
        "rein-bench-conn: at most about {} min",
        config.estimate_seconds().div_ceil(60)
    );
    let mut doc = Document {
        generated: String::new(),
        command: std::env::args().collect(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        quick: config.quick,
        sections: config.sections.clone(),
        settings: config.latency.clone(),
        flood_settings: config.flood.clone(),
        wall_seconds: 0.0,
        fill_seconds: Vec::new(),
        latency: Vec::new(),
        flood: Vec::new(),
        legit: Vec::new(),
        errors: Vec::new(),
    };
    let mut interrupted = false;
    // A failed part is noted and the next one runs.
    let mut outcome = |name: &str, result: Result<()>, doc: &mut Document| match result {
        Ok(()) => {}
        Err(e) if stop::is_interruption(&e) => interrupted = true,
        Err(e) => {
            eprintln!("rein-bench-conn: {name} FAILED: {e:#}");
            doc.errors.push(format!("{name}: {e:#}"));
        }
    };
    if config.runs(Section::Latency) {
        let result = latency::run(&config.rein, &config.latency, &mut doc.fill_seconds)
            .map(|rows| doc.latency = rows);
        outcome("connect latency", result, &mut doc);
    }
    if config.runs(Section::Flood) && !process::interrupted() {
        let (mut floods, mut legit) = (Vec::new(), Vec::new());
        let result = flood::run(&config.rein, &config.flood, &mut floods, &mut legit);
        (doc.flood, doc.legit) = (floods, legit);
        outcome("SYN flood", result, &mut doc);
    }
    doc.wall_seconds = started.elapsed().as_secs_f64();
    doc.generated = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();

    print!("{}", report::tables(&doc));
    if interrupted {
        eprintln!("rein-bench-conn: interrupted; conn-latest.* left as they were");
        return Ok(ExitCode::from(130));
    }
    if !doc.errors.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    let title = format!(
        "rein conn: connect() latency and a SYN flood. Linux {}, {} CPUs, {}",
        doc.kernel, doc.cpus, doc.generated
    );
    let json = config.out.join("conn-latest.json");
    report::write_json(&json, &doc)?;
    let png = config.out.join("conn-latest.png");
    plot::draw(&png, &title, &doc)?;
    eprintln!(
        "rein-bench-conn: wrote {} and {}; done in {:.0} s",
        json.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Fails early, with the fix, when something the run needs is missing.
fn preflight(config: &Config) -> Result<()> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF, namespaces, cgroups)");
    }
    if !config.rein.is_file() {
        bail!(
            "no rein binary at {} (cargo build --release -p rein, or give --rein)",
            config.rein.display()
        );
    }
    if config.runs(Section::Flood) {
        for tool in ["ip", "nft"] {
            let found = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
            });
            if !found {
                bail!("`{tool}` is not installed (./scripts/setup installs what the bench needs)");
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        bail!("bpffs is not mounted at /sys/fs/bpf (./scripts/setup mounts it)");
    }
    Ok(())
}
