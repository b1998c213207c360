//! `rein-bench-net`: the benchmark of `rein net` (issue 4). See `rein_bench::net`.
//!
//! Bounded: every child process has a deadline and is killed with its process group; every
//! in-process loop checks the stop flag. Clean: namespaces (with their links, qdiscs and
//! programs), the rein instance and the eBPF objects it loads are removed by guards, also on
//! errors and on Ctrl-C (SIGINT/SIGTERM/SIGHUP only set a flag; the running children are then
//! killed and the guards unwind).

use std::{
    process::ExitCode,
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rein_bench::{
    font,
    net::{
        args::{Args, Config, Section},
        cli, flood, plot,
        rein::Rein,
        report::{self, Document, SectionTime, Settings},
        sketch, testrun,
    },
    stop,
};
use rein_testkit::process;

fn main() -> ExitCode {
    stop::exit("rein-bench-net", bench())
}

fn bench() -> Result<ExitCode> {
    let config = Config::from_args(Args::parse())?;
    preflight(&config)?;
    font::load_font(&config.font)?;
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    process::install_signal_handlers()?;

    let started = Instant::now();
    let sections: Vec<String> = config.sections.iter().map(ToString::to_string).collect();
    eprintln!(
        "rein-bench-net: sections {}; at most about {} min",
        sections.join(", "),
        config.estimate().as_secs().div_ceil(60)
    );
    let mut doc = Document {
        generated: String::new(),
        command: std::env::args().collect(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        quick: config.quick,
        sections,
        settings: Settings {
            testrun: config.testrun.clone(),
            sketch: config.sketch.clone(),
            cli_reps: config.cli_reps,
            flood: config.flood.clone(),
            flood_payload_bytes: flood::PAYLOAD,
        },
        wall_seconds: 0.0,
        section_seconds: Vec::new(),
        testrun: testrun::Results::default(),
        sketch: sketch::Results::default(),
        cli: Vec::new(),
        flood: Vec::new(),
        errors: Vec::new(),
    };
    let interrupted = run_sections(&config, &mut doc);
    doc.wall_seconds = started.elapsed().as_secs_f64();
    doc.generated = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();

    print!("{}", report::tables(&doc));
    if interrupted {
        // Part of a run: the files of the last whole one stay.
        eprintln!(
            "rein-bench-net: interrupted; net-latest.json and net-latest.png left as they were"
        );
    } else {
        write_outputs(&config, &doc)?;
    }
    eprintln!(
        "rein-bench-net: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if interrupted {
        return Ok(ExitCode::from(130));
    }
    let failed_runs = doc.flood.iter().any(|r| r.error.is_some());
    if !doc.errors.is_empty() || failed_runs {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the chosen sections in order, keeping what each measured; a failed section is noted
/// and the next one runs. True when interrupted.
fn run_sections(config: &Config, doc: &mut Document) -> bool {
    let outcome = |name: &str, started: Instant, result: Result<()>, doc: &mut Document| -> bool {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("rein-bench-net: {name}: {seconds:.1} s");
        doc.section_seconds.push(SectionTime {
            section: name.to_owned(),
            seconds,
        });
        match result {
            Ok(()) => false,
            Err(e) if stop::is_interruption(&e) => {
                eprintln!("rein-bench-net: interrupted");
                true
            }
            Err(e) => {
                eprintln!("rein-bench-net: {name} FAILED: {e:#}");
                doc.errors.push(format!("{name}: {e:#}"));
                false
            }
        }
    };
    if config.runs(Section::Testrun) {
        let t = Instant::now();
        let result = testrun::run(&config.testrun, &mut doc.testrun);
        if outcome("testrun", t, result, doc) {
            return true;
        }
    }
    if config.runs(Section::Sketch) {
        let t = Instant::now();
        let result = sketch::run(&config.sketch, &mut doc.sketch);
        if outcome("sketch", t, result, doc) {
            return true;
        }
    }
    if config.runs(Section::Cli) || config.runs(Section::Flood) {
        // Purged when dropped, after the two sections that use it.
        let rein = match Rein::new(&config.rein, config.flood.pid) {
            Ok(rein) => rein,
            // Both sections need it: they fail as one.
            Err(e) => return outcome("cli and flood", Instant::now(), Err(e), doc),
        };
        eprintln!("rein-bench-net: rein instance {}", rein.instance());
        if config.runs(Section::Cli) {
            let t = Instant::now();
            let result = cli::run(&rein, config.cli_reps, &mut doc.cli);
            if outcome("cli", t, result, doc) {
                return true;
            }
        }
        if config.runs(Section::Flood) {
            let t = Instant::now();
            let result = flood::run(&config.flood, &rein, &mut doc.flood);
            if outcome("flood", t, result, doc) {
                return true;
            }
        }
        eprintln!("rein-bench-net: cleaning up");
    }
    false
}

fn write_outputs(config: &Config, doc: &Document) -> Result<()> {
    let title = format!(
        "rein net: BPF_PROG_TEST_RUN cost, UDP flood, sketch accuracy. Linux {}, {} CPUs, {}",
        doc.kernel, doc.cpus, doc.generated
    );
    let json = config.out.join("net-latest.json");
    report::write_json(&json, doc)?;
    let png = config.out.join("net-latest.png");
    plot::draw(&png, &title, doc)?;
    eprintln!(
        "rein-bench-net: wrote {} and {}",
        json.display(),
        png.display()
    );
    Ok(())
}

/// Fails early, with the fix, when something the sections need is missing.
fn preflight(config: &Config) -> Result<()> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF, namespaces, qdiscs)");
    }
    let network = config.runs(Section::Cli) || config.runs(Section::Flood);
    if network {
        for tool in ["ip", "tc", "ss", "iperf3", "nsenter", "kill"] {
            if !on_path(tool) {
                bail!("`{tool}` is not installed (./scripts/setup installs what the bench needs)");
            }
        }
        if !config.rein.is_file() {
            bail!(
                "no rein binary at {} (cargo build --release -p rein, or give --rein)",
                config.rein.display()
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
        {
            bail!("bpffs is not mounted at /sys/fs/bpf (./scripts/setup mounts it)");
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
