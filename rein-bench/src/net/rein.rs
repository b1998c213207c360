//! A private rein instance (`REIN_INSTANCE=bench-net-<pid>`: its own pins under
//! /sys/fs/bpf/bench-net-<pid> and state under /run/bench-net-<pid>), run inside a namespace with
//! `nsenter --net` (not `ip netns exec`, whose private mounts hide /sys/fs/bpf). Purged on drop.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use rein_testkit::{netns::Netns, process::Cmd, rein_instance::ReinInstance};
use serde_json::Value;

/// Deadline of one rein command.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Rein {
    instance: ReinInstance,
}

impl Rein {
    pub fn new(binary: &Path, pid: u32) -> Result<Self> {
        let name = format!("bench-net-{pid}");
        Ok(Self {
            instance: ReinInstance::new(binary, name, "rein-bench-net")?,
        })
    }

    pub fn instance(&self) -> &str {
        self.instance.name()
    }

    /// `rein ARGS...` inside `ns`.
    fn cmd(&self, ns: &Netns, args: &[&str]) -> Cmd {
        self.instance.command_in_ns(ns).args(args).timeout(TIMEOUT)
    }

    /// `rein net add ARGS...` inside `ns`; the new rule's id.
    pub fn add(&self, ns: &Netns, args: &[&str]) -> Result<u32> {
        let mut argv = vec!["net", "add"];
        argv.extend_from_slice(args);
        let out = self.cmd(ns, &argv).run()?;
        added_id(&out.stdout)
            .with_context(|| format!("no rule id in the output of rein net add: {}", out.stdout))
    }

    pub fn del(&self, ns: &Netns, id: u32) -> Result<()> {
        self.cmd(ns, &["net", "del", &id.to_string()]).run()?;
        Ok(())
    }

    /// Passed and dropped packets of rule `id`, from `rein net list --json`.
    pub fn counters(&self, ns: &Netns, id: u32) -> Result<(u64, u64)> {
        let out = self.cmd(ns, &["net", "list", "--json"]).run()?;
        let rules: Value =
            serde_json::from_str(&out.stdout).context("parsing rein net list --json")?;
        let rule = rules
            .as_array()
            .and_then(|rules| {
                rules
                    .iter()
                    .find(|r| r.get("id").and_then(Value::as_u64) == Some(u64::from(id)))
            })
            .with_context(|| format!("rule {id} is not in rein net list"))?;
        let field = |name: &str| {
            rule.get(name)
                .and_then(Value::as_u64)
                .with_context(|| format!("rule {id} has no {name}"))
        };
        Ok((field("passed_packets")?, field("dropped_packets")?))
    }
}

/// A rule made by [`Rein::add`], deleted on drop.
pub struct Rule<'a> {
    pub rein: &'a Rein,
    pub ns: &'a Netns,
    pub id: u32,
}

impl Drop for Rule<'_> {
    fn drop(&mut self) {
        let del = self
            .rein
            .cmd(self.ns, &["net", "del", &self.id.to_string()])
            .cleanup();
        if let Err(e) = del.run() {
            eprintln!("rein-bench-net: warning: {e:#}");
        }
    }
}

/// The id in `added rule 3: ...`.
fn added_id(stdout: &str) -> Option<u32> {
    let rest = stdout.split("added rule ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_new_rule_id() {
        assert_eq!(
            added_id("added rule 12: xdp on rbs1, to 198.18.0.2 udp: 10000 pps\n"),
            Some(12)
        );
        assert_eq!(added_id("nothing\n"), None);
    }
}
