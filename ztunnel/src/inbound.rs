//! Inbound: HBONE CONNECTs arriving on a pod's 15008, and plaintext steered into
//! its 15006 by sk_lookup. Both authorize (L4 policy) and then connect to the app
//! from inside the pod's namespace.

use crate::access::{ConnectionLog, POLICY_CHANGE, policy_rejection};
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_hbone::server::{InboundHandler, InboundRequest, Refusal};
use ambit_identity::SpiffeId;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::metrics::{PeerLabels, Series, TrafficLabels};
use crate::proxy::{Pod, Shared};
use ambit_api::model::ProxyState;
use ambit_api::model::authz::{self, Connection};
use ambit_proxy_core::revoke::{OpenConnections, Registration};
use ambit_proxy_core::socket::marked_socket_in;
use ambit_proxy_core::{accept, drain};

/// The HBONE handler of one pod.
pub struct PodInbound {
    shared: Arc<Shared>,
    pod: Arc<Pod>,
}

impl PodInbound {
    /// Handles CONNECTs for `pod`.
    pub fn new(shared: Arc<Shared>, pod: Arc<Pod>) -> Self {
        PodInbound { shared, pod }
    }
}

/// Labels for the destination reporter.
fn inbound_labels(
    state: &ProxyState,
    src_ip: std::net::IpAddr,
    src_identity: Option<&SpiffeId>,
    dst: SocketAddr,
    service_host: Option<&str>,
) -> TrafficLabels {
    let principal = src_identity.map(|i| i.to_string());
    let source = match state.workload_by_ip(src_ip) {
        Some(w) => PeerLabels::of(w, principal.clone()),
        None => PeerLabels::unknown(principal),
    };
    let destination = state
        .workload_by_ip(dst.ip())
        .map(|w| PeerLabels::of(w, None))
        .unwrap_or_default();
    TrafficLabels {
        reporter: "destination",
        source,
        destination,
        request_protocol: "tcp",
        response_flags: "-",
        connection_security_policy: if src_identity.is_some() {
            "mutual_tls"
        } else {
            "unknown"
        },
        ..Default::default()
    }
    .with_service(service_host)
}

/// What an open inbound connection was admitted on: re-checked with
/// [`admit`] on every policy push.
#[derive(Debug)]
pub struct Admitted {
    /// The destination pod.
    pub pod_uid: Arc<str>,
    /// The connection's L4 facts.
    pub conn: Connection,
}

/// Re-checks every open inbound connection against `state`; closes (and
/// counts) those it no longer admits.
pub fn recheck(open: &OpenConnections<Admitted>, state: &ProxyState) -> usize {
    open.recheck(|a| match admit(state, &a.pod_uid, &a.conn) {
        Ok(()) => true,
        Err(why) => {
            info!(target: "access", reporter = "destination",
                src.addr = %a.conn.src_ip, dst.addr = %a.conn.dst_ip, dst.port = a.conn.dst_port,
                "open connection closed by a policy change: {why}");
            false
        }
    })
}

/// May a connection to the pod `uid` open, or stay open after a policy
/// push: through the pod's waypoint when it has one (plaintext never, then),
/// and allowed by the pod's AuthorizationPolicies.
pub fn admit(state: &ProxyState, uid: &str, conn: &Connection) -> Result<(), String> {
    match &conn.src_identity {
        Some(peer) => {
            if let Some(why) = skips_waypoint(state, uid, peer) {
                return Err(why);
            }
        }
        None => {
            if state.workload(uid).is_some_and(|w| w.waypoint.is_some()) {
                return Err("plaintext to a workload that has a waypoint".into());
            }
        }
    }
    let decision = authorize(state, conn);
    if decision.is_allowed() {
        Ok(())
    } else {
        Err(decision.to_string())
    }
}

/// Authorizes a connection to `dst` on this node.
fn authorize(state: &ProxyState, conn: &Connection) -> authz::Decision {
    match state.workload_by_ip(conn.dst_ip) {
        Some(w) => authz::authorize(state.policies_for(w), conn),
        // Unknown destination: nothing applies to it.
        None => authz::Decision::UnknownDestination,
    }
}

/// Connects to the app at `dst` from inside the pod's namespace.
pub async fn connect_app(pod: &Pod, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = marked_socket_in(&pod.netns, dst, ambit_ebpf::ZTUNNEL_MARK)?;
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), socket.connect(dst))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "app connect timed out")
        })??;
    Ok(stream)
}

/// An accepted CONNECT's upstream: the connection to the app and the
/// destination reporter's series it closes into.
pub struct AppUpstream {
    tcp: TcpStream,
    series: Arc<Series>,
    /// Closes the relay when a policy push denies it.
    admission: Registration<Admitted>,
    /// The access log's `connection complete` line.
    log: ConnectionLog,
}

impl InboundHandler for PodInbound {
    type Upstream = AppUpstream;

    async fn relay(
        &self,
        tunnel: ambit_hbone::stream::H2Stream,
        up: AppUpstream,
    ) -> std::io::Result<(u64, u64)> {
        let _active = self.shared.track();
        let r = tokio::select! {
            r = ambit_hbone::server::tcp_relay(tunnel, up.tcp) => r,
            () = up.admission.revoked() => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "closed: a policy change denies this connection",
            )),
        };
        let (to_app, from_app) = *r.as_ref().unwrap_or(&(0, 0));
        up.series.closed(to_app, from_app);
        let revoked = matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
        let error: Option<&dyn std::fmt::Display> = revoked.then_some(&POLICY_CHANGE);
        up.log
            .complete(&self.pod.identity, None, from_app, to_app, error);
        r
    }

    async fn open(&self, req: InboundRequest) -> Result<AppUpstream, Refusal> {
        let dst = ambit_hbone::server::address_target(&req.connect.target)?;
        if dst.ip() != self.pod.ip {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("authority {dst} is not this pod's address {}", self.pod.ip),
            ));
        }
        let state = self.shared.state();
        let src_ip = req.peer_addr.ip();
        let mut labels = inbound_labels(
            &state,
            src_ip,
            Some(&req.peer_identity),
            dst,
            req.connect.forwarded_host.as_deref(),
        );
        let conn = Connection {
            src_identity: Some(req.peer_identity.clone()),
            src_ip,
            dst_ip: dst.ip(),
            dst_port: dst.port(),
        };
        if let Err(why) = admit(&state, &self.pod.uid, &conn) {
            labels.response_flags = "DENY";
            self.shared.metrics.failed(&labels);
            ConnectionLog::inbound(req.peer_addr, Some(req.peer_identity.to_string()), dst)
                .complete(
                    &self.pod.identity,
                    None,
                    0,
                    0,
                    Some(&policy_rejection(&why)),
                );
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, why));
        }
        match connect_app(&self.pod, dst).await {
            Ok(tcp) => {
                let series = self.shared.metrics.series(&labels);
                series.opened();
                info!(target: "access", reporter = "destination", src.addr = %req.peer_addr, src.identity = %req.peer_identity, dst.addr = %dst, dst.identity = %self.pod.identity, "connection opened");
                let admission = self.shared.admitted.register(Admitted {
                    pod_uid: Arc::from(self.pod.uid.as_str()),
                    conn,
                });
                let log =
                    ConnectionLog::inbound(req.peer_addr, Some(req.peer_identity.to_string()), dst);
                Ok(AppUpstream {
                    tcp,
                    series,
                    admission,
                    log,
                })
            }
            Err(e) => {
                labels.response_flags = "CONNECT";
                self.shared.metrics.failed(&labels);
                Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("connecting to app {dst}: {e}"),
                ))
            }
        }
    }
}

/// A pod with its own (workload) waypoint only takes tunnels from that
/// waypoint: traffic may not skip its L7 policy. `Some(reason)` refuses.
fn skips_waypoint(state: &ProxyState, uid: &str, peer: &SpiffeId) -> Option<String> {
    let gw = state.workload(uid)?.waypoint.as_ref()?;
    let from_waypoint = state
        .waypoint_endpoints(gw)
        .iter()
        .any(|ep| ep.workload.identity().is_ok_and(|id| &id == peer));
    (!from_waypoint).then(|| format!("{peer} is not this workload's waypoint {}", gw.destination))
}

/// Serves plaintext steered into the pod's 15006: the accepted socket's local
/// address is the original destination. No identity: only policies that admit
/// unauthenticated peers let it through (STRICT mTLS is a DENY of those).
pub async fn serve_plaintext(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    listener: TcpListener,
    drain: drain::Watch,
) {
    accept::serve(listener, "15006", drain, |client, peer| {
        tokio::spawn(handle_plaintext(shared.clone(), pod.clone(), client, peer));
    })
    .await
}

/// One plaintext connection: authorize, connect to the app, relay.
async fn handle_plaintext(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let _active = shared.track();
    let Ok(dst) = client.local_addr() else { return };
    let state = shared.state();
    let mut labels = inbound_labels(&state, peer.ip(), None, dst, None);
    let conn = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    };
    if let Err(why) = admit(&state, &pod.uid, &conn) {
        labels.response_flags = "DENY";
        shared.metrics.failed(&labels);
        ConnectionLog::inbound(peer, None, dst).complete(
            &pod.identity,
            None,
            0,
            0,
            Some(&policy_rejection(&why)),
        );
        let _ = client.set_zero_linger();
        return;
    }
    let mut app = match connect_app(&pod, dst).await {
        Ok(a) => a,
        Err(e) => {
            labels.response_flags = "CONNECT";
            shared.metrics.failed(&labels);
            return debug!(error = %e, "app connect failed");
        }
    };
    let series = shared.metrics.series(&labels);
    series.opened();
    info!(target: "access", reporter = "destination", src.addr = %peer, dst.addr = %dst, "plaintext connection opened");
    let log = ConnectionLog::inbound(peer, None, dst);
    // As on the HBONE path: the connection keeps its series'
    // counters, not its labels or a state snapshot, while it lasts.
    drop((labels, state));
    let admission = shared.admitted.register(Admitted {
        pod_uid: Arc::from(pod.uid.as_str()),
        conn,
    });
    let (up, down, error) = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut app) => {
            let (up, down) = r.unwrap_or((0, 0));
            (up, down, None)
        }
        () = admission.revoked() => {
            let _ = client.set_zero_linger();
            (0, 0, Some(&POLICY_CHANGE as &dyn std::fmt::Display))
        }
    };
    series.closed(up, down);
    log.complete(&pod.identity, None, down, up, error);
}
