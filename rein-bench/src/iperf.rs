//! iperf3: the server and client command lines, and what is read from the client's JSON.
//!
//! The client always asks for `--get-server-output` (with the server in `-J` mode), because
//! iperf3 3.12 splits what it knows between the two ends:
//! - each end's intervals are its own view: the receiver's (what got through the limit) are the
//!   server's for an upload and the client's for a download (-R);
//! - TCP retransmits are the sender's count; in -R mode the server sends them to the client in the
//!   results exchange, so the client's `end.sum_sent.retransmits` is right both ways (checked here
//!   against the server's own `end.sum_sent.retransmits`: equal, e.g. 2025 and 2025);
//! - the sender's RTT (`streams[].sender.mean_rtt`) is not exchanged: in -R mode the client
//!   reports 0 for it, so it is read from the server's output.
//!
//! With `-O`, the end sums and retransmits leave the omitted slow-start seconds out; the intervals
//! keep them, marked `omitted`.
//!
//! A start/stop run has two clients in one limited context: flow A to a server on [`PORT`] and
//! flow B to a second server on [`JOINER_PORT`] of the same host.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    cli::{Direction, Proto, Scenario},
    netns::Netns,
    proc::{Cmd, Running},
    stats,
};

/// iperf3's own port: every run's server, and flow A's of a start/stop run.
pub const PORT: u16 = 5201;

/// The server of flow B, the flow that joins a start/stop run.
pub const JOINER_PORT: u16 = 5202;

/// Intervals shorter than this (the last, partial one) are not used for the largest 1-s rate.
const FULL_INTERVAL: f64 = 0.9;

/// Starts a one-off server (`-1`: it exits after one test) in `ns`, bound to `addr` and `port`,
/// and waits until it listens. Killed when the handle is dropped if it is still running.
pub fn server(ns: &Netns, addr: &str, port: u16, timeout: std::time::Duration) -> Result<Running> {
    let port_arg = port.to_string();
    let argv = ns.exec(&["iperf3", "-s", "-1", "-J", "-B", addr, "-p", &port_arg]);
    let running = Cmd::new(argv, timeout).spawn()?;
    ns.wait_listening(port)?;
    Ok(running)
}

/// `iperf3 -c ...` arguments for `scenario` to the server on `port`, for `seconds` measured after
/// `omit` left out.
pub fn client_args(
    scenario: &Scenario,
    addr: &str,
    port: u16,
    seconds: u32,
    omit: u32,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "iperf3",
        "-c",
        addr,
        "-p",
        &port.to_string(),
        "-t",
        &seconds.to_string(),
        "-O",
        &omit.to_string(),
        "-P",
        &scenario.flows.to_string(),
        "--connect-timeout",
        "3000",
        "--json",
        "--get-server-output",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if scenario.direction == Direction::Ingress {
        args.push("-R".to_owned());
    }
    if scenario.proto == Proto::Udp {
        // Offered at twice the limit: the limiter decides what gets through.
        args.extend(["-u".to_owned(), "-b".to_owned(), scenario.rate.iperf(2)]);
    }
    args
}

/// One of the receiver's report intervals (iperf3 -i, 1 s by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub seconds: f64,
    pub bytes: f64,
}

impl Interval {
    /// The rate over a full interval; `None` for a short one (the partial last interval).
    fn full_rate(self) -> Option<f64> {
        (self.seconds >= FULL_INTERVAL).then(|| self.bytes * 8.0 / self.seconds)
    }
}

/// The largest rate over a full interval of `intervals`.
pub fn max_full_rate(intervals: &[Interval]) -> Option<f64> {
    intervals
        .iter()
        .filter_map(|i| i.full_rate())
        .reduce(f64::max)
}

/// What one client run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The receiver's rate over the measured seconds (`end.sum_received`).
    pub received_bps: f64,
    /// The receiver's bytes over the measured seconds, and those seconds (`end.sum_received`;
    /// `None` when iperf3 did not give them).
    pub received_bytes: Option<f64>,
    pub measured_seconds: Option<f64>,
    /// The sender's bytes over the measured seconds.
    pub sent_bytes: Option<f64>,
    /// The sender's rate over the same seconds.
    pub sent_bps: Option<f64>,
    /// TCP: the sender's retransmissions over the measured seconds.
    pub retransmits: Option<u64>,
    /// TCP: mean over the streams of the sender's smoothed RTT (µs).
    pub rtt_us: Option<f64>,
    /// TCP: each stream's rate at the receiver.
    pub stream_bps: Vec<f64>,
    /// The receiver's intervals after the omitted slow-start ones, in order.
    pub intervals: Vec<Interval>,
    /// The receiver's largest rate over a full 1-s interval (slow start left out).
    pub max_interval_bps: Option<f64>,
    /// UDP: datagrams lost between the two sockets, in percent.
    pub udp_lost_percent: Option<f64>,
    /// Bytes received over the whole run, slow start included (what the CPU time was spent on).
    pub total_bytes: f64,
}

fn f64_at(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// `end.streams` of one end's document; empty when it has none.
fn streams(doc: Option<&Value>) -> &[Value] {
    doc.and_then(|d| d.pointer("/end/streams"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Reads the client's `--json --get-server-output` output.
pub fn parse(json: &str, scenario: &Scenario) -> Result<Measured> {
    let root: Value = serde_json::from_str(json).with_context(|| {
        let start: String = json.chars().take(300).collect();
        format!("iperf3 did not print JSON: {start}")
    })?;
    if let Some(error) = root.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let reverse = scenario.direction == Direction::Ingress;
    let server = root.get("server_output_json");
    // The sender's and receiver's own JSON documents.
    let (sender, receiver) = if reverse {
        (server, Some(&root))
    } else {
        (Some(&root), server)
    };

    let received = |field: &str| {
        f64_at(&root, &format!("/end/sum_received/{field}"))
            .or_else(|| f64_at(&root, &format!("/end/sum/{field}")))
    };
    let received_bps =
        received("bits_per_second").context("iperf3's JSON has no end.sum_received")?;
    let received_bytes = received("bytes");
    let measured_seconds = received("seconds");
    let sent_bps = f64_at(&root, "/end/sum_sent/bits_per_second");
    let sent_bytes = f64_at(&root, "/end/sum_sent/bytes");

    let (retransmits, rtt_us, stream_bps, udp_lost_percent) = match scenario.proto {
        Proto::Tcp => {
            let retransmits = root
                .pointer("/end/sum_sent/retransmits")
                .and_then(Value::as_u64);
            let rtts: Vec<f64> = streams(sender)
                .iter()
                .filter_map(|s| f64_at(s, "/sender/mean_rtt"))
                .filter(|&rtt| rtt > 0.0)
                .collect();
            let rtt_us = stats::mean(&rtts);
            let stream_bps = streams(Some(&root))
                .iter()
                .filter_map(|s| f64_at(s, "/receiver/bits_per_second"))
                .collect();
            (retransmits, rtt_us, stream_bps, None)
        }
        Proto::Udp => {
            let lost = f64_at(&root, "/end/sum_received/lost_percent")
                .or_else(|| f64_at(&root, "/end/sum/lost_percent"));
            (None, None, Vec::new(), lost)
        }
    };

    // (interval, omitted)
    let all_intervals: Vec<(Interval, bool)> = receiver
        .and_then(|r| r.get("intervals"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|i| {
                    let sum = i.get("sum")?;
                    let interval = Interval {
                        seconds: f64_at(sum, "/seconds")?,
                        bytes: f64_at(sum, "/bytes")?,
                    };
                    let omitted = sum.get("omitted").and_then(Value::as_bool).unwrap_or(false);
                    Some((interval, omitted))
                })
                .collect()
        })
        .unwrap_or_default();
    let intervals: Vec<Interval> = all_intervals
        .iter()
        .filter(|&&(_, omitted)| !omitted)
        .map(|&(interval, _)| interval)
        .collect();
    let max_interval_bps = max_full_rate(&intervals);
    let interval_bytes: f64 = all_intervals.iter().map(|(i, _)| i.bytes).sum();
    let total_bytes = if interval_bytes > 0.0 {
        interval_bytes
    } else {
        f64_at(&root, "/end/sum_received/bytes").unwrap_or(0.0)
    };

    Ok(Measured {
        received_bps,
        received_bytes,
        measured_seconds,
        sent_bytes,
        sent_bps,
        retransmits,
        rtt_us,
        stream_bps,
        intervals,
        max_interval_bps,
        udp_lost_percent,
        total_bytes,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::{Mix, Rate};

    fn scenario(direction: Direction, proto: Proto, flows: u32) -> Scenario {
        Scenario {
            mix: Mix::Single,
            direction,
            proto,
            rate: Rate(10_000_000),
            flows,
        }
    }

    fn interval(bytes: f64, seconds: f64, omitted: bool) -> Value {
        json!({"sum": {"bytes": bytes, "seconds": seconds, "omitted": omitted}})
    }

    #[test]
    fn args() {
        let s = Scenario {
            mix: Mix::Single,
            direction: Direction::Ingress,
            proto: Proto::Udp,
            rate: Rate(100_000_000),
            flows: 1,
        };
        let args = client_args(&s, "198.18.0.2", PORT, 5, 1).join(" ");
        assert_eq!(
            args,
            "iperf3 -c 198.18.0.2 -p 5201 -t 5 -O 1 -P 1 --connect-timeout 3000 --json \
             --get-server-output -R -u -b 200000000"
        );
        // Flow B of a start/stop run: its own server port, nothing omitted.
        let b = Scenario {
            mix: Mix::StartStop,
            direction: Direction::Egress,
            proto: Proto::Tcp,
            rate: Rate(10_000_000),
            flows: 1,
        };
        assert_eq!(
            client_args(&b, "198.19.7.1", JOINER_PORT, 2, 0).join(" "),
            "iperf3 -c 198.19.7.1 -p 5202 -t 2 -O 0 -P 1 --connect-timeout 3000 --json \
             --get-server-output"
        );
    }

    #[test]
    fn upload_reads_rtt_from_the_client_and_intervals_from_the_server() {
        let doc = json!({
            "intervals": [interval(9e9, 1.0, true)],
            "end": {
                "sum_sent": {"bits_per_second": 9.9e6, "retransmits": 475, "bytes": 6.2e6},
                "sum_received": {"bits_per_second": 9.6e6, "bytes": 6e6, "seconds": 5.0},
                "streams": [
                    {"sender": {"mean_rtt": 50000}, "receiver": {"bits_per_second": 4.0e6}},
                    {"sender": {"mean_rtt": 30000}, "receiver": {"bits_per_second": 5.6e6}},
                ],
            },
            "server_output_json": {
                "intervals": [
                    interval(3e6, 1.0, true),
                    interval(1.25e6, 1.0, false),
                    interval(1.5e6, 1.0, false),
                    interval(1e6, 0.05, false),
                ],
                "end": {"streams": [{"sender": {"mean_rtt": 0}}]},
            },
        });
        let m = parse(
            &doc.to_string(),
            &scenario(Direction::Egress, Proto::Tcp, 2),
        )
        .unwrap();
        assert_eq!(m.received_bps, 9.6e6);
        assert_eq!(m.retransmits, Some(475));
        assert_eq!(m.rtt_us, Some(40000.0));
        assert_eq!(m.stream_bps, [4.0e6, 5.6e6]);
        // The omitted and the partial interval are left out of the largest rate...
        assert_eq!(m.max_interval_bps, Some(12e6));
        // ...but every byte counts for the CPU cost.
        assert_eq!(m.total_bytes, 6.75e6);
        // The measured intervals, in order, the partial last one too.
        let measured: Vec<(f64, f64)> = m.intervals.iter().map(|i| (i.seconds, i.bytes)).collect();
        assert_eq!(measured, [(1.0, 1.25e6), (1.0, 1.5e6), (0.05, 1e6)]);
        assert_eq!(
            (m.received_bytes, m.measured_seconds, m.sent_bytes),
            (Some(6e6), Some(5.0), Some(6.2e6))
        );
    }

    #[test]
    fn download_reads_rtt_from_the_server_and_intervals_from_the_client() {
        let doc = json!({
            "intervals": [interval(2e6, 1.0, true), interval(1.2e6, 1.0, false)],
            "end": {
                "sum_sent": {"bits_per_second": 1e7, "retransmits": 2025},
                "sum_received": {"bits_per_second": 9.5e6},
                "streams": [{"sender": {"mean_rtt": 0}, "receiver": {"bits_per_second": 9.5e6}}],
            },
            "server_output_json": {
                "intervals": [interval(9e9, 1.0, false)],
                "end": {"streams": [{"sender": {"mean_rtt": 65045}}]},
            },
        });
        let m = parse(
            &doc.to_string(),
            &scenario(Direction::Ingress, Proto::Tcp, 1),
        )
        .unwrap();
        assert_eq!(m.retransmits, Some(2025));
        assert_eq!(m.rtt_us, Some(65045.0));
        assert_eq!(m.max_interval_bps, Some(9.6e6));
        assert_eq!(m.total_bytes, 3.2e6);
    }

    #[test]
    fn udp_loss_and_missing_server_output() {
        let doc = json!({
            "intervals": [],
            "end": {
                "sum_sent": {"bits_per_second": 2e7},
                "sum_received": {"bits_per_second": 9.7e6, "lost_percent": 51.5, "bytes": 3.6e6},
            },
        });
        let m = parse(
            &doc.to_string(),
            &scenario(Direction::Egress, Proto::Udp, 1),
        )
        .unwrap();
        assert_eq!(m.udp_lost_percent, Some(51.5));
        assert_eq!(m.retransmits, None);
        assert_eq!(m.rtt_us, None);
        assert_eq!(m.max_interval_bps, None);
        assert_eq!(m.total_bytes, 3.6e6);
        assert!(m.intervals.is_empty());
        assert_eq!((m.received_bytes, m.measured_seconds), (Some(3.6e6), None));
    }

    #[test]
    fn errors() {
        let s = scenario(Direction::Egress, Proto::Tcp, 1);
        let err = parse(r#"{"error": "unable to connect to server"}"#, &s).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(parse("iperf3: error", &s).is_err());
    }
}
