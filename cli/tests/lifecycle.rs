//! ztunnel lifecycle (issue: zero copy, lifecycle, L4 benchmark): draining
//! as on SIGTERM — listeners close, an established tunnelled connection
//! keeps flowing, new connections from enrolled pods fail (capture stays
//! on, nothing leaves in clear), and the drain ends as soon as the last
//! connection does, within the grace period. Needs root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit::cluster::LocalCluster;
use ambit::cluster::capture::LinkCapture;
use ambit::cluster::client::{connect_from, wait_listening};
use ambit_api::k8s::Resources;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{open_echo, require_root, set_ambit_bin};

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
        !ambit::cluster::capture::contains(&seen, b"secret-after-drain"),
        "no clear text left the node"
    );
    eprintln!("drain finished {took:?} after SIGTERM-equivalent, 0 connections left");
}
