//! The HBONE server (port 15008): mutual TLS, HTTP/2, one CONNECT stream per
//! tunnelled TCP connection.
//!
//! What happens to a CONNECT after it is parsed — authorization, choosing and
//! dialing the upstream — belongs to an [`InboundHandler`], so ztunnel and the
//! waypoint plug their own policy in while the wire handling stays here. Bad
//! input on one stream answers that stream; bad input on a connection closes
//! that connection; nothing stops the listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cert::WorkloadCertificate;
use crate::config::HboneConfig;
use crate::keepalive;
use crate::request::{self, ConnectTarget, InboundConnect};
use crate::stream::H2Stream;
use crate::tls;
use ambit_identity::SpiffeId;

/// A CONNECT that passed wire validation, with everything policy may look at.
#[derive(Clone, Debug)]
pub struct InboundRequest {
    /// The client's verified SPIFFE identity (from its certificate).
    pub peer_identity: SpiffeId,
    /// The TCP peer address of the HBONE connection.
    pub peer_addr: SocketAddr,
    /// The local address the HBONE connection arrived on.
    pub local_addr: SocketAddr,
    /// The parsed request.
    pub connect: InboundConnect,
}

/// A handler's refusal: the HTTP status sent back and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct Refusal {
    /// 400, 401 or 503 (docs/wire.md §2.5).
    pub status: StatusCode,
    /// Logged, never sent.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `status`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// The `IP:port` a CONNECT names. A `host:port` target needs a service
/// registry to resolve; where there is none it is 503, as Istio's ztunnel
/// answers a hostname it has no Service for (docs/wire.md §2.5).
pub fn address_target(target: &ConnectTarget) -> Result<std::net::SocketAddr, Refusal> {
    match target {
        ConnectTarget::Addr(a) => Ok(*a),
        ConnectTarget::Host { host, port } => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("hostname target {host}:{port}: no service registry here to resolve it"),
        )),
    }
}

/// Decides what a validated CONNECT connects to, and carries it.
pub trait InboundHandler: Send + Sync + 'static {
    /// What `open` hands to `relay`: usually the upstream byte stream; for a
    /// waypoint, the context its HTTP server needs.
    type Upstream: Send + 'static;

    /// Authorizes and dials. The server answers 200 only after this succeeds.
    fn open(
        &self,
        req: InboundRequest,
    ) -> impl Future<Output = Result<Self::Upstream, Refusal>> + Send;

    /// Carries the established tunnel until it ends; returns the bytes sent
    /// up and down. Byte-stream handlers use [`copy_relay`].
    fn relay(
        &self,
        tunnel: H2Stream,
        upstream: Self::Upstream,
    ) -> impl Future<Output = std::io::Result<(u64, u64)>> + Send;
}

/// Relays between the tunnel and a TCP upstream with the one-copy path
/// ([`crate::relay`]).
pub async fn tcp_relay(
    mut tunnel: H2Stream,
    mut upstream: TcpStream,
) -> std::io::Result<(u64, u64)> {
    crate::relay::relay_tcp(&mut tunnel, &mut upstream)
        .await
        .map(|(up, down)| (down, up))
}

/// Copies bytes both ways between the tunnel and `upstream`; an I/O error
/// resets the stream (CANCEL) so the peer learns it did not end cleanly.
pub async fn copy_relay<U>(mut tunnel: H2Stream, mut upstream: U) -> std::io::Result<(u64, u64)>
where
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    match tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await {
        Ok(n) => Ok(n),
        Err(e) => {
            tunnel.reset(h2::Reason::CANCEL);
            Err(e)
        }
    }
}

/// Authorization hook for [`DirectHandler`]: `Err(reason)` denies with 401.
pub type PolicyFn = dyn Fn(&InboundRequest) -> Result<(), String> + Send + Sync;

/// Connects to the authority's `IP:port` when that IP is the local address the
/// tunnel arrived on (docs/wire.md §2.4), after an optional policy check.
#[derive(Clone)]
pub struct DirectHandler {
    connect_timeout: Duration,
    policy: Option<Arc<PolicyFn>>,
}

impl std::fmt::Debug for DirectHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectHandler")
            .field("connect_timeout", &self.connect_timeout)
            .field("policy", &self.policy.is_some())
            .finish()
    }
}

impl Default for DirectHandler {
    fn default() -> Self {
        DirectHandler {
            connect_timeout: HboneConfig::default().connect_timeout,
            policy: None,
        }
    }
}

impl DirectHandler {
    /// A handler that asks `policy` before connecting.
    pub fn with_policy(policy: Arc<PolicyFn>) -> Self {
        DirectHandler {
            policy: Some(policy),
            ..Default::default()
        }
    }
}

impl InboundHandler for DirectHandler {
    type Upstream = TcpStream;

    async fn relay(&self, tunnel: H2Stream, up: TcpStream) -> std::io::Result<(u64, u64)> {
        tcp_relay(tunnel, up).await
    }

    async fn open(&self, req: InboundRequest) -> Result<TcpStream, Refusal> {
        let addr = address_target(&req.connect.target)?;
        if addr.ip() != req.local_addr.ip() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "authority {addr} does not match the local address {}",
                    req.local_addr.ip()
                ),
            ));
        }
        if let Some(policy) = &self.policy {
            policy(&req).map_err(|why| Refusal::new(StatusCode::UNAUTHORIZED, why))?;
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect timed out",
                )
            })?
            .map_err(|e| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream connect: {e}"),
                )
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Chooses the server certificate for a connection by the local address it
/// arrived on (one pod's identity per address in shared mode).
pub trait ServerTlsSource: Send + Sync + 'static {
    /// The TLS config to use, or `None` to drop the connection.
    fn server_config(&self, local_addr: SocketAddr) -> Option<Arc<ServerConfig>>;
}

/// One certificate for every local address, replaceable at run time (rotation).
#[derive(Debug)]
pub struct StaticServerTls {
    config: RwLock<Arc<ServerConfig>>,
}

impl StaticServerTls {
    /// Serves `cert`.
    pub fn new(cert: &WorkloadCertificate) -> Self {
        StaticServerTls {
            config: RwLock::new(tls::server_config(cert)),
        }
    }

    /// Swaps in a new certificate; established connections keep theirs.
    pub fn rotate(&self, cert: &WorkloadCertificate) {
        let new = tls::server_config(cert);
        match self.config.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

impl ServerTlsSource for StaticServerTls {
    fn server_config(&self, _local_addr: SocketAddr) -> Option<Arc<ServerConfig>> {
        Some(match self.config.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// Counters a test or the metrics endpoint can read.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections_accepted: AtomicU64,
    /// TLS handshakes that failed (bad certificate, garbage, timeout).
    pub tls_failures: AtomicU64,
    /// HTTP/2 connections that ended in a protocol or I/O error.
    pub h2_failures: AtomicU64,
    /// Connections closed because PINGs went unanswered.
    pub keepalive_timeouts: AtomicU64,
    /// CONNECT streams received.
    pub streams_received: AtomicU64,
    /// Streams answered 200.
    pub streams_established: AtomicU64,
    /// Streams answered with an error status.
    pub streams_refused: AtomicU64,
    /// Established streams that ended with an I/O error or reset.
    pub streams_failed: AtomicU64,
}

impl ServerStats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The HBONE server.
pub struct HboneServer<H: InboundHandler> {
    config: HboneConfig,
    tls: Arc<dyn ServerTlsSource>,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    drain_tx: watch::Sender<bool>,
    next_conn_id: AtomicU64,
}

impl<H: InboundHandler> std::fmt::Debug for HboneServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneServer")
            .field("stats", &self.stats)
            .finish()
    }
}

impl<H: InboundHandler> HboneServer<H> {
    /// A server with `config`, certificates from `tls` and streams handled by `handler`.
    pub fn new(config: HboneConfig, tls: Arc<dyn ServerTlsSource>, handler: H) -> Arc<Self> {
        let (drain_tx, _) = watch::channel(false);
        Arc::new(HboneServer {
            config,
            tls,
            handler: Arc::new(handler),
            stats: Arc::default(),
            drain_tx,
            next_conn_id: AtomicU64::new(1),
        })
    }

    /// The server's counters.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Starts draining: every connection gets a graceful GOAWAY; streams in
    /// flight go on until they end. (The accept loop feeding
    /// [`serve_tcp`](Self::serve_tcp) is the proxy's, with its own drain.)
    pub fn drain(&self) {
        self.drain_tx.send_replace(true);
    }

    /// Serves one accepted TCP connection: TLS, then HTTP/2.
    pub async fn serve_tcp(self: Arc<Self>, tcp: TcpStream, peer_addr: SocketAddr) {
        ServerStats::inc(&self.stats.connections_accepted);
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("hbone_in", conn = conn_id, peer = %peer_addr);
        async move {
            let local_addr = match tcp.local_addr() {
                Ok(a) => a,
                Err(e) => return debug!(error = %e, "connection gone before TLS"),
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls_config) = self.tls.server_config(local_addr) else {
                ServerStats::inc(&self.stats.tls_failures);
                return warn!(%local_addr, "no certificate for this address; closing");
            };
            let (tls, peer_id) = match tls::accept(tls_config, tcp).await {
                Ok(ok) => ok,
                Err(e) => {
                    ServerStats::inc(&self.stats.tls_failures);
                    return warn!(error = %e, "TLS handshake failed");
                }
            };
            debug!(peer_identity = %peer_id, "mTLS established");
            self.serve_established(tls, peer_id, peer_addr, local_addr)
                .await;
        }
        .instrument(span)
        .await
    }

    /// Serves HTTP/2 over an already-authenticated stream. Public so tests and the
    /// fuzz target can drive the HTTP/2 layer over any byte stream.
    pub async fn serve_established<IO>(
        &self,
        io: IO,
        peer_identity: SpiffeId,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = self.config.server_builder().handshake::<_, Bytes>(io);
        let mut conn = match tokio::time::timeout(self.config.connect_timeout, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                ServerStats::inc(&self.stats.h2_failures);
                return warn!(error = %e, "HTTP/2 handshake failed");
            }
            Err(_) => {
                ServerStats::inc(&self.stats.h2_failures);
                return warn!("HTTP/2 handshake timed out");
            }
        };
        let keepalive = match conn.ping_pong() {
            Some(pp) => keepalive::run(
                pp,
                self.config.keepalive_interval,
                self.config.keepalive_timeout,
            ),
            None => return warn!("HTTP/2 ping handle unavailable"),
        };
        tokio::pin!(keepalive);
        let mut drain_rx = self.drain_tx.subscribe();
        let mut draining = *drain_rx.borrow_and_update();
        if draining {
            conn.graceful_shutdown();
        }
        // One wait for the drain flag for the connection's life, not a new
        // one (and a watch registration) per accepted stream.
        let drain = drained(&mut drain_rx);
        tokio::pin!(drain);
        loop {
            tokio::select! {
                next = conn.accept() => match next {
                    None => break,
                    Some(Ok((req, respond))) => {
                        ServerStats::inc(&self.stats.streams_received);
                        let stream = StreamTask {
                            handler: self.handler.clone(),
                            stats: self.stats.clone(),
                            peer_identity: peer_identity.clone(),
                            peer_addr,
                            local_addr,
                        };
                        tokio::spawn(stream.run(req, respond).in_current_span());
                    }
                    Some(Err(e)) => {
                        if e.is_go_away() || e.reason() == Some(h2::Reason::NO_ERROR) {
                            debug!(error = %e, "connection closed by peer");
                        } else {
                            ServerStats::inc(&self.stats.h2_failures);
                            warn!(error = %e, "HTTP/2 connection failed");
                        }
                        break;
                    }
                },
                err = &mut keepalive => {
                    ServerStats::inc(&self.stats.keepalive_timeouts);
                    warn!(error = %err, "keepalive failed; dropping connection");
                    break;
                }
                _ = &mut drain, if !draining => {
                    draining = true;
                    debug!("sending GOAWAY");
                    conn.graceful_shutdown();
                }
            }
        }
    }
}

/// The life of one CONNECT stream.
struct StreamTask<H> {
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    peer_identity: SpiffeId,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
}

impl<H: InboundHandler> StreamTask<H> {
    async fn run(
        self,
        req: http::Request<h2::RecvStream>,
        respond: h2::server::SendResponse<Bytes>,
    ) {
        // Boxed: parsing, authorization and the upstream dial are freed once
        // the stream is open; the task itself only holds what the relay needs
        // for the stream's whole life.
        let Some((tunnel, upstream, span)) = Box::pin(self.open(req, respond)).await else {
            return;
        };
        async move {
            match self.handler.relay(tunnel, upstream).await {
                Ok((up, down)) => debug!(
                    bytes_to_upstream = up,
                    bytes_from_upstream = down,
                    "stream done"
                ),
                Err(e) => {
                    ServerStats::inc(&self.stats.streams_failed);
                    debug!(error = %e, "stream ended with error");
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Validates the CONNECT, lets the handler authorize and dial, and answers
    /// 200 (or the refusal); `None` when the stream was refused.
    async fn open(
        &self,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) -> Option<(H2Stream, H::Upstream, tracing::Span)> {
        let connect = match request::parse_inbound(&req) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "bad CONNECT");
                self.refuse(&mut respond, e.status());
                return None;
            }
        };
        let span = info_span!("stream", target = %connect.target, trace = connect.traceparent.as_deref().unwrap_or("-"));
        let (tunnel, upstream) = async {
            let inbound = InboundRequest {
                peer_identity: self.peer_identity.clone(),
                peer_addr: self.peer_addr,
                local_addr: self.local_addr,
                connect,
            };
            let upstream = match self.handler.open(inbound).await {
                Ok(u) => u,
                Err(refusal) => {
                    info!(status = %refusal.status, reason = %refusal.reason, "CONNECT refused");
                    self.refuse(&mut respond, refusal.status);
                    return None;
                }
            };
            let send = match respond.send_response(ok_response(), false) {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "stream gone before 200");
                    return None;
                }
            };
            ServerStats::inc(&self.stats.streams_established);
            Some((H2Stream::new(send, req.into_body()), upstream))
        }
        .instrument(span.clone())
        .await?;
        Some((tunnel, upstream, span))
    }

    fn refuse(&self, respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode) {
        ServerStats::inc(&self.stats.streams_refused);
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        // HEADERS with END_STREAM and no body.
        if let Err(e) = respond.send_response(resp, true) {
            debug!(error = %e, "could not send refusal");
        }
    }
}

fn ok_response() -> Response<()> {
    Response::new(())
}

/// Resolves once the drain flag is set (never, if the server is gone).
async fn drained(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
