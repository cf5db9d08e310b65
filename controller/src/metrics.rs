//! The controller's Prometheus endpoint (`:15014/metrics`, istiod's port),
//! with istiod's names where it has one: `pilot_xds` (connected streams),
//! `pilot_xds_pushes_total`, `pilot_total_xds_rejects_total` (NACKs), plus
//! Ambit's model gauges.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ambit_api::translate::Severity;
use ambit_proxy_core::admin::{self, Endpoints, Reply, Role};
use ambit_proxy_core::drain;
use ambit_telemetry::{Registry, gauge_family};
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

/// The controller's registry as the shared admin server shows it (the
/// metrics role only).
struct ControllerEndpoints(Registry);

impl Endpoints for ControllerEndpoints {
    fn pending(&self) -> Vec<String> {
        Vec::new()
    }
    fn metrics(&self) -> String {
        ambit_telemetry::render(&self.0)
    }
    fn config_dump(&self) -> Reply {
        Reply {
            status: http::StatusCode::NOT_FOUND,
            content_type: "text/plain",
            body: "the controller has no config_dump; see `ambit analyze`\n".into(),
        }
    }
}

/// Serves `/metrics` on `listener` (the shared admin server in its metrics
/// role) until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<XdsStats>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    let endpoints = Arc::new(ControllerEndpoints(registry(stats, snapshots)));
    admin::serve(endpoints, listener, Role::Metrics, drain::Watch::never()).await
}
