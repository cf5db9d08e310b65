//! Telemetry for waypoints: which OpenTelemetry collector gets a Service's
//! spans and how many traces are sampled, and whether its requests are
//! access-logged.
//!
//! As Istio, for each of the two the most specific Telemetry that speaks
//! about it wins: one whose `targetRefs` name the Service or its waypoint
//! (Gateway), then one in the waypoint's namespace without a selector, then
//! one in the root namespace; with none, the mesh config.
//!
//! Tracing: the first `tracing` entry names providers (mesh config
//! `extensionProviders`, OpenTelemetry only; none: `defaultProviders.tracing`)
//! and `randomSamplingPercentage` (default `defaultConfig.tracing.sampling`,
//! 1%); `disableSpanReporting` turns spans off. The controller resolves the
//! collector Service to its endpoints, as Envoy's cluster would.
//!
//! Access logging: the first `accessLogging` entry turns it on (providers
//! `envoy` or an `envoyFileAccessLog` extension provider; none:
//! `defaultProviders.accessLogging`) or off (`disabled: true`). With no
//! Telemetry it is on when the mesh config sets `accessLogFile` or
//! `defaultProviders.accessLogging`, as Istio's Envoy logs. Lines go to the
//! waypoint's own log (target `access`).
//!
//! Everything else in a Telemetry is reported: `metrics` (not interpreted),
//! `selector` (selects pods, which waypoints are not), `customTags`,
//! `filter` and the other knobs.

use super::Translation;
use super::l7::Ctx;
use super::mesh::{MeshConfig, ROOT_NAMESPACE};
use crate::k8s::telemetry::Telemetry;
use crate::k8s::{Resources, object_ref};
use crate::model::LocalConfig;
use crate::xds::proto::l7 as pb;

/// Where one Telemetry applies.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    /// Root namespace, no selector, no targets: every waypoint.
    Mesh,
    /// A namespace, no selector, no targets.
    Namespace(String),
    /// `targetRefs`: `(kind, namespace, name)`.
    Targets(Vec<(String, String, String)>),
}

/// One Telemetry, checked.
#[derive(Clone, Debug)]
struct Entry {
    scope: Scope,
    /// `None`: says nothing about tracing; `Some(None)`: spans off (or no
    /// usable provider).
    tracing: Option<Option<(crate::translate::mesh::TracingProvider, f64)>>,
    /// `None`: says nothing about access logging; `Some(on)`.
    access_log: Option<bool>,
    source: String,
}

/// Every Telemetry with a `tracing` entry, checked once.
#[derive(Debug, Default)]
pub(super) struct TelemetryPolicies {
    entries: Vec<Entry>,
}

impl TelemetryPolicies {
    /// Reads every Telemetry of `res`, reporting what Ambit does not
    /// interpret.
    pub(super) fn new(res: &Resources, out: &mut Translation) -> Self {
        let mesh = out.mesh.clone();
        let mut entries = Vec::new();
        for (source, t) in &res.telemetries {
            let mut ctx = Ctx::new(
                &mut out.findings,
                source,
                object_ref("Telemetry", &t.metadata),
            );
            if let Some(e) = entry(&mut ctx, t, &mesh) {
                entries.push(e);
            }
        }
        TelemetryPolicies { entries }
    }

    /// The most specific entry for Service `name` in `ns` served by
    /// `waypoints` among those `speaks` about the field.
    fn most_specific(
        &self,
        ns: &str,
        name: &str,
        waypoints: &[(String, String)],
        speaks: impl Fn(&Entry) -> bool,
    ) -> Option<&Entry> {
        let targeted = |e: &&Entry| match &e.scope {
            Scope::Targets(t) => t.iter().any(|(kind, tns, tname)| {
                (kind == "Service" && tns == ns && tname == name)
                    || (kind == "Gateway"
                        && waypoints.iter().any(|(wns, w)| wns == tns && w == tname))
            }),
            _ => false,
        };
        let in_namespace = |e: &&Entry| match &e.scope {
            Scope::Namespace(n) => waypoints.iter().any(|(wns, _)| wns == n) || n == ns,
            _ => false,
        };
        let candidates = || self.entries.iter().filter(|e| speaks(e));
        candidates()
            .find(targeted)
            .or_else(|| candidates().find(in_namespace))
            .or_else(|| candidates().find(|e| e.scope == Scope::Mesh))
    }

    /// Whether Service `name` in `ns`, served by `waypoints`, is access-logged.
    pub(super) fn access_log_for(
        &self,
        ns: &str,
        name: &str,
        waypoints: &[(String, String)],
        mesh: &MeshConfig,
    ) -> Option<pb::AccessLog> {
        match self.most_specific(ns, name, waypoints, |e| e.access_log.is_some()) {
            Some(e) => (e.access_log == Some(true)).then(|| pb::AccessLog {
                source: e.source.clone(),
            }),
            None => (!mesh.access_log_file.is_empty()
                || !mesh.default_access_log_providers.is_empty())
            .then(|| pb::AccessLog {
                source: "mesh config".into(),
            }),
        }
    }

    /// The tracing of Service `name` in `ns`, served by `waypoints`
    /// (`(namespace, gateway)`), with its collector resolved in `config`.
    pub(super) fn for_service(
        &self,
        ns: &str,
        name: &str,
        waypoints: &[(String, String)],
        mesh: &MeshConfig,
        config: &LocalConfig,
    ) -> Option<pb::Tracing> {
        let chosen = self.most_specific(ns, name, waypoints, |e| e.tracing.is_some());
        let (provider, sampling, source) = match chosen {
            Some(e) => {
                let (p, s) = e.tracing.clone().flatten()?;
                (p, s, e.source.clone())
            }
            None => {
                let p = mesh
                    .default_tracing_providers
                    .iter()
                    .find_map(|n| mesh.extension_providers.iter().find(|p| &p.name == n))?;
                (
                    p.clone(),
                    f64::from(mesh.tracing_sampling_millipercent) / 1000.0,
                    "mesh config defaultProviders.tracing".into(),
                )
            }
        };
        Some(pb::Tracing {
            endpoints: collector_endpoints(&provider, config),
            service: format!("{}:{}", provider.service, provider.port),
            provider: provider.name,
            sampling_percentage: sampling,
            source,
        })
    }
}

/// Checks one Telemetry; `None` when it says nothing about tracing for
/// waypoints.
fn entry(ctx: &mut Ctx<'_>, t: &Telemetry, mesh: &MeshConfig) -> Option<Entry> {
    let spec = &t.spec;
    let ns = t
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if spec.metrics.is_some() {
        ctx.warn(
            "spec.metrics".into(),
            "not interpreted: Istio's standard metrics are always exported",
        );
    }
    let mut targets: Vec<_> = spec.target_refs.iter().chain(&spec.target_ref).collect();
    targets.retain(|r| {
        let ok = r.kind == "Gateway" || r.kind == "Service";
        if !ok {
            ctx.warn(
                "spec.targetRefs".into(),
                format!(
                    "kind {} is not a waypoint Gateway or a Service: ignored",
                    r.kind
                ),
            );
        }
        ok
    });
    if spec.selector.is_some() {
        ctx.warn(
            "spec.selector".into(),
            "selects pods (sidecars, ztunnel), not waypoints: use targetRefs to reach a waypoint; no effect here",
        );
        if targets.is_empty() {
            return None;
        }
    }
    let scope = if !targets.is_empty() {
        Scope::Targets(
            targets
                .iter()
                .map(|r| {
                    (
                        r.kind.clone(),
                        r.namespace.clone().unwrap_or_else(|| ns.clone()),
                        r.name.clone(),
                    )
                })
                .collect(),
        )
    } else if ns == ROOT_NAMESPACE {
        Scope::Mesh
    } else {
        Scope::Namespace(ns.clone())
    };
    let source = format!("{ns}/{}", t.metadata.name.clone().unwrap_or_default());
    let access_log = access_logging(ctx, t, mesh);
    let tracing = tracing(ctx, t, mesh);
    (tracing.is_some() || access_log.is_some()).then_some(Entry {
        scope,
        tracing,
        access_log,
        source,
    })
}

/// The first `accessLogging` entry: on or off (`None`: none given).
fn access_logging(ctx: &mut Ctx<'_>, t: &Telemetry, mesh: &MeshConfig) -> Option<bool> {
    let first = t.spec.access_logging.first()?;
    if t.spec.access_logging.len() > 1 {
        ctx.warn(
            "spec.accessLogging[1]".into(),
            "only the first accessLogging entry is interpreted",
        );
    }
    for (field, set) in [
        ("match", first.match_.is_some()),
        ("filter", first.filter.is_some()),
    ] {
        if set {
            ctx.warn(
                format!("spec.accessLogging[0].{field}"),
                "not interpreted: every request is logged",
            );
        }
    }
    if first.disabled == Some(true) {
        return Some(false);
    }
    let names: Vec<String> = if first.providers.is_empty() {
        mesh.default_access_log_providers.clone()
    } else {
        first.providers.iter().map(|p| p.name.clone()).collect()
    };
    let known = |n: &String| n == "envoy" || mesh.access_log_providers.contains(n);
    if !names.is_empty() && !names.iter().any(known) {
        ctx.error(
            "spec.accessLogging[0].providers".into(),
            format!(
                "{names:?}: not `envoy` nor an envoyFileAccessLog extensionProvider in the mesh config: no access log"
            ),
        );
        return Some(false);
    }
    Some(true)
}

/// The first `tracing` entry: the provider and sampling, or spans off
/// (`None`: none given).
#[allow(clippy::type_complexity)]
fn tracing(
    ctx: &mut Ctx<'_>,
    t: &Telemetry,
    mesh: &MeshConfig,
) -> Option<Option<(crate::translate::mesh::TracingProvider, f64)>> {
    let spec = &t.spec;
    let first = spec.tracing.first()?;
    if spec.tracing.len() > 1 {
        ctx.warn(
            "spec.tracing[1]".into(),
            "only the first tracing entry is interpreted",
        );
    }
    for (field, set) in [
        ("match", first.match_.is_some()),
        ("customTags", first.custom_tags.is_some()),
        (
            "useRequestIdForTraceSampling",
            first.use_request_id_for_trace_sampling.is_some(),
        ),
        ("enableIstioTags", first.enable_istio_tags.is_some()),
    ] {
        if set {
            ctx.warn(
                format!("spec.tracing[0].{field}"),
                "not interpreted: no effect",
            );
        }
    }
    let sampling = match first.random_sampling_percentage {
        Some(p) if (0.0..=100.0).contains(&p) => p,
        Some(p) => {
            ctx.error(
                "spec.tracing[0].randomSamplingPercentage".into(),
                format!("{p} is not a percentage (0 to 100): no spans are reported"),
            );
            return Some(None);
        }
        None => f64::from(mesh.tracing_sampling_millipercent) / 1000.0,
    };
    if first.disable_span_reporting == Some(true) {
        return Some(None);
    }
    let names: Vec<String> = if first.providers.is_empty() {
        mesh.default_tracing_providers.clone()
    } else {
        first.providers.iter().map(|p| p.name.clone()).collect()
    };
    let provider = names
        .iter()
        .find_map(|n| mesh.extension_providers.iter().find(|p| &p.name == n))
        .cloned();
    if provider.is_none() {
        ctx.error(
            "spec.tracing[0].providers".into(),
            format!(
                "{names:?}: no opentelemetry extensionProvider of that name in the mesh config: no spans are reported"
            ),
        );
    }
    Some(provider.map(|p| (p, sampling)))
}

/// The collector Service's endpoints (`ip:targetPort`): `service` is
/// `hostname` or `namespace/hostname`.
fn collector_endpoints(
    provider: &crate::translate::mesh::TracingProvider,
    config: &LocalConfig,
) -> Vec<String> {
    let (ns, host) = match provider.service.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, provider.service.as_str()),
    };
    let Some(svc) = config
        .services
        .iter()
        .find(|s| s.hostname == host && ns.is_none_or(|n| n == s.namespace))
    else {
        return vec![];
    };
    let key = svc.key();
    let mut out: Vec<String> = config
        .workloads
        .iter()
        .filter_map(|w| {
            let ports = w.services.get(&key)?;
            let target = ports
                .get(&provider.port)
                .copied()
                .filter(|t| *t != 0)
                .or_else(|| svc.ports.get(&provider.port).copied().filter(|t| *t != 0))
                .unwrap_or(provider.port);
            let ip = w.workload_ips.first()?;
            Some(std::net::SocketAddr::new(*ip, target).to_string())
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use crate::k8s::Resources;
    use crate::translate::{Severity, translate};

    const MESH: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {service: collector.observability.svc.cluster.local, port: 4317}
    - name: zipkin
      zipkin: {service: zipkin.observability.svc.cluster.local, port: 9411}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: collector, namespace: observability}
spec: {clusterIP: 10.96.0.30, selector: {app: otel}, ports: [{name: grpc, port: 4317, targetPort: 14317}]}
---
apiVersion: v1
kind: Pod
metadata: {name: otel-0, namespace: observability, labels: {app: otel}}
spec: {nodeName: node1, containers: [{name: c, image: x, ports: [{containerPort: 14317}]}]}
status: {podIP: 10.244.1.9}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{providers: [{name: otel}], randomSamplingPercentage: 100}]
"#;

    fn run(extra: &str) -> crate::translate::Translation {
        let mut r = Resources::default();
        r.add_yaml(&format!("{MESH}---\n{extra}"), "t.yaml")
            .expect("yaml");
        translate(&r)
    }

    fn web_tracing(t: &crate::translate::Translation) -> Option<crate::xds::proto::l7::Tracing> {
        t.l7.iter()
            .find(|s| s.name == "web")
            .expect("web bound to the waypoint")
            .tracing
            .clone()
    }

    #[test]
    fn mesh_wide_tracing_reaches_the_collector_endpoints() {
        let t = run("");
        let tr = web_tracing(&t).expect("tracing");
        assert_eq!(tr.provider, "otel");
        assert_eq!(tr.endpoints, vec!["10.244.1.9:14317"]);
        assert_eq!(tr.sampling_percentage, 100.0);
        assert_eq!(tr.source, "istio-system/mesh-default");
        // The zipkin provider is reported, not silently dropped.
        assert!(
            t.findings
                .iter()
                .any(|f| f.field == "data.mesh.extensionProviders[1]"
                    && f.severity == Severity::Warning),
            "{:#?}",
            t.findings
        );
    }

    #[test]
    fn the_most_specific_telemetry_wins() {
        // The namespace's overrides the mesh's sampling...
        let ns = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: shop, namespace: shop}\n\
                  spec: {tracing: [{randomSamplingPercentage: 5, providers: [{name: otel}]}]}\n";
        assert_eq!(
            web_tracing(&run(ns)).expect("tracing").sampling_percentage,
            5.0
        );
        // ...and one aimed at the waypoint turns spans off for it.
        let off = format!(
            "{ns}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: quiet, namespace: shop}}\n\
             spec: {{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}], tracing: [{{disableSpanReporting: true}}]}}\n"
        );
        assert_eq!(web_tracing(&run(&off)), None);
    }

    #[test]
    fn unknown_providers_and_uninterpreted_fields_are_findings() {
        let bad = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: shop, namespace: shop}\n\
                   spec: {metrics: [{overrides: []}], accessLogging: [{providers: [{name: splunk}]}], tracing: [{providers: [{name: jaeger}], customTags: {a: {literal: {value: b}}}}]}\n";
        let t = run(bad);
        let field = |f: &str| {
            t.findings
                .iter()
                .find(|x| x.field == f && x.object.contains("Telemetry shop/shop"))
                .map(|x| x.severity)
        };
        assert_eq!(field("spec.tracing[0].providers"), Some(Severity::Error));
        assert_eq!(field("spec.tracing[0].customTags"), Some(Severity::Warning));
        assert_eq!(field("spec.metrics"), Some(Severity::Warning));
        assert_eq!(
            field("spec.accessLogging[0].providers"),
            Some(Severity::Error)
        );
        // The broken namespace Telemetry is the most specific: no spans
        // rather than the mesh's choice.
        assert_eq!(web_tracing(&t), None);
    }

    fn web_access_log(t: &crate::translate::Translation) -> Option<String> {
        t.l7.iter()
            .find(|s| s.name == "web")
            .expect("web bound to the waypoint")
            .access_log
            .as_ref()
            .map(|a| a.source.clone())
    }

    #[test]
    fn access_logging_follows_the_most_specific_telemetry() {
        // No Telemetry says anything and no accessLogFile: off, as Envoy.
        assert_eq!(web_access_log(&run("")), None);
        // The mesh turns it on...
        let on = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: logs, namespace: istio-system}\n\
                  spec: {accessLogging: [{providers: [{name: envoy}]}]}\n";
        assert_eq!(
            web_access_log(&run(on)).as_deref(),
            Some("istio-system/logs")
        );
        // ...the waypoint's own Telemetry turns it off, without touching
        // tracing (each field has its own most specific Telemetry).
        let off = format!(
            "{on}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: quiet, namespace: shop}}\n\
             spec: {{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}], accessLogging: [{{disabled: true}}]}}\n"
        );
        let t = run(&off);
        assert_eq!(web_access_log(&t), None);
        assert_eq!(
            web_tracing(&t).map(|t| t.source),
            Some("istio-system/mesh-default".into())
        );
    }
}
