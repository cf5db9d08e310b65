//! `ambit-cni`: a chained plugin, placed after the cluster's network plugin
//! in its conflist (as istio-cni is). It does not touch the pod's network:
//! on ADD it tells the node agent about the pod and passes the previous
//! result on unchanged; the agent decides whether the pod is in the mesh and
//! enrols it into ztunnel (eBPF capture, no iptables) before answering.
//!
//! Failure policy, as Istio's plugin: when the agent cannot be reached, or
//! cannot enrol a pod, the ADD fails and the runtime retries the sandbox, so
//! no pod of an enrolled namespace starts outside the mesh. Namespaces in
//! `exclude_namespaces` (default `kube-system`, where the agent itself runs)
//! and sandboxes without Kubernetes pod arguments pass through untouched.
//! DEL never fails: ztunnel's snapshot reconciles whatever a lost DEL left.
//!
//! Plugin config fields: `agent_socket` (default
//! [`crate::event::DEFAULT_SOCKET`]), `exclude_namespaces`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::event::{self, DEFAULT_SOCKET, PodEvent};
use crate::spec::{CniError, Command, Invocation, NetConf, SUPPORTED_VERSIONS, codes, result_ips};

/// `ambit-cni`'s own configuration fields.
#[derive(Clone, Debug, Deserialize)]
pub struct PluginConf {
    /// The node agent's socket.
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// Namespaces never handed to the agent.
    #[serde(default = "default_excluded")]
    pub exclude_namespaces: Vec<String>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_excluded() -> Vec<String> {
    vec!["kube-system".into()]
}

/// A plugin error for the agent's refusal (codes ≥ 100 are the plugin's own).
pub const AGENT_REFUSED: u32 = 100;

/// Runs one invocation: `command` with the `CNI_*` variables read through
/// `var` and the network configuration `stdin`. Returns what goes on stdout
/// (empty for DEL and CHECK).
pub fn run(
    command: Command,
    var: impl Fn(&str) -> Option<String>,
    stdin: &str,
) -> Result<String, CniError> {
    if command == Command::Version {
        return Ok(serde_json::json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        })
        .to_string());
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            codes::DECODING_FAILURE,
            format!("network config on stdin: {e}"),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let own: PluginConf = serde_json::from_value(serde_json::Value::Object(conf.rest.clone()))
        .map_err(|e| {
            CniError::new(
                codes::INVALID_NETWORK_CONFIG,
                format!("network {:?}, plugin {}: {e}", conf.name, conf.plugin),
            )
        })?;
    let inv = Invocation::from_env(command, var)?;
    let prev = match (command, &conf.prev_result) {
        (Command::Add | Command::Check, None) => {
            return Err(CniError::new(
                codes::INVALID_NETWORK_CONFIG,
                format!(
                    "network {:?}: {} is a chained plugin and needs the previous plugin's result (put it after the network plugin in the conflist)",
                    conf.name, conf.plugin
                ),
            ));
        }
        (_, p) => p.clone(),
    };
    let pass_through = || match (command, &prev) {
        (Command::Add, Some(p)) => {
            let mut p = p.clone();
            p["cniVersion"] = serde_json::Value::String(conf.cni_version.clone());
            p.to_string()
        }
        _ => String::new(),
    };
    let Some((namespace, name)) = inv.pod() else {
        return Ok(pass_through());
    };
    if own.exclude_namespaces.iter().any(|n| n == namespace) {
        return Ok(pass_through());
    }
    let event = PodEvent {
        command: command.as_str().into(),
        container_id: inv.container_id.clone(),
        netns: inv.netns.clone(),
        pod_namespace: namespace.into(),
        pod_name: name.into(),
        ips: prev.as_ref().map(result_ips).unwrap_or_default(),
    };
    match (command, event::send(&own.agent_socket, &event)) {
        (Command::Del, Err(e)) => {
            tracing::warn!(error = %e, "DEL not delivered; ztunnel's snapshot will reconcile");
            Ok(String::new())
        }
        (_, Err(e)) => Err(CniError {
            details: "the pod is not started until the node agent can enrol it".into(),
            ..CniError::new(codes::TRY_AGAIN_LATER, e.to_string())
        }),
        (_, Ok(reply)) if !reply.ok => Err(CniError::new(
            AGENT_REFUSED,
            format!("node agent: pod {namespace}/{name}: {}", reply.message),
        )),
        (_, Ok(_)) => Ok(pass_through()),
    }
}
