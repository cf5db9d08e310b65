//! Tracing through a waypoint on the local cluster, with a real OTLP
//! collector (`ambit x trace-sink`, a pod outside the mesh): the waypoint
//! continues the caller's W3C trace, hands its own span to the app as
//! parent (W3C and B3), adds an `x-request-id`, honours the caller's
//! sampling decision, starts a trace when there is none (Telemetry samples
//! 100%), and exports each sampled request's span over OTLP/gRPC.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use common::{exchange, require_root, set_ambit_bin, status_of};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn cluster_yaml(sink_out: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {{service: collector.observability.svc.cluster.local, port: 4317}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{providers: [{{name: otel}}], randomSamplingPercentage: 100}}]
---
apiVersion: v1
kind: Namespace
metadata: {{name: observability}}
---
apiVersion: v1
kind: Pod
metadata: {{name: collector-0, namespace: observability, labels: {{app: collector}}}}
spec:
  nodeName: node2
  containers: [{{name: c, image: ambit, command: [ambit, x, trace-sink, --port, "4317", --out, "{sink_out}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: collector, namespace: observability}}
spec: {{clusterIP: 10.96.0.90, selector: {{app: collector}}, ports: [{{name: grpc, port: 4317}}]}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop}}
spec: {{nodeName: node1, serviceAccountName: client, containers: [{{name: c, image: ambit}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: shop, labels: {{app: web}}}}
spec:
  nodeName: node2
  serviceAccountName: web
  containers: [{{name: w, image: ambit, command: [ambit, echo, --port, "8080"]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  clusterIP: 10.96.0.70
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
"#
    )
}

/// The value of header `name` the echo app reports it received.
fn seen(reply: &str, name: &str) -> Option<String> {
    let prefix = format!("h:{name}=");
    reply
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
}

/// Spans the sink wrote so far.
fn spans(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waypoint_spans_reach_the_collector() {
    require_root();
    set_ambit_bin();
    let sink = std::env::temp_dir().join(format!("ambit-trace-sink-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&sink);
    let mut res = Resources::default();
    res.add_yaml(&cluster_yaml(&sink.display().to_string()), "tracing.yaml")
        .expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    assert!(
        cluster
            .findings
            .iter()
            .all(|f| !f.object.contains("Telemetry")),
        "{:#?}",
        cluster.findings
    );
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let vip: SocketAddr = "10.96.0.70:8080".parse().expect("vip");
    let get = |extra: &str| {
        format!("GET /hello HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n")
    };

    // 1. The caller's sampled trace is continued.
    let with_parent = get(&format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-01\r\n"));
    let mut reply = String::new();
    for _ in 0..50 {
        reply = exchange(&client, vip, with_parent.as_bytes()).await;
        if reply.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&reply), 200, "{reply}");
    let tp = seen(&reply, "traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{tp}");
    let waypoint_span = parts[2].to_string();
    assert_ne!(
        waypoint_span, CALLER_SPAN,
        "the app's parent is the waypoint's span"
    );
    assert_eq!(seen(&reply, "x-b3-traceid").as_deref(), Some(TRACE));
    assert_eq!(
        seen(&reply, "x-b3-spanid").as_deref(),
        Some(waypoint_span.as_str())
    );
    assert_eq!(
        seen(&reply, "x-b3-parentspanid").as_deref(),
        Some(CALLER_SPAN)
    );
    let request_id = seen(&reply, "x-request-id").expect("x-request-id added");
    assert_eq!(request_id.len(), 36, "{request_id}");

    // 2. No trace context: the waypoint starts one (100% sampling).
    let fresh = exchange(&client, vip, get("").as_bytes()).await;
    let fresh_tp = seen(&fresh, "traceparent").expect("traceparent");
    assert!(
        fresh_tp.ends_with("-01") && !fresh_tp.contains(TRACE),
        "{fresh_tp}"
    );
    let fresh_trace = fresh_tp.split('-').nth(1).unwrap_or_default().to_string();

    // 3. The caller decided not to sample: propagated, not exported.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let off = exchange(
        &client,
        vip,
        get(&format!(
            "traceparent: 00-{unsampled_trace}-b7ad6b7169203331-00\r\n"
        ))
        .as_bytes(),
    )
    .await;
    assert!(
        seen(&off, "traceparent").is_some_and(|t| t.starts_with(&format!("00-{unsampled_trace}-")) && t.ends_with("-00")),
        "{off}"
    );

    // The collector got both sampled spans (batches leave within a second).
    let mut got = Vec::new();
    for _ in 0..100 {
        got = spans(&sink);
        if got.iter().any(|s| s["spanId"] == waypoint_span.as_str())
            && got.iter().any(|s| s["traceId"] == fresh_trace.as_str())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let find = |trace: &str| {
        got.iter()
            .find(|s| s["traceId"] == trace)
            .cloned()
            .unwrap_or_else(|| panic!("no span of trace {trace} in {got:#?}"))
    };
    // (Retries while the app started are spans of the same trace too.)
    let span = got
        .iter()
        .find(|s| s["traceId"] == TRACE && s["spanId"] == waypoint_span.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no span {waypoint_span} in {got:#?}"));
    assert_eq!(span["parentSpanId"], CALLER_SPAN);
    assert_eq!(span["name"], "web.shop.svc.cluster.local:8080/*");
    assert_eq!(span["service"], "waypoint.shop");
    assert_eq!(span["attributes"]["http.status_code"], 200);
    assert_eq!(span["attributes"]["http.method"], "GET");
    assert_eq!(span["attributes"]["guid:x-request-id"], request_id.as_str());
    assert_eq!(span["attributes"]["response_flags"], "-");
    let root = find(&fresh_trace);
    assert!(
        root["parentSpanId"] == "" || root["parentSpanId"] == "0000000000000000",
        "a new trace's span has no parent: {root}"
    );
    // Give a stray unsampled span time to show up; there must be none.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        spans(&sink).iter().all(|s| s["traceId"] != unsampled_trace),
        "an unsampled trace was exported"
    );
    drop(cluster);
    let _ = std::fs::remove_file(&sink);
}
