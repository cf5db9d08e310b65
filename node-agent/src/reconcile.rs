//! Enrolment from the API: the pods of this node that should be in the mesh,
//! against what the agent has enrolled. Run on every change the agent's
//! watch sees (and at start), it makes `kubectl label namespace NS
//! istio.io/dataplane-mode=ambient` enrol the namespace's running pods,
//! removing the label release them, and pods that ran before the agent was
//! installed join the mesh, as istio-cni's node agent does.
//!
//! A pod is kept while it is scheduled here and in the mesh
//! ([`pod_in_mesh`]); a pod not yet enrolled is enrolled once it has an IP
//! and a network namespace holding it is found. Pods a CNI ADD enrolled are
//! kept by the same rule (the scheduler sets `spec.nodeName` before the
//! sandbox exists).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ambit_api::k8s::Resources;
use ambit_api::model::pod_uid;
use ambit_api::translate::pod_in_mesh;
use ambit_api::zds::WorkloadInfo;
use tracing::{info, warn};

use crate::zds::NodeAgent;

/// Finds the network namespace holding an IP.
pub type Locate = Arc<dyn Fn(IpAddr) -> Option<PathBuf> + Send + Sync>;

/// What one pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Pods enrolled (uids).
    pub enrolled: Vec<String>,
    /// Pods released.
    pub released: Vec<String>,
    /// Pods that should be enrolled and are not, and why.
    pub failed: Vec<(String, String)>,
}

/// Reconciles one node's enrolment with the API's view.
pub struct Reconciler {
    node: String,
    agent: Arc<NodeAgent>,
    locate: Locate,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

struct Wanted {
    uid: String,
    ip: Option<IpAddr>,
    info: WorkloadInfo,
}

impl Reconciler {
    /// For node `node`, enrolling through `agent`, finding namespaces with
    /// `locate` (normally [`crate::netns_lookup::find`]).
    pub fn new(node: impl Into<String>, agent: Arc<NodeAgent>, locate: Locate) -> Self {
        Reconciler {
            node: node.into(),
            agent,
            locate,
        }
    }

    fn wanted(&self, res: &Resources) -> Vec<Wanted> {
        res.pods
            .iter()
            .map(|(_, p)| p)
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str())
            })
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .filter_map(|p| {
                let namespace = p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let ns = res
                    .namespaces
                    .iter()
                    .map(|(_, n)| n)
                    .find(|n| n.metadata.name.as_deref() == Some(namespace.as_str()));
                if !pod_in_mesh(p, ns) {
                    return None;
                }
                let name = p.metadata.name.clone()?;
                Some(Wanted {
                    uid: pod_uid(&namespace, &name),
                    ip: p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.as_deref())
                        .and_then(|ip| ip.parse().ok()),
                    info: WorkloadInfo {
                        name,
                        namespace,
                        service_account: p
                            .spec
                            .as_ref()
                            .and_then(|s| s.service_account_name.clone())
                            .unwrap_or_else(|| "default".into()),
                    },
                })
            })
            .collect()
    }

    /// One pass over `res`.
    pub fn reconcile(&self, res: &Resources) -> Pass {
        let wanted = self.wanted(res);
        let keep: BTreeSet<&str> = wanted.iter().map(|w| w.uid.as_str()).collect();
        let mut pass = Pass::default();
        for uid in self.agent.enrolled() {
            if keep.contains(uid.as_str()) {
                continue;
            }
            if let Err(e) = self.agent.del(&uid) {
                warn!(%uid, error = %e, "ztunnel did not ack the release; the next snapshot prunes it");
            }
            info!(%uid, "pod released: no longer in the mesh or on this node");
            pass.released.push(uid);
        }
        for w in wanted {
            if self.agent.is_enrolled(&w.uid) {
                continue;
            }
            let Some(ip) = w.ip else {
                // No IP yet: its CNI ADD (or a later pass) enrols it.
                continue;
            };
            let Some(netns) = (self.locate)(ip) else {
                pass.failed.push((
                    w.uid,
                    format!("no network namespace on this node holds {ip}"),
                ));
                continue;
            };
            match self.agent.add(&w.uid, w.info, netns) {
                Ok(()) => {
                    info!(uid = %w.uid, %ip, "running pod enrolled");
                    pass.enrolled.push(w.uid);
                }
                Err(e) => pass.failed.push((w.uid, e)),
            }
        }
        pass
    }
}
