//! Cluster-mode authentication: the bearer token is reviewed by the API
//! server (a mock answering TokenReview). The ztunnel service account with a
//! node-bound token is a node proxy; any other service account is a caller
//! acting as itself; other users and forged tokens are refused.

use bytes::Bytes;
use controller::auth::{Caller, NodeAuthenticator, ServiceAccount, TokenReviewAuthenticator};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tonic::metadata::MetadataMap;

async fn api_server(
    mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<Full<Bytes>>>,
) {
    while let Some((req, send)) = handle.next_request().await {
        assert_eq!(
            req.uri().path(),
            "/apis/authentication.k8s.io/v1/tokenreviews"
        );
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let review: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(review["spec"]["audiences"], json!(["istio-ca"]));
        let status = match review["spec"]["token"].as_str() {
            Some("ztunnel-on-node1") => json!({"authenticated": true, "user": {
                "username": "system:serviceaccount:istio-system:ztunnel",
                "extra": {"authentication.kubernetes.io/node-name": ["node1"]}}}),
            Some("some-app") => json!({"authenticated": true, "user": {
                "username": "system:serviceaccount:shop:web",
                "extra": {"authentication.kubernetes.io/node-name": ["node1"]}}}),
            Some("ztunnel-unbound") => json!({"authenticated": true, "user": {
                "username": "system:serviceaccount:istio-system:ztunnel"}}),
            Some("admin") => {
                json!({"authenticated": true, "user": {"username": "kubernetes-admin"}})
            }
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let out = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                         "metadata": {}, "spec": review["spec"], "status": status});
        send.send_response(
            Response::builder()
                .status(201)
                .body(Full::new(Bytes::from(out.to_string())))
                .expect("response"),
        );
    }
}

fn md(token: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    m
}

#[tokio::test]
async fn token_review_names_node_proxies_and_workloads() {
    let (svc, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    tokio::spawn(api_server(handle));
    let auth = TokenReviewAuthenticator::new(
        kube::Client::new(svc, "default"),
        vec!["system:serviceaccount:istio-system:ztunnel".into()],
        "istio-ca",
    );
    let sa = |ns: &str, name: &str| {
        Some(ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        })
    };
    assert_eq!(
        auth.authenticate(&md("ztunnel-on-node1"))
            .await
            .expect("ok"),
        Caller {
            node: Some("node1".into()),
            service_account: sa("istio-system", "ztunnel"),
        }
    );
    assert_eq!(
        auth.authenticate(&md("some-app")).await.expect("app token"),
        Caller {
            node: None,
            service_account: sa("shop", "web"),
        },
        "a workload is itself, never a node proxy, even with a node-bound token"
    );
    for (token, code) in [
        ("ztunnel-unbound", tonic::Code::PermissionDenied),
        ("admin", tonic::Code::PermissionDenied),
        ("forged", tonic::Code::Unauthenticated),
    ] {
        assert_eq!(
            auth.authenticate(&md(token)).await.expect_err(token).code(),
            code,
            "{token}"
        );
    }
}
