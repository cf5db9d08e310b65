//! One pooled HBONE connection: TCP + TLS + HTTP/2, its driver task and the count
//! of streams it carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::{TcpSocket, TcpStream};
use tracing::{Instrument, debug, info_span, warn};

use super::{ClientError, TunnelTarget};
use crate::cert::WorkloadCertificate;
use crate::config::HboneConfig;
use crate::keepalive;
use crate::tls;
use ambit_identity::SpiffeId;

/// A live HTTP/2 connection to one peer.
#[derive(Debug)]
pub(crate) struct PooledConn {
    pub(crate) id: u64,
    pub(crate) sender: h2::client::SendRequest<Bytes>,
    pub(crate) peer_identity: SpiffeId,
    pub(crate) tls_info: Arc<TlsInfo>,
    max_streams: usize,
    active: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
}

/// What a TLS handshake negotiated, for logs and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The ALPN protocol, e.g. `h2`.
    pub alpn: Option<String>,
}

impl TlsInfo {
    fn of(conn: &rustls::ClientConnection) -> Self {
        TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

/// Holds one stream's place on a connection; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    active: Arc<AtomicUsize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PooledConn {
    /// Dials `target.dial`, handshakes TLS as `source`, and starts HTTP/2.
    pub(crate) async fn open(
        id: u64,
        config: &HboneConfig,
        source: &WorkloadCertificate,
        target: &TunnelTarget,
    ) -> Result<Arc<Self>, ClientError> {
        let addr = target.dial;
        let tcp = tokio::time::timeout(config.connect_timeout, dial(target))
            .await
            .map_err(|_| ClientError::ConnectTimeout(addr))?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let tls_config = tls::client_config(source, target.expected.clone());
        let (tls, peer_identity) = tls::connect(tls_config, tcp, addr.ip()).await?;
        let tls_info = TlsInfo::of(tls.get_ref().1);
        let (sender, mut connection) = config
            .client_builder()
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(ClientError::from)?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let closed_flag = closed.clone();
        let (interval, timeout) = (config.keepalive_interval, config.keepalive_timeout);
        let span = info_span!("hbone_out", conn = id, peer = %addr, peer_identity = %peer_identity);
        tokio::spawn(
            async move {
                let keepalive = async {
                    match ping {
                        Some(pp) => keepalive::run(pp, interval, timeout).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    res = &mut connection => match res {
                        Ok(()) => debug!("connection closed"),
                        Err(e) => debug!(error = %e, "connection ended"),
                    },
                    err = keepalive => warn!(error = %err, "keepalive failed; dropping connection"),
                }
                closed_flag.store(true, Ordering::Release);
            }
            .instrument(span),
        );
        debug!(conn = id, %addr, %peer_identity, "HBONE connection established");
        Ok(Arc::new(PooledConn {
            id,
            sender,
            peer_identity,
            tls_info: Arc::new(tls_info),
            max_streams: config.client_max_streams as usize,
            active: Arc::new(AtomicUsize::new(0)),
            closed,
            last_used: Mutex::new(Instant::now()),
        }))
    }

    /// The stream limit: ours, or the peer's advertised one if lower.
    fn limit(&self) -> usize {
        self.max_streams.min(self.sender.current_max_send_streams())
    }

    /// Takes a stream slot unless one more stream would reach the limit
    /// (ztunnel's rule: a connection carries at most `limit - 1` streams).
    pub(crate) fn try_reserve(&self) -> Option<StreamSlot> {
        if self.is_closed() {
            return None;
        }
        let limit = self.limit();
        let mut cur = self.active.load(Ordering::Acquire);
        loop {
            if cur + 1 >= limit {
                return None;
            }
            match self
                .active
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        Some(StreamSlot {
            active: self.active.clone(),
        })
    }

    /// True once the connection's driver has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Streams currently open.
    pub(crate) fn active_streams(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// How long the connection has had no stream; `None` while one is open
    /// (or when the last-use time cannot be read: treated as in use).
    pub(crate) fn idle_time(&self) -> Option<std::time::Duration> {
        if self.active_streams() != 0 {
            return None;
        }
        self.last_used.lock().ok().map(|t| t.elapsed())
    }
}

async fn dial(target: &TunnelTarget) -> std::io::Result<TcpStream> {
    let addr = target.dial;
    if let Some(factory) = &target.socket {
        return factory(addr)?.connect(addr).await;
    }
    match target.src_ip {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}
