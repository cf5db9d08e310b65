//! `ambit install` against an API server at the HTTP level (KUBECONFIG
//! pointing at it): every object of the rendered chart is server-side
//! applied, in order, where it lives (cluster-scoped or in its namespace),
//! with field manager `ambit-install`; `--dry-run` prints the same objects
//! and touches nothing.

#[path = "../../controller/tests/common/fake_api.rs"]
mod fake_api;

use std::process::Command;

use fake_api::FakeApi;

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_the_rendered_chart() {
    let api = FakeApi::start().await;
    let dir = scratch();
    let kubeconfig = api.kubeconfig(&dir);
    let ambit = env!("CARGO_BIN_EXE_ambit");

    let dry = Command::new(ambit)
        .args(["install", "--dry-run", "--set", "controller.replicas=3"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("ambit install --dry-run");
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        api.requests().is_empty(),
        "--dry-run talks to no API server"
    );
    let printed = String::from_utf8_lossy(&dry.stdout).into_owned();
    let objects = ambit::install::documents(&printed).expect("printed YAML");

    let out = tokio::task::spawn_blocking(move || {
        Command::new(ambit)
            .args(["install", "--set", "controller.replicas=3"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("ambit install")
    })
    .await
    .expect("join");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writes = api.writes();
    assert_eq!(writes.len(), objects.len(), "one apply per object");
    for (w, o) in writes.iter().zip(&objects) {
        assert_eq!(w.method, "PATCH");
        assert_eq!(w.content_type, "application/apply-patch+yaml");
        assert!(
            w.query.contains("fieldManager=ambit-install") && w.query.contains("force=true"),
            "{}",
            w.query
        );
        assert_eq!(&w.body, o, "{} applied as rendered", w.path);
    }
    let paths: Vec<&str> = writes.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths[0], "/api/v1/namespaces/istio-system",
        "the namespace first"
    );
    assert!(paths.contains(
        &"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ratelimitpolicies.ambit.dev"
    ));
    assert!(
        paths.contains(&"/apis/rbac.authorization.k8s.io/v1/clusterroles/ambit-waypoint-deployer")
    );
    assert!(paths.contains(&"/apis/apps/v1/namespaces/istio-system/daemonsets/ztunnel"));
    let controller = api
        .object(
            "/apis/apps/v1",
            "deployments",
            "istio-system",
            "ambit-controller",
        )
        .expect("controller applied");
    assert_eq!(controller["spec"]["replicas"], 3);
}

#[test]
fn without_a_cluster_it_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .arg("install")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .expect("ambit install");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dry-run"), "{err}");
}
