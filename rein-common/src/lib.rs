//! Types shared by rein's kernel programs and its userspace, by capability (cgroup limits,
//! interface rules):
//! - [`abi`]: map keys and values with a fixed `#[repr(C)]` layout, and map and program names;
//! - [`algo`]: the pure arithmetic of the limiter (token bucket, windows, sharing among flows,
//!   the sketch), so both sides compute alike and userspace tests what the kernel runs.
//!
//! The modules of the first layout (`bucket`, `window`, `share`, `net` and the root items)
//! stay as paths into these.
#![no_std]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod abi;
pub mod algo;

pub use abi::{Counters, Direction, cgroup::*};
pub use algo::{
    bucket::{self, Bucket, Verdict},
    share::EpochCount,
    window,
};

/// How a limit is shared among TCP flows: the arithmetic, and the per-socket state it works on.
pub mod share {
    pub use crate::{
        abi::cgroup::{FLOW_FINISHED, FLOW_REGISTERED_BEFORE, FlowState, IngressFlowState},
        algo::share::*,
    };
}

/// New-connection limits on local callers (`rein conn`): the keys, rules and buckets.
pub mod conn {
    pub use crate::{abi::conn::*, algo::conn::*};
}

/// Limits on interfaces (`rein net`): the keys and rules, and where the sketch puts a source.
pub mod net {
    pub use crate::{abi::net::*, algo::sketch::sketch_column};
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for crate::abi::cgroup::RuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::cgroup::Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::cgroup::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::cgroup::QueueKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::cgroup::IngressFlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::cgroup::SubnetKey {}
    // SAFETY: plain #[repr(C)] data, every bit pattern valid, no implicit padding.
    unsafe impl aya::Pod for crate::abi::net::PrefixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::net::PairKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::net::RuleMatch {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::net::NetRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::net::SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::net::SourceState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::net::SynKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::conn::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::conn::ConnShapes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::conn::ConnRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::conn::ConnCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::conn::CallerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::conn::CallerState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::trace::TraceControl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::trace::TraceBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::trace::TraceEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::abi::trace::OverflowConfig {}
}
