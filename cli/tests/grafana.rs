//! The Grafana dashboards in `deploy/grafana/` ask only for what Ambit
//! exports. A local cluster with a waypoint carries HTTP (allowed and
//! denied) and TCP traffic; then ztunnel's `/metrics` on both nodes, the
//! waypoint's and the controller's are read, and every metric a dashboard
//! query or variable names must be among them, with every label it
//! matches on or groups by (`job` and `instance` come from the scrape).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use common::{exchange, require_root, set_ambit_bin, status_of};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  nodeName: node2
  serviceAccountName: web
  containers: [{name: w, image: ambit, command: [ambit, echo, --port, "8080", --port, "9000"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports: [{name: http, port: 8080}, {name: tcp, port: 9000, appProtocol: tcp}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {ports: ["8080"], paths: ["/admin*"]}}]}]
"#;

/// Labels Prometheus adds when it scrapes, not exported by Ambit.
const SCRAPE_LABELS: &[&str] = &["job", "instance"];

/// PromQL words that are not metric names.
const PROMQL: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "label_values",
    "abs",
    "clamp_min",
    "vector",
];

/// Metric sample names → the label names seen on them, from exposition
/// text; families announced by `# TYPE` without samples yet count too
/// (with no labels known).
fn exported(texts: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for text in texts {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split_whitespace();
                let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                    continue;
                };
                let names: Vec<String> = match kind {
                    "counter" => vec![format!("{name}_total")],
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{name}{s}"))
                        .collect(),
                    _ => vec![name.to_string()],
                };
                for n in names {
                    out.entry(n).or_default();
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = out.entry(line[..name_end].to_string()).or_default();
            if line[name_end..].starts_with('{') {
                labels.extend(label_names(&line[name_end + 1..]));
            }
        }
    }
    out
}

/// The label names of `k="v",k2=~"v2"}...` (exposition labels or PromQL
/// matchers: `=`, `!=`, `=~`, `!~`), honouring escapes in values.
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(c) = chars.peek() {
            if *c == '=' || *c == '!' {
                break;
            }
            name.push(*c);
            chars.next();
        }
        let name = name.trim_start_matches(',').trim().to_string();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name);
        while chars.peek().is_some_and(|c| matches!(c, '=' | '!' | '~')) {
            chars.next();
        }
        if chars.next() != Some('"') {
            break;
        }
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    names
}

/// What one query asks for: (metric, labels it matches on) and the labels
/// it groups by.
#[derive(Debug, Default)]
struct Query {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

fn parse_query(expr: &str) -> Query {
    let mut q = Query::default();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len()
            && (bytes[*i].is_ascii_alphanumeric() || bytes[*i] == '_' || bytes[*i] == ':')
        {
            *i += 1;
        }
        bytes[start..*i].iter().collect::<String>()
    };
    let mut expect_grouping = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                i += if bytes[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < bytes.len() && bytes[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '(' && expect_grouping {
            i += 1;
            let end = bytes[i..]
                .iter()
                .position(|c| *c == ')')
                .map_or(bytes.len(), |p| i + p);
            let inner: String = bytes[i..end].iter().collect();
            q.grouping.extend(
                inner
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
            i = end + 1;
            expect_grouping = false;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let word = ident(&mut i);
            if word == "by" || word == "without" {
                expect_grouping = true;
                continue;
            }
            if PROMQL.contains(&word.as_str()) {
                continue;
            }
            let mut labels = Vec::new();
            if i < bytes.len() && bytes[i] == '{' {
                i += 1;
                let end = bytes[i..]
                    .iter()
                    .position(|c| *c == '}')
                    .map_or(bytes.len(), |p| i + p);
                let inner: String = bytes[i..end].iter().collect();
                labels = label_names(&format!("{inner}}}"));
                i = end + 1;
            }
            q.selectors.push((word, labels));
        } else {
            i += 1;
        }
    }
    q
}

/// Every (where, expression) in a dashboard: panel targets and variables.
fn queries(dashboard: &serde_json::Value, file: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((format!("{file}: panel {:?}", p["title"]), e.to_string()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(e) = v["query"]["query"].as_str() {
            // label_values(metric{...}, label): the label must be exported too.
            let inner = e.trim_start_matches("label_values(").trim_end_matches(')');
            let (selector, label) = inner.rsplit_once(',').unwrap_or((inner, ""));
            out.push((
                format!("{file}: variable {:?}", v["name"]),
                format!("sum by ({}) ({})", label.trim(), selector.trim()),
            ));
        }
    }
    out
}

/// Mistakes in `dashboards` given what is `exported`.
fn check(
    exported: &BTreeMap<String, BTreeSet<String>>,
    dashboards: &[(String, serde_json::Value)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (file, d) in dashboards {
        for (at, expr) in queries(d, file) {
            let q = parse_query(&expr);
            if q.selectors.is_empty() {
                problems.push(format!("{at}: `{expr}` names no metric"));
            }
            let mut labels_here = BTreeSet::new();
            for (metric, matched) in &q.selectors {
                let Some(known) = exported.get(metric) else {
                    problems.push(format!("{at}: `{metric}` is not exported"));
                    continue;
                };
                labels_here.extend(known.iter().cloned());
                for l in matched {
                    if !known.contains(l) && !SCRAPE_LABELS.contains(&l.as_str()) {
                        problems.push(format!("{at}: `{metric}` has no label `{l}`"));
                    }
                }
            }
            for l in &q.grouping {
                if !labels_here.contains(l) && !SCRAPE_LABELS.contains(&l.as_str()) {
                    problems.push(format!(
                        "{at}: groups by `{l}`, which none of its metrics has"
                    ));
                }
            }
        }
    }
    problems
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("deploy/grafana") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).expect("read");
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            out.push((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                v,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_checker_catches_mistakes() {
    let exported = exported(&[
        "# TYPE istio_requests counter\nistio_requests_total{reporter=\"waypoint\",response_code=\"200\"} 1\n".to_string(),
    ]);
    let bad = |expr: &str| {
        let d = serde_json::json!({"panels": [{"title": "t", "targets": [{"expr": expr}]}]});
        check(&exported, &[("d.json".into(), d)])
    };
    assert!(
        bad(r#"sum by (response_code) (rate(istio_requests_total{reporter="waypoint"}[1m]))"#)
            .is_empty()
    );
    assert_eq!(
        bad("rate(istio_request_total[1m])").len(),
        1,
        "misspelt metric"
    );
    assert_eq!(
        bad(r#"istio_requests_total{destination_service="x"}"#).len(),
        1,
        "unknown matcher label"
    );
    assert_eq!(
        bad("sum by (type) (istio_requests_total)").len(),
        1,
        "unknown grouping label"
    );
    assert!(
        bad(r#"sum by (instance) (istio_requests_total{job="x"})"#).is_empty(),
        "scrape labels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_query_only_what_ambit_exports() {
    require_root();
    set_ambit_bin();
    let mut res = Resources::default();
    res.add_yaml(CLUSTER, "grafana.yaml").expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    let web = cluster.pod("shop/web-0").expect("web");
    assert!(
        ambit_cluster::client::wait_listening(&web.netns, 8080, Duration::from_secs(10)).await,
        "web listening"
    );
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let vip: SocketAddr = "10.96.0.50:8080".parse().expect("vip");
    for path in ["/", "/ok", "/admin/x"] {
        let reply = exchange(
            &client,
            vip,
            format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let want = if path.starts_with("/admin") { 403 } else { 200 };
        assert_eq!(status_of(&reply), want, "{path}: {reply}");
    }
    let tcp = exchange(&client, "10.96.0.50:9000".parse().expect("vip"), b"hello\n").await;
    assert!(tcp.contains("saw"), "{tcp}");

    let mut texts = Vec::new();
    for n in 1..=2u8 {
        let node = cluster
            .topology
            .node(n)
            .expect("node")
            .ns
            .name()
            .to_string();
        let addr: SocketAddr = format!("172.30.0.{n}:15020").parse().expect("addr");
        let text = ambit_cluster::client::http_get(&node, addr, "/metrics")
            .await
            .expect("scrape ztunnel")
            .expect("metrics");
        texts.push(text);
    }
    let w = cluster.waypoints.values().next().expect("waypoint");
    texts.push(w.waypoint.metrics().render());
    let c = cluster.control.controller().expect("controller");
    let registry = controller::metrics::registry(c.stats().clone(), c.subscribe());
    texts.push(ambit_telemetry::render(&registry));
    let exported = exported(&texts);
    assert!(
        exported.contains_key("istio_requests_total"),
        "{exported:?}"
    );
    assert!(
        exported.contains_key("istio_tcp_sent_bytes_total"),
        "{exported:?}"
    );

    let boards = dashboards();
    assert!(boards.len() >= 3, "{boards:?}");
    let problems = check(&exported, &boards);
    assert!(
        problems.is_empty(),
        "dashboards ask for what Ambit does not export:\n{}",
        problems.join("\n")
    );
}
