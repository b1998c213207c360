//! What rein's tests and benchmarks share, kept out of the shipped library: the reference models
//! the kernel programs are held to ([`model`], [`sharing`]) and the [`FakeClock`] that drives
//! them.
mod clock;
pub mod model;
pub mod sharing;

pub use clock::FakeClock;
