//! What the two benchmarks share: child processes that always end ([`proc`]), throwaway network
//! namespaces ([`netns`]), a private rein instance ([`rein_instance`]), small statistics
//! ([`stats`]) and the plot font ([`font`]).

pub mod font;
pub mod net;
pub mod netns;
pub mod proc;
pub mod rein_instance;
pub mod stats;
