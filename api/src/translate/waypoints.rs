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
/// Gateway annotation naming its Deployment and Service (default: the
/// Gateway's name), as istiod's deployer reads it.
pub const NAME_OVERRIDE: &str = "gateway.istio.io/name-override";
/// Gateway annotation naming the service account its pods run as (default:
/// the Gateway's name).
pub const SERVICE_ACCOUNT_OVERRIDE: &str = "gateway.istio.io/service-account";

/// The name of a waypoint Gateway's Deployment and Service.
pub fn deployment_name(gateway: &crate::k8s::networking::Gateway) -> String {
    annotation(gateway, NAME_OVERRIDE)
        .unwrap_or_else(|| gateway.metadata.name.clone().unwrap_or_default())
}

/// The service account a waypoint Gateway's pods run as.
pub fn service_account(gateway: &crate::k8s::networking::Gateway) -> String {
    annotation(gateway, SERVICE_ACCOUNT_OVERRIDE)
        .unwrap_or_else(|| gateway.metadata.name.clone().unwrap_or_default())
}

/// A waypoint Gateway's listeners; when it has none (the API server
/// rejects that, but a YAML directory may hold it), the one every waypoint
/// has: `{name: mesh, port: 15008, protocol: HBONE}` (reported as a
/// warning by translation).
pub fn listeners(gateway: &crate::k8s::networking::Gateway) -> Vec<serde_json::Value> {
    if gateway.spec.listeners.is_empty() {
        vec![serde_json::json!({"name": "mesh", "port": 15008, "protocol": "HBONE"})]
    } else {
        gateway.spec.listeners.clone()
    }
}

/// The cluster's DNS domain, as Service host names are written.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Whether the deployer creates this Gateway's Deployment and Service, as
/// istiod's `IsManaged` decides: no `spec.addresses`, or a single IP
/// address. Anything else names existing Services that serve the Gateway.
pub fn is_managed(gateway: &crate::k8s::networking::Gateway) -> bool {
    let addresses = addresses(gateway);
    match addresses.as_slice() {
        [] => true,
        [(kind, _)] => kind.as_deref().is_none_or(|t| t == "IPAddress"),
        _ => false,
    }
}

/// `spec.addresses` as (type, value) pairs.
fn addresses(gateway: &crate::k8s::networking::Gateway) -> Vec<(Option<String>, String)> {
    let Some(serde_json::Value::Array(list)) = &gateway.spec.addresses else {
        return Vec::new();
    };
    list.iter()
        .map(|a| {
            let text = |k: &str| a.get(k).and_then(|v| v.as_str()).map(str::to_string);
            (text("type"), text("value").unwrap_or_default())
        })
        .collect()
}

/// The Service host names serving a waypoint Gateway (istiod's
/// `extractGatewayServices`): its own Service when managed, else each
/// `Hostname` address, a short name taken as a Service in the Gateway's
/// namespace. The second list holds addresses of other types, which
/// cannot name a Service and are left out.
pub fn service_hosts(gateway: &crate::k8s::networking::Gateway) -> (Vec<String>, Vec<String>) {
    let ns = gateway.metadata.namespace.as_deref().unwrap_or("default");
    if is_managed(gateway) {
        let name = deployment_name(gateway);
        return (
            vec![format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}")],
            Vec::new(),
        );
    }
    let (mut hosts, mut skipped) = (Vec::new(), Vec::new());
    for (kind, value) in addresses(gateway) {
        if kind.as_deref().is_some_and(|t| t != "Hostname") {
            skipped.push(value);
        } else if value.contains('.') {
            hosts.push(value);
        } else {
            hosts.push(format!("{value}.{ns}.svc.{CLUSTER_DOMAIN}"));
        }
    }
    (hosts, skipped)
}

fn annotation(gateway: &crate::k8s::networking::Gateway, key: &str) -> Option<String> {
    gateway
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .filter(|v| !v.is_empty())
        .cloned()
}

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
    /// (namespace, name) → what it takes and the host of the Service
    /// serving it (none when its addresses name no Service).
    gateways: BTreeMap<(String, String), (TrafficType, Option<String>)>,
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
                    (
                        TrafficType::parse(labels.get(WAYPOINT_FOR)),
                        service_hosts(g).0.into_iter().next(),
                    ),
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
            Some((t, _)) if !wants(*t) => Err(Unbound::WrongType(format!("{wns}/{name}"), *t)),
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

impl Waypoints {
    /// How ztunnel reaches waypoint `name` in `ns`: the Service serving it,
    /// on 15008 (see [`service_hosts`]).
    pub fn gateway_ref(&self, ns: &str, name: &str) -> GatewayRef {
        let host = self
            .gateways
            .get(&(ns.to_string(), name.to_string()))
            .and_then(|(_, host)| host.clone())
            .unwrap_or_else(|| format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"));
        GatewayRef::service(ns, &host)
    }
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
