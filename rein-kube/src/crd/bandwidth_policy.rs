//! The `BandwidthPolicy` custom resource: a bandwidth limit for the pods a label selector picks
//! in the policy's namespace, each pod its own (`PerPod`) or one aggregate shared by all the
//! selected pods of a node (`Shared`).
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// A bandwidth limit for the pods `podSelector` picks in the policy's namespace.
// Each printer column names its type: clippy reads the `type_ = "string"` of two columns as one
// attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rein.dev",
    version = "v1alpha1",
    kind = "BandwidthPolicy",
    namespaced,
    status = "BandwidthPolicyStatus",
    shortname = "bwp",
    category = "rein",
    doc = "A bandwidth limit for the pods a selector picks: each pod's own, or one shared by the selected pods of each node",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Egress", type_ = "string", json_path = ".spec.egress.rate"),
    printcolumn(name = "Ingress", type_ = "string", json_path = ".spec.ingress.rate"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthPolicySpec {
    /// The pods of the policy's namespace it applies to (`{}`: all of them).
    pub pod_selector: LabelSelector,
    /// The limit of what the pods send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<BandwidthLimit>,
    /// The limit of what the pods receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<BandwidthLimit>,
    /// PerPod: each selected pod gets the limit. Shared: the selected pods of a node share
    /// one limit.
    #[serde(default)]
    pub mode: PolicyMode,
}

/// A direction's limit, in Kubernetes quantities as the bandwidth annotations take them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BandwidthLimit {
    /// Bits per second: 10M, 1G, 500k (from 1k to 1P, as kubelet takes them).
    pub rate: Quantity,
    /// Bytes above the rate: 64Ki, 1M (default the larger of 64 KiB and 10 ms at the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Quantity>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyMode {
    #[default]
    PerPod,
    Shared,
}

/// What every node's agent agrees on about a `BandwidthPolicy`. How many pods it selects is
/// each node's own: the agents' metrics say it, the shared status does not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthPolicyStatus {
    /// The generation the conditions are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: True, or False with the reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
