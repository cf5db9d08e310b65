//! Answers the waypoint makes itself, with Envoy's bodies and codes: local
//! replies, `directResponse`, redirects, JWT refusals, pool overflow.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tracing::debug;

use ambit_api::xds::proto::l7 as pb;

use crate::jwt::JwtError;
use crate::upstream::Body;

/// A request path stage's early answer: the response, Envoy's response
/// flags for it (`-` when Envoy sets none) and its response code details.
#[derive(Debug)]
pub struct Answer {
    /// `response_flags`.
    pub flags: &'static str,
    /// Envoy's `%RESPONSE_CODE_DETAILS%`: what made the answer, e.g.
    /// `rbac_access_denied_matched_policy[ns[demo]-policy[deny-post]-rule[0]]`.
    pub details: Cow<'static, str>,
    /// What the client gets (boxed: an early answer is the cold path, and
    /// every stage's `Result` stays small).
    pub response: Box<Response<Body>>,
}

impl Answer {
    /// `response`, reported with `flags` and `details`.
    pub fn new(
        flags: &'static str,
        details: impl Into<Cow<'static, str>>,
        response: Response<Body>,
    ) -> Self {
        Answer {
            flags,
            details: details.into(),
            response: Box::new(response),
        }
    }
}

/// An answer the waypoint makes itself.
pub fn local(status: StatusCode, body: &'static str) -> Response<Body> {
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

/// The answer to a refused token: 403 for an authentic token for another
/// audience, else 401 with `www-authenticate`, as Envoy's `jwt_authn`
/// answers (no response flag; the details name the failure, e.g.
/// `jwt_authn_access_denied{Jwt_verification_fails}`).
pub fn jwt_refusal(e: &JwtError) -> Answer {
    debug!(error = %e, "JWT refused");
    let (status, message) = if *e == JwtError::AudienceNotAllowed {
        (StatusCode::FORBIDDEN, "Audiences in Jwt are not allowed")
    } else {
        (StatusCode::UNAUTHORIZED, "Jwt verification fails")
    };
    let details = format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"));
    if status == StatusCode::FORBIDDEN {
        return Answer::new("-", details, local(status, message));
    }
    let mut r = local(status, "Jwt verification fails\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ambit\", error=\"invalid_token\""),
    );
    Answer::new("-", details, r)
}

/// Envoy's answer when a connection-pool limit is hit (flag `UO`).
pub fn overflowed() -> Answer {
    Answer::new(
        "UO",
        "upstream_reset_before_response_started{overflow}",
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
    )
}

/// `directResponse`: the status and body as configured.
pub fn direct_response(d: &pb::DirectResponse) -> Response<Body> {
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

/// A VirtualService `redirect`: Envoy's `Location`, keeping the request's
/// query unless the new URI has one.
pub fn redirect_response(
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
    use http::Request;

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
}
