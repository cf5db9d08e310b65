//! The service graph Kiali would draw, from what the proxies export: nodes
//! are the workloads ztunnel knows; edges are traffic between them, from
//! the destination ztunnels' `istio_tcp_*` (connections, mTLS or not,
//! refusals) and the waypoints' `istio_requests_total` and duration
//! histograms (requests, 5xx share, p99). Traffic through a waypoint is
//! drawn client → workload, labelled with the Service and the waypoint, as
//! Kiali hides waypoints by default.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::prom::Sample;

/// One workload.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `namespace/workload`.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Workload name (Deployment, or the pod).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// SPIFFE identity.
    pub identity: String,
    /// `HBONE` (in the mesh) or `TCP`.
    pub protocol: String,
    /// It is a waypoint.
    pub waypoint: bool,
}

/// Traffic from one workload to another.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// Source node id (`unknown` when the caller had no identity).
    pub source: String,
    /// Destination node id.
    pub destination: String,
    /// `http` (seen by a waypoint) or `tcp`.
    pub protocol: &'static str,
    /// The Service it was addressed to, when known.
    pub service: String,
    /// The waypoint that carried it (`http` edges).
    pub waypoint: String,
    /// Every connection or request carried mutual TLS.
    pub mtls: bool,
    /// Requests (http) or connections (tcp) since the proxies started.
    pub total: f64,
    /// Per second over the last window (`None` until two scrapes).
    pub rate: Option<f64>,
    /// Share of 5xx (http) or refused connections (tcp), in percent.
    pub error_percent: f64,
    /// Refused by policy (tcp: connections the destination denied; http: 403s).
    pub denied: f64,
    /// 99th percentile of request duration in ms (http).
    pub p99_ms: Option<f64>,
}

/// The whole graph.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// Workloads.
    pub nodes: Vec<Node>,
    /// Traffic.
    pub edges: Vec<Edge>,
    /// Seconds between the two scrapes rates are computed from.
    pub window_seconds: Option<f64>,
}

/// Nodes from a ztunnel `/config_dump`.
pub fn nodes(dump: &Value, waypoints: &[String]) -> Vec<Node> {
    let mut out: Vec<Node> = dump["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let s = |k: &str| w[k].as_str().unwrap_or_default().to_string();
            let namespace = s("namespace");
            let name = if s("workloadName").is_empty() {
                s("name")
            } else {
                s("workloadName")
            };
            let sa = if s("serviceAccount").is_empty() {
                "default".to_string()
            } else {
                s("serviceAccount")
            };
            // Istio's defaults, as `Workload::identity` applies them (read
            // field by field: a dump from another version still draws).
            let td = if s("trustDomain").is_empty() {
                ambit_identity::DEFAULT_TRUST_DOMAIN.to_string()
            } else {
                s("trustDomain")
            };
            Node {
                id: format!("{namespace}/{name}"),
                waypoint: waypoints.contains(&format!("{namespace}/{}", s("name"))),
                identity: format!("spiffe://{td}/ns/{namespace}/sa/{sa}"),
                node: s("node"),
                protocol: s("protocol"),
                namespace,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// Sums of the counters an edge is made of, keyed by edge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    by_edge: BTreeMap<(String, String, &'static str), EdgeCounts>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct EdgeCounts {
    total: f64,
    errors: f64,
    denied: f64,
    plaintext: f64,
    service: String,
    waypoint: String,
    /// Duration histogram: upper bound → cumulative count.
    buckets: BTreeMap<u64, f64>,
}

fn id(ns: &str, workload: &str) -> String {
    if workload.is_empty() || workload == "unknown" {
        "unknown".into()
    } else {
        format!("{ns}/{workload}")
    }
}

impl Counters {
    /// Reads the samples of every proxy. `waypoints` are node ids of
    /// waypoint workloads (their ztunnel legs are folded into http edges).
    pub fn read(ztunnels: &[Vec<Sample>], waypoints: &[(String, Vec<Sample>)]) -> Self {
        let mut c = Counters::default();
        let is_waypoint = |id: &str| waypoints.iter().any(|(w, _)| w == id);
        for s in ztunnels.iter().flatten() {
            if s.label("reporter") != "destination" {
                continue;
            }
            let src = id(
                s.label("source_workload_namespace"),
                s.label("source_workload"),
            );
            let dst = id(
                s.label("destination_workload_namespace"),
                s.label("destination_workload"),
            );
            if is_waypoint(&src) || is_waypoint(&dst) {
                continue;
            }
            let opened = s.name == "istio_tcp_connections_opened_total";
            let failed = s.name == "istio_tcp_connections_failed_total";
            if !opened && !failed {
                continue;
            }
            let e = c.by_edge.entry((src, dst, "tcp")).or_default();
            e.total += s.value;
            if failed {
                e.errors += s.value;
                if s.label("response_flags") == "DENY" {
                    e.denied += s.value;
                }
            }
            if s.label("connection_security_policy") != "mutual_tls" {
                e.plaintext += s.value;
            }
            e.service = s.label("destination_service").to_string();
        }
        for (waypoint, samples) in waypoints {
            for s in samples {
                let src = id(
                    s.label("source_workload_namespace"),
                    s.label("source_workload"),
                );
                let mut dst = id(
                    s.label("destination_workload_namespace"),
                    s.label("destination_workload"),
                );
                // Refused or unrouted at the waypoint: no workload answered;
                // the edge goes to the Service (Kiali's service node).
                if dst == "unknown" && !s.label("destination_service").is_empty() {
                    dst = s.label("destination_service").to_string();
                }
                let key = (src, dst, "http");
                match s.name.as_str() {
                    "istio_requests_total" => {
                        let e = c.by_edge.entry(key).or_default();
                        e.total += s.value;
                        let code = s.label("response_code");
                        if code.starts_with('5') {
                            e.errors += s.value;
                        }
                        if code == "403" {
                            e.denied += s.value;
                        }
                        e.service = s.label("destination_service").to_string();
                        e.waypoint = waypoint.clone();
                    }
                    "istio_request_duration_milliseconds_bucket" => {
                        let le = s.label("le");
                        let bound = if le == "+Inf" {
                            u64::MAX
                        } else {
                            le.parse::<f64>().map_or(u64::MAX, |v| v as u64)
                        };
                        *c.by_edge
                            .entry(key)
                            .or_default()
                            .buckets
                            .entry(bound)
                            .or_default() += s.value;
                    }
                    _ => {}
                }
            }
        }
        c
    }

    /// The edges, with rates and windowed p99 against `previous` taken
    /// `seconds` earlier.
    pub fn edges(&self, previous: Option<(&Counters, f64)>) -> Vec<Edge> {
        self.by_edge
            .iter()
            .filter(|(_, e)| e.total > 0.0)
            .map(|((src, dst, protocol), e)| {
                let before = previous.and_then(|(p, secs)| {
                    p.by_edge
                        .get(&(src.clone(), dst.clone(), *protocol))
                        .map(|b| (b, secs))
                });
                let rate = previous.map(|(_, secs)| {
                    let was = before.map_or(0.0, |(b, _)| b.total);
                    ((e.total - was).max(0.0)) / secs.max(0.001)
                });
                // The window's histogram when it has requests, else all time.
                let window: BTreeMap<u64, f64> = match before {
                    Some((b, _)) => e
                        .buckets
                        .iter()
                        .map(|(k, v)| (*k, v - b.buckets.get(k).copied().unwrap_or(0.0)))
                        .collect(),
                    None => e.buckets.clone(),
                };
                let p99 = quantile(&window, 0.99).or_else(|| quantile(&e.buckets, 0.99));
                Edge {
                    source: src.clone(),
                    destination: dst.clone(),
                    protocol,
                    service: e.service.clone(),
                    waypoint: e.waypoint.clone(),
                    mtls: e.plaintext == 0.0,
                    total: e.total,
                    rate,
                    error_percent: 100.0 * e.errors / e.total,
                    denied: e.denied,
                    p99_ms: p99,
                }
            })
            .collect()
    }
}

/// The `q` quantile of a cumulative histogram (upper bound of the bucket
/// it falls in, as a dashboard reads Prometheus buckets).
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = buckets
        .get(&u64::MAX)
        .copied()
        .or_else(|| buckets.values().copied().reduce(f64::max))?;
    if total <= 0.0 {
        return None;
    }
    let want = total * q;
    buckets
        .iter()
        .find(|(_, count)| **count >= want)
        .map(|(bound, _)| {
            if *bound == u64::MAX {
                f64::INFINITY
            } else {
                *bound as f64
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::prom::parse;

    const ZTUNNEL: &str = r#"
istio_tcp_connections_opened_total{reporter="destination",source_workload="client",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="shop",destination_service="db.shop.svc.cluster.local",connection_security_policy="mutual_tls"} 4
istio_tcp_connections_failed_total{reporter="destination",source_workload="client",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="shop",connection_security_policy="mutual_tls",response_flags="DENY"} 1
istio_tcp_connections_opened_total{reporter="source",source_workload="client",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 4
istio_tcp_connections_opened_total{reporter="destination",source_workload="client",source_workload_namespace="shop",destination_workload="waypoint",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 9
"#;
    const WAYPOINT: &str = r#"
istio_requests_total{reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="web",destination_workload_namespace="shop",destination_service="web.shop.svc.cluster.local",response_code="200"} 8
istio_requests_total{reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="web",destination_workload_namespace="shop",destination_service="web.shop.svc.cluster.local",response_code="503"} 2
istio_request_duration_milliseconds_bucket{le="5",reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="web",destination_workload_namespace="shop"} 8
istio_request_duration_milliseconds_bucket{le="10",reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="web",destination_workload_namespace="shop"} 9
istio_request_duration_milliseconds_bucket{le="25",reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="web",destination_workload_namespace="shop"} 10
istio_request_duration_milliseconds_bucket{le="+Inf",reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="web",destination_workload_namespace="shop"} 10
"#;

    #[test]
    fn edges_from_ztunnel_and_waypoint_metrics() {
        let c = Counters::read(
            &[parse(ZTUNNEL)],
            &[("shop/waypoint".into(), parse(WAYPOINT))],
        );
        let edges = c.edges(None);
        assert_eq!(edges.len(), 2, "{edges:#?}");
        let tcp = edges.iter().find(|e| e.protocol == "tcp").unwrap();
        assert_eq!(
            (tcp.source.as_str(), tcp.destination.as_str()),
            ("shop/client", "shop/db")
        );
        // Destination-reported only: 4 opened + 1 refused.
        assert_eq!((tcp.total, tcp.denied), (5.0, 1.0));
        assert!(tcp.mtls);
        assert_eq!(tcp.error_percent, 20.0);
        let http = edges.iter().find(|e| e.protocol == "http").unwrap();
        assert_eq!(http.destination, "shop/web");
        assert_eq!(http.waypoint, "shop/waypoint");
        assert_eq!((http.total, http.error_percent), (10.0, 20.0));
        assert_eq!(http.p99_ms, Some(25.0));
        assert_eq!(http.rate, None);
        // A second scrape 2 s later with 4 more requests: 2/s.
        let later = WAYPOINT.replace("} 8\n", "} 12\n");
        let c2 = Counters::read(
            &[parse(ZTUNNEL)],
            &[("shop/waypoint".into(), parse(&later))],
        );
        let http2 = c2
            .edges(Some((&c, 2.0)))
            .into_iter()
            .find(|e| e.protocol == "http")
            .unwrap();
        assert_eq!(http2.rate, Some(2.0));
    }
}
