//! The router's upstream half: the chosen destination resolved to an
//! endpoint (DestinationRule balancing, workload-addressed traffic to that
//! very pod), the request sent with Istio's retry policy, per-try and route
//! timeouts and connection-pool limits, mirrors, and the response back with
//! its header operations, CORS headers and a spliced upgrade.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ambit_api::xds::proto::l7 as pb;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use crate::answer::{Answer, full, local, overflowed};
use crate::body::Metered;
use crate::cors::Cors;
use crate::metrics::Peer;
use crate::proxy::{ConnInfo, Selected, UpstreamForm, apply_ops, sampled};
use crate::state::{ServiceState, Subset};
use crate::upstream::{Body, BoxError, InFlight, Target, UpstreamError, Upstreams};
use crate::waypoint::Waypoint;

/// Bodies up to this size are buffered so a retry or mirror can resend them;
/// larger ones stream once.
const REPLAY_LIMIT: u64 = 64 * 1024;

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

/// A response from an endpoint, the pool slot it holds while its body
/// streams, and the client's side of an upgrade to splice after a 101.
pub struct Forwarded {
    response: Response<Incoming>,
    in_flight: InFlight,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Sends the request to the route's destination (or the Service itself):
/// resolve, buffer a small body, mirror, then try endpoints under the retry
/// policy and the route's timeout. Records the endpoint tried last in
/// `destination`.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    w: &Waypoint,
    conn: &ConnInfo,
    svc: &Arc<ServiceState>,
    selected: &Selected<'_>,
    mut parts: http::request::Parts,
    body: Incoming,
    form: UpstreamForm,
    authority: &str,
    hash_header: impl Fn(&str) -> Option<String>,
    via_vip: bool,
    destination: &mut Peer,
) -> Result<Forwarded, Answer> {
    let route = selected.route;
    let Some((backend, subset, port)) = svc.resolve(
        selected.destination.and_then(|d| d.destination.as_ref()),
        conn.dst.port(),
    ) else {
        return Err(Answer::new(
            "NR",
            "cluster_not_found",
            local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        ));
    };
    let subset = subset.clone();
    let hash_value = subset.balancer.hash_header().and_then(&hash_header);
    // The client side of an upgrade (websocket): spliced after the 101.
    let downstream_upgrade = if form.upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    // Small bodies are buffered so retries and mirrors can resend them.
    let size_hint = http_body::Body::size_hint(&body);
    let replayable = !form.upgrade && size_hint.upper().is_some_and(|u| u <= REPLAY_LIMIT);
    let retry = RetryPolicy::of(route.and_then(|r| r.retries.as_ref()));
    let timeout = route
        .map(|r| r.timeout_ms)
        .filter(|t| *t > 0)
        .map(Duration::from_millis);
    let mut streamed = None;
    let prepared = if replayable {
        match body.collect().await {
            Ok(b) => Prepared {
                parts,
                body: Some(b.to_bytes()),
            },
            Err(_) => {
                return Err(Answer::new(
                    "DC",
                    "downstream_remote_disconnect",
                    local(StatusCode::BAD_REQUEST, "request body"),
                ));
            }
        }
    } else {
        streamed = Some(body);
        Prepared { parts, body: None }
    };
    if let Some(route) = route
        && prepared.body.is_some()
    {
        for m in &route.mirrors {
            if sampled(m.percentage) {
                mirror(w, svc, m, &prepared, port, authority);
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
                form.http2,
                conn_dst,
            ) else {
                return Err(Answer::new(
                    "UH",
                    "no_healthy_upstream",
                    local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                ));
            };
            let ep = &subset.endpoints[ep_index];
            *destination = Peer {
                workload: ep.workload.clone(),
                namespace: ep.namespace.clone(),
                principal: ep.identity.clone(),
                app: ep.canonical_name.clone(),
                version: ep.canonical_revision.clone(),
            };
            let Ok(in_flight) = w.upstreams().admit(&subset, ep_index) else {
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
            let sent = w.upstreams().send(&subset, &target, request);
            let result = match retry.per_try {
                Some(t) => tokio::time::timeout(t, sent).await.ok(),
                None => Some(sent.await),
            };
            match result {
                None => {
                    subset.record(ep_index, None);
                    if attempts_left == 0 {
                        return Err(Answer::new(
                            "UT",
                            "upstream_per_try_timeout",
                            local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                        ));
                    }
                }
                Some(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    subset.record(ep_index, Some(status));
                    if attempts_left > 0 && retry.retry_response(&resp) {
                        attempts_left -= 1;
                        w.metrics().retries.fetch_add(1, Ordering::Relaxed);
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
                        let details = if e.is_connect() {
                            "upstream_reset_before_response_started{connection_failure}"
                        } else {
                            "upstream_reset_before_response_started{remote_reset}"
                        };
                        return Err(Answer::new(
                            flags,
                            details,
                            local(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "upstream connect error or disconnect/reset before headers",
                            ),
                        ));
                    }
                }
            }
            attempts_left = attempts_left.saturating_sub(1);
            w.metrics().retries.fetch_add(1, Ordering::Relaxed);
        }
    };
    let (response, in_flight) = match timeout {
        Some(t) => match tokio::time::timeout(t, attempt_all).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Answer::new(
                    "UT",
                    "response_timeout",
                    local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                ));
            }
        },
        None => attempt_all.await?,
    };
    Ok(Forwarded {
        response,
        in_flight,
        downstream_upgrade,
    })
}

/// The response back to the client: an upgrade spliced, the destination's
/// then the route's response header operations, CORS headers for an
/// allowed origin; the pool slot is held until the body ends.
pub fn respond(
    forwarded: Forwarded,
    selected: &Selected<'_>,
    cors: Option<(Cors<'_>, &str)>,
) -> Response<Body> {
    let Forwarded {
        response: mut resp,
        in_flight,
        downstream_upgrade,
    } = forwarded;
    let upstream_upgrade =
        (resp.status() == StatusCode::SWITCHING_PROTOCOLS).then(|| hyper::upgrade::on(&mut resp));
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
        selected
            .destination
            .and_then(|d| d.headers.as_ref())
            .and_then(|h| h.response.as_ref()),
    );
    apply_ops(
        &mut parts.headers,
        selected
            .route
            .and_then(|r| r.headers.as_ref())
            .and_then(|h| h.response.as_ref()),
    );
    if let Some((cors, origin)) = cors {
        crate::cors::decorate(cors, origin, &mut parts.headers);
    }
    let body = Metered::new(
        body.map_err(|e| Box::new(e) as BoxError).boxed(),
        vec![Box::new(in_flight)],
        None,
    )
    .boxed();
    Response::from_parts(parts, body)
}

/// Sends a copy to the mirror destination and forgets it (Istio appends
/// `-shadow` to the authority).
fn mirror(
    w: &Waypoint,
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
    let upstreams: Arc<Upstreams> = w.upstreams().clone();
    let metrics = w.metrics().clone();
    tokio::spawn(async move {
        let Ok(guard) = upstreams.admit(&subset, ep) else {
            return;
        };
        metrics.mirrored.fetch_add(1, Ordering::Relaxed);
        if let Ok(resp) = upstreams.send(&subset, &target, req).await {
            let _ = resp.into_body().collect().await;
        }
        drop(guard);
    });
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
}
