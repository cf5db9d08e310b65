//! The delta ADS server over a real gRPC connection (loopback, TLS): first
//! responses for every type, one pod change = one resource, removals,
//! reconnect with `initial_resource_versions`, on-demand names, the L7 type,
//! and a bad edit keeping the last good config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_api::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambit_api::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_SERVICE_TYPE};
use ambit_hbone::ca::{Authority, Validity};
use controller::auth::BootstrapTokens;
use controller::source::MemorySource;
use controller::{Controller, ControllerConfig};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: demo}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-0, namespace: demo, labels: {app: echo}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: demo, labels: {app: echo}}
spec: {nodeName: node2, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo]
  http: [{route: [{destination: {host: echo}}], timeout: 1s}]
"#;

fn res(yaml: &str) -> Resources {
    let mut r = Resources::default();
    r.add_yaml(yaml, "world.yaml").expect("yaml");
    r
}

struct Setup {
    controller: Controller,
    publish: watch::Sender<Resources>,
    root_pem: String,
    token: String,
}

async fn setup() -> Setup {
    let root = Authority::new_root(
        "cluster.local",
        "test",
        Validity::starting_now(Duration::from_secs(3600)),
    )
    .expect("root");
    let root_pem = root.certificate_pem();
    let tls = root
        .issue_server(
            &["istiod.istio-system.svc".into()],
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .expect("server cert");
    let tokens = BootstrapTokens::default();
    let token = tokens.mint("node1");
    let (source, publish) = MemorySource::new(res(WORLD));
    let controller = Controller::start(
        ControllerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls: Some(tls),
            signer: Arc::new(root),
            auth: Arc::new(tokens),
            debounce: Duration::from_millis(5),
            metrics: Some("127.0.0.1:0".parse().expect("addr")),
        },
        Box::new(source),
    )
    .await
    .expect("controller");
    Setup {
        controller,
        publish,
        root_pem,
        token,
    }
}

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Client {
    async fn connect(
        s: &Setup,
        token: &str,
        first: Vec<DeltaDiscoveryRequest>,
    ) -> Result<Self, tonic::Status> {
        let ch = Endpoint::from_shared(format!("https://{}", s.controller.local_addr()))
            .expect("endpoint")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&s.root_pem))
                    .domain_name("istiod.istio-system.svc"),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        let bearer: tonic::metadata::AsciiMetadataValue =
            format!("Bearer {token}").parse().expect("ascii");
        #[allow(clippy::result_large_err)]
        let mut c = AggregatedDiscoveryServiceClient::with_interceptor(
            ch,
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            },
        );
        let (tx, rx) = mpsc::channel(16);
        for r in first {
            tx.send(r).await.expect("send");
        }
        let rx = c
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Client { tx, rx })
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        let r = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .expect("stream ok")
            .expect("stream open");
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .expect("ack");
        r
    }

    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.rx.message())
            .await
            .is_err()
    }
}

/// `GET /metrics` from the controller's metrics endpoint.
async fn metrics(s: &Setup) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.controller.metrics_addr().expect("metrics served");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("response");
    out
}

fn wildcard(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn delta_ads_sends_what_changed_and_only_that() {
    let s = setup().await;
    let mut c = Client::connect(
        &s,
        &s.token,
        vec![
            wildcard(ADDRESS_TYPE),
            wildcard(AUTHORIZATION_TYPE),
            wildcard(L7_SERVICE_TYPE),
        ],
    )
    .await
    .expect("stream");
    let mut first: HashMap<String, DeltaDiscoveryResponse> = HashMap::new();
    for _ in 0..3 {
        let r = c.next().await;
        first.insert(r.type_url.clone(), r);
    }
    assert_eq!(first[ADDRESS_TYPE].resources.len(), 3, "2 pods + 1 service");
    assert!(
        first[AUTHORIZATION_TYPE].resources.is_empty(),
        "empty but answered"
    );
    assert_eq!(first[L7_SERVICE_TYPE].resources.len(), 1);
    assert_eq!(
        first[L7_SERVICE_TYPE].resources[0].name,
        "demo/echo.demo.svc.cluster.local"
    );
    let versions: HashMap<String, String> = first[ADDRESS_TYPE]
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert!(c.quiet().await, "nothing more until something changes");
    let m = metrics(&s).await;
    assert!(m.contains("pilot_xds 1\n"), "{m}");
    assert!(m.contains("pilot_xds_pushes_total 3\n"), "{m}");
    assert!(
        m.contains("ambit_model_resources{type=\"Address\"} 3"),
        "{m}"
    );

    // One pod changes: one Address on the wire, plus the one L7Service whose
    // backend endpoints it is in.
    s.publish
        .send_replace(res(&WORLD.replace("10.244.2.2", "10.244.2.3")));
    let mut got: HashMap<String, DeltaDiscoveryResponse> = HashMap::new();
    for _ in 0..2 {
        let r = c.next().await;
        got.insert(r.type_url.clone(), r);
    }
    let r = &got[ADDRESS_TYPE];
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, "Kubernetes//Pod/demo/echo-1");
    assert!(r.removed_resources.is_empty());
    assert_eq!(got[L7_SERVICE_TYPE].resources.len(), 1);
    assert!(c.quiet().await);

    // A pod goes away: removed by name.
    let without = WORLD.replace(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: echo-1, namespace: demo, labels: {app: echo}}\nspec: {nodeName: node2, containers: [{name: c, image: x}]}\nstatus: {podIP: 10.244.2.2}\n",
        "",
    );
    assert_ne!(without, WORLD);
    s.publish.send_replace(res(&without));
    let mut got: HashMap<String, DeltaDiscoveryResponse> = HashMap::new();
    for _ in 0..2 {
        let r = c.next().await;
        got.insert(r.type_url.clone(), r);
    }
    let r = &got[ADDRESS_TYPE];
    assert_eq!(
        r.removed_resources,
        vec!["Kubernetes//Pod/demo/echo-1".to_string()]
    );
    assert!(r.resources.is_empty());
    assert_eq!(
        got[L7_SERVICE_TYPE].resources.len(),
        1,
        "its endpoint left the L7 backend"
    );

    // A bad VirtualService edit: reported, the last good one stays (no L7 push).
    s.publish
        .send_replace(res(&without.replace("timeout: 1s", "timeout: soon")));
    assert!(c.quiet().await, "a rejected edit pushes nothing");
    let snap = s.controller.snapshot();
    assert!(
        snap.findings
            .iter()
            .any(|f| f.field == "spec.http[0].timeout"),
        "{:?}",
        snap.findings
    );
    assert_eq!(snap.l7.len(), 1);

    // Reconnect with what we hold: only the difference comes back.
    drop(c);
    let mut held = versions.clone();
    held.remove("Kubernetes//Pod/demo/echo-1");
    let mut c2 = Client::connect(
        &s,
        &s.token,
        vec![DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE.into(),
            initial_resource_versions: held,
            ..Default::default()
        }],
    )
    .await
    .expect("stream");
    let r = c2.next().await;
    assert!(
        r.resources.is_empty(),
        "already up to date: {:?}",
        r.resources
    );
}

#[tokio::test]
async fn on_demand_names_and_authentication() {
    let s = setup().await;
    assert_eq!(
        Client::connect(&s, "wrong", vec![wildcard(ADDRESS_TYPE)])
            .await
            .err()
            .map(|e| e.code()),
        Some(tonic::Code::Unauthenticated)
    );
    // XDS_ON_DEMAND: subscribe ["*"] and unsubscribe ["*"] = nothing, then names.
    let mut c = Client::connect(
        &s,
        &s.token,
        vec![DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE.into(),
            resource_names_subscribe: vec!["*".into()],
            resource_names_unsubscribe: vec!["*".into()],
            ..Default::default()
        }],
    )
    .await
    .expect("stream");
    let r = c.next().await;
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    c.tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        resource_names_subscribe: vec!["Kubernetes//Pod/demo/echo-0".into(), "/10.9.9.9".into()],
        ..Default::default()
    })
    .await
    .expect("subscribe");
    let r = c.next().await;
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, "Kubernetes//Pod/demo/echo-0");
    assert_eq!(
        r.removed_resources,
        vec!["/10.9.9.9".to_string()],
        "unknown name answered as removed"
    );
}
