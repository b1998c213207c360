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
