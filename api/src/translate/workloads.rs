//! Pods and Services → workloads and services.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::l7::USE_WAYPOINT;
use super::waypoints::{Unbound, Waypoints};
use super::{Finding, Severity, Translation};
use crate::k8s::{AMBIENT, DATAPLANE_MODE, NONE, Resources, Source, object_ref};
use crate::model::{HealthStatus, Protocol, Service as MeshService, Workload};

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// Is `pod` in the mesh given its namespace object (if any)?
pub fn pod_in_mesh(pod: &Pod, namespace: Option<&Namespace>) -> bool {
    let pod_mode = labels(&pod.metadata).get(DATAPLANE_MODE).cloned();
    if pod_mode.as_deref() == Some(NONE) {
        return false;
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return false;
    }
    if pod_mode.as_deref() == Some(AMBIENT) {
        return true;
    }
    namespace.is_some_and(|n| {
        labels(&n.metadata).get(DATAPLANE_MODE).map(String::as_str) == Some(AMBIENT)
    })
}

/// Pods a local cluster runs: standalone Pods plus `replicas` pods per Deployment
/// (named `<deployment>-<i>`, labels, annotations and spec from the template,
/// `ambit.dev/deployment` recording the owner). Placement (node, IP) is left to
/// the caller.
pub fn expand_deployments(res: &Resources) -> Vec<(Source, Pod)> {
    let mut pods: Vec<(Source, Pod)> = res.pods.clone();
    for (source, d) in &res.deployments {
        let Some(spec) = &d.spec else { continue };
        let name = d.metadata.name.clone().unwrap_or_default();
        for i in 0..spec.replicas.unwrap_or(1).max(0) {
            let mut meta = spec.template.metadata.clone().unwrap_or_default();
            meta.name = Some(format!("{name}-{i}"));
            meta.namespace = Some(ns_of(&d.metadata));
            meta.labels
                .get_or_insert_with(Default::default)
                .insert("ambit.dev/deployment".into(), name.clone());
            pods.push((
                source.clone(),
                Pod {
                    metadata: meta,
                    spec: spec.template.spec.clone(),
                    status: None,
                },
            ));
        }
    }
    pods
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn hostname(svc: &Service) -> String {
    format!(
        "{}.{}.svc.cluster.local",
        svc.metadata.name.as_deref().unwrap_or_default(),
        ns_of(&svc.metadata)
    )
}

fn named_port(spec: Option<&PodSpec>, name: &str) -> Option<u16> {
    spec?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

fn waypoint_finding(source: &Source, object: String, why: &Unbound) -> Finding {
    Finding {
        severity: Severity::Warning,
        code: "",
        source: source.clone(),
        object,
        field: format!("metadata.labels[{USE_WAYPOINT}]"),
        message: why.to_string(),
    }
}

pub(super) fn translate_services(res: &Resources, waypoints: &Waypoints, out: &mut Translation) {
    for (source, svc) in &res.services {
        let object = object_ref("Service", &svc.metadata);
        let Some(spec) = &svc.spec else { continue };
        if spec.selector.as_ref().is_none_or(|s| s.is_empty())
            && spec.type_.as_deref() != Some("ExternalName")
        {
            out.findings.push(Finding {
                severity: Severity::Warning,
                code: "",
                source: source.clone(),
                object: object.clone(),
                field: "spec.selector".into(),
                message: "no selector: Ambit takes a Service's endpoints from the pods it selects \
                          and does not read EndpointSlices, so this Service has no endpoints in the mesh"
                    .into(),
            });
        }
        let waypoint = match waypoints.for_service(&labels(&svc.metadata), &ns_of(&svc.metadata)) {
            Ok(w) => w.map(|(ns, name)| waypoints.gateway_ref(&ns, &name)),
            Err(why) => {
                out.findings
                    .push(waypoint_finding(source, object.clone(), &why));
                None
            }
        };
        let mut ports = BTreeMap::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let Ok(port) = u16::try_from(p.port) else {
                out.findings.push(Finding {
                    severity: Severity::Error,
                    code: super::codes::SCHEMA_VALIDATION_ERROR,
                    source: source.clone(),
                    object: object.clone(),
                    field: format!("spec.ports[{i}].port"),
                    message: format!("{} is not a port number", p.port),
                });
                continue;
            };
            let target = match &p.target_port {
                None => port,
                Some(IntOrString::Int(t)) => u16::try_from(*t).unwrap_or(0),
                Some(IntOrString::String(_)) => 0, // per endpoint
            };
            ports.insert(port, target);
        }
        let vips = spec
            .cluster_ip
            .iter()
            .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
            .map(|ip| format!("/{ip}"))
            .collect();
        out.config.services.push(MeshService {
            name: svc.metadata.name.clone().unwrap_or_default(),
            namespace: ns_of(&svc.metadata),
            hostname: hostname(svc),
            vips,
            ports,
            subject_alt_names: vec![],
            waypoint,
        });
    }
}

pub(super) fn translate_pods(res: &Resources, waypoints: &Waypoints, out: &mut Translation) {
    // Index once: a pod only meets its own namespace's services and namespace.
    let mut services_by_ns: std::collections::HashMap<String, Vec<&Service>> =
        std::collections::HashMap::new();
    for (_, svc) in &res.services {
        services_by_ns
            .entry(ns_of(&svc.metadata))
            .or_default()
            .push(svc);
    }
    let namespaces: std::collections::HashMap<&str, &Namespace> = res
        .namespaces
        .iter()
        .filter_map(|(_, n)| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    for (source, pod) in &res.pods {
        let object = object_ref("Pod", &pod.metadata);
        let ns = ns_of(&pod.metadata);
        let namespace = namespaces.get(ns.as_str()).copied();
        let lbl = labels(&pod.metadata);
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
        else {
            out.findings.push(Finding {
                severity: Severity::Info,
                code: "",
                source: source.clone(),
                object,
                field: "status.podIP".into(),
                message: "pod has no IP yet; left out".into(),
            });
            continue;
        };
        let mut services = BTreeMap::new();
        for svc in services_by_ns.get(&ns).into_iter().flatten() {
            let Some(spec) = &svc.spec else { continue };
            if !spec.selector.as_ref().is_some_and(|sel| selects(sel, &lbl)) {
                continue;
            }
            let mut map = BTreeMap::new();
            for p in spec.ports.iter().flatten() {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let target = match &p.target_port {
                    None => Some(port),
                    Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
                    Some(IntOrString::String(name)) => named_port(pod.spec.as_ref(), name),
                };
                if let Some(t) = target {
                    map.insert(port, t);
                }
            }
            services.insert(format!("{ns}/{}", hostname(svc)), map);
        }
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|c| c.status == "True");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let waypoint_pod = waypoints.is_waypoint_pod(&lbl, &ns);
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let waypoint = match waypoints.for_workload(&lbl, &ns, &service_account) {
            Ok(w) => w.map(|(wns, wname)| waypoints.gateway_ref(&wns, &wname)),
            Err(why) => {
                // Only the pod's own label is worth a finding: a namespace
                // label usually means "its Services", not every pod.
                if lbl.contains_key(USE_WAYPOINT) {
                    out.findings
                        .push(waypoint_finding(source, object.clone(), &why));
                }
                None
            }
        };
        let app = lbl
            .get("app")
            .or_else(|| lbl.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_else(|| {
                lbl.get("ambit.dev/deployment")
                    .cloned()
                    .unwrap_or(name.clone())
            });
        out.config.workloads.push(Workload {
            uid: crate::model::pod_uid(&ns, &name),
            name: name.clone(),
            namespace: ns.clone(),
            workload_ips: vec![ip],
            services,
            // A waypoint is left out of capture but speaks HBONE itself.
            protocol: if waypoint_pod || pod_in_mesh(pod, namespace) {
                Protocol::Hbone
            } else {
                Protocol::Tcp
            },
            trust_domain: out.mesh.trust_domain.clone(),
            service_account,
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            status: if ready {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unhealthy
            },
            authorization_policies: vec![],
            canonical_name: app,
            canonical_revision: lbl
                .get("version")
                .cloned()
                .unwrap_or_else(|| "latest".into()),
            workload_name: lbl.get("ambit.dev/deployment").cloned().unwrap_or(name),
            waypoint,
        });
    }
}
