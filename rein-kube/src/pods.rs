//! The pods' limits as rein resources: one `CgroupLimit` per limited pod, on its network
//! namespace or, for a pod on the host's network, its cgroup.
use rein::{
    declarative::{
        self, ApiVersion, CgroupLimitSpec, CgroupPattern, Declared, LimitScope, Location, Manifest,
        NetnsPath, Resource, ResourceName,
    },
    store::State,
};

use crate::{
    pod_limits::{pod_limits, pod_ref},
    world::{Declarations, NodePod, PodPlace, Problem},
};

/// Reasons of a pod's problems, as its Events name them.
pub const LIMITED_BY_CNI: &str = "LimitedByCni";
pub const INVALID_NAME: &str = "InvalidName";
pub const INVALID_PLACE: &str = "InvalidPlace";

/// The name of a pod's resource: `pod.<namespace>.<name>` (a namespace holds no `.`, so no
/// two pods share one).
pub fn resource_name(namespace: &str, name: &str) -> Result<ResourceName, String> {
    ResourceName::try_from(format!("pod.{namespace}.{name}"))
}

/// The pod as rein's errors name it: `Pod default/web-0`.
pub fn location(pod: &NodePod) -> Location {
    Location::Object(format!("Pod {}/{}", pod.namespace, pod.name))
}

/// Adds a `CgroupLimit` for each pod with valid limits and a place to `out`, and a problem
/// for each pod whose annotations or labels are invalid (nothing is declared for it). A pod
/// without limits, or whose place is not known (yet), declares nothing.
pub fn declare_pods(pods: &[NodePod], out: &mut Declarations) {
    for pod in pods {
        let limits = match pod_limits(pod) {
            Ok(limits) if limits.is_empty() => continue,
            Ok(limits) => limits,
            Err(problem) => {
                out.problems.push(*problem);
                continue;
            }
        };
        let Some(place) = &pod.place else {
            continue;
        };
        let problem = |reason, message| Problem {
            object: pod_ref(pod),
            reason,
            message,
        };
        let name = match resource_name(&pod.namespace, &pod.name) {
            Ok(name) => name,
            Err(error) => {
                out.problems.push(problem(INVALID_NAME, error));
                continue;
            }
        };
        let scope = match place {
            PodPlace::Netns(path) => {
                NetnsPath::try_from(path.display().to_string()).map(|path| LimitScope::Netns {
                    path,
                    subnets: None,
                })
            }
            PodPlace::Cgroup(path) => CgroupPattern::try_from(path.clone()).map(LimitScope::Cgroup),
        };
        let scope = match scope {
            Ok(scope) => scope,
            Err(error) => {
                out.problems.push(problem(INVALID_PLACE, error));
                continue;
            }
        };
        let manifest = Manifest {
            api_version: ApiVersion::V1Alpha1,
            metadata: declarative::resource::Metadata { name },
            spec: CgroupLimitSpec {
                scope,
                egress: limits.egress,
                ingress: limits.ingress,
            },
        };
        out.resources.push(Declared {
            resource: Resource::CgroupLimit(manifest),
            location: location(pod),
        });
    }
}

/// Leaves to rein's CNI plugin the pods whose namespace it limits already: their resources are
/// taken out of `out`, and each gets a `LimitedByCni` problem saying so. The plugin owns such a
/// limit (set from the same annotations when the pod's sandbox was made); rein would leave it
/// in place anyway (see [`rein::declarative::cni_attachment`]).
pub fn yield_to_cni(state: &State, pods: &[NodePod], out: &mut Declarations) -> rein::Result<()> {
    for pod in pods {
        let Some(PodPlace::Netns(path)) = &pod.place else {
            continue;
        };
        let Some(attachment) = declarative::cni_attachment(state, path)? else {
            continue;
        };
        let location = location(pod);
        let before = out.resources.len();
        out.resources
            .retain(|declared| declared.location != location);
        if out.resources.len() == before {
            continue;
        }
        out.problems.push(Problem {
            object: pod_ref(pod),
            reason: LIMITED_BY_CNI,
            message: format!(
                "rein's CNI plugin limits the pod's network namespace {} (container {}, {} on \
                 network {}): the plugin owns the limit, and the agent leaves the pod to it",
                path.display(),
                attachment.container_id,
                attachment.ifname,
                attachment.network
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use rein::{
        capabilities::{
            cgroup_limit::LimitSpec,
            netns_limit::{Attachment, NetnsOrigin, NetnsRecord},
        },
        declarative::Kind,
        units::Rate,
    };

    use super::*;
    use crate::pod_limits::{EGRESS_BANDWIDTH, INGRESS_BANDWIDTH, INVALID_BANDWIDTH};

    fn pod(namespace: &str, name: &str, place: Option<PodPlace>, egress: &str) -> NodePod {
        NodePod {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: BTreeMap::new(),
            annotations: [(EGRESS_BANDWIDTH.to_owned(), egress.to_owned())].into(),
            place,
        }
    }

    fn spec(declared: &Declared) -> &CgroupLimitSpec {
        match &declared.resource {
            Resource::CgroupLimit(manifest) => &manifest.spec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_limited_pod_with_a_place_declares_one_cgroup_limit() {
        let netns = PodPlace::Netns(PathBuf::from("/run/netns/cni-1234"));
        let cgroup = PodPlace::Cgroup("/kubepods/burstable/poduid".into());
        let mut unlimited = pod("default", "plain", Some(netns.clone()), "1M");
        unlimited.annotations.clear();
        let pods = [
            pod("default", "web-0", Some(netns), "10M"),
            pod("kube-system", "node.agent", Some(cgroup), "1M"),
            pod("default", "waiting", None, "1M"),
            unlimited,
        ];
        let mut out = Declarations::default();
        declare_pods(&pods, &mut out);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.resources.len(), 2, "{:#?}", out.resources);
        let web = &out.resources[0];
        assert_eq!(web.resource.kind(), Kind::CgroupLimit);
        assert_eq!(web.resource.name().as_str(), "pod.default.web-0");
        assert_eq!(web.location, Location::Object("Pod default/web-0".into()));
        assert_eq!(web.location.to_string(), "Pod default/web-0");
        let spec_web = spec(web);
        assert_eq!(
            spec_web.scope,
            LimitScope::Netns {
                path: NetnsPath::try_from("/run/netns/cni-1234".to_owned()).unwrap(),
                subnets: None
            }
        );
        assert_eq!(
            spec_web.egress.map(|l| l.rate),
            Some(Rate::from_bits(10_000_000).unwrap())
        );
        assert_eq!(spec_web.ingress, None);
        let agent = &out.resources[1];
        assert_eq!(agent.resource.name().as_str(), "pod.kube-system.node.agent");
        assert_eq!(
            spec(agent).scope,
            LimitScope::Cgroup(
                CgroupPattern::try_from("/kubepods/burstable/poduid".to_owned()).unwrap()
            )
        );
    }

    #[test]
    fn an_invalid_pod_is_a_problem_and_declares_nothing() {
        let place = Some(PodPlace::Netns(PathBuf::from("/run/netns/x")));
        let mut bad = pod("default", "bad", place.clone(), "10M");
        bad.annotations
            .insert(INGRESS_BANDWIDTH.to_owned(), "1".to_owned());
        // Even without a place yet: the operator hears of it at once.
        let unplaced = pod("default", "unplaced", None, "lots");
        let long = pod("default", &"a".repeat(250), place.clone(), "10M");
        let misplaced = pod(
            "default",
            "misplaced",
            Some(PodPlace::Cgroup("kubepods/podx".into())),
            "10M",
        );
        let mut out = Declarations::default();
        declare_pods(
            &[
                bad,
                unplaced,
                long,
                misplaced,
                pod("default", "good", place, "1M"),
            ],
            &mut out,
        );
        let reasons: Vec<(&str, &str)> = out
            .problems
            .iter()
            .map(|p| (p.object.name.as_str(), p.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("bad", INVALID_BANDWIDTH),
                ("unplaced", INVALID_BANDWIDTH),
                (&*"a".repeat(250), INVALID_NAME),
                ("misplaced", INVALID_PLACE),
            ]
        );
        let names: Vec<&str> = out
            .resources
            .iter()
            .map(|d| d.resource.name().as_str())
            .collect();
        assert_eq!(names, ["pod.default.good"]);
    }

    #[test]
    fn a_pod_whose_namespace_the_cni_plugin_limits_is_left_to_it() {
        // The test's own namespace stands for the pod's.
        let path = PathBuf::from("/proc/self/ns/net");
        let cookie = rein::platform::netns::cookie_of(&path).unwrap();
        let limit = LimitSpec {
            rate: Rate::from_bits(5_000_000).unwrap(),
            burst: None,
        };
        let record = |origin| NetnsRecord {
            netns: "/run/netns/cni-x".into(),
            cookie,
            inode: 1,
            egress: Some(limit),
            ingress: None,
            subnets: None,
            origin,
            declared_by: None,
        };
        let pods = [
            pod(
                "default",
                "web-0",
                Some(PodPlace::Netns(path.clone())),
                "10M",
            ),
            pod(
                "default",
                "host",
                Some(PodPlace::Cgroup("/kubepods/podh".into())),
                "10M",
            ),
        ];
        let declared = || {
            let mut out = Declarations::default();
            declare_pods(&pods, &mut out);
            out
        };
        // Limited by hand: not the plugin's, the apply decides.
        let mut state = State::default();
        state.netns_limits.rules.push(record(NetnsOrigin::Manual));
        let mut out = declared();
        yield_to_cni(&state, &pods, &mut out).unwrap();
        assert_eq!(out.resources.len(), 2);
        assert!(out.problems.is_empty());

        state.netns_limits.rules[0] = record(NetnsOrigin::Cni(Attachment {
            network: "k8s-pod-network".into(),
            container_id: "0123456789abcdef".into(),
            ifname: "eth0".into(),
        }));
        let mut out = declared();
        yield_to_cni(&state, &pods, &mut out).unwrap();
        let names: Vec<&str> = out
            .resources
            .iter()
            .map(|d| d.resource.name().as_str())
            .collect();
        assert_eq!(names, ["pod.default.host"]);
        assert_eq!(out.problems.len(), 1);
        let problem = &out.problems[0];
        assert_eq!(
            (problem.object.name.as_str(), problem.reason),
            ("web-0", LIMITED_BY_CNI)
        );
        assert!(
            problem.message.contains("CNI plugin")
                && problem.message.contains("0123456789abcdef")
                && problem.message.contains("k8s-pod-network"),
            "{}",
            problem.message
        );
        // A pod with no resource (no limits) has nothing to yield.
        let mut out = Declarations::default();
        yield_to_cni(&state, &pods, &mut out).unwrap();
        assert!(out.problems.is_empty());
    }
}
