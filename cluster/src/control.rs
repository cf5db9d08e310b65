//! The local cluster's control plane: the controller (in-process, fed the
//! placed resources through a [`MemorySource`]) serving xDS and the CA over
//! TLS on loopback, and per node the credentials its ztunnel presents. The
//! controller can be stopped and started again on the same address, the
//! same root and the same node tokens: what a controller restart looks like
//! to the proxies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_hbone::ca::{Authority, ServerCert, Validity};
use ambit_proxy_core::control::ControlPlane;
use anyhow::Context;
use controller::auth::BootstrapTokens;
use controller::ca::RotatingAuthority;
use controller::source::MemorySource;
use controller::{Controller, ControllerConfig};
use tokio::sync::watch;

/// The name on the controller's serving certificate, as istiod's.
pub const CONTROLLER_NAME: &str = "istiod.istio-system.svc";

/// Everything needed to (re)start the controller and to point ztunnels at it.
pub struct ControlSetup {
    /// Signs workload certificates (root rotation with overlap).
    pub ca: Arc<RotatingAuthority>,
    tokens: BootstrapTokens,
    node_tokens: Vec<String>,
    tls: ServerCert,
    root_pem: String,
    addr: SocketAddr,
    published: watch::Sender<Resources>,
    controller: Option<Controller>,
}

impl std::fmt::Debug for ControlSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSetup")
            .field("addr", &self.addr)
            .field("running", &self.controller.is_some())
            .finish_non_exhaustive()
    }
}

impl ControlSetup {
    /// The trust domain the CA signs in (the mesh config's at start).
    pub fn trust_domain(&self) -> &str {
        ambit_hbone::ca::CertificateSigner::trust_domain(self.ca.as_ref())
    }

    /// A new mesh root for `trust_domain`, tokens for `nodes` nodes, and a
    /// running controller serving `initial`.
    pub async fn start(nodes: u8, trust_domain: &str, initial: Resources) -> anyhow::Result<Self> {
        let root = Authority::new_root(
            trust_domain,
            "ambit local cluster",
            Validity::starting_now(Duration::from_secs(7 * 86400)),
        )
        .context("creating the mesh CA")?;
        let root_pem = root.certificate_pem();
        let tls = root
            .issue_server(
                &[CONTROLLER_NAME.to_string(), "localhost".to_string()],
                Validity::starting_now(Duration::from_secs(7 * 86400)),
            )
            .context("controller serving certificate")?;
        let tokens = BootstrapTokens::default();
        let node_tokens = (1..=nodes)
            .map(|n| tokens.mint(&format!("node{n}")))
            .collect();
        let (published, _) = watch::channel(initial);
        let mut setup = ControlSetup {
            ca: Arc::new(RotatingAuthority::new(root)),
            tokens,
            node_tokens,
            tls,
            root_pem,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            published,
            controller: None,
        };
        setup.start_controller().await?;
        Ok(setup)
    }

    /// Starts the controller (again) on the same address.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        if self.controller.is_some() {
            return Ok(());
        }
        let source = MemorySource::follow(self.published.subscribe());
        let c = Controller::start(
            ControllerConfig {
                listen: self.addr,
                tls: Some(self.tls.clone()),
                signer: self.ca.clone(),
                auth: Arc::new(self.tokens.clone()),
                debounce: controller::run::DEBOUNCE,
                metrics: None,
            },
            Box::new(source),
        )
        .await
        .context("starting the controller")?;
        self.addr = c.local_addr();
        self.controller = Some(c);
        Ok(())
    }

    /// Stops the controller: every xDS stream ends and nothing listens.
    pub async fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            c.stop().await;
        }
    }

    /// The running controller, if any.
    pub fn controller(&self) -> Option<&Controller> {
        self.controller.as_ref()
    }

    /// Hands the controller a new set of resources.
    pub fn publish(&self, resources: Resources) {
        self.published.send_replace(resources);
    }

    /// How node `n`'s ztunnel reaches the controller.
    pub fn for_node(&self, n: u8) -> ControlPlane {
        self.with_token(self.node_tokens.get(usize::from(n - 1)).cloned())
    }

    /// How a proxy running as service account `namespace/name` (a
    /// waypoint) reaches the controller: its own token, as the projected
    /// token a pod of that account would hold.
    pub fn for_service_account(&self, namespace: &str, name: &str) -> ControlPlane {
        self.with_token(Some(self.tokens.mint_service_account(namespace, name)))
    }

    fn with_token(&self, token: Option<String>) -> ControlPlane {
        ControlPlane {
            address: format!("https://{}", self.addr),
            root_pem: Some(self.root_pem.clone()),
            tls_name: Some(CONTROLLER_NAME.to_string()),
            token,
            token_file: None,
            cluster_id: "Kubernetes".into(),
        }
    }
}
