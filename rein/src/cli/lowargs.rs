//! The command line exactly as typed. Values stay strings here; `hiargs` gives them meaning, so
//! a bad rate gets rein's own one-line error rather than clap's usage screen.
use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rein",
    version,
    about = "Bandwidth limits per process and cgroup, enforced in the kernel with eBPF",
    after_help = "Rates follow tc(8): bit kbit mbit gbit tbit (bit/s, 1000-based), bps kbps mbps \
                  gbps (bytes/s); a bare number is bit/s. Sizes: b k m g (1024-based).\n\
                  Rates count IP-layer bytes."
)]
pub struct LowArgs {
    /// Log what rein does (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: LowCommand,
}

#[derive(Debug, Subcommand)]
pub enum LowCommand {
    /// Run a command in a new limited cgroup; exits with the command's exit code.
    Run {
        #[command(flatten)]
        limits: LowLimits,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Limit a running process or an existing cgroup, or change its limit.
    Set {
        #[command(flatten)]
        target: LowTarget,
        #[command(flatten)]
        limits: LowLimits,
    },
    /// Remove a limit; a process moved by `set --pid` goes back to its cgroup.
    Unset {
        #[command(flatten)]
        target: LowTarget,
    },
    /// Make a shared limit (one bucket for every member's traffic together), or change one:
    /// its limits and members become the ones given.
    Share(Box<LowShare>),
    /// Remove a shared limit.
    Unshare {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Show every limit with its cgroup, processes and counters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace the loaded kernel programs with this build's, keeping every limit and its state.
    Reload,
    /// Remove everything rein created: limits, programs, pins, cgroups and state.
    Purge,
    /// Limits on interfaces by address, service and source (tc and XDP).
    Net {
        #[command(subcommand)]
        command: LowNetCommand,
    },
    /// Limits on new connections: those local processes open (checked at connect(), refused
    /// with ECONNREFUSED), and those a device receives (TCP SYNs at tc or XDP).
    Conn {
        #[command(subcommand)]
        command: LowConnCommand,
    },
    /// Print every limit's counters and settings once, in the Prometheus text format.
    Metrics,
    /// A live view of every limit: rate against the limit, drops, TCP flows (q quits).
    Top,
    /// Run as a service: apply the configuration, keep the kernel matching it (on file
    /// changes, SIGHUP, and every second for drift), serve /metrics. Runs until SIGTERM.
    Agent {
        /// A file or a directory of resources.
        #[arg(long, value_name = "PATH", default_value = "/etc/rein")]
        config: PathBuf,
        /// Where to serve /metrics.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9810")]
        metrics_addr: String,
        /// On SIGTERM, remove what the agent applied (by default it stays enforced).
        #[arg(long)]
        remove_on_exit: bool,
    },
    /// Make the limits match what YAML files declare: adds and changes their resources, leaves
    /// other resources and limits set by hand alone.
    Apply {
        #[command(flatten)]
        files: LowFiles,
    },
    /// Show what `apply` would change; exits 1 if anything would, 0 if nothing, 2 on error.
    Diff {
        #[command(flatten)]
        files: LowFiles,
    },
    /// Remove the resources YAML files declare (limits set by hand stay).
    Delete {
        #[command(flatten)]
        files: LowFiles,
    },
    /// List resources: declared ones and limits set by hand, each with its origin.
    Get {
        /// CgroupLimit or NetRule (default: every kind).
        #[arg(value_name = "KIND")]
        kind: Option<String>,
        /// json or yaml (default: a table).
        #[arg(short, long, value_name = "FORMAT")]
        output: Option<String>,
    },
    /// Print the JSON Schema of the resources in YAML files.
    Schema,
    /// Stream the datapath's verdicts as they happen: refused packets, refused connects, TCP
    /// pacing and window changes, download queue overflows. Runs until interrupted.
    Trace {
        /// Only the limit of this cgroup (a directory or a path from the v2 root).
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Only refusals by this net rule or connection limit.
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        rule: Option<String>,
        /// Only what was dropped: refusals (of packets and connects) and queue overflows.
        #[arg(long)]
        drops_only: bool,
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the kernel features rein needs and say how to fix what is missing.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LowFiles {
    /// A YAML file of resources (several documents allowed), or a directory of them (*.yaml and
    /// *.yml, read in name order); repeat for more.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LowShare {
    /// The shared limit's name (a-z, 0-9, -, _ and .).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Limit of the traffic all members send together (e.g. 10mbit).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub egress: Option<String>,
    /// Burst of the egress limit (default: the larger of 64k and 10 ms at the rate).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub egress_burst: Option<String>,
    /// Limit of the traffic all members receive together.
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub ingress: Option<String>,
    /// Burst of the ingress limit.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub ingress_burst: Option<String>,
    /// A member cgroup v2 (a directory or a path from the v2 root); repeat for more.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<PathBuf>,
    /// A member: the cgroup the process is in (it is not moved); repeat for more.
    #[arg(long, value_name = "PID", allow_hyphen_values = true)]
    pub pid: Vec<String>,
    /// A member network namespace (/run/netns/NAME, /proc/PID/ns/net); repeat for more.
    #[arg(long, value_name = "PATH")]
    pub netns: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LowLimits {
    /// Limit of traffic the processes send (e.g. 10mbit).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub egress: Option<String>,
    /// Limit of traffic the processes receive (e.g. 100mbit).
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub ingress: Option<String>,
    /// Burst allowed above the rate, for both directions (default: the larger of 64k and 10 ms
    /// at the rate).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub burst: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct LowTarget {
    /// A running process (moved into a cgroup of its own; its threads go with it).
    #[arg(long, value_name = "PID", allow_hyphen_values = true)]
    pub pid: Option<String>,
    /// An existing cgroup v2, as a directory or a path from the v2 root (/system.slice/x).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// A network namespace (/run/netns/NAME, /proc/PID/ns/net): every socket in it shares the
    /// limit, whatever its cgroup. A pod is one.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LowNetCommand {
    /// Add a rule; prints its id. The most specific rule matching a packet applies.
    Add(Box<LowNetAdd>),
    /// Delete a rule by id.
    Del {
        #[arg(value_name = "ID", allow_hyphen_values = true)]
        id: String,
    },
    /// Show every rule with its counters (and the top sources of per-source rules).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LowNetAdd {
    /// The network device (of the current network namespace).
    #[arg(long, value_name = "DEV")]
    pub dev: String,
    /// ingress or egress.
    #[arg(long, value_name = "DIR")]
    pub dir: String,
    /// Source address or prefix (e.g. 10.0.0.0/8, 2001:db8::/32).
    #[arg(long, value_name = "CIDR")]
    pub src: Option<String>,
    /// Destination address or prefix; with --src, both must be single addresses (a pair).
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<String>,
    /// Destination port (a service: with --dst, ip:port).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    pub dport: Option<String>,
    /// tcp or udp.
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,
    /// A rate in tc(8) units (e.g. 10mbit; a bare number is bit/s), counted in IP bytes.
    #[arg(long, value_name = "RATE", allow_hyphen_values = true)]
    pub rate: Option<String>,
    /// Packets per second.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pps: Option<String>,
    /// Token bucket burst: a size with --rate (default max(64k, 10 ms)), packets with --pps
    /// (default max(16, 10 ms)).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub burst: Option<String>,
    /// token-bucket (default), fixed-window or sliding-window.
    #[arg(long, value_name = "ALGO")]
    pub algo: Option<String>,
    /// Window length for the window algorithms (default 1s): e.g. 100ms, 1s, 1m.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// One bucket (or window) per source address: "each client gets RATE".
    #[arg(long)]
    pub per_source: bool,
    /// With --per-source: estimate sources in a count-min sketch of WIDTHxDEPTH cells (8 bytes
    /// each) instead of tracking each exactly.
    #[arg(long, value_name = "WxD")]
    pub sketch: Option<String>,
    /// Run on XDP instead of tc (ingress only).
    #[arg(long)]
    pub xdp: bool,
}

#[derive(Debug, Subcommand)]
pub enum LowConnCommand {
    /// Add a rule; prints its id. Outbound (--dst): each rule whose destination and scope match
    /// a connect must have room for it. Inbound (--dev): excess SYNs are dropped.
    Add(Box<LowConnAdd>),
    /// Delete a rule by id.
    Del {
        #[arg(value_name = "ID", allow_hyphen_values = true)]
        id: String,
    },
    /// Show every rule with its counters, its tokens and its top callers or sources.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `rein conn add`'s flags: outbound rules (connections local processes open) without `--dev`,
/// inbound rules (connections a device receives) with it.
#[derive(Debug, Args)]
pub struct LowConnAdd {
    /// Outbound: destination address or prefix, with a port or not: 198.18.13.0/24,
    /// 198.18.13.1:443, [2001:db8::1]:443. Inbound: the service's address or prefix (default:
    /// every address on the device).
    #[arg(long, value_name = "IP[/PREFIX][:PORT]")]
    pub dst: Option<String>,
    /// tcp or udp (default: both; inbound rules count TCP SYNs only).
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,
    /// New connections per second, minute or hour (e.g. 100/s, 30/min): a token bucket.
    #[arg(long, value_name = "N/s|N/min", allow_hyphen_values = true)]
    pub rate: Option<String>,
    /// Connections allowed at once above the rate (default: one second at the rate, at least
    /// 5).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub burst: Option<String>,
    /// Outbound fill form: the most tokens the bucket holds (it starts full).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_tokens: Option<String>,
    /// Outbound fill form: tokens added at each fill interval.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub tokens_per_fill: Option<String>,
    /// Outbound fill form: the fill interval (e.g. 1s, 100ms).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub fill_interval: Option<String>,
    /// Outbound: only the processes in this cgroup v2 and below it (a directory or a path from
    /// the v2 root).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Outbound: only the processes of this network namespace (e.g. /run/netns/x).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Outbound: each caller network namespace gets a bucket of its own.
    #[arg(long)]
    pub per_caller: bool,
    /// Inbound: the network device that receives the connections (of the current network
    /// namespace).
    #[arg(long, value_name = "DEV")]
    pub dev: Option<String>,
    /// Inbound: the service's TCP port (required with --dev).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    pub dport: Option<String>,
    /// Inbound: each client address gets the rate on its own.
    #[arg(long)]
    pub per_source: bool,
    /// Inbound, with --per-source: estimate clients in a count-min sketch of WIDTHxDEPTH cells.
    #[arg(long, value_name = "WxD")]
    pub sketch: Option<String>,
    /// Inbound: drop excess SYNs at XDP instead of tc ingress.
    #[arg(long)]
    pub xdp: bool,
}
