//! `ambit dashboard`: what Kiali shows, built in. A web page served on
//! loopback by the CLI with the live service graph of a running local
//! cluster (workloads, traffic with rate, error share, p99 and the mTLS
//! lock, refusals), a panel per workload (identity, node, the L4 policies
//! that apply and the waypoint's L7 ones), and the config findings.
//!
//! Everything comes from the proxies' own endpoints (metrics `:15020`,
//! `/config_dump`) and the cluster's directory, read when the page asks:
//! `/api/graph`, `/api/workload?id=ns/name`, `/api/findings`.

pub mod graph;
pub mod prom;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::proxies::{Cluster, Port};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use graph::{Counters, Graph};

/// The page (plain HTML, CSS and JavaScript; no build step).
const PAGE: &str = include_str!("page.html");

/// Rates are over the scrapes of the last this many seconds.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(30);
/// The dashboard scrapes this often even with no page open, so a page
/// opened later has rates at once.
const SCRAPE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the dashboard listens.
#[derive(clap::Args, Debug, Clone)]
pub struct DashboardArgs {
    /// Address to serve on (loopback by default: the page shows identities
    /// and policies).
    #[arg(long, default_value = "127.0.0.1:20001")]
    pub address: SocketAddr,
    /// Which local cluster (`ambit-<pid>`; default: the newest).
    #[arg(long)]
    pub run: Option<String>,
    /// The Kubernetes cluster of KUBECONFIG (proxies reached by port-forward).
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig context (implies --kube).
    #[arg(long)]
    pub context: Option<String>,
}

/// The dashboard's state: where the cluster is and the recent scrapes rates
/// are computed from.
struct Dashboard {
    args: DashboardArgs,
    /// Kubernetes: one client for every request.
    kube: Option<kube::Client>,
    history: Mutex<VecDeque<(Instant, Counters)>>,
}

impl Dashboard {
    /// The cluster now (a local one is looked up again: it may have gone).
    fn cluster(&self) -> anyhow::Result<Cluster> {
        match &self.kube {
            Some(c) => Ok(Cluster::Kube(c.clone())),
            None => Ok(Cluster::Local(crate::inspect::local_cluster(
                self.args.run.as_deref(),
            )?)),
        }
    }
}

/// The cluster's name for the page.
fn cluster_name(c: &Cluster) -> String {
    match c {
        Cluster::Local(info) => info.run.clone(),
        Cluster::Kube(_) => "kubernetes".into(),
    }
}

/// Serves until the process ends (or the listener fails).
pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    // Fail early and clearly when there is nothing to show.
    let cluster = Cluster::choose(args.run.as_deref(), args.kube, args.context.as_deref()).await?;
    let kube = match &cluster {
        Cluster::Kube(c) => Some(c.clone()),
        Cluster::Local(_) => None,
    };
    let listener = tokio::net::TcpListener::bind(args.address)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", args.address))?;
    println!(
        "ambit dashboard for {} on http://{}/ (Ctrl-C to stop)",
        cluster_name(&cluster),
        listener.local_addr()?
    );
    let dashboard = Arc::new(Dashboard {
        args,
        kube,
        history: Mutex::new(VecDeque::new()),
    });
    let scraper = dashboard.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCRAPE_EVERY);
        loop {
            tick.tick().await;
            if let Ok(c) = scraper.cluster() {
                let _ = scraper.graph(&c).await;
            }
        }
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let d = dashboard.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, std::convert::Infallible>(d.answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_reply(v: &Value) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, "application/json", v.to_string())
}

impl Dashboard {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(e) => {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{e:#}"),
                );
            }
        };
        let query = req.uri().query().unwrap_or_default().to_string();
        match req.uri().path() {
            "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            "/api/graph" => match self.graph(&cluster).await {
                Ok(g) => json_reply(&json!({"cluster": cluster_name(&cluster), "graph": g})),
                Err(e) => reply(StatusCode::BAD_GATEWAY, "text/plain", format!("{e:#}")),
            },
            "/api/workload" => {
                let id = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("id="))
                    .map(percent_decode)
                    .unwrap_or_default();
                match workload_detail(&cluster, &id).await {
                    Ok(v) => json_reply(&v),
                    Err(e) => reply(StatusCode::NOT_FOUND, "text/plain", format!("{e:#}")),
                }
            }
            "/api/findings" => json_reply(&findings(&cluster).await),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found"),
        }
    }

    /// Nodes from node1's ztunnel; edges from every proxy's metrics, with
    /// rates against the baseline scrape.
    async fn graph(&self, cluster: &Cluster) -> anyhow::Result<Graph> {
        let proxies = crate::proxies::list(cluster).await?;
        let dump = crate::inspect::ztunnel_dump_in(&proxies, None).await?;
        let waypoint_pods: Vec<String> = proxies
            .iter()
            .filter(|p| p.kind == "waypoint")
            .map(|p| p.name.clone())
            .collect();
        let nodes = graph::nodes(&dump, &waypoint_pods);
        let mut ztunnels = Vec::new();
        let mut waypoints = Vec::new();
        for p in &proxies {
            let text = p.get(Port::Metrics, "/metrics").await?;
            if p.kind == "ztunnel" {
                ztunnels.push(prom::parse(&text));
                continue;
            }
            // The waypoint's own workload id, as the metrics name it.
            let id = nodes
                .iter()
                .find(|n| n.waypoint && p.name.starts_with(&format!("{}/", n.namespace)))
                .map_or_else(|| p.name.clone(), |n| n.id.clone());
            waypoints.push((id, prom::parse(&text)));
        }
        let now = Counters::read(&ztunnels, &waypoints);
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        while history.len() > 1 && history.front().is_some_and(|(at, _)| at.elapsed() > WINDOW) {
            history.pop_front();
        }
        // Against the oldest scrape of the window (at least a second old).
        let previous = history
            .front()
            .map(|(at, c)| (c, at.elapsed().as_secs_f64()))
            .filter(|(_, secs)| *secs >= 1.0);
        let edges = now.edges(previous);
        let window_seconds = previous.map(|(_, s)| s);
        history.push_back((Instant::now(), now));
        Ok(Graph {
            nodes,
            edges,
            window_seconds,
        })
    }
}

/// `%2F` and friends in a query value (`+` is a space); a `%` not
/// followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One workload: where it runs, its identity, the L4 policies ztunnel
/// applies to it and, for Services behind a waypoint, the L7 ones.
pub async fn workload_detail(cluster: &Cluster, id: &str) -> anyhow::Result<Value> {
    let (ns, name) = id
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("id {id:?}: write namespace/workload"))?;
    let proxies = crate::proxies::list(cluster).await?;
    let dump = crate::inspect::ztunnel_dump_in(&proxies, None).await?;
    let workload = dump["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["namespace"] == ns && (w["workloadName"] == name || w["name"] == name))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no workload {id}"))?;
    let listed: Vec<&str> = workload["authorizationPolicies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let l4: Vec<Value> = dump["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let key = format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or_default(),
                p["name"].as_str().unwrap_or_default()
            );
            let applies = match p["scope"].as_str() {
                Some("Global") => true,
                Some("Namespace") => p["namespace"] == ns,
                _ => listed.contains(&key.as_str()),
            };
            applies.then(|| json!({"name": key, "action": p["action"], "scope": p["scope"]}))
        })
        .collect();
    let services: Vec<String> = workload["services"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    // L7 policies from the waypoints serving this workload's Services.
    let mut l7 = Vec::new();
    for p in proxies.iter().filter(|p| p.kind == "waypoint") {
        let Ok(d) = p.config_dump().await else {
            continue;
        };
        for s in d["services"].as_array().into_iter().flatten() {
            let host = s["hostname"].as_str().unwrap_or_default();
            if services.iter().any(|k| k.ends_with(&format!("/{host}"))) {
                for policy in s["authorization"].as_array().into_iter().flatten() {
                    l7.push(json!({"service": host, "waypoint": d["waypoint"], "name": policy["name"], "action": policy["action"]}));
                }
            }
        }
    }
    Ok(json!({
        "id": id,
        "workload": workload,
        "services": services,
        "l4Policies": l4,
        "l7Policies": l7,
    }))
}

/// `ambit x authz check NS/POD`: the policies that apply to the pod, each
/// with the proxy that enforces it.
pub async fn authz_check(cluster: &Cluster, pod: &str) -> anyhow::Result<Value> {
    let d = workload_detail(cluster, pod).await?;
    let node = d["workload"]["node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut rows: Vec<Value> = d["l4Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            json!({
                "policy": p["name"],
                "action": p["action"].as_str().unwrap_or_default().to_uppercase(),
                "enforcedBy": format!("ztunnel {node} (L4, every connection to the pod)"),
                "scope": p["scope"],
            })
        })
        .collect();
    rows.extend(d["l7Policies"].as_array().into_iter().flatten().map(|p| {
        json!({
            "policy": p["name"],
            "action": p["action"],
            "enforcedBy": format!("waypoint {} (L7, requests to {})", p["waypoint"].as_str().unwrap_or_default(), p["service"].as_str().unwrap_or_default()),
            "scope": "targetRefs",
        })
    }));
    Ok(json!({"pod": pod, "node": node, "policies": rows}))
}

/// [`authz_check`] as a table.
pub fn authz_table(report: &Value) -> String {
    let rows: Vec<Vec<String>> = report["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let t = |k: &str| {
                p[k].as_str()
                    .map_or_else(|| p[k].to_string(), str::to_string)
            };
            vec![t("policy"), t("action"), t("scope"), t("enforcedBy")]
        })
        .collect();
    if rows.is_empty() {
        return format!(
            "no AuthorizationPolicy applies to {}: every connection and request is allowed\n",
            report["pod"].as_str().unwrap_or_default()
        );
    }
    crate::inspect::table(&["POLICY", "ACTION", "SCOPE", "ENFORCED BY"], &rows)
}

/// The config findings, as `ambit analyze` reports them: of the local
/// cluster's directory (placed as the cluster placed it), or of the
/// Kubernetes cluster's objects.
async fn findings(cluster: &Cluster) -> Value {
    let (res, load_errors) = match cluster {
        Cluster::Local(info) => {
            let Some(dir) = &info.config_dir else {
                return json!([]);
            };
            match crate::explain::placed(dir, Some(info)) {
                Ok((r, _)) => (r, vec![]),
                Err(e) => return json!([{"severity": "Error", "message": format!("{e:#}")}]),
            }
        }
        Cluster::Kube(client) => match crate::live::snapshot(client.clone()).await {
            Ok(r) => r,
            Err(e) => return json!([{"severity": "Error", "message": format!("{e:#}")}]),
        },
    };
    let errors = load_errors.iter().map(|e| {
        json!({"severity": "Error", "object": e.object, "field": "", "file": e.source_ref.to_string(), "message": e.message})
    });
    let t = ambit_api::translate::translate(&res);
    Value::Array(
        errors
            .chain(t.findings.iter().map(|f| {
                json!({
                    "severity": format!("{:?}", f.severity),
                    "object": f.object,
                    "field": f.field,
                    "file": f.source.to_string(),
                    "message": f.message,
                })
            }))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_decoded() {
        assert_eq!(super::percent_decode("shop%2Fweb-0"), "shop/web-0");
        assert_eq!(super::percent_decode("a+b%zz"), "a b%zz");
        assert_eq!(super::percent_decode("%2"), "%2");
    }
}
