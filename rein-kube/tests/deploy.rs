//! The manifests of `deploy/` (what `kubectl apply -f deploy/` installs) read as the Kubernetes
//! types they claim to be, field for field, so a misspelt field fails here rather than being
//! dropped by the API server; the agent's role grants what the agent does and nothing more.

// clippy.toml allows unwrap/expect in #[test] functions only; the helpers here panic on purpose
// (a test failure with the reason).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every manifest, with the file it is in.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
            if !value.is_null() {
                documents.push((file.display().to_string(), value));
            }
        }
    }
    documents
}

/// `value` read as `K` and written back: equal to itself, or a field `K` does not have (a
/// typo) or a value of the wrong type is somewhere in it.
fn exactly<K: DeserializeOwned + Serialize>(file: &str, value: &Value) -> K {
    let typed: K =
        serde_json::from_value(value.clone()).unwrap_or_else(|error| panic!("{file}: {error}"));
    let again = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &again, value,
        "{file}: a field is not the type's (misspelt or misplaced)"
    );
    typed
}

#[test]
fn every_manifest_reads_as_its_kubernetes_type() {
    let mut kinds = BTreeSet::new();
    for (file, value) in documents() {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => drop(exactly::<Namespace>(&file, &value)),
            "ServiceAccount" => drop(exactly::<ServiceAccount>(&file, &value)),
            "ClusterRole" => drop(exactly::<ClusterRole>(&file, &value)),
            "ClusterRoleBinding" => drop(exactly::<ClusterRoleBinding>(&file, &value)),
            "DaemonSet" => drop(exactly::<DaemonSet>(&file, &value)),
            "CustomResourceDefinition" => drop(exactly::<CustomResourceDefinition>(&file, &value)),
            other => panic!("{file}: a {other:?} this test does not know"),
        }
        kinds.insert(kind);
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "DaemonSet",
            "Namespace",
            "ServiceAccount"
        ]
    );
}

fn one<K: DeserializeOwned + Serialize>(kind: &str) -> K {
    let found: Vec<(String, Value)> = documents()
        .into_iter()
        .filter(|(_, value)| value["kind"] == kind)
        .collect();
    let [(file, value)] = found.as_slice() else {
        panic!("{} {kind}s in deploy/", found.len());
    };
    exactly(file, value)
}

/// What the agent does, as (API group, resource, verb): its watches list and watch; the status
/// writer patches the status subresource (`crd::write_statuses`); kube's event recorder
/// creates an Event and patches it when it repeats.
const AGENT_USES: [(&str, &str, &str); 12] = [
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("rein.dev", "ratelimits", "list"),
    ("rein.dev", "ratelimits", "watch"),
    ("rein.dev", "bandwidthpolicies", "list"),
    ("rein.dev", "bandwidthpolicies", "watch"),
    ("rein.dev", "ratelimits/status", "patch"),
    ("rein.dev", "bandwidthpolicies/status", "patch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_uses() {
    let role: ClusterRole = one("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        !group.contains('*') && !resource.contains('*') && verb != "*",
                        "a wildcard grants more than the agent uses: {rule:?}"
                    );
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let uses: BTreeSet<(String, String, String)> = AGENT_USES
        .iter()
        .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(granted, uses);
    // Bound to the agent's account.
    let binding: ClusterRoleBinding = one("ClusterRoleBinding");
    let account: ServiceAccount = one("ServiceAccount");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (
            account.metadata.name.as_deref().unwrap(),
            account.metadata.namespace.as_deref()
        )
    );
}

#[test]
fn the_daemon_set_runs_unprivileged_with_the_capabilities_and_mounts_rein_needs() {
    let daemon_set: DaemonSet = one("DaemonSet");
    let spec = daemon_set.spec.unwrap();
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("rein-kube"));
    assert_eq!((pod.host_network, pod.host_pid), (Some(true), Some(true)));
    let [agent] = pod.containers.as_slice() else {
        panic!("one container: {:?}", pod.containers);
    };
    let env = agent.env.clone().unwrap_or_default();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let security = agent.security_context.clone().unwrap();
    assert_ne!(security.privileged, Some(true));
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
    assert_eq!(
        capabilities.add.unwrap(),
        ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
    );
    // The API server refuses allowPrivilegeEscalation false beside SYS_ADMIN.
    assert_ne!(security.allow_privilege_escalation, Some(false));
    // Read-only: whatever rein writes (its state, its lock) is a host mount below.
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let ports = agent.ports.clone().unwrap_or_default();
    assert_eq!(
        ports.iter().map(|p| p.container_port).collect::<Vec<_>>(),
        [9471],
        "the agent's default --metrics port"
    );
    let volumes = pod.volumes.unwrap_or_default();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    let mut mounts: Vec<(String, String, Option<String>)> = agent
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let from = host_path(&m.name).unwrap_or_else(|| panic!("{}: no hostPath", m.name));
            (from, m.mount_path, m.mount_propagation)
        })
        .collect();
    mounts.sort();
    let propagated = |path: &str| {
        (
            path.to_owned(),
            path.to_owned(),
            Some("HostToContainer".into()),
        )
    };
    assert_eq!(
        mounts,
        [
            propagated("/run/netns"),
            ("/run/rein".to_owned(), "/run/rein".to_owned(), None),
            (
                "/run/rein.lock".to_owned(),
                "/run/rein.lock".to_owned(),
                None
            ),
            propagated("/sys/fs/bpf"),
            propagated("/sys/fs/cgroup"),
            propagated("/var/run/netns"),
        ]
    );
}
