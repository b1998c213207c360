//! How many IP-layer bytes a packet puts on the wire.
use aya_ebpf::programs::SkBuffContext;
use rein_common::abi::trace::{TRACE_FAMILY_IPV4, TRACE_FAMILY_IPV6, TraceEvent};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// IP-layer bytes of the packet as it crosses the wire. A GSO/GRO packet stands for `gso_segs`
/// packets that each carry their own IP and transport headers, but `skb->len` counts those
/// headers once; add them back so the limit counts what the wire carries, as tc does.
#[inline(always)]
pub fn ip_bytes(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the context pointer is valid for the program's run.
    let (len, segs) = unsafe { ((*ctx.skb.skb).len, (*ctx.skb.skb).gso_segs) };
    let len = len as u64;
    if segs <= 1 {
        return len;
    }
    match header_bytes(ctx) {
        Some(headers) => len + (segs as u64 - 1) * headers,
        None => len,
    }
}

/// Length of the IP and transport headers at the start of the packet (cgroup_skb sees the
/// packet from its network header on).
#[inline(always)]
fn header_bytes(ctx: &SkBuffContext) -> Option<u64> {
    let first: u8 = ctx.load(0).ok()?;
    let (ip_len, protocol) = match first >> 4 {
        4 => ((first & 0x0f) as u64 * 4, ctx.load::<u8>(9).ok()?),
        // Extension headers are not followed: a GSO packet with them is rare, and counting
        // only the fixed header errs by a few bytes per segment.
        6 => (40, ctx.load::<u8>(6).ok()?),
        _ => return None,
    };
    let l4_len = match protocol {
        IPPROTO_TCP => {
            let offset_byte: u8 = ctx.load(ip_len as usize + 12).ok()?;
            (offset_byte >> 4) as u64 * 4
        }
        IPPROTO_UDP => 8,
        _ => 0,
    };
    Some(ip_len + l4_len)
}

/// TCP flag bits.
pub const TCP_FIN: u8 = 1;
pub const TCP_SYN: u8 = 2;

/// The flags of a TCP packet (cgroup_skb sees it from its IP header on); 0 if unreadable.
#[inline(always)]
pub fn tcp_flags(ctx: &SkBuffContext) -> u8 {
    let Ok(first) = ctx.load::<u8>(0) else {
        return 0;
    };
    let ip_len = match first >> 4 {
        4 => (first & 0x0f) as usize * 4,
        6 => 40,
        _ => return 0,
    };
    ctx.load::<u8>(ip_len + 13).unwrap_or(0)
}

/// Whether a TCP packet carries a FIN: its sender is done sending.
#[inline(always)]
pub fn tcp_fin(ctx: &SkBuffContext) -> bool {
    tcp_flags(ctx) & TCP_FIN != 0
}

/// Writes the packet's family, protocol, addresses and ports (TCP and UDP, in a first or only
/// fragment) into a trace event; what cannot be read stays as it was.
#[inline(always)]
pub fn fill_tuple(ctx: &SkBuffContext, event: &mut TraceEvent) {
    let Ok(first) = ctx.load::<u8>(0) else {
        return;
    };
    let transport = match first >> 4 {
        4 => {
            let Ok(ip) = ctx.load::<[u8; 20]>(0) else {
                return;
            };
            event.family = TRACE_FAMILY_IPV4;
            event.protocol = ip[9];
            event.source[..4].copy_from_slice(&ip[12..16]);
            event.destination[..4].copy_from_slice(&ip[16..20]);
            // A later fragment carries no ports.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return;
            }
            (ip[0] & 0x0f) as usize * 4
        }
        6 => {
            let Ok(ip) = ctx.load::<[u8; 40]>(0) else {
                return;
            };
            event.family = TRACE_FAMILY_IPV6;
            // Extension headers are not followed, as in `header_bytes`.
            event.protocol = ip[6];
            event.source.copy_from_slice(&ip[8..24]);
            event.destination.copy_from_slice(&ip[24..40]);
            40
        }
        _ => return,
    };
    if (event.protocol == IPPROTO_TCP || event.protocol == IPPROTO_UDP)
        && let Ok(ports) = ctx.load::<[u8; 4]>(transport)
    {
        event.source_port = u16::from_be_bytes([ports[0], ports[1]]);
        event.destination_port = u16::from_be_bytes([ports[2], ports[3]]);
    }
}
