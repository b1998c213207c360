//! iperf3: bounded servers and clients, their command lines, and what is read from the client's
//! JSON.
//!
//! With `--get-server-output` (and the server in `-J` mode) the client's JSON holds both ends,
//! which iperf3 3.12 needs, since it splits what it knows between them:
//! - each end's intervals are its own view: the receiver's (what got through a limit) are the
//!   server's for an upload and the client's for a download (-R);
//! - TCP retransmits are the sender's count; in -R mode the server sends them to the client in the
//!   results exchange, so the client's `end.sum_sent.retransmits` is right both ways (checked
//!   against the server's own `end.sum_sent.retransmits`: equal, e.g. 2025 and 2025);
//! - the sender's RTT (`streams[].sender.mean_rtt`) is not exchanged: in -R mode the client
//!   reports 0 for it, so it is read from the server's output (and is unknown without it).
//!
//! With `-O`, the end sums and retransmits leave the omitted slow-start seconds out; the intervals
//! keep them, marked `omitted`.
use std::time::Duration;

use serde_json::Value;

use crate::{
    error::{Context, Result, bail},
    netns::Netns,
    process::{Cmd, Output, Running},
    stats,
};

/// iperf3's own port.
pub const PORT: u16 = 5201;

/// The share of the IP bytes a limit counts that iperf3 counts as goodput on a 1500-byte MTU.
/// iperf3 3.12 sizes UDP datagrams to its control connection's MSS: 1460 bytes of payload in
/// 1488 over IPv4 (+ 8 UDP + 20 IP), 1440 in 1488 over IPv6 (+ 8 + 40); TCP segments carry 1448
/// in 1500 (with timestamps; less over IPv6, so this share bounds both).
pub const UDP_PAYLOAD_SHARE: f64 = 1460.0 / 1488.0;
pub const UDP6_PAYLOAD_SHARE: f64 = 1440.0 / 1488.0;
pub const TCP_PAYLOAD_SHARE: f64 = 1448.0 / 1500.0;

/// The most goodput (bits/s) iperf3 can measure over `seconds` through a token bucket of
/// `rate_bps` IP bits/s that held `burst_bytes` when the run began: the rate plus the burst spread
/// over the run, of which iperf3 sees `payload_share`.
pub fn goodput_bound(rate_bps: f64, burst_bytes: f64, seconds: f64, payload_share: f64) -> f64 {
    (rate_bps + burst_bytes * 8.0 / seconds) * payload_share
}

/// Intervals shorter than this (the last, partial one) are not used for the largest 1-s rate.
const FULL_INTERVAL: f64 = 0.9;

/// A server in a namespace, killed with its process group on drop.
#[derive(Debug)]
pub struct Server {
    /// Held only to be killed on drop.
    _process: Running,
}

impl Server {
    /// A server for any number of tests, one after the other, bound to `addr` and `port`.
    pub fn start(ns: &Netns, addr: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::spawn(
            ns,
            &["-s", "-B", addr, "-p", &port.to_string()],
            port,
            timeout,
        )
    }

    /// A server for one test (`-1`), with JSON output (`-J`) for a client that asks for it
    /// (`--get-server-output`).
    pub fn one_off(ns: &Netns, addr: &str, port: u16, timeout: Duration) -> Result<Self> {
        let args = ["-s", "-1", "-J", "-B", addr, "-p", &port.to_string()];
        Self::spawn(ns, &args, port, timeout)
    }

    fn spawn(ns: &Netns, args: &[&str], port: u16, timeout: Duration) -> Result<Self> {
        let argv: Vec<&str> = std::iter::once("iperf3")
            .chain(args.iter().copied())
            .collect();
        let mut running = Cmd::new(ns.exec(&argv), timeout).spawn()?;
        if let Err(e) = ns.wait_listening(port) {
            if running.finished()? {
                running.wait()?.check("the iperf3 server")?;
            }
            return Err(e);
        }
        Ok(Self { _process: running })
    }
}

/// What an iperf3 client runs. `Default`: 3 s of one TCP stream, forward, IPv4, nothing
/// omitted.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `-t`: the measured seconds.
    pub seconds: u32,
    /// `-O`: slow-start seconds before them, left out of the sums.
    pub omit: u32,
    /// `-P`: parallel streams.
    pub streams: u32,
    /// `-R`: the server sends, the client receives.
    pub reverse: bool,
    /// `-u -b RATE`: UDP at that rate (iperf3's syntax, `50M` or bits/s).
    pub udp_bitrate: Option<String>,
    /// `-l`: the size of each UDP datagram's payload.
    pub length: Option<u32>,
    /// `-C`: the TCP congestion control.
    pub congestion: Option<String>,
    /// `-B`: the client's source address.
    pub bind: Option<String>,
    /// `-6`: IPv6 only.
    pub ipv6: bool,
    /// `--get-server-output`: the server's JSON inside the client's (needs a [`Server::one_off`]).
    pub server_output: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            seconds: 3,
            omit: 0,
            streams: 1,
            reverse: false,
            udp_bitrate: None,
            length: None,
            congestion: None,
            bind: None,
            ipv6: false,
            server_output: false,
        }
    }
}

impl ClientOptions {
    pub fn is_udp(&self) -> bool {
        self.udp_bitrate.is_some()
    }

    /// A deadline for the client: its seconds, and time for the connection, the slow start and
    /// the results exchange.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.seconds.max(1) + self.omit) + 15)
    }
}

/// `iperf3 -c ...` to `addr` and `port`.
pub fn client_argv(addr: &str, port: u16, opts: &ClientOptions) -> Vec<String> {
    let mut argv: Vec<String> = [
        "iperf3",
        "-c",
        addr,
        "-p",
        &port.to_string(),
        "-t",
        // -t 0 would mean "run forever" to some iperf3 versions.
        &opts.seconds.max(1).to_string(),
        "-O",
        &opts.omit.to_string(),
        "-P",
        &opts.streams.to_string(),
        // Fail fast instead of waiting out the kernel's SYN retries.
        "--connect-timeout",
        "3000",
        "--json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut push = |words: &[&str]| argv.extend(words.iter().map(|w| (*w).to_owned()));
    if opts.server_output {
        push(&["--get-server-output"]);
    }
    if opts.ipv6 {
        push(&["-6"]);
    }
    if let Some(bind) = &opts.bind {
        push(&["-B", bind]);
    }
    if let Some(congestion) = &opts.congestion {
        push(&["-C", congestion]);
    }
    if opts.reverse {
        push(&["-R"]);
    }
    if let Some(rate) = &opts.udp_bitrate {
        push(&["-u", "-b", rate]);
    }
    if let Some(length) = opts.length {
        push(&["-l", &length.to_string()]);
    }
    argv
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
    /// The receiver's intervals after the omitted slow-start ones, in order (only with the
    /// server's output for an upload).
    pub intervals: Vec<Interval>,
    /// The receiver's largest rate over a full 1-s interval (slow start left out).
    pub max_interval_bps: Option<f64>,
    /// UDP: datagrams lost between the two sockets, in percent.
    pub udp_lost_percent: Option<f64>,
    /// Bytes received over the whole run, slow start included (what the CPU time was spent on).
    pub total_bytes: f64,
}

impl Measured {
    /// Jain's fairness index over the streams' rates (see [`stats::jain`]).
    pub fn jain(&self) -> Option<f64> {
        stats::jain(&self.stream_bps)
    }
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

/// Reads a client's `--json` output (with or without `--get-server-output`) of a UDP or TCP
/// run, forward or reverse (`-R`).
pub fn parse(json: &str, udp: bool, reverse: bool) -> Result<Measured> {
    let root: Value = serde_json::from_str(json).map_err(|e| {
        let start: String = json.chars().take(300).collect();
        crate::Error::failed(format!("iperf3 did not print JSON ({e}): {start}"))
    })?;
    if let Some(error) = root.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
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

    let (retransmits, rtt_us, stream_bps, udp_lost_percent) = if udp {
        let lost = f64_at(&root, "/end/sum_received/lost_percent")
            .or_else(|| f64_at(&root, "/end/sum/lost_percent"));
        (None, None, Vec::new(), lost)
    } else {
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

/// iperf3's JSON on a finished client's stdout, whatever the exit status of what ran it (a
/// script's, a `rein run`'s); when there is no JSON, the error says how the client ended.
pub fn parse_output(output: &Output, udp: bool, reverse: bool) -> Result<Measured> {
    match parse(&output.stdout, udp, reverse) {
        Ok(m) => Ok(m),
        Err(e) if !output.status.success() => {
            let stderr = output.stderr.trim();
            bail!("{e}; the client exited with {}: {stderr}", output.status)
        }
        Err(e) => Err(e),
    }
}

/// Runs a client command line (`client_argv`, perhaps inside `ip netns exec` or under
/// `rein run`) to its end and reads what it measured; fails unless it exits with status 0.
pub fn run_client(cmd: &Cmd, udp: bool, reverse: bool) -> Result<Measured> {
    let output = cmd.output()?;
    let measured = parse_output(&output, udp, reverse)?;
    output.check(&format!("`{}`", cmd.line()))?;
    Ok(measured)
}

/// What a TCP client started with [`Cmd::spawn`] measured, once it ends. Panics (a test's
/// helper) when it fails.
pub fn measured(client: Running) -> Measured {
    let out = client.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "iperf3 failed:\n{out}");
    parse(&out.stdout, false, false).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that `bps` is within `range` of `limit` (as fractions of it), saying the figures
/// either way. Panics (a test's helper) when it is not.
pub fn assert_near(what: &str, bps: f64, limit: f64, range: std::ops::RangeInclusive<f64>) {
    let ratio = bps / limit;
    eprintln!(
        "{what}: {:.2} Mbit/s, {ratio:.3} of {:.0} Mbit/s",
        bps / 1e6,
        limit / 1e6
    );
    assert!(
        range.contains(&ratio),
        "{what}: {:.1} Mbit/s is {ratio:.3} of the limit, expected {range:?}",
        bps / 1e6
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn interval(bytes: f64, seconds: f64, omitted: bool) -> Value {
        json!({"sum": {"bytes": bytes, "seconds": seconds, "omitted": omitted}})
    }

    #[test]
    fn arguments() {
        let udp_download = ClientOptions {
            seconds: 5,
            omit: 1,
            reverse: true,
            udp_bitrate: Some("200000000".to_owned()),
            server_output: true,
            ..ClientOptions::default()
        };
        assert_eq!(
            client_argv("198.18.0.2", PORT, &udp_download).join(" "),
            "iperf3 -c 198.18.0.2 -p 5201 -t 5 -O 1 -P 1 --connect-timeout 3000 --json \
             --get-server-output -R -u -b 200000000"
        );
        let everything = ClientOptions {
            seconds: 0,
            streams: 4,
            length: Some(64),
            congestion: Some("reno".to_owned()),
            bind: Some("2001:2::1".to_owned()),
            ipv6: true,
            udp_bitrate: Some("1M".to_owned()),
            ..ClientOptions::default()
        };
        assert_eq!(
            client_argv("2001:2::2", 5202, &everything).join(" "),
            "iperf3 -c 2001:2::2 -p 5202 -t 1 -O 0 -P 4 --connect-timeout 3000 --json -6 \
             -B 2001:2::1 -C reno -u -b 1M -l 64"
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
        let m = parse(&doc.to_string(), false, false).unwrap();
        assert_eq!(m.received_bps, 9.6e6);
        assert_eq!(m.retransmits, Some(475));
        assert_eq!(m.rtt_us, Some(40000.0));
        assert_eq!(m.stream_bps, [4.0e6, 5.6e6]);
        assert!((m.jain().unwrap() - 0.9730).abs() < 1e-4, "{:?}", m.jain());
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
        let m = parse(&doc.to_string(), false, true).unwrap();
        assert_eq!(m.retransmits, Some(2025));
        assert_eq!(m.rtt_us, Some(65045.0));
        assert_eq!(m.max_interval_bps, Some(9.6e6));
        assert_eq!(m.total_bytes, 3.2e6);
        // Without the server's output a download's RTT is unknown.
        let mut alone = doc;
        alone.as_object_mut().unwrap().remove("server_output_json");
        assert_eq!(parse(&alone.to_string(), false, true).unwrap().rtt_us, None);
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
        let m = parse(&doc.to_string(), true, false).unwrap();
        assert_eq!(m.udp_lost_percent, Some(51.5));
        assert_eq!(m.retransmits, None);
        assert_eq!(m.rtt_us, None);
        assert_eq!(m.max_interval_bps, None);
        assert_eq!(m.total_bytes, 3.6e6);
        assert!(m.intervals.is_empty());
        assert_eq!((m.received_bytes, m.measured_seconds), (Some(3.6e6), None));
    }

    #[test]
    fn bounds() {
        // The README's 20 Mbit/s UDP: 19.78 Mbit/s over 3 s with a 64 KiB burst is within it.
        let udp = goodput_bound(20e6, 65536.0, 3.0, UDP_PAYLOAD_SHARE);
        assert!((19.78e6..19.81e6).contains(&udp), "{udp}");
        let tcp = goodput_bound(20e6, 0.0, 3.0, TCP_PAYLOAD_SHARE);
        assert!((tcp / 20e6 - 0.9653).abs() < 1e-4, "{tcp}");
    }

    #[test]
    fn errors() {
        let err = parse(r#"{"error": "unable to connect to server"}"#, false, false).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(parse("iperf3: error", false, false).is_err());
    }

    /// A client that fails says so, with its JSON's error or its own stderr.
    #[test]
    fn failed_clients() {
        let timeout = Duration::from_secs(5);
        let refused = Cmd::new(
            ["sh", "-c", r#"echo '{"error": "connection refused"}'"#],
            timeout,
        );
        let err = run_client(&refused, false, false).unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
        let crashed = Cmd::new(["sh", "-c", "echo no iperf3 >&2; exit 127"], timeout);
        let err = run_client(&crashed, true, false).unwrap_err();
        assert!(err.to_string().contains("no iperf3"), "{err}");
        let json = json!({"end": {"sum_received": {"bits_per_second": 1e6}}});
        let late_failure = Cmd::new(["sh", "-c", &format!("echo '{json}'; exit 3")], timeout);
        assert!(run_client(&late_failure, true, false).is_err());
    }
}
