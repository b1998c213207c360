//! rein's kernel side as userspace sees it: the embedded programs, their pinned links at the
//! cgroup v2 root, and the pinned maps of rules and counters.
//!
//! Pins (under the instance's bpffs directory) hold everything, so limits outlive the command
//! that set them, and a reload swaps programs under the same links and maps without a gap.
use std::{
    borrow::{Borrow, BorrowMut},
    fs, io,
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, LinkOrder, ProgramError, SchedClassifier,
        SockOps, TcAttachType, links::FdLink, tc::TcAttachOptions,
    },
};
use rein_common::{
    COUNTERS_MAP, Counters, Direction, EGRESS_PROGRAM, FLOWS_MAP, INGRESS_FLOWS_MAP,
    INGRESS_PROGRAM, MAX_RULES, QUEUES_MAP, RULE_COUNTS_MAP, RULES_MAP, Rule, RuleKey,
    SOCK_OPS_PROGRAM,
};

use crate::{
    cgroup::Cgroup,
    error::{Error, IoContext, Result, bpf_error, map_errno},
    instance::Instance,
    queue, sys,
};

/// The object file rein-ebpf builds, embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rein"));

pub const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

/// The embedded object, for loading without pins (doctor, tests).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// The object of the interface programs (`rein net`), built from rein-ebpf's `rein-net` binary.
static NET_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rein-net"));

pub fn net_object() -> &'static [u8] {
    NET_OBJECT
}

/// The kernel hooks rein attaches to, each with its own program and pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// cgroup_skb egress: the bucket, and counting TCP flows.
    Egress,
    /// cgroup_skb ingress: the bucket.
    Ingress,
    /// sock_ops: pacing TCP flows at their share.
    SockOps,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Egress, Hook::Ingress, Hook::SockOps];

    pub fn program_name(self) -> &'static str {
        match self {
            Hook::Egress => EGRESS_PROGRAM,
            Hook::Ingress => INGRESS_PROGRAM,
            Hook::SockOps => SOCK_OPS_PROGRAM,
        }
    }

    /// Name of the link's pin in the instance's bpffs directory.
    pub fn link_name(self) -> &'static str {
        match self {
            Hook::Egress => "link-egress",
            Hook::Ingress => "link-ingress",
            Hook::SockOps => "link-sock-ops",
        }
    }
}

/// Loads (verifies) every program of `ebpf` into the kernel.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for hook in Hook::ALL {
        let name = hook.program_name();
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Load(format!("program {name} is missing from the object")))?;
        let loaded = match hook {
            Hook::Egress | Hook::Ingress => {
                let program: &mut CgroupSkb = program
                    .try_into()
                    .map_err(|e| bpf_error(format!("program {name}"))(&e))?;
                program.load()
            }
            Hook::SockOps => {
                let program: &mut SockOps = program
                    .try_into()
                    .map_err(|e| bpf_error(format!("program {name}"))(&e))?;
                program.load()
            }
        };
        loaded.map_err(|e| Error::Load(format!("{name}: {}", verifier_message(&e))))?;
    }
    Ok(())
}

/// Handles on the pinned maps of an installed datapath.
pub struct Datapath {
    rules: HashMap<MapData, RuleKey, Rule>,
    counters: PerCpuHashMap<MapData, RuleKey, Counters>,
    rule_counts: Array<MapData, u32>,
}

/// Writes how many rules each direction has into the array the programs check before anything
/// else. Counted from the rule map itself, so a count left wrong by a crash is put right by
/// the next command that opens the datapath.
pub fn sync_rule_counts<R: Borrow<MapData>, C: BorrowMut<MapData>>(
    rules: &HashMap<R, RuleKey, Rule>,
    rule_counts: &mut Array<C, u32>,
) -> Result<()> {
    let mut counts = [0u32; 2];
    for key in rules.keys() {
        let key = key.map_err(|e| bpf_error("cannot list the rules")(&e))?;
        if let Some(count) = counts.get_mut(key.direction as usize) {
            *count += 1;
        }
    }
    for (direction, count) in DIRECTIONS.iter().zip(counts) {
        rule_counts
            .set(*direction as u32, count, 0)
            .map_err(|e| bpf_error("cannot write the rule counts")(&e))?;
    }
    Ok(())
}

impl Datapath {
    /// Whether the programs are attached (their links pinned).
    pub fn is_installed(instance: &Instance) -> bool {
        Hook::ALL
            .iter()
            .all(|hook| instance.link_pin(hook.link_name()).exists())
    }

    /// Opens the pinned maps of an installed datapath.
    pub fn open(instance: &Instance) -> Result<Self> {
        let maps = instance.maps_dir();
        let open = |name: &str| {
            MapData::from_pin(maps.join(name))
                .map_err(|e| bpf_error(format!("cannot open map {name}"))(&e))
        };
        let rules = HashMap::try_from(Map::HashMap(open(RULES_MAP)?))
            .map_err(|e| bpf_error("rule map")(&e))?;
        let counters = PerCpuHashMap::try_from(Map::PerCpuHashMap(open(COUNTERS_MAP)?))
            .map_err(|e| bpf_error("counter map")(&e))?;
        let rule_counts = Array::try_from(Map::Array(open(RULE_COUNTS_MAP)?))
            .map_err(|e| bpf_error("rule count map")(&e))?;
        let mut datapath = Self {
            rules,
            counters,
            rule_counts,
        };
        datapath.sync_rule_counts()?;
        Ok(datapath)
    }

    /// Loads the programs, attaches them at `root` and pins links and maps. On failure nothing
    /// stays behind.
    pub fn install(instance: &Instance, root: &Cgroup) -> Result<Self> {
        let result = Self::try_install(instance, root);
        if result.is_err() {
            Self::uninstall(instance);
        }
        result
    }

    fn try_install(instance: &Instance, root: &Cgroup) -> Result<Self> {
        let mut ebpf = load_object(instance)?;
        let cgroup = fs::File::open(root.path())
            .context(|| format!("cannot open cgroup {}", root.path().display()))?;
        load_programs(&mut ebpf)?;
        for hook in Hook::ALL {
            let link = attach(&mut ebpf, hook, &cgroup)?;
            // A pin left by an install that was killed halfway holds the only reference to its
            // link: removing it detaches that stale program. The maps are kept.
            let pin = instance.link_pin(hook.link_name());
            remove_if_exists(&pin);
            link.pin(&pin)
                .map_err(|e| bpf_error("cannot pin the link")(&e))?;
        }
        drop(ebpf);
        Self::open(instance)
    }

    /// Replaces the attached programs with the ones embedded in this build, in place: the links
    /// stay, the maps (rules and bucket state) stay, and no packet meets a missing program.
    pub fn reload(instance: &Instance) -> Result<Self> {
        if !Self::is_installed(instance) {
            return Err(Error::NotInstalled);
        }
        let mut ebpf = load_object(instance)?;
        load_programs(&mut ebpf)?;
        for hook in Hook::ALL {
            let name = hook.program_name();
            let fd = ebpf
                .program(name)
                .ok_or_else(|| Error::Load(format!("program {name} is missing from the object")))?
                .fd()
                .map_err(|e| bpf_error("loaded program has no fd")(&e))?;
            let pin = instance.link_pin(hook.link_name());
            let link = sys::bpf_obj_get(&pin)
                .context(|| format!("cannot open the pinned link {}", pin.display()))?;
            sys::bpf_link_update(link, fd)
                .context(|| format!("cannot swap the program of {}", pin.display()))?;
        }
        drop(ebpf);
        Self::open(instance)
    }

    /// Detaches the cgroup programs and removes their pins; the interface programs' pins stay.
    /// Missing pieces are fine.
    pub fn uninstall(instance: &Instance) {
        for hook in Hook::ALL {
            // Removing the last reference to a pinned link detaches its program.
            remove_if_exists(&instance.link_pin(hook.link_name()));
        }
        queue::detach(instance);
        for name in [
            RULES_MAP,
            COUNTERS_MAP,
            FLOWS_MAP,
            RULE_COUNTS_MAP,
            INGRESS_FLOWS_MAP,
            QUEUES_MAP,
        ] {
            remove_if_exists(&instance.maps_dir().join(name));
        }
        tidy_pin_dirs(instance);
    }

    /// Removes every pin of the instance, of every layout and of both datapaths.
    pub fn remove_all_pins(instance: &Instance) {
        fn remove_tree(dir: &Path) {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        remove_tree(&path);
                    } else {
                        remove_if_exists(&path);
                    }
                }
            }
            let _ = fs::remove_dir(dir);
        }
        remove_tree(&instance.pin_dir());
    }

    pub fn rule(&self, key: RuleKey) -> Option<Rule> {
        self.rules.get(&key, 0).ok()
    }

    /// Writes a rule, creating its counters if it has none.
    pub fn put_rule(&mut self, key: RuleKey, rule: Rule) -> Result<()> {
        if self.counters.get(&key, 0).is_err() {
            let zero = PerCpuValues::try_from(vec![Counters::default(); possible_cpus()?])
                .map_err(|e| bpf_error("counters")(&e))?;
            self.counters
                .insert(key, zero, 0)
                .map_err(|e| map_full_or(e, "cannot create counters"))?;
        }
        self.rules
            .insert(key, rule, 0)
            .map_err(|e| map_full_or(e, "cannot write the rule"))?;
        self.sync_rule_counts()
    }

    /// Removes a rule and its counters; a rule that is not there is fine.
    pub fn remove_rule(&mut self, key: RuleKey) {
        let _ = self.rules.remove(&key);
        let _ = self.counters.remove(&key);
        // A count left too high only costs the walk; the next command puts it right.
        let _ = self.sync_rule_counts();
    }

    fn sync_rule_counts(&mut self) -> Result<()> {
        sync_rule_counts(&self.rules, &mut self.rule_counts)
    }

    /// The rule's counters summed over all CPUs.
    pub fn counters(&self, key: RuleKey) -> Counters {
        self.counters
            .get(&key, 0)
            .map(|values| {
                values
                    .iter()
                    .fold(Counters::default(), |sum, c| sum.plus(*c))
            })
            .unwrap_or_default()
    }
}

/// Removes the instance's pin directories that nothing is pinned in any more: the maps
/// directory of this layout, leftovers of older layouts that hold nothing, and the instance's.
pub(crate) fn tidy_pin_dirs(instance: &Instance) {
    let current = instance.maps_dir();
    if let Ok(entries) = fs::read_dir(instance.pin_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            let old_layout = path != current
                && entry.file_name().to_string_lossy().starts_with("maps-v")
                && path.is_dir();
            if old_layout {
                // Programs of this build never use another layout's maps.
                if let Ok(maps) = fs::read_dir(&path) {
                    for map in maps.flatten() {
                        remove_if_exists(&map.path());
                    }
                }
                let _ = fs::remove_dir(&path);
            }
        }
    }
    let _ = fs::remove_dir(current);
    let _ = fs::remove_dir(instance.pin_dir());
}

/// Loads the embedded object with its maps bound to the instance's pins: existing pins are
/// reused (that is how rules survive a reload), missing ones are created and pinned.
pub(crate) fn load_object(instance: &Instance) -> Result<Ebpf> {
    let maps_dir = instance.maps_dir();
    fs::create_dir_all(&maps_dir)
        .context(|| format!("cannot create {} on bpffs", maps_dir.display()))?;
    EbpfLoader::new()
        .map_pin_path(RULES_MAP, maps_dir.join(RULES_MAP))
        .map_pin_path(COUNTERS_MAP, maps_dir.join(COUNTERS_MAP))
        .map_pin_path(FLOWS_MAP, maps_dir.join(FLOWS_MAP))
        .map_pin_path(RULE_COUNTS_MAP, maps_dir.join(RULE_COUNTS_MAP))
        .map_pin_path(INGRESS_FLOWS_MAP, maps_dir.join(INGRESS_FLOWS_MAP))
        .map_pin_path(QUEUES_MAP, maps_dir.join(QUEUES_MAP))
        .load(OBJECT)
        .map_err(|e| Error::Load(e.to_string()))
}

/// Attaches a loaded tc program to `device` (of the calling thread's network namespace) with a
/// tcx link, after the programs already there, and returns the link.
pub(crate) fn attach_tcx(
    program: &mut SchedClassifier,
    device: &str,
    attach_type: TcAttachType,
) -> Result<FdLink> {
    let id = program
        .attach_with_options(
            device,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| bpf_error(format!("cannot attach to {device}"))(&e))?;
    let link = program
        .take_link(id)
        .map_err(|e| bpf_error("cannot take the link")(&e))?;
    FdLink::try_from(link).map_err(|e| bpf_error("tcx link")(&e))
}

/// Attaches a loaded program at the cgroup v2 root and returns its link.
fn attach(ebpf: &mut Ebpf, hook: Hook, root: &fs::File) -> Result<FdLink> {
    let name = hook.program_name();
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} is missing from the object")))?;
    let attach_error = |e: &ProgramError| bpf_error("cannot attach to the cgroup v2 root")(e);
    let take_error = |e: &ProgramError| bpf_error("cannot take the link")(e);
    // A cgroup bpf_link always coexists with other programs (the kernel attaches links in multi
    // mode); the link API refuses the legacy ALLOW_MULTI flag, hence `Single`.
    let link = match hook {
        Hook::Egress | Hook::Ingress => {
            let program: &mut CgroupSkb = program
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"))(&e))?;
            let attach_type = match hook {
                Hook::Egress => CgroupSkbAttachType::Egress,
                _ => CgroupSkbAttachType::Ingress,
            };
            let id = program
                .attach(root, attach_type, CgroupAttachMode::Single)
                .map_err(|e| attach_error(&e))?;
            FdLink::try_from(program.take_link(id).map_err(|e| take_error(&e))?)
        }
        Hook::SockOps => {
            let program: &mut SockOps = program
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"))(&e))?;
            let id = program
                .attach(root, CgroupAttachMode::Single)
                .map_err(|e| attach_error(&e))?;
            FdLink::try_from(program.take_link(id).map_err(|e| take_error(&e))?)
        }
    };
    link.map_err(|e| bpf_error("cannot pin the link")(&e))
}

pub(crate) fn verifier_message(error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{io_error}\n{verifier_log}")
        }
        other => other.to_string(),
    }
}

fn map_full_or(error: MapError, context: &str) -> Error {
    if map_errno(&error) == Some(libc::E2BIG) {
        return Error::TooManyRules(MAX_RULES);
    }
    bpf_error(context)(&error)
}

pub(crate) fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context(|| "cannot count the CPUs".into())
}

pub(crate) fn remove_if_exists(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
    }
}
