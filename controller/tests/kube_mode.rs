//! `ambit-controller --kube` as a process against an API server at the HTTP
//! level (KUBECONFIG pointing at it): it starts pushing when optional APIs
//! (Gateway API, Istio networking and telemetry, Ambit's) are not
//! installed, and it deploys a waypoint Gateway's objects and status.

#[path = "common/fake_api.rs"]
mod fake_api;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fake_api::FakeApi;
use serde_json::json;

/// Kills the controller and removes its directory when the test ends,
/// passed or not.
struct Running(Child, std::path::PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-kube-mode-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start(api: &FakeApi, dir: &std::path::Path, port: u16) -> Running {
    start_replica(api, dir, port, "replica-0")
}

fn start_replica(api: &FakeApi, dir: &std::path::Path, port: u16, pod: &str) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_ambit-controller"))
        .args(["--kube", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics", "127.0.0.1:0"])
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .env("KUBECONFIG", api.kubeconfig(dir))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAME", pod)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start ambit-controller");
    Running(child, dir.to_path_buf())
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serving(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn pushes_without_the_optional_apis() {
    let api = FakeApi::start().await;
    for group in [
        "gateway.networking.k8s.io",
        "networking.istio.io",
        "telemetry.istio.io",
        "ambit.dev",
    ] {
        api.without_group(group);
    }
    let dir = scratch("optional");
    let port = free_port();
    let _controller = start(&api, &dir, port);
    // The xDS/CA listener opens once the first snapshot is built.
    until("xDS served", || serving(port)).await;
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.method == "GET"
            && r.path == "/apis/gateway.networking.k8s.io/v1/gateways"
            && !r.query.contains("watch=true")),
        "the Gateway API was asked for"
    );
    assert!(
        reqs.iter().any(|r| r.method == "PATCH"
            && r.path == "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert"),
        "the root is published"
    );
}

fn waypoint_cluster(api: &FakeApi) {
    api.insert(
        "/api/v1",
        "namespaces",
        json!({"metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    api.insert(
        "/apis/gateway.networking.k8s.io/v1",
        "gateways",
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "demo", "uid": "g-1", "generation": 1},
            "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        }),
    );
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/demo/deployments/waypoint";

#[tokio::test]
async fn deploys_a_waypoint_from_its_gateway() {
    let api = FakeApi::start().await;
    waypoint_cluster(&api);
    let dir = scratch("waypoint");
    let port = free_port();
    let _controller = start(&api, &dir, port);
    let deployment = DEPLOYMENT;
    let status = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/waypoint/status";
    until("waypoint deployed and its status written", || {
        let w = api.writes();
        w.iter().any(|r| r.path == deployment) && w.iter().any(|r| r.path == status)
    })
    .await;
    let writes = api.writes();
    let d = &writes
        .iter()
        .find(|r| r.path == deployment)
        .expect("deployment")
        .body;
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], controller::images::WAYPOINT.as_str());
    let env = |name: &str| {
        container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    assert_eq!(
        env("XDS_ADDRESS"),
        Some(json!("ambit-controller.istio-system.svc:15012"))
    );
    assert_eq!(env("TRUST_DOMAIN"), Some(json!("cluster.local")));
    // The waypoint's namespace gets the same root the controller publishes
    // in its own.
    let root_in = |ns: &str| {
        writes
            .iter()
            .find(|r| r.path == format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert"))
            .map(|r| r.body["data"]["root-cert.pem"].clone())
    };
    assert!(root_in("istio-system").is_some());
    assert_eq!(root_in("demo"), root_in("istio-system"));
}

#[tokio::test]
async fn two_replicas_share_one_root_and_one_deploys() {
    let api = FakeApi::start().await;
    waypoint_cluster(&api);
    let (dir_a, dir_b) = (scratch("replica-a"), scratch("replica-b"));
    let (port_a, port_b) = (free_port(), free_port());
    let _a = start_replica(&api, &dir_a, port_a, "replica-a");
    let _b = start_replica(&api, &dir_b, port_b, "replica-b");
    until("both replicas serve", || serving(port_a) && serving(port_b)).await;
    until("the waypoint deployed", || {
        api.writes().iter().any(|r| r.path == DEPLOYMENT)
    })
    .await;
    // Give the follower time to do anything it should not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = api.writes();
    let applies = writes.iter().filter(|r| r.path == DEPLOYMENT).count();
    assert_eq!(applies, 1, "only the leader deploys");
    let lease = api
        .object(
            "/apis/coordination.k8s.io/v1",
            "leases",
            "istio-system",
            "ambit-waypoint-deployer",
        )
        .expect("lease");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(["replica-a", "replica-b"].contains(&holder), "{holder}");
    // One root: created once, published identically by both.
    let roots: Vec<_> = writes
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert")
        .map(|r| r.body["data"]["root-cert.pem"].clone())
        .collect();
    assert_eq!(roots.len(), 2, "each replica publishes the root");
    assert_eq!(roots[0], roots[1], "the same root");
    let secret = api
        .object("/api/v1", "secrets", "istio-system", "istio-ca-secret")
        .expect("shared root stored");
    assert!(secret["data"]["ca-cert.pem"].is_string());
}
