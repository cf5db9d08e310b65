//! The waypoint deployer against an API server at the HTTP level: the
//! requests it makes (server-side apply with istiod's field manager, owner
//! references, status on the `status` subresource, deletes) and their
//! bodies, as a Gateway is created, becomes programmed, and goes away.

#[path = "common/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use controller::deployer::{self, Deployer, KubeStore, WaypointTemplate};
use fake_api::{FakeApi, Recorded};
use serde_json::{Value, json};
use tokio::sync::watch;

const GATEWAYS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, uid: uid-1, generation: 2}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: taken, namespace: demo, uid: uid-2, generation: 1}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: demo, uid: uid-3}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
";

fn resources(yaml: &str) -> Resources {
    let mut r = Resources::default();
    r.add_yaml(yaml, "gateways.yaml").expect("yaml");
    r
}

/// Stores the Gateways of `yaml` in the API server, as a user's apply would.
fn create_gateways(api: &FakeApi, yaml: &str) {
    for doc in yaml.split("\n---\n") {
        let g: Value = serde_yaml::from_str(doc).expect("gateway");
        api.insert("/apis/gateway.networking.k8s.io/v1", "gateways", g);
    }
}

/// What the controller's watches would deliver now: the API server's
/// Gateways (with the status written to them), Services and
/// ServiceAccounts.
fn watched(api: &FakeApi) -> Resources {
    let mut r = Resources::default();
    for o in api
        .list("/apis/gateway.networking.k8s.io/v1", "gateways")
        .into_iter()
        .chain(api.list("/api/v1", "services"))
        .chain(api.list("/api/v1", "serviceaccounts"))
    {
        r.add_json(o, ambit_api::k8s::Source::default())
            .expect("object");
    }
    r
}

async fn until(api: &FakeApi, what: &str, f: impl Fn(&[Recorded]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if f(&api.requests()) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let seen: Vec<String> = api
                .requests()
                .iter()
                .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                .collect();
            panic!(
                "timed out waiting for: {what}\nrequests:\n{}",
                seen.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn find<'a>(reqs: &'a [Recorded], method: &str, path: &str) -> Vec<&'a Recorded> {
    reqs.iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}

const SA: &str = "/api/v1/namespaces/demo/serviceaccounts/waypoint";
const SVC: &str = "/api/v1/namespaces/demo/services/waypoint";
const DEPLOY: &str = "/apis/apps/v1/namespaces/demo/deployments/waypoint";
const ROOT_CM: &str = "/api/v1/namespaces/demo/configmaps/istio-ca-root-cert";
const STATUS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/waypoint/status";

fn condition(status: &Value, kind: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn deploys_programs_and_cleans_up_waypoints_over_http() {
    let api = FakeApi::start().await;
    // What exists before: a user's own Service named like a waypoint's (not
    // ours to take), and a Deployment an earlier run left for a Gateway that
    // is gone.
    api.insert(
        "/api/v1",
        "services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": "demo"}, "spec": {"ports": [{"port": 9}]}}),
    );
    api.insert(
        "/apis/apps/v1",
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "old", "namespace": "demo", "labels": {"gateway.istio.io/managed": "istio.io-mesh-controller"}}}),
    );
    let template = WaypointTemplate {
        image: "registry.test/waypoint:1".into(),
        root_pem: Some("ROOT PEM".into()),
        ..WaypointTemplate::default()
    };
    create_gateways(&api, GATEWAYS);
    let (tx, rx) = watch::channel(Arc::new(watched(&api)));
    let task = tokio::spawn(deployer::run(
        Deployer::new(template),
        rx,
        KubeStore::new(api.client()),
        Duration::from_millis(50),
    ));

    until(&api, "first status", |r| {
        !find(r, "PATCH", STATUS).is_empty()
    })
    .await;
    let reqs = api.requests();

    // Server-side apply, as istiod does it: apply-patch content type,
    // istiod's field manager, forced.
    for path in [ROOT_CM, SA, SVC, DEPLOY] {
        let patches = find(&reqs, "PATCH", path);
        assert_eq!(patches.len(), 1, "{path} applied once");
        let p = patches[0];
        assert_eq!(p.content_type, "application/apply-patch+yaml", "{path}");
        assert!(
            p.query
                .contains("fieldManager=istio.io%2Fgateway-controller")
                && p.query.contains("force=true"),
            "{path}: {}",
            p.query
        );
        assert_eq!(
            p.body["metadata"]["labels"]["gateway.istio.io/managed"],
            "istio.io-mesh-controller"
        );
        if path != ROOT_CM {
            assert_eq!(
                p.body["metadata"]["ownerReferences"],
                json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint", "uid": "uid-1"}])
            );
        }
    }
    // The order pods need: root and service account before the Deployment.
    let position = |path: &str| {
        reqs.iter()
            .position(|r| r.method == "PATCH" && r.path == path)
    };
    assert!(position(ROOT_CM) < position(DEPLOY) && position(SA) < position(DEPLOY));
    let cm = &find(&reqs, "PATCH", ROOT_CM)[0].body;
    assert_eq!(cm["data"]["root-cert.pem"], "ROOT PEM");
    let svc = &find(&reqs, "PATCH", SVC)[0].body;
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            {"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"},
            {"name": "mesh", "port": 15008, "protocol": "TCP", "appProtocol": "hbone"},
        ])
    );
    let deploy = &find(&reqs, "PATCH", DEPLOY)[0].body;
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.test/waypoint:1");
    assert_eq!(container["args"], json!(["mesh"]));
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"],
        "none"
    );

    // The user's Service was looked at and left alone; the rest of that
    // Gateway's objects were applied.
    assert!(!find(&reqs, "GET", "/api/v1/namespaces/demo/services/taken").is_empty());
    assert!(find(&reqs, "PATCH", "/api/v1/namespaces/demo/services/taken").is_empty());
    assert_eq!(
        api.object("/api/v1", "services", "demo", "taken")
            .map(|s| s["spec"]["ports"][0]["port"].clone()),
        Some(json!(9))
    );
    // Not a waypoint: nothing.
    assert!(reqs.iter().all(|r| !r.path.contains("ingress")));
    // Left by an earlier run: deleted, in the background.
    let deleted = find(
        &reqs,
        "DELETE",
        "/apis/apps/v1/namespaces/demo/deployments/old",
    );
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].body["propagationPolicy"], "Background");
    assert!(reqs.iter().any(|r| {
        r.method == "GET"
            && r.path == "/apis/apps/v1/deployments"
            && r.query
                .contains("labelSelector=gateway.istio.io%2Fmanaged%3Distio.io-mesh-controller")
    }));

    // Status before the Service is seen: Accepted, not yet Programmed.
    let status = find(&reqs, "PATCH", STATUS)[0];
    assert_eq!(status.content_type, "application/apply-patch+yaml");
    assert_eq!(status.body["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(status.body["kind"], "Gateway");
    let first = status.body["status"].clone();
    assert_eq!(condition(&first, "Accepted")["status"], "True");
    assert_eq!(condition(&first, "Accepted")["observedGeneration"], 2);
    assert_eq!(condition(&first, "Programmed")["status"], "False");
    assert_eq!(
        condition(&first, "Programmed")["reason"],
        "AddressNotAssigned"
    );

    // The watch delivers the Service (and the Gateway with the status just
    // written): Programmed, nothing re-applied.
    let applied_before = api.writes().len();
    tx.send(Arc::new(watched(&api))).expect("send");
    until(&api, "programmed", |r| find(r, "PATCH", STATUS).len() == 2).await;
    let writes = api.writes();
    let new: Vec<&Recorded> = writes[applied_before..].iter().collect();
    assert_eq!(new.len(), 1, "only the status: {new:?}");
    let programmed = new[0].body["status"].clone();
    let p = condition(&programmed, "Programmed");
    assert_eq!(p["status"], "True");
    assert_eq!(
        p["message"],
        "Resource programmed, assigned to service(s) waypoint.demo.svc.cluster.local:15008"
    );
    assert_eq!(
        programmed["addresses"],
        json!([{"type": "Hostname", "value": "waypoint.demo.svc.cluster.local"}])
    );
    assert_eq!(
        condition(&programmed, "Accepted")["lastTransitionTime"],
        condition(&first, "Accepted")["lastTransitionTime"],
        "an unchanged condition keeps its time"
    );

    // The Gateway is deleted: its objects go, Deployment first; the
    // namespace still has a waypoint (`taken`), so its root stays.
    api.remove(
        "/apis/gateway.networking.k8s.io/v1",
        "gateways",
        "demo",
        "waypoint",
    );
    tx.send(Arc::new(watched(&api))).expect("send");
    until(&api, "cleanup", |r| !find(r, "DELETE", SA).is_empty()).await;
    let reqs = api.requests();
    let delete_at = |path: &str| {
        reqs.iter()
            .position(|r| r.method == "DELETE" && r.path == path)
    };
    assert!(delete_at(DEPLOY) < delete_at(SVC) && delete_at(SVC) < delete_at(SA));
    assert!(find(&reqs, "DELETE", ROOT_CM).is_empty());
    for (plural, prefix) in [
        ("deployments", "/apis/apps/v1"),
        ("services", "/api/v1"),
        ("serviceaccounts", "/api/v1"),
    ] {
        assert!(
            api.object(prefix, plural, "demo", "waypoint").is_none(),
            "{plural} gone"
        );
    }
    task.abort();
}

#[tokio::test]
async fn failed_writes_are_retried() {
    let api = FakeApi::start().await;
    // The Gateway API is not served yet: status writes fail with 404.
    api.without_group("gateway.networking.k8s.io");
    let (_tx, rx) = watch::channel(Arc::new(resources(GATEWAYS)));
    let task = tokio::spawn(deployer::run(
        Deployer::new(WaypointTemplate::default()),
        rx,
        KubeStore::new(api.client()),
        Duration::from_millis(50),
    ));
    until(&api, "two status attempts", |r| {
        find(r, "PATCH", STATUS).len() >= 2
    })
    .await;
    // Objects applied once; only the failing write is repeated.
    assert_eq!(find(&api.requests(), "PATCH", DEPLOY).len(), 1);
    task.abort();
}
