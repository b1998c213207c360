//! `rein agent`: rein as a service. It keeps the kernel matching the declared configuration:
//! applied at start, again on every change to the files and on SIGHUP, and every second what
//! drifted (a rule removed by hand, a cgroup created since that a glob covers) is put right.
pub mod events;
pub mod systemd;
