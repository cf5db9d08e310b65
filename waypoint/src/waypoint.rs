//! The waypoint process state and its connections: HBONE in (one CONNECT
//! per client connection, the original destination as authority), protocol
//! detection per connection (HTTP/1.1, HTTP/2 and gRPC through the L7 path,
//! anything else through VirtualService `tcp` routes), the xDS consumer
//! (`L7Service` + `Address`), JWKS fetching for `jwksUri`, and the admin
//! endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use ambit_api::model::ProxyState;
use ambit_api::xds::proto::l7 as pb;
use ambit_api::xds::{ADDRESS_TYPE, L7_SERVICE_TYPE};
use ambit_hbone::client::SocketFactory;
use ambit_hbone::server::{InboundHandler, InboundRequest, Refusal};
use ambit_hbone::stream::H2Stream;
use ambit_hbone::{HboneConfig, HboneServer, Pool};
use ambit_identity::SpiffeId;
use ambit_proxy_core::certs::{CertManager, PodServerTls};
use ambit_proxy_core::xds::{NodeInfo, Rejected, Update, XdsClient};
use ambit_proxy_core::{accept, drain, workloads};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::KeyValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use crate::answer::local;
use crate::authz::{Mode, RequestAttributes};
use crate::body::{Finish, Metered};
use crate::forward::pick_target;
use crate::jwks_fetch::JwksLocation;
use crate::metrics::RequestLabels;
use crate::metrics::{Metrics, Peer};
use crate::normalize::PathNormalization;
use crate::proxy::{ConnInfo, Resolved};
use crate::relays::OpenRelays;
use crate::rewind::{Rewind, sniff_http};
use crate::state::{ServiceState, WaypointState};
use crate::sync;
use crate::upstream::Body;
use crate::upstream::{Target, Upstreams};
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Instant;

/// How a waypoint is set up.
pub struct WaypointConfig {
    /// `namespace/name` of its Gateway: only `L7Service`s naming it apply.
    pub name: String,
    /// The identity it serves and dials as (`.../sa/<gateway name>`).
    pub identity: SpiffeId,
    /// Its certificates (renewed in the background).
    pub certs: Arc<CertManager>,
    /// HBONE settings.
    pub hbone: HboneConfig,
    /// Makes upstream sockets (e.g. inside the waypoint pod's namespace).
    pub socket: Option<Arc<SocketFactory>>,
}

/// The mesh options that change what policy sees of a request: Istio's
/// `meshConfig.pathNormalization` and `gatewayTopology.numTrustedProxies`,
/// sent with each `L7Service` (Istio's defaults when it carries none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpOptions {
    /// How request paths are normalized before policy and routing.
    pub path_normalization: PathNormalization,
    /// Proxies in front of the mesh whose `X-Forwarded-For` entries are
    /// trusted for `remote.ip` (0: the header is ignored).
    pub num_trusted_proxies: u32,
}

/// A running waypoint.
pub struct Waypoint {
    name: String,
    identity: SpiffeId,
    certs: Arc<CertManager>,
    hbone: HboneConfig,
    relays: Arc<OpenRelays>,
    state: RwLock<Arc<WaypointState>>,
    addresses: RwLock<Arc<ProxyState>>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    synced: AtomicBool,
    /// Shutdown: stops the accept loops, the xDS client and fetch retries.
    drain: drain::Trigger,
    self_ref: Weak<Waypoint>,
    /// OTLP exporters for the Services' Telemetry tracing.
    tracers: crate::trace::Tracers,
}

/// The `service.name` of a waypoint's spans, as Istio names a waypoint's
/// (`<gateway>.<namespace>`), from its name `namespace/gateway`.
fn span_service_name(name: &str) -> String {
    match name.split_once('/') {
        Some((ns, gw)) => format!("{gw}.{ns}"),
        None => name.to_string(),
    }
}

impl std::fmt::Debug for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waypoint")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Waypoint {
    /// A waypoint with no config yet (not ready until xDS has answered).
    pub fn new(cfg: WaypointConfig) -> Arc<Self> {
        let pool = Pool::new(cfg.hbone.clone());
        let certs = cfg.certs.clone();
        let id = cfg.identity.clone();
        let cert_source = Arc::new(move || certs.get(&id).map_err(|e| e.to_string()));
        let tracers = crate::trace::Tracers::new(span_service_name(&cfg.name), cfg.socket.clone());
        Arc::new_cyclic(|me| Waypoint {
            upstreams: Upstreams::new(pool, cert_source, cfg.socket.clone()),
            name: cfg.name,
            identity: cfg.identity,
            certs: cfg.certs,
            hbone: cfg.hbone,
            relays: Arc::default(),
            state: RwLock::default(),
            addresses: RwLock::default(),
            metrics: Arc::default(),
            synced: AtomicBool::new(false),
            drain: drain::channel().0,
            self_ref: me.clone(),
            tracers,
        })
    }

    /// The current L7 config.
    pub fn state(&self) -> Arc<WaypointState> {
        sync::read(&self.state).clone()
    }

    /// The mesh's workloads and services (source telemetry, JWKS hosts).
    pub fn addresses(&self) -> Arc<ProxyState> {
        sync::read(&self.addresses).clone()
    }

    /// Request metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Upstream connections.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// `namespace/name` of the Gateway.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ready once every xDS type has been received and the certificate issued.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && self.certs.server_config(&self.identity).is_some()
    }

    /// Gets the waypoint's certificate from the CA (which only signs for a
    /// workload it knows, so this runs once xDS has synced), retrying.
    fn fetch_certificate(&self) {
        let me = self.self_ref.clone();
        tokio::task::spawn_blocking(move || {
            while let Some(w) = me.upgrade() {
                if w.drain.is_draining() {
                    return;
                }
                match w.certs.get(&w.identity) {
                    Ok(_) => return,
                    Err(e) => warn!(error = %e, "waypoint certificate not issued yet; retrying"),
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    /// Starts the drain: accept loops end, the xDS client stops
    /// reconnecting, certificate and JWKS retries stop.
    pub fn shutdown(&self) {
        self.drain.start();
    }

    /// A watch on this waypoint's drain, for tasks that must end with it.
    pub fn drain_watch(&self) -> drain::Watch {
        self.drain.watch()
    }

    /// Applies one `L7Service` (or its removal).
    pub fn apply_l7(&self, name: &str, svc: Option<pb::L7Service>) -> Result<(), String> {
        let mut guard = sync::write(&self.state);
        let mut next = (**guard).clone();
        let changed = next
            .apply(&self.name, name, svc)
            .map_err(|e| e.to_string())?;
        if changed {
            let next = Arc::new(next);
            *guard = next.clone();
            drop(guard);
            crate::relays::recheck(&self.relays, &next);
            if let Some(s) = self.state().get(name) {
                self.fetch_jwks(s);
            }
        }
        Ok(())
    }

    /// Replaces the address state.
    pub fn set_addresses(&self, state: ProxyState) {
        *sync::write(&self.addresses) = Arc::new(state);
    }

    /// Fetches keys for `svc`'s `jwksUri` rules, retrying until they arrive
    /// and refreshing every 5 minutes while the config is current.
    fn fetch_jwks(&self, svc: &Arc<ServiceState>) {
        let remote = sync::read(&svc.jwt).remote_keys();
        for (index, uri, timeout) in remote {
            let weak_svc = Arc::downgrade(svc);
            let me = self.self_ref.clone();
            tokio::spawn(async move {
                loop {
                    let (Some(svc), Some(me)) = (weak_svc.upgrade(), me.upgrade()) else {
                        return;
                    };
                    let fetched = tokio::time::timeout(timeout, me.get_jwks(&uri))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                    let wait = match fetched {
                        Ok(keys) => {
                            sync::write(&svc.jwt).set_keys(index, keys);
                            info!(%uri, "JWKS fetched");
                            Duration::from_secs(300)
                        }
                        Err(e) => {
                            warn!(%uri, error = %e, "JWKS fetch failed; tokens for this issuer are refused until it succeeds");
                            Duration::from_secs(1)
                        }
                    };
                    drop((svc, me));
                    tokio::time::sleep(wait).await;
                }
            });
        }
    }

    /// GETs a JWKS (see [`crate::jwks_fetch`]): a mesh Service's endpoint
    /// over HBONE when it is in the mesh, else plain TCP (DNS for names
    /// outside the mesh); `https://` verified against system and mesh roots.
    async fn get_jwks(&self, uri: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
        let loc = JwksLocation::parse(uri)?;
        let target = match loc.mesh_target(&self.addresses())? {
            Some(t) => t,
            None => {
                let addr = tokio::net::lookup_host((loc.host.as_str(), loc.port))
                    .await
                    .map_err(|e| format!("resolving {}: {e}", loc.host))?
                    .next()
                    .ok_or_else(|| format!("{} resolves to no address", loc.host))?;
                Target {
                    addr,
                    identity: String::new(),
                    hbone: false,
                    http2: false,
                }
            }
        };
        let io = self
            .upstreams
            .dial(&target)
            .await
            .map_err(|e| e.to_string())?;
        let io: Box<dyn crate::upstream::Io> = if loc.tls {
            let mesh_roots = self
                .certs
                .get(&self.identity)
                .ok()
                .map(|c| c.roots().clone());
            let tls = loc
                .tls_connector(mesh_roots.as_ref())?
                .connect(loc.server_name()?, io)
                .await
                .map_err(|e| format!("TLS to {}: {e}", loc.host))?;
            Box::new(tls)
        } else {
            io
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let host = if (loc.tls && loc.port == 443) || (!loc.tls && loc.port == 80) {
            loc.host.clone()
        } else {
            format!("{}:{}", loc.host, loc.port)
        };
        let req = http::Request::get(loc.path.as_str())
            .header(http::header::HOST, host)
            .body(crate::answer::full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
    }

    /// The HBONE server (port 15008) for this waypoint.
    pub fn hbone_server(self: &Arc<Self>) -> Arc<HboneServer<WaypointHandler>> {
        HboneServer::new(
            self.hbone.clone(),
            Arc::new(PodServerTls::new(self.certs.clone(), self.identity.clone())),
            WaypointHandler {
                waypoint: self.clone(),
            },
        )
    }

    /// What the waypoint knows of a connection from `client` (`peer`, when
    /// authenticated) to `dst`: the client's labels and the Service `dst`
    /// resolves to now.
    pub fn conn_info(
        &self,
        peer: Option<SpiffeId>,
        client: SocketAddr,
        dst: SocketAddr,
    ) -> ConnInfo {
        let state = self.state();
        let resolved = state
            .for_destination(dst.ip())
            .map(|(service, via_vip)| Resolved {
                service: service.clone(),
                via_vip,
                generation: state.generation(),
            });
        let addresses = self.addresses();
        let w = addresses.workload_by_ip(client.ip());
        let source = Peer {
            workload: w.map(|w| w.workload_name.clone()).unwrap_or_default(),
            namespace: peer
                .as_ref()
                .map(|p| p.namespace().to_string())
                .or_else(|| w.map(|w| w.namespace.clone()))
                .unwrap_or_default(),
            principal: peer.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            app: w.map(|w| w.canonical_name.clone()).unwrap_or_default(),
            version: w.map(|w| w.canonical_revision.clone()).unwrap_or_default(),
        };
        ConnInfo {
            peer_identity: peer,
            client,
            dst,
            source,
            resolved,
        }
    }

    /// Serves plain HTTP on `listener` as if every connection had been
    /// tunnelled to `dst` (debugging, and benchmarks against other proxies).
    pub async fn serve_plaintext(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        dst: SocketAddr,
    ) {
        let drain = self.drain_watch();
        accept::serve(listener, "plaintext", drain, |tcp, peer| {
            let _ = tcp.set_nodelay(true);
            let info = self.conn_info(None, peer, dst);
            let me = self.clone();
            tokio::spawn(async move { me.serve_connection(tcp, info).await });
        })
        .await
    }

    /// Serves one client connection: HTTP (detected) or TCP routes.
    pub async fn serve_connection<IO>(
        self: Arc<Self>,
        mut io: IO,
        info: ConnInfo,
    ) -> std::io::Result<(u64, u64)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = info.resolved.clone();
        let declared = svc.as_ref().and_then(|r| {
            let s = &r.service;
            s.service()
                .ports
                .iter()
                .find(|p| p.port == u32::from(info.dst.port()))
                .map(|p| p.protocol.to_ascii_lowercase())
        });
        let mut prefix = BytesMut::new();
        let is_http = match declared.as_deref() {
            Some("tcp") => false,
            Some("http" | "http2" | "grpc") => true,
            _ => {
                // Sniff: HTTP/1 method or the HTTP/2 preface. Server-first
                // protocols send nothing, so give up after a second.
                let sniffed =
                    tokio::time::timeout(Duration::from_secs(1), sniff_http(&mut io, &mut prefix))
                        .await;
                matches!(sniffed, Ok(Ok(Some(true))))
            }
        };
        let io = Rewind::new(prefix.freeze(), io);
        if !is_http {
            return self.relay_tcp(info, io).await;
        }
        let info = Arc::new(info);
        let me = self.clone();
        let service = service_fn(move |req| me.clone().handle(info.clone(), req));
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .max_concurrent_streams(1024)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20);
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await
        {
            debug!(error = %e, "downstream HTTP connection ended");
        }
        Ok((0, 0))
    }

    /// Handles one request end to end. Never fails: errors become HTTP
    /// answers with Envoy's response flags.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        // Envoy adds an x-request-id when the client sent none; the access
        // log, the span and the upstream all see the same one.
        crate::trace::ensure_request_id(req.headers_mut());
        let head = RequestHead::of(&req);
        let state = self.state();
        let Some((svc, via_vip)) = conn.service_now(&state) else {
            let resp = local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no service for this destination\n",
            );
            let outcome = crate::proxy::Outcome {
                flags: "NR",
                details: "cluster_not_found".into(),
                destination: Peer::default(),
            };
            return Ok(self.finish(&conn, None, head, resp, outcome, None));
        };
        // Telemetry tracing: continue or start the trace; the upstream gets
        // this span as its parent.
        let span = svc.service().tracing.as_ref().map(|t| {
            let span = crate::trace::RequestSpan::start(
                crate::trace::parent_of(req.headers()),
                t.sampling_percentage,
            );
            span.inject(req.headers_mut());
            span
        });
        let (resp, outcome) = crate::proxy::process(&self, &conn, &svc, via_vip, req).await;
        Ok(self.finish(&conn, Some(&svc), head, resp, outcome, span))
    }

    /// Wraps the response body so metrics are recorded and the access log
    /// line written when it ends.
    fn finish(
        self: &Arc<Self>,
        conn: &ConnInfo,
        svc: Option<&Arc<ServiceState>>,
        head: RequestHead,
        resp: Response<Body>,
        outcome: crate::proxy::Outcome,
        span: Option<crate::trace::RequestSpan>,
    ) -> Response<Body> {
        let crate::proxy::Outcome {
            flags,
            details,
            destination,
        } = outcome;
        let RequestHead {
            protocol,
            request_bytes,
            started,
            ..
        } = head;
        let (service, name, namespace) = svc
            .map(|s| {
                let l7 = s.service();
                (l7.hostname.clone(), l7.name.clone(), l7.namespace.clone())
            })
            .unwrap_or_default();
        let labels = RequestLabels {
            source: conn.source.clone(),
            destination,
            destination_service: service,
            destination_service_name: name,
            destination_service_namespace: namespace,
            request_protocol: protocol,
            response_code: resp.status().as_u16(),
            response_flags: flags,
        };
        let this = self.clone();
        let client = conn.client;
        let dst = conn.dst;
        // Only a sampled span takes the Service's tracing config along (an
        // unsampled one only propagated its context).
        let traced = span
            .filter(crate::trace::RequestSpan::sampled)
            .and_then(|sp| Some((sp, svc?.service().tracing.clone()?)));
        // Telemetry `accessLogging` (or the mesh config) decides per Service;
        // a request no Service took is always logged.
        let access_log = svc.is_none_or(|s| s.service().access_log.is_some());
        let finish: Finish = Box::new(move |response_bytes| {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            // Envoy's access log fields, as Istio's waypoints write them.
            if access_log {
                info!(
                target: "access",
                reporter = "waypoint",
                src.addr = %client,
                src.principal = %labels.source.principal,
                dst.addr = %dst,
                dst.service = %labels.destination_service,
                dst.workload = %labels.destination.workload,
                method = %head.method,
                path = %head.path,
                protocol = head.version,
                authority = %head.authority,
                user_agent = head.user_agent.as_deref().unwrap_or("-"),
                request_id = head.request_id.as_deref().unwrap_or("-"),
                code = labels.response_code,
                flags = labels.response_flags,
                details = %details,
                bytes_received = request_bytes,
                bytes_sent = response_bytes,
                duration_ms = ms,
                "request"
                );
            }
            if let Some((span, tracing)) = traced {
                // Envoy's span for Istio: `<host>:<port>/*`, its HTTP and
                // Istio tags, an error status for 5xx.
                let name = format!("{}:{}/*", labels.destination_service, dst.port());
                let text = |v: &str| opentelemetry::Value::from(v.to_string());
                let attributes = vec![
                    KeyValue::new("http.method", text(head.method.as_str())),
                    KeyValue::new(
                        "http.url",
                        text(&format!("http://{}{}", head.authority, head.path)),
                    ),
                    KeyValue::new("http.protocol", text(head.version)),
                    KeyValue::new("http.status_code", i64::from(labels.response_code)),
                    KeyValue::new(
                        "user_agent",
                        text(head.user_agent.as_deref().unwrap_or("-")),
                    ),
                    KeyValue::new(
                        "guid:x-request-id",
                        text(head.request_id.as_deref().unwrap_or("-")),
                    ),
                    KeyValue::new("response_flags", text(labels.response_flags)),
                    KeyValue::new("response_code_details", text(&details)),
                    KeyValue::new(
                        "upstream_cluster",
                        text(&format!(
                            "outbound|{}||{}",
                            dst.port(),
                            labels.destination_service
                        )),
                    ),
                    KeyValue::new("peer.address", text(&client.ip().to_string())),
                    KeyValue::new(
                        "istio.namespace",
                        text(&labels.destination_service_namespace),
                    ),
                    KeyValue::new("istio.canonical_service", text(&labels.destination.app)),
                    KeyValue::new("component", text("proxy")),
                ];
                let failed = labels.response_code >= 500;
                this.tracers
                    .export(&tracing, span.finish(name, attributes, failed));
            }
            this.metrics()
                .record(labels, ms, request_bytes, response_bytes);
        });
        resp.map(|b| Metered::new(b, vec![], Some(finish)).boxed())
    }

    /// VirtualService `tcp` routes (or the Service itself): bytes to one
    /// endpoint.
    async fn relay_tcp<IO>(
        self: Arc<Self>,
        info: ConnInfo,
        mut io: IO,
    ) -> std::io::Result<(u64, u64)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Decided on the config in force now (detection may have taken a
        // second since the connection opened).
        let decided_in = self.state();
        let Some((svc, _)) = info.service_now(&decided_in) else {
            return Err(std::io::Error::other(format!(
                "no service for {}",
                info.dst
            )));
        };
        // The same AuthorizationPolicies as HTTP requests, with Istio's TCP
        // semantics (HTTP-only fields cannot be seen on bytes).
        let attrs = tcp_attributes(&info);
        let decision = svc.authz.authorize(Mode::Tcp, &attrs);
        if !decision.is_allowed() {
            // Envoy's network RBAC filter: the connection's termination
            // details name the policy and rule.
            let details = svc.authz.refusal_details(Mode::Tcp, &attrs, &decision);
            tracing::error!(target: "access", reporter = "waypoint", src.addr = %info.client,
                src.principal = %info.source.principal, dst.addr = %info.dst,
                dst.service = %svc.service().hostname, %details, error = %decision,
                "tcp connection denied");
            self.metrics
                .tcp_denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                decision.to_string(),
            ));
        }
        let port = info.dst.port();
        let l7 = svc.service();
        let dest = l7
            .tcp
            .iter()
            .find(|r| r.ports.is_empty() || r.ports.contains(&u32::from(port)))
            .and_then(|r| {
                let total: u64 = r.route.iter().map(|d| u64::from(d.weight)).sum();
                crate::route::pick_weighted(&r.route, total, rand::random())
            })
            .and_then(|d| d.destination.clone());
        let (_, target) = svc
            .resolve(dest.as_ref(), port)
            .and_then(|(backend, subset, port)| {
                pick_target(subset, backend, port, None, false, None)
            })
            .ok_or_else(|| std::io::Error::other("no healthy upstream"))?;
        let mut up = self
            .upstreams
            .dial(&target)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let relay = self.relays.register(crate::relays::Relay {
            destination: info.dst.ip(),
            attrs: attrs.clone(),
        });
        // A push between the decision and the registration re-checked
        // every relay but this one: check it against that push too.
        let now = self.state();
        if now.generation() != decided_in.generation()
            && !now
                .for_destination(info.dst.ip())
                .is_some_and(|(s, _)| s.authz.authorize(Mode::Tcp, &attrs).is_allowed())
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "closed: a policy change denies this connection",
            ));
        }
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut io, &mut up) => r,
            () = relay.revoked() => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "closed: a policy change denies this connection",
            )),
        }
    }

    /// `/config_dump`: the Services served and their sources.
    pub fn config_dump(&self) -> String {
        let state = self.state();
        let services: Vec<serde_json::Value> = state
            .services()
            .map(|s| {
                let l7 = s.service();
                serde_json::json!({
                    "hostname": l7.hostname,
                    "vips": l7.vips,
                    "routes": l7.http.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                    "policies": l7.authorization.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>(),
                    "authorization": l7.authorization.iter().map(|p| serde_json::json!({
                        "name": format!("{}/{}", p.namespace, p.name),
                        "action": pb::http_policy::Action::try_from(p.action).map_or("DENY (unknown action)", |a| a.as_str_name()),
                        "rules": p.rules.len(),
                        "dryRun": p.dry_run,
                    })).collect::<Vec<_>>(),
                    "backends": s.backends.iter().map(|(h, b)| (h.clone(), b.subsets.iter().map(|(n, ss)| (n.clone(), ss.endpoints.iter().map(|e| e.address.clone()).collect::<Vec<_>>())).collect::<HashMap<_, _>>())).collect::<HashMap<_, _>>(),
                    "sources": l7.sources,
                    "tracing": l7.tracing.as_ref().map(|t| serde_json::json!({
                        "provider": t.provider,
                        "service": t.service,
                        "endpoints": t.endpoints,
                        "samplingPercentage": t.sampling_percentage,
                        "source": t.source,
                    })),
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "waypoint": self.name,
            "identity": self.identity.to_string(),
            "ready": self.is_ready(),
            "services": services,
            "version": {"version": env!("CARGO_PKG_VERSION")},
        }))
        .unwrap_or_default()
    }

    /// The waypoint's xDS client (as node `info`): `L7Service` for its
    /// config, `Address` for source telemetry and JWKS hosts. Once both have
    /// answered, it asks the CA for its certificate (the CA signs only for a
    /// workload it knows).
    pub fn xds_client(self: &Arc<Self>, info: NodeInfo) -> XdsClient {
        let target = self.clone();
        let (addresses, _) =
            workloads::handlers(Arc::new(move |state| target.set_addresses(state)));
        let target = self.clone();
        let l7 = move |updates: Vec<Update<pb::L7Service>>| {
            let mut rejected = Vec::new();
            for u in updates {
                let (name, svc) = match u {
                    Update::Remove(name) => (name, None),
                    Update::Upsert(name, svc) => (name, Some(svc)),
                };
                if let Err(e) = target.apply_l7(&name, svc) {
                    rejected.push(Rejected::new(name, e));
                }
            }
            rejected
        };
        let synced = self.clone();
        XdsClient::new("waypoint", info)
            .watch(ADDRESS_TYPE, addresses)
            .watch(L7_SERVICE_TYPE, l7)
            .on_synced(move || {
                if !synced.synced.swap(true, Ordering::Relaxed) {
                    synced.fetch_certificate();
                }
            })
    }
}

/// What a TCP policy check sees of a connection: the L4 facts only.
fn tcp_attributes(info: &ConnInfo) -> RequestAttributes {
    RequestAttributes {
        peer: info.peer_identity.clone(),
        source_ip: Some(info.client.ip()),
        remote_ip: Some(info.client.ip()),
        destination_ip: Some(info.dst.ip()),
        port: info.dst.port(),
        ..Default::default()
    }
}

/// The waypoint's HBONE handler: any CONNECT to a destination it serves is
/// accepted and its stream handed to the HTTP server.
pub struct WaypointHandler {
    waypoint: Arc<Waypoint>,
}

impl InboundHandler for WaypointHandler {
    type Upstream = ConnInfo;

    async fn open(&self, req: InboundRequest) -> Result<ConnInfo, Refusal> {
        let dst = ambit_hbone::server::address_target(&req.connect.target)?;
        let client = req.connect.forwarded_for.unwrap_or(req.peer_addr);
        let info = self
            .waypoint
            .conn_info(Some(req.peer_identity), client, dst);
        if info.resolved.is_none() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{dst} is not a destination this waypoint serves"),
            ));
        }
        Ok(info)
    }

    async fn relay(&self, tunnel: H2Stream, info: ConnInfo) -> std::io::Result<(u64, u64)> {
        self.waypoint.clone().serve_connection(tunnel, info).await
    }
}

/// What metrics and the access log say about a request, taken from its
/// head before the request is processed.
struct RequestHead {
    method: http::Method,
    path: String,
    version: &'static str,
    authority: String,
    user_agent: Option<String>,
    request_id: Option<String>,
    protocol: &'static str,
    request_bytes: u64,
    started: Instant,
}

impl RequestHead {
    /// Reads the head of `req` as it arrives (the clock starts here).
    fn of<B>(req: &Request<B>) -> Self {
        let started = Instant::now();
        let text = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        RequestHead {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), ToString::to_string),
            version: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            authority: req
                .uri()
                .authority()
                .map(ToString::to_string)
                .or_else(|| text("host"))
                .unwrap_or_else(|| "-".into()),
            user_agent: text("user-agent"),
            request_id: text("x-request-id"),
            protocol: if content_type.is_some_and(|v| v.starts_with("application/grpc")) {
                "grpc"
            } else {
                "http"
            },
            request_bytes: req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            started,
        }
    }
}
