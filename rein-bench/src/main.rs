//! `rein-bench`: runs each scenario through rein, tc tbf and the reference CNI bandwidth plugin in
//! throwaway network namespaces, prints one table and writes `latest.json` and `latest.png`.
//!
//! Bounded: every child process has a deadline and is killed with its process group. Clean: every
//! namespace, link, qdisc, CNI pod, the rein instance and the scratch directory are removed by
//! guards, also on errors and on Ctrl-C (SIGINT/SIGTERM/SIGHUP only set a flag; the running
//! children are then killed and the guards unwind).

mod cli;
mod iperf;
mod limiters;
mod plot;
mod report;
mod run;
mod traffic;

use std::{
    path::Path,
    process::ExitCode,
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rein_bench::{cpu, stop};
use rein_testkit::process;

use crate::{
    cli::{Args, Config, Limiter},
    report::{Document, Row},
    run::Bench,
};

fn main() -> ExitCode {
    stop::exit("rein-bench", bench())
}

fn bench() -> Result<ExitCode> {
    let config = Config::from_args(Args::parse())?;
    preflight(&config)?;
    plot::load_font(&config.font)?;
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    process::install_signal_handlers()?;

    let started = Instant::now();
    let total = config.scenarios.len() * config.limiters.len();
    eprintln!(
        "rein-bench: {total} runs ({} scenarios x {} limiters), {} s each (+{} s slow start \
         left out); at most about {} min",
        config.scenarios.len(),
        config.limiters.len(),
        config.seconds,
        config.omit,
        config.estimate().as_secs().div_ceil(60),
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut interrupted = false;
    {
        let mut bench = Bench::new(&config)?;
        let mut n = 0;
        'all: for scenario in &config.scenarios {
            for &limiter in &config.limiters {
                n += 1;
                eprint!("[{n:>3}/{total}] {:<4} {:<14} ", limiter, scenario.label());
                let t = Instant::now();
                match bench.measure(scenario, limiter) {
                    Ok(row) => {
                        // A pair's mean can hide one client short of its limit.
                        let worst = row
                            .worst_goodput
                            .map(|w| format!(", worst {w:.3}"))
                            .unwrap_or_default();
                        eprintln!(
                            "goodput/limit {:.3}{worst}  ({:.1} s)",
                            row.goodput_ratio.unwrap_or(0.0),
                            t.elapsed().as_secs_f64()
                        );
                        rows.push(row);
                    }
                    Err(e) if stop::is_interruption(&e) => {
                        eprintln!("interrupted");
                        interrupted = true;
                        break 'all;
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e:#}");
                        rows.push(Row::failed(scenario, limiter, &e));
                    }
                }
            }
        }
        eprintln!("rein-bench: cleaning up");
        // Dropping the bench purges the rein instance and removes the scratch directory.
    }

    print!("{}", report::table(&rows));
    if !rows.is_empty() {
        write_outputs(&config, &rows)?;
    }
    eprintln!(
        "rein-bench: {} runs in {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if interrupted {
        return Ok(ExitCode::from(130));
    }
    if rows.iter().any(|r| r.error.is_some()) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(config: &Config, rows: &[Row]) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let generated = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let title = format!(
        "rein vs tc tbf vs CNI bandwidth plugin vs rein-cni: iperf3 {} s per run between two namespaces, \
         Linux {kernel}, {generated}",
        config.seconds
    );
    let document = Document {
        generated,
        command: std::env::args().collect(),
        kernel,
        seconds: config.seconds,
        omitted_seconds: config.omit,
        rows,
    };
    let json = config.out.join("latest.json");
    report::write_json(&json, &document)?;
    let png = config.out.join("latest.png");
    plot::draw(&png, &title, rows, &config.scenarios, &config.limiters)?;
    eprintln!("rein-bench: wrote {} and {}", json.display(), png.display());
    Ok(())
}

/// Fails early, with the fix, when something the runs need is missing.
fn preflight(config: &Config) -> Result<()> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (namespaces, qdiscs, BPF)");
    }
    for tool in ["ip", "tc", "ss", "iperf3", "ping", "sh", "kill", "nsenter"] {
        if !on_path(tool) {
            bail!("`{tool}` is not installed (./scripts/setup installs what the bench needs)");
        }
    }
    if config.limiters.contains(&Limiter::Cni) {
        for plugin in ["ptp", "host-local", "bandwidth"] {
            let path = Path::new(limiters::CNI_PATH).join(plugin);
            if !path.is_file() {
                bail!(
                    "no CNI plugin at {} (Debian package containernetworking-plugins)",
                    path.display()
                );
            }
        }
    }
    if config.limiters.contains(&Limiter::ReinCni) {
        for plugin in ["ptp", "host-local"] {
            let path = Path::new(limiters::CNI_PATH).join(plugin);
            if !path.is_file() {
                bail!(
                    "no CNI plugin at {} (Debian package containernetworking-plugins)",
                    path.display()
                );
            }
        }
        if !config.rein_cni.is_file() {
            bail!(
                "no rein-cni binary at {} (cargo build --release -p rein-cni, or give --rein-cni)",
                config.rein_cni.display()
            );
        }
    }
    let needs_rein = [Limiter::Rein, Limiter::ReinCni]
        .iter()
        .any(|l| config.limiters.contains(l));
    if needs_rein && !config.rein.is_file() {
        bail!(
            "no rein binary at {} (cargo build --release -p rein, or give --rein)",
            config.rein.display()
        );
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
