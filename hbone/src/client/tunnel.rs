//! An open tunnel: the byte stream plus what we learned opening it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::{StreamSlot, TlsInfo};
use crate::stream::H2Stream;
use ambit_identity::SpiffeId;

/// One established CONNECT stream. Reading and writing move tunnelled bytes;
/// dropping it ends the stream and frees its slot on the pooled connection.
#[derive(Debug)]
pub struct Tunnel {
    stream: H2Stream,
    peer_identity: SpiffeId,
    response_headers: HeaderMap,
    connection_id: u64,
    tls_info: Arc<TlsInfo>,
    _slot: StreamSlot,
}

impl Tunnel {
    pub(crate) fn new(
        stream: H2Stream,
        peer_identity: SpiffeId,
        response_headers: HeaderMap,
        connection_id: u64,
        tls_info: Arc<TlsInfo>,
        slot: StreamSlot,
    ) -> Self {
        Tunnel {
            stream,
            peer_identity,
            response_headers,
            connection_id,
            tls_info,
            _slot: slot,
        }
    }

    /// Relays between this tunnel and `tcp` with the one-copy path
    /// ([`crate::relay`]); returns (bytes sent, bytes received).
    pub async fn relay_tcp(&mut self, tcp: &mut tokio::net::TcpStream) -> io::Result<(u64, u64)> {
        crate::relay::relay_tcp(&mut self.stream, tcp).await
    }

    /// The server's verified SPIFFE identity.
    pub fn peer_identity(&self) -> &SpiffeId {
        &self.peer_identity
    }

    /// Headers of the 200 response (e.g. destination `baggage`).
    pub fn response_headers(&self) -> &HeaderMap {
        &self.response_headers
    }

    /// Which pooled connection carries this stream (for tests and logs).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// What the carrying connection's TLS handshake negotiated.
    pub fn tls_info(&self) -> &TlsInfo {
        &self.tls_info
    }

    /// Aborts the stream with RST_STREAM.
    pub fn reset(&mut self, reason: h2::Reason) {
        self.stream.reset(reason);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
