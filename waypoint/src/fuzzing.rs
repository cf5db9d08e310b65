//! Entry point for fuzzing the waypoint's HTTP front without sockets: what
//! a client sends down a tunnel (protocol sniffing, HTTP/1.1 and HTTP/2
//! parsing, path normalization, authorization, routing) is fed from bytes
//! over an in-memory pipe, on a runtime with a paused clock so the sniff
//! timeout fires at once. Used by a bounded run in the test suite and by
//! `fuzz/` (cargo fuzz).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::xds::proto::l7 as pb;
use ambit_hbone::HboneConfig;
use ambit_hbone::WorkloadCertificate;
use ambit_identity::SpiffeId;
use ambit_proxy_core::certs::{CertManager, CertificateProvider, FetchError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::normalize::PathNormalization;
use crate::waypoint::{Waypoint, WaypointConfig};

/// No CA: the fuzzed paths never dial upstream with a certificate.
struct NoCa;

impl CertificateProvider for NoCa {
    fn issue(&self, _: &SpiffeId, _: Duration) -> Result<WorkloadCertificate, FetchError> {
        Err(FetchError::Ca("no CA while fuzzing".into()))
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One Service with routes and policies of every kind the request path
/// evaluates, and no endpoints (nothing leaves the process).
fn service() -> pb::L7Service {
    use pb::http_policy::Action;
    let policy = |name: &str, action: Action, rule: pb::HttpRule| pb::HttpPolicy {
        name: name.into(),
        namespace: "fuzz".into(),
        action: action as i32,
        rules: vec![rule],
        dry_run: false,
    };
    pb::L7Service {
        name: "api".into(),
        namespace: "fuzz".into(),
        hostname: "api.fuzz.svc.cluster.local".into(),
        vips: vec!["/10.96.0.1".into()],
        ports: vec![pb::ServicePort {
            port: 80,
            target_port: 8080,
            protocol: String::new(),
            name: "http".into(),
        }],
        waypoints: vec!["fuzz/waypoint".into()],
        authorization: vec![
            policy(
                "deny-admin",
                Action::Deny,
                pb::HttpRule {
                    to: vec![pb::HttpOperation {
                        paths: strings(&["/admin*", "/{*}/secret/{**}"]),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            policy(
                "allow-some",
                Action::Allow,
                pb::HttpRule {
                    to: vec![pb::HttpOperation {
                        methods: strings(&["GET", "POST"]),
                        hosts: strings(&["api*", "*:80"]),
                        ..Default::default()
                    }],
                    when: vec![pb::Condition {
                        key: "request.headers[x-a]".into(),
                        values: vec![],
                        not_values: strings(&["*bad"]),
                    }],
                    ..Default::default()
                },
            ),
        ],
        ..Default::default()
    }
}

/// Serves `data` as one tunnelled client connection to the Service and
/// returns what the waypoint answered. Must not be called from inside a
/// tokio runtime.
pub fn serve_bytes(data: &[u8], normalization: PathNormalization) -> Vec<u8> {
    // The path normalizer sees the raw input too.
    let _ = normalization.apply(&String::from_utf8_lossy(data));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    else {
        return vec![];
    };
    rt.block_on(async {
        let Ok(identity) = SpiffeId::new("cluster.local", "fuzz", "waypoint") else {
            return vec![];
        };
        let waypoint = Waypoint::new(WaypointConfig {
            name: "fuzz/waypoint".into(),
            identity,
            certs: CertManager::new(Arc::new(NoCa), Duration::from_secs(3600)),
            hbone: HboneConfig::default(),
            socket: None,
        });
        let service = pb::L7Service {
            path_normalization: normalization.as_str().into(),
            num_trusted_proxies: 1,
            ..service()
        };
        if waypoint.apply_l7("fuzz/api", Some(service)).is_err() {
            return vec![];
        }
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let info = waypoint.conn_info(
            SpiffeId::new("cluster.local", "fuzz", "client").ok(),
            SocketAddr::from(([10, 0, 0, 2], 40000)),
            SocketAddr::from(([10, 96, 0, 1], 80)),
        );
        let serve = waypoint.clone().serve_connection(server, info);
        // Our write side stays open (a half-close would end an HTTP/1
        // connection before its answer); the virtual clock ends the rest.
        let mut answer = Vec::new();
        let drive = async {
            let _ = client.write_all(data).await;
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
        };
        // Virtual time: a minute passes at once when everything is idle.
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            let _ = tokio::join!(serve, drive);
        })
        .await;
        waypoint.shutdown();
        answer
    })
}
