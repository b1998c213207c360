//! Containers run by a real runtime, podman with its CNI backend, the path a kubelet takes:
//! runtime → conflist → chained plugins, given the container's network namespace.
//!
//! A [`CniNetwork`] is a test's own network: a unique name, a bridge of its own with a /24 of
//! 198.19.128.0/17, and in a temporary directory the conflist (`bridge` + `host-local` + the
//! caller's shaping plugin, if any), a plugin directory (links to /usr/lib/cni/* and to the
//! caller's extra plugins) and the `containers.conf` podman reads through `CONTAINERS_CONF`, so
//! nothing under /etc is written. A [`Container`] runs on it from the shared [`Rootfs`].
//!
//! What the machine needs (podman 4.3 with runc, cgroups in hybrid mode, no registry) decides
//! the settings: runc (crun refuses hybrid cgroups), cgroupfs (no systemd), no default ulimits
//! (the sandbox refuses raising RLIMIT_NOFILE/NPROC), no events log, `--rootfs` (nothing to
//! pull).
//!
//! On drop, also after a failed test: the container (`podman rm -f`, which calls the plugins'
//! DEL), then the bridge, host-local's leases (/var/lib/cni/networks/NAME) and the temporary
//! directory. Every podman call has a deadline.
use std::{
    fs,
    os::{fd::AsRawFd, unix::fs::symlink},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    cgroup,
    error::{Context, Error, Result, bail},
    iperf::{self, ClientOptions, Measured},
    netns::{QUICK, ip, unique_suffix},
    process::{Cmd, Output, wait_until},
    rootfs::Rootfs,
};

/// Deadline of one podman call.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// The reference plugins, as Debian's containernetworking-plugins installs them.
pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

/// Where host-local keeps its leases, one directory per network name.
const HOST_LOCAL_STATE: &str = "/var/lib/cni/networks";

/// The /24s handed out: 198.19.128.0/24 to 198.19.255.0/24, inside 198.18.0.0/15 and apart from
/// the /30s of [`crate::netns`] (which live in namespaces anyway).
const FIRST_SUBNET: u32 = 128;
const SUBNETS: u32 = 128;

/// Serialises choosing a subnet and claiming it (by adding its gateway to the new bridge) across
/// test processes. The file stays: removing a lock file others may hold races.
const SUBNET_LOCK: &str = "/run/lock/rein-testkit-cni-subnets.lock";

/// The container's own end of the bridge link.
const CONTAINER_IF: &str = "eth0";

/// The reference `bandwidth` plugin's entry (or a drop-in's, by `type`) limiting both directions
/// to `rate_bps` bits/s with `burst_bits` of burst.
pub fn bandwidth_entry(plugin_type: &str, rate_bps: u64, burst_bits: u64) -> Value {
    json!({
        "type": plugin_type,
        "ingressRate": rate_bps,
        "ingressBurst": burst_bits,
        "egressRate": rate_bps,
        "egressBurst": burst_bits,
    })
}

/// What a test asks of its network.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// The plugin entry chained after `bridge`, with its `type` (the reference `bandwidth`, or a
    /// drop-in) and keys; `None`: no shaping, the network as fast as the bridge.
    pub shaping: Option<Value>,
    /// Plugin binaries beside the reference ones, each found by the runtime under its file name
    /// (so an entry of that `type` runs it); one named like a reference plugin replaces it.
    pub plugins: Vec<PathBuf>,
}

/// A test's CNI network and podman configuration; see the module's documentation.
#[derive(Debug)]
pub struct CniNetwork {
    /// The network's name, also the conflist's.
    name: String,
    bridge: String,
    /// `198.19.N.0/24`.
    subnet: String,
    /// `198.19.N.1`, the bridge's own address: the host's end of every container's traffic.
    gateway: String,
    conflist: Value,
    /// containers.conf, net/ (the conflist) and plugins/.
    dir: PathBuf,
}

impl CniNetwork {
    pub fn create(options: &NetworkOptions) -> Result<Self> {
        let suffix = unique_suffix();
        let dir = std::env::temp_dir().join(format!("rein-podman-{suffix}"));
        fs::create_dir(&dir)
            .map_err(|e| Error::failed(format!("creating {}: {e}", dir.display())))?;
        let mut network = Self {
            name: format!("rein-{suffix}"),
            // IFNAMSIZ: "rb-" and 8 characters.
            bridge: format!("rb-{suffix}"),
            subnet: String::new(),
            gateway: String::new(),
            conflist: Value::Null,
            dir,
        };
        // From here on the guard owns the directory (and, once made, the bridge).
        network.claim_subnet(&suffix)?;
        network.conflist = conflist(
            &network.name,
            &network.bridge,
            &network.subnet,
            options.shaping.as_ref(),
        );
        network.write_files(&options.plugins)?;
        Ok(network)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The conflist as written, for messages and reports.
    pub fn conflist(&self) -> &Value {
        &self.conflist
    }

    /// The directory holding this network's conflist (podman's `--cni-config-dir`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("net")
    }

    /// The plugin directory the runtime searches.
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    /// `podman <global flags> ARGS...` with this network's configuration and a deadline.
    pub fn podman<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Cmd {
        Cmd::new(["podman"], PODMAN_TIMEOUT)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--network-backend",
                "cni",
                "--events-backend",
                "none",
                "--cni-config-dir",
            ])
            .arg(self.config_dir())
            .args(args)
    }

    /// Starts `argv` (a path inside the shared rootfs and its arguments) in a detached container
    /// on this network; it is removed on drop.
    pub fn run(&self, argv: &[&str]) -> Result<Container<'_>> {
        let rootfs = Rootfs::shared()?;
        let mut container = Container {
            network: self,
            name: format!("rein-{}", unique_suffix()),
            _rootfs: Arc::clone(&rootfs),
            id: String::new(),
            ip: String::new(),
            pid: 0,
        };
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &container.name,
            "--network",
            &self.name,
        ];
        let root = rootfs.path().display().to_string();
        args.extend(["--rootfs", &root]);
        args.extend(argv);
        // A failed run may still have made the container: the guard above removes it by name.
        self.podman(&args)
            .run()
            .with_context(|| format!("starting a container on network {}", self.name))?;
        container.inspect()?;
        Ok(container)
    }

    /// A container running `iperf3 -s` on [`iperf::PORT`] (its own namespace: no other test's
    /// port), listening when this returns.
    pub fn iperf3_server(&self) -> Result<Container<'_>> {
        let port = iperf::PORT.to_string();
        let container = self.run(&["/bin/iperf3", "-s", "-p", &port])?;
        container.wait_listening(iperf::PORT)?;
        Ok(container)
    }

    /// Picks a /24 no route or address of the host uses yet and claims it by making the bridge
    /// with the gateway on it (the bridge plugin takes a bridge that exists and an address it
    /// would have added).
    fn claim_subnet(&mut self, suffix: &str) -> Result<()> {
        let _lock = SubnetLock::take()?;
        let used = format!(
            "{}\n{}",
            ip(&["-4", "-o", "route", "show", "table", "all"])?,
            ip(&["-4", "-o", "addr", "show"])?
        );
        let start = suffix
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let third = (0..SUBNETS)
            .map(|i| FIRST_SUBNET + (start.wrapping_add(i) % SUBNETS))
            .find(|third| !used.contains(&format!("198.19.{third}.")))
            .context("no free /24 left in 198.19.128.0/17 for a test network")?;
        self.subnet = format!("198.19.{third}.0/24");
        self.gateway = format!("198.19.{third}.1");
        ip(&["link", "add", &self.bridge, "type", "bridge"])
            .with_context(|| format!("making bridge {}", self.bridge))?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway),
            "dev",
            &self.bridge,
        ])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        Ok(())
    }

    fn write_files(&self, extra_plugins: &[PathBuf]) -> Result<()> {
        let plugins = self.plugin_dir();
        for dir in [self.config_dir(), plugins.clone()] {
            fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
        }
        let system = fs::read_dir(SYSTEM_PLUGINS).map_err(|e| {
            Error::failed(format!(
                "reading {SYSTEM_PLUGINS}: {e} (scripts/setup installs containernetworking-plugins)"
            ))
        })?;
        let mut links: Vec<(PathBuf, std::ffi::OsString)> = system
            .flatten()
            .map(|entry| (entry.path(), entry.file_name()))
            .collect();
        for plugin in extra_plugins {
            let name = plugin
                .file_name()
                .with_context(|| format!("plugin {} has no file name", plugin.display()))?;
            if !plugin.is_file() {
                bail!("plugin {} is not a file", plugin.display());
            }
            let absolute =
                fs::canonicalize(plugin).map_err(|e| io_error("resolving", plugin, e))?;
            links.retain(|(_, existing)| existing != name);
            links.push((absolute, name.to_owned()));
        }
        for (target, name) in links {
            let link = plugins.join(name);
            symlink(&target, &link).map_err(|e| io_error("linking", &link, e))?;
        }
        let conflist = self.config_dir().join(format!("{}.conflist", self.name));
        let text = serde_json::to_string_pretty(&self.conflist)
            .map_err(|e| Error::failed(format!("writing the conflist: {e}")))?;
        fs::write(&conflist, text).map_err(|e| io_error("writing", &conflist, e))?;
        let conf = self.dir.join("containers.conf");
        fs::write(&conf, containers_conf(&plugins, &self.config_dir()))
            .map_err(|e| io_error("writing", &conf, e))?;
        Ok(())
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        // Containers borrow the network, so they are gone: the plugins' DEL ran. What is left is
        // what no DEL removes.
        let link = Cmd::new(["ip", "link", "show", "dev", &self.bridge], QUICK).cleanup();
        if link.output().is_ok_and(|out| out.status.success())
            && let Err(e) = Cmd::new(["ip", "link", "del", "dev", &self.bridge], QUICK)
                .cleanup()
                .run()
        {
            eprintln!("warning: {e}");
        }
        let leases = Path::new(HOST_LOCAL_STATE).join(&self.name);
        if leases.exists()
            && let Err(e) = fs::remove_dir_all(&leases)
        {
            eprintln!("warning: removing {}: {e}", leases.display());
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// bridge + host-local, then `shaping`. The bridge is no gateway for the world (no masquerade,
/// no default route): traffic stays between the host's bridge address and the container.
fn conflist(name: &str, bridge: &str, subnet: &str, shaping: Option<&Value>) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
        },
    })];
    plugins.extend(shaping.cloned());
    json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins})
}

/// What podman 4.3 reads from `CONTAINERS_CONF` (checked with `podman info`): the network backend,
/// the plugin and config directories, and what the machine requires (see the module's
/// documentation). The command line repeats what it has flags for.
fn containers_conf(plugin_dir: &Path, config_dir: &Path) -> String {
    format!(
        "[containers]\n\
         default_ulimits = []\n\
         \n\
         [network]\n\
         network_backend = \"cni\"\n\
         cni_plugin_dirs = [{plugins}]\n\
         network_config_dir = {config}\n\
         \n\
         [engine]\n\
         runtime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"none\"\n",
        plugins = toml_string(plugin_dir),
        config = toml_string(config_dir),
    )
}

/// A path as a TOML basic string (JSON's escapes are TOML's for what a path holds).
fn toml_string(path: &Path) -> String {
    Value::String(path.display().to_string()).to_string()
}

/// A running container; removed (`podman rm -f`) on drop.
#[derive(Debug)]
pub struct Container<'n> {
    network: &'n CniNetwork,
    name: String,
    /// Keeps the rootfs while the container runs from it.
    _rootfs: Arc<Rootfs>,
    id: String,
    ip: String,
    pid: u32,
}

impl Container<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the network's bridge.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Its first process, as the host sees it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its network namespace (what CNI_NETNS named for the plugins).
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// nsenter's option for its namespace (the file must follow `=`: the argument is optional).
    fn nsenter_net(&self) -> std::ffi::OsString {
        let mut option = std::ffi::OsString::from("--net=");
        option.push(self.netns());
        option
    }

    /// Its cgroup v2 directory (under /libpod_parent with the cgroupfs manager).
    pub fn cgroup(&self) -> Result<PathBuf> {
        let relative = cgroup::cgroup_of(self.pid)
            .with_context(|| format!("container {} (pid {}) is gone", self.name, self.pid))?;
        Ok(cgroup::cgroup2_mount()?.join(relative.trim_start_matches('/')))
    }

    /// The host's end of its veth pair: the device the reference plugin puts its tbf on.
    pub fn host_veth(&self) -> Result<String> {
        let inside = Cmd::new(["nsenter".into(), self.nsenter_net()], QUICK)
            .args(["ip", "-j", "link", "show", "dev", CONTAINER_IF])
            .run()?;
        let peer = json_array(&inside.stdout)?
            .first()
            .and_then(|link| link.get("link_index"))
            .and_then(Value::as_u64)
            .with_context(|| format!("{CONTAINER_IF} of {} has no peer", self.name))?;
        json_array(&ip(&["-j", "link", "show"])?)?
            .iter()
            .find(|link| link.get("ifindex").and_then(Value::as_u64) == Some(peer))
            .and_then(|link| link.get("ifname").and_then(Value::as_str))
            .map(str::to_owned)
            .with_context(|| format!("no host device has index {peer}"))
    }

    /// Runs `argv` inside the container (`podman exec`).
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend(argv);
        self.network.podman(&args).run()
    }

    /// iperf3 from the host (bound to the bridge's address) to the container's server, forward
    /// (the host sends: into the container) or with `-R` (out of it).
    pub fn iperf3(&self, options: &ClientOptions) -> Result<Measured> {
        let options = ClientOptions {
            bind: Some(self.network.gateway.clone()),
            ..options.clone()
        };
        let argv = iperf::client_argv(&self.ip, iperf::PORT, &options);
        iperf::run_client(
            &Cmd::new(argv, options.timeout()),
            options.is_udp(),
            options.reverse,
        )
    }

    /// Waits until something listens on TCP `port` in the container's namespace.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        let filter = format!("sport = :{port}");
        let listens = || {
            Cmd::new(["nsenter".into(), self.nsenter_net()], QUICK)
                .args(["ss", "-ltnH", &filter])
                .run()
                .is_ok_and(|out| !out.stdout.trim().is_empty())
        };
        if wait_until(Duration::from_secs(10), listens) {
            return Ok(());
        }
        let logs = self.network.podman(&["logs", self.name.as_str()]).output();
        let logs = logs
            .map(|out| format!("{}{}", out.stdout, out.stderr))
            .unwrap_or_default();
        bail!(
            "nothing listens on port {port} in container {}: {}",
            self.name,
            logs.trim()
        )
    }

    fn inspect(&mut self) -> Result<()> {
        let out = self
            .network
            .podman(&["inspect", "--format", "json", self.name.as_str()])
            .run()?;
        let doc = json_array(&out.stdout)?;
        let container = doc.first().context("podman inspect printed no container")?;
        let field = |pointer: &str| {
            container
                .pointer(pointer)
                .with_context(|| format!("podman inspect has no {pointer}"))
        };
        self.id = field("/Id")?.as_str().unwrap_or_default().to_owned();
        self.pid = field("/State/Pid")?
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid > 0)
            .context("the container has no process")?;
        let network = format!("/NetworkSettings/Networks/{}/IPAddress", self.network.name);
        self.ip = field(&network)?.as_str().unwrap_or_default().to_owned();
        if self.ip.is_empty() || self.id.is_empty() {
            bail!("podman inspect gave no id or address: {container}");
        }
        Ok(())
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        // -t 0: iperf3 and sh need no grace; --ignore: a run that failed may have made nothing.
        let rm = self
            .network
            .podman(&["rm", "-f", "--ignore", "-t", "0", self.name.as_str()])
            .cleanup();
        if let Err(e) = rm.run() {
            eprintln!("warning: {e}");
        }
    }
}

/// An exclusive flock(2) on [`SUBNET_LOCK`], released when dropped (with the file).
struct SubnetLock {
    /// Closing it releases the lock.
    _file: fs::File,
}

impl SubnetLock {
    fn take() -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(SUBNET_LOCK)
            .map_err(|e| io_error("opening", Path::new(SUBNET_LOCK), e))?;
        // SAFETY: flock(2) takes the descriptor of a file this function owns and touches no memory.
        let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if status != 0 {
            let e = std::io::Error::last_os_error();
            return Err(io_error("locking", Path::new(SUBNET_LOCK), e));
        }
        Ok(Self { _file: file })
    }
}

fn json_array(text: &str) -> Result<Vec<Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(other) => bail!("expected a JSON array, got {other}"),
        Err(e) => bail!(
            "not JSON ({e}): {}",
            text.chars().take(200).collect::<String>()
        ),
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::failed(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_chains_the_shaping_plugin_after_the_bridge() {
        let shaping = bandwidth_entry("rein-cni", 20_000_000, 524_288);
        let doc = conflist("rein-x", "rb-x", "198.19.130.0/24", Some(&shaping));
        let plugins = doc["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);
        assert_eq!(
            plugins[0]["ipam"]["ranges"][0][0]["subnet"],
            "198.19.130.0/24"
        );
        assert_eq!(plugins[1]["type"], "rein-cni");
        assert_eq!(plugins[1]["egressBurst"], 524_288);
        let bare = conflist("rein-x", "rb-x", "198.19.130.0/24", None);
        assert_eq!(bare["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn containers_conf_quotes_paths() {
        let text = containers_conf(Path::new("/tmp/a \"b\""), Path::new("/tmp/n"));
        assert!(
            text.contains(r#"cni_plugin_dirs = ["/tmp/a \"b\""]"#),
            "{text}"
        );
        assert!(text.contains(r#"network_config_dir = "/tmp/n""#), "{text}");
    }
}
