//! The certificate-signing core: one implementation (rcgen) behind a trait.
//!
//! The local cluster calls it in-process; the controller's
//! `IstioCertificateService/CreateCertificate` wraps it. Authorization of the
//! caller (may this node hold that identity?) is the caller's job; the core
//! checks that the CSR asks for exactly the identity it is told to sign, and
//! decides every field of the certificate itself (nothing is copied from the
//! CSR but the public key).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::bundle::{BundleError, TrustBundle};
use crate::pem;
use ambit_identity::SpiffeId;

mod plugged;
pub use plugged::{PluggedCaError, PluggedCaFiles};

/// The validity window of a certificate to be issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: SystemTime,
    /// Last instant the certificate is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from now for `ttl`.
    pub fn starting_now(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now,
            not_after: now + ttl,
        }
    }
}

/// A signed chain in the shape of Istio's `IstioCertificateResponse.cert_chain`.
#[derive(Clone, Debug)]
pub struct CertChain {
    /// The leaf certificate (PEM).
    pub leaf_pem: String,
    /// Intermediates between the leaf and the root, nearest first (PEM each).
    pub intermediates_pem: Vec<String>,
    /// Every trusted root, concatenated (PEM).
    pub roots_pem: String,
}

impl CertChain {
    /// `cert_chain` as the CA API returns it: leaf, intermediates, then the root bundle last.
    pub fn to_cert_chain(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(self.intermediates_pem.len() + 2);
        v.push(self.leaf_pem.clone());
        v.extend(self.intermediates_pem.iter().cloned());
        v.push(self.roots_pem.clone());
        v
    }
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR could not be parsed or its signature does not verify.
    #[error("CSR is not valid: {0}")]
    BadCsr(String),
    /// The CSR asks for some identity other than the one being signed.
    #[error("CSR asks for {in_csr:?}, but the caller may only be issued {requested}")]
    IdentityMismatch {
        /// The identity the caller is authorized for.
        requested: String,
        /// The URI SANs found in the CSR.
        in_csr: Vec<String>,
    },
    /// The identity is outside this CA's trust domain.
    #[error("identity {identity} is not in this CA's trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The identity asked for.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The requested validity is empty or inverted.
    #[error("requested validity is empty: not_after is not after not_before")]
    EmptyValidity,
    /// rcgen failed to build or sign the certificate.
    #[error("signing failed: {0}")]
    Signing(#[from] rcgen::Error),
}

/// Anything that signs workload CSRs. One implementation ([`Authority`]) exists;
/// the trait lets the controller's CA service and the tests hold it abstractly.
pub trait CertificateSigner: Send + Sync {
    /// Signs `csr_pem` for `identity`. The CSR must ask for exactly that identity.
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<CertChain, SignError>;

    /// The roots a workload certified by this signer must trust.
    fn trust_bundle(&self) -> TrustBundle;

    /// The trust domain this signer issues identities in.
    fn trust_domain(&self) -> &str;
}

/// An rcgen-backed certificate authority: a root, or an intermediate below one.
pub struct Authority {
    trust_domain: String,
    key: KeyPair,
    /// The issuer leaves are signed under (subject, key identifier).
    cert: Certificate,
    /// This CA's certificate as it was issued or given: what is published.
    /// (For a loaded CA, `cert` is a stand-in made from it.)
    der: CertificateDer<'static>,
    /// Certificates to send after the leaf: this CA itself when it is an
    /// intermediate, then its own issuers up to (not including) the root.
    intermediates: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.bundle.roots().len())
            .finish_non_exhaustive()
    }
}

/// Why a CA could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// rcgen failed.
    #[error("creating CA certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The resulting root is not a usable trust anchor.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

fn ca_params(common_name: &str, trust_domain: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep the DER INTEGER positive
    bytes[0] |= 0x01; // and its length fixed
    SerialNumber::from_slice(&bytes)
}

impl Authority {
    /// A new self-signed root CA for `trust_domain`, valid for `validity`.
    pub fn new_root(
        trust_domain: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<Self, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(common_name, trust_domain, validity);
        params.use_authority_key_identifier_extension = false;
        let cert = params.self_signed(&key)?;
        let bundle = TrustBundle::new(vec![cert.der().clone()])?;
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            key,
            der: cert.der().clone(),
            cert,
            intermediates: vec![],
            bundle,
        })
    }

    /// A root loaded from its PEM certificate and PKCS#8 key (a controller
    /// restart keeps the mesh root): a plugged-in CA that is its own root.
    /// The bundle holds the certificate exactly as given.
    pub fn load_root(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, PluggedCaError> {
        Self::load_plugged(
            trust_domain,
            &PluggedCaFiles {
                ca_cert: cert_pem.to_string(),
                ca_key: key_pem.to_string(),
                cert_chain: None,
                root_cert: cert_pem.to_string(),
            },
        )
    }

    /// This CA's private key as PKCS#8 PEM (to persist a root it created).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new intermediate CA signed by this one; it chains to the same roots.
    pub fn new_intermediate(
        &self,
        common_name: &str,
        validity: Validity,
    ) -> Result<Self, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(common_name, &self.trust_domain, validity);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let mut intermediates = vec![cert.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ok(Authority {
            trust_domain: self.trust_domain.clone(),
            key,
            der: cert.der().clone(),
            cert,
            intermediates,
            bundle: self.bundle.clone(),
        })
    }

    /// The same CA, publishing `extra` roots beside its own (root rotation with overlap).
    pub fn with_extra_roots(mut self, extra: &TrustBundle) -> Self {
        self.bundle = self.bundle.merged(extra);
        self
    }

    /// This CA's own certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        pem::encode_certificate(&self.der)
    }

    /// A TLS server certificate for the control plane itself (xDS + CA on
    /// 15012), with DNS/IP SANs rather than a SPIFFE id: proxies check it
    /// against the mesh root and the address they dialled (docs/wire.md §3.4).
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<ServerCert, SignError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.cert, &self.key)?;
        let mut chain_pem = pem::encode_certificate(leaf.der());
        for c in &self.intermediates {
            chain_pem.push_str(&pem::encode_certificate(c));
        }
        Ok(ServerCert {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, SignError> {
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| SignError::BadCsr(e.to_string()))
}

fn uri_sans(csr: &CertificateSigningRequestParams) -> Vec<String> {
    csr.params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str().to_string()),
            _ => None,
        })
        .collect()
}

/// The URI SANs a CSR asks for (its signature checked). A CA that learns
/// the caller's identity from the CSR (a node token with no
/// `ImpersonatedIdentity`) reads it here, then authorizes it.
pub fn csr_uri_sans(csr_pem: &str) -> Result<Vec<String>, SignError> {
    parse_csr(csr_pem).map(|csr| uri_sans(&csr))
}

/// A control-plane serving certificate: chain (leaf first) and key, PEM.
#[derive(Clone, Debug)]
pub struct ServerCert {
    /// Leaf then intermediates.
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

impl CertificateSigner for Authority {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<CertChain, SignError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(SignError::WrongTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if validity.not_after <= validity.not_before {
            return Err(SignError::EmptyValidity);
        }
        let csr = parse_csr(csr_pem)?;
        let in_csr = uri_sans(&csr);
        let wanted = identity.to_string();
        if in_csr.len() != 1 || in_csr[0] != wanted {
            return Err(SignError::IdentityMismatch {
                requested: wanted,
                in_csr,
            });
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(wanted.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&csr.public_key, &self.cert, &self.key)?;

        Ok(CertChain {
            leaf_pem: pem::encode_certificate(leaf.der()),
            intermediates_pem: self
                .intermediates
                .iter()
                .map(|c| pem::encode_certificate(c))
                .collect(),
            roots_pem: self.bundle.to_pem(),
        })
    }

    fn trust_bundle(&self) -> TrustBundle {
        self.bundle.clone()
    }

    fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr;

    fn ca() -> Authority {
        Authority::new_root(
            "cluster.local",
            "test root",
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn a_loaded_root_signs_chains_the_original_verifies() {
        let original = ca();
        let loaded = Authority::load_root(
            "cluster.local",
            &original.certificate_pem(),
            &original.key_pem(),
        )
        .unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = crate::WorkloadCertificate::issue(
            &loaded,
            &id,
            Validity::starting_now(Duration::from_secs(60)),
        )
        .unwrap();
        // Verify the leaf against the original root with webpki.
        let anchors = original.trust_bundle();
        let leaf = &cert.certified_key().cert[0];
        let ee = webpki::EndEntityCert::try_from(leaf).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            anchors.anchors(),
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }

    #[test]
    fn signs_only_the_identity_in_the_csr() {
        let ca = ca();
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let b = id("spiffe://cluster.local/ns/b/sa/b");
        let req = csr::generate(&a).unwrap();
        let v = Validity::starting_now(Duration::from_secs(60));
        let chain = ca.sign(&req.csr_pem, &a, v).unwrap();
        assert_eq!(chain.to_cert_chain().len(), 2, "leaf + root");
        let err = ca.sign(&req.csr_pem, &b, v).unwrap_err();
        assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");
        assert!(err.to_string().contains("ns/b/sa/b"));
    }

    #[test]
    fn refuses_other_trust_domain_bad_csr_and_empty_validity() {
        let ca = ca();
        let other = id("spiffe://other.domain/ns/a/sa/a");
        let req = csr::generate(&other).unwrap();
        let v = Validity::starting_now(Duration::from_secs(60));
        assert!(matches!(
            ca.sign(&req.csr_pem, &other, v),
            Err(SignError::WrongTrustDomain { .. })
        ));
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        assert!(matches!(
            ca.sign("garbage", &a, v),
            Err(SignError::BadCsr(_))
        ));
        let req = csr::generate(&a).unwrap();
        let inverted = Validity {
            not_before: v.not_after,
            not_after: v.not_before,
        };
        assert!(matches!(
            ca.sign(&req.csr_pem, &a, inverted),
            Err(SignError::EmptyValidity)
        ));
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = ca();
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let req = csr::generate(&a).unwrap();
        let (_, mut parsed) = x509_parser::pem::parse_x509_pem(req.csr_pem.as_bytes()).unwrap();
        // Flip a bit inside the signature at the end of the CSR.
        let last = parsed.contents.len() - 3;
        parsed.contents[last] ^= 0x01;
        let tampered = pem::encode("CERTIFICATE REQUEST", &parsed.contents);
        let v = Validity::starting_now(Duration::from_secs(60));
        assert!(matches!(
            ca.sign(&tampered, &a, v),
            Err(SignError::BadCsr(_))
        ));
    }

    #[test]
    fn intermediate_chain_lists_intermediate_and_root_bundle_last() {
        let root = ca();
        let inter = root
            .new_intermediate("inter", Validity::starting_now(Duration::from_secs(3600)))
            .unwrap();
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let req = csr::generate(&a).unwrap();
        let chain = inter
            .sign(
                &req.csr_pem,
                &a,
                Validity::starting_now(Duration::from_secs(60)),
            )
            .unwrap();
        let v = chain.to_cert_chain();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1], inter.certificate_pem());
        assert_eq!(v[2], root.certificate_pem());
    }
}
