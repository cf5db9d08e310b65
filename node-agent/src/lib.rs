//! The node agent: the job istio-cni's node agent does in Istio ambient,
//! without iptables. It owns the node's end of the enrolment channel (ZDS)
//! to ztunnel and decides which of the node's pods are in the mesh:
//!
//! * [`zds`]: the ZDS listener ztunnel connects to (snapshot on connect,
//!   then one acked `add`/`del` per change);
//! * [`cni`]: the answer to `ambit-cni` for a pod being created;
//! * [`reconcile`]: the answer to the API for pods that already run: a
//!   namespace labelled (or unlabelled) `istio.io/dataplane-mode=ambient`
//!   enrols (or releases) its running pods, and pods that existed before
//!   install are enrolled;
//! * [`netns_lookup`]: finds a running pod's network namespace by its IP;
//! * [`run`]: the agent as a process, following a config source.

pub mod cni;
pub mod netns_lookup;
pub mod reconcile;
pub mod run;
pub mod zds;
