//! What this waypoint would do with one request, decided by the same stages
//! the proxy runs ([`crate::proxy`]): path normalization, RequestAuthentication
//! and AuthorizationPolicy, VirtualService routing, then the route's local
//! answers. Nothing is sent: `ambit x explain` asks this for the waypoint
//! hop of a request it traces through the mesh.
//!
//! What depends on chance or on time is reported, not decided: a fault's
//! percentage, a weighted split (the first destination with weight is named),
//! the rate limiter's bucket. JWTs are checked with the keys the config holds
//! (inline `jwks`); keys the waypoint would fetch from `jwksUri` are not
//! fetched.

use std::net::SocketAddr;

use http::{Request, StatusCode};

use crate::proxy::{ConnInfo, admit, request_facts, select_route};
use crate::state::WaypointState;

/// One request to explain.
#[derive(Clone, Debug, Default)]
pub struct ExplainRequest {
    /// Method (`GET`).
    pub method: String,
    /// Path with its query, as sent.
    pub path: String,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Extra headers, as sent.
    pub headers: Vec<(String, String)>,
}

/// The waypoint's answer to an [`ExplainRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The Service (hostname) the destination resolved to.
    pub service: Option<String>,
    /// The status the waypoint answers itself (`None`: forwarded).
    pub local_status: Option<u16>,
    /// Envoy's response flags (`-` when none).
    pub flags: &'static str,
    /// Envoy's response code details: why (`via_upstream` when forwarded).
    pub details: String,
    /// The AuthorizationPolicy decision in words.
    pub authorization: String,
    /// The matched VirtualService route's name (`None`: the Service itself).
    pub route: Option<String>,
    /// Where it goes upstream: `host` (with `subset` and `port` when given).
    pub upstream: Option<String>,
    /// The upstream's host alone (the Service the request is sent to).
    pub upstream_host: Option<String>,
    /// What was not decided (faults, splits, rate limits).
    pub notes: Vec<String>,
}

/// Explains `req`, arriving on `conn` (its peer identity and original
/// destination), against `state`.
pub fn explain(state: &WaypointState, conn: &ConnInfo, req: &ExplainRequest) -> Verdict {
    let mut v = Verdict {
        service: None,
        local_status: None,
        flags: "-",
        details: "via_upstream".into(),
        authorization: String::new(),
        route: None,
        upstream: None,
        upstream_host: None,
        notes: vec![],
    };
    let Some((svc, via_vip)) = state.for_destination(conn.dst.ip()) else {
        v.local_status = Some(StatusCode::SERVICE_UNAVAILABLE.as_u16());
        v.flags = "NR";
        v.details = "cluster_not_found".into();
        return v;
    };
    v.service = Some(svc.service().hostname.clone());
    let refuse = |v: &mut Verdict, a: crate::answer::Answer| {
        v.local_status = Some(a.response.status().as_u16());
        v.flags = a.flags;
        v.details = a.details.into_owned();
    };
    let options = svc.http_options.unwrap_or_default();
    let (path_only, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    let path = match options.path_normalization.apply(path_only) {
        Ok(p) => p,
        Err(e) => {
            v.local_status = Some(400);
            v.details = "path_normalization_failed".into();
            v.notes.push(format!("path refused: {e}"));
            return v;
        }
    };
    let uri = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut builder = Request::builder()
        .method(req.method.as_str())
        .uri(uri.as_str())
        .header(http::header::HOST, req.authority.as_str());
    for (k, value) in &req.headers {
        builder = builder.header(k.as_str(), value.as_str());
    }
    let request = match builder.body(()) {
        Ok(r) => r,
        Err(e) => {
            v.local_status = Some(400);
            v.details = "invalid_request".into();
            v.notes.push(format!("the request cannot be sent: {e}"));
            return v;
        }
    };
    let facts = request_facts(&request, conn, &path);
    let (mut parts, ()) = request.into_parts();
    match admit(conn, svc, &facts, options.num_trusted_proxies, &mut parts) {
        Ok(decision) => v.authorization = decision.to_string(),
        Err(a) => {
            v.authorization = match rbac_rule(&a.details) {
                Some((ns, name, rule)) => format!(
                    "denied by AuthorizationPolicy {ns}/{name} (DENY), spec.rules[{rule}] matched"
                ),
                None if a.details == "rbac_access_denied_matched_policy[none]" => {
                    "denied: ALLOW policies apply and none of their rules matched".into()
                }
                None => format!("not reached: {}", a.details),
            };
            refuse(&mut v, a);
            return v;
        }
    }
    let selected = match select_route(svc, &facts, via_vip) {
        Ok(s) => s,
        Err(a) => {
            refuse(&mut v, a);
            return v;
        }
    };
    if !svc.limits.is_empty() {
        v.notes.push(format!(
            "{} local rate limit(s) apply: over the limit the answer is 429 (RL)",
            svc.limits.len()
        ));
    }
    let Some(route) = selected.route else {
        v.upstream = Some(svc.service().hostname.clone());
        v.upstream_host = v.upstream.clone();
        return v;
    };
    v.route = Some(if route.name.is_empty() {
        format!("#{}", selected.index.unwrap_or_default())
    } else {
        route.name.clone()
    });
    if let Some(abort) = route.fault.as_ref().and_then(|f| f.abort.as_ref()) {
        v.notes.push(format!(
            "fault: {}% of requests are answered {} (FI)",
            abort.percentage, abort.http_status
        ));
    }
    if let Some(d) = &route.direct_response {
        v.local_status = Some(u16::try_from(d.status).unwrap_or(500));
        v.details = "direct_response".into();
        return v;
    }
    if route.redirect.is_some() {
        v.local_status = Some(301);
        v.details = "direct_response".into();
        v.notes
            .push("redirected (status per the route's redirect)".into());
        return v;
    }
    if route.route.len() > 1 {
        v.notes.push(format!(
            "weighted split over {} destinations",
            route.route.len()
        ));
    }
    let (host, upstream) = match selected.destination.and_then(|d| d.destination.as_ref()) {
        Some(d) => {
            let mut s = d.host.clone();
            if !d.subset.is_empty() {
                s.push_str(&format!(" subset {}", d.subset));
            }
            if d.port != 0 {
                s.push_str(&format!(" port {}", d.port));
            }
            (d.host.clone(), s)
        }
        None => (
            svc.service().hostname.clone(),
            svc.service().hostname.clone(),
        ),
    };
    v.upstream = Some(upstream);
    v.upstream_host = Some(host);
    v
}

/// A connection as the waypoint sees it, for [`explain`]: the peer's
/// identity and the original destination.
pub fn connection(
    peer: Option<ambit_identity::SpiffeId>,
    client: SocketAddr,
    dst: SocketAddr,
    source: crate::metrics::Peer,
) -> ConnInfo {
    ConnInfo {
        peer_identity: peer,
        client,
        dst,
        source,
        resolved: None,
    }
}

/// `(namespace, name, rule)` from `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]`.
fn rbac_rule(details: &str) -> Option<(&str, &str, &str)> {
    let inner = details
        .strip_prefix("rbac_access_denied_matched_policy[ns[")?
        .strip_suffix("]]")?;
    let (ns, rest) = inner.split_once("]-policy[")?;
    let (name, rule) = rest.rsplit_once("]-rule[")?;
    Some((ns, name, rule))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rbac_details_read_back() {
        assert_eq!(
            super::rbac_rule(
                "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[2]]"
            ),
            Some(("shop", "no-admin", "2"))
        );
        assert_eq!(
            super::rbac_rule("rbac_access_denied_matched_policy[none]"),
            None
        );
    }
}
