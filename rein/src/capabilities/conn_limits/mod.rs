//! `rein conn`: limits on the new connections local processes open (outbound), checked at
//! `connect()` by the `rein-conn` programs at the cgroup v2 root. A refused connect fails at
//! once with ECONNREFUSED; nothing is sent.
pub mod datapath;
pub mod request;
pub mod spec;
