//! The controller driving a running local cluster (issue: controller): label
//! and unlabel a namespace, add and delete pods, change policy, all measured
//! against a 1 s bound; the controller killed (ztunnels keep serving old and
//! new connections) and back (they resync); the CA refusing identities of
//! other nodes; certificates renewed under a live connection. Needs root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use ambit_cluster::capture::{ALPN_H2_EXT, LinkCapture, contains};
use ambit_cluster::client::{http_get, wait_listening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound for "takes effect within a second" on a loaded CI machine.
const WITHIN: Duration = Duration::from_secs(1);

mod common;
use common::{open_echo, require_root};

/// One local cluster per process at a time (namespace names carry the pid).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  nodeName: node2
  serviceAccountName: echo
  containers: [{name: echo, image: ambit, command: [ambit, echo, --port, "8080", --port, "9000"]}]
"#;

const ECHO2: &str = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: echo2, namespace: shop, labels: {app: echo2}}
spec:
  nodeName: node1
  serviceAccountName: echo
  containers: [{name: echo, image: ambit, command: [ambit, echo, --port, "8080"]}]
"#;

const ONLY_NOBODY: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-nobody, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/nobody"]}}]}]
"#;

fn resources(yaml: &str) -> Resources {
    let mut r = Resources::default();
    r.add_yaml(yaml, "shop.yaml").expect("yaml");
    r
}

fn ambient(yaml: &str) -> String {
    yaml.replacen(
        "metadata: {name: shop}",
        "metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}",
        1,
    )
}

async fn served(netns: &str, to: SocketAddr, path: &str) -> bool {
    matches!(http_get(netns, to, path).await, Ok(Some(b)) if b.contains("pod="))
}

fn mesh_opened(cluster: &LocalCluster, node: u8) -> u64 {
    cluster
        .ztunnel(node)
        .metrics()
        .opened_where(|l| l.reporter == "source")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_changes_take_effect_within_a_second() {
    require_root();
    let _one = SERIAL.lock().await;
    common::set_ambit_bin();
    let mut cluster = LocalCluster::up(resources(SHOP), 2).await.expect("up");
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let echo = cluster.pod("shop/echo").expect("echo").clone();
    assert!(wait_listening(&echo.netns, 8080, Duration::from_secs(10)).await);
    let to = SocketAddr::from((echo.ip, 8080));
    let node1 = cluster
        .topology
        .node(1)
        .expect("node1")
        .ns
        .open()
        .expect("ns");

    // Label: the controller pushes, ztunnels capture with mTLS.
    let took = cluster
        .label_namespace("shop", Some("ambient"))
        .expect("label");
    println!("label → every ztunnel updated in {took:?}");
    assert!(took < WITHIN, "label took {took:?}");
    let cap = LinkCapture::start(&node1).expect("capture");
    assert!(served(&client, to, "/secret-after-label").await);
    let wire = cap.finish();
    assert!(contains(&wire, ALPN_H2_EXT), "mTLS on the node link");
    assert!(!contains(&wire, b"/secret-after-label"), "nothing in clear");
    assert!(mesh_opened(&cluster, 1) >= 1);

    // Add a pod: placed, pushed, enrolled and served through the mesh.
    let started = Instant::now();
    let notes = cluster
        .reload(resources(&(ambient(SHOP) + ECHO2)))
        .expect("add pod");
    let took = started.elapsed();
    println!("pod added ({notes:?}) in {took:?}");
    assert!(took < WITHIN, "adding a pod took {took:?}");
    let echo2 = cluster.pod("shop/echo2").expect("echo2").clone();
    for z in &cluster.ztunnels {
        assert!(z.shared().state().workload(&echo2.uid).is_some());
    }
    assert!(cluster.ztunnel(1).enrolled().contains(&echo2.uid));
    assert!(wait_listening(&echo2.netns, 8080, Duration::from_secs(10)).await);
    let before = mesh_opened(&cluster, 1);
    assert!(served(&client, SocketAddr::from((echo2.ip, 8080)), "/new").await);
    assert!(
        mesh_opened(&cluster, 1) > before,
        "new pod reached through HBONE"
    );

    // Delete it: gone from every ztunnel's state.
    let started = Instant::now();
    cluster
        .reload(resources(&ambient(SHOP)))
        .expect("delete pod");
    let took = started.elapsed();
    println!("pod deleted in {took:?}");
    assert!(took < WITHIN, "deleting a pod took {took:?}");
    for z in &cluster.ztunnels {
        assert!(z.shared().state().workload(&echo2.uid).is_none());
    }
    assert!(!cluster.ztunnel(1).enrolled().contains(&echo2.uid));

    // Policy: an ALLOW that admits nobody denies the client; removing it admits again.
    let started = Instant::now();
    cluster
        .reload(resources(&(ambient(SHOP) + ONLY_NOBODY)))
        .expect("policy");
    let took = started.elapsed();
    println!("policy applied in {took:?}");
    assert!(took < WITHIN, "policy took {took:?}");
    assert!(!served(&client, to, "/denied").await, "policy denies");
    let started = Instant::now();
    cluster
        .reload(resources(&ambient(SHOP)))
        .expect("policy removed");
    assert!(started.elapsed() < WITHIN);
    assert!(served(&client, to, "/allowed-again").await);

    // Unlabel: plain TCP again.
    let took = cluster.label_namespace("shop", None).expect("unlabel");
    assert!(took < WITHIN, "unlabel took {took:?}");
    let cap = LinkCapture::start(&node1).expect("capture");
    assert!(served(&client, to, "/plain-again").await);
    assert!(contains(&cap.finish(), b"/plain-again"), "plain TCP again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ztunnels_survive_a_controller_outage_and_resync() {
    require_root();
    let _one = SERIAL.lock().await;
    common::set_ambit_bin();
    let mut cluster = LocalCluster::up(resources(&ambient(SHOP)), 2)
        .await
        .expect("up");
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let echo = cluster.pod("shop/echo").expect("echo").clone();
    assert!(wait_listening(&echo.netns, 9000, Duration::from_secs(10)).await);
    let tcp = SocketAddr::from((echo.ip, 9000));
    let http = SocketAddr::from((echo.ip, 8080));

    let mut conn = open_echo(&client, tcp).await;

    cluster.stop_controller().await;
    // Established connection keeps flowing; new connections work with the last config.
    conn.write_all(b"still-here\n").await.expect("write");
    let mut back = vec![0u8; 11];
    conn.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"still-here\n");
    assert!(served(&client, http, "/while-down").await, "new connection");

    // A policy written while the controller is down reaches ztunnels once it is back.
    cluster.set_policies_no_wait(resources(&(ambient(SHOP) + ONLY_NOBODY)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served(&client, http, "/still-old-config").await);
    let restarted = Instant::now();
    cluster.start_controller().await.expect("controller back");
    let took = tokio::task::block_in_place(|| cluster.wait_converged(Duration::from_secs(20)))
        .expect("resync");
    println!("resynced {:?} after restart", restarted.elapsed().max(took));
    assert!(!served(&client, http, "/denied-after-resync").await);
    // The policy now denies the client: the connection opened before it is
    // closed by the push, as Istio's ztunnel does, not left open.
    let _ = conn.write_all(b"after\n").await;
    let mut back = vec![0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut back))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the denied connection must be closed: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_signs_only_identities_on_the_callers_node() {
    require_root();
    let _one = SERIAL.lock().await;
    common::set_ambit_bin();
    let cluster = LocalCluster::up(resources(&ambient(SHOP)), 2)
        .await
        .expect("up");
    let echo_id: ambit_identity::SpiffeId =
        "spiffe://cluster.local/ns/shop/sa/echo".parse().unwrap();
    let node1 = cluster.control.for_node(1);
    let node2 = cluster.control.for_node(2);
    let id = echo_id.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let ca = ambit_proxy_core::ca_client::CaClient::new(&node1).expect("client");
        ambit_proxy_core::certs::CertificateProvider::issue(&ca, &id, Duration::from_secs(3600))
    })
    .await
    .expect("join");
    let err = refused.expect_err("node1 runs no pod with the echo identity");
    assert!(err.to_string().contains("PermissionDenied"), "{err}");
    let id = echo_id.clone();
    let granted = tokio::task::spawn_blocking(move || {
        let ca = ambit_proxy_core::ca_client::CaClient::new(&node2).expect("client");
        ambit_proxy_core::certs::CertificateProvider::issue(&ca, &id, Duration::from_secs(3600))
    })
    .await
    .expect("join")
    .expect("node2 runs echo");
    assert_eq!(granted.identity(), &echo_id);
    // A bad token is not a node at all.
    let mut stranger = cluster.control.for_node(2);
    stranger.token = Some("not-a-token".into());
    let refused = tokio::task::spawn_blocking(move || {
        let ca = ambit_proxy_core::ca_client::CaClient::new(&stranger).expect("client");
        ambit_proxy_core::certs::CertificateProvider::issue(
            &ca,
            &echo_id,
            Duration::from_secs(3600),
        )
    })
    .await
    .expect("join");
    assert!(
        refused
            .expect_err("bad token")
            .to_string()
            .contains("Unauthenticated")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_under_a_live_connection() {
    require_root();
    let _one = SERIAL.lock().await;
    common::set_ambit_bin();
    // 6 s lifetime: renewed at 3 s and 6 s while one stream keeps carrying data.
    let cluster = LocalCluster::up_with(resources(&ambient(SHOP)), 2, Duration::from_secs(6))
        .await
        .expect("up");
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let echo = cluster.pod("shop/echo").expect("echo").clone();
    assert!(wait_listening(&echo.netns, 9000, Duration::from_secs(10)).await);
    let serial = |n: u8| {
        cluster
            .ztunnel(n)
            .config_dump()
            .pointer("/certificates/0/certChain/0/serialNumber")
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    let mut conn = open_echo(&client, SocketAddr::from((echo.ip, 9000))).await;
    let mut serials = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(7000) {
        let msg = format!("ping-{i:04}\n");
        conn.write_all(msg.as_bytes())
            .await
            .expect("write across rotation");
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back)
            .await
            .expect("read across rotation");
        assert_eq!(back, msg.as_bytes());
        if let Some(s) = serial(2) {
            serials.insert(s);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} serials seen on node2 over {i} round trips",
        serials.len()
    );
    assert!(serials.len() >= 3, "two renewals expected: {serials:?}");
    assert!(
        served(&client, SocketAddr::from((echo.ip, 8080)), "/new-cert").await,
        "new connections use the renewed certificates"
    );
}
