//! `ambit-controller`: the control plane as its own process. Serves workload
//! xDS, the waypoint L7 type and the CA on 15012 (TLS).
//!
//! * `--dir DIR`: watch a directory of Kubernetes YAML; nodes authenticate
//!   with bootstrap tokens written to `--token-dir` (one per `--nodes` entry).
//! * `--kube`: watch the cluster (in-cluster config or `KUBECONFIG`); nodes
//!   authenticate with their projected service-account token (TokenReview),
//!   and the root is published as ConfigMap `istio-ca-root-cert`.
//!
//! In cluster mode the controller also deploys waypoints: for each Gateway
//! of class `istio-waypoint`, a ServiceAccount, Deployment and Service, and
//! the Gateway's status (`--no-waypoint-deployer` turns it off). Replicas
//! all serve xDS and sign; only the holder of Lease
//! `ambit-waypoint-deployer` deploys. Without a plugged-in CA, replicas
//! share the root in Secret `istio-ca-secret` (created by the first).
//!
//! The mesh CA comes from `--ca-dir`: Istio's `cacerts` layout (`ca-cert.pem`,
//! `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`) as an operator plugs it
//! into istiod, or a root this controller made (`root-cert.pem`,
//! `root-key.pem`); with neither, a new root is created and written there
//! when the directory is writable, so restarts keep the root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_hbone::ca::{Authority, CertificateSigner, PluggedCaFiles, Validity};
use anyhow::{Context, bail};
use clap::Parser;
use controller::auth::{BootstrapTokens, NodeAuthenticator, TokenReviewAuthenticator};
use controller::ca::RotatingAuthority;
use controller::source::{ConfigSource, DirSource, KubeSource};
use controller::{Controller, ControllerConfig};

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "ambit-controller", about = "Ambit control plane: xDS + CA")]
struct Args {
    /// Directory of Kubernetes YAML to serve.
    #[arg(long, short = 'f', conflicts_with = "kube")]
    dir: Option<PathBuf>,
    /// Watch the Kubernetes cluster instead of a directory.
    #[arg(long)]
    kube: bool,
    /// Listen address for xDS + CA.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Where to serve `/metrics`.
    #[arg(long, default_value = "0.0.0.0:15014")]
    metrics: SocketAddr,
    /// Trust domain. Default: the mesh config's `trustDomain` (ConfigMap
    /// `istio-system/istio`, key `mesh`), else `cluster.local`.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Names on the serving certificate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "istiod.istio-system.svc,ambit-controller.istio-system.svc,localhost"
    )]
    dns_names: Vec<String>,
    /// Where the mesh CA lives: Istio `cacerts` files or `root-cert.pem` + `root-key.pem`.
    #[arg(long, default_value = "/etc/ambit/ca")]
    ca_dir: PathBuf,
    /// Directory mode: nodes to mint bootstrap tokens for.
    #[arg(long, value_delimiter = ',', default_value = "node1")]
    nodes: Vec<String>,
    /// Directory mode: where to write `<node>.token` and `root-cert.pem`.
    #[arg(long, default_value = "/var/run/ambit")]
    token_dir: PathBuf,
    /// Cluster mode: service accounts allowed to act as node proxies.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "system:serviceaccount:istio-system:ztunnel"
    )]
    node_identities: Vec<String>,
    /// Cluster mode: namespace to publish the root ConfigMap in.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Cluster mode: do not create waypoint Deployments for Gateways of
    /// class `istio-waypoint` (someone else deploys them).
    #[arg(long)]
    no_waypoint_deployer: bool,
    /// Cluster mode: the image waypoint Deployments run (default from
    /// deploy/images.env).
    #[arg(long)]
    waypoint_image: Option<String>,
    /// Cluster mode: the address waypoints reach xDS and the CA at.
    #[arg(long, default_value = "ambit-controller.istio-system.svc:15012")]
    waypoint_control_plane: String,
}

fn main() -> anyhow::Result<()> {
    // The proxies' logging: `RUST_LOG` as a level and per-target levels,
    // plain text unless on a terminal.
    ambit_proxy_core::environment::init_logging(std::io::stdout, tracing::Level::INFO);
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn read_pem(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The mesh CA kept in `dir`, if there is one: an Istio `cacerts` layout
/// (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, optional
/// `cert-chain.pem`) when `ca-key.pem` is there; else a root this
/// controller created before (`root-cert.pem`, `root-key.pem`).
fn load_from_dir(dir: &Path, trust_domain: &str) -> anyhow::Result<Option<Authority>> {
    if dir.join("ca-key.pem").is_file() {
        let chain = dir.join("cert-chain.pem");
        let files = PluggedCaFiles {
            ca_cert: read_pem(dir, "ca-cert.pem")?,
            ca_key: read_pem(dir, "ca-key.pem")?,
            cert_chain: if chain.is_file() {
                Some(read_pem(dir, "cert-chain.pem")?)
            } else {
                None
            },
            root_cert: read_pem(dir, "root-cert.pem")?,
        };
        let authority = Authority::load_plugged(trust_domain, &files)
            .with_context(|| format!("loading the plugged-in CA from {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "plugged-in CA loaded (Istio cacerts layout)");
        return Ok(Some(authority));
    }
    if dir.join("root-cert.pem").is_file() && dir.join("root-key.pem").is_file() {
        let authority = Authority::load_root(
            trust_domain,
            &read_pem(dir, "root-cert.pem")?,
            &read_pem(dir, "root-key.pem")?,
        )
        .with_context(|| format!("loading the mesh root from {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "mesh root loaded");
        return Ok(Some(authority));
    }
    Ok(None)
}

/// A new mesh root, saved in `dir` (`root-cert.pem`, `root-key.pem`) when
/// the directory is writable, so a restart keeps it.
fn create_in_dir(dir: &Path, trust_domain: &str) -> anyhow::Result<Authority> {
    let authority = controller::ca_secret::new_mesh_root(trust_domain)?;
    let (cert, key) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
    let saved = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&cert, authority.certificate_pem()))
        .and_then(|()| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key)?
                .write_all(authority.key_pem().as_bytes())
        });
    match saved {
        Ok(()) => tracing::info!(dir = %dir.display(), "new mesh root created and saved"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "new mesh root created but not saved: a restart will create another")
        }
    }
    Ok(authority)
}

async fn publish_root(
    client: kube::Client,
    namespace: &str,
    root_pem: String,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": namespace},
        "data": {"root-cert.pem": root_pem},
    });
    api.patch(
        "istio-ca-root-cert",
        &kube::api::PatchParams::apply("ambit-controller").force(),
        &kube::api::Patch::Apply(&cm),
    )
    .await
    .context("publishing ConfigMap istio-ca-root-cert")?;
    Ok(())
}

/// The trust domain: `--trust-domain`, else the mesh config's, as istiod
/// takes it from `meshConfig.trustDomain`.
async fn trust_domain(args: &Args, kube: Option<&kube::Client>) -> anyhow::Result<String> {
    use ambit_api::translate::{MeshConfig, mesh::mesh_config};
    if let Some(td) = &args.trust_domain {
        return Ok(td.clone());
    }
    let mut res = ambit_api::k8s::Resources::default();
    if let Some(dir) = &args.dir {
        // As the watch reads it: a file that does not parse is reported and
        // left out, it does not stop the controller.
        res = controller::source::read_dir_once(dir)
            .map_err(|e| anyhow::anyhow!("reading the mesh config in {}: {e}", dir.display()))?;
    } else if let Some(client) = kube {
        use ambit_api::k8s::{MESH_CONFIG_NAME, MESH_CONFIG_NAMESPACE, Source};
        use k8s_openapi::api::core::v1::ConfigMap;
        let api: kube::Api<ConfigMap> =
            kube::Api::namespaced(client.clone(), MESH_CONFIG_NAMESPACE);
        if let Some(cm) = api
            .get_opt(MESH_CONFIG_NAME)
            .await
            .context("reading the mesh config ConfigMap istio-system/istio")?
        {
            let source = Source {
                file: format!("kube:ConfigMap/{MESH_CONFIG_NAMESPACE}/{MESH_CONFIG_NAME}"),
                doc: 0,
            };
            res.mesh_configs.push((source, cm));
        }
    }
    Ok(mesh_config(&res, &MeshConfig::default()).trust_domain)
}

/// The mesh CA: plugged-in `cacerts` or a root in `--ca-dir` when there is
/// one; else, in cluster mode, the root every replica shares (Secret
/// `istio-ca-secret`); else a root created and saved in `--ca-dir`.
async fn mesh_ca(
    args: &Args,
    kube: Option<&kube::Client>,
    trust_domain: &str,
) -> anyhow::Result<Authority> {
    if let Some(authority) = load_from_dir(&args.ca_dir, trust_domain)? {
        return Ok(authority);
    }
    match kube {
        Some(client) => {
            Ok(
                controller::ca_secret::shared_root(client.clone(), &args.namespace, trust_domain)
                    .await?,
            )
        }
        None => create_in_dir(&args.ca_dir, trust_domain),
    }
}

/// This replica's name for leader election: the pod's name.
fn replica_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(hostname)
        .unwrap_or_else(|| format!("ambit-controller-{}", std::process::id()))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // One client for everything cluster mode asks the API server.
    let kube_client = if args.kube {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?,
        )
    } else {
        None
    };
    let trust_domain = trust_domain(&args, kube_client.as_ref()).await?;
    tracing::info!(%trust_domain, "trust domain");
    let authority = mesh_ca(&args, kube_client.as_ref(), &trust_domain).await?;
    // The bundle exactly as loaded: every root in a plugged `root-cert.pem`.
    let root_pem = authority.trust_bundle().to_pem();
    let tls = authority.issue_server(
        &args.dns_names,
        Validity::starting_now(Duration::from_secs(365 * 86400)),
    )?;
    let (source, auth): (Box<dyn ConfigSource>, Arc<dyn NodeAuthenticator>) =
        if let Some(client) = &kube_client {
            publish_root(client.clone(), &args.namespace, root_pem.clone()).await?;
            (
                Box::new(KubeSource::new(client.clone())),
                Arc::new(TokenReviewAuthenticator::new(
                    client.clone(),
                    args.node_identities.clone(),
                    "istio-ca",
                )),
            )
        } else {
            let Some(dir) = &args.dir else {
                bail!("give --dir DIR (a directory of YAML) or --kube");
            };
            std::fs::create_dir_all(&args.token_dir)
                .with_context(|| format!("creating {}", args.token_dir.display()))?;
            std::fs::write(args.token_dir.join("root-cert.pem"), &root_pem)?;
            // A restart keeps each node's token, so running ztunnels reconnect.
            let tokens = BootstrapTokens::default();
            for node in &args.nodes {
                let file = args.token_dir.join(format!("{node}.token"));
                match std::fs::read_to_string(&file) {
                    Ok(t) if !t.trim().is_empty() => tokens.insert(t.trim(), node),
                    _ => std::fs::write(&file, tokens.mint(node))?,
                }
            }
            (
                Box::new(DirSource::new(dir, Duration::from_millis(100))),
                Arc::new(tokens),
            )
        };
    let controller = Controller::start(
        ControllerConfig {
            listen: args.listen,
            tls: Some(tls),
            signer: Arc::new(RotatingAuthority::new(authority)),
            auth,
            debounce: controller::run::DEBOUNCE,
            metrics: Some(args.metrics),
        },
        source,
    )
    .await?;
    tracing::info!(addr = %controller.local_addr(), "ambit-controller running");
    let mut leader_tasks = Vec::new();
    if let Some(client) = kube_client
        && !args.no_waypoint_deployer
    {
        use controller::deployer::{self, Deployer, KubeStore, WaypointTemplate};
        use controller::lease::{LeaderElector, Timings, while_leader};
        let template = WaypointTemplate {
            image: args
                .waypoint_image
                .clone()
                .unwrap_or_else(|| controller::images::WAYPOINT.clone()),
            control_plane: args.waypoint_control_plane.clone(),
            trust_domain: trust_domain.clone(),
            root_pem: Some(root_pem.clone()),
            ..WaypointTemplate::default()
        };
        // Every replica serves xDS and signs; only the leader deploys.
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        let elector = LeaderElector::new(
            client.clone(),
            &args.namespace,
            "ambit-waypoint-deployer",
            &replica_identity(),
            Timings::default(),
        );
        leader_tasks.push(tokio::spawn(elector.run(leader_tx)));
        let resources = controller.resources();
        leader_tasks.push(tokio::spawn(while_leader(leader_rx, move || {
            deployer::run(
                Deployer::new(template.clone()),
                resources.clone(),
                KubeStore::new(client.clone()),
                Duration::from_secs(5),
            )
        })));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    for t in leader_tasks {
        t.abort();
    }
    controller.stop().await;
    Ok(())
}
