//! The commands that read a Kubernetes cluster, against an API server at
//! the HTTP level (KUBECONFIG pointing at it): `ambit analyze` without `-f`
//! reports the cluster's objects as the controller would (exit 79 on
//! errors), `ambit waypoint list|status|delete --kube` read and delete the
//! `istio-waypoint` Gateways and refuse to delete another class's.

#[path = "../../controller/tests/common/fake_api.rs"]
mod fake_api;

use std::process::Command;

use fake_api::FakeApi;
use serde_json::json;

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1";

fn ambit(kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run ambit");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_and_waypoints_on_a_kubernetes_cluster() {
    let api = FakeApi::start().await;
    let dir = std::env::temp_dir().join(format!("ambit-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = api.kubeconfig(&dir);
    api.insert(
        "/api/v1",
        "namespaces",
        json!({"metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    api.insert(
        "/apis/security.istio.io/v1",
        "authorizationpolicies",
        json!({"metadata": {"name": "bad-cidr", "namespace": "shop"},
               "spec": {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}}),
    );
    api.insert(
        GATEWAYS,
        "gateways",
        json!({"metadata": {"name": "waypoint", "namespace": "shop", "labels": {"istio.io/waypoint-for": "service"}},
               "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
               "status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "Resource programmed"}]}}),
    );
    api.insert(
        GATEWAYS,
        "gateways",
        json!({"metadata": {"name": "ingress", "namespace": "shop"},
               "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    );

    // analyze: the bad CIDR, named by object and field, and exit 79.
    let (code, out) = ambit(&kubeconfig, &["analyze"]);
    println!("$ ambit analyze\n{out}");
    assert_eq!(code, 79, "{out}");
    assert!(out.contains("AuthorizationPolicy shop/bad-cidr"), "{out}");
    assert!(out.contains("ipBlocks"), "{out}");

    // waypoint list: only the waypoint class.
    let (code, list) = ambit(&kubeconfig, &["waypoint", "list", "-A", "--kube"]);
    println!("$ ambit waypoint list -A --kube\n{list}");
    assert_eq!(code, 0, "{list}");
    assert!(
        list.contains("shop       waypoint  service       True"),
        "{list}"
    );
    assert!(!list.contains("ingress"), "{list}");
    let (code, status) = ambit(
        &kubeconfig,
        &["waypoint", "status", "waypoint", "-n", "shop", "--kube"],
    );
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("Programmed=True Programmed: Resource programmed"),
        "{status}"
    );

    // delete: refused for the ingress Gateway, done for the waypoint.
    let (code, refused) = ambit(
        &kubeconfig,
        &["waypoint", "delete", "ingress", "-n", "shop", "--kube"],
    );
    assert_ne!(code, 0);
    assert!(refused.contains("is not a waypoint"), "{refused}");
    let (code, deleted) = ambit(
        &kubeconfig,
        &["waypoint", "delete", "waypoint", "-n", "shop", "--kube"],
    );
    assert_eq!(code, 0, "{deleted}");
    assert!(
        api.requests().iter().any(|r| r.method == "DELETE"
            && r.path == format!("{GATEWAYS}/namespaces/shop/gateways/waypoint")),
        "{:#?}",
        api.requests()
    );
    assert!(
        api.object(GATEWAYS, "gateways", "shop", "waypoint")
            .is_none()
    );
    assert!(
        api.object(GATEWAYS, "gateways", "shop", "ingress")
            .is_some()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
