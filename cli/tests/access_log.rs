//! The access log on a local cluster: when a meshed connection ends, both
//! ztunnels write Istio ztunnel's `connection complete` line with the two
//! identities, the bytes each way and the duration; the waypoint writes a
//! line per request with Envoy's fields.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use common::{exchange, require_root, set_ambit_bin};

const CLUSTER: &str = include_str!("fixtures/shop_waypoint.yaml");

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
        // The connection that worked (attempts made while the app was
        // starting ended with an error line of their own).
        complete = log
            .lines("connection complete")
            .into_iter()
            .filter(|l| !l.contains("error="))
            .collect();
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

    // Through the waypoint: one line per request, Envoy's fields.
    let vip: SocketAddr = "10.96.0.60:8080".parse().expect("vip");
    for (path, id) in [("/ok?x=1", "req-ok"), ("/admin/x", "req-denied")] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: web\r\nuser-agent: access-test\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n"
        );
        let reply = exchange(&client, vip, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1"), "{reply:?}");
    }
    let mut requests = Vec::new();
    for _ in 0..50 {
        requests = log.lines(" request ");
        if requests.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = |id: &str| {
        requests
            .iter()
            .find(|l| l.contains(&format!("request_id=\"{id}\"")))
            .cloned()
            .unwrap_or_else(|| panic!("no line for {id} in {requests:#?}"))
    };
    let ok = line("req-ok");
    for field in [
        "reporter=\"waypoint\"",
        "method=GET",
        "path=/ok?x=1",
        "protocol=\"HTTP/1.1\"",
        "authority=web",
        "user_agent=\"access-test\"",
        "code=200",
        "src.principal=spiffe://cluster.local/ns/shop/sa/client",
        "dst.service=web.shop.svc.cluster.local",
        "dst.workload=web-0",
    ] {
        assert!(ok.contains(field), "{field} missing: {ok}");
    }
    assert!(ok.contains("details=via_upstream"), "{ok}");
    // A refusal names the policy and rule that decided it, as Envoy's
    // RBAC filter does in Istio's waypoints, with no response flag.
    let denied = line("req-denied");
    assert!(denied.contains("code=403"), "{denied}");
    assert!(denied.contains("path=/admin/x"), "{denied}");
    assert!(denied.contains("flags=\"-\""), "{denied}");
    assert!(
        denied.contains(
            "details=rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[1]]"
        ),
        "{denied}"
    );

    // An L4 refusal: both ztunnels write `connection complete` at level
    // error, the destination with the policy that refused it (Istio
    // ztunnel's words), the source with the tunnel's answer.
    let refused = SocketAddr::new(web.ip.into(), 7000);
    let reply = exchange(&client, refused, b"hello\n").await;
    assert!(
        !reply.contains("saw"),
        "port 7000 must be refused: {reply:?}"
    );
    let mut errors = Vec::new();
    for _ in 0..50 {
        errors = log
            .lines("connection complete")
            .into_iter()
            // The refused port's lines (not those of attempts made while
            // the app was starting).
            .filter(|l| l.contains("ERROR") && l.contains(":7000 "))
            .collect();
        if errors.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let find = |reporter: &str| {
        errors
            .iter()
            .find(|l| l.contains(&format!("reporter=\"{reporter}\"")))
            .cloned()
            .unwrap_or_else(|| panic!("no {reporter} error line in {errors:#?}"))
    };
    let dst = find("destination");
    assert!(
        dst.contains(
            "error=connection closed due to policy rejection: explicitly denied by: shop/no-7000"
        ),
        "{dst}"
    );
    assert!(dst.contains("bytes_recv=0"), "{dst}");
    assert!(
        dst.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/client\""),
        "{dst}"
    );
    let src = find("source");
    assert!(src.contains("error=http status: 401 Unauthorized"), "{src}");
}
