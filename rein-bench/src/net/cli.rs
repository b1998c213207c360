//! The latency of `rein net add` and `rein net del` as an operator sees it: the whole command
//! (start, state file, maps, program load and attach) on the server end of a veth pair in a
//! throwaway namespace, at tc ingress and at XDP.

use std::time::Instant;

use anyhow::Result;
use rein_testkit::{netns::HostPair, process::check_interrupted, stats};
use serde::Serialize;

use crate::net::rein::Rein;

/// Which call was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The first rule of the instance: creates the maps, loads and attaches the program.
    AddFirst,
    /// Another rule on the same device and hook: the program is attached already.
    AddMore,
    /// A rule that is not the last: the program stays.
    DelMore,
    /// The last rule: detaches the program and removes the maps.
    DelLast,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::AddFirst,
        Action::AddMore,
        Action::DelMore,
        Action::DelLast,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::AddFirst => "add, first rule (creates maps, loads + attaches program)",
            Self::AddMore => "add, program already attached",
            Self::DelMore => "del, other rules remain",
            Self::DelLast => "del, last rule (detaches, removes maps)",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CliTiming {
    /// `tc-ingress` or `xdp`.
    pub hook: &'static str,
    pub action: Action,
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    pub max_ms: f64,
}

pub fn run(rein: &Rein, reps: u32, timings: &mut Vec<CliTiming>) -> Result<()> {
    let pair = HostPair::create("rein-bench-net")?;
    let (ns, link) = (pair.server(), &pair.link);
    for (hook, xdp) in [("tc-ingress", false), ("xdp", true)] {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Action::ALL.len()];
        for _ in 0..reps {
            check_interrupted()?;
            let add = |proto: &str| -> Result<(u32, f64)> {
                let mut args = vec![
                    "--dev",
                    &link.server_if,
                    "--dir",
                    "ingress",
                    "--dst",
                    &link.server_addr,
                    "--proto",
                    proto,
                    "--pps",
                    "100000",
                ];
                if xdp {
                    args.push("--xdp");
                }
                let t = Instant::now();
                let id = rein.add(ns, &args)?;
                Ok((id, ms(t)))
            };
            let (first, t) = add("udp")?;
            samples[0].push(t);
            let (second, t) = add("tcp")?;
            samples[1].push(t);
            for (i, id) in [(2, second), (3, first)] {
                let t = Instant::now();
                rein.del(ns, id)?;
                samples[i].push(ms(t));
            }
        }
        for (action, samples_ms) in Action::ALL.into_iter().zip(samples) {
            timings.push(CliTiming {
                hook,
                action,
                median_ms: stats::percentile(&samples_ms, 50.0).unwrap_or(0.0),
                max_ms: samples_ms.iter().copied().fold(0.0, f64::max),
                samples_ms,
            });
        }
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
