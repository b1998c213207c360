//! `rein-kube agent`'s command line: what it refuses, in one line, before it touches anything.
// clippy.toml allows unwrap/expect in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rein_testkit::process::{Cmd, Output};

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Cmd::new(
        [env!("CARGO_BIN_EXE_rein-kube"), "agent"],
        Duration::from_secs(20),
    )
    .args(args)
    // No cluster: neither a kubeconfig nor the in-cluster service's variables.
    .env("KUBECONFIG", "/nonexistent/kubeconfig")
    .env("HOME", "/nonexistent")
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("KUBERNETES_SERVICE_PORT")
    .env_remove("NODE_NAME")
    .env_remove("REIN_INSTANCE");
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    cmd.output().unwrap()
}

#[test]
fn the_node_is_required_and_bad_flags_are_refused_naming_them() {
    let out = agent(&["--metrics", "off"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--node"), "{out}");

    let out = agent(&["--node", "n1", "--metrics", "nowhere"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("neither host:port nor `off`"), "{out}");

    let out = agent(
        &["--node", "n1", "--metrics", "off", "--instance", "Bad!"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("Bad!"), "{out}");
}

#[test]
fn without_a_cluster_to_talk_to_the_agent_says_so_in_one_line() {
    // NODE_NAME is how the DaemonSet gives the node.
    let out = agent(&["--metrics", "off"], &[("NODE_NAME", "n1")]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("rein-kube:"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("no Kubernetes configuration"), "{out}");
}
