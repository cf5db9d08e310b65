//! ztunnel's workload xDS (docs/wire.md §4): the shared delta-ADS client with
//! wildcard subscriptions to `Address` and `Authorization`, both into one
//! proxy state that is swapped in whole after each response. Readiness
//! waits until both types have been answered once.

use std::sync::Arc;

use ambit_api::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use ambit_proxy_core::control::ControlPlane;
use ambit_proxy_core::workloads;
use ambit_proxy_core::xds::{NodeInfo, XdsClient};

use crate::proxy::Ztunnel;

/// Runs ztunnel's xDS client until the ztunnel drains.
pub async fn run(z: Arc<Ztunnel>, cp: ControlPlane, info: NodeInfo) {
    let target = z.clone();
    let (addresses, authorizations) =
        workloads::handlers(Arc::new(move |state| target.update_state(state)));
    let (synced, counted) = (z.clone(), z.clone());
    XdsClient::new("ztunnel", info)
        .watch(ADDRESS_TYPE, addresses)
        .watch(AUTHORIZATION_TYPE, authorizations)
        .on_synced(move || synced.set_xds_synced(true))
        .on_response(move |type_url| counted.metrics().xds_message(type_url))
        .run(cp, z.drain_watch())
        .await
}
