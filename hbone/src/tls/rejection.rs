//! Named reasons a TLS peer was refused, mapped from rustls and webpki errors.

use rustls::{AlertDescription, CertificateError};

/// Why a handshake refused a peer (or the peer refused us). Every certificate
/// problem gets its own variant so tests, logs and metrics can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRejection {
    /// The server's certificate carries none of the SPIFFE ids the client expected.
    #[error(
        "peer certificate has none of the expected identities {expected:?} (it has {presented:?})"
    )]
    WrongIdentity {
        /// What the client expected.
        expected: Vec<String>,
        /// The URI SANs the peer presented.
        presented: Vec<String>,
    },
    /// The client's SPIFFE id is in another trust domain than the server's.
    #[error("peer identity {presented} is outside trust domain {expected}")]
    WrongTrustDomain {
        /// The server's trust domain.
        expected: String,
        /// The peer's SPIFFE id.
        presented: String,
    },
    /// The peer certificate has no URI SAN that is a SPIFFE id.
    #[error("peer certificate has no SPIFFE identity (URI SANs {0:?})")]
    NoSpiffeId(Vec<String>),
    /// The chain does not lead to any root in the trust bundle.
    #[error("peer certificate is not signed by a trusted root (unknown CA)")]
    UnknownIssuer,
    /// The peer certificate (or one in its chain) has expired.
    #[error("peer certificate has expired")]
    Expired,
    /// The peer certificate (or one in its chain) is not valid yet.
    #[error("peer certificate is not yet valid")]
    NotYetValid,
    /// The client sent no certificate, but one is required.
    #[error("peer presented no client certificate")]
    MissingClientCert,
    /// The certificate's extended key usage forbids this use.
    #[error("peer certificate is not valid for this purpose (extended key usage)")]
    WrongUsage,
    /// A signature in the chain does not verify.
    #[error("peer certificate chain has a bad signature")]
    BadSignature,
    /// The peer aborted the handshake with this TLS alert (it refused us).
    #[error("peer refused the handshake with TLS alert {0}")]
    RefusedByPeer(String),
    /// The peer does not speak HBONE's TLS (version, suites, ALPN).
    #[error("TLS parameters not acceptable: {0}")]
    Incompatible(String),
    /// Any other TLS failure.
    #[error("TLS error: {0}")]
    Other(String),
}

impl CertRejection {
    /// Names a rustls error.
    pub fn from_rustls(err: &rustls::Error) -> Self {
        match err {
            rustls::Error::InvalidCertificate(ce) => Self::from_certificate_error(ce),
            rustls::Error::NoCertificatesPresented => Self::MissingClientCert,
            rustls::Error::AlertReceived(alert) => Self::RefusedByPeer(alert_name(*alert)),
            rustls::Error::PeerIncompatible(p) => Self::Incompatible(format!("{p:?}")),
            rustls::Error::NoApplicationProtocol => {
                Self::Incompatible("no common ALPN protocol".into())
            }
            other => Self::Other(other.to_string()),
        }
    }

    fn from_certificate_error(ce: &CertificateError) -> Self {
        match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Self::NotYetValid
            }
            CertificateError::UnknownIssuer => Self::UnknownIssuer,
            CertificateError::BadSignature => Self::BadSignature,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Self::WrongUsage
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<CertRejection>() {
                Some(ours) => ours.clone(),
                None => Self::Other(other.to_string()),
            },
            other => Self::Other(format!("{other:?}")),
        }
    }

    /// Maps a webpki chain-validation error onto the rustls error carried in the handshake.
    pub(crate) fn webpki_to_rustls(err: webpki::Error) -> rustls::Error {
        use webpki::Error as W;
        let ce = match err {
            W::CertExpired { .. } => CertificateError::Expired,
            W::CertNotValidYet { .. } => CertificateError::NotValidYet,
            W::UnknownIssuer => CertificateError::UnknownIssuer,
            W::InvalidSignatureForPublicKey
            | W::UnsupportedSignatureAlgorithmContext(_)
            | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                CertificateError::BadSignature
            }
            W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
            W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
            other => CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
                CertRejection::Other(other.to_string()),
            ))),
        };
        rustls::Error::InvalidCertificate(ce)
    }

    /// Wraps this rejection into the rustls error a verifier returns.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(self),
        )))
    }
}

fn alert_name(alert: AlertDescription) -> String {
    format!("{alert:?}")
}
