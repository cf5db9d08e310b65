//! Ties sources, model and servers together: the update loop (debounced:
//! a burst of changes becomes one snapshot) and one gRPC listener serving
//! delta ADS and the CA, with TLS as istiod serves them on 15012.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_api::ca::IstioCertificateServiceServer;
use ambit_api::xds::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use ambit_hbone::ca::{CertificateSigner, ServerCert};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use ambit_api::k8s::Resources;

use crate::auth::NodeAuthenticator;
use crate::ca::CaService;
use crate::model::{Model, Snapshot};
use crate::source::{ConfigSource, SourceEvent};
use crate::xds::{XdsServer, XdsStats};

/// Default quiet period before a change is published.
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// Longest a burst can hold a change back.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(100);

/// How to run the controller.
pub struct ControllerConfig {
    /// Where to listen for xDS and CA (istiod: 15012).
    pub listen: SocketAddr,
    /// Serving certificate; `None` serves plaintext (local debugging, 15010).
    pub tls: Option<ServerCert>,
    /// Signs workload certificates.
    pub signer: Arc<dyn CertificateSigner>,
    /// Authenticates node proxies (xDS and CA).
    pub auth: Arc<dyn NodeAuthenticator>,
    /// Quiet period before publishing a change.
    pub debounce: Duration,
    /// Where to serve `/metrics` (istiod: 15014); `None` for none.
    pub metrics: Option<SocketAddr>,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS identity or gRPC server could not be set up.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The source ended before delivering anything.
    #[error("the config source ended before its first snapshot")]
    SourceEnded,
}

/// A running controller. Dropping it (or [`Controller::stop`]) closes the
/// listener and ends every xDS stream.
pub struct Controller {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    resources: watch::Receiver<Arc<Resources>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stats: Arc<XdsStats>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn log_findings(snap: &Snapshot, errors: &[ambit_api::k8s::LoadError]) {
    for e in errors {
        warn!(error = %e, "not applied; last good version stays in force");
    }
    for f in &snap.findings {
        match f.severity {
            ambit_api::translate::Severity::Error => warn!(finding = %f, "rejected"),
            ambit_api::translate::Severity::Warning => warn!(finding = %f, "applied with a change"),
            ambit_api::translate::Severity::Info => {}
        }
    }
}

impl Controller {
    /// Reads the first snapshot from `source`, then serves. Returns once the
    /// listener is bound and the first model is published.
    pub async fn start(
        config: ControllerConfig,
        source: Box<dyn ConfigSource>,
    ) -> Result<Self, ControllerError> {
        let (events_tx, mut events) = mpsc::channel(16);
        let source_task = tokio::spawn(source.run(events_tx));
        let mut model = Model::for_trust_domain(config.signer.trust_domain());
        let Some(SourceEvent::Snapshot { resources, errors }) = events.recv().await else {
            return Err(ControllerError::SourceEnded);
        };
        let first = Arc::new(model.apply(resources, None));
        let (resources_tx, resources_rx) = watch::channel(model.accepted());
        log_findings(&first, &errors);
        let (snap_tx, snapshots) = watch::channel(first);
        let (stop, stop_rx) = watch::channel(false);

        let debounce = config.debounce;
        let update_task = tokio::spawn(async move {
            while let Some(SourceEvent::Snapshot {
                mut resources,
                mut errors,
            }) = events.recv().await
            {
                // Debounce: take whatever else arrives within the quiet period.
                let burst_start = Instant::now();
                while let Ok(Some(SourceEvent::Snapshot {
                    resources: r,
                    errors: e,
                })) = tokio::time::timeout(debounce, events.recv()).await
                {
                    resources = r;
                    errors = e;
                    if burst_start.elapsed() >= MAX_DEBOUNCE {
                        break;
                    }
                }
                let started = Instant::now();
                let previous = snap_tx.borrow().clone();
                let snap = Arc::new(model.apply(resources, Some(&previous)));
                resources_tx.send_replace(model.accepted());
                log_findings(&snap, &errors);
                info!(
                    generation = snap.generation,
                    addresses = snap.addresses.len(),
                    policies = snap.authorizations.len(),
                    build_ms = started.elapsed().as_millis() as u64,
                    "model updated"
                );
                if snap_tx.send(snap).is_err() {
                    return;
                }
            }
        });

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ControllerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Bind {
                addr: config.listen,
                source,
            })?;
        let stats = Arc::new(XdsStats::default());
        let xds = XdsServer::new(
            snapshots.clone(),
            config.auth.clone(),
            stats.clone(),
            stop_rx.clone(),
        );
        let ca = CaService::new(
            config.signer.clone(),
            config.auth.clone(),
            snapshots.clone(),
        );
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.chain_pem, &tls.key_pem)),
            )?;
        }
        let router = builder
            .add_service(
                AggregatedDiscoveryServiceServer::new(xds)
                    .max_decoding_message_size(200 * 1024 * 1024)
                    .max_encoding_message_size(200 * 1024 * 1024),
            )
            .add_service(IstioCertificateServiceServer::new(ca));
        let mut stop_signal = stop_rx.clone();
        let server_task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let shutdown = async move {
                let _ = stop_signal.changed().await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                warn!(error = %e, "gRPC server ended");
            }
        });
        let mut tasks = vec![source_task, update_task, server_task];
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ControllerError::Bind { addr, source })?;
            metrics_addr = l.local_addr().ok();
            tasks.push(tokio::spawn(crate::metrics::serve(
                l,
                stats.clone(),
                snapshots.clone(),
            )));
        }
        info!(%local_addr, tls = config.tls.is_some(), "controller serving xDS and CA");
        Ok(Controller {
            snapshots,
            resources: resources_rx,
            stop,
            tasks,
            local_addr,
            metrics_addr,
            stats,
        })
    }

    /// The address xDS and the CA listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Follows every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Follows the resources each published snapshot was built from, as the
    /// model accepted them (what the waypoint deployer works from).
    pub fn resources(&self) -> watch::Receiver<Arc<Resources>> {
        self.resources.clone()
    }

    /// xDS counters.
    pub fn stats(&self) -> &Arc<XdsStats> {
        &self.stats
    }

    /// Ends every stream, closes the listener and stops the update loop.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
