//! Malformed and hostile input: each case closes only the stream or connection it
//! arrived on, the server keeps serving, and nothing panics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_e2e::pki::{self, id};
use ambit_e2e::wire::{self, frame};
use ambit_hbone::client::TunnelTarget;
use ambit_hbone::request::ConnectHead;
use ambit_hbone::server::ServerStats;
use ambit_hbone::{
    DirectHandler, HboneConfig, HboneServer, Pool, StaticServerTls, WorkloadCertificate, tls,
};
use ambit_identity::SpiffeId;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    server: Arc<HboneServer<DirectHandler>>,
    addr: SocketAddr,
    echo: SocketAddr,
    cert_a: WorkloadCertificate,
    b: SpiffeId,
}

async fn fixture() -> Fixture {
    ambit_e2e::init_tracing();
    ambit_e2e::install_panic_counter();
    let root = pki::root("cluster.local", "root");
    let (a, b) = (id("ns-a", "a"), id("ns-b", "b"));
    let cert_a = pki::issue(&root, &a, pki::valid());
    let cert_b = pki::issue(&root, &b, pki::valid());
    let config = HboneConfig {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(500),
        ..HboneConfig::default()
    };
    let (server, addr) = ambit_e2e::start_hbone(
        config,
        Arc::new(StaticServerTls::new(&cert_b)),
        DirectHandler::default(),
    )
    .await;
    Fixture {
        server,
        addr,
        echo: ambit_e2e::echo_server().await,
        cert_a,
        b,
    }
}

impl Fixture {
    async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        tls::connect(
            tls::client_config(&self.cert_a, vec![self.b.clone()]),
            tcp,
            self.addr.ip(),
        )
        .await
        .expect("tls")
        .0
    }

    /// An h2 client over TLS, its connection driven in the background.
    async fn h2(&self) -> h2::client::SendRequest<Bytes> {
        let (send, conn) = h2::client::handshake(self.tls().await).await.expect("h2");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send
    }

    async fn request(
        &self,
        send: &mut h2::client::SendRequest<Bytes>,
        req: http::Request<()>,
    ) -> http::StatusCode {
        let mut ready = send.clone().ready().await.expect("ready");
        let (resp, _body) = ready.send_request(req, false).expect("send");
        tokio::time::timeout(WAIT, resp)
            .await
            .expect("timely")
            .expect("response")
            .status()
    }

    /// Asserts the server still opens a fresh, working tunnel.
    async fn still_serving(&self) {
        let pool = Pool::new(HboneConfig::default());
        let target = TunnelTarget {
            dial: self.addr,
            expected: vec![self.b.clone()],
            src_ip: None,
            head: ConnectHead::to_addr(self.echo),
            socket: None,
        };
        let mut t = pool
            .connect(&self.cert_a, &target)
            .await
            .expect("server still serves");
        let back = ambit_e2e::round_trip(&mut t, b"still here")
            .await
            .expect("echo");
        assert_eq!(back, b"still here");
        assert_eq!(ambit_e2e::panics(), 0, "nothing panicked");
    }
}

/// Reads until EOF or error; panics if the peer keeps the connection open.
async fn expect_closed<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, r.read(&mut buf)).await {
            Err(_) => panic!("peer did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn connect_req(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method("CONNECT")
        .uri(authority)
        .body(())
        .expect("request")
}

#[tokio::test]
async fn garbage_instead_of_tls_closes_the_connection() {
    let f = fixture().await;
    let mut tcp = TcpStream::connect(f.addr).await.expect("connect");
    let junk: Vec<u8> = (0..2048u32).map(|i| (i * 37 % 251) as u8).collect();
    let _ = tcp.write_all(&junk).await;
    expect_closed(&mut tcp).await;
    assert!(ServerStats::get(&f.server.stats().tls_failures) >= 1);
    f.still_serving().await;
}

#[tokio::test]
async fn bad_preface_closes_the_connection() {
    let f = fixture().await;
    let mut s = f.tls().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    expect_closed(&mut s).await;
    assert!(ServerStats::get(&f.server.stats().h2_failures) >= 1);
    f.still_serving().await;
}

#[tokio::test]
async fn garbage_frames_after_tls_get_goaway() {
    let f = fixture().await;
    let mut s = f.tls().await;
    let mut out = wire::H2_PREFACE.to_vec();
    out.extend(wire::encode_frame(frame::SETTINGS, 0, 0, &[]));
    // DATA on stream 0 is a connection error (PROTOCOL_ERROR).
    out.extend(wire::encode_frame(frame::DATA, 0, 0, b"not allowed here"));
    out.extend((0..512u32).map(|i| (i * 13 % 256) as u8));
    s.write_all(&out).await.expect("write");
    let got = expect_closed(&mut s).await;
    let frames = wire::parse_frames(&got);
    assert!(
        frames.iter().any(|fr| fr.ty == frame::GOAWAY),
        "GOAWAY before close: {frames:?}"
    );
    f.still_serving().await;
}

#[tokio::test]
async fn bad_requests_fail_only_their_stream() {
    let f = fixture().await;
    let mut send = f.h2().await;
    // Bad authority, wrong IP for this address, reserved port, non-CONNECT method.
    assert_eq!(f.request(&mut send, connect_req("bad_host:80")).await, 400);
    let wrong_ip = format!("127.0.0.2:{}", f.echo.port());
    assert_eq!(f.request(&mut send, connect_req(&wrong_ip)).await, 400);
    assert_eq!(
        f.request(&mut send, connect_req("127.0.0.1:15008")).await,
        503
    );
    let get = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}/", f.echo))
        .body(())
        .expect("get");
    assert_eq!(f.request(&mut send, get).await, 400);
    // Nothing listens there: the dial fails, 503.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    assert_eq!(
        f.request(&mut send, connect_req(&dead.to_string())).await,
        503
    );
    // The same connection still carries a good tunnel.
    assert_eq!(
        f.request(&mut send, connect_req(&f.echo.to_string())).await,
        200
    );
    assert_eq!(ServerStats::get(&f.server.stats().connections_accepted), 1);
    assert!(ServerStats::get(&f.server.stats().streams_refused) >= 5);
    f.still_serving().await;
}

#[tokio::test]
async fn connect_with_path_is_refused_and_connection_survives() {
    let f = fixture().await;
    let mut s = f.tls().await;
    let echo = f.echo.to_string();
    let mut out = wire::H2_PREFACE.to_vec();
    out.extend(wire::encode_frame(frame::SETTINGS, 0, 0, &[]));
    let bad = wire::encode_headers(&[
        (":method", "CONNECT"),
        (":scheme", "https"),
        (":path", "/"),
        (":authority", &echo),
    ]);
    out.extend(wire::encode_frame(frame::HEADERS, 0x4, 1, &bad));
    s.write_all(&out).await.expect("write");
    // Read until the server has answered stream 1 one way or another.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = |seen: &[u8]| {
        wire::parse_frames(seen)
            .iter()
            .any(|fr| fr.stream == 1 && (fr.ty == frame::RST_STREAM || fr.ty == frame::HEADERS))
    };
    while !answered(&seen) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(
            n > 0,
            "server closed the whole connection for one bad stream"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let frames = wire::parse_frames(&seen);
    let rst = frames
        .iter()
        .find(|fr| fr.stream == 1 && fr.ty == frame::RST_STREAM);
    let headers = wire::decode_headers(&frames);
    let refused = rst.is_some()
        || headers
            .iter()
            .any(|(sid, h)| *sid == 1 && h.iter().any(|(k, v)| k == ":status" && v == "400"));
    assert!(refused, "stream 1 refused: {frames:?}");

    // A good CONNECT on stream 3 of the same connection still works. (A fresh
    // encoder only refers to the static table, so the block decodes whatever the
    // first block left in the server's dynamic table.)
    let good = wire::encode_headers(&[(":method", "CONNECT"), (":authority", &echo)]);
    s.write_all(&wire::encode_frame(frame::HEADERS, 0x4, 3, &good))
        .await
        .expect("write");
    let mut seen = Vec::new();
    let ok = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(n > 0, "connection closed");
        seen.extend_from_slice(&buf[..n]);
        let frames = wire::parse_frames(&seen);
        if frames
            .iter()
            .any(|fr| fr.stream == 3 && fr.ty == frame::HEADERS)
        {
            break frames;
        }
    };
    assert!(
        ok.iter()
            .any(|fr| fr.stream == 3 && fr.ty == frame::HEADERS && fr.flags & 0x1 == 0),
        "stream 3 answered 200 without END_STREAM"
    );
    f.still_serving().await;
}

#[tokio::test]
async fn stream_reset_mid_transfer_leaves_other_streams_alone() {
    let f = fixture().await;
    let pool = Pool::new(HboneConfig::default());
    let target = TunnelTarget {
        dial: f.addr,
        expected: vec![f.b.clone()],
        src_ip: None,
        head: ConnectHead::to_addr(f.echo),
        socket: None,
    };
    let mut t1 = pool.connect(&f.cert_a, &target).await.expect("t1");
    let mut t2 = pool.connect(&f.cert_a, &target).await.expect("t2");
    assert_eq!(
        t1.connection_id(),
        t2.connection_id(),
        "same pooled connection"
    );
    t1.write_all(&vec![7u8; 256 * 1024]).await.expect("write");
    t1.reset(h2::Reason::CANCEL);
    let back = ambit_e2e::round_trip(&mut t2, b"other stream")
        .await
        .expect("echo");
    assert_eq!(back, b"other stream");

    // Upstream resets the TCP connection mid-transfer: the tunnel ends, others live.
    let rst_upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let rst_addr = rst_upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut sock, _)) = rst_upstream.accept().await {
            let mut buf = [0u8; 16];
            let _ = sock.read(&mut buf).await;
            let _ = sock.set_zero_linger();
            drop(sock); // RST
        }
    });
    let target_rst = TunnelTarget {
        head: ConnectHead::to_addr(rst_addr),
        socket: None,
        ..target.clone()
    };
    let mut t3 = pool.connect(&f.cert_a, &target_rst).await.expect("t3");
    t3.write_all(b"trigger").await.expect("write");
    let mut buf = [0u8; 16];
    let res = tokio::time::timeout(WAIT, t3.read(&mut buf))
        .await
        .expect("t3 ends");
    assert!(matches!(res, Ok(0) | Err(_)), "t3 ended: {res:?}");
    let back = ambit_e2e::round_trip(&mut t2, b"still fine")
        .await
        .expect("echo");
    assert_eq!(back, b"still fine");
    assert_eq!(ServerStats::get(&f.server.stats().connections_accepted), 1);
    f.still_serving().await;
}

#[tokio::test]
async fn vanished_peer_is_dropped_by_keepalive() {
    let f = fixture().await;
    let mut s = f.tls().await;
    let mut out = wire::H2_PREFACE.to_vec();
    out.extend(wire::encode_frame(frame::SETTINGS, 0, 0, &[]));
    let block =
        wire::encode_headers(&[(":method", "CONNECT"), (":authority", &f.echo.to_string())]);
    out.extend(wire::encode_frame(frame::HEADERS, 0x4, 1, &block));
    s.write_all(&out).await.expect("write");
    // Now the peer goes silent: no reads, no PING acks.
    let deadline = tokio::time::Instant::now() + WAIT;
    while ServerStats::get(&f.server.stats().keepalive_timeouts) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keepalive never dropped the silent peer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection is gone from the server's side.
    expect_closed(&mut s).await;
    f.still_serving().await;
}
