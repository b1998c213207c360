//! The calling thread's network namespace: its cookie and its devices.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

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
pub fn cookie() -> io::Result<u64> {
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

/// The cookie of the network namespace at `path` (e.g. /run/netns/x, /proc/PID/ns/net).
pub fn cookie_of(path: &std::path::Path) -> io::Result<u64> {
    run_in(path, cookie)?
}

/// Runs `f` on a thread of its own inside the network namespace at `path`: entering a network
/// namespace changes the calling thread only, and this one ends with it, so the caller's
/// namespace never changes. Sockets keep the namespace they were made in.
pub fn run_in<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let namespace = std::fs::File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a descriptor we own; CLONE_NEWNET refuses anything but a network
                // namespace (EINVAL).
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the thread inside the network namespace panicked"))?
    })
}
