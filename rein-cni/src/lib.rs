//! rein-cni: a CNI plugin that limits a pod's bandwidth with rein instead of the reference
//! `bandwidth` plugin's tbf and ifb, configured exactly as that plugin is. Chained after the
//! plugin that makes the pod's interface (ptp, bridge, ...), it limits the pod's network
//! namespace through [`rein::capabilities::netns_limit`].
//!
//! - [`config`]: the configuration, read and checked as the reference reads and checks it;
//! - [`version`]: the spec versions and which commands each allows;
//! - [`result`]: the `prevResult` passed on in the configuration's version;
//! - [`plugin`]: the commands;
//! - [`error`]: CNI error objects and their codes.
pub mod config;
pub mod error;
pub mod plugin;
pub mod result;
pub mod version;
