//! The addresses and ports of a TCP packet in a frame, as the socket lookup helpers take them.
use core::mem::size_of;

use aya_ebpf::bindings::bpf_sock_tuple;

use super::frame::{ETH_HEADER, ETH_P_IP, ETH_P_IPV6, IPV6_HEADER, read, read_be16};

const IPPROTO_TCP: u8 = 6;
/// IPv4 flags and fragment offset: "more fragments" and the offset.
const IPV4_FRAGMENT: u16 = 0x3fff;

/// The tuple of the TCP packet in the frame between `data` and `end`, and how much of it the
/// lookup reads (the IPv4 or the IPv6 member); None for other packets and for IPv4 fragments.
#[inline(always)]
pub fn tcp_tuple(data: usize, end: usize) -> Option<(bpf_sock_tuple, usize)> {
    // SAFETY: an all-zero tuple is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = match read_be16(data, end, 12)? {
        ETH_P_IP => {
            let version_ihl: u8 = read(data, end, ETH_HEADER)?;
            let fragment = read_be16(data, end, ETH_HEADER + 6)?;
            if read::<u8>(data, end, ETH_HEADER + 9)? != IPPROTO_TCP
                || fragment & IPV4_FRAGMENT != 0
            {
                return None;
            }
            let tcp = ETH_HEADER + ((version_ihl & 0x0f) as usize) * 4;
            // SAFETY: writing plain integers into the tuple's IPv4 member.
            unsafe {
                let v4 = &mut tuple.__bindgen_anon_1.ipv4;
                v4.saddr = read(data, end, ETH_HEADER + 12)?;
                v4.daddr = read(data, end, ETH_HEADER + 16)?;
                v4.sport = read(data, end, tcp)?;
                v4.dport = read(data, end, tcp + 2)?;
                size_of_val(v4)
            }
        }
        ETH_P_IPV6 => {
            // TCP right after the fixed header; extension headers are rare on TCP and left to
            // the bucket.
            if read::<u8>(data, end, ETH_HEADER + 6)? != IPPROTO_TCP {
                return None;
            }
            let tcp = ETH_HEADER + IPV6_HEADER;
            // SAFETY: writing plain integers into the tuple's IPv6 member.
            unsafe {
                let v6 = &mut tuple.__bindgen_anon_1.ipv6;
                v6.saddr = read(data, end, ETH_HEADER + 8)?;
                v6.daddr = read(data, end, ETH_HEADER + 24)?;
                v6.sport = read(data, end, tcp)?;
                v6.dport = read(data, end, tcp + 2)?;
                size_of_val(v6)
            }
        }
        _ => return None,
    };
    Some((tuple, size))
}

#[inline(always)]
fn size_of_val<T>(_: &T) -> usize {
    size_of::<T>()
}
