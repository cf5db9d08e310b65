//! ztunnel as a process (the `ztunnel` binary, and `ambit ztunnel` in the
//! local cluster): one node's proxy, configured with Istio ztunnel's
//! environment variables (docs/wire.md §3.4, §5):
//!
//! * state: `XDS_ADDRESS` (workload xDS from the controller), or
//!   `LOCAL_XDS_PATH` (a local config file; `XDS_ADDRESS` set and empty);
//! * certificates: `CA_ADDRESS` (default: the xDS address), or `FAKE_CA=true`
//!   for an in-process CA;
//! * `XDS_ROOT_CA` / `CA_ROOT_CA` (file path or PEM), `ALT_XDS_HOSTNAME`,
//!   `AUTH_TOKEN` (file path or literal), `CLUSTER_ID`, `SECRET_TTL` (seconds
//!   or `24h`), `NODE_NAME`, `INPOD_UDS`;
//! * `ZTUNNEL_WORKER_THREADS` (default 2);
//! * SIGTERM drains for `TERMINATION_GRACE_PERIOD_SECONDS` (default 5);
//! * Ambit's own: `AMBIT_BPF_PIN_DIR` (where capture is pinned, default
//!   [`DEFAULT_PIN_DIR`]; a restarted ztunnel picks it up) and
//!   `AMBIT_ADMIN_NETNS` (a netns path to bind 15000/15020/15021 in; default
//!   the process's own) and `AMBIT_CGROUP_ROOT` (the cgroup-v2 subtree
//!   capture attaches to; default the cgroup-v2 root, the whole node).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_hbone::HboneConfig;
use ambit_hbone::ca::{Authority, Validity};
use anyhow::{Context, bail};

use ambit_proxy_core::ca_client::CaClient;
use ambit_proxy_core::certs::{CertificateProvider, LocalSigner};
use ambit_proxy_core::environment::{control_plane, default_control_plane, env, secret_ttl};
use ambit_proxy_core::netns::Netns;

use crate::{Ztunnel, ZtunnelConfig};
use ambit_api::model::{LocalConfig, ProxyState};

/// Where the `ztunnel` process pins capture unless `AMBIT_BPF_PIN_DIR` says.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ambit/ztunnel";

/// Keeps the allocator's footprint in line with two worker threads: glibc
/// would otherwise create up to eight arenas per core, each keeping its
/// freed memory. Call before the runtime starts. (A fixed mmap threshold, so
/// that grown 256 KiB relay buffers go back on free, was measured and cost a
/// quarter of the throughput: every read's buffer became an mmap/munmap;
/// [`trim_heap`] returns the memory instead.)
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// `ZTUNNEL_WORKER_THREADS` (Istio's name), default 2.
pub fn worker_threads() -> usize {
    env("ZTUNNEL_WORKER_THREADS")
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

/// How often freed heap pages are handed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Hands free heap pages back to the kernel every [`TRIM_EVERY`]: after a
/// burst of connections the heap is fragmented and glibc only trims its top,
/// so without this an idle ztunnel would keep its peak footprint. A trim of a
/// few-MiB heap takes microseconds.
async fn trim_heap() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases free memory; safe to call any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Runs ztunnel from its environment until SIGTERM/Ctrl-C, then drains.
pub async fn run() -> anyhow::Result<()> {
    let node = env("NODE_NAME").unwrap_or_default();
    let ttl = secret_ttl()?;
    let local_path = env("LOCAL_XDS_PATH");
    // Unset means the default istiod address; set and empty means no xDS.
    let xds_address = match std::env::var("XDS_ADDRESS") {
        Ok(v) => Some(v).filter(|v| !v.is_empty()),
        Err(_) if local_path.is_some() => None,
        Err(_) => Some(default_control_plane()),
    };
    let (initial, xds) = match (&xds_address, &local_path) {
        (Some(_), Some(_)) => bail!("set either XDS_ADDRESS or LOCAL_XDS_PATH, not both"),
        (Some(a), None) => (
            ProxyState::default(),
            Some(control_plane(a.clone(), "XDS_ROOT_CA")?),
        ),
        (None, Some(p)) => (
            ProxyState::from_config(&LocalConfig::load(&PathBuf::from(p))?),
            None,
        ),
        (None, None) => bail!(
            "set XDS_ADDRESS (the controller, e.g. https://127.0.0.1:15012) or LOCAL_XDS_PATH (a local config file)"
        ),
    };
    let certs: Arc<dyn CertificateProvider> = if env("FAKE_CA").as_deref() == Some("true") {
        Arc::new(LocalSigner(Arc::new(
            Authority::new_root(
                // The workloads' trust domain (a fake CA signs no other).
                env("TRUST_DOMAIN").as_deref().unwrap_or("cluster.local"),
                "ztunnel fake CA",
                Validity::starting_now(ttl * 30),
            )
            .context("creating the fake CA")?,
        )))
    } else {
        let Some(addr) = env("CA_ADDRESS").or(xds_address.clone()) else {
            bail!("set CA_ADDRESS (or XDS_ADDRESS), or FAKE_CA=true");
        };
        Arc::new(CaClient::new(&control_plane(addr, "CA_ROOT_CA")?)?)
    };
    let z = Arc::new(Ztunnel::new(
        ZtunnelConfig {
            node: node.clone(),
            certs,
            cert_ttl: ttl,
            hbone: HboneConfig::default(),
            // The cgroup-v2 subtree to capture in (default: the whole
            // node, the cgroup-v2 root).
            cgroup_root: env("AMBIT_CGROUP_ROOT").map(PathBuf::from),
            pin_dir: Some(PathBuf::from(
                env("AMBIT_BPF_PIN_DIR").unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            )),
            // Experimental (docs/capture.md): AMBIT_SOCKMAP=1.
            sockmap_splice: env("AMBIT_SOCKMAP").is_some_and(|v| v == "1"),
            // This binary, as a short-lived child: it calls
            // `ambit_ebpf::loader::serve_if_asked` first in `main`.
            ebpf_loader: Some(std::env::current_exe().context("locating this executable")?),
        },
        initial,
    )?);
    let admin_ns = match env("AMBIT_ADMIN_NETNS") {
        Some(p) => Netns::open(p)?,
        None => Netns::current()?,
    };
    let _admin = crate::admin::start(&z, &admin_ns).context("binding 15000/15020/15021")?;
    let xds_task = xds.map(|cp| {
        z.set_xds_synced(false);
        let info = ambit_proxy_core::environment::node_info("ztunnel", "istio-system");
        tokio::spawn(crate::xds::run(z.clone(), cp, info))
    });
    let trim = tokio::spawn(trim_heap());
    let uds =
        PathBuf::from(env("INPOD_UDS").unwrap_or_else(|| "/var/run/ztunnel/ztunnel.sock".into()));
    let zds = crate::zds::run_client(z.clone(), uds.clone(), tokio::runtime::Handle::current());
    tracing::info!(node, xds = xds_address.as_deref().unwrap_or("-"), config = local_path.as_deref().unwrap_or("-"), zds = %uds.display(), "ztunnel running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    // Drain: listeners close, open connections get the grace period.
    let grace = env("TERMINATION_GRACE_PERIOD_SECONDS")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_secs);
    let left = z.drain(grace).await;
    tracing::info!(left, "exiting");
    z.shutdown();
    trim.abort();
    if let Some(t) = xds_task {
        t.abort();
    }
    let _ = tokio::task::spawn_blocking(move || zds.join()).await;
    Ok(())
}
