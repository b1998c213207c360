//! The engine as the agent will drive it: a desired state, the plan that reaches it, applied
//! all-or-nothing across capabilities. Needs root, a bpffs at /sys/fs/bpf and cgroup v2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rein::{
    Engine, Error,
    capabilities::{
        cgroup_limit::{LimitSpec, Origin, RuleRecord},
        net_rules::{
            WantedNetRule,
            spec::{NetHook, NetLimit, NetRuleSpec, Per, Sources},
        },
    },
    platform::cgroupfs::CgroupFs,
};
use rein_testkit::rein_instance::ReinInstance;

fn limit(cgroup: &std::path::Path, rate: &str) -> RuleRecord {
    let cgroup = CgroupFs::discover().unwrap().resolve(cgroup).unwrap();
    RuleRecord {
        cgroup: cgroup.relative().to_owned(),
        cgroup_id: cgroup.id().unwrap(),
        egress: Some(LimitSpec {
            rate: rate.parse().unwrap(),
            burst: None,
        }),
        ingress: None,
        origin: Origin::Cgroup,
        declared_by: None,
    }
}

#[test]
fn a_desired_state_is_planned_applied_and_then_holds() {
    let rein = ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"));
    let app = rein.cgroup("app");
    let mut engine = Engine::open(rein.library_instance()).unwrap();

    let mut desired = engine.desired().unwrap();
    assert!(
        engine.plan(&desired).unwrap().is_empty(),
        "a fresh instance"
    );
    desired.cgroup_limits.push(limit(&app, "10mbit"));
    let plan = engine.plan(&desired).unwrap();
    let changes: Vec<String> = plan.changes().collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0].starts_with("limit cgroup /") && changes[0].contains("egress 10mbit"),
        "{changes:?}"
    );
    engine.apply(&plan).unwrap();
    assert!(
        engine.plan(&desired).unwrap().is_empty(),
        "applied, the instance is as desired"
    );
    let status = engine.status().unwrap();
    assert_eq!(
        status.cgroups[0]
            .egress
            .as_ref()
            .unwrap()
            .rate_bits_per_second,
        10_000_000
    );

    desired.cgroup_limits.clear();
    let plan = engine.plan(&desired).unwrap();
    assert!(plan.changes().all(|c| c.starts_with("remove")), "{plan}");
    engine.apply(&plan).unwrap();
    drop(engine);
    rein.assert_no_trace("the limit was planned away");
}

/// A plan whose last step fails (a net rule on a device that does not exist) undoes the
/// steps of every capability before it: the cgroup limit keeps its old rate in the kernel and
/// in the state, and no net program or map is left.
#[test]
fn a_plan_that_fails_midway_changes_nothing() {
    let rein = ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"));
    let app = rein.cgroup("app");
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    let mut desired = engine.desired().unwrap();
    desired.cgroup_limits.push(limit(&app, "10mbit"));
    engine.apply(&engine.plan(&desired).unwrap()).unwrap();
    let before = engine.state().unwrap();

    desired.cgroup_limits[0] = limit(&app, "20mbit");
    desired.net_rules.push(WantedNetRule {
        id: None,
        spec: NetRuleSpec {
            device: "rein-nodev0".into(),
            hook: NetHook::TcIngress,
            source: None,
            destination: None,
            protocol: None,
            port: None,
            limit: NetLimit::TokenBucket {
                per: Per::Bytes,
                rate: 1_250_000,
                burst: 65_536,
            },
            sources: Sources::Shared,
        },
        declared_by: None,
    });
    let plan = engine.plan(&desired).unwrap();
    assert_eq!(plan.changes().count(), 2, "{plan}");
    let error = engine.apply(&plan).unwrap_err();
    assert!(matches!(error, Error::NoSuchDevice(_)), "{error}");

    let after = engine.state().unwrap();
    assert_eq!(after.cgroup_limits, before.cgroup_limits);
    assert!(after.net_rules.is_empty());
    let status = engine.status().unwrap();
    assert_eq!(
        status.cgroups[0]
            .egress
            .as_ref()
            .unwrap()
            .rate_bits_per_second,
        10_000_000,
        "the kernel kept the old rate"
    );
    assert!(
        !rein.pin_dir().join("net").exists(),
        "a net link was left behind"
    );
    drop(engine);
}
