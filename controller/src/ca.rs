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

/// A signer whose root can be replaced without a moment where two workloads
/// stop trusting each other. Rotation has three steps, each safe on its own:
///
/// 1. [`stage_root`](Self::stage_root): a new root joins the trust bundle
///    sent with every certificate; the old root still signs. As workloads
///    renew (at half-life) they all learn to trust the new root.
/// 2. [`activate_staged`](Self::activate_staged): the new root signs. Peers
///    holding old certificates are still trusted: the old root stays in the
///    bundle.
/// 3. [`retire_old_roots`](Self::retire_old_roots): once the old certificates
///    have expired, the bundle shrinks to the active root.
pub struct RotatingAuthority {
    trust_domain: String,
    state: RwLock<RootState>,
}

struct RootState {
    signing: Arc<Authority>,
    bundle: TrustBundle,
    staged: Option<Arc<Authority>>,
}

impl std::fmt::Debug for RotatingAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingAuthority").finish_non_exhaustive()
    }
}

impl RotatingAuthority {
    /// Starts with `authority` signing and trusted.
    pub fn new(authority: Authority) -> Self {
        RotatingAuthority {
            trust_domain: authority.trust_domain().to_string(),
            state: RwLock::new(RootState {
                bundle: authority.trust_bundle(),
                signing: Arc::new(authority),
                staged: None,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&RootState) -> T) -> T {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }

    fn with_mut<T>(&self, f: impl FnOnce(&mut RootState) -> T) -> T {
        match self.state.write() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Step 1: creates a new root and adds it to the bundle.
    pub fn stage_root(&self, common_name: &str, validity: Validity) -> Result<(), AuthorityError> {
        let new = Authority::new_root(&self.trust_domain, common_name, validity)?;
        self.with_mut(|s| {
            s.bundle = s.bundle.merged(&new.trust_bundle());
            s.staged = Some(Arc::new(new));
        });
        info!("CA: new root staged (trusted, not yet signing)");
        Ok(())
    }

    /// Step 2: the staged root signs from now on. False if none is staged.
    pub fn activate_staged(&self) -> bool {
        let done = self.with_mut(|s| match s.staged.take() {
            Some(new) => {
                s.signing = new;
                true
            }
            None => false,
        });
        if done {
            info!("CA: staged root now signs; previous root stays trusted");
        }
        done
    }

    /// Step 3: trust only the signing root (and a staged one, if any).
    pub fn retire_old_roots(&self) {
        self.with_mut(|s| {
            let mut b = s.signing.trust_bundle();
            if let Some(st) = &s.staged {
                b = b.merged(&st.trust_bundle());
            }
            s.bundle = b;
        });
        info!("CA: previous roots retired from the bundle");
    }

    /// The authority that signs now.
    pub fn authority(&self) -> Arc<Authority> {
        self.with(|s| s.signing.clone())
    }
}

impl CertificateSigner for RotatingAuthority {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<CertChain, SignError> {
        let (signing, bundle) = self.with(|s| (s.signing.clone(), s.bundle.clone()));
        let mut chain = signing.sign(csr_pem, identity, validity)?;
        chain.roots_pem = bundle.to_pem();
        Ok(chain)
    }

    fn trust_bundle(&self) -> TrustBundle {
        self.with(|s| s.bundle.clone())
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
