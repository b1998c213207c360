//! Taking from a token bucket that every CPU shares: the bucket's decision (GCRA, see
//! `rein_common::bucket`), then a compare-and-swap of its one-word state.
use rein_common::{Bucket, Verdict};

use crate::atomic::Word;

/// Takes `cost_ns` from the bucket whose state (`tat`) is `tat`, at `now`, allowing it
/// `room_ns` of debt; false when it has no room. Another CPU may move the bucket between the
/// load and the swap: try again a few times, then refuse, since a bucket contended that hard is
/// full of traffic anyway.
#[inline(always)]
pub fn take(tat_word: Word, now: u64, cost_ns: u64, room_ns: u64) -> bool {
    let mut tat = tat_word.load();
    let mut attempt = 0;
    while attempt < 8 {
        match Bucket::decide(tat, now, cost_ns, room_ns) {
            Verdict::Refuse => return false,
            Verdict::Pass { tat: next } => match tat_word.compare_exchange(tat, next) {
                Ok(()) => return true,
                Err(found) => tat = found,
            },
        }
        attempt += 1;
    }
    false
}
