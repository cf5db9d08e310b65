//! Certificates for the identities of a node's pods: issued by a
//! [`CertificateProvider`] (the controller's CA over gRPC, or an in-process
//! signer), shared by every pod with the same identity, and renewed in the
//! background at half their life (docs/wire.md §3.2) so the data path never
//! waits for the CA. A failed renewal keeps the old certificate until it
//! expires and is retried on the next tick.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use ambit_hbone::WorkloadCertificate;
use ambit_hbone::ca::{CertificateSigner, Validity};
use ambit_hbone::cert::CertError;
use ambit_hbone::server::ServerTlsSource;
use ambit_identity::SpiffeId;
use rustls::ServerConfig;
use tracing::{info, warn};

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Key, CSR or chain handling failed locally.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The CA refused or could not be reached.
    #[error("CA: {0}")]
    Ca(String),
}

/// Something that issues a certificate for an identity. May block: it is
/// called from the enrolment thread and the renewal thread, never from a
/// connection handler while a valid certificate exists.
pub trait CertificateProvider: Send + Sync + 'static {
    /// A fresh certificate for `id`, valid for about `ttl`.
    fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCertificate, FetchError>;
}

/// Issues with an in-process signer (tests, `FAKE_CA`).
pub struct LocalSigner(pub Arc<dyn CertificateSigner>);

impl CertificateProvider for LocalSigner {
    fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCertificate, FetchError> {
        Ok(WorkloadCertificate::issue(
            self.0.as_ref(),
            id,
            Validity::starting_now(ttl),
        )?)
    }
}

struct Entry {
    cert: WorkloadCertificate,
    tls: Arc<ServerConfig>,
}

/// Issues, caches and renews workload certificates.
pub struct CertManager {
    provider: Arc<dyn CertificateProvider>,
    ttl: Duration,
    certs: Mutex<HashMap<SpiffeId, Entry>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Issues through `provider` with lifetime `ttl`, and starts the renewal
    /// thread (it ends when the manager is dropped).
    pub fn new(provider: Arc<dyn CertificateProvider>, ttl: Duration) -> Arc<Self> {
        let m = Arc::new(CertManager {
            provider,
            ttl,
            certs: Mutex::default(),
        });
        let weak = Arc::downgrade(&m);
        let _ = std::thread::Builder::new()
            .name("cert-renewal".into())
            .spawn(move || renewal_loop(weak));
        m
    }

    fn insert(&self, cert: WorkloadCertificate) -> WorkloadCertificate {
        let tls = ambit_hbone::tls::server_config(&cert);
        if let Ok(mut certs) = self.certs.lock() {
            certs.insert(
                cert.identity().clone(),
                Entry {
                    cert: cert.clone(),
                    tls,
                },
            );
        }
        cert
    }

    /// The certificate for `id`: the cached one while it is valid (renewal
    /// happens in the background), else a freshly issued one.
    pub fn get(&self, id: &SpiffeId) -> Result<WorkloadCertificate, FetchError> {
        if let Ok(certs) = self.certs.lock()
            && let Some(e) = certs.get(id)
            && SystemTime::now() < e.cert.not_after()
        {
            return Ok(e.cert.clone());
        }
        let cert = self.provider.issue(id, self.ttl)?;
        info!(identity = %id, serial = cert.serial(), "certificate issued");
        Ok(self.insert(cert))
    }

    /// The TLS server config presenting `id`'s current certificate.
    pub fn server_config(&self, id: &SpiffeId) -> Option<Arc<ServerConfig>> {
        self.certs.lock().ok()?.get(id).map(|e| e.tls.clone())
    }

    /// Renews every certificate past its refresh time; returns how many were
    /// renewed. Failures keep the old certificate.
    pub fn renew_due(&self) -> usize {
        let now = SystemTime::now();
        let due: Vec<SpiffeId> = match self.certs.lock() {
            Ok(c) => c
                .iter()
                .filter(|(_, e)| now >= e.cert.refresh_at())
                .map(|(id, _)| id.clone())
                .collect(),
            Err(_) => return 0,
        };
        let mut renewed = 0;
        for id in due {
            match self.provider.issue(&id, self.ttl) {
                Ok(cert) => {
                    info!(identity = %id, serial = cert.serial(), "certificate renewed");
                    self.insert(cert);
                    renewed += 1;
                }
                Err(e) => {
                    warn!(identity = %id, error = %e, "certificate renewal failed; keeping the current one")
                }
            }
        }
        renewed
    }

    /// Certificates currently held (for `/config_dump`).
    pub fn snapshot(&self) -> Vec<WorkloadCertificate> {
        self.certs
            .lock()
            .map(|c| c.values().map(|e| e.cert.clone()).collect())
            .unwrap_or_default()
    }
}

fn renewal_loop(manager: Weak<CertManager>) {
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let Some(m) = manager.upgrade() else { return };
        m.renew_due();
    }
}

/// Presents one identity's current certificate on a pod's HBONE listener;
/// follows renewals, so new handshakes get the new certificate while
/// established connections keep theirs.
pub struct PodServerTls {
    certs: Arc<CertManager>,
    identity: SpiffeId,
}

impl PodServerTls {
    /// Serves `identity` from `certs`.
    pub fn new(certs: Arc<CertManager>, identity: SpiffeId) -> Self {
        PodServerTls { certs, identity }
    }
}

impl ServerTlsSource for PodServerTls {
    fn server_config(&self, _local_addr: SocketAddr) -> Option<Arc<ServerConfig>> {
        self.certs.server_config(&self.identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_hbone::ca::Authority;

    #[test]
    fn renews_at_half_life_and_keeps_serving() {
        let ca: Arc<dyn CertificateSigner> = Arc::new(
            Authority::new_root(
                "cluster.local",
                "t",
                Validity::starting_now(Duration::from_secs(3600)),
            )
            .unwrap(),
        );
        let m = CertManager::new(Arc::new(LocalSigner(ca)), Duration::from_secs(2));
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let first = m.get(&id).unwrap();
        assert_eq!(m.get(&id).unwrap().serial(), first.serial(), "cached");
        assert!(m.server_config(&id).is_some());
        std::thread::sleep(Duration::from_millis(1600));
        let now = m.get(&id).unwrap();
        assert_ne!(now.serial(), first.serial(), "renewed in the background");
    }
}
