//! Shared limits: one token bucket per direction for several cgroups and network namespaces at
//! once, so that their traffic together holds at the limit (a Kubernetes policy over every
//! selected pod of a node, say). The bucket is the rule of a group scope
//! (`rein_common::group_scope`); each member's scope holds a member rule
//! (`rein_common::Action::Member`) that the cgroup programs follow to it, one hop, so
//! everything that charges, refunds or shares a rule acts on the group, while each member
//! keeps counters of its own. The maps and programs are the cgroup limits'.
//!
//! Downloads under a shared ingress limit are policed by the group's bucket, with the members'
//! receive windows held at their share; they go through no queue (a queue is a device in one
//! namespace, and the members may be in many).
use std::{
    collections::{HashMap, HashSet},
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use rein_common::{Direction, Rule, RuleKey, scope_group};
use serde::Serialize;

mod spec;

pub use spec::{Member, Section, SharedRecord, next_group};

use super::{
    Capability, Context, PreparedReload,
    cgroup_limit::{
        self, DirectionView, LimitSpec, Origin,
        datapath::{DIRECTIONS, Datapath},
    },
    netns_limit::{Namespace, NetnsOrigin},
    rule_steps::plan_keyed,
};
use crate::{
    declarative::shown_owner,
    engine::{Desired, Engine, Plan, PurgeReport, Step},
    error::{Error, Result},
    platform::procfs,
    store::{State, Undo},
};

/// A shared limit's name: 1 to 253 characters of a-z, 0-9, `-`, `_` and `.`, starting with a
/// letter or digit (a Kubernetes object's name fits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SharedName(String);

impl SharedName {
    pub fn new(name: &str) -> Result<Self> {
        let good = (1..=253).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if good {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::BadSharedName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A member as a command names it, before it is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberRequest {
    /// An existing cgroup v2 (a directory, or a path from the v2 root).
    Cgroup(PathBuf),
    /// The cgroup a running process is in (the process is not moved).
    Pid(u32),
    /// A network namespace by path.
    Netns(PathBuf),
}

/// A shared limit as a command states it: all of it, members included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedRequest {
    pub name: SharedName,
    pub egress: Option<LimitSpec>,
    pub ingress: Option<LimitSpec>,
    pub members: Vec<MemberRequest>,
}

/// The member a request names, looked up now.
pub(crate) fn resolve_member(cx: &Context, request: &MemberRequest) -> Result<Member> {
    match request {
        MemberRequest::Cgroup(path) => {
            let cgroup = cx.cgroups.resolve(path)?;
            Ok(Member::Cgroup {
                id: cgroup.id()?,
                path: cgroup.relative().to_owned(),
            })
        }
        MemberRequest::Pid(pid) => {
            if !procfs::process_exists(*pid) {
                return Err(Error::NoSuchProcess(*pid));
            }
            let cgroup = cx.cgroups.of_pid(*pid)?;
            // The process's cgroup as a path: the root is refused as `--cgroup /` would be.
            let cgroup = cx.cgroups.resolve(Path::new(cgroup.relative()))?;
            Ok(Member::Cgroup {
                id: cgroup.id()?,
                path: cgroup.relative().to_owned(),
            })
        }
        MemberRequest::Netns(path) => {
            let namespace = Namespace::open(path)?;
            Ok(Member::Netns {
                path: namespace.path,
                cookie: namespace.cookie,
                inode: namespace.inode,
            })
        }
    }
}

/// Makes a shared limit, or changes one to exactly `request`: its limits and members are
/// replaced; its group (and so its bucket) stays.
pub fn share(engine: &mut Engine, request: &SharedRequest) -> Result<SharedRecord> {
    if request.egress.is_none() && request.ingress.is_none() {
        return Err(Error::NothingToSet);
    }
    let tx = engine.begin()?;
    let cx = tx.context().clone();
    let mut members: Vec<Member> = Vec::new();
    for wanted in &request.members {
        let member = resolve_member(&cx, wanted)?;
        if !members.iter().any(|m| m.scope() == member.scope()) {
            members.push(member);
        }
    }
    let existing = tx
        .state()
        .shared_limits
        .find(request.name.as_str())
        .cloned();
    if let Some(by) = existing.as_ref().and_then(|r| r.declared_by.as_ref()) {
        return Err(Error::SharedDeclared {
            name: request.name.as_str().to_owned(),
            owner: shown_owner(by),
        });
    }
    let mut desired = tx.desired();
    let record = SharedRecord {
        name: request.name.as_str().to_owned(),
        group: existing
            .as_ref()
            .map_or_else(|| next_group(&desired.shared_limits), |r| r.group),
        members,
        egress: request.egress,
        ingress: request.ingress,
        declared_by: None,
    };
    upsert(&mut desired, record.clone());
    carry_out(tx, &desired)?;
    Ok(record)
}

/// Removes a shared limit: its members' rules, then its group's.
pub fn unshare(engine: &mut Engine, name: &SharedName) -> Result<SharedRecord> {
    let tx = engine.begin()?;
    let record = tx
        .state()
        .shared_limits
        .find(name.as_str())
        .cloned()
        .ok_or_else(|| Error::NoSuchShared(name.as_str().to_owned()))?;
    let mut desired = tx.desired();
    desired.shared_limits.retain(|g| g.name != record.name);
    carry_out(tx, &desired)?;
    Ok(record)
}

fn carry_out(mut tx: crate::engine::Transaction<'_>, desired: &Desired) -> Result<()> {
    let plan = tx.plan(desired)?;
    tx.apply(&plan)?;
    tx.commit()
}

fn upsert(desired: &mut Desired, record: SharedRecord) {
    match desired
        .shared_limits
        .iter_mut()
        .find(|g| g.name == record.name)
    {
        Some(existing) => *existing = record,
        None => desired.shared_limits.push(record),
    }
}

/// One shared limit as `list` shows it: the group's limits with its members' traffic summed,
/// and each member's own.
#[derive(Clone, Debug, Serialize)]
pub struct SharedView {
    pub name: String,
    pub group: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
    pub members: Vec<MemberView>,
    pub egress: Option<DirectionView>,
    pub ingress: Option<DirectionView>,
}

/// A member's own traffic under its shared limit.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// `cgroup` or `netns`.
    pub kind: &'static str,
    pub path: String,
    pub egress: Option<MemberTraffic>,
    pub ingress: Option<MemberTraffic>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberTraffic {
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

/// Every shared limit with its counters. Only reads (see `Status::read`).
pub fn status(cx: &Context, state: &State) -> Result<Vec<SharedView>> {
    let datapath = cgroup_limit::open_for_reading(cx)?;
    let now = cx.now_ns();
    Ok(state
        .shared_limits
        .groups
        .iter()
        .map(|record| {
            let traffic = |member: &Member, direction: Direction| {
                record.spec(direction)?;
                let counters = datapath
                    .as_ref()
                    .map(|d| d.counters(RuleKey::new(member.scope(), direction)))
                    .unwrap_or_default();
                Some(MemberTraffic {
                    passed_packets: counters.passed_packets,
                    passed_bytes: counters.passed_bytes,
                    dropped_packets: counters.dropped_packets,
                    dropped_bytes: counters.dropped_bytes,
                })
            };
            let members: Vec<MemberView> = record
                .members
                .iter()
                .map(|member| MemberView {
                    kind: match member {
                        Member::Cgroup { .. } => "cgroup",
                        Member::Netns { .. } => "netns",
                    },
                    path: member.path().to_owned(),
                    egress: traffic(member, Direction::Egress),
                    ingress: traffic(member, Direction::Ingress),
                })
                .collect();
            let view = |direction: Direction| {
                let mut view = cgroup_limit::direction_view(
                    datapath.as_ref(),
                    RuleKey::new(record.scope(), direction),
                    record.spec(direction),
                    now,
                )?;
                // The group's rule counts nothing itself: its members do.
                for member in &members {
                    let own = match direction {
                        Direction::Egress => member.egress.as_ref(),
                        Direction::Ingress => member.ingress.as_ref(),
                    };
                    if let Some(own) = own {
                        view.passed_packets += own.passed_packets;
                        view.passed_bytes += own.passed_bytes;
                        view.dropped_packets += own.dropped_packets;
                        view.dropped_bytes += own.dropped_bytes;
                    }
                }
                Some(view)
            };
            SharedView {
                name: record.name.clone(),
                group: record.group,
                declared_by: record.declared_by.clone(),
                egress: view(Direction::Egress),
                ingress: view(Direction::Ingress),
                members,
            }
        })
        .collect())
}

/// Who holds a scope in `desired`, for the error that refuses a second holder.
fn owners(desired: &Desired) -> HashMap<u64, String> {
    let mut owners = HashMap::new();
    for record in &desired.cgroup_limits {
        let owner = match (&record.declared_by, &record.origin) {
            (Some(by), _) => format!("CgroupLimit {}", shown_owner(&by.name)),
            (None, Origin::Cgroup) => "a limit of its own (rein set --cgroup)".to_owned(),
            (None, Origin::Pid { pid, .. }) => format!("a limit of its own (rein set --pid {pid})"),
            (None, Origin::Run { owner }) => format!("the rein run of pid {owner}"),
        };
        owners.insert(record.cgroup_id, owner);
    }
    for record in &desired.netns_limits {
        let owner = match (&record.declared_by, &record.origin) {
            (Some(by), _) => format!("CgroupLimit {}", shown_owner(&by.name)),
            (None, NetnsOrigin::Manual) => "a limit of its own (rein set --netns)".to_owned(),
            (None, NetnsOrigin::Cni(a)) => {
                format!("the CNI plugin for container {}", a.container_id)
            }
        };
        owners.insert(rein_common::netns_scope(record.cookie), owner);
    }
    owners
}

/// Refuses a desired state where a member has a limit of its own or is in two shared limits,
/// or where one cgroup member is below another of the same limit (its traffic would be
/// charged twice).
fn check_members(desired: &Desired) -> Result<()> {
    let mut owners = owners(desired);
    for record in &desired.shared_limits {
        for member in &record.members {
            if let Some(owner) = owners.get(&member.scope()) {
                return Err(Error::MemberOwnedElsewhere {
                    member: member.label(),
                    shared: record.name.clone(),
                    owner: owner.clone(),
                });
            }
        }
        for member in &record.members {
            owners.insert(member.scope(), format!("shared limit {}", record.name));
        }
        // Policed without a queue, two downloads got 0.4 of such a limit, with retransmissions.
        if record.ingress.is_some()
            && let Some(Member::Netns { path, .. }) = record
                .members
                .iter()
                .find(|m| matches!(m, Member::Netns { .. }))
        {
            return Err(Error::SharedIngressOfNetns {
                shared: record.name.clone(),
                netns: path.clone(),
            });
        }
        for outer in &record.members {
            for inner in &record.members {
                if let (Member::Cgroup { path: o, .. }, Member::Cgroup { path: i, .. }) =
                    (outer, inner)
                    && o != i
                    && (o == "/" || i.starts_with(&format!("{o}/")))
                {
                    return Err(Error::NestedMembers {
                        shared: record.name.clone(),
                        outer: o.clone(),
                        inner: i.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Writes a member's rule in each direction the group limits, and removes it from the others.
fn write_member(
    datapath: &mut Datapath,
    cx: &Context,
    record: &SharedRecord,
    member: &Member,
    undo: &mut Undo,
) -> Result<()> {
    let wanted = Rule::member(record.scope());
    for direction in DIRECTIONS {
        let key = RuleKey::new(member.scope(), direction);
        let previous = datapath.rule(key);
        match record.spec(direction) {
            Some(_) if previous == Some(wanted) => continue,
            Some(_) => datapath.put_rule(key, wanted)?,
            None if previous.is_some_and(|p| p.group() == Some(record.scope())) => {
                datapath.remove_rule(key);
            }
            None => continue,
        }
        cgroup_limit::undo_rule(cx, undo, key, previous);
    }
    Ok(())
}

/// Removes a member's rules that still point at the group `group` (another limit may have
/// taken the scope over in the same plan).
fn remove_member(cx: &Context, group: u64, member: &Member, undo: &mut Undo) -> Result<()> {
    cgroup_limit::remove_rules_where(
        cx,
        member.scope(),
        |previous| previous.is_some_and(|p| p.group() == Some(group)),
        undo,
    )
}

/// Makes a shared limit or changes it: the group's rules first (a changed limit in place,
/// keeping the bucket), then the members that left go and the new ones come.
struct SetShared {
    before: Option<SharedRecord>,
    after: SharedRecord,
}

impl fmt::Display for SetShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.before.is_some() {
            "change"
        } else {
            "make"
        };
        write!(
            f,
            "{verb} shared limit {} of {} members",
            self.after.name,
            self.after.members.len()
        )?;
        cgroup_limit::write_limits(f, |d| self.after.spec(d))
    }
}

impl Step for SetShared {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let after = &self.after;
        cgroup_limit::write_scope_rules(cx, after.scope(), |d| after.spec(d), 0, undo)?;
        let staying: HashSet<u64> = after.members.iter().map(Member::scope).collect();
        if let Some(before) = &self.before {
            for member in &before.members {
                if !staying.contains(&member.scope()) || before.group != after.group {
                    remove_member(cx, before.scope(), member, undo)?;
                }
            }
            if before.group != after.group {
                cgroup_limit::remove_rules(cx, before.scope(), undo)?;
            }
        }
        let mut datapath = Datapath::open(&cx.instance)?;
        for member in &after.members {
            write_member(&mut datapath, cx, after, member, undo)?;
        }
        state.shared_limits.upsert(after.clone());
        Ok(())
    }
}

/// Removes a shared limit: its members' rules, then its group's.
struct RemoveShared {
    record: SharedRecord,
}

impl fmt::Display for RemoveShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "remove shared limit {}", self.record.name)
    }
}

impl Step for RemoveShared {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        for member in &self.record.members {
            remove_member(cx, self.record.scope(), member, undo)?;
        }
        cgroup_limit::remove_rules(cx, self.record.scope(), undo)?;
        state.shared_limits.remove(&self.record.name);
        Ok(())
    }
}

/// Whether a member's cgroup or namespace is still the one it was.
fn is_alive(cx: &Context, member: &Member) -> bool {
    match member {
        Member::Cgroup { path, id } => cx
            .cgroups
            .at(path)
            .is_ok_and(|c| c.exists() && c.id().ok() == Some(*id)),
        Member::Netns { path, inode, .. } => fs::metadata(path).is_ok_and(|m| m.ino() == *inode),
    }
}

/// Whether `key` holds a member's rule (which the cgroup and namespace limits leave alone).
pub(crate) fn is_member_rule(datapath: &Datapath, key: RuleKey) -> bool {
    datapath.rule(key).is_some_and(|r| r.group().is_some())
}

/// The shared limits, as the engine drives them.
pub(crate) struct SharedLimits;

impl Capability for SharedLimits {
    fn name(&self) -> &'static str {
        "shared limits"
    }

    fn plan(&self, _cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        check_members(desired)?;
        plan_keyed(
            plan,
            &state.shared_limits.groups,
            &desired.shared_limits,
            |g| g.name.clone(),
            |record| RemoveShared { record },
            |before, after| SetShared { before, after },
        );
        Ok(())
    }

    /// The programs and maps are the cgroup limits'.
    fn is_installed(&self, _cx: &Context) -> bool {
        false
    }

    fn prepare_reload(&self, _cx: &Context) -> Result<Option<Box<dyn PreparedReload>>> {
        Ok(None)
    }

    fn restore(&self, cx: &Context, state: &State, undo: &mut Undo) -> Result<usize> {
        if !Datapath::is_installed(&cx.instance) {
            return Ok(0);
        }
        let mut restored = 0;
        for record in &state.shared_limits.groups {
            let datapath = Datapath::open(&cx.instance)?;
            if cgroup_limit::scope_rule_missing(&datapath, record.scope(), |d| record.spec(d)) {
                cgroup_limit::write_scope_rules(cx, record.scope(), |d| record.spec(d), 0, undo)?;
                restored += 1;
            }
            let mut datapath = Datapath::open(&cx.instance)?;
            for member in &record.members {
                write_member(&mut datapath, cx, record, member, undo)?;
            }
        }
        Ok(restored)
    }

    /// Drops the members whose cgroup or namespace is gone (the limit stays, with the others),
    /// then the group and member rules in the maps that no record owns.
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        for record in &mut state.shared_limits.groups {
            let name = record.name.clone();
            record.members.retain(|member| {
                let alive = is_alive(cx, member);
                if !alive {
                    tracing::info!(
                        "removing the vanished {} from shared limit {name}",
                        member.label()
                    );
                }
                alive
            });
        }
        if !Datapath::is_installed(&cx.instance) {
            return Ok(());
        }
        let mut datapath = Datapath::open(&cx.instance)?;
        let groups: HashSet<u64> = state
            .shared_limits
            .groups
            .iter()
            .map(SharedRecord::scope)
            .collect();
        let members: HashSet<(u64, u64)> = state
            .shared_limits
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| (m.scope(), g.scope())))
            .collect();
        for key in datapath.rule_keys() {
            let orphan = match scope_group(key.cgroup_id) {
                Some(_) => !groups.contains(&key.cgroup_id),
                None => datapath
                    .rule(key)
                    .and_then(|r| r.group())
                    .is_some_and(|group| !members.contains(&(key.cgroup_id, group))),
            };
            if orphan {
                tracing::info!(
                    "removing the orphaned shared rule of scope {:#x}",
                    key.cgroup_id
                );
                datapath.remove_rule(key);
            }
        }
        Ok(())
    }

    /// The datapath is the cgroup limits' to remove, which they do once none has a limit.
    fn remove_if_unused(&self, _cx: &Context, _state: &State) {}

    fn purge(&self, _cx: &Context, state: &State, report: &mut PurgeReport) {
        report.rules += state.shared_limits.groups.len();
    }
}
