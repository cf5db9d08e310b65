//! Istio's TCP metrics (docs/wire.md §6) with the full traffic label set for both
//! reporters, exposed through `prometheus-client` (as Istio's ztunnel does)
//! with `istio_build` and the `process_*` metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_telemetry::label_value;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use ambit_api::model::Workload;

/// Which side reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reporter {
    /// The client side's ztunnel (outbound).
    Source,
    /// The server side's ztunnel (inbound).
    Destination,
}

/// The traffic label set, in Istio's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrafficLabels {
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// source_workload, source_canonical_service, source_canonical_revision,
    /// source_workload_namespace, source_principal, source_app, source_version,
    /// source_cluster.
    pub source: PeerLabels,
    /// destination_service (FQDN).
    pub destination_service: String,
    /// destination_service_namespace.
    pub destination_service_namespace: String,
    /// destination_service_name.
    pub destination_service_name: String,
    /// The eight destination_* labels.
    pub destination: PeerLabels,
    /// `tcp`.
    pub request_protocol: &'static str,
    /// `-`, `DENY`, `CONNECT`, ...
    pub response_flags: &'static str,
    /// `mutual_tls` or `unknown`.
    pub connection_security_policy: &'static str,
}

/// The eight per-peer labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerLabels {
    /// Workload (deployment) name.
    pub workload: String,
    /// Canonical service (`app`).
    pub canonical_service: String,
    /// Canonical revision (`version`).
    pub canonical_revision: String,
    /// Namespace.
    pub workload_namespace: String,
    /// Full SPIFFE id.
    pub principal: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Cluster id.
    pub cluster: String,
}

impl PeerLabels {
    /// Labels for a known workload, with `principal` as verified (or its own id).
    pub fn of(w: &Workload, principal: Option<String>) -> Self {
        let principal = principal
            .or_else(|| w.identity().ok().map(|i| i.to_string()))
            .unwrap_or_default();
        let name = if w.workload_name.is_empty() {
            &w.name
        } else {
            &w.workload_name
        };
        PeerLabels {
            workload: name.clone(),
            canonical_service: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_namespace: w.namespace.clone(),
            principal,
            app: w.canonical_name.clone(),
            version: w.canonical_revision.clone(),
            cluster: "Kubernetes".into(),
        }
    }

    /// Labels for an unknown peer that proved an identity (or none).
    pub fn unknown(principal: Option<String>) -> Self {
        PeerLabels {
            principal: principal.unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The eight values, in the order of [`SOURCE_KEYS`] / [`DESTINATION_KEYS`].
    fn values(&self) -> [&str; 8] {
        [
            &self.workload,
            &self.canonical_service,
            &self.canonical_revision,
            &self.workload_namespace,
            &self.principal,
            &self.app,
            &self.version,
            &self.cluster,
        ]
    }
}

/// The source peer's label names, in Istio's order.
const SOURCE_KEYS: [&str; 8] = [
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
];

/// The destination peer's label names, in Istio's order.
const DESTINATION_KEYS: [&str; 8] = [
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
];

impl TrafficLabels {
    /// Sets the three destination_service labels from a service FQDN
    /// (`name.namespace.svc.cluster.local`).
    pub fn with_service(mut self, host: Option<&str>) -> Self {
        let (name, ns) = host
            .and_then(|h| {
                let mut parts = h.split('.');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .unwrap_or_default();
        self.destination_service = host.unwrap_or_default().to_string();
        self.destination_service_name = name;
        self.destination_service_namespace = ns;
        self
    }
}

impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pairs = [("reporter", self.reporter)]
            .into_iter()
            .chain(SOURCE_KEYS.into_iter().zip(self.source.values()))
            .chain([
                ("destination_service", self.destination_service.as_str()),
                (
                    "destination_service_namespace",
                    self.destination_service_namespace.as_str(),
                ),
                (
                    "destination_service_name",
                    self.destination_service_name.as_str(),
                ),
            ])
            .chain(DESTINATION_KEYS.into_iter().zip(self.destination.values()))
            .chain([
                ("request_protocol", self.request_protocol),
                ("response_flags", self.response_flags),
                (
                    "connection_security_policy",
                    self.connection_security_policy,
                ),
            ]);
        for (k, v) in pairs {
            (k, label_value(v)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// One series' counters. A connection looks its series up once when it
/// opens and holds it: closing touches atomics, not the labels map, and the
/// connection need not keep its labels (a dozen strings) for its whole life.
#[derive(Debug, Default)]
pub struct Series {
    opened: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
}

impl Series {
    /// A connection opened.
    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed after `received` bytes from client to server (the
    /// request direction, Istio's `istio_tcp_received_bytes`) and `sent`
    /// bytes back.
    pub fn closed(&self, received: u64, sent: u64) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// A connection failed or was refused.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A counter family: name (without `_total`), help text, and which
/// counter it reads.
type Family = (&'static str, &'static str, fn(&Series) -> u64);

/// Istio's TCP families, in its order.
const TCP_FAMILIES: [Family; 5] = [
    (
        "istio_tcp_connections_opened",
        "The total number of TCP connections opened.",
        |c| read(&c.opened),
    ),
    (
        "istio_tcp_connections_closed",
        "The total number of TCP connections closed.",
        |c| read(&c.closed),
    ),
    (
        "istio_tcp_connections_failed",
        "The total number of TCP connections that failed.",
        |c| read(&c.failed),
    ),
    (
        "istio_tcp_received_bytes",
        "The size of total bytes received during request in case of a TCP connection.",
        |c| read(&c.received),
    ),
    (
        "istio_tcp_sent_bytes",
        "The size of total bytes sent during response in case of a TCP connection.",
        |c| read(&c.sent),
    ),
];

/// The metric families ztunnel exports.
#[derive(Debug, Default)]
pub struct Metrics {
    traffic: Mutex<BTreeMap<TrafficLabels, Arc<Series>>>,
    xds_messages: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// The series for `l`, created on first use (the labels are cloned only then).
    pub fn series(&self, l: &TrafficLabels) -> Arc<Series> {
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        match t.get(l) {
            Some(s) => s.clone(),
            None => t.entry(l.clone()).or_default().clone(),
        }
    }

    /// An xDS response of `type_url` was received.
    pub fn xds_message(&self, type_url: &str) {
        let mut m = self.xds_messages.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(type_url.to_string()).or_default() += 1;
    }

    /// A connection failed or was refused (`response_flags` says why).
    pub fn failed(&self, l: &TrafficLabels) {
        self.series(l).failed();
    }

    /// The sum of `istio_tcp_connections_failed_total` over series whose labels
    /// satisfy `pred` (for tests and diagnostics).
    pub fn failed_where(&self, pred: impl Fn(&TrafficLabels) -> bool) -> u64 {
        let t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .filter(|(l, _)| pred(l))
            .map(|(_, c)| read(&c.failed))
            .sum()
    }

    /// The sum of `istio_tcp_connections_opened_total` over matching series.
    pub fn opened_where(&self, pred: impl Fn(&TrafficLabels) -> bool) -> u64 {
        let t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .filter(|(l, _)| pred(l))
            .map(|(_, c)| read(&c.opened))
            .sum()
    }

    /// Summed (closed connections, bytes received, bytes sent) over matching series.
    pub fn closed_where(&self, pred: impl Fn(&TrafficLabels) -> bool) -> (u64, u64, u64) {
        let t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .filter(|(l, _)| pred(l))
            .fold((0, 0, 0), |acc, (_, c)| {
                (
                    acc.0 + read(&c.closed),
                    acc.1 + read(&c.received),
                    acc.2 + read(&c.sent),
                )
            })
    }

    /// Every series with its opened and failed counts (for diagnostics and demos).
    pub fn snapshot(&self) -> Vec<(TrafficLabels, u64, u64)> {
        let t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .map(|(l, c)| (l.clone(), read(&c.opened), read(&c.failed)))
            .collect()
    }

    /// OpenMetrics text: these families plus `istio_build` and the
    /// `process_*` metrics.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = ambit_telemetry::registry("ztunnel");
        registry.register_collector(Box::new(self.clone()));
        ambit_telemetry::render(&registry)
    }
}

/// Encoded at scrape time from the series map: no per-family copies of the
/// label sets are kept.
impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        for (name, help, get) in TCP_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, series) in t.iter() {
                ConstCounter::new(get(series)).encode(family.encode_family(labels)?)?;
            }
        }
        drop(t);
        let xds = self.xds_messages.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = encoder.encode_descriptor(
            "istio_xds_message",
            "Total number of messages received (unstable).",
            None,
            MetricType::Counter,
        )?;
        for (url, n) in xds.iter() {
            ConstCounter::new(*n).encode(family.encode_family(&[("url", url.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_tcp_families_with_every_label() {
        let m = Arc::new(Metrics::default());
        let labels = TrafficLabels {
            reporter: "destination",
            source: PeerLabels::unknown(Some("spiffe://cluster.local/ns/a/sa/b".into())),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: "mutual_tls",
            ..Default::default()
        }
        .with_service(Some("echo.demo.svc.cluster.local"));
        let s = m.series(&labels);
        s.opened();
        s.closed(10, 20);
        m.xds_message("type.googleapis.com/istio.workload.Address");
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with("} 1"), "{line}");
        for want in [
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/a/sa/b\"",
            "source_workload=\"unknown\"",
            "destination_service=\"echo.demo.svc.cluster.local\"",
            "destination_service_name=\"echo\"",
            "destination_service_namespace=\"demo\"",
            "connection_security_policy=\"mutual_tls\"",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
        assert_eq!(line.matches('=').count(), 23, "Istio's 23 labels: {line}");
        assert!(text.contains("istio_tcp_received_bytes_total{"), "{text}");
        assert!(text.contains("} 10\n"), "{text}");
        assert!(
            text.contains(
                "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("istio_build{component=\"ztunnel\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
