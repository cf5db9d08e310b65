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
            "all weights zero",
            vs(
                "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 0}\n    - {destination: {host: reviews, subset: v3}}\n",
            ),
            "VirtualService bookinfo/reviews spec.http[0].route: every destination has weight 0",
        ),
        (
            "delegate",
            vs("  - delegate: {name: reviews-v2, namespace: bookinfo}\n"),
            "spec.http[0].delegate: delegation is not supported",
        ),
        (
            "grpc abort",
            vs(
                "  - route: [{destination: {host: reviews}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}\n",
            ),
            "spec.http[0].fault.abort.grpcStatus: gRPC aborts are not supported",
        ),
        (
            "direct response status",
            vs("  - directResponse: {status: 42}\n"),
            "spec.http[0].directResponse.status: 42 is not an HTTP status",
        ),
        (
            "direct response bytes",
            vs("  - directResponse: {status: 200, body: {bytes: \"not base64!\"}}\n"),
            "spec.http[0].directResponse.body.bytes: not base64",
        ),
        (
            "regex rewrite",
            vs(
                "  - route: [{destination: {host: reviews}}]\n    rewrite: {uriRegexRewrite: {match: \"(\", rewrite: /x}}\n",
            ),
            "spec.http[0].rewrite.uriRegexRewrite.match: bad regex",
        ),
        (
            "regex",
            vs(
                "  - match: [{uri: {regex: \"/api/(v1\"}}]\n    route: [{destination: {host: reviews}}]\n",
            ),
            "spec.http[0].match[0].uri.regex: bad regex",
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

fn warnings(t: &Translation) -> Vec<String> {
    t.findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| {
            let code = if f.code.is_empty() {
                String::new()
            } else {
                format!("{} ", f.code)
            };
            format!("{} {}: {code}{}", f.object, f.field, f.message)
        })
        .collect()
}

/// Istio's route translation: weights are relative, 0 drops a destination,
/// a lone destination takes everything; a route to a subset no
/// DestinationRule defines is kept (it answers 503) and flagged.
#[test]
fn weights_are_relative_and_undefined_subsets_are_kept() {
    let t = run(&(BASE.to_string()
        + &vs(
            "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 3}\n    - {destination: {host: reviews, subset: v2}, weight: 0}\n    - {destination: {host: reviews, subset: v3}, weight: 1}\n  - route: [{destination: {host: reviews, subset: v4}, weight: 5}]\n",
        )));
    assert!(errors(&t).is_empty(), "{:?}", errors(&t));
    let s = &t.l7[0];
    let split: Vec<(String, u32)> = s.http[0]
        .route
        .iter()
        .map(|r| {
            (
                r.destination
                    .as_ref()
                    .map(|d| d.subset.clone())
                    .unwrap_or_default(),
                r.weight,
            )
        })
        .collect();
    assert_eq!(split, vec![("v1".into(), 3), ("v3".into(), 1)]);
    assert_eq!(s.http[1].route[0].weight, 100);
    assert_eq!(
        s.http[1].route[0]
            .destination
            .as_ref()
            .map(|d| d.subset.as_str()),
        Some("v4")
    );
    let warns = warnings(&t);
    assert!(
        warns
            .iter()
            .any(|w| w.contains("spec.http[1].route[0].destination.subset: IST0101 subset \"v4\"")),
        "{warns:?}"
    );
}

/// `gateways`, `scheme`, `ignoreUriCase`, `sourceNamespace`,
/// `withoutHeaders`, `directResponse`, `mirrors`, `uriRegexRewrite`: each
/// interpreted as Istio does for mesh traffic.
#[test]
fn mesh_semantics_of_match_and_route_fields() {
    let http = r#"  - match:
    - {uri: {prefix: /gw}, gateways: [ingress]}
    - {uri: {prefix: /mesh}, gateways: [mesh, ingress]}
    - {uri: {prefix: /tls}, scheme: {exact: https}}
    - {uri: {prefix: /Plain}, scheme: {prefix: ht}, ignoreUriCase: true, sourceNamespace: shop}
    - {uri: {prefix: /w}, withoutHeaders: {x-a: {}, x-b: {exact: one}}}
    route: [{destination: {host: reviews}}]
    mirror: {host: reviews, subset: v1}
    mirrorPercentage: {value: 0}
    mirrors: [{destination: {host: reviews, subset: v2}}, {destination: {host: reviews, subset: v3}, percentage: {value: 25}}]
    rewrite: {uriRegexRewrite: {match: "^/mesh/(.*)$", rewrite: "/v2/\\1"}}
  - match: [{uri: {prefix: /only-gw}, gateways: [ingress]}]
    route: [{destination: {host: reviews}}]
  - directResponse: {status: 418, body: {string: "teapot"}}
"#;
    let t = run(&(BASE.to_string() + &vs(http)));
    assert!(errors(&t).is_empty(), "{:?}", errors(&t));
    let s = &t.l7[0];
    assert_eq!(s.http.len(), 2, "the gateway-only route is left out");
    let prefixes: Vec<String> = s.http[0]
        .matches
        .iter()
        .map(|m| match m.uri.as_ref().and_then(|u| u.kind.as_ref()) {
            Some(pb::string_match::Kind::Prefix(p)) => p.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(prefixes, vec!["/mesh", "/Plain", "/w"]);
    assert!(s.http[0].matches[1].ignore_uri_case);
    assert_eq!(s.http[0].matches[1].source_namespace, "shop");
    let without = &s.http[0].matches[2].without_headers;
    assert_eq!(without.get("x-a").map(|m| m.kind.is_none()), Some(true));
    assert_eq!(
        without.get("x-b").and_then(|m| m.kind.clone()),
        Some(pb::string_match::Kind::Exact("one".into()))
    );
    let mirrors: Vec<(String, f64)> = s.http[0]
        .mirrors
        .iter()
        .map(|m| {
            (
                m.destination
                    .as_ref()
                    .map(|d| d.subset.clone())
                    .unwrap_or_default(),
                m.percentage,
            )
        })
        .collect();
    assert_eq!(
        mirrors,
        vec![
            ("v1".into(), 0.0),
            ("v2".into(), 100.0),
            ("v3".into(), 25.0)
        ]
    );
    let rw = s.http[0].rewrite.as_ref().expect("rewrite");
    assert_eq!(
        (rw.uri_regex.as_str(), rw.uri_regex_rewrite.as_str()),
        ("^/mesh/(.*)$", "/v2/\\1")
    );
    let direct = s.http[1].direct_response.as_ref().expect("direct response");
    assert_eq!(
        (direct.status, direct.body.as_slice()),
        (418, b"teapot".as_slice())
    );

    // Bound to an ingress gateway only: no mesh routes, and a finding.
    let gw_only = vs("  - route: [{destination: {host: reviews}}]\n").replace(
        "  hosts: [reviews]\n",
        "  hosts: [reviews]\n  gateways: [ingress]\n",
    );
    let t = run(&(BASE.to_string() + &gw_only));
    assert!(t.l7[0].http.is_empty());
    assert!(
        warnings(&t)
            .iter()
            .any(|w| w.contains("spec.gateways: bound to gateways")),
        "{:?}",
        warnings(&t)
    );
}

/// Every field Ambit accepts and does not act on is a finding with its
/// exact path; defaults (`exportTo: ["*"]`) are not.
#[test]
fn uninterpreted_fields_are_findings_with_their_path() {
    let dr = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings
  exportTo: ["*"]
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, connectionPool: {tcp: {connectTimeout: 1s}}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: a, jwks: "{\"keys\":[]}", fromCookies: [session]}]
"#;
    let http = "  - match: [{uri: {prefix: /}, statPrefix: s}]\n    route: [{destination: {host: reviews}}]\n";
    let t = run(&(BASE.to_string()
        + &vs(http).replace(
            "  hosts: [reviews]\n",
            "  hosts: [reviews]\n  exportTo: [\".\"]\n",
        )
        + dr));
    let warns = warnings(&t);
    for want in [
        "VirtualService bookinfo/reviews spec.exportTo: exportTo is not interpreted",
        "VirtualService bookinfo/reviews spec.http[0].match[0].statPrefix: not interpreted",
        "DestinationRule bookinfo/ratings spec.trafficPolicy.tls: not interpreted",
        "DestinationRule bookinfo/ratings spec.trafficPolicy.connectionPool.tcp.connectTimeout: not interpreted",
        "DestinationRule bookinfo/ratings spec.subsets[0].trafficPolicy.loadBalancer.consistentHash.useSourceIp: not interpreted",
        "RequestAuthentication bookinfo/jwt spec.selector: a selector binds sidecars",
    ] {
        assert!(
            warns.iter().any(|w| w.starts_with(want)),
            "want {want:?} in {warns:#?}"
        );
    }
    assert!(
        !warns
            .iter()
            .any(|w| w.contains("DestinationRule bookinfo/ratings spec.exportTo")),
        "exportTo: [\"*\"] is the default: {warns:#?}"
    );
}

#[test]
fn jwt_rule_fields_reach_the_waypoint_or_are_named_errors() {
    let ra = |rule: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: bookinfo}}\n\
             spec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  jwtRules: [{rule}]\n"
        )
    };
    let t = run(&(BASE.to_string()
        + &ra(
            "{issuer: a, jwksUri: \"https://idp/keys\", timeout: 2s, fromCookies: [session], \
               spaceDelimitedClaims: [roles], outputClaimToHeaders: [{header: X-Sub, claim: sub}]}",
        )));
    assert!(errors(&t).is_empty(), "{:?}", errors(&t));
    assert!(
        warnings(&t).iter().all(|w| !w.contains("jwtRules")),
        "{:?}",
        warnings(&t)
    );
    let rule = &t.l7[0].authentication[0];
    assert_eq!(rule.from_cookies, vec!["session".to_string()]);
    assert_eq!(rule.space_delimited_claims, vec!["roles".to_string()]);
    assert_eq!(rule.jwks_fetch_timeout_ms, 2000);
    assert_eq!(
        (
            rule.output_claim_to_headers[0].header.as_str(),
            rule.output_claim_to_headers[0].claim.as_str()
        ),
        ("x-sub", "sub")
    );
    let t = run(&(BASE.to_string()
        + &ra(
            "{issuer: a, jwks: \"{}\", timeout: soon, outputClaimToHeaders: [{header: \"bad header\", claim: sub}]}",
        )));
    let errs = errors(&t);
    for want in [
        "spec.jwtRules[0].timeout",
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want} in {errs:?}");
    }
}

/// Istio's waypoint drops every `match` that has `sourceLabels`; a route
/// left with no match is not a catch-all, it is gone.
#[test]
fn source_label_matches_are_dropped_as_istio_drops_them() {
    let http = "  - name: only-labels\n    match: [{sourceLabels: {app: web}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n\
                \x20 - name: mixed\n    match: [{sourceLabels: {app: web}, uri: {prefix: /a}}, {uri: {prefix: /b}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n\
                \x20 - route: [{destination: {host: reviews, subset: v1}}]\n";
    let t = run(&(BASE.to_string() + &vs(http)));
    assert!(errors(&t).is_empty(), "{:?}", errors(&t));
    let s = &t.l7[0];
    let names: Vec<&str> = s.http.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["mixed", ""],
        "only-labels is gone, not a catch-all"
    );
    assert_eq!(s.http[0].matches.len(), 1);
    assert!(s.http[0].matches[0].source_labels.is_empty());
    let warns = warnings(&t);
    for field in [
        "spec.http[0].match[0].sourceLabels",
        "spec.http[1].match[0].sourceLabels",
    ] {
        assert!(
            warns.iter().any(|w| w.contains(field)),
            "{field} in {warns:?}"
        );
    }
}

/// Istio's `MirrorPercent`: `mirrorPercentage`, else the deprecated integer
/// `mirrorPercent`, else 100 %; an explicit 0 mirrors nothing.
#[test]
fn mirror_share_as_istio_reads_it() {
    let route = |extra: &str| {
        format!(
            "  - route: [{{destination: {{host: reviews}}}}]\n    mirror: {{host: reviews, subset: v1}}\n{extra}"
        )
    };
    for (extra, want) in [
        ("", 100.0),
        ("    mirrorPercentage: {value: 0}\n", 0.0),
        ("    mirrorPercent: 30\n", 30.0),
        (
            "    mirrorPercent: 30\n    mirrorPercentage: {value: 5}\n",
            5.0,
        ),
    ] {
        let t = run(&(BASE.to_string() + &vs(&route(extra))));
        assert!(errors(&t).is_empty(), "{extra}: {:?}", errors(&t));
        assert_eq!(t.l7[0].http[0].mirrors[0].percentage, want, "{extra}");
    }
    let t = run(&(BASE.to_string() + &vs(&route("    mirrorPercent: 130\n"))));
    assert!(
        errors(&t)
            .iter()
            .any(|e| e.contains("spec.http[0].mirrorPercent")),
        "{:?}",
        errors(&t)
    );
}
