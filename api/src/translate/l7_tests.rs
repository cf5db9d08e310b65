//! Table tests for L7 validation and translation.

use super::*;
use crate::translate::translate;

const BASE: &str = r#"
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
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec: {clusterIP: 10.96.0.20, selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-get, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET], paths: ["/reviews/*"]}}], when: [{key: "request.headers[x-token]", values: ["*"]}]}]
---
"#;

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

const GOOD_HTTP: &str = r#"  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v3}, weight: 10}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset"}
"#;

fn run(yaml: &str) -> Translation {
    let mut r = Resources::default();
    r.add_yaml(yaml, "bookinfo.yaml").expect("yaml loads");
    translate(&r)
}

fn errors(t: &Translation) -> Vec<String> {
    t.findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{} {}: {}", f.object, f.field, f.message))
        .collect()
}

#[test]
fn bookinfo_routes_subsets_and_policy_reach_the_waypoint_config() {
    let t = run(&(BASE.to_string() + &vs(GOOD_HTTP)));
    assert!(errors(&t).is_empty(), "{:?}", errors(&t));
    assert_eq!(t.l7.len(), 1);
    let s = &t.l7[0];
    assert_eq!(s.hostname, "reviews.bookinfo.svc.cluster.local");
    assert_eq!(s.waypoints, vec!["bookinfo/waypoint".to_string()]);
    assert_eq!(s.http.len(), 2);
    assert_eq!(s.http[0].route[0].weight, 100);
    assert_eq!(
        s.http[1].route.iter().map(|r| r.weight).collect::<Vec<_>>(),
        vec![90, 10]
    );
    assert_eq!(s.http[1].timeout_ms, 2000);
    let retry = s.http[1].retries.as_ref().expect("retries");
    assert_eq!((retry.attempts, retry.per_try_timeout_ms), (3, 500));
    assert_eq!(s.subsets.len(), 3);
    let tp = s.traffic_policy.as_ref().expect("policy");
    assert_eq!(
        tp.load_balancer.as_ref().map(|l| l.simple),
        Some(pb::load_balancer::Simple::LeastRequest as i32)
    );
    assert_eq!(
        tp.outlier_detection
            .as_ref()
            .map(|o| o.base_ejection_time_ms),
        Some(30_000)
    );
    assert_eq!(s.authorization.len(), 1);
    assert!(
        s.sources
            .iter()
            .any(|o| o == "VirtualService bookinfo/reviews")
    );
}

#[test]
fn invalid_resources_are_named_with_their_field() {
    let cases: &[(&str, String, &str)] = &[
        (
            "weights",
            vs(
                "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v3}, weight: 20}\n",
            ),
            "VirtualService bookinfo/reviews spec.http[0].route: weights sum to 110, not 100",
        ),
        (
            "regex",
            vs(
                "  - match: [{uri: {regex: \"/api/(v1\"}}]\n    route: [{destination: {host: reviews}}]\n",
            ),
            "spec.http[0].match[0].uri.regex: bad regex",
        ),
        (
            "undefined subset",
            vs("  - route: [{destination: {host: reviews, subset: v4}}]\n"),
            "spec.http[0].route[0].destination.subset: subset \"v4\" is not defined",
        ),
        (
            "duration",
            vs("  - route: [{destination: {host: reviews}}]\n    timeout: 5 seconds\n"),
            "spec.http[0].timeout: \"5 seconds\" is not a duration",
        ),
        (
            "two match kinds",
            vs(
                "  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: reviews}}]\n",
            ),
            "spec.http[0].match[0].uri: exactly one of exact, prefix, regex",
        ),
        (
            "no action",
            vs("  - match: [{uri: {prefix: /}}]\n"),
            "spec.http[0]: needs one of route, redirect, directResponse",
        ),
        (
            "abort status",
            vs(
                "  - route: [{destination: {host: reviews}}]\n    fault: {abort: {httpStatus: 700, percentage: {value: 10}}}\n",
            ),
            "spec.http[0].fault.abort.httpStatus: 700 is not an HTTP status",
        ),
        (
            "percentage",
            vs(
                "  - route: [{destination: {host: reviews}}]\n    fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}\n",
            ),
            "spec.http[0].fault.delay.percentage: 150 is not a percentage",
        ),
    ];
    for (name, http, want) in cases {
        let t = run(&(BASE.to_string() + http));
        let errs = errors(&t);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{name}: want {want:?} in {errs:?}"
        );
        assert!(
            t.l7.iter().all(|s| s.http.is_empty()),
            "{name}: an invalid VirtualService must not be applied"
        );
    }
    let bad_lb = BASE.replace("simple: LEAST_REQUEST", "simple: FASTEST");
    let errs = errors(&run(&bad_lb));
    assert!(
        errs.iter().any(|e| e
            .contains("DestinationRule bookinfo/reviews spec.trafficPolicy.loadBalancer.simple")),
        "{errs:?}"
    );
}

#[test]
fn unknown_fields_are_load_errors_with_the_path() {
    let mut r = Resources::default();
    let err = r
        .add_yaml(
            &vs("  - route: [{destination: {host: reviews}, wieght: 100}]\n"),
            "typo.yaml",
        )
        .expect_err("typo");
    let msg = err.to_string();
    assert!(
        msg.contains("typo.yaml")
            && msg.contains("VirtualService bookinfo/reviews")
            && msg.contains("wieght"),
        "{msg}"
    );
}

#[test]
fn hosts_resolve_like_istio() {
    assert_eq!(
        resolve_host("reviews", "bookinfo"),
        "reviews.bookinfo.svc.cluster.local"
    );
    assert_eq!(
        resolve_host("reviews.other", "bookinfo"),
        "reviews.other.svc.cluster.local"
    );
    assert_eq!(
        resolve_host("reviews.other.svc", "b"),
        "reviews.other.svc.cluster.local"
    );
    assert_eq!(
        resolve_host("reviews.other.svc.cluster.local", "b"),
        "reviews.other.svc.cluster.local"
    );
}
