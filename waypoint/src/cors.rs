//! VirtualService `corsPolicy`: preflight answers and the headers added to
//! actual responses, as Envoy's CORS filter does. An origin that does not
//! match gets no CORS headers (the browser then refuses).

use ambit_api::xds::proto::l7 as pb;
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode};

use crate::answer::full;
use crate::matcher::Matcher;
use crate::upstream::Body;

/// A route's CORS policy with its `allowOrigins` compiled (once per config
/// version, by the router).
#[derive(Clone, Copy, Debug)]
pub struct Cors<'a> {
    /// The policy.
    pub policy: &'a pb::CorsPolicy,
    /// `allowOrigins`, compiled.
    pub origins: &'a [Matcher],
}

fn origin_allowed(cors: Cors<'_>, origin: &str) -> bool {
    cors.origins.iter().any(|m| m.matches(origin))
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        h.insert(name, v);
    }
}

/// The answer to an `OPTIONS` preflight from `origin`.
pub fn preflight(cors: Cors<'_>, origin: &str) -> Response<Body> {
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    if !origin_allowed(cors, origin) {
        return r;
    }
    let h = r.headers_mut();
    set(h, "access-control-allow-origin", origin);
    if !cors.policy.allow_methods.is_empty() {
        set(
            h,
            "access-control-allow-methods",
            &cors.policy.allow_methods.join(","),
        );
    }
    if !cors.policy.allow_headers.is_empty() {
        set(
            h,
            "access-control-allow-headers",
            &cors.policy.allow_headers.join(","),
        );
    }
    if cors.policy.max_age_s > 0 {
        set(
            h,
            "access-control-max-age",
            &cors.policy.max_age_s.to_string(),
        );
    }
    if cors.policy.allow_credentials {
        set(h, "access-control-allow-credentials", "true");
    }
    r
}

/// Adds CORS headers to an actual response for `origin`.
pub fn decorate(cors: Cors<'_>, origin: &str, h: &mut HeaderMap) {
    if !origin_allowed(cors, origin) {
        return;
    }
    set(h, "access-control-allow-origin", origin);
    if !cors.policy.expose_headers.is_empty() {
        set(
            h,
            "access-control-expose-headers",
            &cors.policy.expose_headers.join(","),
        );
    }
    if cors.policy.allow_credentials {
        set(h, "access-control-allow-credentials", "true");
    }
}
