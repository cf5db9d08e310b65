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
use ambit_hbone::ca::{Authority, CertificateSigner, Validity};
use ambit_hbone::{HboneConfig, SpiffeId};
use anyhow::{Context, bail};
use waypoint::{HttpOptions, Waypoint, WaypointConfig};
use ztunnel::certs::{CertManager, LocalSigner};

struct Args {
    dir: PathBuf,
    gateway: String,
    listen: SocketAddr,
    destination: SocketAddr,
    options: HttpOptions,
}

fn args() -> anyhow::Result<Args> {
    let mut dir = None;
    let mut gateway = None;
    let mut listen = None;
    let mut destination = None;
    let mut options = HttpOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--config-dir" => dir = Some(PathBuf::from(val()?)),
            "--gateway" => gateway = Some(val()?),
            "--listen" => listen = Some(val()?.parse().context("--listen")?),
            "--destination" => destination = Some(val()?.parse().context("--destination")?),
            "--path-normalization" => {
                options.path_normalization = val()?.parse().context("--path-normalization")?
            }
            "--num-trusted-proxies" => {
                options.num_trusted_proxies = val()?.parse().context("--num-trusted-proxies")?
            }
            "-h" | "--help" => {
                println!(
                    "usage: waypoint --config-dir DIR --gateway NS/NAME --listen IP:PORT --destination VIP:PORT \\\n                [--path-normalization NONE|BASE|MERGE_SLASHES|DECODE_AND_MERGE_SLASHES] [--num-trusted-proxies N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        dir: dir.context("--config-dir is required")?,
        gateway: gateway.context("--gateway is required")?,
        listen: listen.context("--listen is required")?,
        destination: destination.context("--destination is required")?,
        options,
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = args()?;
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
        options: args.options,
    });
    let mut served = 0;
    for s in t.l7 {
        if s.waypoints.contains(&args.gateway) {
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
