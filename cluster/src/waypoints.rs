//! Waypoint pods of the local cluster. The controller's deployer gives each
//! waypoint Gateway a Deployment and a Service; the cluster places the pod
//! like any other and runs its proxy in this process, with every socket
//! inside the pod's network namespace: HBONE on 15008, readiness 15021,
//! metrics 15020, admin 15000, and upstream connections. Its config and
//! certificate come from the controller as in a cluster: it authenticates
//! as its pod's service account and asks the CA for that identity in
//! dedicated mode, as the production `waypoint mesh` does.
//!
//! [`LocalDeployer`] runs the controller's waypoint deployer with the
//! cluster's memory as its API server, so the local cluster gets exactly
//! the objects, ownership rules and Gateway status a real cluster gets.

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

use ambit_api::k8s::{Resources, Source};
use controller::deployer::{Deployer, MemoryStore, ObjectRef, WaypointTemplate, is_managed};
use futures_util::FutureExt;
use serde_json::Value;

use super::PlacedPod;

/// The controller's waypoint deployer over the local cluster's objects.
#[derive(Debug)]
pub struct LocalDeployer {
    deployer: Deployer,
    /// What the deployer created (the cluster's API holds these).
    deployed: Vec<Value>,
    /// The last status written for each waypoint Gateway.
    statuses: std::collections::BTreeMap<ObjectRef, Value>,
}

impl Default for LocalDeployer {
    fn default() -> Self {
        LocalDeployer {
            deployer: Deployer::new(WaypointTemplate::default()),
            deployed: Vec::new(),
            statuses: Default::default(),
        }
    }
}

/// The user's objects of the kinds the deployer writes, as the API holds them.
fn user_objects(res: &Resources) -> Vec<Value> {
    let typed = |kind: &str, api_version: &str, o: Result<Value, serde_json::Error>| {
        o.ok().map(|mut v| {
            v["kind"] = Value::from(kind);
            v["apiVersion"] = Value::from(api_version);
            v
        })
    };
    let ns_default = |mut v: Value| {
        if v["metadata"]["namespace"].is_null() {
            v["metadata"]["namespace"] = Value::from("default");
        }
        v
    };
    let services = res
        .services
        .iter()
        .filter_map(|(_, o)| typed("Service", "v1", serde_json::to_value(o)));
    let accounts = res
        .service_accounts
        .iter()
        .filter_map(|(_, o)| typed("ServiceAccount", "v1", serde_json::to_value(o)));
    let deployments = res
        .deployments
        .iter()
        .filter_map(|(_, o)| typed("Deployment", "apps/v1", serde_json::to_value(o)));
    services
        .chain(accounts)
        .chain(deployments)
        .map(ns_default)
        .collect()
}

impl LocalDeployer {
    /// Applies the waypoint Gateways of `res`: the objects the deployer
    /// creates are added to `res` (their Deployments' pods are then placed
    /// like any other), each Gateway's `status` is set, and what it refused
    /// is returned (an object of the same name that is the user's).
    pub fn apply(&mut self, res: &mut Resources) -> Vec<String> {
        let mut existing = user_objects(res);
        existing.extend(self.deployed.iter().cloned());
        let store = MemoryStore::with(existing);
        let report = self
            .deployer
            .reconcile(res, &store)
            .now_or_never()
            .unwrap_or_default();
        self.deployed = store.objects().into_iter().filter(is_managed).collect();
        let source = Source {
            file: "waypoint deployer".into(),
            doc: 0,
        };
        for o in &self.deployed {
            if let Err(e) = res.add_json(o.clone(), source.clone()) {
                tracing::warn!(error = %e, "a deployed waypoint object did not load");
            }
        }
        // With its Service in place, the status says Programmed.
        let _ = self.deployer.reconcile(res, &store).now_or_never();
        self.statuses = store.statuses();
        for (_, g) in &mut res.gateways {
            let at = ObjectRef::gateway(
                g.metadata.namespace.as_deref().unwrap_or("default"),
                g.metadata.name.as_deref().unwrap_or_default(),
            );
            if let Some(status) = self.statuses.get(&at) {
                g.status = Some(status.clone());
            }
        }
        report.refused
    }

    /// Each waypoint Gateway's status, as last written.
    pub fn statuses(&self) -> &std::collections::BTreeMap<ObjectRef, Value> {
        &self.statuses
    }
}

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
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn start(
        pod: &PlacedPod,
        trust_domain: &str,
        namespace: &str,
        gateway: &str,
        service_account: &str,
        cp: ControlPlane,
        cert_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let netns = Arc::new(
            Netns::open(format!("/run/netns/{}", pod.netns))
                .with_context(|| format!("opening {}'s namespace", pod.key))?,
        );
        let identity =
            SpiffeId::new(trust_domain, namespace, service_account).context("waypoint identity")?;
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
