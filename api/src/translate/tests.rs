//! Translation tests: Kubernetes and Istio YAML in, proxy state and findings out,
//! and the resulting policies evaluated as ztunnel would.

use super::*;
use crate::model::authz::{Connection, Decision, authorize};
use crate::model::{Protocol, ProxyState};
use ambit_hbone::SpiffeId;

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
