//! The one HTTP server for a proxy's operational endpoints, on Istio's ports
//! (docs/wire.md §6): `:15021/healthz/ready`, `:15020/metrics` (and
//! `/stats/prometheus`, OpenMetrics when asked for), `:15000/config_dump`
//! plus whatever admin paths the proxy adds. Each port serves only its own
//! paths, as Istio's do. The proxy supplies the content through [`Endpoints`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::{accept, drain};

/// Admin (`/config_dump`): localhost only for a node proxy.
pub const ADMIN: u16 = 15000;
/// Prometheus metrics.
pub const METRICS: u16 = 15020;
/// Readiness.
pub const READINESS: u16 = 15021;

/// What a listener serves: each of Istio's ports has its own paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `/config_dump` and the proxy's other admin paths (15000).
    Admin,
    /// `/metrics`, `/stats/prometheus` (15020; istiod's 15014).
    Metrics,
    /// `/healthz/ready` (15021).
    Readiness,
}

impl Role {
    /// Istio's port for the role on a proxy.
    pub fn port(self) -> u16 {
        match self {
            Role::Admin => ADMIN,
            Role::Metrics => METRICS,
            Role::Readiness => READINESS,
        }
    }
}

/// One response from an endpoint.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// A 200 with `body` as `content_type`.
    pub fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type,
            body: body.into(),
        }
    }

    /// A pretty-printed JSON 200 (a 500 naming the error if it does not serialize).
    pub fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Reply::ok("application/json", body),
            Err(e) => Reply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: "text/plain",
                body: e.to_string().into(),
            },
        }
    }

    fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }
}

/// What a proxy shows on its endpoints.
pub trait Endpoints: Send + Sync + 'static {
    /// What the proxy still waits for before it is ready (empty: ready).
    fn pending(&self) -> Vec<String>;
    /// The status of a not-ready answer: Istio's ztunnel answers 500, a
    /// waypoint (pilot-agent in front of Envoy) 503.
    fn not_ready_status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    /// The Prometheus text exposition of the proxy's metrics.
    fn metrics(&self) -> String;
    /// `/config_dump`.
    fn config_dump(&self) -> Reply;
    /// Any other path on the admin port (`None`: 404).
    fn admin(&self, path: &str) -> Option<Reply> {
        let _ = path;
        None
    }
}

fn route(e: &dyn Endpoints, req: &Request<Incoming>, role: Role) -> Reply {
    match (role, req.uri().path()) {
        (Role::Metrics, "/metrics" | "/stats/prometheus") => {
            let open_metrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let content_type = if open_metrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            Reply::ok(content_type, e.metrics())
        }
        (Role::Readiness, "/healthz/ready") => match e.pending() {
            p if p.is_empty() => Reply::text(StatusCode::OK, "ready\n"),
            p => Reply::text(
                e.not_ready_status(),
                format!("not ready, pending: {}\n", p.join(", ")),
            ),
        },
        (Role::Admin, "/config_dump") => e.config_dump(),
        (Role::Admin, path) => e
            .admin(path)
            .unwrap_or_else(|| Reply::text(StatusCode::NOT_FOUND, "not found\n")),
        _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn response(r: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(r.body));
    *resp.status_mut() = r.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(r.content_type),
    );
    resp
}

/// Serves the endpoints of `role` on `listener` until `drain` starts.
pub async fn serve(
    endpoints: Arc<dyn Endpoints>,
    listener: TcpListener,
    role: Role,
    drain: drain::Watch,
) {
    accept::serve(listener, "admin", drain, move |tcp, _| {
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let reply = route(endpoints.as_ref(), &req, role);
                async move { Ok::<_, Infallible>(response(reply)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        });
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed {
        pending: Vec<String>,
    }

    impl Endpoints for Fixed {
        fn pending(&self) -> Vec<String> {
            self.pending.clone()
        }
        fn metrics(&self) -> String {
            "up 1\n".into()
        }
        fn config_dump(&self) -> Reply {
            Reply::json(&serde_json::json!({"ok": true}))
        }
        fn admin(&self, path: &str) -> Option<Reply> {
            (path == "/extra").then(|| Reply::ok("text/plain", "extra"))
        }
    }

    async fn get(endpoints: Arc<dyn Endpoints>, role: Role, path: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(serve(endpoints, listener, role, drain::Watch::never()));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        task.abort();
        out
    }

    #[tokio::test]
    async fn each_role_serves_only_its_paths() {
        let ready: Arc<dyn Endpoints> = Arc::new(Fixed { pending: vec![] });
        let metrics = get(ready.clone(), Role::Metrics, "/stats/prometheus").await;
        assert!(
            metrics.starts_with("HTTP/1.1 200") && metrics.ends_with("up 1\n"),
            "{metrics}"
        );
        let dump = get(ready.clone(), Role::Admin, "/config_dump").await;
        assert!(dump.contains("\"ok\": true"), "{dump}");
        assert!(
            get(ready.clone(), Role::Admin, "/extra")
                .await
                .ends_with("extra")
        );
        for (role, path) in [
            (Role::Metrics, "/config_dump"),
            (Role::Readiness, "/metrics"),
            (Role::Admin, "/healthz/ready"),
            (Role::Admin, "/nope"),
        ] {
            let r = get(ready.clone(), role, path).await;
            assert!(r.starts_with("HTTP/1.1 404"), "{role:?} {path}: {r}");
        }
        assert!(
            get(ready, Role::Readiness, "/healthz/ready")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let waiting: Arc<dyn Endpoints> = Arc::new(Fixed {
            pending: vec!["pod a".into()],
        });
        let r = get(waiting, Role::Readiness, "/healthz/ready").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("not ready, pending: pod a"),
            "{r}"
        );
    }
}
