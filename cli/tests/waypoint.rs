//! The waypoint in the local cluster (issue: waypoint): a Gateway
//! `istio-waypoint`, a namespace opted in with `istio.io/use-waypoint`, and
//! Istio's VirtualService, DestinationRule, AuthorizationPolicy,
//! RequestAuthentication plus Ambit's RateLimitPolicy applied to real
//! requests from a pod through ztunnel → waypoint → ztunnel → pod, all over
//! HBONE with real certificates. Needs root.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use ambit_cluster::client::{connect_from, wait_listening};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{require_root, set_ambit_bin};

/// One local cluster per process at a time (namespace names carry the pid).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &[u8] = b"a test secret that is long enough";
const VIP: &str = "10.96.0.20:9080";

fn jwks() -> String {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}"#)
}

fn token(secret: &[u8]) -> String {
    token_for(secret, "reviews")
}

fn token_for(secret: &[u8], aud: &str) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let claims = serde_json::json!({
        "iss": "https://issuer.test", "sub": "alice", "aud": aud,
        "exp": 4_000_000_000u64, "group": "admins"
    });
    jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
        .unwrap_or_default()
}

fn bookinfo() -> String {
    let mut y = String::from(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bookinfo, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bookinfo, labels: {app: client}}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"#,
    );
    for (v, node) in [("v1", 1), ("v2", 2), ("v3", 2)] {
        y.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-{v}, namespace: bookinfo, labels: {{app: reviews, version: {v}}}}}
spec:
  nodeName: node{node}
  serviceAccountName: reviews
  containers: [{{name: r, image: ambit, command: [ambit, echo, --port, "9080"]}}]
"#
        ));
    }
    y.push_str(&format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      connectionPool:
        tcp: {{maxConnections: 1}}
        http: {{http1MaxPendingRequests: 1}}
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: abort
    match: [{{uri: {{prefix: /fault}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: abort-without-percentage
    match: [{{uri: {{prefix: /no-percentage}}}}]
    fault: {{abort: {{httpStatus: 418}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: delayed
    match: [{{uri: {{prefix: /delayed}}}}]
    fault: {{delay: {{fixedDelay: 300ms, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: slow
    match: [{{uri: {{prefix: /delay/}}}}]
    timeout: 100ms
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: moved
    match: [{{uri: {{exact: /old}}}}]
    redirect: {{uri: /new}}
  - name: api
    match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /v2/}}
    headers:
      request: {{set: {{x-added: "yes"}}, remove: [x-drop]}}
      response: {{set: {{x-resp: hello}}}}
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - name: cors
    match: [{{uri: {{prefix: /cors}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "https://shop.test"}}]
      allowMethods: [GET, POST]
      maxAge: 60s
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: limited
    match: [{{uri: {{prefix: /limited}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: query
    match: [{{queryParams: {{canary: {{exact: "1"}}}}, method: {{exact: GET}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - name: teapot
    match: [{{uri: {{prefix: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: "short and stout"}}}}
  - name: caseless
    match: [{{uri: {{prefix: /CaseLess}}, ignoreUriCase: true}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - name: missing-subset
    match: [{{uri: {{prefix: /missing}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - name: relative
    match: [{{uri: {{prefix: /relative}}}}]
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 2}}
    - {{destination: {{host: reviews, subset: v3}}, weight: 0}}
  - name: regex-rewrite
    match: [{{uri: {{prefix: /rx/}}}}]
    rewrite: {{uriRegexRewrite: {{match: "^/rx/([a-z]+)/(.*)$", rewrite: '/\2/\1'}}}}
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - name: gateway-only
    match: [{{uri: {{prefix: /gw-only}}, gateways: [ingress]}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: unflagged
    match: [{{uri: {{prefix: /flag}}, withoutHeaders: {{x-flag: {{exact: "on"}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: same-namespace
    match: [{{uri: {{prefix: /srcns}}, sourceNamespace: bookinfo}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: other-namespace
    match: [{{uri: {{prefix: /othns}}, sourceNamespace: shop}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: split
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}
    - {{destination: {{host: reviews, subset: v3}}, weight: 10}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-edges, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules:
  - from: [{{source: {{namespaces: [bookinfo]}}}}]
    to: [{{operation: {{paths: [/ns-deny]}}}}]
  - from: [{{source: {{notNamespaces: [bookinfo]}}}}]
  - from: [{{source: {{ipBlocks: [10.244.0.0/16]}}}}]
    to: [{{operation: {{paths: [/ip-deny]}}}}]
  - to: [{{operation: {{hosts: [REVIEWS], paths: [/host-deny]}}}}]
  - to: [{{operation: {{ports: ["9080"], paths: [/port-deny]}}}}]
  - to: [{{operation: {{ports: ["1234"], paths: [/port-ok]}}}}]
  - to: [{{operation: {{paths: ["*.php"]}}}}]
  - to: [{{operation: {{paths: [/hdr]}}}}]
    when: [{{key: "request.headers[x-block]", values: ["yes"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-all, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: AUDIT
  rules: [{{to: [{{operation: {{paths: [/audited]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-reads, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/bookinfo/sa/client"]}}}}]
    to: [{{operation: {{methods: [GET, POST, OPTIONS]}}}}]
  - to: [{{operation: {{methods: [DELETE], paths: ["/secure/*"]}}}}]
    when: [{{key: "request.auth.claims[group]", values: [admins]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules:
  - issuer: https://issuer.test
    audiences: [reviews]
    jwks: '{jwks}'
---
apiVersion: ambit.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limited, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Service, name: reviews}}]
  route: limited
  maxTokens: 3
  fillInterval: 1h
"#,
        jwks = jwks()
    ));
    y
}

/// (what, method, path, headers, expected status, serving pods `a|b` or `-`).
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    u16,
    &'a str,
);

/// A parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn pod(&self) -> &str {
        self.headers.get("x-served-by").map_or("-", String::as_str)
    }
}

/// One HTTP/1.1 request from the client pod to `to`.
async fn request(
    netns: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut s = connect_from(netns, to).await.expect("connect");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("content-length: 0\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn istio_l7_rules_apply_through_the_waypoint() {
    require_root();
    set_ambit_bin();
    let _serial = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut res = Resources::default();
    res.add_yaml(&bookinfo(), "bookinfo.yaml").expect("yaml");
    let mut cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    assert_eq!(cluster.waypoints.len(), 1, "one waypoint pod runs");
    for v in ["v1", "v2", "v3"] {
        let p = cluster.pod(&format!("bookinfo/reviews-{v}")).expect("pod");
        assert!(wait_listening(&p.netns, 9080, Duration::from_secs(10)).await);
    }
    let client = cluster
        .pod("bookinfo/client")
        .expect("client")
        .netns
        .clone();
    let vip: SocketAddr = VIP.parse().expect("vip");
    let good = token(SECRET);
    let forged = token(b"some other secret, also long enough");
    let bearer = format!("Bearer {good}");
    let forged_bearer = format!("Bearer {forged}");
    let other_audience = format!("Bearer {}", token_for(SECRET, "ratings"));

    // (what, method, path, headers) → (status, serving pod or "-" for a local answer)
    let cases: Vec<Case<'_>> = vec![
        (
            "header match wins over the split",
            "GET",
            "/reviews/1",
            vec![("end-user", "jason")],
            200,
            "reviews-v2",
        ),
        (
            "header match is exact",
            "GET",
            "/reviews/1?canary=1",
            vec![("end-user", "jasonx")],
            200,
            "reviews-v3",
        ),
        (
            "query param match",
            "GET",
            "/x?canary=1",
            vec![],
            200,
            "reviews-v3",
        ),
        (
            "method is part of the query match",
            "POST",
            "/x?canary=1",
            vec![],
            200,
            "reviews-v1|reviews-v3",
        ),
        ("fault abort", "GET", "/fault/1", vec![], 418, "-"),
        (
            "a fault without percentage aborts nothing (Istio)",
            "GET",
            "/no-percentage",
            vec![],
            200,
            "reviews-v1",
        ),
        (
            "redirect keeps the query",
            "GET",
            "/old?page=2",
            vec![],
            301,
            "-",
        ),
        (
            "route timeout shorter than the upstream",
            "GET",
            "/delay/400",
            vec![],
            504,
            "-",
        ),
        (
            "route timeout longer than the upstream",
            "GET",
            "/delay/10",
            vec![],
            200,
            "reviews-v1",
        ),
        ("redirect", "GET", "/old", vec![], 301, "-"),
        ("directResponse", "GET", "/teapot", vec![], 418, "-"),
        (
            "ignoreUriCase",
            "GET",
            "/caseLESS/1",
            vec![],
            200,
            "reviews-v3",
        ),
        (
            "a subset no DestinationRule defines is 503",
            "GET",
            "/missing",
            vec![],
            503,
            "-",
        ),
        (
            "weights are relative; 0 drops a destination",
            "GET",
            "/relative",
            vec![],
            200,
            "reviews-v1",
        ),
        (
            "a gateway-only match is not a mesh route",
            "GET",
            "/gw-only",
            vec![],
            200,
            "reviews-v1|reviews-v3",
        ),
        (
            "withoutHeaders: absent",
            "GET",
            "/flag",
            vec![],
            200,
            "reviews-v2",
        ),
        (
            "withoutHeaders: another value",
            "GET",
            "/flag",
            vec![("x-flag", "off")],
            200,
            "reviews-v2",
        ),
        (
            "withoutHeaders: the excluded value",
            "GET",
            "/flag",
            vec![("x-flag", "on")],
            200,
            "reviews-v1|reviews-v3",
        ),
        (
            "sourceNamespace of the caller",
            "GET",
            "/srcns",
            vec![],
            200,
            "reviews-v2",
        ),
        (
            "sourceNamespace of another namespace",
            "GET",
            "/othns",
            vec![],
            200,
            "reviews-v1|reviews-v3",
        ),
        ("DENY before ALLOW", "GET", "/admin/users", vec![], 403, "-"),
        (
            "no ALLOW rule matches DELETE",
            "DELETE",
            "/reviews/1",
            vec![],
            403,
            "-",
        ),
        (
            "valid JWT claim admits DELETE on /secure/*",
            "DELETE",
            "/secure/1",
            vec![("authorization", &bearer)],
            200,
            "reviews-v1|reviews-v3",
        ),
        (
            "claim rule needs the path too",
            "DELETE",
            "/other",
            vec![("authorization", &bearer)],
            403,
            "-",
        ),
        (
            "an authentic JWT for another audience is 403",
            "GET",
            "/reviews/1",
            vec![("authorization", &other_audience)],
            403,
            "-",
        ),
        (
            "invalid JWT is 401",
            "GET",
            "/reviews/1",
            vec![("authorization", &forged_bearer)],
            401,
            "-",
        ),
        (
            "missing JWT passes to authorization",
            "GET",
            "/reviews/1",
            vec![],
            200,
            "reviews-v1|reviews-v3",
        ),
    ];
    let mut failures = Vec::new();
    for (what, method, path, headers, status, pods) in &cases {
        let r = request(&client, vip, method, path, headers).await;
        let pod_ok = pods.split('|').any(|p| p == r.pod());
        if r.status != *status || !pod_ok {
            failures.push(format!(
                "{what}: {method} {path} → {} from {} (want {status} from {pods})",
                r.status,
                r.pod()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // An injected delay holds the request (before the route timeout starts, as Envoy).
    let t = std::time::Instant::now();
    let r = request(&client, vip, "GET", "/delayed", &[]).await;
    assert_eq!((r.status, r.pod()), (200, "reviews-v1"));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // Redirect target, rewrite and header operations.
    let r = request(&client, vip, "GET", "/old", &[]).await;
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://reviews/new")
    );
    let r = request(&client, vip, "GET", "/old?page=2", &[]).await;
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://reviews/new?page=2"),
        "the query survives the redirect (Envoy's path_redirect)"
    );
    let r = request(&client, vip, "GET", "/teapot", &[]).await;
    assert_eq!(r.body, "short and stout", "directResponse body");
    let r = request(&client, vip, "GET", "/rx/abc/def?q=1", &[]).await;
    assert!(
        r.body.contains("path=/def/abc?q=1"),
        "uriRegexRewrite: {}",
        r.body
    );
    let r = request(&client, vip, "GET", "/api/items?x=1", &[("x-drop", "1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.pod(), "reviews-v3");
    assert!(r.body.contains("path=/v2/items?x=1"), "{}", r.body);
    assert!(r.body.contains("h:x-added=yes"), "{}", r.body);
    assert!(!r.body.contains("h:x-drop"), "{}", r.body);
    assert_eq!(r.headers.get("x-resp").map(String::as_str), Some("hello"));
    // The token is not forwarded upstream (forwardOriginalToken: false).
    let r = request(
        &client,
        vip,
        "DELETE",
        "/secure/2",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(!r.body.contains("h:authorization"), "{}", r.body);

    // CORS: preflight answered by the waypoint for an allowed origin only;
    // actual responses carry the allow-origin header.
    let pre = [
        ("origin", "https://shop.test"),
        ("access-control-request-method", "GET"),
    ];
    // A preflight skips RequestAuthentication (Envoy's
    // bypass_cors_preflight, as Istio sets it): even a forged token.
    let forged_pre = [
        ("origin", "https://shop.test"),
        ("access-control-request-method", "GET"),
        ("authorization", forged_bearer.as_str()),
    ];
    let r = request(&client, vip, "OPTIONS", "/cors", &forged_pre).await;
    assert_eq!(r.status, 200, "preflight skips JWT checks: {r:?}");
    let r = request(&client, vip, "OPTIONS", "/cors", &pre).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://shop.test")
    );
    assert_eq!(
        r.headers.get("access-control-max-age").map(String::as_str),
        Some("60")
    );
    assert_eq!(r.pod(), "-", "a preflight never reaches the app");
    let other = [
        ("origin", "https://evil.test"),
        ("access-control-request-method", "GET"),
    ];
    let r = request(&client, vip, "OPTIONS", "/cors", &other).await;
    assert!(
        !r.headers.contains_key("access-control-allow-origin"),
        "{r:?}"
    );
    let r = request(
        &client,
        vip,
        "GET",
        "/cors",
        &[("origin", "https://shop.test")],
    )
    .await;
    assert_eq!((r.status, r.pod()), (200, "reviews-v1"));
    assert!(r.headers.contains_key("access-control-allow-origin"));

    // HTTP/2 (prior knowledge) through the waypoint: served over HTTP/2 upstream too.
    {
        let s = connect_from(&client, vip).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::get("http://reviews:9080/reviews/h2?canary=1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok()),
            Some("reviews-v3")
        );
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("version=HTTP/2.0"), "{body}");
    }

    // Connection pool on subset v2: one connection, one pending request;
    // six concurrent slow requests → the excess overflows as 503.
    let mut slow = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        slow.push(tokio::spawn(async move {
            request(&client, vip, "GET", "/delay/400", &[("end-user", "jason")])
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in slow {
        statuses.push(t.await.expect("task"));
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let overflow = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        ok >= 1 && overflow >= 1 && ok + overflow == 6,
        "{statuses:?}"
    );

    // Local rate limit: 3 tokens for the route, the 4th is 429 with the header.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = request(&client, vip, "GET", "/limited", &[]).await;
        codes.push((r.status, r.headers.get("x-ambit-ratelimited").cloned()));
    }
    assert_eq!(
        codes[..3].iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![200, 200, 200],
        "{codes:?}"
    );
    assert_eq!(codes[3], (429, Some("limited".to_string())), "{codes:?}");

    // 90/10 split over 1,000 requests on keep-alive connections: v3 share
    // within 5 standard deviations (σ ≈ 9.5 for n = 1000, p = 0.1).
    let mut v3 = 0;
    let mut total = 0;
    for _ in 0..20 {
        let mut s = connect_from(&client, vip).await.expect("connect");
        for _ in 0..50 {
            s.write_all(b"GET /split HTTP/1.1\r\nhost: reviews\r\n\r\n")
                .await
                .expect("write");
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            loop {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "connection closed mid-run");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        if head.contains("x-served-by: reviews-v3") {
                            v3 += 1;
                        }
                        break;
                    }
                }
            }
            total += 1;
        }
    }
    assert_eq!(total, 1000);
    assert!(
        (53..=147).contains(&v3),
        "v3 got {v3} of 1000 (want 100 ± 47)"
    );

    // Metrics with Istio's names, reported by the waypoint.
    let w = cluster.waypoints.values().next().expect("waypoint");
    let text = w.waypoint.metrics().render();
    assert!(
        text.contains("istio_requests_total{reporter=\"waypoint\",source_workload=\"client\""),
        "{text}"
    );
    assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/client\""));
    assert!(
        text.contains("destination_workload=\"reviews-v2\"")
            || text.contains("destination_app=\"reviews\"")
    );
    assert!(text.contains("response_code=\"429\"") && text.contains("response_flags=\"RL\""));
    assert!(text.contains("istio_request_duration_milliseconds_bucket"));
    assert!(
        text.contains("response_flags=\"UO\""),
        "overflow is counted"
    );
    eprintln!("v3 share: {v3}/1000");

    // A VirtualService edit reaches the waypoint over xDS within a second
    // and applies to the next request.
    let mut edited = Resources::default();
    edited
        .add_yaml(
            &bookinfo().replacen("subset: v2}}]", "subset: v3}}]", 1),
            "bookinfo.yaml",
        )
        .expect("yaml");
    let t = std::time::Instant::now();
    cluster.reload(edited).expect("reload");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "VirtualService edit took {took:?}"
    );
    let r = request(&client, vip, "GET", "/reviews/1", &[("end-user", "jason")]).await;
    assert_eq!(r.pod(), "reviews-v3");
    eprintln!("VirtualService edit applied in {took:?}");
}

/// A waypoint per service account (`ambit waypoint generate
/// --service-account ratings`): it takes traffic to the pods running as
/// `ratings` whether sent to the Service VIP or to a pod IP; a pod outside
/// the mesh cannot reach them around it. Also: outlier detection ejecting a
/// broken endpoint, an upgraded connection, a streamed 8 MiB body, gRPC
/// over HTTP/2 and raw TCP through the waypoint.
fn ratings(gateway: &str) -> String {
    let mut y = String::from(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy}
spec: {nodeName: node1, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop, labels: {istio.io/use-waypoint: ratings-waypoint}}
spec:
  clusterIP: 10.96.0.30
  selector: {app: ratings}
  ports: [{name: http, port: 9080}, {name: tcp, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-0, namespace: shop, labels: {app: ratings}}
spec:
  nodeName: node2
  serviceAccountName: ratings
  containers: [{name: r, image: ambit, command: [ambit, echo, --port, "9080", --port, "9000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-broken, namespace: shop, labels: {app: ratings}}
spec:
  nodeName: node1
  serviceAccountName: ratings
  containers: [{name: r, image: ambit, command: [ambit, echo, --port, "9080", --port, "9000", --status, "503"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-private, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ratings-waypoint}]
  action: DENY
  # The port keeps this DENY off the raw TCP port 9000: on TCP a DENY's
  # HTTP-only fields are dropped (Istio), so without it 9000 would be denied.
  rules: [{to: [{operation: {ports: ["9080"], paths: ["/private*"]}}]}]
---
"#,
    );
    y.push_str(gateway);
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_account_waypoint_cannot_be_skipped() {
    require_root();
    set_ambit_bin();
    let _serial = SERIAL.lock().await;
    let gateway = ambit::waypoint_cmd::generate(&ambit::waypoint_cmd::WaypointArgs {
        namespace: "shop".into(),
        name: None,
        traffic: None,
        enroll_namespace: false,
        service_account: Some("ratings".into()),
    });
    let mut res = Resources::default();
    res.add_yaml(&ratings(&gateway), "ratings.yaml")
        .expect("yaml");
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    assert_eq!(cluster.waypoints.len(), 1);
    // The controller's deployer made the waypoint's objects and set the
    // Gateway's status, as it does in a cluster.
    let status = cluster
        .deployer
        .statuses()
        .get(&controller::deployer::ObjectRef::gateway(
            "shop",
            "ratings-waypoint",
        ))
        .cloned()
        .expect("status written");
    let programmed = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
        .cloned()
        .expect("Programmed condition");
    assert_eq!(programmed["status"], "True", "{status}");
    assert_eq!(
        programmed["message"],
        "Resource programmed, assigned to service(s) ratings-waypoint.shop.svc.cluster.local:15008"
    );
    let deployment = cluster
        .resources
        .deployments
        .iter()
        .find(|(_, d)| d.metadata.name.as_deref() == Some("ratings-waypoint"));
    assert!(deployment.is_none(), "Deployments become placed pods");
    let sa = cluster
        .resources
        .service_accounts
        .iter()
        .find(|(_, a)| a.metadata.name.as_deref() == Some("ratings-waypoint"))
        .expect("waypoint service account");
    assert_eq!(
        sa.1.metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("Gateway")
    );
    for p in ["shop/ratings-0", "shop/ratings-broken"] {
        let p = cluster.pod(p).expect("pod");
        assert!(wait_listening(&p.netns, 9080, Duration::from_secs(10)).await);
    }
    let client = cluster.pod("shop/client").expect("client").netns.clone();
    let outsider = cluster
        .pod("legacy/outsider")
        .expect("outsider")
        .netns
        .clone();
    let vip: SocketAddr = "10.96.0.30:9080".parse().expect("vip");
    let pod_ip = SocketAddr::new(cluster.pod("shop/ratings-0").expect("pod").ip.into(), 9080);

    // Policy bound to the service-account waypoint applies to pod-IP and VIP traffic.
    let r = request(&client, pod_ip, "GET", "/private/x", &[]).await;
    assert_eq!(
        r.status, 403,
        "pod IP traffic goes through the waypoint: {r:?}"
    );
    let r = request(&client, pod_ip, "GET", "/public", &[]).await;
    assert_eq!(
        (r.status, r.pod()),
        (200, "ratings-0"),
        "pod IP goes to that pod"
    );
    let r = request(&client, vip, "GET", "/private/x", &[]).await;
    assert_eq!(r.status, 403, "VIP traffic too: {r:?}");
    // A pod outside the mesh cannot go around the waypoint.
    let around = ambit_cluster::client::http_get(&outsider, pod_ip, "/private/x").await;
    assert!(
        matches!(around, Ok(None) | Err(_)),
        "plaintext to a pod behind a waypoint is refused: {around:?}"
    );

    // Outlier detection: the broken endpoint is ejected after two 5xx.
    let mut last = Vec::new();
    for i in 0..20 {
        let r = request(&client, vip, "GET", "/ok", &[]).await;
        if i >= 10 {
            last.push((r.status, r.pod().to_string()));
        }
    }
    assert!(
        last.iter().all(|(s, p)| *s == 200 && p == "ratings-0"),
        "after ejection only the healthy endpoint serves: {last:?}"
    );

    // An upgraded connection is spliced through.
    {
        let mut s = connect_from(&client, vip).await.expect("connect");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nhost: ratings\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping through the waypoint")
            .await
            .expect("write");
        let mut got = vec![0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(&got, b"ping through the waypoint");
    }

    // A large body streams through (8 MiB each way) on HTTP/2, as gRPC.
    {
        let s = connect_from(&client, vip).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let body = bytes::Bytes::from(vec![b'x'; 8 << 20]);
        let req = http::Request::post("http://ratings:9080/pkg.Ratings/Get")
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(body))
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        let got = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert!(got.len() > 8 << 20, "echoed {} bytes", got.len());
    }

    // Raw TCP (not HTTP) on the Service's tcp port goes through the waypoint too.
    {
        let mut s = connect_from(&client, "10.96.0.30:9000".parse().expect("addr"))
            .await
            .expect("connect");
        s.write_all(b"hello tcp\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.contains("ratings-0 saw") || text.contains("ratings-broken saw"),
            "{text}"
        );
    }

    let text = cluster
        .waypoints
        .values()
        .next()
        .expect("waypoint")
        .waypoint
        .metrics()
        .render();
    assert!(text.contains("request_protocol=\"grpc\""), "{text}");
    assert!(text.contains("destination_service=\"ratings.shop.svc.cluster.local\""));
}

const STORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: store, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: store}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: store, labels: {app: web}}
spec: {nodeName: node1, serviceAccountName: web, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Service
metadata: {name: products, namespace: store}
spec:
  clusterIP: 10.96.0.40
  selector: {app: products}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: products-a, namespace: store, labels: {app: products, version: a}}
spec:
  nodeName: node2
  serviceAccountName: products
  containers: [{name: p, image: ambit, command: [ambit, echo, --port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: products-b, namespace: store, labels: {app: products, version: b}}
spec:
  nodeName: node1
  serviceAccountName: products
  containers: [{name: p, image: ambit, command: [ambit, echo, --port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: shadow, namespace: legacy, labels: {app: shadow}}
spec: {nodeName: node2, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Service
metadata: {name: shadow, namespace: legacy}
spec: {clusterIP: 10.96.0.41, selector: {app: shadow}, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: jwks, namespace: legacy, labels: {app: jwks}}
spec: {nodeName: node1, containers: [{name: c, image: ambit}]}
---
apiVersion: v1
kind: Service
metadata: {name: jwks, namespace: legacy}
spec: {clusterIP: 10.96.0.42, selector: {app: jwks}, ports: [{port: 8000}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: products, namespace: store}
spec:
  host: products
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: products, namespace: store}
spec:
  hosts: [products.store.svc.cluster.local]
  http:
  - name: by-source
    match: [{sourceLabels: {app: web}, uri: {prefix: /src}}]
    route: [{destination: {host: products, subset: b}}]
  - name: by-port
    match: [{port: 8080, uri: {prefix: /port}}]
    route: [{destination: {host: products, subset: b}}]
  - name: retry
    match: [{uri: {prefix: /status/}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: products, subset: a}}]
  - name: per-try
    match: [{uri: {regex: "/delay/[0-9]+"}}]
    timeout: 2s
    retries: {attempts: 2, perTryTimeout: 100ms, retryOn: "5xx,reset"}
    route: [{destination: {host: products, subset: a}}]
  - name: mirror
    match: [{uri: {prefix: /mirror}}]
    mirror: {host: shadow.legacy.svc.cluster.local}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: products, subset: a}}]
  - name: hash
    match: [{uri: {prefix: /hash}}]
    route: [{destination: {host: products}}]
  - name: default
    route: [{destination: {host: products, subset: a}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: store}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: http://jwks.legacy.svc.cluster.local:8000/keys
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: secure, namespace: store}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/secure*"]}}]
    from: [{source: {requestPrincipals: ["https://issuer.test/alice"]}}]
  - to: [{operation: {notPaths: ["/secure*"]}}]
"#;

/// A listener inside pod `netns` (the test plays that pod's app).
fn listen_in_pod(netns: &str, port: u16) -> tokio::net::TcpListener {
    let ns = ambit_proxy_core::netns::Netns::open(format!("/run/netns/{netns}")).expect("netns");
    let std = ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", port)))
        .expect("enter netns")
        .expect("bind");
    std.set_nonblocking(true).expect("nonblocking");
    tokio::net::TcpListener::from_std(std).expect("listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_mirror_jwks_uri_hashing_and_source_matches() {
    require_root();
    set_ambit_bin();
    let _serial = SERIAL.lock().await;
    let mut res = Resources::default();
    res.add_yaml(STORE, "store.yaml").expect("yaml");
    // The JWKS server (a pod outside the mesh), up before the waypoint asks.
    let jwks_doc = jwks();
    let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
    let jwks_listener = listen_in_pod(&cluster.pod("legacy/jwks").expect("jwks").netns, 8000);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = jwks_listener.accept().await {
            let body = jwks_doc.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let shadow = listen_in_pod(&cluster.pod("legacy/shadow").expect("shadow").netns, 8080);
    for p in ["store/products-a", "store/products-b"] {
        let p = cluster.pod(p).expect("pod");
        assert!(wait_listening(&p.netns, 8080, Duration::from_secs(10)).await);
    }
    let web = cluster.pod("store/web").expect("web").netns.clone();
    let vip: SocketAddr = "10.96.0.40:8080".parse().expect("vip");
    let w = cluster
        .waypoints
        .values()
        .next()
        .expect("waypoint")
        .waypoint
        .clone();

    // A sourceLabels match is dropped, as Istio drops it in waypoints: the
    // request falls through to the default route (subset a).
    let r = request(&web, vip, "GET", "/src/1", &[]).await;
    assert_eq!(
        (r.status, r.pod()),
        (200, "products-a"),
        "sourceLabels never match in a waypoint"
    );
    let r = request(&web, vip, "GET", "/port/1", &[]).await;
    assert_eq!((r.status, r.pod()), (200, "products-b"), "port 8080");

    // Retries: three more attempts on 5xx, then the last answer.
    let before = w
        .metrics()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    let r = request(&web, vip, "GET", "/status/503", &[]).await;
    assert_eq!(r.status, 503);
    let after = w
        .metrics()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 3, "attempts: 3 means three retries");
    // perTryTimeout: each try gives up after 100 ms; 3 tries, then 504.
    let t = std::time::Instant::now();
    let r = request(&web, vip, "GET", "/delay/1000", &[]).await;
    assert_eq!(r.status, 504, "{r:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    // Mirror: the shadow gets a copy with the -shadow authority; the client
    // gets the primary's answer.
    let r = request(&web, vip, "GET", "/mirror/1", &[]).await;
    assert_eq!((r.status, r.pod()), (200, "products-a"));
    let (mut copy, _) = tokio::time::timeout(Duration::from_secs(5), shadow.accept())
        .await
        .expect("mirror connection")
        .expect("accept");
    let mut buf = vec![0u8; 4096];
    let n = copy.read(&mut buf).await.expect("read mirror");
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("get /mirror/1 "), "{head}");
    assert!(head.contains("host: reviews-shadow"), "{head}");

    // Consistent hash on x-user: one user always lands on one pod.
    for user in ["ann", "bob", "cyd"] {
        let pods: std::collections::BTreeSet<String> = {
            let mut s = std::collections::BTreeSet::new();
            for _ in 0..8 {
                s.insert(
                    request(&web, vip, "GET", "/hash", &[("x-user", user)])
                        .await
                        .pod()
                        .to_string(),
                );
            }
            s
        };
        assert_eq!(pods.len(), 1, "{user} went to {pods:?}");
    }

    // JWKS from jwksUri: valid token admitted to /secure, payload forwarded,
    // token kept (forwardOriginalToken); none → 403; forged → 401.
    let bearer = format!("Bearer {}", token(SECRET));
    let mut r = request(&web, vip, "GET", "/secure/1", &[("authorization", &bearer)]).await;
    for _ in 0..50 {
        if r.status != 401 {
            break;
        }
        // The keys may still be on their way.
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = request(&web, vip, "GET", "/secure/1", &[("authorization", &bearer)]).await;
    }
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("h:x-jwt-payload="), "{}", r.body);
    assert!(r.body.contains("h:authorization=Bearer "), "{}", r.body);
    let r = request(&web, vip, "GET", "/secure/1", &[]).await;
    assert_eq!(r.status, 403, "no token: requestPrincipals does not match");
    let forged = format!("Bearer {}", token(b"some other secret, also long enough"));
    let r = request(&web, vip, "GET", "/secure/1", &[("authorization", &forged)]).await;
    assert_eq!(r.status, 401);
    let text = w.metrics().render();
    assert!(
        text.contains("ambit_waypoint_mirrored_requests_total 1"),
        "{text}"
    );
}
