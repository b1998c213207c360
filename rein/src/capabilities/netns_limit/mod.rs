//! Limits per network namespace: every socket of a namespace shares one token bucket per
//! direction, in the same cgroup programs and maps as the cgroup limits (a rule's scope is a
//! namespace, see `rein_common::netns_scope`), TCP flows paced (egress) or windowed and queued
//! (ingress) at their share. A pod is one network namespace, known to the CNI plugin by path
//! before any container starts: the plugin sets its limit through [`attach`].
use std::{collections::HashSet, path::Path};

mod spec;

pub use spec::{Attachment, NetnsChange, NetnsLimit, NetnsOrigin, NetnsRecord, Section, Subnets};

use crate::{engine::Engine, error::Result};

/// Limits a network namespace by hand, or changes its limit: what `change` leaves `None`
/// stays as it was.
pub fn set(engine: &mut Engine, netns: &Path, change: NetnsChange) -> Result<NetnsRecord> {
    todo!("{engine:p} {netns:?} {change:?}")
}

/// Removes a namespace's limit, whoever set it.
pub fn unset(engine: &mut Engine, netns: &Path) -> Result<NetnsRecord> {
    todo!("{engine:p} {netns:?}")
}

/// Sets the limit of a CNI attachment's namespace to exactly `limit` (CNI ADD): idempotent;
/// an empty limit removes any the attachment had. A namespace limited by hand is refused.
pub fn attach(
    engine: &mut Engine,
    netns: &Path,
    attachment: Attachment,
    limit: NetnsLimit,
) -> Result<Option<NetnsRecord>> {
    todo!("{engine:p} {netns:?} {attachment:?} {limit:?}")
}

/// Removes what rein made for a CNI attachment (CNI DEL): succeeds, with `None`, when there is
/// nothing, and when the namespace is already gone.
pub fn detach(
    engine: &mut Engine,
    container_id: &str,
    ifname: &str,
) -> Result<Option<NetnsRecord>> {
    todo!("{engine:p} {container_id} {ifname}")
}

/// Checks that a CNI attachment's namespace holds exactly `limit` (CNI CHECK): in the state, in
/// the kernel's rules, and in its ingress queue. `Error::LimitDrifted` says what differs.
pub fn check(
    engine: &mut Engine,
    netns: &Path,
    attachment: &Attachment,
    limit: &NetnsLimit,
) -> Result<()> {
    todo!("{engine:p} {netns:?} {attachment:?} {limit:?}")
}

/// Removes the limits of the attachments to `network` that are not in `valid` (CNI GC, whose
/// `cni.dev/valid-attachments` lists the container id and ifname of each); returns what went.
pub fn collect(
    engine: &mut Engine,
    network: &str,
    valid: &HashSet<(String, String)>,
) -> Result<Vec<NetnsRecord>> {
    todo!("{engine:p} {network} {valid:?}")
}
