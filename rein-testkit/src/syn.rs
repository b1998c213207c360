//! New TCP connections from inside a namespace, for the tests of inbound connection limits
//! (`rein conn add --dev`): connects from a chosen source address that count what succeeds,
//! and a bounded flood of SYNs with spoofed sources from a raw socket (IP_HDRINCL).
use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::model::Xorshift;

/// One TCP connect from `source` to `server`, given up after `timeout`: true when it was
/// established (then closed at once).
pub fn connect_from(source: Ipv4Addr, server: SocketAddrV4, timeout: Duration) -> io::Result<bool> {
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let bind = sockaddr(SocketAddrV4::new(source, 0));
    // SAFETY: a valid sockaddr_in of its size.
    if unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const bind).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let to = sockaddr(server);
    // SAFETY: as above.
    let started = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if started == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(error);
    }
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&raw mut poll, 1, millis) } <= 0 {
        return Ok(false);
    }
    let mut so_error: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as u32;
    // SAFETY: an int of its size.
    unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut so_error).cast(),
            &raw mut len,
        )
    };
    Ok(so_error == 0)
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Connects from `source` to `server` for `duration`, one after the other (each given up after
/// `timeout`): how many were established.
pub fn count_connects(
    source: Ipv4Addr,
    server: SocketAddrV4,
    duration: Duration,
    timeout: Duration,
) -> io::Result<u64> {
    let started = Instant::now();
    let mut established = 0;
    while started.elapsed() < duration {
        established += u64::from(connect_from(source, server, timeout)?);
    }
    Ok(established)
}

/// Sends SYNs to `target` from random sources in many /16s (10.0.0.0/8 and 172.16.0.0/12),
/// `per_second` of them for `duration`, from a raw socket: returns how many were sent.
pub fn syn_flood(target: SocketAddrV4, per_second: u64, duration: Duration) -> io::Result<u64> {
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let to = sockaddr(target);
    let mut random = Xorshift(0x5_f100d ^ u64::from(target.port()));
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        // Paced in steps of 1 ms: as many as are due.
        let due = (started.elapsed().as_nanos() * u128::from(per_second) / 1_000_000_000) as u64;
        while sent < due {
            let r = random.next_u64();
            let source = if r & 1 == 0 {
                Ipv4Addr::new(10, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8 | 1)
            } else {
                Ipv4Addr::new(
                    172,
                    16 | ((r >> 8) as u8 & 0x0f),
                    (r >> 16) as u8,
                    (r >> 24) as u8 | 1,
                )
            };
            let frame = syn_packet(source, (r >> 32) as u16 | 1024, target, (r >> 40) as u32);
            // SAFETY: a valid buffer and sockaddr_in of their sizes.
            unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sent)
}

/// An IPv4 header and a TCP SYN of 20 bytes each, checksummed.
fn syn_packet(source: Ipv4Addr, source_port: u16, target: SocketAddrV4, isn: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&source.octets());
    p[16..20].copy_from_slice(&target.ip().octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&source_port.to_be_bytes());
    p[22..24].copy_from_slice(&target.port().to_be_bytes());
    p[24..28].copy_from_slice(&isn.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64_240u16.to_be_bytes());
    // The pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&source.octets());
    pseudo[4..8].copy_from_slice(&target.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = checksum(&p[20..], sum(&pseudo));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut total = initial + sum(bytes);
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    !(total as u16)
}
