//! `ambit`: the one command users type.
//!
//! For now it carries `ambit demo`, which shows the HBONE tunnel end to end on
//! this machine: a CA, two workload identities, a server and a client, bytes
//! through the tunnel, the verified peer identities, and two refusals.

mod demo;

use clap::{Parser, Subcommand};

/// Ambit: a sidecarless, ambient-style service mesh.
#[derive(Parser, Debug)]
#[command(name = "ambit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open an HBONE (HTTP/2 CONNECT over mutual TLS) tunnel between two local
    /// endpoints and report what was verified.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Demo(args) => rt.block_on(demo::run(args)),
    }
}
