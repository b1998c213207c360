//! Declarative limits: resources in YAML files ([`resource`]), read all-or-nothing ([`load`]),
//! and applied through the engine like any command, as one plan under one undo list.
//!
//! What a file declares belongs to the declarative owner: each record it makes carries the
//! resource's name (`declared_by`). Limits set by hand (`rein set`, `rein run`, `rein net
//! add`) carry none, and [`apply`] and [`delete`] never touch them.
//!
//! For the agent: [`load`] with [`LoadOptions::require_root_owned`], then [`apply`] with
//! [`Mode::Exact`] on every change of the files and whenever cgroups come and go; a
//! `CgroupLimit` glob is expanded anew on each apply ([`expand`]).
//!
//! The files are one [`Declarer`]; rein's Kubernetes node agent is another ([`apply_as`]):
//! each one's `Mode::Exact` removes only what it declared itself, so the two never take each
//! other's resources away.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

pub mod load;
pub mod resource;

pub use load::{Declared, LoadOptions, Location, Resources, SourceLocation, load};
pub use resource::{
    API_VERSION, ApiVersion, CgroupLimitSpec, CgroupPattern, DirectionLimit, Kind, LimitScope,
    Manifest, NetRuleResourceSpec, NetnsPath, RateLimitRule, RateLimitSpec, Resource, ResourceName,
    SharedLimitSpec, json_schema,
};

use crate::{
    capabilities::{
        Context,
        cgroup_limit::{DeclaredBy, LimitSpec, Origin, RuleRecord},
        conn_limits::WantedConnRule,
        net_rules::{WantedNetRule, spec::NetRuleSpec},
        netns_limit::{self, Attachment, Namespace, NetnsOrigin, NetnsRecord, Subnets},
        shared_limit::{Member, SharedName, SharedRecord},
    },
    engine::{Desired, Engine, Plan},
    error::{Error, Result},
    platform::{cgroupfs::Cgroup, netns},
    store::State,
};

/// An inbound `RateLimit` is a net rule; its `declared_by` is its name behind this prefix,
/// which no resource name can hold, so a `NetRule` and a `RateLimit` of the same name never
/// take each other's rule.
const RATE_LIMIT_PREFIX: &str = "RateLimit/";

/// The kind and name of the resource that declared a net rule.
fn net_rule_owner(declared_by: &str) -> (Kind, &str) {
    match declared_by.strip_prefix(RATE_LIMIT_PREFIX) {
        Some(name) => (Kind::RateLimit, name),
        None => (Kind::NetRule, declared_by),
    }
}

/// Who declares resources. Each record of a declared resource names its owner in its
/// `declared_by`: the resource's name for the files (as rein wrote it before there were other
/// declarers, so older state files read as the files'), behind `kubernetes:` for the node
/// agent's. A resource name cannot hold a `:`, so no name of the files reads as another's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Declarer {
    /// YAML files: `rein apply`, `rein delete`, `rein agent`.
    #[default]
    Files,
    /// rein's Kubernetes node agent (`rein-kube agent`).
    Kubernetes,
}

impl Declarer {
    const KUBERNETES_PREFIX: &str = "kubernetes:";

    pub fn name(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Kubernetes => "kubernetes",
        }
    }

    /// The `declared_by` of a record that `name` (a resource name, or the `RateLimit/`-prefixed
    /// owner of an inbound rate limit's rule) declares.
    pub fn owner(self, name: &str) -> String {
        match self {
            Self::Files => name.to_owned(),
            Self::Kubernetes => format!("{}{name}", Self::KUBERNETES_PREFIX),
        }
    }

    /// The declarer and the name behind a record's `declared_by`.
    pub fn of(declared_by: &str) -> (Declarer, &str) {
        match declared_by.strip_prefix(Self::KUBERNETES_PREFIX) {
            Some(name) => (Self::Kubernetes, name),
            None => (Self::Files, declared_by),
        }
    }
}

impl std::fmt::Display for Declarer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A record's owner as an error names it: `web`, or `pod.default.web-0 (rein's Kubernetes node
/// agent's)`.
pub(crate) fn shown_owner(declared_by: &str) -> String {
    match Declarer::of(declared_by) {
        (Declarer::Files, name) => name.to_owned(),
        (Declarer::Kubernetes, name) => format!("{name} (rein's Kubernetes node agent's)"),
    }
}

/// How the files relate to what was declared before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `rein apply`: the files' resources are added or changed; other declared resources
    /// stay.
    Merge,
    /// The agent's: the files are the whole of what is declared; declared resources no longer
    /// in them are removed. A resource whose cgroup or device is not there yet declares
    /// nothing until it is (the agent applies again every second).
    Exact,
}

/// Makes the instance hold what `resources` declare, all-or-nothing; returns what changed.
/// The files' declarations: see [`apply_as`].
pub fn apply(engine: &mut Engine, resources: &Resources, mode: Mode) -> Result<Plan> {
    apply_as(engine, resources, mode, Declarer::Files)
}

/// Makes the instance hold what `resources` declare for `declarer`, all-or-nothing; returns
/// what changed. What other declarers declared stays whatever the mode, as limits set by hand
/// do; a resource that wants a cgroup or namespace another declarer holds is refused
/// ([`Error::InResource`], [`Error::resource`] names it).
pub fn apply_as(
    engine: &mut Engine,
    resources: &Resources,
    mode: Mode,
    declarer: Declarer,
) -> Result<Plan> {
    let mut tx = engine.begin()?;
    let desired = declare(tx.context(), tx.desired(), resources, mode, declarer)?;
    let plan = tx.plan(&desired)?;
    // The agent applies twice a second: when nothing changes, nothing is written.
    if plan.is_empty() {
        return Ok(plan);
    }
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(plan)
}

/// What [`apply`] would change; nothing changes.
pub fn plan(engine: &Engine, resources: &Resources, mode: Mode) -> Result<Plan> {
    plan_as(engine, resources, mode, Declarer::Files)
}

/// What [`apply_as`] would change; nothing changes.
pub fn plan_as(
    engine: &Engine,
    resources: &Resources,
    mode: Mode,
    declarer: Declarer,
) -> Result<Plan> {
    let desired = declare(
        engine.context(),
        engine.desired()?,
        resources,
        mode,
        declarer,
    )?;
    engine.plan(&desired)
}

/// Removes what `resources` declared (by kind and name), all-or-nothing; returns what changed.
/// Limits set by hand stay, whatever the files say, and so do other declarers' resources.
pub fn delete(engine: &mut Engine, resources: &Resources) -> Result<Plan> {
    let mut tx = engine.begin()?;
    let desired = undeclare(tx.desired(), resources, Declarer::Files);
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(plan)
}

/// What [`delete`] would change; nothing changes.
pub fn plan_delete(engine: &Engine, resources: &Resources) -> Result<Plan> {
    engine.plan(&undeclare(engine.desired()?, resources, Declarer::Files))
}

/// The CNI plugin's attachment whose limit holds the network namespace at `path`, if one
/// does (none when there is no namespace there). The plugin owns that limit: [`apply`] in
/// `Mode::Exact` leaves it in place with a warning and declares nothing for the namespace, a
/// command refuses; a declarer reports the resource as not applied.
pub fn cni_attachment(state: &State, path: &std::path::Path) -> Result<Option<Attachment>> {
    let namespace = match Namespace::open(path) {
        Err(Error::NoSuchNetns(_)) => return Ok(None),
        opened => opened?,
    };
    Ok(state
        .netns_limits
        .rules
        .iter()
        .filter(|r| r.cookie == namespace.cookie)
        .find_map(|r| match &r.origin {
            NetnsOrigin::Cni(attachment) => Some(attachment.clone()),
            NetnsOrigin::Manual => None,
        }))
}

/// The cgroups `pattern` names now: the one at its path (which must exist), or every existing
/// cgroup its glob matches, except the instance's own (`rein run` and `set --pid` cgroups).
pub fn expand(cx: &Context, pattern: &CgroupPattern) -> Result<Vec<Cgroup>> {
    if !pattern.is_glob() {
        let cgroup = cx.cgroups.at(pattern.as_str())?;
        if !cgroup.path().is_dir() {
            return Err(Error::NoSuchCgroup(pattern.as_str().to_owned()));
        }
        cgroup.check_depth()?;
        return Ok(vec![cgroup]);
    }
    let mount = cx.cgroups.mount().to_string_lossy().into_owned();
    let full = format!("{}{}", glob::Pattern::escape(&mount), pattern.as_str());
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let paths = glob::glob_with(&full, options).map_err(|error| Error::BadCgroupGlob {
        pattern: pattern.as_str().to_owned(),
        reason: error.to_string(),
    })?;
    let own = format!("/{}", cx.instance.cgroup_subtree());
    let mut cgroups = Vec::new();
    // A directory that vanished while the glob read it is a cgroup that went: skipped.
    for path in paths.flatten().filter(|path| path.is_dir()) {
        let Ok(relative) = path.strip_prefix(cx.cgroups.mount()) else {
            continue;
        };
        let cgroup = cx.cgroups.at(&relative.to_string_lossy())?;
        let relative = cgroup.relative();
        if relative == own || relative.starts_with(&format!("{own}/")) || cgroup.is_root() {
            continue;
        }
        cgroup.check_depth()?;
        cgroups.push(cgroup);
    }
    Ok(cgroups)
}

/// `desired` with `resources` declared.
fn declare(
    cx: &Context,
    mut desired: Desired,
    resources: &Resources,
    mode: Mode,
    declarer: Declarer,
) -> Result<Desired> {
    let named = |kind: Kind| -> HashSet<&str> {
        resources
            .items
            .iter()
            .filter(|d| d.resource.kind() == kind)
            .map(|d| d.resource.name().as_str())
            .collect()
    };
    let (limits_named, rules_named) = (named(Kind::CgroupLimit), named(Kind::NetRule));
    let rate_limits_named = named(Kind::RateLimit);
    let shared_named = named(Kind::SharedLimit);
    // A shared limit declared again keeps its group, so its bucket goes on.
    let held_groups: HashMap<String, u32> = desired
        .shared_limits
        .iter()
        .map(|g| (g.name.clone(), g.group))
        .collect();
    let mut taken_groups: HashSet<u32> = held_groups.values().copied().collect();
    // What the files declare is made anew below; what else this declarer declared stays in a
    // merge; what others declared stays, as limits set by hand do.
    let keeps = |owner: Option<(Declarer, &str)>, named: &HashSet<&str>| match owner {
        None => true,
        Some((by, _)) if by != declarer => true,
        Some((_, name)) => mode == Mode::Merge && !named.contains(name),
    };
    fn owner_of(by: &Option<DeclaredBy>) -> Option<(Declarer, &str)> {
        by.as_ref().map(|d| Declarer::of(&d.name))
    }
    desired
        .cgroup_limits
        .retain(|r| keeps(owner_of(&r.declared_by), &limits_named));
    desired
        .netns_limits
        .retain(|r| keeps(owner_of(&r.declared_by), &limits_named));
    // Who holds each namespace now, by cookie: the CNI plugin, a hand, or another resource.
    let held_netns: HashMap<u64, NetnsRecord> = desired
        .netns_limits
        .iter()
        .map(|r| (r.cookie, r.clone()))
        .collect();
    let mut claimed_netns: HashMap<u64, &str> = HashMap::new();
    // A rule declared again keeps its id, so an unchanged rule is left as it is.
    let held_rules: HashMap<String, WantedNetRule> = desired
        .net_rules
        .iter()
        .filter_map(|w| Some((w.declared_by.clone()?, w.clone())))
        .collect();
    desired.net_rules.retain(|w| {
        let Some((by, owner)) = w.declared_by.as_deref().map(Declarer::of) else {
            return true;
        };
        match net_rule_owner(owner) {
            (Kind::RateLimit, name) => keeps(Some((by, name)), &rate_limits_named),
            (_, name) => keeps(Some((by, name)), &rules_named),
        }
    });
    let held_conn_rules: HashMap<String, WantedConnRule> = desired
        .conn_rules
        .iter()
        .filter_map(|w| Some((w.declared_by.clone()?, w.clone())))
        .collect();
    desired.conn_rules.retain(|w| {
        keeps(
            w.declared_by.as_deref().map(Declarer::of),
            &rate_limits_named,
        )
    });
    desired
        .shared_limits
        .retain(|g| keeps(g.declared_by.as_deref().map(Declarer::of), &shared_named));
    let hand_shared: HashSet<String> = desired
        .shared_limits
        .iter()
        .filter(|g| g.declared_by.is_none())
        .map(|g| g.name.clone())
        .collect();

    let mut claimed: HashMap<u64, &str> = HashMap::new();
    // Who holds each cgroup now (limits set by hand, and declared ones a merge keeps), by id:
    // the agent declares 10,000 limits every few seconds.
    let held: HashMap<u64, Option<String>> = desired
        .cgroup_limits
        .iter()
        .map(|r| {
            (
                r.cgroup_id,
                r.declared_by.as_ref().map(|d| shown_owner(&d.name)),
            )
        })
        .collect();
    for declared in &resources.items {
        let in_resource = |source: Error| Error::InResource {
            at: declared.location.to_string(),
            kind: declared.resource.kind(),
            name: declared.resource.name().to_string(),
            source: Box::new(source),
        };
        match &declared.resource {
            Resource::CgroupLimit(manifest) => {
                let name = manifest.metadata.name.as_str();
                let spec = &manifest.spec;
                let pattern = match &spec.scope {
                    LimitScope::Cgroup(pattern) => pattern,
                    LimitScope::Netns { path, subnets } => {
                        let wanted = WantedNetns {
                            name,
                            declarer,
                            path,
                            subnets: subnets.as_ref(),
                            egress: spec.egress,
                            ingress: spec.ingress,
                        };
                        if let Some(record) =
                            want_netns_limit(&held_netns, &wanted, mode).map_err(in_resource)?
                        {
                            if let Some(first) = claimed_netns.insert(record.cookie, name) {
                                return Err(in_resource(Error::NetnsDeclaredElsewhere {
                                    netns: record.netns,
                                    owner: first.to_owned(),
                                }));
                            }
                            desired.netns_limits.push(record);
                        }
                        continue;
                    }
                };
                let cgroups = match expand(cx, pattern) {
                    // The agent waits for a cgroup that is not there yet (a service not
                    // started); a command refuses it.
                    Err(Error::NoSuchCgroup(path)) if mode == Mode::Exact => {
                        tracing::info!("{name}: cgroup {path} is not there (yet)");
                        continue;
                    }
                    expanded => expanded.map_err(in_resource)?,
                };
                for cgroup in cgroups {
                    let id = cgroup.id().map_err(in_resource)?;
                    let relative = cgroup.relative().to_owned();
                    if let Some(existing) = held.get(&id) {
                        match existing {
                            // A glob leaves a limit set by hand alone; a path names it on
                            // purpose, and is refused.
                            None if pattern.is_glob() => {
                                tracing::info!("{name}: leaving the hand-set limit of {relative}");
                                continue;
                            }
                            None => return Err(in_resource(Error::LimitedByHand(relative))),
                            Some(other) => {
                                return Err(in_resource(Error::DeclaredElsewhere {
                                    cgroup: relative,
                                    owner: other.clone(),
                                }));
                            }
                        }
                    }
                    if let Some(first) = claimed.insert(id, name) {
                        return Err(in_resource(Error::DeclaredElsewhere {
                            cgroup: relative,
                            owner: first.to_owned(),
                        }));
                    }
                    let limit = |limit: Option<DirectionLimit>| {
                        limit.map(|l| LimitSpec {
                            rate: l.rate,
                            burst: l.burst,
                        })
                    };
                    desired.cgroup_limits.push(RuleRecord {
                        cgroup: relative,
                        cgroup_id: id,
                        egress: limit(spec.egress),
                        ingress: limit(spec.ingress),
                        origin: Origin::Cgroup,
                        declared_by: Some(DeclaredBy {
                            name: declarer.owner(name),
                            cgroup: pattern.as_str().to_owned(),
                        }),
                    });
                }
            }
            Resource::SharedLimit(manifest) => {
                let name = manifest.metadata.name.as_str();
                if hand_shared.contains(name) {
                    return Err(in_resource(Error::SharedByHand(name.to_owned())));
                }
                // Names are one space for every declarer: the other's limit of this name stays.
                if let Some(other) = desired.shared_limits.iter().find(|g| g.name == name) {
                    return Err(in_resource(Error::SharedDeclared {
                        name: name.to_owned(),
                        owner: other
                            .declared_by
                            .as_deref()
                            .map_or_else(String::new, shown_owner),
                    }));
                }
                let members =
                    shared_members(cx, &manifest.spec, &held, mode, name).map_err(in_resource)?;
                let group = match held_groups.get(name) {
                    Some(&group) => group,
                    None => {
                        let group = taken_groups.iter().max().copied().unwrap_or(0) + 1;
                        taken_groups.insert(group);
                        group
                    }
                };
                let limit = |limit: Option<DirectionLimit>| {
                    limit.map(|l| LimitSpec {
                        rate: l.rate,
                        burst: l.burst,
                    })
                };
                desired.shared_limits.push(SharedRecord {
                    name: SharedName::new(name)
                        .map_err(in_resource)?
                        .as_str()
                        .to_owned(),
                    group,
                    members,
                    egress: limit(manifest.spec.egress()),
                    ingress: limit(manifest.spec.ingress()),
                    declared_by: Some(declarer.owner(name)),
                });
            }
            Resource::NetRule(manifest) => {
                let name = manifest.metadata.name.as_str();
                let spec = manifest.spec.rule();
                let declared_by = declarer.owner(name);
                let held = held_rules.get(&declared_by);
                want_net_rule(&mut desired, held, spec, declared_by, name, mode)
                    .map_err(in_resource)?;
            }
            Resource::RateLimit(manifest) => {
                let name = manifest.metadata.name.as_str();
                match manifest.spec.rule() {
                    RateLimitRule::Outbound(rule) => {
                        let declared_by = declarer.owner(name);
                        let held = held_conn_rules.get(&declared_by);
                        let spec = match rule.clone().resolve(cx) {
                            // As a missing cgroup of a CgroupLimit: the agent waits for it.
                            Err(error @ (Error::NoSuchCgroup(_) | Error::NoSuchNetns(_)))
                                if mode == Mode::Exact =>
                            {
                                tracing::info!("{name}: {error} (yet)");
                                continue;
                            }
                            resolved => resolved.map_err(in_resource)?,
                        };
                        desired.conn_rules.push(WantedConnRule {
                            id: held.and_then(|held| held.id),
                            spec,
                            declared_by: Some(declared_by),
                        });
                    }
                    RateLimitRule::Inbound(spec) => {
                        let declared_by = declarer.owner(&format!("{RATE_LIMIT_PREFIX}{name}"));
                        let held = held_rules.get(&declared_by);
                        want_net_rule(&mut desired, held, spec, declared_by, name, mode)
                            .map_err(in_resource)?;
                    }
                }
            }
        }
    }
    // The subnet trie is shared by every namespace limit, the CNI plugin's too.
    let count = desired
        .netns_limits
        .iter()
        .filter_map(|r| r.subnets.as_ref())
        .map(|s| s.nets().len())
        .sum();
    netns_limit::check_subnet_count(None, count)?;
    Ok(desired)
}

/// The members a `SharedLimit` names now: each cgroup path or glob expanded, each namespace
/// opened. Under the agent (`Mode::Exact`) a member not there yet is skipped, as a
/// `CgroupLimit`'s cgroup is; a glob leaves out cgroups with a limit of their own (`held`).
fn shared_members(
    cx: &Context,
    spec: &SharedLimitSpec,
    held: &HashMap<u64, Option<String>>,
    mode: Mode,
    name: &str,
) -> Result<Vec<Member>> {
    let mut members: Vec<Member> = Vec::new();
    for pattern in spec.cgroups() {
        let cgroups = match expand(cx, pattern) {
            Err(Error::NoSuchCgroup(path)) if mode == Mode::Exact => {
                tracing::info!("{name}: cgroup {path} is not there (yet)");
                continue;
            }
            expanded => expanded?,
        };
        for cgroup in cgroups {
            let id = cgroup.id()?;
            if pattern.is_glob() && held.contains_key(&id) {
                tracing::info!(
                    "{name}: leaving {}, which has a limit of its own",
                    cgroup.relative()
                );
                continue;
            }
            if !members.iter().any(|m| m.scope() == id) {
                members.push(Member::Cgroup {
                    path: cgroup.relative().to_owned(),
                    id,
                });
            }
        }
    }
    for path in spec.netns() {
        let namespace = match Namespace::open(std::path::Path::new(path.as_str())) {
            Err(error @ Error::NoSuchNetns(_)) if mode == Mode::Exact => {
                tracing::info!("{name}: {error} (yet)");
                continue;
            }
            opened => opened?,
        };
        let member = Member::Netns {
            path: namespace.path,
            cookie: namespace.cookie,
            inode: namespace.inode,
        };
        if !members.iter().any(|m| m.scope() == member.scope()) {
            members.push(member);
        }
    }
    Ok(members)
}

/// A namespace limit as a `CgroupLimit` declares it.
struct WantedNetns<'a> {
    name: &'a str,
    declarer: Declarer,
    path: &'a NetnsPath,
    subnets: Option<&'a Subnets>,
    egress: Option<DirectionLimit>,
    ingress: Option<DirectionLimit>,
}

/// The record of a declared namespace limit, or `None` when there is none to make: in
/// `Mode::Exact` the agent waits for a namespace that is not there (yet), as for a missing
/// cgroup, and leaves a namespace the CNI plugin limited to it, with a warning. A command
/// refuses both, as it refuses a namespace limited by hand or by another resource.
fn want_netns_limit(
    held: &HashMap<u64, NetnsRecord>,
    wanted: &WantedNetns<'_>,
    mode: Mode,
) -> Result<Option<NetnsRecord>> {
    let name = wanted.name;
    let namespace = match Namespace::open(std::path::Path::new(wanted.path.as_str())) {
        Err(error @ Error::NoSuchNetns(_)) if mode == Mode::Exact => {
            tracing::info!("{name}: {error} (yet)");
            return Ok(None);
        }
        opened => opened?,
    };
    if let Some(existing) = held.get(&namespace.cookie) {
        match (&existing.origin, &existing.declared_by) {
            (NetnsOrigin::Cni(attachment), _) => {
                let error = Error::NetnsOwnedElsewhere {
                    netns: namespace.path,
                    owner: format!(
                        "the CNI plugin for container {} ({} on network {})",
                        attachment.container_id, attachment.ifname, attachment.network
                    ),
                };
                if mode == Mode::Exact {
                    tracing::warn!("{name}: leaving it alone: {error}");
                    return Ok(None);
                }
                return Err(error);
            }
            (NetnsOrigin::Manual, None) => {
                return Err(Error::NetnsLimitedByHand(namespace.path));
            }
            (NetnsOrigin::Manual, Some(other)) => {
                return Err(Error::NetnsDeclaredElsewhere {
                    netns: namespace.path,
                    owner: shown_owner(&other.name),
                });
            }
        }
    }
    let limit = |limit: Option<DirectionLimit>| {
        limit.map(|l| LimitSpec {
            rate: l.rate,
            burst: l.burst,
        })
    };
    Ok(Some(NetnsRecord {
        netns: namespace.path,
        cookie: namespace.cookie,
        inode: namespace.inode,
        egress: limit(wanted.egress),
        ingress: limit(wanted.ingress),
        subnets: wanted.subnets.cloned(),
        origin: NetnsOrigin::Manual,
        declared_by: Some(DeclaredBy {
            name: wanted.declarer.owner(name),
            cgroup: wanted.path.as_str().to_owned(),
        }),
    }))
}

/// Adds `spec` to `desired` as the net rule `declared_by` (for the resource `name`), under the
/// id of the rule `held` for it if any. Its device is checked here too, so the error names the
/// resource; a rule in place whose device went away is left as it is, and in `Mode::Exact`
/// the agent waits for a device that is not there yet (as for a missing cgroup): nothing is
/// added.
fn want_net_rule(
    desired: &mut Desired,
    held: Option<&WantedNetRule>,
    spec: &NetRuleSpec,
    declared_by: String,
    name: &str,
    mode: Mode,
) -> Result<()> {
    if held.is_none_or(|held| held.spec != *spec)
        && !netns::device(&spec.device).is_ok_and(|device| device.is_some())
    {
        if mode == Mode::Exact {
            tracing::info!("{name}: device {} is not there (yet)", spec.device);
            return Ok(());
        }
        return Err(Error::NoSuchDevice(spec.device.clone()));
    }
    desired.net_rules.push(WantedNetRule {
        id: held.and_then(|held| held.id),
        spec: spec.clone(),
        declared_by: Some(declared_by),
    });
    Ok(())
}

/// `desired` without what `resources` declared for `declarer`.
fn undeclare(mut desired: Desired, resources: &Resources, declarer: Declarer) -> Desired {
    let named: HashSet<(Kind, &str)> = resources
        .items
        .iter()
        .map(|d| (d.resource.kind(), d.resource.name().as_str()))
        .collect();
    // Whether a record's `declared_by` names one of `resources` of this declarer.
    let declared = |kind_of: fn(&str) -> (Kind, &str), declared_by: Option<&str>| {
        declared_by
            .map(Declarer::of)
            .is_some_and(|(by, owner)| by == declarer && named.contains(&kind_of(owner)))
    };
    fn limit(owner: &str) -> (Kind, &str) {
        (Kind::CgroupLimit, owner)
    }
    fn rate_limit(owner: &str) -> (Kind, &str) {
        (Kind::RateLimit, owner)
    }
    fn shared(owner: &str) -> (Kind, &str) {
        (Kind::SharedLimit, owner)
    }
    desired
        .cgroup_limits
        .retain(|r| !declared(limit, r.declared_by.as_ref().map(|d| d.name.as_str())));
    desired
        .netns_limits
        .retain(|r| !declared(limit, r.declared_by.as_ref().map(|d| d.name.as_str())));
    desired
        .net_rules
        .retain(|w| !declared(net_rule_owner, w.declared_by.as_deref()));
    desired
        .conn_rules
        .retain(|w| !declared(rate_limit, w.declared_by.as_deref()));
    desired
        .shared_limits
        .retain(|g| !declared(shared, g.declared_by.as_deref()));
    desired
}

/// One entry of `rein get`: a resource in the files' shape, with where it came from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: ListedMetadata,
    pub spec: ListedSpec,
    pub status: ListedStatus,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListedMetadata {
    /// The resource's name; a limit set by hand is named after its cgroup, a rule by its id.
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
// A few resources per file or listing: boxing the larger NetRule (its connection rate
// made it cross the lint's threshold) would save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
pub enum ListedSpec {
    CgroupLimit(CgroupLimitSpec),
    NetRule(NetRuleResourceSpec),
    RateLimit(RateLimitSpec),
    SharedLimit(SharedLimitSpec),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedStatus {
    pub origin: ListedOrigin,
    /// The cgroups the limit applies to (a glob's, as expanded when it was applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
}

/// How a listed item came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListedOrigin {
    /// Applied from a file (`rein apply`, the agent).
    Declared,
    /// Declared by rein's Kubernetes node agent, from a pod or a custom resource.
    Kubernetes,
    /// `rein set --cgroup`.
    SetCgroup,
    /// `rein set --pid`.
    SetPid,
    /// `rein run`.
    Run,
    /// `rein net add`.
    NetAdd,
    /// `rein conn add`.
    ConnAdd,
    /// `rein set --netns`.
    SetNetns,
    /// The CNI plugin, for a container's network namespace.
    Cni,
    /// `rein share`.
    Share,
}

impl ListedOrigin {
    /// The origin of what `declarer` declared.
    pub fn declared_by(declarer: Declarer) -> Self {
        match declarer {
            Declarer::Files => Self::Declared,
            Declarer::Kubernetes => Self::Kubernetes,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Declared => "declared",
            Self::Kubernetes => "kubernetes",
            Self::SetCgroup => "set-cgroup",
            Self::SetPid => "set-pid",
            Self::Run => "run",
            Self::NetAdd => "net-add",
            Self::ConnAdd => "conn-add",
            Self::SetNetns => "set-netns",
            Self::Cni => "cni",
            Self::Share => "share",
        }
    }
}

/// Every resource the instance holds, of `kind` or of every kind: declared ones and limits set
/// by hand alike, in the files' shape.
pub fn get(engine: &Engine, kind: Option<Kind>) -> Result<Vec<Listed>> {
    let state = engine.state()?;
    let wanted = |k: Kind| kind.is_none_or(|kind| kind == k);
    let mut listed = Vec::new();
    if wanted(Kind::CgroupLimit) {
        let direction = |spec: Option<LimitSpec>| {
            spec.map(|s| DirectionLimit {
                rate: s.rate,
                burst: s.burst,
            })
        };
        // By owner: the files' and the node agent's resources of one name are two.
        let mut declared: BTreeMap<&str, Listed> = BTreeMap::new();
        for record in &state.cgroup_limits.rules {
            let (name, pattern, origin) = match (&record.declared_by, &record.origin) {
                (Some(by), _) => {
                    let (declarer, name) = Declarer::of(&by.name);
                    let origin = ListedOrigin::declared_by(declarer);
                    (name.to_owned(), by.cgroup.clone(), origin)
                }
                (None, Origin::Cgroup) => (
                    record.cgroup.clone(),
                    record.cgroup.clone(),
                    ListedOrigin::SetCgroup,
                ),
                (None, Origin::Pid { .. }) => (
                    record.cgroup.clone(),
                    record.cgroup.clone(),
                    ListedOrigin::SetPid,
                ),
                (None, Origin::Run { .. }) => (
                    record.cgroup.clone(),
                    record.cgroup.clone(),
                    ListedOrigin::Run,
                ),
            };
            // Written by rein from a valid pattern; a hand-edited state file is shown as is.
            let Ok(cgroup) = CgroupPattern::try_from(pattern) else {
                continue;
            };
            let item = Listed {
                api_version: ApiVersion::V1Alpha1,
                kind: Kind::CgroupLimit,
                metadata: ListedMetadata { name },
                spec: ListedSpec::CgroupLimit(CgroupLimitSpec {
                    scope: LimitScope::Cgroup(cgroup),
                    egress: direction(record.egress),
                    ingress: direction(record.ingress),
                }),
                status: ListedStatus {
                    origin,
                    cgroups: vec![record.cgroup.clone()],
                    rule_id: None,
                },
            };
            match &record.declared_by {
                Some(by) => declared
                    .entry(by.name.as_str())
                    .and_modify(|l| l.status.cgroups.push(record.cgroup.clone()))
                    .or_insert(item),
                None => {
                    listed.push(item);
                    continue;
                }
            };
        }
        listed.extend(declared.into_values());
        for record in &state.netns_limits.rules {
            let (name, origin) = match (&record.declared_by, &record.origin) {
                (Some(by), _) => {
                    let (declarer, name) = Declarer::of(&by.name);
                    (name.to_owned(), ListedOrigin::declared_by(declarer))
                }
                (None, NetnsOrigin::Manual) => (record.netns.clone(), ListedOrigin::SetNetns),
                (None, NetnsOrigin::Cni(_)) => (record.netns.clone(), ListedOrigin::Cni),
            };
            // Written by rein from an absolute path; a hand-edited state file is shown as is.
            let Ok(path) = NetnsPath::try_from(record.netns.clone()) else {
                continue;
            };
            listed.push(Listed {
                api_version: ApiVersion::V1Alpha1,
                kind: Kind::CgroupLimit,
                metadata: ListedMetadata { name },
                spec: ListedSpec::CgroupLimit(CgroupLimitSpec {
                    scope: LimitScope::Netns {
                        path,
                        subnets: record.subnets.clone(),
                    },
                    egress: direction(record.egress),
                    ingress: direction(record.ingress),
                }),
                status: ListedStatus {
                    origin,
                    cgroups: Vec::new(),
                    rule_id: None,
                },
            });
        }
    }
    if wanted(Kind::SharedLimit) {
        for record in &state.shared_limits.groups {
            let (name, origin) = match &record.declared_by {
                Some(by) => {
                    let (declarer, name) = Declarer::of(by);
                    (name.to_owned(), ListedOrigin::declared_by(declarer))
                }
                None => (record.name.clone(), ListedOrigin::Share),
            };
            // The members as they are now, by path (a glob's as expanded when applied).
            let mut cgroups = Vec::new();
            let mut namespaces = Vec::new();
            for member in &record.members {
                match member {
                    Member::Cgroup { path, .. } => {
                        if let Ok(pattern) = CgroupPattern::try_from(path.clone()) {
                            cgroups.push(pattern);
                        }
                    }
                    Member::Netns { path, .. } => {
                        if let Ok(path) = NetnsPath::try_from(path.clone()) {
                            namespaces.push(path);
                        }
                    }
                }
            }
            let direction = |spec: Option<LimitSpec>| {
                spec.map(|s| DirectionLimit {
                    rate: s.rate,
                    burst: s.burst,
                })
            };
            // Written by rein with a direction; a hand-edited state file without is skipped.
            let Ok(spec) = SharedLimitSpec::new(
                cgroups,
                namespaces,
                direction(record.egress),
                direction(record.ingress),
            ) else {
                continue;
            };
            listed.push(Listed {
                api_version: ApiVersion::V1Alpha1,
                kind: Kind::SharedLimit,
                metadata: ListedMetadata { name },
                spec: ListedSpec::SharedLimit(spec),
                status: ListedStatus {
                    origin,
                    cgroups: record.members.iter().map(|m| m.path().to_owned()).collect(),
                    rule_id: None,
                },
            });
        }
    }
    if wanted(Kind::NetRule) {
        for record in &state.net_rules.net {
            let owner = record.declared_by.as_deref().map(Declarer::of);
            let (name, origin) = match owner.map(|(by, owner)| (by, net_rule_owner(owner))) {
                Some((by, (Kind::NetRule, name))) => {
                    (name.to_owned(), ListedOrigin::declared_by(by))
                }
                None if !record.spec.limits_connections() => {
                    (format!("rule-{}", record.id), ListedOrigin::NetAdd)
                }
                // Listed as RateLimits.
                _ => continue,
            };
            listed.push(Listed {
                api_version: ApiVersion::V1Alpha1,
                kind: Kind::NetRule,
                metadata: ListedMetadata { name },
                spec: ListedSpec::NetRule(NetRuleResourceSpec::of_rule(&record.spec)),
                status: ListedStatus {
                    origin,
                    cgroups: Vec::new(),
                    rule_id: Some(record.id),
                },
            });
        }
    }
    if wanted(Kind::RateLimit) {
        let item = |name: String, origin, spec, id| Listed {
            api_version: ApiVersion::V1Alpha1,
            kind: Kind::RateLimit,
            metadata: ListedMetadata { name },
            spec: ListedSpec::RateLimit(spec),
            status: ListedStatus {
                origin,
                cgroups: Vec::new(),
                rule_id: Some(id),
            },
        };
        for record in &state.conn_limits.rules {
            let (name, origin) = match record.declared_by.as_deref().map(Declarer::of) {
                Some((by, name)) => (name.to_owned(), ListedOrigin::declared_by(by)),
                None => (format!("rule-{}", record.id), ListedOrigin::ConnAdd),
            };
            let spec = RateLimitSpec::of_outbound(&record.spec);
            listed.push(item(name, origin, spec, record.id));
        }
        // A hand-made net rule of connections is a `rein conn add --dev` (or a `rein net add
        // --connections`: the same rule).
        for record in &state.net_rules.net {
            let owner = record.declared_by.as_deref().map(Declarer::of);
            let (name, origin) = match owner.map(|(by, owner)| (by, net_rule_owner(owner))) {
                Some((by, (Kind::RateLimit, name))) => {
                    (name.to_owned(), ListedOrigin::declared_by(by))
                }
                None if record.spec.limits_connections() => {
                    (format!("rule-{}", record.id), ListedOrigin::ConnAdd)
                }
                _ => continue,
            };
            let spec = RateLimitSpec::of_inbound(&record.spec);
            listed.push(item(name, origin, spec, record.id));
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_declared_by_without_a_declarer_is_the_files() {
        assert_eq!(Declarer::of("web"), (Declarer::Files, "web"));
        assert_eq!(Declarer::Files.owner("web"), "web");
        let owner = Declarer::Kubernetes.owner("pod.default.web-0");
        assert_eq!(owner, "kubernetes:pod.default.web-0");
        assert_eq!(
            Declarer::of(&owner),
            (Declarer::Kubernetes, "pod.default.web-0")
        );
        // An inbound RateLimit's rule: the declarer first, then the kind.
        let owner = Declarer::Kubernetes.owner(&format!("{RATE_LIMIT_PREFIX}web"));
        let (declarer, rest) = Declarer::of(&owner);
        assert_eq!(
            (declarer, net_rule_owner(rest)),
            (Declarer::Kubernetes, (Kind::RateLimit, "web"))
        );
        // No resource name holds the separator: no file's name reads as the agent's.
        assert!(ResourceName::try_from("kubernetes:web".to_owned()).is_err());
    }

    /// A state file written before there were declarers (version 4, `declared_by` as the
    /// resource's name) loads, its declared resources the files': the node agent's delete of
    /// resources of the same names leaves them, the files' removes them.
    #[test]
    fn a_state_from_before_declarers_holds_the_files_resources() {
        let json = r#"{"version":4,"rules":[{"cgroup":"/web","cgroup_id":7,
            "egress":{"rate":10000000,"burst":null},"ingress":null,"origin":{"kind":"cgroup"},
            "declared_by":{"name":"web","cgroup":"/web"}}],
            "net":[{"id":1,"device":"eth0","hook":"tc-ingress","limit":{"algorithm":
            "token-bucket","per":"bytes","rate":1250000,"burst":65536},"sources":{"kind":
            "shared"},"ifindex":2,"netns":4026531840,"link_id":9,"declared_by":"edge"}],
            "next_net_id":2,
            "netns_limits":{"rules":[{"netns":"/run/netns/pod","cookie":9,"inode":11,
            "egress":{"rate":5000000,"burst":null},"ingress":null,"origin":{"kind":"manual"},
            "declared_by":{"name":"pod","cgroup":"/run/netns/pod"}}]}}"#;
        let dir = std::env::temp_dir().join(format!("rein-declarers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, json).unwrap();
        let state = State::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        let desired = Desired::from_state(&state.unwrap());
        let text = "apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: web\n\
                    spec:\n  cgroup: /web\n  egress:\n    rate: 1mbit\n---\n\
                    apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: pod\n\
                    spec:\n  netns: /run/netns/pod\n  egress:\n    rate: 1mbit\n---\n\
                    apiVersion: rein.dev/v1alpha1\nkind: NetRule\nmetadata:\n  name: edge\n\
                    spec:\n  device: eth0\n  direction: ingress\n  rate: 10mbit\n";
        let resources = Resources {
            items: load::parse(Path::new("f.yaml"), text).unwrap(),
        };
        assert_eq!(resources.items.len(), 3);
        let kept = undeclare(desired.clone(), &resources, Declarer::Kubernetes);
        assert_eq!(kept, desired);
        let removed = undeclare(desired, &resources, Declarer::Files);
        assert!(removed.cgroup_limits.is_empty(), "{removed:?}");
        assert!(removed.netns_limits.is_empty(), "{removed:?}");
        assert!(removed.net_rules.is_empty(), "{removed:?}");
    }
}
