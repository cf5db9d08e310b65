//! Resources handed over in memory: the local cluster, which places pods and
//! gives them IPs the way a kubelet would, feeds the controller through this.

use std::future::Future;
use std::pin::Pin;

use ambit_api::k8s::Resources;
use tokio::sync::{mpsc, watch};

use super::{ConfigSource, SourceEvent};

/// A source fed by a [`watch::Sender`] the owner keeps.
#[derive(Debug)]
pub struct MemorySource {
    rx: watch::Receiver<Resources>,
}

impl MemorySource {
    /// A source and the handle that publishes to it.
    pub fn new(initial: Resources) -> (Self, watch::Sender<Resources>) {
        let (tx, rx) = watch::channel(initial);
        (MemorySource { rx }, tx)
    }

    /// A source following an existing channel.
    pub fn follow(rx: watch::Receiver<Resources>) -> Self {
        MemorySource { rx }
    }
}

impl ConfigSource for MemorySource {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<SourceEvent>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.rx;
        Box::pin(async move {
            loop {
                let resources = rx.borrow_and_update().clone();
                let event = SourceEvent::Snapshot {
                    resources,
                    errors: vec![],
                };
                if tx.send(event).await.is_err() || rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}
