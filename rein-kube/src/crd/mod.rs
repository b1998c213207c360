//! The agent's custom resources (`rein.dev/v1alpha1`): `RateLimit`, a limit on new connections
//! to a Service, and `BandwidthPolicy`, a bandwidth limit for the pods a selector picks, each
//! or shared. Their types are the schema: the CRDs are generated from them ([`crds`]). Each
//! node's agent translates them into rein resources for its own pods and writes their status
//! ([`status`]), which says only what every node agrees on.
use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use rein::declarative::ResourceName;

use crate::world::{NodePod, ObjectRef};

pub mod bandwidth_policy;
pub mod rate_limit;
pub mod selector;
pub mod status;

pub use bandwidth_policy::{
    BandwidthLimit, BandwidthPolicy, BandwidthPolicySpec, BandwidthPolicyStatus, PolicyMode,
    declare_policies,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
pub use rate_limit::{RateLimit, RateLimitSpec, RateLimitStatus, declare_rate_limits};
pub use status::write_statuses;

/// The reasons of a custom resource's `Accepted: False`: each is about what every node sees alike
/// (the resource, its Service), so every node's agent writes the same condition. A problem only
/// one node sees (a rein apply that node refused) is no condition: the status writer leaves it
/// out, and the agent tells it in an Event.
pub mod reasons {
    pub const INVALID: &str = "Invalid";
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    pub const NO_CLUSTER_IP: &str = "NoClusterIP";
    pub const NO_PORTS: &str = "NoPorts";
    pub const PORT_NOT_FOUND: &str = "PortNotFound";
    pub const INVALID_SERVICE: &str = "InvalidService";
    pub const CONFLICT: &str = "Conflict";

    pub const ALL: [&str; 7] = [
        INVALID,
        SERVICE_NOT_FOUND,
        NO_CLUSTER_IP,
        NO_PORTS,
        PORT_NOT_FOUND,
        INVALID_SERVICE,
        CONFLICT,
    ];
}

/// The custom resource definitions of the agent's resources, as `deploy/crds.yaml` holds them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![BandwidthPolicy::crd(), RateLimit::crd()]
}

/// [`crds`] as one YAML stream, a document each.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut yaml = String::new();
    for crd in crds() {
        yaml.push_str("---\n");
        yaml.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(yaml)
}

/// The object a custom resource's problem is about.
fn object_ref<K: kube::Resource<DynamicType = ()>>(kind: &'static str, object: &K) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
        uid: object.meta().uid.clone().unwrap_or_default(),
    }
}

fn pod_ref(pod: &NodePod) -> ObjectRef {
    ObjectRef {
        kind: "Pod",
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}

/// `objects` oldest first (by creation, then namespace and name): when two claim the same
/// thing, the one that was there first keeps it, on every node alike.
fn oldest_first<K: kube::Resource>(objects: &[K]) -> Vec<&K> {
    let mut sorted: Vec<&K> = objects.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |o: &K| {
            (
                o.meta().creation_timestamp.clone(),
                o.meta().namespace.clone(),
                o.meta().name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    sorted
}

/// The names one translation gives its rein resources: readable (`ratelimit.NS.NAME....`),
/// the same on every reconcile, and never two alike.
#[derive(Default)]
struct ResourceNames {
    used: BTreeSet<String>,
}

impl ResourceNames {
    /// `wanted` if it is a free resource name; otherwise (too long, or taken by an object
    /// whose dotted name reads like another's) its kind prefix and a hash of it.
    fn unique(&mut self, wanted: &str) -> ResourceName {
        let prefix = wanted.split('.').next().unwrap_or("kube");
        let mut candidate = wanted.to_owned();
        let mut salt = 0u64;
        loop {
            if !self.used.contains(&candidate)
                && let Ok(name) = ResourceName::try_from(candidate.clone())
            {
                self.used.insert(candidate);
                return name;
            }
            candidate = format!("{prefix}.{:016x}", fnv1a(wanted, salt));
            salt += 1;
        }
    }
}

/// FNV-1a of `text` and `salt`: the same in every build, so a restarted agent names the same
/// resources the same way.
fn fnv1a(text: &str, salt: u64) -> u64 {
    text.bytes()
        .chain(salt.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// What the translations' unit tests build their world from.
#[cfg(test)]
mod fixtures {
    use std::collections::BTreeMap;

    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use crate::world::{NodePod, PodPlace};

    /// A custom resource of `kind` named `name` in namespace `shop`, created at `created` (its
    /// age decides between two that claim the same thing), as the API server returns it.
    pub fn custom<K: DeserializeOwned>(kind: &str, name: &str, created: &str, spec: Value) -> K {
        serde_json::from_value(json!({
            "apiVersion": "rein.dev/v1alpha1",
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": "shop",
                "uid": format!("uid-{name}"),
                "generation": 1,
                "creationTimestamp": created
            },
            "spec": spec
        }))
        .unwrap()
    }

    /// A pod of namespace `shop` on this node, with `labels` and no annotation.
    pub fn pod(name: &str, labels: &[(&str, &str)], place: Option<PodPlace>) -> NodePod {
        NodePod {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
            place,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/crds.yaml` is what `kubectl apply -f deploy/` installs: it must be what these
    /// types generate.
    #[test]
    fn the_checked_in_crds_are_the_generated_ones() {
        let checked_in = include_str!("../../../deploy/crds.yaml");
        let generated = crds_yaml().unwrap();
        assert!(
            checked_in == generated,
            "deploy/crds.yaml is stale: run `cargo run -p rein-kube --bin crdgen > \
             deploy/crds.yaml`"
        );
    }

    #[test]
    fn names_stay_readable_unique_and_valid() {
        let mut names = ResourceNames::default();
        let first = names.unique("ratelimit.default.api.10.96.0.10.tcp-80");
        assert_eq!(first.as_str(), "ratelimit.default.api.10.96.0.10.tcp-80");
        let again = names.unique("ratelimit.default.api.10.96.0.10.tcp-80");
        assert!(again.as_str().starts_with("ratelimit."), "{again}");
        assert_ne!(first, again);
        let long = format!("policy.default.{}", "a".repeat(300));
        let hashed = names.unique(&long);
        assert!(hashed.as_str().starts_with("policy.") && hashed.as_str().len() < 64);
        // The same on every reconcile.
        assert_eq!(
            ResourceNames::default().unique(&long),
            hashed,
            "a restarted agent must name it alike"
        );
    }
}
