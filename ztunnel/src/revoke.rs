//! Open inbound connections and the facts they were admitted on, so that a
//! policy push can close the ones it now denies. Istio's ztunnel re-checks
//! established connections whenever its policies change; checking at open
//! only would let a connection opened before a DENY live on for hours.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_api::model::ProxyState;
use ambit_api::model::authz::Connection;
use tokio::sync::Notify;

/// Decides whether a connection to the pod `uid` may stay open.
pub type Admit = fn(&ProxyState, &str, &Connection) -> Result<(), String>;

struct Entry {
    pod_uid: Arc<str>,
    conn: Connection,
    admit: Admit,
    revoked: Arc<Notify>,
}

/// Every inbound connection open on this node, by id.
#[derive(Default)]
pub struct Admitted {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("open", &self.len())
            .finish()
    }
}

/// One registered connection; dropping it unregisters.
pub struct Admission {
    id: u64,
    registry: Arc<Admitted>,
    revoked: Arc<Notify>,
}

impl Admission {
    /// Resolves when a policy push denies the connection.
    pub async fn revoked(&self) {
        self.revoked.notified().await
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Admitted {
    /// Registers an admitted connection to pod `pod_uid`; `admit` is asked
    /// again on every policy push.
    pub fn register(
        self: &Arc<Self>,
        pod_uid: Arc<str>,
        conn: Connection,
        admit: Admit,
    ) -> Admission {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                pod_uid,
                conn,
                admit,
                revoked: revoked.clone(),
            },
        );
        Admission {
            id,
            registry: self.clone(),
            revoked,
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No connection open?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-checks every open connection against `state`; closes (and
    /// returns the number of) those it no longer admits.
    pub fn recheck(&self, state: &ProxyState) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for e in open.values() {
            if let Err(why) = (e.admit)(state, &e.pod_uid, &e.conn) {
                tracing::info!(target: "access", reporter = "destination",
                    src.addr = %e.conn.src_ip, dst.addr = %e.conn.dst_ip, dst.port = e.conn.dst_port,
                    "open connection closed by a policy change: {why}");
                // `notify_one` keeps the permit if the relay is not waiting yet.
                e.revoked.notify_one();
                closed += 1;
            }
        }
        closed
    }
}
