//! rein: bandwidth and rate limits in the kernel, with eBPF.
//!
//! The library holds every operation; the `rein` binary parses the command line and prints.
//! What a binary needs:
//! - [`Engine`]: an opened, locked instance. Its [`Desired`] state, planned ([`Plan`]) and
//!   applied all-or-nothing, is how every change is made; [`Engine::status`],
//!   [`Engine::reload`] and [`Engine::purge`] act on every capability at once.
//! - [`capabilities`]: one module per capability, with what an operator states (its spec),
//!   the commands' operations on the engine (`cgroup_limit::set`, `net_rules::add`, ...),
//!   and its datapath (pinned maps and links), which the datapath tests and the benchmarks
//!   drive directly.
//! - [`declarative`]: resources in YAML files, applied through the engine (`rein apply`).
//! - [`run`] (`rein run`), [`trace`] (`rein trace`), [`doctor`], and the value types: [`units`], [`limit`].
//! - [`observe`]: what an instance does, read without its lock: Prometheus metrics and their
//!   HTTP server, and `rein top`'s live view.
//! - [`platform`]: the operating system as rein uses it (BPF objects, cgroups, netns), for
//!   tests and benchmarks that load the programs themselves.
pub mod agent;
pub mod capabilities;
pub mod clock;
pub mod declarative;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod instance;
pub mod limit;
pub mod observe;
pub mod platform;
pub mod run;
pub mod store;
pub mod trace;
pub mod units;

pub use engine::{Desired, Engine, Plan};
pub use error::{Error, Result};
pub use instance::Instance;
