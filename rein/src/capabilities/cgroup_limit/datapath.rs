//! The cgroup limits' kernel side as userspace sees it: the programs, their pinned links at
//! the cgroup v2 root, and the pinned maps of rules and counters.
//!
//! Pins (under the instance's bpffs directory) hold everything, so limits outlive the command
//! that set them, and a reload swaps programs under the same links and maps without a gap.
use std::{
    borrow::{Borrow, BorrowMut},
    fs,
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, MapData, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SockOps, links::FdLink,
    },
};
use rein_common::{
    COUNTERS_MAP, Counters, Direction, EGRESS_PROGRAM, FLOWS_MAP, GENERATION_MAP,
    INGRESS_FLOWS_MAP, INGRESS_PROGRAM, LEVELS_SCRATCH_MAP, MAX_RULES, QUEUES_MAP, RULE_COUNTS_MAP,
    RULE_LEVELS_MAP, RULES_MAP, Rule, RuleKey, SOCK_OPS_PROGRAM, SUBNETS_MAP, SubnetKey,
    abi::trace::{TRACE_BUDGET_MAP, TRACE_EVENTS_MAP, TRACE_MAP},
};

use crate::{
    capabilities::PreparedReload,
    error::{Error, IoContext, Result, bpf_error, map_errno},
    instance::Instance,
    platform::{
        bpf::{self, load_error, program_mut, remove_if_exists},
        cgroupfs::Cgroup,
    },
};

pub const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

/// Every map of the cgroup object, pinned by these names (the ingress queue's program shares
/// the object and its flow storage).
const MAPS: [&str; 13] = [
    RULES_MAP,
    COUNTERS_MAP,
    FLOWS_MAP,
    RULE_COUNTS_MAP,
    INGRESS_FLOWS_MAP,
    QUEUES_MAP,
    RULE_LEVELS_MAP,
    GENERATION_MAP,
    LEVELS_SCRATCH_MAP,
    TRACE_MAP,
    TRACE_EVENTS_MAP,
    TRACE_BUDGET_MAP,
    SUBNETS_MAP,
];

/// Loads the cgroup object with its maps bound to the instance's pins (created if missing).
pub(crate) fn load_object(instance: &Instance) -> Result<Ebpf> {
    bpf::load_pinned(instance, bpf::cgroup_object(), &MAPS, &[])
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
        let loaded = match hook {
            Hook::Egress | Hook::Ingress => program_mut::<CgroupSkb>(ebpf, name)?.load(),
            Hook::SockOps => program_mut::<SockOps>(ebpf, name)?.load(),
        };
        loaded.map_err(|e| load_error(name, &e))?;
    }
    Ok(())
}

/// Handles on the pinned maps of an installed datapath.
pub struct Datapath {
    rules: HashMap<MapData, RuleKey, Rule>,
    counters: PerCpuHashMap<MapData, RuleKey, Counters>,
    rule_counts: Array<MapData, u32>,
    generation: Array<MapData, u64>,
    instance: Instance,
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

/// Moves the rules' generation on, after a change to the rule map: each socket's programs then
/// look again at which of its cgroup levels have rules (rather than at every level for every
/// packet, they keep that in the socket's storage).
pub fn bump_generation<C: BorrowMut<MapData>>(generation: &mut Array<C, u64>) -> Result<()> {
    let now = generation
        .get(&0, 0)
        .map_err(|e| bpf_error("cannot read the rules' generation")(&e))?;
    generation
        .set(0, now.wrapping_add(1), 0)
        .map_err(|e| bpf_error("cannot write the rules' generation")(&e))
}

impl Datapath {
    /// Whether the programs are attached (their links pinned).
    pub fn is_installed(instance: &Instance) -> bool {
        Hook::ALL
            .iter()
            .all(|hook| instance.link_pin(hook.link_name()).exists())
    }

    /// Opens the pinned maps of an installed datapath. Nothing is written: a reader without the
    /// instance's lock (metrics, `rein top`) must not put back a count a command has just
    /// changed; the counts are put right once a command, by garbage collection.
    pub fn open(instance: &Instance) -> Result<Self> {
        let open = |name: &str| bpf::open_pinned_map(instance, name);
        let rules = HashMap::try_from(open(RULES_MAP)?).map_err(|e| bpf_error("rule map")(&e))?;
        let counters = PerCpuHashMap::try_from(open(COUNTERS_MAP)?)
            .map_err(|e| bpf_error("counter map")(&e))?;
        let rule_counts =
            Array::try_from(open(RULE_COUNTS_MAP)?).map_err(|e| bpf_error("rule count map")(&e))?;
        let generation =
            Array::try_from(open(GENERATION_MAP)?).map_err(|e| bpf_error("generation map")(&e))?;
        Ok(Self {
            rules,
            counters,
            rule_counts,
            generation,
            instance: instance.clone(),
        })
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
        // The maps may have been kept from an install before, and rules changed since by a
        // build that knows no generation.
        let mut datapath = Self::open(instance)?;
        datapath.bump_generation()?;
        Ok(datapath)
    }

    /// Loads and verifies this build's programs for the attached links (see [`Reload`]).
    pub fn prepare_reload(instance: &Instance) -> Result<Reload> {
        if !Self::is_installed(instance) {
            return Err(Error::NotInstalled);
        }
        let mut ebpf = load_object(instance)?;
        load_programs(&mut ebpf)?;
        Ok(Reload {
            instance: instance.clone(),
            ebpf,
        })
    }

    /// Detaches the cgroup programs and removes their pins; the interface programs' pins stay.
    /// Missing pieces are fine.
    pub fn uninstall(instance: &Instance) {
        for hook in Hook::ALL {
            // Removing the last reference to a pinned link detaches its program.
            remove_if_exists(&instance.link_pin(hook.link_name()));
        }
        for name in MAPS {
            remove_if_exists(&instance.maps_dir().join(name));
        }
        bpf::tidy_pin_dirs(instance);
    }

    /// The keys of every rule in the map.
    pub fn rule_keys(&self) -> Vec<RuleKey> {
        self.rules.keys().flatten().collect()
    }

    pub fn rule(&self, key: RuleKey) -> Option<Rule> {
        self.rules.get(&key, 0).ok()
    }

    /// Writes a rule, creating its counters if it has none.
    pub fn put_rule(&mut self, key: RuleKey, rule: Rule) -> Result<()> {
        if self.counters.get(&key, 0).is_err() {
            let zero = PerCpuValues::try_from(vec![Counters::default(); bpf::possible_cpus()?])
                .map_err(|e| bpf_error("counters")(&e))?;
            self.counters
                .insert(key, zero, 0)
                .map_err(|e| map_full_or(e, "cannot create counters"))?;
        }
        let new = self.rules.get(&key, 0).is_err();
        self.rules
            .insert(key, rule, 0)
            .map_err(|e| map_full_or(e, "cannot write the rule"))?;
        // Only a new rule changes the count and which levels have one; a changed rate is read
        // per packet.
        if new {
            self.add_to_count(key, 1)?;
            self.bump_generation()?;
        }
        Ok(())
    }

    /// Removes a rule and its counters; a rule that is not there is fine.
    pub fn remove_rule(&mut self, key: RuleKey) {
        let removed = self.rules.remove(&key).is_ok();
        let _ = self.counters.remove(&key);
        // A count left too high only costs the walk; the next command puts it right. A
        // generation left behind leaves sockets charging a rule that is gone, which they skip.
        if removed {
            let _ = self.add_to_count(key, -1);
            let _ = self.bump_generation();
        }
    }

    /// Counts the rules of each direction from the map itself (see [`sync_rule_counts`]).
    pub fn sync_rule_counts(&mut self) -> Result<()> {
        sync_rule_counts(&self.rules, &mut self.rule_counts)
    }

    /// Moves the count of `key`'s direction by `by`: a count from the whole map on every
    /// change made applying 10,000 rules take 100 s, listing the map once per rule.
    fn add_to_count(&mut self, key: RuleKey, by: i64) -> Result<()> {
        let count = self
            .rule_counts
            .get(&key.direction, 0)
            .map_err(|e| bpf_error("cannot read the rule counts")(&e))?;
        let count = u32::try_from((i64::from(count) + by).max(0)).unwrap_or(u32::MAX);
        self.rule_counts
            .set(key.direction, count, 0)
            .map_err(|e| bpf_error("cannot write the rule counts")(&e))
    }

    fn bump_generation(&mut self) -> Result<()> {
        bump_generation(&mut self.generation)
    }

    /// The subnets of `scope`'s rules, as (key data, prefix length).
    pub fn subnets(&self, scope: u64) -> Result<Vec<(SubnetKey, u32)>> {
        let scope = scope.to_be_bytes();
        Ok(self
            .subnet_map()?
            .keys()
            .flatten()
            .filter(|key| key.data().scope == scope)
            .map(|key| (key.data(), key.prefix_len()))
            .collect())
    }

    /// Every subnet in the map, as (key data, prefix length).
    pub fn subnets_of_all(&self) -> Result<Vec<(SubnetKey, u32)>> {
        Ok(self
            .subnet_map()?
            .keys()
            .flatten()
            .map(|key| (key.data(), key.prefix_len()))
            .collect())
    }

    /// Adds a subnet of `scope`'s rules.
    pub fn put_subnet(&mut self, key: SubnetKey, prefix_len: u32) -> Result<()> {
        self.subnet_map()?
            .insert(&Key::new(prefix_len, key), 1, 0)
            .map_err(|e| map_full_or(e, "cannot write a subnet"))
    }

    /// Removes a subnet; one that is not there is fine.
    pub fn remove_subnet(&mut self, key: SubnetKey, prefix_len: u32) {
        if let Ok(mut map) = self.subnet_map() {
            let _ = map.remove(&Key::new(prefix_len, key));
        }
    }

    /// Opened when asked for: a datapath installed by a build without it has it only once
    /// reloaded.
    fn subnet_map(&self) -> Result<LpmTrie<MapData, SubnetKey, u32>> {
        LpmTrie::try_from(bpf::open_pinned_map(&self.instance, SUBNETS_MAP)?)
            .map_err(|e| bpf_error("subnet map")(&e))
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

/// This build's cgroup programs, loaded and verified, for the links at the cgroup v2 root.
pub struct Reload {
    instance: Instance,
    ebpf: Ebpf,
}

impl PreparedReload for Reload {
    fn swap(self: Box<Self>) -> Result<usize> {
        for hook in Hook::ALL {
            let name = hook.program_name();
            let program = self
                .ebpf
                .program(name)
                .ok_or_else(|| bpf::missing_program(name))?;
            let fd = program
                .fd()
                .map_err(|e| bpf_error("loaded program has no fd")(&e))?;
            bpf::swap_link_program(&self.instance.link_pin(hook.link_name()), fd)?;
        }
        // The levels sockets keep were found by the programs before, under rules that a build
        // without generations may have changed since.
        Datapath::open(&self.instance)?.bump_generation()?;
        Ok(Hook::ALL.len())
    }
}

/// Attaches a loaded program at the cgroup v2 root and returns its link.
fn attach(ebpf: &mut Ebpf, hook: Hook, root: &fs::File) -> Result<FdLink> {
    let name = hook.program_name();
    let attach_error = |e: &ProgramError| bpf_error("cannot attach to the cgroup v2 root")(e);
    let take_error = |e: &ProgramError| bpf_error("cannot take the link")(e);
    // A cgroup bpf_link always coexists with other programs (the kernel attaches links in multi
    // mode); the link API refuses the legacy ALLOW_MULTI flag, hence `Single`.
    let link = match hook {
        Hook::Egress | Hook::Ingress => {
            let program = program_mut::<CgroupSkb>(ebpf, name)?;
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
            let program = program_mut::<SockOps>(ebpf, name)?;
            let id = program
                .attach(root, CgroupAttachMode::Single)
                .map_err(|e| attach_error(&e))?;
            FdLink::try_from(program.take_link(id).map_err(|e| take_error(&e))?)
        }
    };
    link.map_err(|e| bpf_error("cannot pin the link")(&e))
}

fn map_full_or(error: MapError, context: &str) -> Error {
    if map_errno(&error) == Some(libc::E2BIG) {
        return Error::TooManyRules(MAX_RULES);
    }
    bpf_error(context)(&error)
}
