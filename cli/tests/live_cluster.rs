//! The commands that read a Kubernetes cluster, against an API server at
//! the HTTP level (KUBECONFIG pointing at it): `ambit analyze` without `-f`
//! reports the cluster's objects as the controller would (exit 79 on
//! errors), `ambit waypoint list|status|delete --kube` read and delete the
//! `istio-waypoint` Gateways and refuse to delete another class's, and
//! `proxy-status`, `ztunnel-config` and `version --kube` reach the proxies'
//! admin endpoints through port-forwards (the WebSocket protocol the API
//! server speaks), found by their labels.

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

    // explain on the cluster's own objects: the broken DENY fails closed,
    // and the refusal and the error both say so.
    for (name, ip, node, sa) in [
        ("client", "10.1.0.2", "n1", "client"),
        ("web-0", "10.1.0.3", "n2", "web"),
    ] {
        api.insert(
            "/api/v1",
            "pods",
            json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                   "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "image": "c"}]},
                   "status": {"podIP": ip, "phase": "Running"}}),
        );
    }
    let (code, why) = ambit(
        &kubeconfig,
        &[
            "x",
            "explain",
            "--kube",
            "--from",
            "shop/client",
            "--to",
            "shop/web-0:8080",
        ],
    );
    println!("$ ambit x explain --kube --from shop/client --to shop/web-0:8080\n{why}");
    assert_eq!(code, 1, "{why}");
    assert!(
        why.contains("REFUSED: connection closed due to policy rejection: explicitly denied by: shop/bad-cidr"),
        "{why}"
    );
    assert!(
        why.contains("config error (fails closed)") && why.contains("ipBlocks"),
        "{why}"
    );

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

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy's endpoints on loopback: `/config_dump` (`dump`) and
/// `/healthz/ready`, one request per connection.
async fn fake_proxy(dump: serde_json::Value) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let dump = dump.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if head.starts_with("GET /config_dump") {
                    dump.to_string()
                } else if head.starts_with("GET /metrics") {
                    "istio_build{component=\"x\",tag=\"9.9.9\"} 1\n".to_string()
                } else {
                    "ready".to_string()
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_through_port_forwards() {
    let api = FakeApi::start().await;
    let dir = std::env::temp_dir().join(format!("ambit-live-pf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = api.kubeconfig(&dir);
    let ztunnel = fake_proxy(json!({
        "workloads": [{"uid": "u", "name": "web-0", "namespace": "shop", "workloadIps": ["10.1.2.3"],
                       "node": "node-a", "protocol": "HBONE", "workloadName": "web",
                       "services": {"shop/web.shop.svc.cluster.local": {"8080": 8080}}}],
        "services": [], "certificates": [],
        "policies": [{"name": "shop-only", "namespace": "shop", "action": "Allow", "scope": "Namespace"}],
        "version": {"version": "9.9.9"},
    }))
    .await;
    let waypoint = fake_proxy(
        json!({"waypoint": "shop/waypoint", "version": {"version": "9.9.9"},
        "services": [{"hostname": "web.shop.svc.cluster.local",
                      "authorization": [{"name": "shop/no-admin", "action": "DENY"}]}]}),
    )
    .await;
    api.insert(
        "/api/v1",
        "pods",
        json!({"metadata": {"name": "ztunnel-x1", "namespace": "istio-system", "labels": {"app": "ztunnel"}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "z", "image": "z"}]}}),
    );
    api.insert(
        "/api/v1",
        "pods",
        json!({"metadata": {"name": "waypoint-7f9", "namespace": "shop", "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "w", "image": "w"}]}}),
    );
    api.insert(
        "/api/v1",
        "pods",
        json!({"metadata": {"name": "ambit-controller-0", "namespace": "istio-system", "labels": {"app": "ambit-controller"}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "c"}]}}),
    );
    api.forward_pod("istio-system", "ambit-controller-0", 15014, ztunnel);
    for port in [15000, 15020, 15021] {
        api.forward_pod("istio-system", "ztunnel-x1", port, ztunnel);
        api.forward_pod("shop", "waypoint-7f9", port, waypoint);
    }

    let (code, status) = ambit(&kubeconfig, &["proxy-status", "--kube"]);
    println!("$ ambit proxy-status --kube\n{status}");
    assert_eq!(code, 0, "{status}");
    let z = status
        .lines()
        .find(|l| l.starts_with("ztunnel node-a"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        z.contains(" READY ") && z.contains("1 workloads") && z.contains("9.9.9"),
        "{z}"
    );
    let w = status
        .lines()
        .find(|l| l.starts_with("shop/waypoint-7f9"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(w.contains("1 services (waypoint shop/waypoint)"), "{w}");
    let (code, workloads) = ambit(&kubeconfig, &["ztunnel-config", "workloads", "--kube"]);
    assert_eq!(code, 0, "{workloads}");
    assert!(
        workloads.contains("shop       web-0     10.1.2.3  node-a"),
        "{workloads}"
    );
    // Every read went through the pod's portforward subresource.
    let forwards = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/istio-system/pods/ztunnel-x1/portforward")
        .count();
    assert!(forwards >= 3, "{:#?}", api.requests());
    let (_, version) = ambit(&kubeconfig, &["version", "--kube"]);
    assert!(
        version.contains("controller istio-system/ambit-controller-0: 9.9.9"),
        "{version}"
    );
    assert!(
        version.contains("ztunnel node-a version: 9.9.9"),
        "{version}"
    );
    // Which policies apply to a pod, from both proxies' dumps.
    let (code, authz) = ambit(
        &kubeconfig,
        &["x", "authz", "check", "shop/web-0", "--kube"],
    );
    println!("$ ambit x authz check shop/web-0 --kube\n{authz}");
    assert_eq!(code, 0, "{authz}");
    assert!(
        authz.contains("shop/shop-only") && authz.contains("ztunnel node-a"),
        "{authz}"
    );
    assert!(
        authz.contains("shop/no-admin") && authz.contains("waypoint shop/waypoint"),
        "{authz}"
    );
    // The dashboard on Kubernetes: its API answers from the same proxies.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let _dashboard = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ambit"))
            .args([
                "dashboard",
                "--kube",
                "--address",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ambit dashboard"),
    );
    let get = |path: &str| -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        serde_json::from_str(reply.split_once("\r\n\r\n")?.1).ok()
    };
    let mut graph = None;
    for _ in 0..100 {
        graph = get("/api/graph");
        if graph.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let graph = graph.expect("dashboard /api/graph");
    assert_eq!(graph["cluster"], "kubernetes", "{graph}");
    assert_eq!(graph["graph"]["nodes"][0]["id"], "shop/web", "{graph}");
    let detail = get("/api/workload?id=shop%2Fweb").expect("workload");
    assert_eq!(
        detail["l4Policies"][0]["name"], "shop/shop-only",
        "{detail}"
    );
    assert_eq!(detail["l7Policies"][0]["name"], "shop/no-admin", "{detail}");
    let _ = std::fs::remove_dir_all(&dir);
}
