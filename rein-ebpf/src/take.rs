//! Taking from a token bucket that every CPU shares (`rein_common::algo::take`), on a map
//! field.
use rein_common::algo::take::{self, AtomicWord};

use crate::atomic::Word;

impl AtomicWord for Word {
    #[inline(always)]
    fn load(&self) -> u64 {
        Word::load(*self)
    }

    #[inline(always)]
    fn compare_exchange(&self, expected: u64, new: u64) -> Result<(), u64> {
        Word::compare_exchange(*self, expected, new)
    }

    #[inline(always)]
    fn add(&self, value: u64) {
        Word::add(*self, value);
    }
}

/// Takes `cost_ns` from the bucket whose `tat` is `tat`, at `now`, allowing it `room_ns` of
/// debt; false when it has no room.
#[inline(always)]
pub fn take(tat: Word, now: u64, cost_ns: u64, room_ns: u64) -> bool {
    take::take(&tat, now, cost_ns, room_ns)
}
