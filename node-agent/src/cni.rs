//! The node agent's answer to `ambit-cni`: the job istio-cni's node agent
//! does. For each pod event it looks the pod and its namespace up in the
//! resources it follows, decides membership with the one rule the
//! controller uses ([`pod_in_mesh`]: `istio.io/dataplane-mode` on the
//! namespace or pod, host-network pods never), and enrols the pod into its
//! node's ztunnel over ZDS before answering, so the pod's containers start
//! captured.
//!
//! A pod the agent does not know yet (its view lags the API) is refused:
//! the runtime retries the sandbox rather than start it outside the mesh.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ambit_api::k8s::Resources;
use ambit_api::model::pod_uid;
use ambit_api::translate::{expand_deployments, pod_in_mesh};
use ambit_api::zds::WorkloadInfo;
use ambit_cni::event::{PodEvent, PodEvents};
use tracing::{info, warn};

use crate::zds::NodeAgent;

/// Answers CNI events from `resources` (kept current by the caller) through
/// `agent`.
#[derive(Debug)]
pub struct CniEnroller {
    resources: Arc<RwLock<Resources>>,
    agent: Arc<NodeAgent>,
}

/// What the agent knows of a pod.
struct Known {
    in_mesh: bool,
    service_account: String,
}

impl CniEnroller {
    /// An enroller over `resources` and the node's ZDS `agent`.
    pub fn new(resources: Arc<RwLock<Resources>>, agent: Arc<NodeAgent>) -> Self {
        CniEnroller { resources, agent }
    }

    fn lookup(&self, namespace: &str, name: &str) -> Option<Known> {
        let res = self.resources.read().unwrap_or_else(|p| p.into_inner());
        let (_, pod) = expand_deployments(&res).into_iter().find(|(_, p)| {
            p.metadata.name.as_deref() == Some(name)
                && p.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })?;
        let ns = res
            .namespaces
            .iter()
            .map(|(_, n)| n)
            .find(|n| n.metadata.name.as_deref() == Some(namespace));
        Some(Known {
            in_mesh: pod_in_mesh(&pod, ns),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        })
    }
}

impl PodEvents for CniEnroller {
    fn add(&self, event: &PodEvent) -> Result<bool, String> {
        let (ns, name) = (&event.pod_namespace, &event.pod_name);
        let known = self
            .lookup(ns, name)
            .ok_or_else(|| format!("pod {ns}/{name} is not known to the node agent yet"))?;
        if !known.in_mesh {
            return Ok(false);
        }
        let info = WorkloadInfo {
            name: name.clone(),
            namespace: ns.clone(),
            service_account: known.service_account,
        };
        self.agent
            .add(&pod_uid(ns, name), info, PathBuf::from(&event.netns))?;
        info!(pod = %format!("{ns}/{name}"), netns = %event.netns, ips = ?event.ips, "pod enrolled from CNI ADD");
        Ok(true)
    }

    fn del(&self, event: &PodEvent) -> Result<(), String> {
        let uid = pod_uid(&event.pod_namespace, &event.pod_name);
        if self.agent.is_enrolled(&uid)
            && let Err(e) = self.agent.del(&uid)
        {
            // Out of the desired set anyway: the next snapshot prunes it.
            warn!(%uid, error = %e, "ztunnel did not ack the release");
        }
        Ok(())
    }

    fn check(&self, event: &PodEvent) -> Result<bool, String> {
        let (ns, name) = (&event.pod_namespace, &event.pod_name);
        let known = self
            .lookup(ns, name)
            .ok_or_else(|| format!("pod {ns}/{name} is not known to the node agent"))?;
        let enrolled = self.agent.is_enrolled(&pod_uid(ns, name));
        match (known.in_mesh, enrolled) {
            (true, false) => Err(format!("pod {ns}/{name} is in the mesh but not enrolled")),
            (_, enrolled) => Ok(enrolled),
        }
    }
}
