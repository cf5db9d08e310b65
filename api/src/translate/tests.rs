//! Translation tests: Kubernetes and Istio YAML in, proxy state and findings out,
//! and the resulting policies evaluated as ztunnel would.

use super::*;
use crate::model::authz::{Connection, Decision, authorize};
use crate::model::{Protocol, ProxyState};
use ambit_identity::SpiffeId;

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {serviceAccountName: client, nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, namespace: demo, labels: {istio.io/dataplane-mode: none}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-0, namespace: demo, labels: {app: echo, version: v1}}
spec: {serviceAccountName: echo, nodeName: node2, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: plain}
spec: {nodeName: node2, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.3}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: http}, {name: tcp, port: 9000, targetPort: 9000}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-from-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
    to: [{operation: {ports: ["8080"]}}]
  - from: [{source: {namespaces: ["plain"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: demo}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["plain"]}}]
    to: [{operation: {methods: ["DELETE"], ports: ["9000"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec: {mtls: {mode: STRICT}}
"#;

fn translated() -> Translation {
    let mut res = Resources::default();
    res.add_yaml(YAML, "demo.yaml").unwrap();
    translate(&res)
}

fn conn(src: Option<&str>, src_ip: &str, dst: &str, port: u16) -> Connection {
    Connection {
        src_identity: src.map(|s| s.parse::<SpiffeId>().unwrap()),
        src_ip: src_ip.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        dst_port: port,
    }
}

#[test]
fn workloads_services_and_enrolment() {
    let t = translated();
    let w = |name: &str| t.config.workloads.iter().find(|w| w.name == name).unwrap();
    assert_eq!(
        w("client").protocol,
        Protocol::Hbone,
        "namespace label enrolls"
    );
    assert_eq!(
        w("optout").protocol,
        Protocol::Tcp,
        "pod label none opts out"
    );
    assert_eq!(
        w("stranger").protocol,
        Protocol::Tcp,
        "unlabelled namespace"
    );
    let echo = w("echo-0");
    assert_eq!(echo.service_account, "echo");
    assert_eq!(echo.node, "node2");
    assert_eq!(echo.canonical_name, "echo");
    assert_eq!(echo.canonical_revision, "v1");
    let ports = &echo.services["demo/echo.demo.svc.cluster.local"];
    assert_eq!(
        ports.get(&80),
        Some(&8080),
        "named targetPort resolved per pod"
    );
    assert_eq!(ports.get(&9000), Some(&9000));
    let svc = &t.config.services[0];
    assert_eq!(svc.vips, vec!["/10.96.0.10"]);
    assert_eq!(svc.ports.get(&80), Some(&0), "named port: per endpoint");
    assert_eq!(echo.authorization_policies, vec!["demo/echo-from-client"]);
}

#[test]
fn policies_behave_as_istio_on_tcp() {
    let t = translated();
    let state = ProxyState::from_config(&t.config);
    let echo = state
        .workload_by_ip("10.244.2.2".parse().unwrap())
        .unwrap()
        .clone();
    let decide = |c: Connection| authorize(state.policies_for(&echo), &c);
    let client = Some("spiffe://cluster.local/ns/demo/sa/client");
    let plain_ns = Some("spiffe://cluster.local/ns/plain/sa/default");
    assert!(decide(conn(client, "10.244.1.2", "10.244.2.2", 8080)).is_allowed());
    // Wrong port for the client rule.
    assert_eq!(
        decide(conn(client, "10.244.1.2", "10.244.2.2", 9000)),
        Decision::NoAllowMatched
    );
    // The ALLOW rule with methods is dropped (fail closed): plain's identity is not allowed.
    assert_eq!(
        decide(conn(plain_ns, "10.244.2.3", "10.244.2.2", 8080)),
        Decision::NoAllowMatched
    );
    // DENY with methods applies to the L4 part (port 9000 from plain) for everyone in the namespace.
    let client_ip = state
        .workload_by_ip("10.244.1.2".parse().unwrap())
        .unwrap()
        .clone();
    let to_client = |c: Connection| authorize(state.policies_for(&client_ip), &c);
    assert_eq!(
        to_client(conn(plain_ns, "10.244.2.3", "10.244.1.2", 9000)),
        Decision::DeniedBy("demo/no-delete".into())
    );
    assert!(to_client(conn(plain_ns, "10.244.2.3", "10.244.1.2", 9001)).is_allowed());
    // STRICT: plaintext (no identity) is refused everywhere in demo.
    assert_eq!(
        to_client(conn(None, "10.244.2.3", "10.244.1.2", 9001)),
        Decision::DeniedBy("demo/istio_converted_static_strict_default".into())
    );
}

#[test]
fn findings_name_file_object_and_field() {
    let t = translated();
    let msgs: Vec<String> = t.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("demo.yaml (document 8)")
            && m.contains("AuthorizationPolicy demo/echo-from-client")
            && m.contains("spec.rules[1]")
            && m.contains("never matches")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("AuthorizationPolicy demo/no-delete")
                && m.contains("applies to all traffic")),
        "{msgs:#?}"
    );
    let mut res = Resources::default();
    res.add_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: demo}\n\
         spec: {rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/99\"]}}]}]}\n",
        "bad.yaml",
    )
    .unwrap();
    let t = translate(&res);
    assert!(
        t.findings.iter().any(|f| f.severity == Severity::Error
            && f.field == "spec.rules[0].from[0].source.ipBlocks[0]"),
        "{:#?}",
        t.findings
    );
}

/// Decides a connection from `src` to the `echo-0` pod of [`YAML`] with one
/// extra namespace-wide policy in `demo`.
fn decide_with(policy_spec: &str, src: Option<&str>, port: u16) -> (Decision, Vec<Finding>) {
    decide_with_metadata("{name: extra, namespace: demo}", policy_spec, src, port)
}

/// [`decide_with`] for a policy `demo/extra` with the given `metadata`.
fn decide_with_metadata(
    metadata: &str,
    policy_spec: &str,
    src: Option<&str>,
    port: u16,
) -> (Decision, Vec<Finding>) {
    let mut res = Resources::default();
    res.add_yaml(YAML, "demo.yaml").unwrap();
    res.add_yaml(
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {metadata}\nspec: {policy_spec}\n"
        ),
        "extra.yaml",
    )
    .unwrap();
    let t = translate(&res);
    let state = ProxyState::from_config(&t.config);
    let echo = state
        .workload_by_ip("10.244.2.2".parse().unwrap())
        .unwrap()
        .clone();
    let findings = t
        .findings
        .iter()
        .filter(|f| f.object.ends_with("demo/extra"))
        .cloned()
        .collect();
    (
        authorize(
            state.policies_for(&echo),
            &conn(src, "10.244.1.2", "10.244.2.2", port),
        ),
        findings,
    )
}

/// A DENY ztunnel cannot check in full denies more, never less; an ALLOW it
/// cannot check allows less, never more.
#[test]
fn l4_policies_fail_closed() {
    let client = Some("spiffe://cluster.local/ns/demo/sa/client");
    let denied_by_extra = Decision::DeniedBy("demo/extra".into());
    for (spec, port, want_denied, why) in [
        (
            r#"{action: DENY, rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]}"#,
            8080,
            true,
            "require-a-JWT denies every connection at L4",
        ),
        (
            r#"{action: DENY, rules: [{from: [{source: {requestPrincipals: ["*"]}}, {source: {namespaces: [other]}}]}]}"#,
            8080,
            true,
            "one entry with only HTTP fields makes the from clause universal",
        ),
        (
            r#"{action: DENY, rules: [{from: [{source: {remoteIpBlocks: ["1.2.3.4"]}}], to: [{operation: {ports: ["9000"]}}]}]}"#,
            8080,
            false,
            "L4 fields of a broadened DENY still apply (port 9000 only)",
        ),
        (
            r#"{action: DENY, rules: [{to: [{operation: {paths: ["/admin"]}}]}]}"#,
            8080,
            true,
            "paths-only DENY denies every connection",
        ),
        (
            r#"{action: DENY, rules: [{from: [{source: {ipBlocks: ["10.0.0.0/99"]}}]}]}"#,
            8080,
            true,
            "a DENY whose only value is bad denies (Istio's checkError widens DENY)",
        ),
        (
            r#"{action: DENY, rules: [{when: [{key: "source.namespce", values: [demo]}]}]}"#,
            8080,
            true,
            "an unknown when key does not stop a DENY",
        ),
        (
            r#"{action: DENY, rules: [{when: [{key: "request.headers[x-a]", values: ["1"]}]}]}"#,
            8080,
            true,
            "an HTTP-only when key counts as matching in a DENY",
        ),
        (
            r#"{action: BLOCK, rules: [{from: [{source: {namespaces: [nobody]}}]}]}"#,
            8080,
            true,
            "an unknown action denies everything it selects",
        ),
        (
            r#"{action: CUSTOM, provider: {name: ext}, rules: [{to: [{operation: {ports: ["8080"]}}]}]}"#,
            8080,
            true,
            "CUSTOM denies what its rules match",
        ),
        (
            r#"{action: CUSTOM, provider: {name: ext}, rules: [{to: [{operation: {ports: ["9000"]}}]}]}"#,
            8080,
            false,
            "CUSTOM denies only what its rules match",
        ),
    ] {
        let (d, findings) = decide_with(spec, client, port);
        assert_eq!(d == denied_by_extra, want_denied, "{why}: {spec} -> {d:?}");
        if spec.contains("BLOCK")
            || spec.contains("CUSTOM")
            || spec.contains("/99")
            || spec.contains("namespce")
        {
            assert!(
                findings.iter().any(|f| f.severity == Severity::Error),
                "{why}: no error finding in {findings:#?}"
            );
        }
    }
    // ALLOW rules with values ztunnel cannot check never allow.
    for spec in [
        r#"{rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"], ipBlocks: ["bad"]}}]}]}"#,
        r#"{rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}], when: [{key: "sourc.ip", values: ["10.0.0.0/8"]}]}]}"#,
        r#"{rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"], requestPrincipals: ["*"]}}]}]}"#,
    ] {
        let (d, _) = decide_with(spec, client, 8080);
        // echo-from-client also allows the client on 8080; the extra policy
        // is namespace-wide, so check a port only the extra one could allow.
        let (d9000, _) = decide_with(spec, client, 9000);
        assert!(d.is_allowed(), "{spec}: {d:?}");
        assert_eq!(d9000, Decision::NoAllowMatched, "{spec}");
    }
    // serviceAccounts without a namespace mean the policy's namespace.
    let (d, _) = decide_with(
        r#"{rules: [{from: [{source: {serviceAccounts: ["client"]}}], to: [{operation: {ports: ["9000"]}}]}]}"#,
        client,
        9000,
    );
    assert_eq!(
        d,
        Decision::Allow {
            by: Some("demo/extra".into())
        }
    );
}

/// A kind Ambit does not interpret is reported, never dropped silently.
#[test]
fn uninterpreted_kinds_are_findings() {
    let mut res = Resources::default();
    res.add_yaml(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: demo}\n\
         spec: {hosts: [api.example.com]}\n",
        "se.yaml",
    )
    .unwrap();
    let t = translate(&res);
    assert!(
        t.findings
            .iter()
            .any(|f| f.object == "ServiceEntry demo/ext"
                && f.source.file == "se.yaml"
                && f.message
                    .contains("networking.istio.io/v1/ServiceEntry is not interpreted")),
        "{:#?}",
        t.findings
    );
}

/// A Service without a selector gets its endpoints from EndpointSlices,
/// which Ambit does not read: said once, on the Service.
#[test]
fn a_service_without_a_selector_is_reported() {
    let mut res = Resources::default();
    res.add_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.9, ports: [{port: 5432}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: demo}\n\
         spec: {type: ExternalName, externalName: db.example.com}\n",
        "svc.yaml",
    )
    .unwrap();
    let t = translate(&res);
    let about: Vec<&Finding> = t
        .findings
        .iter()
        .filter(|f| f.field == "spec.selector")
        .collect();
    assert_eq!(about.len(), 1, "{about:#?}");
    assert_eq!(about[0].object, "Service demo/db");
    assert!(about[0].message.contains("EndpointSlices"));
}

/// `istio.io/dry-run` that is not a boolean: Istio enforces the policy; so
/// does Ambit, and it says so once, naming the annotation.
#[test]
fn l4_dry_run_that_is_not_a_boolean_is_enforced_and_reported() {
    let (decision, findings) = decide_with_metadata(
        "{name: extra, namespace: demo, annotations: {istio.io/dry-run: \"yes\"}}",
        "{action: DENY, rules: [{}]}",
        Some("spiffe://cluster.local/ns/demo/sa/client"),
        8080,
    );
    assert_eq!(decision, Decision::DeniedBy("demo/extra".into()));
    let found: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.field.contains("istio.io/dry-run"))
        .collect();
    assert_eq!(found.len(), 1, "{findings:?}");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(
        found[0].message.contains("not a boolean"),
        "{}",
        found[0].message
    );
}
