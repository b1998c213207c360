//! The `rein` command: parse, resolve, call the library, print; the only place that decides
//! exit codes.
use std::{
    io::Write as _,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::Context as _;
use clap::Parser as _;
use rein::{
    Engine, Instance,
    capabilities::{cgroup_limit, conn_limits, net_rules, netns_limit, shared_limit},
    declarative::{self, LoadOptions, Mode},
    doctor, observe,
    platform::cgroupfs::CgroupFs,
    run, trace,
};

mod cli;

use cli::{
    hiargs::{self, Format, HiCommand},
    lowargs::LowArgs,
    output,
};

fn main() -> ExitCode {
    // Printing into a closed pipe (`rein list | head`) ends rein quietly, as it does any
    // command-line tool, instead of panicking.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let low = LowArgs::parse();
    // A service's log is how it says what it did: the agent tells what it changes unasked.
    let service = matches!(low.command, cli::lowargs::LowCommand::Agent { .. });
    init_logging(low.verbose + u8::from(service));
    match execute(low) {
        Ok(code) => code,
        Err(error) => {
            // One line. rein's errors already name their cause in their message, so the chain
            // is not printed again.
            eprintln!("rein: {error}");
            ExitCode::FAILURE
        }
    }
}

fn execute(low: LowArgs) -> anyhow::Result<ExitCode> {
    let command = hiargs::resolve(low)?;
    let instance = Instance::from_env()?;
    match command {
        HiCommand::Run { change, command } => {
            let code = run::run(&instance, change, &command)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)));
        }
        HiCommand::Set { target, change } => {
            let outcome = cgroup_limit::set(&mut Engine::open(instance)?, &target, change)?;
            println!("{}", output::set_outcome(&outcome));
        }
        HiCommand::Unset { target } => {
            let record = cgroup_limit::unset(&mut Engine::open(instance)?, &target)?;
            println!("removed the limit of {}", record.cgroup);
        }
        HiCommand::SetNetns { netns, change } => {
            let record = netns_limit::set(&mut Engine::open(instance)?, &netns, change)?;
            println!("{}", output::netns_set(&record));
        }
        HiCommand::UnsetNetns { netns } => {
            let record = netns_limit::unset(&mut Engine::open(instance)?, &netns)?;
            println!("removed the limit of network namespace {}", record.netns);
        }
        HiCommand::Share(request) => {
            let record = shared_limit::share(&mut Engine::open(instance)?, &request)?;
            println!("{}", output::shared_set(&record));
        }
        HiCommand::Unshare(name) => {
            let record = shared_limit::unshare(&mut Engine::open(instance)?, &name)?;
            println!("removed shared limit {}", record.name);
        }
        HiCommand::List { json } => {
            let status = Engine::open(instance)?.status()?;
            let (cgroups, netns, shared, net, conn) = (
                status.cgroups,
                status.netns,
                status.shared,
                status.net,
                status.conn,
            );
            if json {
                let all = serde_json::json!({
                    "cgroups": cgroups, "netns": netns, "shared": shared, "net": net, "conn": conn
                });
                println!("{}", serde_json::to_string_pretty(&all).context("json")?);
            } else {
                // The cgroup table (or "no limits") unless only rules of the other kinds exist.
                let mut tables = Vec::new();
                if !cgroups.is_empty()
                    || (netns.is_empty() && shared.is_empty() && net.is_empty() && conn.is_empty())
                {
                    tables.push(output::list(&cgroups));
                }
                if !netns.is_empty() {
                    tables.push(output::netns_list(&netns));
                }
                if !shared.is_empty() {
                    tables.push(output::shared_list(&shared));
                }
                if !net.is_empty() {
                    tables.push(output::net_list(&net));
                }
                if !conn.is_empty() {
                    // Inbound connection rules are net rules: in the net table.
                    tables.push(output::conn_list(&conn, &[]));
                }
                print!("{}", tables.join("\n"));
            }
        }
        HiCommand::NetAdd(spec) => {
            let record = net_rules::add(&mut Engine::open(instance)?, spec)?;
            println!("added {}", output::net_rule(&record));
        }
        HiCommand::NetDel(id) => {
            let record = net_rules::delete(&mut Engine::open(instance)?, id)?;
            println!("deleted {}", output::net_rule(&record));
        }
        HiCommand::NetList { json } => {
            let views = Engine::open(instance)?.status()?.net;
            if json {
                println!("{}", serde_json::to_string_pretty(&views).context("json")?);
            } else {
                print!("{}", output::net_list(&views));
            }
        }
        HiCommand::ConnAdd(rule) => {
            let record = conn_limits::add(&mut Engine::open(instance)?, rule)?;
            println!("added {}", output::conn_rule(&record));
        }
        HiCommand::ConnAddInbound(spec) => {
            let record = net_rules::conn::add_inbound(&mut Engine::open(instance)?, spec)?;
            println!("added {}", output::net_rule(&record));
        }
        HiCommand::ConnDel(id) => {
            let mut engine = Engine::open(instance)?;
            // One id sequence for both kinds: the id says which.
            if engine.state()?.conn_limits.find(id).is_some() {
                let record = conn_limits::delete(&mut engine, id)?;
                println!("deleted {}", output::conn_rule(&record));
            } else if engine.state()?.net_rules.find(id).is_some() {
                let record = net_rules::conn::delete_inbound(&mut engine, id)?;
                println!("deleted {}", output::net_rule(&record));
            } else {
                return Err(rein::Error::NoSuchConnRule(id).into());
            }
        }
        HiCommand::ConnList { json } => {
            let status = Engine::open(instance)?.status()?;
            let inbound = net_rules::conn::inbound_views(status.net);
            if json {
                let listed = serde_json::json!({ "outbound": status.conn, "inbound": inbound });
                println!("{}", serde_json::to_string_pretty(&listed).context("json")?);
            } else {
                print!("{}", output::conn_list(&status.conn, &inbound));
            }
        }
        HiCommand::Metrics => print!("{}", observe::metrics::gather(&instance)?),
        HiCommand::Top => observe::top::run(&instance)?,
        HiCommand::Agent(options) => rein::agent::run(instance, &options)?,
        HiCommand::Reload => {
            let restored = Engine::open(instance)?.reload()?;
            println!("reloaded the kernel programs; limits and bucket state kept");
            if restored > 0 {
                println!("restored {restored} rule(s) from the state file");
            }
        }
        HiCommand::Purge => {
            let report = Engine::open(instance)?.purge()?;
            println!(
                "purged: {} rule(s), {} cgroup(s), {} process(es) moved back, programs {}",
                report.rules,
                report.cgroups,
                report.processes_moved,
                if report.datapath {
                    "detached"
                } else {
                    "were not attached"
                }
            );
        }
        HiCommand::Apply(files) => {
            let resources = declarative::load(&files, &LoadOptions::default())?;
            let mut engine = Engine::open(instance)?;
            let plan = declarative::apply(&mut engine, &resources, Mode::Merge)?;
            print!("{}", output::plan(&plan));
        }
        HiCommand::Diff(files) => {
            // kubectl's codes: 1 says there are changes, so an error is 2.
            let plan = declarative::load(&files, &LoadOptions::default()).and_then(|resources| {
                declarative::plan(&Engine::open(instance)?, &resources, Mode::Merge)
            });
            return Ok(match plan {
                Ok(plan) if plan.is_empty() => ExitCode::SUCCESS,
                Ok(plan) => {
                    print!("{plan}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("rein: {error}");
                    ExitCode::from(2)
                }
            });
        }
        HiCommand::Delete(files) => {
            let resources = declarative::load(&files, &LoadOptions::default())?;
            let plan = declarative::delete(&mut Engine::open(instance)?, &resources)?;
            print!("{}", output::plan(&plan));
        }
        HiCommand::Get { kind, format } => {
            let listed = declarative::get(&Engine::open(instance)?, kind)?;
            match format {
                Format::Table => print!("{}", output::resources(&listed)),
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&listed).context("json")?);
                }
                Format::Yaml => {
                    for item in &listed {
                        print!("---\n{}", serde_norway::to_string(item).context("yaml")?);
                    }
                }
            }
        }
        HiCommand::Schema => {
            let schema = declarative::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema).context("json")?);
        }
        HiCommand::Trace {
            cgroup,
            rule,
            drops_only,
            json,
        } => {
            let cgroup = match cgroup {
                Some(path) => Some(CgroupFs::discover()?.resolve(&path)?.id()?),
                None => None,
            };
            let filter = trace::TraceFilter {
                cgroup,
                rule,
                drops_only,
            };
            // SIGINT and SIGTERM end the trace through its loop, which clears the lease.
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, Arc::clone(&stop))
                    .context("cannot install signal handlers")?;
            }
            let mut out = std::io::stdout().lock();
            trace::run(&instance, &filter, &stop, |record| {
                if json {
                    serde_json::to_writer(&mut out, record)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{record}")?;
                }
                out.flush()
            })?;
        }
        HiCommand::Doctor { json } => {
            let checks = doctor::diagnose(&instance);
            if json {
                println!("{}", serde_json::to_string_pretty(&checks).context("json")?);
            } else {
                print!("{}", output::doctor(&checks));
            }
            if checks.iter().any(|c| !c.ok) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a person at a terminal: a journal or a log file would keep the codes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}
