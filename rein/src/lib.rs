//! rein: bandwidth limits per process and cgroup, enforced in the kernel with eBPF.
//!
//! The library holds every operation; the `rein` binary parses the command line and prints.
pub mod cgroup;
pub mod clock;
pub mod datapath;
pub mod doctor;
pub mod error;
pub mod instance;
pub mod limit;
pub mod lock;
pub mod manager;
pub mod net;
pub mod net_datapath;
pub mod netlink;
pub mod queue;
pub mod run;
pub mod state;
pub mod sys;
pub mod undo;
pub mod units;

pub use error::{Error, Result};
pub use instance::Instance;
pub use manager::{LimitChange, Rein, Target};
