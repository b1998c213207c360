//! What the benchmarks share besides rein-testkit's harness: how they stop ([`stop`]), the
//! plot font ([`font`]) and charts ([`chart`]), and the machine's CPU time ([`cpu`]).

pub mod chart;
pub mod conn;
pub mod cpu;
pub mod font;
pub mod net;
pub mod stop;
