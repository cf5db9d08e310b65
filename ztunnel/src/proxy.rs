//! The node proxy: per enrolled pod, listeners inside the pod's namespace
//! (15001 outbound, 15006 inbound plaintext, 15008 HBONE), the pod's certificate
//! presented on its behalf, and the eBPF capture pointed at them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ambit_ebpf::{Capture, CaptureError, CaptureOptions};
use ambit_hbone::{HboneConfig, HboneServer, Pool};
use ambit_identity::SpiffeId;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::inbound::{self, PodInbound};
use crate::metrics::Metrics;
use crate::outbound;
use ambit_api::model::{ProxyState, Workload};
use ambit_proxy_core::certs::{CertManager, CertificateProvider, PodServerTls};
use ambit_proxy_core::netns::Netns;
use ambit_proxy_core::revoke::OpenConnections;
use ambit_proxy_core::socket::listen_in;
use ambit_proxy_core::{accept, drain};

/// ztunnel's ports inside each pod namespace.
pub mod ports {
    /// Outbound capture.
    pub const OUTBOUND: u16 = 15001;
    /// Inbound plaintext capture.
    pub const INBOUND_PLAIN: u16 = 15006;
    /// Inbound HBONE.
    pub const HBONE: u16 = 15008;
}

/// How to run a ztunnel.
pub struct ZtunnelConfig {
    /// This node's name (workloads with this `node` are local).
    pub node: String,
    /// Issues the certificates of local pods' identities (the controller's CA,
    /// or an in-process signer).
    pub certs: Arc<dyn CertificateProvider>,
    /// Certificate lifetime.
    pub cert_ttl: Duration,
    /// HBONE settings.
    pub hbone: HboneConfig,
    /// cgroup-v2 root for the capture programs (`None`: detect).
    pub cgroup_root: Option<PathBuf>,
    /// Where capture is pinned in bpffs (`None`: not pinned, capture ends with
    /// the process). Pinned capture outlives ztunnel: enrolled pods fail
    /// closed while it is away and the next ztunnel picks it up.
    pub pin_dir: Option<PathBuf>,
    /// Experimental sockmap splice of app sockets to ztunnel's
    /// ([`ambit_ebpf::CaptureOptions::splice`]); off by default.
    pub sockmap_splice: bool,
    /// With `pin_dir`: the executable that loads and pins capture as a
    /// short-lived child ([`ambit_ebpf::loader`]), so this process never
    /// parses the kernel's BTF. `None`: load in this process.
    pub ebpf_loader: Option<PathBuf>,
}

/// Why a pod could not be enrolled or released.
#[derive(Debug, thiserror::Error)]
pub enum ZtunnelError {
    /// The pod is not in the current state.
    #[error("pod {0}: no such workload in the current state")]
    UnknownPod(String),
    /// The pod runs on another node.
    #[error("pod {uid} runs on node {node:?}, not this ztunnel's {this:?}")]
    WrongNode {
        /// Pod uid.
        uid: String,
        /// Its node.
        node: String,
        /// Ours.
        this: String,
    },
    /// The workload has no usable identity or IP.
    #[error("pod {uid}: {why}")]
    BadWorkload {
        /// Pod uid.
        uid: String,
        /// What is missing.
        why: String,
    },
    /// Certificate issuance failed.
    #[error("pod {uid}: certificate: {source}")]
    Cert {
        /// Pod uid.
        uid: String,
        /// Why.
        source: ambit_proxy_core::certs::FetchError,
    },
    /// A socket or namespace operation failed.
    #[error("pod {uid}: {what}: {source}")]
    Io {
        /// Pod uid.
        uid: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Capture could not be changed.
    #[error("capture: {0}")]
    Capture(#[from] CaptureError),
}

/// An enrolled pod, as the proxy paths need it.
#[derive(Debug)]
pub struct Pod {
    /// Workload uid.
    pub uid: String,
    /// Its IP.
    pub ip: IpAddr,
    /// Its identity.
    pub identity: SpiffeId,
    /// Its network namespace.
    pub netns: Netns,
    /// That namespace's cookie.
    pub netns_cookie: u64,
}

/// State every connection handler shares.
pub struct Shared {
    state: RwLock<Arc<ProxyState>>,
    pub(crate) capture: Mutex<Capture>,
    lb_vips: Mutex<std::collections::HashSet<std::net::SocketAddrV4>>,
    pub(crate) certs: Arc<CertManager>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hbone: HboneConfig,
    /// Proxied connections in flight (both directions), for draining.
    active: std::sync::atomic::AtomicUsize,
    /// Open inbound connections, re-checked on every policy push.
    pub(crate) admitted: Arc<OpenConnections<inbound::Admitted>>,
}

/// Counts one proxied connection while it lives.
pub(crate) struct ActiveConn(Arc<Shared>);

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Shared {
    /// Counts a connection until the returned guard is dropped.
    pub(crate) fn track(self: &Arc<Self>) -> ActiveConn {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveConn(self.clone())
    }

    /// Proxied connections in flight.
    pub fn active_connections(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current state snapshot.
    pub fn state(&self) -> Arc<ProxyState> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Programs the socket-level load balancer (for pods ztunnel does not capture)
/// with every Service VIP:port and its healthy endpoints; removes VIPs that went
/// away. Returns the VIPs now programmed.
fn sync_services(
    capture: &mut Capture,
    state: &ProxyState,
    previous: &std::collections::HashSet<std::net::SocketAddrV4>,
) -> std::collections::HashSet<std::net::SocketAddrV4> {
    let mut now = std::collections::HashSet::new();
    for svc in state.services() {
        for vip in svc.vip_addrs() {
            let IpAddr::V4(vip) = vip else { continue };
            for port in svc.ports.keys() {
                let backends: Vec<_> = state
                    .endpoints(svc, *port)
                    .into_iter()
                    .filter_map(|e| match e.addr {
                        SocketAddr::V4(a) => Some(a),
                        SocketAddr::V6(_) => None,
                    })
                    .take(ambit_ebpf::MAX_BACKENDS)
                    .collect();
                let key = std::net::SocketAddrV4::new(vip, *port);
                match capture.set_service(key, &backends) {
                    Ok(()) => {
                        now.insert(key);
                    }
                    Err(e) => {
                        warn!(vip = %key, error = %e, "programming service load balancer failed")
                    }
                }
            }
        }
    }
    for gone in previous.difference(&now) {
        if let Err(e) = capture.remove_service(*gone) {
            warn!(vip = %gone, error = %e, "removing service from load balancer failed");
        }
    }
    now
}

/// A pod's HBONE server.
type PodServer = Arc<HboneServer<PodInbound>>;

struct PodRuntime {
    pod: Arc<Pod>,
    /// The 15008, 15006 and 15001 accept loops: they end by themselves when
    /// the ztunnel drains, and are aborted when the pod leaves (connections
    /// they spawned are their own tasks and outlive them).
    accept_tasks: [JoinHandle<()>; 3],
    /// The pod's HBONE server: on drain its connections get a GOAWAY
    /// ([`HboneServer::drain`]).
    server: PodServer,
}

/// A running ztunnel.
pub struct Ztunnel {
    node: String,
    /// `None`: enrolment is not driven by ZDS. `Some(connected)` otherwise.
    zds: Mutex<Option<bool>>,
    /// `None`: state is not from xDS. `Some(synced)`: every type ACKed once.
    xds: Mutex<Option<bool>>,
    /// Shutdown: stops the accept loops and the background clients.
    drain: drain::Trigger,
    shared: Arc<Shared>,
    pods: Mutex<HashMap<String, PodRuntime>>,
}

impl std::fmt::Debug for Ztunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ztunnel")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Ztunnel {
    /// Loads capture and starts with `state`. Needs root.
    pub fn new(config: ZtunnelConfig, state: ProxyState) -> Result<Self, ZtunnelError> {
        let mut capture = Capture::load_with_options(CaptureOptions {
            cgroup_root: config.cgroup_root.as_deref(),
            pin_dir: config.pin_dir.as_deref(),
            splice: config.sockmap_splice,
            loader: config.ebpf_loader.as_deref(),
        })?;
        if capture.reused_pins() {
            info!(pins = %capture.pin_dir().map(|p| p.display().to_string()).unwrap_or_default(),
                "picked up pinned capture: enrolled pods stayed captured while ztunnel was away");
        }
        let lb_vips = sync_services(&mut capture, &state, &Default::default());
        Ok(Ztunnel {
            node: config.node,
            zds: Mutex::new(None),
            xds: Mutex::new(None),
            drain: drain::channel().0,
            shared: Arc::new(Shared {
                state: RwLock::new(Arc::new(state)),
                capture: Mutex::new(capture),
                lb_vips: Mutex::new(lb_vips),
                certs: CertManager::new(config.certs, config.cert_ttl),
                pool: Pool::new(config.hbone.clone()),
                metrics: Arc::new(Metrics::default()),
                hbone: config.hbone,
                active: std::sync::atomic::AtomicUsize::new(0),
                admitted: Arc::default(),
            }),
            pods: Mutex::default(),
        })
    }

    /// Replaces the state; new connections see it at once.
    pub fn update_state(&self, state: ProxyState) {
        {
            let mut capture = self
                .shared
                .capture
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut vips = self
                .shared
                .lb_vips
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *vips = sync_services(&mut capture, &state, &vips);
        }
        let state = Arc::new(state);
        match self.shared.state.write() {
            Ok(mut s) => *s = state.clone(),
            Err(p) => *p.into_inner() = state.clone(),
        }
        let closed = inbound::recheck(&self.shared.admitted, &state);
        if closed > 0 {
            tracing::info!(
                closed,
                "policy change closed open connections it now denies"
            );
        }
    }

    /// Connection and policy counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The shared handler state (for the admin endpoints).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// uids of enrolled pods.
    pub fn enrolled(&self) -> Vec<String> {
        self.pods
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The workload `uid` on this node. With xDS, enrolment may arrive before
    /// the workload does: wait for it up to 5 s, as Istio's ztunnel does.
    fn local_workload(&self, uid: &str) -> Result<Arc<Workload>, ZtunnelError> {
        let from_xds = self.xds.lock().map(|x| x.is_some()).unwrap_or(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let w = loop {
            if let Some(w) = self.shared.state().workload(uid) {
                break w.clone();
            }
            if !from_xds || std::time::Instant::now() >= deadline {
                return Err(ZtunnelError::UnknownPod(uid.to_string()));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !w.node.is_empty() && w.node != self.node {
            return Err(ZtunnelError::WrongNode {
                uid: uid.to_string(),
                node: w.node.clone(),
                this: self.node.clone(),
            });
        }
        Ok(w)
    }

    /// Enrolls a pod: certificate, listeners in its namespace, capture on.
    /// Enrolling an enrolled pod again is a no-op.
    pub fn add_pod(&self, uid: &str, netns: Netns) -> Result<(), ZtunnelError> {
        if self
            .pods
            .lock()
            .map(|p| p.contains_key(uid))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let w = self.local_workload(uid)?;
        let bad = |why: String| ZtunnelError::BadWorkload {
            uid: uid.to_string(),
            why,
        };
        let identity = w.identity().map_err(|e| bad(e.to_string()))?;
        let ip = *w
            .workload_ips
            .first()
            .ok_or_else(|| bad("no workload IP".into()))?;
        let io = |what: &'static str| {
            move |source: std::io::Error| ZtunnelError::Io {
                uid: uid.to_string(),
                what,
                source,
            }
        };
        self.shared
            .certs
            .get(&identity)
            .map_err(|source| ZtunnelError::Cert {
                uid: uid.to_string(),
                source,
            })?;
        let netns_cookie = netns.cookie().map_err(io("reading netns cookie"))?;
        let outbound_l = listen_in(
            &netns,
            SocketAddr::new([127, 0, 0, 1].into(), ports::OUTBOUND),
        )
        .map_err(io("binding 15001"))?;
        let plain_l = listen_in(
            &netns,
            SocketAddr::new([127, 0, 0, 1].into(), ports::INBOUND_PLAIN),
        )
        .map_err(io("binding 15006"))?;
        let hbone_l =
            listen_in(&netns, SocketAddr::new(ip, ports::HBONE)).map_err(io("binding 15008"))?;
        let pod = Arc::new(Pod {
            uid: uid.to_string(),
            ip,
            identity,
            netns,
            netns_cookie,
        });
        {
            let mut capture = self
                .shared
                .capture
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let IpAddr::V4(v4) = ip {
                capture.attach_inbound(&pod.netns, netns_cookie, v4, &plain_l)?;
            }
            capture.enroll(netns_cookie)?;
        }
        let server = HboneServer::new(
            self.shared.hbone.clone(),
            Arc::new(PodServerTls::new(
                self.shared.certs.clone(),
                pod.identity.clone(),
            )),
            PodInbound::new(self.shared.clone(), pod.clone()),
        );
        let accept_tasks = [
            tokio::spawn(accept::serve_hbone(
                hbone_l,
                server.clone(),
                self.drain.watch(),
            )),
            tokio::spawn(inbound::serve_plaintext(
                self.shared.clone(),
                pod.clone(),
                plain_l,
                self.drain.watch(),
            )),
            tokio::spawn(outbound::serve(
                self.shared.clone(),
                pod.clone(),
                outbound_l,
                self.drain.watch(),
            )),
        ];
        info!(uid, %ip, identity = %pod.identity, "pod enrolled");
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert(
                uid.to_string(),
                PodRuntime {
                    pod,
                    accept_tasks,
                    server,
                },
            );
        }
        Ok(())
    }

    /// Records the state of the ZDS connection (readiness waits for it).
    pub fn set_zds_connected(&self, connected: bool) {
        if let Ok(mut z) = self.zds.lock() {
            *z = Some(connected);
        }
    }

    /// Records that state now comes from xDS: `synced` once every subscribed
    /// type has been ACKed (readiness waits for it, docs/wire.md §4.4).
    pub fn set_xds_synced(&self, synced: bool) {
        if let Ok(mut x) = self.xds.lock() {
            *x = Some(synced);
        }
    }

    /// Starts the drain: accept loops end, background clients (xDS, ZDS)
    /// stop reconnecting.
    pub fn shutdown(&self) {
        self.drain.start();
    }

    /// A watch on this ztunnel's drain, for tasks that must end with it.
    pub fn drain_watch(&self) -> drain::Watch {
        self.drain.watch()
    }

    /// Drains, as on SIGTERM: every pod's listeners close (HBONE connections
    /// get a GOAWAY), capture stays on (so enrolled apps' new connections
    /// fail rather than leave in clear), and established connections keep
    /// flowing until they end or `within` passes. Returns how many were
    /// still open at the end.
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        // Every pod's accept loops end; connections they spawned go on.
        self.shutdown();
        if let Ok(pods) = self.pods.lock() {
            for rt in pods.values() {
                // HBONE: GOAWAY to peers.
                rt.server.drain();
            }
        }
        info!(open = self.shared.active_connections(), ?within, "draining");
        let deadline = tokio::time::Instant::now() + within;
        while self.shared.active_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = self.shared.active_connections();
        info!(left, "drain finished");
        left
    }

    /// Has [`shutdown`](Self::shutdown) been called?
    pub fn is_shutting_down(&self) -> bool {
        self.drain.is_draining()
    }

    /// Registers a pod that is not in the mesh for Service load balancing only
    /// (its connects to VIPs reach a backend directly; nothing is captured).
    pub fn balance_only(&self, netns: &Netns) -> Result<(), ZtunnelError> {
        let cookie = netns.cookie().map_err(|source| ZtunnelError::Io {
            uid: netns.path().display().to_string(),
            what: "reading netns cookie",
            source,
        })?;
        let mut capture = self
            .shared
            .capture
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        capture.balance_only(cookie)?;
        Ok(())
    }

    /// Local mesh pods not enrolled yet (readiness lists them as pending).
    pub fn pending(&self) -> Vec<String> {
        let state = self.shared.state();
        let enrolled = self.enrolled();
        let mut p: Vec<String> = state
            .workloads()
            .filter(|w| w.node == self.node && w.protocol == ambit_api::model::Protocol::Hbone)
            .filter(|w| !enrolled.contains(&w.uid))
            // A waypoint's pod takes HBONE itself and is never captured
            // (Istio labels it dataplane-mode none): nothing to wait for. It
            // is the endpoint of a Service on the HBONE port, as every
            // waypoint's Service is.
            .filter(|w| {
                !w.services
                    .values()
                    .any(|ports| ports.contains_key(&ports::HBONE))
            })
            .map(|w| format!("pod {}/{}", w.namespace, w.name))
            .collect();
        p.sort();
        if self.xds.lock().map(|x| *x == Some(false)).unwrap_or(false) {
            p.insert(0, "xDS: first response of every type".into());
        }
        if self.zds.lock().map(|z| *z == Some(false)).unwrap_or(false) {
            p.insert(0, "ZDS connection to the node agent".into());
        }
        p
    }

    /// `/config_dump`: state, certificates and config, Istio's shape.
    pub fn config_dump(&self) -> serde_json::Value {
        let state = self.shared.state();
        let mut workloads: Vec<_> = state.workloads().map(|w| w.as_ref().clone()).collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = state.services().map(|s| s.as_ref().clone()).collect();
        services.sort_by_key(|s| s.key());
        let mut policies: Vec<_> = state.policies().map(|p| p.as_ref().clone()).collect();
        policies.sort_by_key(|p| p.key());
        let rfc3339 = |t: std::time::SystemTime| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let certificates: Vec<_> = self
            .shared
            .certs
            .snapshot()
            .iter()
            .map(|c| {
                serde_json::json!({
                    "identity": c.identity().to_string(),
                    "state": "Available",
                    "certChain": [{
                        "serialNumber": c.serial(),
                        "validFrom": rfc3339(c.not_before()),
                        "expirationTime": rfc3339(c.not_after()),
                    }],
                })
            })
            .collect();
        let enrolled = self.enrolled();
        let workload_state: serde_json::Map<String, serde_json::Value> = enrolled
            .iter()
            .map(|uid| (uid.clone(), serde_json::json!({"state": "Up"})))
            .collect();
        // Open inbound connections with what they were admitted on (the
        // facts policy re-checks); outbound ones are not tracked.
        let mut connections = self.shared.admitted.describe(|a| {
            serde_json::json!({
                "direction": "inbound",
                "workload": a.pod_uid.as_ref(),
                "src": a.conn.src_ip.to_string(),
                "srcIdentity": a.conn.src_identity.as_ref().map(ToString::to_string),
                "dst": std::net::SocketAddr::new(a.conn.dst_ip, a.conn.dst_port).to_string(),
            })
        });
        connections.sort_by_key(|c| c.to_string());
        serde_json::json!({
            "workloads": workloads,
            "services": services,
            "policies": policies,
            "certificates": certificates,
            "connections": connections,
            "workloadState": workload_state,
            "config": {"proxyMode": "shared", "nodeName": self.node},
            "version": {"version": env!("CARGO_PKG_VERSION"), "cryptoProvider": "ring"},
        })
    }

    /// After the node agent's snapshot: forgets capture an earlier ztunnel
    /// pinned for pods that are no longer enrolled (deleted while it was away).
    pub fn prune_capture(&self) {
        let keep: std::collections::HashSet<u64> = match self.pods.lock() {
            Ok(p) => p.values().map(|rt| rt.pod.netns_cookie).collect(),
            Err(_) => return,
        };
        let mut capture = self
            .shared
            .capture
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match capture.prune(&keep) {
            Ok(0) => {}
            Ok(n) => info!(
                entries = n,
                "pruned capture of pods gone while ztunnel was away"
            ),
            Err(e) => warn!(error = %e, "pruning stale capture failed"),
        }
    }

    /// Releases a pod: capture off, listeners closed. Established connections
    /// run to their end.
    pub fn remove_pod(&self, uid: &str) -> Result<(), ZtunnelError> {
        let Some(rt) = self.pods.lock().ok().and_then(|mut p| p.remove(uid)) else {
            return Ok(());
        };
        for t in &rt.accept_tasks {
            t.abort();
        }
        let mut capture = self
            .shared
            .capture
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Err(e) = capture.release(rt.pod.netns_cookie) {
            warn!(uid, error = %e, "releasing capture failed");
            return Err(e.into());
        }
        info!(uid, "pod released");
        Ok(())
    }
}

impl Drop for Ztunnel {
    /// Stops serving without releasing capture: a ztunnel going away is not a
    /// pod leaving the mesh. Unpinned capture detaches with the process;
    /// pinned capture stays and fails closed until the next ztunnel.
    fn drop(&mut self) {
        if let Ok(mut pods) = self.pods.lock() {
            for rt in pods.values() {
                for t in &rt.accept_tasks {
                    t.abort();
                }
            }
            pods.clear();
        }
    }
}
