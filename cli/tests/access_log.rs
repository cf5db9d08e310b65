//! ztunnel's access log on a local cluster: when a meshed connection ends,
//! both ztunnels write Istio ztunnel's `connection complete` line with the
//! two identities, the bytes each way and the duration.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use common::{exchange, require_root, set_ambit_bin};

const CLUSTER: &str = r#"
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
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  nodeName: node2
  serviceAccountName: web
  containers: [{name: w, image: ambit, command: [ambit, echo, --port, "9000"]}]
"#;

/// Everything the process logs, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self, containing: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
            .lines()
            .filter(|l| l.contains(containing))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_ztunnels_log_connection_complete() {
    require_root();
    set_ambit_bin();
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("access=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut res = Resources::default();
    res.add_yaml(CLUSTER, "access.yaml").expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    let web = cluster.pod("shop/web-0").expect("web");
    let to = SocketAddr::new(web.ip.into(), 9000);
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let mut reply = String::new();
    for _ in 0..50 {
        reply = exchange(&client, to, b"hello\n").await;
        if reply.contains("saw") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reply.contains("saw"), "{reply:?}");

    // The connection is closed: both ends report it.
    let mut complete = Vec::new();
    for _ in 0..50 {
        complete = log.lines("connection complete");
        if complete.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let side = |reporter: &str| {
        complete
            .iter()
            .find(|l| l.contains(&format!("reporter=\"{reporter}\"")))
            .cloned()
            .unwrap_or_else(|| panic!("no {reporter} line in {complete:#?}"))
    };
    let (src, dst) = (side("source"), side("destination"));
    for l in [&src, &dst] {
        assert!(
            l.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/client\""),
            "{l}"
        );
        assert!(
            l.contains("dst.identity=\"spiffe://cluster.local/ns/shop/sa/web\""),
            "{l}"
        );
        assert!(l.contains("duration="), "{l}");
    }
    assert!(src.contains("direction=\"outbound\""), "{src}");
    assert!(dst.contains("direction=\"inbound\""), "{dst}");
    // "hello\n" went from client to server: the source sent it, the
    // destination received it; the answer went the other way.
    assert!(src.contains("bytes_sent=6"), "{src}");
    assert!(dst.contains("bytes_recv=6"), "{dst}");
    let answer = reply.len();
    assert!(src.contains(&format!("bytes_recv={answer}")), "{src}");
    assert!(dst.contains(&format!("bytes_sent={answer}")), "{dst}");
}
