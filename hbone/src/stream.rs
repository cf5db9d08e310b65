//! One HBONE tunnel stream as `AsyncRead + AsyncWrite`, so it can be copied to and
//! from a TCP socket with ordinary tokio I/O.
//!
//! Half-close is an empty DATA frame with END_STREAM. A peer RST_STREAM of
//! NO_ERROR or CANCEL reads as EOF; STREAM_CLOSED reads as a broken pipe.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A bidirectional byte stream carried in one HTTP/2 CONNECT stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    write_closed: bool,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("pending", &self.pending.len())
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl H2Stream {
    /// Wraps the two halves of an established CONNECT stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
        }
    }

    /// The send half, the receive half and bytes received but not yet read,
    /// for [`crate::relay`].
    pub(crate) fn parts(&mut self) -> (&mut SendStream<Bytes>, &mut RecvStream, &mut Bytes) {
        (&mut self.send, &mut self.recv, &mut self.pending)
    }

    /// Aborts the stream with RST_STREAM(`reason`).
    pub fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }
}

/// Turns an h2 error into an I/O error, treating graceful resets as EOF-like.
fn reset_to_io(reason: Reason) -> io::Error {
    if reason == Reason::STREAM_CLOSED {
        io::Error::new(io::ErrorKind::BrokenPipe, "stream closed by peer")
    } else {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by peer: {reason}"),
        )
    }
}

pub(crate) fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        match err.into_io() {
            Some(e) => e,
            None => io::Error::other("h2 I/O error"),
        }
    } else if let Some(reason) = err.reason() {
        reset_to_io(reason)
    } else {
        io::Error::other(err)
    }
}

pub(crate) fn is_graceful(reason: Option<Reason>) -> bool {
    matches!(reason, Some(Reason::NO_ERROR) | Some(Reason::CANCEL))
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Give the window back as soon as the frame is ours: we hold at most
                    // one frame, so back-pressure still reaches the sender.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) if is_graceful(e.reason()) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
        let n = buf.remaining().min(self.pending.len());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                // Capacity dropped to zero: poll again to wait for more.
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    return Poll::Ready(
                        self.send
                            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                            .map(|()| n)
                            .map_err(h2_to_io),
                    );
                }
                Some(Err(_)) | None => break,
            }
        }
        // No capacity will come: find out why.
        match ready!(self.send.poll_reset(cx)) {
            Ok(reason) if is_graceful(Some(reason)) || reason == Reason::STREAM_CLOSED => {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            Ok(reason) => Poll::Ready(Err(reset_to_io(reason))),
            Err(e) => Poll::Ready(Err(h2_to_io(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            // An empty DATA frame with END_STREAM is HBONE's half-close. If the stream
            // is already gone there is nothing left to close.
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}
