//! The controller's Prometheus endpoint (`:15014/metrics`, istiod's port),
//! with istiod's names where it has one: `pilot_xds` (connected streams),
//! `pilot_xds_pushes_total`, `pilot_total_xds_rejects_total` (NACKs), plus
//! Ambit's model gauges.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::Snapshot;
use crate::xds::XdsStats;

/// OpenMetrics text for `stats` and the latest snapshot.
pub fn render(stats: &XdsStats, snap: &Snapshot) -> String {
    use ambit_api::translate::Severity;
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {v}"
        );
    };
    let _ = writeln!(
        out,
        "# HELP pilot_xds Number of endpoints connected to this controller using xDS.\n# TYPE pilot_xds gauge\npilot_xds {}",
        stats.connections.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "pilot_xds_pushes",
        "xDS responses sent.",
        stats.responses.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pilot_total_xds_rejects",
        "xDS responses rejected (NACKed) by proxies.",
        stats.nacks.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ambit_xds_resources_sent",
        "Resources sent in xDS responses.",
        stats.resources_sent.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP ambit_model_generation Snapshots published.\n# TYPE ambit_model_generation gauge\nambit_model_generation {}",
        snap.generation
    );
    let _ = writeln!(
        out,
        "# HELP ambit_model_resources Resources in the current snapshot.\n# TYPE ambit_model_resources gauge"
    );
    for (t, n) in [
        ("Address", snap.addresses.len()),
        ("Authorization", snap.authorizations.len()),
        ("L7Service", snap.l7.len()),
    ] {
        let _ = writeln!(out, "ambit_model_resources{{type=\"{t}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP ambit_config_findings Validation findings in the current config.\n# TYPE ambit_config_findings gauge"
    );
    for (label, sev) in [
        ("error", Severity::Error),
        ("warning", Severity::Warning),
        ("info", Severity::Info),
    ] {
        let n = snap.findings.iter().filter(|f| f.severity == sev).count();
        let _ = writeln!(out, "ambit_config_findings{{severity=\"{label}\"}} {n}");
    }
    out.push_str("# EOF\n");
    out
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<XdsStats>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (stats, snapshots) = (stats.clone(), snapshots.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let body =
                    if req.uri().path() == "/metrics" || req.uri().path() == "/stats/prometheus" {
                        Some(render(&stats, &snapshots.borrow()))
                    } else {
                        None
                    };
                async move {
                    let mut resp = match body {
                        Some(b) => http::Response::new(Full::new(Bytes::from(b))),
                        None => {
                            let mut r =
                                http::Response::new(Full::new(Bytes::from_static(b"not found\n")));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
