//! Istio's per-request metrics as the waypoint reports them
//! (`reporter="waypoint"`): `istio_requests_total` and the duration / request
//! size / response size histograms with Istio's label set and buckets,
//! rendered as Prometheus text on :15020.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

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
    /// Envoy response flags (`-`, `NR`, `UO`, `UF`, `URX`, `UT`, `FI`, `DI`, `RL`, `UH`, `UAEX`).
    pub response_flags: &'static str,
}

#[derive(Clone, Debug)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: usize) -> Self {
        Histogram {
            counts: vec![0; buckets],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
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
    pub retries: std::sync::atomic::AtomicU64,
    /// Copies sent to mirror destinations.
    pub mirrored: std::sync::atomic::AtomicU64,
    /// TCP (non-HTTP) connections refused by AuthorizationPolicy.
    pub tcp_denied: std::sync::atomic::AtomicU64,
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

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let series: Vec<(RequestLabels, Series)> = lock(&self.series)
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        let mut out = String::new();
        use std::sync::atomic::Ordering::Relaxed;
        let _ = writeln!(
            out,
            "# TYPE ambit_waypoint_upstream_retries_total counter\nambit_waypoint_upstream_retries_total {}\n# TYPE ambit_waypoint_mirrored_requests_total counter\nambit_waypoint_mirrored_requests_total {}\n# TYPE ambit_waypoint_tcp_denied_total counter\nambit_waypoint_tcp_denied_total {}",
            self.retries.load(Relaxed),
            self.mirrored.load(Relaxed),
            self.tcp_denied.load(Relaxed)
        );
        out.push_str("# TYPE istio_requests_total counter\n");
        for (l, s) in &series {
            let _ = writeln!(
                out,
                "istio_requests_total{{{}}} {}",
                label_text(l),
                s.requests
            );
        }
        for (name, bounds, pick) in [
            (
                "istio_request_duration_milliseconds",
                &DURATION_BUCKETS[..],
                (|s: &Series| &s.duration) as fn(&Series) -> &Histogram,
            ),
            ("istio_request_bytes", &SIZE_BUCKETS[..], |s: &Series| {
                &s.request_bytes
            }),
            ("istio_response_bytes", &SIZE_BUCKETS[..], |s: &Series| {
                &s.response_bytes
            }),
        ] {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (l, s) in &series {
                let h = pick(s);
                let text = label_text(l);
                for (b, c) in bounds.iter().zip(&h.counts) {
                    let _ = writeln!(out, "{name}_bucket{{{text},le=\"{b}\"}} {c}");
                }
                let _ = writeln!(out, "{name}_bucket{{{text},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{{text}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{text}}} {}", h.count);
            }
        }
        out
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

fn or_unknown(v: &str) -> &str {
    if v.is_empty() { "unknown" } else { v }
}

fn label_text(l: &RequestLabels) -> String {
    let mut s = String::from("reporter=\"waypoint\"");
    for (prefix, p) in [("source", &l.source), ("destination", &l.destination)] {
        let _ = write!(
            s,
            ",{prefix}_workload=\"{}\",{prefix}_workload_namespace=\"{}\",{prefix}_principal=\"{}\",{prefix}_app=\"{}\",{prefix}_version=\"{}\",{prefix}_canonical_service=\"{}\",{prefix}_canonical_revision=\"{}\",{prefix}_cluster=\"Kubernetes\"",
            esc(or_unknown(&p.workload)),
            esc(or_unknown(&p.namespace)),
            esc(or_unknown(&p.principal)),
            esc(or_unknown(&p.app)),
            esc(or_unknown(&p.version)),
            esc(or_unknown(&p.app)),
            esc(or_unknown(&p.version)),
        );
    }
    let _ = write!(
        s,
        ",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"\",response_flags=\"{}\",connection_security_policy=\"mutual_tls\"",
        esc(or_unknown(&l.destination_service)),
        esc(or_unknown(&l.destination_service_name)),
        esc(or_unknown(&l.destination_service_namespace)),
        l.request_protocol,
        l.response_code,
        l.response_flags,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_names_and_cumulative_buckets() {
        let m = Metrics::default();
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
        assert!(text.contains("le=\"5\"} 1\n"), "{text}");
        assert!(text.contains("le=\"50\"} 2\n"), "{text}");
        assert!(text.contains("istio_response_bytes_sum{"));
        assert_eq!(m.requests(|l| l.response_code == 200), 2);
    }
}
