//! Enrolment from the API's view, on real namespaces and a real ztunnel:
//! labelling a namespace `istio.io/dataplane-mode=ambient` enrols its running
//! pods (found by IP among the node's namespaces), removing the label
//! releases them, a pod's own `none` opts it out, and pods of other nodes are
//! not this agent's. Needs root.

use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::model::{LocalConfig, ProxyState, pod_uid};
use ambit_e2e::netns::{TestNetns, ip_in};
use ambit_hbone::ca::CertificateSigner;
use ambit_node_agent::netns_lookup;
use ambit_node_agent::reconcile::Reconciler;
use ambit_node_agent::zds::NodeAgent;
use ztunnel::Ztunnel;

fn resources(namespace_label: &str, pod_label: &str) -> Resources {
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo, labels: {{{namespace_label}}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: old, namespace: demo, labels: {{{pod_label}}}}}\n\
         spec: {{nodeName: node1, serviceAccountName: sa-old, containers: [{{name: app, image: app}}]}}\n\
         status: {{phase: Running, podIP: 10.79.1.5}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: elsewhere, namespace: demo}}\n\
         spec: {{nodeName: node2, containers: [{{name: app, image: app}}]}}\n\
         status: {{phase: Running, podIP: 10.79.1.6}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: lost, namespace: demo, labels: {{{pod_label}}}}}\n\
         spec: {{nodeName: node1, containers: [{{name: app, image: app}}]}}\n\
         status: {{phase: Running, podIP: 10.79.1.99}}\n"
    );
    let mut r = Resources::default();
    r.add_yaml(&yaml, "reconcile-test.yaml").expect("resources");
    r
}

/// The tests share one pod address: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pod that was running before the agent: its own namespace holding `ip`.
fn running_pod(tag: &str, ip: &str) -> TestNetns {
    let pod = TestNetns::new(tag);
    ip_in(
        pod.name(),
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ],
    );
    ip_in(
        pod.name(),
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    );
    ip_in(pod.name(), &["link", "set", "peer0", "up"]);
    ip_in(pod.name(), &["link", "set", "eth0", "up"]);
    pod
}

/// A ztunnel on node1 whose state knows demo/old at 10.79.1.5.
fn ztunnel_knowing_old() -> Arc<Ztunnel> {
    let old = pod_uid("demo", "old");
    let state_yaml = format!(
        "workloads:\n- {{uid: \"{old}\", name: old, namespace: demo, serviceAccount: sa-old, workloadIps: [\"10.79.1.5\"], protocol: HBONE, node: node1, services: {{}}}}\n"
    );
    let state = ProxyState::from_config(&LocalConfig::parse(&state_yaml, "state").expect("state"));
    let signer: Arc<dyn CertificateSigner> =
        Arc::new(ambit_e2e::pki::root("cluster.local", "root"));
    Arc::new(ambit_e2e::local_ztunnel("node1", signer, state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_labels_enrol_and_release_running_pods() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let _serial = SERIAL.lock().await;
    let _pod = running_pod("reconcile-old", "10.79.1.5");
    let old = pod_uid("demo", "old");
    let z = ztunnel_knowing_old();
    let sock = std::env::temp_dir().join(format!("ambit-reconcile-{}.sock", std::process::id()));
    let agent = Arc::new(NodeAgent::start(&sock).expect("agent"));
    let zds = ztunnel::zds::run_client(z.clone(), sock.clone(), tokio::runtime::Handle::current());
    let reconciler = Reconciler::new("node1", agent.clone(), Arc::new(netns_lookup::find));

    // Not in the mesh yet.
    let pass = reconciler.reconcile(&resources("", ""));
    assert_eq!(pass, Default::default());
    assert!(z.enrolled().is_empty());

    // `kubectl label namespace demo istio.io/dataplane-mode=ambient`.
    let pass = reconciler.reconcile(&resources("istio.io/dataplane-mode: ambient", ""));
    assert_eq!(pass.enrolled, vec![old.clone()], "{pass:?}");
    // ztunnel has it: at once when its ZDS connection was up, else with the
    // snapshot it gets when it connects (the agent keeps what it added while
    // ztunnel was away), so wait rather than race the connect.
    ambit_e2e::wait_for("ztunnel has it", || z.enrolled() == vec![old.clone()]).await;
    // The pod whose IP no namespace here holds is reported, not guessed.
    assert_eq!(pass.failed.len(), 1, "{pass:?}");
    assert!(pass.failed[0].0.ends_with("/lost") && pass.failed[0].1.contains("10.79.1.99"));
    // Idempotent.
    let again = reconciler.reconcile(&resources("istio.io/dataplane-mode: ambient", ""));
    assert!(again.enrolled.is_empty() && again.released.is_empty());

    // The label goes: released.
    let pass = reconciler.reconcile(&resources("", ""));
    assert_eq!(pass.released, vec![old.clone()]);
    ambit_e2e::wait_for("ztunnel released it", || z.enrolled().is_empty()).await;

    // The pod opts out in an ambient namespace.
    let pass = reconciler.reconcile(&resources(
        "istio.io/dataplane-mode: ambient",
        "istio.io/dataplane-mode: none",
    ));
    assert!(pass.enrolled.is_empty(), "{pass:?}");
    assert!(z.enrolled().is_empty());

    z.shutdown();
    drop(reconciler);
    drop(agent);
    let _ = zds.join();
}

/// The agent process's loop over a changing source (the binary gives it the
/// Kubernetes watch; `controller`'s tests cover that against a fake API
/// server): each snapshot reconciles, and the CNI event server answers from
/// the same view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_its_source() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    let _serial = SERIAL.lock().await;
    let _pod = running_pod("follow-old", "10.79.1.5");
    let old = pod_uid("demo", "old");
    let z = ztunnel_knowing_old();
    let dir = std::env::temp_dir().join(format!("ambit-agent-run-{}", std::process::id()));
    let config = ambit_node_agent::run::AgentConfig {
        node: "node1".into(),
        zds_socket: dir.join("zds.sock"),
        cni_socket: dir.join("cni.sock"),
    };
    let agent = Arc::new(ambit_node_agent::run::Agent::start(&config, None).expect("agent"));
    let zds = ztunnel::zds::run_client(
        z.clone(),
        config.zds_socket.clone(),
        tokio::runtime::Handle::current(),
    );
    let (source, publish) = controller::source::MemorySource::new(resources("", ""));
    let following = tokio::spawn({
        let agent = agent.clone();
        async move { ambit_node_agent::run::follow(&agent, Box::new(source)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(z.enrolled().is_empty());
    publish.send_replace(resources("istio.io/dataplane-mode: ambient", ""));
    ambit_e2e::wait_for("enrolled from the source", || {
        z.enrolled() == vec![old.clone()]
    })
    .await;
    // The CNI side sees the same view: a CHECK for the pod passes.
    let reply = ambit_cni::event::send(
        &config.cni_socket,
        &ambit_cni::event::PodEvent {
            command: "CHECK".into(),
            container_id: "x".into(),
            netns: String::new(),
            pod_namespace: "demo".into(),
            pod_name: "old".into(),
            ips: vec!["10.79.1.5".into()],
        },
    )
    .expect("event");
    assert!(reply.ok && reply.enrolled, "{reply:?}");
    publish.send_replace(resources("", ""));
    ambit_e2e::wait_for("released", || z.enrolled().is_empty()).await;

    following.abort();
    z.shutdown();
    drop(agent);
    let _ = zds.join();
    let _ = std::fs::remove_dir_all(&dir);
}
