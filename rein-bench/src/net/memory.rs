//! Kernel memory of maps: the `memlock` the kernel reports in a map fd's `/proc/self/fdinfo`
//! (since Linux 6.4 the map's own estimate of what it uses: for hash maps without
//! preallocation and for LPM tries it grows with the entries), and, as a second opinion, the
//! system's unreclaimable slab and per-CPU memory from `/proc/meminfo` (system-wide: other
//! activity on the machine shows up in it too).

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};
use aya::maps::MapInfo;

/// `memlock` of the map with kernel id `id`, in bytes.
pub fn memlock(id: u32) -> Result<u64> {
    let info = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
    let fd = info.fd().with_context(|| format!("map {id}"))?;
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    field(&text, "memlock").with_context(|| format!("no memlock in {path}"))
}

/// SUnreclaim + Percpu of /proc/meminfo, in bytes.
pub fn kernel_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib = |name: &str| field(&text, name).with_context(|| format!("no {name} in meminfo"));
    Ok((kib("SUnreclaim")? + kib("Percpu")?) * 1024)
}

/// The number after `name:` on its line (`memlock:\t4096`, `Percpu:  1234 kB`).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name)
            .then(|| value.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmemlock:\t1048576\nmap_id:\t7\n";
        assert_eq!(field(fdinfo, "memlock"), Some(1_048_576));
        assert_eq!(field(fdinfo, "map_id"), Some(7));
        assert_eq!(field(fdinfo, "frozen"), None);
        let meminfo =
            "MemTotal:       24683256 kB\nSUnreclaim:        81636 kB\nPercpu:     3360 kB\n";
        assert_eq!(field(meminfo, "Percpu"), Some(3360));
        assert_eq!(field(meminfo, "SUnreclaim"), Some(81_636));
    }

    #[test]
    fn reads_this_machine() {
        assert!(kernel_bytes().unwrap() > 0);
    }
}
