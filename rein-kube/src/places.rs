//! Where a pod's limit goes: from its UID to its cgroup under the kubepods hierarchy (kubelet's
//! cgroupfs and systemd drivers, every QoS class, cgroup v2, or v1 on a hybrid host), and from
//! its processes to its network namespace.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use rein::platform::cgroupfs::{self, Cgroup, CgroupFs};

use crate::world::{ObjectRef, PodPlace, Problem};

/// Reasons of a pod's place problems.
pub const NO_CGROUP_V2: &str = "NoCgroupV2";
pub const INVALID_UID: &str = "InvalidUid";
pub const PLACE_UNREADABLE: &str = "PlaceUnreadable";

/// A pod's QoS class (`status.qosClass`): which kubepods child its cgroup is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub const ALL: [QosClass; 3] = [Self::Guaranteed, Self::Burstable, Self::BestEffort];

    /// The class `status.qosClass` names, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "Guaranteed" => Some(Self::Guaranteed),
            "Burstable" => Some(Self::Burstable),
            "BestEffort" => Some(Self::BestEffort),
            _ => None,
        }
    }

    /// The cgroupfs driver's directory of the class under the kubepods root (none for
    /// Guaranteed: its pods are right under it).
    fn cgroupfs_dir(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }

    /// The systemd driver's name of the class (`kubepods-burstable.slice`).
    fn systemd_name(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }
}

/// How pods are found.
#[derive(Clone, Debug, Default)]
pub struct PlacesOptions {
    /// The kubepods root, a path from the cgroup v2 root; `None`: `/kubepods.slice` (systemd
    /// driver) or `/kubepods` (cgroupfs driver), whichever is there.
    pub kubepods: Option<String>,
    /// The kubepods directories of cgroup v1 hierarchies (`/sys/fs/cgroup/pids/kubepods`), for
    /// a hybrid host whose kubelet made only v1 cgroups; `None`: `kubepods` or
    /// `kubepods.slice` in each v1 hierarchy mounted.
    pub v1_kubepods: Option<Vec<PathBuf>>,
}

/// Finds pods' places on this node.
#[derive(Clone, Debug)]
pub struct PodPlaces {
    cgroups: CgroupFs,
    kubepods: Option<String>,
    v1_kubepods: V1Kubepods,
    /// The host's network namespace (the agent runs on the host's network).
    host_netns: NsId,
    /// Where runtimes bind-mount pods' namespaces (containerd, CRI-O): a stable name for one.
    netns_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
enum V1Kubepods {
    Given(Vec<PathBuf>),
    /// Every v1 hierarchy's mount, where kubepods may appear.
    Mounts(Vec<PathBuf>),
}

/// A namespace's identity: its nsfs device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = fs::metadata(path)?;
        Ok(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

impl PodPlaces {
    /// The cgroup v2 hierarchy as rein finds it, and the v1 hierarchies of a hybrid host.
    pub fn new(options: PlacesOptions) -> rein::Result<Self> {
        let cgroups = CgroupFs::discover()?;
        let v1_kubepods = match options.v1_kubepods {
            Some(dirs) => V1Kubepods::Given(dirs),
            None => V1Kubepods::Mounts(cgroupfs::v1_mounts()?),
        };
        let host_netns =
            NsId::of(Path::new("/proc/self/ns/net")).map_err(|source| rein::Error::Io {
                context: "cannot read the agent's network namespace".into(),
                source,
            })?;
        let mut netns_dirs: Vec<PathBuf> = Vec::new();
        // /var/run is /run on most hosts: the same directory is read once.
        for dir in ["/run/netns", "/var/run/netns"] {
            let dir = fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir));
            if !netns_dirs.contains(&dir) {
                netns_dirs.push(dir);
            }
        }
        Ok(Self {
            cgroups,
            kubepods: options.kubepods,
            v1_kubepods,
            host_netns,
            netns_dirs,
        })
    }

    /// The cgroup v2 hierarchy.
    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    /// The kubepods root in the v2 hierarchy, if there is one (yet).
    pub fn kubepods(&self) -> Option<Cgroup> {
        match &self.kubepods {
            Some(root) => self.cgroups.at(root).ok().filter(Cgroup::exists),
            None => ["/kubepods.slice", "/kubepods"]
                .into_iter()
                .filter_map(|root| self.cgroups.at(root).ok())
                .find(Cgroup::exists),
        }
    }

    /// Where the pod's limit goes: its network namespace, or for a pod on the host's network
    /// its cgroup; `None` while it is not there (yet). The same pod resolves to the same place
    /// on every call while nothing changes.
    pub fn find(
        &self,
        pod: &ObjectRef,
        qos: Option<QosClass>,
        host_network: bool,
    ) -> Result<Option<PodPlace>, Box<Problem>> {
        let problem = |reason, message| {
            Box::new(Problem {
                object: pod.clone(),
                reason,
                message,
            })
        };
        // The UID becomes a path component: nothing in it may lead elsewhere.
        if pod.uid.is_empty()
            || !pod
                .uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(problem(
                INVALID_UID,
                format!("pod UID {:?} is not a UID", pod.uid),
            ));
        }
        let relative = pod_cgroup_candidates(&pod.uid, qos);
        let v2 = self.kubepods().and_then(|root| {
            relative
                .iter()
                .map(|relative| root.child(relative))
                .find(Cgroup::exists)
        });
        if host_network {
            return match v2 {
                Some(cgroup) => Ok(Some(PodPlace::Cgroup(cgroup.relative().to_owned()))),
                None if !self.v1_pod_dirs(&relative).is_empty() => Err(problem(
                    NO_CGROUP_V2,
                    format!(
                        "the pod is on the host's network and has cgroups in cgroup v1 only \
                         (kubelet's cgroupfs driver on a hybrid host): rein limits a cgroup \
                         in v2 ({}), so nothing limits this pod",
                        self.cgroups.mount().display()
                    ),
                )),
                None => Ok(None),
            };
        }
        let mut pids = v2
            .map(|cgroup| cgroup.processes_recursive())
            .unwrap_or_default();
        if pids.is_empty() {
            pids = self
                .v1_pod_dirs(&relative)
                .iter()
                .flat_map(|dir| processes_recursive(dir))
                .collect();
        }
        let Some(pid) = oldest(&pids) else {
            return Ok(None);
        };
        let process_netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let netns = match NsId::of(&process_netns) {
            Ok(netns) => netns,
            // It exited since: the next call sees the pod as it is then.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(problem(
                    PLACE_UNREADABLE,
                    format!("cannot read the network namespace of pid {pid}: {error}"),
                ));
            }
        };
        // A pod off the host's network whose oldest process is on it is being set up.
        if netns == self.host_netns {
            return Ok(None);
        }
        Ok(Some(PodPlace::Netns(
            self.bind_mount_of(netns).unwrap_or(process_netns),
        )))
    }

    /// The pod's directories in the v1 hierarchies that have them.
    fn v1_pod_dirs(&self, relative: &[String]) -> Vec<PathBuf> {
        let roots: Vec<PathBuf> = match &self.v1_kubepods {
            V1Kubepods::Given(dirs) => dirs.clone(),
            V1Kubepods::Mounts(mounts) => mounts
                .iter()
                .flat_map(|mount| [mount.join("kubepods.slice"), mount.join("kubepods")])
                .collect(),
        };
        roots
            .iter()
            .filter_map(|root| {
                relative
                    .iter()
                    .map(|relative| root.join(relative))
                    .find(|dir| dir.is_dir())
            })
            .collect()
    }

    /// A runtime's bind mount of the namespace (`/run/netns/cni-...`), the first by name: a
    /// path that stays while the pod lives, whichever of its processes come and go.
    fn bind_mount_of(&self, netns: NsId) -> Option<PathBuf> {
        self.netns_dirs.iter().find_map(|dir| {
            let mut entries: Vec<PathBuf> = fs::read_dir(dir)
                .ok()?
                .flatten()
                .map(|entry| entry.path())
                .collect();
            entries.sort();
            entries
                .into_iter()
                .find(|path| NsId::of(path).is_ok_and(|id| id == netns))
        })
    }
}

/// The pod's cgroup paths from the kubepods root, its class's first: both drivers' names, in
/// each class's place (the class may be unknown, or have changed with a resize).
fn pod_cgroup_candidates(uid: &str, qos: Option<QosClass>) -> Vec<String> {
    let systemd_uid = uid.replace('-', "_");
    let first = qos.into_iter();
    let rest = QosClass::ALL
        .into_iter()
        .filter(|class| Some(*class) != qos);
    let mut candidates = Vec::new();
    for class in first.chain(rest) {
        candidates.push(match class.cgroupfs_dir() {
            None => format!("pod{uid}"),
            Some(dir) => format!("{dir}/pod{uid}"),
        });
        candidates.push(match class.systemd_name() {
            None => format!("kubepods-pod{systemd_uid}.slice"),
            Some(name) => {
                format!("kubepods-{name}.slice/kubepods-{name}-pod{systemd_uid}.slice")
            }
        });
    }
    candidates
}

/// Processes in the cgroup directory `dir` (v1 or v2) and its descendants.
fn processes_recursive(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(processes_recursive(&entry.path()));
            }
        }
    }
    pids
}

/// The process that started first (the pod's sandbox, the pause container's), the lowest pid
/// among those that started in the same tick: the same one on every call while it lives.
fn oldest(pids: &[u32]) -> Option<u32> {
    pids.iter()
        .filter_map(|&pid| Some((start_time(pid)?, pid)))
        .min()
        .map(|(_, pid)| pid)
}

/// When the process started, in clock ticks after boot (/proc/PID/stat's 22nd field).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}
