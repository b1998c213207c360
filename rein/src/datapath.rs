//! rein's kernel side as userspace sees it: the embedded programs, their pinned links at the
//! cgroup v2 root, and the pinned maps of rules and counters.
//!
//! Pins (under the instance's bpffs directory) hold everything, so limits outlive the command
//! that set them, and a reload swaps programs under the same links and maps without a gap.
use std::{fs, io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, links::FdLink},
};
use rein_common::{
    COUNTERS_MAP, Counters, Direction, EGRESS_PROGRAM, INGRESS_PROGRAM, MAX_RULES, RULES_MAP, Rule,
    RuleKey,
};

use crate::{
    cgroup::Cgroup,
    error::{Error, IoContext, Result, bpf_error},
    instance::Instance,
    sys,
};

/// The object file rein-ebpf builds, embedded by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rein"));

pub const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

/// The embedded object, for loading without pins (doctor, tests).
pub fn object() -> &'static [u8] {
    OBJECT
}

fn program_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Egress => EGRESS_PROGRAM,
        Direction::Ingress => INGRESS_PROGRAM,
    }
}

fn attach_type(direction: Direction) -> CgroupSkbAttachType {
    match direction {
        Direction::Egress => CgroupSkbAttachType::Egress,
        Direction::Ingress => CgroupSkbAttachType::Ingress,
    }
}

/// Handles on the pinned maps of an installed datapath.
pub struct Datapath {
    rules: HashMap<MapData, RuleKey, Rule>,
    counters: PerCpuHashMap<MapData, RuleKey, Counters>,
}

impl Datapath {
    /// Whether the programs are attached (their links pinned).
    pub fn is_installed(instance: &Instance) -> bool {
        DIRECTIONS
            .iter()
            .all(|&direction| instance.link_pin(direction).exists())
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
        Ok(Self { rules, counters })
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
        for direction in DIRECTIONS {
            let program = program_mut(&mut ebpf, direction)?;
            program
                .load()
                .map_err(|e| Error::Load(verifier_message(&e)))?;
            // A cgroup bpf_link always coexists with other programs (the kernel attaches links in
            // multi mode); the link API refuses the legacy ALLOW_MULTI flag, hence `Single`.
            let link_id = program
                .attach(&cgroup, attach_type(direction), CgroupAttachMode::Single)
                .map_err(|e| bpf_error("cannot attach to the cgroup v2 root")(&e))?;
            let link = program
                .take_link(link_id)
                .map_err(|e| bpf_error("cannot take the link")(&e))?;
            let link = FdLink::try_from(link).map_err(|e| bpf_error("cannot pin the link")(&e))?;
            // A pin left by an install that was killed halfway holds the only reference to its
            // link: removing it detaches that stale program. The maps are kept.
            remove_if_exists(&instance.link_pin(direction));
            link.pin(instance.link_pin(direction))
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
        for direction in DIRECTIONS {
            let program = program_mut(&mut ebpf, direction)?;
            program
                .load()
                .map_err(|e| Error::Load(verifier_message(&e)))?;
            let pin = instance.link_pin(direction);
            let link = sys::bpf_obj_get(&pin)
                .context(|| format!("cannot open the pinned link {}", pin.display()))?;
            let fd = program
                .fd()
                .map_err(|e| bpf_error("loaded program has no fd")(&e))?;
            sys::bpf_link_update(link, fd)
                .context(|| format!("cannot swap the program of {}", pin.display()))?;
        }
        drop(ebpf);
        Self::open(instance)
    }

    /// Detaches the programs and removes every pin; missing pieces are fine.
    pub fn uninstall(instance: &Instance) {
        for direction in DIRECTIONS {
            // Removing the last reference to a pinned link detaches its program.
            remove_if_exists(&instance.link_pin(direction));
        }
        let pin_dir = instance.pin_dir();
        if let Ok(entries) = fs::read_dir(&pin_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    if let Ok(maps) = fs::read_dir(&path) {
                        for map in maps.flatten() {
                            remove_if_exists(&map.path());
                        }
                    }
                    let _ = fs::remove_dir(&path);
                } else {
                    remove_if_exists(&path);
                }
            }
        }
        let _ = fs::remove_dir(&pin_dir);
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
            .map_err(|e| map_full_or(e, "cannot write the rule"))
    }

    /// Removes a rule and its counters; a rule that is not there is fine.
    pub fn remove_rule(&mut self, key: RuleKey) {
        let _ = self.rules.remove(&key);
        let _ = self.counters.remove(&key);
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

/// Loads the embedded object with its maps bound to the instance's pins: existing pins are
/// reused (that is how rules survive a reload), missing ones are created and pinned.
fn load_object(instance: &Instance) -> Result<Ebpf> {
    let maps_dir = instance.maps_dir();
    fs::create_dir_all(&maps_dir)
        .context(|| format!("cannot create {} on bpffs", maps_dir.display()))?;
    EbpfLoader::new()
        .map_pin_path(RULES_MAP, maps_dir.join(RULES_MAP))
        .map_pin_path(COUNTERS_MAP, maps_dir.join(COUNTERS_MAP))
        .load(OBJECT)
        .map_err(|e| Error::Load(e.to_string()))
}

fn program_mut(ebpf: &mut Ebpf, direction: Direction) -> Result<&mut CgroupSkb> {
    let name = program_name(direction);
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} is missing from the object")))?
        .try_into()
        .map_err(|e| bpf_error(format!("program {name}"))(&e))
}

fn verifier_message(error: &aya::programs::ProgramError) -> String {
    match error {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{io_error}\n{verifier_log}")
        }
        other => other.to_string(),
    }
}

fn map_full_or(error: MapError, context: &str) -> Error {
    match &error {
        MapError::SyscallError(syscall) if syscall.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Error::TooManyRules(MAX_RULES)
        }
        _ => bpf_error(context)(&error),
    }
}

fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context(|| "cannot count the CPUs".into())
}

fn remove_if_exists(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
    }
}
