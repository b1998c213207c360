//! The result a chained plugin passes on: the `prevResult` it was given, read in the shape of
//! the configuration's version and written back in that version, as the reference plugin does
//! through its library (which reads it, converts it to 1.1.0 and back). rein adds no interface
//! of its own to it.
//!
//! The two shapes: 0.3.x/0.4.0 results give each IP its `version` ("4" or "6") and an
//! interface only a name, mac and sandbox, and always carry `dns`; 1.x results drop the IP
//! version, add an interface's `mtu`, `socketPath` and `pciID`, and leave out an empty `dns`.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::version::CniVersion;

/// A success result, in every version's fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub mtu: i64,
    #[serde(default)]
    pub sandbox: String,
    #[serde(default)]
    pub socket_path: String,
    #[serde(default, rename = "pciID")]
    pub pci_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    #[serde(default)]
    pub interface: Option<i64>,
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
    #[serde(default)]
    pub mtu: i64,
    #[serde(default)]
    pub advmss: i64,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub table: Option<i64>,
    #[serde(default)]
    pub scope: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// `value` without its null members: Go reads a null as the zero value, as if it were absent.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The versions a result read for a configuration of `version` may state.
fn family(version: CniVersion) -> &'static [&'static str] {
    if version.is_legacy() {
        &["0.3.0", "0.3.1", "0.4.0"]
    } else {
        &["1.0.0", "1.1.0"]
    }
}

impl CniResult {
    /// Reads a `prevResult` for a configuration of `version`: a result that states no version
    /// has the configuration's, one that states a version of the other shape is refused.
    pub fn parse(value: &Value, version: CniVersion) -> Result<Self, String> {
        let mut result = CniResult::deserialize(without_nulls(value)).map_err(|e| e.to_string())?;
        if result.cni_version.is_empty() {
            result.cni_version = version.as_str().to_owned();
        }
        let family = family(version);
        if !family.contains(&result.cni_version.as_str()) {
            return Err(format!(
                "result type supports {family:?} but unmarshalled CNIVersion is {:?}",
                result.cni_version
            ));
        }
        Ok(result)
    }

    /// The result written as `version` states results.
    pub fn to_value(&self, version: CniVersion) -> Value {
        let legacy = version.is_legacy();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let interfaces = self.interfaces.iter().map(|i| i.to_value(legacy));
            out.insert("interfaces".into(), Value::Array(interfaces.collect()));
        }
        if !self.ips.is_empty() {
            let ips = self.ips.iter().map(|ip| ip.to_value(legacy));
            out.insert("ips".into(), Value::Array(ips.collect()));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(Route::to_value);
            out.insert("routes".into(), Value::Array(routes.collect()));
        }
        if legacy || !self.dns.is_empty() {
            out.insert("dns".into(), self.dns.to_value());
        }
        Value::Object(out)
    }
}

/// Inserts `value` under `key` unless it is the empty string or zero, as Go's `omitempty`.
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !empty {
        map.insert(key.into(), value);
    }
}

impl Interface {
    fn to_value(&self, legacy: bool) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), json!(self.name));
        put(&mut out, "mac", json!(self.mac));
        if !legacy {
            put(&mut out, "mtu", json!(self.mtu));
        }
        put(&mut out, "sandbox", json!(self.sandbox));
        if !legacy {
            put(&mut out, "socketPath", json!(self.socket_path));
            put(&mut out, "pciID", json!(self.pci_id));
        }
        Value::Object(out)
    }
}

impl IpConfig {
    fn to_value(&self, legacy: bool) -> Value {
        let mut out = Map::new();
        if legacy {
            // Recomputed from the address, as the reference's conversion does.
            let family = if self.address.addr().is_ipv4() {
                "4"
            } else {
                "6"
            };
            out.insert("version".into(), json!(family));
        }
        // An interface index of 0 is meaningful: present whenever given.
        if let Some(index) = self.interface {
            out.insert("interface".into(), json!(index));
        }
        out.insert("address".into(), json!(self.address.to_string()));
        if let Some(gateway) = self.gateway {
            out.insert("gateway".into(), json!(gateway.to_string()));
        }
        Value::Object(out)
    }
}

impl Route {
    fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("dst".into(), json!(self.dst.to_string()));
        if let Some(gw) = self.gw {
            out.insert("gw".into(), json!(gw.to_string()));
        }
        put(&mut out, "mtu", json!(self.mtu));
        put(&mut out, "advmss", json!(self.advmss));
        put(&mut out, "priority", json!(self.priority));
        if let Some(table) = self.table {
            out.insert("table".into(), json!(table));
        }
        if let Some(scope) = self.scope {
            out.insert("scope".into(), json!(scope));
        }
        Value::Object(out)
    }
}

impl Dns {
    fn to_value(&self) -> Value {
        let mut out = Map::new();
        put(&mut out, "nameservers", json!(self.nameservers));
        put(&mut out, "domain", json!(self.domain));
        put(&mut out, "search", json!(self.search));
        put(&mut out, "options", json!(self.options));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptp_result_1_0() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1500,
                 "sandbox": "/run/netns/pod"}
            ],
            "ips": [
                {"interface": 1, "address": "198.18.0.2/24", "gateway": "198.18.0.1"},
                {"interface": 1, "address": "2001:2::2/64"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}],
            "dns": {}
        })
    }

    #[test]
    fn a_1_x_result_passes_through_unchanged() {
        for version in [CniVersion::V1_0_0, CniVersion::V1_1_0] {
            let result = CniResult::parse(&ptp_result_1_0(), version).unwrap();
            let mut expected = ptp_result_1_0();
            expected["cniVersion"] = json!(version.as_str());
            // An empty dns is left out of 1.x results.
            expected.as_object_mut().unwrap().remove("dns");
            assert_eq!(result.to_value(version), expected);
        }
    }

    #[test]
    fn a_legacy_result_gets_ip_versions_recomputed_and_always_dns() {
        let given = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
            "ips": [
                {"version": "4", "interface": 0, "address": "198.18.0.2/24",
                 "gateway": "198.18.0.1"},
                {"version": "4", "address": "2001:2::2/64"}
            ],
        });
        let result = CniResult::parse(&given, CniVersion::V0_3_1).unwrap();
        let out = result.to_value(CniVersion::V0_3_1);
        assert_eq!(
            out,
            json!({
                "cniVersion": "0.3.1",
                "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
                "ips": [
                    {"version": "4", "interface": 0, "address": "198.18.0.2/24",
                     "gateway": "198.18.0.1"},
                    {"version": "6", "address": "2001:2::2/64"}
                ],
                "dns": {}
            })
        );
    }

    #[test]
    fn legacy_output_drops_the_1_x_only_interface_fields() {
        let given = json!({
            "interfaces": [{"name": "eth0", "mtu": 9000, "socketPath": "/s", "pciID": "0000:01"}],
        });
        let result = CniResult::parse(&given, CniVersion::V0_4_0).unwrap();
        assert_eq!(
            result.cni_version, "0.4.0",
            "no version: the configuration's"
        );
        assert_eq!(
            result.to_value(CniVersion::V0_4_0)["interfaces"],
            json!([{"name": "eth0"}])
        );
        let result = CniResult::parse(&given, CniVersion::V1_1_0).unwrap();
        assert_eq!(
            result.to_value(CniVersion::V1_1_0)["interfaces"],
            json!([{"name": "eth0", "mtu": 9000, "socketPath": "/s", "pciID": "0000:01"}])
        );
    }

    #[test]
    fn a_result_of_the_other_shape_or_malformed_is_refused() {
        let error = CniResult::parse(&ptp_result_1_0(), CniVersion::V0_4_0).unwrap_err();
        assert!(
            error.contains("unmarshalled CNIVersion is \"1.0.0\""),
            "{error}"
        );
        let bad = json!({"ips": [{"address": "not-a-cidr"}]});
        assert!(CniResult::parse(&bad, CniVersion::V1_0_0).is_err());
        let nulls = json!({"cniVersion": null, "dns": null, "ips": [{"address": "198.18.0.2/24", "gateway": null}]});
        let result = CniResult::parse(&nulls, CniVersion::V1_0_0).unwrap();
        assert_eq!(
            result.ips[0].gateway, None,
            "a null reads as absent, as in Go"
        );
        let bad = json!({"interfaces": "eth0"});
        assert!(CniResult::parse(&bad, CniVersion::V1_0_0).is_err());
    }

    #[test]
    fn a_1_1_result_reads_under_a_1_0_configuration_and_is_written_as_1_0() {
        let mut given = ptp_result_1_0();
        given["cniVersion"] = json!("1.1.0");
        let result = CniResult::parse(&given, CniVersion::V1_0_0).unwrap();
        assert_eq!(result.to_value(CniVersion::V1_0_0)["cniVersion"], "1.0.0");
    }
}
