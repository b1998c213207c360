//! What rein's tests and benchmarks share, kept out of the shipped library:
//! - the reference models the kernel programs are held to ([`model`], [`sharing`]) and the
//!   [`FakeClock`] that drives them;
//! - the harness that sends real traffic: throwaway namespaces joined by veth pairs ([`netns`]),
//!   child processes that always end ([`process`]), iperf3 and ping ([`iperf`], [`ping`]), TCP
//!   servers and counted connects for connection limits ([`connect`], [`syn`]), private rein
//!   instances ([`rein_instance`], [`cgroup`]) and their input files ([`files`]), containers run
//!   by podman on a CNI network of the test's own ([`podman`], [`rootfs`]), with small statistics
//!   ([`stats`]).
//!
//! Everything that can fail returns [`Result`] with the one [`Error`]; helpers meant only for
//! tests say that they panic.
pub mod agent;
pub mod cgroup;
mod clock;
pub mod connect;
pub mod error;
pub mod files;
pub mod http;
pub mod iperf;
pub mod model;
pub mod netns;
pub mod ping;
pub mod podman;
pub mod process;
pub mod rein_instance;
pub mod rootfs;
pub mod sharing;
pub mod stats;
pub mod syn;

pub use clock::FakeClock;
pub use error::{Error, Result};
