//! The controller's Prometheus endpoint (`:15014/metrics`, istiod's port),
//! with istiod's names where it has one: `pilot_xds` (connected streams),
//! `pilot_xds_pushes_total`, `pilot_total_xds_rejects_total` (NACKs), plus
//! Ambit's model gauges.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ambit_api::translate::Severity;
use ambit_telemetry::{Registry, gauge_family};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::Snapshot;
use crate::xds::XdsStats;

/// The controller's own families, read at scrape time from the xDS counters
/// and the latest snapshot.
struct ControllerCollector {
    stats: Arc<XdsStats>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl std::fmt::Debug for ControllerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for ControllerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        gauge_family(
            &mut encoder,
            "pilot_xds",
            "Number of endpoints connected to this controller using xDS.",
            &[(None, as_i64(load(&self.stats.connections)))],
        )?;
        for (name, help, value) in [
            (
                "pilot_xds_pushes",
                "xDS responses sent.",
                load(&self.stats.responses),
            ),
            (
                "pilot_total_xds_rejects",
                "xDS responses rejected (NACKed) by proxies.",
                load(&self.stats.nacks),
            ),
            (
                "ambit_xds_resources_sent",
                "Resources sent in xDS responses.",
                load(&self.stats.resources_sent),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let snap = self.snapshots.borrow().clone();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge_family(
            &mut encoder,
            "ambit_model_generation",
            "Snapshots published.",
            &[(None, as_i64(snap.generation))],
        )?;
        gauge_family(
            &mut encoder,
            "ambit_model_resources",
            "Resources in the current snapshot.",
            &[
                (Some(("type", "Address")), count(snap.addresses.len())),
                (
                    Some(("type", "Authorization")),
                    count(snap.authorizations.len()),
                ),
                (Some(("type", "L7Service")), count(snap.l7.len())),
            ],
        )?;
        let findings = |sev| count(snap.findings.iter().filter(|f| f.severity == sev).count());
        gauge_family(
            &mut encoder,
            "ambit_config_findings",
            "Validation findings in the current config.",
            &[
                (Some(("severity", "error")), findings(Severity::Error)),
                (Some(("severity", "warning")), findings(Severity::Warning)),
                (Some(("severity", "info")), findings(Severity::Info)),
            ],
        )
    }
}

/// The controller's registry: `istio_build{component="pilot"}`, the
/// `process_*` metrics, and [`ControllerCollector`]'s families.
pub fn registry(stats: Arc<XdsStats>, snapshots: watch::Receiver<Arc<Snapshot>>) -> Registry {
    let mut registry = ambit_telemetry::registry("pilot");
    registry.register_collector(Box::new(ControllerCollector { stats, snapshots }));
    registry
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<XdsStats>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    let registry = Arc::new(registry(stats, snapshots));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let body =
                    if req.uri().path() == "/metrics" || req.uri().path() == "/stats/prometheus" {
                        Some(ambit_telemetry::render(&registry))
                    } else {
                        None
                    };
                async move {
                    let mut resp = match body {
                        Some(b) => http::Response::new(Full::new(Bytes::from(b))),
                        None => {
                            let mut r =
                                http::Response::new(Full::new(Bytes::from_static(b"not found\n")));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
