//! Watching an instance: its limits' counters as Prometheus metrics ([`metrics`]) and as a live
//! terminal view ([`top`]). Both read [`crate::engine::Status::read`], without the instance's
//! lock, so they work beside any command or the agent, and straight from the pinned maps when
//! no agent runs.
pub mod metrics;
pub mod top;
