//! A cgroup limit as the operator states it: which cgroup, each direction's rate and burst, and
//! how the cgroup came to be limited.
use std::path::PathBuf;

use rein_common::Direction;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    limit::{Limit, default_burst},
    platform::cgroupfs::Cgroup,
    units::{Rate, Size},
};

/// What a command limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A running process, moved into a cgroup of its own.
    Pid(u32),
    /// An existing cgroup, limited in place with everything below it.
    Cgroup(PathBuf),
}

/// Requested changes; what is `None` stays as it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitChange {
    pub egress: Option<Rate>,
    pub ingress: Option<Rate>,
    pub burst: Option<Size>,
}

impl LimitChange {
    fn rate(&self, direction: Direction) -> Option<Rate> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }

    /// A direction's limit `old` with the change: a new rate keeps a burst set explicitly
    /// before.
    pub fn applied_to(&self, old: Option<LimitSpec>, direction: Direction) -> Option<LimitSpec> {
        match (self.rate(direction), old) {
            (Some(rate), old) => Some(LimitSpec {
                rate,
                burst: self.burst.or(old.and_then(|o| o.burst)),
            }),
            (None, Some(old)) => Some(LimitSpec {
                rate: old.rate,
                burst: self.burst.or(old.burst),
            }),
            (None, None) => None,
        }
    }
}

/// One limited cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// Path from the cgroup v2 root.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub egress: Option<LimitSpec>,
    pub ingress: Option<LimitSpec>,
    pub origin: Origin,
    /// The declarative resource the limit belongs to (`rein apply`); none for a limit set by
    /// hand. Absent from files written before declarative limits; older rein ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<DeclaredBy>,
}

/// The `CgroupLimit` resource a limit was declared by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredBy {
    pub name: String,
    /// The resource's cgroup path or glob, as written.
    pub cgroup: String,
}

impl RuleRecord {
    pub fn spec(&self, direction: Direction) -> Option<LimitSpec> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }

    /// The record with `change` applied: a new rate keeps a burst set explicitly before.
    pub fn merged(
        existing: Option<&RuleRecord>,
        change: LimitChange,
        cgroup: &Cgroup,
        cgroup_id: u64,
        origin: Origin,
    ) -> Result<RuleRecord> {
        let direction = |direction: Direction| {
            change.applied_to(existing.and_then(|r| r.spec(direction)), direction)
        };
        let egress = direction(Direction::Egress);
        let ingress = direction(Direction::Ingress);
        if egress.is_none() && ingress.is_none() {
            return Err(if change.burst.is_some() {
                Error::BurstWithoutRate(cgroup.relative().to_owned())
            } else {
                Error::NothingToSet
            });
        }
        Ok(RuleRecord {
            cgroup: cgroup.relative().to_owned(),
            cgroup_id,
            egress,
            ingress,
            origin,
            // A change by hand of a declared limit keeps it declared: the next apply of its
            // file decides.
            declared_by: existing.and_then(|r| r.declared_by.clone()),
        })
    }
}

/// A direction's limit as the operator gave it: the burst is `None` when it was left to the
/// default, so that a new rate brings its own default burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub rate: Rate,
    pub burst: Option<Size>,
}

impl LimitSpec {
    /// The limit in force: the burst given, or the default for the rate.
    pub fn effective(&self) -> Limit {
        Limit {
            rate: self.rate,
            burst: self.burst.unwrap_or_else(|| default_burst(self.rate)),
        }
    }
}

/// How the cgroup came to be limited, which decides what `unset` undoes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// Created by `rein run`, whose process is `owner`; removed when the command ends.
    Run { owner: u32 },
    /// Created by `rein set --pid` for `pid`, moved there from `home`.
    Pid { pid: u32, home: String },
    /// An existing cgroup limited in place.
    Cgroup,
}

/// The cgroup limits' section of the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub rules: Vec<RuleRecord>,
}

impl Section {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn find(&self, cgroup_id: u64) -> Option<&RuleRecord> {
        self.rules.iter().find(|r| r.cgroup_id == cgroup_id)
    }

    pub fn remove(&mut self, cgroup_id: u64) -> Option<RuleRecord> {
        let index = self.rules.iter().position(|r| r.cgroup_id == cgroup_id)?;
        Some(self.rules.remove(index))
    }

    /// Inserts or replaces the record of `record.cgroup_id`.
    pub fn upsert(&mut self, record: RuleRecord) {
        match self
            .rules
            .iter_mut()
            .find(|r| r.cgroup_id == record.cgroup_id)
        {
            Some(existing) => *existing = record,
            None => self.rules.push(record),
        }
    }
}
