//! The resources of a declarative file, Kubernetes-style: `apiVersion`, `kind`, `metadata.name`
//! and a `spec` per capability. These types are the schema: the JSON Schema is generated from
//! them ([`json_schema`]), and a value of them is valid (units, addresses and combinations are
//! checked while the file is read, so an error points at its line and column).
use std::{fmt, num::NonZeroU16, path::PathBuf};

use ipnet::IpNet;
use rein_common::{Direction, MAX_SUBNETS};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    capabilities::{
        conn_limits::{
            request::{NewConnRule, ScopeRequest},
            spec::{ConnError, ConnLimit, ConnRuleSpec, ConnScopeSpec, Destination},
        },
        net_rules::{
            request::{Algorithm, MAX_PPS, NetRuleRequest, OptionNames},
            spec::{Cidr, NetRuleSpec, Protocol, SketchSize},
        },
        netns_limit::Subnets,
    },
    units::{EventRate, Period, Rate, Size},
};

pub const API_VERSION: &str = "rein.dev/v1alpha1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "rein.dev/v1alpha1")]
    V1Alpha1,
}

/// One kind per capability.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Kind {
    CgroupLimit,
    NetRule,
    RateLimit,
    SharedLimit,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::CgroupLimit,
        Kind::NetRule,
        Kind::RateLimit,
        Kind::SharedLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::CgroupLimit => "CgroupLimit",
            Kind::NetRule => "NetRule",
            Kind::RateLimit => "RateLimit",
            Kind::SharedLimit => "SharedLimit",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A resource's name: unique per kind, a DNS label-like word (lower-case letters, digits, `-`
/// and `.`, starting and ending with a letter or digit, at most 253 characters), as in
/// Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(String);

impl ResourceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let edge_ok =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid = name.len() <= 253
            && edge_ok(name.chars().next())
            && edge_ok(name.chars().last())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if valid {
            Ok(Self(name))
        } else {
            Err(format!(
                "{name:?} is not a resource name: use lower-case letters, digits, `-` and `.`, \
                 starting and ending with a letter or digit"
            ))
        }
    }
}

impl From<ResourceName> for String {
    fn from(name: ResourceName) -> String {
        name.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for ResourceName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ResourceName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 253,
            "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: ResourceName,
}

/// A resource as a file declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind")]
// A few resources per file or listing: boxing the larger NetRule (its connection rate
// made it cross the lint's threshold) would save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    /// Limits of a cgroup, of every cgroup a glob matches, or of a network namespace.
    CgroupLimit(Manifest<CgroupLimitSpec>),
    /// A `rein net` rule: a limit on an interface by address, service and source.
    NetRule(Manifest<NetRuleResourceSpec>),
    /// A limit on new connections: those local processes open (`rein conn add --dst`), or
    /// those a device receives (`rein conn add --dev`).
    RateLimit(Manifest<RateLimitSpec>),
    /// One limit for several cgroups and network namespaces together: their traffic shares
    /// one bucket per direction.
    SharedLimit(Manifest<SharedLimitSpec>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::CgroupLimit(_) => Kind::CgroupLimit,
            Resource::NetRule(_) => Kind::NetRule,
            Resource::RateLimit(_) => Kind::RateLimit,
            Resource::SharedLimit(_) => Kind::SharedLimit,
        }
    }

    pub fn name(&self) -> &ResourceName {
        match self {
            Resource::CgroupLimit(m) => &m.metadata.name,
            Resource::NetRule(m) => &m.metadata.name,
            Resource::RateLimit(m) => &m.metadata.name,
            Resource::SharedLimit(m) => &m.metadata.name,
        }
    }
}

/// Everything of a resource but its kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest<S> {
    pub api_version: ApiVersion,
    pub metadata: Metadata,
    pub spec: S,
}

/// A document as read: its kind too, so that a misspelt field next to it is refused, and the
/// `status` that `rein get -o yaml` shows, which says what is and is ignored, as kubectl does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Document<S> {
    pub api_version: ApiVersion,
    #[serde(rename = "kind")]
    _kind: Kind,
    pub metadata: Metadata,
    pub spec: S,
    #[serde(default, rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

impl<S> From<Document<S>> for Manifest<S> {
    fn from(document: Document<S>) -> Self {
        Manifest {
            api_version: document.api_version,
            metadata: document.metadata,
            spec: document.spec,
        }
    }
}

/// What a first reading of a document takes: which kind to read the rest as.
#[derive(Deserialize)]
pub(super) struct Header {
    pub kind: Kind,
}

/// A cgroup path from the cgroup v2 root (`/system.slice/nginx.service`), or a glob of them
/// (`/system.slice/*.service`: `*`, `?` and `[...]` within a component).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupPattern(String);

impl CgroupPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it names cgroups by a glob rather than one by its path.
    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?', '['])
    }
}

impl TryFrom<String> for CgroupPattern {
    type Error = String;
    fn try_from(path: String) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!(
                "{path:?} is not a cgroup path: write it from the cgroup v2 root, e.g. \
                 /system.slice/nginx.service"
            ));
        }
        if path.split('/').any(|component| component == "..") {
            return Err(format!("{path:?} must not contain `..`"));
        }
        if path.split('/').all(str::is_empty) {
            return Err(
                "refusing to limit the cgroup v2 root: that would limit the whole machine".into(),
            );
        }
        glob::Pattern::new(&path).map_err(|error| format!("{path:?} is not a glob: {error}"))?;
        Ok(Self(path))
    }
}

impl From<CgroupPattern> for String {
    fn from(pattern: CgroupPattern) -> String {
        pattern.0
    }
}

impl JsonSchema for CgroupPattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CgroupPattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^/",
            "description": "A cgroup path from the cgroup v2 root, or a glob of them (*, ? and [...] within a component)",
        })
    }
}

/// A network namespace as a file names it: an absolute path that should live as long as the
/// namespace (`/run/netns/NAME`); whether it is one is seen when the file is applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetnsPath(String);

impl NetnsPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NetnsPath {
    type Error = String;
    fn try_from(path: String) -> Result<Self, String> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(format!(
                "{path:?} is not a network namespace path: give an absolute path, e.g. \
                 /run/netns/NAME"
            ));
        }
        Ok(Self(path))
    }
}

impl From<NetnsPath> for String {
    fn from(path: NetnsPath) -> String {
        path.0
    }
}

impl JsonSchema for NetnsPath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NetnsPath".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^/",
            "description": "A network namespace's path, e.g. /run/netns/NAME",
        })
    }
}

/// What a `CgroupLimit` limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// A cgroup, or every cgroup a glob matches.
    Cgroup(CgroupPattern),
    /// Every socket of a network namespace, whatever its cgroup; with peers in some subnets
    /// left unlimited, or alone limited.
    Netns {
        path: NetnsPath,
        subnets: Option<Subnets>,
    },
}

/// `CgroupLimit`'s spec: a cgroup (or a glob of them) or a network namespace, and the limit of
/// each direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "CgroupLimitFields", into = "CgroupLimitFields")]
#[schemars(with = "CgroupLimitFields")]
pub struct CgroupLimitSpec {
    pub scope: LimitScope,
    pub egress: Option<DirectionLimit>,
    pub ingress: Option<DirectionLimit>,
}

/// `CgroupLimitSpec` as a file writes it.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CgroupLimitFields {
    /// A cgroup path from the cgroup v2 root, or a glob of them (give cgroup or netns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<CgroupPattern>,
    /// A network namespace (/run/netns/NAME): every socket in it shares the limit, whatever
    /// its cgroup (give cgroup or netns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsPath>,
    /// With netns: traffic with peers in these subnets (CIDRs) is not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<String>>")]
    unshaped_subnets: Option<Vec<IpNet>>,
    /// With netns: only traffic with peers in these subnets (CIDRs) is limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<String>>")]
    shaped_subnets: Option<Vec<IpNet>>,
    /// Limit of the traffic the cgroup's (or namespace's) processes send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<DirectionLimit>,
    /// Limit of the traffic the cgroup's (or namespace's) processes receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ingress: Option<DirectionLimit>,
}

impl TryFrom<CgroupLimitFields> for CgroupLimitSpec {
    type Error = String;
    fn try_from(fields: CgroupLimitFields) -> Result<Self, Self::Error> {
        if fields.egress.is_none() && fields.ingress.is_none() {
            return Err("a CgroupLimit limits egress, ingress or both: give at least one".into());
        }
        let subnets = match (fields.unshaped_subnets, fields.shaped_subnets) {
            (Some(_), Some(_)) => {
                return Err("give unshapedSubnets or shapedSubnets, not both".into());
            }
            (Some(nets), None) if nets.is_empty() => {
                return Err("unshapedSubnets is empty: leave it out to limit every peer".into());
            }
            (None, Some(nets)) if nets.is_empty() => {
                return Err("shapedSubnets is empty: it would limit nothing".into());
            }
            (Some(nets), None) => Some(Subnets::Unshaped(nets)),
            (None, Some(nets)) => Some(Subnets::Shaped(nets)),
            (None, None) => None,
        };
        if let Some(subnets) = &subnets
            && subnets.nets().len() > MAX_SUBNETS as usize
        {
            return Err(format!(
                "{} subnets: at most {MAX_SUBNETS} over all namespace limits",
                subnets.nets().len()
            ));
        }
        let scope = match (fields.cgroup, fields.netns) {
            (Some(_), Some(_)) => return Err("give cgroup or netns, not both".into()),
            (None, None) => {
                return Err(
                    "give cgroup (a cgroup path or glob) or netns (a network namespace path)"
                        .into(),
                );
            }
            (Some(_), None) if subnets.is_some() => {
                return Err(
                    "unshapedSubnets and shapedSubnets belong to a netns limit, not a cgroup's"
                        .into(),
                );
            }
            (Some(cgroup), None) => LimitScope::Cgroup(cgroup),
            (None, Some(path)) => LimitScope::Netns { path, subnets },
        };
        Ok(Self {
            scope,
            egress: fields.egress,
            ingress: fields.ingress,
        })
    }
}

impl From<CgroupLimitSpec> for CgroupLimitFields {
    fn from(spec: CgroupLimitSpec) -> Self {
        let (cgroup, netns, subnets) = match spec.scope {
            LimitScope::Cgroup(cgroup) => (Some(cgroup), None, None),
            LimitScope::Netns { path, subnets } => (None, Some(path), subnets),
        };
        let (unshaped_subnets, shaped_subnets) = match subnets {
            Some(Subnets::Unshaped(nets)) => (Some(nets), None),
            Some(Subnets::Shaped(nets)) => (None, Some(nets)),
            None => (None, None),
        };
        Self {
            cgroup,
            netns,
            unshaped_subnets,
            shaped_subnets,
            egress: spec.egress,
            ingress: spec.ingress,
        }
    }
}

/// `SharedLimit`'s spec: the members (cgroups by path or glob, network namespaces by path)
/// and the limit of each direction, which their traffic together holds to. Built in Rust too
/// (the Kubernetes agent): [`SharedLimitSpec::new`] checks what a file's reading checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "SharedLimitFields", into = "SharedLimitFields")]
#[schemars(with = "SharedLimitFields")]
pub struct SharedLimitSpec {
    cgroups: Vec<CgroupPattern>,
    netns: Vec<NetnsPath>,
    egress: Option<DirectionLimit>,
    ingress: Option<DirectionLimit>,
}

impl SharedLimitSpec {
    /// A spec limiting at least one direction.
    pub fn new(
        cgroups: Vec<CgroupPattern>,
        netns: Vec<NetnsPath>,
        egress: Option<DirectionLimit>,
        ingress: Option<DirectionLimit>,
    ) -> Result<Self, String> {
        if egress.is_none() && ingress.is_none() {
            return Err("a SharedLimit limits egress, ingress or both: give at least one".into());
        }
        Ok(Self {
            cgroups,
            netns,
            egress,
            ingress,
        })
    }

    pub fn cgroups(&self) -> &[CgroupPattern] {
        &self.cgroups
    }

    pub fn netns(&self) -> &[NetnsPath] {
        &self.netns
    }

    pub fn egress(&self) -> Option<DirectionLimit> {
        self.egress
    }

    pub fn ingress(&self) -> Option<DirectionLimit> {
        self.ingress
    }
}

/// `SharedLimitSpec` as a file writes it.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SharedLimitFields {
    /// Member cgroups: paths from the cgroup v2 root, or globs of them (a cgroup not there yet
    /// joins when it appears, under the agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cgroups: Vec<CgroupPattern>,
    /// Member network namespaces (/run/netns/NAME): every socket in each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    netns: Vec<NetnsPath>,
    /// Limit of the traffic all members send together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<DirectionLimit>,
    /// Limit of the traffic all members receive together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ingress: Option<DirectionLimit>,
}

impl TryFrom<SharedLimitFields> for SharedLimitSpec {
    type Error = String;
    fn try_from(fields: SharedLimitFields) -> Result<Self, Self::Error> {
        Self::new(fields.cgroups, fields.netns, fields.egress, fields.ingress)
    }
}

impl From<SharedLimitSpec> for SharedLimitFields {
    fn from(spec: SharedLimitSpec) -> Self {
        Self {
            cgroups: spec.cgroups,
            netns: spec.netns,
            egress: spec.egress,
            ingress: spec.ingress,
        }
    }
}

/// A direction's limit, in tc(8) units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectionLimit {
    /// A rate in tc(8) units: 10mbit, 1gbit, 500kbps (a bare number is bit/s).
    #[serde(with = "tc")]
    #[schemars(with = "TcValue")]
    pub rate: Rate,
    /// Burst above the rate, in tc(8) sizes: 64k, 1m (default: the larger of 64k and 10 ms at
    /// the rate).
    #[serde(default, with = "tc::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<TcValue>")]
    pub burst: Option<Size>,
}

/// A value in tc(8) notation: a string with a unit, or a bare number.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(dead_code)]
enum TcValue {
    Text(String),
    Number(u64),
}

/// Which way a `NetRule` looks at packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetDirection {
    Ingress,
    Egress,
}

/// `NetRule`'s spec: what `rein net add` takes, a field per flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "NetRuleFields", into = "NetRuleFields")]
#[schemars(with = "NetRuleFields")]
pub struct NetRuleResourceSpec {
    fields: NetRuleFields,
    rule: NetRuleSpec,
}

impl NetRuleResourceSpec {
    /// The rule as `rein net add` would add it.
    pub fn rule(&self) -> &NetRuleSpec {
        &self.rule
    }

    /// The resource spec of a rule, in the fields a file would give (for `rein get`).
    pub fn of_rule(rule: &NetRuleSpec) -> Self {
        let request = NetRuleRequest::of_rule(rule);
        Self {
            fields: NetRuleFields {
                device: request.device,
                direction: match request.direction {
                    Direction::Ingress => NetDirection::Ingress,
                    Direction::Egress => NetDirection::Egress,
                },
                xdp: request.xdp,
                source: request.source,
                destination: request.destination,
                protocol: request.protocol,
                port: request.port.and_then(NonZeroU16::new),
                rate: request.rate,
                pps: request.pps,
                connections: request.connections,
                burst: request.burst.map(BurstValue),
                algorithm: (request.algorithm != Algorithm::TokenBucket)
                    .then_some(request.algorithm),
                window: request.window,
                per_source: request.per_source,
                sketch: request.sketch,
            },
            rule: rule.clone(),
        }
    }
}

/// A `NetRule`'s fields as a file gives them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetRuleFields {
    /// The network device, in rein's network namespace.
    device: String,
    direction: NetDirection,
    /// Run on XDP instead of tc (ingress only).
    #[serde(default, skip_serializing_if = "is_false")]
    xdp: bool,
    /// Source address or prefix (10.0.0.0/8, 2001:db8::/32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    source: Option<Cidr>,
    /// Destination address or prefix; with a source, both must be single addresses (a pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    destination: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    /// Destination port (a service: with a destination, ip:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<NonZeroU16>,
    /// A rate in tc(8) units (10mbit; a bare number is bit/s), counted in IP bytes.
    #[serde(default, with = "tc::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<TcValue>")]
    rate: Option<Rate>,
    /// Packets per second (instead of a rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PPS))]
    pps: Option<u64>,
    /// New TCP connections (SYNs received) at a rate, instead of a rate of traffic: 50/s,
    /// 30/min (ingress, protocol tcp implied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    connections: Option<EventRate>,
    /// Token bucket burst: a size with `rate` (default max(64k, 10 ms)), packets with `pps`
    /// (default max(16, 10 ms)), connections with `connections` (default max(5, 1 s)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<BurstValue>,
    /// token-bucket (default), fixed-window or sliding-window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    algorithm: Option<Algorithm>,
    /// Window length of the window algorithms (default 1s): 100ms, 1s, 1m.
    #[serde(default, with = "tc::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    window: Option<Period>,
    /// One bucket (or window) per source address: "each client gets the rate".
    #[serde(default, skip_serializing_if = "is_false")]
    per_source: bool,
    /// With perSource: estimate sources in a count-min sketch of WIDTHxDEPTH cells (4096x4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    sketch: Option<SketchSize>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A burst as written: a size with a rate, a count of packets with pps; which one is only
/// known once the whole rule is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
struct BurstValue(#[schemars(with = "TcValue")] String);

impl<'de> Deserialize<'de> for BurstValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        tc::text(deserializer).map(BurstValue)
    }
}

impl TryFrom<NetRuleFields> for NetRuleResourceSpec {
    type Error = String;
    fn try_from(fields: NetRuleFields) -> Result<Self, String> {
        let request = NetRuleRequest {
            device: fields.device.clone(),
            direction: match fields.direction {
                NetDirection::Ingress => Direction::Ingress,
                NetDirection::Egress => Direction::Egress,
            },
            xdp: fields.xdp,
            source: fields.source,
            destination: fields.destination,
            protocol: fields.protocol,
            port: fields.port.map(NonZeroU16::get),
            rate: fields.rate,
            pps: fields.pps,
            connections: fields.connections,
            burst: fields.burst.as_ref().map(|BurstValue(burst)| burst.clone()),
            algorithm: fields.algorithm.unwrap_or_default(),
            window: fields.window,
            per_source: fields.per_source,
            sketch: fields.sketch,
        };
        let rule = request
            .resolve(&OptionNames::FIELDS)
            .map_err(|error| format!("NetRule: {error}"))?;
        Ok(Self { fields, rule })
    }
}

impl From<NetRuleResourceSpec> for NetRuleFields {
    fn from(spec: NetRuleResourceSpec) -> Self {
        spec.fields
    }
}

/// `RateLimit`'s spec: a connection limit, outbound or (with `device`) inbound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RateLimitFields", into = "RateLimitFields")]
#[schemars(with = "RateLimitFields")]
pub struct RateLimitSpec {
    fields: RateLimitFields,
    rule: RateLimitRule,
}

/// What a `RateLimit` limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitRule {
    /// The connects of local processes, as `rein conn add --dst` (scope still a path).
    Outbound(NewConnRule),
    /// The connections a device receives (TCP SYNs), as `rein conn add --dev`.
    Inbound(NetRuleSpec),
}

impl RateLimitSpec {
    pub fn rule(&self) -> &RateLimitRule {
        &self.rule
    }

    /// The resource spec of an outbound rule, in the shape it is best written in: `rate` with
    /// a `destination`, `rules` with a `service` (for `rein get`).
    pub fn of_outbound(rule: &ConnRuleSpec) -> Self {
        let (cgroup, netns) = match &rule.scope {
            ConnScopeSpec::All => (None, None),
            ConnScopeSpec::Cgroup { path, .. } => (Some(PathBuf::from(path)), None),
            ConnScopeSpec::Netns { path, .. } => (None, Some(path.clone())),
        };
        let mut fields = RateLimitFields {
            protocol: rule.protocol,
            cgroup: cgroup.clone(),
            netns: netns.clone(),
            per_caller: rule.per_caller,
            ..RateLimitFields::default()
        };
        match rule.limit {
            ConnLimit::Rate { rate, burst } => {
                fields.destination = Some(rule.destination.to_string());
                fields.rate = Some(rate);
                fields.burst = Some(burst);
            }
            ConnLimit::Fill {
                max_tokens,
                tokens_per_fill,
                fill_ns,
            } => {
                fields.service = Some(rule.destination);
                // Made from a Period, so one again.
                fields.rules = Period::try_from(fill_ns).ok().map(|fill_interval| {
                    vec![FillRule {
                        max_tokens: u64::from(max_tokens),
                        tokens_per_fill: u64::from(tokens_per_fill),
                        fill_interval,
                    }]
                });
            }
        }
        let scope = match (cgroup, netns) {
            (Some(path), _) => ScopeRequest::Cgroup(path),
            (None, Some(path)) => ScopeRequest::Netns(path),
            (None, None) => ScopeRequest::All,
        };
        Self {
            fields,
            rule: RateLimitRule::Outbound(NewConnRule {
                destination: rule.destination,
                protocol: rule.protocol,
                scope,
                limit: rule.limit,
                per_caller: rule.per_caller,
            }),
        }
    }

    /// The resource spec of an inbound rule (a net rule limiting connections).
    pub fn of_inbound(rule: &NetRuleSpec) -> Self {
        let request = NetRuleRequest::of_rule(rule);
        let fields = RateLimitFields {
            device: Some(request.device),
            port: request.port.and_then(NonZeroU16::new),
            destination: request.destination.map(|cidr| cidr.to_string()),
            rate: request.connections,
            burst: request.burst.and_then(|burst| burst.parse().ok()),
            per_source: request.per_source,
            sketch: request.sketch,
            xdp: request.xdp,
            ..RateLimitFields::default()
        };
        Self {
            fields,
            rule: RateLimitRule::Inbound(rule.clone()),
        }
    }
}

/// A `RateLimit`'s fields as a file gives them. Outbound: `destination` (or `service`) with
/// `rate` and `burst`, or with `rules` (Envoy's and KMesh's token bucket); inbound: `device`
/// and `port` with `rate` and `burst`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RateLimitFields {
    /// Outbound: where the connections go, IP[/PREFIX][:PORT] or [IPV6]:PORT. Inbound: the
    /// local address they go to (IP or prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    /// Outbound, as Envoy and KMesh name it: the destination, IP[:PORT].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    service: Option<Destination>,
    /// Outbound: tcp or udp (default both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    /// New connections at a rate: 100/s, 30/min, 1/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    rate: Option<EventRate>,
    /// Connections at once above the rate (default one second at the rate, at least 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
    /// Outbound, instead of rate: one token bucket, Envoy's local rate limit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<FillRule>>,
    /// Outbound: count the connects of this cgroup's processes only (a path from the cgroup
    /// v2 root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    cgroup: Option<PathBuf>,
    /// Outbound: count the connects of this network namespace's processes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    netns: Option<PathBuf>,
    /// Outbound: a bucket per caller network namespace.
    #[serde(default, skip_serializing_if = "is_false")]
    per_caller: bool,
    /// Inbound: the device that receives the connections, in rein's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// Inbound: the local TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<NonZeroU16>,
    /// Inbound: a bucket per source address.
    #[serde(default, skip_serializing_if = "is_false")]
    per_source: bool,
    /// Inbound, with perSource: estimate sources in a count-min sketch of WIDTHxDEPTH cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    sketch: Option<SketchSize>,
    /// Inbound: count on XDP instead of tc.
    #[serde(default, skip_serializing_if = "is_false")]
    xdp: bool,
}

/// One entry of `rules`: a bucket of `maxTokens` that gains `tokensPerFill` each
/// `fillInterval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FillRule {
    max_tokens: u64,
    tokens_per_fill: u64,
    /// 100ms, 1s, 60s, 1m.
    #[serde(with = "tc")]
    #[schemars(with = "String")]
    fill_interval: Period,
}

impl TryFrom<RateLimitFields> for RateLimitSpec {
    type Error = String;
    fn try_from(fields: RateLimitFields) -> Result<Self, String> {
        let rule = match &fields.device {
            Some(device) => RateLimitRule::Inbound(inbound(&fields, device)?),
            None => RateLimitRule::Outbound(outbound(&fields)?),
        };
        Ok(Self { fields, rule })
    }
}

fn inbound(fields: &RateLimitFields, device: &str) -> Result<NetRuleSpec, String> {
    let fail = |message: &str| Err(format!("RateLimit: {message}"));
    if fields.service.is_some()
        || fields.rules.is_some()
        || fields.cgroup.is_some()
        || fields.netns.is_some()
        || fields.per_caller
    {
        return fail(
            "service, rules, cgroup, netns and perCaller belong to outbound limits (without              device)",
        );
    }
    if fields.protocol.is_some_and(|p| p != Protocol::Tcp) {
        return fail("an inbound limit counts TCP connections: protocol tcp or none");
    }
    let Some(port) = fields.port else {
        return fail("an inbound limit (device) needs port: the local TCP port it guards");
    };
    let Some(rate) = fields.rate else {
        return fail("give rate: N/s (with burst)");
    };
    let destination = fields
        .destination
        .as_deref()
        .map(str::parse::<Cidr>)
        .transpose()
        .map_err(|error| format!("RateLimit: destination: {error}"))?;
    let request = NetRuleRequest {
        device: device.to_owned(),
        direction: Direction::Ingress,
        xdp: fields.xdp,
        source: None,
        destination,
        protocol: Some(Protocol::Tcp),
        port: Some(port.get()),
        rate: None,
        pps: None,
        connections: Some(rate),
        burst: fields.burst.map(|burst| burst.to_string()),
        algorithm: Algorithm::TokenBucket,
        window: None,
        per_source: fields.per_source,
        sketch: fields.sketch,
    };
    let names = OptionNames {
        connections: "rate",
        ..OptionNames::FIELDS
    };
    request
        .resolve(&names)
        .map_err(|error| format!("RateLimit: {error}"))
}

fn outbound(fields: &RateLimitFields) -> Result<NewConnRule, String> {
    let fail = |message: &str| Err(format!("RateLimit: {message}"));
    let checked = |result: Result<ConnLimit, ConnError>| {
        result.map_err(|error| format!("RateLimit: {error}"))
    };
    if fields.port.is_some() || fields.per_source || fields.sketch.is_some() || fields.xdp {
        return fail("port, perSource, sketch and xdp belong to inbound limits (with device)");
    }
    let destination = match (&fields.destination, fields.service) {
        (Some(_), Some(_)) => return fail("give destination or service, not both"),
        (None, None) => {
            return fail(
                "give destination (IP[/PREFIX][:PORT]) or service for outbound connections, or                  device and port for inbound ones",
            );
        }
        (Some(text), None) => text
            .parse::<Destination>()
            .map_err(|error| format!("RateLimit: destination: {error}"))?,
        (None, Some(service)) => service,
    };
    let limit = match (fields.rate, &fields.rules) {
        (Some(_), Some(_)) => return fail("give rate (with burst) or rules, not both"),
        (None, None) => {
            return fail(
                "give rate: N/s (with burst) or rules: [{maxTokens, tokensPerFill,                  fillInterval}]",
            );
        }
        (Some(rate), None) => checked(ConnLimit::rate(rate, fields.burst))?,
        (None, Some(rules)) => {
            if fields.burst.is_some() {
                return fail("burst belongs to rate; the bucket of rules is its maxTokens");
            }
            // Several buckets a connection must all conform to would need several kernel
            // rules on one key, which the trie cannot hold.
            match rules.as_slice() {
                [rule] => checked(ConnLimit::fill(
                    rule.max_tokens,
                    rule.tokens_per_fill,
                    rule.fill_interval,
                ))?,
                [] => return fail("rules needs one entry"),
                [..] => {
                    return fail(
                        "rules takes one entry: rein keeps one bucket per destination (declare                          another destination or scope for another bucket)",
                    );
                }
            }
        }
    };
    let scope = match (&fields.cgroup, &fields.netns) {
        (Some(_), Some(_)) => return fail("give cgroup or netns, not both"),
        (Some(cgroup), None) => ScopeRequest::Cgroup(cgroup.clone()),
        (None, Some(netns)) => ScopeRequest::Netns(netns.clone()),
        (None, None) => ScopeRequest::All,
    };
    Ok(NewConnRule {
        destination,
        protocol: fields.protocol,
        scope,
        limit,
        per_caller: fields.per_caller,
    })
}

impl From<RateLimitSpec> for RateLimitFields {
    fn from(spec: RateLimitSpec) -> Self {
        spec.fields
    }
}

/// tc(8) notation in files: a value is written as a string with a unit, or a bare number.
mod tc {
    use std::{fmt, str::FromStr};

    use serde::{Deserializer, Serializer, de};

    pub fn serialize<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: fmt::Display>,
        D: Deserializer<'de>,
    {
        text(deserializer)?.parse().map_err(de::Error::custom)
    }

    /// A scalar, string or number, as its text.
    pub fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value in tc(8) notation, e.g. 10mbit or 64k")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
                Ok(value.to_owned())
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
                Ok(value.to_string())
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
                Ok(value.to_string())
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
                Ok(value.to_string())
            }
        }
        deserializer.deserialize_any(Text)
    }

    pub mod option {
        use std::{fmt, str::FromStr};

        use serde::{Deserialize, Deserializer, Serializer, de};

        pub fn serialize<T: fmt::Display, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => s.collect_str(value),
                None => s.serialize_none(),
            }
        }

        /// A null is no value, as for any optional field.
        pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
        where
            T: FromStr<Err: fmt::Display>,
            D: Deserializer<'de>,
        {
            struct Text(String);
            impl<'de> Deserialize<'de> for Text {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    super::text(deserializer).map(Text)
                }
            }
            Option::<Text>::deserialize(deserializer)?
                .map(|Text(text)| text.parse().map_err(de::Error::custom))
                .transpose()
        }
    }
}

/// The JSON Schema of a file's documents: one of the kinds.
pub fn json_schema() -> schemars::Schema {
    let mut schema = schemars::schema_for!(Resource);
    schema.insert(
        "$id".into(),
        format!("https://{API_VERSION}/resources.schema.json").into(),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::net_rules::spec::{NetHook, NetLimit, Per};

    /// The committed schema is what editors and the agent's custom resources use: it must be
    /// what these types generate.
    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let committed = include_str!("../../../schema/v1alpha1.json");
        let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
        assert!(
            committed == generated,
            "schema/v1alpha1.json is stale: run `cargo run -p rein -- schema > \
             schema/v1alpha1.json`"
        );
    }

    #[test]
    fn a_cgroup_limit_names_a_cgroup_or_a_network_namespace() {
        let read = |text: &str| serde_norway::from_str::<CgroupLimitSpec>(text);
        let spec = read(
            "netns: /run/netns/pod\negress: {rate: 20mbit}\nunshapedSubnets: [198.18.0.2/32, \
             2001:2::/48]\n",
        )
        .unwrap();
        let LimitScope::Netns { path, subnets } = &spec.scope else {
            panic!("{spec:?}");
        };
        assert_eq!(path.as_str(), "/run/netns/pod");
        assert_eq!(
            subnets,
            &Some(Subnets::Unshaped(vec![
                "198.18.0.2/32".parse().unwrap(),
                "2001:2::/48".parse().unwrap()
            ]))
        );
        // `rein get` shows it in the fields that declare it again.
        let shown = serde_norway::to_string(&spec).unwrap();
        assert!(shown.contains("unshapedSubnets:"), "{shown}");
        assert_eq!(read(&shown).unwrap(), spec, "{shown}");
        let cgroup = read("cgroup: /app\ningress: {rate: 1mbit}\n").unwrap();
        assert_eq!(
            cgroup.scope,
            LimitScope::Cgroup("/app".to_owned().try_into().unwrap())
        );

        let limited = |text: &str| format!("{text}egress: {{rate: 1mbit}}\n");
        for (text, needle) in [
            (limited("cgroup: /a\nnetns: /run/netns/a\n"), "not both"),
            (limited(""), "give cgroup"),
            (limited("netns: run/netns/a\n"), "absolute path"),
            (
                limited("netns: /a\nunshapedSubnets: [10.0.0.0/8]\nshapedSubnets: [10.0.0.0/8]\n"),
                "not both",
            ),
            (limited("netns: /a\nshapedSubnets: []\n"), "limit nothing"),
            (
                limited("netns: /a\nshapedSubnets: [10.0.0.0/33]\n"),
                "invalid IP",
            ),
            (
                limited("cgroup: /a\nunshapedSubnets: [10.0.0.0/8]\n"),
                "belong to a netns",
            ),
            ("netns: /run/netns/a\n".into(), "at least one"),
        ] {
            let error = read(&text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn a_net_rule_may_limit_new_connections() {
        let spec: NetRuleResourceSpec = serde_norway::from_str(
            "device: eth0\ndirection: ingress\nport: 443\nconnections: 30/min\nperSource: true\n",
        )
        .unwrap();
        let rule = spec.rule();
        assert!(rule.limits_connections());
        assert_eq!(rule.protocol, Some(Protocol::Tcp));
        let shown = serde_norway::to_string(&NetRuleResourceSpec::of_rule(rule)).unwrap();
        assert!(shown.contains("connections: 30/min"), "{shown}");
        let again: NetRuleResourceSpec = serde_norway::from_str(&shown).unwrap();
        assert_eq!(again.rule(), rule, "{shown}");
        for (text, needle) in [
            ("direction: egress\nconnections: 5/s\n", "ingress only"),
            (
                "direction: ingress\nconnections: 5/s\npps: 100\n",
                "one of them",
            ),
            (
                "direction: ingress\nconnections: 5/s\nprotocol: udp\n",
                "TCP",
            ),
        ] {
            let text = format!("device: eth0\n{text}");
            let error = serde_norway::from_str::<NetRuleResourceSpec>(&text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn rate_limits_take_both_shapes_and_refuse_mixes() {
        let read = |text: &str| serde_norway::from_str::<RateLimitSpec>(text);
        let outbound = |text: &str| match read(text).unwrap().rule().clone() {
            RateLimitRule::Outbound(rule) => rule,
            RateLimitRule::Inbound(rule) => panic!("inbound: {rule:?}"),
        };
        let rein = outbound("destination: \"[2001:db8::1]:443\"\nrate: 100/s\nburst: 20\n");
        assert_eq!(rein.destination.port, Some(443));
        assert!(matches!(rein.limit, ConnLimit::Rate { burst: 20, .. }));
        let envoy = outbound(
            "service: 10.0.0.1:80\nrules:\n- maxTokens: 4\n  tokensPerFill: 4\n  \
             fillInterval: 60s\ncgroup: /a\nperCaller: true\n",
        );
        assert_eq!(
            envoy.limit,
            ConnLimit::Fill {
                max_tokens: 4,
                tokens_per_fill: 4,
                fill_ns: 60_000_000_000
            }
        );
        assert_eq!(envoy.scope, ScopeRequest::Cgroup("/a".into()));
        let inbound = read("device: eth0\nport: 443\nrate: 50/s\nperSource: true\n").unwrap();
        let RateLimitRule::Inbound(rule) = inbound.rule() else {
            panic!("outbound: {inbound:?}");
        };
        assert!(rule.limits_connections());
        assert_eq!((rule.port, rule.protocol), (Some(443), Some(Protocol::Tcp)));
        // `rein get` shows a rule in fields that declare it again.
        let shown = serde_norway::to_string(&RateLimitSpec::of_inbound(rule)).unwrap();
        assert_eq!(read(&shown).unwrap().rule(), inbound.rule(), "{shown}");

        let fill = "rules:\n- maxTokens: 4\n  tokensPerFill: 4\n  fillInterval: 60s\n";
        for (text, needle) in [
            (
                format!("destination: 10.0.0.1\nrate: 5/s\n{fill}"),
                "not both",
            ),
            ("destination: 10.0.0.1\n".into(), "give rate"),
            ("rate: 5/s\n".into(), "give destination"),
            ("destination: 10.0.0.1\nrate: 0/s\n".into(), "0/s"),
            (
                "destination: 10.0.0.1\nrate: 5/s\nburst: 0\n".into(),
                "burst of 0",
            ),
            (
                "service: 10.0.0.1\nrules:\n- {maxTokens: 1, tokensPerFill: 1, fillInterval: 0s}\n"
                    .into(),
                "0s",
            ),
            (
                format!(
                    "service: 10.0.0.1\n{fill}- {{maxTokens: 1, tokensPerFill: 1, fillInterval: 1s}}\n"
                ),
                "rules takes one entry",
            ),
            (
                "service: 10.0.0.1\nrules:\n- {maxTokens: 0, tokensPerFill: 1, fillInterval: 1s}\n"
                    .into(),
                "bucket of 0",
            ),
            (
                "destination: 10.0.0.1\nrate: 5/s\nport: 80\n".into(),
                "inbound",
            ),
            ("device: eth0\nrate: 5/s\n".into(), "needs port"),
            (
                "device: eth0\nport: 80\nrate: 5/s\nperCaller: true\n".into(),
                "outbound",
            ),
        ] {
            let error = read(&text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn net_rules_take_what_rein_net_add_takes() {
        let spec: NetRuleResourceSpec = serde_norway::from_str(
            "device: eth0\ndirection: ingress\nxdp: true\npps: 5000\nperSource: true\n\
             sketch: 1024x2\nburst: null\n",
        )
        .unwrap();
        let rule = spec.rule();
        assert_eq!(rule.hook, NetHook::Xdp);
        assert_eq!(
            rule.limit,
            NetLimit::TokenBucket {
                per: Per::Packets,
                rate: 5000,
                burst: 50
            }
        );
        // `rein get` shows a rule in fields that declare it again.
        let shown = serde_norway::to_string(&NetRuleResourceSpec::of_rule(rule)).unwrap();
        let again: NetRuleResourceSpec = serde_norway::from_str(&shown).unwrap();
        assert_eq!(again.rule(), rule, "{shown}");

        for (text, needle) in [
            ("rate: 1mbit\nwindow: 1s\n", "window belongs"),
            (
                "rate: 1mbit\nalgorithm: fixed-window\nburst: 9k\n",
                "burst belongs",
            ),
            ("pps: 30\n", "at least 60"),
            (
                "rate: 1mbit\nsource: 10.0.0.0/8\ndestination: 10.0.0.1\n",
                "single",
            ),
            ("rate: 1mbit\nsketch: 1024x2\n", "sketch needs perSource"),
        ] {
            let text = format!("device: eth0\ndirection: ingress\n{text}");
            let error = serde_norway::from_str::<NetRuleResourceSpec>(&text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
