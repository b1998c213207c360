//! The three limiters, each set up on a pair of hosts and removed by a guard's drop:
//! - rein: `nsenter --net=CLIENT rein run --egress|--ingress RATE -- <client command>`, a
//!   private instance purged at the end of the bench;
//! - tc tbf: a tbf qdisc on the veth that carries the limited direction;
//! - the reference CNI plugins (ptp + host-local, then bandwidth), driven by the CNI protocol with
//!   SERVER as the "host" of a pod CLIENT.

use std::{path::Path, time::Duration};

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
    rein: Option<&Rein>,
    hosts: &Hosts,
    direction: Direction,
    rate: Rate,
    work: &Path,
    pid: u32,
) -> Result<Limited> {
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
        Limiter::Cni => {
            let (pod, server_addr) = CniPod::add(hosts, direction, rate, work, pid)?;
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

/// One CNI plugin added to the pod; DEL on drop.
#[derive(Debug)]
struct CniPlugin {
    plugin: String,
    config: String,
    server_ns: String,
    env: Vec<(String, String)>,
}

impl CniPlugin {
    /// `ip netns exec SERVER /usr/lib/cni/PLUGIN` with the CNI variables and `config` on stdin:
    /// SERVER plays the host, so the plugin's host side (veth end, ifb, qdiscs) lands in SERVER.
    fn call(&self, command: &str) -> Result<String> {
        let binary = format!("{CNI_PATH}/{}", self.plugin);
        let mut cmd = Cmd::new(
            ["ip", "netns", "exec", &self.server_ns, &binary],
            CNI_TIMEOUT,
        )
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
        let this = Self {
            plugin: plugin.to_owned(),
            config: config.to_string(),
            server_ns: hosts.server.name().to_owned(),
            env: env.to_vec(),
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

/// CLIENT as a pod: ptp (veth to SERVER, addresses from host-local), then bandwidth.
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
        let mut bandwidth_config = json!({
            "cniVersion": CNI_VERSION,
            "name": name,
            "type": "bandwidth",
            "prevResult": result,
        });
        bandwidth_config[rate_key] = json!(rate.bits_per_second());
        bandwidth_config[burst_key] = json!(rate.burst_bytes() * 8);
        let (bandwidth, _) = CniPlugin::add("bandwidth", bandwidth_config, hosts, &env)?;
        let pod = Self {
            _bandwidth: bandwidth,
            _ptp: ptp,
        };
        Ok((pod, server_addr))
    }
}
