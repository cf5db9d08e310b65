//! Waypoint pods of the local cluster. The controller's deployer gives each
//! waypoint Gateway a Deployment and a Service; the cluster places the pod
//! like any other and runs its proxy in this process, with every socket
//! inside the pod's network namespace: HBONE on 15008, readiness 15021,
//! metrics 15020, admin 15000, and upstream connections. Its config and
//! certificate come from the controller as in a cluster: it authenticates
//! as its own service account (the Gateway's name) and asks the CA for that
//! identity in dedicated mode, as the production `waypoint mesh` does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_hbone::HboneConfig;
use ambit_identity::SpiffeId;
use ambit_proxy_core::ca_client::{CaClient, CaMode};
use ambit_proxy_core::certs::CertManager;
use ambit_proxy_core::control::ControlPlane;
use ambit_proxy_core::netns::Netns;
use ambit_proxy_core::socket::{listen_in, marked_socket_in};
use anyhow::Context;
use tokio::task::JoinHandle;
use waypoint::{Waypoint, WaypointConfig};

use super::PlacedPod;

/// A waypoint running for one placed pod; stopped on drop.
pub struct RunningWaypoint {
    /// The proxy.
    pub waypoint: Arc<Waypoint>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningWaypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWaypoint")
            .field("waypoint", &self.waypoint)
            .finish_non_exhaustive()
    }
}

impl RunningWaypoint {
    /// Starts the waypoint of Gateway `namespace/gateway` in `pod`, as
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<gateway>`.
    pub fn start(
        pod: &PlacedPod,
        trust_domain: &str,
        namespace: &str,
        gateway: &str,
        cp: ControlPlane,
        cert_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let netns = Arc::new(
            Netns::open(format!("/run/netns/{}", pod.netns))
                .with_context(|| format!("opening {}'s namespace", pod.key))?,
        );
        let identity =
            SpiffeId::new(trust_domain, namespace, gateway).context("waypoint identity")?;
        let ca = CaClient::with_mode(&cp, CaMode::Dedicated).context("waypoint CA client")?;
        let certs = CertManager::new(Arc::new(ca), cert_ttl);
        let sockets = netns.clone();
        let waypoint = Waypoint::new(WaypointConfig {
            name: format!("{namespace}/{gateway}"),
            identity,
            certs,
            hbone: HboneConfig::default(),
            socket: Some(Arc::new(move |dst| {
                marked_socket_in(&sockets, dst, ambit_ebpf::ZTUNNEL_MARK)
            })),
        });
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let bind = |port| listen_in(&netns, any(port)).with_context(|| format!("waypoint {port}"));
        let listeners = waypoint::mesh::Listeners {
            hbone: bind(15008)?,
            readiness: bind(waypoint::admin::READINESS)?,
            metrics: bind(waypoint::admin::METRICS)?,
            admin: bind(waypoint::admin::ADMIN)?,
        };
        let info = ambit_proxy_core::xds::NodeInfo {
            node_name: format!("node{}", pod.node),
            pod_name: pod.key.rsplit('/').next().unwrap_or_default().to_string(),
            pod_namespace: namespace.to_string(),
            instance_ip: pod.ip.to_string(),
        };
        let tasks = waypoint::mesh::start(&waypoint, listeners, cp, info);
        Ok(RunningWaypoint { waypoint, tasks })
    }
}

impl Drop for RunningWaypoint {
    fn drop(&mut self) {
        self.waypoint.shutdown();
        for t in &self.tasks {
            t.abort();
        }
    }
}
