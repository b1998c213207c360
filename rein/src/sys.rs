//! The few system calls std and aya do not wrap: filesystem magic numbers, bpf link updates.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The `f_type` of the filesystem holding `path`.
pub fn filesystem_magic(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs fills the struct we own; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as i64)
}

use aya_obj::generated::bpf_cmd;

const BPF_OBJ_GET: libc::c_long = bpf_cmd::BPF_OBJ_GET as libc::c_long;
const BPF_LINK_UPDATE: libc::c_long = bpf_cmd::BPF_LINK_UPDATE as libc::c_long;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long;

/// A tcx or XDP link's kernel id and the interface it is attached to; the interface is 0 once
/// its device is gone (the kernel detaches the link then, and keeps it as a defunct object while
/// it is pinned).
pub fn link_info(link: impl AsFd) -> io::Result<(u32, u32)> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then at offset 16 a union whose tcx
    // and xdp members both start with the ifindex.
    let mut info = [0u64; 32];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: { __u32 bpf_fd; __u32 info_len; __u64 info; }
    let mut attr = [0u64; 16];
    let fd = link.as_fd().as_raw_fd() as u32 as u64;
    let length = std::mem::size_of_val(&info) as u64;
    attr[0] = fd | (length << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(((info[0] >> 32) as u32, info[2] as u32))
}

/// Opens a pinned bpf object (a link here).
pub fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // union bpf_attr for BPF_OBJ_GET: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Atomically replaces the program of a bpf link (BPF_LINK_UPDATE): no packet sees no program.
pub fn bpf_link_update(link: impl AsFd, new_program: impl AsFd) -> io::Result<()> {
    // union bpf_attr for BPF_LINK_UPDATE: { __u32 link_fd; __u32 new_prog_fd; __u32 flags;
    // __u32 old_prog_fd; }
    let mut attr = [0u64; 16];
    let link_fd = link.as_fd().as_raw_fd() as u32 as u64;
    let prog_fd = new_program.as_fd().as_raw_fd() as u32 as u64;
    attr[0] = link_fd | (prog_fd << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

fn bpf(command: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i32> {
    // SAFETY: attr is a zeroed bpf_attr-sized buffer laid out for `command`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

/// Whether a process exists (it may be a zombie).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A network device of the calling thread's network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub ifindex: u32,
    /// ARPHRD_* link type: 1 for Ethernet, 772 for loopback.
    pub link_type: u16,
}

pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_LOOPBACK: u16 = 772;

/// Looks a device up by name in the current network namespace (not through /sys, which shows
/// the namespace it was mounted in).
pub fn device(name: &str) -> io::Result<Option<Device>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Ok(None);
    }
    let c_name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Ok(None);
    }
    let socket = udp_socket()?;
    // SAFETY: ifreq is plain data; the name fits (checked above) and stays NUL-terminated.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR wrote the hardware address member of the union.
    let link_type = unsafe { request.ifr_ifru.ifru_hwaddr.sa_family };
    Ok(Some(Device { ifindex, link_type }))
}

/// The devices of the calling thread's network namespace: (index, name).
pub fn devices() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array ending in a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut devices = Vec::new();
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            devices.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        Ok(devices)
    }
}

/// A UDP socket of the calling thread's network namespace, for ioctls and socket options that
/// ask about the namespace.
fn udp_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket, closed by OwnedFd.
    owned_fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
}

/// Takes ownership of what a call that returns a new descriptor (or -1 and errno) returned.
pub fn owned_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The calling thread's network namespace's cookie: unique while the machine runs (an nsfs
/// inode number is reused once its namespace is gone).
pub fn netns_cookie() -> io::Result<u64> {
    // Linux's SO_NETNS_COOKIE (5.14), which the libc crate does not name.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = udp_socket()?;
    let mut cookie = 0u64;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into the u64 we own.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut length,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
