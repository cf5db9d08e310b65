//! The `ztunnel` binary: one node's proxy. Configuration is Istio ztunnel's
//! environment variables; see [`ztunnel::standalone`].

use tracing_subscriber::prelude::*;

fn main() -> anyhow::Result<()> {
    // Started as the eBPF loader child (see `ZtunnelConfig::ebpf_loader`)?
    ambit_ebpf::loader::serve_if_asked();
    ztunnel::standalone::tune_allocator();
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(ztunnel::standalone::log_filter()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ztunnel::standalone::worker_threads())
        .enable_all()
        .build()?;
    rt.block_on(ztunnel::standalone::run())
}
