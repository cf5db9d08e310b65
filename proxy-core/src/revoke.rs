//! Open connections and the facts they were admitted on, so that a policy
//! push can close the ones it now denies. Istio's ztunnel re-checks
//! established connections whenever its policies change; checking at open
//! only would let a connection opened before a DENY live on for hours.
//! ztunnel registers its inbound connections here, the waypoint its TCP
//! relays (its HTTP requests are each checked when they arrive).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Entry<T> {
    facts: T,
    revoked: Arc<Notify>,
}

/// Every open connection, by id, with the facts `T` it was admitted on.
pub struct OpenConnections<T> {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry<T>>>,
}

impl<T> Default for OpenConnections<T> {
    fn default() -> Self {
        OpenConnections {
            next: AtomicU64::new(0),
            open: Mutex::default(),
        }
    }
}

impl<T> std::fmt::Debug for OpenConnections<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenConnections")
            .field("open", &self.len())
            .finish()
    }
}

/// One registered connection; dropping it unregisters.
pub struct Registration<T> {
    id: u64,
    registry: Arc<OpenConnections<T>>,
    revoked: Arc<Notify>,
}

impl<T> std::fmt::Debug for Registration<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

impl<T> Registration<T> {
    /// Resolves when a policy push denies the connection.
    pub async fn revoked(&self) {
        self.revoked.notified().await
    }
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl<T> OpenConnections<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry<T>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection admitted on `facts`.
    pub fn register(self: &Arc<Self>, facts: T) -> Registration<T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Entry {
                facts,
                revoked: revoked.clone(),
            },
        );
        Registration {
            id,
            registry: self.clone(),
            revoked,
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No connection open?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `describe` of every open connection's facts (for the admin dump).
    pub fn describe<R>(&self, describe: impl FnMut(&T) -> R) -> Vec<R> {
        self.lock()
            .values()
            .map(|e| &e.facts)
            .map(describe)
            .collect()
    }

    /// Asks `still_admitted` about every open connection; closes (and
    /// returns the number of) those it answers `false` for. The caller logs
    /// why, with the fields its access log uses.
    pub fn recheck(&self, mut still_admitted: impl FnMut(&T) -> bool) -> usize {
        let open = self.lock();
        let mut closed = 0;
        for e in open.values() {
            if !still_admitted(&e.facts) {
                // `notify_one` keeps the permit if the relay is not waiting yet.
                e.revoked.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_recheck_closes_what_it_denies_and_drops_unregister() {
        let open: Arc<OpenConnections<u16>> = Arc::default();
        let allowed = open.register(80);
        let denied = open.register(22);
        assert_eq!(open.len(), 2);
        let mut ports = open.describe(|p| *p);
        ports.sort();
        assert_eq!(ports, vec![22, 80]);
        assert_eq!(open.recheck(|port| *port != 22), 1);
        // The permit is kept: a relay that starts waiting later still sees it.
        tokio::time::timeout(Duration::from_secs(1), denied.revoked())
            .await
            .expect("revoked");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), allowed.revoked())
                .await
                .is_err()
        );
        drop(denied);
        assert_eq!(open.len(), 1);
        drop(allowed);
        assert!(open.is_empty());
    }
}
