//! Ambit's CNI side, the job istio-cni does in Istio ambient, without
//! iptables:
//!
//! * [`spec`]: the CNI 1.0 wire types (config on stdin, `CNI_*`
//!   environment, result and error on stdout);
//! * [`plugin`]: `ambit-cni`, a chained plugin: on ADD it tells the node
//!   agent about the new pod (its netns, namespace, name, IPs) and passes the
//!   previous plugin's result on; the agent decides whether the pod is in the
//!   mesh and enrols it into ztunnel over ZDS;
//! * [`event`]: the plugin ↔ node-agent messages and the agent's event
//!   server on a unix socket;
//! * [`runtime`]: a CNI runtime (what libcni does for the kubelet's
//!   container runtime): runs a plugin chain per the spec. The tests and the
//!   local cluster create pods through it;
//! * [`install`]: puts the plugin into a node's CNI configuration.

/// The plugin's `type` (and executable name).
pub const PLUGIN_TYPE: &str = "ambit-cni";

pub mod event;
pub mod install;
pub mod plugin;
pub mod runtime;
pub mod spec;
