//! Certificate table: every way a peer certificate can be wrong is refused with a
//! named error, on real TLS handshakes over loopback TCP; a peer chained to a
//! second root is accepted while both roots are in the bundle.

use std::sync::Arc;

use ambit_e2e::pki::{self, id};
use ambit_hbone::WorkloadCertificate;
use ambit_hbone::bundle::TrustBundle;
use ambit_hbone::ca::{Authority, CertificateSigner};
use ambit_hbone::tls::{self, CertRejection, HandshakeError, SpiffeServerVerifier};
use ambit_identity::SpiffeId;
use tokio::net::{TcpListener, TcpStream};

/// What each side of one handshake ended with.
struct Outcome {
    client: Result<SpiffeId, HandshakeError>,
    server: Result<SpiffeId, HandshakeError>,
}

async fn handshake(
    client_cfg: Arc<rustls::ClientConfig>,
    server_cfg: Arc<rustls::ServerConfig>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        match tls::accept(server_cfg, tcp).await {
            // Read once so a client-side failure shows up as EOF, not a hang.
            Ok((mut s, id)) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                    let _ = s.shutdown().await;
                }
                Ok(id)
            }
            Err(e) => Err(e),
        }
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let client = match tls::connect(client_cfg, tcp, addr.ip()).await {
        Ok((mut s, id)) => {
            // In TLS 1.3 the server judges our certificate after we finish: a
            // read surfaces its alert.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"x").await;
            let mut b = [0u8; 1];
            match s.read_exact(&mut b).await {
                Err(e) => Err(HandshakeError::from_io(e)),
                Ok(_) => Ok(id),
            }
        }
        Err(e) => Err(e),
    };
    let server = server.await.expect("server task");
    Outcome { client, server }
}

fn rejection(r: &Result<SpiffeId, HandshakeError>) -> Option<CertRejection> {
    r.as_ref().err().and_then(|e| e.rejection().cloned())
}

fn client_without_cert(roots: TrustBundle, expected: SpiffeId) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            roots,
            vec![expected],
        )))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.enable_sni = false;
    Arc::new(cfg)
}

struct World {
    root: Authority,
    a: SpiffeId,
    b: SpiffeId,
    cert_a: WorkloadCertificate,
    cert_b: WorkloadCertificate,
}

fn world() -> World {
    let root = pki::root("cluster.local", "root-1");
    let a = id("ns-a", "client");
    let b = id("ns-b", "server");
    let cert_a = pki::issue(&root, &a, pki::valid());
    let cert_b = pki::issue(&root, &b, pki::valid());
    World {
        root,
        a,
        b,
        cert_a,
        cert_b,
    }
}

#[tokio::test]
async fn good_pair_verifies_both_identities() {
    let w = world();
    let out = handshake(
        tls::client_config(&w.cert_a, vec![w.b.clone()]),
        tls::server_config(&w.cert_b),
    )
    .await;
    assert_eq!(out.client.expect("client ok"), w.b);
    assert_eq!(out.server.expect("server ok"), w.a);
}

#[tokio::test]
async fn certificate_table() {
    let w = world();
    let other_root = pki::root("cluster.local", "stranger");
    let other_td_root = pki::root("other.domain", "other-td");
    let c = id("ns-c", "someone-else");

    struct Case {
        name: &'static str,
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        /// Expected rejection seen by the client (None = client succeeds).
        client_sees: Option<fn(&CertRejection) -> bool>,
        /// Expected rejection seen by the server (None = server succeeds).
        server_sees: Option<fn(&CertRejection) -> bool>,
    }

    let expired_b = pki::issue(&w.root, &w.b, pki::expired());
    let expired_a = pki::issue(&w.root, &w.a, pki::expired());
    let future_b = pki::issue(&w.root, &w.b, pki::not_yet_valid());
    let future_a = pki::issue(&w.root, &w.a, pki::not_yet_valid());
    let stranger_b = pki::issue(&other_root, &w.b, pki::valid());
    // Issued by a stranger, but trusting the real root (so only the server objects).
    let stranger_a = pki::issue(&other_root, &w.a, pki::valid()).with_roots(w.root.trust_bundle());
    // A client in another trust domain whose root the server does trust: only the
    // trust-domain check can refuse it.
    let foreign = SpiffeId::new("other.domain", "ns-a", "client").expect("id");
    let foreign_cert =
        pki::issue(&other_td_root, &foreign, pki::valid()).with_roots(w.root.trust_bundle());
    let both = w.cert_b.roots().merged(&other_td_root.trust_bundle());
    let server_trusting_both = tls::server_config(&w.cert_b.with_roots(both));

    let cases = vec![
        Case {
            name: "wrong SAN: server is not the identity the client expects",
            client: tls::client_config(&w.cert_a, vec![c.clone()]),
            server: tls::server_config(&w.cert_b),
            client_sees: Some(|r| matches!(r, CertRejection::WrongIdentity { .. })),
            server_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
        },
        Case {
            name: "unknown CA on the server side",
            client: tls::client_config(&w.cert_a, vec![w.b.clone()]),
            server: tls::server_config(&stranger_b),
            client_sees: Some(|r| matches!(r, CertRejection::UnknownIssuer)),
            server_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
        },
        Case {
            name: "unknown CA on the client side",
            client: tls::client_config(&stranger_a, vec![w.b.clone()]),
            server: tls::server_config(&w.cert_b),
            client_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
            server_sees: Some(|r| matches!(r, CertRejection::UnknownIssuer)),
        },
        Case {
            name: "expired server certificate",
            client: tls::client_config(&w.cert_a, vec![w.b.clone()]),
            server: tls::server_config(&expired_b),
            client_sees: Some(|r| matches!(r, CertRejection::Expired)),
            server_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
        },
        Case {
            name: "expired client certificate",
            client: tls::client_config(&expired_a, vec![w.b.clone()]),
            server: tls::server_config(&w.cert_b),
            client_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
            server_sees: Some(|r| matches!(r, CertRejection::Expired)),
        },
        Case {
            name: "not-yet-valid server certificate",
            client: tls::client_config(&w.cert_a, vec![w.b.clone()]),
            server: tls::server_config(&future_b),
            client_sees: Some(|r| matches!(r, CertRejection::NotYetValid)),
            server_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
        },
        Case {
            name: "not-yet-valid client certificate",
            client: tls::client_config(&future_a, vec![w.b.clone()]),
            server: tls::server_config(&w.cert_b),
            client_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
            server_sees: Some(|r| matches!(r, CertRejection::NotYetValid)),
        },
        Case {
            name: "client in the wrong trust domain",
            client: tls::client_config(&foreign_cert, vec![w.b.clone()]),
            server: server_trusting_both.clone(),
            client_sees: Some(|r| matches!(r, CertRejection::RefusedByPeer(_))),
            server_sees: Some(|r| matches!(r, CertRejection::WrongTrustDomain { .. })),
        },
        Case {
            name: "missing client certificate",
            client: client_without_cert(w.cert_a.roots().clone(), w.b.clone()),
            server: tls::server_config(&w.cert_b),
            client_sees: Some(
                |r| matches!(r, CertRejection::RefusedByPeer(a) if a == "CertificateRequired"),
            ),
            server_sees: Some(|r| matches!(r, CertRejection::MissingClientCert)),
        },
    ];

    for case in cases {
        let out = handshake(case.client, case.server).await;
        match case.client_sees {
            None => assert!(
                out.client.is_ok(),
                "{}: client failed: {:?}",
                case.name,
                out.client.err()
            ),
            Some(check) => {
                let r = rejection(&out.client).unwrap_or_else(|| {
                    panic!(
                        "{}: client did not fail with a named rejection: {:?}",
                        case.name,
                        out.client.as_ref().map(|_| ())
                    )
                });
                assert!(check(&r), "{}: client saw {r:?}", case.name);
            }
        }
        match case.server_sees {
            None => assert!(
                out.server.is_ok(),
                "{}: server failed: {:?}",
                case.name,
                out.server.err()
            ),
            Some(check) => {
                let r = rejection(&out.server).unwrap_or_else(|| {
                    panic!(
                        "{}: server did not fail with a named rejection: {:?}",
                        case.name,
                        out.server.as_ref().map(|_| ())
                    )
                });
                assert!(check(&r), "{}: server saw {r:?}", case.name);
            }
        }
        // Every named rejection prints a message that says what went wrong.
        for r in [rejection(&out.client), rejection(&out.server)]
            .into_iter()
            .flatten()
        {
            assert!(!r.to_string().is_empty());
        }
    }
}

#[tokio::test]
async fn second_root_accepted_while_both_are_in_the_bundle() {
    let w = world();
    // Root rotation: a new root issues new certificates; the old root's are still out there.
    let root2 = pki::root("cluster.local", "root-2");
    let a_new = pki::issue(&root2, &w.a, pki::valid());
    let both = w.root.trust_bundle().merged(&root2.trust_bundle());
    assert_eq!(both.roots().len(), 2);

    // Server (old root cert) trusts both: the client chained to root 2 is accepted.
    let server_b = w.cert_b.with_roots(both.clone());
    let client_a = a_new.with_roots(both.clone());
    let out = handshake(
        tls::client_config(&client_a, vec![w.b.clone()]),
        tls::server_config(&server_b),
    )
    .await;
    assert_eq!(out.client.expect("client accepted old-root server"), w.b);
    assert_eq!(out.server.expect("server accepted new-root client"), w.a);

    // Drop root 2 from the server's bundle: the same client is now an unknown CA.
    let out = handshake(
        tls::client_config(&client_a, vec![w.b.clone()]),
        tls::server_config(&w.cert_b),
    )
    .await;
    assert_eq!(rejection(&out.server), Some(CertRejection::UnknownIssuer));

    // A CA that publishes both roots hands the merged bundle to its workloads.
    let rotating = pki::root("cluster.local", "root-3").with_extra_roots(&both);
    let fresh = pki::issue(&rotating, &w.a, pki::valid());
    assert_eq!(fresh.roots().roots().len(), 3);
}

#[tokio::test]
async fn intermediate_chain_is_accepted_and_root_is_never_sent() {
    let w = world();
    let inter = w
        .root
        .new_intermediate("intermediate", pki::valid())
        .expect("intermediate");
    let a = pki::issue(&inter, &w.a, pki::valid());
    assert_eq!(a.certified_key().cert.len(), 2, "leaf + intermediate");
    let bundle = w.root.trust_bundle();
    let root_der = &bundle.roots()[0];
    assert!(!a.certified_key().cert.contains(root_der));
    let out = handshake(
        tls::client_config(&a, vec![w.b.clone()]),
        tls::server_config(&w.cert_b),
    )
    .await;
    assert_eq!(
        out.server.expect("intermediate-chained client accepted"),
        w.a
    );
}

/// The controller's CA rotates its root in three steps; at every step each
/// pair of workloads that renewed on schedule still completes a handshake.
#[tokio::test]
async fn staged_root_rotation_never_breaks_a_pair() {
    use controller::ca::RotatingAuthority;
    let w = world();
    let ca = RotatingAuthority::new(pki::root("cluster.local", "root-old"));
    let issue = |id: &SpiffeId| pki::issue_with(&ca, id);
    let a_old = issue(&w.a);
    assert_eq!(a_old.roots().roots().len(), 1);

    // Step 1: staged. Still signed by the old root; the bundle carries both.
    ca.stage_root("root-new", pki::valid()).expect("stage");
    let a_staged = issue(&w.a);
    let b_staged = issue(&w.b);
    assert_eq!(a_staged.roots().roots().len(), 2);
    let ok = |o: &Outcome| o.client.is_ok() && o.server.is_ok();
    let pair = |c: &WorkloadCertificate, s: &WorkloadCertificate| {
        (
            tls::client_config(c, vec![s.identity().clone()]),
            tls::server_config(s),
        )
    };
    let (c, s) = pair(&a_staged, &b_staged);
    assert!(ok(&handshake(c, s).await), "staged ↔ staged");
    let (c, s) = pair(&a_old, &b_staged);
    assert!(ok(&handshake(c, s).await), "not yet renewed ↔ staged");

    // Step 2: the new root signs. Renewed peers talk both ways with new-root certs.
    assert!(ca.activate_staged());
    let b_new = issue(&w.b);
    let (c, s) = pair(&a_staged, &b_new);
    assert!(
        ok(&handshake(c, s).await),
        "staged client → new-root server"
    );
    let (c, s) = pair(&b_new, &a_staged);
    assert!(
        ok(&handshake(c, s).await),
        "new-root client → staged server"
    );
    // Why step 1 exists: a peer that never learned the new root refuses new-root certs.
    let (c, s) = pair(&b_new, &a_old);
    assert_eq!(
        rejection(&handshake(c, s).await.server),
        Some(CertRejection::UnknownIssuer)
    );

    // Step 3: old roots retired from the bundle.
    ca.retire_old_roots();
    assert_eq!(issue(&w.a).roots().roots().len(), 1);
}
