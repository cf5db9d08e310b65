//! Istio `telemetry.istio.io` `Telemetry`, as users write it. Ambit
//! interprets `tracing` (providers, `randomSamplingPercentage`,
//! `disableSpanReporting`) and `accessLogging` (providers, `disabled`) for
//! waypoints; other fields are accepted and reported by translation as
//! having no effect. Unknown fields are refused.

use serde::{Deserialize, Serialize};

use super::istio::{Object, TargetRef, WorkloadSelector};
use super::networking::Raw;

/// `Telemetry`.
pub type Telemetry = Object<TelemetrySpec>;

/// `Telemetry.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// Pods it applies to (sidecars and ztunnel; not waypoints).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Waypoint binding (deprecated single form).
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// Waypoint binding: a Gateway (the waypoint) or a Service.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// Tracing: which providers, how much is sampled.
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    /// Access logging: which providers, or off.
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
    /// Metrics overrides (reported, not interpreted).
    #[serde(default)]
    pub metrics: Raw,
}

/// One `spec.tracing[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// `CLIENT_AND_SERVER` (default), `CLIENT`, `SERVER`.
    #[serde(default, rename = "match")]
    pub match_: Raw,
    /// Extension providers (mesh config `extensionProviders[].name`); none:
    /// the mesh config's `defaultProviders.tracing`.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Percentage of traces sampled (0–100) when the caller did not decide.
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// Spans are not reported (headers are still propagated).
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    /// Extra span tags (reported, not interpreted).
    #[serde(default)]
    pub custom_tags: Raw,
    /// Envoy's request-id based sampling (reported, not interpreted).
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Raw,
    /// Trace context propagation choice (reported, not interpreted).
    #[serde(default)]
    pub enable_istio_tags: Raw,
}

/// One `spec.accessLogging[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// `CLIENT_AND_SERVER` (default), `CLIENT`, `SERVER` (reported).
    #[serde(default, rename = "match")]
    pub match_: Raw,
    /// Providers (`envoy`, or mesh config `extensionProviders` with
    /// `envoyFileAccessLog`); none: `defaultProviders.accessLogging`.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Turns access logging off.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// A CEL filter on what is logged (reported, not interpreted).
    #[serde(default)]
    pub filter: Raw,
}

/// `providers[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// The extension provider's name.
    pub name: String,
}
