//! The debugging commands against a running `ambit up` (a separate
//! process, as a user runs them from a second terminal): `proxy-status`,
//! `ztunnel-config`, `version` read the proxies' admin endpoints, and
//! `x explain` names the hop, policy and rule that refuse a request — the
//! same request sent for real is refused the same way.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::up::{Up, ambit};
use common::{exchange, require_root, status_of};

const CLUSTER: &str = include_str!("fixtures/shop_waypoint.yaml");

/// `ambit x explain --run RUN ARGS...`, printed as a transcript line.
fn explain(run: &str, args: &str) -> (i32, String) {
    let mut argv = vec!["x", "explain", "--run", run];
    argv.extend(args.split_whitespace());
    let (code, out) = ambit(&argv);
    println!("$ ambit x explain {args}\n{out}");
    (code, out)
}

/// Rows of `proxy-status` (header skipped) that say READY.
fn ready_rows(table: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| l.contains(" READY "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debugging_a_denied_request() {
    require_root();
    let up = tokio::task::block_in_place(|| Up::start("debug-tools", CLUSTER));
    let run = up.run.clone();

    // proxy-status: both ztunnels and the waypoint, ready, with config.
    let mut status = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        status = ambit(&["proxy-status", "--run", &run]).1;
        if ready_rows(&status) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("$ ambit proxy-status\n{status}");
    assert_eq!(ready_rows(&status), 3, "{status}");
    assert!(
        status.contains("ztunnel node1") && status.contains("shop/waypoint-0"),
        "{status}"
    );
    assert!(status.contains("1 policies"), "{status}");

    let (code, workloads) = ambit(&[
        "ztunnel-config",
        "workloads",
        "--run",
        &run,
        "--node",
        "node2",
    ]);
    println!("$ ambit ztunnel-config workloads --node node2\n{workloads}");
    assert_eq!(code, 0, "{workloads}");
    let web = workloads
        .lines()
        .find(|l| l.contains("web-0"))
        .unwrap_or_else(|| panic!("{workloads}"));
    assert!(web.contains("node2") && web.contains("HBONE"), "{web}");
    let (_, policies) = ambit(&["ztunnel-config", "policies", "--run", &run, "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&policies).expect("json");
    assert_eq!(parsed[0]["name"], "no-7000", "{policies}");
    let (_, certs) = ambit(&[
        "ztunnel-config",
        "certificates",
        "--run",
        &run,
        "--node",
        "node2",
    ]);
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/web") && certs.contains("Available"),
        "{certs}"
    );
    let (code, bad) = ambit(&[
        "ztunnel-config",
        "workloads",
        "--run",
        &run,
        "--node",
        "node9",
    ]);
    assert_ne!(code, 0);
    assert!(
        bad.contains("no ztunnel on node node9") && bad.contains("node1, node2"),
        "{bad}"
    );
    // Which policies apply to web-0, and who enforces each.
    let (code, authz) = ambit(&["x", "authz", "check", "shop/web-0", "--run", &run]);
    println!("$ ambit x authz check shop/web-0\n{authz}");
    assert_eq!(code, 0, "{authz}");
    let line = |name: &str| {
        authz
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {authz}"))
            .to_string()
    };
    assert!(
        line("shop/no-7000").contains("DENY") && line("shop/no-7000").contains("ztunnel node2")
    );
    assert!(line("shop/no-admin").contains("waypoint shop/waypoint"));
    // The local cluster's waypoints, as `istioctl waypoint list|status`.
    let (code, waypoints) = ambit(&["waypoint", "list", "-A", "--run", &run]);
    assert_eq!(code, 0, "{waypoints}");
    assert!(
        waypoints.contains("shop       waypoint  service       True"),
        "{waypoints}"
    );
    let (code, status) = ambit(&["waypoint", "status", "-n", "shop", "--run", &run]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("Programmed=True"), "{status}");
    // An open connection shows up in ztunnel-config connections.
    let echo_port = format!("{}:9000", up.pod_field("shop/web-0", "ip"));
    let client = up.pod_field("shop/client", "netns");
    let held = common::open_echo(&client, echo_port.parse().expect("addr")).await;
    let (code, conns) = ambit(&[
        "ztunnel-config",
        "connections",
        "--run",
        &run,
        "--node",
        "node2",
    ]);
    println!("$ ambit ztunnel-config connections --node node2\n{conns}");
    assert_eq!(code, 0, "{conns}");
    assert!(
        conns.lines().any(|l| l.starts_with("shop/web-0")
            && l.contains("inbound")
            && l.contains(":9000")
            && l.contains("sa/client")),
        "{conns}"
    );
    drop(held);
    let (_, version) = ambit(&["version", "--run", &run]);
    assert!(
        version.contains(&format!("local control plane ({run})")),
        "{version}"
    );
    assert!(
        version.contains("client version") && version.contains("ztunnel node2 version"),
        "{version}"
    );

    // The request, for real: a 403 from the waypoint.
    let client_ns = up.pod_field("shop/client", "netns");
    let vip: SocketAddr = "10.96.0.60:8080".parse().expect("vip");
    let mut reply = String::new();
    for _ in 0..50 {
        reply = exchange(
            &client_ns,
            vip,
            b"GET /admin/users HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
        )
        .await;
        if reply.starts_with("HTTP/1.1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&reply), 403, "{reply}");

    // Explained: refused at the waypoint by rule 1 of shop/no-admin.
    let (code, why) = explain(&run, "--from shop/client --to web:8080 --path /admin/users");
    assert_eq!(code, 1, "{why}");
    assert!(
        why.contains("DENIED at hop 2 (waypoint shop/waypoint"),
        "{why}"
    );
    assert!(
        why.contains("AuthorizationPolicy shop/no-admin (DENY), spec.rules[1] matched"),
        "{why}"
    );
    assert!(
        why.contains("rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[1]]"),
        "{why}"
    );
    // An allowed request goes through all three hops.
    let (code, ok) = explain(&run, "--from shop/client --to web:8080 --path /ok");
    assert_eq!(code, 0, "{ok}");
    assert!(
        ok.contains("hop 3  ztunnel node2 (destination, pod shop/web-0)")
            && ok.contains("DELIVERED"),
        "{ok}"
    );
    let real = exchange(
        &client_ns,
        vip,
        b"GET /ok HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&real), 200, "{real}");
    // L4: the destination ztunnel refuses port 7000, named as in its log.
    let (code, l4) = explain(&run, "--from shop/client --to shop/web-0:7000");
    assert_eq!(code, 1, "{l4}");
    assert!(
        l4.contains(
            "REFUSED: connection closed due to policy rejection: explicitly denied by: shop/no-7000"
        ),
        "{l4}"
    );
    let web_ip = up.pod_field("shop/web-0", "ip");
    let refused = exchange(
        &client_ns,
        format!("{web_ip}:7000").parse().expect("addr"),
        b"hi\n",
    )
    .await;
    assert!(
        !refused.contains("saw"),
        "port 7000 must be refused: {refused:?}"
    );

    drop(up);
    assert!(
        !std::path::Path::new(&format!("/run/ambit/{run}")).exists(),
        "the cluster file goes with the cluster"
    );
    let (code, none) = ambit(&["proxy-status", "--run", &run]);
    assert_ne!(code, 0);
    assert!(
        none.contains(&format!("no running local cluster named {run}")),
        "{none}"
    );
}
