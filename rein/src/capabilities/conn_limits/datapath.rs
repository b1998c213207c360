//! The new-connection limits' kernel side as userspace sees it: the `connect4` and `connect6`
//! programs with their pinned links at a cgroup (the v2 root), and the pinned maps of rules,
//! counters, destination trie, lookup shapes and callers' buckets.
use std::{collections::HashSet, fs, path::PathBuf};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
    },
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
};
use rein_common::{
    abi::trace::{CONN_TRACE_BUDGET_MAP, CONN_TRACE_EVENTS_MAP, CONN_TRACE_MAP},
    conn::{
        CONN_CALLERS_MAP, CONN_CONNECT4_PROGRAM, CONN_CONNECT6_PROGRAM, CONN_COUNTERS_MAP,
        CONN_DESTINATIONS_MAP, CONN_RULES_MAP, CONN_SHAPES_MAP, CallerKey, CallerState,
        ConnCounters, ConnKey, ConnMatch, ConnRule, ConnShapes,
    },
};

use crate::{
    capabilities::PreparedReload,
    error::{Error, IoContext, Result, bpf_error, map_errno},
    instance::Instance,
    platform::bpf::{self, load_error, program_mut, remove_if_exists},
};

/// The maps of the rules and their buckets: what makes the datapath installed. One installed by
/// a rein from before `rein trace` has only these; a reload adds the trace maps.
const TABLES: [&str; 5] = [
    CONN_RULES_MAP,
    CONN_COUNTERS_MAP,
    CONN_DESTINATIONS_MAP,
    CONN_SHAPES_MAP,
    CONN_CALLERS_MAP,
];

/// Every map of the object, pinned by these names.
const MAPS: [&str; 8] = [
    CONN_RULES_MAP,
    CONN_COUNTERS_MAP,
    CONN_DESTINATIONS_MAP,
    CONN_SHAPES_MAP,
    CONN_CALLERS_MAP,
    CONN_TRACE_MAP,
    CONN_TRACE_EVENTS_MAP,
    CONN_TRACE_BUDGET_MAP,
];

/// The programs and the names of their links' pins.
const PROGRAMS: [(&str, &str); 2] = [
    (CONN_CONNECT4_PROGRAM, "link-connect4"),
    (CONN_CONNECT6_PROGRAM, "link-connect6"),
];

fn links_dir(instance: &Instance) -> PathBuf {
    instance.pin_dir().join("conn")
}

fn link_pins(instance: &Instance) -> [PathBuf; 2] {
    PROGRAMS.map(|(_, pin)| links_dir(instance).join(pin))
}

/// Handles on the pinned maps of the connect programs.
pub struct ConnDatapath {
    rules: HashMap<MapData, u32, ConnRule>,
    counters: PerCpuHashMap<MapData, u32, ConnCounters>,
    destinations: LpmTrie<MapData, ConnKey, ConnMatch>,
    shapes: Array<MapData, ConnShapes>,
    callers: HashMap<MapData, CallerKey, CallerState>,
    /// How many rules the rule table holds.
    capacity: u32,
}

impl ConnDatapath {
    /// Whether the maps are pinned.
    pub fn is_installed(instance: &Instance) -> bool {
        TABLES
            .iter()
            .all(|name| instance.maps_dir().join(name).exists())
    }

    /// Opens the maps, creating (and pinning) them first if they do not exist.
    pub fn open_or_create(instance: &Instance) -> Result<Self> {
        Self::open_or_create_sized(instance, None)
    }

    /// As [`open_or_create`](Self::open_or_create), with a callers table of `callers` entries
    /// if it is created now: for tests of a full table.
    pub fn open_or_create_with_callers(instance: &Instance, callers: u32) -> Result<Self> {
        Self::open_or_create_sized(instance, Some(callers))
    }

    fn open_or_create_sized(instance: &Instance, callers: Option<u32>) -> Result<Self> {
        if !Self::is_installed(instance) {
            let made = load_object(instance, callers).map(drop);
            if let Err(error) = made {
                Self::remove_maps(instance);
                return Err(error);
            }
        }
        Self::open(instance)
    }

    /// Opens the pinned maps; writes nothing.
    pub fn open(instance: &Instance) -> Result<Self> {
        let open = |name: &str| bpf::open_pinned_map(instance, name);
        let typed = |name: &'static str| move |e: MapError| bpf_error(name)(&e);
        let rules = open(CONN_RULES_MAP)?;
        let capacity = match &rules {
            Map::HashMap(data) => data.info().map(|info| info.max_entries()).unwrap_or(0),
            _ => 0,
        };
        Ok(Self {
            capacity,
            rules: HashMap::try_from(rules).map_err(typed(CONN_RULES_MAP))?,
            counters: PerCpuHashMap::try_from(open(CONN_COUNTERS_MAP)?)
                .map_err(typed(CONN_COUNTERS_MAP))?,
            destinations: LpmTrie::try_from(open(CONN_DESTINATIONS_MAP)?)
                .map_err(typed(CONN_DESTINATIONS_MAP))?,
            shapes: Array::try_from(open(CONN_SHAPES_MAP)?).map_err(typed(CONN_SHAPES_MAP))?,
            callers: HashMap::try_from(open(CONN_CALLERS_MAP)?).map_err(typed(CONN_CALLERS_MAP))?,
        })
    }

    /// Attaches both programs at the cgroup v2 root (see [`attach_to`](Self::attach_to)).
    pub fn attach(instance: &Instance) -> Result<()> {
        let root = crate::platform::cgroupfs::CgroupFs::discover()?.root();
        let cgroup = fs::File::open(root.path())
            .context(|| format!("cannot open cgroup {}", root.path().display()))?;
        Self::attach_to(instance, &cgroup)
    }

    /// Attaches `connect4` and `connect6` at `cgroup` and pins their links; nothing is done if
    /// both are attached already. On failure neither is left attached.
    pub fn attach_to(instance: &Instance, cgroup: &fs::File) -> Result<()> {
        if Self::is_attached(instance) {
            return Ok(());
        }
        let result = Self::try_attach(instance, cgroup);
        if result.is_err() {
            Self::detach(instance);
        }
        result
    }

    fn try_attach(instance: &Instance, cgroup: &fs::File) -> Result<()> {
        let mut ebpf = load_object(instance, None)?;
        load_programs(&mut ebpf)?;
        let dir = links_dir(instance);
        fs::create_dir_all(&dir).context(|| format!("cannot create {} on bpffs", dir.display()))?;
        for ((name, _), pin) in PROGRAMS.iter().zip(link_pins(instance)) {
            let program = program_mut::<CgroupSockAddr>(&mut ebpf, name)?;
            // A cgroup bpf_link always coexists with other programs; the link API refuses the
            // legacy ALLOW_MULTI flag, hence `Single`.
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(|e| bpf_error(format!("cannot attach {name} to the cgroup"))(&e))?;
            let link = FdLink::try_from(
                program
                    .take_link(id)
                    .map_err(|e| bpf_error("cannot take the link")(&e))?,
            )
            .map_err(|e| bpf_error("cannot pin the link")(&e))?;
            // A pin left by an attach that was killed halfway holds the only reference to its
            // link: removing it detaches that stale program.
            remove_if_exists(&pin);
            link.pin(&pin)
                .map_err(|e| bpf_error("cannot pin the link")(&e))?;
        }
        Ok(())
    }

    /// Whether both links are pinned.
    pub fn is_attached(instance: &Instance) -> bool {
        link_pins(instance).iter().all(|pin| pin.exists())
    }

    fn detach(instance: &Instance) {
        for pin in link_pins(instance) {
            // Removing the last reference to a pinned link detaches its program.
            remove_if_exists(&pin);
        }
        let _ = fs::remove_dir(links_dir(instance));
    }

    fn remove_maps(instance: &Instance) {
        for name in MAPS {
            remove_if_exists(&instance.maps_dir().join(name));
        }
        bpf::tidy_pin_dirs(instance);
    }

    /// Detaches the programs and removes every pin; missing pieces are fine.
    pub fn uninstall(instance: &Instance) {
        Self::detach(instance);
        Self::remove_maps(instance);
    }

    /// Loads and verifies this build's programs for the pinned links; None when none is
    /// attached.
    pub fn prepare_reload(instance: &Instance) -> Result<Option<Reload>> {
        let pins: Vec<(&'static str, PathBuf)> = PROGRAMS
            .iter()
            .zip(link_pins(instance))
            .filter(|(_, pin)| pin.exists())
            .map(|((name, _), pin)| (*name, pin))
            .collect();
        if pins.is_empty() {
            return Ok(None);
        }
        let mut ebpf = load_object(instance, None)?;
        load_programs(&mut ebpf)?;
        Ok(Some(Reload { ebpf, pins }))
    }

    /// Writes rule `id`: zero counters, its limit, then its trie entries (a connection that
    /// finds an entry finds its rule). On failure whatever was written is removed again.
    pub fn put(
        &mut self,
        id: u32,
        keys: &[(ConnKey, u32)],
        specificity: u32,
        rule: ConnRule,
    ) -> Result<()> {
        let result = self.try_put(id, keys, specificity, rule);
        if result.is_err() {
            self.remove(id, keys);
        }
        result
    }

    fn try_put(
        &mut self,
        id: u32,
        keys: &[(ConnKey, u32)],
        specificity: u32,
        rule: ConnRule,
    ) -> Result<()> {
        let zero = PerCpuValues::try_from(vec![ConnCounters::default(); bpf::possible_cpus()?])
            .map_err(|e| bpf_error("counters")(&e))?;
        self.counters
            .insert(id, zero, 0)
            .map_err(|e| full_or(e, "cannot create the rule's counters", self.capacity))?;
        self.rules
            .insert(id, rule, 0)
            .map_err(|e| full_or(e, "cannot write the rule", self.capacity))?;
        let found = ConnMatch {
            rule: id,
            specificity,
        };
        for (key, bits) in keys {
            self.destinations
                .insert(&Key::new(*bits, *key), found, 0)
                .map_err(|e| full_or(e, "cannot write the rule's destination", self.capacity))?;
        }
        Ok(())
    }

    /// Removes rule `id`: its trie entries first (no connection finds it any more), then its
    /// limit, counters and callers' buckets. Missing pieces are fine.
    pub fn remove(&mut self, id: u32, keys: &[(ConnKey, u32)]) {
        for (key, bits) in keys {
            // Only the rule's own entry: another rule cannot hold the same key.
            let _ = self.destinations.remove(&Key::new(*bits, *key));
        }
        let _ = self.rules.remove(&id);
        let _ = self.counters.remove(&id);
        self.remove_callers_where(|key| key.rule == id);
    }

    fn remove_callers_where(&mut self, gone: impl Fn(&CallerKey) -> bool) {
        let keys: Vec<CallerKey> = self.callers.keys().flatten().filter(|k| gone(k)).collect();
        for key in keys {
            let _ = self.callers.remove(&key);
        }
    }

    /// Rewrites the limit of rule `id`, which is in place; its bucket's state is kept.
    pub fn change_rule(&mut self, id: u32, rule: ConnRule) -> Result<()> {
        self.change_rule_with(id, rule, |state| state)
    }

    /// Rewrites the limit of rule `id`, which is in place, its bucket's state carried by
    /// `carry` (from the word it holds now).
    pub fn change_rule_with(
        &mut self,
        id: u32,
        rule: ConnRule,
        carry: impl Fn(u64) -> u64,
    ) -> Result<()> {
        let current = self.rules.get(&id, 0).map_err(|e| {
            if map_errno(&e) == Some(libc::ENOENT) || matches!(e, MapError::KeyNotFound) {
                Error::NoSuchConnRule(id)
            } else {
                bpf_error("cannot read the rule")(&e)
            }
        })?;
        // A take between the read and the write is lost to the new rule's state: a token at
        // most, once per change.
        let rule = ConnRule {
            state: carry(current.state),
            ..rule
        };
        self.rules
            .insert(id, rule, 0)
            .map_err(|e| bpf_error("cannot change the rule's limit")(&e))
    }

    pub fn rule(&self, id: u32) -> Option<ConnRule> {
        self.rules.get(&id, 0).ok()
    }

    /// Writes which lookups the programs make.
    pub fn set_shapes(&mut self, shapes: ConnShapes) -> Result<()> {
        self.shapes
            .set(0, shapes, 0)
            .map_err(|e| bpf_error("cannot write the lookup shapes")(&e))
    }

    /// The rule's counters summed over all CPUs.
    pub fn counters(&self, id: u32) -> ConnCounters {
        self.counters
            .get(&id, 0)
            .map(|values| {
                values
                    .iter()
                    .fold(ConnCounters::default(), |sum, c| sum.plus(*c))
            })
            .unwrap_or_default()
    }

    /// The callers of per-caller rule `id` that have an entry, by network namespace cookie.
    pub fn callers(&self, id: u32) -> Vec<(u64, CallerState)> {
        self.callers
            .iter()
            .flatten()
            .filter(|(key, _)| key.rule == id)
            .map(|(key, state)| (key.netns, state))
            .collect()
    }

    /// Rewrites the bucket of each caller of rule `id` as `carry` says (after a change of its
    /// limit). A take between a read and its write is lost: a token at most, per caller.
    pub fn rewrite_callers(&mut self, id: u32, carry: impl Fn(u64) -> u64) {
        for (netns, caller) in self.callers(id) {
            let key = CallerKey::new(id, netns);
            let state = CallerState {
                state: carry(caller.state),
                ..caller
            };
            let _ = self.callers.insert(key, state, 0);
        }
    }

    /// Puts back the callers' buckets `callers` of rule `id` read before a change.
    pub fn restore_callers(&mut self, id: u32, callers: &[(u64, CallerState)]) {
        for (netns, caller) in callers {
            let key = CallerKey::new(id, *netns);
            let _ = self.callers.insert(key, *caller, 0);
        }
    }

    /// Deletes the callers' entries whose rule is gone (left by a command that died between
    /// its writes); returns how many went. Entries whose bucket is full again are left to the
    /// programs, which drop them when the table is full: they swap the word for a tombstone
    /// first, so a connection racing the delete is refused, whereas userspace has no
    /// compare-and-swap on a map value and would lose a token taken between its check and its
    /// delete (one connection too many).
    pub fn remove_orphan_callers(&mut self) -> usize {
        let orphans: Vec<CallerKey> = self
            .callers
            .keys()
            .flatten()
            .filter(|key| self.rules.get(&key.rule, 0).is_err())
            .collect();
        orphans
            .iter()
            .filter(|key| self.callers.remove(key).is_ok())
            .count()
    }

    /// The ids of every rule in the kernel.
    pub fn rule_ids(&self) -> Vec<u32> {
        self.rules.keys().flatten().collect()
    }

    /// Removes every rule whose id is not in `held`, with its trie entries (found by walking
    /// the trie), counters and callers' buckets; returns how many rules went.
    pub fn remove_rules_except(&mut self, held: &HashSet<u32>) -> usize {
        let rules: Vec<u32> = self
            .rule_ids()
            .into_iter()
            .filter(|id| !held.contains(id))
            .collect();
        // Trie entries of a rule whose limit never made it (a put that died midway) go too.
        let strays: Vec<Key<ConnKey>> = self
            .destinations
            .iter()
            .flatten()
            .filter(|(_, found)| !held.contains(&found.rule))
            .map(|(key, _)| key)
            .collect();
        for key in &strays {
            let _ = self.destinations.remove(key);
        }
        for id in &rules {
            let _ = self.rules.remove(id);
            let _ = self.counters.remove(id);
        }
        let counters: Vec<u32> = self
            .counters
            .keys()
            .flatten()
            .filter(|id| !held.contains(id))
            .collect();
        for id in counters {
            let _ = self.counters.remove(&id);
        }
        self.remove_callers_where(|key| !held.contains(&key.rule));
        rules.len()
    }
}

/// This build's connect programs, loaded and verified, for the pinned links.
pub struct Reload {
    ebpf: Ebpf,
    pins: Vec<(&'static str, PathBuf)>,
}

impl PreparedReload for Reload {
    fn swap(self: Box<Self>) -> Result<usize> {
        self.swap_programs()
    }
}

impl Reload {
    /// Swaps the programs into the pinned links (BPF_LINK_UPDATE: no connect meets a missing
    /// program); returns how many links took a new one.
    pub fn swap_programs(&self) -> Result<usize> {
        for (name, pin) in &self.pins {
            let program = self
                .ebpf
                .program(name)
                .ok_or_else(|| bpf::missing_program(name))?;
            let fd = program
                .fd()
                .map_err(|e| bpf_error("loaded program has no fd")(&e))?;
            bpf::swap_link_program(pin, fd)?;
        }
        Ok(self.pins.len())
    }
}

/// Loads the object with its maps bound to the instance's pins (created if missing, the
/// callers table of `callers` entries if given).
fn load_object(instance: &Instance, callers: Option<u32>) -> Result<Ebpf> {
    let sizes: Vec<(&str, u32)> = callers
        .map(|entries| (CONN_CALLERS_MAP, entries))
        .into_iter()
        .collect();
    bpf::load_pinned(instance, bpf::conn_object(), &MAPS, &sizes)
}

/// Loads (verifies) both connect programs of `ebpf` into the kernel.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for (name, _) in PROGRAMS {
        program_mut::<CgroupSockAddr>(ebpf, name)?
            .load()
            .map_err(|e: ProgramError| load_error(name, &e))?;
    }
    Ok(())
}

/// A full table (E2BIG from a hash map, ENOSPC from the trie) says so; other errors keep their
/// context.
fn full_or(error: MapError, context: &str, capacity: u32) -> Error {
    if matches!(map_errno(&error), Some(libc::E2BIG | libc::ENOSPC)) {
        return Error::ConnRulesFull(capacity);
    }
    bpf_error(context)(&error)
}
