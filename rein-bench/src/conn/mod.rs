//! `rein-bench-conn`: the benchmark of `rein conn` (issue 13).
//!
//! - [`latency`]: what one connect() costs a client with rein's connect programs attached to
//!   its cgroup, with no rule, 1, 10k and 1M rules, and when the bucket is empty (refused),
//!   against no program at all.
//! - [`flood`]: a spoofed SYN flood against rein's inbound limits at XDP and tc ingress and
//!   against nftables: SYNs admitted against the limit, the receiving CPU, and a legitimate
//!   client's connections under per-source limits.
//!
//! Everything it makes is removed by guards, also on errors and Ctrl-C: the namespace (with its
//! veth pair), the throwaway rein instances (their pins and cgroups), and the process goes back
//! to its own cgroup and network namespace.

pub mod args;
pub mod flood;
pub mod latency;
pub mod plot;
pub mod report;
