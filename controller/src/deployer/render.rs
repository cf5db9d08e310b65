//! The objects istiod's deployer creates for a waypoint Gateway, rendered as
//! its `waypoint` template renders them (names, labels, annotations, owner
//! references, Service ports), with Ambit's waypoint binary in the pod:
//! `waypoint mesh`, configured by Istio's environment variables, its token
//! and root mounted where Istio's proxies read them.

use std::collections::BTreeMap;

use ambit_api::k8s::networking::Gateway;
use ambit_api::translate::waypoints::{GATEWAY_NAME, deployment_name, listeners, service_account};
use serde_json::{Value, json};

/// The label saying which controller manages an object; an existing object
/// without it is never taken over.
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// Its value for waypoints: the controller name `istio.io/mesh-controller`
/// with `/` replaced, as istiod writes it.
pub const MANAGED_BY_MESH_CONTROLLER: &str = "istio.io-mesh-controller";
/// The label naming the Gateway's class on every object.
pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
/// The field manager of every apply (istiod's).
pub const FIELD_MANAGER: &str = "istio.io/gateway-controller";

/// Gateway annotations never copied onto the objects (istiod's list).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "gateway.istio.io/name-override",
    "gateway.istio.io/service-account",
    "gateway.istio.io/controller-version",
];

/// What every waypoint pod gets that does not come from its Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct WaypointTemplate {
    /// The waypoint image.
    pub image: String,
    /// `imagePullPolicy`, if set.
    pub image_pull_policy: Option<String>,
    /// The control plane's xDS and CA address (`host:port`).
    pub control_plane: String,
    /// The mesh's trust domain (`TRUST_DOMAIN`).
    pub trust_domain: String,
    /// `CLUSTER_ID`.
    pub cluster_id: String,
    /// The container's `resources`, if any.
    pub resources: Option<Value>,
    /// `RUST_LOG` for the waypoint.
    pub log_level: String,
    /// The mesh root bundle: published as ConfigMap `istio-ca-root-cert`
    /// in each namespace with a waypoint (its pods mount it), as istiod
    /// publishes it. `None` publishes nothing (the root is put there some
    /// other way).
    pub root_pem: Option<String>,
}

impl Default for WaypointTemplate {
    fn default() -> Self {
        WaypointTemplate {
            image: crate::images::WAYPOINT.clone(),
            image_pull_policy: None,
            control_plane: "istiod.istio-system.svc:15012".into(),
            trust_domain: ambit_identity::DEFAULT_TRUST_DOMAIN.into(),
            cluster_id: "Kubernetes".into(),
            resources: Some(json!({
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"memory": "512Mi"},
            })),
            log_level: "info".into(),
            root_pem: None,
        }
    }
}

/// A rendered object's identity: enough to GET, apply or DELETE it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `apiVersion`.
    pub api_version: &'static str,
    /// `kind`.
    pub kind: &'static str,
    /// The collection's resource name (`deployments`).
    pub plural: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A ServiceAccount.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self::new("v1", "ServiceAccount", "serviceaccounts", namespace, name)
    }

    /// A Service.
    pub fn service(namespace: &str, name: &str) -> Self {
        Self::new("v1", "Service", "services", namespace, name)
    }

    /// A Deployment.
    pub fn deployment(namespace: &str, name: &str) -> Self {
        Self::new("apps/v1", "Deployment", "deployments", namespace, name)
    }

    /// A ConfigMap.
    pub fn config_map(namespace: &str, name: &str) -> Self {
        Self::new("v1", "ConfigMap", "configmaps", namespace, name)
    }

    /// A Gateway.
    pub fn gateway(namespace: &str, name: &str) -> Self {
        Self::new(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "gateways",
            namespace,
            name,
        )
    }

    fn new(
        api_version: &'static str,
        kind: &'static str,
        plural: &'static str,
        namespace: &str,
        name: &str,
    ) -> Self {
        ObjectRef {
            api_version,
            kind,
            plural,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The kinds the deployer creates, in the order it applies them.
    pub fn managed_kinds() -> [fn(&str, &str) -> ObjectRef; 4] {
        [
            Self::config_map,
            Self::service_account,
            Self::service,
            Self::deployment,
        ]
    }

    /// The object's API path (`/apis/apps/v1/namespaces/NS/deployments/NAME`).
    pub fn path(&self) -> String {
        format!("{}/{}", self.collection_path(), self.name)
    }

    /// Its collection's API path in its namespace.
    pub fn collection_path(&self) -> String {
        let root = if self.api_version.contains('/') {
            format!("/apis/{}", self.api_version)
        } else {
            format!("/api/{}", self.api_version)
        };
        format!("{root}/namespaces/{}/{}", self.namespace, self.plural)
    }

    /// The `ObjectRef` a rendered object names, if it is one of ours.
    pub fn of(object: &Value) -> Option<Self> {
        let kind = object.get("kind")?.as_str()?;
        let meta = object.get("metadata")?;
        let ns = meta.get("namespace")?.as_str()?;
        let name = meta.get("name")?.as_str()?;
        let make = match kind {
            "ServiceAccount" => Self::service_account,
            "Service" => Self::service,
            "Deployment" => Self::deployment,
            "ConfigMap" => Self::config_map,
            "Gateway" => Self::gateway,
            _ => return None,
        };
        Some(make(ns, name))
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Labels or annotations from `spec.infrastructure` when it sets them
/// (keys under `gateway.networking.k8s.io/` dropped), else the Gateway's
/// own, as istiod copies them.
fn infrastructure(gateway: &Gateway, key: &str) -> BTreeMap<String, String> {
    let from_spec = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.get(key))
        .and_then(Value::as_object);
    if let Some(map) = from_spec {
        return map
            .iter()
            .filter(|(k, _)| !k.starts_with("gateway.networking.k8s.io/"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
    }
    let meta = &gateway.metadata;
    let own = if key == "labels" {
        meta.labels.clone()
    } else {
        meta.annotations.clone()
    };
    own.unwrap_or_default()
}

fn annotations(gateway: &Gateway) -> BTreeMap<String, String> {
    let mut a = infrastructure(gateway, "annotations");
    a.retain(|k, _| !NOT_COPIED.contains(&k.as_str()));
    a
}

/// Key/value layers as one JSON map, a later value winning over an earlier
/// one for the same key (Helm's `toJsonMap a b c`, as istiod's template
/// layers labels and annotations).
fn layered<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> serde_json::Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect()
}

/// A map's pairs, borrowed, for [`layered`].
fn pairs(map: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// The Service's ports: the status port, then one per distinct listener
/// port, named after the listener (dots made dashes, cut to 63), with the
/// listener's protocol, lower-cased, as `appProtocol` (istiod's
/// `extractServicePorts`).
fn service_ports(gateway: &Gateway) -> Vec<Value> {
    let mut ports = vec![json!({
        "name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp",
    })];
    let mut seen = std::collections::BTreeSet::new();
    for (i, l) in listeners(gateway).iter().enumerate() {
        let Some(port) = l.get("port").and_then(Value::as_u64) else {
            continue;
        };
        if !seen.insert(port) {
            continue;
        }
        let protocol = l
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut name: String = l
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('.', "-");
        name.truncate(63);
        if name.is_empty() {
            name = format!("{protocol}-{i}");
        }
        ports.push(json!({
            "name": name, "port": port, "protocol": "TCP", "appProtocol": protocol,
        }));
    }
    ports
}

/// The ServiceAccount, Service and Deployment for a managed waypoint
/// `gateway`, in the order they are applied. Each carries the managed
/// label and an owner reference to the Gateway, so deleting the Gateway
/// deletes them.
pub fn render(gateway: &Gateway, template: &WaypointTemplate) -> Vec<Value> {
    let meta = &gateway.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    let uid = meta.uid.as_deref().unwrap_or_default();
    let class = gateway.spec.gateway_class_name.as_str();
    let deployment = deployment_name(gateway);
    let sa = service_account(gateway);
    let infra_labels = infrastructure(gateway, "labels");
    let infra_annotations = annotations(gateway);
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": name,
        "uid": uid,
    }]);
    let fixed_labels = [
        (GATEWAY_NAME, name),
        (GATEWAY_CLASS_LABEL, class),
        (MANAGED_LABEL, MANAGED_BY_MESH_CONTROLLER),
    ];
    let object_labels = layered(pairs(&infra_labels).chain(fixed_labels));
    let pod_labels = layered(
        [
            ("sidecar.istio.io/inject", "false"),
            ("istio.io/dataplane-mode", "none"),
            ("service.istio.io/canonical-name", deployment.as_str()),
            ("service.istio.io/canonical-revision", "latest"),
        ]
        .into_iter()
        .chain(pairs(&infra_labels))
        .chain(fixed_labels),
    );
    let pod_annotations = layered(pairs(&infra_annotations).chain([
        ("istio.io/rev", "default"),
        ("prometheus.io/path", "/stats/prometheus"),
        ("prometheus.io/port", "15020"),
        ("prometheus.io/scrape", "true"),
    ]));
    let service_type = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get("networking.istio.io/service-type"))
        .map_or("ClusterIP", String::as_str);

    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": sa,
            "namespace": ns,
            "labels": object_labels,
            "annotations": infra_annotations,
            "ownerReferences": owner,
        },
    });
    // istiod's order: the default first, the Gateway's annotations over it.
    let service_annotations = layered(
        [("networking.istio.io/traffic-distribution", "PreferClose")]
            .into_iter()
            .chain(pairs(&infra_annotations)),
    );
    let mut service_spec = json!({
        "ipFamilyPolicy": "PreferDualStack",
        "ports": service_ports(gateway),
        "selector": {GATEWAY_NAME: name},
        "type": service_type,
    });
    if service_type == "LoadBalancer"
        && let Some(ip) = single_address(gateway)
    {
        service_spec["loadBalancerIP"] = json!(ip);
    }
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployment,
            "namespace": ns,
            "labels": object_labels,
            "annotations": service_annotations,
            "ownerReferences": owner,
        },
        "spec": service_spec,
    });
    let deployment_object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment,
            "namespace": ns,
            "labels": object_labels,
            "annotations": infra_annotations,
            "ownerReferences": owner,
        },
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME: name}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec(name, &sa, template),
            },
        },
    });
    vec![service_account, service, deployment_object]
}

/// The name of the ConfigMap holding the mesh root in each namespace.
pub const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";

/// ConfigMap `istio-ca-root-cert` in `namespace`, holding `root_pem` under
/// `root-cert.pem` (where waypoint pods mount it from).
pub fn root_config_map(namespace: &str, root_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIG_MAP,
            "namespace": namespace,
            "labels": {"istio.io/config": "true", MANAGED_LABEL: MANAGED_BY_MESH_CONTROLLER},
        },
        "data": {"root-cert.pem": root_pem},
    })
}

/// The single IP in `spec.addresses` (a managed Gateway's requested IP).
fn single_address(gateway: &Gateway) -> Option<String> {
    let list = gateway.spec.addresses.as_ref()?.as_array()?;
    match list.as_slice() {
        [a] => Some(a.get("value")?.as_str()?.to_string()),
        _ => None,
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn value_env(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

/// The waypoint pod: `waypoint mesh` as user 1337 with nothing but its
/// ports; the projected token (audience `istio-ca`) and the mesh root
/// where Istio's proxies read them; ready when `/healthz/ready` on 15021
/// says so.
fn pod_spec(gateway: &str, service_account: &str, t: &WaypointTemplate) -> Value {
    let probe = |failure_threshold: u32, period: u32| {
        json!({
            "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
            "failureThreshold": failure_threshold,
            "periodSeconds": period,
            "successThreshold": 1,
            "timeoutSeconds": 1,
        })
    };
    let mut container = json!({
        "name": "istio-proxy",
        "image": t.image,
        "args": ["mesh"],
        "ports": [
            {"containerPort": 15008, "name": "hbone", "protocol": "TCP"},
            {"containerPort": 15020, "name": "metrics", "protocol": "TCP"},
            {"containerPort": 15021, "name": "status-port", "protocol": "TCP"},
        ],
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            value_env("GATEWAY_NAME", gateway),
            value_env("XDS_ADDRESS", &t.control_plane),
            value_env("CA_ADDRESS", &t.control_plane),
            value_env("TRUST_DOMAIN", &t.trust_domain),
            value_env("CLUSTER_ID", &t.cluster_id),
            value_env("RUST_LOG", &t.log_level),
        ],
        "startupProbe": probe(30, 1),
        "readinessProbe": probe(4, 15),
        "securityContext": {
            "privileged": false,
            "runAsUser": 1337,
            "runAsGroup": 1337,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
        ],
    });
    if let Some(policy) = &t.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if let Some(resources) = &t.resources {
        container["resources"] = resources.clone();
    }
    json!({
        "serviceAccountName": service_account,
        "containers": [container],
        "volumes": [
            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token",
            }}]}},
            {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CONFIG_MAP}},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(yaml: &str) -> Gateway {
        serde_yaml::from_str(yaml).expect("gateway yaml")
    }

    const WAYPOINT: &str = "
metadata:
  name: waypoint
  namespace: demo
  uid: 7f9a
  labels: {istio.io/waypoint-for: service, team: a}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{}', note: x}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";

    #[test]
    fn renders_istios_waypoint_objects() {
        let objects = render(&gateway(WAYPOINT), &WaypointTemplate::default());
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(kinds, ["ServiceAccount", "Service", "Deployment"]);
        for o in &objects {
            let meta = &o["metadata"];
            assert_eq!(meta["namespace"], "demo");
            assert_eq!(meta["labels"][MANAGED_LABEL], "istio.io-mesh-controller");
            assert_eq!(meta["labels"][GATEWAY_NAME], "waypoint");
            assert_eq!(meta["labels"][GATEWAY_CLASS_LABEL], "istio-waypoint");
            assert_eq!(meta["labels"]["team"], "a", "gateway labels are copied");
            assert_eq!(
                meta["ownerReferences"],
                json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint", "uid": "7f9a"}])
            );
            assert!(
                meta["annotations"]
                    .get("kubectl.kubernetes.io/last-applied-configuration")
                    .is_none()
            );
        }
        let service = &objects[1];
        assert_eq!(
            service["spec"]["ports"],
            json!([
                {"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"},
                {"name": "mesh", "port": 15008, "protocol": "TCP", "appProtocol": "hbone"},
            ])
        );
        assert_eq!(service["spec"]["selector"][GATEWAY_NAME], "waypoint");
        assert_eq!(service["spec"]["type"], "ClusterIP");
        let pod = &objects[2]["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
        assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(["mesh"]));
    }

    #[test]
    fn overrides_and_infrastructure_metadata() {
        let g = gateway(
            "
metadata:
  name: wp
  namespace: demo
  annotations: {gateway.istio.io/name-override: custom, gateway.istio.io/service-account: runner}
spec:
  gatewayClassName: istio-waypoint
  infrastructure: {labels: {tier: mesh, gateway.networking.k8s.io/x: dropped}, annotations: {a: b}}
  listeners: [{name: a.b, port: 15008, protocol: HBONE}, {name: dup, port: 15008, protocol: HBONE}]
",
        );
        let objects = render(&g, &WaypointTemplate::default());
        assert_eq!(objects[0]["metadata"]["name"], "runner");
        assert_eq!(objects[1]["metadata"]["name"], "custom");
        assert_eq!(objects[2]["metadata"]["name"], "custom");
        assert_eq!(objects[1]["metadata"]["labels"]["tier"], "mesh");
        assert!(
            objects[1]["metadata"]["labels"]
                .get("gateway.networking.k8s.io/x")
                .is_none()
        );
        assert_eq!(objects[1]["metadata"]["annotations"]["a"], "b");
        assert_eq!(
            objects[1]["metadata"]["annotations"]["networking.istio.io/traffic-distribution"],
            "PreferClose",
            "istiod's default"
        );
        assert!(
            objects[1]["metadata"]["annotations"]
                .get("gateway.istio.io/name-override")
                .is_none()
        );
        let ports = objects[1]["spec"]["ports"].as_array().map(Vec::len);
        assert_eq!(ports, Some(2), "one port per distinct listener port");
        assert_eq!(objects[1]["spec"]["ports"][1]["name"], "a-b");
        assert_eq!(
            objects[2]["spec"]["template"]["spec"]["serviceAccountName"],
            "runner"
        );
    }

    #[test]
    fn gateway_annotations_override_the_service_default() {
        let g = gateway(
            "
metadata:
  name: wp
  namespace: demo
  annotations: {networking.istio.io/traffic-distribution: Any}
spec:
  gatewayClassName: istio-waypoint
",
        );
        let objects = render(&g, &WaypointTemplate::default());
        assert_eq!(
            objects[1]["metadata"]["annotations"]["networking.istio.io/traffic-distribution"],
            "Any"
        );
    }

    #[test]
    fn api_paths() {
        assert_eq!(
            ObjectRef::deployment("demo", "wp").path(),
            "/apis/apps/v1/namespaces/demo/deployments/wp"
        );
        assert_eq!(
            ObjectRef::service_account("demo", "wp").path(),
            "/api/v1/namespaces/demo/serviceaccounts/wp"
        );
        assert_eq!(
            ObjectRef::gateway("demo", "wp").path(),
            "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/wp"
        );
    }
}
