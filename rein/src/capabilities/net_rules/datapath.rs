//! The interface programs (`rein net`) as userspace sees them: their pinned maps, one pinned
//! link per (network namespace, interface, hook), and the entries one rule owns in the maps.
//!
//! Pins live beside the cgroup datapath's, under the instance's bpffs directory: maps in the
//! layout-versioned maps directory, links in `net/`. The cgroup programs and the interface
//! programs are installed and removed independently.
use std::{collections::HashSet, fs, path::PathBuf};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use rein_common::{
    Counters,
    abi::trace::{NET_TRACE_BUDGET_MAP, NET_TRACE_EVENTS_MAP, NET_TRACE_MAP},
    net::{
        FLAG_PER_SOURCE, MAX_SKETCH_CELLS, MAX_TRACKED_SOURCES, NET_COUNTERS_MAP,
        NET_DESTINATIONS_MAP, NET_HEAVY_MAP, NET_PAIRS_MAP, NET_PER_SOURCE_MAP, NET_RULES_MAP,
        NET_SHAPES_MAP, NET_SKETCH_MAP, NET_SOURCES_MAP, NET_SYN_ADMITTED_MAP, NET_SYN_SHAPES_MAP,
        NET_TC_EGRESS_PROGRAM, NET_TC_INGRESS_PROGRAM, NET_XDP_PROGRAM, NetRule, PairKey,
        PrefixKey, RuleMatch, SourceKey, SourceState,
    },
};

use super::spec::{NetHook, NetMatch, Placement};
use crate::{
    capabilities::PreparedReload,
    error::{Error, IoContext, Result, bpf_error, causes, map_errno},
    instance::Instance,
    platform::bpf::{self, load_error, missing_map, program_mut, remove_if_exists},
};

/// Every map of the object, pinned by these names.
pub const MAPS: [&str; 14] = [
    NET_RULES_MAP,
    NET_COUNTERS_MAP,
    NET_SOURCES_MAP,
    NET_DESTINATIONS_MAP,
    NET_PAIRS_MAP,
    NET_PER_SOURCE_MAP,
    NET_SKETCH_MAP,
    NET_HEAVY_MAP,
    NET_SHAPES_MAP,
    NET_TRACE_MAP,
    NET_TRACE_EVENTS_MAP,
    NET_TRACE_BUDGET_MAP,
    NET_SYN_SHAPES_MAP,
    NET_SYN_ADMITTED_MAP,
];

/// The maps that hold an entry per rule; the others are allocated whole and shared by all rules.
pub const RULE_TABLES: [&str; 5] = [
    NET_RULES_MAP,
    NET_COUNTERS_MAP,
    NET_SOURCES_MAP,
    NET_DESTINATIONS_MAP,
    NET_PAIRS_MAP,
];

/// Where one program runs: an interface of a network namespace, and a hook on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub netns: u64,
    pub ifindex: u32,
    pub hook: NetHook,
}

impl Attachment {
    fn pin(&self, instance: &Instance) -> PathBuf {
        links_dir(instance).join(format!(
            "link-{}-{}-{}",
            self.netns,
            self.ifindex,
            self.hook.name()
        ))
    }

    /// The kernel id of the link that runs the program here: pinned, and still on this
    /// interface (a link whose device was deleted stays pinned but is attached to nothing).
    pub fn live_link(&self, instance: &Instance) -> Option<u32> {
        let link = bpf::pinned_link(&self.pin(instance)).ok()?;
        (link.ifindex == self.ifindex).then_some(link.id)
    }
}

fn links_dir(instance: &Instance) -> PathBuf {
    instance.pin_dir().join("net")
}

fn program_name(hook: NetHook) -> &'static str {
    match hook {
        NetHook::TcIngress => NET_TC_INGRESS_PROGRAM,
        NetHook::TcEgress => NET_TC_EGRESS_PROGRAM,
        NetHook::Xdp => NET_XDP_PROGRAM,
    }
}

/// The lookups the programs make: every packet the traffic rules', a TCP SYN also the
/// new-connection rules'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shapes {
    pub traffic: u32,
    pub connections: u32,
}

/// One source as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub key: SourceKey,
    pub state: SourceState,
}

/// Handles on the pinned maps of the interface programs.
pub struct NetDatapath {
    rules: HashMap<MapData, u32, NetRule>,
    counters: PerCpuHashMap<MapData, u32, Counters>,
    sources: LpmTrie<MapData, PrefixKey, RuleMatch>,
    destinations: LpmTrie<MapData, PrefixKey, RuleMatch>,
    pairs: HashMap<MapData, PairKey, RuleMatch>,
    per_source: HashMap<MapData, SourceKey, SourceState>,
    sketch: Array<MapData, u64>,
    heavy: HashMap<MapData, SourceKey, SourceState>,
    shapes: Array<MapData, u32>,
    /// None in maps pinned by a build before new-connection rules, until a command that
    /// writes rules pins it (`open_or_create`): reading such an instance still works.
    syn_shapes: Option<Array<MapData, u32>>,
    /// How many rules the tables hold.
    capacity: u32,
}

impl NetDatapath {
    /// Whether the maps exist.
    pub fn is_installed(instance: &Instance) -> bool {
        instance.maps_dir().join(NET_RULES_MAP).exists()
    }

    /// Opens the maps, creating (and pinning) them first if they do not exist.
    pub fn open_or_create(instance: &Instance) -> Result<Self> {
        // Maps pinned by a build without new-connection rules lack the SYN maps: loading the
        // object pins them beside the others.
        let syn_maps = instance.maps_dir().join(NET_SYN_SHAPES_MAP).exists();
        if !Self::is_installed(instance) || !syn_maps {
            drop(load_object(instance)?);
        }
        Self::open(instance)
    }

    /// Takes the maps out of a loaded (unpinned) object: for tests and benchmarks that run the
    /// programs with `BPF_PROG_TEST_RUN`.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Load(format!("map {name} is missing from the object")))
        };
        Self::from_maps(|name| take(name))
    }

    pub fn open(instance: &Instance) -> Result<Self> {
        Self::from_maps(|name| bpf::open_pinned_map(instance, name))
    }

    fn from_maps(mut open: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let typed = |name: &'static str| move |e: MapError| bpf_error(name)(&e);
        let rules = open(NET_RULES_MAP)?;
        let capacity = match &rules {
            Map::HashMap(data) => data.info().map(|info| info.max_entries()).unwrap_or(0),
            _ => 0,
        };
        Ok(Self {
            capacity,
            rules: HashMap::try_from(rules).map_err(typed(NET_RULES_MAP))?,
            counters: PerCpuHashMap::try_from(open(NET_COUNTERS_MAP)?)
                .map_err(typed(NET_COUNTERS_MAP))?,
            sources: LpmTrie::try_from(open(NET_SOURCES_MAP)?).map_err(typed(NET_SOURCES_MAP))?,
            destinations: LpmTrie::try_from(open(NET_DESTINATIONS_MAP)?)
                .map_err(typed(NET_DESTINATIONS_MAP))?,
            pairs: HashMap::try_from(open(NET_PAIRS_MAP)?).map_err(typed(NET_PAIRS_MAP))?,
            per_source: HashMap::try_from(open(NET_PER_SOURCE_MAP)?)
                .map_err(typed(NET_PER_SOURCE_MAP))?,
            sketch: Array::try_from(open(NET_SKETCH_MAP)?).map_err(typed(NET_SKETCH_MAP))?,
            heavy: HashMap::try_from(open(NET_HEAVY_MAP)?).map_err(typed(NET_HEAVY_MAP))?,
            shapes: Array::try_from(open(NET_SHAPES_MAP)?).map_err(typed(NET_SHAPES_MAP))?,
            syn_shapes: match open(NET_SYN_SHAPES_MAP) {
                Ok(map) => Some(Array::try_from(map).map_err(typed(NET_SYN_SHAPES_MAP))?),
                Err(_) => None,
            },
        })
    }

    /// Removes every link and map pin of the interface programs; missing pieces are fine.
    pub fn uninstall(instance: &Instance) {
        let links = links_dir(instance);
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries.flatten() {
                // Removing the last reference to a link detaches its program.
                remove_if_exists(&entry.path());
            }
        }
        let _ = fs::remove_dir(&links);
        for name in MAPS {
            remove_if_exists(&instance.maps_dir().join(name));
        }
        bpf::tidy_pin_dirs(instance);
    }

    /// Attaches the program of `at.hook` to the interface `device` (of the calling thread's
    /// network namespace) and pins its link; returns the link's id and whether it is new. An
    /// attachment that exists is left as it is.
    pub fn attach(instance: &Instance, device: &str, at: Attachment) -> Result<(u32, bool)> {
        if let Some(id) = at.live_link(instance) {
            return Ok((id, false));
        }
        // A pin left by a link whose device went away holds nothing: replace it.
        let pin = at.pin(instance);
        remove_if_exists(&pin);
        let mut ebpf = load_object(instance)?;
        load_program(&mut ebpf, at.hook)?;
        let name = program_name(at.hook);
        let link = match at.hook {
            NetHook::TcIngress | NetHook::TcEgress => {
                let program = program_mut::<SchedClassifier>(&mut ebpf, name)?;
                let attach_type = if at.hook == NetHook::TcIngress {
                    TcAttachType::Ingress
                } else {
                    TcAttachType::Egress
                };
                bpf::attach_tcx(program, device, attach_type)?
            }
            NetHook::Xdp => {
                let program = program_mut::<Xdp>(&mut ebpf, name)?;
                let id = program
                    .attach_to_if_index(at.ifindex, XdpMode::Default)
                    .map_err(|e| xdp_error(device, &e))?;
                let link = program
                    .take_link(id)
                    .map_err(|e| bpf_error("cannot take the link")(&e))?;
                // A netlink attachment (no bpf link) cannot be pinned: detach it and refuse.
                FdLink::try_from(link).map_err(|_| Error::XdpUnsupported {
                    device: device.to_owned(),
                    reason: "the kernel offers no XDP link for it".into(),
                })?
            }
        };
        let links = links_dir(instance);
        fs::create_dir_all(&links)
            .context(|| format!("cannot create {} on bpffs", links.display()))?;
        let id = link
            .info()
            .map_err(|e| bpf_error("cannot read the link")(&e))?
            .id();
        link.pin(&pin)
            .map_err(|e| bpf_error("cannot pin the link")(&e))?;
        Ok((id, true))
    }

    /// Detaches a program (removes its link's pin); one that is not attached is fine.
    pub fn detach(instance: &Instance, at: Attachment) {
        remove_if_exists(&at.pin(instance));
    }

    /// Every attachment that has a pinned link (live or defunct).
    pub fn attachments(instance: &Instance) -> Vec<Attachment> {
        let Ok(entries) = fs::read_dir(links_dir(instance)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| parse_pin_name(&entry.file_name().to_string_lossy()))
            .collect()
    }

    /// Loads and verifies this build's programs for the attached links; `None` when no link
    /// is pinned.
    pub fn prepare_reload(instance: &Instance) -> Result<Option<Reload>> {
        let attachments = Self::attachments(instance);
        if attachments.is_empty() {
            return Ok(None);
        }
        let mut ebpf = load_object(instance)?;
        load_programs(&mut ebpf)?;
        Ok(Some(Reload {
            instance: instance.clone(),
            ebpf,
            attachments,
        }))
    }

    pub fn rule(&self, id: u32) -> Option<NetRule> {
        self.rules.get(&id, 0).ok()
    }

    /// Rewrites the limit of rule `id`, which is in place (its counters and lookups stay).
    pub fn change_limit(&mut self, id: u32, rule: NetRule) -> Result<()> {
        self.rules
            .insert(id, rule, 0)
            .map_err(|e| bpf_error("cannot change the rule's limit")(&e))
    }

    /// Writes rule `id`: its limit, zero counters, and its lookup entries. On failure the
    /// entries written so far are removed again.
    pub fn put(&mut self, id: u32, matching: &NetMatch, rule: NetRule) -> Result<()> {
        let result = self.try_put(id, matching, rule);
        if result.is_err() {
            self.remove(id, matching);
        }
        result
    }

    fn try_put(&mut self, id: u32, matching: &NetMatch, rule: NetRule) -> Result<()> {
        let cpus = bpf::possible_cpus()?;
        // Per-CPU values come from the kernel's per-CPU allocator, which refuses for a moment
        // (ENOMEM) when hundreds of thousands of rules go in back to back: wait and retry.
        let mut attempt = 0;
        loop {
            let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])
                .map_err(|e| bpf_error("counters")(&e))?;
            match self.counters.insert(id, zero, 0) {
                Ok(()) => break,
                Err(e) if map_errno(&e) == Some(libc::ENOMEM) && attempt < 50 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(full_or(
                        e,
                        "cannot create the rule's counters",
                        self.capacity,
                    ));
                }
            }
        }
        // The rule before its entries: a packet that finds an entry finds its rule.
        self.rules
            .insert(id, rule, 0)
            .map_err(|e| full_or(e, "cannot write the rule", self.capacity))?;
        for &family in matching.families() {
            let (placement, specificity) = matching.placement(family);
            let found = RuleMatch {
                rule: id,
                specificity,
            };
            let written = match placement {
                Placement::Source(key, bits) => {
                    self.sources
                        .insert(&aya::maps::lpm_trie::Key::new(bits, key), found, 0)
                }
                Placement::Destination(key, bits) => {
                    self.destinations
                        .insert(&aya::maps::lpm_trie::Key::new(bits, key), found, 0)
                }
                Placement::Pair(key) => self.pairs.insert(key, found, 0),
            };
            written.map_err(|e| full_or(e, "cannot write the rule's match", self.capacity))?;
        }
        // Last: the programs look for the rule only once its shape's bit is set.
        let mut shapes = self.shapes();
        if matching.is_connections() {
            shapes.connections |= matching.shape_bits();
        } else {
            shapes.traffic |= matching.shape_bits();
        }
        self.set_shapes(shapes)
    }

    /// Which lookups the programs make now.
    pub fn shapes(&self) -> Shapes {
        Shapes {
            traffic: self.shapes.get(&0, 0).unwrap_or(0),
            connections: self
                .syn_shapes
                .as_ref()
                .and_then(|map| map.get(&0, 0).ok())
                .unwrap_or(0),
        }
    }

    /// Writes which lookups the programs make: the union of every rule's
    /// [`NetMatch::shape_bits`] (a bit too many only costs a lookup), for traffic rules and for
    /// new-connection rules (looked up by SYNs).
    pub fn set_shapes(&mut self, shapes: Shapes) -> Result<()> {
        self.shapes
            .set(0, shapes.traffic, 0)
            .map_err(|e| bpf_error("cannot write the lookup shapes")(&e))?;
        match (&mut self.syn_shapes, shapes.connections) {
            (Some(map), connections) => map
                .set(0, connections, 0)
                .map_err(|e| bpf_error("cannot write the SYN lookup shapes")(&e)),
            (None, 0) => Ok(()),
            (None, _) => Err(missing_map(NET_SYN_SHAPES_MAP)),
        }
    }

    /// Removes rule `id`'s entries, limit, counters and per-source state; missing pieces are
    /// fine.
    pub fn remove(&mut self, id: u32, matching: &NetMatch) {
        for &family in matching.families() {
            let (placement, _) = matching.placement(family);
            // Only the rule's own entry: another rule cannot hold the same key (refused on add).
            let _ = match placement {
                Placement::Source(key, bits) => self
                    .sources
                    .remove(&aya::maps::lpm_trie::Key::new(bits, key)),
                Placement::Destination(key, bits) => self
                    .destinations
                    .remove(&aya::maps::lpm_trie::Key::new(bits, key)),
                Placement::Pair(key) => self.pairs.remove(&key),
            };
        }
        let per_source = self
            .rules
            .get(&id, 0)
            .is_ok_and(|rule| rule.flags & FLAG_PER_SOURCE != 0);
        let _ = self.rules.remove(&id);
        let _ = self.counters.remove(&id);
        if !per_source {
            return;
        }
        for map in [&mut self.per_source, &mut self.heavy] {
            // Bounded: the kernel evicts from these tables while they are walked, and a walk
            // whose key was evicted starts again from the first key. Entries missed here are
            // never charged again (rule ids are not reused) and age out.
            let keys: Vec<SourceKey> = map
                .keys()
                .take(2 * MAX_TRACKED_SOURCES as usize)
                .flatten()
                .filter(|k| k.rule == id)
                .collect();
            for key in keys {
                let _ = map.remove(&key);
            }
        }
    }

    /// Removes every rule whose id is not in `held`, with its entries (found by walking the
    /// lookup maps: what matched is not known without the rule's record); returns how many
    /// rules went. The lookup maps are walked only when the rule map holds a stray rule: a
    /// rule goes into the rule map before its entries, and out of it after them.
    pub fn remove_rules_except(&mut self, held: &HashSet<u32>) -> usize {
        let rules: Vec<u32> = self
            .rules
            .keys()
            .flatten()
            .filter(|id| !held.contains(id))
            .collect();
        if rules.is_empty() {
            return 0;
        }
        for key in strays(self.sources.iter(), held) {
            let _ = self.sources.remove(&key);
        }
        for key in strays(self.destinations.iter(), held) {
            let _ = self.destinations.remove(&key);
        }
        for key in strays(self.pairs.iter(), held) {
            let _ = self.pairs.remove(&key);
        }
        for id in &rules {
            let _ = self.rules.remove(id);
            let _ = self.counters.remove(id);
        }
        rules.len()
    }

    /// Zeroes `count` sketch cells from `offset`, for a new sketch rule.
    pub fn clear_sketch(&mut self, offset: u32, count: u32) -> Result<()> {
        let end = offset.saturating_add(count).min(MAX_SKETCH_CELLS);
        for index in offset..end {
            self.sketch
                .set(index, 0, 0)
                .map_err(|e| bpf_error("cannot clear the sketch")(&e))?;
        }
        Ok(())
    }

    /// The rule's counters summed over all CPUs.
    pub fn counters(&self, id: u32) -> Counters {
        self.counters
            .get(&id, 0)
            .map(|values| {
                values
                    .iter()
                    .fold(Counters::default(), |sum, c| sum.plus(*c))
            })
            .unwrap_or_default()
    }

    /// The `limit` sources of rule `id` that sent the most bytes (passed and dropped): from the
    /// exact table, or for a sketch rule from the heavy sources it noted.
    pub fn top_sources(&self, id: u32, sketch: bool, limit: usize) -> Vec<SourceEntry> {
        self.top_sources_by_rule(sketch, limit)
            .remove(&id)
            .unwrap_or_default()
    }

    /// [`NetDatapath::top_sources`] of every rule, from one walk of the table.
    pub fn top_sources_by_rule(
        &self,
        sketch: bool,
        limit: usize,
    ) -> std::collections::HashMap<u32, Vec<SourceEntry>> {
        let map = if sketch {
            &self.heavy
        } else {
            &self.per_source
        };
        let mut by_rule: std::collections::HashMap<u32, Vec<SourceEntry>> =
            std::collections::HashMap::new();
        // Bounded, as in `remove`: the kernel evicts while the table is walked.
        for (key, state) in map.iter().take(2 * MAX_TRACKED_SOURCES as usize).flatten() {
            by_rule
                .entry(key.rule)
                .or_default()
                .push(SourceEntry { key, state });
        }
        let weight = |e: &SourceEntry| {
            e.state
                .counters
                .passed_bytes
                .saturating_add(e.state.counters.dropped_bytes)
        };
        for entries in by_rule.values_mut() {
            entries.sort_by_key(|e| std::cmp::Reverse(weight(e)));
            entries.truncate(limit);
        }
        by_rule
    }
}

/// Loads the object with its maps bound to the instance's pins (created if missing); the
/// rule tables are sized when they are created, tables that exist keep their size.
fn load_object(instance: &Instance) -> Result<Ebpf> {
    let sizes = RULE_TABLES.map(|name| {
        // A rule without addresses has an entry in a trie for each family.
        let entries = match name {
            NET_SOURCES_MAP | NET_DESTINATIONS_MAP => instance.net_max_rules().saturating_mul(2),
            _ => instance.net_max_rules(),
        };
        (name, entries)
    });
    bpf::load_pinned(instance, bpf::net_object(), &MAPS, &sizes)
}

/// The keys of a lookup map's entries that point at a rule not in `held`.
fn strays<K>(
    entries: impl Iterator<Item = std::result::Result<(K, RuleMatch), MapError>>,
    held: &HashSet<u32>,
) -> Vec<K> {
    entries
        .flatten()
        .filter(|(_, found)| !held.contains(&found.rule))
        .map(|(key, _)| key)
        .collect()
}

/// The attachment a link pin's name stands for (`link-NETNS-IFINDEX-HOOK`).
fn parse_pin_name(name: &str) -> Option<Attachment> {
    let rest = name.strip_prefix("link-")?;
    let (netns, rest) = rest.split_once('-')?;
    let (ifindex, hook) = rest.split_once('-')?;
    Some(Attachment {
        netns: netns.parse().ok()?,
        ifindex: ifindex.parse().ok()?,
        hook: NetHook::ALL.into_iter().find(|h| h.name() == hook)?,
    })
}

/// This build's interface programs, loaded and verified, for the attached links.
pub struct Reload {
    instance: Instance,
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl PreparedReload for Reload {
    fn swap(mut self: Box<Self>) -> Result<usize> {
        let mut swapped = 0;
        for at in &self.attachments {
            let pin = at.pin(&self.instance);
            // A link whose device went away cannot take a program (ENOLINK): its pin holds
            // nothing, and goes.
            if bpf::pinned_link(&pin).is_ok_and(|link| link.ifindex == 0) {
                remove_if_exists(&pin);
                continue;
            }
            let name = program_name(at.hook);
            match at.hook {
                NetHook::TcIngress | NetHook::TcEgress => {
                    bpf::swap_tcx(program_mut::<SchedClassifier>(&mut self.ebpf, name)?, &pin)?;
                }
                NetHook::Xdp => bpf::swap_xdp(program_mut::<Xdp>(&mut self.ebpf, name)?, &pin)?,
            }
            swapped += 1;
        }
        Ok(swapped)
    }
}

/// Loads (verifies) the tc and XDP programs of `ebpf` into the kernel.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for hook in NetHook::ALL {
        load_program(ebpf, hook)?;
    }
    Ok(())
}

fn load_program(ebpf: &mut Ebpf, hook: NetHook) -> Result<()> {
    let name = program_name(hook);
    let loaded = match hook {
        NetHook::TcIngress | NetHook::TcEgress => {
            program_mut::<SchedClassifier>(ebpf, name)?.load()
        }
        NetHook::Xdp => program_mut::<Xdp>(ebpf, name)?.load(),
    };
    loaded.map_err(|e| load_error(name, &e))
}

/// A full table (E2BIG from a hash map, ENOSPC from a prefix trie) says so; other errors keep
/// their context.
fn full_or(error: MapError, context: &str, capacity: u32) -> Error {
    if matches!(map_errno(&error), Some(libc::E2BIG | libc::ENOSPC)) {
        return Error::NetRulesFull(capacity);
    }
    bpf_error(context)(&error)
}

fn xdp_error(device: &str, error: &ProgramError) -> Error {
    let busy = matches!(error, ProgramError::SyscallError(syscall)
        if syscall.io_error.raw_os_error() == Some(libc::EBUSY));
    Error::XdpUnsupported {
        device: device.to_owned(),
        reason: if busy {
            "another XDP program is attached to it".into()
        } else {
            causes(error)
        },
    }
}
