//! The `ztunnel` binary: one node's proxy. Configuration is Istio ztunnel's
//! environment variables; see [`ztunnel::standalone`].

fn main() -> anyhow::Result<()> {
    // Started as the eBPF loader child (see `ZtunnelConfig::ebpf_loader`)?
    ambit_ebpf::loader::serve_if_asked();
    ztunnel::standalone::tune_allocator();
    ambit_proxy_core::environment::init_logging(std::io::stdout, tracing::Level::INFO);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ztunnel::standalone::worker_threads())
        .enable_all()
        .build()?;
    rt.block_on(ztunnel::standalone::run())
}
