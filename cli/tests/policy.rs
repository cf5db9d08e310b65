//! Policy bypasses closed (issue 16), each proven on the local cluster with
//! real pods, ztunnels, a waypoint and HBONE: a request that used to get
//! past AuthorizationPolicy must now be refused, and the ordinary request
//! next to it still served. Needs root.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use ambit_cluster::client::{connect_from, wait_listening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{exchange, require_root, set_ambit_bin, status_of};

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    pathNormalization: {normalization: MERGE_SLASHES}
---
apiVersion: v1
kind: Namespace
metadata: {name: secure, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: l4only, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: secure, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: secure}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: secure, labels: {app: api}}
spec:
  nodeName: node2
  serviceAccountName: api
  containers: [{name: a, image: ambit, command: [ambit, echo, --port, "9080", --port, "9000"]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: secure}
spec:
  clusterIP: 10.96.0.40
  selector: {app: api}
  ports: [{name: http, port: 9080}, {name: tcp, port: 9000, appProtocol: tcp}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain-0, namespace: l4only, labels: {app: plain}}
spec:
  nodeName: node2
  serviceAccountName: plain
  containers: [{name: p, image: ambit, command: [ambit, echo, --port, "8080"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: l4only}
spec:
  selector: {matchLabels: {app: plain}}
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: secure}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partners-only, namespace: secure}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {notRemoteIpBlocks: ["203.0.113.0/24"]}}]
    to: [{operation: {paths: ["/partner"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hosts, namespace: secure}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {hosts: ["api"], paths: ["/host-without-port"]}}]
  - to: [{operation: {hosts: ["api:9080"], paths: ["/host-with-port"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typos, namespace: secure}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.0/99"]}}]
    to: [{operation: {paths: ["/bad-cidr"]}}]
  - to: [{operation: {paths: ["/bad-key"]}}]
    when: [{key: "request.header[x-user]", values: ["mallory"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: secure}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: ["/custom"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: trial, namespace: secure, annotations: {istio.io/dry-run: "true"}}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/dry-run"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/mesh-wide-deny"]}}]}]
"#;

fn cluster_resources() -> Resources {
    let mut res = Resources::default();
    res.add_yaml(YAML, "policy.yaml").expect("yaml");
    res
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: api:9080\r\n{extra}connection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_bypasses_are_closed() {
    require_root();
    set_ambit_bin();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = LocalCluster::up(cluster_resources(), 2)
        .await
        .expect("cluster up");
    for (pod, port) in [
        ("secure/api-0", 9080),
        ("secure/api-0", 9000),
        ("l4only/plain-0", 8080),
    ] {
        let p = cluster.pod(pod).expect("pod");
        assert!(wait_listening(&p.netns, port, Duration::from_secs(10)).await);
    }
    let client = cluster.pod("secure/client").expect("client").netns.clone();
    let http: SocketAddr = "10.96.0.40:9080".parse().expect("addr");
    let tcp: SocketAddr = "10.96.0.40:9000".parse().expect("addr");
    let plain = SocketAddr::new(cluster.pod("l4only/plain-0").expect("pod").ip.into(), 8080);

    let mut failures = Vec::new();
    let mut expect = |what: &str, got: String, ok: bool| {
        if !ok {
            failures.push(format!(
                "{what}: got {:?}",
                got.lines().next().unwrap_or("")
            ));
        }
    };

    // The ordinary request is served, and sees the normalized path.
    let r = exchange(&client, http, &get("/public/./a/../b", "")).await;
    let ok = status_of(&r) == 200 && r.contains("path=/public/b");
    expect("plain request, normalized path upstream", r, ok);

    // 1. Connections the waypoint does not read as HTTP are still authorized:
    //    on TCP the path-only DENY has no HTTP part left and denies all.
    let r = exchange(
        &client,
        http,
        b"\r\nGET /admin HTTP/1.1\r\nhost: api\r\n\r\n",
    )
    .await;
    expect("leading CRLF falls back to TCP", r.clone(), r.is_empty());
    let r = exchange(&client, http, b"BREW /admin HTTP/1.1\r\nhost: api\r\n\r\n").await;
    expect("unknown method falls back to TCP", r.clone(), r.is_empty());
    let r = exchange(&client, tcp, b"hello\n").await;
    expect("appProtocol tcp", r.clone(), r.is_empty());
    let r = exchange(&client, tcp, b"").await;
    expect("server-first (sniff timeout)", r.clone(), r.is_empty());

    // 2. A ztunnel DENY with only HTTP-only fields denies at L4.
    let r = exchange(&client, plain, &get("/", "")).await;
    expect("L4 DENY notRequestPrincipals", r.clone(), r.is_empty());

    // 4. Paths reach policy normalized, with the mesh config's
    //    MERGE_SLASHES on top of BASE.
    for path in [
        "/admin",
        "//admin",
        "/public/..//admin",
        "/public/../admin",
        "/./admin",
        "/%61dmin",
        "/x\\..\\admin",
    ] {
        let r = exchange(&client, http, &get(path, "")).await;
        let ok = status_of(&r) == 403;
        expect(&format!("normalized {path}"), r, ok);
    }

    // 5. X-Forwarded-For from the client does not make it a partner.
    let r = exchange(
        &client,
        http,
        &get("/partner", "x-forwarded-for: 203.0.113.7\r\n"),
    )
    .await;
    let ok = status_of(&r) == 403;
    expect("X-Forwarded-For is not trusted", r, ok);

    // 7. Policies that cannot be read fail closed; dry-run only logs.
    for (path, want) in [
        ("/bad-cidr", 403),
        ("/bad-key", 403),
        ("/custom", 403),
        ("/dry-run", 200),
    ] {
        let r = exchange(&client, http, &get(path, "x-user: alice\r\n")).await;
        let ok = status_of(&r) == want;
        expect(&format!("{path} answers {want}"), r, ok);
    }

    // 8. Hosts compare with the port; a GatewayClass policy in the root
    //    namespace applies to every waypoint.
    for (path, want) in [
        ("/host-without-port", 200),
        ("/host-with-port", 403),
        ("/mesh-wide-deny", 403),
    ] {
        let r = exchange(&client, http, &get(path, "")).await;
        let ok = status_of(&r) == want;
        expect(&format!("{path} answers {want}"), r, ok);
    }

    let text = cluster
        .waypoints
        .values()
        .next()
        .expect("waypoint")
        .waypoint
        .metrics()
        .render();
    let denied_tcp = text
        .lines()
        .find_map(|l| l.strip_prefix("ambit_waypoint_tcp_denied_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    expect("TCP denials counted", text.clone(), denied_tcp >= 4);
    let findings: Vec<String> = cluster.findings.iter().map(|f| f.to_string()).collect();
    for needle in ["spec.action", "ipBlocks[0]", "when[0].key"] {
        expect(
            &format!("finding for {needle}"),
            findings.join("\n"),
            findings.iter().any(|f| f.contains(needle)),
        );
    }

    // 3. A policy push closes the TCP relays it now denies: lift the DENYs,
    //    open a relay on 9000, put one back.
    //    (On TCP every waypoint DENY above has HTTP-only fields and so
    //    denies all: lift them all, then push `no-admin` alone.)
    let mut lifted = cluster_resources();
    lifted
        .authorization_policies
        .retain(|(_, p)| p.spec.target_refs.is_empty());
    let mut denied = cluster_resources();
    denied.authorization_policies.retain(|(_, p)| {
        p.spec.target_refs.is_empty() || p.metadata.name.as_deref() == Some("no-admin")
    });
    cluster.set_policies_no_wait(lifted);
    let mut relay = None;
    for _ in 0..50 {
        let mut s = connect_from(&client, tcp).await.expect("connect");
        let _ = s.write_all(b"hello\n").await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
            && n > 0
        {
            relay = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match relay {
        None => failures.push("lifting the DENY never admitted a TCP relay".into()),
        Some(mut s) => {
            cluster.set_policies_no_wait(denied);
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 256];
                loop {
                    let _ = s.write_all(b"again\n").await;
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
            .await;
            if closed.is_err() {
                failures.push("the pushed DENY left the open TCP relay open".into());
            }
        }
    }
    drop(cluster);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
