//! TLS handshakes that end with a verified SPIFFE peer identity or a named error.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::rejection::CertRejection;
use crate::cert::{first_spiffe_id, leaf_facts};
use ambit_identity::SpiffeId;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS handshake did not produce a verified peer.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A certificate problem, on our side or the peer's.
    #[error("TLS handshake refused: {0}")]
    Rejected(#[from] CertRejection),
    /// The transport failed (reset, EOF, garbage that is not TLS).
    #[error("TLS handshake failed: {0}")]
    Io(io::Error),
    /// The peer did not finish the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
}

impl HandshakeError {
    /// Classifies an I/O error from tokio-rustls, pulling out the rustls error inside.
    pub fn from_io(err: io::Error) -> Self {
        match find_rustls_error(&err) {
            Some(tls) => HandshakeError::Rejected(CertRejection::from_rustls(tls)),
            None => HandshakeError::Io(err),
        }
    }

    /// The certificate rejection, if that is what this is.
    pub fn rejection(&self) -> Option<&CertRejection> {
        match self {
            HandshakeError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// Finds a rustls error inside an I/O error chain.
pub(crate) fn find_rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    let mut inner: Option<&(dyn std::error::Error + 'static)> = err
        .get_ref()
        .map(|e| e as &(dyn std::error::Error + 'static));
    while let Some(e) = inner {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner = e.source();
    }
    None
}

fn peer_identity(
    certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
) -> Result<SpiffeId, HandshakeError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(HandshakeError::Rejected(CertRejection::MissingClientCert))?;
    let facts = leaf_facts(leaf).map_err(|e| HandshakeError::Rejected(CertRejection::Other(e)))?;
    first_spiffe_id(&facts.uri_sans).ok_or(HandshakeError::Rejected(CertRejection::NoSpiffeId(
        facts.uri_sans,
    )))
}

/// Runs the client handshake over `io` (no SNI is sent; `dst` only fills rustls'
/// server-name slot) and returns the stream and the server's verified identity.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    io: IO,
    dst: IpAddr,
) -> Result<(client::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(config);
    let fut = connector.connect(ServerName::IpAddress(dst.into()), io);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(HandshakeError::from_io)?;
    let id = peer_identity(tls.get_ref().1.peer_certificates())?;
    Ok((tls, id))
}

/// Runs the server handshake over `io` and returns the stream and the client's
/// verified identity, which is what authorization policy sees.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
) -> Result<(server::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = TlsAcceptor::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(HandshakeError::from_io)?;
    let id = peer_identity(tls.get_ref().1.peer_certificates())?;
    Ok((tls, id))
}
