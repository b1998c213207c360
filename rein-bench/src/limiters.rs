//! The three limiters, each set up on a pair of hosts and removed by a guard's drop:
//! - rein: `nsenter --net=CLIENT rein run --egress|--ingress RATE -- <client command>`, a
//!   private instance purged at the end of the bench;
//! - tc tbf: a tbf qdisc on the veth that carries the limited direction;
//! - the reference CNI plugins (ptp + host-local, then bandwidth), driven by the CNI protocol with
//!   SERVER as the "host" of a pod CLIENT;
//! - rein-cni: the same pod and conflist, with rein's plugin in bandwidth's place (only the type
//!   differs), limiting the pod's namespace through the bench's rein instance.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use rein_testkit::{
    netns::{self, Hosts},
    process::Cmd,
    rein_instance::ReinInstance,
};
use serde_json::{Value, json};

use crate::cli::{Direction, Limiter, Rate};

/// The reference CNI plugins, from Debian's containernetworking-plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// The CNI spec version sent: the newest that ptp, host-local and bandwidth 1.1.1 accept
/// (`CNI_COMMAND=VERSION` lists 0.3.0 to 1.0.0).
const CNI_VERSION: &str = "1.0.0";

const CNI_TIMEOUT: Duration = Duration::from_secs(20);

/// A private rein instance (`REIN_INSTANCE=rein-bench-<pid>`), purged on drop.
pub type Rein = ReinInstance;

/// The instance of this bench, whose pid is `pid`; `binary` was checked to exist by the
/// preflight.
pub fn rein_instance(binary: &Path, pid: u32) -> Result<Rein> {
    Ok(ReinInstance::new(
        binary,
        format!("rein-bench-{pid}"),
        "rein-bench",
    )?)
}

/// What the rein limiters use: the bench's instance (for rein and rein-cni alike) and the
/// rein-cni binary.
#[derive(Debug, Clone, Copy)]
pub struct ReinSetup<'a> {
    pub instance: Option<&'a Rein>,
    pub cni_plugin: &'a Path,
}

/// A limit in place for one run: how to start the client under it, and where the server is.
#[derive(Debug, Default)]
pub struct Limited {
    /// Prepended to the client's command line (`rein run ... --`); empty for the others.
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
    /// The address the iperf3 server binds to and the client reaches.
    pub server_addr: String,
    // Guards, removed on drop.
    _qdisc: Option<Qdisc>,
    _pod: Option<CniPod>,
}

impl Limited {
    /// The client command, under the limit.
    pub fn client(&self, argv: Vec<String>, timeout: Duration) -> Cmd {
        Cmd::new(self.wrapper.iter().cloned().chain(argv), timeout).envs(&self.env)
    }
}

/// Sets `limiter` up between `hosts` for a run in `direction` at `rate`. `work` is a scratch
/// directory for this run (CNI's IPAM data).
pub fn apply(
    limiter: Limiter,
    rein: ReinSetup<'_>,
    hosts: &Hosts,
    direction: Direction,
    rate: Rate,
    work: &Path,
    pid: u32,
) -> Result<Limited> {
    let ReinSetup {
        instance: rein,
        cni_plugin: rein_cni,
    } = rein;
    match limiter {
        Limiter::Rein => {
            let rein = rein.context("rein is not set up")?;
            let link = hosts.connect()?;
            let flag = match direction {
                Direction::Egress => "--egress",
                Direction::Ingress => "--ingress",
            };
            // rein's default burst is max(64 KiB, 10 ms at the rate), the same as the others get.
            // It runs in the client's namespace, where downloads arrive and their queue must be
            // (`nsenter`, not `ip netns exec`, which would hide /sys/fs/bpf).
            let wrapper = vec![
                "nsenter".to_owned(),
                format!("--net={}", hosts.client.path()),
                rein.binary().to_string_lossy().into_owned(),
                "run".to_owned(),
                flag.to_owned(),
                rate.tc(),
                "--".to_owned(),
            ];
            let (key, value) = rein.env();
            Ok(Limited {
                wrapper,
                env: vec![(key.to_owned(), value.to_owned())],
                server_addr: link.server_addr,
                ..Limited::default()
            })
        }
        Limiter::Tbf => {
            let link = hosts.connect()?;
            // Egress (upload) leaves through the client's veth; ingress (download) reaches the
            // client through the server's.
            let (ns, dev) = match direction {
                Direction::Egress => (hosts.client.name(), link.client_if),
                Direction::Ingress => (hosts.server.name(), link.server_if),
            };
            let qdisc = Qdisc::tbf(ns, &dev, rate)?;
            Ok(Limited {
                server_addr: link.server_addr,
                _qdisc: Some(qdisc),
                ..Limited::default()
            })
        }
        Limiter::Cni | Limiter::ReinCni => {
            let shaper = match limiter {
                Limiter::ReinCni => {
                    let rein = rein.context("rein is not set up")?;
                    Shaper::ReinCni {
                        binary: rein_cni.to_owned(),
                        instance: rein.name().to_owned(),
                    }
                }
                _ => Shaper::Bandwidth,
            };
            let (pod, server_addr) = CniPod::add(hosts, direction, rate, work, pid, &shaper)?;
            Ok(Limited {
                server_addr,
                _pod: Some(pod),
                ..Limited::default()
            })
        }
    }
}

/// A root tbf qdisc, deleted on drop (the namespace would take it anyway).
#[derive(Debug)]
struct Qdisc {
    ns: String,
    dev: String,
}

impl Qdisc {
    fn tbf(ns: &str, dev: &str, rate: Rate) -> Result<Self> {
        let (tc_rate, burst) = (rate.tc(), format!("{}b", rate.burst_bytes()));
        let argv = [
            "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
            &tc_rate, "burst", &burst, "latency", "25ms",
        ];
        Cmd::new(argv, netns::QUICK)
            .run()
            .with_context(|| format!("adding tbf on {dev} in {ns}"))?;
        Ok(Self {
            ns: ns.to_owned(),
            dev: dev.to_owned(),
        })
    }
}

impl Drop for Qdisc {
    fn drop(&mut self) {
        let argv = [
            "ip", "netns", "exec", &self.ns, "tc", "qdisc", "del", "dev", &self.dev, "root",
        ];
        if let Err(e) = Cmd::new(argv, netns::QUICK).cleanup().run() {
            eprintln!("rein-bench: warning: {e:#}");
        }
    }
}

/// What limits the pod after ptp: the reference plugin, or rein's in its place.
#[derive(Debug)]
enum Shaper {
    Bandwidth,
    ReinCni { binary: PathBuf, instance: String },
}

/// One CNI plugin added to the pod; DEL on drop.
#[derive(Debug)]
struct CniPlugin {
    plugin: String,
    binary: PathBuf,
    config: String,
    server_ns: String,
    env: Vec<(String, String)>,
    /// `nsenter --net` instead of `ip netns exec`, whose private /sys would hide bpffs.
    keep_mounts: bool,
}

impl CniPlugin {
    /// `ip netns exec SERVER /usr/lib/cni/PLUGIN` with the CNI variables and `config` on stdin:
    /// SERVER plays the host, so the plugin's host side (veth end, ifb, qdiscs) lands in SERVER.
    fn call(&self, command: &str) -> Result<String> {
        let binary = self.binary.to_string_lossy();
        let argv = if self.keep_mounts {
            vec![
                "nsenter".to_owned(),
                format!("--net=/run/netns/{}", self.server_ns),
                binary.into_owned(),
            ]
        } else {
            ["ip", "netns", "exec", &self.server_ns, &binary]
                .map(str::to_owned)
                .to_vec()
        };
        let mut cmd = Cmd::new(argv, CNI_TIMEOUT)
            .env("CNI_COMMAND", command)
            .envs(&self.env)
            .stdin(self.config.clone());
        if command == "DEL" {
            cmd = cmd.cleanup();
        }
        let out = cmd
            .run()
            .with_context(|| format!("CNI {command} of {}", self.plugin))?;
        Ok(out.stdout)
    }

    fn add(
        plugin: &str,
        config: Value,
        hosts: &Hosts,
        env: &[(String, String)],
    ) -> Result<(Self, Value)> {
        let binary = Path::new(CNI_PATH).join(plugin);
        Self::add_binary(plugin, binary, false, config, hosts, env)
    }

    fn add_binary(
        plugin: &str,
        binary: PathBuf,
        keep_mounts: bool,
        config: Value,
        hosts: &Hosts,
        env: &[(String, String)],
    ) -> Result<(Self, Value)> {
        let this = Self {
            plugin: plugin.to_owned(),
            binary,
            config: config.to_string(),
            server_ns: hosts.server.name().to_owned(),
            env: env.to_vec(),
            keep_mounts,
        };
        // On an error `this` is dropped, and so DELeted: a half-done ADD may have left something,
        // and DEL is what the spec says to call then.
        let out = this.call("ADD")?;
        let result = serde_json::from_str::<Value>(&out)
            .with_context(|| format!("the result of {plugin} is not JSON: {out}"))?;
        Ok((this, result))
    }
}

impl Drop for CniPlugin {
    fn drop(&mut self) {
        if let Err(e) = self.call("DEL") {
            eprintln!("rein-bench: warning: {e:#}");
        }
    }
}

/// CLIENT as a pod: ptp (veth to SERVER, addresses from host-local), then bandwidth or rein-cni.
#[derive(Debug)]
struct CniPod {
    // Fields drop in order: bandwidth's DEL runs before ptp's.
    _bandwidth: CniPlugin,
    _ptp: CniPlugin,
}

impl CniPod {
    /// Adds the pod; also returns the server's address (the pod's gateway).
    fn add(
        hosts: &Hosts,
        direction: Direction,
        rate: Rate,
        work: &Path,
        pid: u32,
        shaper: &Shaper,
    ) -> Result<(Self, String)> {
        let name = format!("rein-bench-{pid}");
        let env: Vec<(String, String)> = [
            ("CNI_CONTAINERID", format!("rein-bench-{}", hosts.suffix)),
            ("CNI_NETNS", hosts.client.path()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", CNI_PATH.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let data_dir = work.join("cni-ipam");
        let ptp_config = json!({
            "cniVersion": CNI_VERSION,
            "name": name,
            "type": "ptp",
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": format!("198.19.{}.0/24", pid % 256),
                "dataDir": data_dir.to_string_lossy(),
            },
        });
        let (ptp, result) = CniPlugin::add("ptp", ptp_config, hosts, &env)?;
        let server_addr = result
            .pointer("/ips/0/gateway")
            .and_then(Value::as_str)
            .with_context(|| format!("ptp's result has no gateway address: {result}"))?
            .to_owned();

        // Rates in bit/s, bursts in bits. The plugin's "ingress" is into the pod (a tbf on the
        // host-side veth): the client's download. Its "egress" is out of the pod (the host-side
        // veth's ingress redirected to an ifb with a tbf): the client's upload.
        let (rate_key, burst_key) = match direction {
            Direction::Egress => ("egressRate", "egressBurst"),
            Direction::Ingress => ("ingressRate", "ingressBurst"),
        };
        let plugin = match shaper {
            Shaper::Bandwidth => "bandwidth",
            Shaper::ReinCni { .. } => "rein-cni",
        };
        let mut bandwidth_config = json!({
            "cniVersion": CNI_VERSION,
            "name": name,
            "type": plugin,
            "prevResult": result,
        });
        bandwidth_config[rate_key] = json!(rate.bits_per_second());
        bandwidth_config[burst_key] = json!(rate.burst_bytes() * 8);
        let (bandwidth, _) = match shaper {
            Shaper::Bandwidth => CniPlugin::add(plugin, bandwidth_config, hosts, &env)?,
            // The instance through the environment, as a runtime that passes it would: the
            // conflist stays the reference's but for the type.
            Shaper::ReinCni { binary, instance } => {
                let mut env = env.clone();
                env.push(("REIN_INSTANCE".to_owned(), instance.clone()));
                CniPlugin::add_binary(plugin, binary.clone(), true, bandwidth_config, hosts, &env)?
            }
        };
        let pod = Self {
            _bandwidth: bandwidth,
            _ptp: ptp,
        };
        Ok((pod, server_addr))
    }
}
