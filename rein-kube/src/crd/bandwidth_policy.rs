//! The `BandwidthPolicy` custom resource: a bandwidth limit for the pods a label selector picks
//! in the policy's namespace, each pod its own (`PerPod`) or one aggregate shared by all the
//! selected pods of a node (`Shared`).
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::LabelSelector};
use kube::{CustomResource, ResourceExt};
use rein::{
    declarative::{
        self, ApiVersion, CgroupLimitSpec, CgroupPattern, Declared, DirectionLimit, LimitScope,
        Location, Manifest, NetnsPath, Resource, SharedLimitSpec, resource::Metadata,
    },
    store::State,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Condition, ResourceNames, object_ref, oldest_first, pod_ref, reasons, selector::Selector,
};
use crate::{
    pod_limits::KEYS,
    pods,
    quantity::{Bandwidth, Burst},
    world::{Declarations, NodePod, PodPlace, Problem},
};

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
    /// one egress limit.
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

/// What every node's agent agrees on about a `BandwidthPolicy`. Which pods it holds is each
/// node's own: Events on the pods say what is node-specific, the shared status does not.
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

/// Reasons of a pod's problems with policies, as its Events name them.
pub const POLICY_CONFLICT: &str = "PolicyConflict";
pub const ANNOTATION_OVER_POLICY: &str = "AnnotationOverPolicy";

/// A policy as read: what it selects and what it gives, checked.
struct Checked {
    selector: Selector,
    egress: Option<DirectionLimit>,
    ingress: Option<DirectionLimit>,
}

/// The policy's selector and limits, or a one-line complaint naming the field.
fn check(spec: &BandwidthPolicySpec) -> Result<Checked, String> {
    let selector =
        Selector::parse(&spec.pod_selector).map_err(|error| format!("podSelector: {error}"))?;
    if spec.egress.is_none() && spec.ingress.is_none() {
        return Err("a BandwidthPolicy limits egress, ingress or both: give at least one".into());
    }
    // A download queue is a device in one namespace: rein cannot queue several pods'
    // downloads together, and refuses a shared ingress limit over namespaces.
    if spec.mode == PolicyMode::Shared && spec.ingress.is_some() {
        return Err(
            "mode Shared shares egress only: the downloads of several pods cannot go through \
             one queue; give ingress in a PerPod policy"
                .into(),
        );
    }
    let direction = |limit: &Option<BandwidthLimit>, field: &str| {
        limit
            .as_ref()
            .map(|limit| {
                let rate = limit
                    .rate
                    .0
                    .parse::<Bandwidth>()
                    .map_err(|error| format!("{field}.rate: {error}"))?;
                let burst = limit
                    .burst
                    .as_ref()
                    .map(|burst| burst.0.parse::<Burst>())
                    .transpose()
                    .map_err(|error| format!("{field}.burst: {error}"))?;
                Ok::<_, String>(DirectionLimit {
                    rate: rate.rate(),
                    burst: burst.map(Burst::size),
                })
            })
            .transpose()
    };
    Ok(Checked {
        selector,
        egress: direction(&spec.egress, "egress")?,
        ingress: direction(&spec.ingress, "ingress")?,
    })
}

/// Whether the pod asks for its own limit (any of the bandwidth keys, as an annotation or a
/// label, valid or not): then the pod's own word wins over every policy, and a bad value is
/// its Event, not a policy's limit in its place.
fn has_own_limit(pod: &NodePod) -> bool {
    KEYS.iter()
        .any(|key| pod.annotations.contains_key(*key) || pod.labels.contains_key(*key))
}

/// The limit's place as rein's resources name it.
fn scope(place: &PodPlace) -> Result<LimitScope, String> {
    match place {
        PodPlace::Netns(path) => {
            NetnsPath::try_from(path.display().to_string()).map(|path| LimitScope::Netns {
                path,
                subnets: None,
            })
        }
        PodPlace::Cgroup(path) => CgroupPattern::try_from(path.clone()).map(LimitScope::Cgroup),
    }
}

/// Declares every valid `BandwidthPolicy` for the pods of this node it selects: `PerPod`, a
/// `CgroupLimit` per pod (`policy.<namespace>.<name>.<pod>`); `Shared`, one `SharedLimit`
/// whose members are all of them (`policy.<namespace>.<name>`). A pod takes one limit: its own
/// annotations or labels win over any policy, and of two policies selecting it the oldest
/// wins; either is an Event on the pod. An invalid policy is its condition, and declares
/// nothing.
pub fn declare_policies(policies: &[BandwidthPolicy], pods: &[NodePod], out: &mut Declarations) {
    let mut names = ResourceNames::default();
    // Which policy holds each pod, by namespace and name.
    let mut held: BTreeMap<(&str, &str), String> = BTreeMap::new();
    let mut sorted: Vec<&NodePod> = pods.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for policy in oldest_first(policies) {
        let namespace = policy.namespace().unwrap_or_default();
        let shown = format!("{namespace}/{}", policy.name_any());
        let invalid = |message: String| Problem {
            object: object_ref("BandwidthPolicy", policy),
            reason: reasons::INVALID,
            message,
        };
        let checked = match check(&policy.spec) {
            Ok(checked) => checked,
            Err(message) => {
                out.problems.push(invalid(message));
                continue;
            }
        };
        let mut members: Vec<(&NodePod, LimitScope)> = Vec::new();
        for pod in sorted
            .iter()
            .filter(|pod| pod.namespace == namespace && checked.selector.matches(&pod.labels))
        {
            if has_own_limit(pod) {
                out.problems.push(Problem {
                    object: pod_ref(pod),
                    reason: ANNOTATION_OVER_POLICY,
                    message: format!(
                        "the pod's own bandwidth annotations or labels apply, not \
                         BandwidthPolicy {shown}"
                    ),
                });
                continue;
            }
            let key = (pod.namespace.as_str(), pod.name.as_str());
            if let Some(owner) = held.get(&key) {
                out.problems.push(Problem {
                    object: pod_ref(pod),
                    reason: POLICY_CONFLICT,
                    message: format!(
                        "BandwidthPolicies {owner} and {shown} both select the pod: {owner}, \
                         the oldest, applies"
                    ),
                });
                continue;
            }
            held.insert(key, shown.clone());
            let Some(place) = &pod.place else {
                continue;
            };
            match scope(place) {
                Ok(scope) => members.push((pod, scope)),
                Err(error) => out.problems.push(Problem {
                    object: pod_ref(pod),
                    reason: pods::INVALID_PLACE,
                    message: error,
                }),
            }
        }
        match policy.spec.mode {
            PolicyMode::PerPod => {
                for (pod, scope) in members {
                    let name = names.unique(&format!(
                        "policy.{namespace}.{}.{}",
                        policy.name_any(),
                        pod.name
                    ));
                    out.resources.push(Declared {
                        resource: Resource::CgroupLimit(Manifest {
                            api_version: ApiVersion::V1Alpha1,
                            metadata: Metadata { name },
                            spec: CgroupLimitSpec {
                                scope,
                                egress: checked.egress,
                                ingress: checked.ingress,
                            },
                        }),
                        // The pod's, as for its annotations: rein's errors name the pod, and
                        // a pod rein's CNI plugin limits is left to it alike.
                        location: pods::location(pod),
                    });
                }
            }
            PolicyMode::Shared => {
                // Nothing to share on a node where no selected pod runs (yet).
                if members.is_empty() {
                    continue;
                }
                let (mut cgroups, mut netns) = (Vec::new(), Vec::new());
                for (_, scope) in members {
                    match scope {
                        LimitScope::Cgroup(pattern) => cgroups.push(pattern),
                        LimitScope::Netns { path, .. } => netns.push(path),
                    }
                }
                let spec =
                    match SharedLimitSpec::new(cgroups, netns, checked.egress, checked.ingress) {
                        Ok(spec) => spec,
                        // A direction is there, checked above.
                        Err(message) => {
                            out.problems.push(invalid(message));
                            continue;
                        }
                    };
                let name = names.unique(&format!("policy.{namespace}.{}", policy.name_any()));
                out.resources.push(Declared {
                    resource: Resource::SharedLimit(Manifest {
                        api_version: ApiVersion::V1Alpha1,
                        metadata: Metadata { name },
                        spec,
                    }),
                    location: Location::Object(format!("BandwidthPolicy {shown}")),
                });
            }
        }
    }
}

/// Leaves to rein's CNI plugin the pods whose network namespace it limits (it owns their
/// limit, as for their annotations: see `pods::yield_to_cni`): each is taken out of the
/// shared limits in `out` (a shared limit left with no member goes), with a `LimitedByCni`
/// problem on the pod. The per-pod limits of policies carry the pod as their location, so
/// `pods::yield_to_cni` takes them out already.
pub fn yield_shared_to_cni(
    state: &State,
    pods: &[NodePod],
    out: &mut Declarations,
) -> rein::Result<()> {
    for pod in pods {
        let Some(PodPlace::Netns(path)) = &pod.place else {
            continue;
        };
        if declarative::cni_attachment(state, path)?.is_none() {
            continue;
        }
        let shown = path.display().to_string();
        let mut left = false;
        out.resources.retain_mut(|declared| {
            let Resource::SharedLimit(manifest) = &mut declared.resource else {
                return true;
            };
            let spec = &manifest.spec;
            if !spec.netns().iter().any(|netns| netns.as_str() == shown) {
                return true;
            }
            left = true;
            let netns: Vec<NetnsPath> = spec
                .netns()
                .iter()
                .filter(|netns| netns.as_str() != shown)
                .cloned()
                .collect();
            if netns.is_empty() && spec.cgroups().is_empty() {
                return false;
            }
            match SharedLimitSpec::new(
                spec.cgroups().to_vec(),
                netns,
                spec.egress(),
                spec.ingress(),
            ) {
                Ok(fewer) => {
                    manifest.spec = fewer;
                    true
                }
                Err(_) => false,
            }
        });
        if left {
            out.problems.push(Problem {
                object: pod_ref(pod),
                reason: pods::LIMITED_BY_CNI,
                message: format!(
                    "rein's CNI plugin limits the pod's network namespace {shown}: the plugin \
                     owns its limit, and the pod is left out of the shared limit"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rein::units::Rate;
    use serde_json::json;

    use super::*;
    use crate::crd::fixtures;

    fn policy(name: &str, created: &str, spec: serde_json::Value) -> BandwidthPolicy {
        fixtures::custom("BandwidthPolicy", name, created, spec)
    }

    /// A pod in a network namespace of its own.
    fn pod(name: &str, labels: &[(&str, &str)]) -> NodePod {
        let netns = PathBuf::from(format!("/run/netns/cni-{name}"));
        fixtures::pod(name, labels, Some(PodPlace::Netns(netns)))
    }

    fn declared(policies: &[BandwidthPolicy], pods: &[NodePod]) -> Declarations {
        let mut out = Declarations::default();
        declare_policies(policies, pods, &mut out);
        out
    }

    /// Each declared `CgroupLimit` as (name, scope path, egress bits/s, ingress bits/s).
    fn limits(out: &Declarations) -> Vec<(String, String, Option<u64>, Option<u64>)> {
        out.resources
            .iter()
            .map(|declared| {
                let Resource::CgroupLimit(manifest) = &declared.resource else {
                    panic!("{declared:?}");
                };
                let spec = &manifest.spec;
                let path = match &spec.scope {
                    LimitScope::Netns { path, .. } => path.as_str().to_owned(),
                    LimitScope::Cgroup(pattern) => pattern.as_str().to_owned(),
                };
                let bits = |l: Option<DirectionLimit>| l.map(|l| l.rate.bits_per_second());
                (
                    manifest.metadata.name.to_string(),
                    path,
                    bits(spec.egress),
                    bits(spec.ingress),
                )
            })
            .collect()
    }

    /// The one resource declared, a `SharedLimit`, and its manifest.
    fn one_shared(out: &Declarations) -> (&Declared, &Manifest<SharedLimitSpec>) {
        let [one] = out.resources.as_slice() else {
            panic!("{:?}", out.resources);
        };
        let Resource::SharedLimit(manifest) = &one.resource else {
            panic!("{one:?}");
        };
        (one, manifest)
    }

    /// The member namespaces of a shared limit, as paths.
    fn member_netns(spec: &SharedLimitSpec) -> Vec<&str> {
        spec.netns().iter().map(NetnsPath::as_str).collect()
    }

    #[test]
    fn a_per_pod_policy_limits_each_selected_pod_of_its_namespace() {
        let web = policy(
            "web",
            "2026-11-21T00:00:00Z",
            json!({
                "podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["web", "api"]},
                    {"key": "canary", "operator": "DoesNotExist"}
                ]},
                "egress": {"rate": "10M", "burst": "64Ki"},
                "ingress": {"rate": "1.5G"}
            }),
        );
        let mut elsewhere = pod("web-9", &[("app", "web")]);
        elsewhere.namespace = "other".into();
        let mut waiting = pod("web-3", &[("app", "web")]);
        waiting.place = None;
        let mut host = pod("api-0", &[("app", "api")]);
        host.place = Some(PodPlace::Cgroup(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice".into(),
        ));
        let pods = [
            pod("web-0", &[("app", "web")]),
            pod("web-1", &[("app", "web"), ("canary", "yes")]),
            pod("db-0", &[("app", "db")]),
            waiting,
            host,
            elsewhere,
        ];
        let out = declared(&[web], &pods);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(
            limits(&out),
            [
                (
                    "policy.shop.web.api-0",
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
                ),
                ("policy.shop.web.web-0", "/run/netns/cni-web-0"),
            ]
            .map(|(name, path)| (
                name.to_owned(),
                path.to_owned(),
                Some(10_000_000),
                Some(1_500_000_000)
            ))
        );
        let Resource::CgroupLimit(manifest) = &out.resources[1].resource else {
            unreachable!()
        };
        assert_eq!(manifest.spec.egress.unwrap().burst.unwrap().bytes(), 65536);
        assert_eq!(manifest.spec.ingress.unwrap().burst, None);
        assert_eq!(out.resources[1].location, pods::location(&pods[0]));
        // Above rein's highest rate, kubelet's bound still holds and rein's rate is used.
        let fast = policy(
            "fast",
            "2026-11-21T00:00:00Z",
            json!({"podSelector": {}, "egress": {"rate": "2T"}}),
        );
        let out = declared(&[fast], &pods[..1]);
        assert_eq!(limits(&out)[0].2, Some(Rate::MAX_BITS));
    }

    #[test]
    fn the_pods_own_annotations_win_and_the_oldest_policy_wins() {
        let mut annotated = pod("web-0", &[("app", "web")]);
        annotated
            .annotations
            .insert("kubernetes.io/egress-bandwidth".into(), "5M".into());
        // A bad value is the annotation's Event, not the policy's limit instead.
        let mut labelled = pod("web-1", &[("app", "web"), ("rein.dev/ingress-burst", "x")]);
        labelled.labels.insert("tier".into(), "front".into());
        let both = pod("web-2", &[("app", "web"), ("tier", "front")]);
        let old = policy(
            "by-app",
            "2026-11-21T00:00:00Z",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "egress": {"rate": "10M"}}),
        );
        let young = policy(
            "by-tier",
            "2026-11-22T00:00:00Z",
            json!({"podSelector": {"matchLabels": {"tier": "front"}}, "egress": {"rate": "1M"}}),
        );
        // Whatever order the store lists them in.
        let out = declared(&[young, old], &[annotated, labelled, both]);
        assert_eq!(
            limits(&out),
            [(
                "policy.shop.by-app.web-2".to_owned(),
                "/run/netns/cni-web-2".to_owned(),
                Some(10_000_000),
                None
            )]
        );
        let problems: Vec<(&str, &str, &str)> = out
            .problems
            .iter()
            .map(|p| (p.object.name.as_str(), p.reason, p.message.as_str()))
            .collect();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for (pod, reason, needle) in [
            ("web-0", ANNOTATION_OVER_POLICY, "shop/by-app"),
            ("web-1", ANNOTATION_OVER_POLICY, "shop/by-app"),
            ("web-1", ANNOTATION_OVER_POLICY, "shop/by-tier"),
            ("web-2", POLICY_CONFLICT, "shop/by-app, the oldest"),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|(p, r, m)| *p == pod && *r == reason && m.contains(needle)),
                "{pod} {reason} {needle}: {problems:?}"
            );
        }
        assert!(out.problems.iter().all(|p| p.object.kind == "Pod"));
    }

    #[test]
    fn an_invalid_policy_is_its_condition_and_declares_nothing() {
        for (spec, needle) in [
            (json!({"podSelector": {}}), "at least one"),
            (
                json!({"podSelector": {}, "ingress": {"rate": "10M"}, "mode": "Shared"}),
                "egress only",
            ),
            (
                json!({"podSelector": {}, "egress": {"rate": "10X"}}),
                "egress.rate",
            ),
            (
                json!({"podSelector": {}, "egress": {"rate": "999"}}),
                "egress.rate",
            ),
            (
                json!({"podSelector": {}, "ingress": {"rate": "2P"}}),
                "ingress.rate",
            ),
            (
                json!({"podSelector": {}, "egress": {"rate": "10M", "burst": "100"}}),
                "egress.burst",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                       "egress": {"rate": "10M"}}),
                "podSelector",
            ),
        ] {
            let out = declared(
                &[policy("p", "2026-11-21T00:00:00Z", spec.clone())],
                &[pod("web-0", &[])],
            );
            assert!(out.resources.is_empty(), "{spec}");
            let [problem] = out.problems.as_slice() else {
                panic!("{spec}: {:?}", out.problems);
            };
            assert_eq!(
                (problem.object.kind, problem.reason),
                ("BandwidthPolicy", "Invalid")
            );
            assert!(
                problem.message.contains(needle),
                "{spec}: {}",
                problem.message
            );
        }
    }

    #[test]
    fn a_shared_policy_is_one_limit_for_its_pods_on_the_node() {
        let shared = policy(
            "batch",
            "2026-11-21T00:00:00Z",
            json!({"podSelector": {"matchLabels": {"app": "batch"}},
                   "egress": {"rate": "20M"}, "mode": "Shared"}),
        );
        let mut host = pod("batch-1", &[("app", "batch")]);
        host.place = Some(PodPlace::Cgroup("/kubepods/burstable/pod42".into()));
        let pods = [pod("batch-0", &[("app", "batch")]), host, pod("web-0", &[])];
        let out = declared(std::slice::from_ref(&shared), &pods);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let (one, manifest) = one_shared(&out);
        assert_eq!(manifest.metadata.name.as_str(), "policy.shop.batch");
        assert_eq!(
            one.location,
            Location::Object("BandwidthPolicy shop/batch".into())
        );
        let spec = &manifest.spec;
        assert_eq!(member_netns(spec), ["/run/netns/cni-batch-0"]);
        assert_eq!(
            spec.cgroups()
                .iter()
                .map(CgroupPattern::as_str)
                .collect::<Vec<_>>(),
            ["/kubepods/burstable/pod42"]
        );
        assert_eq!(
            spec.egress().map(|l| l.rate.bits_per_second()),
            Some(20_000_000)
        );
        assert_eq!(spec.ingress(), None);
        // No selected pod on this node: nothing to share.
        let out = declared(&[shared], &pods[2..]);
        assert!(out.resources.is_empty() && out.problems.is_empty());
    }

    #[test]
    fn a_pod_the_cni_plugin_limits_leaves_the_shared_limit() {
        use rein::capabilities::{
            cgroup_limit::LimitSpec,
            netns_limit::{Attachment, NetnsOrigin, NetnsRecord},
        };
        // The test's own namespace stands for the pod's.
        let path = PathBuf::from("/proc/self/ns/net");
        let cookie = rein::platform::netns::cookie_of(&path).unwrap();
        let mut state = State::default();
        state.netns_limits.rules.push(NetnsRecord {
            netns: "/run/netns/cni-x".into(),
            cookie,
            inode: 1,
            egress: Some(LimitSpec {
                rate: Rate::from_bits(5_000_000).unwrap(),
                burst: None,
            }),
            ingress: None,
            subnets: None,
            origin: NetnsOrigin::Cni(Attachment {
                network: "k8s-pod-network".into(),
                container_id: "0123456789abcdef".into(),
                ifname: "eth0".into(),
            }),
            declared_by: None,
        });
        let shared = policy(
            "batch",
            "2026-11-21T00:00:00Z",
            json!({"podSelector": {}, "egress": {"rate": "20M"}, "mode": "Shared"}),
        );
        let mut by_cni = pod("batch-0", &[]);
        by_cni.place = Some(PodPlace::Netns(path.clone()));
        let pods = [by_cni.clone(), pod("batch-1", &[])];
        let mut out = declared(std::slice::from_ref(&shared), &pods);
        yield_shared_to_cni(&state, &pods, &mut out).unwrap();
        let (_, manifest) = one_shared(&out);
        assert_eq!(member_netns(&manifest.spec), ["/run/netns/cni-batch-1"]);
        let [problem] = out.problems.as_slice() else {
            panic!("{:?}", out.problems);
        };
        assert_eq!(
            (problem.object.name.as_str(), problem.reason),
            ("batch-0", pods::LIMITED_BY_CNI)
        );
        // Its only member the plugin's: no shared limit at all.
        let mut out = declared(&[shared], std::slice::from_ref(&by_cni));
        yield_shared_to_cni(&state, &[by_cni], &mut out).unwrap();
        assert!(out.resources.is_empty(), "{:?}", out.resources);
        assert_eq!(out.problems.len(), 1);
    }
}
