//! `waypoint mesh`, the production mode, as a process against a real
//! controller (in-process, TLS). Its token authenticates it as service
//! account `demo/wp`, as a TokenReview of the waypoint pod's projected token
//! would; such a caller may not impersonate anyone. The waypoint takes its
//! config over delta ADS, becomes ready, and is issued its own identity by
//! the CA in dedicated mode (no `ImpersonatedIdentity`), which a peer then
//! verifies in the HBONE handshake on 15008. Loopback only; no root needed.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_api::k8s::Resources;
use ambit_hbone::WorkloadCertificate;
use ambit_hbone::ca::{Authority, Validity};
use ambit_identity::SpiffeId;
use controller::auth::{Caller, NodeAuthenticator, ServiceAccount, bearer_token};
use controller::source::MemorySource;
use controller::{Controller, ControllerConfig};

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
kind: Pod
metadata: {name: wp-0, namespace: demo, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: node1, serviceAccountName: wp, containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
"#;

/// The waypoint's token is service account `demo/wp`, not a node proxy.
struct WaypointToken;

#[tonic::async_trait]
impl NodeAuthenticator for WaypointToken {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, tonic::Status> {
        match bearer_token(metadata)? {
            "wp-token" => Ok(Caller {
                node: None,
                service_account: Some(ServiceAccount {
                    namespace: "demo".into(),
                    name: "wp".into(),
                }),
            }),
            _ => Err(tonic::Status::unauthenticated("unknown token")),
        }
    }
}

/// Kills the waypoint process, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_is_configured_and_certified_by_the_control_plane() {
    let root = Authority::new_root(
        "cluster.local",
        "test",
        Validity::starting_now(Duration::from_secs(3600)),
    )
    .expect("root");
    let root_pem = root.certificate_pem();
    let tls = root
        .issue_server(
            &["localhost".into()],
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .expect("server cert");
    let client_cert = WorkloadCertificate::issue(
        &root,
        &SpiffeId::new("cluster.local", "demo", "client").expect("id"),
        Validity::starting_now(Duration::from_secs(3600)),
    )
    .expect("client cert");
    let mut res = Resources::default();
    res.add_yaml(WORLD, "world.yaml").expect("yaml");
    let (source, _publish) = MemorySource::new(res);
    let controller = Controller::start(
        ControllerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls: Some(tls),
            signer: Arc::new(root),
            auth: Arc::new(WaypointToken),
            debounce: Duration::from_millis(5),
            metrics: None,
        },
        Box::new(source),
    )
    .await
    .expect("controller");

    let _waypoint = Running(
        Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .arg("mesh")
            .env_clear()
            .env(
                "XDS_ADDRESS",
                format!("https://{}", controller.local_addr()),
            )
            .env("ALT_XDS_HOSTNAME", "localhost")
            .env("XDS_ROOT_CA", &root_pem)
            .env("AUTH_TOKEN", "wp-token")
            .env("POD_NAMESPACE", "demo")
            .env("GATEWAY_NAME", "wp")
            .env("NODE_NAME", "node1")
            .env("WAYPOINT_BIND", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start waypoint mesh"),
    );

    // Ready: xDS answered for every type it subscribed to.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(waypoint::admin::READINESS).await {
        assert!(Instant::now() < deadline, "waypoint never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its HBONE server presents the identity the CA issued it (dedicated
    // mode: asked for without ImpersonatedIdentity, signed as its own).
    let expected = SpiffeId::new("cluster.local", "demo", "wp").expect("id");
    let config = ambit_hbone::tls::client_config(&client_cert, vec![expected.clone()]);
    let mut seen = None;
    while seen.is_none() {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", 15008))
            .await
            .expect("connect 15008");
        match ambit_hbone::tls::connect(config.clone(), tcp, [127, 0, 0, 1].into()).await {
            Ok((_, peer)) => seen = Some(peer),
            // The certificate is fetched on the first handshake.
            Err(e) => {
                assert!(Instant::now() < deadline, "no handshake: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(seen, Some(expected));
    controller.stop().await;
}
