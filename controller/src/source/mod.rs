//! Where the controller's resources come from. Every source delivers whole
//! [`Resources`] snapshots as they change; the model diffs translated state, so
//! a source need not know what changed, and the same YAML yields the same
//! model whichever source read it.

mod cluster;
mod dir;
mod memory;

pub use cluster::{KubeSource, WATCHED};
pub use dir::{DirSource, read_once as read_dir_once};
pub use memory::MemorySource;

use ambit_api::k8s::{LoadError, Resources};
use tokio::sync::mpsc;

/// What a source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// The current resources (objects that failed to load are left at their
    /// last good version by the source, and listed in `errors`).
    Snapshot {
        /// Everything the source holds now.
        resources: Resources,
        /// Documents that could not be read.
        errors: Vec<LoadError>,
    },
}

/// A config source: runs until the receiver goes away.
pub trait ConfigSource: Send + 'static {
    /// Sends a snapshot at start and one after every change.
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<SourceEvent>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}
