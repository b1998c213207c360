//! Reference models of rein's algorithms, written the textbook way in exact arithmetic. The
//! kernel stores its state differently (packed into one word per limit, see `rein_common`);
//! unit tests hold the shared arithmetic to these models, and the datapath tests hold the
//! kernel programs to them through `BPF_PROG_TEST_RUN`.
mod bracket;
mod bucket;
mod conn;
mod sketch;
mod window;

pub use bracket::{Bracket, Bucket};
pub use bucket::TokenBucketModel;
pub use conn::ConnBucketModel;
pub use sketch::CountMinModel;
pub use window::{FixedWindowModel, SlidingWindowModel};

/// A small deterministic generator (xorshift64), so that randomised tests reproduce.
#[derive(Debug, Clone)]
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
