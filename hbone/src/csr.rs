//! Key and certificate-signing-request generation, shaped like Istio's ztunnel:
//! an ECDSA P-256 key, a CSR signed with SHA-256, the SPIFFE id as the only
//! (URI) SAN and an empty subject.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use ambit_identity::SpiffeId;

/// A freshly generated private key with the CSR that asks for a certificate for it.
pub struct CsrAndKey {
    /// The CSR in PEM form, ready for `IstioCertificateRequest.csr`.
    pub csr_pem: String,
    /// The private key in PKCS#8 PEM form. It never leaves the process that made it.
    pub key_pem: String,
}

impl std::fmt::Debug for CsrAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrAndKey")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why a CSR could not be produced.
#[derive(Debug, thiserror::Error)]
#[error("generating a CSR for {identity}: {source}")]
pub struct CsrError {
    identity: String,
    #[source]
    source: rcgen::Error,
}

/// Generates a P-256 key and a CSR for `identity`.
pub fn generate(identity: &SpiffeId) -> Result<CsrAndKey, CsrError> {
    let wrap = |source| CsrError {
        identity: identity.to_string(),
        source,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(wrap)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(wrap)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(wrap)?;
    Ok(CsrAndKey {
        csr_pem: csr.pem().map_err(wrap)?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn csr_has_p256_key_uri_san_and_empty_subject() {
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let out = generate(&id).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(out.csr_pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0, "subject must be empty");
        assert_eq!(
            csr.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
        );
        let mut uris = vec![];
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push(u.to_string());
                    }
                }
            }
        }
        assert_eq!(uris, vec![id.to_string()]);
        assert!(out.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{out:?}").contains("BEGIN PRIVATE KEY"));
    }
}
