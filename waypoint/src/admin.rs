//! The waypoint's HTTP endpoints, on the shared admin server (Istio's
//! ports): `:15021/healthz/ready` (503 until configured and certified, as
//! pilot-agent answers for Envoy), `:15020/stats/prometheus` (and
//! `/metrics`), `:15000/config_dump`.

use std::sync::Arc;

use ambit_proxy_core::admin::{Endpoints, Reply};

use crate::Waypoint;

pub use ambit_proxy_core::admin::{ADMIN, METRICS, READINESS};

/// The waypoint as the admin server shows it.
pub struct WaypointEndpoints(pub Arc<Waypoint>);

impl Endpoints for WaypointEndpoints {
    fn pending(&self) -> Vec<String> {
        if self.0.is_ready() {
            Vec::new()
        } else {
            vec!["config and certificate from the controller".into()]
        }
    }
    fn metrics(&self) -> String {
        self.0.metrics().render()
    }
    fn config_dump(&self) -> Reply {
        Reply::ok("application/json", self.0.config_dump())
    }
}
