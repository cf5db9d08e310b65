//! Shared fixtures for Ambit's end-to-end, conformance and interop tests: a test
//! PKI, an echo upstream, an HBONE server on loopback, raw HTTP/2 frame and TLS
//! record parsing for wire assertions, and a panic counter.

pub mod cluster;
pub mod envoy;
pub mod netns;
pub mod pki;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_hbone::server::{InboundHandler, ServerTlsSource};
use ambit_hbone::{HboneConfig, HboneServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Installs a tracing subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics from any thread (including spawned tasks, whose panics tokio
/// would otherwise swallow), so a test can assert that nothing panicked.
pub fn install_panic_counter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

/// Panics seen since [`install_panic_counter`].
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// A TCP echo server on loopback: every byte read is written back; EOF is echoed
/// as a half-close. Returns its address.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

/// Starts `server` on a fresh loopback port and returns the address.
pub async fn serve_hbone<H: InboundHandler>(server: &Arc<HboneServer<H>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hbone");
    let addr = listener.local_addr().expect("hbone addr");
    // The loop serves for the rest of the test process.
    tokio::spawn(ambit_proxy_core::accept::serve_hbone(
        listener,
        server.clone(),
        ambit_proxy_core::drain::Watch::never(),
    ));
    addr
}

/// Builds and starts an HBONE server in one go.
pub async fn start_hbone<H: InboundHandler>(
    config: HboneConfig,
    tls: Arc<dyn ServerTlsSource>,
    handler: H,
) -> (Arc<HboneServer<H>>, SocketAddr) {
    let server = HboneServer::new(config, tls, handler);
    let addr = serve_hbone(&server).await;
    (server, addr)
}

/// For a tunnel opened with `early` bytes to an echo peer: writes `data` and
/// reads back what the peer echoed (`early` then `data`, if nothing was lost).
pub async fn round_trip_after_early<IO>(
    io: &mut IO,
    early: &[u8],
    data: &[u8],
) -> std::io::Result<Vec<u8>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Lost early bytes would leave the read waiting: bounded, so it fails.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        write_and_read_back(io, data, early.len() + data.len()),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "echo incomplete after 10 s"))?
}

/// Writes `data` through `io` while reading the same number of bytes back.
pub async fn round_trip<IO>(io: &mut IO, data: &[u8]) -> std::io::Result<Vec<u8>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    write_and_read_back(io, data, data.len()).await
}

/// Writes `data` while reading `len` bytes back, both at once.
async fn write_and_read_back<IO>(io: &mut IO, data: &[u8], len: usize) -> std::io::Result<Vec<u8>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut back = vec![0u8; len];
    let (mut r, mut w) = tokio::io::split(&mut *io);
    let (write, read) = tokio::join!(w.write_all(data), r.read_exact(&mut back));
    write?;
    read?;
    Ok(back)
}

/// How long a bounded fuzz run in the suite lasts: `$AMBIT_FUZZ_SECS`, else
/// `default_secs`.
pub fn fuzz_budget(default_secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(
        std::env::var("AMBIT_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_secs),
    )
}

/// A ztunnel on `node` with an in-process CA signing for `signer`'s trust
/// domain, serving `state`, capture not pinned (it ends with the test).
/// Needs root.
pub fn local_ztunnel(
    node: &str,
    signer: Arc<dyn ambit_hbone::ca::CertificateSigner>,
    state: ambit_api::model::ProxyState,
) -> ztunnel::Ztunnel {
    ztunnel::Ztunnel::new(
        ztunnel::ZtunnelConfig {
            node: node.to_string(),
            certs: Arc::new(ambit_proxy_core::certs::LocalSigner(signer)),
            cert_ttl: std::time::Duration::from_secs(3600),
            hbone: HboneConfig::default(),
            cgroup_root: None,
            pin_dir: None,
            sockmap_splice: false,
            ebpf_loader: None,
        },
        state,
    )
    .expect("start ztunnel (needs root)")
}

/// Polls `f` every 50 ms for up to 5 s; panics naming `what` if it never holds.
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
