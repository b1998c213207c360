//! `rein conn`'s inbound rules: limits on the new TCP connections a device receives (SYNs at
//! tc ingress or XDP). They are net rules of their own kind (`NetLimit::Connections`), so they
//! take net rule ids and share everything a net rule has: the tries, per-source tables and
//! sketches, restore after reload, garbage collection, purge, trace and metrics.
use super::{
    NetRuleRecord, NetRuleView,
    request::{NetRuleRequest, OptionNames, RequestError},
    spec::{Cidr, NetRuleSpec, SketchSize},
};
use crate::{
    engine::Engine,
    error::{Error, Result},
    units::EventRate,
};

/// An inbound connection limit as `rein conn add` takes it, each value parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundRequest {
    pub device: String,
    /// The service's port (1..=65535).
    pub port: u16,
    pub destination: Option<Cidr>,
    pub rate: EventRate,
    /// Connections; default one second at the rate, at least 5.
    pub burst: Option<u64>,
    pub per_source: bool,
    pub sketch: Option<SketchSize>,
    pub xdp: bool,
}

impl InboundRequest {
    /// The net rule it stands for, checked, before any device is looked at.
    pub fn resolve(&self) -> std::result::Result<NetRuleSpec, RequestError> {
        NetRuleRequest {
            device: self.device.clone(),
            direction: rein_common::Direction::Ingress,
            xdp: self.xdp,
            source: None,
            destination: self.destination,
            protocol: None,
            port: Some(self.port),
            rate: None,
            pps: None,
            connections: Some(self.rate),
            burst: self.burst.map(|b| b.to_string()),
            algorithm: Default::default(),
            window: None,
            per_source: self.per_source,
            sketch: self.sketch,
        }
        .resolve(&OptionNames::CONN_FLAGS)
    }
}

/// Adds an inbound connection limit ([`InboundRequest::resolve`]'s rule).
pub fn add_inbound(engine: &mut Engine, spec: NetRuleSpec) -> Result<NetRuleRecord> {
    super::add(engine, spec)
}

/// Deletes inbound connection limit `id`; a traffic rule of that id is left alone.
pub fn delete_inbound(engine: &mut Engine, id: u32) -> Result<NetRuleRecord> {
    super::delete_where(engine, id, |record| {
        if record.spec.limits_connections() {
            Ok(())
        } else {
            Err(Error::NotAConnectionRule(id))
        }
    })
}

/// The inbound connection limits among `rein net`'s rules.
pub fn inbound_views(views: Vec<NetRuleView>) -> Vec<NetRuleView> {
    views
        .into_iter()
        .filter(|view| view.record.spec.limits_connections())
        .collect()
}
