//! The `ztunnel` binary: one node's proxy, configured the way Istio's ztunnel is
//! for local runs (istio-wire §5.3): `LOCAL_XDS_PATH` names a local config file,
//! `NODE_NAME` the node, `INPOD_UDS` the ZDS socket of the node agent, and
//! `FAKE_CA=true` signs certificates with an in-process CA. (Workload xDS and the
//! CA service come with the controller.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_hbone::HboneConfig;
use ambit_hbone::ca::{Authority, CertificateSigner, Validity};
use anyhow::{Context, bail};
use ztunnel::netns::Netns;
use ztunnel::state::{LocalConfig, ProxyState};
use ztunnel::{Ztunnel, ZtunnelConfig};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let Some(path) = env("LOCAL_XDS_PATH") else {
        bail!(
            "set LOCAL_XDS_PATH to a local config file (xDS from the controller is not wired yet)"
        );
    };
    let cfg = LocalConfig::load(&PathBuf::from(&path))?;
    let node = env("NODE_NAME").unwrap_or_default();
    if env("FAKE_CA").as_deref() != Some("true") {
        bail!("set FAKE_CA=true: the CA service comes with the controller");
    }
    let ttl = Duration::from_secs(24 * 3600);
    let signer: Arc<dyn CertificateSigner> = Arc::new(
        Authority::new_root(
            "cluster.local",
            "ztunnel fake CA",
            Validity::starting_now(ttl * 30),
        )
        .context("creating the fake CA")?,
    );
    let z = Arc::new(Ztunnel::new(
        ZtunnelConfig {
            node: node.clone(),
            signer,
            cert_ttl: ttl,
            hbone: HboneConfig::default(),
            cgroup_root: None,
        },
        ProxyState::from_config(&cfg),
    )?);
    let here = Netns::current()?;
    let _admin = ztunnel::admin::start(&z, &here).context("binding 15000/15020/15021")?;
    let uds =
        PathBuf::from(env("INPOD_UDS").unwrap_or_else(|| "/var/run/ztunnel/ztunnel.sock".into()));
    let zds = ztunnel::zds::run_client(z.clone(), uds.clone(), tokio::runtime::Handle::current());
    tracing::info!(node, config = %path, zds = %uds.display(), "ztunnel running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    z.shutdown();
    let _ = tokio::task::spawn_blocking(move || zds.join()).await;
    Ok(())
}
