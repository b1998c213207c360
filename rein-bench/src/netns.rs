//! Throwaway network namespaces and the veth pair between them. Everything is removed on drop:
//! the processes the bench started inside, then the namespace, which takes its links, qdiscs and
//! addresses with it.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::proc::Cmd;

/// Deadline of one `ip`/`tc`/`ss` call.
pub const QUICK: Duration = Duration::from_secs(10);

/// How long a link may take to come up.
const LINK_UP: Duration = Duration::from_secs(5);

/// Runs `ip ARGS...` and fails on a non-zero exit.
pub fn ip(args: &[&str]) -> Result<String> {
    let argv = std::iter::once("ip").chain(args.iter().copied());
    Ok(Cmd::new(argv, QUICK).run()?.stdout)
}

/// A named network namespace (`/var/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Self> {
        ip(&["netns", "add", &name]).with_context(|| format!("creating namespace {name}"))?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`, as CNI_NETNS wants it.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip netns exec NAME ARGS...` as an argv.
    pub fn exec<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .into_iter()
            .map(str::to_owned)
            .chain(args.iter().map(|a| a.as_ref().to_owned()))
            .collect()
    }

    /// Waits until `dev` is operationally up (for a veth: both ends up).
    pub fn wait_up(&self, dev: &str) -> Result<()> {
        let deadline = Instant::now() + LINK_UP;
        loop {
            let link = ip(&["-n", &self.name, "-o", "link", "show", "dev", dev])?;
            if link.contains("state UP") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{dev} in {} is not up after {} s: {}",
                    self.name,
                    LINK_UP.as_secs(),
                    link.trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until something listens on TCP `port` in the namespace.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        let deadline = Instant::now() + LINK_UP;
        let filter = format!("sport = :{port}");
        loop {
            let out = Cmd::new(self.exec(&["ss", "-ltnH", &filter]), QUICK).run()?;
            if !out.stdout.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nothing listens on port {port} in {}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the processes inside: all of them were started by the bench, since nothing else
    /// knows this namespace. A process inside would keep it (and its links) alive after
    /// `ip netns del`.
    fn kill_inside(&self) {
        let pids = |name: &str| -> Vec<String> {
            Cmd::new(["ip", "netns", "pids", name], QUICK)
                .cleanup()
                .run()
                .map(|out| out.stdout.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let found = pids(&self.name);
        if found.is_empty() {
            return;
        }
        let argv = ["kill", "-KILL"]
            .into_iter()
            .map(str::to_owned)
            .chain(found);
        let _ = Cmd::new(argv, QUICK).cleanup().output();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !pids(&self.name).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_inside();
        if let Err(e) = Cmd::new(["ip", "netns", "del", &self.name], QUICK)
            .cleanup()
            .run()
        {
            eprintln!("rein-bench: warning: {e:#}");
        }
    }
}

/// The two hosts of a run: CLIENT (the limited side) and SERVER.
#[derive(Debug)]
pub struct Hosts {
    pub client: Netns,
    pub server: Netns,
    /// Unique per run and stack: `<pid>-<id>`.
    pub suffix: String,
}

impl Hosts {
    /// `id` tells apart the runs of the bench and the stacks of one run: the run number, or for
    /// a side-by-side run `<run>-1` and `<run>-2`.
    pub fn create(pid: u32, id: &str) -> Result<Self> {
        let suffix = format!("{pid}-{id}");
        let client = Netns::create(format!("rein-bench-c-{suffix}"))?;
        let server = Netns::create(format!("rein-bench-s-{suffix}"))?;
        Ok(Self {
            client,
            server,
            suffix,
        })
    }
}

/// The addresses of a veth pair made by [`connect`].
#[derive(Debug, Clone)]
pub struct Link {
    pub client_dev: String,
    pub server_dev: String,
    pub server_addr: String,
}

/// Joins the two hosts by a veth pair made directly inside them (never in the root namespace), with
/// 198.18.0.1/30 on the client end and 198.18.0.2/30 on the server end. The pair goes with the
/// namespaces.
pub fn connect(hosts: &Hosts, pid: u32) -> Result<Link> {
    // IFNAMSIZ is 16: "rbc" + a pid of at most 7 digits fits.
    let client_dev = format!("rbc{pid}");
    let server_dev = format!("rbs{pid}");
    let (c, s) = (hosts.client.name(), hosts.server.name());
    ip(&[
        "link",
        "add",
        &client_dev,
        "netns",
        c,
        "type",
        "veth",
        "peer",
        "name",
        &server_dev,
        "netns",
        s,
    ])?;
    ip(&["-n", c, "addr", "add", "198.18.0.1/30", "dev", &client_dev])?;
    ip(&["-n", s, "addr", "add", "198.18.0.2/30", "dev", &server_dev])?;
    ip(&["-n", c, "link", "set", &client_dev, "up"])?;
    ip(&["-n", s, "link", "set", &server_dev, "up"])?;
    hosts.client.wait_up(&client_dev)?;
    hosts.server.wait_up(&server_dev)?;
    Ok(Link {
        client_dev,
        server_dev,
        server_addr: "198.18.0.2".to_owned(),
    })
}
