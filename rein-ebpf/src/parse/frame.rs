//! What `rein net` reads from a frame: Ethernet (with at most one VLAN tag), IPv4 or IPv6 (with
//! up to four extension headers), and the ports of TCP and UDP. Every read is bounds-checked
//! against the end of the linear data; a frame that ends early is not parsed.
use core::mem::size_of;

use rein_common::net::{
    ADDR_BYTES, FAMILY_IPV4, FAMILY_IPV6, PORT_ANY, PROTOCOL_TCP, PROTOCOL_UDP,
};

pub const ETH_HEADER: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPV6_HEADER: usize = 40;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DESTINATION_OPTIONS: u8 = 60;
const MAX_EXTENSION_HEADERS: u32 = 4;

/// The fields rules match on, and the sizes the charge needs.
pub struct Packet {
    pub family: u8,
    /// 32 or 128: the significant bits of the addresses.
    pub address_bits: u32,
    pub source: [u8; ADDR_BYTES],
    pub destination: [u8; ADDR_BYTES],
    pub protocol: u8,
    /// Destination port, for TCP and UDP in a first (or only) fragment; else `PORT_ANY`.
    pub port: u16,
    /// Source port, likewise (only traced: no rule matches on it).
    pub source_port: u16,
    /// TCP flags (byte 13 of the header) and sequence number, for TCP in a first (or only)
    /// fragment; else 0: what tells a new connection's SYN from the rest.
    pub tcp_flags: u8,
    pub sequence: u32,
    /// Bytes before the IP header.
    pub l2_bytes: u64,
    /// IP and transport header bytes, which each segment of a GSO packet repeats.
    pub header_bytes: u64,
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The `T` at `offset` in the frame between `data` and `end`; None past the end.
#[inline(always)]
pub fn read<T: Copy>(data: usize, end: usize, offset: usize) -> Option<T> {
    let start = data.checked_add(offset)?;
    if start + size_of::<T>() > end {
        return None;
    }
    // SAFETY: checked against the end of the packet; the verifier checks it again.
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

#[inline(always)]
pub fn read_be16(data: usize, end: usize, offset: usize) -> Option<u16> {
    read::<u16>(data, end, offset).map(u16::from_be)
}

impl Packet {
    /// A TCP SYN without ACK: a client opening a connection (or retrying to), never the
    /// server's answer.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        self.protocol == PROTOCOL_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub fn parse(data: usize, end: usize) -> Option<Self> {
        let mut l2 = ETH_HEADER;
        let mut ethertype = read_be16(data, end, 12)?;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = read_be16(data, end, 16)?;
            l2 += 4;
        }
        match ethertype {
            ETH_P_IP => Self::ipv4(data, end, l2),
            ETH_P_IPV6 => Self::ipv6(data, end, l2),
            _ => None,
        }
    }

    #[inline(always)]
    fn ipv4(data: usize, end: usize, l2: usize) -> Option<Self> {
        // One read per header: the verifier checks each access against the bounds check made
        // for the same pointer, and the compiler is free to reuse one check for nearby reads.
        let ip: [u8; 20] = read(data, end, l2)?;
        let header = (ip[0] & 0x0f) as usize * 4;
        if ip[0] >> 4 != 4 || header < 20 {
            return None;
        }
        let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
        let protocol = ip[9];
        let mut source = [0u8; ADDR_BYTES];
        let mut destination = [0u8; ADDR_BYTES];
        source[..4].copy_from_slice(&ip[12..16]);
        destination[..4].copy_from_slice(&ip[16..20]);
        let tcp = transport(data, end, l2 + header, protocol, fragment_offset == 0);
        Some(Self {
            family: FAMILY_IPV4,
            address_bits: 32,
            source,
            destination,
            protocol,
            port: tcp.port,
            source_port: tcp.source_port,
            tcp_flags: tcp.flags,
            sequence: tcp.sequence,
            l2_bytes: l2 as u64,
            header_bytes: (header + tcp.length) as u64,
        })
    }

    #[inline(always)]
    fn ipv6(data: usize, end: usize, l2: usize) -> Option<Self> {
        let ip: [u8; IPV6_HEADER] = read(data, end, l2)?;
        if ip[0] >> 4 != 6 {
            return None;
        }
        let mut next = ip[6];
        let mut source = [0u8; ADDR_BYTES];
        let mut destination = [0u8; ADDR_BYTES];
        source.copy_from_slice(&ip[8..24]);
        destination.copy_from_slice(&ip[24..40]);
        let mut offset = l2 + IPV6_HEADER;
        let mut first_fragment = true;
        let mut seen = 0;
        while seen < MAX_EXTENSION_HEADERS {
            match next {
                NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DESTINATION_OPTIONS => {
                    // Next header, then the length in 8-byte units not counting the first 8.
                    let extension: [u8; 2] = read(data, end, offset)?;
                    next = extension[0];
                    offset += (extension[1] as usize + 1) * 8;
                }
                NEXT_FRAGMENT => {
                    // Next header, reserved, then the offset (13 bits) and flags.
                    let fragment: [u8; 4] = read(data, end, offset)?;
                    next = fragment[0];
                    first_fragment = u16::from_be_bytes([fragment[2], fragment[3]]) >> 3 == 0;
                    offset += 8;
                }
                _ => break,
            }
            seen += 1;
        }
        let tcp = transport(data, end, offset, next, first_fragment);
        Some(Self {
            family: FAMILY_IPV6,
            address_bits: 128,
            source,
            destination,
            protocol: next,
            port: tcp.port,
            source_port: tcp.source_port,
            tcp_flags: tcp.flags,
            sequence: tcp.sequence,
            l2_bytes: l2 as u64,
            header_bytes: (offset - l2 + tcp.length) as u64,
        })
    }
}

/// What the transport header tells: ports, TCP flags and sequence number, and its length.
struct Transport {
    source_port: u16,
    port: u16,
    flags: u8,
    sequence: u32,
    length: usize,
}

const NO_TRANSPORT: Transport = Transport {
    source_port: PORT_ANY,
    port: PORT_ANY,
    flags: 0,
    sequence: 0,
    length: 0,
};

/// The transport header of TCP and UDP when it is in this fragment; `NO_TRANSPORT` otherwise.
#[inline(always)]
fn transport(data: usize, end: usize, offset: usize, protocol: u8, first: bool) -> Transport {
    if !first || (protocol != PROTOCOL_TCP && protocol != PROTOCOL_UDP) {
        return NO_TRANSPORT;
    }
    if protocol == PROTOCOL_UDP {
        return match read::<[u8; 4]>(data, end, offset) {
            Some(ports) => Transport {
                source_port: u16::from_be_bytes([ports[0], ports[1]]),
                port: u16::from_be_bytes([ports[2], ports[3]]),
                length: 8,
                ..NO_TRANSPORT
            },
            None => NO_TRANSPORT,
        };
    }
    // TCP: the ports, the sequence number, the data offset (header length in words) in byte
    // 12 and the flags in byte 13.
    match read::<[u8; 14]>(data, end, offset) {
        Some(tcp) => Transport {
            source_port: u16::from_be_bytes([tcp[0], tcp[1]]),
            port: u16::from_be_bytes([tcp[2], tcp[3]]),
            flags: tcp[13],
            sequence: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            length: (tcp[12] >> 4) as usize * 4,
        },
        None => NO_TRANSPORT,
    }
}
