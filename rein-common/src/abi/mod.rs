//! What the kernel programs and userspace exchange through maps, one module per capability:
//! `#[repr(C)]` keys and values, map and program names.
//!
//! Every struct spells out its padding and asserts its size: the kernel and userspace must agree
//! byte for byte, and implicit padding is uninitialised memory in a map key.

pub mod cgroup;
pub mod conn;
pub mod net;
pub mod trace;

/// Which way a packet crosses the socket.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Egress = 0,
    Ingress = 1,
}

/// Per-CPU counters of one rule and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 32);

impl Counters {
    /// Sum of two counters, for folding per-CPU values.
    pub const fn plus(self, other: Self) -> Self {
        Self {
            passed_packets: self.passed_packets.wrapping_add(other.passed_packets),
            passed_bytes: self.passed_bytes.wrapping_add(other.passed_bytes),
            dropped_packets: self.dropped_packets.wrapping_add(other.dropped_packets),
            dropped_bytes: self.dropped_bytes.wrapping_add(other.dropped_bytes),
        }
    }
}
