//! Throwaway network namespaces, and a veth pair between two of them, as the project's test
//! traffic rules want them:
//! - the hosts are namespaces made here, joined by a veth pair made directly inside them (nothing
//!   appears in the root namespace, even briefly);
//! - addresses come only from the benchmarking ranges, 198.18.0.0/15 and 2001:2::/48;
//! - every namespace and link name carries a suffix unique across threads and processes, so tests
//!   and benchmarks run side by side;
//! - everything goes on drop, also when a test panics or a benchmark fails: the processes started
//!   inside, then the namespace, which takes its links, qdiscs and addresses with it.
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    error::{Context, Error, Result, bail},
    process::{Cmd, wait_until},
};

/// Deadline of one `ip`/`tc`/`ss` call.
pub const QUICK: Duration = Duration::from_secs(10);

/// How long a link may take to come up and its addresses to become usable.
const SETUP: Duration = Duration::from_secs(5);

/// Distinct /30s handed out: 198.{18,19}.X.0/30, all inside 198.18.0.0/15. Namespaces isolate
/// the pairs anyway; distinct blocks only keep captures and messages apart.
const SUBNET_SLOTS: u32 = 512;

/// Tells apart the suffixes of one process; pid and clock bits tell processes apart.
static SUFFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// `ip netns add` and `ip netns del` set up and tear down the shared `/run/netns` mount; calls
/// from many threads at once are a known source of spurious failures, so one process makes them
/// one at a time.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A short (8 characters, `[0-9a-z]`) string unique per call across threads and processes: 4
/// characters of pid, 2 of a per-process counter, 2 of clock bits. `vc-<suffix>` (11) fits
/// IFNAMSIZ (15).
pub fn unique_suffix() -> String {
    next_id().0
}

/// A unique suffix and a subnet slot (`0..SUBNET_SLOTS`) from the same counter.
fn next_id() -> (String, u32) {
    let pid = std::process::id();
    let count = SUFFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let suffix = format!(
        "{}{}{}",
        base36(pid, 4),
        base36(count, 2),
        base36(nanos >> 10, 2)
    );
    let slot = pid.wrapping_mul(37).wrapping_add(count) % SUBNET_SLOTS;
    (suffix, slot)
}

/// Lowercase base 36 of `value`, its low `width` digits.
fn base36(mut value: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `ip ARGS...` and fails on a non-zero exit.
pub fn ip(args: &[&str]) -> Result<String> {
    let argv = std::iter::once("ip").chain(args.iter().copied());
    Ok(Cmd::new(argv, QUICK).run()?.stdout)
}

/// The names of rein's queue devices (`rq…`) in the network namespace named `ns`.
pub fn queue_devices(ns: &str) -> Result<Vec<String>> {
    Ok(ip(&["-n", ns, "-o", "link", "show"])?
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with("rq"))
        .collect())
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace `<prefix>-<unique suffix>` with `lo` up.
    pub fn create(prefix: &str) -> Result<Self> {
        retry_names(|| Self::create_named(&format!("{prefix}-{}", unique_suffix())))
    }

    /// Makes the namespace `name` with `lo` up; fails if it exists (a name is never taken over,
    /// so a namespace this process did not make is never deleted).
    fn create_named(name: &str) -> Result<Self> {
        {
            let _serial = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip(&["netns", "add", name]).with_context(|| format!("creating namespace {name}"))?;
        }
        // From here on the guard owns the namespace, so an error removes it.
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Makes the namespace `<prefix>-<unique suffix>` with `lo` up and each of `addresses`
    /// (`ADDR/LEN`) on it; an IPv6 address skips duplicate detection, so it is usable at once.
    pub fn with_loopback(prefix: &str, addresses: &[&str]) -> Result<Self> {
        let ns = Self::create(prefix)?;
        for address in addresses {
            let mut args = vec!["-n", ns.name(), "addr", "add", address, "dev", "lo"];
            if address.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread of its own inside this namespace; the caller's namespace never
    /// changes. Sockets made by `f` stay in this namespace wherever they are used after.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        rein::platform::netns::run_in(std::path::Path::new(&path), f)
            .map_err(|e| Error::failed(format!("running inside {path}: {e}")))
    }

    /// `/run/netns/NAME`, for `nsenter --net=` and CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip netns exec NAME ARGS...` as an argv.
    pub fn exec<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .into_iter()
            .map(str::to_owned)
            .chain(args.iter().map(|a| a.as_ref().to_owned()))
            .collect()
    }

    /// Waits until `dev` is operationally up (for a veth: both ends up) and has no tentative
    /// IPv6 address left.
    pub fn wait_usable(&self, dev: &str) -> Result<()> {
        let deadline = Instant::now() + SETUP;
        loop {
            let link = ip(&["-n", &self.name, "-o", "link", "show", "dev", dev])?;
            let tentative = ip(&[
                "-n",
                &self.name,
                "-6",
                "addr",
                "show",
                "dev",
                dev,
                "tentative",
            ])?;
            if link.contains("state UP") && tentative.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{dev} in {} is not usable after {} s: {} {}",
                    self.name,
                    SETUP.as_secs(),
                    link.trim(),
                    tentative.trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until something listens on TCP `port` in the namespace.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        let filter = format!("sport = :{port}");
        let listens = || {
            Cmd::new(self.exec(&["ss", "-ltnH", &filter]), QUICK)
                .run()
                .is_ok_and(|out| !out.stdout.trim().is_empty())
        };
        if wait_until(SETUP, listens) {
            return Ok(());
        }
        bail!("nothing listens on port {port} in {}", self.name)
    }

    /// SIGKILLs the processes inside: all of them were started by their owner, since nothing
    /// else knows this namespace. A process inside would keep it (and its links) alive after
    /// `ip netns del`.
    fn kill_inside(&self) {
        let pids = || -> Vec<String> {
            Cmd::new(["ip", "netns", "pids", &self.name], QUICK)
                .cleanup()
                .run()
                .map(|out| out.stdout.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let found = pids();
        if found.is_empty() {
            return;
        }
        let argv = ["kill", "-KILL"]
            .into_iter()
            .map(str::to_owned)
            .chain(found);
        let _ = Cmd::new(argv, QUICK).cleanup().output();
        wait_until(Duration::from_secs(3), || pids().is_empty());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_inside();
        let _serial = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = Cmd::new(["ip", "netns", "del", &self.name], QUICK)
            .cleanup()
            .run()
        {
            eprintln!("warning: {e}");
        }
    }
}

/// Tries up to five fresh names: a suffix may (very rarely) be taken by another process.
fn retry_names<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last = Error::failed("no attempt");
    for _ in 0..5 {
        match attempt() {
            Ok(made) => return Ok(made),
            Err(e) if e.is_interrupted() => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The two hosts of a test or a benchmark run: CLIENT (the limited side) and SERVER.
#[derive(Debug)]
pub struct Hosts {
    pub client: Netns,
    pub server: Netns,
    /// Unique per pair: the namespaces are `<prefix>-c-<suffix>` and `<prefix>-s-<suffix>`.
    pub suffix: String,
    /// The pair's block of addresses (see [`SUBNET_SLOTS`]).
    slot: u32,
}

impl Hosts {
    pub fn create(prefix: &str) -> Result<Self> {
        let (client, suffix, slot) = retry_names(|| {
            let (suffix, slot) = next_id();
            let client = Netns::create_named(&format!("{prefix}-c-{suffix}"))?;
            Ok((client, suffix, slot))
        })?;
        let server = Netns::create_named(&format!("{prefix}-s-{suffix}"))?;
        Ok(Self {
            client,
            server,
            suffix,
            slot,
        })
    }

    /// Joins the two hosts by a veth pair (`vc-<suffix>` in CLIENT, `vs-<suffix>` in SERVER)
    /// with a /30 of 198.18.0.0/15 and a /64 of 2001:2::/48 on it. The pair goes with the
    /// namespaces.
    pub fn connect(&self) -> Result<Link> {
        let link = Link::in_slot(&self.suffix, self.slot);
        let (c, s) = (self.client.name(), self.server.name());
        ip(&[
            "link",
            "add",
            &link.client_if,
            "netns",
            c,
            "type",
            "veth",
            "peer",
            "name",
            &link.server_if,
            "netns",
            s,
        ])?;
        for (ns, dev, v4, v6) in [
            (c, &link.client_if, &link.client_addr, &link.client_addr6),
            (s, &link.server_if, &link.server_addr, &link.server_addr6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev])?;
            // nodad: the address is usable at once, not after a second of duplicate address
            // detection.
            let v6 = format!("{v6}/64");
            ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        self.client.wait_usable(&link.client_if)?;
        self.server.wait_usable(&link.server_if)?;
        Ok(link)
    }
}

/// The veth pair of [`Hosts::connect`]. Addresses are bare (no prefix length), ready for
/// `-c`, `-B` and ping.
#[derive(Debug, Clone)]
pub struct Link {
    /// The end in CLIENT.
    pub client_if: String,
    /// The end in SERVER.
    pub server_if: String,
    /// A /30 of 198.18.0.0/15, shared with `server_addr`.
    pub client_addr: String,
    pub server_addr: String,
    /// A /64 of 2001:2::/48, shared with `server_addr6`.
    pub client_addr6: String,
    pub server_addr6: String,
}

impl Link {
    fn in_slot(suffix: &str, slot: u32) -> Self {
        let (octet2, octet3) = (18 + slot / 256, slot % 256);
        Self {
            client_if: format!("vc-{suffix}"),
            server_if: format!("vs-{suffix}"),
            client_addr: format!("198.{octet2}.{octet3}.1"),
            server_addr: format!("198.{octet2}.{octet3}.2"),
            client_addr6: format!("2001:2:0:{slot:x}::1"),
            server_addr6: format!("2001:2:0:{slot:x}::2"),
        }
    }
}

/// Two hosts and the veth pair between them.
#[derive(Debug)]
pub struct HostPair {
    pub link: Link,
    pub hosts: Hosts,
}

impl HostPair {
    /// Namespaces `<prefix>-c-<suffix>` and `<prefix>-s-<suffix>`, connected.
    pub fn create(prefix: &str) -> Result<Self> {
        let hosts = Hosts::create(prefix)?;
        let link = hosts.connect()?;
        Ok(Self { link, hosts })
    }

    pub fn client(&self) -> &Netns {
        &self.hosts.client
    }

    pub fn server(&self) -> &Netns {
        &self.hosts.server
    }

    /// Gives the client `count` more IPv4 addresses (/32s of its /24 outside its /30, still in
    /// 198.18.0.0/15), with routes to them in the server, so that clients can bind (`-B`) to
    /// several sources. They go with the namespaces.
    pub fn add_client_addresses(&self, count: u8) -> Result<Vec<String>> {
        if count > 200 {
            bail!("at most 200 extra client addresses, not {count}");
        }
        let (network, _) = self
            .link
            .client_addr
            .rsplit_once('.')
            .context("the client address is not IPv4")?;
        let (client, server) = (self.client().name(), self.server().name());
        (0..count)
            .map(|i| {
                let addr = format!("{network}.{}", 10 + u32::from(i));
                let host = format!("{addr}/32");
                let dev = &self.link.client_if;
                ip(&["-n", client, "addr", "add", &host, "dev", dev])?;
                let dev = &self.link.server_if;
                ip(&["-n", server, "route", "add", &host, "dev", dev])?;
                Ok(addr)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_differ_and_fit_interface_names() {
        let (a, b) = (unique_suffix(), unique_suffix());
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
        assert!(format!("vc-{a}").len() <= 15);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
    }

    /// Needs root, as every user of this module: a pair answers pings over IPv4 and IPv6, and
    /// leaves no namespace behind.
    #[test]
    fn a_pair_talks_and_leaves_nothing() {
        let pair = HostPair::create("rtk").unwrap();
        let names = [
            pair.client().name().to_owned(),
            pair.server().name().to_owned(),
        ];
        for addr in [&pair.link.server_addr, &pair.link.server_addr6] {
            let argv = crate::ping::args(addr, 1);
            let out = Cmd::new(pair.client().exec(&argv), QUICK).run().unwrap();
            let pings = crate::ping::Pings::parse(&out.stdout);
            assert_eq!(pings.rtts_ms.len(), 5, "{}", out.stdout);
        }
        drop(pair);
        let left = ip(&["netns", "list"]).unwrap();
        for name in names {
            assert!(!left.contains(&name), "{name} is left: {left}");
        }
    }

    #[test]
    fn addresses_stay_in_the_benchmarking_ranges() {
        for slot in [0, 255, 256, SUBNET_SLOTS - 1] {
            let link = Link::in_slot("x", slot);
            let v4: std::net::Ipv4Addr = link.server_addr.parse().unwrap();
            assert_eq!(
                u32::from(v4) >> 17,
                u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) >> 17
            );
            assert!(link.client_addr6.starts_with("2001:2:0:"));
        }
    }
}
