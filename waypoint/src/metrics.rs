//! Istio's per-request metrics as the waypoint reports them
//! (`reporter="waypoint"`): `istio_requests_total` and the duration / request
//! size / response size histograms with Istio's label set and buckets,
//! exposed through `prometheus-client` on :15020 with `istio_build` and the
//! `process_*` metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_telemetry::label_value;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::sync::lock;

/// Istio's duration buckets (milliseconds).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes).
const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1e6, 1e7, 1e8];

/// One peer's labels (source or destination).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    /// `*_workload`.
    pub workload: String,
    /// `*_workload_namespace`.
    pub namespace: String,
    /// `*_principal` (`spiffe://...`).
    pub principal: String,
    /// `*_app` / canonical service.
    pub app: String,
    /// `*_version` / canonical revision.
    pub version: String,
}

/// The label set of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// Who sent it.
    pub source: Peer,
    /// The endpoint that served it (empty when none did).
    pub destination: Peer,
    /// `destination_service` (FQDN).
    pub destination_service: String,
    /// `destination_service_name`.
    pub destination_service_name: String,
    /// `destination_service_namespace`.
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// The status sent to the client.
    pub response_code: u16,
    /// Envoy response flags (`-`, `NR`, `UO`, `UF`, `UR`, `URX`, `UT`, `FI`, `DI`, `DC`, `RL`, `UH`).
    pub response_flags: &'static str,
}

/// Per-bucket counts (not cumulative; the last bucket is `+Inf`), sum
/// and count: one increment per observation.
#[derive(Clone, Debug)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: usize) -> Self {
        Histogram {
            counts: vec![0; buckets + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `(upper bound, count)` pairs as the encoder wants them, `+Inf` last.
    fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Series {
    requests: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The waypoint's request metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<HashMap<RequestLabels, Series>>,
    /// Upstream attempts made again (Envoy's `upstream_rq_retry`).
    pub retries: AtomicU64,
    /// Copies sent to mirror destinations.
    pub mirrored: AtomicU64,
    /// TCP (non-HTTP) connections refused by AuthorizationPolicy.
    pub tcp_denied: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(
        &self,
        labels: RequestLabels,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let mut series = lock(&self.series);
        let s = series.entry(labels).or_insert_with(|| Series {
            requests: 0,
            duration: Histogram::new(DURATION_BUCKETS.len()),
            request_bytes: Histogram::new(SIZE_BUCKETS.len()),
            response_bytes: Histogram::new(SIZE_BUCKETS.len()),
        });
        s.requests += 1;
        s.duration.observe(&DURATION_BUCKETS, duration_ms);
        s.request_bytes.observe(&SIZE_BUCKETS, request_bytes as f64);
        s.response_bytes
            .observe(&SIZE_BUCKETS, response_bytes as f64);
    }

    /// Sum of `istio_requests_total` over series matching `filter`.
    pub fn requests(&self, filter: impl Fn(&RequestLabels) -> bool) -> u64 {
        lock(&self.series)
            .iter()
            .filter(|(l, _)| filter(l))
            .map(|(_, s)| s.requests)
            .sum()
    }

    /// OpenMetrics text: these families plus `istio_build` and the
    /// `process_*` metrics.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = ambit_telemetry::registry("waypoint");
        registry.register_collector(Box::new(self.clone()));
        ambit_telemetry::render(&registry)
    }
}

/// Which histogram of a series a family reads.
type HistogramFamily = (
    &'static str,
    &'static str,
    &'static [f64],
    fn(&Series) -> &Histogram,
);

/// Istio's request histograms.
const HISTOGRAMS: [HistogramFamily; 3] = [
    (
        "istio_request_duration_milliseconds",
        "Request duration in milliseconds.",
        &DURATION_BUCKETS,
        |s| &s.duration,
    ),
    (
        "istio_request_bytes",
        "Request body size in bytes.",
        &SIZE_BUCKETS,
        |s| &s.request_bytes,
    ),
    (
        "istio_response_bytes",
        "Response body size in bytes.",
        &SIZE_BUCKETS,
        |s| &s.response_bytes,
    ),
];

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "ambit_waypoint_upstream_retries",
                "Upstream attempts made again.",
                &self.retries,
            ),
            (
                "ambit_waypoint_mirrored_requests",
                "Copies sent to mirror destinations.",
                &self.mirrored,
            ),
            (
                "ambit_waypoint_tcp_denied",
                "TCP connections refused by AuthorizationPolicy.",
                &self.tcp_denied,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(family)?;
        }
        // A copy, so requests are not held up while the page is written.
        let series: Vec<(RequestLabels, Series)> = lock(&self.series)
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        let mut family = encoder.encode_descriptor(
            "istio_requests",
            "Requests served.",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &series {
            ConstCounter::new(s.requests).encode(family.encode_family(labels)?)?;
        }
        for (name, help, bounds, pick) in HISTOGRAMS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, s) in &series {
                let h = pick(s);
                family
                    .encode_family(labels)?
                    .encode_histogram::<NoExemplar>(h.sum, h.count, &h.buckets(bounds), None)?;
            }
        }
        Ok(())
    }
}

/// Histograms here carry no exemplars.
type NoExemplar = [(&'static str, &'static str); 0];

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let code = self.response_code.to_string();
        let mut pairs: Vec<(&str, &str)> = vec![("reporter", "waypoint")];
        for (keys, p) in [
            (&SOURCE_KEYS, &self.source),
            (&DESTINATION_KEYS, &self.destination),
        ] {
            let values = [
                p.workload.as_str(),
                &p.namespace,
                &p.principal,
                &p.app,
                &p.version,
                &p.app,
                &p.version,
                "Kubernetes",
            ];
            pairs.extend(
                keys.iter()
                    .copied()
                    .zip(values.iter().map(|v| label_value(v))),
            );
        }
        pairs.extend([
            (
                "destination_service",
                label_value(&self.destination_service),
            ),
            (
                "destination_service_name",
                label_value(&self.destination_service_name),
            ),
            (
                "destination_service_namespace",
                label_value(&self.destination_service_namespace),
            ),
            ("request_protocol", self.request_protocol),
            ("response_code", code.as_str()),
            ("grpc_response_status", ""),
            ("response_flags", self.response_flags),
            ("connection_security_policy", "mutual_tls"),
        ]);
        for pair in pairs {
            pair.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// A peer's label names, in the order the waypoint writes them.
const SOURCE_KEYS: [&str; 8] = [
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
];

/// The destination peer's label names.
const DESTINATION_KEYS: [&str; 8] = [
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_names_and_cumulative_buckets() {
        let m = Arc::new(Metrics::default());
        let l = RequestLabels {
            destination_service: "reviews.bookinfo.svc.cluster.local".into(),
            request_protocol: "http",
            response_code: 200,
            response_flags: "-",
            ..Default::default()
        };
        m.record(l.clone(), 3.0, 10, 2000);
        m.record(l, 30.0, 0, 5);
        let text = m.render();
        assert!(
            text.contains("istio_requests_total{reporter=\"waypoint\""),
            "{text}"
        );
        assert!(text.contains("response_code=\"200\""));
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "istio_request_duration_milliseconds_bucket{{le=\"{le}\","
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        assert_eq!(bucket("1.0"), Some(0), "{text}");
        assert_eq!(bucket("5.0"), Some(1), "cumulative: {text}");
        assert_eq!(bucket("50.0"), Some(2), "{text}");
        assert_eq!(bucket("+Inf"), Some(2), "{text}");
        assert!(text.contains("istio_response_bytes_sum{"));
        assert!(
            text.contains("istio_build{component=\"waypoint\""),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.requests(|l| l.response_code == 200), 2);
    }
}
