//! Following a model through verdicts the kernel made at an unknown instant between two clock
//! reads (before and after the call that made it).
//!
//! Taking a token earlier leaves a bucket more room later (it has longer to refill, and a fill
//! at a boundary is never capped away), so the kernel's state lies between two bounds: `early`,
//! the model as if every decision had come at its first possible instant, and `late`, at its
//! last. A verdict is known only when both bounds give it at both instants; whatever the
//! kernel decided, each bound then follows it. With a single model that adopts one of the two
//! instants, a verdict taken at the wrong one drifts the model from the kernel by up to the
//! width of the bracket, and a loaded machine (brackets of milliseconds) later fails a verdict
//! that was right.

/// A bucket model a [`Bracket`] can follow.
pub trait Bucket: Clone {
    /// Offers one unit at `now`: whether it passes (and is taken).
    fn offer(&mut self, now: u64) -> bool;
    /// Takes one unit at `now` whatever the bucket holds (the kernel passed what this bound
    /// would not): the bucket empties, never below nothing.
    fn take_anyway(&mut self, now: u64);
}

#[derive(Clone, Debug)]
pub struct Bracket<M> {
    early: M,
    late: M,
}

impl<M: Bucket> Bracket<M> {
    pub fn new(model: M) -> Self {
        Self {
            early: model.clone(),
            late: model,
        }
    }

    /// The verdict the model is sure of for a decision made between `before` and `after`, if
    /// it is; both bounds then follow the kernel's `verdict`.
    pub fn follow(&mut self, verdict: bool, before: u64, after: u64) -> Option<bool> {
        let verdicts = [
            (&self.early, before),
            (&self.early, after),
            (&self.late, before),
            (&self.late, after),
        ]
        .map(|(model, now)| model.clone().offer(now));
        let known = verdicts
            .iter()
            .all(|&v| v == verdicts[0])
            .then_some(verdicts[0]);
        Self::take(&mut self.early, verdict, before);
        Self::take(&mut self.late, verdict, after);
        known
    }

    fn take(model: &mut M, verdict: bool, now: u64) {
        let mut offered = model.clone();
        if offered.offer(now) == verdict {
            *model = offered;
        } else if verdict {
            model.take_anyway(now);
        }
        // Refused where the bound would pass: nothing taken; the refill up to `now` is made by
        // the next offer alike.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnBucketModel;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_verdict_is_known_only_when_both_bounds_agree_at_both_instants() {
        // 100/s, burst 1: one token every 10 ms.
        let mut bracket = Bracket::new(ConnBucketModel::rate(10 * MS, 1));
        assert_eq!(bracket.follow(true, 1000 * MS, 1001 * MS), Some(true));
        // 9-12 ms later: the token may or may not be back.
        assert_eq!(bracket.follow(true, 1009 * MS, 1012 * MS), None);
        // Taken at 1009 at the earliest, 1012 at the latest: back by 1019..1022.
        assert_eq!(bracket.follow(false, 1015 * MS, 1016 * MS), Some(false));
        assert_eq!(bracket.follow(true, 1023 * MS, 1023 * MS), Some(true));
    }

    #[test]
    fn a_pass_the_late_bound_refuses_empties_it_and_no_further() {
        let mut bracket = Bracket::new(ConnBucketModel::rate(10 * MS, 1));
        bracket.follow(true, 1000 * MS, 1000 * MS);
        // The kernel passed at 1010 where `late`, asked at 1005, would refuse.
        assert_eq!(bracket.follow(true, 1005 * MS, 1010 * MS), None);
        assert_eq!(bracket.follow(true, 1020 * MS, 1020 * MS), Some(true));
    }
}
