//! Which waypoint, if any, a Service or a pod uses (Istio ambient's rules).
//!
//! A waypoint is a Gateway API `Gateway` with `gatewayClassName:
//! istio-waypoint`; its `istio.io/waypoint-for` label says what traffic it
//! takes (`service`, the default; `workload`; `all`; `none`). A Service or pod
//! opts in with `istio.io/use-waypoint: NAME` on itself or its namespace (the
//! object's label wins; `none` opts out), optionally naming another namespace
//! with `istio.io/use-waypoint-namespace`. The waypoint is reached through
//! its Service `NAME.NS.svc.cluster.local` on 15008, and its own pods
//! (`gateway.networking.k8s.io/gateway-name: NAME`) speak HBONE natively.

use std::collections::BTreeMap;

use crate::k8s::Resources;
use crate::model::GatewayRef;

use super::l7::{USE_WAYPOINT, WAYPOINT_CLASS};

/// The label saying which traffic a waypoint takes.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// The label naming the namespace of the waypoint in `istio.io/use-waypoint`.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Gateway annotation binding a waypoint to every pod in its namespace that
/// runs as this service account (one waypoint per service account).
pub const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
/// The label Gateway API puts on a Gateway's pods and Service.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// What traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    /// Traffic to Service VIPs (the default).
    Service,
    /// Traffic to pod IPs.
    Workload,
    /// Both.
    All,
    /// Neither.
    None,
}

impl TrafficType {
    fn parse(label: Option<&String>) -> Self {
        match label.map(String::as_str) {
            Some("workload") => TrafficType::Workload,
            Some("all") => TrafficType::All,
            Some("none") => TrafficType::None,
            _ => TrafficType::Service,
        }
    }

    fn takes_services(self) -> bool {
        matches!(self, TrafficType::Service | TrafficType::All)
    }

    fn takes_workloads(self) -> bool {
        matches!(self, TrafficType::Workload | TrafficType::All)
    }
}

/// Every waypoint Gateway, by (namespace, name), and the namespaces' labels.
#[derive(Clone, Debug, Default)]
pub struct Waypoints {
    gateways: BTreeMap<(String, String), TrafficType>,
    /// (namespace, service account) → waypoint name.
    by_service_account: BTreeMap<(String, String), String>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why an object's waypoint binding does not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unbound {
    /// No such waypoint Gateway.
    Missing(String),
    /// The waypoint does not take this kind of traffic.
    WrongType(String, TrafficType),
}

impl Waypoints {
    /// Collects the waypoints in `res`.
    pub fn new(res: &Resources) -> Self {
        let gateways = res
            .gateways
            .iter()
            .filter(|(_, g)| g.spec.gateway_class_name == WAYPOINT_CLASS)
            .map(|(_, g)| {
                let labels = g.metadata.labels.clone().unwrap_or_default();
                (
                    (
                        g.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        g.metadata.name.clone().unwrap_or_default(),
                    ),
                    TrafficType::parse(labels.get(WAYPOINT_FOR)),
                )
            })
            .collect();
        let by_service_account = res
            .gateways
            .iter()
            .filter(|(_, g)| g.spec.gateway_class_name == WAYPOINT_CLASS)
            .filter_map(|(_, g)| {
                let sa = g.metadata.annotations.as_ref()?.get(FOR_SERVICE_ACCOUNT)?;
                Some((
                    (
                        g.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        sa.clone(),
                    ),
                    g.metadata.name.clone()?,
                ))
            })
            .collect();
        let namespace_labels = res
            .namespaces
            .iter()
            .filter_map(|(_, n)| {
                Some((
                    n.metadata.name.clone()?,
                    n.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        Waypoints {
            gateways,
            by_service_account,
            namespace_labels,
        }
    }

    /// Is there a waypoint Gateway `name` in `ns`?
    pub fn exists(&self, ns: &str, name: &str) -> bool {
        self.gateways
            .contains_key(&(ns.to_string(), name.to_string()))
    }

    /// The (namespace, name) an object in `ns` with `labels` asks for.
    fn requested(&self, labels: &BTreeMap<String, String>, ns: &str) -> Option<(String, String)> {
        let ns_labels = self.namespace_labels.get(ns);
        let (name, from) = match labels.get(USE_WAYPOINT) {
            Some(n) => (n, labels),
            None => {
                let l = ns_labels?;
                (l.get(USE_WAYPOINT)?, l)
            }
        };
        if name.is_empty() || name == "none" {
            return None;
        }
        let wns = from
            .get(USE_WAYPOINT_NAMESPACE)
            .cloned()
            .unwrap_or_else(|| ns.to_string());
        Some((wns, name.clone()))
    }

    fn resolve(
        &self,
        labels: &BTreeMap<String, String>,
        ns: &str,
        wants: fn(TrafficType) -> bool,
    ) -> Result<Option<(String, String)>, Unbound> {
        // A waypoint's own pods and Service never use a waypoint.
        if labels.contains_key(GATEWAY_NAME) {
            return Ok(None);
        }
        let Some((wns, name)) = self.requested(labels, ns) else {
            return Ok(None);
        };
        match self.gateways.get(&(wns.clone(), name.clone())) {
            None => Err(Unbound::Missing(format!("{wns}/{name}"))),
            Some(t) if !wants(*t) => Err(Unbound::WrongType(format!("{wns}/{name}"), *t)),
            Some(_) => Ok(Some((wns, name))),
        }
    }

    /// The waypoint (namespace, name) for a Service in `ns` with `labels`.
    pub fn for_service(
        &self,
        labels: &BTreeMap<String, String>,
        ns: &str,
    ) -> Result<Option<(String, String)>, Unbound> {
        self.resolve(labels, ns, TrafficType::takes_services)
    }

    /// The waypoint (namespace, name) for a pod in `ns` with `labels`
    /// running as `service_account`: its `use-waypoint` label (or its
    /// namespace's), else a waypoint for its service account.
    pub fn for_workload(
        &self,
        labels: &BTreeMap<String, String>,
        ns: &str,
        service_account: &str,
    ) -> Result<Option<(String, String)>, Unbound> {
        let by_label = self.resolve(labels, ns, TrafficType::takes_workloads);
        if labels.contains_key(GATEWAY_NAME) || matches!(by_label, Ok(Some(_))) {
            return by_label;
        }
        match self
            .by_service_account
            .get(&(ns.to_string(), service_account.to_string()))
        {
            Some(name) => Ok(Some((ns.to_string(), name.clone()))),
            None => by_label,
        }
    }

    /// Is a pod with `labels` in `ns` one of a waypoint's own pods?
    pub fn is_waypoint_pod(&self, labels: &BTreeMap<String, String>, ns: &str) -> bool {
        labels
            .get(GATEWAY_NAME)
            .is_some_and(|name| self.exists(ns, name))
    }
}

/// How ztunnel reaches waypoint `name` in `ns`: its Service on 15008.
pub fn gateway_ref(ns: &str, name: &str) -> GatewayRef {
    GatewayRef::service(ns, &format!("{name}.{ns}.svc.cluster.local"))
}

impl std::fmt::Display for Unbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unbound::Missing(w) => write!(
                f,
                "waypoint {w} does not exist (no Gateway with gatewayClassName istio-waypoint); traffic is not sent to a waypoint"
            ),
            Unbound::WrongType(w, t) => write!(
                f,
                "waypoint {w} is {WAYPOINT_FOR}: {t:?}, which does not take this traffic; ignored"
            ),
        }
    }
}

/// What istiod's waypoint deployer creates for each waypoint Gateway that
/// lacks them: a Deployment (one replica, service account = the Gateway's
/// name, left out of capture) and a Service on 15008 selecting its pods.
/// The local cluster runs those pods' proxy itself.
pub fn deploy(res: &mut Resources) {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
    use k8s_openapi::api::core::v1::{
        Container, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    let mut add_services = Vec::new();
    let mut add_deployments = Vec::new();
    for (source, g) in &res.gateways {
        if g.spec.gateway_class_name != WAYPOINT_CLASS {
            continue;
        }
        let ns = g
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(name) = g.metadata.name.clone() else {
            continue;
        };
        let labels = BTreeMap::from([(GATEWAY_NAME.to_string(), name.clone())]);
        let meta = ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let same = |m: &ObjectMeta| {
            m.name.as_deref() == Some(name.as_str())
                && m.namespace.as_deref().unwrap_or("default") == ns
        };
        if !res.services.iter().any(|(_, s)| same(&s.metadata)) {
            add_services.push((
                source.clone(),
                Service {
                    metadata: meta.clone(),
                    spec: Some(ServiceSpec {
                        selector: Some(labels.clone()),
                        ports: Some(vec![ServicePort {
                            name: Some("mesh".into()),
                            port: 15008,
                            app_protocol: Some("all".into()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    status: None,
                },
            ));
        }
        if !res.deployments.iter().any(|(_, d)| same(&d.metadata)) {
            let mut pod_labels = labels.clone();
            pod_labels.insert(crate::k8s::DATAPLANE_MODE.into(), crate::k8s::NONE.into());
            add_deployments.push((
                source.clone(),
                Deployment {
                    metadata: meta,
                    spec: Some(DeploymentSpec {
                        replicas: Some(1),
                        selector: LabelSelector {
                            match_labels: Some(labels.clone()),
                            ..Default::default()
                        },
                        template: PodTemplateSpec {
                            metadata: Some(ObjectMeta {
                                labels: Some(pod_labels),
                                ..Default::default()
                            }),
                            spec: Some(PodSpec {
                                service_account_name: Some(name.clone()),
                                containers: vec![Container {
                                    name: "istio-proxy".into(),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }),
                        },
                        ..Default::default()
                    }),
                    status: None,
                },
            ));
        }
    }
    res.services.extend(add_services);
    res.deployments.extend(add_deployments);
}
