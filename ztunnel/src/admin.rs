//! ztunnel's HTTP endpoints in the node's namespace (docs/wire.md §6):
//! `:15020/metrics` (and `/stats/prometheus`), `:15021/healthz/ready`, and on
//! localhost `:15000/config_dump` and `:15000/memory` (resident size and heap,
//! [`crate::memory`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::memory::MemoryReport;
use crate::netns::Netns;
use crate::proxy::Ztunnel;
use crate::socket::listen_in;

/// Ports of the node-level endpoints.
pub mod ports {
    /// Admin (`/config_dump`), localhost only.
    pub const ADMIN: u16 = 15000;
    /// Prometheus metrics.
    pub const METRICS: u16 = 15020;
    /// Readiness.
    pub const READINESS: u16 = 15021;
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

fn route(z: &Ztunnel, req: &Request<Incoming>, port: u16) -> Response<Full<Bytes>> {
    match (port, req.uri().path()) {
        (ports::METRICS, "/metrics" | "/stats/prometheus") => {
            let open_metrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let ct = if open_metrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            reply(StatusCode::OK, ct, z.metrics().render())
        }
        (ports::READINESS, "/healthz/ready") => match z.pending() {
            p if p.is_empty() => reply(StatusCode::OK, "text/plain", "ready\n"),
            p => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("not ready, pending: {}\n", p.join(", ")),
            ),
        },
        (ports::ADMIN, "/config_dump") => json(&z.config_dump()),
        (ports::ADMIN, "/memory") => json(&MemoryReport::sample()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

async fn serve(z: Arc<Ztunnel>, listener: TcpListener, port: u16) {
    while let Ok((tcp, _)) = listener.accept().await {
        let z = z.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = route(&z, &req, port);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// Starts the three endpoints inside `node` (the node's namespace). The tasks
/// end when aborted.
pub fn start(z: &Arc<Ztunnel>, node: &Netns) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for (ip, port) in [
        ([127, 0, 0, 1], ports::ADMIN),
        ([0, 0, 0, 0], ports::METRICS),
        ([0, 0, 0, 0], ports::READINESS),
    ] {
        let l = listen_in(node, SocketAddr::from((ip, port)))?;
        tasks.push(tokio::spawn(serve(z.clone(), l, port)));
    }
    Ok(tasks)
}
