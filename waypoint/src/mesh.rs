//! The waypoint in the mesh: its HBONE server on 15008, its admin,
//! readiness and metrics endpoints, and its delta-ADS client to the
//! controller. One entry point for the production `waypoint` binary (which
//! binds in its own pod's namespace and reads Istio's environment) and the
//! local cluster (which binds inside the pod's network namespace).

use std::sync::Arc;

use ambit_proxy_core::admin::{self, Endpoints, Role};
use ambit_proxy_core::control::ControlPlane;
use ambit_proxy_core::xds::NodeInfo;
use ambit_proxy_core::{accept, drain};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::WaypointEndpoints;
use crate::waypoint::Waypoint;

/// The four sockets a waypoint serves on, already bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// 15008: HBONE.
    pub hbone: TcpListener,
    /// 15021: `/healthz/ready`.
    pub readiness: TcpListener,
    /// 15020: `/metrics`.
    pub metrics: TcpListener,
    /// 15000: admin (`/config_dump`).
    pub admin: TcpListener,
}

/// Serves `waypoint` on `listeners` and keeps it configured from the
/// control plane `cp` (as node `info`). The HBONE listener and the xDS
/// client end when the waypoint drains; the admin endpoints serve until
/// their tasks are aborted. The waypoint reports ready once xDS has answered
/// for every type and its certificate is issued.
pub fn start(
    waypoint: &Arc<Waypoint>,
    listeners: Listeners,
    cp: ControlPlane,
    info: NodeInfo,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(accept::serve_hbone(
        listeners.hbone,
        waypoint.hbone_server(),
        waypoint.drain_watch(),
    ))];
    let endpoints: Arc<dyn Endpoints> = Arc::new(WaypointEndpoints(waypoint.clone()));
    for (listener, role) in [
        (listeners.readiness, Role::Readiness),
        (listeners.metrics, Role::Metrics),
        (listeners.admin, Role::Admin),
    ] {
        tasks.push(tokio::spawn(admin::serve(
            endpoints.clone(),
            listener,
            role,
            drain::Watch::never(),
        )));
    }
    tasks.push(tokio::spawn(
        waypoint.xds_client(info).run(cp, waypoint.drain_watch()),
    ));
    tasks
}
