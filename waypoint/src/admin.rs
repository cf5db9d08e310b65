//! The waypoint's HTTP endpoints (Istio's ports): `:15021/healthz/ready`,
//! `:15020/stats/prometheus` (and `/metrics`), `:15000/config_dump`.

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

use crate::Waypoint;

/// Readiness.
pub const READINESS: u16 = 15021;
/// Prometheus metrics.
pub const METRICS: u16 = 15020;
/// Admin.
pub const ADMIN: u16 = 15000;

fn reply(status: StatusCode, ct: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

fn route(w: &Waypoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz/ready" if w.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/healthz/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "waiting for config from the controller\n".into(),
        ),
        "/stats/prometheus" | "/metrics" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            w.metrics().render(),
        ),
        "/config_dump" => reply(StatusCode::OK, "application/json", w.config_dump()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves the admin endpoints on `listener` (any of the three ports).
pub async fn serve(w: Arc<Waypoint>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let w = w.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = route(&w, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(error = %e, "admin connection");
            }
        });
    }
}
