//! rustls configuration for HBONE, as Istio's ztunnel sets it (docs/wire.md §2.1):
//! TLS 1.3 only, AES-GCM suites only, ALPN `h2`, no SNI, no session resumption,
//! client certificate required, SPIFFE SAN checks on both sides.

mod handshake;
mod rejection;
mod verify;

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

pub(crate) use handshake::find_rustls_error;
pub use handshake::{HandshakeError, accept, connect};
pub use rejection::CertRejection;
pub use verify::{SpiffeClientVerifier, SpiffeServerVerifier};

use crate::cert::WorkloadCertificate;
use ambit_identity::SpiffeId;

/// The ALPN protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider used everywhere: ring, limited to the TLS 1.3 AES-GCM suites.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites = vec![
                rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
                rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ];
            Arc::new(p)
        })
        .clone()
}

/// Presents one fixed certificate whatever the peer asks for.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Client config for dialing a peer that must prove one of `expected` identities,
/// presenting `cert`.
pub fn client_config(cert: &WorkloadCertificate, expected: Vec<SpiffeId>) -> Arc<ClientConfig> {
    let verifier = SpiffeServerVerifier::new(cert.roots().clone(), expected);
    // The provider and version list are fixed and known good, so this cannot fail.
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is supported by the ring provider"));
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(FixedCert(cert.certified_key().clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Server config presenting `cert` and requiring a client certificate chained to
/// `cert`'s roots with a SPIFFE id in `cert`'s trust domain.
pub fn server_config(cert: &WorkloadCertificate) -> Arc<ServerConfig> {
    let verifier = SpiffeClientVerifier::new(
        cert.roots().clone(),
        cert.identity().trust_domain().to_string(),
    );
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is supported by the ring provider"));
    let mut config = builder
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(FixedCert(cert.certified_key().clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}
