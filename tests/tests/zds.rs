//! The enrolment channel (ZDS) between a node agent and ztunnel: adds carry the
//! pod's netns fd, every request is acked, a bad request gets an error ack, and
//! after a reconnect the snapshot decides which pods stay. Needs root.

use std::sync::Arc;

use ambit_api::model::{LocalConfig, ProxyState};
use ambit_api::zds::WorkloadInfo;
use ambit_e2e::cluster::topology;
use ambit_e2e::pki;
use ambit_hbone::ca::CertificateSigner;
use ambit_node_agent::zds::NodeAgent;

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "demo".into(),
        service_account: "default".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrols_over_zds_and_snapshot_reconciles_after_reconnect() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let mut topo = topology("zds", 1);
    let ip_a = topo.add_pod("a", 1).expect("pod");
    let ip_b = topo.add_pod("b", 1).expect("pod");
    let yaml = format!(
        "workloads:\n\
         - {{uid: a, name: a, namespace: demo, workloadIps: [\"{ip_a}\"], protocol: HBONE, node: node1, services: {{}}}}\n\
         - {{uid: b, name: b, namespace: demo, workloadIps: [\"{ip_b}\"], protocol: HBONE, node: node1, services: {{}}}}\n"
    );
    let state = ProxyState::from_config(&LocalConfig::parse(&yaml, "zds state").expect("state"));
    let signer: Arc<dyn CertificateSigner> = Arc::new(pki::root("cluster.local", "root"));
    let z = Arc::new(ambit_e2e::local_ztunnel("node1", signer, state));
    let sock = std::env::temp_dir().join(format!("ambit-zds-test-{}.sock", std::process::id()));
    let netns_path = |name: &str| {
        std::path::PathBuf::from(format!(
            "/run/netns/{}",
            topo.pod(name).expect("pod").ns.name()
        ))
    };

    let agent = NodeAgent::start(&sock).expect("agent");
    let client =
        ztunnel::zds::run_client(z.clone(), sock.clone(), tokio::runtime::Handle::current());
    // Not ready until the snapshot arrives; the add is acked once ztunnel has it.
    agent.add("a", info("a"), netns_path("a")).expect("add a");
    agent.add("b", info("b"), netns_path("b")).expect("add b");
    ambit_e2e::wait_for("a and b enrolled", || z.enrolled().len() == 2).await;
    ambit_e2e::wait_for("ready", || z.pending().is_empty()).await;

    // A pod unknown to the state is refused with an error ack, not a crash.
    let err = agent
        .add("ghost", info("ghost"), netns_path("a"))
        .expect_err("unknown pod");
    assert!(err.contains("ghost"), "{err}");

    // del releases.
    agent.del("b").expect("del b");
    assert_eq!(z.enrolled(), vec!["a".to_string()]);

    // The agent goes away: ztunnel reports not ready, keeps serving what it has.
    drop(agent);
    ambit_e2e::wait_for("ZDS pending", || {
        z.pending().iter().any(|p| p.contains("ZDS"))
    })
    .await;
    assert_eq!(z.enrolled(), vec!["a".to_string()]);

    // A new agent whose snapshot no longer has `a`: ztunnel releases it.
    let agent = NodeAgent::start(&sock).expect("agent again");
    ambit_e2e::wait_for("snapshot reconciled", || {
        z.enrolled().is_empty() && z.pending().iter().all(|p| !p.contains("ZDS"))
    })
    .await;
    agent
        .add("b", info("b"), netns_path("b"))
        .expect("add b again");
    assert_eq!(z.enrolled(), vec!["b".to_string()]);

    z.shutdown();
    drop(agent);
    let _ = client.join();
}
