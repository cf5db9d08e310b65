//! ztunnel lifecycle (issue: zero copy, lifecycle, L4 benchmark): draining
//! as on SIGTERM — listeners close, an established tunnelled connection
//! keeps flowing, new connections from enrolled pods fail (capture stays
//! on, nothing leaves in clear), and the drain ends as soon as the last
//! connection does, within the grace period. A ztunnel *process* killed with
//! SIGKILL leaves its pinned capture in force (enrolled pods' connections
//! fail both ways, nothing in clear) and, started again, picks the capture up
//! and serves the same pods without restarting them. Needs root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_api::k8s::Resources;
use ambit_cluster::capture::LinkCapture;
use ambit_cluster::client::{connect_from, wait_listening};
use ambit_cluster::ztunnel_process::wait_ready;
use ambit_cluster::{LocalCluster, UpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{open_echo, require_root, set_ambit_bin};

/// Both tests build a local cluster named after this process: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
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
  containers: [{name: echo, image: ambit, command: [ambit, echo, --port, "9000"]}]
"#;

async fn roundtrip(conn: &mut tokio::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    conn.write_all(msg).await.expect("write");
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_keeps_open_connections_and_refuses_new_ones() {
    require_root();
    let _serial = SERIAL.lock().await;
    set_ambit_bin();
    let mut res = Resources::default();
    res.add_yaml(YAML, "shop.yaml").expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    let echo = cluster.pod("shop/echo").expect("echo").clone();
    assert!(wait_listening(&echo.netns, 9000, Duration::from_secs(10)).await);
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let to = SocketAddr::new(echo.ip.into(), 9000);

    // An established connection through node1's ztunnel.
    let mut conn = open_echo(&client, to).await;
    let z = cluster.ztunnels[0].clone();
    assert_eq!(z.shared().active_connections(), 1);

    // Drain with a 5 s grace period, watching node1's link for clear text.
    let node1 = cluster
        .topology
        .node(1)
        .expect("node1")
        .ns
        .open()
        .expect("netns");
    let capture = LinkCapture::start(&node1).expect("capture");
    let started = Instant::now();
    let draining = tokio::spawn({
        let z = z.clone();
        async move { z.drain(Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections from the enrolled pod fail: capture is still on and
    // nothing listens, so nothing bypasses ztunnel.
    let fresh = connect_from(&client, to).await;
    let refused = match fresh {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"secret-after-drain\n").await;
            let mut b = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
                Ok(Ok(0)) | Ok(Err(_)) | Err(_)
            )
        }
    };
    assert!(refused, "a new connection during drain must not be served");
    // The old one keeps flowing during the drain.
    for i in 0..10 {
        let msg = format!("during drain {i}\n");
        assert_eq!(roundtrip(&mut conn, msg.as_bytes()).await, msg.as_bytes());
    }
    assert!(
        !draining.is_finished(),
        "drain waits for the open connection"
    );
    drop(conn);
    let left = draining.await.expect("drain task");
    let took = started.elapsed();
    assert_eq!(left, 0, "every connection ended before the deadline");
    assert!(
        took < Duration::from_secs(5),
        "drain ended with the last connection: {took:?}"
    );
    let seen = capture.finish();
    assert!(
        !ambit_cluster::capture::contains(&seen, b"secret-after-drain"),
        "no clear text left the node"
    );
    eprintln!("drain finished {took:?} after SIGTERM-equivalent, 0 connections left");
}

const KILL_YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: front, namespace: shop, labels: {app: front}}
spec:
  nodeName: node1
  serviceAccountName: front
  containers: [{name: c, image: ambit, command: [ambit, echo, --port, "9001"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  nodeName: node2
  serviceAccountName: echo
  containers: [{name: echo, image: ambit, command: [ambit, echo, --port, "9000"]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: out, namespace: outside}
spec: {nodeName: node2, containers: [{name: c, image: ambit}]}
"#;

/// Does a connection from `netns` to `to` get an echo back within 2 s? A
/// refused, dropped (SYN unanswered) or unanswered connection does not.
async fn echoes(netns: &str, to: SocketAddr, marker: &[u8]) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), connect_from(netns, to)).await
    else {
        return false;
    };
    if s.write_all(marker).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if ambit_cluster::capture::contains(&got, marker) {
                    return true;
                }
            }
            Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_fails_closed_and_a_restart_picks_up_the_pinned_capture() {
    require_root();
    let _serial = SERIAL.lock().await;
    set_ambit_bin();
    let mut res = Resources::default();
    res.add_yaml(KILL_YAML, "shop.yaml").expect("yaml");
    let opts = UpOptions {
        ztunnel_exe: Some(env!("CARGO_BIN_EXE_ambit").into()),
        ..UpOptions::default()
    };
    let mut cluster = LocalCluster::up_opts(res, 2, opts)
        .await
        .expect("cluster up with ztunnel processes");
    let front = cluster.pod("shop/front").expect("front").clone();
    let echo = cluster.pod("shop/echo").expect("echo").clone();
    let out = cluster.pod("outside/out").expect("out").netns.clone();
    assert!(wait_listening(&echo.netns, 9000, Duration::from_secs(10)).await);
    assert!(wait_listening(&front.netns, 9001, Duration::from_secs(10)).await);
    let to_echo = SocketAddr::new(echo.ip.into(), 9000);
    let to_front = SocketAddr::new(front.ip.into(), 9001);
    let node1 = cluster
        .topology
        .node(1)
        .expect("node1")
        .ns
        .name()
        .to_string();
    let node1_ns = cluster
        .topology
        .node(1)
        .expect("node1")
        .ns
        .open()
        .expect("netns");
    let pods_before = cluster.pids();

    // Serving: front → echo in the mesh (TLS on the wire), and the plaintext
    // client outside the mesh → front through node1's inbound 15006.
    let wire = LinkCapture::start(&node1_ns).expect("capture");
    assert!(echoes(&front.netns, to_echo, b"mesh-before-kill\n").await);
    assert!(echoes(&out, to_front, b"plain-before-kill\n").await);
    assert!(
        !ambit_cluster::capture::contains(&wire.finish(), b"mesh-before-kill"),
        "mesh traffic is encrypted on node1's link"
    );

    // SIGKILL node1's ztunnel: no drain, the kernel closes all its sockets.
    let z1 = cluster.ztunnel_process(1).expect("node1 ztunnel process");
    let pin_dir = z1.pin_dir().to_path_buf();
    z1.kill();
    assert!(
        pin_dir.join("links/connect4").exists(),
        "capture stays pinned"
    );
    let wire = LinkCapture::start(&node1_ns).expect("capture");
    assert!(
        !echoes(&front.netns, to_echo, b"secret-out-while-killed\n").await,
        "an enrolled pod's outbound connection must fail while ztunnel is dead"
    );
    assert!(
        !echoes(&out, to_front, b"secret-in-while-killed\n").await,
        "inbound plaintext to an enrolled pod must not reach it while ztunnel is dead"
    );
    let seen = wire.finish();
    for secret in [&b"secret-out-while-killed"[..], b"secret-in-while-killed"] {
        assert!(
            !ambit_cluster::capture::contains(&seen, secret),
            "no clear text crossed node1's link while ztunnel was dead"
        );
    }

    // Start it again: it finds the pinned programs and maps, the node agent
    // re-sends its pods, and it serves them; no pod was restarted.
    let started = Instant::now();
    cluster
        .ztunnel_process(1)
        .expect("node1 ztunnel process")
        .restart()
        .expect("restart");
    if !wait_ready(&node1, Duration::from_secs(15)) {
        let log = cluster.ztunnel_process(1).map(|z| z.log().to_path_buf());
        let text = log.and_then(|l| std::fs::read_to_string(l).ok());
        panic!(
            "node1's ztunnel not ready again within 15 s; its log:\n{}",
            text.unwrap_or_default()
        );
    }
    let ready_after = started.elapsed();
    assert!(echoes(&front.netns, to_echo, b"mesh-after-restart\n").await);
    assert!(echoes(&out, to_front, b"plain-after-restart\n").await);
    assert_eq!(cluster.pids(), pods_before, "no pod process was restarted");
    let log = std::fs::read_to_string(cluster.ztunnel_process(1).expect("process").log())
        .expect("ztunnel log");
    assert!(
        log.contains("picked up pinned capture"),
        "the restarted ztunnel re-used the pinned capture"
    );

    // SIGTERM: drains and exits within the grace period; capture stays.
    let z1 = cluster.ztunnel_process(1).expect("node1 ztunnel process");
    assert!(
        z1.terminate(Duration::from_secs(7)),
        "exited within the drain period"
    );
    assert!(
        !echoes(&front.netns, to_echo, b"after-sigterm\n").await,
        "after a clean exit the pod still fails closed"
    );
    eprintln!("ztunnel restarted after SIGKILL and ready in {ready_after:?}");
}
