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
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

pub mod load;
pub mod resource;

pub use load::{Declared, LoadOptions, Resources, SourceLocation, load};
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
        netns_limit::{self, Namespace, NetnsOrigin, NetnsRecord, Subnets},
        shared_limit::{Member, SharedName, SharedRecord},
    },
    engine::{Desired, Engine, Plan},
    error::{Error, Result},
    platform::{cgroupfs::Cgroup, netns},
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
pub fn apply(engine: &mut Engine, resources: &Resources, mode: Mode) -> Result<Plan> {
    let mut tx = engine.begin()?;
    let desired = declare(tx.context(), tx.desired(), resources, mode)?;
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
    let desired = declare(engine.context(), engine.desired()?, resources, mode)?;
    engine.plan(&desired)
}

/// Removes what `resources` declared (by kind and name), all-or-nothing; returns what changed.
/// Limits set by hand stay, whatever the files say.
pub fn delete(engine: &mut Engine, resources: &Resources) -> Result<Plan> {
    let mut tx = engine.begin()?;
    let desired = undeclare(tx.desired(), resources);
    let plan = tx.plan(&desired)?;
    tx.apply(&plan)?;
    tx.commit()?;
    Ok(plan)
}

/// What [`delete`] would change; nothing changes.
pub fn plan_delete(engine: &Engine, resources: &Resources) -> Result<Plan> {
    engine.plan(&undeclare(engine.desired()?, resources))
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
    // What the files declare is made anew below; what else was declared stays in a merge.
    let keeps = |declared_by: Option<&str>, named: &HashSet<&str>| match declared_by {
        None => true,
        Some(name) => mode == Mode::Merge && !named.contains(name),
    };
    desired.cgroup_limits.retain(|r| {
        keeps(
            r.declared_by.as_ref().map(|d| d.name.as_str()),
            &limits_named,
        )
    });
    desired.netns_limits.retain(|r| {
        keeps(
            r.declared_by.as_ref().map(|d| d.name.as_str()),
            &limits_named,
        )
    });
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
    desired
        .net_rules
        .retain(|w| match w.declared_by.as_deref() {
            None => true,
            Some(by) => match net_rule_owner(by) {
                (Kind::RateLimit, name) => keeps(Some(name), &rate_limits_named),
                (_, name) => keeps(Some(name), &rules_named),
            },
        });
    let held_conn_rules: HashMap<String, WantedConnRule> = desired
        .conn_rules
        .iter()
        .filter_map(|w| Some((w.declared_by.clone()?, w.clone())))
        .collect();
    desired
        .conn_rules
        .retain(|w| keeps(w.declared_by.as_deref(), &rate_limits_named));
    desired
        .shared_limits
        .retain(|g| keeps(g.declared_by.as_deref(), &shared_named));
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
        .map(|r| (r.cgroup_id, r.declared_by.as_ref().map(|d| d.name.clone())))
        .collect();
    for declared in &resources.items {
        let in_resource = |source: Error| Error::InResource {
            at: declared.location.to_string(),
            kind: declared.resource.kind().name(),
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
                            name: name.to_owned(),
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
                    declared_by: Some(name.to_owned()),
                });
            }
            Resource::NetRule(manifest) => {
                let name = manifest.metadata.name.as_str();
                let spec = manifest.spec.rule();
                let held = held_rules.get(name);
                want_net_rule(&mut desired, held, spec, name.to_owned(), name, mode)
                    .map_err(in_resource)?;
            }
            Resource::RateLimit(manifest) => {
                let name = manifest.metadata.name.as_str();
                match manifest.spec.rule() {
                    RateLimitRule::Outbound(rule) => {
                        let held = held_conn_rules.get(name);
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
                            declared_by: Some(name.to_owned()),
                        });
                    }
                    RateLimitRule::Inbound(spec) => {
                        let declared_by = format!("{RATE_LIMIT_PREFIX}{name}");
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
                    owner: other.name.clone(),
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
            name: name.to_owned(),
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

/// `desired` without what `resources` declared.
fn undeclare(mut desired: Desired, resources: &Resources) -> Desired {
    let named: HashSet<(Kind, &str)> = resources
        .items
        .iter()
        .map(|d| (d.resource.kind(), d.resource.name().as_str()))
        .collect();
    desired.cgroup_limits.retain(|r| {
        r.declared_by
            .as_ref()
            .is_none_or(|d| !named.contains(&(Kind::CgroupLimit, d.name.as_str())))
    });
    desired.netns_limits.retain(|r| {
        r.declared_by
            .as_ref()
            .is_none_or(|d| !named.contains(&(Kind::CgroupLimit, d.name.as_str())))
    });
    desired.net_rules.retain(|w| {
        w.declared_by
            .as_deref()
            .is_none_or(|by| !named.contains(&net_rule_owner(by)))
    });
    desired.conn_rules.retain(|w| {
        w.declared_by
            .as_deref()
            .is_none_or(|name| !named.contains(&(Kind::RateLimit, name)))
    });
    desired.shared_limits.retain(|g| {
        g.declared_by
            .as_deref()
            .is_none_or(|name| !named.contains(&(Kind::SharedLimit, name)))
    });
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
    pub fn name(self) -> &'static str {
        match self {
            Self::Declared => "declared",
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
        let mut declared: BTreeMap<&str, Listed> = BTreeMap::new();
        for record in &state.cgroup_limits.rules {
            let (name, pattern, origin) = match (&record.declared_by, &record.origin) {
                (Some(by), _) => (by.name.clone(), by.cgroup.clone(), ListedOrigin::Declared),
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
                (Some(by), _) => (by.name.clone(), ListedOrigin::Declared),
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
                Some(name) => (name.clone(), ListedOrigin::Declared),
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
            let (name, origin) = match record.declared_by.as_deref().map(net_rule_owner) {
                Some((Kind::NetRule, name)) => (name.to_owned(), ListedOrigin::Declared),
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
            let (name, origin) = match &record.declared_by {
                Some(name) => (name.clone(), ListedOrigin::Declared),
                None => (format!("rule-{}", record.id), ListedOrigin::ConnAdd),
            };
            let spec = RateLimitSpec::of_outbound(&record.spec);
            listed.push(item(name, origin, spec, record.id));
        }
        // A hand-made net rule of connections is a `rein conn add --dev` (or a `rein net add
        // --connections`: the same rule).
        for record in &state.net_rules.net {
            let (name, origin) = match record.declared_by.as_deref().map(net_rule_owner) {
                Some((Kind::RateLimit, name)) => (name.to_owned(), ListedOrigin::Declared),
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
