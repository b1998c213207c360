//! The `RateLimit` custom resource: a limit on new connections to a Kubernetes Service,
//! resolved to the Service's cluster IPs and ports and declared to rein as outbound connection
//! rules (rein's own `RateLimit` kind, one per destination).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{CustomResource, ResourceExt};
use rein::declarative::{
    self, ApiVersion, Declared, Location, Manifest, Resource, resource::Metadata,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Condition, ResourceNames, object_ref, oldest_first, pod_ref, reasons, selector::Selector,
};
use crate::world::{Declarations, NodePod, PodPlace, Problem};

/// A limit on the connections local processes open to a Service: each of its cluster IPs
/// (every family) and ports, kept current as the Service changes. Give `rate` (with `burst`)
/// or `rules`.
// Each printer column names its type: clippy reads the `type_ = "string"` of two columns as one
// attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rein.dev",
    version = "v1alpha1",
    kind = "RateLimit",
    namespaced,
    status = "RateLimitStatus",
    shortname = "rl",
    category = "rein",
    doc = "A limit on new connections to a Service's cluster IPs and ports, enforced by rein on every node",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service.name"),
    printcolumn(name = "Rate", type_ = "string", json_path = ".spec.rate"),
    printcolumn(
        name = "Destinations",
        type_ = "integer",
        json_path = ".status.destinations"
    ),
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
pub struct RateLimitSpec {
    /// The Service, in the RateLimit's namespace.
    pub service: ServiceRef,
    /// Its ports to limit, by name or number (default: every TCP port of the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<IntOrString>>,
    /// New connections at a rate: 100/s, 30/min, 1/h (a continuous token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Connections at once above the rate (default one second at the rate, at least 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u64>,
    /// Instead of rate, as Envoy and KMesh write it: one bucket of maxTokens that gains
    /// tokensPerFill every fillInterval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<FillRule>>,
    /// Each caller network namespace (each pod) has a bucket of its own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_caller: bool,
    /// Count only the connects of these pods of the RateLimit's namespace, each pod with a
    /// bucket of its own (default: every process of the node, sharing one bucket per
    /// destination unless perCaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A Service of the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRef {
    pub name: String,
}

/// One bucket of `maxTokens` that gains `tokensPerFill` each `fillInterval`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FillRule {
    #[schemars(range(min = 1))]
    pub max_tokens: u64,
    #[schemars(range(min = 1))]
    pub tokens_per_fill: u64,
    /// 100ms, 1s, 60s, 1m.
    pub fill_interval: String,
}

/// What every node's agent agrees on about a `RateLimit`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStatus {
    /// The generation the conditions are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: True, or False with the reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Cluster IPs times ports limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<u32>,
}

/// A protocol of a Service port that rein counts connects of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One address connections are limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: PortProtocol,
}

impl Target {
    /// As rein's `destination` takes it.
    fn destination(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }

    /// As a resource name takes it: `10.96.0.10.tcp-80`, `fd00--a.tcp-80`.
    fn name_part(&self) -> String {
        let ip = self.ip.to_string().replace(':', "-");
        format!("{ip}.{}-{}", self.protocol.name(), self.port)
    }
}

/// Why a `RateLimit` limits no destination: a condition's reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

/// The cluster IPs (every family) times the ports of the Service `limit` names, or why there
/// are none. Every node sees the same Service, so the answer is the same on every node.
pub fn resolve(limit: &RateLimit, services: &[Service]) -> Result<Vec<Target>, Unresolved> {
    let namespace = limit.namespace().unwrap_or_default();
    let wanted = &limit.spec.service.name;
    let problem = |reason: &'static str, message: String| Unresolved { reason, message };
    let service = services
        .iter()
        .find(|s| s.namespace().as_deref() == Some(&namespace) && &s.name_any() == wanted)
        .ok_or_else(|| {
            problem(
                reasons::SERVICE_NOT_FOUND,
                format!("Service {namespace}/{wanted} is not there (yet): nothing is limited"),
            )
        })?;
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(problem(
            reasons::NO_CLUSTER_IP,
            format!(
                "Service {namespace}/{wanted} is an ExternalName: it has no cluster IP to \
                 limit connections to"
            ),
        ));
    }
    let texts: Vec<String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    let texts: Vec<&String> = texts
        .iter()
        .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
        .collect();
    if texts.is_empty() {
        return Err(problem(
            reasons::NO_CLUSTER_IP,
            format!(
                "Service {namespace}/{wanted} is headless (clusterIP None): it has no cluster \
                 IP to limit connections to"
            ),
        ));
    }
    let mut ips = Vec::new();
    for text in texts {
        let ip = text.parse::<IpAddr>().map_err(|_| {
            problem(
                reasons::INVALID_SERVICE,
                format!("Service {namespace}/{wanted} has cluster IP {text:?}, not an address"),
            )
        })?;
        ips.push(ip);
    }
    let service_ports = spec.ports.unwrap_or_default();
    let protocol_of = |port: &k8s_openapi::api::core::v1::ServicePort| match port
        .protocol
        .as_deref()
        .unwrap_or("TCP")
    {
        "TCP" => Some(PortProtocol::Tcp),
        "UDP" => Some(PortProtocol::Udp),
        _ => None,
    };
    let number = |port: i32| u16::try_from(port).ok().filter(|&p| p != 0);
    let mut ports: BTreeSet<(u16, PortProtocol)> = BTreeSet::new();
    match &limit.spec.ports {
        None => {
            ports.extend(service_ports.iter().filter_map(|p| {
                (protocol_of(p) == Some(PortProtocol::Tcp))
                    .then(|| number(p.port).map(|n| (n, PortProtocol::Tcp)))
                    .flatten()
            }));
            if ports.is_empty() {
                return Err(problem(
                    reasons::NO_PORTS,
                    format!("Service {namespace}/{wanted} has no TCP port to limit"),
                ));
            }
        }
        Some(wanted_ports) => {
            if wanted_ports.is_empty() {
                return Err(problem(
                    reasons::INVALID,
                    "ports is empty: leave it out to limit every TCP port".into(),
                ));
            }
            for wanted_port in wanted_ports {
                let (matching, shown): (Vec<_>, String) = match wanted_port {
                    IntOrString::Int(n) => (
                        service_ports.iter().filter(|p| p.port == *n).collect(),
                        n.to_string(),
                    ),
                    IntOrString::String(name) => (
                        service_ports
                            .iter()
                            .filter(|p| p.name.as_deref() == Some(name))
                            .collect(),
                        format!("{name:?}"),
                    ),
                };
                if matching.is_empty() {
                    return Err(problem(
                        reasons::PORT_NOT_FOUND,
                        format!("Service {namespace}/{wanted} has no port {shown}"),
                    ));
                }
                for port in matching {
                    let protocol = protocol_of(port).ok_or_else(|| {
                        problem(
                            reasons::INVALID,
                            format!(
                                "port {shown} of Service {namespace}/{wanted} is {}: rein \
                                 counts TCP and UDP connects",
                                port.protocol.as_deref().unwrap_or_default()
                            ),
                        )
                    })?;
                    if let Some(n) = number(port.port) {
                        ports.insert((n, protocol));
                    }
                }
            }
        }
    }
    let mut targets: Vec<Target> = ips
        .iter()
        .flat_map(|&ip| {
            ports
                .iter()
                .map(move |&(port, protocol)| Target { ip, port, protocol })
        })
        .collect();
    targets.sort();
    targets.dedup();
    Ok(targets)
}

/// Whose connects a rule counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Node,
    Netns(std::path::PathBuf),
    Cgroup(String),
}

impl Scope {
    fn of(place: &PodPlace) -> Self {
        match place {
            PodPlace::Netns(path) => Self::Netns(path.clone()),
            PodPlace::Cgroup(path) => Self::Cgroup(path.clone()),
        }
    }
}

/// rein's `RateLimit` spec for `target`, or rein's own one-line complaint about the limit.
fn rein_spec(
    spec: &RateLimitSpec,
    target: &Target,
    place: Option<&PodPlace>,
) -> Result<declarative::RateLimitSpec, String> {
    let mut fields = serde_json::Map::new();
    fields.insert("destination".into(), target.destination().into());
    fields.insert("protocol".into(), target.protocol.name().into());
    if let Some(rate) = &spec.rate {
        fields.insert("rate".into(), rate.clone().into());
    }
    if let Some(burst) = spec.burst {
        fields.insert("burst".into(), burst.into());
    }
    if let Some(rules) = &spec.rules {
        let rules: Vec<serde_json::Value> = rules
            .iter()
            .map(|rule| {
                serde_json::json!({
                    "maxTokens": rule.max_tokens,
                    "tokensPerFill": rule.tokens_per_fill,
                    "fillInterval": rule.fill_interval,
                })
            })
            .collect();
        fields.insert("rules".into(), rules.into());
    }
    if spec.per_caller {
        fields.insert("perCaller".into(), true.into());
    }
    match place {
        Some(PodPlace::Netns(path)) => {
            fields.insert("netns".into(), path.to_string_lossy().into_owned().into());
        }
        Some(PodPlace::Cgroup(path)) => {
            fields.insert("cgroup".into(), path.clone().into());
        }
        None => {}
    }
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(|error| {
        let error = error.to_string();
        error
            .strip_prefix("RateLimit: ")
            .map_or(error.clone(), str::to_owned)
    })
}

/// Declares every valid `RateLimit`: a rein `RateLimit` per cluster IP and port (and per
/// selected pod of this node, with a `podSelector`). Problems: an invalid spec, a Service that
/// is missing or has no cluster IP, and a second `RateLimit` of the same destinations (the
/// oldest holds them) become the resource's condition; two `RateLimit`s selecting one pod
/// become an Event on the pod.
pub fn declare_rate_limits(
    rate_limits: &[RateLimit],
    services: &[Service],
    pods: &[NodePod],
    out: &mut Declarations,
) {
    let mut names = ResourceNames::default();
    // Who holds each kernel key: one rule per scope, destination and protocol.
    let mut held: BTreeMap<(Scope, Target), String> = BTreeMap::new();
    for limit in oldest_first(rate_limits) {
        let namespace = limit.namespace().unwrap_or_default();
        let shown = format!("{namespace}/{}", limit.name_any());
        let invalid = |message: String| Problem {
            object: object_ref("RateLimit", limit),
            reason: reasons::INVALID,
            message,
        };
        let selector = match limit.spec.pod_selector.as_ref().map(Selector::parse) {
            Some(Err(error)) => {
                out.problems.push(invalid(format!("podSelector: {error}")));
                continue;
            }
            Some(Ok(selector)) => Some(selector),
            None => None,
        };
        let targets = match resolve(limit, services) {
            Ok(targets) => targets,
            Err(Unresolved { reason, message }) => {
                out.problems.push(Problem {
                    object: object_ref("RateLimit", limit),
                    reason,
                    message,
                });
                continue;
            }
        };
        // The limit is checked once, by rein's own rules, before any pod is looked at, so
        // every node finds the same fault.
        if let Some(first) = targets.first()
            && let Err(error) = rein_spec(&limit.spec, first, None)
        {
            out.problems.push(invalid(error));
            continue;
        }
        let prefix = format!("ratelimit.{namespace}.{}", limit.name_any());
        // Each scope with the pod it is for (none: the node's), and its names' stem.
        let mut wanted: Vec<(Scope, Option<&NodePod>, String)> = Vec::new();
        match &selector {
            None => {
                if let Some(owner) = targets
                    .iter()
                    .find_map(|t| held.get(&(Scope::Node, *t)).map(|owner| (owner, t)))
                {
                    out.problems.push(Problem {
                        object: object_ref("RateLimit", limit),
                        reason: reasons::CONFLICT,
                        message: format!(
                            "RateLimit {} already limits connections to {} ({}): the oldest \
                             holds a destination",
                            owner.0,
                            owner.1.destination(),
                            owner.1.protocol.name()
                        ),
                    });
                    continue;
                }
                wanted.push((Scope::Node, None, prefix.clone()));
            }
            Some(selector) => {
                let mut selected: Vec<&NodePod> = pods
                    .iter()
                    .filter(|pod| pod.namespace == namespace && selector.matches(&pod.labels))
                    .collect();
                selected.sort_by(|a, b| a.name.cmp(&b.name));
                for pod in selected {
                    let Some(place) = &pod.place else { continue };
                    let scope = Scope::of(place);
                    if let Some(owner) = targets.iter().find_map(|t| held.get(&(scope.clone(), *t)))
                    {
                        out.problems.push(Problem {
                            object: pod_ref(pod),
                            reason: "RateLimitConflict",
                            message: format!(
                                "RateLimits {owner} and {shown} both select this pod for the \
                                 same destinations: {owner}, the oldest, applies"
                            ),
                        });
                        continue;
                    }
                    wanted.push((scope, Some(pod), format!("{prefix}.pod.{}", pod.name)));
                }
            }
        }
        for (scope, pod, stem) in wanted {
            let place = pod.and_then(|pod| pod.place.as_ref());
            let specs: Result<Vec<_>, String> = targets
                .iter()
                .map(|target| rein_spec(&limit.spec, target, place).map(|spec| (target, spec)))
                .collect();
            let specs = match (specs, pod) {
                (Ok(specs), _) => specs,
                // The limit was checked above: what rein refuses now is the pod's place, which
                // only this node sees.
                (Err(error), Some(pod)) => {
                    out.problems.push(Problem {
                        object: pod_ref(pod),
                        reason: "InvalidPlace",
                        message: format!("RateLimit {shown}: {error}"),
                    });
                    continue;
                }
                (Err(error), None) => {
                    out.problems.push(invalid(error));
                    continue;
                }
            };
            for (target, spec) in specs {
                held.insert((scope.clone(), *target), shown.clone());
                let name = names.unique(&format!("{stem}.{}", target.name_part()));
                out.resources.push(Declared {
                    resource: Resource::RateLimit(Manifest {
                        api_version: ApiVersion::V1Alpha1,
                        metadata: Metadata { name },
                        spec,
                    }),
                    location: Location::Object(format!("RateLimit {shown}")),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rein::{
        capabilities::conn_limits::{request::ScopeRequest, spec::ConnLimit},
        declarative::RateLimitRule,
    };
    use serde_json::json;

    use super::*;
    use crate::crd::fixtures::{self, pod};

    /// A dual-stack Service as the API server returns it (named ports, DNS on both protocols).
    fn dual_stack() -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "api",
                "namespace": "shop",
                "uid": "2f1c9a6e-3b7d-4c55-9a51-0c2f7f5c1a10",
                "resourceVersion": "81442",
                "creationTimestamp": "2026-11-20T08:00:00Z"
            },
            "spec": {
                "clusterIP": "10.96.14.7",
                "clusterIPs": ["10.96.14.7", "fd00:10:96::e07"],
                "internalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "PreferDualStack",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                    {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9090},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}
                ],
                "selector": {"app": "api"},
                "sessionAffinity": "None",
                "type": "ClusterIP"
            },
            "status": {"loadBalancer": {}}
        }))
        .unwrap()
    }

    fn headless() -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": "shop", "uid": "u-db"},
            "spec": {
                "clusterIP": "None",
                "clusterIPs": ["None"],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": 5432}],
                "selector": {"app": "db"},
                "type": "ClusterIP"
            }
        }))
        .unwrap()
    }

    fn rate_limit(name: &str, created: &str, spec: serde_json::Value) -> RateLimit {
        fixtures::custom("RateLimit", name, created, spec)
    }

    fn declared(limits: &[RateLimit], services: &[Service], pods: &[NodePod]) -> Declarations {
        let mut out = Declarations::default();
        declare_rate_limits(limits, services, pods, &mut out);
        out
    }

    /// Each declared rule as (name, destination, protocol, scope).
    fn rules(out: &Declarations) -> Vec<(String, String, String, ScopeRequest)> {
        out.resources
            .iter()
            .map(|declared| {
                assert_eq!(
                    declared.location,
                    Location::Object(format!(
                        "RateLimit shop/{}",
                        declared.resource.name().as_str().split('.').nth(2).unwrap()
                    ))
                );
                let Resource::RateLimit(manifest) = &declared.resource else {
                    panic!("{declared:?}");
                };
                let RateLimitRule::Outbound(rule) = manifest.spec.rule() else {
                    panic!("{manifest:?}");
                };
                (
                    manifest.metadata.name.to_string(),
                    rule.destination.to_string(),
                    rule.protocol.map(|p| p.name()).unwrap_or("any").to_owned(),
                    rule.scope.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn every_tcp_port_of_every_cluster_ip_by_default() {
        let limit = rate_limit(
            "api-connects",
            "2026-11-21T00:00:00Z",
            json!({"service": {"name": "api"}, "rate": "100/s", "burst": 20}),
        );
        let out = declared(&[limit], &[dual_stack()], &[]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let found: Vec<_> = rules(&out)
            .into_iter()
            .map(|(name, destination, protocol, scope)| {
                assert_eq!(scope, ScopeRequest::All);
                (name, destination, protocol)
            })
            .collect();
        let expected = [
            ("10.96.14.7.tcp-53", "10.96.14.7:53"),
            ("10.96.14.7.tcp-80", "10.96.14.7:80"),
            ("10.96.14.7.tcp-9090", "10.96.14.7:9090"),
            ("fd00-10-96--e07.tcp-53", "[fd00:10:96::e07]:53"),
            ("fd00-10-96--e07.tcp-80", "[fd00:10:96::e07]:80"),
            ("fd00-10-96--e07.tcp-9090", "[fd00:10:96::e07]:9090"),
        ]
        .map(|(name, destination)| {
            (
                format!("ratelimit.shop.api-connects.{name}"),
                destination.to_owned(),
                "tcp".to_owned(),
            )
        });
        assert_eq!(found, expected);
        let Resource::RateLimit(manifest) = &out.resources[0].resource else {
            unreachable!()
        };
        let RateLimitRule::Outbound(rule) = manifest.spec.rule() else {
            unreachable!()
        };
        assert!(matches!(rule.limit, ConnLimit::Rate { burst: 20, .. }));
        assert!(!rule.per_caller);
    }

    #[test]
    fn named_and_numbered_ports_pick_their_protocols() {
        // 53 by number is both DNS ports; "http" and 80 are one.
        let limit = rate_limit(
            "dns",
            "2026-11-21T00:00:00Z",
            json!({
                "service": {"name": "api"},
                "ports": [53, "http", 80],
                "rules": [{"maxTokens": 4, "tokensPerFill": 4, "fillInterval": "60s"}],
                "perCaller": true
            }),
        );
        let out = declared(&[limit], &[dual_stack()], &[]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let found: BTreeSet<(String, String)> = rules(&out)
            .into_iter()
            .map(|(_, destination, protocol, _)| (destination, protocol))
            .collect();
        let expected: BTreeSet<(String, String)> = [
            ("10.96.14.7:53", "tcp"),
            ("10.96.14.7:53", "udp"),
            ("10.96.14.7:80", "tcp"),
            ("[fd00:10:96::e07]:53", "tcp"),
            ("[fd00:10:96::e07]:53", "udp"),
            ("[fd00:10:96::e07]:80", "tcp"),
        ]
        .iter()
        .map(|(d, p)| ((*d).to_owned(), (*p).to_owned()))
        .collect();
        assert_eq!(found, expected);
        let Resource::RateLimit(manifest) = &out.resources[0].resource else {
            unreachable!()
        };
        let RateLimitRule::Outbound(rule) = manifest.spec.rule() else {
            unreachable!()
        };
        assert!(rule.per_caller);
        assert!(matches!(
            rule.limit,
            ConnLimit::Fill {
                max_tokens: 4,
                tokens_per_fill: 4,
                fill_ns: 60_000_000_000
            }
        ));
    }

    #[test]
    fn a_service_that_cannot_be_limited_is_a_condition_not_a_rule() {
        let spec = |service: &str, extra: serde_json::Value| {
            let mut spec = json!({"service": {"name": service}, "rate": "5/s"});
            if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
                spec.extend(extra.clone());
            }
            spec
        };
        let external: Service = serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "db.example.invalid"}
        }))
        .unwrap();
        let udp_only: Service = serde_json::from_value(json!({
            "metadata": {"name": "syslog", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                     "ports": [{"port": 514, "protocol": "UDP"}]}
        }))
        .unwrap();
        let sctp: Service = serde_json::from_value(json!({
            "metadata": {"name": "sig", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.8",
                     "ports": [{"name": "s", "port": 3868, "protocol": "SCTP"}]}
        }))
        .unwrap();
        // A Service of another namespace of the same name is not this one.
        let mut elsewhere = dual_stack();
        elsewhere.metadata.namespace = Some("other".into());
        let services = [headless(), external, udp_only, sctp];
        for (spec, services, reason, needle) in [
            (
                spec("api", json!({})),
                &[elsewhere][..],
                "ServiceNotFound",
                "shop/api",
            ),
            (
                spec("db", json!({})),
                &services[..],
                "NoClusterIP",
                "headless",
            ),
            (
                spec("ext", json!({})),
                &services[..],
                "NoClusterIP",
                "ExternalName",
            ),
            (
                spec("syslog", json!({})),
                &services[..],
                "NoPorts",
                "no TCP port",
            ),
            (
                spec("syslog", json!({"ports": [515]})),
                &services[..],
                "PortNotFound",
                "515",
            ),
            (
                spec("syslog", json!({"ports": ["x"]})),
                &services[..],
                "PortNotFound",
                "\"x\"",
            ),
            (
                spec("syslog", json!({"ports": []})),
                &services[..],
                "Invalid",
                "empty",
            ),
            (
                spec("sig", json!({"ports": ["s"]})),
                &services[..],
                "Invalid",
                "SCTP",
            ),
        ] {
            let limit = rate_limit("l", "2026-11-21T00:00:00Z", spec.clone());
            let out = declared(&[limit], services, &[]);
            assert!(out.resources.is_empty(), "{spec}: {:?}", out.resources);
            let [problem] = out.problems.as_slice() else {
                panic!("{spec}: {:?}", out.problems);
            };
            assert_eq!(problem.object.kind, "RateLimit");
            assert_eq!(problem.reason, reason, "{spec}: {}", problem.message);
            assert!(
                problem.message.contains(needle),
                "{spec}: {}",
                problem.message
            );
        }
    }

    #[test]
    fn an_invalid_limit_is_refused_with_reins_own_words() {
        for (spec, needle) in [
            (json!({"service": {"name": "api"}}), "give rate"),
            (json!({"service": {"name": "api"}, "rate": "fast"}), "fast"),
            (json!({"service": {"name": "api"}, "rate": "0/s"}), "0/s"),
            (
                json!({"service": {"name": "api"}, "rate": "5/s",
                       "rules": [{"maxTokens": 1, "tokensPerFill": 1, "fillInterval": "1s"}]}),
                "not both",
            ),
            (
                json!({"service": {"name": "api"},
                       "rules": [{"maxTokens": 1, "tokensPerFill": 1, "fillInterval": "0s"}]}),
                "0s",
            ),
            (
                json!({"service": {"name": "api"}, "rate": "5/s", "burst": 2000000}),
                "burst of 2000000",
            ),
            (
                json!({"service": {"name": "api"}, "rate": "5/s",
                       "podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}),
                "podSelector",
            ),
        ] {
            let limit = rate_limit("l", "2026-11-21T00:00:00Z", spec.clone());
            let out = declared(&[limit], &[dual_stack()], &[]);
            assert!(out.resources.is_empty(), "{spec}");
            let [problem] = out.problems.as_slice() else {
                panic!("{spec}: {:?}", out.problems);
            };
            assert_eq!(problem.reason, "Invalid");
            assert!(
                problem.message.contains(needle),
                "{spec}: {}",
                problem.message
            );
            assert!(
                !problem.message.starts_with("RateLimit:"),
                "{}",
                problem.message
            );
        }
    }

    #[test]
    fn the_oldest_rate_limit_holds_a_destination() {
        let old = rate_limit(
            "old",
            "2026-11-21T00:00:00Z",
            json!({"service": {"name": "api"}, "ports": [80], "rate": "5/s"}),
        );
        let young = rate_limit(
            "young",
            "2026-11-22T00:00:00Z",
            json!({"service": {"name": "api"}, "rate": "50/s"}),
        );
        // Whatever order the store lists them in.
        let out = declared(&[young, old], &[dual_stack()], &[]);
        assert!(
            rules(&out)
                .iter()
                .all(|(name, ..)| name.starts_with("ratelimit.shop.old.")),
            "{:?}",
            rules(&out)
        );
        assert_eq!(rules(&out).len(), 2);
        let [problem] = out.problems.as_slice() else {
            panic!("{:?}", out.problems);
        };
        assert_eq!(
            (problem.object.name.as_str(), problem.reason),
            ("young", "Conflict")
        );
        assert!(problem.message.contains("shop/old"), "{}", problem.message);
    }

    #[test]
    fn a_pod_selector_gives_each_selected_pod_its_bucket() {
        let netns = PodPlace::Netns(PathBuf::from("/run/netns/cni-1234"));
        let host = PodPlace::Cgroup("/kubepods.slice/kubepods-podabc.slice".into());
        let pods = [
            pod("web-0", &[("app", "web")], Some(netns.clone())),
            pod("web-1", &[("app", "web")], Some(host.clone())),
            pod("web-2", &[("app", "web")], None),
            pod("db-0", &[("app", "db")], Some(netns.clone())),
        ];
        let mut other_namespace = pod("web-9", &[("app", "web")], Some(netns.clone()));
        other_namespace.namespace = "other".into();
        let limit = rate_limit(
            "web",
            "2026-11-21T00:00:00Z",
            json!({"service": {"name": "api"}, "ports": ["http"], "rate": "10/s",
                   "podSelector": {"matchLabels": {"app": "web"}}}),
        );
        let all_pods = [&pods[..], &[other_namespace]].concat();
        let out = declared(&[limit], &[dual_stack()], &all_pods);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let found: Vec<(String, ScopeRequest)> = rules(&out)
            .into_iter()
            .map(|(name, _, _, scope)| (name, scope))
            .collect();
        let netns_scope = ScopeRequest::Netns(PathBuf::from("/run/netns/cni-1234"));
        let cgroup_scope =
            ScopeRequest::Cgroup(PathBuf::from("/kubepods.slice/kubepods-podabc.slice"));
        assert_eq!(
            found,
            [
                (
                    "ratelimit.shop.web.pod.web-0.10.96.14.7.tcp-80",
                    netns_scope.clone()
                ),
                (
                    "ratelimit.shop.web.pod.web-0.fd00-10-96--e07.tcp-80",
                    netns_scope
                ),
                (
                    "ratelimit.shop.web.pod.web-1.10.96.14.7.tcp-80",
                    cgroup_scope.clone()
                ),
                (
                    "ratelimit.shop.web.pod.web-1.fd00-10-96--e07.tcp-80",
                    cgroup_scope
                ),
            ]
            .map(|(name, scope)| (name.to_owned(), scope))
        );
    }

    #[test]
    fn two_rate_limits_selecting_a_pod_tell_the_pod() {
        let pods = [pod(
            "web-0",
            &[("app", "web"), ("tier", "front")],
            Some(PodPlace::Netns(PathBuf::from("/run/netns/cni-1"))),
        )];
        let first = rate_limit(
            "by-app",
            "2026-11-21T00:00:00Z",
            json!({"service": {"name": "api"}, "ports": [80], "rate": "10/s",
                   "podSelector": {"matchLabels": {"app": "web"}}}),
        );
        let second = rate_limit(
            "by-tier",
            "2026-11-22T00:00:00Z",
            json!({"service": {"name": "api"}, "ports": [80], "rate": "1/s",
                   "podSelector": {"matchExpressions":
                       [{"key": "tier", "operator": "In", "values": ["front"]}]}}),
        );
        let out = declared(&[second, first], &[dual_stack()], &pods);
        assert!(
            rules(&out)
                .iter()
                .all(|(name, ..)| name.starts_with("ratelimit.shop.by-app.")),
            "{:?}",
            rules(&out)
        );
        let [problem] = out.problems.as_slice() else {
            panic!("{:?}", out.problems);
        };
        assert_eq!(
            (
                problem.object.kind,
                problem.object.name.as_str(),
                problem.reason
            ),
            ("Pod", "web-0", "RateLimitConflict")
        );
        assert!(
            problem.message.contains("shop/by-app, the oldest"),
            "{}",
            problem.message
        );
    }
}
