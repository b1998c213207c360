//! `rein agent` end to end, as a service is used: a configuration directory it applies and
//! follows, its metrics, systemd's notify protocol, and what happens to the limits when it is
//! stopped or killed.
//!
//! Every test runs its own instance and its own agent (killed on drop), with a configuration
//! directory of its own; the instance's drop purges what is left.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use rein::capabilities::cgroup_limit::datapath::Datapath;
use rein_common::{Direction, RuleKey};
use rein_testkit::{
    agent::{Agent, Config, cgroup_limit},
    cgroup::in_cgroup,
    iperf::{self, ClientOptions, PORT as IPERF3_PORT, Server},
    netns::HostPair,
    process::wait_until,
    rein_instance::ReinInstance,
};

/// Traffic tests share two cores: one at a time.
static TRAFFIC: Mutex<()> = Mutex::new(());

fn traffic() -> MutexGuard<'static, ()> {
    TRAFFIC.lock().unwrap_or_else(|e| e.into_inner())
}

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

/// The egress rate (bit/s) `rein list` shows for `cgroup`, if it is limited.
fn egress_rate(rein: &ReinInstance, cgroup: &str) -> Option<u64> {
    rein.rule(cgroup)?["egress"]["rate_bits_per_second"].as_u64()
}

/// Whether `cgroup` gets to the egress rate `bits` within `patience`. Polled with `rein list`,
/// which may find the instance busy for a while (the agent loading the programs for its first
/// rule): that is asked again, not a failure.
fn rate_becomes(rein: &ReinInstance, cgroup: &str, bits: Option<u64>, patience: Duration) -> bool {
    wait_until(patience, || {
        let out = rein.rein(&["list", "--json"]);
        if !out.status.success() {
            assert!(
                out.stderr.contains("another rein command is running"),
                "`rein list` failed: {out}"
            );
            return false;
        }
        let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let rate = list["cgroups"].as_array().unwrap().iter().find_map(|rule| {
            (rule["cgroup"].as_str() == Some(cgroup))
                .then(|| rule["egress"]["rate_bits_per_second"].as_u64())
                .flatten()
        });
        rate == bits
    })
}

fn cgroup_id(path: &Path) -> u64 {
    rein::platform::cgroupfs::CgroupFs::discover()
        .unwrap()
        .resolve(path)
        .unwrap()
        .id()
        .unwrap()
}

#[test]
fn the_agent_applies_follows_edits_and_keeps_the_last_good_configuration() {
    let rein = instance();
    let web = rein.relative(&rein.cgroup("web"));
    let config = Config::new();
    config.write("web.yaml", &cgroup_limit("web", &web, "10mbit"));
    let agent = Agent::start(&rein, &config.dir, &[]);
    assert!(
        rate_becomes(&rein, &web, Some(10_000_000), Duration::from_secs(5)),
        "the agent did not apply its configuration"
    );
    assert_eq!(agent.sample("rein_agent_config_valid"), Some(1.0));
    let rate_series =
        format!("rein_cgroup_rate_bytes_per_second{{cgroup=\"{web}\",direction=\"egress\"}}");
    assert_eq!(agent.sample(&rate_series), Some(1_250_000.0));

    // An edit is picked up live.
    config.write("web.yaml", &cgroup_limit("web", &web, "20mbit"));
    assert!(
        rate_becomes(&rein, &web, Some(20_000_000), Duration::from_secs(5)),
        "the agent did not follow an edit"
    );

    // A bad file beside it: refused as a whole, the last good configuration stays, and the
    // metric and the log say so.
    config.write("broken.yaml", &cgroup_limit("broken", &web, "fast"));
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .sample("rein_agent_config_valid")
            == Some(0.0)),
        "the metric did not show the refused configuration"
    );
    assert_eq!(agent.sample("rein_agent_config_errors_total"), Some(1.0));
    assert_eq!(egress_rate(&rein, &web), Some(20_000_000));
    // In force, not just left behind: a rule removed by hand meanwhile is written back.
    let key = RuleKey::new(cgroup_id(&rein.cgroup("web")), Direction::Egress);
    let mut datapath = Datapath::open(&rein.library_instance()).unwrap();
    datapath.remove_rule(key);
    assert!(
        wait_until(Duration::from_secs(10), || datapath.rule(key).is_some()),
        "the last good configuration was not kept in force"
    );
    // SIGHUP reads the same bad file again: still refused, still in force.
    agent.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || agent
        .sample("rein_agent_config_errors_total")
        == Some(2.0)));
    assert_eq!(egress_rate(&rein, &web), Some(20_000_000));
    config.remove("broken.yaml");
    assert!(wait_until(Duration::from_secs(5), || agent
        .sample("rein_agent_config_valid")
        == Some(1.0)));

    // SIGTERM: the agent goes, the limit stays.
    let out = agent.stop(libc::SIGTERM);
    assert!(out.status.success(), "the agent failed: {out}");
    assert!(
        out.stderr.contains("broken.yaml:8:") && out.stderr.contains("stays in force"),
        "the log does not say where the configuration is bad and what stays:\n{out}"
    );
    assert_eq!(egress_rate(&rein, &web), Some(20_000_000));
}

#[test]
fn a_glob_covers_new_cgroups_within_a_second_and_drift_is_repaired() {
    let rein = instance();
    let config = Config::new();
    let glob = format!("/{}-job-*", rein.name());
    config.write("jobs.yaml", &cgroup_limit("jobs", &glob, "5mbit"));
    // One job before the agent starts: its programs are loaded then, and what is timed below
    // is the glob covering a new cgroup, not the kernel verifying programs.
    let first = rein.relative(&rein.cgroup("job-0"));
    let _agent = Agent::start(&rein, &config.dir, &[]);
    assert!(rate_becomes(
        &rein,
        &first,
        Some(5_000_000),
        Duration::from_secs(10)
    ));

    // A cgroup created after the agent started (a new service, a container).
    let started = Instant::now();
    let job = rein.cgroup("job-1");
    let job_relative = rein.relative(&job);
    assert!(
        rate_becomes(
            &rein,
            &job_relative,
            Some(5_000_000),
            Duration::from_secs(5)
        ),
        "the glob did not cover a new cgroup"
    );
    let covered = started.elapsed();
    eprintln!("a new cgroup was limited after {covered:?}");
    assert!(covered < Duration::from_millis(1000), "took {covered:?}");

    // A rule removed from the kernel by hand is written back.
    let key = RuleKey::new(cgroup_id(&job), Direction::Egress);
    let mut datapath = Datapath::open(&rein.library_instance()).unwrap();
    assert!(datapath.rule(key).is_some());
    datapath.remove_rule(key);
    assert!(
        wait_until(Duration::from_secs(10), || datapath.rule(key).is_some()),
        "the rule removed by hand was not written back"
    );

    // A cgroup that goes and comes back (a restarted service) is limited again.
    fs::remove_dir(&job).unwrap();
    assert!(rate_becomes(
        &rein,
        &job_relative,
        None,
        Duration::from_secs(5)
    ));
    fs::create_dir(&job).unwrap();
    assert!(
        rate_becomes(
            &rein,
            &job_relative,
            Some(5_000_000),
            Duration::from_secs(5)
        ),
        "a cgroup that came back was not limited again"
    );
}

/// Killed outright while UDP runs through its limit, the agent leaves the limit enforced, and
/// started again it adopts it: nothing to change, and the bucket and counters carry on.
#[test]
fn sigkill_under_traffic_leaves_the_limit_and_a_restart_adopts_it() {
    let _traffic = traffic();
    let rein = instance();
    let app = rein.cgroup("app");
    let relative = rein.relative(&app);
    let config = Config::new();
    config.write("app.yaml", &cgroup_limit("app", &relative, "20mbit"));
    let agent = Agent::start(&rein, &config.dir, &[]);
    assert!(rate_becomes(
        &rein,
        &relative,
        Some(20_000_000),
        Duration::from_secs(5)
    ));

    let pair = HostPair::create("ra").unwrap();
    let _server = Server::start(
        pair.server(),
        &pair.link.server_addr,
        IPERF3_PORT,
        Duration::from_secs(60),
    )
    .unwrap();
    let opts = ClientOptions {
        seconds: 6,
        udp_bitrate: Some("100M".into()),
        ..ClientOptions::default()
    };
    let argv = iperf::client_argv(&pair.link.server_addr, IPERF3_PORT, &opts);
    let client = in_cgroup(&app, &pair.client().exec(&argv), Duration::from_secs(30))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = agent.stop(libc::SIGKILL);
    assert!(!killed.status.success());
    let passed = || -> u64 {
        rein.rule(&relative).unwrap()["egress"]["passed_bytes"]
            .as_u64()
            .unwrap()
    };
    let at_kill = passed();
    std::thread::sleep(Duration::from_millis(1000));
    let without_agent = passed();
    assert!(
        without_agent > at_kill,
        "the limit stopped counting without the agent"
    );
    let agent = Agent::start(&rein, &config.dir, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let after_restart = passed();
    assert!(
        after_restart > without_agent,
        "the counters went back on a restart ({without_agent} -> {after_restart})"
    );
    let result = iperf::parse_output(&client.wait().unwrap(), true, false).unwrap();
    let restarted = agent.stop(libc::SIGTERM);
    assert!(
        !restarted.stderr.contains("limit cgroup") && !restarted.stderr.contains("change cgroup"),
        "the restarted agent changed the limit instead of adopting it:\n{restarted}"
    );
    // Through the kill and the restart the bucket held: no reset to a full bucket, no gap.
    let ratio = result.received_bps / 20e6;
    eprintln!("UDP through a killed and restarted agent: {ratio:.3} of the limit");
    assert!(
        (0.80..=1.02).contains(&ratio),
        "UDP ran at {ratio:.3} of the limit through the kill and the restart"
    );
}

/// The outbound conn rules `rein conn list --json` shows, `None` while the instance is busy.
fn conn_rules(rein: &ReinInstance) -> Option<Vec<serde_json::Value>> {
    let out = rein.rein(&["conn", "list", "--json"]);
    if !out.status.success() {
        assert!(
            out.stderr.contains("another rein command is running"),
            "`rein conn list` failed: {out}"
        );
        return None;
    }
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    Some(listed["outbound"].as_array().unwrap().clone())
}

#[test]
fn the_agent_reconciles_a_rate_limit_waiting_for_its_cgroup() {
    let rein = instance();
    let parent = rein.relative(&rein.cgroup("rl"));
    let late = format!("{parent}/late");
    let rate_limit = |rate: &str| {
        format!(
            "apiVersion: rein.dev/v1alpha1\nkind: RateLimit\nmetadata:\n  name: api\nspec:\n  \
             destination: 198.18.13.232:8080\n  rate: {rate}\n  cgroup: {late}\n"
        )
    };
    let config = Config::new();
    config.write("api.yaml", &rate_limit("10/s"));
    let agent = Agent::start(&rein, &config.dir, &[]);
    // Its cgroup is not there: nothing yet, and the configuration is fine.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(conn_rules(&rein).map(|r| r.len()), Some(0));
    assert_eq!(agent.sample("rein_agent_config_valid"), Some(1.0));
    // The cgroup appears: the rule follows.
    rein.cgroup("rl/late");
    let rule_with = |rate: &str| {
        let mut found = None;
        let there = wait_until(Duration::from_secs(5), || {
            found = conn_rules(&rein).and_then(|rules| {
                rules
                    .into_iter()
                    .find(|r| r["declared_by"] == "api" && r["limit"]["rate"] == rate)
            });
            found.is_some()
        });
        assert!(there, "the agent did not declare the rule at {rate}");
        found.unwrap()
    };
    let first = rule_with("10/s");
    assert_eq!(first["scope"]["path"], late.as_str(), "{first:#}");
    // An edit changes it in place: the same rule, the new rate.
    config.write("api.yaml", &rate_limit("20/s"));
    let edited = rule_with("20/s");
    assert_eq!(edited["id"], first["id"]);
    // Gone from the files, gone from the kernel.
    config.remove("api.yaml");
    assert!(
        wait_until(Duration::from_secs(5), || conn_rules(&rein)
            .is_some_and(|r| r.is_empty())),
        "the agent did not remove the rule"
    );
    drop(agent);
    rein.assert_no_trace("the agent's RateLimit removed");
}

#[test]
fn sigterm_with_remove_on_exit_removes_what_the_agent_applied_only() {
    let rein = instance();
    let declared = rein.relative(&rein.cgroup("declared"));
    let by_hand = rein.cgroup("by-hand");
    rein.rein(&[
        "set",
        "--cgroup",
        by_hand.to_str().unwrap(),
        "--egress",
        "1mbit",
    ])
    .ok();
    let config = Config::new();
    config.write("d.yaml", &cgroup_limit("declared", &declared, "10mbit"));
    let agent = Agent::start(&rein, &config.dir, &["--remove-on-exit"]);
    assert!(rate_becomes(
        &rein,
        &declared,
        Some(10_000_000),
        Duration::from_secs(5)
    ));
    let out = agent.stop(libc::SIGTERM);
    assert!(out.status.success(), "{out}");
    assert_eq!(egress_rate(&rein, &declared), None);
    assert_eq!(
        egress_rate(&rein, &rein.relative(&by_hand)),
        Some(1_000_000),
        "the agent removed a limit set by hand"
    );
    rein.rein(&["unset", "--cgroup", by_hand.to_str().unwrap()])
        .ok();
    rein.assert_no_trace("the agent's removal and an unset");
}

#[test]
fn a_configuration_others_can_write_is_refused() {
    let rein = instance();
    let web = rein.relative(&rein.cgroup("web"));
    let config = Config::new();
    config.write("web.yaml", &cgroup_limit("web", &web, "10mbit"));
    fs::set_permissions(
        config.dir.join("web.yaml"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let agent = Agent::start(&rein, &config.dir, &[]);
    assert!(wait_until(Duration::from_secs(5), || agent
        .sample("rein_agent_config_errors_total")
        == Some(1.0)));
    assert_eq!(agent.sample("rein_agent_config_valid"), Some(0.0));
    assert_eq!(egress_rate(&rein, &web), None);
    let out = agent.stop(libc::SIGTERM);
    assert!(out.stderr.contains("writable"), "{out}");
    rein.assert_no_trace("a refused configuration");
}

#[test]
fn the_agent_speaks_systemds_notify_protocol() {
    let rein = instance();
    let config = Config::new();
    let socket_path = config.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let command = rein
        .command()
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let agent = Agent::start_with(command, &config.dir, &[]);
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !(messages.iter().any(|m: &String| m.contains("READY=1"))
            && messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let n = socket.recv(&mut buffer).unwrap();
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "no READY=1 in {messages:?}"
    );
    assert!(
        messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "the watchdog was not pinged: {messages:?}"
    );
    agent.signal(libc::SIGTERM);
    let stopping = (0..20).any(|_| {
        socket
            .recv(&mut buffer)
            .is_ok_and(|n| String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1"))
    });
    assert!(stopping, "no STOPPING=1");
    drop(agent);
}

#[test]
fn a_bad_metrics_address_is_refused() {
    let rein = instance();
    let config = Config::new();
    rein.rein(&[
        "agent",
        "--config",
        config.dir.to_str().unwrap(),
        "--metrics-addr",
        "localhost",
    ])
    .refused(&["metrics-addr", "localhost"]);
    rein.assert_no_trace("a refused agent");
}
