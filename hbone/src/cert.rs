//! A workload's certificate: leaf + intermediates + private key + the roots it trusts,
//! ready to be turned into rustls configs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::bundle::{BundleError, TrustBundle};
use crate::ca::{CertificateSigner, SignError, Validity};
use crate::csr::{self, CsrError};
use crate::pem::{self, PemError};
use crate::tls::provider;
use ambit_identity::SpiffeId;

/// A certificate a workload presents, with the trust it was issued under.
#[derive(Clone)]
pub struct WorkloadCertificate {
    identity: SpiffeId,
    certified: Arc<CertifiedKey>,
    roots: TrustBundle,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("chain_len", &self.certified.cert.len())
            .field("roots", &self.roots.roots().len())
            .finish()
    }
}

/// Why a certificate could not be loaded or issued.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// PEM text unreadable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The CA answered with fewer than two entries (leaf + root bundle).
    #[error("certificate chain has {0} entries: no root certificate present")]
    NoRoot(usize),
    /// The leaf does not parse as X.509.
    #[error("leaf certificate does not parse: {0}")]
    BadLeaf(String),
    /// The leaf names another identity than the one asked for.
    #[error("leaf certificate is for {got:?}, expected {expected}")]
    WrongIdentity {
        /// What was asked for.
        expected: String,
        /// The first SPIFFE URI SAN in the leaf, if any.
        got: Option<String>,
    },
    /// The private key is not usable by the crypto provider.
    #[error("private key: {0}")]
    Key(String),
    /// The roots are unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Generating the key/CSR failed.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The signer refused.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Facts read from a leaf certificate.
pub(crate) struct LeafFacts {
    pub(crate) uri_sans: Vec<String>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) serial: String,
}

pub(crate) fn leaf_facts(der: &[u8]) -> Result<LeafFacts, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut uri_sans = vec![];
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uri_sans.push((*u).to_string());
            }
        }
    }
    let to_system = |t: ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(LeafFacts {
        uri_sans,
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
        serial: cert.raw_serial_as_string(),
    })
}

/// The first URI SAN that parses as a SPIFFE id: the identity Istio uses for a peer.
pub fn first_spiffe_id(uri_sans: &[String]) -> Option<SpiffeId> {
    uri_sans.iter().find_map(|u| u.parse().ok())
}

impl WorkloadCertificate {
    /// Loads a certificate from a CA response (`cert_chain`: leaf, intermediates,
    /// root bundle last) and the private key that the CSR was made with.
    /// Refuses a leaf for another identity than `expected`, as ztunnel does.
    pub fn from_cert_chain(
        expected: &SpiffeId,
        key_pem: &str,
        cert_chain: &[String],
    ) -> Result<Self, CertError> {
        if cert_chain.len() < 2 {
            return Err(CertError::NoRoot(cert_chain.len()));
        }
        let (roots_pem, presented) = cert_chain.split_last().ok_or(CertError::NoRoot(0))?;
        let mut chain = Vec::with_capacity(presented.len());
        for p in presented {
            chain.extend(pem::certificates(p)?);
        }
        let roots = TrustBundle::from_pem(roots_pem)?;
        Self::from_parts(expected, &pem::private_key(key_pem)?, chain, roots)
    }

    /// Builds from DER parts: `chain` is leaf first then intermediates (no root).
    pub fn from_parts(
        expected: &SpiffeId,
        key: &rustls_pki_types::PrivateKeyDer<'_>,
        chain: Vec<CertificateDer<'static>>,
        roots: TrustBundle,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::NoRoot(0))?;
        let facts = leaf_facts(leaf).map_err(CertError::BadLeaf)?;
        let got = first_spiffe_id(&facts.uri_sans);
        if got.as_ref() != Some(expected) {
            return Err(CertError::WrongIdentity {
                expected: expected.to_string(),
                got: got.map(|g| g.to_string()),
            });
        }
        let signing_key = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| CertError::Key(e.to_string()))?;
        Ok(WorkloadCertificate {
            identity: expected.clone(),
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
            roots,
            not_before: facts.not_before,
            not_after: facts.not_after,
            serial: facts.serial,
        })
    }

    /// Generates a key and CSR for `identity` and has `signer` sign it: what a
    /// ztunnel does against the CA, done in-process.
    pub fn issue(
        signer: &dyn CertificateSigner,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<Self, CertError> {
        let req = csr::generate(identity)?;
        let chain = signer.sign(&req.csr_pem, identity, validity)?;
        Self::from_cert_chain(identity, &req.key_pem, &chain.to_cert_chain())
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Leaf + intermediates + key, as rustls presents them. Never includes a root.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The roots this workload trusts for its peers.
    pub fn roots(&self) -> &TrustBundle {
        &self.roots
    }

    /// The same certificate, trusting `roots` for its peers instead (used while a
    /// root is rotated and the bundle grows or shrinks).
    pub fn with_roots(&self, roots: TrustBundle) -> Self {
        WorkloadCertificate {
            roots,
            ..self.clone()
        }
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's serial number, hex with colons as `openssl x509` prints it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When to renew: half way through the lifetime, as Istio's ztunnel does.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;

    #[test]
    fn issue_and_reload() {
        let ca = Authority::new_root(
            "cluster.local",
            "root",
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let cert =
            WorkloadCertificate::issue(&ca, &id, Validity::starting_now(Duration::from_secs(100)))
                .unwrap();
        assert_eq!(cert.identity(), &id);
        assert_eq!(
            cert.certified_key().cert.len(),
            1,
            "leaf only, never the root"
        );
        assert!(cert.refresh_at() > cert.not_before() && cert.refresh_at() < cert.not_after());
        assert!(!cert.serial().is_empty());
    }

    #[test]
    fn one_entry_chain_has_no_root() {
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let err = WorkloadCertificate::from_cert_chain(&id, "", &["x".into()]).unwrap_err();
        assert!(err.to_string().contains("no root certificate present"));
    }

    #[test]
    fn leaf_for_other_identity_is_refused() {
        let ca = Authority::new_root(
            "cluster.local",
            "root",
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .unwrap();
        let a: SpiffeId = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let b: SpiffeId = "spiffe://cluster.local/ns/b/sa/b".parse().unwrap();
        let req = csr::generate(&a).unwrap();
        let chain = ca
            .sign(
                &req.csr_pem,
                &a,
                Validity::starting_now(Duration::from_secs(60)),
            )
            .unwrap();
        let err = WorkloadCertificate::from_cert_chain(&b, &req.key_pem, &chain.to_cert_chain())
            .unwrap_err();
        assert!(matches!(err, CertError::WrongIdentity { .. }), "{err}");
    }
}
