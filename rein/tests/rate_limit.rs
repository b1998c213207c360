//! End-to-end tests of the declarative `RateLimit` kind (issue 13): connection limits applied
//! from YAML files through the real `rein` binary, real connects from a throwaway network
//! namespace, an edit that changes a limit in place, what `rein get`, `rein conn list` and
//! `rein metrics` show, and bad files that change nothing.
//!
//! An outbound rule applies to the whole machine (its programs sit at the cgroup v2 root), so
//! each test names an address of 198.18.13.230-235 that no other test uses (`conn_cli` takes
//! .240-.254), and its server lives on the loopback of a namespace of its own. Needs root, a
//! bpffs at /sys/fs/bpf and cgroup v2.
// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, thread, time::Duration};

use rein_testkit::{
    connect::{Reply, Server, connect_n},
    files::Files,
    netns::{HostPair, Netns},
    process::one_at_a_time,
    rein_instance::ReinInstance,
};
use serde_json::Value;

fn instance() -> ReinInstance {
    ReinInstance::for_test(env!("CARGO_BIN_EXE_rein"))
}

/// A namespace of the test's own with `address` on its loopback, and a server there that
/// accepts (and closes) every connection until dropped.
struct Site {
    server: Server,
    ns: Netns,
}

impl Site {
    fn start(address: &str) -> Self {
        let ns = Netns::with_loopback("rrl", &[address]).unwrap();
        let listen = SocketAddr::new(address.parse().unwrap(), 0);
        let server = Server::start(&ns, &[listen], Reply::Close).unwrap();
        Self { server, ns }
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    /// `n` connects from inside the namespace: (allowed, refused with ECONNREFUSED).
    fn connect(&self, n: u64) -> (u64, u64) {
        let seen = connect_n(&self.ns, self.server.addr(), n).unwrap();
        assert!(seen.other.is_empty(), "{seen:?}");
        (seen.allowed, seen.refused)
    }
}

fn rate_limit(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: rein.dev/v1alpha1\nkind: RateLimit\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// `rein conn list --json`'s outbound rules.
fn outbound(rein: &ReinInstance) -> Vec<Value> {
    let out = rein.rein(&["conn", "list", "--json"]);
    let listed: Value = serde_json::from_str(out.ok()).unwrap();
    listed["outbound"].as_array().unwrap().clone()
}

/// `rein get RateLimit -o json`.
fn get(rein: &ReinInstance) -> Vec<Value> {
    let out = rein.rein(&["get", "RateLimit", "-o", "json"]);
    serde_json::from_str(out.ok()).unwrap()
}

/// The value of the series of `family` whose labels include every one of `labels`.
fn sample(text: &str, family: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_rate_limit_limits_connects_an_edit_keeps_its_bucket_and_delete_removes_it() {
    let _timed = one_at_a_time();
    let rein = instance();
    let site = Site::start("198.18.13.230");
    let files = Files::new("rate-limit");
    let destination = format!("198.18.13.230:{}", site.port());
    let spec = |rate: &str, burst: u32| {
        rate_limit(
            "web",
            &format!("  destination: \"{destination}\"\n  rate: {rate}\n  burst: {burst}\n"),
        )
    };
    let file = files.write("web.yaml", &spec("1/min", 3));
    let applied = rein.rein(&["apply", "-f", &file]);
    assert!(applied.ok().contains("add conn rule"), "{applied}");
    assert_eq!(site.connect(5), (3, 2), "the burst of 3, then refusals");

    // A faster rate and a bigger burst: changed in place, the bucket (empty) kept. A rule made
    // again would let 10 through at once.
    let file = files.write("web.yaml", &spec("2/min", 10));
    let diff = rein.rein(&["diff", "-f", &file]);
    assert_eq!(diff.status.code(), Some(1), "{diff}");
    assert!(diff.stdout.contains("change conn rule"), "{diff}");
    let id = outbound(&rein)[0]["id"].as_u64().unwrap();
    let applied = rein.rein(&["apply", "-f", &file]);
    assert!(
        applied.ok().contains("change conn rule") && !applied.stdout.contains("delete"),
        "{applied}"
    );
    assert_eq!(site.connect(3), (0, 3), "an edit handed out a fresh burst");
    let rules = outbound(&rein);
    assert_eq!(rules.len(), 1, "{rules:#?}");
    let rule = &rules[0];
    assert_eq!(rule["id"].as_u64(), Some(id), "{rule:#}");
    assert_eq!(rule["declared_by"], "web", "{rule:#}");
    assert_eq!(rule["limit"]["rate"], "2/min", "{rule:#}");
    assert_eq!(
        (rule["allowed"].as_u64(), rule["refused"].as_u64()),
        (Some(3), Some(5))
    );

    // `rein get` shows it in the file's shape, with where it came from.
    let listed = get(&rein);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["metadata"]["name"], "web");
    assert_eq!(listed[0]["status"]["origin"], "declared");
    assert_eq!(listed[0]["spec"]["destination"], destination.as_str());
    assert_eq!(listed[0]["spec"]["burst"], 10);

    // The metrics are the list's counters.
    let text = rein.rein(&["metrics"]).ok().to_owned();
    let labels = [&*format!("rule=\"{id}\""), "direction=\"outbound\""];
    assert_eq!(
        sample(&text, "rein_conn_allowed_total", &labels),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "rein_conn_refused_total", &labels),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "rein_conn_refused_table_full_total", &labels),
        Some(0.0)
    );
    let per_second = sample(&text, "rein_conn_limit_per_second", &labels).unwrap();
    assert!((per_second - 2.0 / 60.0).abs() < 1e-9, "{per_second}");
    assert_eq!(
        sample(&text, "rein_conn_tokens", &labels),
        rule["tokens"].as_f64()
    );

    // Deleted: gone from the kernel, connects go through.
    let deleted = rein.rein(&["delete", "-f", &file]);
    assert!(deleted.ok().contains("delete conn rule"), "{deleted}");
    assert!(outbound(&rein).is_empty());
    assert_eq!(site.connect(5), (5, 0));
    rein.assert_no_trace("`rein delete -f` of the last RateLimit");
}

#[test]
fn the_envoy_shape_counts_and_bad_files_are_refused_whole() {
    let _timed = one_at_a_time();
    let rein = instance();
    let site = Site::start("198.18.13.231");
    let files = Files::new("rate-limit");
    let service = format!("198.18.13.231:{}", site.port());
    let good = rate_limit(
        "envoy",
        &format!(
            "  service: \"{service}\"\n  rules:\n  - maxTokens: 2\n    tokensPerFill: 1\n    \
             fillInterval: 1h\n"
        ),
    );
    let file = files.write("envoy.yaml", &good);
    rein.rein(&["apply", "-f", &file]).ok();
    assert_eq!(site.connect(4), (2, 2));
    let before = outbound(&rein);

    for (spec, needle) in [
        (
            "  destination: 10.0.0.1\n  rate: 5/s\n  rules:\n  - {maxTokens: 1, tokensPerFill: 1, fillInterval: 1s}\n",
            "not both",
        ),
        ("  protocol: tcp\n", "give destination"),
        ("  destination: 10.0.0.1\n", "give rate"),
        ("  destination: 10.0.0.1\n  rate: 0/s\n", "0/s"),
        (
            "  destination: 10.0.0.1\n  rate: 5/s\n  burst: 0\n",
            "burst of 0",
        ),
        (
            "  service: 10.0.0.1\n  rules:\n  - {maxTokens: 1, tokensPerFill: 1, fillInterval: 0s}\n",
            "0s",
        ),
        (
            "  service: 10.0.0.1\n  rules:\n  - {maxTokens: 1, tokensPerFill: 1, fillInterval: 1s}\n  - {maxTokens: 9, tokensPerFill: 9, fillInterval: 1m}\n",
            "rules takes one entry",
        ),
        (
            "  destination: 10.0.0.1\n  rate: 5/s\n  colour: red\n",
            "colour",
        ),
    ] {
        // The good resource beside the bad one: neither is applied.
        let text = format!(
            "{}---\n{}",
            good.replace("2\n", "7\n"),
            rate_limit("bad", spec)
        );
        let path = files.write("bad.yaml", &text);
        let out = rein.rein(&["apply", "-f", &path]);
        assert!(!out.status.success(), "{out}");
        let error = out.stderr.trim();
        assert_eq!(error.lines().count(), 1, "{error}");
        assert!(error.contains(&format!("{path}:")), "no position: {error}");
        assert!(error.contains(needle), "{spec}: {error}");
        let after = outbound(&rein);
        assert_eq!(
            after.iter().map(|r| r["limit"].clone()).collect::<Vec<_>>(),
            before
                .iter()
                .map(|r| r["limit"].clone())
                .collect::<Vec<_>>(),
            "{spec}: a refused file changed a rule"
        );
    }
    assert_eq!(site.connect(1), (0, 1), "the bucket stayed as it was");
}

#[test]
fn an_inbound_rate_limit_is_a_net_rule_apart_from_a_net_rule_of_its_name() {
    let pair = HostPair::create("rrl").unwrap();
    let rein = instance();
    let ns = pair.server().name();
    let dev = pair.link.server_if.as_str();
    let files = Files::new("rate-limit");
    let inbound = rate_limit(
        "guard",
        &format!("  device: {dev}\n  port: 443\n  rate: 50/s\n  burst: 7\n"),
    );
    let net_rule = format!(
        "apiVersion: rein.dev/v1alpha1\nkind: NetRule\nmetadata:\n  name: guard\nspec:\n  \
         device: {dev}\n  direction: ingress\n  rate: 10mbit\n"
    );
    let text = format!("{inbound}---\n{net_rule}");
    let file = files.write("guard.yaml", &text);
    rein.rein_in(ns, &["apply", "-f", &file]).ok();
    let listed: Vec<Value> =
        serde_json::from_str(rein.rein_in(ns, &["get", "-o", "json"]).ok()).unwrap();
    let kinds: Vec<(&str, &str)> = listed
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap(),
                l["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("NetRule", "guard"), ("RateLimit", "guard")],
        "{listed:#?}"
    );
    let inbound = &listed[1];
    assert_eq!(inbound["spec"]["device"], dev);
    assert_eq!(inbound["spec"]["port"], 443);
    assert_eq!(inbound["spec"]["rate"], "50/s");
    assert_eq!(inbound["spec"]["burst"], 7);
    let id = inbound["status"]["ruleId"].as_u64().unwrap();
    let text_metrics = rein.rein_in(ns, &["metrics"]).ok().to_owned();
    let labels = [&*format!("rule=\"{id}\""), "direction=\"inbound\""];
    assert_eq!(
        sample(&text_metrics, "rein_conn_limit_per_second", &labels),
        Some(50.0),
        "{text_metrics}"
    );
    assert_eq!(
        sample(&text_metrics, "rein_conn_allowed_total", &labels),
        Some(0.0)
    );

    // Deleting the RateLimit alone leaves the NetRule of the same name.
    let only_rate_limit = files.write(
        "only.yaml",
        &rate_limit(
            "guard",
            &format!("  device: {dev}\n  port: 443\n  rate: 50/s\n"),
        ),
    );
    rein.rein_in(ns, &["delete", "-f", &only_rate_limit]).ok();
    let listed: Vec<Value> =
        serde_json::from_str(rein.rein_in(ns, &["get", "-o", "json"]).ok()).unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["kind"], "NetRule");
    rein.rein_in(ns, &["delete", "-f", &file]).ok();
    rein.assert_no_trace("`rein delete -f` of both kinds");
}

/// A fill form's intervals stay where they were: an edit keeps its anchor, and so does a rule
/// written again from the state file (`rein reload` after it went from the maps).
#[test]
fn a_fill_form_keeps_its_anchor_through_an_edit_and_a_reload() {
    use rein::capabilities::conn_limits::datapath::ConnDatapath;
    let rein = instance();
    let files = Files::new("rate-limit");
    let spec = |max: u32| {
        rate_limit(
            "fill",
            &format!(
                "  service: 198.18.13.233:80\n  rules:\n  - maxTokens: {max}\n    \
                 tokensPerFill: 1\n    fillInterval: 7s\n"
            ),
        )
    };
    rein.rein(&["apply", "-f", &files.write("fill.yaml", &spec(3))])
        .ok();
    let recorded = |rein: &ReinInstance| {
        let rule = &outbound(rein)[0];
        (
            rule["id"].as_u64().unwrap() as u32,
            rule["anchor_ns"].as_u64().unwrap(),
        )
    };
    let (id, anchor) = recorded(&rein);
    let kernel_anchor = || {
        ConnDatapath::open(&rein.library_instance())
            .unwrap()
            .rule(id)
            .map(|rule| (rule.anchor_ns, rule.max_tokens))
    };
    assert_eq!(kernel_anchor(), Some((anchor, 3)));
    thread::sleep(Duration::from_millis(20));
    rein.rein(&["apply", "-f", &files.write("fill.yaml", &spec(5))])
        .ok();
    assert_eq!(recorded(&rein), (id, anchor), "the edit moved the anchor");
    assert_eq!(kernel_anchor(), Some((anchor, 5)));
    // Gone from the maps by hand; reload writes it again from the record.
    let library = rein.library_instance();
    let mut datapath = ConnDatapath::open(&library).unwrap();
    let record = outbound(&rein)[0].clone();
    let destination: rein::capabilities::conn_limits::spec::Destination =
        record["destination"].as_str().unwrap().parse().unwrap();
    let key = rein::capabilities::conn_limits::spec::ConnRuleSpec {
        destination,
        protocol: None,
        scope: rein::capabilities::conn_limits::spec::ConnScopeSpec::All,
        limit: rein::capabilities::conn_limits::spec::ConnLimit::Rate {
            rate: "1/s".parse().unwrap(),
            burst: 1,
        },
        per_caller: false,
    }
    .key();
    datapath.remove(id, &[key]);
    assert_eq!(kernel_anchor(), None);
    thread::sleep(Duration::from_millis(20));
    rein.rein(&["reload"]).ok();
    assert_eq!(
        kernel_anchor(),
        Some((anchor, 5)),
        "reload moved the anchor"
    );
    rein.rein(&["delete", "-f", &files.write("fill.yaml", &spec(5))])
        .ok();
    rein.assert_no_trace("the fill RateLimit deleted");
}
