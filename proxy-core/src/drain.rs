//! Drain: one signal that a proxy is shutting down, watched by its accept
//! loops, background clients and connections, and a way to wait until the
//! connections holding a watch have ended (as linkerd2-proxy's and Istio
//! ztunnel's `drain` do).
//!
//! [`Trigger::start`] flips the signal; every [`Watch`] sees it at once.
//! [`Trigger::drain`] also waits, up to a deadline, for every `Watch` to be
//! dropped: a connection that holds one keeps the drain open until it ends.

use std::time::Duration;

use tokio::sync::watch;

/// The sending half: owned by whoever decides the proxy stops.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// The watching half: cheap to clone, one per task that must notice a drain
/// (and, when held for a connection's life, one per connection).
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

/// A new drain signal, not started.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Watch { rx })
}

impl Trigger {
    /// Signals every watch; returns at once.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Has [`start`](Self::start) been called?
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// A new watch on this signal (also after it started).
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }

    /// How many watches are alive (tasks and connections not yet done).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Signals every watch, then waits until all of them are dropped or
    /// `within` passes. Returns how many were still alive at the end.
    pub async fn drain(&self, within: Duration) -> usize {
        self.start();
        let _ = tokio::time::timeout(within, self.tx.closed()).await;
        self.tx.receiver_count()
    }
}

impl Watch {
    /// A watch that never signals: for what must outlive a drain (the
    /// readiness and metrics endpoints serve until the process exits).
    pub fn never() -> Watch {
        let (_, rx) = watch::channel(false);
        Watch { rx }
    }

    /// Has the drain started?
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the drain has started (at once if it already has, and
    /// never if the trigger is dropped without starting one).
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watches_see_the_signal_and_the_drain_waits_for_them() {
        let (trigger, watch) = channel();
        let held = watch.clone();
        assert!(!watch.is_draining());
        let waiter = tokio::spawn({
            let w = watch.clone();
            async move { w.signaled().await }
        });
        drop(watch);
        // One connection ends shortly after the signal.
        let conn = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        let left = trigger.drain(Duration::from_secs(5)).await;
        assert_eq!(left, 0);
        assert!(trigger.is_draining());
        waiter.await.expect("waiter");
        conn.await.expect("conn");
    }

    #[tokio::test]
    async fn the_drain_gives_up_at_its_deadline() {
        let (trigger, watch) = channel();
        let left = trigger.drain(Duration::from_millis(20)).await;
        assert_eq!(left, 1);
        assert!(watch.is_draining());
        // A watch made after the start sees it at once.
        trigger.watch().signaled().await;
    }
}
