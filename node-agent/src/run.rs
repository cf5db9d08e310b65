//! The node agent as a process: the ZDS listener ztunnel connects to, the
//! event server `ambit-cni` calls, and the resources it follows (pods and
//! namespaces, from the API in a cluster) driving [`Reconciler`] on every
//! change. [`follow`] is the loop, over any `controller` config source;
//! the binary gives it the Kubernetes one.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ambit_api::k8s::Resources;
use ambit_cni::event::EventServer;
use controller::source::{ConfigSource, SourceEvent};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cni::CniEnroller;
use crate::netns_lookup;
use crate::reconcile::{Locate, Reconciler};
use crate::zds::NodeAgent;

/// Where a node agent listens and who it is.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// The ZDS socket ztunnel connects to (Istio's `INPOD_UDS`).
    pub zds_socket: PathBuf,
    /// The socket `ambit-cni` calls.
    pub cni_socket: PathBuf,
}

/// A running agent: its ZDS listener, event server and the resources it
/// last saw.
pub struct Agent {
    /// The ZDS side.
    pub zds: Arc<NodeAgent>,
    /// The resources the CNI answers and the reconciler read.
    pub resources: Arc<RwLock<Resources>>,
    reconciler: Reconciler,
    _events: EventServer,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("reconciler", &self.reconciler)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the ZDS listener and the event server; namespaces are found
    /// with `locate` (normally [`netns_lookup::find`]).
    pub fn start(config: &AgentConfig, locate: Option<Locate>) -> std::io::Result<Self> {
        // ztunnel gets its snapshot once the API's pods have been reconciled.
        let zds = Arc::new(NodeAgent::start_unsynced(&config.zds_socket)?);
        let resources = Arc::new(RwLock::new(Resources::default()));
        let events = EventServer::start(
            &config.cni_socket,
            Arc::new(CniEnroller::new(resources.clone(), zds.clone())),
        )?;
        let locate = locate.unwrap_or_else(|| Arc::new(netns_lookup::find));
        Ok(Agent {
            reconciler: Reconciler::new(config.node.clone(), zds.clone(), locate),
            zds,
            resources,
            _events: events,
        })
    }

    /// Takes a new view of the cluster and reconciles enrolment with it.
    pub fn observe(&self, resources: Resources) {
        *self.resources.write().unwrap_or_else(|p| p.into_inner()) = resources.clone();
        let pass = self.reconciler.reconcile(&resources);
        if !pass.enrolled.is_empty() || !pass.released.is_empty() {
            info!(enrolled = ?pass.enrolled, released = ?pass.released, "enrolment reconciled");
        }
        for (uid, why) in &pass.failed {
            warn!(%uid, "not enrolled: {why}");
        }
        self.zds.mark_synced();
    }
}

/// Follows `source` until it ends, reconciling after every snapshot.
pub async fn follow(agent: &Agent, source: Box<dyn ConfigSource>) {
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(source.run(tx));
    while let Some(SourceEvent::Snapshot { resources, errors }) = rx.recv().await {
        for e in errors {
            warn!(error = %e, "object not read");
        }
        agent.observe(resources);
    }
    task.abort();
}
