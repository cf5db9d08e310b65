//! The `ztunnel` binary: one node's proxy. Configuration is Istio ztunnel's
//! environment variables; see [`ztunnel::standalone`].

fn main() -> anyhow::Result<()> {
    ztunnel::standalone::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ztunnel::standalone::worker_threads())
        .enable_all()
        .build()?;
    rt.block_on(ztunnel::standalone::run())
}
