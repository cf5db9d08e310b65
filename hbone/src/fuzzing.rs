//! Entry points for fuzzing the server's request handling without sockets or TLS.
//!
//! [`serve_bytes`] feeds arbitrary bytes to the real HTTP/2 + CONNECT server path
//! (everything after the TLS handshake) over an in-memory pipe, on a runtime with
//! a paused clock so keepalive and timeouts fire without waiting. Used by the
//! `cargo fuzz` target in `fuzz/` and by a bounded run in the test suite.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::config::HboneConfig;
use crate::request;
use crate::server::{
    HboneServer, InboundHandler, InboundRequest, Refusal, ServerStats, ServerTlsSource,
};
use ambit_identity::SpiffeId;

struct NoTls;

impl ServerTlsSource for NoTls {
    fn server_config(&self, _: SocketAddr) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        None
    }
}

/// Accepts even ports (with an in-memory echo upstream) and refuses odd ones, so
/// both the tunnel and the refusal paths are exercised.
struct FuzzHandler;

impl InboundHandler for FuzzHandler {
    type Upstream = DuplexStream;

    async fn relay(
        &self,
        tunnel: crate::stream::H2Stream,
        up: DuplexStream,
    ) -> std::io::Result<(u64, u64)> {
        crate::server::copy_relay(tunnel, up).await
    }

    async fn open(&self, req: InboundRequest) -> Result<DuplexStream, Refusal> {
        if req.connect.target.port() % 2 == 1 {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "odd port"));
        }
        let (ours, mut theirs) = tokio::io::duplex(16 * 1024);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = theirs.read(&mut buf).await {
                if n == 0 || theirs.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Ok(ours)
    }
}

/// How far one input got, so tests can check that seeds reach deep into the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// CONNECT streams the server accepted from the HTTP/2 layer.
    pub streams_received: u64,
    /// Streams answered 200 and spliced to the upstream.
    pub streams_established: u64,
    /// Streams answered with an error status.
    pub streams_refused: u64,
}

/// Runs the HBONE server's HTTP/2 layer over `data` as the client's byte stream.
/// Must not be called from inside a tokio runtime.
pub fn serve_bytes(data: &[u8]) -> Reached {
    // The text parsers see the input too.
    let text = String::from_utf8_lossy(data);
    let _ = request::parse_authority(&text);
    let _ = request::parse_forwarded(&text);

    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    else {
        return Reached::default();
    };
    rt.block_on(async {
        let server = HboneServer::new(
            HboneConfig::default(),
            std::sync::Arc::new(NoTls),
            FuzzHandler,
        );
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let peer: SpiffeId = match "spiffe://cluster.local/ns/fuzz/sa/fuzz".parse() {
            Ok(p) => p,
            Err(_) => return Reached::default(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 15008));
        let serve = server.serve_established(server_io, peer, addr, addr);
        let drive = async {
            // Write everything but keep our side open: the server then handles
            // every frame, and its keepalive ends the connection (in virtual time)
            // since nobody answers its PINGs.
            let _ = client.write_all(data).await;
            let mut sink = [0u8; 16 * 1024];
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        // Virtual time: a minute passes instantly once everything is idle.
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(serve, drive);
        })
        .await;
        let stats = server.stats();
        Reached {
            streams_received: ServerStats::get(&stats.streams_received),
            streams_established: ServerStats::get(&stats.streams_established),
            streams_refused: ServerStats::get(&stats.streams_refused),
        }
    })
}
