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

use crate::identity::SpiffeId;
use crate::request::ConnectHead;
use crate::tls::{CertRejection, HandshakeError};

/// Where and how to open a tunnel.
#[derive(Clone, Debug)]
pub struct TunnelTarget {
    /// The peer's HBONE address (`IP:15008`).
    pub dial: SocketAddr,
    /// Server identities accepted, in order (any one is enough).
    pub expected: Vec<SpiffeId>,
    /// Source IP to dial from (the pod IP in shared mode); `None` lets the kernel pick.
    pub src_ip: Option<IpAddr>,
    /// The CONNECT request head.
    pub head: ConnectHead,
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
    #[error("CONNECT refused with status {0}")]
    Refused(StatusCode),
    /// The request head could not be encoded.
    #[error("bad CONNECT request: {0}")]
    BadRequest(#[from] http::Error),
}

impl From<h2::Error> for ClientError {
    fn from(err: h2::Error) -> Self {
        if let Some(io_err) = err.get_io()
            && let Some(tls) = crate::tls::find_rustls_error_pub(io_err)
        {
            return ClientError::PeerRejected(CertRejection::from_rustls(tls));
        }
        ClientError::H2(err)
    }
}
