//! The few rtnetlink requests an ingress queue needs: create and delete an ifb device, give it a
//! tbf qdisc, and read that qdisc's statistics. Written out here rather than taken from
//! netlink-packet-route, which has no encoding of tbf's options or of a size table, and these are
//! a few fixed messages.
use std::{io, mem::size_of, os::fd::AsRawFd};

use super::netns;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_ECHO: u16 = 0x8;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWQDISC: u16 = 36;
const RTM_GETQDISC: u16 = 38;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFF_UP: u32 = 1;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
const TCA_STAB: u16 = 8;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_STATS_PKT64: u16 = 8;
const TCA_STAB_BASE: u16 = 1;
const TCA_STAB_DATA: u16 = 2;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_H_ROOT: u32 = 0xffff_ffff;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
const NLMSG_HEADER: usize = 16;
const TCMSG: usize = 20;

/// A tbf qdisc's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tbf {
    pub rate_bytes_per_second: u64,
    pub burst_bytes: u32,
    /// Bytes the queue holds before it drops.
    pub limit_bytes: u32,
    /// How a packet's length becomes what it is charged: see [`Charge`].
    pub charge: Charge,
}

/// What a packet the qdisc sees costs, in IP bytes on the wire: its length less the link-layer
/// header, and, for a GRO packet (several segments merged on receipt, with one set of headers),
/// the headers of the segments it stands for. tbf charges `skb->len`; a size table (tc-stab)
/// turns that into this cost, in cells of 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub link_header: u32,
    /// IP and TCP header bytes of each segment.
    pub segment_headers: u32,
    /// Payload bytes of a full segment.
    pub segment_payload: u32,
}

const CELL_LOG: u8 = 4;
/// Cells of the table: 16-byte cells up to 68 KiB, past the largest GRO packet (64 KiB).
const TABLE_CELLS: usize = (68 * 1024) >> CELL_LOG;
/// Table entries are in units of 2 bytes: costs pass 65,535.
const SIZE_LOG: u8 = 1;

impl Charge {
    /// The cost of a packet of `length` bytes as the qdisc sees it.
    pub fn cost(&self, length: u32) -> u32 {
        let ip = length.saturating_sub(self.link_header).max(1);
        let payload = ip.saturating_sub(self.segment_headers);
        let segments = payload.div_ceil(self.segment_payload.max(1)).max(1);
        ip + (segments - 1) * self.segment_headers
    }

    /// The size table: each cell's cost at its middle length, in units of 1 << SIZE_LOG.
    fn table(&self) -> Vec<u16> {
        (0..TABLE_CELLS)
            .map(|cell| {
                let middle = ((cell as u32) << CELL_LOG) + (1 << (CELL_LOG - 1));
                u16::try_from(self.cost(middle) >> SIZE_LOG).unwrap_or(u16::MAX)
            })
            .collect()
    }
}

/// A request under construction: header, fixed part, attributes.
struct Message {
    bytes: Vec<u8>,
    /// Offsets of the nested attributes still open.
    open: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(16 * 1024);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        bytes.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        bytes.extend_from_slice(fixed);
        Self {
            bytes,
            open: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.pad();
        let length = (4 + value.len()) as u16;
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.pad();
        self.open.push(self.bytes.len());
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.open.pop() {
            self.pad();
            let length = (self.bytes.len() - start) as u16;
            self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.pad();
        let length = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&length.to_ne_bytes());
        self.bytes
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut fixed = vec![0u8; 4]; // family (unspecified), padding, device type
    fixed.extend_from_slice(&index.to_ne_bytes());
    fixed.extend_from_slice(&flags.to_ne_bytes());
    fixed.extend_from_slice(&change.to_ne_bytes());
    fixed
}

/// Sends one request on a fresh rtnetlink socket (in the caller's network namespace) and waits
/// for the kernel's answer.
fn request(message: Message) -> io::Result<()> {
    let answer = exchange(message)?;
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::other(format!(
            "unexpected netlink answer {kind}"
        )));
    }
    error_of(&answer)
}

/// The error an NLMSG_ERROR answer carries: 16 bytes of header, then the error number (0 for
/// success).
fn error_of(answer: &[u8]) -> io::Result<()> {
    let error = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
    if error == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-error))
    }
}

/// Sends one request and returns the first message of the answer (at least 20 bytes).
fn exchange(message: Message) -> io::Result<Vec<u8>> {
    let bytes = message.finish();
    // SAFETY: a plain socket(2) call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    let socket = netns::owned_fd(fd)?;
    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the buffer and address outlive the call.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // A qdisc's answer carries its size table (8.7 KB for a queue's): room for that and more.
    let mut answer = vec![0u8; 64 * 1024];
    // SAFETY: writes at most the buffer's length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    if received < 20 {
        return Err(io::Error::other("short netlink answer"));
    }
    let length = u32::from_ne_bytes([answer[0], answer[1], answer[2], answer[3]]) as usize;
    answer.truncate(length.clamp(20, received));
    Ok(answer)
}

/// Creates an ifb device named `name`, up.
pub fn create_ifb(name: &str) -> io::Result<()> {
    let mut message = Message::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(0, IFF_UP, IFF_UP),
    );
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    message
        .attribute(IFLA_IFNAME, &ifname)
        .begin(IFLA_LINKINFO)
        .attribute(IFLA_INFO_KIND, b"ifb\0")
        .end();
    request(message)
}

/// Deletes the device `name`; Ok(false) if there is none.
pub fn delete_link(name: &str) -> io::Result<bool> {
    let mut message = Message::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    message.attribute(IFLA_IFNAME, &ifname);
    match request(message) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the device `ifindex` a root tbf qdisc (replacing none: the device must have no root
/// qdisc of its own yet, as a new ifb has not).
pub fn add_tbf(ifindex: u32, tbf: Tbf) -> io::Result<()> {
    request(tbf_message(ifindex, tbf, NLM_F_CREATE | NLM_F_EXCL))
}

/// Changes the rate, burst and limit of the root tbf qdisc of `ifindex` in place (`tc qdisc
/// change`): the packets it holds stay queued (tbf resizes its queue, it does not replace it).
pub fn change_tbf(ifindex: u32, tbf: Tbf) -> io::Result<()> {
    request(tbf_message(ifindex, tbf, 0))
}

fn tbf_message(ifindex: u32, tbf: Tbf, flags: u16) -> Message {
    let mut tcmsg = vec![0u8; 4]; // family, padding
    tcmsg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    tcmsg.extend_from_slice(&0x0001_0000u32.to_ne_bytes()); // handle 1:
    tcmsg.extend_from_slice(&TC_H_ROOT.to_ne_bytes());
    tcmsg.extend_from_slice(&0u32.to_ne_bytes()); // info
    let mut message = Message::new(RTM_NEWQDISC, flags, &tcmsg);

    // struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate (u32, or
    // TCA_TBF_RATE64 beyond). An Ethernet link layer needs no rate table.
    let mut ratespec = vec![0u8, TC_LINKLAYER_ETHERNET];
    ratespec.extend_from_slice(&0u16.to_ne_bytes());
    ratespec.extend_from_slice(&0i16.to_ne_bytes());
    ratespec.extend_from_slice(&0u16.to_ne_bytes());
    let rate32 = u32::try_from(tbf.rate_bytes_per_second).unwrap_or(u32::MAX);
    ratespec.extend_from_slice(&rate32.to_ne_bytes());
    // struct tc_tbf_qopt: rate, peakrate (none), limit, buffer (TCA_TBF_BURST says it), mtu.
    let mut qopt = ratespec;
    qopt.extend_from_slice(&[0u8; 12]);
    qopt.extend_from_slice(&tbf.limit_bytes.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());

    // struct tc_sizespec: cell_log, size_log, cell_align, overhead, linklayer, mpu, mtu, tsize.
    let table = tbf.charge.table();
    let mut sizespec = vec![CELL_LOG, SIZE_LOG];
    sizespec.extend_from_slice(&0i16.to_ne_bytes());
    sizespec.extend_from_slice(&0i32.to_ne_bytes());
    sizespec.extend_from_slice(&u32::from(TC_LINKLAYER_ETHERNET).to_ne_bytes());
    sizespec.extend_from_slice(&0u32.to_ne_bytes());
    sizespec.extend_from_slice(&0u32.to_ne_bytes());
    sizespec.extend_from_slice(&(table.len() as u32).to_ne_bytes());
    let data: Vec<u8> = table.iter().flat_map(|cost| cost.to_ne_bytes()).collect();

    message
        .attribute(TCA_KIND, b"tbf\0")
        .begin(TCA_STAB)
        .attribute(TCA_STAB_BASE, &sizespec)
        .attribute(TCA_STAB_DATA, &data)
        .end()
        .begin(TCA_OPTIONS)
        .attribute(TCA_TBF_PARMS, &qopt)
        .attribute(TCA_TBF_RATE64, &tbf.rate_bytes_per_second.to_ne_bytes())
        .attribute(TCA_TBF_BURST, &tbf.burst_bytes.to_ne_bytes())
        .end();
    message
}

/// What a qdisc has sent, holds and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QdiscStats {
    pub sent_bytes: u64,
    pub sent_packets: u64,
    /// Bytes and packets waiting in the queue now.
    pub backlog_bytes: u32,
    pub backlog_packets: u32,
    pub dropped_packets: u32,
    /// Times a packet had to wait for tokens.
    pub overlimits: u32,
}

/// The statistics of the root qdisc of device `ifindex`; `None` when the device is gone.
pub fn root_qdisc_stats(ifindex: u32) -> io::Result<Option<QdiscStats>> {
    let mut tcmsg = vec![0u8; 4]; // family, padding
    tcmsg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    tcmsg.extend_from_slice(&0u32.to_ne_bytes()); // handle: whichever is the root
    tcmsg.extend_from_slice(&TC_H_ROOT.to_ne_bytes());
    tcmsg.extend_from_slice(&0u32.to_ne_bytes());
    // Older kernels answer a get only to a request that asks for an echo; newer ones ignore it.
    let answer = exchange(Message::new(RTM_GETQDISC, NLM_F_ECHO, &tcmsg))?;
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind == NLMSG_ERROR {
        return match error_of(&answer) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
            Ok(()) => Err(io::Error::other("the kernel sent no qdisc")),
        };
    }
    if kind != RTM_NEWQDISC {
        return Err(io::Error::other(format!(
            "unexpected netlink answer {kind}"
        )));
    }
    Ok(Some(parse_qdisc_stats(
        answer.get(NLMSG_HEADER + TCMSG..).unwrap_or_default(),
    )))
}

/// The attributes of a netlink message part, as (type, value).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let length = usize::from(u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]));
        let kind = u16::from_ne_bytes([*bytes.get(2)?, *bytes.get(3)?]) & NLA_TYPE_MASK;
        let value = bytes.get(4..length)?;
        bytes = bytes.get(length.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Reads TCA_STATS2 from a qdisc's attributes: struct gnet_stats_basic (bytes u64, packets
/// u32), struct gnet_stats_queue (qlen, backlog, drops, requeues, overlimits, u32 each), and
/// the 64-bit packet count where the kernel gives one.
fn parse_qdisc_stats(attrs: &[u8]) -> QdiscStats {
    let mut stats = QdiscStats::default();
    for (kind, value) in attributes(attrs) {
        if kind != TCA_STATS2 {
            continue;
        }
        for (kind, value) in attributes(value) {
            match kind {
                TCA_STATS_BASIC => {
                    stats.sent_bytes = u64_at(value, 0);
                    stats.sent_packets = stats.sent_packets.max(u64::from(u32_at(value, 8)));
                }
                TCA_STATS_PKT64 => stats.sent_packets = u64_at(value, 0),
                TCA_STATS_QUEUE => {
                    stats.backlog_packets = u32_at(value, 0);
                    stats.backlog_bytes = u32_at(value, 4);
                    stats.dropped_packets = u32_at(value, 8);
                    stats.overlimits = u32_at(value, 16);
                }
                _ => {}
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETHERNET_TCP: Charge = Charge {
        link_header: 14,
        segment_headers: 52,
        segment_payload: 1448,
    };

    #[test]
    fn a_gro_packet_costs_the_headers_of_each_segment() {
        assert_eq!(ETHERNET_TCP.cost(1514), 1500);
        assert_eq!(ETHERNET_TCP.cost(66), 52);
        // Two segments merged: 1448 + 600 bytes of payload under one set of headers.
        assert_eq!(ETHERNET_TCP.cost(14 + 52 + 2048), 2048 + 2 * 52);
        // 45 full segments: 65,160 bytes of payload.
        assert_eq!(ETHERNET_TCP.cost(14 + 52 + 65_160), 45 * 1500);
        let table = ETHERNET_TCP.table();
        assert_eq!(table.len(), TABLE_CELLS);
        // The 16-byte cell of 1514 is charged its middle, 1512: 1498 bytes, 2 bytes a unit.
        assert_eq!(table[1514 >> CELL_LOG], 1498 / 2);
    }

    #[test]
    fn nested_attributes_carry_their_length_and_padding() {
        let mut message = Message::new(RTM_NEWLINK, 0, &ifinfomsg(0, 0, 0));
        message
            .attribute(IFLA_IFNAME, b"ab\0")
            .begin(IFLA_LINKINFO)
            .attribute(IFLA_INFO_KIND, b"ifb\0")
            .end();
        let bytes = message.finish();
        // 16 header + 16 ifinfomsg + 8 (name, padded) + 4 nest header + 8 kind.
        assert_eq!(bytes.len(), 52);
        assert_eq!(
            u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            52
        );
        let nest = 16 + 16 + 8;
        assert_eq!(u16::from_ne_bytes([bytes[nest], bytes[nest + 1]]), 12);
        assert_eq!(
            u16::from_ne_bytes([bytes[nest + 2], bytes[nest + 3]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
    }

    #[test]
    fn qdisc_stats_are_read_from_their_nested_attributes() {
        let mut message = Message::new(RTM_NEWQDISC, 0, &[0u8; TCMSG]);
        let mut basic = 123_456_789u64.to_ne_bytes().to_vec();
        basic.extend_from_slice(&42u32.to_ne_bytes());
        basic.extend_from_slice(&[0u8; 4]);
        let queue: Vec<u8> = [3u32, 4500, 7, 0, 11]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        message
            .attribute(TCA_KIND, b"tbf\0")
            .begin(TCA_STATS2)
            .attribute(TCA_STATS_BASIC, &basic)
            .attribute(TCA_STATS_QUEUE, &queue)
            .end();
        let bytes = message.finish();
        let stats = parse_qdisc_stats(&bytes[NLMSG_HEADER + TCMSG..]);
        assert_eq!(
            stats,
            QdiscStats {
                sent_bytes: 123_456_789,
                sent_packets: 42,
                backlog_bytes: 4500,
                backlog_packets: 3,
                dropped_packets: 7,
                overlimits: 11,
            }
        );
        // Truncated input yields what could be read, never a panic.
        let _ = parse_qdisc_stats(&bytes[NLMSG_HEADER + TCMSG..bytes.len() - 3]);
    }
}
