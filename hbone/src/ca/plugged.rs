//! A CA plugged in from files, in the layout Istio reads from its `cacerts`
//! secret: `ca-cert.pem` + `ca-key.pem` sign, `cert-chain.pem` is the chain
//! from that CA up to the root, `root-cert.pem` is the trust bundle. An
//! operator moving from istiod keeps the same secret and the same root.
//!
//! Loading proves the files fit together before the CA serves anyone: a probe
//! leaf is signed and must verify against `root-cert.pem` through the chain.
//! A key that does not match its certificate, a chain in the wrong order or a
//! root that does not anchor it is refused with the file named.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::{Authority, AuthorityError, CertificateSigner, Validity};
use crate::bundle::TrustBundle;
use crate::pem;
use crate::tls::SpiffeClientVerifier;
use ambit_identity::SpiffeId;

/// The PEM texts of an Istio-style `cacerts` directory.
#[derive(Clone, Debug)]
pub struct PluggedCaFiles {
    /// `ca-cert.pem`: the signing CA's certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: its private key (PKCS#8).
    pub ca_key: String,
    /// `cert-chain.pem`: the signing CA then its issuers; may end with the root.
    /// Absent: `ca-cert.pem` alone.
    pub cert_chain: Option<String>,
    /// `root-cert.pem`: every root workloads trust, published as given.
    pub root_cert: String,
}

/// Why plugged-in CA files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluggedCaError {
    /// A file is not the PEM it should be.
    #[error("{file}: {reason}")]
    File {
        /// Which file (`ca-key.pem`, ...).
        file: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The files do not form a working CA.
    #[error("the CA files do not fit together: {0}")]
    Mismatch(String),
    /// Building the signer failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

fn file_error(file: &'static str, reason: impl ToString) -> PluggedCaError {
    PluggedCaError::File {
        file,
        reason: reason.to_string(),
    }
}

/// The signing key, with a fix named when it is not PKCS#8.
fn signing_key(text: &str) -> Result<KeyPair, PluggedCaError> {
    const FILE: &str = "ca-key.pem";
    let der = pem::private_key(text).map_err(|e| file_error(FILE, e))?;
    let kind = match &der {
        PrivateKeyDer::Pkcs8(_) => None,
        PrivateKeyDer::Pkcs1(_) => Some("a PKCS#1 RSA key (BEGIN RSA PRIVATE KEY)"),
        PrivateKeyDer::Sec1(_) => Some("a SEC1 EC key (BEGIN EC PRIVATE KEY)"),
        _ => Some("a key of an unknown form"),
    };
    if let Some(kind) = kind {
        return Err(file_error(
            FILE,
            format!(
                "{kind}; give it as PKCS#8: `openssl pkcs8 -topk8 -nocrypt -in ca-key.pem -out ca-key.pem.new`"
            ),
        ));
    }
    KeyPair::try_from(&der).map_err(|e| file_error(FILE, e))
}

impl Authority {
    /// A CA from an Istio `cacerts` layout (see the module docs). The trust
    /// bundle is `root-cert.pem` exactly as given; the chain sent after each
    /// leaf is `cert-chain.pem` without the roots it may end with.
    pub fn load_plugged(
        trust_domain: &str,
        files: &PluggedCaFiles,
    ) -> Result<Self, PluggedCaError> {
        let key = signing_key(&files.ca_key)?;
        let ca_der = pem::certificates(&files.ca_cert)
            .map_err(|e| file_error("ca-cert.pem", e))?
            .remove(0);
        let params = CertificateParams::from_ca_cert_der(&ca_der)
            .map_err(|e| file_error("ca-cert.pem", e))?;
        // Only the subject and key-identifier method of this stand-in are
        // used (as the issuer of leaves); it is never sent to anyone.
        let cert = params.self_signed(&key).map_err(AuthorityError::from)?;
        let bundle =
            TrustBundle::from_pem(&files.root_cert).map_err(|e| file_error("root-cert.pem", e))?;
        let chain = match &files.cert_chain {
            Some(text) => pem::certificates(text).map_err(|e| file_error("cert-chain.pem", e))?,
            None => vec![ca_der.clone()],
        };
        let intermediates: Vec<CertificateDer<'static>> = chain
            .into_iter()
            .filter(|c| !bundle.roots().contains(c))
            .collect();
        if intermediates.first().is_some_and(|first| *first != ca_der) {
            return Err(PluggedCaError::Mismatch(
                "cert-chain.pem must start with the certificate in ca-cert.pem".into(),
            ));
        }
        let authority = Authority {
            trust_domain: trust_domain.to_string(),
            key,
            cert,
            der: ca_der,
            intermediates,
            bundle,
        };
        authority.probe()?;
        Ok(authority)
    }

    /// Signs a short-lived leaf and verifies it as a peer would.
    fn probe(&self) -> Result<(), PluggedCaError> {
        let id = SpiffeId::new(&self.trust_domain, "ambit-probe", "probe")
            .map_err(|e| PluggedCaError::Mismatch(e.to_string()))?;
        let req = crate::csr::generate(&id).map_err(|e| PluggedCaError::Mismatch(e.to_string()))?;
        let chain = self
            .sign(
                &req.csr_pem,
                &id,
                Validity::starting_now(Duration::from_secs(300)),
            )
            .map_err(|e| PluggedCaError::Mismatch(format!("signing a probe: {e}")))?;
        let leaf = pem::certificates(&chain.leaf_pem)
            .map_err(|e| PluggedCaError::Mismatch(e.to_string()))?
            .remove(0);
        let verifier = SpiffeClientVerifier::new(self.bundle.clone(), self.trust_domain.clone());
        verifier
            .verify_client_cert(&leaf, &self.intermediates, UnixTime::now())
            .map_err(|e| {
                PluggedCaError::Mismatch(format!(
                    "a certificate signed with ca-key.pem does not verify against root-cert.pem \
                     through cert-chain.pem ({e}); check that ca-key.pem belongs to ca-cert.pem and \
                     that the chain leads to a root in root-cert.pem"
                ))
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::WorkloadCertificate;

    fn valid() -> Validity {
        Validity::starting_now(Duration::from_secs(3600))
    }

    /// root → intermediate, written out as Istio's `cacerts` would hold them.
    fn cacerts() -> (Authority, PluggedCaFiles) {
        let root = Authority::new_root("example.org", "root", valid()).expect("root");
        let inter = root
            .new_intermediate("intermediate", valid())
            .expect("inter");
        let files = PluggedCaFiles {
            ca_cert: inter.certificate_pem(),
            ca_key: inter.key_pem(),
            cert_chain: Some(inter.certificate_pem() + &root.certificate_pem()),
            root_cert: root.certificate_pem(),
        };
        (root, files)
    }

    #[test]
    fn istio_layout_signs_leaves_that_chain_to_the_given_root() {
        let (root, files) = cacerts();
        let ca = Authority::load_plugged("example.org", &files).expect("loads");
        assert_eq!(ca.trust_bundle().to_pem(), root.certificate_pem());
        let id = SpiffeId::new("example.org", "shop", "cart").expect("id");
        let cert = WorkloadCertificate::issue(&ca, &id, valid()).expect("issue");
        assert_eq!(
            cert.certified_key().cert.len(),
            2,
            "leaf + intermediate, the root from cert-chain.pem is not sent"
        );
        // Without cert-chain.pem the CA certificate alone is the chain.
        let alone = PluggedCaFiles {
            cert_chain: None,
            ..files
        };
        Authority::load_plugged("example.org", &alone).expect("loads without cert-chain.pem");
    }

    #[test]
    fn a_loaded_root_publishes_the_certificate_it_was_given() {
        let root = Authority::new_root("example.org", "root", valid()).expect("root");
        let loaded = Authority::load_root("example.org", &root.certificate_pem(), &root.key_pem())
            .expect("loads");
        assert_eq!(loaded.certificate_pem(), root.certificate_pem());
        assert_eq!(loaded.trust_bundle().to_pem(), root.certificate_pem());
        let other = Authority::new_root("example.org", "other", valid()).expect("root");
        assert!(
            Authority::load_root("example.org", &root.certificate_pem(), &other.key_pem()).is_err(),
            "a key that is not the root's is refused"
        );
    }

    #[test]
    fn files_that_do_not_fit_are_refused_with_the_file_named() {
        let (_, files) = cacerts();
        let (_, other) = cacerts();

        let wrong_key = PluggedCaFiles {
            ca_key: other.ca_key.clone(),
            ..files.clone()
        };
        let err = Authority::load_plugged("example.org", &wrong_key).expect_err("key mismatch");
        assert!(matches!(err, PluggedCaError::Mismatch(_)), "{err}");

        let wrong_root = PluggedCaFiles {
            root_cert: other.root_cert.clone(),
            ..files.clone()
        };
        let err = Authority::load_plugged("example.org", &wrong_root).expect_err("root mismatch");
        assert!(err.to_string().contains("root-cert.pem"), "{err}");

        let wrong_order = PluggedCaFiles {
            cert_chain: Some(other.ca_cert.clone() + &files.ca_cert),
            ..files.clone()
        };
        let err = Authority::load_plugged("example.org", &wrong_order).expect_err("order");
        assert!(
            err.to_string().contains("cert-chain.pem must start"),
            "{err}"
        );

        let not_pem = PluggedCaFiles {
            ca_cert: "nothing here".into(),
            ..files.clone()
        };
        let err = Authority::load_plugged("example.org", &not_pem).expect_err("no cert");
        assert!(err.to_string().starts_with("ca-cert.pem:"), "{err}");

        let sec1 = PluggedCaFiles {
            ca_key: pem::encode("EC PRIVATE KEY", b"\x30\x00"),
            ..files
        };
        let err = Authority::load_plugged("example.org", &sec1).expect_err("sec1");
        let text = err.to_string();
        assert!(
            text.starts_with("ca-key.pem:") && text.contains("openssl pkcs8 -topk8"),
            "{text}"
        );
    }
}
