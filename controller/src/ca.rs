//! The CA: `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (docs/wire.md §3.3) over the signing core of `ambit-hbone`. As in istiod, a
//! node proxy may ask on behalf of the mesh pods the current model places on
//! its node (shared mode, `ImpersonatedIdentity`); any other caller is issued
//! its own identity only (dedicated mode). The response is leaf,
//! intermediates, root bundle last. Roots rotate with overlap
//! ([`RotatingAuthority`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_api::ca::{IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService};
use ambit_hbone::bundle::TrustBundle;
use ambit_hbone::ca::{
    Authority, AuthorityError, CertChain, CertificateSigner, SignError, Validity, csr_uri_sans,
};
use ambit_identity::SpiffeId;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::{Caller, NodeAuthenticator};
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

impl CaService {
    /// The one identity `caller` may be issued, as istiod decides it:
    /// `ImpersonatedIdentity` when a node proxy asks for a pod on its node;
    /// without it, the caller's own identity: its service account's, or, for
    /// a node credential that names no account (a local bootstrap token),
    /// the identity its CSR asks for if a pod on that node holds it.
    fn identity_for(
        &self,
        caller: &Caller,
        req: &IstioCertificateRequest,
    ) -> Result<SpiffeId, Status> {
        let td = self.signer.trust_domain();
        let (identity, node) = match (req.impersonated_identity(), caller) {
            (
                Some(wanted),
                Caller {
                    node: Some(node), ..
                },
            ) => {
                let identity: SpiffeId = wanted.parse().map_err(|e| {
                    Status::invalid_argument(format!("ImpersonatedIdentity {wanted:?}: {e}"))
                })?;
                (identity, node)
            }
            (Some(_), _) => {
                warn!(%caller, "CSR refused: impersonation by a caller that is not a node proxy");
                return Err(Status::permission_denied(format!(
                    "{caller} may not ask on behalf of others: ImpersonatedIdentity is for node proxies"
                )));
            }
            (
                None,
                Caller {
                    service_account: Some(sa),
                    ..
                },
            ) => {
                return SpiffeId::new(td, &sa.namespace, &sa.name)
                    .map_err(|e| Status::invalid_argument(e.to_string()));
            }
            (
                None,
                Caller {
                    node: Some(node),
                    service_account: None,
                },
            ) => {
                let sans =
                    csr_uri_sans(&req.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let [san] = sans.as_slice() else {
                    return Err(Status::invalid_argument(format!(
                        "without ImpersonatedIdentity the CSR must name exactly one identity, it names {sans:?}"
                    )));
                };
                let identity: SpiffeId = san
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("CSR SAN {san:?}: {e}")))?;
                (identity, node)
            }
            (
                None,
                Caller {
                    node: None,
                    service_account: None,
                },
            ) => {
                return Err(Status::permission_denied(format!(
                    "{caller} has no identity to be issued"
                )));
            }
        };
        if !self
            .snapshots
            .borrow()
            .node_may_hold(node, &identity.to_string())
        {
            warn!(%node, %identity, "CSR refused: no pod with that identity on the caller's node");
            return Err(Status::permission_denied(format!(
                "node {node:?} runs no mesh pod with identity {identity}"
            )));
        }
        Ok(identity)
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
        let identity = self.identity_for(&caller, &req)?;
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
        info!(%caller, %identity, ttl_s = ttl.as_secs(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.to_cert_chain(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use ambit_hbone::{WorkloadCertificate, csr};
    use tonic::metadata::MetadataMap;

    use super::*;
    use crate::auth::{ServiceAccount, bearer_token};

    /// Callers by token: `node1` (a bootstrap token: a node, no account),
    /// `ztunnel` (the node account on node1), `web` (workload shop/web).
    struct Fixed;

    #[tonic::async_trait]
    impl NodeAuthenticator for Fixed {
        async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
            let sa = |ns: &str, name: &str| {
                Some(ServiceAccount {
                    namespace: ns.into(),
                    name: name.into(),
                })
            };
            match bearer_token(metadata)? {
                "node1" => Ok(Caller {
                    node: Some("node1".into()),
                    service_account: None,
                }),
                "ztunnel" => Ok(Caller {
                    node: Some("node1".into()),
                    service_account: sa("istio-system", "ztunnel"),
                }),
                "web" => Ok(Caller {
                    node: None,
                    service_account: sa("shop", "web"),
                }),
                _ => Err(Status::unauthenticated("unknown")),
            }
        }
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).expect("id")
    }

    fn service() -> CaService {
        let root = Authority::new_root(
            "cluster.local",
            "root",
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .expect("root");
        let mut by_node: HashMap<String, HashSet<String>> = HashMap::new();
        by_node
            .entry("node1".into())
            .or_default()
            .insert(id("shop", "cart").to_string());
        by_node
            .entry("node2".into())
            .or_default()
            .insert(id("shop", "payments").to_string());
        let snapshot = Snapshot {
            identities_by_node: by_node,
            ..Default::default()
        };
        let (_tx, rx) = watch::channel(Arc::new(snapshot));
        CaService::new(Arc::new(root), Arc::new(Fixed), rx)
    }

    /// Asks as `token` with a CSR for `csr_for`, impersonating `impersonate`.
    async fn ask(
        token: &str,
        csr_for: &SpiffeId,
        impersonate: Option<&str>,
    ) -> Result<SpiffeId, tonic::Code> {
        let req_key = csr::generate(csr_for).expect("csr");
        let mut msg = IstioCertificateRequest {
            csr: req_key.csr_pem,
            validity_duration: 3600,
            metadata: None,
        };
        if let Some(who) = impersonate {
            msg = msg.with_impersonated_identity(who);
        }
        let mut request = Request::new(msg);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        let chain = service()
            .create_certificate(request)
            .await
            .map_err(|s| s.code())?
            .into_inner()
            .cert_chain;
        let cert = WorkloadCertificate::from_cert_chain(csr_for, &req_key.key_pem, &chain)
            .expect("the issued leaf names the CSR's identity");
        Ok(cert.identity().clone())
    }

    #[tokio::test]
    async fn shared_mode_node_proxies_get_only_pods_on_their_node() {
        let cart = id("shop", "cart");
        let payments = id("shop", "payments");
        for node_token in ["node1", "ztunnel"] {
            assert_eq!(
                ask(node_token, &cart, Some(&cart.to_string())).await,
                Ok(cart.clone())
            );
            assert_eq!(
                ask(node_token, &payments, Some(&payments.to_string())).await,
                Err(tonic::Code::PermissionDenied),
                "payments runs on node2"
            );
        }
        assert_eq!(
            ask("web", &cart, Some(&cart.to_string())).await,
            Err(tonic::Code::PermissionDenied),
            "a workload may not impersonate"
        );
    }

    #[tokio::test]
    async fn dedicated_mode_signs_the_callers_own_identity() {
        let web = id("shop", "web");
        assert_eq!(ask("web", &web, None).await, Ok(web.clone()));
        assert_eq!(
            ask("web", &web, Some("")).await,
            Ok(web.clone()),
            "an empty ImpersonatedIdentity is absent, as in istiod"
        );
        assert_eq!(
            ask("web", &id("shop", "cart"), None).await,
            Err(tonic::Code::InvalidArgument),
            "a CSR for anyone else is refused"
        );
        let ztunnel = id("istio-system", "ztunnel");
        assert_eq!(ask("ztunnel", &ztunnel, None).await, Ok(ztunnel));
        // A bootstrap token names a node, not an account: the CSR's identity
        // is issued when a pod on that node holds it.
        let cart = id("shop", "cart");
        assert_eq!(ask("node1", &cart, None).await, Ok(cart));
        assert_eq!(
            ask("node1", &id("shop", "payments"), None).await,
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            ask("nobody", &web, None).await,
            Err(tonic::Code::Unauthenticated)
        );
    }
}
