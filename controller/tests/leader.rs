//! Controller HA against an API server at the HTTP level: leader election
//! on a Lease (one leader; the other takes over when the leader stops
//! renewing) and the mesh root shared through Secret `istio-ca-secret`
//! (two replicas starting together end up with one root).

#[path = "common/fake_api.rs"]
mod fake_api;

use std::time::Duration;

use controller::lease::{LeaderElector, Timings};
use fake_api::FakeApi;
use tokio::sync::watch;

fn fast() -> Timings {
    Timings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry: Duration::from_millis(100),
    }
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/deployer";

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_leader_and_a_takeover_when_it_stops_renewing() {
    let api = FakeApi::start().await;
    let start = |name: &str| {
        let (tx, rx) = watch::channel(false);
        let e = LeaderElector::new(api.client(), "istio-system", "deployer", name, fast());
        (tokio::spawn(e.run(tx)), rx)
    };
    let (a_task, a) = start("replica-a");
    let (b_task, b) = start("replica-b");
    until("a leader", || *a.borrow() || *b.borrow()).await;
    // Several renewals later there is still exactly one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(*a.borrow() != *b.borrow(), "exactly one leader");
    let (leader_task, follower, follower_name) = if *a.borrow() {
        (a_task, b.clone(), "replica-b")
    } else {
        (b_task, a.clone(), "replica-a")
    };
    let holder = |api: &FakeApi| {
        api.object(
            "/apis/coordination.k8s.io/v1",
            "leases",
            "istio-system",
            "deployer",
        )
        .map(|l| {
            (
                l["spec"]["holderIdentity"].clone(),
                l["spec"]["leaseTransitions"].clone(),
            )
        })
    };
    let before = holder(&api).expect("lease created");
    assert_ne!(before.0, follower_name);
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path == LEASE),
        "the holder renews with a replace"
    );

    // The leader dies (no step-down): the other takes over once the Lease
    // has not been renewed for its duration, not before.
    leader_task.abort();
    let died = tokio::time::Instant::now();
    until("takeover", || *follower.borrow()).await;
    assert!(
        died.elapsed() >= Duration::from_millis(700),
        "{:?}",
        died.elapsed()
    );
    let after = holder(&api).expect("lease");
    assert_eq!(after.0, follower_name);
    assert_eq!(after.1, serde_json::json!(1), "one transition");
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down() {
    let api = FakeApi::start().await;
    let (tx, rx) = watch::channel(false);
    let e = LeaderElector::new(api.client(), "istio-system", "deployer", "solo", fast());
    let task = tokio::spawn(e.run(tx));
    until("leader", || *rx.borrow()).await;
    // The API goes away for this group: renewals fail.
    api.without_group("coordination.k8s.io");
    let lost = tokio::time::Instant::now();
    until("stepped down", || !*rx.borrow()).await;
    assert!(
        lost.elapsed() < Duration::from_secs(1),
        "down before the lease could expire: {:?}",
        lost.elapsed()
    );
    task.abort();
}

#[tokio::test]
async fn replicas_starting_together_share_one_root() {
    let api = FakeApi::start().await;
    let (a, b) = tokio::join!(
        controller::ca_secret::shared_root(api.client(), "istio-system", "cluster.local"),
        controller::ca_secret::shared_root(api.client(), "istio-system", "cluster.local"),
    );
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    assert_eq!(a.certificate_pem(), b.certificate_pem());
    let created: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces/istio-system/secrets")
        .collect();
    assert!(!created.is_empty());
    let secret = api
        .object("/api/v1", "secrets", "istio-system", "istio-ca-secret")
        .expect("secret stored");
    assert_eq!(secret["type"], "istio.io/ca-root");
    // A restart loads it instead of making another.
    let again = controller::ca_secret::shared_root(api.client(), "istio-system", "cluster.local")
        .await
        .expect("restart");
    assert_eq!(again.certificate_pem(), a.certificate_pem());
}
