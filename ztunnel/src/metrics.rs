//! Istio's TCP metrics (istio-wire §6) with the full traffic label set for both
//! reporters, rendered as OpenMetrics text, plus one access-log line per connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::state::Workload;

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

    fn write(&self, prefix: &str, out: &mut String) {
        for (k, v) in [
            ("workload", &self.workload),
            ("canonical_service", &self.canonical_service),
            ("canonical_revision", &self.canonical_revision),
            ("workload_namespace", &self.workload_namespace),
            ("principal", &self.principal),
            ("app", &self.app),
            ("version", &self.version),
            ("cluster", &self.cluster),
        ] {
            label(out, &format!("{prefix}_{k}"), v);
        }
    }
}

fn label(out: &mut String, k: &str, v: &str) {
    let v = if v.is_empty() { "unknown" } else { v };
    let escaped = v
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let _ = write!(out, "{k}=\"{escaped}\",");
}

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

    fn render(&self) -> String {
        let mut out = String::new();
        label(&mut out, "reporter", self.reporter);
        self.source.write("source", &mut out);
        label(&mut out, "destination_service", &self.destination_service);
        label(
            &mut out,
            "destination_service_namespace",
            &self.destination_service_namespace,
        );
        label(
            &mut out,
            "destination_service_name",
            &self.destination_service_name,
        );
        self.destination.write("destination", &mut out);
        label(&mut out, "request_protocol", self.request_protocol);
        label(&mut out, "response_flags", self.response_flags);
        label(
            &mut out,
            "connection_security_policy",
            self.connection_security_policy,
        );
        out.pop();
        out
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

/// A counter family: name, help text, and which counter it reads.
type Family = (&'static str, &'static str, fn(&Series) -> u64);

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

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let families: [Family; 5] = [
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
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, c) in t.iter() {
                let _ = writeln!(out, "{name}_total{{{}}} {}", l.render(), get(c));
            }
        }
        let xds = self.xds_messages.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP istio_xds_message Total number of messages received (unstable).\n# TYPE istio_xds_message counter"
        );
        for (url, n) in xds.iter() {
            let _ = writeln!(out, "istio_xds_message_total{{url=\"{url}\"}} {n}");
        }
        out.push_str("# EOF\n");
        out
    }
}
