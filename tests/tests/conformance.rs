//! Wire conformance with Istio ztunnel's HBONE (docs/wire.md §2): reads the raw TLS
//! handshake off the TCP connection and the raw HTTP/2 frames inside TLS, and
//! asserts on settings, pseudo-headers, headers, ALPN, SNI, TLS version, suites,
//! keepalive PINGs, GOAWAY on drain, and that no root is ever sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_e2e::pki::{self, id};
use ambit_e2e::wire::{self, Recorder, Recording, ext, frame};
use ambit_hbone::ca::CertificateSigner;
use ambit_hbone::client::TunnelTarget;
use ambit_hbone::request::ConnectHead;
use ambit_hbone::tls;
use ambit_hbone::{DirectHandler, HboneConfig, HboneServer, Pool, StaticServerTls};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};

/// Version, ALPN and cipher suite a handshake settled on.
type Negotiated = (
    Option<rustls::ProtocolVersion>,
    Option<Vec<u8>>,
    Option<rustls::CipherSuite>,
);

/// What the tapping server saw on one connection.
#[derive(Default, Clone)]
struct Tap {
    raw: Recording,
    h2: Recording,
    client_chain: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    negotiated: Arc<Mutex<Option<Negotiated>>>,
}

/// Runs the real HBONE server behind recorders: raw TCP bytes, then decrypted bytes.
async fn tapped_server(
    server: Arc<HboneServer<DirectHandler>>,
    tls_cfg: Arc<rustls::ServerConfig>,
) -> (SocketAddr, Arc<Mutex<Vec<Tap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let taps: Arc<Mutex<Vec<Tap>>> = Arc::default();
    let taps2 = taps.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let tap = Tap::default();
            taps2.lock().expect("taps").push(tap.clone());
            let server = server.clone();
            let tls_cfg = tls_cfg.clone();
            tokio::spawn(async move {
                let local = tcp.local_addr().expect("local");
                let raw = Recorder::new(tcp, tap.raw.clone());
                let Ok((stream, peer_id)) = tls::accept(tls_cfg, raw).await else {
                    return;
                };
                {
                    let conn = stream.get_ref().1;
                    *tap.client_chain.lock().expect("chain") = conn
                        .peer_certificates()
                        .map(|c| c.to_vec())
                        .unwrap_or_default();
                    *tap.negotiated.lock().expect("neg") = Some((
                        conn.protocol_version(),
                        conn.alpn_protocol().map(|a| a.to_vec()),
                        conn.negotiated_cipher_suite().map(|s| s.suite()),
                    ));
                }
                let inner = Recorder::new(stream, tap.h2.clone());
                server.serve_established(inner, peer_id, peer, local).await;
            });
        }
    });
    (addr, taps)
}

#[tokio::test]
async fn hbone_wire_conformance() {
    ambit_e2e::init_tracing();
    let root = pki::root("cluster.local", "root");
    let inter = root
        .new_intermediate("intermediate", pki::valid())
        .expect("intermediate");
    let (a, b) = (id("ns-a", "client"), id("ns-b", "server"));
    let cert_a = pki::issue(&inter, &a, pki::valid());
    let cert_b = pki::issue(&inter, &b, pki::valid());
    let root_der = root.trust_bundle().roots()[0].clone();

    let config = HboneConfig {
        keepalive_interval: Duration::from_millis(150),
        keepalive_timeout: Duration::from_secs(5),
        ..HboneConfig::default()
    };
    let echo = ambit_e2e::echo_server().await;
    let server = HboneServer::new(
        config.clone(),
        Arc::new(StaticServerTls::new(&cert_b)),
        DirectHandler::default(),
    );
    let (addr, taps) = tapped_server(server.clone(), tls::server_config(&cert_b)).await;

    let pool = Pool::new(config);
    let head = ConnectHead {
        authority: echo.to_string(),
        forwarded_for: Some("127.0.0.1:40000".parse().expect("addr")),
        forwarded_host: Some("echo.ns-b.svc.cluster.local".into()),
        baggage: vec![
            ("k8s.cluster.name".into(), "Kubernetes".into()),
            ("k8s.namespace.name".into(), "ns-a".into()),
            ("k8s.deployment.name".into(), "client".into()),
        ],
    };
    let target = TunnelTarget {
        dial: addr,
        expected: vec![b.clone()],
        src_ip: None,
        head,
        socket: None,
    };
    let mut tunnel = pool.connect(&cert_a, &target).await.expect("tunnel");
    assert_eq!(tunnel.peer_identity(), &b);
    let back = ambit_e2e::round_trip(&mut tunnel, b"hello hbone")
        .await
        .expect("echo");
    assert_eq!(back, b"hello hbone");

    // Let a few keepalive PINGs go each way, then drain the server.
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.drain();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let tap = taps.lock().expect("taps")[0].clone();

    // --- TLS, from the cleartext handshake on the wire ---
    let ch = wire::parse_hello(&tap.raw.read_bytes());
    assert_eq!(ch.handshake_type, 1, "ClientHello first");
    assert!(
        !ch.extensions.contains_key(&ext::SERVER_NAME),
        "SNI must not be sent"
    );
    assert_eq!(wire::alpn_names(&ch.extensions[&ext::ALPN]), vec!["h2"]);
    assert_eq!(
        wire::client_versions(&ch.extensions[&ext::SUPPORTED_VERSIONS]),
        vec![0x0304],
        "TLS 1.3 only"
    );
    assert!(!ch.cipher_suites.is_empty());
    for suite in &ch.cipher_suites {
        assert!(
            [0x1301, 0x1302].contains(suite),
            "only AES-GCM suites may be offered, got {suite:#06x}"
        );
    }
    for resumption in [ext::PRE_SHARED_KEY, ext::EARLY_DATA, ext::SESSION_TICKET] {
        assert!(
            !ch.extensions.contains_key(&resumption),
            "no resumption ({resumption})"
        );
    }
    let sh = wire::parse_hello(&tap.raw.written_bytes());
    assert_eq!(sh.handshake_type, 2, "ServerHello");
    assert!([0x1301, 0x1302].contains(&sh.cipher_suites[0]));
    assert_eq!(sh.extensions[&ext::SUPPORTED_VERSIONS], vec![0x03, 0x04]);
    let neg = tap
        .negotiated
        .lock()
        .expect("neg")
        .clone()
        .expect("negotiated");
    assert_eq!(neg.0, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(neg.1.as_deref(), Some(&b"h2"[..]));

    // --- certificates: leaf + intermediate, never the root, both directions ---
    let client_chain = tap.client_chain.lock().expect("chain").clone();
    assert_eq!(client_chain.len(), 2, "client sends leaf + intermediate");
    assert!(
        !client_chain.contains(&root_der),
        "client must not send the root"
    );
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (s, _) = tls::connect(tls::client_config(&cert_a, vec![b.clone()]), tcp, addr.ip())
        .await
        .expect("tls");
    let server_chain = s
        .get_ref()
        .1
        .peer_certificates()
        .expect("server chain")
        .to_vec();
    assert_eq!(server_chain.len(), 2, "server sends leaf + intermediate");
    assert!(
        !server_chain.contains(&root_der),
        "server must not send the root"
    );
    drop(s);

    // --- HTTP/2, client to server ---
    let c2s = tap.h2.read_bytes();
    assert!(c2s.starts_with(wire::H2_PREFACE), "client preface");
    let c_frames = wire::parse_frames(&c2s);
    let c_settings = &c_frames[0];
    assert_eq!(
        c_settings.ty,
        frame::SETTINGS,
        "SETTINGS right after the preface"
    );
    let s = c_settings.settings();
    assert_eq!(s.get(&0x2), Some(&0), "ENABLE_PUSH=0");
    assert_eq!(s.get(&0x4), Some(&(4 << 20)), "INITIAL_WINDOW_SIZE=4MiB");
    assert_eq!(s.get(&0x5), Some(&(1 << 20)), "MAX_FRAME_SIZE=1MiB");
    assert_eq!(s.get(&0x6), Some(&(16 << 10)), "MAX_HEADER_LIST_SIZE=16KiB");
    let conn_window = c_frames
        .iter()
        .find(|f| f.ty == frame::WINDOW_UPDATE && f.stream == 0)
        .expect("connection WINDOW_UPDATE");
    assert_eq!(
        conn_window.window_increment() + 65_535,
        16 << 20,
        "16 MiB connection window"
    );

    let requests = wire::decode_headers(&c_frames);
    assert_eq!(requests.len(), 1, "one request HEADERS frame");
    let (stream_id, headers) = &requests[0];
    assert_eq!(*stream_id, 1);
    let pseudo: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k.starts_with(':'))
        .cloned()
        .collect();
    assert_eq!(
        pseudo,
        vec![
            (":method".to_string(), "CONNECT".to_string()),
            (":authority".to_string(), echo.to_string())
        ],
        "only :method and :authority"
    );
    let mut names: Vec<_> = headers
        .iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .map(|(k, _)| k.as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["baggage", "forwarded", "traceparent"]);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        get("forwarded"),
        "for=\"127.0.0.1:40000\";host=echo.ns-b.svc.cluster.local"
    );
    assert_eq!(
        get("baggage"),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns-a,k8s.deployment.name=client"
    );
    let tp = get("traceparent");
    let parts: Vec<_> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "00")
    );
    let hdr_frame = c_frames
        .iter()
        .find(|f| f.ty == frame::HEADERS)
        .expect("headers");
    assert_eq!(
        hdr_frame.flags & 0x1,
        0,
        "CONNECT HEADERS must not end the stream"
    );
    let client_pings = c_frames
        .iter()
        .filter(|f| f.ty == frame::PING && !f.is_ack())
        .count();
    assert!(client_pings >= 2, "client keepalive PINGs: {client_pings}");

    // --- HTTP/2, server to client ---
    let s_frames = wire::parse_frames(&tap.h2.written_bytes());
    let s_settings = &s_frames[0];
    assert_eq!(s_settings.ty, frame::SETTINGS);
    let s = s_settings.settings();
    assert_eq!(s.get(&0x3), Some(&200), "MAX_CONCURRENT_STREAMS=200");
    assert_eq!(s.get(&0x4), Some(&(4 << 20)), "INITIAL_WINDOW_SIZE=4MiB");
    assert_eq!(s.get(&0x5), Some(&(1 << 20)), "MAX_FRAME_SIZE=1MiB");
    assert_eq!(s.get(&0x6), Some(&(64 << 10)), "MAX_HEADER_LIST_SIZE=64KiB");
    let conn_window = s_frames
        .iter()
        .find(|f| f.ty == frame::WINDOW_UPDATE && f.stream == 0)
        .expect("server connection WINDOW_UPDATE");
    assert_eq!(conn_window.window_increment() + 65_535, 16 << 20);
    let responses = wire::decode_headers(&s_frames);
    assert_eq!(
        responses[0].1,
        vec![(":status".to_string(), "200".to_string())]
    );
    let server_pings = s_frames
        .iter()
        .filter(|f| f.ty == frame::PING && !f.is_ack())
        .count();
    assert!(server_pings >= 2, "server keepalive PINGs: {server_pings}");
    assert!(
        s_frames.iter().any(|f| f.ty == frame::PING && f.is_ack()),
        "server answers the client's PINGs"
    );
    assert!(
        s_frames.iter().any(|f| f.ty == frame::GOAWAY),
        "drain sends GOAWAY"
    );
    // The tunnel established before the drain still carries data.
    let back = ambit_e2e::round_trip(&mut tunnel, b"after goaway")
        .await
        .expect("echo");
    assert_eq!(back, b"after goaway");
}
