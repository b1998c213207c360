//! A node in the test: a throwaway rein instance, a kubepods tree under a unique test cgroup
//! (cgroupfs or systemd names), pods as kubelet and the runtime leave them (a pod cgroup
//! holding a process, in a network namespace of its own or on the host's network), and the
//! agent running in the test against the test's API server.
use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use rein::{
    Engine,
    declarative::{self, Declarer, Mode, Resources},
};
use rein_kube::{agent, world::Declarations};
use rein_testkit::{
    cgroup::in_cgroup,
    netns::HostPair,
    process::Running,
    rein_instance::{self, ReinInstance},
};
use serde_json::Value;
use tokio::{runtime::Runtime, sync::oneshot, task::JoinHandle};

use super::api::Api;

/// The `rein` binary of the same build, for the instance's `list` and purge.
pub fn rein_binary() -> &'static Path {
    rein_instance::rein_binary_beside(env!("CARGO_BIN_EXE_rein-kube"))
}

/// What the agent does on a reconcile with `out`, its translation of the world: applied as the
/// Kubernetes declarer's whole (Exact). A problem in the translation fails the test.
pub fn apply_declared(rein: &ReinInstance, out: Declarations) {
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let resources = Resources {
        items: out.resources,
    };
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    declarative::apply_as(&mut engine, &resources, Mode::Exact, Declarer::Kubernetes).unwrap();
}

/// kubelet's cgroup driver: how the kubepods tree is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// The pod cgroup of `uid` in `qos` (`Guaranteed`, `Burstable`, `BestEffort`) under the
/// kubepods root, as kubelet names it with `driver`.
pub fn pod_cgroup(driver: Driver, qos: &str, uid: &str) -> String {
    let class = qos.to_ascii_lowercase();
    match (driver, qos) {
        (Driver::Cgroupfs, "Guaranteed") => format!("pod{uid}"),
        (Driver::Cgroupfs, _) => format!("{class}/pod{uid}"),
        (Driver::Systemd, "Guaranteed") => format!("kubepods-pod{}.slice", uid.replace('-', "_")),
        (Driver::Systemd, _) => format!(
            "kubepods-{class}.slice/kubepods-{class}-pod{}.slice",
            uid.replace('-', "_")
        ),
    }
}

/// A node: the instance, and its kubepods root (a test cgroup the instance removes).
pub struct Node {
    pub rein: ReinInstance,
    pub driver: Driver,
    /// The kubepods root, a path from the cgroup v2 root (what `--kubepods-root` takes).
    pub kubepods: String,
    /// The name of the root under the instance's test cgroups.
    root: String,
}

impl Node {
    pub fn new(driver: Driver) -> Self {
        let rein = ReinInstance::for_test(rein_binary().to_str().unwrap());
        let root = match driver {
            Driver::Cgroupfs => "k/kubepods",
            Driver::Systemd => "k/kubepods.slice",
        };
        let dir = rein.cgroup(root);
        let kubepods = rein.relative(&dir);
        Self {
            rein,
            driver,
            kubepods,
            root: root.to_owned(),
        }
    }

    /// A pod's cgroup, made (with its QoS parent), holding nothing yet.
    pub fn pod_cgroup(&self, qos: &str, uid: &str) -> PathBuf {
        self.rein.cgroup(&format!(
            "{}/{}",
            self.root,
            pod_cgroup(self.driver, qos, uid)
        ))
    }

    /// `rein list --json`. The agent's first apply loads the datapath, longer than a command
    /// waits for the instance: a command refused as busy then is asked again.
    pub fn list(&self) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.rein.rein(&["list", "--json"]);
            if !out.status.success()
                && out.stderr.contains("another rein command is running")
                && std::time::Instant::now() < deadline
            {
                continue;
            }
            return serde_json::from_str(out.ok()).unwrap();
        }
    }

    /// The namespace limit `rein list` shows for `path`.
    pub fn netns_limit(&self, path: &str) -> Option<Value> {
        self.listed("netns", "netns", path)
    }

    /// The cgroup limit `rein list` shows for `relative` (a path from the v2 root).
    pub fn cgroup_limit(&self, relative: &str) -> Option<Value> {
        self.listed("cgroups", "cgroup", relative)
    }

    /// The entry of `rein list`'s `section` whose `field` is `value`.
    fn listed(&self, section: &str, field: &str, value: &str) -> Option<Value> {
        self.list()[section]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry[field].as_str() == Some(value))
            .cloned()
    }
}

/// A running pod: its cgroup with a process in it, and its network namespace (a pair whose
/// client is the pod, whose server is a peer to send to) unless it is on the host's network.
pub struct TestPod {
    pub uid: String,
    pub cgroup: PathBuf,
    /// The pod's sandbox process.
    pub process: Running,
    pub pair: Option<HostPair>,
}

impl TestPod {
    /// A pod with a network namespace of its own.
    pub fn in_netns(node: &Node, qos: &str, uid: &str) -> Self {
        Self::start(node, qos, uid, Some(HostPair::create("rk").unwrap()))
    }

    /// A pod on the host's network.
    pub fn on_host(node: &Node, qos: &str, uid: &str) -> Self {
        Self::start(node, qos, uid, None)
    }

    /// The pod's sandbox process in its cgroup, inside the pair's client if it has one.
    fn start(node: &Node, qos: &str, uid: &str, pair: Option<HostPair>) -> Self {
        let cgroup = node.pod_cgroup(qos, uid);
        let mut sandbox = match &pair {
            Some(pair) => vec!["ip", "netns", "exec", pair.client().name()],
            None => vec![],
        };
        sandbox.extend(["sleep", "600"]);
        let process = in_cgroup(&cgroup, &sandbox, Duration::from_secs(600))
            .spawn()
            .unwrap();
        wait_in_cgroup(&cgroup, &process);
        Self {
            uid: uid.to_owned(),
            cgroup,
            process,
            pair,
        }
    }

    pub fn pair(&self) -> &HostPair {
        self.pair.as_ref().unwrap()
    }

    /// The pod's namespace path, as the agent finds it (the runtime's bind mount).
    pub fn netns_path(&self) -> String {
        self.pair().client().path()
    }
}

/// Waits until the shell that starts `process` has moved it into `cgroup`.
fn wait_in_cgroup(cgroup: &Path, process: &Running) {
    let pid = process.pid();
    assert!(
        rein_testkit::process::wait_until(Duration::from_secs(5), || {
            rein_testkit::cgroup::procs_of(cgroup).contains(&pid)
        }),
        "pid {pid} never reached {}",
        cgroup.display()
    );
}

/// The agent, running on a runtime of its own against the test's API server; stopped on drop.
pub struct RunningAgent {
    runtime: Runtime,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), agent::AgentError>>>,
    pub metrics: SocketAddr,
}

impl RunningAgent {
    pub fn start(api: &Api, node: &Node, node_name: &str) -> Self {
        // The agent's log goes with the test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("REIN_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = listener.local_addr().unwrap();
        let options = agent::Options {
            node: node_name.to_owned(),
            instance: node.rein.library_instance(),
            kubepods_root: Some(node.kubepods.clone()),
            metrics: Some(listener),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // The client's server task runs on the agent's runtime.
        let client = {
            let _entered = runtime.enter();
            api.client()
        };
        let task = runtime.spawn(agent::run(client, options, async {
            let _ = stopped.await;
        }));
        Self {
            runtime,
            stop: Some(stop),
            task: Some(task),
            metrics,
        }
    }

    /// Stops the agent (as SIGTERM does) and checks it ended well.
    pub fn stop(mut self) {
        self.finish().unwrap();
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        self.runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(error))) => Err(format!("the agent failed: {error}")),
                Ok(Err(error)) => Err(format!("the agent panicked: {error}")),
                Err(_) => Err("the agent did not stop within 10 s".into()),
            }
        })
    }

    /// The agent's `/metrics`.
    pub fn scrape(&self) -> String {
        let (status, body) = rein_testkit::http::get(self.metrics, "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Err(error) = self.finish()
            && !std::thread::panicking()
        {
            panic!("{error}");
        }
    }
}
