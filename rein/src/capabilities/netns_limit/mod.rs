//! Limits per network namespace: every socket of a namespace shares one token bucket per
//! direction, in the same cgroup programs and maps as the cgroup limits (a rule's scope is a
//! namespace, see `rein_common::netns_scope`), TCP flows paced (egress) or windowed and queued
//! (ingress) at their share; the queue is a device in the namespace itself. A pod is one
//! network namespace, known to the CNI plugin by path before any container starts: the plugin
//! sets its limit through [`attach`].
use std::{collections::HashSet, fmt, fs, os::unix::fs::MetadataExt, path::Path};

use ipnet::IpNet;
use rein_common::{
    Direction, MAX_SUBNETS, RULE_SHAPED_SUBNETS, RULE_UNSHAPED_SUBNETS, RuleKey, SubnetKey,
    netns_scope, scope_netns,
};
use serde::Serialize;

mod spec;

pub use spec::{Attachment, NetnsChange, NetnsLimit, NetnsOrigin, NetnsRecord, Section, Subnets};

use super::{
    Capability, Context, PreparedReload,
    cgroup_limit::{
        self, DirectionView, LimitSpec,
        datapath::{DIRECTIONS, Datapath},
    },
    rule_steps::plan_keyed,
};
use crate::{
    engine::{Desired, Engine, Plan, PurgeReport, Step, Transaction},
    error::{Error, Result},
    platform::netns,
    store::{State, Undo},
};

/// A network namespace as a path named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Namespace {
    pub path: String,
    pub cookie: u64,
    pub inode: u64,
}

impl Namespace {
    /// The namespace at `path`: an error naming the path when there is none (a missing path,
    /// or one that is not a network namespace).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let missing = || Error::NoSuchNetns(path.to_owned());
        let inode = fs::metadata(path).map_err(|_| missing())?.ino();
        let cookie = netns::cookie_of(path).map_err(|_| missing())?;
        Ok(Self {
            path: path.display().to_string(),
            cookie,
            inode,
        })
    }
}

/// Whether the record's path still leads to its namespace.
fn is_alive(record: &NetnsRecord) -> bool {
    fs::metadata(&record.netns).is_ok_and(|m| m.ino() == record.inode)
}

/// One limited namespace as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsView {
    pub netns: String,
    pub cookie: u64,
    pub origin: NetnsOrigin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Subnets>,
    pub egress: Option<DirectionView>,
    pub ingress: Option<DirectionView>,
}

/// Every limited namespace with its limits and counters. Only reads (see `Status::read`).
pub fn status(cx: &Context, state: &State) -> Result<Vec<NetnsView>> {
    let datapath = cgroup_limit::open_for_reading(cx)?;
    let now = cx.now_ns();
    Ok(state
        .netns_limits
        .rules
        .iter()
        .map(|record| {
            let view = |direction| {
                cgroup_limit::direction_view(
                    datapath.as_ref(),
                    RuleKey::netns(record.cookie, direction),
                    record.spec(direction),
                    now,
                )
            };
            NetnsView {
                netns: record.netns.clone(),
                cookie: record.cookie,
                origin: record.origin.clone(),
                declared_by: record.declared_by.as_ref().map(|by| by.name.clone()),
                subnets: record.subnets.clone(),
                egress: view(Direction::Egress),
                ingress: view(Direction::Ingress),
            }
        })
        .collect())
}

/// Limits a network namespace by hand, or changes its limit: what `change` leaves `None`
/// stays as it was. A namespace a CNI runtime limited is the runtime's to change.
pub fn set(engine: &mut Engine, netns: &Path, change: NetnsChange) -> Result<NetnsRecord> {
    if change == NetnsChange::default() {
        return Err(Error::NothingToSet);
    }
    let namespace = Namespace::open(netns)?;
    let tx = engine.begin()?;
    let existing = tx.state().netns_limits.find(namespace.cookie).cloned();
    if let Some(attachment) = existing.as_ref().and_then(NetnsRecord::attachment) {
        return Err(owned_by(&namespace.path, attachment));
    }
    let spec = |direction: Direction| {
        change.applied_to(existing.as_ref().and_then(|r| r.spec(direction)), direction)
    };
    let (egress, ingress) = (spec(Direction::Egress), spec(Direction::Ingress));
    if egress.is_none() && ingress.is_none() {
        return Err(Error::BurstWithoutRate(namespace.path));
    }
    let record = NetnsRecord {
        netns: namespace.path,
        cookie: namespace.cookie,
        inode: namespace.inode,
        egress,
        ingress,
        subnets: existing.as_ref().and_then(|r| r.subnets.clone()),
        origin: NetnsOrigin::Manual,
        declared_by: existing.and_then(|r| r.declared_by),
    };
    let mut desired = tx.desired();
    upsert(&mut desired, record.clone());
    carry_out(tx, &desired)?;
    Ok(record)
}

/// Removes a namespace's limit, whoever set it. A namespace that is gone is found by the path
/// it was limited by.
pub fn unset(engine: &mut Engine, netns: &Path) -> Result<NetnsRecord> {
    let tx = engine.begin()?;
    let shown = netns.display().to_string();
    let record = match Namespace::open(netns) {
        Ok(namespace) => tx.state().netns_limits.find(namespace.cookie).cloned(),
        Err(_) => tx
            .state()
            .netns_limits
            .rules
            .iter()
            .find(|r| r.netns == shown)
            .cloned(),
    }
    .ok_or(Error::NotLimited(shown))?;
    let mut desired = tx.desired();
    desired.netns_limits.retain(|r| r.cookie != record.cookie);
    carry_out(tx, &desired)?;
    Ok(record)
}

/// Sets the limit of a CNI attachment's namespace to exactly `limit` (CNI ADD): idempotent;
/// an empty limit removes any the attachment had. A namespace limited by hand, or for another
/// attachment, is refused.
pub fn attach(
    engine: &mut Engine,
    netns: &Path,
    attachment: Attachment,
    limit: NetnsLimit,
) -> Result<Option<NetnsRecord>> {
    check_subnet_count(limit.subnets.as_ref(), 0)?;
    let namespace = Namespace::open(netns)?;
    let tx = engine.begin()?;
    let held = &tx.state().netns_limits;
    if let Some(other) = held.find(namespace.cookie)
        && other.attachment() != Some(&attachment)
    {
        return Err(match other.attachment() {
            Some(theirs) => owned_by(&namespace.path, theirs),
            None => Error::NetnsOwnedElsewhere {
                netns: namespace.path,
                owner: "hand (`rein set --netns`)".into(),
            },
        });
    }
    let others: usize = held
        .rules
        .iter()
        .filter(|r| r.attachment() != Some(&attachment))
        .filter_map(|r| r.subnets.as_ref())
        .map(|s| s.nets().len())
        .sum();
    check_subnet_count(limit.subnets.as_ref(), others)?;
    let mut desired = tx.desired();
    // The attachment's record of a namespace it had before (a runtime that re-ran ADD for a
    // new sandbox) goes with it.
    desired
        .netns_limits
        .retain(|r| r.attachment() != Some(&attachment));
    let record = (limit.egress.is_some() || limit.ingress.is_some()).then_some(NetnsRecord {
        netns: namespace.path,
        cookie: namespace.cookie,
        inode: namespace.inode,
        egress: limit.egress,
        ingress: limit.ingress,
        subnets: limit.subnets,
        origin: NetnsOrigin::Cni(attachment),
        declared_by: None,
    });
    if let Some(record) = &record {
        desired.netns_limits.push(record.clone());
    }
    carry_out(tx, &desired)?;
    Ok(record)
}

/// Removes what rein made for a CNI attachment (CNI DEL): succeeds, with `None`, when there is
/// nothing, and when the namespace is already gone.
pub fn detach(
    engine: &mut Engine,
    container_id: &str,
    ifname: &str,
) -> Result<Option<NetnsRecord>> {
    let tx = engine.begin()?;
    let Some(record) = tx
        .state()
        .netns_limits
        .find_attachment(container_id, ifname)
        .cloned()
    else {
        return Ok(None);
    };
    let mut desired = tx.desired();
    desired.netns_limits.retain(|r| r.cookie != record.cookie);
    carry_out(tx, &desired)?;
    Ok(Some(record))
}

/// Checks that a CNI attachment's namespace holds exactly `limit` (CNI CHECK): in the state, in
/// the kernel's rules and subnets, and in its ingress queue. `Error::LimitDrifted` says what
/// differs.
pub fn check(
    engine: &mut Engine,
    netns: &Path,
    attachment: &Attachment,
    limit: &NetnsLimit,
) -> Result<()> {
    let shown = netns.display().to_string();
    let drifted = |what: String| Error::LimitDrifted {
        netns: shown.clone(),
        what,
    };
    let state = engine.state()?;
    let record = state
        .netns_limits
        .find_attachment(&attachment.container_id, &attachment.ifname);
    let Some(record) = record else {
        if limit.egress.is_none() && limit.ingress.is_none() {
            return Ok(());
        }
        return Err(drifted("rein holds no limit for this attachment".into()));
    };
    let namespace = Namespace::open(netns)?;
    if namespace.cookie != record.cookie {
        return Err(drifted(format!(
            "the limit is on another namespace ({})",
            record.netns
        )));
    }
    for direction in DIRECTIONS {
        let (wanted, held) = (spec_of(limit, direction), record.spec(direction));
        if wanted != held {
            return Err(drifted(format!(
                "{} is {} in rein's state, {} in the configuration",
                direction_name(direction),
                describe(held),
                describe(wanted)
            )));
        }
    }
    if limit.subnets != record.subnets {
        return Err(drifted(
            "the subnets in rein's state differ from the configuration".into(),
        ));
    }
    let cx = engine.context().clone();
    let datapath = cgroup_limit::open_for_reading(&cx)?;
    let scope = netns_scope(record.cookie);
    for direction in DIRECTIONS {
        let key = RuleKey::new(scope, direction);
        let kernel = datapath.as_ref().and_then(|d| d.rule(key));
        match (record.spec(direction), kernel) {
            (Some(spec), Some(rule)) => {
                let wanted = spec.effective().rule(0);
                if (rule.rate, rule.bucket.burst_ns, rule.flags)
                    != (
                        wanted.rate,
                        wanted.bucket.burst_ns,
                        flags(record.subnets.as_ref()),
                    )
                {
                    return Err(drifted(format!(
                        "the kernel's {} rule is not the one rein set",
                        direction_name(direction)
                    )));
                }
            }
            (Some(_), None) => {
                return Err(drifted(format!(
                    "the kernel has no {} rule",
                    direction_name(direction)
                )));
            }
            (None, Some(_)) => {
                return Err(drifted(format!(
                    "the kernel has an {} rule rein did not set",
                    direction_name(direction)
                )));
            }
            (None, None) => {}
        }
    }
    let mut held_subnets = match &datapath {
        Some(d) => d.subnets(scope)?,
        None => Vec::new(),
    };
    let mut wanted_subnets = subnet_keys(scope, record.subnets.as_ref());
    held_subnets.sort_by_key(|(key, len)| (key.address, *len));
    wanted_subnets.sort_by_key(|(key, len)| (key.address, *len));
    if held_subnets != wanted_subnets {
        return Err(drifted(
            "the kernel's subnets are not the ones rein set".into(),
        ));
    }
    if record.ingress.is_some() && !super::ingress_queue::is_queued(&cx, scope, &record.netns) {
        return Err(drifted("the ingress queue is missing".into()));
    }
    Ok(())
}

/// Removes the limits of the attachments to `network` that are not in `valid` (CNI GC, whose
/// `cni.dev/valid-attachments` lists the container id and ifname of each); returns what went.
pub fn collect(
    engine: &mut Engine,
    network: &str,
    valid: &HashSet<(String, String)>,
) -> Result<Vec<NetnsRecord>> {
    let tx = engine.begin()?;
    let gone: Vec<NetnsRecord> = tx
        .state()
        .netns_limits
        .rules
        .iter()
        .filter(|r| {
            r.attachment().is_some_and(|a| {
                a.network == network && !valid.contains(&(a.container_id.clone(), a.ifname.clone()))
            })
        })
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(gone);
    }
    let cookies: HashSet<u64> = gone.iter().map(|r| r.cookie).collect();
    let mut desired = tx.desired();
    desired
        .netns_limits
        .retain(|r| !cookies.contains(&r.cookie));
    carry_out(tx, &desired)?;
    Ok(gone)
}

/// Plans the transaction's way to `desired`, applies it and commits.
fn carry_out(mut tx: Transaction<'_>, desired: &Desired) -> Result<()> {
    let plan = tx.plan(desired)?;
    tx.apply(&plan)?;
    tx.commit()
}

fn owned_by(netns: &str, attachment: &Attachment) -> Error {
    Error::NetnsOwnedElsewhere {
        netns: netns.to_owned(),
        owner: format!(
            "the CNI plugin for container {} ({} on network {})",
            attachment.container_id, attachment.ifname, attachment.network
        ),
    }
}

fn spec_of(limit: &NetnsLimit, direction: Direction) -> Option<LimitSpec> {
    match direction {
        Direction::Egress => limit.egress,
        Direction::Ingress => limit.ingress,
    }
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    }
}

fn describe(spec: Option<LimitSpec>) -> String {
    match spec {
        None => "unlimited".into(),
        Some(spec) => {
            let limit = spec.effective();
            format!("{} burst {}", limit.rate, limit.burst)
        }
    }
}

pub(crate) fn check_subnet_count(subnets: Option<&Subnets>, others: usize) -> Result<()> {
    let count = others + subnets.map_or(0, |s| s.nets().len());
    if count > MAX_SUBNETS as usize {
        return Err(Error::TooManySubnets {
            count,
            max: MAX_SUBNETS,
        });
    }
    Ok(())
}

/// The rule flags that say how a limit's subnets count.
fn flags(subnets: Option<&Subnets>) -> u32 {
    match subnets {
        None => 0,
        Some(Subnets::Shaped(_)) => RULE_SHAPED_SUBNETS,
        Some(Subnets::Unshaped(_)) => RULE_UNSHAPED_SUBNETS,
    }
}

/// The subnet map's entries for a scope's subnets: IPv4 as v4-mapped IPv6.
fn subnet_keys(scope: u64, subnets: Option<&Subnets>) -> Vec<(SubnetKey, u32)> {
    let Some(subnets) = subnets else {
        return Vec::new();
    };
    subnets
        .nets()
        .iter()
        .map(|net| match net.trunc() {
            IpNet::V4(v4) => (
                SubnetKey::new(scope, v4.addr().to_ipv6_mapped().octets()),
                SubnetKey::SCOPE_BITS + 96 + u32::from(v4.prefix_len()),
            ),
            IpNet::V6(v6) => (
                SubnetKey::new(scope, v6.addr().octets()),
                SubnetKey::SCOPE_BITS + u32::from(v6.prefix_len()),
            ),
        })
        .collect()
}

fn upsert(desired: &mut Desired, record: NetnsRecord) {
    match desired
        .netns_limits
        .iter_mut()
        .find(|r| r.cookie == record.cookie)
    {
        Some(existing) => *existing = record,
        None => desired.netns_limits.push(record),
    }
}

/// Writes a scope's subnets: those it had and `wanted` does not name go, the others are
/// added; the undo puts back what it had.
fn write_subnets(
    cx: &Context,
    scope: u64,
    wanted: Option<&Subnets>,
    undo: &mut Undo,
) -> Result<()> {
    if wanted.is_none() && !Datapath::is_installed(&cx.instance) {
        return Ok(());
    }
    let mut datapath = cgroup_limit::datapath(cx, undo)?;
    let held = datapath.subnets(scope)?;
    let wanted = subnet_keys(scope, wanted);
    let instance = cx.instance.clone();
    let (before, after) = (held.clone(), wanted.clone());
    undo.push(move || {
        if let Ok(mut datapath) = Datapath::open(&instance) {
            for (key, len) in &after {
                datapath.remove_subnet(*key, *len);
            }
            for (key, len) in &before {
                let _ = datapath.put_subnet(*key, *len);
            }
        }
    });
    for (key, len) in &held {
        if !wanted.contains(&(*key, *len)) {
            datapath.remove_subnet(*key, *len);
        }
    }
    for (key, len) in &wanted {
        datapath.put_subnet(*key, *len)?;
    }
    Ok(())
}

/// Writes a record's subnets and rules into the kernel maps: the subnets first, before the
/// rules whose flags name them.
fn write_record(cx: &Context, record: &NetnsRecord, undo: &mut Undo) -> Result<()> {
    let scope = netns_scope(record.cookie);
    write_subnets(cx, scope, record.subnets.as_ref(), undo)?;
    cgroup_limit::write_scope_rules(
        cx,
        scope,
        |d| record.spec(d),
        flags(record.subnets.as_ref()),
        undo,
    )
}

/// Sets the limit of a namespace, or changes it.
struct SetNetnsLimit {
    before: Option<NetnsRecord>,
    after: NetnsRecord,
}

impl fmt::Display for SetNetnsLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.before.is_some() {
            "change"
        } else {
            "limit"
        };
        write!(f, "{verb} network namespace {}", self.after.netns)?;
        for direction in DIRECTIONS {
            if let Some(spec) = self.after.spec(direction) {
                let limit = spec.effective();
                write!(
                    f,
                    ", {} {} burst {}",
                    direction_name(direction),
                    limit.rate,
                    limit.burst
                )?;
            }
        }
        match &self.after.subnets {
            Some(Subnets::Unshaped(nets)) => write!(f, ", except with {} subnets", nets.len()),
            Some(Subnets::Shaped(nets)) => write!(f, ", only with {} subnets", nets.len()),
            None => Ok(()),
        }
    }
}

impl Step for SetNetnsLimit {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        write_record(cx, &self.after, undo)?;
        state.netns_limits.upsert(self.after.clone());
        Ok(())
    }
}

/// Removes the limit of a namespace.
struct RemoveNetnsLimit {
    record: NetnsRecord,
}

impl fmt::Display for RemoveNetnsLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "remove the limit of network namespace {}",
            self.record.netns
        )
    }
}

impl Step for RemoveNetnsLimit {
    fn apply(&self, cx: &Context, state: &mut State, undo: &mut Undo) -> Result<()> {
        let scope = netns_scope(self.record.cookie);
        cgroup_limit::remove_rules(cx, scope, undo)?;
        write_subnets(cx, scope, None, undo)?;
        state.netns_limits.remove(self.record.cookie);
        Ok(())
    }
}

/// The namespace limits, as the engine drives them.
pub(crate) struct NetnsLimits;

impl Capability for NetnsLimits {
    fn name(&self) -> &'static str {
        "network namespace limits"
    }

    fn plan(&self, _cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()> {
        plan_keyed(
            plan,
            &state.netns_limits.rules,
            &desired.netns_limits,
            |r| r.cookie,
            |record| RemoveNetnsLimit { record },
            |before, after| SetNetnsLimit { before, after },
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
        for record in &state.netns_limits.rules {
            let scope = netns_scope(record.cookie);
            let datapath = Datapath::open(&cx.instance)?;
            if cgroup_limit::scope_rule_missing(&datapath, scope, |d| record.spec(d)) {
                write_record(cx, record, undo)?;
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Drops the records whose namespace is gone (its path leads nowhere, or to another
    /// namespace), then the rules and subnets in the maps that no record owns.
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()> {
        let stale: Vec<u64> = state
            .netns_limits
            .rules
            .iter()
            .filter(|r| !is_alive(r))
            .map(|r| r.cookie)
            .collect();
        for cookie in stale {
            if let Some(record) = state.netns_limits.remove(cookie) {
                tracing::info!(
                    "removing the limit of the vanished namespace {}",
                    record.netns
                );
            }
        }
        if !Datapath::is_installed(&cx.instance) {
            return Ok(());
        }
        let mut datapath = Datapath::open(&cx.instance)?;
        let limited: HashSet<u64> = state.netns_limits.rules.iter().map(|r| r.cookie).collect();
        for key in datapath.rule_keys() {
            // A member of a shared limit is the shared limits' to collect.
            if let Some(cookie) = scope_netns(key.cgroup_id)
                && !limited.contains(&cookie)
                && !super::shared_limit::is_member_rule(&datapath, key)
            {
                tracing::info!("removing the orphaned rule of network namespace {cookie:#x}");
                datapath.remove_rule(key);
            }
        }
        let subnets = datapath.subnets_of_all().unwrap_or_default();
        for (key, len) in subnets {
            let scope = u64::from_be_bytes(key.scope);
            if scope_netns(scope).is_none_or(|cookie| !limited.contains(&cookie)) {
                datapath.remove_subnet(key, len);
            }
        }
        Ok(())
    }

    /// The datapath is the cgroup limits' to remove, which they do once neither has a limit.
    fn remove_if_unused(&self, _cx: &Context, _state: &State) {}

    fn purge(&self, _cx: &Context, state: &State, report: &mut PurgeReport) {
        report.rules += state.netns_limits.rules.len();
    }
}
