//! A test PKI: roots, intermediates and workload certificates with chosen validity.

use std::time::{Duration, SystemTime};

use ambit_hbone::ca::{Authority, Validity};
use ambit_hbone::{SpiffeId, WorkloadCertificate};

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
