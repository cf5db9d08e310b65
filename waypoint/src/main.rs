//! `waypoint`: the L7 proxy.
//!
//! * `waypoint mesh`: production. Istio's environment says where the control
//!   plane is (`XDS_ADDRESS`, `CA_ADDRESS`, `XDS_ROOT_CA`, `AUTH_TOKEN`,
//!   `CLUSTER_ID`) and who this waypoint is (`POD_NAMESPACE`, `GATEWAY_NAME`
//!   or `SERVICE_ACCOUNT`, `TRUST_DOMAIN`, `POD_NAME`, `INSTANCE_IP`,
//!   `NODE_NAME`). It serves HBONE on 15008 and admin/metrics/readiness on
//!   15000/15020/15021, takes its config over delta ADS and its certificate
//!   from the CA for its own identity (dedicated mode), through the same
//!   `waypoint::mesh` entry point the local cluster uses.
//! * `waypoint --config-dir DIR ...`: a directory of Istio YAML on a
//!   plaintext HTTP listener, as if every connection had been tunnelled to
//!   one Service destination; for debugging rules and for benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::translate::translate;
use ambit_hbone::HboneConfig;
use ambit_hbone::ca::{Authority, CertificateSigner, Validity};
use ambit_identity::SpiffeId;
use ambit_proxy_core::certs::{CertManager, LocalSigner};
use anyhow::{Context, bail};
use waypoint::normalize::PathNormalization;
use waypoint::{Waypoint, WaypointConfig};

/// Command line.
#[derive(clap::Parser, Debug)]
#[command(
    name = "waypoint",
    about = "The Ambit L7 proxy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    local: Option<Args>,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Run in the mesh, configured by the control plane (Istio's environment).
    Mesh,
}

/// The local mode's arguments.
#[derive(clap::Args, Debug)]
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
    // Envoy logs at warning and writes no access log unless asked.
    ambit_proxy_core::environment::init_logging(std::io::stdout, tracing::Level::WARN);
    let cli = <Cli as clap::Parser>::parse();
    match (cli.mode, cli.local) {
        (Some(Mode::Mesh), _) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(mesh()),
        (None, Some(args)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
        (None, None) => {
            bail!("give `mesh`, or --config-dir DIR --gateway NS/NAME --listen ... (see --help)")
        }
    }
}

/// Production mode: see the module docs.
async fn mesh() -> anyhow::Result<()> {
    use ambit_proxy_core::ca_client::{CaClient, CaMode};
    use ambit_proxy_core::environment::{control_plane, default_control_plane, env, secret_ttl};
    let xds_address = env("XDS_ADDRESS").unwrap_or_else(default_control_plane);
    let namespace = env("POD_NAMESPACE").context("POD_NAMESPACE is required")?;
    let gateway = env("GATEWAY_NAME")
        .or_else(|| env("SERVICE_ACCOUNT"))
        .context("GATEWAY_NAME (or SERVICE_ACCOUNT) is required: the waypoint's Gateway")?;
    // Who it is: its pod's service account (the Gateway's name unless
    // `gateway.istio.io/service-account` says otherwise).
    let service_account = env("SERVICE_ACCOUNT").unwrap_or_else(|| gateway.clone());
    let trust_domain = env("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into());
    let identity = SpiffeId::new(&trust_domain, &namespace, &service_account)?;
    let xds = control_plane(xds_address.clone(), "XDS_ROOT_CA")?;
    let ca_address = env("CA_ADDRESS").unwrap_or(xds_address);
    let ca = CaClient::with_mode(&control_plane(ca_address, "CA_ROOT_CA")?, CaMode::Dedicated)?;
    let ttl = secret_ttl()?;
    let w = Waypoint::new(WaypointConfig {
        name: format!("{namespace}/{gateway}"),
        identity,
        certs: CertManager::new(Arc::new(ca), ttl),
        hbone: HboneConfig::default(),
        socket: None,
    });
    let ip = env("WAYPOINT_BIND")
        .map(|v| v.parse().context("WAYPOINT_BIND is an IP address"))
        .transpose()?
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let bind = |port: u16| async move {
        tokio::net::TcpListener::bind((ip, port))
            .await
            .with_context(|| format!("binding {ip}:{port}"))
    };
    let listeners = waypoint::mesh::Listeners {
        hbone: bind(15008).await?,
        readiness: bind(waypoint::admin::READINESS).await?,
        metrics: bind(waypoint::admin::METRICS).await?,
        admin: bind(waypoint::admin::ADMIN).await?,
    };
    let info = ambit_proxy_core::environment::node_info(&gateway, &namespace);
    let tasks = waypoint::mesh::start(&w, listeners, xds, info);
    tracing::info!(waypoint = %format!("{namespace}/{gateway}"), "waypoint running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    w.shutdown();
    for t in tasks {
        t.abort();
    }
    Ok(())
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
