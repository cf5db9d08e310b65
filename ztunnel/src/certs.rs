//! Certificates for the identities of a node's pods, issued on demand by a
//! signer and shared by every pod with the same identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_hbone::ca::{CertificateSigner, Validity};
use ambit_hbone::cert::CertError;
use ambit_hbone::{SpiffeId, WorkloadCertificate};

/// Issues and caches workload certificates.
pub struct CertManager {
    signer: Arc<dyn CertificateSigner>,
    ttl: Duration,
    certs: Mutex<HashMap<SpiffeId, WorkloadCertificate>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Issues through `signer` with lifetime `ttl`.
    pub fn new(signer: Arc<dyn CertificateSigner>, ttl: Duration) -> Self {
        CertManager {
            signer,
            ttl,
            certs: Mutex::default(),
        }
    }

    /// The certificate for `id`, issuing one if there is none or it is due for
    /// renewal (past half its life).
    pub fn get(&self, id: &SpiffeId) -> Result<WorkloadCertificate, CertError> {
        if let Ok(certs) = self.certs.lock()
            && let Some(c) = certs.get(id)
            && std::time::SystemTime::now() < c.refresh_at()
        {
            return Ok(c.clone());
        }
        let cert =
            WorkloadCertificate::issue(self.signer.as_ref(), id, Validity::starting_now(self.ttl))?;
        if let Ok(mut certs) = self.certs.lock() {
            certs.insert(id.clone(), cert.clone());
        }
        Ok(cert)
    }

    /// Certificates currently held (for `/config_dump`).
    pub fn snapshot(&self) -> Vec<WorkloadCertificate> {
        self.certs
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}
