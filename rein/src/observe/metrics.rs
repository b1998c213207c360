//! Every limit's counters and settings in the Prometheus (OpenMetrics) text format, and a small
//! HTTP server for `/metrics`.
//!
//! The text is made afresh from a [`Status`] at each scrape: the kernel maps hold the counters,
//! so rein keeps no metric of its own, and a limit gone from the status is gone from the text.
//! Labels name limits only (`cgroup`, `netns`, `rule`, `direction`, and a rule's `device` and `hook`; up
//! to [`crate::capabilities::net_rules`]' five top sources per per-source rule): as many series
//! as limits, never one per flow or packet.
use std::{
    fmt,
    net::{SocketAddr, TcpListener},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::{EncodeMetric, text},
    metrics::{TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry, Unit},
};

use crate::{
    capabilities::{
        cgroup_limit::DirectionView,
        conn_limits::{ConnRuleView, spec::ConnLimit},
        net_rules::{
            NetRuleView,
            spec::{NetHook, NetLimit, Per},
        },
    },
    engine::Status,
    error::{Error, Result},
    instance::Instance,
};

/// Where the agent serves `/metrics` unless told otherwise: this machine only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9810";

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The families of one scrape, registered under `rein_`.
struct Families {
    registry: Registry,
}

impl Families {
    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>) -> Family<Labels, Counter> {
        let family = Family::<Labels, Counter>::default();
        match unit {
            Some(unit) => self
                .registry
                .register_with_unit(name, help, unit, family.clone()),
            None => self.registry.register(name, help, family.clone()),
        }
        family
    }

    fn gauge<G: Metric + TypedMetric + EncodeMetric + Default + Clone>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
    ) -> Family<Labels, G> {
        let family = Family::<Labels, G>::default();
        match unit {
            Some(unit) => self
                .registry
                .register_with_unit(name, help, unit, family.clone()),
            None => self.registry.register(name, help, family.clone()),
        }
        family
    }
}

/// Passed and dropped bytes and packets, one counter family each.
struct Traffic {
    passed_bytes: Family<Labels, Counter>,
    passed_packets: Family<Labels, Counter>,
    dropped_bytes: Family<Labels, Counter>,
    dropped_packets: Family<Labels, Counter>,
}

impl Traffic {
    fn new(families: &mut Families, prefix: &str, what: &str) -> Self {
        let mut counter = |name: &str, help: &str, unit| {
            families.counter(&format!("{prefix}_{name}"), &format!("{help} {what}"), unit)
        };
        Self {
            passed_bytes: counter("passed", "IP bytes passed by", Some(Unit::Bytes)),
            passed_packets: counter("passed_packets", "Packets passed by", None),
            dropped_bytes: counter("dropped", "IP bytes dropped by", Some(Unit::Bytes)),
            dropped_packets: counter("dropped_packets", "Packets dropped by", None),
        }
    }

    fn record(&self, labels: &Labels, counts: [u64; 4]) {
        let [passed_bytes, passed_packets, dropped_bytes, dropped_packets] = counts;
        self.passed_bytes.get_or_create(labels).inc_by(passed_bytes);
        self.passed_packets
            .get_or_create(labels)
            .inc_by(passed_packets);
        self.dropped_bytes
            .get_or_create(labels)
            .inc_by(dropped_bytes);
        self.dropped_packets
            .get_or_create(labels)
            .inc_by(dropped_packets);
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The OpenMetrics text of `status` (see the README for every metric).
pub fn render(status: &Status) -> Result<String> {
    render_with(status, &|_| {})
}

/// Metrics a server adds to every scrape (the agent's own), registered under `rein_`.
pub type Extra = dyn Fn(&mut Registry) + Send + Sync;

/// [`render`], with `extra`'s metrics too.
pub fn render_with(status: &Status, extra: &Extra) -> Result<String> {
    let mut families = Families {
        registry: Registry::with_prefix("rein"),
    };
    extra(&mut families.registry);

    let cgroups = status.cgroups.iter().map(|rule| {
        (
            ("cgroup", rule.cgroup.clone()),
            [("egress", &rule.egress), ("ingress", &rule.ingress)],
        )
    });
    render_limits(&mut families, "cgroup", "a cgroup limit", cgroups);
    let namespaces = status.netns.iter().map(|view| {
        (
            ("netns", view.netns.clone()),
            [("egress", &view.egress), ("ingress", &view.ingress)],
        )
    });
    render_limits(
        &mut families,
        "netns",
        "a network namespace limit",
        namespaces,
    );
    // A row per shared limit: its members' traffic summed (each member's is in `rein list`).
    let shared = status.shared.iter().map(|view| {
        (
            ("shared", view.name.clone()),
            [("egress", &view.egress), ("ingress", &view.ingress)],
        )
    });
    render_limits(
        &mut families,
        "shared",
        "a shared limit (all its members together)",
        shared,
    );

    let backlog: Family<Labels, Gauge> = families.gauge(
        "ingress_queue_backlog",
        "Bytes waiting in an ingress limit's download queue",
        Some(Unit::Bytes),
    );
    let backlog_packets: Family<Labels, Gauge> = families.gauge(
        "ingress_queue_backlog_packets",
        "Packets waiting in an ingress limit's download queue",
        None,
    );
    let queue_drops = families.counter(
        "ingress_queue_dropped_packets",
        "Packets an ingress limit's download queue dropped, full",
        None,
    );
    for queue in &status.queues {
        let labels = vec![("cgroup", queue.cgroup.clone())];
        backlog
            .get_or_create(&labels)
            .set(gauge_value(queue.backlog_bytes));
        backlog_packets
            .get_or_create(&labels)
            .set(gauge_value(queue.backlog_packets));
        queue_drops
            .get_or_create(&labels)
            .inc_by(queue.dropped_packets);
    }

    render_net(&mut families, &status.net);
    render_conn(&mut families, &status.conn, &status.net);

    let mut out = String::new();
    text::encode(&mut out, &families.registry)
        .map_err(|error| Error::Metrics(error.to_string()))?;
    Ok(out)
}

/// A limit's scope label, and its view of each direction.
type Scoped<'a> = (
    (&'static str, String),
    [(&'static str, &'a Option<DirectionView>); 2],
);

/// The families of limits of a kind of scope (`cgroup`, `netns`): traffic, rate, burst and
/// flows per limited direction, labelled by the scope and the direction.
fn render_limits<'a>(
    families: &mut Families,
    prefix: &str,
    what: &str,
    limits: impl Iterator<Item = Scoped<'a>>,
) {
    let traffic = Traffic::new(families, prefix, what);
    let rate: Family<Labels, Gauge> = families.gauge(
        &format!("{prefix}_rate_bytes_per_second"),
        &format!("Rate of {what} (IP bytes per second)"),
        None,
    );
    let burst: Family<Labels, Gauge> = families.gauge(
        &format!("{prefix}_burst"),
        &format!("Burst of {what}"),
        Some(Unit::Bytes),
    );
    let flows: Family<Labels, Gauge> = families.gauge(
        &format!("{prefix}_tcp_flows"),
        &format!("TCP flows sharing {what} now (sent in the last 100-200 ms)"),
        None,
    );
    for (scope, directions) in limits {
        for (direction, view) in directions {
            let Some(view) = view else { continue };
            let labels = vec![scope.clone(), ("direction", direction.into())];
            let DirectionView {
                passed_bytes,
                passed_packets,
                dropped_bytes,
                dropped_packets,
                ..
            } = *view;
            traffic.record(
                &labels,
                [passed_bytes, passed_packets, dropped_bytes, dropped_packets],
            );
            rate.get_or_create(&labels)
                .set(gauge_value(view.rate_bits_per_second / 8));
            burst
                .get_or_create(&labels)
                .set(gauge_value(view.burst_bytes));
            flows.get_or_create(&labels).set(i64::from(view.tcp_flows));
        }
    }
}

fn render_net(families: &mut Families, rules: &[NetRuleView]) {
    let traffic = Traffic::new(families, "net", "a net rule");
    let attached: Family<Labels, Gauge> = families.gauge(
        "net_attached",
        "1 while a net rule's program is on its device",
        None,
    );
    let rate_bytes: Family<Labels, Gauge> = families.gauge(
        "net_rate_bytes_per_second",
        "Rate of a net rule's token bucket (IP bytes per second)",
        None,
    );
    let rate_packets: Family<Labels, Gauge> = families.gauge(
        "net_rate_packets_per_second",
        "Rate of a net rule's token bucket in packets per second",
        None,
    );
    let burst_bytes: Family<Labels, Gauge> = families.gauge(
        "net_burst",
        "Burst of a net rule's token bucket",
        Some(Unit::Bytes),
    );
    let burst_packets: Family<Labels, Gauge> = families.gauge(
        "net_burst_packets",
        "Burst of a net rule's token bucket in packets",
        None,
    );
    let rate_connections: Family<Labels, Gauge<f64, AtomicU64>> = families.gauge(
        "net_rate_connections_per_second",
        "Rate of a net rule's new-connection limit (TCP SYNs per second)",
        None,
    );
    let burst_connections: Family<Labels, Gauge> = families.gauge(
        "net_burst_connections",
        "Burst of a net rule's new-connection limit",
        None,
    );
    let window_bytes: Family<Labels, Gauge> = families.gauge(
        "net_window_capacity",
        "What a net rule's window passes",
        Some(Unit::Bytes),
    );
    let window_packets: Family<Labels, Gauge> = families.gauge(
        "net_window_capacity_packets",
        "Packets a net rule's window passes",
        None,
    );
    let window_seconds: Family<Labels, Gauge<f64, AtomicU64>> = families.gauge(
        "net_window",
        "Length of a net rule's window",
        Some(Unit::Seconds),
    );
    let sources = Traffic::new(
        families,
        "net_source",
        "a net rule for one of its top sources",
    );
    for view in rules {
        let spec = &view.record.spec;
        let direction = match spec.hook {
            NetHook::TcEgress => "egress",
            NetHook::TcIngress | NetHook::Xdp => "ingress",
        };
        let labels = vec![
            ("rule", view.record.id.to_string()),
            ("device", spec.device.clone()),
            ("hook", spec.hook.name().into()),
            ("direction", direction.into()),
        ];
        traffic.record(
            &labels,
            [
                view.passed_bytes,
                view.passed_packets,
                view.dropped_bytes,
                view.dropped_packets,
            ],
        );
        attached
            .get_or_create(&labels)
            .set(i64::from(view.attached));
        let set = |family: &Family<Labels, Gauge>, value: u64| {
            family.get_or_create(&labels).set(gauge_value(value));
        };
        match spec.limit {
            NetLimit::Connections { rate, burst } => {
                rate_connections
                    .get_or_create(&labels)
                    .set(rate.count() as f64 * 1e9 / rate.period_ns() as f64);
                set(&burst_connections, burst);
            }
            NetLimit::TokenBucket { per, rate, burst } => {
                let (rate_family, burst_family) = match per {
                    Per::Bytes => (&rate_bytes, &burst_bytes),
                    Per::Packets => (&rate_packets, &burst_packets),
                };
                set(rate_family, rate);
                set(burst_family, burst);
            }
            NetLimit::FixedWindow {
                per,
                capacity,
                window_ns,
            }
            | NetLimit::SlidingWindow {
                per,
                capacity,
                window_ns,
            } => {
                match per {
                    Per::Bytes => set(&window_bytes, capacity),
                    Per::Packets => set(&window_packets, capacity),
                }
                window_seconds
                    .get_or_create(&labels)
                    .set(window_ns as f64 / 1e9);
            }
        }
        for source in &view.top_sources {
            let labels = vec![
                ("rule", view.record.id.to_string()),
                ("source", source.address.to_string()),
            ];
            sources.record(
                &labels,
                [
                    source.passed_bytes,
                    source.passed_packets,
                    source.dropped_bytes,
                    source.dropped_packets,
                ],
            );
        }
    }
}

/// New-connection limits of both directions, in families of their own: outbound `rein conn`
/// rules from their counters, inbound ones (net rules of connections) from their net rule's
/// (SYNs passed are allowed, SYNs dropped refused), so one query sees every connection limit.
fn render_conn(families: &mut Families, outbound: &[ConnRuleView], net: &[NetRuleView]) {
    let allowed = families.counter(
        "conn_allowed",
        "New connections a connection limit let through",
        None,
    );
    let refused = families.counter(
        "conn_refused",
        "New connections a connection limit refused",
        None,
    );
    let refused_table_full = families.counter(
        "conn_refused_table_full",
        "Connections a per-caller limit refused for want of room for a new caller",
        None,
    );
    let tokens: Family<Labels, Gauge> = families.gauge(
        "conn_tokens",
        "Connections the shared bucket of an outbound limit holds now",
        None,
    );
    let limit: Family<Labels, Gauge<f64, AtomicU64>> = families.gauge(
        "conn_limit_per_second",
        "A connection limit's rate (a fill form's tokens per fill over its interval)",
        None,
    );
    let caller_allowed = families.counter(
        "conn_caller_allowed",
        "New connections a per-caller limit let through for one of its top callers",
        None,
    );
    let caller_refused = families.counter(
        "conn_caller_refused",
        "New connections a per-caller limit refused one of its top callers",
        None,
    );
    for view in outbound {
        let spec = &view.record.spec;
        let labels: Labels = vec![
            ("rule", view.record.id.to_string()),
            ("direction", "outbound".into()),
            ("destination", spec.destination.to_string()),
            ("scope", spec.scope.to_string()),
        ];
        allowed.get_or_create(&labels).inc_by(view.allowed);
        refused.get_or_create(&labels).inc_by(view.refused);
        refused_table_full
            .get_or_create(&labels)
            .inc_by(view.refused_table_full);
        if let Some(held) = view.tokens {
            tokens.get_or_create(&labels).set(gauge_value(held));
        }
        let per_second = match spec.limit {
            ConnLimit::Rate { rate, .. } => rate.count() as f64 * 1e9 / rate.period_ns() as f64,
            ConnLimit::Fill {
                tokens_per_fill,
                fill_ns,
                ..
            } => f64::from(tokens_per_fill) * 1e9 / fill_ns as f64,
        };
        limit.get_or_create(&labels).set(per_second);
        // At most `TOP_CALLERS` of them: bounded however many callers a rule has.
        for caller in &view.top_callers {
            let labels = vec![
                ("rule", view.record.id.to_string()),
                ("netns", caller.netns.to_string()),
            ];
            caller_allowed.get_or_create(&labels).inc_by(caller.allowed);
            caller_refused.get_or_create(&labels).inc_by(caller.refused);
        }
    }
    for view in net {
        let spec = &view.record.spec;
        let NetLimit::Connections { rate, .. } = spec.limit else {
            continue;
        };
        let destination = match (spec.destination, spec.port) {
            (Some(cidr), Some(port)) => format!("{cidr} port {port}"),
            (Some(cidr), None) => cidr.to_string(),
            (None, Some(port)) => format!("port {port}"),
            (None, None) => "any".into(),
        };
        let labels: Labels = vec![
            ("rule", view.record.id.to_string()),
            ("direction", "inbound".into()),
            ("destination", destination),
            ("device", spec.device.clone()),
        ];
        allowed.get_or_create(&labels).inc_by(view.passed_packets);
        refused.get_or_create(&labels).inc_by(view.dropped_packets);
        limit
            .get_or_create(&labels)
            .set(rate.count() as f64 * 1e9 / rate.period_ns() as f64);
    }
}

/// The metrics of `instance` now, read without its lock (see [`Status::read`]).
pub fn gather(instance: &Instance) -> Result<String> {
    render(&Status::read(instance.clone())?)
}

fn no_extra(_: &mut Registry) {}

/// An HTTP server of `/metrics` for one instance. Synchronous, one scrape at a time: a scrape
/// reads a few maps, and its scrapers are a Prometheus or two.
pub struct Server {
    http: tiny_http::Server,
    instance: Instance,
    extra: Box<Extra>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.local_addr())
            .field("instance", &self.instance.name())
            .finish()
    }
}

impl Server {
    /// Listens on `addr` (see [`DEFAULT_ADDR`]).
    pub fn bind(addr: SocketAddr, instance: Instance) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|source| Error::Io {
            context: format!("cannot listen on {addr} for metrics"),
            source,
        })?;
        Self::from_listener(listener, instance)
    }

    /// Serves on a listener the caller made (a free port, a socket handed over by systemd).
    pub fn from_listener(listener: TcpListener, instance: Instance) -> Result<Self> {
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|error| Error::Metrics(format!("cannot serve metrics: {error}")))?;
        Ok(Self {
            http,
            instance,
            extra: Box::new(no_extra),
        })
    }

    /// Adds metrics of the server's owner to every scrape.
    pub fn with_extra(mut self, extra: impl Fn(&mut Registry) + Send + Sync + 'static) -> Self {
        self.extra = Box::new(extra);
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.http.server_addr().to_ip()
    }

    /// Answers requests until [`Server::stop`]: `/metrics` with the metrics, anything else with
    /// 404. A status that cannot be read answers 500 with the reason (Prometheus then records
    /// the scrape as failed, `up` 0).
    pub fn run(&self) {
        for request in self.http.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or_default();
            let response = if path != "/metrics" {
                text_response(404, "rein serves /metrics only\n".into(), "text/plain")
            } else {
                let status = Status::read(self.instance.clone());
                match status.and_then(|status| render_with(&status, &*self.extra)) {
                    Ok(body) => text_response(200, body, CONTENT_TYPE),
                    Err(error) => {
                        tracing::warn!("cannot read the metrics: {error}");
                        text_response(500, format!("{error}\n"), "text/plain")
                    }
                }
            };
            if let Err(error) = request.respond(response) {
                tracing::debug!("cannot answer a metrics request: {error}");
            }
        }
    }

    /// Makes [`Server::run`] return (from another thread).
    pub fn stop(&self) {
        self.http.unblock();
    }
}

fn text_response(
    status: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let response = tiny_http::Response::from_string(body).with_status_code(status);
    match tiny_http::Header::from_bytes("Content-Type", content_type) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::netns_limit::{NetnsOrigin, NetnsView};

    #[test]
    fn a_network_namespace_limit_has_the_series_of_a_cgroup_limit_labelled_by_its_path() {
        let view = DirectionView {
            rate_bits_per_second: 20_000_000,
            burst_bytes: 65_536,
            burst_is_default: true,
            passed_packets: 3,
            passed_bytes: 4_500,
            dropped_packets: 1,
            dropped_bytes: 1_500,
            tcp_flows: 2,
        };
        let status = Status {
            shared: vec![],
            cgroups: vec![],
            netns: vec![NetnsView {
                netns: "/run/netns/pod".into(),
                cookie: 9,
                origin: NetnsOrigin::Manual,
                declared_by: None,
                subnets: None,
                egress: Some(view),
                ingress: None,
            }],
            net: vec![],
            conn: vec![],
            queues: vec![],
        };
        let text = render(&status).unwrap();
        let labels = r#"{netns="/run/netns/pod",direction="egress"}"#;
        for (series, value) in [
            ("rein_netns_passed_bytes_total", "4500"),
            ("rein_netns_passed_packets_total", "3"),
            ("rein_netns_dropped_bytes_total", "1500"),
            ("rein_netns_dropped_packets_total", "1"),
            ("rein_netns_rate_bytes_per_second", "2500000"),
            ("rein_netns_burst_bytes", "65536"),
            ("rein_netns_tcp_flows", "2"),
        ] {
            let line = format!("{series}{labels} {value}\n");
            assert!(text.contains(&line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("direction=\"ingress\""), "{text}");
    }

    #[test]
    fn a_shared_limit_has_a_series_per_group_with_its_members_summed() {
        use crate::capabilities::shared_limit::{MemberTraffic, MemberView, SharedView};
        let view = DirectionView {
            rate_bits_per_second: 40_000_000,
            burst_bytes: 65_536,
            burst_is_default: true,
            passed_packets: 7,
            passed_bytes: 9_000,
            dropped_packets: 0,
            dropped_bytes: 0,
            tcp_flows: 2,
        };
        let member = MemberView {
            kind: "cgroup",
            path: "/pod-a".into(),
            egress: Some(MemberTraffic::default()),
            ingress: None,
        };
        let status = Status {
            shared: vec![SharedView {
                name: "web".into(),
                group: 1,
                declared_by: None,
                members: vec![member],
                egress: Some(view),
                ingress: None,
            }],
            cgroups: vec![],
            netns: vec![],
            net: vec![],
            conn: vec![],
            queues: vec![],
        };
        let text = render(&status).unwrap();
        let labels = r#"{shared="web",direction="egress"}"#;
        for (series, value) in [
            ("rein_shared_passed_bytes_total", "9000"),
            ("rein_shared_rate_bytes_per_second", "5000000"),
            ("rein_shared_tcp_flows", "2"),
        ] {
            let line = format!("{series}{labels} {value}\n");
            assert!(text.contains(&line), "no {line:?} in:\n{text}");
        }
    }
}
