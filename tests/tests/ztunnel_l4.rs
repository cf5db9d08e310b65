//! ztunnel end to end on real namespaces with real eBPF capture: two nodes, pods
//! talking through HBONE without knowing it, L4 policy, metrics, and enrolment
//! changing at run time. Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ambit_api::model::{LocalConfig, ProxyState};
use ambit_cluster::client::http_get;
use ambit_e2e::cluster::{
    ALPN_H2_EXT, Exchange, LinkCapture, Pod as PodNet, Topology, contains, echo_app, talk, topology,
};
use ambit_e2e::pki;
use ambit_hbone::ca::CertificateSigner;
use ztunnel::Ztunnel;

fn marker() -> Vec<u8> {
    format!("MARKER-{:032x}", rand::random::<u128>()).into_bytes()
}

struct Pod<'a> {
    name: &'a str,
    ns: &'a str,
    sa: &'a str,
    ip: Ipv4Addr,
    node: u8,
    mesh: bool,
    service: bool,
}

fn workload_yaml(p: &Pod<'_>) -> String {
    let services = if p.service {
        "{\"demo/echo.demo.svc.cluster.local\": {80: 8080}}"
    } else {
        "{}"
    };
    format!(
        "- {{uid: Kubernetes//Pod/{ns}/{name}, name: {name}, namespace: {ns}, serviceAccount: {sa}, \
         trustDomain: cluster.local, workloadIps: [\"{ip}\"], protocol: {proto}, node: node{node}, \
         canonicalName: {name}, workloadName: {name}, services: {services}}}\n",
        ns = p.ns,
        name = p.name,
        sa = p.sa,
        ip = p.ip,
        node = p.node,
        proto = if p.mesh { "HBONE" } else { "TCP" },
    )
}

fn state(pods: &[Pod<'_>], policies: &str) -> ProxyState {
    state_with_waypoint(pods, policies, None)
}

/// [`state`], with pod `waypoint_for` behind a waypoint at 10.96.0.99.
fn state_with_waypoint(pods: &[Pod<'_>], policies: &str, waypoint_for: Option<&str>) -> ProxyState {
    let mut yaml = String::from("workloads:\n");
    for p in pods {
        let mut w = workload_yaml(p);
        if waypoint_for == Some(p.name) {
            w = w.replace(
                "services:",
                "waypoint: {destination: /10.96.0.99}, services:",
            );
        }
        yaml.push_str(&w);
    }
    yaml.push_str(
        "services:\n- {name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, \
         vips: [\"/10.96.0.10\"], ports: {80: 8080}}\n",
    );
    yaml.push_str(policies);
    ProxyState::from_config(&LocalConfig::parse(&yaml, "test state").expect("state yaml"))
}

fn ztunnel(node: u8, signer: Arc<dyn CertificateSigner>, st: ProxyState) -> Ztunnel {
    ambit_e2e::local_ztunnel(&format!("node{node}"), signer, st)
}

fn pod<'a>(t: &'a Topology, name: &str) -> &'a PodNet {
    t.pod(name).unwrap_or_else(|| panic!("no pod {name}"))
}

fn netns(t: &Topology, name: &str) -> ambit_proxy_core::netns::Netns {
    pod(t, name).ns.open().expect("pod netns")
}

fn node_netns(t: &Topology, n: u8) -> ambit_proxy_core::netns::Netns {
    t.node(n).expect("node").ns.open().expect("node netns")
}

fn uid(ns: &str, name: &str) -> String {
    ambit_api::model::pod_uid(ns, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_through_hbone_with_policy_and_metrics() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let mut cluster = topology("l4", 2);
    let ip_a = cluster.add_pod("a", 1).expect("pod");
    let ip_c = cluster.add_pod("c", 1).expect("pod");
    let ip_b2 = cluster.add_pod("b2", 1).expect("pod");
    let ip_b = cluster.add_pod("b", 2).expect("pod");
    let pods = [
        Pod {
            name: "a",
            ns: "demo",
            sa: "a",
            ip: ip_a,
            node: 1,
            mesh: true,
            service: false,
        },
        Pod {
            name: "c",
            ns: "other",
            sa: "c",
            ip: ip_c,
            node: 1,
            mesh: true,
            service: false,
        },
        Pod {
            name: "b2",
            ns: "demo",
            sa: "b",
            ip: ip_b2,
            node: 1,
            mesh: true,
            service: false,
        },
        Pod {
            name: "b",
            ns: "demo",
            sa: "b",
            ip: ip_b,
            node: 2,
            mesh: true,
            service: true,
        },
    ];
    let policy = "policies:\n- {name: only-a, namespace: demo, scope: Namespace, action: Allow, dryRun: false, \
                  rules: [[[{principals: [!Exact cluster.local/ns/demo/sa/a]}]]]}\n";
    let signer: Arc<dyn CertificateSigner> = Arc::new(pki::root("cluster.local", "mesh root"));
    let z1 = ztunnel(1, signer.clone(), state(&pods, policy));
    let z2 = Arc::new(ztunnel(2, signer, state(&pods, policy)));
    let node2 = cluster.node(2).expect("node2").ns.name().to_string();
    let _admin = ztunnel::admin::start(&z2, &node_netns(&cluster, 2)).expect("admin endpoints");
    let ready = http_get(
        &node2,
        "127.0.0.1:15021".parse().expect("addr"),
        "/healthz/ready",
    )
    .await
    .expect("readiness")
    .expect("response");
    assert!(
        ready.starts_with("HTTP/1.1 500") && ready.contains("not ready, pending: pod demo/b"),
        "{ready}"
    );
    for name in ["a", "c", "b2"] {
        let ns = if name == "c" { "other" } else { "demo" };
        z1.add_pod(&uid(ns, name), netns(&cluster, name))
            .expect("enroll on node1");
    }
    z2.add_pod(&uid("demo", "b"), netns(&cluster, "b"))
        .expect("enroll on node2");
    let b_accepts = echo_app(pod(&cluster, "b"), 8080).await;
    echo_app(pod(&cluster, "b2"), 8080).await;

    let link = LinkCapture::start(&node_netns(&cluster, 1)).expect("capture");
    let secret = marker();

    // A → B's pod IP, across nodes.
    match talk(pod(&cluster, "a"), SocketAddr::from((ip_b, 8080)), &secret).await {
        Exchange::Served { greeting, echoed } => {
            assert!(greeting.starts_with("b saw"), "{greeting}");
            assert_eq!(echoed, secret);
        }
        other => panic!("a → b pod IP: {other:?}"),
    }
    // A → the Service VIP (resolved by ztunnel to B).
    match talk(
        pod(&cluster, "a"),
        "10.96.0.10:80".parse().expect("vip"),
        &secret,
    )
    .await
    {
        Exchange::Served { greeting, echoed } => {
            assert!(greeting.starts_with("b saw"), "{greeting}");
            assert_eq!(echoed, secret);
        }
        other => panic!("a → VIP: {other:?}"),
    }
    // A → B2 on the same node: same path, same policy.
    match talk(pod(&cluster, "a"), SocketAddr::from((ip_b2, 8080)), &secret).await {
        Exchange::Served { greeting, .. } => assert!(greeting.starts_with("b2 saw"), "{greeting}"),
        other => panic!("a → b2 same node: {other:?}"),
    }
    // C is not allowed: no payload, and B's app never accepts.
    let before = b_accepts.load(Ordering::SeqCst);
    let denied = talk(pod(&cluster, "c"), SocketAddr::from((ip_b, 8080)), &secret).await;
    assert!(
        matches!(denied, Exchange::ClosedEmpty),
        "c → b must be refused: {denied:?}"
    );
    assert_eq!(
        b_accepts.load(Ordering::SeqCst),
        before,
        "b's app never saw c"
    );

    let wire = link.finish();
    assert!(!wire.is_empty(), "the capture saw the node link");
    assert!(
        !contains(&wire, &secret),
        "payload marker crossed the node link in clear"
    );
    assert!(
        contains(&wire, ALPN_H2_EXT),
        "ClientHello with ALPN h2 on the link"
    );

    // Node 2's ztunnel reports A's identity as the source principal, and C's denial.
    let a_id = "spiffe://cluster.local/ns/demo/sa/a";
    let m2 = z2.metrics();
    assert!(
        m2.opened_where(|l| l.reporter == "destination" && l.source.principal == a_id) >= 2,
        "{}",
        m2.render()
    );
    assert!(
        m2.failed_where(|l| l.response_flags == "DENY"
            && l.source.principal == "spiffe://cluster.local/ns/other/sa/c")
            >= 1,
        "{}",
        m2.render()
    );
    // Both reporters close their series (node2 saw a → b twice: pod IP and
    // VIP; node1 reports all three as the source) with the bytes each way (received:
    // client to server, as Istio counts it). A relay ends just after the
    // client sees EOF: give the counters a moment.
    let from_a = |l: &ztunnel::metrics::TrafficLabels| l.source.principal == a_id;
    let mut closed = ((0, 0, 0), (0, 0, 0));
    for _ in 0..50 {
        closed = (
            m2.closed_where(|l| l.reporter == "destination" && from_a(l)),
            z1.metrics()
                .closed_where(|l| l.reporter == "source" && from_a(l)),
        );
        if closed.0.0 >= 2 && closed.1.0 >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (dst, src) = closed;
    assert!(
        dst.0 >= 2 && src.0 >= 3,
        "closed: destination {dst:?}, source {src:?}"
    );
    let n = secret.len() as u64;
    assert!(
        dst.1 >= 2 * n && src.1 >= 3 * n,
        "request bytes: {dst:?} {src:?}"
    );
    assert!(
        dst.2 >= 2 * n && src.2 >= 3 * n,
        "response bytes: {dst:?} {src:?}"
    );
    let text = m2.render();
    assert!(
        text.contains(&format!("source_principal=\"{a_id}\"")),
        "{text}"
    );
    assert!(text.contains("connection_security_policy=\"mutual_tls\""));
    assert!(text.ends_with("# EOF\n"));
    // The same over HTTP on 15020, and the pod's certificate in /config_dump.
    let scraped = http_get(
        &node2,
        "172.30.0.2:15020".parse().expect("addr"),
        "/metrics",
    )
    .await
    .expect("scrape")
    .expect("response");
    assert!(
        scraped.contains(&format!("source_principal=\"{a_id}\"")),
        "{scraped}"
    );
    let dump = http_get(
        &node2,
        "127.0.0.1:15000".parse().expect("addr"),
        "/config_dump",
    )
    .await
    .expect("config_dump")
    .expect("response");
    assert!(
        dump.contains("\"identity\": \"spiffe://cluster.local/ns/demo/sa/b\""),
        "{dump}"
    );
    assert!(dump.contains("\"serialNumber\""));
    // Node 1 reports the denial from the source side too.
    assert!(
        z1.metrics()
            .failed_where(|l| l.reporter == "source" && l.response_flags == "DENY")
            >= 1
    );

    // B leaves node 2's state while its pod is still enrolled (xDS ahead of
    // ZDS): with no workload there is no policy to look up, and the
    // connection is refused rather than let through with none (`only-a`
    // refused c above; c must stay refused).
    z2.update_state(state(&pods[..3], policy));
    let before = b_accepts.load(Ordering::SeqCst);
    let unknown = talk(pod(&cluster, "c"), SocketAddr::from((ip_b, 8080)), &secret).await;
    assert!(
        matches!(unknown, Exchange::ClosedEmpty),
        "c → b unknown to its ztunnel must be refused: {unknown:?}"
    );
    assert_eq!(
        b_accepts.load(Ordering::SeqCst),
        before,
        "b's app never saw c"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_at_run_time_switches_between_plaintext_and_mtls() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let mut cluster = topology("enrol", 2);
    let ip_u = cluster.add_pod("u", 1).expect("pod");
    let ip_b = cluster.add_pod("b", 2).expect("pod");
    let pods = |u_mesh: bool| {
        [
            Pod {
                name: "u",
                ns: "plain",
                sa: "u",
                ip: ip_u,
                node: 1,
                mesh: u_mesh,
                service: false,
            },
            Pod {
                name: "b",
                ns: "demo",
                sa: "b",
                ip: ip_b,
                node: 2,
                mesh: true,
                service: true,
            },
        ]
    };
    let signer: Arc<dyn CertificateSigner> = Arc::new(pki::root("cluster.local", "mesh root"));
    let z1 = ztunnel(1, signer.clone(), state(&pods(false), ""));
    let z2 = ztunnel(2, signer, state(&pods(false), ""));
    z2.add_pod(&uid("demo", "b"), netns(&cluster, "b"))
        .expect("enroll b");
    echo_app(pod(&cluster, "b"), 8080).await;
    let to_b = SocketAddr::from((ip_b, 8080));

    // Not enrolled: plain TCP on the link (PERMISSIVE: B's 15006 takes it).
    let link = LinkCapture::start(&node_netns(&cluster, 1)).expect("capture");
    let m1 = marker();
    assert!(matches!(
        talk(pod(&cluster, "u"), to_b, &m1).await,
        Exchange::Served { .. }
    ));
    assert!(
        contains(&link.finish(), &m1),
        "un-enrolled traffic is plaintext on the link"
    );
    assert!(
        z2.metrics()
            .opened_where(|l| l.connection_security_policy == "unknown")
            >= 1
    );

    // Enrol the running pod: same namespace, same process; next connection is mTLS.
    z1.update_state(state(&pods(true), ""));
    z2.update_state(state(&pods(true), ""));
    z1.add_pod(&uid("plain", "u"), netns(&cluster, "u"))
        .expect("enroll u");
    let link = LinkCapture::start(&node_netns(&cluster, 1)).expect("capture");
    let m2 = marker();
    assert!(matches!(
        talk(pod(&cluster, "u"), to_b, &m2).await,
        Exchange::Served { .. }
    ));
    let wire = link.finish();
    assert!(!contains(&wire, &m2), "enrolled traffic is not in clear");
    assert!(contains(&wire, ALPN_H2_EXT));

    // Release it: plain again.
    z1.remove_pod(&uid("plain", "u")).expect("release u");
    z1.update_state(state(&pods(false), ""));
    z2.update_state(state(&pods(false), ""));
    let link = LinkCapture::start(&node_netns(&cluster, 1)).expect("capture");
    let m3 = marker();
    assert!(matches!(
        talk(pod(&cluster, "u"), to_b, &m3).await,
        Exchange::Served { .. }
    ));
    assert!(
        contains(&link.finish(), &m3),
        "released pod is plaintext again"
    );

    // STRICT on B (Istio's form: deny peers without an identity) refuses plaintext.
    let strict = "policies:\n- {name: strict, namespace: demo, scope: Namespace, action: Deny, dryRun: false, \
                  rules: [[[{notPrincipals: [!Presence null]}]]]}\n";
    z2.update_state(state(&pods(false), strict));
    let refused = talk(pod(&cluster, "u"), to_b, &marker()).await;
    assert!(
        matches!(refused, Exchange::ClosedEmpty | Exchange::ConnectFailed(_)),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vip_balances_over_healthy_endpoints_only() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let mut cluster = topology("lb", 2);
    let ip_a = cluster.add_pod("a", 1).expect("pod");
    let ip_e1 = cluster.add_pod("e1", 1).expect("pod");
    let ip_e2 = cluster.add_pod("e2", 2).expect("pod");
    let ip_e3 = cluster.add_pod("e3", 2).expect("pod");
    let pods = [
        Pod {
            name: "a",
            ns: "demo",
            sa: "a",
            ip: ip_a,
            node: 1,
            mesh: true,
            service: false,
        },
        Pod {
            name: "e1",
            ns: "demo",
            sa: "echo",
            ip: ip_e1,
            node: 1,
            mesh: true,
            service: true,
        },
        Pod {
            name: "e2",
            ns: "demo",
            sa: "echo",
            ip: ip_e2,
            node: 2,
            mesh: true,
            service: true,
        },
        Pod {
            name: "e3",
            ns: "demo",
            sa: "echo",
            ip: ip_e3,
            node: 2,
            mesh: true,
            service: true,
        },
    ];
    // e3 is an endpoint of the Service but unhealthy.
    let mut st = String::from("workloads:\n");
    for p in &pods {
        let mut w = workload_yaml(p);
        if p.name == "e3" {
            w = w.replace("services:", "status: Unhealthy, services:");
        }
        st.push_str(&w);
    }
    st.push_str(
        "services:\n- {name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, \
         vips: [\"/10.96.0.10\"], ports: {80: 8080}}\n",
    );
    let state = || ProxyState::from_config(&LocalConfig::parse(&st, "lb state").expect("state"));
    let signer: Arc<dyn CertificateSigner> = Arc::new(pki::root("cluster.local", "mesh root"));
    let z1 = ztunnel(1, signer.clone(), state());
    let z2 = ztunnel(2, signer, state());
    for n in ["a", "e1"] {
        z1.add_pod(&uid("demo", n), netns(&cluster, n))
            .expect("enroll");
    }
    for n in ["e2", "e3"] {
        z2.add_pod(&uid("demo", n), netns(&cluster, n))
            .expect("enroll");
    }
    for n in ["e1", "e2", "e3"] {
        echo_app(pod(&cluster, n), 8080).await;
    }
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..100 {
        match talk(
            pod(&cluster, "a"),
            "10.96.0.10:80".parse().expect("vip"),
            b"x",
        )
        .await
        {
            Exchange::Served { greeting, .. } => {
                let who = greeting
                    .split_whitespace()
                    .next()
                    .unwrap_or("?")
                    .to_string();
                *served.entry(who).or_default() += 1;
            }
            other => panic!("connection {i}: {other:?}"),
        }
    }
    assert_eq!(
        served.get("e3"),
        None,
        "unhealthy endpoint got traffic: {served:?}"
    );
    for e in ["e1", "e2"] {
        assert!(
            served.get(e).copied().unwrap_or(0) >= 30,
            "{e} got < 30%: {served:?}"
        );
    }
}

/// Whether the peer closes `conn` within `limit` while it keeps writing.
async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            let _ = conn.write_all(b"after\n").await;
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .is_ok()
}

/// Istio's ztunnel re-checks open connections when policy changes: a
/// connection admitted before a DENY is closed by the push, not left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_push_closes_open_connections_it_now_denies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let mut cluster = topology("push", 2);
    let ip_a = cluster.add_pod("a", 1).expect("pod");
    let ip_b = cluster.add_pod("b", 2).expect("pod");
    let pods = [
        Pod {
            name: "a",
            ns: "demo",
            sa: "a",
            ip: ip_a,
            node: 1,
            mesh: true,
            service: false,
        },
        Pod {
            name: "b",
            ns: "demo",
            sa: "b",
            ip: ip_b,
            node: 2,
            mesh: true,
            service: false,
        },
    ];
    let signer: Arc<dyn CertificateSigner> = Arc::new(pki::root("cluster.local", "mesh root"));
    let z1 = ztunnel(1, signer.clone(), state(&pods, ""));
    let z2 = ztunnel(2, signer, state(&pods, ""));
    z1.add_pod(&uid("demo", "a"), netns(&cluster, "a"))
        .expect("enroll a");
    z2.add_pod(&uid("demo", "b"), netns(&cluster, "b"))
        .expect("enroll b");
    echo_app(pod(&cluster, "b"), 8080).await;

    let a_ns = pod(&cluster, "a").ns.name().to_string();
    let mut conn = ambit_cluster::client::connect_from(&a_ns, SocketAddr::from((ip_b, 8080)))
        .await
        .expect("connect");
    conn.write_all(b"first\n").await.expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("greeting in time")
        .expect("read");
    assert!(n > 0, "the connection is open and served");

    // An unrelated push keeps it open.
    z2.update_state(state(&pods, ""));
    conn.write_all(b"still\n").await.expect("write");
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert!(n > 0, "an unrelated push leaves the connection alone");

    // A DENY of a's identity closes it.
    let deny_a = "policies:\n- {name: deny-a, namespace: demo, scope: Namespace, action: Deny, dryRun: false, \
                  rules: [[[{principals: [!Exact cluster.local/ns/demo/sa/a]}]]]}\n";
    z2.update_state(state(&pods, deny_a));
    let closed = closed_within(&mut conn, Duration::from_secs(5)).await;
    assert!(closed, "the denied connection was closed by the push");

    // A waypoint put in front of b closes a's direct connection: it now
    // skips b's waypoint. (ztunnel has no outbound policy, as in Istio; the
    // destination's re-check is what keeps an old outbound connection from
    // outliving the policy it no longer passes.)
    z2.update_state(state(&pods, ""));
    let mut conn = ambit_cluster::client::connect_from(&a_ns, SocketAddr::from((ip_b, 8080)))
        .await
        .expect("connect");
    conn.write_all(b"direct\n").await.expect("write");
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("greeting in time")
        .expect("read");
    assert!(n > 0, "open again once the DENY is lifted");
    z2.update_state(state_with_waypoint(&pods, "", Some("b")));
    let closed = closed_within(&mut conn, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a direct connection that now skips the waypoint was closed by the push"
    );
}
