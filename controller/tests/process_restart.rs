//! `ambit-controller` as a process: SIGKILLed and started again, it comes
//! back with the same root (a client holding the old root still verifies it),
//! the same node tokens, and the same resource versions, so a reconnecting
//! proxy that sends `initial_resource_versions` is sent nothing it has.

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use ambit_api::xds::ADDRESS_TYPE;
use ambit_api::xds::proto::discovery::DeltaDiscoveryRequest;
use ambit_api::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

mod common;
use common::{free_port, start_controller};

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2}
"#;

fn start(base: &Path, port: u16) -> Child {
    start_controller(base, port, &base.join("ca"))
}

/// Opens a stream (retrying while the controller starts) and returns the
/// first Address response's name → version.
async fn first_response(
    port: u16,
    root: &str,
    token: &str,
    held: HashMap<String, String>,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let ch = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .map_err(|e| e.to_string())?
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(root))
                        .domain_name("localhost"),
                )
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let bearer: tonic::metadata::AsciiMetadataValue = format!("Bearer {token}")
                .parse()
                .map_err(|_| "token".to_string())?;
            #[allow(clippy::result_large_err)]
            let mut c = AggregatedDiscoveryServiceClient::with_interceptor(
                ch,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", bearer.clone());
                    Ok(r)
                },
            );
            let (tx, rx) = mpsc::channel(4);
            tx.send(DeltaDiscoveryRequest {
                type_url: ADDRESS_TYPE.into(),
                initial_resource_versions: held.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            let mut stream = c
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            let r = stream
                .message()
                .await
                .map_err(|s| s.to_string())?
                .ok_or("stream ended")?;
            Ok::<_, String>(
                r.resources
                    .into_iter()
                    .map(|r| (r.name, r.version))
                    .collect::<HashMap<_, _>>(),
            )
        };
        match attempt.await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no xDS response from the controller: {e}"),
        }
    }
}

#[tokio::test]
async fn sigkilled_controller_comes_back_with_the_same_root_tokens_and_versions() {
    let base = std::env::temp_dir().join(format!("ambit-ctl-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("config")).expect("dir");
    std::fs::write(base.join("config/world.yaml"), WORLD).expect("yaml");
    let port = free_port();
    let mut first = start(&base, port);
    let wait_file = |p: &Path| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.is_file() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string(p).expect("file written by the controller")
    };
    let root = wait_file(&base.join("ca/root-cert.pem"));
    let token = wait_file(&base.join("tokens/node1.token"));
    let held = first_response(port, &root, &token, HashMap::new()).await;
    assert_eq!(held.len(), 1);

    first.kill().expect("SIGKILL");
    let _ = first.wait();

    let mut second = start(&base, port);
    // Same root (the old PEM verifies the new server), same token, and
    // nothing resent to a client that already holds the current versions.
    let resent = first_response(port, &root, &token, held.clone()).await;
    assert!(resent.is_empty(), "unchanged resources resent: {resent:?}");
    let fresh = first_response(port, &root, &token, HashMap::new()).await;
    assert_eq!(
        fresh, held,
        "versions are content hashes: stable across restarts"
    );
    let _ = second.kill();
    let _ = second.wait();
    let _ = std::fs::remove_dir_all(&base);
}
