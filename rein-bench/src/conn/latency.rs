//! connect() latency with rein's connect programs attached to the client's cgroup.
//!
//! The client is this process: for each variant it moves into that variant's cgroup (the
//! programs of a throwaway instance are attached there, never at the root) and times socket
//! connects from a thread inside a namespace of its own. The variants live side by side, each
//! with its own instance and maps filled once, so the rounds can alternate them for free.
//!
//! Why a non-blocking connect to a black-holed neighbour: connect() then returns EINPROGRESS
//! as soon as the SYN has left the device, so the time is the socket layer's own (the cgroup
//! hook, the route, the SYN) and nothing of a peer. A listener over veth or loopback would add
//! the peer's SYN handling (run in the softirq on the way out of the same system call) and a
//! handshake; a closed port, the peer's RST. Here the neighbour entry is permanent, with a MAC
//! nobody has: the SYN crosses the veth and is dropped on the other end as not ours.

use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use rein::capabilities::conn_limits::datapath::ConnDatapath;
use rein_common::{
    conn::{
        CONN_FORM_RATE, CONN_SCOPE_ALL, CONN_SCOPE_BITS, ConnKey, ConnRule, ConnScope, ConnShapes,
        MAX_CONN_RULES, conn_variant_bit,
    },
    net::{FAMILY_IPV4, specificity},
};
use rein_testkit::{
    cgroup,
    netns::{self, Netns},
    process,
    rein_instance::ReinInstance,
};
use serde::Serialize;

use crate::conn::report::{self, Round, Row};

/// The most rules a variant can have: one more (the refused destination's) must fit.
pub const MAX_RULES: u32 = MAX_CONN_RULES - 1;

const CLIENT: &str = "198.18.0.1/24";
/// The destination every rule count matches with one rule that always admits.
const ADMITTED: [u8; 4] = [198, 18, 0, 2];
/// The destination of a rule whose bucket is empty after the first connect.
const REFUSED: [u8; 4] = [198, 18, 0, 3];
/// A MAC no interface has: the SYN is dropped by the far end of the veth.
const NOBODY: &str = "02:00:5e:00:53:01";
const SECOND: u64 = 1_000_000_000;
/// How often, and how long apart, a rule that failed for want of memory is written again.
const ENOMEM_ATTEMPTS: u32 = 200;
const ENOMEM_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
/// Untimed connects before each timed batch (also empties the refused rule's bucket).
const WARMUP: u32 = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub rounds: u32,
    pub connects: u32,
    /// Rule counts of the variants with rules (0 rules is always measured).
    pub rules: Vec<u32>,
}

/// What is attached to the client's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Variant {
    /// Nothing: the kernel's own connect().
    NoProgram,
    /// rein's programs, with no rule in their maps (the lookup misses).
    NoRule,
    /// rein's programs with this many rules, one of which admits the destination.
    Rules(u32),
    /// rein's programs with this many rules, one of which refuses the destination (bucket
    /// empty): connect() fails with ECONNREFUSED.
    Refused(u32),
}

impl Variant {
    pub fn label(self) -> String {
        match self {
            Self::NoProgram => "no program".to_owned(),
            Self::NoRule => "programs, 0 rules".to_owned(),
            Self::Rules(1) => "1 rule, matching".to_owned(),
            Self::Rules(n) => format!("{} rules, one matching", report::count(n)),
            Self::Refused(n) => format!("{} rules, refused", report::count(n)),
        }
    }

    fn destination(self) -> [u8; 4] {
        match self {
            Self::Refused(_) => REFUSED,
            _ => ADMITTED,
        }
    }
}

/// A throwaway instance with the connect programs attached to a cgroup of its own. Dropped:
/// programs and maps, then the cgroup and anything else of the instance.
struct Programs {
    datapath: ConnDatapath,
    instance: rein::Instance,
    cgroup: PathBuf,
    _rein: ReinInstance,
}

impl Programs {
    fn new(binary: &Path, name: String) -> Result<Self> {
        let rein = ReinInstance::new(binary, name, "rein-bench-conn")?;
        let instance = rein::Instance::new(rein.name())
            .with_context(|| format!("instance {}", rein.name()))?;
        let cgroup = rein.cgroup("client");
        let datapath = ConnDatapath::open_or_create(&instance)?;
        let mut programs = Self {
            datapath,
            instance,
            cgroup,
            _rein: rein,
        };
        let dir = fs::File::open(&programs.cgroup)
            .with_context(|| format!("opening {}", programs.cgroup.display()))?;
        ConnDatapath::attach_to(&programs.instance, &dir)?;
        // The lookup of rules for every caller, to any port and protocol: what the rules below
        // need, and with no rule a lookup that misses.
        programs.datapath.set_shapes(ConnShapes {
            variants: conn_variant_bit(CONN_SCOPE_ALL, false, false),
            cgroup_levels: 0,
        })?;
        Ok(programs)
    }

    fn put(&mut self, id: u32, addr: [u8; 4], rule: ConnRule) -> Result<()> {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&addr);
        let key = ConnKey {
            scope: ConnScope::new(CONN_SCOPE_ALL, 0, FAMILY_IPV4, 0, 0),
            addr: bytes,
        };
        let mut retries = 0;
        loop {
            let put = self.datapath.put(
                id,
                &[(key, CONN_SCOPE_BITS + 32)],
                specificity(32, false, false, true),
                rule,
            );
            match put {
                Ok(()) => return Ok(()),
                // The per-CPU allocator behind the counters cannot grow inside a map update:
                // rules written back to back run it dry until its worker adds memory (as in
                // rein-bench-net).
                Err(rein::Error::Bpf { message, .. })
                    if message.contains("os error 12") && retries < ENOMEM_ATTEMPTS =>
                {
                    retries += 1;
                    std::thread::sleep(ENOMEM_WAIT);
                }
                Err(e) => return Err(e).with_context(|| format!("writing rule {id}")),
            }
        }
    }

    /// `rules` rules with distinct destinations, the first for [`ADMITTED`] (and, when
    /// `refused`, one more for [`REFUSED`]); the others for 10.0.0.0 onwards, never dialled.
    fn fill(&mut self, rules: u32, refused: bool) -> Result<()> {
        self.put(1, ADMITTED, rate_rule(1, SECOND))?;
        if refused {
            // One connection an hour, burst 1: the warm-up takes the only token.
            let hour = 3600 * SECOND;
            self.put(2, REFUSED, rate_rule(hour, hour))?;
        }
        let first_filler = if refused { 3 } else { 2 };
        for i in 1..rules {
            if i % 10_000 == 0 {
                process::check_interrupted()?;
            }
            let addr = (0x0a00_0000u32 + i).to_be_bytes();
            self.put(first_filler + i - 1, addr, rate_rule(1, SECOND))?;
        }
        Ok(())
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        ConnDatapath::uninstall(&self.instance);
    }
}

/// A token bucket of one connection per `cost_ns` with `burst_ns` of credit.
fn rate_rule(cost_ns: u64, burst_ns: u64) -> ConnRule {
    ConnRule {
        form: CONN_FORM_RATE,
        flags: 0,
        cost_ns,
        burst_ns,
        anchor_ns: 0,
        fill_ns: 0,
        max_tokens: 0,
        tokens_per_fill: 0,
        state: 0,
    }
}

/// The client's namespace: a veth pair whose far end has no address, and permanent
/// neighbours for both destinations with a MAC nobody has.
fn client_namespace() -> Result<Netns> {
    let ns = Netns::create("rbc")?;
    let n = ns.name().to_owned();
    let ip = |args: &[&str]| -> Result<()> {
        let mut argv = vec!["-n", n.as_str()];
        argv.extend_from_slice(args);
        netns::ip(&argv)?;
        Ok(())
    };
    ip(&[
        "link", "add", "rbc0", "type", "veth", "peer", "name", "rbc1",
    ])?;
    ip(&["addr", "add", CLIENT, "dev", "rbc0"])?;
    ip(&["link", "set", "rbc0", "up"])?;
    ip(&["link", "set", "rbc1", "up"])?;
    for dst in [ADMITTED, REFUSED] {
        let dst = std::net::Ipv4Addr::from(dst).to_string();
        ip(&[
            "neigh",
            "replace",
            &dst,
            "lladdr",
            NOBODY,
            "dev",
            "rbc0",
            "nud",
            "permanent",
        ])?;
    }
    Ok(ns)
}

/// This process in another cgroup and this thread in another network namespace; both go
/// back on drop.
struct Away {
    home_cgroup: PathBuf,
    home_netns: OwnedFd,
}

impl Away {
    fn enter(ns: &Netns) -> Result<Self> {
        let mount = cgroup::cgroup2_mount()?;
        let own = cgroup::cgroup_of(std::process::id()).context("finding our own cgroup")?;
        let home_cgroup = mount.join(own.trim_start_matches('/'));
        let home = fs::File::open("/proc/thread-self/ns/net").context("opening our netns")?;
        let target = fs::File::open(ns.path()).context("opening the client's netns")?;
        // SAFETY: moves only this thread, between namespaces we hold open.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            home_cgroup,
            home_netns: OwnedFd::from(home),
        })
    }

    fn move_to(cgroup: &Path) -> Result<()> {
        fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving into {}", cgroup.display()))
    }
}

impl Drop for Away {
    fn drop(&mut self) {
        if let Err(e) = Self::move_to(&self.home_cgroup) {
            eprintln!("rein-bench-conn: warning: {e:#}");
        }
        // SAFETY: our own namespace, held open since we left it.
        if unsafe { libc::setns(self.home_netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "rein-bench-conn: warning: cannot return to our network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn now_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec, filled by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * SECOND + ts.tv_nsec as u64
}

/// `count` connects to `dst` from new sockets; the time of each connect() call, in ns. Each
/// must end as `expected` (EINPROGRESS: admitted, ECONNREFUSED: refused by the program).
fn connects(dst: [u8; 4], count: u32, expected: i32, samples: &mut Vec<u64>) -> Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        // The port does not matter: the SYN goes nowhere.
        sin_port: 9u16.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    for i in 0..count {
        if i % 1000 == 0 {
            process::check_interrupted()?;
        }
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns; closed when dropped.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let before = now_ns();
        // SAFETY: a valid sockaddr_in of `len` bytes.
        let ret =
            unsafe { libc::connect(socket.as_raw_fd(), std::ptr::from_ref(&addr).cast(), len) };
        let after = now_ns();
        let errno = if ret == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        };
        drop(socket);
        if errno != expected {
            bail!(
                "connect to {} ended with errno {errno}, expected {expected}",
                std::net::Ipv4Addr::from(dst)
            );
        }
        samples.push(after - before);
    }
    Ok(())
}

/// Measures every variant, `config.rounds` times in a rotating order; the rows in the order of
/// the variants, and the seconds each rule count took to write.
pub fn run(binary: &Path, config: &Config, fill_seconds: &mut Vec<(u32, f64)>) -> Result<Vec<Row>> {
    let largest = config.rules.iter().copied().max();
    let pid = std::process::id();
    let ns = client_namespace()?;
    // Instance 0 holds, besides its own programs (0 rules), the cgroup with no program.
    let empty = Programs::new(binary, format!("bench-conn-{pid}-0"))?;
    let bare = empty._rein.cgroup("bare");
    let mut variants: Vec<(Variant, PathBuf)> = vec![
        (Variant::NoProgram, bare),
        (Variant::NoRule, empty.cgroup.clone()),
    ];
    let mut instances = Vec::new();
    for (i, &rules) in config.rules.iter().enumerate() {
        let mut programs = Programs::new(binary, format!("bench-conn-{pid}-{}", i + 1))?;
        let refused = Some(rules) == largest;
        eprintln!("rein-bench-conn: writing {} rules", report::count(rules));
        let started = Instant::now();
        programs.fill(rules, refused)?;
        fill_seconds.push((rules, started.elapsed().as_secs_f64()));
        variants.push((Variant::Rules(rules), programs.cgroup.clone()));
        if refused {
            variants.push((Variant::Refused(rules), programs.cgroup.clone()));
        }
        instances.push(programs);
    }

    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); variants.len()];
    {
        // Dropped before the instances: their cgroups can only go once we have left them.
        let _away = Away::enter(&ns)?;
        let mut samples = Vec::with_capacity(config.connects as usize);
        for round in 0..config.rounds as usize {
            eprintln!("rein-bench-conn: round {} of {}", round + 1, config.rounds);
            for k in 0..variants.len() {
                let at = (k + round) % variants.len();
                let (variant, cgroup) = &variants[at];
                Away::move_to(cgroup)?;
                let expected = match variant {
                    Variant::Refused(_) => libc::ECONNREFUSED,
                    _ => libc::EINPROGRESS,
                };
                let mut warmup = Vec::new();
                let dst = variant.destination();
                // The refused rule admits its one token in the first round's warm-up.
                let mut first = true;
                for _ in 0..WARMUP {
                    let want = if first && round == 0 && matches!(variant, Variant::Refused(_)) {
                        libc::EINPROGRESS
                    } else {
                        expected
                    };
                    first = false;
                    connects(dst, 1, want, &mut warmup)?;
                }
                samples.clear();
                connects(dst, config.connects, expected, &mut samples)?;
                rounds[at].push(Round::of(&mut samples));
            }
        }
    }
    // The programs saw the connects: each admitting rule counted them, the refused one too.
    let per_variant = u64::from(config.rounds) * u64::from(config.connects);
    for programs in &instances {
        let admitted = programs.datapath.counters(1).allowed;
        if admitted < per_variant {
            bail!(
                "rule 1 of {} counted {admitted} admitted connects, fewer than the {per_variant} made",
                programs.instance.name()
            );
        }
    }
    let mut rows: Vec<Row> = variants
        .iter()
        .zip(rounds)
        .map(|((variant, _), rounds)| Row::new(*variant, rounds))
        .collect();
    report::compare_to_none(&mut rows);
    drop(instances);
    drop(empty);
    Ok(rows)
}
