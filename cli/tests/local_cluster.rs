//! The local cluster as a user meets it: `ambit demo` end to end, and teardown
//! that leaves nothing behind even when a test fails inside a running cluster.
//! Needs root (network namespaces, eBPF).

use std::path::Path;
use std::process::Command;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;

mod common;
use common::require_root;

/// Namespaces and cgroups a run of process `pid` would own.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("ambit-{pid}-");
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(root) = ambit_ebpf::cgroup2_root() {
        let cg = root.join("ambit").join(format!("ambit-{pid}"));
        if Path::new(&cg).exists() {
            out.push(cg.display().to_string());
        }
    }
    out
}

#[test]
fn ambit_demo_shows_mesh_traffic_and_a_denial_then_cleans_up() {
    require_root();
    let running = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ambit demo");
    let demo_pid = running.id();
    let child = running.wait_with_output().expect("demo output");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "ambit demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(stdout.contains("served by demo/echo-"), "{stdout}");
    assert!(
        stdout
            .contains("TLS ClientHello with ALPN h2 seen: true; request path seen in clear: false"),
        "{stdout}"
    );
    assert!(
        stdout.contains("from spiffe://cluster.local/ns/demo/sa/client"),
        "{stdout}"
    );
    assert!(stdout.contains("denied:"), "{stdout}");
    assert!(stdout.contains("torn down"), "{stdout}");
    // The demo ran in its own process: nothing of it may remain.
    let left = leftovers(demo_pid);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Deliberately fails inside a running cluster; run by the next test in a child
/// process (so the failure is observed, not suffered).
#[test]
#[ignore]
fn deliberately_failing_test_inside_a_cluster() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut res = Resources::default();
        res.add_yaml(ambit::demo::DEMO_YAML, "demo.yaml")
            .expect("demo yaml");
        let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
        assert!(!cluster.pods.is_empty());
        panic!("failing on purpose with the cluster running");
    });
}

#[test]
fn a_failing_test_leaves_no_namespaces_cgroups_or_programs() {
    require_root();
    let running = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "deliberately_failing_test_inside_a_cluster",
            "--test-threads=1",
        ])
        .env("AMBIT_BIN", env!("CARGO_BIN_EXE_ambit"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the failing test");
    let child_pid = running.id();
    let child = running.wait_with_output().expect("failing test output");
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        !child.status.success(),
        "the deliberate failure must fail:\n{out}"
    );
    assert!(
        out.contains("failing on purpose")
            || String::from_utf8_lossy(&child.stderr).contains("failing on purpose")
    );
    // The child is gone; look for anything it would have left, by its pid.
    let left = leftovers(child_pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    // And nothing under any ambit prefix whose process is dead.
    let dead = ambit_cluster::net::stale_namespaces("ambit-");
    assert!(dead.is_empty(), "namespaces of dead runs: {dead:?}");
}

const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: node1, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  nodeName: node2
  containers: [{name: echo, image: ambit, command: [ambit, echo, --port, "8080"]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabelling_a_namespace_enrols_and_releases_running_pods() {
    use ambit_cluster::capture::{ALPN_H2_EXT, LinkCapture, contains};
    use ambit_cluster::client::{http_get, wait_listening};

    require_root();
    let mut res = Resources::default();
    res.add_yaml(SHOP, "shop.yaml").expect("yaml");
    // The pod processes are this test's `ambit` binary, not the test harness.
    let mut cluster = with_ambit_bin(|| LocalCluster::up(res, 2))
        .await
        .expect("up");
    let client = cluster.pod("shop/client").expect("client").clone();
    let echo = cluster.pod("shop/echo").expect("echo").clone();
    assert!(wait_listening(&echo.netns, 8080, std::time::Duration::from_secs(10)).await);
    let pids_before = cluster.pids();
    let to = std::net::SocketAddr::from((echo.ip, 8080));
    let node1 = cluster
        .topology
        .node(1)
        .expect("node1")
        .ns
        .open()
        .expect("netns");

    let exchange = |marker: String| {
        let client = client.netns.clone();
        async move {
            let body = http_get(&client, to, &marker)
                .await
                .expect("request")
                .expect("response");
            assert!(body.contains("pod=echo"), "{body}");
        }
    };

    let cap = LinkCapture::start(&node1).expect("capture");
    let m1 = format!("/plain-{:x}", rand_u64());
    exchange(m1.clone()).await;
    assert!(
        contains(&cap.finish(), m1.as_bytes()),
        "unlabelled namespace: plaintext"
    );

    cluster
        .label_namespace("shop", Some("ambient"))
        .expect("label");
    assert_eq!(cluster.pids(), pids_before, "no pod restarted");
    let cap = LinkCapture::start(&node1).expect("capture");
    let m2 = format!("/mesh-{:x}", rand_u64());
    exchange(m2.clone()).await;
    let wire = cap.finish();
    assert!(
        !contains(&wire, m2.as_bytes()) && contains(&wire, ALPN_H2_EXT),
        "labelled: mTLS"
    );

    cluster.label_namespace("shop", None).expect("unlabel");
    assert_eq!(cluster.pids(), pids_before, "no pod restarted");
    let cap = LinkCapture::start(&node1).expect("capture");
    let m3 = format!("/plain-again-{:x}", rand_u64());
    exchange(m3.clone()).await;
    assert!(
        contains(&cap.finish(), m3.as_bytes()),
        "unlabelled again: plaintext"
    );
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

/// Runs `f` with `$AMBIT_BIN` pointing at the built `ambit` binary.
async fn with_ambit_bin<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    common::set_ambit_bin();
    f().await
}
