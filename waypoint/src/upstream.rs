//! Upstream HTTP connections from the waypoint to endpoints: over HBONE (one
//! CONNECT stream per HTTP connection, multiplexed on pooled mTLS
//! connections to the endpoint's node) for mesh endpoints, plain TCP for
//! others. HTTP/1.1 connections are pooled per endpoint and reused after the
//! response ends; HTTP/2 connections are shared. DestinationRule
//! `connectionPool` limits are enforced here: `tcp.maxConnections`,
//! `http1MaxPendingRequests` and `http2MaxRequests` overflow as
//! [`UpstreamError::Overflow`] (Envoy's 503 `UO`), and
//! `maxRequestsPerConnection` retires connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_hbone::client::{SocketFactory, TunnelTarget};
use ambit_hbone::request::ConnectHead;
use ambit_hbone::{Pool, WorkloadCertificate};
use ambit_identity::SpiffeId;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::debug;

use crate::state::Subset;
use crate::sync::lock;

/// Errors a body can carry across the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy sends both ways (streamed, never buffered whole).
pub type Body = BoxBody<Bytes, BoxError>;

/// Where one upstream request goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// Endpoint IP : target port.
    pub addr: SocketAddr,
    /// The endpoint's SPIFFE identity (checked on the HBONE connection).
    pub identity: String,
    /// Reached over HBONE.
    pub hbone: bool,
    /// Speak HTTP/2 to it.
    pub http2: bool,
}

/// Why an upstream request failed before a response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A connection-pool limit was hit.
    #[error("connection pool overflow")]
    Overflow,
    /// Connecting (TCP, TLS, HBONE CONNECT or the HTTP handshake) failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The request failed on an established connection.
    #[error("upstream request: {0}")]
    Request(#[from] hyper::Error),
}

impl UpstreamError {
    /// A connect failure (retryable as `connect-failure`).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// The stream was refused (HTTP/2 REFUSED_STREAM; `refused-stream`).
    pub fn is_refused_stream(&self) -> bool {
        matches!(self, UpstreamError::Request(e) if e.to_string().contains("refused"))
    }
}

/// Makes the certificate the waypoint presents (renewed by the caller).
pub type CertSource = dyn Fn() -> Result<WorkloadCertificate, String> + Send + Sync;

/// Holds what a request keeps while it is in flight: the `http2MaxRequests`
/// permit and the endpoint's in-flight count.
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    subset: Arc<Subset>,
    endpoint: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.subset.in_flight.get(self.endpoint) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct H1Conn {
    sender: http1::SendRequest<Body>,
    used: u32,
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<Body>,
    used: Arc<AtomicU32>,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The waypoint's upstream connections.
pub struct Upstreams {
    pool: Arc<Pool>,
    cert: Arc<CertSource>,
    socket: Option<Arc<SocketFactory>>,
    idle_h1: Mutex<HashMap<SocketAddr, Vec<H1Conn>>>,
    h2: Mutex<HashMap<SocketAddr, H2Conn>>,
    returned: Notify,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    /// Upstreams dialing through `pool` as `cert`, sockets from `socket`
    /// (e.g. inside the waypoint pod's network namespace).
    pub fn new(
        pool: Arc<Pool>,
        cert: Arc<CertSource>,
        socket: Option<Arc<SocketFactory>>,
    ) -> Arc<Self> {
        Arc::new(Upstreams {
            pool,
            cert,
            socket,
            idle_h1: Mutex::default(),
            h2: Mutex::default(),
            returned: Notify::new(),
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// Takes the connection-pool permits for a request to endpoint `i` of
    /// `subset`, or overflows.
    pub fn admit(&self, subset: &Arc<Subset>, endpoint: usize) -> Result<InFlight, UpstreamError> {
        let permit = subset.requests.clone().try_acquire_owned().map_err(|_| {
            subset.overflow.fetch_add(1, Ordering::Relaxed);
            UpstreamError::Overflow
        })?;
        if let Some(c) = subset.in_flight.get(endpoint) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(InFlight {
            _permit: permit,
            subset: subset.clone(),
            endpoint,
        })
    }

    /// Opens a byte stream to `t`: an HBONE tunnel or TCP.
    pub async fn dial(&self, t: &Target) -> Result<Box<dyn Io>, UpstreamError> {
        if t.hbone {
            let cert = (self.cert)().map_err(UpstreamError::Connect)?;
            let expected: Vec<SpiffeId> = t.identity.parse().into_iter().collect();
            let target = TunnelTarget {
                dial: SocketAddr::new(t.addr.ip(), 15008),
                expected,
                src_ip: None,
                head: ConnectHead::to_addr(t.addr),
                socket: self.socket.clone(),
            };
            let tunnel = self
                .pool
                .connect(&cert, &target)
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            return Ok(Box::new(tunnel));
        }
        let sock = match &self.socket {
            Some(f) => f(t.addr),
            None if t.addr.is_ipv4() => tokio::net::TcpSocket::new_v4(),
            None => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let tcp = tokio::time::timeout(self.connect_timeout, sock.connect(t.addr))
            .await
            .map_err(|_| UpstreamError::Connect(format!("connecting to {} timed out", t.addr)))?
            .map_err(|e| UpstreamError::Connect(format!("{}: {e}", t.addr)))?;
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(tcp))
    }

    /// Sends `req` to `t`. The response body streams; the connection goes
    /// back to the pool once it has been read.
    pub async fn send(
        self: &Arc<Self>,
        subset: &Arc<Subset>,
        t: &Target,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if t.http2 {
            self.send_h2(subset, t, req).await
        } else {
            self.send_h1(subset, t, req).await
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        subset: &Arc<Subset>,
        t: &Target,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let max = subset.max_requests_per_connection;
        let existing = {
            let conns = lock(&self.h2);
            conns
                .get(&t.addr)
                .filter(|c| !c.sender.is_closed())
                .filter(|c| max == 0 || c.used.load(Ordering::Relaxed) < max)
                .cloned()
        };
        let conn = match existing {
            Some(c) => c,
            None => {
                let permit = subset
                    .connections
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| {
                        subset.overflow.fetch_add(1, Ordering::Relaxed);
                        UpstreamError::Overflow
                    })?;
                let io = self.dial(t).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| UpstreamError::Connect(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                let c = H2Conn {
                    sender,
                    used: Arc::default(),
                    _permit: Arc::new(permit),
                };
                lock(&self.h2).insert(t.addr, c.clone());
                c
            }
        };
        conn.used.fetch_add(1, Ordering::Relaxed);
        let mut sender = conn.sender.clone();
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// An idle HTTP/1 connection to `addr`, a new one within
    /// `maxConnections`, or a wait in the pending queue.
    async fn checkout_h1(&self, subset: &Arc<Subset>, t: &Target) -> Result<H1Conn, UpstreamError> {
        let mut queued = false;
        let result = loop {
            let idle = {
                let mut idle = lock(&self.idle_h1);
                let list = idle.entry(t.addr).or_default();
                let mut found = None;
                while let Some(c) = list.pop() {
                    if c.sender.is_ready() {
                        found = Some(c);
                        break;
                    }
                }
                found
            };
            if let Some(c) = idle {
                break Ok(c);
            }
            if let Ok(permit) = subset.connections.clone().try_acquire_owned() {
                let io = match self.dial(t).await {
                    Ok(io) => io,
                    Err(e) => break Err(e),
                };
                let (sender, conn) = match http1::Builder::new().handshake(TokioIo::new(io)).await {
                    Ok(ok) => ok,
                    Err(e) => break Err(UpstreamError::Connect(format!("HTTP/1 handshake: {e}"))),
                };
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        debug!(error = %e, "upstream HTTP/1 connection ended");
                    }
                });
                break Ok(H1Conn {
                    sender,
                    used: 0,
                    _permit: permit,
                });
            }
            if !queued {
                if subset.pending.fetch_add(1, Ordering::Relaxed) >= subset.max_pending {
                    subset.pending.fetch_sub(1, Ordering::Relaxed);
                    subset.overflow.fetch_add(1, Ordering::Relaxed);
                    return Err(UpstreamError::Overflow);
                }
                queued = true;
            }
            // Woken when a connection is returned or closes; the timeout
            // covers a close that released a permit without a notification.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.returned.notified()).await;
        };
        if queued {
            subset.pending.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    async fn send_h1(
        self: &Arc<Self>,
        subset: &Arc<Subset>,
        t: &Target,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut conn = self.checkout_h1(subset, t).await?;
        let resp = conn.sender.send_request(req).await?;
        conn.used += 1;
        let max = subset.max_requests_per_connection;
        let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let reusable = !upgraded && (max == 0 || conn.used < max);
        // Once the response body has been read the connection goes back to
        // the pool, or is closed (freeing its `maxConnections` permit); either
        // way a pending request may now proceed.
        let this = self.clone();
        let addr = t.addr;
        tokio::spawn(async move {
            if conn.sender.ready().await.is_ok() && reusable {
                lock(&this.idle_h1).entry(addr).or_default().push(conn);
            } else {
                drop(conn);
            }
            this.returned.notify_one();
        });
        Ok(resp)
    }
}

/// An upstream byte stream (HBONE tunnel or TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
