//! The request path: one HTTP request from a tunnelled client through the
//! stages of Envoy's filter chain in an Istio waypoint (jwt_authn → rbac →
//! local_ratelimit → cors → fault → router), each a function here:
//!
//! 1. [`normalize`]: the mesh config's path normalization; every later
//!    stage, and the upstream, sees the normalized path;
//! 2. [`admit`]: RequestAuthentication, then AuthorizationPolicy on the
//!    headers as the RBAC filter sees them;
//! 3. [`select_route`]: VirtualService route and destination;
//! 4. [`rate_limit`]: the local token buckets;
//! 5. [`cors_preflight`], [`inject_faults`], [`answer_locally`]
//!    (redirect, `directResponse`);
//! 6. [`rewrite_request`] and [`upstream_form`]: rewrite, header
//!    operations, hop-by-hop headers, the upstream's URI form;
//! 7. [`crate::forward`]: endpoint, retries, timeouts, mirrors, and the
//!    response back.
//!
//! A stage that answers early returns an [`Answer`] carrying Envoy's
//! response flags.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_api::xds::proto::l7 as pb;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use crate::answer::{Answer, direct_response, jwt_refusal, local, redirect_response};
use crate::authz::{Mode, RequestAttributes};
use crate::cors::Cors;
use crate::jwt::{Authenticated, JwtError};
use crate::metrics::Peer;
use crate::normalize::PathNormalization;
use crate::route::{Decision, RequestFacts};
use crate::state::ServiceState;
use crate::upstream::Body;
use crate::waypoint::Waypoint;

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
    /// The Service `dst` resolved to when the connection opened (`None`:
    /// none). Resolved once per connection; a request reuses it while the
    /// config is unchanged and resolves again after a push, so every
    /// request meets the policy in force when it arrives.
    pub resolved: Option<Resolved>,
}

/// A destination resolved to a Service.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The Service.
    pub service: Arc<ServiceState>,
    /// Addressed to one of its VIPs (else to one of its endpoints).
    pub via_vip: bool,
    /// The [`crate::state::WaypointState::generation`] it was resolved in.
    pub generation: u64,
}

impl ConnInfo {
    /// The Service for a request arriving now, under `current`: the one
    /// resolved at open while the config is the same, else resolved again.
    pub fn service_now(
        &self,
        current: &crate::state::WaypointState,
    ) -> Option<(Arc<ServiceState>, bool)> {
        match &self.resolved {
            Some(r) if r.generation == current.generation() => Some((r.service.clone(), r.via_vip)),
            _ => current
                .for_destination(self.dst.ip())
                .map(|(s, via_vip)| (s.clone(), via_vip)),
        }
    }
}

/// What one request turned into, for metrics and the access log.
#[derive(Debug)]
pub struct Outcome {
    /// Envoy's `response_flags`.
    pub flags: &'static str,
    /// Envoy's response code details (`via_upstream`, `direct_response`,
    /// `rbac_access_denied_matched_policy[...]`, ...).
    pub details: Cow<'static, str>,
    /// The endpoint the request went to (last tried).
    pub destination: Peer,
}

/// Runs `req`, sent on `conn` to `svc` (`via_vip`: addressed to a Service
/// VIP, else to one of its endpoints), through every stage.
pub async fn process(
    w: &Waypoint,
    conn: &ConnInfo,
    svc: &Arc<ServiceState>,
    via_vip: bool,
    req: Request<Incoming>,
) -> (Response<Body>, Outcome) {
    let mut out = Outcome {
        flags: "-",
        details: Cow::Borrowed("via_upstream"),
        destination: Peer::default(),
    };
    let response = match stages(w, conn, svc, via_vip, req, &mut out).await {
        Ok(r) => r,
        Err(a) => {
            out.flags = a.flags;
            out.details = a.details;
            *a.response
        }
    };
    (response, out)
}

async fn stages(
    w: &Waypoint,
    conn: &ConnInfo,
    svc: &Arc<ServiceState>,
    via_vip: bool,
    req: Request<Incoming>,
    out: &mut Outcome,
) -> Result<Response<Body>, Answer> {
    let options = svc.http_options.unwrap_or_default();
    let (req, paths) = normalize(req, options.path_normalization)?;
    let mut facts = request_facts(&req, conn, &paths.path);
    let (mut parts, body) = req.into_parts();
    admit(conn, svc, &facts, options.num_trusted_proxies, &mut parts)?;
    let selected = select_route(svc, &facts, via_vip)?;
    rate_limit(svc, selected.route)?;
    let origin = facts.headers.get("origin").cloned();
    let cors = selected.cors(svc).zip(origin.as_deref());
    if let Some(r) = cors_preflight(cors, &parts, &facts) {
        out.details = Cow::Borrowed("cors_response");
        return Ok(r);
    }
    if inject_faults(selected.route).await? {
        out.flags = "DI";
    }
    if let Some(r) = answer_locally(selected.route, &parts, &facts) {
        out.details = Cow::Borrowed("direct_response");
        return Ok(r);
    }
    rewrite_request(svc, &selected, &paths, &mut parts, &mut facts);
    let form = upstream_form(&mut parts, &facts.authority);
    let forwarded = crate::forward::forward(
        w,
        conn,
        svc,
        &selected,
        parts,
        body,
        form,
        &facts.authority,
        |h| facts.headers.get(h).cloned(),
        via_vip,
        &mut out.destination,
    )
    .await?;
    Ok(crate::forward::respond(forwarded, &selected, cors))
}

/// The request's path after normalization, alone and with its query.
#[derive(Debug)]
pub struct Paths {
    /// The normalized path.
    pub path: String,
    /// It with the original query.
    pub path_and_query: String,
}

/// Stage 1: the mesh config's path normalization (400 for a path it refuses).
pub fn normalize(
    req: Request<Incoming>,
    normalization: PathNormalization,
) -> Result<(Request<Incoming>, Paths), Answer> {
    let bad = || {
        Answer::new(
            "-",
            "path_normalization_failed",
            local(StatusCode::BAD_REQUEST, "Bad Request"),
        )
    };
    let path = normalization.apply(req.uri().path()).map_err(|e| {
        debug!(error = %e, "request refused");
        bad()
    })?;
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let req = with_path(req, &path_and_query).ok_or_else(bad)?;
    Ok((
        req,
        Paths {
            path,
            path_and_query,
        },
    ))
}

/// What route matching and authentication read of a request.
pub(crate) fn request_facts<B>(req: &Request<B>, conn: &ConnInfo, path: &str) -> RequestFacts {
    RequestFacts {
        method: req.method().as_str().to_string(),
        path: path.to_string(),
        authority: authority_of(req),
        headers: header_map(req.headers()),
        query: query_map(req.uri().query()),
        source_namespace: conn.source.namespace.clone(),
        port: u32::from(conn.dst.port()),
    }
}

/// Stage 2: RequestAuthentication (a bad token is 401, an authentic one
/// for another audience 403, no token passes on; CORS preflights skip it, as
/// Istio sets Envoy's `bypass_cors_preflight`), its outputs into the
/// headers, then AuthorizationPolicy on those headers (403).
pub fn admit(
    conn: &ConnInfo,
    svc: &ServiceState,
    facts: &RequestFacts,
    num_trusted_proxies: u32,
    parts: &mut http::request::Parts,
) -> Result<crate::authz::Decision, Answer> {
    let preflight = parts.method == Method::OPTIONS
        && facts.headers.contains_key("origin")
        && facts.headers.contains_key("access-control-request-method");
    let authenticated = authenticate(svc, facts, preflight).map_err(|e| jwt_refusal(&e))?;
    if let Some((a, Some(rule))) = &authenticated {
        apply_jwt_outputs(&mut parts.headers, a, rule);
    }
    let attrs = request_attributes(
        conn,
        facts,
        authenticated.as_ref().map(|(a, _)| a),
        num_trusted_proxies,
        &parts.headers,
    );
    let decision = svc.authz.authorize(Mode::Http, &attrs);
    if !decision.is_allowed() {
        debug!(?decision, "request denied");
        // Envoy's RBAC filter sets no response flag; the details name the
        // policy and rule (or `none`), as Istio's access logs show them.
        return Err(Answer::new(
            "-",
            svc.authz.refusal_details(Mode::Http, &attrs, &decision),
            local(StatusCode::FORBIDDEN, "RBAC: access denied"),
        ));
    }
    Ok(decision)
}

/// The VirtualService route a request took, if any, and its destination.
#[derive(Debug, Default)]
pub struct Selected<'a> {
    /// The matched route (`None`: the Service itself).
    pub route: Option<&'a pb::HttpRoute>,
    /// Its index in the Service's routes.
    pub index: Option<usize>,
    /// The weighted destination picked (`None`: redirect, direct response,
    /// or the Service itself).
    pub destination: Option<&'a pb::RouteDestination>,
}

impl<'a> Selected<'a> {
    /// The route's CORS policy with its compiled origins.
    pub fn cors(&self, svc: &'a ServiceState) -> Option<Cors<'a>> {
        let (route, index) = self.route.zip(self.index)?;
        route.cors.as_ref().map(|policy| Cors {
            policy,
            origins: svc.router.cors_origins(index),
        })
    }
}

/// Stage 3: VirtualService routing. Only VIP-addressed traffic is routed;
/// routes that exist and do not match are Istio's 404 (`NR`).
pub fn select_route<'a>(
    svc: &'a ServiceState,
    facts: &RequestFacts,
    via_vip: bool,
) -> Result<Selected<'a>, Answer> {
    let routed = if via_vip {
        svc.router.route(facts, rand::random())
    } else {
        Decision::Default
    };
    match routed {
        Decision::NoMatch => Err(Answer::new(
            "NR",
            "route_not_found",
            local(StatusCode::NOT_FOUND, ""),
        )),
        Decision::Default => Ok(Selected::default()),
        Decision::Route {
            route,
            index,
            destination,
        } => Ok(Selected {
            route: Some(route),
            index: Some(index),
            destination,
        }),
    }
}

/// Stage 4: the local rate limit, the Service's buckets then the route's
/// (429, `RL`).
pub fn rate_limit(svc: &ServiceState, route: Option<&pb::HttpRoute>) -> Result<(), Answer> {
    for limit in &svc.limits {
        if !limit.config.route.is_empty() && route.is_none_or(|r| r.name != limit.config.route) {
            continue;
        }
        if !crate::sync::lock(&limit.bucket).try_take(Instant::now()) {
            let mut r = local(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited\n");
            if let Ok(v) = HeaderValue::try_from(limit.config.name.as_str()) {
                r.headers_mut().insert("x-ambit-ratelimited", v);
            }
            return Err(Answer::new("RL", "local_rate_limited", r));
        }
    }
    Ok(())
}

/// Stage 5a: a CORS preflight on a route with a CORS policy is answered here.
pub fn cors_preflight(
    cors: Option<(Cors<'_>, &str)>,
    parts: &http::request::Parts,
    facts: &RequestFacts,
) -> Option<Response<Body>> {
    let (cors, origin) = cors?;
    (parts.method == Method::OPTIONS && facts.headers.contains_key("access-control-request-method"))
        .then(|| crate::cors::preflight(cors, origin))
}

/// Stage 5b: the route's fault: a delay (returns whether one was injected,
/// flag `DI`), then an abort (flag `FI`).
pub async fn inject_faults(route: Option<&pb::HttpRoute>) -> Result<bool, Answer> {
    let Some(fault) = route.and_then(|r| r.fault.as_ref()) else {
        return Ok(false);
    };
    let mut delayed = false;
    if let Some(d) = &fault.delay
        && d.fixed_delay_ms > 0
        && sampled(d.percentage)
    {
        tokio::time::sleep(Duration::from_millis(d.fixed_delay_ms)).await;
        delayed = true;
    }
    if let Some(a) = &fault.abort
        && sampled(a.percentage)
    {
        let status = u16::try_from(a.http_status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Err(Answer::new(
            "FI",
            "fault_filter_abort",
            local(status, "fault filter abort"),
        ));
    }
    Ok(delayed)
}

/// Stage 5c: route actions that answer without an upstream (after the
/// fault filter, as in Envoy's chain): `redirect`, `directResponse`.
pub fn answer_locally(
    route: Option<&pb::HttpRoute>,
    parts: &http::request::Parts,
    facts: &RequestFacts,
) -> Option<Response<Body>> {
    let route = route?;
    if let Some(redirect) = &route.redirect {
        return Some(redirect_response(redirect, parts, &facts.authority));
    }
    route.direct_response.as_ref().map(direct_response)
}

/// Stage 6a: the route's `rewrite` (URI prefix or regex, authority), then
/// the route's and the destination's request header operations.
pub fn rewrite_request(
    svc: &ServiceState,
    selected: &Selected<'_>,
    paths: &Paths,
    parts: &mut http::request::Parts,
    facts: &mut RequestFacts,
) {
    if let Some(route) = selected.route
        && let Some(rw) = &route.rewrite
    {
        let new_path = if !rw.uri.is_empty() {
            Some(rewrite_path(route, &paths.path, &rw.uri))
        } else {
            selected
                .index
                .and_then(|i| svc.router.regex_rewrite(i, &paths.path))
        };
        if let Some(new_path) = new_path {
            let query = paths
                .path_and_query
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            if let Ok(uri) = format!("{new_path}{query}").parse::<http::Uri>() {
                parts.uri = uri;
            }
        }
        if !rw.authority.is_empty()
            && let Ok(v) = HeaderValue::try_from(rw.authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
            facts.authority = rw.authority.clone();
        }
    }
    apply_ops(
        &mut parts.headers,
        selected
            .route
            .and_then(|r| r.headers.as_ref())
            .and_then(|h| h.request.as_ref()),
    );
    apply_ops(
        &mut parts.headers,
        selected
            .destination
            .and_then(|d| d.headers.as_ref())
            .and_then(|h| h.request.as_ref()),
    );
}

/// How the request goes upstream.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamForm {
    /// HTTP/2 upstream iff the client spoke it (gRPC stays gRPC).
    pub http2: bool,
    /// An HTTP/1 upgrade (websocket), spliced after the 101.
    pub upgrade: bool,
}

/// Stage 6b: hop-by-hop headers dropped (they are this connection's), and
/// the URI in the form the upstream protocol wants (origin-form for HTTP/1,
/// absolute with the authority for HTTP/2).
pub fn upstream_form(parts: &mut http::request::Parts, authority: &str) -> UpstreamForm {
    let http2 = parts.version == http::Version::HTTP_2;
    let upgrade = !http2 && is_upgrade(&parts.headers);
    for h in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        parts.headers.remove(h);
    }
    if !upgrade {
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
    }
    if !http2 {
        // hyper's HTTP/1 client wants origin-form.
        if let Some(pq) = parts.uri.path_and_query().cloned()
            && let Ok(u) = http::Uri::builder().path_and_query(pq).build()
        {
            parts.uri = u;
        }
    } else if parts.uri.authority().is_none()
        && let Ok(u) = format!(
            "http://{}{}",
            authority,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        )
        .parse()
    {
        parts.uri = u;
    }
    UpstreamForm { http2, upgrade }
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

pub(crate) fn apply_ops(h: &mut http::HeaderMap, ops: Option<&pb::HeaderOps>) {
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
pub(crate) fn sampled(pct: f64) -> bool {
    rand::random::<f64>() * 100.0 < pct
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
