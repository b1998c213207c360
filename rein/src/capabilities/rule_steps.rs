//! The diff by id that the rule capabilities (net rules, conn limits) plan with: which held
//! rules go, which change their limit in place, which are added again under their id, and
//! which wanted rules are new; and the diff by key the cgroup, namespace and shared limits plan
//! with ([`plan_keyed`]).
use std::{collections::HashMap, hash::Hash};

use crate::{
    engine::{Plan, Step},
    error::{Error, Result},
};

/// How a wanted rule differs from the held rule of its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// Its limit alone (rate, burst, capacity): changed in place, the rule keeps its bucket or
    /// window (a fresh one would hand out a burst at every edit).
    Limit,
    /// Anything else: the rule is removed and added again under its id.
    Other,
}

impl Change {
    /// The change from a held rule to a wanted one that is `unchanged` (spec and owner), or
    /// whose `only_limit` differs.
    pub(crate) fn between(unchanged: bool, only_limit: bool) -> Self {
        if unchanged {
            Change::None
        } else if only_limit {
            Change::Limit
        } else {
            Change::Other
        }
    }
}

/// One step from the held rules `R` to the wanted rules `W`.
#[derive(Debug, PartialEq)]
pub(crate) enum RuleStep<'a, R, W> {
    Remove(&'a R),
    ChangeLimit(&'a R, &'a W),
    Add(u32, &'a W),
}

/// The steps that take `held` (ids from `held_id`) to `wanted` (from `wanted_id`: the id of the
/// held rule it stands for, none for a new rule), in the order they must run: every removal
/// first, so that a key or a slot is free before it is taken again; then, in held order, the
/// limit changes and the adds again under a held id; then the new rules under ids from
/// `next_id` on. A held rule wanted as it is stays untouched; one not wanted goes. A wanted id
/// nothing holds is `missing(id)`.
pub(crate) fn rule_steps<'a, R, W>(
    held: &'a [R],
    held_id: impl Fn(&R) -> u32,
    wanted: &'a [W],
    wanted_id: impl Fn(&W) -> Option<u32>,
    change: impl Fn(&R, &W) -> Change,
    next_id: u32,
    missing: impl Fn(u32) -> Error,
) -> Result<Vec<RuleStep<'a, R, W>>> {
    // By id: an instance may hold tens of thousands of rules.
    let by_id: HashMap<u32, &R> = held.iter().map(|r| (held_id(r), r)).collect();
    let mut wanted_by_id = HashMap::new();
    for w in wanted {
        if let Some(id) = wanted_id(w) {
            let record = by_id.get(&id).ok_or_else(|| missing(id))?;
            wanted_by_id.insert(id, (change(record, w), w));
        }
    }
    let mut steps = Vec::new();
    for record in held {
        match wanted_by_id.get(&held_id(record)) {
            Some((Change::None | Change::Limit, _)) => {}
            Some((Change::Other, _)) | None => steps.push(RuleStep::Remove(record)),
        }
    }
    for record in held {
        match wanted_by_id.get(&held_id(record)) {
            Some((Change::Limit, w)) => steps.push(RuleStep::ChangeLimit(record, *w)),
            Some((Change::Other, w)) => steps.push(RuleStep::Add(held_id(record), *w)),
            Some((Change::None, _)) | None => {}
        }
    }
    let added = wanted.iter().filter(|w| wanted_id(w).is_none());
    steps.extend((next_id..).zip(added).map(|(id, w)| RuleStep::Add(id, w)));
    Ok(steps)
}

/// The diff of records keyed by `key` (one per cgroup, one per namespace): the held records no
/// wanted one has the key of, and each wanted record that differs from the held one of its key
/// (with that one, if any).
pub(crate) fn keyed_changes<'a, R: PartialEq, K: Hash + Eq>(
    held: &'a [R],
    wanted: &'a [R],
    key: impl Fn(&R) -> K,
) -> (Vec<&'a R>, Vec<(Option<&'a R>, &'a R)>) {
    // By key: the agent plans 10,000 limits every few seconds.
    let held_by_key: HashMap<K, &R> = held.iter().map(|r| (key(r), r)).collect();
    let wanted_keys: std::collections::HashSet<K> = wanted.iter().map(&key).collect();
    let removed = held
        .iter()
        .filter(|r| !wanted_keys.contains(&key(r)))
        .collect();
    let set = wanted
        .iter()
        .filter_map(|w| {
            let before = held_by_key.get(&key(w)).copied();
            (before != Some(w)).then_some((before, w))
        })
        .collect();
    (removed, set)
}

/// Plans the way from the held records to the wanted ones, keyed by `key` (see
/// [`keyed_changes`]): a `remove` step for each held record no wanted one has the key of, then a
/// `set` step (with the record it replaces, if any) for each new or changed one.
pub(crate) fn plan_keyed<R, K, Remove, Set>(
    plan: &mut Plan,
    held: &[R],
    wanted: &[R],
    key: impl Fn(&R) -> K,
    remove: impl Fn(R) -> Remove,
    set: impl Fn(Option<R>, R) -> Set,
) where
    R: PartialEq + Clone,
    K: Hash + Eq,
    Remove: Step + 'static,
    Set: Step + 'static,
{
    let (removed, changed) = keyed_changes(held, wanted, key);
    for record in removed {
        plan.push(remove(record.clone()));
    }
    for (before, after) in changed {
        plan.push(set(before.cloned(), after.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held: (id, limit, kind). Wanted: (id, limit, kind).
    type Held = (u32, u32, char);
    type Wanted = (Option<u32>, u32, char);

    fn steps<'a>(
        held: &'a [Held],
        wanted: &'a [Wanted],
    ) -> Result<Vec<RuleStep<'a, Held, Wanted>>> {
        rule_steps(
            held,
            |h| h.0,
            wanted,
            |w| w.0,
            |h, w| match (h.1 == w.1, h.2 == w.2) {
                (true, true) => Change::None,
                (false, true) => Change::Limit,
                (_, false) => Change::Other,
            },
            10,
            Error::NoSuchNetRule,
        )
    }

    #[test]
    fn removals_come_first_then_held_ids_in_order_then_new_ids() {
        let held = [(1, 5, 'a'), (2, 5, 'a'), (3, 5, 'a'), (4, 5, 'a')];
        let wanted = [
            (None, 7, 'n'),
            (Some(4), 6, 'a'),
            (Some(3), 5, 'b'),
            (Some(1), 5, 'a'),
            (None, 8, 'n'),
        ];
        let got = steps(&held, &wanted).unwrap();
        assert_eq!(
            got,
            vec![
                RuleStep::Remove(&held[1]),
                RuleStep::Remove(&held[2]),
                RuleStep::Add(3, &wanted[2]),
                RuleStep::ChangeLimit(&held[3], &wanted[1]),
                RuleStep::Add(10, &wanted[0]),
                RuleStep::Add(11, &wanted[4]),
            ]
        );
    }

    #[test]
    fn a_wanted_id_nothing_holds_is_refused() {
        let err = steps(&[(1, 5, 'a')], &[(Some(9), 5, 'a')]).unwrap_err();
        assert!(matches!(err, Error::NoSuchNetRule(9)), "{err}");
    }

    #[test]
    fn keyed_changes_remove_what_no_wanted_record_keys_and_set_what_differs() {
        let held = [(1, 'a'), (2, 'b'), (3, 'c')];
        let wanted = [(2, 'b'), (3, 'x'), (4, 'd')];
        let (removed, set) = super::keyed_changes(&held, &wanted, |r| r.0);
        assert_eq!(removed, [&(1, 'a')]);
        assert_eq!(set, [(Some(&(3, 'c')), &(3, 'x')), (None, &(4, 'd'))]);
    }
}
