//! What rein needs of the operating system, each in one place: BPF objects, pins, links and
//! maps; the kernel's BTF; rtnetlink; the cgroup v2 filesystem; network namespaces; /proc.
use std::{io, path::Path};

pub mod bpf;
pub mod btf;
pub mod cgroupfs;
pub mod netlink;
pub mod netns;
pub mod procfs;

pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The `f_type` of the filesystem holding `path`.
pub fn filesystem_magic(path: &Path) -> io::Result<i64> {
    let stat = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as i64)
}
