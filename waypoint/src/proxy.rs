//! The request path: one HTTP request from a tunnelled client through
//! RequestAuthentication, AuthorizationPolicy, the local rate limit,
//! VirtualService routing (redirect, CORS, fault, rewrite, headers, mirror)
//! and DestinationRule balancing to an endpoint, with timeouts and retries,
//! then the response back with its header operations. The order is Envoy's
//! filter chain in an Istio waypoint: jwt_authn → rbac → local_ratelimit →
//! cors → fault → router.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ambit_api::xds::proto::l7 as pb;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::{debug, info};

use crate::authz::{Mode, RequestAttributes};
use crate::body::{Finish, Metered};
use crate::jwt::{Authenticated, JwtError};
use crate::metrics::{Peer, RequestLabels};
use crate::route::{Decision, RequestFacts};
use crate::state::{ServiceState, Subset};
use crate::upstream::{Body, BoxError, Target, UpstreamError};
use crate::waypoint::Waypoint;

/// Bodies up to this size are buffered so a retry or mirror can resend them;
/// larger ones stream once.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// What the waypoint knows about the tunnel a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's verified identity (`spiffe://...`), from mTLS.
    pub peer_identity: Option<ambit_identity::SpiffeId>,
    /// The client app's address (from the CONNECT's `forwarded`).
    pub client: SocketAddr,
    /// The original destination (CONNECT authority: VIP or pod IP : port).
    pub dst: SocketAddr,
    /// The client's telemetry labels.
    pub source: Peer,
}

/// An answer the waypoint makes itself.
fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A body from bytes.
pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn header_map(h: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in h {
        if let Ok(v) = v.to_str() {
            out.entry(k.as_str().to_string())
                .and_modify(|e: &mut String| {
                    e.push(',');
                    e.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
    }
    out
}

/// Each header's values, one per line as sent (what authorization matches).
fn header_values(h: &http::HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        if let Ok(v) = v.to_str() {
            out.entry(k.as_str().to_string())
                .or_default()
                .push(v.to_string());
        }
    }
    out
}

fn query_map(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn authority_of<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default()
}

fn apply_ops(h: &mut http::HeaderMap, ops: Option<&pb::HeaderOps>) {
    let Some(ops) = ops else { return };
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
            h.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
            h.append(k, v);
        }
    }
    for k in &ops.remove {
        if let Ok(k) = HeaderName::try_from(k.as_str()) {
            h.remove(k);
        }
    }
}

/// Does `pct` percent of requests apply? The controller writes Istio's
/// defaults in: an unset `mirrorPercentage` is 100, an explicit 0 mirrors
/// nothing (Istio's `MirrorPercent`), a fault without percentage is 0.
fn sampled(pct: f64) -> bool {
    rand::random::<f64>() * 100.0 < pct
}

/// Retry conditions (Envoy names), with Istio's default policy.
#[derive(Clone, Debug)]
struct RetryPolicy {
    attempts: u32,
    per_try: Option<Duration>,
    on_5xx: bool,
    on_gateway: bool,
    on_reset: bool,
    on_connect: bool,
    on_refused: bool,
    on_4xx: bool,
    /// gRPC `unavailable` (grpc-status 14) and `cancelled` (1) in the
    /// response headers (a trailers-only answer).
    grpc_statuses: Vec<&'static str>,
    statuses: Vec<u16>,
}

impl RetryPolicy {
    fn of(r: Option<&pb::Retry>) -> Self {
        // Istio's default (`retry.DefaultPolicy` with its default
        // EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY): 2 attempts on
        // connect-failure, refused-stream, gRPC unavailable and cancelled,
        // and `retriable-status-codes` with no code listed: a plain 503 from
        // the backend is not retried.
        let (attempts, per_try, on) = match r {
            None => (
                2,
                None,
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            ),
            Some(r) => (
                r.attempts,
                (r.per_try_timeout_ms > 0).then(|| Duration::from_millis(r.per_try_timeout_ms)),
                if r.retry_on.is_empty() {
                    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                } else {
                    r.retry_on.as_str()
                },
            ),
        };
        let has = |c: &str| on.split(',').any(|x| x.trim() == c);
        // Istio moves numbers in `retryOn` to Envoy's retriable status codes.
        let statuses: Vec<u16> = on
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        let grpc_statuses = [("unavailable", "14"), ("cancelled", "1")]
            .into_iter()
            .filter(|(name, _)| has(name))
            .map(|(_, code)| code)
            .collect();
        RetryPolicy {
            grpc_statuses,
            attempts,
            per_try,
            on_5xx: has("5xx"),
            on_gateway: has("gateway-error"),
            on_reset: has("reset"),
            on_connect: has("connect-failure") || has("5xx") || has("gateway-error"),
            on_refused: has("refused-stream") || has("5xx"),
            on_4xx: has("retriable-4xx"),
            statuses,
        }
    }

    fn retry_response<B>(&self, resp: &Response<B>) -> bool {
        let grpc = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| self.grpc_statuses.contains(&v));
        grpc || self.retry_status(resp.status().as_u16())
    }

    fn retry_status(&self, s: u16) -> bool {
        (self.on_5xx && s >= 500)
            || (self.on_gateway && (502..=504).contains(&s))
            || (self.on_4xx && s == 409)
            || self.statuses.contains(&s)
    }

    fn retry_error(&self, e: &UpstreamError) -> bool {
        match e {
            UpstreamError::Overflow => false,
            UpstreamError::Connect(_) => self.on_connect,
            UpstreamError::Request(_) if e.is_refused_stream() => self.on_refused,
            UpstreamError::Request(_) => self.on_reset || self.on_5xx || self.on_gateway,
        }
    }
}

/// The replayable part of a request.
struct Prepared {
    parts: http::request::Parts,
    body: Option<Bytes>,
}

impl Prepared {
    fn build(&self) -> Request<Body> {
        let mut b = Request::builder()
            .method(self.parts.method.clone())
            .uri(self.parts.uri.clone())
            .version(self.parts.version);
        if let Some(h) = b.headers_mut() {
            *h = self.parts.headers.clone();
        }
        let body = self
            .body
            .clone()
            .map(full)
            .unwrap_or_else(|| full(Bytes::new()));
        b.body(body)
            .unwrap_or_else(|_| Request::new(full(Bytes::new())))
    }
}

/// What one request turned into, for metrics and the access log.
struct Outcome {
    flags: &'static str,
    destination: Peer,
}

impl Waypoint {
    /// Handles one request end to end. Never fails: errors become HTTP
    /// answers with Envoy's response flags.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let started = Instant::now();
        let state = self.state();
        let protocol = if req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
        {
            "grpc"
        } else {
            "http"
        };
        let request_bytes = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        let Some((svc, via_vip)) = state.for_destination(conn.dst.ip()) else {
            let resp = local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no service for this destination\n",
            );
            return Ok(self.finish(
                &conn,
                None,
                protocol,
                started,
                request_bytes,
                resp,
                "NR",
                Peer::default(),
            ));
        };
        let svc = svc.clone();
        let (resp, outcome) = self.process(&conn, &svc, via_vip, req).await;
        Ok(self.finish(
            &conn,
            Some(&svc),
            protocol,
            started,
            request_bytes,
            resp,
            outcome.flags,
            outcome.destination,
        ))
    }

    /// Wraps the response body so metrics are recorded when it ends.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        self: &Arc<Self>,
        conn: &ConnInfo,
        svc: Option<&Arc<ServiceState>>,
        protocol: &'static str,
        started: Instant,
        request_bytes: u64,
        resp: Response<Body>,
        flags: &'static str,
        destination: Peer,
    ) -> Response<Body> {
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
        let finish: Finish = Box::new(move |response_bytes| {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            info!(
                target: "access",
                src_addr = %client,
                dst_addr = %dst,
                dst_service = %labels.destination_service,
                code = labels.response_code,
                flags = labels.response_flags,
                duration_ms = ms,
                "request"
            );
            this.metrics()
                .record(labels, ms, request_bytes, response_bytes);
        });
        resp.map(|b| Metered::new(b, vec![], Some(finish)).boxed())
    }

    async fn process(
        self: &Arc<Self>,
        conn: &ConnInfo,
        svc: &Arc<ServiceState>,
        via_vip: bool,
        req: Request<Incoming>,
    ) -> (Response<Body>, Outcome) {
        let mut out = Outcome {
            flags: "-",
            destination: Peer::default(),
        };
        // Path normalization first: every later stage, and the upstream,
        // sees the normalized path.
        let options = svc.http_options.unwrap_or_default();
        let path = match options.path_normalization.apply(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "request refused");
                out.flags = "-";
                return (local(StatusCode::BAD_REQUEST, "Bad Request"), out);
            }
        };
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let req = match with_path(req, &path_and_query) {
            Some(r) => r,
            None => return (local(StatusCode::BAD_REQUEST, "Bad Request"), out),
        };
        let mut facts = RequestFacts {
            method: req.method().as_str().to_string(),
            path: path.clone(),
            authority: authority_of(&req),
            headers: header_map(req.headers()),
            query: query_map(req.uri().query()),
            source_namespace: conn.source.namespace.clone(),
            port: u32::from(conn.dst.port()),
        };
        // RequestAuthentication: a bad token is 401 (an authentic one for
        // another audience 403); no token passes on. CORS preflights skip it
        // (Istio sets Envoy's `bypass_cors_preflight`).
        let preflight = req.method() == Method::OPTIONS
            && facts.headers.contains_key("origin")
            && facts.headers.contains_key("access-control-request-method");
        let (mut req_parts, body) = req.into_parts();
        let authenticated = match authenticate(svc, &facts, preflight) {
            Ok(a) => a,
            Err(e) => {
                out.flags = "UAEX";
                return (jwt_refusal(&e), out);
            }
        };
        if let Some((a, Some(rule))) = &authenticated {
            apply_jwt_outputs(&mut req_parts.headers, a, rule);
        }
        // AuthorizationPolicy, on the headers as the RBAC filter sees them:
        // after the JWT filter removed the token and added its outputs.
        let attrs = request_attributes(
            conn,
            &facts,
            authenticated.as_ref().map(|(a, _)| a),
            options.num_trusted_proxies,
            &req_parts.headers,
        );
        let decision = svc.authz.authorize(Mode::Http, &attrs);
        if !decision.is_allowed() {
            debug!(?decision, "request denied");
            out.flags = "-";
            return (local(StatusCode::FORBIDDEN, "RBAC: access denied"), out);
        }
        // VirtualService.
        let routed = if via_vip {
            svc.router.route(&facts, rand::random())
        } else {
            Decision::Default
        };
        let (route, route_index, destination) = match routed {
            Decision::NoMatch => {
                out.flags = "NR";
                return (local(StatusCode::NOT_FOUND, ""), out);
            }
            Decision::Default => (None, None, None),
            Decision::Route {
                route,
                index,
                destination,
            } => (Some(route), Some(index), destination),
        };
        // Local rate limit: the Service's buckets, then the route's.
        for limit in &svc.limits {
            if !limit.config.route.is_empty() && route.is_none_or(|r| r.name != limit.config.route)
            {
                continue;
            }
            let ok = crate::sync::lock(&limit.bucket).try_take(Instant::now());
            if !ok {
                out.flags = "RL";
                let mut r = local(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited\n");
                if let Ok(v) = HeaderValue::try_from(limit.config.name.as_str()) {
                    r.headers_mut().insert("x-ambit-ratelimited", v);
                }
                return (r, out);
            }
        }
        let origin = facts.headers.get("origin").cloned();
        let cors = route.zip(route_index).and_then(|(r, i)| {
            r.cors.as_ref().map(|policy| crate::cors::Cors {
                policy,
                origins: svc.router.cors_origins(i),
            })
        });
        if let (Some(cors), Some(origin)) = (cors, &origin)
            && req_parts.method == Method::OPTIONS
            && facts.headers.contains_key("access-control-request-method")
        {
            return (crate::cors::preflight(cors, origin), out);
        }
        if let Some(route) = route
            && let Some(fault) = &route.fault
        {
            if let Some(d) = &fault.delay
                && d.fixed_delay_ms > 0
                && sampled(d.percentage)
            {
                tokio::time::sleep(Duration::from_millis(d.fixed_delay_ms)).await;
                out.flags = "DI";
            }
            if let Some(a) = &fault.abort
                && sampled(a.percentage)
            {
                out.flags = "FI";
                let status = u16::try_from(a.http_status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return (local(status, "fault filter abort"), out);
            }
        }
        // Route actions that answer without an upstream (after the fault
        // filter, as in Envoy's filter chain).
        if let Some(route) = route
            && let Some(redirect) = &route.redirect
        {
            return (
                redirect_response(redirect, &req_parts, &facts.authority),
                out,
            );
        }
        if let Some(route) = route
            && let Some(direct) = &route.direct_response
        {
            return (direct_response(direct), out);
        }
        // Request rewriting and headers.
        if let Some(route) = route
            && let Some(rw) = &route.rewrite
        {
            let new_path = if !rw.uri.is_empty() {
                Some(rewrite_path(route, &path, &rw.uri))
            } else {
                route_index.and_then(|i| svc.router.regex_rewrite(i, &path))
            };
            if let Some(new_path) = new_path {
                let query = path_and_query
                    .split_once('?')
                    .map(|(_, q)| format!("?{q}"))
                    .unwrap_or_default();
                if let Ok(uri) = format!("{new_path}{query}").parse::<http::Uri>() {
                    req_parts.uri = uri;
                }
            }
            if !rw.authority.is_empty()
                && let Ok(v) = HeaderValue::try_from(rw.authority.as_str())
            {
                req_parts.headers.insert(header::HOST, v);
                facts.authority = rw.authority.clone();
            }
        }
        apply_ops(
            &mut req_parts.headers,
            route
                .and_then(|r| r.headers.as_ref())
                .and_then(|h| h.request.as_ref()),
        );
        apply_ops(
            &mut req_parts.headers,
            destination
                .and_then(|d| d.headers.as_ref())
                .and_then(|h| h.request.as_ref()),
        );
        // HTTP/2 upstream iff the client spoke it (gRPC stays gRPC).
        let http2 = req_parts.version == http::Version::HTTP_2;
        let upgrade = !http2 && is_upgrade(&req_parts.headers);
        // Hop-by-hop headers are this connection's, not the upstream's.
        for h in ["keep-alive", "proxy-connection", "transfer-encoding"] {
            req_parts.headers.remove(h);
        }
        if !upgrade {
            req_parts.headers.remove(header::CONNECTION);
            req_parts.headers.remove(header::UPGRADE);
        }
        if !http2 {
            // hyper's HTTP/1 client wants origin-form.
            if let Some(pq) = req_parts.uri.path_and_query().cloned()
                && let Ok(u) = http::Uri::builder().path_and_query(pq).build()
            {
                req_parts.uri = u;
            }
        } else if req_parts.uri.authority().is_none()
            && let Ok(u) = format!(
                "http://{}{}",
                facts.authority,
                req_parts.uri.path_and_query().map_or("/", |p| p.as_str())
            )
            .parse()
        {
            req_parts.uri = u;
        }
        let Some((backend, subset, port)) = svc.resolve(
            destination.and_then(|d| d.destination.as_ref()),
            conn.dst.port(),
        ) else {
            out.flags = "NR";
            return (
                local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                out,
            );
        };
        let subset = subset.clone();
        let hash_value = subset
            .balancer
            .hash_header()
            .and_then(|h| facts.headers.get(h))
            .cloned();
        // The client side of an upgrade (websocket): spliced after the 101.
        let downstream_upgrade = if upgrade {
            req_parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // Small bodies are buffered so retries and mirrors can resend them.
        let size_hint = http_body::Body::size_hint(&body);
        let replayable = !upgrade && size_hint.upper().is_some_and(|u| u <= REPLAY_LIMIT);
        let retry = RetryPolicy::of(route.and_then(|r| r.retries.as_ref()));
        let timeout = route
            .map(|r| r.timeout_ms)
            .filter(|t| *t > 0)
            .map(Duration::from_millis);
        let mut streamed = None;
        let prepared = if replayable {
            match body.collect().await {
                Ok(b) => Prepared {
                    parts: req_parts,
                    body: Some(b.to_bytes()),
                },
                Err(_) => {
                    out.flags = "DC";
                    return (local(StatusCode::BAD_REQUEST, "request body"), out);
                }
            }
        } else {
            streamed = Some(body);
            Prepared {
                parts: req_parts,
                body: None,
            }
        };
        if let Some(route) = route
            && prepared.body.is_some()
        {
            for m in &route.mirrors {
                if sampled(m.percentage) {
                    self.mirror(svc, m, &prepared, port, &facts.authority);
                }
            }
        }
        let conn_dst = (!via_vip).then_some(conn.dst);
        let attempt_all = async {
            let mut attempts_left = if streamed.is_some() {
                0
            } else {
                retry.attempts
            };
            loop {
                let Some((ep_index, target)) = pick_target(
                    &subset,
                    backend,
                    port,
                    hash_value.as_deref(),
                    http2,
                    conn_dst,
                ) else {
                    return Err((
                        "UH",
                        local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                    ));
                };
                let ep = &subset.endpoints[ep_index];
                out.destination = Peer {
                    workload: ep.workload.clone(),
                    namespace: ep.namespace.clone(),
                    principal: ep.identity.clone(),
                    app: ep.canonical_name.clone(),
                    version: ep.canonical_revision.clone(),
                };
                let Ok(in_flight) = self.upstreams().admit(&subset, ep_index) else {
                    return Err(overflowed());
                };
                let request = match streamed.take() {
                    Some(b) => {
                        let mut r = prepared.build();
                        *r.body_mut() = b.map_err(|e| Box::new(e) as BoxError).boxed();
                        r
                    }
                    None => prepared.build(),
                };
                let sent = self.upstreams().send(&subset, &target, request);
                let result = match retry.per_try {
                    Some(t) => tokio::time::timeout(t, sent).await.ok(),
                    None => Some(sent.await),
                };
                match result {
                    None => {
                        subset.record(ep_index, None);
                        if attempts_left == 0 {
                            return Err((
                                "UT",
                                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                            ));
                        }
                    }
                    Some(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        subset.record(ep_index, Some(status));
                        if attempts_left > 0 && retry.retry_response(&resp) {
                            attempts_left -= 1;
                            self.metrics().retries.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        return Ok((resp, in_flight));
                    }
                    Some(Err(UpstreamError::Overflow)) => return Err(overflowed()),
                    Some(Err(e)) => {
                        subset.record(ep_index, None);
                        if attempts_left == 0 || !retry.retry_error(&e) {
                            debug!(error = %e, "upstream failed");
                            let flags = if retry.attempts > 0 && retry.retry_error(&e) {
                                "URX" // retryable, and the retries ran out
                            } else if e.is_connect() {
                                "UF"
                            } else {
                                "UR"
                            };
                            return Err((
                                flags,
                                local(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "upstream connect error or disconnect/reset before headers",
                                ),
                            ));
                        }
                    }
                }
                attempts_left = attempts_left.saturating_sub(1);
                self.metrics().retries.fetch_add(1, Ordering::Relaxed);
            }
        };
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, attempt_all).await {
                Ok(r) => r,
                Err(_) => Err((
                    "UT",
                    local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                )),
            },
            None => attempt_all.await,
        };
        let (mut resp, in_flight) = match result {
            Ok(ok) => ok,
            Err((flags, resp)) => {
                out.flags = flags;
                return (resp, out);
            }
        };
        let upstream_upgrade = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        if let (Some(down), Some(up)) = (downstream_upgrade, upstream_upgrade) {
            tokio::spawn(async move {
                if let (Ok(d), Ok(u)) = (down.await, up.await) {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
            });
        }
        apply_ops(
            &mut parts.headers,
            destination
                .and_then(|d| d.headers.as_ref())
                .and_then(|h| h.response.as_ref()),
        );
        apply_ops(
            &mut parts.headers,
            route
                .and_then(|r| r.headers.as_ref())
                .and_then(|h| h.response.as_ref()),
        );
        if let (Some(cors), Some(origin)) = (cors, &origin) {
            crate::cors::decorate(cors, origin, &mut parts.headers);
        }
        let body = Metered::new(
            body.map_err(|e| Box::new(e) as BoxError).boxed(),
            vec![Box::new(in_flight)],
            None,
        )
        .boxed();
        (Response::from_parts(parts, body), out)
    }

    /// Sends a copy to the mirror destination and forgets it (Istio appends
    /// `-shadow` to the authority).
    fn mirror(
        self: &Arc<Self>,
        svc: &Arc<ServiceState>,
        m: &pb::Mirror,
        prepared: &Prepared,
        port: u16,
        authority: &str,
    ) {
        let Some(d) = &m.destination else { return };
        let Some((backend, subset, port)) = svc.resolve(Some(d), port) else {
            return;
        };
        let subset = subset.clone();
        let http2 = prepared.parts.version == http::Version::HTTP_2;
        let Some((ep, target)) = pick_target(&subset, backend, port, None, http2, None) else {
            return;
        };
        let mut req = prepared.build();
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        if let Ok(v) = HeaderValue::try_from(format!("{host}-shadow")) {
            req.headers_mut().insert(header::HOST, v);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(guard) = this.upstreams().admit(&subset, ep) else {
                return;
            };
            this.metrics().mirrored.fetch_add(1, Ordering::Relaxed);
            if let Ok(resp) = this.upstreams().send(&subset, &target, req).await {
                let _ = resp.into_body().collect().await;
            }
            drop(guard);
        });
    }
}

/// Envoy's answer when a connection-pool limit is hit (flag `UO`).
/// RequestAuthentication (`preflight`: a CORS preflight, which skips it as
/// Istio's `bypass_cors_preflight` does). No token is `Ok(None)`.
fn authenticate(
    svc: &ServiceState,
    facts: &RequestFacts,
    preflight: bool,
) -> Result<Option<(Authenticated, Option<pb::JwtRule>)>, JwtError> {
    if preflight {
        return Ok(None);
    }
    let rules = crate::sync::read(&svc.jwt);
    let found = rules.authenticate(&facts.headers, &facts.query)?;
    Ok(found.map(|a| {
        let rule = rules.rule(a.rule).cloned();
        (a, rule)
    }))
}

/// The answer to a refused token: 403 for an authentic token for another
/// audience, else 401 with `www-authenticate`, as Envoy answers.
fn jwt_refusal(e: &JwtError) -> Response<Body> {
    debug!(error = %e, "JWT refused");
    if *e == JwtError::AudienceNotAllowed {
        return local(StatusCode::FORBIDDEN, "Audiences in Jwt are not allowed");
    }
    let mut r = local(StatusCode::UNAUTHORIZED, "Jwt verification fails\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ambit\", error=\"invalid_token\""),
    );
    r
}

/// What a validated token changes in the request, as Envoy's JWT filter
/// does: the token goes unless `forwardOriginalToken`; the payload and the
/// `outputClaimToHeaders` claims are added.
fn apply_jwt_outputs(headers: &mut http::HeaderMap, a: &Authenticated, rule: &pb::JwtRule) {
    if !rule.forward_original_token
        && let Some(h) = &a.from_header
    {
        headers.remove(h.as_str());
    }
    let payload = (
        rule.output_payload_to_header.as_str(),
        a.payload_b64.as_str(),
    );
    let outputs = (!rule.output_payload_to_header.is_empty())
        .then_some(payload)
        .into_iter()
        .chain(
            a.claim_headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
    for (name, value) in outputs {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(k, v);
        }
    }
}

/// What AuthorizationPolicy sees of one request on `conn`.
fn request_attributes(
    conn: &ConnInfo,
    facts: &RequestFacts,
    authenticated: Option<&Authenticated>,
    num_trusted_proxies: u32,
    headers: &http::HeaderMap,
) -> RequestAttributes {
    RequestAttributes {
        peer: conn.peer_identity.clone(),
        request_auth: authenticated.map(|a| a.issuer_subject.clone()),
        claims: authenticated.map(|a| a.claims.clone()).unwrap_or_default(),
        source_ip: Some(conn.client.ip()),
        remote_ip: Some(remote_client(
            conn.client.ip(),
            facts.headers.get("x-forwarded-for").map(String::as_str),
            num_trusted_proxies,
        )),
        destination_ip: Some(conn.dst.ip()),
        port: conn.dst.port(),
        sni: None,
        authority: (!facts.authority.is_empty()).then(|| facts.authority.clone()),
        method: facts.method.clone(),
        path: facts.path.clone(),
        headers: header_values(headers),
    }
}

fn overflowed() -> (&'static str, Response<Body>) {
    (
        "UO",
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
    )
}

/// Picks the endpoint (or, for workload-addressed traffic, `exact`) and
/// its address.
pub(crate) fn pick_target(
    subset: &Arc<Subset>,
    backend: &crate::state::Backend,
    port: u16,
    hash_value: Option<&str>,
    http2: bool,
    exact: Option<SocketAddr>,
) -> Option<(usize, Target)> {
    let i = match exact {
        // Workload-addressed traffic goes to that very pod.
        Some(dst) => subset
            .endpoints
            .iter()
            .position(|e| e.address.parse::<IpAddr>().ok() == Some(dst.ip()))?,
        None => subset.pick(hash_value, rand::random())?,
    };
    let ep = &subset.endpoints[i];
    let ip: IpAddr = ep.address.parse().ok()?;
    let target_port = match exact {
        Some(dst) => dst.port(),
        None => backend.target_port(ep, port)?,
    };
    Some((
        i,
        Target {
            addr: SocketAddr::new(ip, target_port),
            identity: ep.identity.clone(),
            hbone: ep.hbone,
            http2,
        },
    ))
}

fn is_upgrade(h: &http::HeaderMap) -> bool {
    h.get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && h.contains_key(header::UPGRADE)
}

/// `remote.ip`: Envoy's rule with `use_remote_address` and Istio's
/// `numTrustedProxies` as `xff_num_trusted_hops`. With no trusted proxy the
/// client-supplied `X-Forwarded-For` is ignored; with N it is the N-th
/// address from the right, and the peer when the header is shorter or bad.
fn remote_client(peer: IpAddr, xff: Option<&str>, trusted: u32) -> IpAddr {
    let Some(xff) = xff.filter(|_| trusted > 0) else {
        return peer;
    };
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    usize::try_from(trusted)
        .ok()
        .and_then(|n| hops.len().checked_sub(n))
        .and_then(|i| hops.get(i))
        .and_then(|h| h.parse().ok())
        .unwrap_or(peer)
}

/// The request with its path and query replaced (the normalized form).
fn with_path<B>(req: Request<B>, path_and_query: &str) -> Option<Request<B>> {
    if req.uri().path_and_query().map(|p| p.as_str()) == Some(path_and_query) {
        return Some(req);
    }
    let (mut parts, body) = req.into_parts();
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = Some(path_and_query.parse().ok()?);
    parts.uri = http::Uri::from_parts(uri).ok()?;
    Some(Request::from_parts(parts, body))
}

/// Istio's `rewrite.uri`: replaces the matched prefix, or the whole path when
/// the route matched otherwise.
fn rewrite_path(route: &pb::HttpRoute, path: &str, to: &str) -> String {
    for m in &route.matches {
        if let Some(pb::string_match::Kind::Prefix(p)) =
            m.uri.as_ref().and_then(|u| u.kind.as_ref())
            && let Some(rest) = path.strip_prefix(p.as_str())
        {
            return format!("{to}{rest}");
        }
    }
    to.to_string()
}

/// `directResponse`: the status and body as configured.
fn direct_response(d: &pb::DirectResponse) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(d.body.clone())));
    *r.status_mut() = u16::try_from(d.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !d.body.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

fn redirect_response(
    r: &pb::Redirect,
    parts: &http::request::Parts,
    authority: &str,
) -> Response<Body> {
    let scheme = if r.scheme.is_empty() {
        "http"
    } else {
        &r.scheme
    };
    let host = if r.authority.is_empty() {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    } else {
        r.authority.clone()
    };
    let port = if r.port != 0 {
        format!(":{}", r.port)
    } else {
        String::new()
    };
    // Envoy's `path_redirect` (Istio's `redirect.uri`) keeps the request's
    // query unless the new path brings its own.
    let path = match (r.uri.as_str(), parts.uri.query()) {
        ("", _) => parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
        (uri, Some(q)) if !uri.contains('?') => format!("{uri}?{q}"),
        (uri, _) => uri.to_string(),
    };
    let status = u16::try_from(r.redirect_code)
        .ok()
        .filter(|c| *c != 0)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = local(status, "");
    if let Ok(v) = HeaderValue::try_from(format!("{scheme}://{host}{port}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_default_retry_policy_and_explicit_conditions() {
        let d = RetryPolicy::of(None);
        assert_eq!(d.attempts, 2);
        assert!(
            !d.retry_status(503) && !d.retry_status(500) && !d.retry_status(404),
            "Istio's default does not retry a plain 503"
        );
        let grpc = |code: &str| {
            Response::builder()
                .status(200)
                .header("grpc-status", code)
                .body(())
                .unwrap()
        };
        assert!(d.retry_response(&grpc("14")), "gRPC unavailable");
        assert!(d.retry_response(&grpc("1")), "gRPC cancelled");
        assert!(!d.retry_response(&grpc("2")));
        let codes = RetryPolicy::of(Some(&pb::Retry {
            attempts: 2,
            per_try_timeout_ms: 0,
            retry_on: "connect-failure,503".into(),
        }));
        assert!(
            codes.retry_status(503),
            "numbers in retryOn are status codes"
        );
        assert!(d.retry_error(&UpstreamError::Connect("refused".into())));
        assert!(
            !d.retry_error(&UpstreamError::Overflow),
            "overflow is never retried"
        );
        let five = RetryPolicy::of(Some(&pb::Retry {
            attempts: 3,
            per_try_timeout_ms: 100,
            retry_on: "5xx".into(),
        }));
        assert!(five.retry_status(500) && five.retry_status(503));
        assert_eq!(five.per_try, Some(Duration::from_millis(100)));
        let gw = RetryPolicy::of(Some(&pb::Retry {
            attempts: 1,
            per_try_timeout_ms: 0,
            retry_on: "gateway-error,retriable-4xx".into(),
        }));
        assert!(gw.retry_status(502) && gw.retry_status(504) && gw.retry_status(409));
        assert!(!gw.retry_status(500));
    }

    #[test]
    fn redirect_keeps_the_query_unless_the_uri_has_one() {
        let parts = |uri: &str| Request::get(uri).body(()).unwrap().into_parts().0;
        let location = |r: &pb::Redirect, uri: &str| {
            redirect_response(r, &parts(uri), "reviews:9080")
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let to_new = pb::Redirect {
            uri: "/new".into(),
            ..Default::default()
        };
        assert_eq!(
            location(&to_new, "/old?a=1&b=2"),
            "http://reviews/new?a=1&b=2"
        );
        assert_eq!(location(&to_new, "/old"), "http://reviews/new");
        let with_query = pb::Redirect {
            uri: "/new?x=1".into(),
            ..Default::default()
        };
        assert_eq!(location(&with_query, "/old?a=1"), "http://reviews/new?x=1");
    }

    #[test]
    fn rewrite_replaces_the_matched_prefix_or_the_whole_path() {
        let route = pb::HttpRoute {
            matches: vec![pb::HttpMatch {
                uri: Some(pb::StringMatch {
                    kind: Some(pb::string_match::Kind::Prefix("/api/".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(rewrite_path(&route, "/api/items", "/v2/"), "/v2/items");
        assert_eq!(rewrite_path(&route, "/other", "/v2/"), "/v2/");
        let exact = pb::HttpRoute::default();
        assert_eq!(rewrite_path(&exact, "/old", "/new"), "/new");
    }

    #[test]
    fn query_and_header_maps_for_matching() {
        let q = query_map(Some("a=1&b=&c"));
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "");
        assert_eq!(q["c"], "");
        let mut h = http::HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(header_map(&h)["x-a"], "1,2");
        let mut ops = http::HeaderMap::new();
        ops.insert("x-drop", HeaderValue::from_static("v"));
        apply_ops(
            &mut ops,
            Some(&pb::HeaderOps {
                set: [("x-set".to_string(), "s".to_string())].into(),
                add: [("x-add".to_string(), "a".to_string())].into(),
                remove: vec!["x-drop".into()],
            }),
        );
        assert_eq!(ops["x-set"], "s");
        assert_eq!(ops["x-add"], "a");
        assert!(!ops.contains_key("x-drop"));
    }
}
