//! A `jwksUri` served over `https://` by a Service inside the mesh (issue
//! 16), on the local cluster: the waypoint fetches it through the mesh
//! (HBONE to the JWKS pod's ztunnel, which is STRICT and admits only the
//! waypoint's identity, so a plaintext or unauthenticated fetch would fail)
//! and verifies the server's certificate, issued by the mesh CA, against the
//! mesh root. A token signed with the fetched key is then admitted, a forged
//! one refused. Needs root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use ambit_cluster::client::wait_listening;
use ambit_hbone::ca::Validity;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{exchange, require_root, set_ambit_bin, status_of};

const SECRET: &[u8] = b"a test secret that is long enough";

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Namespace
metadata: {name: idp, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: jwks-0, namespace: idp, labels: {app: jwks}}
spec: {nodeName: node2, serviceAccountName: jwks, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Service
metadata: {name: jwks, namespace: idp}
spec: {clusterIP: 10.96.0.61, selector: {app: jwks}, ports: [{name: https, port: 8443}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: idp}
spec:
  selector: {matchLabels: {app: jwks}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/waypoint"]}}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: shop, labels: {app: api}}
spec:
  nodeName: node2
  serviceAccountName: api
  containers: [{name: a, image: ambit, command: [ambit, echo, --port, "9080"]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.60, selector: {app: api}, ports: [{name: http, port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: https://jwks.idp.svc.cluster.local:8443/keys
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["https://issuer.test/alice"]}}]}]
"#;

fn token(secret: &[u8]) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let claims =
        serde_json::json!({"iss": "https://issuer.test", "sub": "alice", "exp": 4_000_000_000u64});
    jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
        .unwrap_or_default()
}

async fn status(netns: &str, to: SocketAddr, bearer: Option<&str>) -> u16 {
    let auth = bearer
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /orders HTTP/1.1\r\nhost: api:9080\r\n{auth}connection: close\r\n\r\n");
    status_of(&exchange(netns, to, req.as_bytes()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_over_https_from_a_mesh_service() {
    require_root();
    set_ambit_bin();
    let mut res = Resources::default();
    res.add_yaml(YAML, "jwks-https.yaml").expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");

    // The JWKS server: TLS with a certificate from the mesh CA.
    let server_cert = cluster
        .control
        .ca
        .authority()
        .issue_server(
            &["jwks.idp.svc.cluster.local".to_string()],
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .expect("server cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        ambit_hbone::pem::certificates(&server_cert.chain_pem).expect("chain"),
        ambit_hbone::pem::private_key(&server_cert.key_pem).expect("key"),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let jwks_netns = cluster.pod("idp/jwks-0").expect("pod").netns.clone();
    let ns =
        ambit_proxy_core::netns::Netns::open(format!("/run/netns/{jwks_netns}")).expect("netns");
    let std = ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", 8443)))
        .expect("enter netns")
        .expect("bind");
    std.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(std).expect("listener");
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    let body = format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}"#);
    let served = Arc::new(AtomicUsize::new(0));
    let served_by_server = served.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, body, served) =
                (acceptor.clone(), body.clone(), served_by_server.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if tls.write_all(resp.as_bytes()).await.is_ok() {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tls.shutdown().await;
            });
        }
    });

    let api = cluster.pod("shop/api-0").expect("pod");
    assert!(wait_listening(&api.netns, 9080, Duration::from_secs(10)).await);
    let client = cluster.pod("shop/client").expect("pod").netns.clone();
    let vip: SocketAddr = "10.96.0.60:9080".parse().expect("addr");
    let good = token(SECRET);
    let mut got = 0;
    for _ in 0..100 {
        got = status(&client, vip, Some(&good)).await;
        if got == 200 {
            break;
        }
        // The keys are fetched in the background; until then 401.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, 200, "a token signed with the key fetched over https");
    assert!(
        served.load(Ordering::Relaxed) >= 1,
        "the JWKS server answered"
    );
    let forged = token(b"some other secret, also long enough");
    assert_eq!(status(&client, vip, Some(&forged)).await, 401);
    assert_eq!(status(&client, vip, None).await, 403);
    drop(cluster);
}
