//! The CA: `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (istio-wire §3.3) over the signing core of `ambit-hbone`. A caller is
//! authenticated as a node, and may only be issued identities of mesh pods
//! the current model places on that node (shared mode: the identity comes
//! from `ImpersonatedIdentity`). The response is leaf, intermediates, root
//! bundle last. Roots rotate with overlap ([`RotatingAuthority`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_api::ca::{IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService};
use ambit_hbone::SpiffeId;
use ambit_hbone::bundle::TrustBundle;
use ambit_hbone::ca::{
    Authority, AuthorityError, CertChain, CertificateSigner, SignError, Validity,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::NodeAuthenticator;
use crate::model::Snapshot;

/// Longest lifetime the CA grants (Istio's default max is 90 days; the
/// default request is 24 h).
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// A signer whose root can be replaced while the old one stays trusted.
pub struct RotatingAuthority {
    trust_domain: String,
    current: RwLock<Arc<Authority>>,
}

impl std::fmt::Debug for RotatingAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingAuthority").finish_non_exhaustive()
    }
}

impl RotatingAuthority {
    /// Starts with `authority`.
    pub fn new(authority: Authority) -> Self {
        RotatingAuthority {
            trust_domain: authority.trust_domain().to_string(),
            current: RwLock::new(Arc::new(authority)),
        }
    }

    fn get(&self) -> Arc<Authority> {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Rotates to a fresh root valid for `validity`. New certificates chain to
    /// it; the bundle sent with them holds the new and the previous roots, so
    /// peers holding either kind of certificate keep trusting each other
    /// until the old ones expire.
    pub fn rotate_root(&self, common_name: &str, validity: Validity) -> Result<(), AuthorityError> {
        let old = self.get();
        let new = Authority::new_root(&self.trust_domain, common_name, validity)?
            .with_extra_roots(&old.trust_bundle());
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(new),
            Err(p) => *p.into_inner() = Arc::new(new),
        }
        info!("CA root rotated; previous root kept in the trust bundle");
        Ok(())
    }

    /// The current issuing authority (for the control plane's own serving cert).
    pub fn authority(&self) -> Arc<Authority> {
        self.get()
    }
}

impl CertificateSigner for RotatingAuthority {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<CertChain, SignError> {
        self.get().sign(csr_pem, identity, validity)
    }

    fn trust_bundle(&self) -> TrustBundle {
        self.get().trust_bundle()
    }

    fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

/// The gRPC service.
pub struct CaService {
    signer: Arc<dyn CertificateSigner>,
    auth: Arc<dyn NodeAuthenticator>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl CaService {
    /// Signs with `signer` for callers `auth` accepts, checking identities
    /// against the latest snapshot.
    pub fn new(
        signer: Arc<dyn CertificateSigner>,
        auth: Arc<dyn NodeAuthenticator>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        CaService {
            signer,
            auth,
            snapshots,
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.auth.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let wanted = req.impersonated_identity().ok_or_else(|| {
            Status::invalid_argument(
                "metadata.ImpersonatedIdentity is required: a node proxy asks on behalf of a pod",
            )
        })?;
        let identity: SpiffeId = wanted.parse().map_err(|e| {
            Status::invalid_argument(format!("ImpersonatedIdentity {wanted:?}: {e}"))
        })?;
        let allowed = self.snapshots.borrow().node_may_hold(&caller.node, wanted);
        if !allowed {
            warn!(node = %caller.node, %identity, "CSR refused: no pod with that identity on the caller's node");
            return Err(Status::permission_denied(format!(
                "node {:?} runs no mesh pod with identity {identity}",
                caller.node
            )));
        }
        let ttl = Duration::from_secs(u64::try_from(req.validity_duration).unwrap_or(0));
        let ttl = if ttl.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            ttl.min(MAX_TTL)
        };
        let chain = self
            .signer
            .sign(&req.csr, &identity, Validity::starting_now(ttl))
            .map_err(|e| match e {
                SignError::Signing(_) => Status::internal(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            })?;
        info!(node = %caller.node, %identity, ttl_s = ttl.as_secs(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.to_cert_chain(),
        }))
    }
}
