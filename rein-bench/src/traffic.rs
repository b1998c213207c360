//! What a row says about the traffic: read from one iperf3 run, or combined from the two runs of
//! a side-by-side pair (two clients, each under its own limit) or of a start/stop run (flows A
//! and B under one limit).

use rein_testkit::stats;

use crate::iperf::{Interval, Measured, max_full_rate};

/// The traffic numbers of one row. The limit is the scenario's rate: per client for a pair, for
/// the one limited context otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    /// Received / limit; for a pair the mean of the two clients' ratios.
    pub goodput_ratio: f64,
    /// A pair: the lower of the two clients' ratios.
    pub worst_goodput: Option<f64>,
    /// The receivers' rate (a pair: both clients' rates summed).
    pub received_bps: f64,
    pub sent_bps: Option<f64>,
    pub retransmits: Option<u64>,
    pub rtt_us: Option<f64>,
    /// Jain's index over the streams (one run), or over the two clients' ratios (a pair).
    pub jain: Option<f64>,
    /// The largest full 1-s rate at the receiver / the limit.
    pub max_1s_ratio: Option<f64>,
    pub udp_lost_percent: Option<f64>,
    /// Bytes received over the whole run, slow start included (what the CPU time was spent on).
    pub total_bytes: f64,
}

impl Traffic {
    /// One iperf3 run under `limit` (bit/s).
    pub fn single(m: &Measured, limit: f64) -> Self {
        Self {
            goodput_ratio: m.received_bps / limit,
            worst_goodput: None,
            received_bps: m.received_bps,
            sent_bps: m.sent_bps,
            retransmits: m.retransmits,
            rtt_us: m.rtt_us,
            jain: stats::jain(&m.stream_bps),
            max_1s_ratio: m.max_interval_bps.map(|bps| bps / limit),
            udp_lost_percent: m.udp_lost_percent,
            total_bytes: m.total_bytes,
        }
    }

    /// Two clients side by side, each under its own `limit`: did EACH get it? goodput is the mean
    /// of the two ratios, worst the lower one, jain Jain's index over the two ratios, max1s the
    /// higher of the two clients' own largest 1-s ratios (the worse overshoot); retransmits are
    /// summed and the RTT is the mean of the two clients' means.
    pub fn side_by_side(clients: [&Measured; 2], limit: f64) -> Self {
        let ratios = clients.map(|m| m.received_bps / limit);
        let rtts: Vec<f64> = clients.iter().filter_map(|m| m.rtt_us).collect();
        Self {
            goodput_ratio: (ratios[0] + ratios[1]) / 2.0,
            worst_goodput: Some(ratios[0].min(ratios[1])),
            received_bps: clients[0].received_bps + clients[1].received_bps,
            sent_bps: sum(clients.map(|m| m.sent_bps)),
            retransmits: sum(clients.map(|m| m.retransmits)),
            rtt_us: stats::mean(&rtts),
            jain: stats::jain(&ratios),
            max_1s_ratio: clients
                .iter()
                .filter_map(|m| m.max_interval_bps)
                .reduce(f64::max)
                .map(|bps| bps / limit),
            udp_lost_percent: None,
            total_bytes: clients[0].total_bytes + clients[1].total_bytes,
        }
    }

    /// Flow A for the whole run (`seconds` measured) and flow B joining `window.0` whole seconds
    /// into A's measured seconds for `window.1` seconds, both under one `limit`. The asked times
    /// stand in only when iperf3's JSON lacks the measured ones. goodput = (A's bytes over its
    /// measured seconds + all of B's bytes) / (limit x A's measured seconds); max1s the largest
    /// 1-s sum of both (see [`joined`]); retransmits summed; RTT A's.
    pub fn start_stop(
        a: &Measured,
        b: &Measured,
        window: (u32, u32),
        seconds: u32,
        limit: f64,
    ) -> Self {
        let (offset, b_asked) = window;
        let a_seconds = measured_seconds(a, seconds);
        let received_bps = (bytes(a, seconds) + bytes(b, b_asked)) * 8.0 / a_seconds;
        let sent_bps = sum([a.sent_bytes, b.sent_bytes]).map(|bytes| bytes * 8.0 / a_seconds);
        let combined = joined(&a.intervals, &b.intervals, offset as usize);
        Self {
            goodput_ratio: received_bps / limit,
            worst_goodput: None,
            received_bps,
            sent_bps,
            retransmits: sum([a.retransmits, b.retransmits]),
            rtt_us: a.rtt_us,
            jain: None,
            max_1s_ratio: max_full_rate(&combined).map(|bps| bps / limit),
            udp_lost_percent: None,
            total_bytes: a.total_bytes + b.total_bytes,
        }
    }
}

/// The receiver's seconds of `m`, or `asked` when iperf3 did not say.
fn measured_seconds(m: &Measured, asked: u32) -> f64 {
    m.measured_seconds
        .filter(|&s| s > 0.0)
        .unwrap_or(f64::from(asked))
}

/// The receiver's bytes of `m` over its measured seconds.
fn bytes(m: &Measured, asked: u32) -> f64 {
    m.received_bytes
        .unwrap_or_else(|| m.received_bps * measured_seconds(m, asked) / 8.0)
}

/// The sum when every value is there; `None` when one is missing (a part would mislead).
fn sum<T: std::iter::Sum<T>, const N: usize>(values: [Option<T>; N]) -> Option<T> {
    values.into_iter().sum()
}

/// A's measured receiver intervals with B's added in: B's `j`-th interval to A's interval
/// `offset + j`, and B's intervals past A's last one dropped. Approximate: it assumes both report
/// every second and that B started `offset` whole seconds after A's measured seconds began,
/// which is off by the connection set-up (milliseconds) and by where iperf3 happens to cut the
/// intervals; a few bytes of B's partial last interval land in the second after it.
pub fn joined(a: &[Interval], b: &[Interval], offset: usize) -> Vec<Interval> {
    let mut out = a.to_vec();
    for (slot, interval) in out.iter_mut().skip(offset).zip(b) {
        slot.bytes += interval.bytes;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        cli::{Direction, Mix, Proto, Rate, Scenario},
        iperf,
    };

    const LIMIT: f64 = 10e6;

    fn tcp(direction: Direction) -> Scenario {
        Scenario {
            mix: Mix::StartStop,
            direction,
            proto: Proto::Tcp,
            rate: Rate(10_000_000),
            flows: 1,
        }
    }

    fn interval(bytes: f64, seconds: f64, omitted: bool) -> Value {
        json!({"sum": {"bytes": bytes, "seconds": seconds, "omitted": omitted}})
    }

    fn i(seconds: f64, bytes: f64) -> Interval {
        Interval { seconds, bytes }
    }

    /// A download (-R): the client receives, so its own intervals and end sums are the
    /// receiver's; the sender's RTT comes from the server's document.
    fn download(
        received: (f64, f64),
        sent: f64,
        retransmits: u64,
        rtt: f64,
        intervals: &[Value],
    ) -> Measured {
        let (bytes, seconds) = received;
        let doc = json!({
            "intervals": intervals,
            "end": {
                "sum_sent": {"bytes": sent, "seconds": seconds,
                             "bits_per_second": sent * 8.0 / seconds, "retransmits": retransmits},
                "sum_received": {"bytes": bytes, "seconds": seconds,
                                 "bits_per_second": bytes * 8.0 / seconds},
                "streams": [{"sender": {"mean_rtt": 0},
                             "receiver": {"bits_per_second": bytes * 8.0 / seconds}}],
            },
            "server_output_json": {"end": {"streams": [{"sender": {"mean_rtt": rtt}}]}},
        });
        iperf::parse(&doc.to_string(), &tcp(Direction::Ingress)).unwrap()
    }

    #[test]
    fn shift_adds_b_into_a_seconds() {
        let a = [
            i(1.0, 10.0),
            i(1.0, 20.0),
            i(1.0, 30.0),
            i(1.0, 40.0),
            i(0.01, 1.0),
        ];
        let b = [i(1.0, 5.0), i(1.0, 6.0), i(0.002, 0.5)];
        let out = joined(&a, &b, 1);
        assert_eq!(
            out,
            [
                i(1.0, 10.0),
                i(1.0, 25.0),
                i(1.0, 36.0),
                i(1.0, 40.5),
                i(0.01, 1.0)
            ]
        );
        // At offset 0 B lines up with A's first second; past A's end B's intervals are dropped.
        assert_eq!(joined(&a, &b, 0)[0], i(1.0, 15.0));
        let late = joined(&a, &b, 4);
        assert_eq!(late[4], i(0.01, 6.0));
        assert_eq!(late[..4], a[..4]);
        assert_eq!(joined(&a, &b, 9), a);
        assert_eq!(joined(&[], &b, 0), []);
    }

    #[test]
    fn start_stop_combines_two_documents() {
        // A: 3 measured seconds at 1.2 MB/s after 2 omitted ones (left out of everything).
        let a = download(
            (3.6e6, 3.0),
            3.7e6,
            7,
            2000.0,
            &[
                interval(9e9, 1.0, true),
                interval(9e9, 1.0, true),
                interval(1.2e6, 1.0, false),
                interval(0.6e6, 1.0, false),
                interval(1.8e6, 1.0, false),
                interval(0.001e6, 0.01, false),
            ],
        );
        // B: joined 1 s into A's measured seconds, for 1 s (and a partial last interval).
        let b = download(
            (0.6e6, 1.0),
            0.65e6,
            3,
            9000.0,
            &[interval(0.59e6, 1.0, false), interval(0.01e6, 0.01, false)],
        );
        let t = Traffic::start_stop(&a, &b, (1, 1), 3, LIMIT);
        // (3.6 MB + 0.6 MB) * 8 / (10 Mbit/s * 3 s).
        assert!(
            (t.goodput_ratio - 4.2e6 * 8.0 / 30e6).abs() < 1e-12,
            "{t:?}"
        );
        assert!((t.received_bps - 4.2e6 * 8.0 / 3.0).abs() < 1e-6);
        assert!((t.sent_bps.unwrap() - 4.35e6 * 8.0 / 3.0).abs() < 1e-6);
        assert_eq!(t.retransmits, Some(10));
        // A's RTT only.
        assert_eq!(t.rtt_us, Some(2000.0));
        // Seconds: 1.2, 0.6 + 0.59, 1.8 + 0.01 (B's partial interval): the largest is the third.
        assert!((t.max_1s_ratio.unwrap() - 1.81e6 * 8.0 / LIMIT).abs() < 1e-9);
        assert_eq!(t.jain, None);
        assert_eq!(t.worst_goodput, None);
        assert_eq!(t.total_bytes, 18e9 + 3.601e6 + 0.6e6);
    }

    #[test]
    fn start_stop_without_seconds_uses_the_asked_time() {
        let doc = json!({"end": {"sum_received": {"bits_per_second": 8e6, "bytes": 4e6}}});
        let a = iperf::parse(&doc.to_string(), &tcp(Direction::Egress)).unwrap();
        // No bytes either: B's rate over the 1 s it was asked to run.
        let doc = json!({"end": {"sum_received": {"bits_per_second": 8e6}}});
        let b = iperf::parse(&doc.to_string(), &tcp(Direction::Egress)).unwrap();
        let t = Traffic::start_stop(&a, &b, (1, 1), 4, LIMIT);
        assert!((t.goodput_ratio - 5e6 * 8.0 / 40e6).abs() < 1e-12, "{t:?}");
        assert_eq!(
            (t.retransmits, t.sent_bps, t.max_1s_ratio),
            (None, None, None)
        );
    }

    #[test]
    fn side_by_side_shows_each_client() {
        let one = download(
            (3.6e6, 3.0),
            3.6e6,
            4,
            1000.0,
            &[interval(1.25e6, 1.0, false), interval(1.2e6, 1.0, false)],
        );
        let two = download(
            (1.8e6, 3.0),
            1.9e6,
            5,
            3000.0,
            &[interval(0.6e6, 1.0, false), interval(1.5e6, 1.0, false)],
        );
        let t = Traffic::side_by_side([&one, &two], LIMIT);
        // 9.6 and 4.8 Mbit/s of 10 each.
        assert!((t.goodput_ratio - 0.72).abs() < 1e-12, "{t:?}");
        assert!((t.worst_goodput.unwrap() - 0.48).abs() < 1e-12);
        // (0.96 + 0.48)^2 / (2 * (0.96^2 + 0.48^2)) = 0.9.
        assert!((t.jain.unwrap() - 0.9).abs() < 1e-12);
        assert!((t.received_bps - 14.4e6).abs() < 1e-6);
        assert_eq!(t.retransmits, Some(9));
        assert_eq!(t.rtt_us, Some(2000.0));
        // The second client's 1.5 MB second.
        assert!((t.max_1s_ratio.unwrap() - 1.2).abs() < 1e-12);
        assert_eq!(t.total_bytes, 2.45e6 + 2.1e6);
    }

    #[test]
    fn single_reads_one_run() {
        let m = download(
            (3.0e6, 3.0),
            3.0e6,
            1,
            500.0,
            &[interval(1.0e6, 1.0, false)],
        );
        let t = Traffic::single(&m, LIMIT);
        assert!((t.goodput_ratio - 0.8).abs() < 1e-12);
        assert_eq!((t.worst_goodput, t.jain), (None, None));
        assert_eq!(t.retransmits, Some(1));
        assert!((t.max_1s_ratio.unwrap() - 0.8).abs() < 1e-12);
    }
}
