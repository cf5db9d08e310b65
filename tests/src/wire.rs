//! Parsers for what crosses the wire: TLS records and handshake messages (the
//! cleartext ClientHello/ServerHello) and HTTP/2 frames with HPACK-decoded headers.
//! Written for assertions, so they fail loudly on anything unexpected.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface a client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A parsed TLS hello (client or server).
#[derive(Debug, Default)]
pub struct Hello {
    /// Handshake type: 1 ClientHello, 2 ServerHello.
    pub handshake_type: u8,
    /// Cipher suites offered (client) or the one chosen (server).
    pub cipher_suites: Vec<u16>,
    /// Extensions by type, raw bodies.
    pub extensions: BTreeMap<u16, Vec<u8>>,
    /// Extension types in the order sent.
    pub extension_order: Vec<u16>,
}

/// Extension numbers used in assertions.
pub mod ext {
    /// server_name (SNI).
    pub const SERVER_NAME: u16 = 0;
    /// application_layer_protocol_negotiation.
    pub const ALPN: u16 = 16;
    /// session_ticket (TLS 1.2 resumption).
    pub const SESSION_TICKET: u16 = 35;
    /// pre_shared_key (TLS 1.3 resumption).
    pub const PRE_SHARED_KEY: u16 = 41;
    /// early_data.
    pub const EARLY_DATA: u16 = 42;
    /// supported_versions.
    pub const SUPPORTED_VERSIONS: u16 = 43;
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(
            self.0.len() >= n,
            "truncated TLS message: need {n}, have {}",
            self.0.len()
        );
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }
    fn u24(&mut self) -> usize {
        let b = self.take(3);
        (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
    }
}

/// Parses the first handshake message from raw TLS records (content type 22).
pub fn parse_hello(records: &[u8]) -> Hello {
    // Gather handshake-record payloads until the first message is complete.
    let mut hs = Vec::new();
    let mut r = Reader(records);
    while !r.0.is_empty() {
        let content_type = r.u8();
        let _legacy_version = r.u16();
        let len = usize::from(r.u16());
        let body = r.take(len);
        if content_type == 22 {
            hs.extend_from_slice(body);
        }
        if hs.len() >= 4 {
            let want =
                (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3])) + 4;
            if hs.len() >= want {
                break;
            }
        }
    }
    let mut m = Reader(&hs);
    let handshake_type = m.u8();
    let len = m.u24();
    let mut b = Reader(m.take(len));
    let _legacy_version = b.u16();
    b.take(32); // random
    let sid_len = usize::from(b.u8());
    b.take(sid_len);
    let mut hello = Hello {
        handshake_type,
        ..Default::default()
    };
    if handshake_type == 1 {
        let cs_len = usize::from(b.u16());
        let mut cs = Reader(b.take(cs_len));
        while !cs.0.is_empty() {
            hello.cipher_suites.push(cs.u16());
        }
        let comp_len = usize::from(b.u8());
        b.take(comp_len);
    } else {
        hello.cipher_suites.push(b.u16());
        b.u8(); // compression
    }
    let ext_len = usize::from(b.u16());
    let mut e = Reader(b.take(ext_len));
    while !e.0.is_empty() {
        let ty = e.u16();
        let len = usize::from(e.u16());
        hello.extensions.insert(ty, e.take(len).to_vec());
        hello.extension_order.push(ty);
    }
    hello
}

/// The protocol names in an ALPN extension body.
pub fn alpn_names(body: &[u8]) -> Vec<String> {
    let mut r = Reader(body);
    let list_len = usize::from(r.u16());
    let mut list = Reader(r.take(list_len));
    let mut out = vec![];
    while !list.0.is_empty() {
        let n = usize::from(list.u8());
        out.push(String::from_utf8_lossy(list.take(n)).into_owned());
    }
    out
}

/// Versions in a ClientHello supported_versions body.
pub fn client_versions(body: &[u8]) -> Vec<u16> {
    let mut r = Reader(body);
    let n = usize::from(r.u8());
    let mut l = Reader(r.take(n));
    let mut out = vec![];
    while !l.0.is_empty() {
        out.push(l.u16());
    }
    out
}

/// One HTTP/2 frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Frame type (0 DATA, 1 HEADERS, 3 RST_STREAM, 4 SETTINGS, 6 PING, 7 GOAWAY, 8 WINDOW_UPDATE).
    pub ty: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// HTTP/2 frame types.
pub mod frame {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// PING.
    pub const PING: u8 = 6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

impl Frame {
    /// SETTINGS parameters (id → value), for a SETTINGS frame.
    pub fn settings(&self) -> BTreeMap<u16, u32> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// WINDOW_UPDATE increment.
    pub fn window_increment(&self) -> u32 {
        u32::from_be_bytes([
            self.payload[0],
            self.payload[1],
            self.payload[2],
            self.payload[3],
        ]) & 0x7fff_ffff
    }

    /// Is the ACK flag (0x1) set (SETTINGS, PING)?
    pub fn is_ack(&self) -> bool {
        self.flags & 0x1 != 0
    }

    /// Header block fragment of a HEADERS frame (padding and priority removed).
    pub fn header_block(&self) -> &[u8] {
        let mut p = &self.payload[..];
        let mut pad = 0usize;
        if self.flags & 0x8 != 0 {
            pad = usize::from(p[0]);
            p = &p[1..];
        }
        if self.flags & 0x20 != 0 {
            p = &p[5..];
        }
        &p[..p.len() - pad]
    }
}

/// Splits a byte stream into frames, skipping the client preface if present.
/// Stops at a truncated trailing frame.
pub fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    if bytes.starts_with(H2_PREFACE) {
        bytes = &bytes[H2_PREFACE.len()..];
    }
    let mut out = vec![];
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        out.push(Frame {
            ty: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    out
}

/// Decodes the header blocks of all HEADERS frames (one HPACK context per
/// direction, so they must be decoded in order). Returns (stream, headers).
pub fn decode_headers(frames: &[Frame]) -> Vec<(u32, Vec<(String, String)>)> {
    let mut decoder = hpack::Decoder::new();
    frames
        .iter()
        .filter(|f| f.ty == frame::HEADERS)
        .map(|f| {
            let list = decoder
                .decode(f.header_block())
                .expect("HPACK block decodes");
            let list = list
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            (f.stream, list)
        })
        .collect()
}

/// Encodes a frame.
pub fn encode_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK-encodes a header list with a fresh encoder (static table only as context).
pub fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut enc = hpack::Encoder::new();
    enc.encode(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

/// Bytes recorded from both directions of a stream.
#[derive(Clone, Default, Debug)]
pub struct Recording {
    /// Bytes read (what the peer sent us).
    pub read: Arc<Mutex<Vec<u8>>>,
    /// Bytes written (what we sent the peer).
    pub written: Arc<Mutex<Vec<u8>>>,
}

impl Recording {
    /// A copy of the bytes read so far.
    pub fn read_bytes(&self) -> Vec<u8> {
        self.read.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// A copy of the bytes written so far.
    pub fn written_bytes(&self) -> Vec<u8> {
        self.written.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Wraps a stream and records every byte that passes through it.
#[derive(Debug)]
pub struct Recorder<IO> {
    inner: IO,
    rec: Recording,
}

impl<IO> Recorder<IO> {
    /// Wraps `inner`, recording into `rec`.
    pub fn new(inner: IO, rec: Recording) -> Self {
        Recorder { inner, rec }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Recorder<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && let Ok(mut v) = self.rec.read.lock()
        {
            v.extend_from_slice(&buf.filled()[before..]);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Recorder<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res
            && let Ok(mut v) = self.rec.written.lock()
        {
            v.extend_from_slice(&data[..n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
