//! VirtualService, DestinationRule, L7 AuthorizationPolicy,
//! RequestAuthentication and RateLimitPolicy → one `L7Service` per Service
//! bound to a waypoint (`istio.io/use-waypoint` on the Service or its
//! namespace), validated on the way: regexes compile, weights are not
//! negative, durations and percentages parse. Each error names the
//! object and field; the object is then not applied (the model keeps its last
//! good version).

use std::collections::BTreeMap;

use super::waypoints::Waypoints;
use super::{Finding, Severity, Translation};
use crate::duration;
use crate::k8s::istio::TargetRef;
use crate::k8s::networking::{
    self as net, DestinationRule, HttpRoute, RouteDestination, VirtualService,
};
use crate::k8s::{ROOT_NAMESPACE, Resources, Source, object_ref};
use crate::xds::proto::l7 as pb;

/// The label binding a Service or namespace to a waypoint.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// The Gateway class of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

pub(super) struct Ctx<'a> {
    findings: &'a mut Vec<Finding>,
    source: &'a Source,
    object: String,
    errors: usize,
}

impl<'a> Ctx<'a> {
    /// Findings about `object` (from `source`) go into `findings`.
    pub(super) fn new(findings: &'a mut Vec<Finding>, source: &'a Source, object: String) -> Self {
        Ctx {
            findings,
            source,
            object,
            errors: 0,
        }
    }

    /// A warning: accepted, with the effect (or none) the message says.
    pub(super) fn warn(&mut self, field: String, message: impl Into<String>) {
        self.note(Severity::Warning, field, message);
    }

    pub(super) fn error(&mut self, field: String, message: impl Into<String>) {
        self.errors += 1;
        self.note(Severity::Error, field, message);
    }

    fn note(&mut self, severity: Severity, field: String, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            code: super::code_for(severity, &field),
            source: self.source.clone(),
            object: self.object.clone(),
            field,
            message: message.into(),
        });
    }

    fn millis(&mut self, field: String, v: &Option<String>) -> u64 {
        match v {
            None => 0,
            Some(s) => match duration::parse(s) {
                Some(d) => d.as_millis() as u64,
                None => {
                    self.error(field, format!("{s:?} is not a duration (e.g. 1s, 250ms)"));
                    0
                }
            },
        }
    }

    fn percent(&mut self, field: String, p: &Option<net::Percent>) -> f64 {
        match p {
            None => 100.0,
            Some(p) if (0.0..=100.0).contains(&p.value) => p.value,
            Some(p) => {
                self.error(field, format!("{} is not a percentage (0–100)", p.value));
                0.0
            }
        }
    }

    /// A fault without `percentage`: Istio leaves Envoy's percentage unset,
    /// which is 0 %, so the fault is injected into no request.
    fn no_fault_percentage(&mut self, field: String) -> f64 {
        self.note(
            Severity::Warning,
            field,
            "no percentage: as in Istio, this fault is injected into no request (set percentage.value: 100 for all)",
        );
        0.0
    }

    fn string_match(&mut self, field: String, m: &net::StringMatch) -> Option<pb::StringMatch> {
        use pb::string_match::Kind;
        let set = [&m.exact, &m.prefix, &m.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            self.error(field, "exactly one of exact, prefix, regex must be set");
            return None;
        }
        let kind = if let Some(e) = &m.exact {
            Kind::Exact(e.clone())
        } else if let Some(p) = &m.prefix {
            Kind::Prefix(p.clone())
        } else {
            let r = m.regex.clone().unwrap_or_default();
            if let Err(e) = regex::Regex::new(&format!("^(?:{r})$")) {
                self.error(format!("{field}.regex"), format!("bad regex: {e}"));
                return None;
            }
            Kind::Regex(r)
        };
        Some(pb::StringMatch { kind: Some(kind) })
    }

    fn string_matches(
        &mut self,
        field: &str,
        m: &BTreeMap<String, net::StringMatch>,
    ) -> std::collections::HashMap<String, pb::StringMatch> {
        m.iter()
            .filter_map(|(k, v)| {
                self.string_match(format!("{field}.{k}"), v)
                    .map(|m| (k.to_ascii_lowercase(), m))
            })
            .collect()
    }
}

/// `reviews`, `reviews.ns`, `reviews.ns.svc`, or an FQDN, seen from `ns`.
pub fn resolve_host(host: &str, ns: &str) -> String {
    match host.matches('.').count() {
        0 => format!("{host}.{ns}.svc.cluster.local"),
        1 => format!("{host}.svc.cluster.local"),
        2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host.to_string(),
    }
}

fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn headers(h: &Option<net::Headers>) -> Option<pb::Headers> {
    let ops = |o: &Option<net::HeaderOperations>| {
        o.as_ref().map(|o| pb::HeaderOps {
            set: o.set.clone().into_iter().collect(),
            add: o.add.clone().into_iter().collect(),
            remove: o.remove.clone(),
        })
    };
    h.as_ref().map(|h| pb::Headers {
        request: ops(&h.request),
        response: ops(&h.response),
    })
}

/// Subsets each host (FQDN) defines, from DestinationRules.
type Subsets = BTreeMap<String, Vec<String>>;

fn destinations(
    ctx: &mut Ctx<'_>,
    field: &str,
    ns: &str,
    route: &[RouteDestination],
    subsets: &Subsets,
    known_hosts: &[String],
) -> Vec<pb::RouteDestination> {
    // Istio: one destination takes everything whatever its weight; among
    // several, weights are relative (Envoy sums them) and 0 drops one.
    if route.iter().any(|r| r.weight.is_some_and(|w| w < 0)) {
        ctx.error(field.to_string(), "weights must not be negative");
    } else if route.len() > 1 && route.iter().all(|r| r.weight.unwrap_or(0) == 0) {
        ctx.error(
            field.to_string(),
            "every destination has weight 0: nothing can be routed",
        );
    } else if route
        .iter()
        .any(|r| r.weight.unwrap_or(0) > i64::from(u32::MAX))
    {
        ctx.error(field.to_string(), "a weight does not fit in 32 bits");
    }
    let mut out = Vec::new();
    for (i, r) in route.iter().enumerate() {
        if route.len() > 1 && r.weight.unwrap_or(0) == 0 {
            continue;
        }
        let host = resolve_host(&r.destination.host, ns);
        if !known_hosts.contains(&host) {
            ctx.note(
                Severity::Warning,
                format!("{field}[{i}].destination.host"),
                format!("no Service {host} is known"),
            );
        }
        if let Some(sub) = &r.destination.subset
            && !subsets.get(&host).is_some_and(|s| s.contains(sub))
        {
            // Istio keeps the route; its cluster does not exist, so Envoy
            // answers 503 (NC). analyze flags it (IST0101).
            ctx.findings.push(Finding {
                severity: Severity::Warning,
                code: super::codes::REFERENCED_RESOURCE_NOT_FOUND,
                source: ctx.source.clone(),
                object: ctx.object.clone(),
                field: format!("{field}[{i}].destination.subset"),
                message: format!(
                    "subset {sub:?} is not defined by any DestinationRule for {host}: requests routed here get 503"
                ),
            });
        }
        out.push(pb::RouteDestination {
            destination: Some(pb::Destination {
                host,
                subset: r.destination.subset.clone().unwrap_or_default(),
                port: r.destination.port.as_ref().map_or(0, |p| p.number),
            }),
            weight: if route.len() == 1 {
                100
            } else {
                r.weight.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32
            },
            headers: headers(&r.headers),
        });
    }
    out
}

/// The gateway name Istio gives mesh (sidecar and waypoint) traffic.
const MESH_GATEWAY: &str = "mesh";

/// Does a `gateways` list (VirtualService or match level) include mesh
/// traffic? Empty means mesh only, as in Istio.
fn applies_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// A `scheme` match, decided here: mesh traffic reaches the waypoint as
/// plain HTTP inside HBONE, so `:scheme` is always `http`. `None`: the
/// match can never hold.
fn scheme_holds(ctx: &mut Ctx<'_>, field: String, m: &net::StringMatch) -> Option<bool> {
    use pb::string_match::Kind;
    Some(match ctx.string_match(field, m)?.kind? {
        Kind::Exact(e) => e == "http",
        Kind::Prefix(p) => "http".starts_with(p.as_str()),
        Kind::Regex(r) => {
            regex::Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match("http"))
        }
    })
}

/// `http[i]`, or `None` when every `match` of it is for gateways only
/// (Istio leaves such a route out of mesh routes).
fn http_route(
    ctx: &mut Ctx<'_>,
    i: usize,
    ns: &str,
    r: &HttpRoute,
    subsets: &Subsets,
    known_hosts: &[String],
) -> Option<pb::HttpRoute> {
    let f = format!("spec.http[{i}]");
    if r.route.is_empty() && r.redirect.is_none() && r.direct_response.is_none() {
        ctx.error(f.clone(), "needs one of route, redirect, directResponse");
    }
    if r.delegate.is_some() {
        ctx.error(
            format!("{f}.delegate"),
            "delegation is not supported by Ambit yet: write the delegate's routes into this VirtualService",
        );
    }
    let mut matches = Vec::new();
    for (j, m) in r.matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        let sm = |ctx: &mut Ctx<'_>, name: &str, v: &Option<net::StringMatch>| {
            v.as_ref()
                .and_then(|v| ctx.string_match(format!("{mf}.{name}"), v))
        };
        let scheme_ok = match &m.scheme {
            None => true,
            Some(s) => scheme_holds(ctx, format!("{mf}.scheme"), s).unwrap_or(false),
        };
        let built = pb::HttpMatch {
            name: m.name.clone().unwrap_or_default(),
            uri: sm(ctx, "uri", &m.uri),
            method: sm(ctx, "method", &m.method),
            authority: sm(ctx, "authority", &m.authority),
            headers: ctx.string_matches(&format!("{mf}.headers"), &m.headers),
            query_params: ctx.string_matches(&format!("{mf}.queryParams"), &m.query_params),
            source_labels: m.source_labels.clone().into_iter().collect(),
            port: m.port.unwrap_or(0),
            without_headers: m
                .without_headers
                .iter()
                .map(|(k, v)| {
                    // `{}` asks for absence; otherwise the match inverted.
                    let empty = v.exact.is_none() && v.prefix.is_none() && v.regex.is_none();
                    let m = if empty {
                        Some(pb::StringMatch { kind: None })
                    } else {
                        ctx.string_match(format!("{mf}.withoutHeaders.{k}"), v)
                    };
                    (k.to_ascii_lowercase(), m.unwrap_or_default())
                })
                .collect(),
            ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            source_namespace: m.source_namespace.clone().unwrap_or_default(),
        };
        // Istio drops a match with `sourceLabels` from waypoint routes
        // (`listener_waypoint.go`, istio/istio#51565): source labels are not
        // known in ambient, so the match never holds.
        let source_labels_ok = m.source_labels.is_empty();
        if !source_labels_ok {
            ctx.note(
                Severity::Warning,
                format!("{mf}.sourceLabels"),
                "source labels are not known to a waypoint: as in Istio, this match is dropped and never matches",
            );
        }
        // Istio builds a mesh route for a match only if its `gateways`
        // include `mesh`; a `scheme` other than http never holds here.
        if applies_to_mesh(&m.gateways) && scheme_ok && source_labels_ok {
            matches.push(built);
        }
    }
    let mesh_route = r.matches.is_empty() || !matches.is_empty();
    let retries = r.retries.as_ref().map(|rt| pb::Retry {
        attempts: rt.attempts.unwrap_or(2).max(0) as u32,
        per_try_timeout_ms: ctx.millis(format!("{f}.retries.perTryTimeout"), &rt.per_try_timeout),
        retry_on: rt.retry_on.clone().unwrap_or_else(|| {
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into()
        }),
    });
    let fault = r.fault.as_ref().map(|fl| pb::Fault {
        delay: fl.delay.as_ref().map(|d| pb::FaultDelay {
            fixed_delay_ms: ctx.millis(format!("{f}.fault.delay.fixedDelay"), &d.fixed_delay),
            percentage: match (&d.percentage, d.percent) {
                (None, Some(p)) => p as f64,
                (None, None) => ctx.no_fault_percentage(format!("{f}.fault.delay")),
                (p, _) => ctx.percent(format!("{f}.fault.delay.percentage"), p),
            },
        }),
        abort: fl.abort.as_ref().map(|a| {
            let status = a.http_status.unwrap_or(0);
            if !(200..=599).contains(&status) {
                ctx.error(
                    format!("{f}.fault.abort.httpStatus"),
                    format!("{status} is not an HTTP status"),
                );
            }
            pb::FaultAbort {
                http_status: status.clamp(0, 599) as u32,
                percentage: match &a.percentage {
                    None => ctx.no_fault_percentage(format!("{f}.fault.abort")),
                    p => ctx.percent(format!("{f}.fault.abort.percentage"), p),
                },
            }
        }),
    });
    let mirror_destination = |m: &net::Destination| pb::Destination {
        host: resolve_host(&m.host, ns),
        subset: m.subset.clone().unwrap_or_default(),
        port: m.port.as_ref().map_or(0, |p| p.number),
    };
    // Istio's `MirrorPercent`: `mirrorPercentage`, else the deprecated
    // `mirrorPercent`, else 100; an explicit 0 mirrors nothing.
    let mirror_share = match (&r.mirror_percentage, r.mirror_percent) {
        (None, Some(p)) if p <= 100 => f64::from(p),
        (None, Some(p)) => {
            ctx.error(
                format!("{f}.mirrorPercent"),
                format!("{p} is not a percentage (0–100)"),
            );
            0.0
        }
        (p, _) => ctx.percent(format!("{f}.mirrorPercentage"), p),
    };
    let mut mirrors: Vec<pb::Mirror> = r
        .mirror
        .iter()
        .map(|m| pb::Mirror {
            destination: Some(mirror_destination(m)),
            percentage: mirror_share,
        })
        .collect();
    for (k, m) in r.mirrors.iter().enumerate() {
        mirrors.push(pb::Mirror {
            destination: Some(mirror_destination(&m.destination)),
            percentage: ctx.percent(format!("{f}.mirrors[{k}].percentage"), &m.percentage),
        });
    }
    let direct_response = r.direct_response.as_ref().map(|d| {
        let df = format!("{f}.directResponse");
        if !(200..=599).contains(&d.status) {
            ctx.error(
                format!("{df}.status"),
                format!("{} is not an HTTP status", d.status),
            );
        }
        let body = match d.body.as_ref().map(|b| (&b.string, &b.bytes)) {
            None | Some((None, None)) => Vec::new(),
            Some((Some(text), None)) => text.clone().into_bytes(),
            Some((None, Some(b64))) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_else(|e| {
                        ctx.error(format!("{df}.body.bytes"), format!("not base64: {e}"));
                        Vec::new()
                    })
            }
            Some((Some(_), Some(_))) => {
                ctx.error(format!("{df}.body"), "set one of string, bytes");
                Vec::new()
            }
        };
        pb::DirectResponse {
            status: d.status,
            body,
        }
    });
    let cors = r.cors_policy.as_ref().map(|c| pb::CorsPolicy {
        allow_origins: c
            .allow_origins
            .iter()
            .enumerate()
            .filter_map(|(k, o)| ctx.string_match(format!("{f}.corsPolicy.allowOrigins[{k}]"), o))
            .collect(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_s: ctx.millis(format!("{f}.corsPolicy.maxAge"), &c.max_age) / 1000,
        allow_credentials: c.allow_credentials.unwrap_or(false),
    });
    let route = pb::HttpRoute {
        name: r.name.clone().unwrap_or_default(),
        matches,
        route: destinations(
            ctx,
            &format!("{f}.route"),
            ns,
            &r.route,
            subsets,
            known_hosts,
        ),
        redirect: r.redirect.as_ref().map(|d| pb::Redirect {
            uri: d.uri.clone().unwrap_or_default(),
            authority: d.authority.clone().unwrap_or_default(),
            redirect_code: d.redirect_code.unwrap_or(301),
            scheme: d.scheme.clone().unwrap_or_default(),
            port: d.port.unwrap_or(0),
        }),
        rewrite: r.rewrite.as_ref().map(|w| rewrite(ctx, &f, w)),
        timeout_ms: ctx.millis(format!("{f}.timeout"), &r.timeout),
        retries,
        fault,
        mirrors,
        headers: headers(&r.headers),
        cors,
        direct_response,
    };
    mesh_route.then_some(route)
}

fn rewrite(ctx: &mut Ctx<'_>, f: &str, w: &net::Rewrite) -> pb::Rewrite {
    let (uri_regex, uri_regex_rewrite) = match &w.uri_regex_rewrite {
        None => (String::new(), String::new()),
        Some(rr) => {
            if w.uri.is_some() {
                ctx.error(format!("{f}.rewrite"), "set one of uri, uriRegexRewrite");
            }
            if let Err(e) = regex::Regex::new(&rr.pattern) {
                ctx.error(
                    format!("{f}.rewrite.uriRegexRewrite.match"),
                    format!("bad regex: {e}"),
                );
            }
            (rr.pattern.clone(), rr.rewrite.clone())
        }
    };
    pb::Rewrite {
        uri: w.uri.clone().unwrap_or_default(),
        authority: w.authority.clone().unwrap_or_default(),
        uri_regex,
        uri_regex_rewrite,
    }
}

fn traffic_policy(ctx: &mut Ctx<'_>, field: &str, t: &net::TrafficPolicy) -> pb::TrafficPolicy {
    use pb::load_balancer::Simple;
    let load_balancer = t.load_balancer.as_ref().map(|lb| {
        let simple = match lb.simple.as_deref() {
            None => Simple::Unspecified,
            Some("ROUND_ROBIN") => Simple::RoundRobin,
            Some("LEAST_REQUEST" | "LEAST_CONN") => Simple::LeastRequest,
            Some("RANDOM") => Simple::Random,
            Some("PASSTHROUGH") => Simple::Passthrough,
            Some(other) => {
                ctx.error(
                    format!("{field}.loadBalancer.simple"),
                    format!("{other:?} is not ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM or PASSTHROUGH"),
                );
                Simple::Unspecified
            }
        };
        pb::LoadBalancer {
            simple: simple as i32,
            hash_header: lb
                .consistent_hash
                .as_ref()
                .and_then(|h| h.http_header_name.clone())
                .unwrap_or_default(),
        }
    });
    let nonneg = |ctx: &mut Ctx<'_>, name: &str, v: Option<i64>| match v {
        Some(n) if n < 0 => {
            ctx.error(
                format!("{field}.{name}"),
                format!("{n} must not be negative"),
            );
            0
        }
        Some(n) => n.min(i64::from(u32::MAX)) as u32,
        None => 0,
    };
    let connection_pool = t.connection_pool.as_ref().map(|cp| pb::ConnectionPool {
        max_connections: nonneg(
            ctx,
            "connectionPool.tcp.maxConnections",
            cp.tcp.as_ref().and_then(|t| t.max_connections),
        ),
        http1_max_pending_requests: nonneg(
            ctx,
            "connectionPool.http.http1MaxPendingRequests",
            cp.http.as_ref().and_then(|h| h.http1_max_pending_requests),
        ),
        http2_max_requests: nonneg(
            ctx,
            "connectionPool.http.http2MaxRequests",
            cp.http.as_ref().and_then(|h| h.http2_max_requests),
        ),
        max_requests_per_connection: nonneg(
            ctx,
            "connectionPool.http.maxRequestsPerConnection",
            cp.http.as_ref().and_then(|h| h.max_requests_per_connection),
        ),
    });
    let outlier_detection = t.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
        consecutive_5xx_errors: nonneg(
            ctx,
            "outlierDetection.consecutive5xxErrors",
            o.consecutive_5xx_errors,
        ),
        consecutive_gateway_errors: nonneg(
            ctx,
            "outlierDetection.consecutiveGatewayErrors",
            o.consecutive_gateway_errors,
        ),
        interval_ms: ctx.millis(format!("{field}.outlierDetection.interval"), &o.interval),
        base_ejection_time_ms: ctx.millis(
            format!("{field}.outlierDetection.baseEjectionTime"),
            &o.base_ejection_time,
        ),
        max_ejection_percent: nonneg(
            ctx,
            "outlierDetection.maxEjectionPercent",
            o.max_ejection_percent,
        )
        .min(100),
        min_health_percent: nonneg(
            ctx,
            "outlierDetection.minHealthPercent",
            o.min_health_percent,
        )
        .min(100),
    });
    pb::TrafficPolicy {
        load_balancer,
        connection_pool,
        outlier_detection,
    }
}

fn targets(refs: &[TargetRef], single: &Option<TargetRef>) -> Vec<TargetRef> {
    refs.iter().chain(single.iter()).cloned().collect()
}

/// Reports `targetRefs` entries that can bind to nothing: Istio accepts
/// Gateway, GatewayClass (root namespace only), Service and ServiceEntry.
fn check_target_refs(ctx: &mut Ctx<'_>, refs: &[TargetRef], obj_ns: &str) {
    for (i, r) in refs.iter().enumerate() {
        let field = format!("spec.targetRefs[{i}]");
        match r.kind.as_str() {
            "Gateway" | "Service" => {}
            "GatewayClass" if r.name == WAYPOINT_CLASS && obj_ns == ROOT_NAMESPACE => {}
            "GatewayClass" => ctx.error(
                field,
                format!(
                    "GatewayClass targets only apply as {WAYPOINT_CLASS} from the root namespace {ROOT_NAMESPACE}; this one binds to nothing"
                ),
            ),
            "ServiceEntry" => ctx.note(
                Severity::Warning,
                field,
                "ServiceEntry targets are not supported yet; this entry binds to nothing",
            ),
            other => ctx.error(
                format!("{field}.kind"),
                format!("{other:?} cannot be targeted (Gateway, GatewayClass, Service, ServiceEntry)"),
            ),
        }
    }
}

/// Does a `targetRefs` list bind to this Service or one of its waypoints?
fn binds(
    refs: &[TargetRef],
    ns: &str,
    obj_ns: &str,
    service: &str,
    waypoints: &[(String, String)],
) -> bool {
    refs.iter().any(|r| {
        let target_ns = r.namespace.as_deref().unwrap_or(obj_ns);
        // The waypoint class itself, from the root namespace: every waypoint.
        (r.kind == "GatewayClass" && r.name == WAYPOINT_CLASS && obj_ns == ROOT_NAMESPACE)
            || (r.kind == "Service" && r.name == service && target_ns == ns)
            || (r.kind == "Gateway"
                && waypoints
                    .iter()
                    .any(|(wns, w)| *w == r.name && target_ns == wns))
    })
}

/// Routes gathered for one host from every VirtualService naming it.
#[derive(Clone, Default)]
struct HostRoutes {
    http: Vec<pb::HttpRoute>,
    tcp: Vec<pb::TcpRoute>,
    sources: Vec<String>,
}

/// Something bound by `targetRefs` (JWT rules, rate limits).
struct Bound<T> {
    targets: Vec<TargetRef>,
    namespace: String,
    value: T,
    source: String,
}

/// Validates the L7 resources and builds the L7 config of every Service
/// bound to a waypoint. Objects with errors are left out of the result.
/// An HTTP field name (RFC 9110 `token`).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn translate_l7(res: &Resources, waypoints: &Waypoints, out: &mut Translation) {
    let known_hosts: Vec<String> = out
        .config
        .services
        .iter()
        .map(|s| s.hostname.clone())
        .collect();
    // DestinationRules first: VirtualServices refer to their subsets.
    let mut subsets: Subsets = BTreeMap::new();
    let mut rules: BTreeMap<String, (pb::TrafficPolicy, Vec<pb::Subset>, String)> = BTreeMap::new();
    for (source, dr) in &res.destination_rules {
        let ns = ns_of(&dr.metadata);
        let mut ctx = Ctx {
            findings: &mut out.findings,
            source,
            object: object_ref("DestinationRule", &dr.metadata),
            errors: 0,
        };
        let (host, policy, subs) = destination_rule(&mut ctx, &ns, dr);
        if ctx.errors == 0 {
            subsets.insert(host.clone(), subs.iter().map(|s| s.name.clone()).collect());
            rules.insert(host, (policy, subs, ctx.object.clone()));
        }
    }
    let telemetry = super::telemetry::TelemetryPolicies::new(res, out);
    let mut routes: BTreeMap<String, HostRoutes> = BTreeMap::new();
    for (source, vs) in &res.virtual_services {
        let ns = ns_of(&vs.metadata);
        let mut ctx = Ctx {
            findings: &mut out.findings,
            source,
            object: object_ref("VirtualService", &vs.metadata),
            errors: 0,
        };
        let (hosts, http, tcp) = virtual_service(&mut ctx, &ns, vs, &subsets, &known_hosts);
        if ctx.errors == 0 {
            for h in hosts {
                let e = routes.entry(h).or_default();
                e.http.extend(http.iter().cloned());
                e.tcp.extend(tcp.iter().cloned());
                e.sources.push(ctx.object.clone());
            }
        }
    }
    let mut jwt: Vec<Bound<Vec<pb::JwtRule>>> = Vec::new();
    for (source, ra) in &res.request_authentications {
        let mut ctx = Ctx {
            findings: &mut out.findings,
            source,
            object: object_ref("RequestAuthentication", &ra.metadata),
            errors: 0,
        };
        let mut rules_out = Vec::new();
        for (i, r) in ra.spec.jwt_rules.iter().enumerate() {
            let f = format!("spec.jwtRules[{i}]");
            if r.issuer.is_empty() {
                ctx.error(format!("{f}.issuer"), "issuer is required");
            }
            if let Some(j) = &r.jwks
                && serde_json::from_str::<serde_json::Value>(j).is_err()
            {
                ctx.error(format!("{f}.jwks"), "not a JSON Web Key Set");
            }
            if let Some(u) = &r.jwks_uri
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                ctx.error(
                    format!("{f}.jwksUri"),
                    format!("{u:?} is not an http(s) URL"),
                );
            }
            let jwks_fetch_timeout_ms = match r.timeout.as_deref().map(crate::duration::parse) {
                None => 0,
                Some(Some(d)) if !d.is_zero() => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                Some(_) => {
                    ctx.error(format!("{f}.timeout"), "not a positive duration (e.g. 5s)");
                    0
                }
            };
            for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                if !is_header_name(&c.header) {
                    ctx.error(
                        format!("{f}.outputClaimToHeaders[{j}].header"),
                        format!("{:?} is not a header name", c.header),
                    );
                }
                if c.claim.is_empty() {
                    ctx.error(
                        format!("{f}.outputClaimToHeaders[{j}].claim"),
                        "claim is required",
                    );
                }
            }
            rules_out.push(pb::JwtRule {
                from_cookies: r.from_cookies.clone(),
                output_claim_to_headers: r
                    .output_claim_to_headers
                    .iter()
                    .map(|c| pb::ClaimToHeader {
                        header: c.header.to_ascii_lowercase(),
                        claim: c.claim.clone(),
                    })
                    .collect(),
                space_delimited_claims: r.space_delimited_claims.clone(),
                jwks_fetch_timeout_ms,
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                jwks: r.jwks.clone().unwrap_or_default(),
                jwks_uri: r.jwks_uri.clone().unwrap_or_default(),
                forward_original_token: r.forward_original_token.unwrap_or(false),
                output_payload_to_header: r.output_payload_to_header.clone().unwrap_or_default(),
                from_headers: r
                    .from_headers
                    .iter()
                    .map(|h| pb::JwtHeader {
                        name: h.name.clone(),
                        prefix: h.prefix.clone().unwrap_or_default(),
                    })
                    .collect(),
                from_params: r.from_params.clone(),
            });
        }
        if ctx.errors == 0 {
            jwt.push(Bound {
                targets: targets(&ra.spec.target_refs, &ra.spec.target_ref),
                namespace: ns_of(&ra.metadata),
                value: rules_out,
                source: ctx.object.clone(),
            });
        }
    }
    let mut limits: Vec<Bound<pb::RateLimit>> = Vec::new();
    for (source, rl) in &res.rate_limits {
        let mut ctx = Ctx {
            findings: &mut out.findings,
            source,
            object: object_ref("RateLimitPolicy", &rl.metadata),
            errors: 0,
        };
        if rl.spec.max_tokens == 0 {
            ctx.error("spec.maxTokens".into(), "must be at least 1");
        }
        let fill = ctx.millis(
            "spec.fillInterval".into(),
            &Some(rl.spec.fill_interval.clone()),
        );
        if fill == 0 && ctx.errors == 0 {
            ctx.error("spec.fillInterval".into(), "must be longer than 0");
        }
        if ctx.errors == 0 {
            limits.push(Bound {
                targets: rl.spec.target_refs.clone(),
                namespace: ns_of(&rl.metadata),
                value: pb::RateLimit {
                    name: rl.metadata.name.clone().unwrap_or_default(),
                    route: rl.spec.route.clone().unwrap_or_default(),
                    max_tokens: rl.spec.max_tokens,
                    tokens_per_fill: rl.spec.tokens_per_fill.unwrap_or(rl.spec.max_tokens),
                    fill_interval_ms: fill,
                },
                source: ctx.object.clone(),
            });
        }
    }
    for (source, gw) in &res.gateways {
        let waypoint = gw.spec.gateway_class_name == WAYPOINT_CLASS;
        let note = match (waypoint, gw.spec.listeners.is_empty()) {
            (true, true) => Some((
                Severity::Warning,
                "spec.listeners",
                "empty: the Kubernetes API rejects a Gateway without listeners; Ambit gives this waypoint {name: mesh, port: 15008, protocol: HBONE}",
            )),
            (true, false) => None,
            (false, _) => Some((
                Severity::Info,
                "spec.gatewayClassName",
                "not a waypoint (istio-waypoint); ignored",
            )),
        };
        if let Some((severity, field, message)) = note {
            let mut ctx = Ctx {
                findings: &mut out.findings,
                source,
                object: object_ref("Gateway", &gw.metadata),
                errors: 0,
            };
            ctx.note(severity, field.into(), message);
        }
    }
    let mut http_policies: Vec<Bound<pb::HttpPolicy>> = Vec::new();
    for (source, ap) in &res.authorization_policies {
        let refs = targets(&ap.spec.target_refs, &ap.spec.target_ref);
        if refs.is_empty() {
            continue; // enforced by ztunnel (policy.rs)
        }
        let namespace = ns_of(&ap.metadata);
        let mut ctx = Ctx {
            findings: &mut out.findings,
            source,
            object: object_ref("AuthorizationPolicy", &ap.metadata),
            errors: 0,
        };
        check_target_refs(&mut ctx, &refs, &namespace);
        let value = super::l7_policy::http_policy(&mut ctx, ap, &namespace);
        http_policies.push(Bound {
            targets: refs,
            namespace,
            value,
            source: ctx.object.clone(),
        });
    }
    let backends = BackendIndex::new(res, out);
    for (_, svc) in &res.services {
        let ns = ns_of(&svc.metadata);
        let name = svc.metadata.name.clone().unwrap_or_default();
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let hostname = resolve_host(&name, &ns);
        // The Service's own waypoint, then the workload waypoints of the
        // pods behind it (their policies apply to traffic sent to them).
        let mut waypoint: Vec<(String, String)> = Vec::new();
        if let Ok(Some(w)) = waypoints.for_service(&labels, &ns) {
            waypoint.push(w);
        }
        let key = format!("{ns}/{hostname}");
        for w in &out.config.workloads {
            if let (true, Some(g)) = (w.services.contains_key(&key), &w.waypoint)
                && let Some((wns, host)) = g.destination.split_once('/')
            {
                let wname = host.split('.').next().unwrap_or(host).to_string();
                let pair = (wns.to_string(), wname);
                if !waypoint.contains(&pair) {
                    waypoint.push(pair);
                }
            }
        }
        if waypoint.is_empty() {
            continue;
        }
        let mut sources = Vec::new();
        let HostRoutes {
            http,
            tcp,
            sources: vs_objs,
        } = routes.get(&hostname).cloned().unwrap_or_default();
        sources.extend(vs_objs);
        let (traffic_policy, subs) = match rules.get(&hostname) {
            Some((p, s, o)) => {
                sources.push(o.clone());
                (Some(p.clone()), s.clone())
            }
            None => (None, vec![]),
        };
        let authorization = http_policies
            .iter()
            .filter(|b| binds(&b.targets, &ns, &b.namespace, &name, &waypoint))
            .map(|b| {
                sources.push(b.source.clone());
                b.value.clone()
            })
            .collect();
        let authentication = jwt
            .iter()
            .filter(|b| binds(&b.targets, &ns, &b.namespace, &name, &waypoint))
            .flat_map(|b| {
                sources.push(b.source.clone());
                b.value.clone()
            })
            .collect();
        let rate_limits = limits
            .iter()
            .filter(|b| binds(&b.targets, &ns, &b.namespace, &name, &waypoint))
            .map(|b| {
                sources.push(b.source.clone());
                b.value.clone()
            })
            .collect();
        let access_log = telemetry.access_log_for(&ns, &name, &waypoint, &out.mesh);
        let tracing = telemetry.for_service(&ns, &name, &waypoint, &out.mesh, &out.config);
        let mesh = out.config.services.iter().find(|s| s.hostname == hostname);
        let service_backends = backends.for_service(&hostname, &http, &tcp);
        out.l7.push(pb::L7Service {
            name,
            namespace: ns.clone(),
            hostname,
            vips: mesh.map(|m| m.vips.clone()).unwrap_or_default(),
            ports: svc
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| pb::ServicePort {
                    port: p.port as u32,
                    target_port: mesh
                        .and_then(|m| m.ports.get(&(p.port as u16)).copied())
                        .map_or(0, u32::from),
                    protocol: p.app_protocol.clone().unwrap_or_default(),
                    name: p.name.clone().unwrap_or_default(),
                })
                .collect(),
            waypoints: waypoint.iter().map(|(n, w)| format!("{n}/{w}")).collect(),
            http,
            tcp,
            traffic_policy,
            subsets: subs,
            authorization,
            authentication,
            backends: service_backends,
            path_normalization: out.mesh.path_normalization.clone(),
            num_trusted_proxies: out.mesh.num_trusted_proxies,
            rate_limits,
            sources,
            tracing,
            access_log,
        });
    }
}

/// Endpoints by Service hostname, in the shape the waypoint balances over.
struct BackendIndex {
    by_host: BTreeMap<String, pb::Backend>,
}

impl BackendIndex {
    fn new(res: &Resources, out: &Translation) -> Self {
        let pod_labels: BTreeMap<(String, String), BTreeMap<String, String>> = res
            .pods
            .iter()
            .map(|(_, p)| {
                (
                    (
                        ns_of(&p.metadata),
                        p.metadata.name.clone().unwrap_or_default(),
                    ),
                    p.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let mut by_host: BTreeMap<String, pb::Backend> = out
            .config
            .services
            .iter()
            .map(|s| {
                (
                    s.hostname.clone(),
                    pb::Backend {
                        hostname: s.hostname.clone(),
                        ports: s
                            .ports
                            .iter()
                            .map(|(p, t)| pb::ServicePort {
                                port: u32::from(*p),
                                target_port: u32::from(*t),
                                ..Default::default()
                            })
                            .collect(),
                        endpoints: vec![],
                    },
                )
            })
            .collect();
        for w in &out.config.workloads {
            let Some(ip) = w.workload_ips.first() else {
                continue;
            };
            for (key, ports) in &w.services {
                let host = key.split_once('/').map_or(key.as_str(), |(_, h)| h);
                let Some(b) = by_host.get_mut(host) else {
                    continue;
                };
                b.endpoints.push(pb::Endpoint {
                    address: ip.to_string(),
                    ports: ports
                        .iter()
                        .map(|(p, t)| (u32::from(*p), u32::from(*t)))
                        .collect(),
                    labels: pod_labels
                        .get(&(w.namespace.clone(), w.name.clone()))
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    identity: w.identity().map(|i| i.to_string()).unwrap_or_default(),
                    workload: w.workload_name.clone(),
                    namespace: w.namespace.clone(),
                    healthy: w.status == crate::model::HealthStatus::Healthy,
                    node: w.node.clone(),
                    canonical_name: w.canonical_name.clone(),
                    canonical_revision: w.canonical_revision.clone(),
                    hbone: w.protocol == crate::model::Protocol::Hbone,
                });
            }
        }
        BackendIndex { by_host }
    }

    /// The Service itself and every host its routes and mirrors name.
    fn for_service(
        &self,
        hostname: &str,
        http: &[pb::HttpRoute],
        tcp: &[pb::TcpRoute],
    ) -> Vec<pb::Backend> {
        let mut hosts = std::collections::BTreeSet::from([hostname.to_string()]);
        for r in http {
            hosts.extend(
                r.route
                    .iter()
                    .filter_map(|d| d.destination.as_ref())
                    .chain(r.mirrors.iter().filter_map(|m| m.destination.as_ref()))
                    .map(|d| d.host.clone()),
            );
        }
        for r in tcp {
            hosts.extend(
                r.route
                    .iter()
                    .filter_map(|d| d.destination.as_ref())
                    .map(|d| d.host.clone()),
            );
        }
        hosts
            .iter()
            .filter_map(|h| self.by_host.get(h).cloned())
            .collect()
    }
}

fn destination_rule(
    ctx: &mut Ctx<'_>,
    ns: &str,
    dr: &DestinationRule,
) -> (String, pb::TrafficPolicy, Vec<pb::Subset>) {
    if dr.spec.host.is_empty() {
        ctx.error("spec.host".into(), "host is required");
    }
    let host = resolve_host(&dr.spec.host, ns);
    let policy = dr
        .spec
        .traffic_policy
        .as_ref()
        .map(|t| traffic_policy(ctx, "spec.trafficPolicy", t))
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    let mut subs = Vec::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        if !seen.insert(s.name.clone()) {
            ctx.error(
                format!("spec.subsets[{i}].name"),
                format!("subset {:?} is defined twice", s.name),
            );
        }
        subs.push(pb::Subset {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            traffic_policy: s
                .traffic_policy
                .as_ref()
                .map(|t| traffic_policy(ctx, &format!("spec.subsets[{i}].trafficPolicy"), t)),
        });
    }
    (host, policy, subs)
}

fn virtual_service(
    ctx: &mut Ctx<'_>,
    ns: &str,
    vs: &VirtualService,
    subsets: &Subsets,
    known_hosts: &[String],
) -> (Vec<String>, Vec<pb::HttpRoute>, Vec<pb::TcpRoute>) {
    if vs.spec.hosts.is_empty() {
        ctx.error("spec.hosts".into(), "at least one host is required");
    }
    let hosts = vs.spec.hosts.iter().map(|h| resolve_host(h, ns)).collect();
    if !applies_to_mesh(&vs.spec.gateways) {
        // As Istio: bound to gateways only, it does not route mesh traffic.
        ctx.note(
            Severity::Warning,
            "spec.gateways".into(),
            format!(
                "bound to gateways {:?} without {MESH_GATEWAY:?}: as in Istio, it does not apply to mesh traffic (Ambit has no ingress gateway)",
                vs.spec.gateways
            ),
        );
        return (Vec::new(), Vec::new(), Vec::new());
    }
    let http = vs
        .spec
        .http
        .iter()
        .enumerate()
        .filter_map(|(i, r)| http_route(ctx, i, ns, r, subsets, known_hosts))
        .collect();
    let tcp = vs
        .spec
        .tcp
        .iter()
        .enumerate()
        .map(|(i, r)| pb::TcpRoute {
            ports: r.matches.iter().filter_map(|m| m.port).collect(),
            route: destinations(
                ctx,
                &format!("spec.tcp[{i}].route"),
                ns,
                &r.route,
                subsets,
                known_hosts,
            ),
        })
        .collect();
    (hosts, http, tcp)
}

#[cfg(test)]
#[path = "l7_tests.rs"]
mod tests;
