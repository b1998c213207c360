//! The network configuration on stdin, read as the reference bandwidth plugin (v1.9.1, whose
//! configuration is that of Debian's 1.1.1) and its library read it, then turned into rein's
//! types.
//!
//! Keys are matched as Go's `encoding/json` matches them: an exact match first, else one that
//! differs only in case. A key given `null` is as good as absent for its value, as in Go.
use std::collections::HashSet;

use ipnet::IpNet;
use rein::{
    capabilities::{
        cgroup_limit::LimitSpec,
        netns_limit::{NetnsLimit, Subnets},
    },
    units::{Rate, Size},
};
use serde_json::{Map, Value};

use crate::{
    error::{CniError, Code, Result},
    result::CniResult,
    version::{self, CniVersion},
};

/// Bursts that runtimes pass when nobody set one (Kubernetes' `math.MaxInt32`, and
/// `math.MaxUint32`): rein then uses its own default burst for the rate instead of a burst of
/// hundreds of megabytes.
pub const SENTINEL_BURSTS: [u64; 2] = [(1 << 31) - 1, (1 << 32) - 1];

/// The configuration's own key naming the rein instance, for runtimes that do not pass
/// `REIN_INSTANCE` through to plugins.
pub const INSTANCE_KEY: &str = "reinInstance";

/// What the reference library (skel) reads of every configuration: its name and version.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    raw: Map<String, Value>,
}

/// A key of `map`, matched as Go matches struct fields.
pub fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key)
        .or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// Container ids and network names: an alphanumeric, then alphanumerics, `_`, `.` and `-`.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl NetConf {
    /// Reads the configuration for `command`, with skel's checks and codes: JSON (6), a
    /// valid name (7), a version this plugin speaks for the command (1).
    pub fn read(stdin: &[u8], command: &str) -> Result<Self> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodingFailure,
                format!("error unmarshall network config: {e}"),
            )
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                Code::DecodingFailure,
                "error unmarshall network config: the configuration is not a JSON object",
            ));
        };
        let name = match field(&raw, "name") {
            None => String::new(),
            Some(Value::String(name)) => name.clone(),
            Some(other) => {
                return Err(CniError::new(
                    Code::DecodingFailure,
                    format!("error unmarshall network config: name is {other}, not a string"),
                ));
            }
        };
        if name.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "missing network name"));
        }
        if !valid_name(&name) {
            return Err(CniError::new(
                Code::InvalidConfig,
                "invalid characters found in network name",
            )
            .with_details(name));
        }
        let stated = match field(&raw, "cniVersion") {
            None => "",
            Some(Value::String(stated)) => stated.as_str(),
            Some(other) => {
                return Err(CniError::new(
                    Code::DecodingFailure,
                    format!(
                        "decoding version from network config: cniVersion is {other}, not a string"
                    ),
                ));
            }
        };
        let version = version::negotiate(stated, command)?;
        Ok(Self { version, name, raw })
    }

    /// The rein instance the configuration names, if it names one.
    pub fn instance(&self) -> Result<Option<String>> {
        match field(&self.raw, INSTANCE_KEY) {
            None => Ok(None),
            Some(Value::String(name)) => match rein::Instance::new(name) {
                Ok(_) => Ok(Some(name.clone())),
                Err(e) => Err(invalid(format!("{INSTANCE_KEY}: {e}"))),
            },
            Some(other) => Err(invalid(format!(
                "{INSTANCE_KEY} is {other}, not an instance name"
            ))),
        }
    }

    /// The attachments GC must keep: `cni.dev/valid-attachments`, none if absent.
    pub fn valid_attachments(&self) -> Result<HashSet<(String, String)>> {
        const KEY: &str = "cni.dev/valid-attachments";
        let Some(value) = field(&self.raw, KEY) else {
            return Ok(HashSet::new());
        };
        let bad = || parse_failure(format!("{KEY} must be a list of {{containerID, ifname}}"));
        let list = value.as_array().ok_or_else(bad)?;
        list.iter()
            .map(|item| {
                let item = item.as_object().ok_or_else(bad)?;
                let text = |key| match field(item, key) {
                    None => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(bad()),
                };
                Ok((text("containerID")?, text("ifname")?))
            })
            .collect()
    }
}

/// A configuration the reference plugin refuses (its errors carry no code: 999).
fn parse_failure(message: String) -> CniError {
    CniError::new(
        Code::Internal,
        format!("failed to parse network configuration: {message}"),
    )
}

/// A configuration rein refuses beyond the reference's checks: invalid network config (7).
fn invalid(message: String) -> CniError {
    CniError::new(Code::InvalidConfig, message)
}

/// The reference's `BandwidthEntry`: rates in bits per second, bursts in bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

const BANDWIDTH_KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

impl Bandwidth {
    /// The entry's four keys from `map`, or `None` if it has none of them (the reference
    /// then looks at `runtimeConfig.bandwidth`).
    fn from_map(map: &Map<String, Value>, at: &str) -> Result<Option<Self>> {
        // Go's decoder makes the entry as soon as one of its keys appears, even as null.
        let present = BANDWIDTH_KEYS
            .iter()
            .any(|key| map.keys().any(|k| k.eq_ignore_ascii_case(key)));
        if !present {
            return Ok(None);
        }
        let number = |key: &str| match field(map, key) {
            None => Ok(0),
            Some(value) => value.as_u64().ok_or_else(|| {
                parse_failure(format!(
                    "{at}{key} is {value}: it must be a whole number from 0 to {}",
                    u64::MAX
                ))
            }),
        };
        Ok(Some(Self {
            ingress_rate: number("ingressRate")?,
            ingress_burst: number("ingressBurst")?,
            egress_rate: number("egressRate")?,
            egress_burst: number("egressBurst")?,
        }))
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// The reference's check of one direction.
fn validate_rate_and_burst(rate: u64, burst: u64) -> Result<()> {
    let message = if burst == 0 && rate != 0 {
        "if rate is set, burst must also be set"
    } else if rate == 0 && burst != 0 {
        "if burst is set, rate must also be set"
    } else if burst / 8 >= u64::from(u32::MAX) {
        "burst cannot be more than 4GB"
    } else {
        return Ok(());
    };
    Err(CniError::new(Code::Internal, message))
}

/// What ADD and CHECK act on.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConf {
    /// The limit the namespace must have; empty when the configuration sets none.
    pub limit: NetnsLimit,
    /// Whether the configuration sets a limit (the reference's "non-zero bandwidth").
    pub limited: bool,
    pub prev_result: Option<CniResult>,
}

/// The object under `key` of `map`, if it is one; a Go decoding error if it is something else.
fn object<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>> {
    match field(map, key) {
        None => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(other) => Err(parse_failure(format!("{key} is {other}, not an object"))),
    }
}

impl NetConf {
    /// The reference's `parseConfig` (same checks, order, messages and codes), then rein's
    /// own: the subnets, and the values rein can enforce.
    pub fn plugin(&self) -> Result<PluginConf> {
        let raw = &self.raw;
        // The fields of the reference's NetConf that a Go decoder would refuse to read.
        match field(raw, "type") {
            None | Some(Value::String(_)) => {}
            Some(other) => return Err(parse_failure(format!("type is {other}, not a string"))),
        }
        for key in ["ipam", "dns", "prevResult"] {
            object(raw, key)?;
        }
        if let Some(capabilities) = object(raw, "capabilities")?
            && let Some((key, _)) = capabilities.iter().find(|(_, v)| !v.is_boolean())
        {
            return Err(parse_failure(format!(
                "capabilities.{key} is not a boolean"
            )));
        }
        let runtime_bandwidth = match object(raw, "runtimeConfig")? {
            Some(runtime) => match field(runtime, "bandwidth") {
                None => None,
                Some(Value::Object(entry)) => Some(entry),
                Some(other) => {
                    return Err(parse_failure(format!(
                        "runtimeConfig.bandwidth is {other}, not an object"
                    )));
                }
            },
            None => None,
        };
        let runtime_entry = match runtime_bandwidth {
            // An empty object is an entry of zeros, as Go reads it.
            Some(entry) => {
                Some(Bandwidth::from_map(entry, "runtimeConfig.bandwidth.")?.unwrap_or_default())
            }
            None => None,
        };
        // Top-level keys win over the runtime's, as a whole entry.
        let bandwidth = Bandwidth::from_map(raw, "")?.or(runtime_entry);
        if let Some(bw) = &bandwidth {
            validate_rate_and_burst(bw.ingress_rate, bw.ingress_burst)?;
            validate_rate_and_burst(bw.egress_rate, bw.egress_burst)?;
        }
        let prev_result = match field(raw, "prevResult") {
            None => None,
            Some(value) => Some(CniResult::parse(value, self.version).map_err(|e| {
                CniError::new(Code::Internal, format!("could not parse prevResult: {e}"))
            })?),
        };

        let bw = bandwidth.unwrap_or_default();
        let ingress = limit_spec(
            "ingressRate",
            bw.ingress_rate,
            "ingressBurst",
            bw.ingress_burst,
        )?;
        let egress = limit_spec("egressRate", bw.egress_rate, "egressBurst", bw.egress_burst)?;
        let subnets = subnets(raw, runtime_bandwidth)?;
        let limited = !bw.is_zero();
        Ok(PluginConf {
            limit: NetnsLimit {
                egress,
                ingress,
                // Subnets qualify a limit; without one they mean nothing.
                subnets: if limited { subnets } else { None },
            },
            limited,
            prev_result,
        })
    }
}

/// One direction in rein's units; rate and burst 0 leave it unlimited.
fn limit_spec(rate_key: &str, rate: u64, burst_key: &str, burst: u64) -> Result<Option<LimitSpec>> {
    if rate == 0 && burst == 0 {
        return Ok(None);
    }
    let rate = Rate::from_bits(rate).map_err(|_| {
        invalid(format!(
            "{rate_key}: {rate} bits/s is outside what rein enforces, {} to {} bits/s",
            Rate::MIN_BITS,
            Rate::MAX_BITS
        ))
    })?;
    let burst = if SENTINEL_BURSTS.contains(&burst) {
        None
    } else {
        let size = Size::from_bytes(burst / 8).map_err(|_| {
            invalid(format!(
                "{burst_key}: {burst} bits is outside what rein enforces, {} to {} bits (one \
                 full-size packet to 1 GiB)",
                Size::MIN_BYTES * 8,
                Size::MAX_BYTES * 8
            ))
        })?;
        Some(size)
    };
    Ok(Some(LimitSpec { rate, burst }))
}

/// `unshapedSubnets` or `shapedSubnets`, each a top-level key or one of the runtime's entry.
fn subnets(
    raw: &Map<String, Value>,
    runtime: Option<&Map<String, Value>>,
) -> Result<Option<Subnets>> {
    let list = |key: &str| -> Result<Vec<IpNet>> {
        let value = field(raw, key).or_else(|| runtime.and_then(|entry| field(entry, key)));
        let Some(value) = value else {
            return Ok(Vec::new());
        };
        let items = value
            .as_array()
            .ok_or_else(|| invalid(format!("{key} must be a list of CIDRs, not {value}")))?;
        items
            .iter()
            .map(|item| {
                let text = item
                    .as_str()
                    .ok_or_else(|| invalid(format!("bad subnet {item} provided in {key}")))?;
                text.parse::<IpNet>().map(|net| net.trunc()).map_err(|e| {
                    invalid(format!(
                        "bad subnet {text:?} provided in {key}, details {e}"
                    ))
                })
            })
            .collect()
    };
    let unshaped = list("unshapedSubnets")?;
    let shaped = list("shapedSubnets")?;
    match (unshaped.is_empty(), shaped.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(Subnets::Unshaped(unshaped))),
        (true, false) => Ok(Some(Subnets::Shaped(shaped))),
        (false, false) => Err(invalid(
            "unshapedSubnets and shapedSubnets cannot be both specified, one of them should be \
             discarded"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(value: Value) -> Result<NetConf> {
        NetConf::read(value.to_string().as_bytes(), "ADD")
    }

    fn plugin(value: Value) -> Result<PluginConf> {
        read(value)?.plugin()
    }

    fn base() -> Value {
        json!({"cniVersion": "1.0.0", "name": "pods", "type": "rein-cni"})
    }

    fn with(pairs: Value) -> Value {
        let mut conf = base();
        for (key, value) in pairs.as_object().unwrap() {
            conf[key] = value.clone();
        }
        conf
    }

    fn refused(value: Value) -> CniError {
        plugin(value).expect_err("the configuration should be refused")
    }

    fn spec(bits: u64, burst: Option<u64>) -> Option<LimitSpec> {
        Some(LimitSpec {
            rate: Rate::from_bits(bits).unwrap(),
            burst: burst.map(|bytes| Size::from_bytes(bytes).unwrap()),
        })
    }

    #[test]
    fn skel_refuses_bad_json_a_missing_or_bad_name_and_a_bad_version() {
        let error = NetConf::read(b"{", "ADD").unwrap_err();
        assert_eq!(error.code, Code::DecodingFailure);
        assert!(error.msg.starts_with("error unmarshall network config"));
        assert_eq!(
            NetConf::read(b"[]", "ADD").unwrap_err().code,
            Code::DecodingFailure
        );
        let error = read(json!({"cniVersion": "1.0.0"})).unwrap_err();
        assert_eq!(
            (error.code, error.msg.as_str()),
            (Code::InvalidConfig, "missing network name")
        );
        let error = read(json!({"cniVersion": "1.0.0", "name": "a b"})).unwrap_err();
        assert_eq!(error.code, Code::InvalidConfig);
        assert_eq!(error.details, "a b");
        let error = read(json!({"cniVersion": 1, "name": "n"})).unwrap_err();
        assert_eq!(error.code, Code::DecodingFailure);
        let error = read(json!({"cniVersion": "9.9.9", "name": "n"})).unwrap_err();
        assert_eq!(error.code, Code::IncompatibleVersion);
        // No version at all is 0.1.0, which the reference bandwidth plugin does not speak.
        let error = read(json!({"name": "n"})).unwrap_err();
        assert_eq!(error.code, Code::IncompatibleVersion);
        assert!(error.details.contains("\"0.1.0\""), "{error:?}");
    }

    #[test]
    fn top_level_keys_set_each_direction_in_bits() {
        let conf = plugin(with(json!({
            "ingressRate": 10_000_000, "ingressBurst": 800_000,
            "egressRate": 2_000_000, "egressBurst": 160_000,
        })))
        .unwrap();
        assert!(conf.limited);
        assert_eq!(conf.limit.ingress, spec(10_000_000, Some(100_000)));
        assert_eq!(conf.limit.egress, spec(2_000_000, Some(20_000)));
        assert_eq!(conf.limit.subnets, None);
    }

    #[test]
    fn runtime_config_is_used_only_without_top_level_keys() {
        let runtime = json!({"bandwidth": {"ingressRate": 5_000_000, "ingressBurst": 400_000}});
        let conf = plugin(with(json!({"runtimeConfig": runtime}))).unwrap();
        assert_eq!(conf.limit.ingress, spec(5_000_000, Some(50_000)));
        assert_eq!(conf.limit.egress, None);
        // One top-level key and the top-level entry wins whole: the runtime's ingress is gone.
        let conf = plugin(with(json!({
            "runtimeConfig": runtime,
            "egressRate": 1_000_000, "egressBurst": 80_000,
        })))
        .unwrap();
        assert_eq!(conf.limit.ingress, None);
        assert_eq!(conf.limit.egress, spec(1_000_000, Some(10_000)));
        // Even a null top-level key makes the entry, as Go's decoder does: all zero here.
        let conf = plugin(with(json!({"runtimeConfig": runtime, "ingressRate": null}))).unwrap();
        assert!(!conf.limited);
        assert_eq!(conf.limit, NetnsLimit::default());
    }

    #[test]
    fn keys_match_case_insensitively_as_in_go() {
        let conf = plugin(with(
            json!({"IngressRate": 1_000_000, "INGRESSBURST": 80_000}),
        ))
        .unwrap();
        assert_eq!(conf.limit.ingress, spec(1_000_000, Some(10_000)));
    }

    #[test]
    fn the_reference_validation_messages_and_code() {
        let cases = [
            (
                json!({"ingressRate": 1_000_000}),
                "if rate is set, burst must also be set",
            ),
            (
                json!({"egressBurst": 80_000}),
                "if burst is set, rate must also be set",
            ),
            (
                json!({"ingressRate": 1_000_000, "ingressBurst": 34_359_738_360u64}),
                "burst cannot be more than 4GB",
            ),
        ];
        for (pairs, message) in cases {
            let error = refused(with(pairs.clone()));
            assert_eq!(
                (error.code, error.msg.as_str()),
                (Code::Internal, message),
                "{pairs}"
            );
        }
        // The runtime's entry is checked the same way.
        let error = refused(with(
            json!({"runtimeConfig": {"bandwidth": {"egressRate": 5}}}),
        ));
        assert_eq!(error.msg, "if rate is set, burst must also be set");
        // Ingress is checked before egress, as there.
        let error = refused(with(json!({"ingressBurst": 8, "egressRate": 8})));
        assert_eq!(error.msg, "if burst is set, rate must also be set");
    }

    #[test]
    fn rate_and_burst_zero_leave_a_direction_unlimited() {
        let conf = plugin(with(json!({
            "ingressRate": 0, "ingressBurst": 0, "egressRate": 1_000_000, "egressBurst": 80_000,
        })))
        .unwrap();
        assert_eq!(conf.limit.ingress, None);
        assert!(conf.limit.egress.is_some());
        let conf = plugin(with(json!({"ingressRate": 0, "ingressBurst": 0}))).unwrap();
        assert!(!conf.limited, "all zero: no limit at all");
    }

    #[test]
    fn negative_fractional_textual_and_overflowing_numbers_are_parse_failures() {
        for value in [
            json!(-1),
            json!(1.5),
            json!("1000"),
            json!(true),
            json!(1e30),
        ] {
            let error = refused(with(json!({"ingressRate": value, "ingressBurst": 8000})));
            assert_eq!(error.code, Code::Internal, "{value}");
            assert!(
                error
                    .msg
                    .starts_with("failed to parse network configuration: ingressRate is"),
                "{error:?}"
            );
        }
        let error = refused(with(
            json!({"runtimeConfig": {"bandwidth": {"egressBurst": -8}}}),
        ));
        assert!(
            error.msg.contains("runtimeConfig.bandwidth.egressBurst"),
            "{error:?}"
        );
        let error = refused(with(json!({"runtimeConfig": "fast"})));
        assert!(error.msg.contains("runtimeConfig"), "{error:?}");
        let error = refused(with(json!({"prevResult": []})));
        assert!(error.msg.contains("prevResult"), "{error:?}");
    }

    #[test]
    fn sentinel_bursts_mean_the_default_burst() {
        // Kubernetes' math.MaxInt32 and math.MaxUint32, spelled out.
        for sentinel in [2_147_483_647u64, 4_294_967_295] {
            let conf = plugin(with(json!({
                "ingressRate": 10_000_000, "ingressBurst": sentinel,
                "egressRate": 10_000_000, "egressBurst": sentinel,
            })))
            .unwrap();
            assert_eq!(conf.limit.ingress, spec(10_000_000, None));
            assert_eq!(conf.limit.egress, spec(10_000_000, None));
        }
        // One bit off is a burst like any other.
        let conf = plugin(with(
            json!({"ingressRate": 10_000_000, "ingressBurst": (1u64 << 31) - 9}),
        ))
        .unwrap();
        assert_eq!(
            conf.limit.ingress,
            spec(10_000_000, Some(((1 << 31) - 9) / 8))
        );
        // A sentinel does not excuse a missing rate: the reference's check comes first.
        let error = refused(with(json!({"ingressBurst": (1u64 << 32) - 1})));
        assert_eq!(error.msg, "if burst is set, rate must also be set");
    }

    #[test]
    fn values_rein_cannot_enforce_are_invalid_config() {
        for pairs in [
            json!({"ingressRate": 999, "ingressBurst": 80_000}),
            json!({"ingressRate": 2_000_000_000_000u64, "ingressBurst": 80_000}),
            json!({"egressRate": 1_000_000, "egressBurst": 8 * 1499}),
            json!({"egressRate": 1_000_000, "egressBurst": 8 * (1u64 << 30) + 8}),
        ] {
            let error = refused(with(pairs.clone()));
            assert_eq!(error.code, Code::InvalidConfig, "{pairs}");
            assert!(
                error.msg.contains("outside what rein enforces"),
                "{error:?}"
            );
        }
    }

    #[test]
    fn subnets_top_level_or_from_the_runtime_ipv4_and_ipv6() {
        let limit = json!({"egressRate": 1_000_000, "egressBurst": 80_000});
        let mut conf = with(limit.clone());
        conf["unshapedSubnets"] = json!(["10.0.0.0/8", "fd00::1/64"]);
        let conf = plugin(conf).unwrap();
        assert_eq!(
            conf.limit.subnets,
            Some(Subnets::Unshaped(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/64".parse().unwrap()
            ]))
        );
        let conf = plugin(with(json!({"runtimeConfig": {"bandwidth": {
            "ingressRate": 1_000_000, "ingressBurst": 80_000, "shapedSubnets": ["198.18.0.0/15"]
        }}})))
        .unwrap();
        assert_eq!(
            conf.limit.subnets,
            Some(Subnets::Shaped(vec!["198.18.0.0/15".parse().unwrap()]))
        );
        // Without a limit, subnets say nothing.
        let conf = plugin(with(json!({"unshapedSubnets": ["10.0.0.0/8"]}))).unwrap();
        assert_eq!(conf.limit, NetnsLimit::default());
    }

    #[test]
    fn both_subnet_lists_or_a_bad_subnet_are_refused() {
        let mut conf = with(json!({"egressRate": 1_000_000, "egressBurst": 80_000}));
        conf["unshapedSubnets"] = json!(["10.0.0.0/8"]);
        conf["shapedSubnets"] = json!(["192.0.2.0/24"]);
        let error = refused(conf.clone());
        assert_eq!(error.code, Code::InvalidConfig);
        assert!(error.msg.contains("cannot be both specified"), "{error:?}");
        for bad in [
            json!(["10.0.0.0"]),
            json!(["10.0.0.0/33"]),
            json!("10.0.0.0/8"),
            json!([8]),
        ] {
            conf["shapedSubnets"] = bad.clone();
            conf.as_object_mut().unwrap().remove("unshapedSubnets");
            let error = refused(conf.clone());
            assert_eq!(error.code, Code::InvalidConfig, "{bad}");
            assert!(error.msg.contains("shapedSubnets"), "{error:?}");
        }
    }

    #[test]
    fn the_instance_key_must_be_a_valid_instance_name() {
        assert_eq!(
            read(with(json!({"reinInstance": "pods"})))
                .unwrap()
                .instance(),
            Ok(Some("pods".into()))
        );
        assert_eq!(read(base()).unwrap().instance(), Ok(None));
        let error = read(with(json!({"reinInstance": "Bad/Name"})))
            .unwrap()
            .instance()
            .unwrap_err();
        assert_eq!(error.code, Code::InvalidConfig);
        assert!(error.msg.contains("reinInstance"), "{error:?}");
    }

    #[test]
    fn gc_reads_the_valid_attachments() {
        let conf = NetConf::read(
            json!({"cniVersion": "1.1.0", "name": "pods",
                   "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
            .to_string()
            .as_bytes(),
            "GC",
        )
        .unwrap();
        let expected: HashSet<_> = [("a".to_owned(), "eth0".to_owned())].into();
        assert_eq!(conf.valid_attachments(), Ok(expected));
        let mut bad = with(json!({"cni.dev/valid-attachments": "a"}));
        bad["cniVersion"] = json!("1.1.0");
        let conf = NetConf::read(bad.to_string().as_bytes(), "GC").unwrap();
        assert!(conf.valid_attachments().is_err());
    }

    #[test]
    fn a_prev_result_of_the_wrong_version_is_refused_as_there() {
        let mut conf = with(json!({"prevResult": {"cniVersion": "0.4.0", "ips": []}}));
        let error = refused(conf.clone());
        assert_eq!(error.code, Code::Internal);
        assert!(
            error.msg.starts_with("could not parse prevResult"),
            "{error:?}"
        );
        conf["cniVersion"] = json!("0.4.0");
        assert!(plugin(conf).unwrap().prev_result.is_some());
    }
}
