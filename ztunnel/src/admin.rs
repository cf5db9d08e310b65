//! ztunnel's HTTP endpoints in the node's namespace (docs/wire.md §6), on
//! the shared admin server: `:15020/metrics` (and `/stats/prometheus`),
//! `:15021/healthz/ready` (500 with what is pending, as Istio's ztunnel), and
//! on localhost `:15000/config_dump` and `:15000/memory` (resident size and
//! heap, [`crate::memory`]).

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proxy_core::admin::{self, Endpoints, Reply, Role};
use ambit_proxy_core::netns::Netns;
use ambit_proxy_core::socket::listen_in;
use http::StatusCode;
use tokio::task::JoinHandle;

use crate::memory::MemoryReport;
use crate::proxy::Ztunnel;

struct ZtunnelEndpoints(Arc<Ztunnel>);

impl Endpoints for ZtunnelEndpoints {
    fn pending(&self) -> Vec<String> {
        self.0.pending()
    }
    fn not_ready_status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }
    fn metrics(&self) -> String {
        self.0.metrics().render()
    }
    fn config_dump(&self) -> Reply {
        Reply::json(&self.0.config_dump())
    }
    fn admin(&self, path: &str) -> Option<Reply> {
        (path == "/memory").then(|| Reply::json(&MemoryReport::sample()))
    }
}

/// Starts the three endpoints inside `node` (the node's namespace). The tasks
/// serve until aborted (through a drain: metrics stay scrapeable).
pub fn start(z: &Arc<Ztunnel>, node: &Netns) -> std::io::Result<Vec<JoinHandle<()>>> {
    let endpoints: Arc<dyn Endpoints> = Arc::new(ZtunnelEndpoints(z.clone()));
    let mut tasks = Vec::new();
    for (ip, role) in [
        ([127, 0, 0, 1], Role::Admin),
        ([0, 0, 0, 0], Role::Metrics),
        ([0, 0, 0, 0], Role::Readiness),
    ] {
        let l = listen_in(node, SocketAddr::from((ip, role.port())))?;
        tasks.push(tokio::spawn(admin::serve(
            endpoints.clone(),
            l,
            role,
            // Metrics and readiness answer through the drain until exit.
            ambit_proxy_core::drain::Watch::never(),
        )));
    }
    Ok(tasks)
}
