//! The HBONE CONNECT request: built by the client with exactly the pseudo-headers
//! and headers Istio's ztunnel sends (docs/wire.md §2.3), and parsed by the server
//! into a target plus the informational headers (§2.4, §2.5).
//!
//! Parsing is a pure function of the request head, so it is table-tested and fuzzed
//! without sockets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};

/// Header naming the original client and, for service traffic, the service host.
pub const FORWARDED: &str = "forwarded";
/// Header describing the source workload for telemetry.
pub const BAGGAGE: &str = "baggage";
/// W3C trace context header, random per connection, for log correlation.
pub const TRACEPARENT: &str = "traceparent";

/// Ports a tunnel may never target: ztunnel's own capture and tunnel ports.
pub const RESERVED_PORTS: [u16; 4] = [15001, 15006, 15008, 15080];

/// Where a CONNECT asks to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectTarget {
    /// `IP:port` (`[v6]:port`).
    Addr(SocketAddr),
    /// `hostname:port`, used with double HBONE and service hostnames.
    Host {
        /// The hostname, lower-cased.
        host: String,
        /// The port.
        port: u16,
    },
}

impl ConnectTarget {
    /// The port asked for.
    pub fn port(&self) -> u16 {
        match self {
            ConnectTarget::Addr(a) => a.port(),
            ConnectTarget::Host { port, .. } => *port,
        }
    }
}

impl fmt::Display for ConnectTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectTarget::Addr(a) => write!(f, "{a}"),
            ConnectTarget::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A validated inbound CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundConnect {
    /// Where to connect.
    pub target: ConnectTarget,
    /// The original client address from `forwarded: for=`.
    pub forwarded_for: Option<SocketAddr>,
    /// The destination service from `forwarded: host=`.
    pub forwarded_host: Option<String>,
    /// Source workload description (`baggage`), as sent.
    pub baggage: Option<String>,
    /// Trace id for logs (`traceparent`), as sent.
    pub traceparent: Option<String>,
}

/// Why an inbound CONNECT was refused before anything was dialed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The method is not CONNECT.
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    /// `:authority` is missing.
    #[error("CONNECT without :authority")]
    MissingAuthority,
    /// `:authority` is neither `ip:port` nor `host:port`.
    #[error("authority {0:?} is not ip:port or host:port")]
    BadAuthority(String),
    /// A classic CONNECT carried `:scheme` or `:path`.
    #[error("CONNECT must not carry :scheme or :path")]
    UnexpectedPseudoHeader,
    /// The port cannot be a tunnel target.
    #[error("target port {0} is not allowed")]
    IllegalPort(u16),
}

impl RequestError {
    /// The status the server answers with (docs/wire.md §2.5).
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::IllegalPort(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses `host:port` / `ip:port` / `[v6]:port`.
pub fn parse_authority(raw: &str) -> Result<ConnectTarget, RequestError> {
    let bad = || RequestError::BadAuthority(raw.to_string());
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(ConnectTarget::Addr(addr));
    }
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    // A bare v6 address without brackets, or an IP that failed above, is not a host.
    if host.is_empty() || host.len() > 253 || host.parse::<IpAddr>().is_ok() {
        return Err(bad());
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok {
        return Err(bad());
    }
    Ok(ConnectTarget::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Reads `for="ip:port"` and `host=name` out of a `forwarded` header. Unknown or
/// malformed parts are ignored: the header is informational only.
pub fn parse_forwarded(value: &str) -> (Option<SocketAddr>, Option<String>) {
    let mut for_addr = None;
    let mut host = None;
    // Only the first forwarded-element (before any ',') describes our client.
    let first = value.split(',').next().unwrap_or_default();
    for pair in first.split(';') {
        let Some((k, v)) = pair.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "for" => for_addr = v.parse().ok(),
            "host" if !v.is_empty() => host = Some(v.to_string()),
            _ => {}
        }
    }
    (for_addr, host)
}

/// Validates an inbound request head (method, URI, headers).
pub fn parse_inbound<B>(req: &Request<B>) -> Result<InboundConnect, RequestError> {
    if req.method() != Method::CONNECT {
        return Err(RequestError::NotConnect(req.method().to_string()));
    }
    let uri = req.uri();
    if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| !p.as_str().is_empty()) {
        return Err(RequestError::UnexpectedPseudoHeader);
    }
    let authority = uri.authority().ok_or(RequestError::MissingAuthority)?;
    let target = parse_authority(authority.as_str())?;
    let port = target.port();
    if port == 0 || RESERVED_PORTS.contains(&port) {
        return Err(RequestError::IllegalPort(port));
    }
    let headers = req.headers();
    let (forwarded_for, forwarded_host) = header_str(headers, FORWARDED)
        .map(|f| parse_forwarded(&f))
        .unwrap_or_default();
    Ok(InboundConnect {
        target,
        forwarded_for,
        forwarded_host,
        baggage: header_str(headers, BAGGAGE),
        traceparent: header_str(headers, TRACEPARENT),
    })
}

/// What the client puts in a CONNECT.
#[derive(Clone, Debug, Default)]
pub struct ConnectHead {
    /// `:authority` value: `ip:port` for workloads.
    pub authority: String,
    /// The original client address, for `forwarded: for=`.
    pub forwarded_for: Option<SocketAddr>,
    /// The service FQDN, for `forwarded: host=` when reached through a Service.
    pub forwarded_host: Option<String>,
    /// Source workload pairs for `baggage` (empty values are left out).
    pub baggage: Vec<(String, String)>,
}

impl ConnectHead {
    /// A head targeting `addr` with nothing else set.
    pub fn to_addr(addr: SocketAddr) -> Self {
        ConnectHead {
            authority: addr.to_string(),
            ..Default::default()
        }
    }

    /// The `baggage` value: comma-joined `key=value`, empty values dropped.
    pub fn baggage_value(&self) -> String {
        self.baggage
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `forwarded` value.
    pub fn forwarded_value(&self) -> String {
        let mut v = match self.forwarded_for {
            Some(a) => format!("for=\"{a}\""),
            None => "for=unknown".to_string(),
        };
        if let Some(h) = &self.forwarded_host {
            v.push_str(";host=");
            v.push_str(h);
        }
        v
    }

    /// The request: `:method CONNECT`, `:authority`, and `forwarded`, `baggage`,
    /// `traceparent` — nothing else.
    pub fn to_request(&self) -> Result<Request<()>, http::Error> {
        let trace: [u8; 16] = rand::random();
        let parent: [u8; 8] = rand::random();
        Request::builder()
            .method(Method::CONNECT)
            .uri(self.authority.as_str())
            .header(FORWARDED, HeaderValue::try_from(self.forwarded_value())?)
            .header(BAGGAGE, HeaderValue::try_from(self.baggage_value())?)
            .header(
                TRACEPARENT,
                format!("00-{}-{}-00", hex::encode(trace), hex::encode(parent)),
            )
            .body(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn inbound_table() {
        let cases: &[(&str, &str, Result<ConnectTarget, RequestError>)] = &[
            (
                "CONNECT",
                "10.0.0.1:8080",
                Ok(ConnectTarget::Addr("10.0.0.1:8080".parse().unwrap())),
            ),
            (
                "CONNECT",
                "[fd00::1]:80",
                Ok(ConnectTarget::Addr("[fd00::1]:80".parse().unwrap())),
            ),
            (
                "CONNECT",
                "Echo.Demo.svc.cluster.local:80",
                Ok(ConnectTarget::Host {
                    host: "echo.demo.svc.cluster.local".into(),
                    port: 80,
                }),
            ),
            (
                "GET",
                "10.0.0.1:8080",
                Err(RequestError::NotConnect("GET".into())),
            ),
            (
                "POST",
                "http://10.0.0.1:8080/",
                Err(RequestError::NotConnect("POST".into())),
            ),
            (
                "CONNECT",
                "10.0.0.1:99999",
                Err(RequestError::BadAuthority("10.0.0.1:99999".into())),
            ),
            (
                "CONNECT",
                "bad_host:80",
                Err(RequestError::BadAuthority("bad_host:80".into())),
            ),
            (
                "CONNECT",
                "-x.example:80",
                Err(RequestError::BadAuthority("-x.example:80".into())),
            ),
            ("CONNECT", "10.0.0.1:0", Err(RequestError::IllegalPort(0))),
            (
                "CONNECT",
                "10.0.0.1:15008",
                Err(RequestError::IllegalPort(15008)),
            ),
            (
                "CONNECT",
                "10.0.0.1:15001",
                Err(RequestError::IllegalPort(15001)),
            ),
            (
                "CONNECT",
                "10.0.0.1:15006",
                Err(RequestError::IllegalPort(15006)),
            ),
            (
                "CONNECT",
                "http://10.0.0.1:80/x",
                Err(RequestError::UnexpectedPseudoHeader),
            ),
        ];
        for (method, uri, want) in cases {
            let got = parse_inbound(&req(method, uri)).map(|c| c.target);
            assert_eq!(&got, want, "{method} {uri}");
        }
        // An authority that is a bare port parses as no authority at all.
        assert!(parse_authority("10.0.0.1").is_err());
        assert!(parse_authority(":80").is_err());
        assert!(
            parse_authority("fd00::1:80").is_err(),
            "v6 without brackets"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(RequestError::NotConnect("GET".into()).status(), 400);
        assert_eq!(RequestError::BadAuthority("x".into()).status(), 400);
        assert_eq!(RequestError::IllegalPort(0).status(), 503);
    }

    #[test]
    fn forwarded_parsing() {
        assert_eq!(
            parse_forwarded("for=\"10.1.2.3:4567\";host=echo.demo.svc.cluster.local"),
            (
                Some("10.1.2.3:4567".parse().unwrap()),
                Some("echo.demo.svc.cluster.local".into())
            )
        );
        assert_eq!(parse_forwarded("garbage"), (None, None));
        assert_eq!(
            parse_forwarded("for=\"[fd00::1]:80\", for=1.1.1.1").0,
            Some("[fd00::1]:80".parse().unwrap())
        );
    }

    #[test]
    fn client_head_has_only_the_istio_headers() {
        let head = ConnectHead {
            authority: "10.0.0.2:80".into(),
            forwarded_for: Some("10.0.0.1:5555".parse().unwrap()),
            forwarded_host: Some("echo.demo.svc.cluster.local".into()),
            baggage: vec![
                ("k8s.namespace.name".into(), "demo".into()),
                ("service.version".into(), "".into()),
            ],
        };
        let r = head.to_request().unwrap();
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.uri().to_string(), "10.0.0.2:80");
        let names: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec![FORWARDED, BAGGAGE, TRACEPARENT]);
        assert_eq!(r.headers()[BAGGAGE], "k8s.namespace.name=demo");
        assert_eq!(
            r.headers()[FORWARDED],
            "for=\"10.0.0.1:5555\";host=echo.demo.svc.cluster.local"
        );
        let tp = r.headers()[TRACEPARENT].to_str().unwrap();
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-") && tp.ends_with("-00"));
        // And the server side accepts what the client sends.
        let parsed = parse_inbound(&r).unwrap();
        assert_eq!(
            parsed.forwarded_host.as_deref(),
            Some("echo.demo.svc.cluster.local")
        );
    }
}
