//! Prometheus exposition shared by ztunnel, the waypoint and the controller,
//! on `prometheus-client` (what Istio's ztunnel uses): one [`Registry`] per
//! process with Istio's `istio_build` and the standard `process_*` metrics,
//! plus the component's own collectors, rendered as OpenMetrics text.
//!
//! Components keep their hot-path counters in their own structures (one
//! lookup per connection, atomics after that) and expose them through a
//! [`Collector`] at scrape time; nothing is copied per request.

pub mod process;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

/// Istio's `istio_build{component, tag} 1`.
#[derive(Debug)]
struct BuildInfo {
    component: &'static str,
}

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "istio_build",
            "Istio component build info",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("component", self.component),
            ("tag", env!("CARGO_PKG_VERSION")),
        ];
        ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)
    }
}

/// Istio writes a label it does not know as `unknown`, never as empty.
pub fn label_value(v: &str) -> &str {
    if v.is_empty() { "unknown" } else { v }
}

/// The label set of a series that has none.
const NO_LABELS: [(&str, &str); 0] = [];

/// One gauge family; each series carries at most one label.
pub fn gauge_family<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Option<(&str, &str)>, N)],
) -> Result<(), std::fmt::Error>
where
    N: EncodeGaugeValue + Copy + std::fmt::Debug,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (label, v) in series {
        match label {
            Some(l) => ConstGauge::new(*v).encode(family.encode_family(&[*l])?)?,
            None => ConstGauge::new(*v).encode(family.encode_family(&NO_LABELS)?)?,
        }
    }
    Ok(())
}

/// A registry for `component` (`ztunnel`, `waypoint`, `pilot`) holding
/// `istio_build` and the `process_*` metrics; add the component's own
/// collectors with [`Registry::register_collector`].
pub fn registry(component: &'static str) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BuildInfo { component }));
    registry.register_collector(Box::new(process::ProcessCollector));
    registry
}

/// The registry as OpenMetrics text (`# EOF` last).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a
    // collector, and a partial page beats none.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_process_metrics_render() {
        let text = render(&registry("ztunnel"));
        assert!(
            text.contains(&format!(
                "istio_build{{component=\"ztunnel\",tag=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
