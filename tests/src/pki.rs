//! A test PKI: roots, intermediates and workload certificates with chosen validity.

use std::time::{Duration, SystemTime};

use ambit_hbone::WorkloadCertificate;
use ambit_hbone::ca::{Authority, CertificateSigner, Validity};
use ambit_identity::SpiffeId;

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).expect("test identity")
}

/// Valid from a minute ago for an hour.
pub fn valid() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(60),
        not_after: now + Duration::from_secs(3600),
    }
}

/// Expired an hour ago.
pub fn expired() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
    }
}

/// Valid from an hour from now.
pub fn not_yet_valid() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now + Duration::from_secs(3600),
        not_after: now + Duration::from_secs(7200),
    }
}

/// A new root CA for `trust_domain`.
pub fn root(trust_domain: &str, name: &str) -> Authority {
    Authority::new_root(
        trust_domain,
        name,
        Validity::starting_now(Duration::from_secs(86400)),
    )
    .expect("root CA")
}

/// Issues a certificate for `identity` from `ca` with `validity`.
pub fn issue(ca: &Authority, identity: &SpiffeId, validity: Validity) -> WorkloadCertificate {
    WorkloadCertificate::issue(ca, identity, validity).expect("issue certificate")
}

/// A certificate as files for an external peer (Envoy): chain PEM (leaf +
/// intermediates), key PEM, and the root bundle PEM.
#[derive(Clone, Debug)]
pub struct PemIdentity {
    /// Leaf followed by intermediates.
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
    /// Trusted roots.
    pub roots_pem: String,
}

/// Issues `identity` from `ca` the way a ztunnel would (key + CSR + sign), as PEM.
pub fn issue_pem(ca: &Authority, identity: &SpiffeId) -> PemIdentity {
    use ambit_hbone::ca::CertificateSigner;
    let req = ambit_hbone::csr::generate(identity).expect("csr");
    let chain = ca.sign(&req.csr_pem, identity, valid()).expect("sign");
    let mut chain_pem = chain.leaf_pem.clone();
    for i in &chain.intermediates_pem {
        chain_pem.push_str(i);
    }
    PemIdentity {
        chain_pem,
        key_pem: req.key_pem,
        roots_pem: chain.roots_pem,
    }
}

/// Issues `identity` through any signer (key + CSR + sign), valid for a day.
pub fn issue_with(ca: &dyn CertificateSigner, identity: &SpiffeId) -> WorkloadCertificate {
    WorkloadCertificate::issue(ca, identity, valid()).expect("issue")
}
