//! Moving bytes between a TCP socket and an HBONE stream with one copy each
//! way instead of three: once a connection's reads fill 16 KiB, socket reads
//! land in a buffer that is frozen and handed to h2 as a DATA payload as-is
//! (no `copy_from_slice`; smaller reads are copied out of a per-thread
//! scratch buffer at their exact size, cheaper than a 16 KiB block), and received
//! DATA payloads are written to the socket straight from h2's buffer (no
//! intermediate read buffer). The read buffer grows with the traffic (16 KiB
//! up to 256 KiB when reads keep filling it) and is only held while there is
//! something to read, so idle connections hold no buffer and bulk transfers
//! make few syscalls. Flow control is respected: data is
//! sent only within the capacity h2 grants.

use std::future::poll_fn;
use std::io;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream::{H2Stream, h2_to_io, is_graceful};

/// First read buffer size per direction.
const START: usize = 16 * 1024;
/// Largest read buffer.
const MAX: usize = 256 * 1024;

thread_local! {
    /// Where small reads land before they are copied out at their exact size:
    /// a request of a few hundred bytes then costs a small allocation instead
    /// of a 16 KiB one (large allocations make glibc consolidate its free
    /// lists, which showed up at ~3 % of a ztunnel's CPU on short
    /// connections).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; START].into_boxed_slice());
}

/// One read from `from`: into [`SCRATCH`] and copied out while the traffic
/// is small (`cap == START`), straight into an owned buffer of `cap` bytes
/// (the one-copy path) once reads have filled 16 KiB. Returns the bytes read
/// (empty at EOF).
fn read_chunk(from: &TcpStream, cap: usize, buf: &mut BytesMut) -> io::Result<Bytes> {
    if cap <= START {
        return SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let n = from.try_read(&mut s[..])?;
            Ok(Bytes::copy_from_slice(&s[..n]))
        });
    }
    if buf.capacity() < cap {
        buf.reserve(cap);
    }
    from.try_read_buf(buf)?;
    Ok(buf.split().freeze())
}

/// What `from` already holds, read without waiting: the first bytes of a
/// client-first protocol, to send together with the CONNECT request
/// ([`crate::client::Pool::connect_with_data`]). Empty at EOF; `WouldBlock`
/// when the app has sent nothing yet.
pub fn read_now(from: &TcpStream) -> io::Result<Bytes> {
    read_chunk(from, START, &mut BytesMut::new())
}

/// Socket → stream until the socket's EOF, then END_STREAM.
///
/// A buffer is held only while the socket has something to read, so an idle
/// connection holds none (1,000 idle connections would otherwise pin 1,000
/// partly written 16 KiB blocks).
async fn upload(from: &TcpStream, send: &mut SendStream<Bytes>) -> io::Result<u64> {
    let mut total = 0u64;
    let mut cap = START;
    let mut buf = BytesMut::new();
    loop {
        let mut chunk = match read_chunk(from, cap, &mut buf) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf = BytesMut::new();
                from.readable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = chunk.len();
        if n == 0 {
            let _ = send.send_data(Bytes::new(), true);
            return Ok(total);
        }
        if n >= cap && cap < MAX {
            cap = (cap * 2).min(MAX);
        }
        total += n as u64;
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = poll_fn(|cx| send.poll_capacity(cx)).await;
            match granted {
                Some(Ok(0)) => continue,
                Some(Ok(k)) => {
                    let part = chunk.split_to(k.min(chunk.len()));
                    send.send_data(part, false).map_err(h2_to_io)?;
                }
                Some(Err(e)) => return Err(h2_to_io(e)),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
    }
}

/// Stream → socket until END_STREAM, then a write shutdown.
async fn download<W: AsyncWrite + Unpin>(
    pending: Bytes,
    recv: &mut RecvStream,
    to: &mut W,
) -> io::Result<u64> {
    let mut total = pending.len() as u64;
    if !pending.is_empty() {
        to.write_all(&pending).await?;
    }
    loop {
        match poll_fn(|cx| recv.poll_data(cx)).await {
            None => break,
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                total += data.len() as u64;
                to.write_all(&data).await?;
            }
            Some(Err(e)) if is_graceful(e.reason()) => break,
            Some(Err(e)) => return Err(h2_to_io(e)),
        }
    }
    to.shutdown().await?;
    Ok(total)
}

/// Relays between `stream` and `tcp` until both directions end; returns
/// (bytes from the socket into the stream, bytes from the stream to the
/// socket). An error resets the stream (CANCEL).
pub async fn relay_tcp(stream: &mut H2Stream, tcp: &mut TcpStream) -> io::Result<(u64, u64)> {
    let (rd, mut wr) = tcp.split();
    let (send, recv, pending) = stream.parts();
    let pending = std::mem::take(pending);
    let result = tokio::try_join!(upload(rd.as_ref(), send), download(pending, recv, &mut wr));
    if result.is_err() {
        stream.reset(Reason::CANCEL);
    }
    result
}
