//! `ambit-controller`: the control plane as its own process. Watches a
//! directory of Kubernetes YAML and serves workload xDS and the CA on 15012
//! (TLS, with a root it creates, or `--root-dir` to reuse one) to ztunnels
//! holding one of the bootstrap tokens it writes to `--token-dir`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_hbone::ca::{Authority, Validity};
use anyhow::Context;
use clap::Parser;
use controller::auth::BootstrapTokens;
use controller::ca::RotatingAuthority;
use controller::source::DirSource;
use controller::{Controller, ControllerConfig};

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "ambit-controller", about = "Ambit control plane: xDS + CA")]
struct Args {
    /// Directory of Kubernetes YAML to serve.
    #[arg(long, short = 'f')]
    dir: PathBuf,
    /// Listen address for xDS + CA.
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// Nodes to mint bootstrap tokens for.
    #[arg(long, value_delimiter = ',', default_value = "node1")]
    nodes: Vec<String>,
    /// Where to write `<node>.token` and `root-cert.pem`.
    #[arg(long, default_value = "/var/run/ambit")]
    token_dir: PathBuf,
    /// Serve plaintext instead of TLS (debugging only).
    #[arg(long)]
    plaintext: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let authority = Authority::new_root(
        "cluster.local",
        "ambit controller",
        Validity::starting_now(Duration::from_secs(365 * 86400)),
    )
    .context("creating the mesh root")?;
    std::fs::create_dir_all(&args.token_dir)
        .with_context(|| format!("creating {}", args.token_dir.display()))?;
    std::fs::write(
        args.token_dir.join("root-cert.pem"),
        authority.certificate_pem(),
    )?;
    let mut tokens = BootstrapTokens::default();
    for node in &args.nodes {
        let t = tokens.mint(node);
        std::fs::write(args.token_dir.join(format!("{node}.token")), t)?;
    }
    let tls = if args.plaintext {
        None
    } else {
        Some(authority.issue_server(
            &[
                "istiod.istio-system.svc".to_string(),
                "localhost".to_string(),
                args.listen.ip().to_string(),
            ],
            Validity::starting_now(Duration::from_secs(365 * 86400)),
        )?)
    };
    let signer = Arc::new(RotatingAuthority::new(authority));
    let controller = Controller::start(
        ControllerConfig {
            listen: args.listen,
            tls,
            signer,
            auth: Arc::new(tokens),
            debounce: controller::run::DEBOUNCE,
        },
        Box::new(DirSource::new(&args.dir, Duration::from_millis(100))),
    )
    .await?;
    tracing::info!(addr = %controller.local_addr(), dir = %args.dir.display(), "ambit-controller running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    controller.stop().await;
    Ok(())
}
