//! The waypoint in the mesh: its HBONE server on 15008, its admin,
//! readiness and metrics endpoints, and its delta-ADS client to the
//! controller. One entry point for the production `waypoint` binary (which
//! binds in its own pod's namespace and reads Istio's environment) and the
//! local cluster (which binds inside the pod's network namespace).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use ztunnel::control::ControlPlane;
use ztunnel::xds::NodeInfo;

use crate::waypoint::{Waypoint, WaypointXds};

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
/// control plane `cp` (as node `info`). The tasks run until aborted; the
/// waypoint reports ready once xDS has answered for every type.
pub fn start(
    waypoint: &Arc<Waypoint>,
    listeners: Listeners,
    cp: ControlPlane,
    info: NodeInfo,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(waypoint.hbone_server().serve(listeners.hbone))];
    for l in [listeners.readiness, listeners.metrics, listeners.admin] {
        tasks.push(tokio::spawn(crate::admin::serve(waypoint.clone(), l)));
    }
    let w = waypoint.clone();
    tasks.push(tokio::spawn(async move {
        let mut consumer = WaypointXds::new(w);
        ztunnel::xds::run_client(&mut consumer, &cp, &info).await
    }));
    tasks
}
