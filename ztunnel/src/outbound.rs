//! Outbound: connections an enrolled app made, redirected by connect4 to the
//! pod's 15001. The original destination comes from the capture map; a Service
//! VIP is resolved to a healthy endpoint; mesh (HBONE) endpoints are reached
//! through a tunnel as the pod's identity, others with plain TCP.

use crate::access::ConnectionLog;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_hbone::Tunnel;
use ambit_hbone::client::TunnelTarget;
use ambit_hbone::request::ConnectHead;
use ambit_identity::SpiffeId;
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::metrics::{PeerLabels, Series, TrafficLabels};
use crate::proxy::{Pod, Shared, ports};
use ambit_api::model::{Protocol, ProxyState, Workload};
use ambit_proxy_core::socket::marked_socket_in;
use ambit_proxy_core::{accept, drain};

/// Where an outbound connection goes.
#[derive(Debug)]
enum Route {
    /// Through HBONE to `endpoint`'s node (its IP on 15008) asking for
    /// `authority`, expecting one of `expected`. For a waypoint the endpoint
    /// is the waypoint pod and the authority the original destination.
    Hbone {
        endpoint: SocketAddr,
        authority: SocketAddr,
        workload: Arc<Workload>,
        expected: Vec<SpiffeId>,
        service_host: Option<String>,
    },
    /// Plain TCP (destination not in the mesh, or unknown).
    Passthrough(SocketAddr),
    /// A Service with no healthy endpoint: drop.
    NoEndpoint(String),
}

/// Traffic for a destination with a waypoint goes to the waypoint, carrying
/// the original destination as the CONNECT authority (docs/wire.md §2.8).
fn via_waypoint(
    state: &ProxyState,
    gw: &ambit_api::model::GatewayRef,
    dst: SocketAddr,
    service_host: Option<String>,
) -> Route {
    let eps = state.waypoint_endpoints(gw);
    let Some(ep) = eps.choose(&mut rand::thread_rng()) else {
        return Route::NoEndpoint(format!("waypoint {}", gw.destination));
    };
    Route::Hbone {
        endpoint: ep.addr,
        authority: dst,
        workload: ep.workload.clone(),
        expected: ep.workload.identity().into_iter().collect(),
        service_host,
    }
}

fn route(state: &ProxyState, dst: SocketAddr) -> Route {
    if let Some(svc) = state.service_by_vip(dst.ip())
        && let Some(gw) = &svc.waypoint
    {
        return via_waypoint(state, gw, dst, Some(svc.hostname.clone()));
    }
    if let Some(w) = state.workload_by_ip(dst.ip())
        && let Some(gw) = &w.waypoint
    {
        return via_waypoint(state, gw, dst, None);
    }
    let (workload, endpoint, service) = if let Some(svc) = state.service_by_vip(dst.ip()) {
        let eps = state.endpoints(svc, dst.port());
        let Some(ep) = eps.choose(&mut rand::thread_rng()) else {
            return Route::NoEndpoint(svc.hostname.clone());
        };
        (ep.workload.clone(), ep.addr, Some(svc.clone()))
    } else if let Some(w) = state.workload_by_ip(dst.ip()) {
        (w.clone(), dst, None)
    } else {
        return Route::Passthrough(dst);
    };
    // The chosen endpoint has its own (workload) waypoint: it must see the
    // traffic too, addressed to the endpoint.
    if let (Some(gw), Some(svc)) = (&workload.waypoint, &service) {
        return via_waypoint(state, gw, endpoint, Some(svc.hostname.clone()));
    }
    if workload.protocol != Protocol::Hbone {
        return Route::Passthrough(endpoint);
    }
    let mut expected: Vec<SpiffeId> = service
        .iter()
        .flat_map(|s| s.subject_alt_names.iter().filter_map(|n| n.parse().ok()))
        .collect();
    if let Ok(id) = workload.identity() {
        expected.push(id);
    }
    Route::Hbone {
        endpoint,
        authority: endpoint,
        workload,
        expected,
        service_host: service.map(|s| s.hostname.clone()),
    }
}

/// Accepts on the pod's 15001 until the drain starts (or the task is aborted).
pub async fn serve(shared: Arc<Shared>, pod: Arc<Pod>, listener: TcpListener, drain: drain::Watch) {
    accept::serve(listener, "15001", drain, |app, peer| {
        tokio::spawn(handle(shared.clone(), pod.clone(), app, peer));
    })
    .await
}

/// What a connection carries once set up.
enum Carry {
    /// Plain TCP to a destination outside the mesh.
    Passthrough(TcpStream, Box<ConnectionLog>),
    /// An HBONE tunnel and its access log line, the source reporter's series
    /// it closes into, and how many request bytes went out with the CONNECT.
    Tunnel(Box<(Tunnel, ConnectionLog)>, Arc<Series>, u64),
}

async fn handle(shared: Arc<Shared>, pod: Arc<Pod>, mut app: TcpStream, peer: SocketAddr) {
    let _active = shared.track();
    // Boxed: lookups, the pool checkout and the handshake are freed once the
    // connection is set up; the task itself only holds what the relay needs
    // for the connection's whole life.
    let Some(carry) = Box::pin(set_up(&shared, &pod, &app, peer)).await else {
        return;
    };
    match carry {
        Carry::Passthrough(mut up, log) => {
            let (sent, received) = tokio::io::copy_bidirectional(&mut app, &mut up)
                .await
                .unwrap_or((0, 0));
            log.complete(&pod.identity, None, sent, received, None);
        }
        Carry::Tunnel(t, series, early) => {
            let (mut tunnel, log) = *t;
            // (app → tunnel: the request direction, tunnel → app).
            let (request, response) = tunnel.relay_tcp(&mut app).await.unwrap_or((0, 0));
            series.closed(early + request, response);
            log.complete(
                &pod.identity,
                Some(tunnel.peer_identity()),
                early + request,
                response,
                None,
            );
        }
    }
}

/// Whether the app already closed or reset `app` (a non-blocking peek sees
/// EOF or an error; data or nothing yet means it is still there).
fn app_gone(app: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(app).peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Finds where the app's connection goes and opens the way there; `None`
/// when it goes nowhere (failures are counted and logged here).
async fn set_up(
    shared: &Shared,
    pod: &Arc<Pod>,
    app: &TcpStream,
    peer: SocketAddr,
) -> Option<Carry> {
    let SocketAddr::V4(peer4) = peer else {
        return None;
    };
    let orig = {
        let mut capture = shared.capture.lock().unwrap_or_else(|p| p.into_inner());
        capture.original_dst(pod.netns_cookie, peer4)
    };
    let dst = match orig {
        Ok(Some(d)) => SocketAddr::V4(d),
        Ok(None) if app_gone(app) => {
            // The app closed the connection before it was accepted (e.g. a
            // client exiting with a connect in flight): its CLOSE removed the
            // record. Nothing is lost.
            debug!(%peer, "app closed before its original destination was looked up");
            return None;
        }
        Ok(None) => {
            warn!(%peer, "no original destination recorded; closing");
            return None;
        }
        Err(e) => {
            warn!(%peer, error = %e, "original destination lookup failed");
            return None;
        }
    };
    if dst.ip().is_loopback()
        && [ports::OUTBOUND, ports::INBOUND_PLAIN, ports::HBONE].contains(&dst.port())
    {
        warn!(%dst, "refusing a self-call");
        return None;
    }
    let state = shared.state();
    // The app's own address as its peers see it: the pod IP and its source port.
    let client = SocketAddr::new(pod.ip, peer.port());
    // Built only once the outcome is known: a burst of connections waiting
    // for a pooled connection then holds no label strings meanwhile.
    let source = || {
        state
            .workload(&pod.uid)
            .map(|w| PeerLabels::of(w, Some(pod.identity.to_string())))
            .unwrap_or_default()
    };
    match route(&state, dst) {
        Route::NoEndpoint(host) => {
            let labels = labels(source(), None, Some(&host), "mutual_tls");
            shared.metrics.failed(&TrafficLabels {
                response_flags: "UF",
                ..labels
            });
            warn!(target: "access", reporter = "source", src.addr = %client, dst.service = %host, "no healthy endpoint");
            None
        }
        Route::Passthrough(to) => {
            let upstream = async {
                let s = marked_socket_in(&pod.netns, to, ambit_ebpf::ZTUNNEL_MARK)?;
                s.connect(to).await
            };
            match upstream.await {
                Ok(up) => {
                    debug!(%client, %to, "passthrough");
                    let log = ConnectionLog::outbound(client, to, None);
                    Some(Carry::Passthrough(up, Box::new(log)))
                }
                Err(e) => {
                    debug!(%to, error = %e, "passthrough connect failed");
                    None
                }
            }
        }
        Route::Hbone {
            endpoint,
            authority,
            workload,
            expected,
            service_host,
        } => {
            // What the app has already sent goes with the CONNECT (nothing
            // yet for server-first protocols).
            let early = match ambit_hbone::relay::read_now(app) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bytes::Bytes::new(),
                Err(e) => {
                    debug!(%client, error = %e, "app connection failed before its tunnel opened");
                    return None;
                }
            };
            let early_len = early.len() as u64;
            let head = ConnectHead {
                authority: authority.to_string(),
                forwarded_for: Some(client),
                forwarded_host: service_host.clone(),
                baggage: vec![("k8s.namespace.name".into(), pod.identity.namespace().into())],
            };
            // Same node or even same pod: still through HBONE, so identity and
            // policy always apply.
            let tunnel = open_tunnel(shared, pod, endpoint, expected, head, early).await;
            let mut l = labels(
                source(),
                Some(&workload),
                service_host.as_deref(),
                "mutual_tls",
            );
            match tunnel {
                Ok(t) => {
                    let series = shared.metrics.series(&l);
                    series.opened();
                    info!(target: "access", reporter = "source", src.addr = %client, src.identity = %pod.identity, dst.addr = %endpoint, dst.identity = %t.peer_identity(), dst.service = service_host.as_deref().unwrap_or("-"), "connection opened");
                    let log = ConnectionLog::outbound(client, endpoint, service_host.clone());
                    Some(Carry::Tunnel(Box::new((t, log)), series, early_len))
                }
                Err(e) => {
                    l.response_flags = match &e {
                        ambit_hbone::client::ClientError::Refused(s)
                            if *s == http::StatusCode::UNAUTHORIZED =>
                        {
                            "DENY"
                        }
                        ambit_hbone::client::ClientError::Tls(_)
                        | ambit_hbone::client::ClientError::PeerRejected(_) => "TLS_FAILURE",
                        _ => "CONNECT",
                    };
                    shared.metrics.failed(&l);
                    // Istio's source-side line for a refused tunnel:
                    // `error="http status: 401 Unauthorized"`.
                    ConnectionLog::outbound(client, endpoint, service_host.clone()).complete(
                        &pod.identity,
                        None,
                        0,
                        0,
                        Some(&e),
                    );
                    None
                }
            }
        }
    }
}

fn labels(
    source: PeerLabels,
    dst: Option<&Workload>,
    service_host: Option<&str>,
    security: &'static str,
) -> TrafficLabels {
    TrafficLabels {
        reporter: "source",
        source,
        destination: dst.map(|w| PeerLabels::of(w, None)).unwrap_or_default(),
        request_protocol: "tcp",
        response_flags: "-",
        connection_security_policy: security,
        ..Default::default()
    }
    .with_service(service_host)
}

async fn open_tunnel(
    shared: &Shared,
    pod: &Arc<Pod>,
    endpoint: SocketAddr,
    expected: Vec<SpiffeId>,
    head: ConnectHead,
    early: bytes::Bytes,
) -> Result<Tunnel, ambit_hbone::client::ClientError> {
    let cert =
        shared
            .certs
            .get(&pod.identity)
            .map_err(|e| ambit_hbone::client::ClientError::Connect {
                addr: endpoint,
                source: std::io::Error::other(e.to_string()),
            })?;
    let netns_pod = pod.clone();
    let target = TunnelTarget {
        dial: SocketAddr::new(endpoint.ip(), ports::HBONE),
        expected,
        src_ip: Some(pod.ip),
        head,
        socket: Some(Arc::new(move |dst| {
            marked_socket_in(&netns_pod.netns, dst, ambit_ebpf::ZTUNNEL_MARK)
        })),
    };
    shared.pool.connect_with_data(&cert, &target, early).await
}
