//! Certificate verifiers that check the chain with webpki and then the SPIFFE
//! identity the way ztunnel does: the client wants one exact id among those it
//! expects, the server wants any id in its own trust domain.

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::rejection::CertRejection;
use crate::bundle::TrustBundle;
use crate::cert::{first_spiffe_id, leaf_facts};
use ambit_identity::SpiffeId;

fn algorithms() -> WebPkiSupportedAlgorithms {
    super::provider().signature_verification_algorithms
}

/// Validates `end_entity` + `intermediates` up to a root in `roots` for `usage`,
/// and returns the leaf's URI SANs.
fn verify_chain(
    roots: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<Vec<String>, rustls::Error> {
    let cert =
        webpki::EndEntityCert::try_from(end_entity).map_err(CertRejection::webpki_to_rustls)?;
    cert.verify_for_usage(
        algorithms().all,
        roots.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(CertRejection::webpki_to_rustls)?;
    let facts = leaf_facts(end_entity)
        .map_err(|e| CertRejection::Other(format!("leaf does not parse: {e}")).into_rustls())?;
    Ok(facts.uri_sans)
}

/// Client side: the server must chain to our roots (EKU serverAuth) and carry,
/// as a URI SAN, exactly one of the expected SPIFFE ids.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: TrustBundle,
    expected: Vec<SpiffeId>,
}

impl SpiffeServerVerifier {
    /// A verifier accepting any one of `expected`.
    pub fn new(roots: TrustBundle, expected: Vec<SpiffeId>) -> Self {
        SpiffeServerVerifier { roots, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let sans = verify_chain(
            &self.roots,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        let matched = sans
            .iter()
            .any(|san| self.expected.iter().any(|want| want.to_string() == *san));
        if matched {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(CertRejection::WrongIdentity {
                expected: self.expected.iter().map(|e| e.to_string()).collect(),
                presented: sans,
            }
            .into_rustls())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Server side: a client certificate is required; it must chain to our roots
/// (EKU clientAuth) and carry a SPIFFE id in our trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    roots: TrustBundle,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    /// A verifier for clients of `trust_domain` chained to `roots`.
    pub fn new(roots: TrustBundle, trust_domain: String) -> Self {
        SpiffeClientVerifier {
            roots,
            trust_domain,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let sans = verify_chain(
            &self.roots,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        let ids: Vec<SpiffeId> = sans.iter().filter_map(|s| s.parse().ok()).collect();
        if ids.is_empty() {
            return Err(CertRejection::NoSpiffeId(sans).into_rustls());
        }
        if ids.iter().any(|id| id.trust_domain() == self.trust_domain) {
            Ok(ClientCertVerified::assertion())
        } else {
            let presented = first_spiffe_id(&sans)
                .map(|id| id.to_string())
                .unwrap_or_default();
            Err(CertRejection::WrongTrustDomain {
                expected: self.trust_domain.clone(),
                presented,
            }
            .into_rustls())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms().supported_schemes()
    }
}
