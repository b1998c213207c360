//! `rein-bench-net`: the benchmark of `rein net`, the tc and XDP programs of issue 4.
//!
//! - [`testrun`]: ns per packet of each program through `BPF_PROG_TEST_RUN`, against the
//!   pass-through program, with 1 to 1M rules installed; memory per rule; the time of a put and
//!   a remove;
//! - [`sketch`]: the count-min sketch's overestimation on a heavy-tailed trace (the reference
//!   model), and the kernel's sketch against its exact per-source table on the same kind of
//!   trace.
//!
//! The eBPF objects it loads itself are never pinned and go with the process.

pub mod frame;
pub mod memory;
pub mod object;
pub mod sketch;
pub mod testrun;
