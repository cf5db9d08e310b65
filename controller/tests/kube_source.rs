//! The Kubernetes source against a fake API server (kube-rs over a
//! `tower-test` mock service, answering list and watch requests with
//! recorded-style JSON): watch → model → snapshot for pods, services and
//! policies, and a watch restart after 410 Gone that relists.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_api::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use ambit_hbone::ca::{Authority, Validity};
use bytes::Bytes;
use controller::auth::BootstrapTokens;
use controller::model::Snapshot;
use controller::source::KubeSource;
use controller::{Controller, ControllerConfig};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

type Body = BoxBody<Bytes, Infallible>;

/// The fake cluster's initial objects, as a user would write them.
const SAME_AS_YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: echo}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: echo}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
"#;

const KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "Namespace"),
    ("", "v1", "Pod"),
    ("", "v1", "Service"),
    ("security.istio.io", "v1", "AuthorizationPolicy"),
];

/// The fake API server's state: objects per collection path, and the open
/// watch stream of each path.
#[derive(Default)]
struct ApiServer {
    objects: HashMap<String, Vec<Value>>,
    version: u64,
    watches: HashMap<String, mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
}

fn path_of(uri: &http::Uri) -> String {
    uri.path().to_string()
}

impl ApiServer {
    fn list(&self, path: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": self.version.to_string()},
            "items": self.objects.get(path).cloned().unwrap_or_default(),
        })
    }
}

fn pod(name: &str, ip: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "demo", "labels": labels, "resourceVersion": "1", "uid": name},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"podIP": ip},
    })
}

async fn serve(
    mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<Body>>,
    api: Arc<Mutex<ApiServer>>,
) {
    while let Some((req, send)) = handle.next_request().await {
        let path = path_of(req.uri());
        let is_watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let body: Body = if is_watch {
            let (tx, rx) = mpsc::channel(16);
            api.lock().expect("api state").watches.insert(path, tx);
            StreamBody::new(ReceiverStream::new(rx)).boxed()
        } else {
            let list = api.lock().expect("api state").list(&path);
            Full::new(Bytes::from(list.to_string())).boxed()
        };
        send.send_response(
            Response::builder()
                .status(200)
                .body(body)
                .expect("response"),
        );
    }
}

async fn event(api: &Arc<Mutex<ApiServer>>, path: &str, kind: &str, object: Value) {
    // Wait for the watcher to have opened its watch on `path`.
    let tx = loop {
        if let Some(tx) = api.lock().expect("api state").watches.get(path).cloned() {
            break tx;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let line = json!({"type": kind, "object": object}).to_string() + "\n";
    tx.send(Ok(Frame::data(Bytes::from(line))))
        .await
        .expect("watch open");
}

async fn until(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    f: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = rx.borrow_and_update().clone();
        if f(&s) {
            return s;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for: {what}");
        }
    }
}

#[tokio::test]
async fn watch_model_xds_and_relist_after_410() {
    let api = Arc::new(Mutex::new(ApiServer::default()));
    {
        let mut a = api.lock().expect("api state");
        a.version = 10;
        a.objects.insert(
            "/api/v1/namespaces".into(),
            vec![json!({"metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}})],
        );
        a.objects.insert(
            "/api/v1/pods".into(),
            vec![
                pod("a", "10.244.1.2", json!({"app": "echo"})),
                pod("b", "10.244.1.3", json!({"app": "echo"})),
            ],
        );
        a.objects.insert(
            "/api/v1/services".into(),
            vec![json!({
                "metadata": {"name": "echo", "namespace": "demo"},
                "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
            })],
        );
    }
    let (svc, handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
    tokio::spawn(serve(handle, api.clone()));
    let client = kube::Client::new(svc, "default");
    let root = Authority::new_root(
        "cluster.local",
        "t",
        Validity::starting_now(Duration::from_secs(600)),
    )
    .expect("root");
    let ctl = Controller::start(
        ControllerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls: None,
            signer: Arc::new(root),
            auth: Arc::new(BootstrapTokens::default()),
            debounce: Duration::from_millis(5),
            metrics: None,
        },
        Box::new(KubeSource::with_kinds(client, KINDS)),
    )
    .await
    .expect("controller");
    let mut rx = ctl.subscribe();

    // Listed: two pods and a service, in the mesh through the namespace label.
    let s = until(&mut rx, "initial list", |s| s.addresses.len() == 3).await;
    let a = s
        .config
        .workloads
        .iter()
        .find(|w| w.name == "a")
        .expect("pod a");
    assert_eq!(a.protocol, ambit_api::model::Protocol::Hbone);
    assert_eq!(
        a.services
            .get("demo/echo.demo.svc.cluster.local")
            .and_then(|m| m.get(&80)),
        Some(&8080)
    );

    // The same objects written as YAML give the same model.
    let mut from_yaml = ambit_api::k8s::Resources::default();
    from_yaml.add_yaml(SAME_AS_YAML, "same.yaml").expect("yaml");
    let want = ambit_api::translate::translate(&from_yaml).config;
    let sorted = |mut w: Vec<ambit_api::model::Workload>| {
        w.sort_by(|a, b| a.uid.cmp(&b.uid));
        w
    };
    assert_eq!(sorted(s.config.workloads.clone()), sorted(want.workloads));
    assert_eq!(s.config.services, want.services);

    // A watch event: pod a relabelled out of the mesh → one resource changes.
    event(
        &api,
        "/api/v1/pods",
        "MODIFIED",
        pod(
            "a",
            "10.244.1.2",
            json!({"app": "echo", "istio.io/dataplane-mode": "none"}),
        ),
    )
    .await;
    let s = until(&mut rx, "pod a opted out", |s| {
        s.config
            .workloads
            .iter()
            .any(|w| w.name == "a" && w.protocol == ambit_api::model::Protocol::Tcp)
    })
    .await;
    assert_eq!(
        s.changed[ADDRESS_TYPE],
        vec!["Kubernetes//Pod/demo/a".to_string()]
    );

    // A policy arrives.
    event(
        &api,
        "/apis/security.istio.io/v1/authorizationpolicies",
        "ADDED",
        json!({
            "metadata": {"name": "deny-all", "namespace": "demo", "resourceVersion": "11"},
            "spec": {"action": "DENY", "rules": [{}]},
        }),
    )
    .await;
    let s = until(&mut rx, "policy", |s| {
        s.authorizations.contains_key("demo/deny-all")
    })
    .await;
    assert_eq!(
        s.changed[AUTHORIZATION_TYPE],
        vec!["demo/deny-all".to_string()]
    );

    // The pods watch breaks with 410 Gone while pod b was deleted and pod c
    // created: the watcher relists and the model follows (b gone, c there, a
    // unchanged and not re-sent).
    {
        let mut a = api.lock().expect("api state");
        a.version = 20;
        a.objects.insert(
            "/api/v1/pods".into(),
            vec![
                pod(
                    "a",
                    "10.244.1.2",
                    json!({"app": "echo", "istio.io/dataplane-mode": "none"}),
                ),
                pod("c", "10.244.1.4", json!({"app": "echo"})),
            ],
        );
    }
    event(
        &api,
        "/api/v1/pods",
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version: 10 (20)", "reason": "Expired", "code": 410}),
    )
    .await;
    let s = until(&mut rx, "relist after 410", |s| {
        s.config.workloads.iter().any(|w| w.name == "c")
            && !s.config.workloads.iter().any(|w| w.name == "b")
    })
    .await;
    let mut changed = s.changed[ADDRESS_TYPE].clone();
    changed.sort();
    assert_eq!(
        changed,
        vec![
            "Kubernetes//Pod/demo/b".to_string(),
            "Kubernetes//Pod/demo/c".to_string()
        ],
        "only the difference is pushed after a relist"
    );
    ctl.stop().await;
}
