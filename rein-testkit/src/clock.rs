//! A clock that moves only when told to, so that models can be played in exact time.
use std::cell::Cell;

use rein::clock::Clock;

#[derive(Debug, Default)]
pub struct FakeClock(Cell<u64>);

impl FakeClock {
    pub fn new(start_ns: u64) -> Self {
        Self(Cell::new(start_ns))
    }

    pub fn advance(&self, ns: u64) {
        self.0.set(self.0.get() + ns);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.get()
    }
}
