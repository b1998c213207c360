//! End-to-end tests of declarative limits: `rein apply`, `diff`, `delete` and `get` with YAML
//! files, through the real `rein` binary on a private instance each. What a file declares is
//! applied as a whole or not at all, leaves limits set by hand alone, and changes a limit in
//! place. Needs root, a bpffs at /sys/fs/bpf and cgroup v2.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fs, path::PathBuf, process::Command};

use rein::{
    capabilities::{
        cgroup_limit::datapath::Datapath, ingress_queue::datapath::device_name,
        net_rules::datapath::NetDatapath,
    },
    clock::{Clock, MonotonicClock},
};
use rein_common::{Direction, RuleKey};
use rein_testkit::{files::Files, netns::HostPair, process::Output, rein_instance::ReinInstance};
use serde_json::Value;

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

fn cgroup_limit(name: &str, cgroup: &str, limits: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: {name}\nspec:\n  \
         cgroup: {cgroup}\n{limits}"
    )
}

/// `rein get -o json`, every kind.
fn get(rein: &ReinInstance) -> Vec<Value> {
    let out = rein.rein(&["get", "-o", "json"]);
    serde_json::from_str(out.ok())
        .unwrap_or_else(|e| panic!("`rein get -o json` is not a JSON array ({e}):\n{out}"))
}

/// The listed item named `name`.
fn item(listed: &[Value], name: &str) -> Value {
    listed
        .iter()
        .find(|item| item["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {listed:#?}"))
        .clone()
}

/// The exit code of a command rein ran to its end.
fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn apply_diff_get_and_delete_round_trip() {
    let rein = instance();
    let web = rein.cgroup("web");
    let worker_a = rein.cgroup("worker-a");
    let worker_b = rein.cgroup("worker-b");
    let (web, worker_a, worker_b) = (
        rein.relative(&web),
        rein.relative(&worker_a),
        rein.relative(&worker_b),
    );
    let glob = format!("/{}-worker-*", rein.name());
    let files = Files::new("declarative");
    files.write(
        "10-web.yaml",
        &cgroup_limit(
            "web",
            &web,
            "  egress:\n    rate: 10mbit\n    burst: 128k\n",
        ),
    );
    files.write(
        "20-workers.yml",
        &format!(
            "# every worker\n---\n{}---\n",
            cgroup_limit("workers", &glob, "  ingress:\n    rate: 20mbit\n")
        ),
    );
    // Not YAML by its name: a directory's other files are not read.
    files.write("notes.txt", "not: [yaml");

    let out = rein.rein(&["diff", "-f", &files.dir()]);
    assert_eq!(code(&out), 1, "diff with changes exits 1:\n{out}");
    for needle in [&web, &worker_a, &worker_b] {
        assert!(out.stdout.contains(needle.as_str()), "{needle}:\n{out}");
    }
    rein.assert_no_trace("`rein diff`");

    let out = rein.rein(&["apply", "-f", &files.dir()]);
    let applied = out.ok();
    assert!(applied.contains(&format!("limit cgroup {web}")), "{out}");
    let out = rein.rein(&["diff", "-f", &files.dir()]);
    assert_eq!(code(&out), 0, "diff without changes exits 0:\n{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert_eq!(
        rein.rein(&["apply", "-f", &files.dir()]).ok(),
        "nothing to change\n"
    );

    let limit = rein.rule(&web).expect("web is limited");
    assert_eq!(limit["egress"]["rate_bits_per_second"], 10_000_000);
    assert_eq!(limit["egress"]["burst_bytes"], 128 * 1024);
    for worker in [&worker_a, &worker_b] {
        let limit = rein.rule(worker).expect("the glob limits every worker");
        assert_eq!(limit["ingress"]["rate_bits_per_second"], 20_000_000);
        assert!(limit["egress"].is_null());
    }

    let listed = get(&rein);
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let workers = item(&listed, "workers");
    assert_eq!(workers["kind"], "CgroupLimit");
    assert_eq!(workers["apiVersion"], "rein.dev/v1alpha1");
    assert_eq!(workers["spec"]["cgroup"], glob.as_str());
    assert_eq!(workers["spec"]["ingress"]["rate"], "20mbit");
    assert_eq!(workers["status"]["origin"], "declared");
    assert_eq!(
        workers["status"]["cgroups"],
        serde_json::json!([worker_a, worker_b])
    );
    assert_eq!(item(&listed, "web")["spec"]["egress"]["burst"], "128k");
    let table = rein.rein(&["get", "cgrouplimits"]);
    assert!(table.ok().contains("(2 cgroups)"), "{table}");
    let yaml = rein.rein(&["get", "-o", "yaml"]);
    assert!(yaml.ok().contains("  name: workers\n"), "{yaml}");
    // What get shows declares the same again.
    let shown = files.write("shown.yaml.out", &yaml.stdout);
    assert_eq!(
        rein.rein(&["apply", "-f", &shown]).ok(),
        "nothing to change\n"
    );
    assert_eq!(rein.rule(&web).unwrap()["declared_by"], "web");
    assert_eq!(rein.rein(&["get", "NetRule"]).ok(), "no resources\n");

    let schema: Value = serde_json::from_str(rein.rein(&["schema"]).ok()).unwrap();
    assert!(schema.to_string().contains("CgroupLimit"), "{schema}");

    // A file left out of an apply is left alone (apply merges); its delete removes its
    // resources only.
    let out = rein.rein(&[
        "delete",
        "-f",
        &files.path().join("20-workers.yml").display().to_string(),
    ]);
    assert!(
        out.ok()
            .contains(&format!("remove the limit of cgroup {worker_a}")),
        "{out}"
    );
    assert!(rein.rule(&worker_a).is_none() && rein.rule(&worker_b).is_none());
    assert!(rein.rule(&web).is_some());
    let out = rein.rein(&["diff", "-f", &files.dir()]);
    assert_eq!(code(&out), 1, "{out}");
    rein.rein(&["delete", "-f", &files.dir()]).ok();
    assert_eq!(get(&rein), Vec::<Value>::new());
    rein.assert_no_trace("`rein delete` of every resource");
}

#[test]
fn a_bad_file_is_refused_whole_with_its_location_and_changes_nothing() {
    let rein = instance();
    let app = rein.relative(&rein.cgroup("app"));
    let other = rein.relative(&rein.cgroup("other"));
    let files = Files::new("declarative");
    let good = files.write(
        "a-good.yaml",
        &cgroup_limit("app", &app, "  egress:\n    rate: 10mbit\n"),
    );
    let second = cgroup_limit("other", &other, "  egress:\n    rate: 5mbit\n");
    let missing = format!("/{}-missing", rein.name());
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            second.replace("5mbit", "5 parsecs"),
            vec![
                ":8:5: ".into(),
                "\"5 parsecs\"".into(),
                "unknown unit".into(),
            ],
        ),
        (
            second.replace("    rate: 5mbit", "    rate: 0bit"),
            vec![":8:5: ".into(), "greater than zero".into()],
        ),
        (
            second.replace("  egress:", "  egres:"),
            vec![":7:3: ".into(), "unknown field `egres`".into()],
        ),
        (
            format!("{second}  ingress: {{rate: 1mbit\n"),
            vec![
                ":10:1: ".into(),
                "expected ',' or '}', while parsing a flow mapping".into(),
            ],
        ),
        (
            second.replace("CgroupLimit", "CgroupLimits"),
            vec![":2:7: ".into(), "CgroupLimits".into()],
        ),
        (
            second.replace("v1alpha1", "v1"),
            vec![":1:13: ".into(), "rein.dev/v1".into()],
        ),
        (
            second.replace("name: other", "name: App_1"),
            vec![":4:3: ".into(), "not a resource name".into()],
        ),
        (
            second.replace(&other, "relative/path"),
            vec![":6:3: ".into(), "not a cgroup path".into()],
        ),
        (
            second.replace("name: other", "name: app"),
            vec![":1:1: ".into(), "CgroupLimit app is declared twice".into()],
        ),
        // Read well, refused when applied: the whole plan goes, the good file's limit too.
        (
            second.replace(&other, &missing),
            vec![
                ":1:1: ".into(),
                "CgroupLimit other".into(),
                format!("no cgroup {missing}"),
            ],
        ),
        (
            second.replace(&other, &app),
            vec![
                "CgroupLimit other".into(),
                "already limited by CgroupLimit app".into(),
            ],
        ),
    ];
    for (bad, needles) in &cases {
        let bad_file = files.write("b-bad.yaml", bad);
        let mut needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        needles.push(&bad_file);
        let line = rein
            .rein(&["apply", "-f", &files.dir()])
            .refused(&needles)
            .to_owned();
        eprintln!("{line}");
        rein.assert_no_trace(&format!("refusing {bad}"));
        let out = rein.rein(&["diff", "-f", &files.dir()]);
        assert_eq!(code(&out), 2, "diff of a bad file exits 2:\n{out}");
    }

    // With limits in place: a bad file changes none of them.
    fs::remove_file(files.path().join("b-bad.yaml")).unwrap();
    rein.rein(&["apply", "-f", &good]).ok();
    let before = get(&rein);
    let changed = cgroup_limit("app", &app, "  egress:\n    rate: 20mbit\n");
    for (bad, _) in &cases {
        files.write("a-good.yaml", &changed);
        let bad_file = files.write("b-bad.yaml", bad);
        rein.rein(&["apply", "-f", &files.dir()])
            .refused(&[&bad_file]);
        assert_eq!(get(&rein), before, "refusing {bad} changed the limits");
        assert_eq!(
            rein.rule(&app).unwrap()["egress"]["rate_bits_per_second"],
            10_000_000
        );
    }
    files.write(
        "a-good.yaml",
        &cgroup_limit("app", &app, "  egress:\n    rate: 10mbit\n"),
    );
    fs::remove_file(files.path().join("b-bad.yaml")).unwrap();
    rein.rein(&["delete", "-f", &files.dir()]).ok();
    rein.assert_no_trace("deleting the good file");
}

#[test]
fn hand_set_limits_are_left_alone_and_listed_with_their_origin() {
    let rein = instance();
    let by_hand = rein.relative(&rein.cgroup("svc-by-hand"));
    let declared = rein.relative(&rein.cgroup("svc-declared"));
    rein.rein(&["set", "--cgroup", &by_hand, "--egress", "3mbit"])
        .ok();
    let files = Files::new("declarative");
    let glob = format!("/{}-svc-*", rein.name());
    let file = files.write(
        "svc.yaml",
        &cgroup_limit("services", &glob, "  egress:\n    rate: 8mbit\n"),
    );

    let out = rein.rein(&["apply", "-f", &file]);
    assert!(
        !out.ok().contains(&by_hand),
        "apply touched the hand-set limit:\n{out}"
    );
    assert_eq!(
        rein.rule(&by_hand).unwrap()["egress"]["rate_bits_per_second"],
        3_000_000
    );
    assert_eq!(
        rein.rule(&declared).unwrap()["egress"]["rate_bits_per_second"],
        8_000_000
    );
    let listed = get(&rein);
    let hand = item(&listed, &by_hand);
    assert_eq!(hand["status"]["origin"], "set-cgroup");
    assert_eq!(hand["spec"]["egress"]["rate"], "3mbit");
    assert_eq!(item(&listed, "services")["status"]["origin"], "declared");
    assert_eq!(
        item(&listed, "services")["status"]["cgroups"],
        serde_json::json!([declared])
    );

    // Named by its path, a hand-set limit is refused rather than taken over.
    let exact = files.write(
        "exact.yaml",
        &cgroup_limit("exact", &by_hand, "  egress:\n    rate: 1mbit\n"),
    );
    rein.rein(&["apply", "-f", &exact])
        .refused(&[&exact, "CgroupLimit exact", "set by hand"]);

    rein.rein(&["delete", "-f", &file]).ok();
    assert!(rein.rule(&declared).is_none());
    assert_eq!(
        rein.rule(&by_hand).unwrap()["egress"]["rate_bits_per_second"],
        3_000_000
    );
    rein.rein(&["unset", "--cgroup", &by_hand]).ok();
    rein.assert_no_trace("unset of the hand-set limit");
}

/// The ifindex of `dev` in the host's namespace.
fn ifindex(dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show", dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "no device {dev}");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap()
        .to_owned()
}

fn qdisc(dev: &str) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_changed_rate_keeps_the_bucket_the_flows_and_the_queue() {
    let rein = instance();
    let dir = rein.cgroup("app");
    let app = rein.relative(&dir);
    let id = fs::metadata(&dir)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let files = Files::new("declarative");
    let write = |egress: &str, ingress: &str| {
        files.write(
            "app.yaml",
            &cgroup_limit(
                "app",
                &app,
                // A long burst: the debt left in it outlasts the apply.
                &format!(
                    "  egress:\n    rate: {egress}\n    burst: 100m\n  ingress:\n    rate: \
                     {ingress}\n"
                ),
            ),
        )
    };
    let file = write("10mbit", "20mbit");
    rein.rein(&["apply", "-f", &file]).ok();

    // Debt in the bucket and flows sharing it, as traffic would leave them.
    let key = RuleKey::new(id, Direction::Egress);
    let mut datapath = Datapath::open(&rein.library_instance()).unwrap();
    let mut rule = datapath.rule(key).expect("the egress rule is in the map");
    let debt_ns = 10_000_000_000;
    rule.bucket.tat = MonotonicClock.now_ns() + debt_ns;
    rule.flows.0 = 0x0003_0003;
    datapath.put_rule(key, rule).unwrap();
    let queue = device_name(&rein.library_instance(), id);
    let queue_index = ifindex(&queue);
    assert!(qdisc(&queue).contains("20Mbit"), "{}", qdisc(&queue));

    let out = rein.rein(&["apply", "-f", &write("20mbit", "40mbit")]);
    let changes = out.ok();
    assert!(changes.contains(&format!("change cgroup {app}")), "{out}");
    assert!(changes.contains("change the download queue"), "{out}");
    let now = MonotonicClock.now_ns();
    let after = datapath.rule(key).unwrap();
    assert_eq!(after.rate, 20_000_000 / 8);
    assert!(
        after.bucket.tat > now,
        "the bucket's debt was dropped: tat {} <= now {now}",
        after.bucket.tat
    );
    assert_eq!(
        after.flows, rule.flows,
        "the flows sharing the limit were forgotten"
    );
    assert_eq!(
        ifindex(&queue),
        queue_index,
        "the queue device was made again"
    );
    assert!(qdisc(&queue).contains("40Mbit"), "{}", qdisc(&queue));

    rein.rein(&["delete", "-f", &file]).ok();
    rein.assert_no_trace("delete");
}

fn net_rule(name: &str, dev: &str, spec: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: NetRule\nmetadata:\n  name: {name}\nspec:\n  \
         device: {dev}\n  direction: ingress\n{spec}"
    )
}

#[test]
fn net_rules_are_applied_changed_and_deleted_beside_hand_added_ones() {
    let pair = HostPair::create("rd").unwrap();
    let rein = instance();
    let ns = pair.server().name();
    let dev = pair.link.server_if.as_str();
    let files = Files::new("declarative");
    // Refused while applying (the second rule matches what the first does): the first rule's
    // program, pins and state go again.
    let twins = files.write(
        "twins.yaml",
        &format!(
            "{}---\n{}",
            net_rule("twin-a", dev, "  rate: 1mbit\n"),
            net_rule("twin-b", dev, "  rate: 2mbit\n")
        ),
    );
    rein.rein_in(ns, &["apply", "-f", &twins])
        .refused(&["already matches exactly these packets"]);
    rein.assert_no_trace("refusing twin rules");
    let missing = files.write(
        "missing.yaml",
        &net_rule("gone", "rein-nosuch0", "  rate: 1mbit\n"),
    );
    rein.rein_in(ns, &["apply", "-f", &missing])
        .refused(&[&format!("{missing}:1:1: NetRule gone"), "no network device"]);

    let added = rein.rein_in(
        ns,
        &[
            "net", "add", "--dev", dev, "--dir", "ingress", "--proto", "udp", "--dport", "5201",
            "--pps", "1000",
        ],
    );
    added.ok();
    let file = files.write(
        "net.yaml",
        &net_rule(
            "clients",
            dev,
            "  source: 198.18.0.0/15\n  rate: 10mbit\n  perSource: true\n",
        ),
    );
    let out = rein.rein_in(ns, &["apply", "-f", &file]);
    assert!(
        out.ok().contains(&format!("add net rule 2 on {dev}")),
        "{out}"
    );
    assert_eq!(code(&rein.rein_in(ns, &["diff", "-f", &file])), 0);

    let listed = get(&rein);
    let clients = item(&listed, "clients");
    assert_eq!(clients["kind"], "NetRule");
    assert_eq!(clients["status"]["origin"], "declared");
    assert_eq!(clients["status"]["ruleId"], 2);
    assert_eq!(clients["spec"]["rate"], "10mbit");
    assert_eq!(clients["spec"]["perSource"], true);
    let hand = item(&listed, "rule-1");
    assert_eq!(hand["status"]["origin"], "net-add");
    assert_eq!(hand["spec"]["pps"], 1000);
    assert_eq!(hand["spec"]["port"], 5201);

    // A change of the rate keeps the rule's id and, in place, what its bucket owes (here put
    // there by hand: a fresh bucket owes nothing); the hand-added rule stays as it was.
    let clock = || rein::clock::Clock::now_ns(&rein::clock::MonotonicClock);
    let net_datapath = || NetDatapath::open(&rein.library_instance()).unwrap();
    let mut owing = net_datapath().rule(2).unwrap();
    owing.bucket.tat = clock() + 10_000_000_000;
    net_datapath().change_limit(2, owing).unwrap();
    let file = files.write(
        "net.yaml",
        &net_rule(
            "clients",
            dev,
            "  source: 198.18.0.0/15\n  rate: 20mbit\n  burst: 10m\n  perSource: true\n",
        ),
    );
    let out = rein.rein_in(ns, &["diff", "-f", &file]);
    assert_eq!(code(&out), 1, "{out}");
    let out = rein.rein_in(ns, &["apply", "-f", &file]);
    assert!(
        out.ok().contains("change net rule 2"),
        "not changed in place: {out}"
    );
    let changed = net_datapath().rule(2).unwrap();
    // The debt is kept, cut to the new burst (10 MiB at 20 Mbit/s: 4.2 s).
    assert!(
        changed.bucket.tat > clock() + 1_000_000_000,
        "the bucket's debt was not kept: tat {} at {}",
        changed.bucket.tat,
        clock()
    );
    assert!(changed.bucket.tat <= clock() + 4_200_000_000);
    let listed = get(&rein);
    assert_eq!(item(&listed, "clients")["status"]["ruleId"], 2);
    assert_eq!(item(&listed, "clients")["spec"]["rate"], "20mbit");
    assert_eq!(item(&listed, "rule-1")["spec"]["pps"], 1000);

    let bad = files.write(
        "bad.yaml",
        &net_rule("bad", dev, "  rate: 1mbit\n  pps: 10\n"),
    );
    rein.rein_in(ns, &["apply", "-f", &bad])
        .refused(&[&bad, "give rate (bytes) or pps (packets), not both"]);

    rein.rein_in(ns, &["delete", "-f", &file]).ok();
    let listed = get(&rein);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["metadata"]["name"], "rule-1");
    rein.rein(&["net", "del", "1"]).ok();
    rein.assert_no_trace("deleting every rule");
}

#[test]
fn a_config_not_owned_by_root_alone_is_refused() {
    let files = Files::new("declarative");
    let path = files.write("x.yaml", "");
    // The loader's option is the agent's; the CLI reads what root can read. This checks the
    // library through its public API.
    let load = |paths: &[PathBuf]| {
        rein::declarative::load(
            paths,
            &rein::declarative::LoadOptions {
                require_root_owned: true,
            },
        )
    };
    let dir = files.path().to_path_buf();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    load(std::slice::from_ref(&dir)).unwrap();

    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    let error = load(std::slice::from_ref(&dir)).unwrap_err().to_string();
    assert!(error.contains(&path) && error.contains("664"), "{error}");

    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(1000), None).unwrap();
    let error = load(&[PathBuf::from(&path)]).unwrap_err().to_string();
    assert!(error.contains("owned by uid 1000"), "{error}");

    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let error = load(std::slice::from_ref(&dir)).unwrap_err().to_string();
    assert!(
        error.contains(&files.dir()) && error.contains("777"),
        "{error}"
    );
    // A file named alone: its directory is checked too.
    let error = load(&[PathBuf::from(&path)]).unwrap_err().to_string();
    assert!(
        error.contains(&files.dir()) && error.contains("777"),
        "{error}"
    );
}

/// The agent's mode, through the library: the files are the whole of what is declared.
#[test]
fn an_exact_apply_removes_declared_resources_the_files_no_longer_hold() {
    use rein::{
        Engine,
        declarative::{self, LoadOptions, Mode},
    };
    let rein = instance();
    let (one, two, by_hand) = (
        rein.relative(&rein.cgroup("one")),
        rein.relative(&rein.cgroup("two")),
        rein.relative(&rein.cgroup("by-hand")),
    );
    rein.rein(&["set", "--cgroup", &by_hand, "--ingress", "4mbit"])
        .ok();
    let files = Files::new("declarative");
    let first = PathBuf::from(files.write(
        "one.yaml",
        &cgroup_limit("one", &one, "  egress:\n    rate: 1mbit\n"),
    ));
    let second = PathBuf::from(files.write(
        "two.yaml",
        &cgroup_limit("two", &two, "  egress:\n    rate: 2mbit\n"),
    ));
    let load = |paths: &[PathBuf]| declarative::load(paths, &LoadOptions::default()).unwrap();
    {
        let mut engine = Engine::open(rein.library_instance()).unwrap();
        declarative::apply(&mut engine, &load(&[first.clone(), second]), Mode::Merge).unwrap();
        // A merge of one file leaves the other's resource in place.
        let plan = declarative::plan(&engine, &load(std::slice::from_ref(&first)), Mode::Merge);
        assert!(plan.unwrap().is_empty());
        let plan = declarative::apply(&mut engine, &load(&[first]), Mode::Exact).unwrap();
        let changes: Vec<String> = plan.changes().collect();
        assert_eq!(changes, [format!("remove the limit of cgroup {two}")]);
    }
    assert!(rein.rule(&one).is_some());
    assert!(rein.rule(&two).is_none());
    assert!(rein.rule(&by_hand).is_some(), "the hand-set limit went");

    // No files: nothing is declared any more, and what was set by hand stays.
    let mut engine = Engine::open(rein.library_instance()).unwrap();
    declarative::apply(&mut engine, &load(&[]), Mode::Exact).unwrap();
    drop(engine);
    assert!(rein.rule(&one).is_none());
    assert_eq!(
        rein.rule(&by_hand).unwrap()["ingress"]["rate_bits_per_second"],
        4_000_000
    );
    rein.rein(&["unset", "--cgroup", &by_hand]).ok();
    rein.assert_no_trace("unset");
}
