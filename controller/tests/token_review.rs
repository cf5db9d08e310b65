//! Cluster-mode node authentication: the bearer token is reviewed by the API
//! server (a mock answering TokenReview), and only the ztunnel service
//! account with a node-bound token is accepted.

use bytes::Bytes;
use controller::auth::{NodeAuthenticator, TokenReviewAuthenticator};
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
async fn token_review_maps_ztunnel_tokens_to_their_node() {
    let (svc, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    tokio::spawn(api_server(handle));
    let auth = TokenReviewAuthenticator::new(
        kube::Client::new(svc, "default"),
        vec!["system:serviceaccount:istio-system:ztunnel".into()],
        "istio-ca",
    );
    assert_eq!(
        auth.authenticate(&md("ztunnel-on-node1"))
            .await
            .expect("ok")
            .node,
        "node1"
    );
    assert_eq!(
        auth.authenticate(&md("some-app"))
            .await
            .expect_err("app token")
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        auth.authenticate(&md("forged"))
            .await
            .expect_err("forged")
            .code(),
        tonic::Code::Unauthenticated
    );
}
