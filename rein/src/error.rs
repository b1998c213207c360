//! Everything that can go wrong in rein's library, each with a message an operator can act on.
use std::{io, path::PathBuf};

use crate::units::UnitError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Unit(#[from] UnitError),

    /// The agent cannot watch its configuration or catch its signals.
    #[error("{0}")]
    Agent(String),

    #[error(
        "rein needs root (CAP_BPF, CAP_NET_ADMIN and write access to cgroups); run it with sudo"
    )]
    NotRoot,

    #[error("no bpffs at {0}: mount it with `mount -t bpf bpf {0}`")]
    NoBpffs(PathBuf),

    #[error(
        "the kernel has no BTF ({0} is missing): rein needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(PathBuf),

    #[error(
        "no cgroup v2 hierarchy is mounted: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,

    #[error("{path} is outside cgroup v2 (mounted at {mount})")]
    OutsideCgroup2 { path: PathBuf, mount: PathBuf },

    #[error("no cgroup {0}")]
    NoSuchCgroup(String),

    #[error("refusing to limit the cgroup v2 root: that would limit the whole machine")]
    RootCgroup,

    #[error("cgroup {path} is {depth} levels deep; rein covers cgroups up to {max} levels deep")]
    CgroupTooDeep {
        path: String,
        depth: usize,
        max: u32,
    },

    #[error("invalid cgroup path {0:?}: it must not contain `..`")]
    BadCgroupPath(String),

    #[error("invalid cgroup glob {pattern:?}: {reason}")]
    BadCgroupGlob { pattern: String, reason: String },

    #[error("no process with pid {0}")]
    NoSuchProcess(u32),

    #[error("network namespace {netns} is limited by {owner}; only it may change the limit")]
    NetnsOwnedElsewhere { netns: String, owner: String },

    #[error("the limit of {netns} drifted: {what}")]
    LimitDrifted { netns: String, what: String },

    #[error("too many subnets: {count} over all namespace limits, at most {max}")]
    TooManySubnets { count: usize, max: u32 },

    #[error("process {0} exited before it could be limited")]
    ProcessExited(u32),

    #[error("pid {pid} is limited through cgroup {cgroup}; use `rein unset --cgroup {cgroup}`")]
    LimitedThroughCgroup { pid: u32, cgroup: String },

    #[error(
        "invalid shared limit name {0:?}: use 1-253 characters of a-z, 0-9, -, _ and ., starting \
         with a letter or digit"
    )]
    BadSharedName(String),

    #[error(
        "shared limit {0} was made by hand; `rein unshare {0}` first, or give the resource \
         another name"
    )]
    SharedByHand(String),

    #[error("no shared limit {0}")]
    NoSuchShared(String),

    #[error(
        "shared limit {name} is declared by SharedLimit {owner}; change it where it is declared"
    )]
    SharedDeclared { name: String, owner: String },

    #[error(
        "{member} would be both a member of shared limit {shared} and limited by {owner}; a \
         member has no limit of its own"
    )]
    MemberOwnedElsewhere {
        member: String,
        shared: String,
        owner: String,
    },

    #[error(
        "cgroup {inner} is below cgroup {outer}, both members of shared limit {shared}: its \
         traffic would be charged twice"
    )]
    NestedMembers {
        shared: String,
        outer: String,
        inner: String,
    },

    #[error(
        "shared limit {shared} cannot limit the downloads of namespace {netns}: they cannot go \
         through the group's queue (a device in one namespace); give the namespace an ingress \
         limit of its own"
    )]
    SharedIngressOfNetns { shared: String, netns: String },

    #[error("{0} has no rein limit")]
    NotLimited(String),

    #[error("nothing to set: give --egress, --ingress or --burst")]
    NothingToSet,

    #[error("{0} has no limit yet: give --egress or --ingress with --burst")]
    BurstWithoutRate(String),

    #[error("another rein command is running (it holds {0}); try again when it has finished")]
    Busy(PathBuf),

    #[error("rein's state in {path} is unreadable: {reason}; `rein purge` starts afresh")]
    CorruptState { path: PathBuf, reason: String },

    #[error("the rule table is full ({0} rules)")]
    TooManyRules(u32),

    #[error("invalid instance name {0:?}: use 1-32 characters of a-z, 0-9, - and _")]
    BadInstanceName(String),

    #[error("rein's kernel programs are not installed; nothing to reload")]
    NotInstalled,

    #[error(
        "nothing to trace: no datapath with trace maps is installed (set a limit or add a net \
         rule first; a datapath from an older rein gets them with `rein reload`)"
    )]
    NothingToTrace,

    #[error("failed to load rein's kernel programs: {0}")]
    Load(String),

    #[error(transparent)]
    Net(#[from] crate::capabilities::net_rules::spec::NetError),

    #[error("no network device {0:?} in this network namespace")]
    NoSuchDevice(String),

    #[error(
        "{device} is not an Ethernet device (link type {link_type}); rein net reads Ethernet \
         frames"
    )]
    NotEthernet { device: String, link_type: u16 },

    #[error("XDP cannot attach to {device}: {reason}")]
    XdpUnsupported { device: String, reason: String },

    #[error(
        "the rein net rule tables are full ({0} rules); to make them larger, remove every rein \
         net rule and set REIN_NET_MAX_RULES (up to 1048576) for the next first rule"
    )]
    NetRulesFull(u32),

    #[error("the connection rule tables are full ({0} rules)")]
    ConnRulesFull(u32),

    #[error("REIN_NET_MAX_RULES={0:?} is not a number of rules from 1 to 1048576")]
    BadNetMaxRules(String),

    #[error("no rein net rule {0}")]
    NoSuchNetRule(u32),

    /// `rein conn del` deletes inbound connection limits only.
    #[error("net rule {0} limits traffic, not new connections: use rein net del")]
    NotAConnectionRule(u32),

    #[error("rule {0} already matches exactly these packets; delete it or change it first")]
    DuplicateNetRule(u32),

    #[error(
        "interface index {ifindex} already has rules for a device of another network namespace \
         (rule {rule}); rein net tells interfaces apart by index"
    )]
    IfindexInOtherNetns { ifindex: u32, rule: u32 },

    #[error(
        "no room for a sketch of {needed} cells: {free} of {total} free in one piece; delete a \
         sketch rule or choose a smaller sketch"
    )]
    SketchFull { needed: u32, free: u32, total: u32 },

    #[error(transparent)]
    Conn(#[from] crate::capabilities::conn_limits::spec::ConnError),

    #[error("no network namespace {0}")]
    NoSuchNetns(PathBuf),

    #[error("no rein conn rule {0}")]
    NoSuchConnRule(u32),

    #[error(
        "rule {0} already limits exactly these connections (same destination, protocol, port \
         and scope); delete it first"
    )]
    DuplicateConnRule(u32),

    #[error("metrics: {0}")]
    Metrics(String),
    #[error("{at}: {message}")]
    BadConfig { at: String, message: String },

    #[error("{at}: {kind} {name} is declared twice (first at {first})")]
    DuplicateResource {
        at: String,
        kind: &'static str,
        name: String,
        first: String,
    },

    #[error(
        "refusing {path}: {reason}; a config file and its directory must be root's and \
         writable by root only"
    )]
    InsecureConfig { path: PathBuf, reason: String },

    #[error("{at}: {kind} {name}: {source}")]
    InResource {
        at: String,
        kind: crate::declarative::Kind,
        name: String,
        source: Box<Error>,
    },

    #[error(
        "cgroup {0} has a limit set by hand; `rein unset --cgroup {0}` first, or leave it out \
         of the file"
    )]
    LimitedByHand(String),

    #[error("cgroup {cgroup} is already limited by CgroupLimit {owner}")]
    DeclaredElsewhere { cgroup: String, owner: String },

    #[error(
        "network namespace {0} has a limit set by hand; `rein unset --netns {0}` first, or \
         leave it out of the file"
    )]
    NetnsLimitedByHand(String),

    #[error("network namespace {netns} is already limited by CgroupLimit {owner}")]
    NetnsDeclaredElsewhere { netns: String, owner: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{context}: {message}")]
    Bpf { context: String, message: String },

    #[error("the kernel's BTF ({path}): {reason}")]
    KernelBtf { path: PathBuf, reason: String },
}

impl Error {
    /// The declarative resource (kind and name) an apply failed on, if one did: a caller that
    /// declares many (the Kubernetes node agent) can leave it out and apply the rest.
    pub fn resource(&self) -> Option<(crate::declarative::Kind, &str)> {
        match self {
            Error::InResource { kind, name, .. } => Some((*kind, name)),
            _ => None,
        }
    }
}

/// Attaches what was being done to an I/O error.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

/// Attaches what was being done to an aya error (aya's errors are many types), with the whole
/// chain of causes on one line: aya's own message often leaves the errno to its source.
pub fn bpf_error(context: impl Into<String>) -> impl FnOnce(&dyn std::error::Error) -> Error {
    let context = context.into();
    move |error| Error::Bpf {
        context,
        message: causes(error),
    }
}

/// An error and its sources, on one line.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The errno of a failed map operation, if a system call failed.
pub fn map_errno(error: &aya::maps::MapError) -> Option<i32> {
    match error {
        aya::maps::MapError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    }
}
