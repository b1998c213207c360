//! `rein-bench-net`: the benchmark of `rein net`, the tc and XDP programs of issue 4.
//!
//! Five sections, each printed as a table and kept in `net-latest.json` and `net-latest.png`:
//! - [`testrun`]: ns per packet of each program through `BPF_PROG_TEST_RUN`, against the
//!   pass-through program, with 1 to 1M rules installed; memory per rule; the time of a put and
//!   a remove;
//! - [`sketch`]: the count-min sketch's overestimation on a heavy-tailed trace (the reference
//!   model), and the kernel's sketch against its exact per-source table on the same kind of
//!   trace;
//! - [`cli`]: the latency of `rein net add` and `rein net del` on a veth in a namespace;
//! - [`flood`]: a UDP flood of small packets between two namespaces against rein at XDP and at
//!   tc ingress, and against the classic tools (tc police, ifb + tbf, tbf on egress).
//!
//! Everything it makes is removed by guards, also on errors and Ctrl-C: the namespaces (with
//! their links and qdiscs), the private rein instance (`rein purge`), and the eBPF objects it
//! loads itself, which are never pinned and go with the process.

pub mod args;
pub mod cli;
pub mod flood;
pub mod frame;
pub mod memory;
pub mod object;
pub mod plot;
pub mod rein;
pub mod report;
pub mod sketch;
pub mod testrun;
