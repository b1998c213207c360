//! ping under load: the command line, and the RTTs read from its output.

use crate::stats;

/// Seconds between echo requests (`ping -i`; 0.2 is the smallest a non-root user may ask for).
pub const INTERVAL: f64 = 0.2;

/// `ping` arguments covering `seconds` of traffic: one request every 0.2 s, and a deadline two
/// seconds after the last one is due, so ping always ends by itself.
pub fn args(addr: &str, seconds: u32) -> Vec<String> {
    let count = count(seconds);
    [
        "ping",
        "-n",
        "-i",
        &INTERVAL.to_string(),
        "-c",
        &count.to_string(),
        "-w",
        &(seconds + 2).to_string(),
        addr,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Echo requests asked for over `seconds`.
pub fn count(seconds: u32) -> u32 {
    (f64::from(seconds) / INTERVAL).round() as u32
}

/// RTTs in ms from ping's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Pings {
    pub sent: u32,
    pub rtts_ms: Vec<f64>,
}

impl Pings {
    pub fn parse(output: &str) -> Self {
        let rtts_ms = output
            .lines()
            .filter_map(|line| line.split_once("time=")?.1.split_whitespace().next())
            .filter_map(|value| value.parse().ok())
            .collect();
        // "30 packets transmitted, 28 received, ..."
        let sent = output
            .lines()
            .find_map(|line| number_before(line, "packets transmitted"))
            .unwrap_or(0);
        Self { sent, rtts_ms }
    }

    pub fn avg(&self) -> Option<f64> {
        stats::mean(&self.rtts_ms)
    }

    pub fn p99(&self) -> Option<f64> {
        stats::percentile(&self.rtts_ms, 99.0)
    }
}

/// The number just before `what` on `line` (`30` in `30 packets transmitted, ...`).
fn number_before(line: &str, what: &str) -> Option<u32> {
    let (before, _) = line.split_once(what)?;
    before.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.
64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=10.5 ms
64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=21.0 ms
64 bytes from 198.18.0.2: icmp_seq=4 ttl=64 time=0.045 ms

--- 198.18.0.2 ping statistics ---
5 packets transmitted, 3 received, 40% packet loss, time 804ms
rtt min/avg/max/mdev = 0.045/10.515/21.000/8.573 ms
";

    #[test]
    fn parses_replies_and_count() {
        let p = Pings::parse(OUTPUT);
        assert_eq!(p.sent, 5);
        assert_eq!(p.rtts_ms, [10.5, 21.0, 0.045]);
        assert_eq!(p.p99(), Some(21.0));
        assert!((p.avg().unwrap() - 10.515).abs() < 1e-9);
        let none = Pings::parse("ping: connect: Network is unreachable\n");
        assert_eq!((none.sent, none.avg()), (0, None));
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args("198.18.0.2", 6).join(" "),
            "ping -n -i 0.2 -c 30 -w 8 198.18.0.2"
        );
    }
}
