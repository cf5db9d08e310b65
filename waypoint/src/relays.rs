//! TCP relays open through the waypoint and what they were authorized on,
//! so a pushed AuthorizationPolicy closes the ones it now denies (HTTP
//! connections need nothing: every request is checked against the policy in
//! force when it arrives).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::authz::{Mode, RequestAttributes};
use crate::state::WaypointState;

struct Entry {
    destination: IpAddr,
    attrs: RequestAttributes,
    revoked: Arc<Notify>,
}

/// Every open TCP relay, by id.
#[derive(Default)]
pub struct OpenRelays {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for OpenRelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRelays").finish_non_exhaustive()
    }
}

/// One registered relay; dropping it unregisters.
pub struct Relay {
    id: u64,
    registry: Arc<OpenRelays>,
    revoked: Arc<Notify>,
}

impl Relay {
    /// Resolves when a policy push denies the relay.
    pub async fn revoked(&self) {
        self.revoked.notified().await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        crate::sync::lock(&self.registry.open).remove(&self.id);
    }
}

impl OpenRelays {
    /// Registers a relay to `destination`, authorized on `attrs`.
    pub fn register(self: &Arc<Self>, destination: IpAddr, attrs: RequestAttributes) -> Relay {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        crate::sync::lock(&self.open).insert(
            id,
            Entry {
                destination,
                attrs,
                revoked: revoked.clone(),
            },
        );
        Relay {
            id,
            registry: self.clone(),
            revoked,
        }
    }

    /// Re-checks every relay against `state`; closes (and counts) those
    /// whose Service is gone or whose policies now deny them.
    pub fn recheck(&self, state: &WaypointState) -> usize {
        let open = crate::sync::lock(&self.open);
        let mut closed = 0;
        for e in open.values() {
            let decision = state
                .for_destination(e.destination)
                .map(|(svc, _)| svc.authz.authorize(Mode::Tcp, &e.attrs));
            if !decision.as_ref().is_some_and(|d| d.is_allowed()) {
                tracing::info!(target: "access", dst_addr = %e.destination, ?decision,
                    "tcp relay closed by a policy change");
                e.revoked.notify_one();
                closed += 1;
            }
        }
        closed
    }
}
