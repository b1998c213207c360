//! `rein agent`: rein as a service. It keeps the kernel matching the declared configuration:
//! applied at start, again on every change to the files and on SIGHUP, and every second what
//! drifted (a rule removed by hand, a cgroup created since that a glob covers, a cgroup or
//! device that appeared) is put right.
//!
//! The limits live in the kernel (pinned), not in the agent: killed, it leaves them enforced,
//! and started again it adopts them, since applying what is already there plans nothing and
//! resets no bucket. It holds the instance's lock only while it reconciles, so commands and
//! `rein top` work beside it.
pub mod events;
pub mod systemd;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use self::{
    events::{Event, Events},
    systemd::Systemd,
};
use crate::{
    capabilities::conn_limits::request::{NewConnRule, ScopeRequest},
    declarative::{self, LimitScope, LoadOptions, Mode, RateLimitRule, Resource, Resources},
    engine::Engine,
    error::{Error, Result},
    instance::Instance,
    observe::metrics::Server,
    platform::cgroupfs::CgroupFs,
};

/// How `rein agent` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// A file or a directory of resources (`/etc/rein` by default).
    pub config: PathBuf,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// On SIGTERM or SIGINT, remove what the agent applied (by default it stays enforced).
    pub remove_on_exit: bool,
}

/// The configuration's default place.
pub const DEFAULT_CONFIG: &str = "/etc/rein";

/// How often the agent looks whether a reconciliation is due.
const TICK: Duration = Duration::from_millis(500);

/// How often the agent reconciles with nothing to tell it to: repairs what drifted in the
/// kernel (a rule removed by hand), and finds cgroups its watches cannot see (made under a
/// directory that did not exist when the configuration was read). New cgroups where the
/// resources point are seen at once, through inotify.
const DRIFT_EVERY: Duration = Duration::from_secs(5);

/// How long a reconciliation waits for a command that holds the instance. A tick that finds
/// it busy is skipped (the next comes soon); a change of the files waits longer,
/// and is retried on the next tick if it still cannot get in.
const TICK_PATIENCE: Duration = Duration::ZERO;
const CHANGE_PATIENCE: Duration = Duration::from_secs(5);

/// What the agent knows about itself, for its metrics and its status line.
#[derive(Clone, Debug, Default)]
struct Health {
    /// Whether the configuration last read was good.
    config_valid: bool,
    config_errors: u64,
    reconciles_changed: u64,
    reconciles_unchanged: u64,
    reconciles_failed: u64,
    /// When the last reconciliation succeeded, in seconds since the epoch.
    last_success: f64,
    /// Resources in force (from the last good configuration).
    resources: usize,
    last_error: Option<String>,
}

impl Health {
    /// Registers the agent's metrics for one scrape.
    fn register(&self, registry: &mut Registry) {
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
            let gauge = Gauge::<i64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        };
        gauge(
            registry,
            "agent_config_valid",
            "Whether the agent's configuration last read was good (1) or refused (0)",
            i64::from(self.config_valid),
        );
        gauge(
            registry,
            "agent_resources",
            "Resources of the configuration in force",
            i64::try_from(self.resources).unwrap_or(i64::MAX),
        );
        let errors = Counter::<u64>::default();
        errors.inc_by(self.config_errors);
        registry.register(
            "agent_config_errors",
            "Configurations the agent refused",
            errors,
        );
        let reconciles = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        for (result, count) in [
            ("changed", self.reconciles_changed),
            ("unchanged", self.reconciles_unchanged),
            ("failed", self.reconciles_failed),
        ] {
            reconciles
                .get_or_create(&vec![("result", result)])
                .inc_by(count);
        }
        registry.register(
            "agent_reconciles",
            "Reconciliations of the kernel with the configuration, by result",
            reconciles,
        );
        let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        last.set(self.last_success);
        registry.register(
            "agent_last_success_timestamp_seconds",
            "When a reconciliation last succeeded (Unix time)",
            last,
        );
    }

    fn status_line(&self) -> String {
        match (&self.last_error, self.config_valid) {
            (Some(error), _) => format!("{} in force; {error}", resources_count(self.resources)),
            (None, true) => format!("{} in force", resources_count(self.resources)),
            (None, false) => "no good configuration yet".into(),
        }
    }
}

/// The agent between events.
struct Agent {
    instance: Instance,
    config: PathBuf,
    /// The last good configuration; `None` until one was read.
    declared: Option<Resources>,
    /// A change of the files that could not be applied yet (the instance was busy).
    pending: bool,
    /// When the last reconciliation ran.
    last: Instant,
    health: Arc<Mutex<Health>>,
}

impl Agent {
    fn health(&self) -> MutexGuard<'_, Health> {
        // A panic while holding it cannot leave `Health` inconsistent: every field is a plain
        // value written whole.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the configuration. A bad one is refused as a whole and the last good one stays
    /// in force.
    fn read_config(&mut self) {
        let options = LoadOptions {
            require_root_owned: true,
        };
        match declarative::load(std::slice::from_ref(&self.config), &options) {
            Ok(resources) => {
                tracing::info!(
                    "read {}: {}",
                    self.config.display(),
                    resources_count(resources.items.len())
                );
                let mut health = self.health();
                health.config_valid = true;
                health.last_error = None;
                drop(health);
                self.declared = Some(resources);
                self.pending = true;
            }
            Err(error) => {
                let kept = match &self.declared {
                    Some(resources) => format!(
                        "the last good configuration ({}) stays in force",
                        resources_count(resources.items.len())
                    ),
                    None => "nothing is applied until a good one is read".into(),
                };
                tracing::error!("refusing the configuration: {error}; {kept}");
                let mut health = self.health();
                health.config_valid = false;
                health.config_errors += 1;
                health.last_error = Some(format!("configuration refused: {error}"));
            }
        }
    }

    /// Makes the kernel match the configuration in force, repairing what drifted.
    fn reconcile(&mut self) {
        let Some(resources) = &self.declared else {
            return;
        };
        let patience = if self.pending {
            CHANGE_PATIENCE
        } else {
            TICK_PATIENCE
        };
        self.last = Instant::now();
        let mut engine = match Engine::open_waiting(self.instance.clone(), patience) {
            Ok(engine) => engine,
            Err(Error::Busy(_)) if !self.pending => return,
            Err(error) => return self.failed(&error),
        };
        let outcome = engine.repair().and_then(|repaired| {
            if repaired > 0 {
                tracing::warn!("wrote back {repaired} rules missing from the kernel's maps");
            }
            declarative::apply(&mut engine, resources, Mode::Exact).map(|plan| (repaired, plan))
        });
        drop(engine);
        match outcome {
            Ok((repaired, plan)) => {
                for change in plan.changes() {
                    tracing::info!("{change}");
                }
                self.pending = false;
                let count = resources.items.len();
                let mut health = self.health();
                if plan.is_empty() && repaired == 0 {
                    health.reconciles_unchanged += 1;
                } else {
                    health.reconciles_changed += 1;
                }
                health.resources = count;
                health.last_success = unix_now();
                if health.config_valid {
                    health.last_error = None;
                }
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &Error) {
        tracing::error!("cannot apply the configuration: {error}");
        let mut health = self.health();
        health.reconciles_failed += 1;
        health.last_error = Some(format!("cannot apply: {error}"));
    }

    /// The cgroup directories to watch for the resources in force, each with whether its
    /// subdirectories are watched too: a path's parent; a glob's directory above its first
    /// wildcard, and all below it when the wildcard is not in the last component.
    fn cgroup_dirs(&self) -> Vec<(PathBuf, bool)> {
        let Some(resources) = &self.declared else {
            return Vec::new();
        };
        let Ok(cgroupfs) = CgroupFs::discover() else {
            return Vec::new();
        };
        let mut dirs: Vec<(PathBuf, bool)> = resources
            .items
            .iter()
            .filter_map(|declared| match &declared.resource {
                Resource::CgroupLimit(manifest) => match &manifest.spec.scope {
                    LimitScope::Cgroup(pattern) => Some(pattern.as_str().to_owned()),
                    // A namespace that appears is found by the periodic reconciliation.
                    LimitScope::Netns { .. } => None,
                },
                // An outbound connection limit of a cgroup waits for it as a CgroupLimit does.
                Resource::RateLimit(manifest) => match manifest.spec.rule() {
                    RateLimitRule::Outbound(NewConnRule {
                        scope: ScopeRequest::Cgroup(path),
                        ..
                    }) => Some(path.to_string_lossy().into_owned()),
                    _ => None,
                },
                Resource::NetRule(_) | Resource::SharedLimit(_) => None,
            })
            .chain(resources.items.iter().flat_map(|declared| {
                // A shared limit's cgroups are waited for as a CgroupLimit's are.
                match &declared.resource {
                    Resource::SharedLimit(manifest) => manifest
                        .spec
                        .cgroups()
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                    _ => Vec::new(),
                }
            }))
            .map(|pattern| watch_dir(cgroupfs.mount(), &pattern))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Removes everything the configuration declared (`--remove-on-exit`).
    fn remove_declared(&mut self) -> Result<()> {
        let mut engine = Engine::open_waiting(self.instance.clone(), CHANGE_PATIENCE)?;
        let plan = declarative::apply(&mut engine, &Resources::default(), Mode::Exact)?;
        for change in plan.changes() {
            tracing::info!("{change}");
        }
        Ok(())
    }
}

/// Where cgroups matching `pattern` (a path from the cgroup v2 root, maybe a glob) appear.
fn watch_dir(mount: &Path, pattern: &str) -> (PathBuf, bool) {
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let wildcard = components.iter().position(|c| c.contains(['*', '?', '[']));
    let (fixed, recursive) = match wildcard {
        None => (components.len().saturating_sub(1), false),
        Some(at) => (at, at + 1 < components.len()),
    };
    let dir = components
        .iter()
        .take(fixed)
        .fold(mount.to_path_buf(), |dir, c| dir.join(c));
    (dir, recursive)
}

fn resources_count(count: usize) -> String {
    match count {
        1 => "1 resource".into(),
        n => format!("{n} resources"),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(instance: Instance, options: &Options) -> Result<()> {
    let events = Events::start(&options.config)?;
    let health = Arc::new(Mutex::new(Health::default()));
    let for_metrics = Arc::clone(&health);
    let server = Arc::new(
        Server::bind(options.metrics_addr, instance.clone())?.with_extra(move |registry| {
            for_metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .register(registry);
        }),
    );
    let serving = {
        let server = Arc::clone(&server);
        thread::Builder::new()
            .name("rein-metrics".into())
            .spawn(move || server.run())
            .map_err(|e| Error::Agent(format!("cannot start the metrics thread: {e}")))?
    };
    tracing::info!(
        "serving metrics on http://{}/metrics",
        server
            .local_addr()
            .map_or_else(|| options.metrics_addr.to_string(), |a| a.to_string())
    );

    let mut agent = Agent {
        instance,
        config: options.config.clone(),
        declared: None,
        pending: false,
        last: Instant::now(),
        health,
    };
    let mut events = events;
    let mut systemd = Systemd::from_env();
    agent.read_config();
    events.watch_cgroups(&agent.cgroup_dirs());
    agent.reconcile();
    systemd.ready(&agent.health().status_line());
    loop {
        let event = events.next(systemd.longest_wait(TICK));
        match event {
            Event::ConfigChanged | Event::Reload => {
                if event == Event::Reload {
                    tracing::info!("SIGHUP: reading the configuration again");
                    systemd.reloading();
                }
                agent.read_config();
                events.watch_cgroups(&agent.cgroup_dirs());
                agent.reconcile();
                systemd.ready(&agent.health().status_line());
            }
            Event::CgroupsChanged => agent.reconcile(),
            Event::Tick => {
                if agent.pending || agent.last.elapsed() >= DRIFT_EVERY {
                    agent.reconcile();
                }
            }
            Event::Stop => break,
        }
        systemd.keep_alive();
    }
    systemd.stopping();
    let removed = if options.remove_on_exit {
        agent.remove_declared()
    } else {
        tracing::info!("stopping; the limits stay in force");
        Ok(())
    };
    server.stop();
    let _ = serving.join();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_are_watched_where_they_can_appear() {
        let mount = Path::new("/sys/fs/cgroup");
        let dir = |pattern| watch_dir(mount, pattern);
        assert_eq!(
            dir("/system.slice/nginx.service"),
            ("/sys/fs/cgroup/system.slice".into(), false)
        );
        assert_eq!(
            dir("/system.slice/batch-*.service"),
            ("/sys/fs/cgroup/system.slice".into(), false)
        );
        assert_eq!(
            dir("/kubepods/*/pod*"),
            ("/sys/fs/cgroup/kubepods".into(), true)
        );
        assert_eq!(dir("/app"), ("/sys/fs/cgroup".into(), false));
        assert_eq!(dir("/*"), ("/sys/fs/cgroup".into(), false));
    }
}
