//! The HBONE client: dials a peer's 15008, proves a source identity, checks the
//! peer's identity, and opens one CONNECT stream per tunnelled TCP connection on
//! pooled, multiplexed HTTP/2 connections.

mod connection;
mod pool;
mod tunnel;

use std::io;
use std::net::{IpAddr, SocketAddr};

use http::StatusCode;

pub use connection::TlsInfo;
pub use pool::{Pool, PoolKey, PoolStats};
pub use tunnel::Tunnel;

use crate::request::ConnectHead;
use crate::tls::{CertRejection, HandshakeError};
use ambit_identity::SpiffeId;

/// Creates the (unconnected) TCP socket a pooled connection dials from, e.g.
/// inside a pod's network namespace with ztunnel's mark. `dst` is the peer.
pub type SocketFactory = dyn Fn(SocketAddr) -> io::Result<tokio::net::TcpSocket> + Send + Sync;

/// Where and how to open a tunnel.
#[derive(Clone)]
pub struct TunnelTarget {
    /// The peer's HBONE address (`IP:15008`).
    pub dial: SocketAddr,
    /// Server identities accepted, in order (any one is enough).
    pub expected: Vec<SpiffeId>,
    /// Source IP to dial from (the pod IP in shared mode); `None` lets the kernel pick.
    pub src_ip: Option<IpAddr>,
    /// The CONNECT request head.
    pub head: ConnectHead,
    /// Makes the dialing socket; `None` uses an ordinary socket (bound to
    /// `src_ip` if set). Not part of the pool key: a given source identity and
    /// source IP always come with the same factory.
    pub socket: Option<std::sync::Arc<SocketFactory>>,
}

impl std::fmt::Debug for TunnelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTarget")
            .field("dial", &self.dial)
            .field("expected", &self.expected)
            .field("src_ip", &self.src_ip)
            .field("head", &self.head)
            .field("socket", &self.socket.is_some())
            .finish()
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect to the peer failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// What the socket said.
        source: io::Error,
    },
    /// TCP connect to the peer took too long.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] HandshakeError),
    /// The peer refused our certificate after the handshake (TLS 1.3 reports
    /// client-certificate problems with an alert after the client finished).
    #[error("peer refused the connection: {0}")]
    PeerRejected(CertRejection),
    /// HTTP/2 failed.
    #[error("HTTP/2: {0}")]
    H2(h2::Error),
    /// The peer answered the CONNECT with a non-200 status.
    /// (Worded as Istio's ztunnel logs it: `http status: 401 Unauthorized`.)
    #[error("http status: {0}")]
    Refused(StatusCode),
    /// The request head could not be encoded.
    #[error("bad CONNECT request: {0}")]
    BadRequest(#[from] http::Error),
}

impl From<h2::Error> for ClientError {
    fn from(err: h2::Error) -> Self {
        if let Some(io_err) = err.get_io()
            && let Some(tls) = crate::tls::find_rustls_error(io_err)
        {
            return ClientError::PeerRejected(CertRejection::from_rustls(tls));
        }
        ClientError::H2(err)
    }
}
