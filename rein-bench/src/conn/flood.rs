//! Inbound SYN limits under a spoofed SYN flood: rein at XDP and at tc ingress (`rein conn add
//! --dev`) against nftables (`limit rate over`, `ct count over`, a per-source `meter`).
//!
//! A client namespace sends a bounded flood of SYNs with random spoofed sources (rein-testkit's
//! raw-socket generator) over a veth to a server namespace with a listener. What was admitted
//! is counted by an nftables counter in the server's prerouting after every limiter (XDP and tc
//! ingress run before netfilter; the nftables limiters run in an earlier prerouting chain), so
//! every limiter is measured at the same place. Aggregate limits (one bucket for the service)
//! show the drop rate and the receiving CPU; per-source limits show whether a legitimate
//! client keeps its own rate while the flood runs.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use rein_testkit::{
    connect::{Reply, Server},
    netns::{HostPair, Netns},
    process::{self, Cmd},
    rein_instance::ReinInstance,
    syn::{count_connects, syn_flood},
};
use serde::Serialize;
use serde_json::Value;

use crate::{conn::report::Spread, cpu};

/// The service's port, private to the server's namespace.
const PORT: u16 = 8443;
const COMMAND: Duration = Duration::from_secs(30);
/// How long a legitimate client waits for a SYN-ACK before trying again: a refused SYN is
/// never answered.
const RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub rounds: u32,
    pub seconds: u32,
    /// SYNs per second the flood offers.
    pub offered: u64,
    /// The aggregate limits: SYNs (nftables `ct count`: connections) per second, and burst.
    pub limit: u64,
    pub burst: u64,
    /// The per-source limits, which the legitimate client also connects at.
    pub per_source_rate: u64,
    pub per_source_burst: u64,
}

/// What limits the SYNs of the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Limiter {
    /// Nothing: what the flood delivers unhindered.
    None,
    ReinXdp,
    ReinTc,
    /// `tcp flags syn limit rate over N/second burst B packets drop`.
    NftLimit,
    /// `ct count over N drop`: a limit on the connections conntrack holds, not a rate.
    NftCtCount,
}

impl Limiter {
    pub const ALL: [Self; 5] = [
        Self::None,
        Self::ReinXdp,
        Self::ReinTc,
        Self::NftLimit,
        Self::NftCtCount,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::None => "no limiter",
            Self::ReinXdp => "rein --xdp",
            Self::ReinTc => "rein (tc ingress)",
            Self::NftLimit => "nft limit rate",
            Self::NftCtCount => "nft ct count",
        }
    }
}

/// A per-source limiter, with the legitimate client beside the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PerSource {
    ReinXdp,
    ReinTc,
    /// `meter { ip saddr limit rate over N/second burst B packets } drop`.
    NftMeter,
}

impl PerSource {
    pub const ALL: [Self; 3] = [Self::ReinXdp, Self::ReinTc, Self::NftMeter];

    pub fn label(self) -> &'static str {
        match self {
            Self::ReinXdp => "rein --xdp --per-source",
            Self::ReinTc => "rein --per-source (tc)",
            Self::NftMeter => "nft meter ip saddr limit",
        }
    }
}

/// One flood against one limiter.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FloodRound {
    /// How long the flood took: its generator stops after the configured time, but a send the
    /// receiving side holds up (it runs in the sender's softirq on a veth) can stretch it.
    pub seconds: f64,
    pub offered: u64,
    pub admitted: u64,
    pub softirq_seconds: f64,
    pub busy_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodRow {
    pub limiter: Limiter,
    pub label: String,
    pub rounds: Vec<FloodRound>,
    pub offered: Spread,
    pub offered_per_second: Spread,
    pub admitted: Spread,
    pub admitted_per_second: Spread,
    /// Admitted per second over the limit.
    pub admitted_over_limit: Spread,
    /// SYNs offered and not admitted, by the limiter or on the way.
    pub dropped: Spread,
    /// Softirq CPU-seconds per second of flood (1.0 = one core busy).
    pub softirq_cores: Spread,
    /// All busy CPU-seconds per second of flood, the sender's included.
    pub busy_cores: Spread,
}

impl FloodRow {
    pub fn new(limiter: Limiter, limit: u64, rounds: Vec<FloodRound>) -> Self {
        let of = |f: &dyn Fn(&FloodRound) -> f64| {
            Spread::of(&rounds.iter().map(f).collect::<Vec<f64>>())
        };
        let s = |r: &FloodRound| r.seconds.max(1e-3);
        Self {
            limiter,
            label: limiter.label().to_owned(),
            offered: of(&|r| r.offered as f64),
            offered_per_second: of(&|r| r.offered as f64 / s(r)),
            admitted: of(&|r| r.admitted as f64),
            admitted_per_second: of(&|r| r.admitted as f64 / s(r)),
            admitted_over_limit: of(&|r| r.admitted as f64 / s(r) / limit.max(1) as f64),
            dropped: of(&|r| r.offered.saturating_sub(r.admitted) as f64),
            softirq_cores: of(&|r| r.softirq_seconds / s(r)),
            busy_cores: of(&|r| r.busy_seconds / s(r)),
            rounds,
        }
    }
}

/// The legitimate client beside the flood, against one per-source limiter.
#[derive(Debug, Clone, Serialize)]
pub struct LegitRow {
    pub limiter: PerSource,
    pub label: String,
    /// burst + rate x seconds.
    pub expected: u64,
    pub established: Spread,
    /// Established over expected.
    pub ratio: Spread,
    pub flood_sent: Spread,
}

impl LegitRow {
    pub fn new(limiter: PerSource, expected: u64, rounds: &[(u64, u64)]) -> Self {
        let established: Vec<f64> = rounds.iter().map(|r| r.0 as f64).collect();
        let ratio: Vec<f64> = established
            .iter()
            .map(|e| e / expected.max(1) as f64)
            .collect();
        let sent: Vec<f64> = rounds.iter().map(|r| r.1 as f64).collect();
        Self {
            limiter,
            label: limiter.label().to_owned(),
            expected,
            established: Spread::of(&established),
            ratio: Spread::of(&ratio),
            flood_sent: Spread::of(&sent),
        }
    }
}

fn read_cpu() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    cpu::softirq_and_busy_seconds(&stat).context("no cpu line in /proc/stat")
}

/// The packets of `nft list counter`'s output.
pub fn counter_packets(listing: &str) -> Option<u64> {
    let rest = listing.split("packets ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A listener in the server's namespace that accepts and closes until dropped.
fn listen(pair: &HostPair) -> Result<Server> {
    let addr = SocketAddr::new(pair.link.server_addr.parse()?, PORT);
    Ok(Server::start(pair.server(), &[addr], Reply::Close)?)
}

fn nft(ns: &Netns, script: &str) -> Result<String> {
    let out = Cmd::new(["ip", "netns", "exec", ns.name(), "nft", script], COMMAND).run()?;
    Ok(out.stdout)
}

/// The counter of admitted SYNs, in a table of the server's namespace (which goes with it).
fn install_counter(ns: &Netns) -> Result<()> {
    let chain = |name: &str, priority: i32| {
        format!(
            "add chain inet rbench {name} {{ type filter hook prerouting priority {priority}; \
             policy accept; }}"
        )
    };
    for command in [
        "add table inet rbench".to_owned(),
        "add counter inet rbench admitted".to_owned(),
        chain("limiter", 0),
        chain("count", 10),
        format!(
            "add rule inet rbench count tcp dport {PORT} tcp flags & (syn|ack) == syn counter \
             name admitted"
        ),
    ] {
        nft(ns, &command)?;
    }
    Ok(())
}

fn admitted(ns: &Netns) -> Result<u64> {
    let listing = nft(ns, "list counter inet rbench admitted")?;
    counter_packets(&listing).with_context(|| format!("no packets in {listing:?}"))
}

/// A limit in place for one run; removed on drop.
enum Installed<'a> {
    Nothing,
    Rein {
        rein: &'a ReinInstance,
        ns: &'a Netns,
        id: u64,
    },
    Nft(&'a Netns),
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let result = match self {
            Self::Nothing => Ok(()),
            Self::Rein { rein, ns, id } => rein
                .command_in_ns(ns)
                .args(["conn", "del", &id.to_string()])
                .timeout(COMMAND)
                .cleanup()
                .run()
                .map(drop)
                .map_err(anyhow::Error::from),
            Self::Nft(ns) => nft(ns, "flush chain inet rbench limiter").map(drop),
        };
        if let Err(e) = result {
            eprintln!("rein-bench-conn: warning: removing a limit: {e:#}");
        }
    }
}

struct Bench<'a> {
    rein: &'a ReinInstance,
    pair: &'a HostPair,
    config: &'a Config,
}

impl<'a> Bench<'a> {
    fn rein_rule(&self, rate: u64, burst: u64, extra: &[&str]) -> Result<Installed<'a>> {
        let ns = self.pair.server();
        let (rate, burst, port) = (format!("{rate}/s"), burst.to_string(), PORT.to_string());
        let mut args = vec![
            "conn",
            "add",
            "--dev",
            self.pair.link.server_if.as_str(),
            "--dport",
            &port,
            "--rate",
            &rate,
            "--burst",
            &burst,
        ];
        args.extend_from_slice(extra);
        self.rein
            .command_in_ns(ns)
            .args(&args)
            .timeout(COMMAND)
            .run()?;
        let out = self
            .rein
            .command_in_ns(ns)
            .args(["conn", "list", "--json"])
            .timeout(COMMAND)
            .run()?;
        let listed: Value = serde_json::from_str(&out.stdout).context("rein conn list --json")?;
        let id = listed["inbound"]
            .as_array()
            .and_then(|rules| rules.iter().filter_map(|r| r["id"].as_u64()).max())
            .context("rein conn list shows no inbound rule")?;
        Ok(Installed::Rein {
            rein: self.rein,
            ns,
            id,
        })
    }

    fn nft_rule(&self, rule: &str) -> Result<Installed<'a>> {
        let ns = self.pair.server();
        nft(
            ns,
            &format!(
                "add rule inet rbench limiter tcp dport {PORT} tcp flags & (syn|ack) == syn {rule}"
            ),
        )?;
        Ok(Installed::Nft(ns))
    }

    fn install(&self, limiter: Limiter) -> Result<Installed<'a>> {
        let (n, b) = (self.config.limit, self.config.burst);
        match limiter {
            Limiter::None => Ok(Installed::Nothing),
            Limiter::ReinXdp => self.rein_rule(n, b, &["--xdp"]),
            Limiter::ReinTc => self.rein_rule(n, b, &[]),
            Limiter::NftLimit => self.nft_rule(&format!(
                "limit rate over {n}/second burst {b} packets drop"
            )),
            Limiter::NftCtCount => self.nft_rule(&format!("ct count over {n} drop")),
        }
    }

    fn install_per_source(&self, limiter: PerSource) -> Result<Installed<'a>> {
        let (n, b) = (self.config.per_source_rate, self.config.per_source_burst);
        match limiter {
            PerSource::ReinXdp => self.rein_rule(n, b, &["--per-source", "--xdp"]),
            PerSource::ReinTc => self.rein_rule(n, b, &["--per-source"]),
            PerSource::NftMeter => self.nft_rule(&format!(
                "meter persource size 65536 {{ ip saddr limit rate over {n}/second burst {b} \
                 packets }} drop"
            )),
        }
    }

    fn server(&self) -> Result<SocketAddrV4> {
        Ok(SocketAddrV4::new(self.pair.link.server_addr.parse()?, PORT))
    }

    fn flood(&self, duration: Duration) -> Result<u64> {
        flood_from(
            self.pair.client(),
            self.server()?,
            self.config.offered,
            duration,
        )
    }

    fn flood_round(&self, limiter: Limiter) -> Result<FloodRound> {
        let _limit = self.install(limiter)?;
        let ns = self.pair.server();
        nft(ns, "reset counter inet rbench admitted")?;
        let before = read_cpu()?;
        let started = std::time::Instant::now();
        let offered = self.flood(Duration::from_secs(u64::from(self.config.seconds)))?;
        let seconds = started.elapsed().as_secs_f64();
        let after = read_cpu()?;
        Ok(FloodRound {
            seconds,
            offered,
            admitted: admitted(ns)?,
            softirq_seconds: after.0 - before.0,
            busy_seconds: after.1 - before.1,
        })
    }

    /// (established by the legitimate client, SYNs the flood sent).
    fn legit_round(&self, limiter: PerSource, source: Ipv4Addr) -> Result<(u64, u64)> {
        let _limit = self.install_per_source(limiter)?;
        let server = self.server()?;
        let seconds = Duration::from_secs(u64::from(self.config.seconds));
        let client = self.pair.client();
        thread::scope(|scope| -> Result<(u64, u64)> {
            let offered = self.config.offered;
            let flood = scope.spawn(move || {
                flood_from(
                    client,
                    server,
                    offered,
                    seconds + Duration::from_millis(300),
                )
            });
            // The flood first, so that the client meets it from its first connect.
            thread::sleep(Duration::from_millis(200));
            let established = client
                .run(|| count_connects(source, server, seconds, RETRY))?
                .context("the legitimate client")?;
            let sent = flood
                .join()
                .map_err(|_| anyhow!("the flood thread panicked"))??;
            Ok((established, sent))
        })
    }
}

/// `offered` spoofed SYNs a second at `server` for `duration`, from `client`: how many were sent.
fn flood_from(
    client: &Netns,
    server: SocketAddrV4,
    offered: u64,
    duration: Duration,
) -> Result<u64> {
    let sent = client
        .run(|| syn_flood(server, offered, duration))?
        .context("the SYN flood")?;
    Ok(sent)
}

/// Runs both parts, `config.rounds` times each in a rotating order.
pub fn run(
    binary: &Path,
    config: &Config,
    floods: &mut Vec<FloodRow>,
    legit: &mut Vec<LegitRow>,
) -> Result<()> {
    let rein = ReinInstance::new(
        binary,
        format!("bench-conn-{}-in", std::process::id()),
        "rein-bench-conn",
    )?;
    let pair = HostPair::create("rbf")?;
    let _server = listen(&pair)?;
    install_counter(pair.server())?;
    let source: Ipv4Addr = pair
        .add_client_addresses(1)?
        .first()
        .context("no client address")?
        .parse()?;
    let bench = Bench {
        rein: &rein,
        pair: &pair,
        config,
    };
    let mut flood_rounds: Vec<Vec<FloodRound>> = vec![Vec::new(); Limiter::ALL.len()];
    let mut legit_rounds: Vec<Vec<(u64, u64)>> = vec![Vec::new(); PerSource::ALL.len()];
    for round in 0..config.rounds as usize {
        eprintln!(
            "rein-bench-conn: flood round {} of {}",
            round + 1,
            config.rounds
        );
        for k in 0..Limiter::ALL.len() {
            process::check_interrupted()?;
            let at = (k + round) % Limiter::ALL.len();
            let result = bench.flood_round(Limiter::ALL[at])?;
            flood_rounds[at].push(result);
        }
        for k in 0..PerSource::ALL.len() {
            process::check_interrupted()?;
            let at = (k + round) % PerSource::ALL.len();
            let result = bench.legit_round(PerSource::ALL[at], source)?;
            legit_rounds[at].push(result);
        }
    }
    for (limiter, rounds) in Limiter::ALL.into_iter().zip(flood_rounds) {
        floods.push(FloodRow::new(limiter, config.limit, rounds));
    }
    let expected = config.per_source_burst + config.per_source_rate * u64::from(config.seconds);
    for (limiter, rounds) in PerSource::ALL.into_iter().zip(legit_rounds) {
        legit.push(LegitRow::new(limiter, expected, &rounds));
    }
    if floods.iter().any(|r| r.offered_per_second.median == 0.0) {
        bail!("the flood sent nothing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counter() {
        let listing =
            "table inet rbench {\n\tcounter admitted {\n\t\tpackets 1234 bytes 49360\n\t}\n}\n";
        assert_eq!(counter_packets(listing), Some(1234));
        assert_eq!(counter_packets("nothing"), None);
    }

    #[test]
    fn a_flood_row_is_per_second_and_against_the_limit() {
        let round = |offered, admitted| FloodRound {
            seconds: 3.0,
            offered,
            admitted,
            softirq_seconds: 1.5,
            busy_seconds: 3.0,
        };
        let row = FloodRow::new(
            Limiter::ReinXdp,
            1000,
            vec![
                round(600_000, 3_000),
                round(570_000, 3_300),
                round(630_000, 2_700),
            ],
        );
        assert_eq!(row.offered_per_second.median, 200_000.0);
        assert_eq!(row.admitted_per_second.median, 1000.0);
        assert_eq!(row.admitted_over_limit.max, 1.1);
        assert_eq!(row.dropped.median, 597_000.0);
        assert_eq!(row.softirq_cores.median, 0.5);
        assert_eq!(row.busy_cores.median, 1.0);
        // A flood the receiver held up is measured over the time it took.
        let slow = FloodRound {
            seconds: 6.0,
            ..round(60_000, 6_000)
        };
        let row = FloodRow::new(Limiter::NftCtCount, 1000, vec![slow]);
        assert_eq!(row.admitted_per_second.median, 1000.0);
        assert_eq!(row.offered.median, 60_000.0);
        assert_eq!(row.softirq_cores.median, 0.25);
    }

    #[test]
    fn a_legit_row_is_against_burst_plus_rate() {
        let row = LegitRow::new(PerSource::ReinTc, 35, &[(35, 10), (28, 12), (35, 11)]);
        assert_eq!(row.established.median, 35.0);
        assert_eq!(row.ratio.min, 0.8);
        assert_eq!(row.flood_sent.median, 11.0);
    }
}
