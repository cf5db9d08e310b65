//! A mesh whose trust domain is not `cluster.local` (issue 16), on the local
//! cluster: the mesh config (ConfigMap `istio-system/istio`) names
//! `example.org`, so the CA, every workload certificate, the waypoint's own
//! identity and the policies all use it. A waypoint policy written with
//! `cluster.local/...` principals still matches (Istio migrates them to the
//! mesh's trust domain); a ztunnel policy names `example.org` identities.
//! Needs root.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use ambit_cluster::client::wait_listening;

mod common;
use common::{exchange, require_root, set_ambit_bin};

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
    trustDomain: example.org
    defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}
---
apiVersion: v1
kind: Namespace
metadata: {name: td, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: td, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: td}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: td}
spec: {nodeName: node1, serviceAccountName: other, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: td, labels: {app: api}}
spec:
  nodeName: node2
  serviceAccountName: api
  containers: [{name: a, image: ambit, command: [ambit, echo, --port, "9080"]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: td}
spec:
  clusterIP: 10.96.0.50
  selector: {app: api}
  ports: [{name: http, port: 9080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: client-only, namespace: td}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/td/sa/client"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partners-only, namespace: td}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {notRemoteIpBlocks: ["203.0.113.0/24"]}}]
    to: [{operation: {paths: ["/partner"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: via-waypoint, namespace: td}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["example.org/ns/td/sa/waypoint"]}}]}]
"#;

async fn get(netns: &str, to: SocketAddr) -> String {
    get_with(netns, to, "/who", "").await
}

async fn get_with(netns: &str, to: SocketAddr, path: &str, extra: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: api:9080\r\n{extra}connection: close\r\n\r\n");
    exchange(netns, to, req.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mesh_in_another_trust_domain_works_end_to_end() {
    require_root();
    set_ambit_bin();
    let mut res = Resources::default();
    res.add_yaml(YAML, "trust-domain.yaml").expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    let api = cluster.pod("td/api-0").expect("pod").clone();
    assert!(wait_listening(&api.netns, 9080, Duration::from_secs(10)).await);
    assert_eq!(cluster.control.trust_domain(), "example.org");
    let svc: SocketAddr = "10.96.0.50:9080".parse().expect("addr");
    let client = cluster.pod("td/client").expect("pod").netns.clone();
    let other = cluster.pod("td/other").expect("pod").netns.clone();

    let r = get(&client, svc).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("pod=api-0"),
        "client (a cluster.local principal in the policy) is served: {r:?}"
    );
    let r = get(&other, svc).await;
    assert!(r.starts_with("HTTP/1.1 403"), "other is denied: {r:?}");
    // The mesh config trusts one proxy in front: the client's X-Forwarded-For
    // names the original client, and remote.ip follows it.
    let partner = "x-forwarded-for: 203.0.113.7\r\n";
    let r = get_with(&client, svc, "/partner", partner).await;
    assert!(r.starts_with("HTTP/1.1 200"), "partner via XFF: {r:?}");
    let r = get_with(&client, svc, "/partner", "").await;
    assert!(
        r.starts_with("HTTP/1.1 403"),
        "no XFF: the peer is no partner: {r:?}"
    );
    // Straight to the pod, past the waypoint: the ztunnel policy only admits
    // the waypoint's example.org identity.
    let direct = SocketAddr::new(api.ip.into(), 9080);
    let r = get(&client, direct).await;
    assert!(
        !r.starts_with("HTTP/1.1 200"),
        "the pod admits only the waypoint: {r:?}"
    );
    drop(cluster);
}
