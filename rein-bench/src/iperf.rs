//! iperf3 for a scenario: its client's command line and what is read from the client's JSON
//! (rein-testkit's `iperf`, which says what comes from which end). The client always asks for
//! `--get-server-output`, from a one-off server in `-J` mode.
//!
//! A start/stop run has two clients in one limited context: flow A to a server on [`PORT`] and
//! flow B to a second server on [`JOINER_PORT`] of the same host.

use anyhow::Result;
pub use rein_testkit::iperf::{Interval, Measured, PORT, max_full_rate};
use rein_testkit::{
    iperf::{self, ClientOptions, Server},
    netns::Netns,
};

use crate::cli::{Direction, Proto, Scenario};

/// The server of flow B, the flow that joins a start/stop run.
pub const JOINER_PORT: u16 = 5202;

/// Starts a one-off server (`-1`: it exits after one test) in `ns`, bound to `addr` and `port`,
/// and waits until it listens. Killed when the handle is dropped if it is still running.
pub fn server(ns: &Netns, addr: &str, port: u16, timeout: std::time::Duration) -> Result<Server> {
    Ok(Server::one_off(ns, addr, port, timeout)?)
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
    let options = ClientOptions {
        seconds,
        omit,
        streams: scenario.flows,
        reverse: scenario.direction == Direction::Ingress,
        // Offered at twice the limit: the limiter decides what gets through.
        udp_bitrate: (scenario.proto == Proto::Udp).then(|| scenario.rate.iperf(2)),
        server_output: true,
        ..ClientOptions::default()
    };
    iperf::client_argv(addr, port, &options)
}

/// Reads the client's `--json --get-server-output` output.
pub fn parse(json: &str, scenario: &Scenario) -> Result<Measured> {
    let (udp, reverse) = shape(scenario);
    Ok(iperf::parse(json, udp, reverse)?)
}

/// Reads a finished client's output (see `rein_testkit::iperf::parse_output`).
pub fn parse_output(
    output: &rein_testkit::process::Output,
    scenario: &Scenario,
) -> Result<Measured> {
    let (udp, reverse) = shape(scenario);
    Ok(iperf::parse_output(output, udp, reverse)?)
}

/// Whether `scenario` is UDP, and whether its client receives (`-R`).
fn shape(scenario: &Scenario) -> (bool, bool) {
    (
        scenario.proto == Proto::Udp,
        scenario.direction == Direction::Ingress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Mix, Rate};

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
}
