//! Ethernet frames of UDP datagrams, as `BPF_PROG_TEST_RUN` takes them.

use std::net::IpAddr;

use anyhow::{Result, bail};

const ETHERNET_HEADER: usize = 14;
const UDP_HEADER: usize = 8;
const PROTOCOL_UDP: u8 = 17;
/// The UDP source port of every frame.
const SOURCE_PORT: u16 = 40_000;

/// An Ethernet frame (zero MAC addresses) with a UDP datagram of `payload` bytes from `source`
/// to `destination`, port `port`. Both addresses must be of one family.
pub fn udp(source: IpAddr, destination: IpAddr, port: u16, payload: usize) -> Result<Vec<u8>> {
    let udp_bytes = UDP_HEADER + payload;
    let mut frame = vec![0u8; ETHERNET_HEADER];
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + udp_bytes;
            let mut ip = vec![0u8; total];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&u16::try_from(total)?.to_be_bytes());
            ip[8] = 64;
            ip[9] = PROTOCOL_UDP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            udp_header(&mut ip[20..], port, udp_bytes)?;
            frame.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40 + udp_bytes];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&u16::try_from(udp_bytes)?.to_be_bytes());
            ip[6] = PROTOCOL_UDP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            udp_header(&mut ip[40..], port, udp_bytes)?;
            frame.extend(ip);
        }
        _ => bail!("{source} and {destination} are not of one address family"),
    }
    Ok(frame)
}

fn udp_header(l4: &mut [u8], port: u16, udp_bytes: usize) -> Result<()> {
    l4[0..2].copy_from_slice(&SOURCE_PORT.to_be_bytes());
    l4[2..4].copy_from_slice(&port.to_be_bytes());
    l4[4..6].copy_from_slice(&u16::try_from(udp_bytes)?.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_headers() {
        let v4 = udp(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            53,
            64,
        )
        .unwrap();
        assert_eq!(v4.len(), 14 + 20 + 8 + 64);
        assert_eq!(&v4[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([v4[16], v4[17]]), 92);
        assert_eq!(&v4[30..34], &[198, 18, 0, 2]);
        assert_eq!(u16::from_be_bytes([v4[36], v4[37]]), 53);

        let v6 = udp(
            "2001:2::1".parse().unwrap(),
            "2001:2::2".parse().unwrap(),
            9,
            10,
        )
        .unwrap();
        assert_eq!(v6.len(), 14 + 40 + 18);
        assert_eq!(u16::from_be_bytes([v6[18], v6[19]]), 18);
        assert_eq!(v6[20], 17);
        assert_eq!(v6[14 + 39], 2);

        assert!(
            udp(
                "198.18.0.1".parse().unwrap(),
                "2001:2::2".parse().unwrap(),
                9,
                1
            )
            .is_err()
        );
    }
}
