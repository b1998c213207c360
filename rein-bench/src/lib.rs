//! What the two benchmarks share besides rein-testkit's harness: how they stop ([`stop`]) and the
//! plot font ([`font`]).

pub mod conn;
pub mod font;
pub mod net;
pub mod stop;
