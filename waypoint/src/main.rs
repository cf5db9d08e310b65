//! `waypoint`: runs the L7 proxy from a directory of Istio YAML with a
//! plaintext HTTP listener, as if every connection had been tunnelled to one
//! Service destination. For debugging rules and for benchmarks against
//! other proxies; in the mesh the waypoint runs from the controller's xDS
//! (the local cluster runs it that way).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::translate::translate;
use ambit_hbone::HboneConfig;
use ambit_hbone::ca::{Authority, CertificateSigner, Validity};
use ambit_identity::SpiffeId;
use anyhow::{Context, bail};
use waypoint::normalize::PathNormalization;
use waypoint::{HttpOptions, Waypoint, WaypointConfig};
use ztunnel::certs::{CertManager, LocalSigner};

/// Command line.
#[derive(clap::Parser, Debug)]
#[command(
    name = "waypoint",
    about = "Runs the L7 proxy from a directory of Istio YAML on a plaintext listener"
)]
struct Args {
    /// Directory of Kubernetes/Istio YAML (its ConfigMap istio-system/istio
    /// is the mesh config).
    #[arg(long = "config-dir")]
    dir: PathBuf,
    /// The waypoint's Gateway, NAMESPACE/NAME.
    #[arg(long)]
    gateway: String,
    /// Plaintext HTTP listener.
    #[arg(long)]
    listen: SocketAddr,
    /// The Service address every connection is treated as sent to.
    #[arg(long)]
    destination: SocketAddr,
    /// Overrides the mesh config's `pathNormalization`.
    #[arg(long, value_name = "NONE|BASE|MERGE_SLASHES|DECODE_AND_MERGE_SLASHES")]
    path_normalization: Option<PathNormalization>,
    /// Overrides the mesh config's `numTrustedProxies`.
    #[arg(long)]
    num_trusted_proxies: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = <Args as clap::Parser>::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let res = Resources::from_dir(&args.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = translate(&res);
    for f in &t.findings {
        eprintln!("{f}");
    }
    let (ns, name) = args
        .gateway
        .split_once('/')
        .context("--gateway is NAMESPACE/NAME")?;
    // The identity's trust domain is the mesh config's (ConfigMap
    // istio-system/istio in the same directory), as for every workload.
    let td = t.mesh.trust_domain.as_str();
    let root: Arc<dyn CertificateSigner> = Arc::new(Authority::new_root(
        td,
        "waypoint local",
        Validity::starting_now(Duration::from_secs(86400)),
    )?);
    let w = Waypoint::new(WaypointConfig {
        name: args.gateway.clone(),
        identity: SpiffeId::new(td, ns, name)?,
        certs: CertManager::new(Arc::new(LocalSigner(root)), Duration::from_secs(86400)),
        hbone: HboneConfig::default(),
        socket: None,
        options: HttpOptions::default(),
    });
    let mut served = 0;
    for mut s in t.l7 {
        if s.waypoints.contains(&args.gateway) {
            if let Some(n) = args.path_normalization {
                s.path_normalization = n.as_str().to_string();
            }
            if let Some(n) = args.num_trusted_proxies {
                s.num_trusted_proxies = n;
            }
            let key = format!("{}/{}", s.namespace, s.hostname);
            w.apply_l7(&key, Some(s)).map_err(|e| anyhow::anyhow!(e))?;
            served += 1;
        }
    }
    if served == 0 {
        bail!(
            "no Service in {} uses waypoint {}",
            args.dir.display(),
            args.gateway
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "waypoint {} serving {served} service(s) on {} as {}",
        args.gateway, args.listen, args.destination
    );
    w.serve_plaintext(listener, args.destination).await;
    Ok(())
}
