//! rein's Kubernetes node agent: limits for the pods of one node, from their annotations and
//! labels and from the `BandwidthPolicy` and `RateLimit` custom resources, applied through
//! rein's engine as declarations of their own.
pub mod agent;
pub mod crd;
pub mod places;
pub mod pod_limits;
pub mod pods;
pub mod quantity;
pub mod world;
