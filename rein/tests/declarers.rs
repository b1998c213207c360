//! Two declarers on one instance: the files (`rein apply`, `rein agent`) and rein's Kubernetes
//! node agent. Each one's exact apply removes only what it declared itself, whatever the names;
//! `rein get` and `rein list` say who holds each limit; a resource that wants what the other
//! holds is refused, and the error names it. Needs root, a bpffs at /sys/fs/bpf and cgroup v2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use rein::{
    Engine, Error,
    declarative::{self, Declarer, Kind, LoadOptions, Location, Mode, Resources},
};
use rein_testkit::{files::Files, netns::Netns, rein_instance::ReinInstance};
use serde_json::Value;

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

fn cgroup_limit(name: &str, target: &str, rate: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: {name}\nspec:\n  \
         {target}\n  egress:\n    rate: {rate}\n"
    )
}

fn rate_limit(name: &str, destination: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: RateLimit\nmetadata:\n  name: {name}\nspec:\n  \
         destination: \"{destination}\"\n  rate: 1/min\n  burst: 3\n"
    )
}

/// The resources of `documents`, read as a file; `object` makes them the node agent's, with
/// the object they came from as their location.
fn resources(files: &Files, documents: &[String], object: Option<&str>) -> Resources {
    let file = PathBuf::from(files.write(
        &format!("r-{}.yaml", rein_testkit::netns::unique_suffix()),
        &documents.join("---\n"),
    ));
    let mut resources = declarative::load(&[file], &LoadOptions::default()).unwrap();
    if let Some(object) = object {
        for declared in &mut resources.items {
            declared.location = Location::Object(object.to_owned());
        }
    }
    resources
}

fn apply(rein: &ReinInstance, resources: &Resources, declarer: Declarer) -> rein::Result<()> {
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    declarative::apply_as(&mut engine, resources, Mode::Exact, declarer).map(drop)
}

/// `rein get -o json`: (kind, name, origin) of each item, sorted.
fn listed(rein: &ReinInstance) -> Vec<(String, String, String)> {
    let out = rein.rein(&["get", "-o", "json"]);
    let items: Vec<Value> = serde_json::from_str(out.ok()).unwrap();
    let mut listed: Vec<(String, String, String)> = items
        .iter()
        .map(|item| {
            let text = |v: &Value| v.as_str().unwrap().to_owned();
            (
                text(&item["kind"]),
                text(&item["metadata"]["name"]),
                text(&item["status"]["origin"]),
            )
        })
        .collect();
    listed.sort();
    listed
}

fn item(kind: &str, name: &str, origin: &str) -> (String, String, String) {
    (kind.into(), name.into(), origin.into())
}

#[test]
fn the_files_and_the_node_agent_never_remove_each_others_resources() {
    let rein = instance();
    let files = Files::new("declarers");
    let (a, b) = (
        rein.relative(&rein.cgroup("a")),
        rein.relative(&rein.cgroup("b")),
    );
    let netns = Netns::create("rk-decl").unwrap();
    // The same names on both sides: each declarer's own.
    let files_resources = resources(
        &files,
        &[
            cgroup_limit("web", &format!("cgroup: {a}"), "1mbit"),
            rate_limit("calls", "198.18.40.1:80"),
        ],
        None,
    );
    let agent_resources = resources(
        &files,
        &[
            cgroup_limit("web", &format!("cgroup: {b}"), "2mbit"),
            cgroup_limit(
                "pod.default.web-0",
                &format!("netns: {}", netns.path()),
                "3mbit",
            ),
            rate_limit("calls", "198.18.40.2:80"),
        ],
        Some("Pod default/web-0"),
    );
    apply(&rein, &files_resources, Declarer::Files).unwrap();
    apply(&rein, &agent_resources, Declarer::Kubernetes).unwrap();
    let everything = vec![
        item("CgroupLimit", "pod.default.web-0", "kubernetes"),
        item("CgroupLimit", "web", "declared"),
        item("CgroupLimit", "web", "kubernetes"),
        item("RateLimit", "calls", "declared"),
        item("RateLimit", "calls", "kubernetes"),
    ];
    assert_eq!(listed(&rein), everything);
    // The records say who declared them; the files' as before there were declarers.
    {
        let engine = Engine::open(rein.library_instance()).unwrap();
        let state = engine.state().unwrap();
        let mut owners: Vec<(String, String)> = state
            .cgroup_limits
            .rules
            .iter()
            .map(|r| (r.cgroup.clone(), r.declared_by.clone().unwrap().name))
            .collect();
        owners.sort();
        assert_eq!(
            owners,
            [
                (a.clone(), "web".into()),
                (b.clone(), "kubernetes:web".into())
            ]
        );
        let mut conn: Vec<String> = state
            .conn_limits
            .rules
            .iter()
            .map(|r| r.declared_by.clone().unwrap())
            .collect();
        conn.sort();
        assert_eq!(conn, ["calls", "kubernetes:calls"]);
    }
    let table = rein.rein(&["list"]).ok().to_owned();
    assert!(
        table.contains("declared web") && table.contains("kubernetes web"),
        "{table}"
    );
    assert!(table.contains("kubernetes pod.default.web-0"), "{table}");
    let table = rein.rein(&["get"]).ok().to_owned();
    assert!(table.contains("kubernetes"), "{table}");

    // The files' exact apply of nothing: only theirs go.
    apply(&rein, &Resources::default(), Declarer::Files).unwrap();
    assert_eq!(
        listed(&rein),
        [
            item("CgroupLimit", "pod.default.web-0", "kubernetes"),
            item("CgroupLimit", "web", "kubernetes"),
            item("RateLimit", "calls", "kubernetes"),
        ]
    );
    assert!(rein.rule(&a).is_none() && rein.rule(&b).is_some());
    // And the reverse.
    apply(&rein, &files_resources, Declarer::Files).unwrap();
    apply(&rein, &Resources::default(), Declarer::Kubernetes).unwrap();
    assert_eq!(
        listed(&rein),
        [
            item("CgroupLimit", "web", "declared"),
            item("RateLimit", "calls", "declared"),
        ]
    );
    assert!(rein.rule(&a).is_some() && rein.rule(&b).is_none());
    // `rein delete` of the files' names: the agent's resources of the same names stay.
    apply(&rein, &agent_resources, Declarer::Kubernetes).unwrap();
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    declarative::delete(&mut engine, &files_resources).unwrap();
    drop(engine);
    assert_eq!(listed(&rein).len(), 3, "{:?}", listed(&rein));
    assert!(
        listed(&rein)
            .iter()
            .all(|(_, _, origin)| origin == "kubernetes")
    );

    apply(&rein, &Resources::default(), Declarer::Kubernetes).unwrap();
    assert_eq!(listed(&rein), []);
    rein.assert_no_trace("both declarers removed theirs");
}

#[test]
fn a_resource_wanting_what_the_other_declarer_holds_is_refused_by_name() {
    let rein = instance();
    let files = Files::new("declarers");
    let a = rein.relative(&rein.cgroup("a"));
    let netns = Netns::create("rk-decl").unwrap();
    let files_resources = resources(
        &files,
        &[
            cgroup_limit("web", &format!("cgroup: {a}"), "1mbit"),
            cgroup_limit("ns", &format!("netns: {}", netns.path()), "1mbit"),
        ],
        None,
    );
    apply(&rein, &files_resources, Declarer::Files).unwrap();
    for (name, target) in [
        ("pod.default.web-0", format!("cgroup: {a}")),
        ("pod.default.web-1", format!("netns: {}", netns.path())),
    ] {
        let agent = resources(
            &files,
            &[cgroup_limit(name, &target, "5mbit")],
            Some(&format!("Pod default/{}", &name[12..])),
        );
        let error = apply(&rein, &agent, Declarer::Kubernetes).unwrap_err();
        assert_eq!(error.resource(), Some((Kind::CgroupLimit, name)), "{error}");
        assert!(matches!(error, Error::InResource { .. }));
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "Pod default/{}: CgroupLimit {name}: ",
                &name[12..]
            )) && message.contains("web") | message.contains("ns"),
            "{message}"
        );
    }
    // Nothing of the agent's was applied; the files' stand.
    assert_eq!(
        listed(&rein),
        [
            item("CgroupLimit", "ns", "declared"),
            item("CgroupLimit", "web", "declared"),
        ]
    );
    // The other way round, the agent's owner is named as such.
    apply(&rein, &Resources::default(), Declarer::Files).unwrap();
    let agent = resources(
        &files,
        &[cgroup_limit(
            "pod.default.web-0",
            &format!("cgroup: {a}"),
            "5mbit",
        )],
        Some("Pod default/web-0"),
    );
    apply(&rein, &agent, Declarer::Kubernetes).unwrap();
    let error = apply(&rein, &files_resources, Declarer::Files).unwrap_err();
    assert_eq!(error.resource(), Some((Kind::CgroupLimit, "web")));
    assert!(
        error.to_string().ends_with(
            "already limited by CgroupLimit pod.default.web-0 (rein's Kubernetes node agent's)"
        ),
        "{error}"
    );
    apply(&rein, &Resources::default(), Declarer::Kubernetes).unwrap();
    rein.assert_no_trace("the files' removed");
}

fn shared_limit(name: &str, cgroup: &str, rate: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: SharedLimit\nmetadata:\n  name: {name}\nspec:\n  \
         cgroups: [{cgroup}]\n  egress:\n    rate: {rate}\n"
    )
}

#[test]
fn a_shared_limit_of_the_node_agent_is_kept_apart_from_the_files() {
    let rein = instance();
    let files = Files::new("declarers-shared");
    let (a, b) = (
        rein.relative(&rein.cgroup("a")),
        rein.relative(&rein.cgroup("b")),
    );
    let agent_resources = resources(
        &files,
        &[shared_limit("policy.default.web", &a, "4mbit")],
        Some("BandwidthPolicy default/web"),
    );
    apply(&rein, &agent_resources, Declarer::Kubernetes).unwrap();
    // The files declaring nothing leave the agent's shared limit.
    apply(&rein, &Resources::default(), Declarer::Files).unwrap();
    assert_eq!(
        listed(&rein),
        [item("SharedLimit", "policy.default.web", "kubernetes")]
    );
    // The same name from the files is refused, naming the holder, and changes nothing.
    let clash = resources(
        &files,
        &[shared_limit("policy.default.web", &b, "1mbit")],
        None,
    );
    let error = apply(&rein, &clash, Declarer::Files).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("policy.default.web (rein's Kubernetes node agent's)"),
        "{error}"
    );
    {
        let engine = Engine::open(rein.library_instance()).unwrap();
        let state = engine.state().unwrap();
        let groups = &state.shared_limits.groups;
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].declared_by.as_deref(),
            Some("kubernetes:policy.default.web")
        );
        assert_eq!(groups[0].members.len(), 1);
    }
    // The agent's exact apply of nothing removes it.
    apply(&rein, &Resources::default(), Declarer::Kubernetes).unwrap();
    assert_eq!(listed(&rein), []);
}
