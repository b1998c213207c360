//! What the two benchmarks share: child processes that always end ([`proc`]), throwaway network
//! namespaces ([`netns`]), small statistics ([`stats`]) and the plot font ([`font`]).

pub mod font;
pub mod net;
pub mod netns;
pub mod proc;
pub mod stats;
