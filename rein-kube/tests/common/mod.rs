//! What the agent's tests share: the test's API server ([`api`]) and node ([`node`]).
// Each test file uses a part of it.
#![allow(dead_code)]
// clippy.toml allows unwrap/expect in #[test] functions only; the harness panics on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod node;
