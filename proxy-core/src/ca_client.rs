//! Certificates from the controller's CA (docs/wire.md §3.3): a P-256 key and
//! CSR made here, `ImpersonatedIdentity` naming the pod's identity (shared
//! mode), and the answer checked to be for that identity with a root. Calls
//! run on a small runtime of their own so callers may block on them from
//! any thread.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use ambit_api::ca::{IstioCertificateRequest, IstioCertificateServiceClient};
use ambit_hbone::{WorkloadCertificate, csr};
use ambit_identity::SpiffeId;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::certs::{CertificateProvider, FetchError};
use crate::control::{ControlPlane, ControlPlaneError, CredentialInterceptor};

type Reply = std_mpsc::SyncSender<Result<WorkloadCertificate, FetchError>>;

/// A CA client usable from blocking code.
pub struct CaClient {
    requests: std::sync::Mutex<std_mpsc::Sender<(SpiffeId, Duration, Reply)>>,
}

/// Whose certificates a client asks for (docs/wire.md §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaMode {
    /// A node proxy asking on behalf of the pods on its node
    /// (`ImpersonatedIdentity`).
    Shared,
    /// A proxy asking for its own identity (no metadata): a waypoint, a
    /// dedicated-mode proxy.
    Dedicated,
}

impl CaClient {
    /// Connects (lazily) to `cp`, in shared mode.
    pub fn new(cp: &ControlPlane) -> Result<Self, ControlPlaneError> {
        Self::with_mode(cp, CaMode::Shared)
    }

    /// Connects (lazily) to `cp`, asking as `mode` says.
    pub fn with_mode(cp: &ControlPlane, mode: CaMode) -> Result<Self, ControlPlaneError> {
        let (tx, rx) = std_mpsc::channel::<(SpiffeId, Duration, Reply)>();
        let cp = cp.clone();
        // Build the channel inside the worker's runtime (tonic needs one).
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("ca-client".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let client = rt.block_on(async {
                    cp.channel().map(|ch| {
                        IstioCertificateServiceClient::with_interceptor(ch, cp.interceptor())
                    })
                });
                let mut client = match client {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while let Ok((id, ttl, reply)) = rx.recv() {
                    let result = rt.block_on(fetch(&mut client, &id, ttl, mode));
                    let _ = reply.send(result);
                }
            });
        if let Err(e) = spawned {
            return Err(ControlPlaneError::Client(format!("ca-client thread: {e}")));
        }
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ControlPlaneError::Client(e)),
            Err(_) => return Err(ControlPlaneError::Client("ca-client thread ended".into())),
        }
        Ok(CaClient {
            requests: std::sync::Mutex::new(tx),
        })
    }
}

async fn fetch(
    client: &mut IstioCertificateServiceClient<InterceptedService<Channel, CredentialInterceptor>>,
    id: &SpiffeId,
    ttl: Duration,
    mode: CaMode,
) -> Result<WorkloadCertificate, FetchError> {
    let req = csr::generate(id).map_err(ambit_hbone::cert::CertError::from)?;
    let mut msg = IstioCertificateRequest {
        csr: req.csr_pem.clone(),
        validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    };
    if mode == CaMode::Shared {
        msg = msg.with_impersonated_identity(&id.to_string());
    }
    let call = client.create_certificate(msg);
    let resp = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| FetchError::Ca("CreateCertificate timed out after 10 s".into()))?
        .map_err(|s| FetchError::Ca(format!("{:?}: {}", s.code(), s.message())))?;
    Ok(WorkloadCertificate::from_cert_chain(
        id,
        &req.key_pem,
        &resp.into_inner().cert_chain,
    )?)
}

impl CertificateProvider for CaClient {
    fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCertificate, FetchError> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.requests
            .lock()
            .map_err(|_| FetchError::Ca("CA client poisoned".into()))?
            .send((id.clone(), ttl, reply))
            .map_err(|_| FetchError::Ca("CA client stopped".into()))?;
        answer
            .recv()
            .map_err(|_| FetchError::Ca("CA client stopped".into()))?
    }
}
