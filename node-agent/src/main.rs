//! `ambit-node-agent`: one per node (a DaemonSet next to ztunnel). It
//! installs `ambit-cni` into the node's CNI configuration, listens for
//! ztunnel on the ZDS socket and for the plugin on its event socket, and
//! follows the cluster's pods and namespaces to enrol and release running
//! pods. Environment: `NODE_NAME` (required), `INPOD_UDS` (default
//! `/var/run/ztunnel/ztunnel.sock`), `AMBIT_CNI_SOCKET` (default
//! `/var/run/ambit/cni.sock`), `CNI_NET_DIR` (default `/host/etc/cni/net.d`),
//! `CNI_BIN_DIR` (default `/host/opt/cni/bin`), `AMBIT_CNI_BINARY` (default:
//! `ambit-cni` next to this executable), `AMBIT_CNI_INSTALL=false` to leave
//! the CNI configuration alone.

use std::path::PathBuf;

use ambit_node_agent::run::{Agent, AgentConfig, follow};
use ambit_proxy_core::environment::{env, init_logging};
use anyhow::Context;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    init_logging(std::io::stdout, tracing::Level::INFO);
    let config = AgentConfig {
        node: env("NODE_NAME")
            .context("NODE_NAME is required (the downward API's spec.nodeName)")?,
        zds_socket: PathBuf::from(
            env("INPOD_UDS").unwrap_or_else(|| "/var/run/ztunnel/ztunnel.sock".into()),
        ),
        cni_socket: PathBuf::from(
            env("AMBIT_CNI_SOCKET").unwrap_or_else(|| ambit_cni::event::DEFAULT_SOCKET.into()),
        ),
    };
    if env("AMBIT_CNI_INSTALL").as_deref() != Some("false") {
        let net_d =
            PathBuf::from(env("CNI_NET_DIR").unwrap_or_else(|| "/host/etc/cni/net.d".into()));
        let bin_dir =
            PathBuf::from(env("CNI_BIN_DIR").unwrap_or_else(|| "/host/opt/cni/bin".into()));
        let binary = match env("AMBIT_CNI_BINARY") {
            Some(b) => PathBuf::from(b),
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name(ambit_cni::PLUGIN_TYPE),
        };
        ambit_cni::install::install_binary(&binary, &bin_dir)?;
        let conflist = ambit_cni::install::install(
            &net_d,
            &json!({"type": ambit_cni::PLUGIN_TYPE, "agent_socket": config.cni_socket}),
        )?;
        tracing::info!(conflist = %conflist.display(), "ambit-cni chained into the node's CNI config");
    }
    let agent = Agent::start(&config, None).context("starting the node agent")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
            let source = controller::source::KubeSource::with_kinds(
                client,
                &[("", "v1", "Namespace"), ("", "v1", "Pod")],
            )
            .pods_of_node(&config.node);
            tracing::info!(node = %config.node, "node agent running");
            tokio::select! {
                () = follow(&agent, Box::new(source)) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            anyhow::Ok(())
        })
}
