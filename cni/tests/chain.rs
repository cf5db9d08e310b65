//! `ambit-cni` exactly as a container runtime calls it: the installer
//! chains it after the node's network config (Debian's reference `bridge`
//! with `host-local`) and copies the binary into the plugin directory; the
//! runtime (`ambit_cni::runtime`) loads that conflist and runs it per the
//! CNI spec inside a node namespace, after `loopback`; the node agent's event server answers from the resources it
//! follows and enrols mesh pods into a real ztunnel (eBPF capture) over ZDS.
//! Needs root and `containernetworking-plugins` (in `.ci/deps`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ambit_api::k8s::Resources;
use ambit_api::model::{LocalConfig, ProxyState, pod_uid};
use ambit_cni::event::EventServer;
use ambit_cni::runtime::{Attachment, Chain, DEBIAN_PLUGIN_DIR, RuntimeError};
use ambit_cni::spec::codes;
use ambit_e2e::netns::TestNetns;
use ambit_hbone::ca::CertificateSigner;
use ambit_node_agent::cni::CniEnroller;
use ambit_node_agent::zds::NodeAgent;
use serde_json::json;

const RESOURCES: &str = "\
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
metadata: {name: a, namespace: demo}
spec: {serviceAccountName: sa-a, containers: [{name: app, image: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: plain}
spec: {containers: [{name: app, image: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: demo}
spec: {containers: [{name: app, image: app}]}
";

fn attachment(netns: &TestNetns, ns: &str, name: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: format!("sandbox-{ns}-{name}"),
        netns: PathBuf::from(format!("/run/netns/{}", netns.name())),
        ifname: ifname.into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), ns.into()),
            ("K8S_POD_NAME".into(), name.into()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".into(),
                format!("sandbox-{ns}-{name}"),
            ),
        ],
    }
}

fn plugin_dirs() -> Vec<PathBuf> {
    let ours = Path::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    vec![ours, PathBuf::from(DEBIAN_PLUGIN_DIR)]
}

fn plugin_code(e: &RuntimeError) -> Option<(String, u32)> {
    match e {
        RuntimeError::Plugin { plugin, error, .. } => Some((plugin.clone(), error.code)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_chain_enrols_mesh_pods_through_the_node_agent() {
    ambit_e2e::init_tracing();
    ambit_e2e::netns::require_root();
    assert!(
        ambit_cni::runtime::has_plugins(
            Path::new(DEBIAN_PLUGIN_DIR),
            &["bridge", "host-local", "loopback"]
        ),
        "needs Debian's containernetworking-plugins in {DEBIAN_PLUGIN_DIR} (apt-get install containernetworking-plugins; .ci/deps does)"
    );
    let node = TestNetns::new("cni-node");
    let pod_a = TestNetns::new("cni-a");
    let pod_b = TestNetns::new("cni-b");
    let pod_c = TestNetns::new("cni-c");
    let pod_d = TestNetns::new("cni-d");
    let pod_k = TestNetns::new("cni-k");
    let scratch = std::env::temp_dir().join(format!("ambit-cni-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch");
    let cni_sock = scratch.join("cni.sock");
    let zds_sock = scratch.join("zds.sock");

    // ztunnel knows a's workload (its IP is host-local's first address).
    let state_yaml = format!(
        "workloads:\n- {{uid: \"{}\", name: a, namespace: demo, serviceAccount: sa-a, workloadIps: [\"10.77.0.10\"], protocol: HBONE, node: node1, services: {{}}}}\n",
        pod_uid("demo", "a")
    );
    let state =
        ProxyState::from_config(&LocalConfig::parse(&state_yaml, "cni state").expect("state"));
    let signer: Arc<dyn CertificateSigner> =
        Arc::new(ambit_e2e::pki::root("cluster.local", "root"));
    let z = Arc::new(ambit_e2e::local_ztunnel("node1", signer, state));
    let agent = Arc::new(NodeAgent::start(&zds_sock).expect("ZDS agent"));
    let zds = ztunnel::zds::run_client(
        z.clone(),
        zds_sock.clone(),
        tokio::runtime::Handle::current(),
    );
    let mut res = Resources::default();
    res.add_yaml(RESOURCES, "cni-test.yaml").expect("resources");
    let resources = Arc::new(RwLock::new(res));
    let events = EventServer::start(
        &cni_sock,
        Arc::new(CniEnroller::new(resources.clone(), agent.clone())),
    )
    .expect("event server");

    let runtime_ns = Some(node.name().to_string());
    let lo = Chain {
        conflist: json!({"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}),
        plugin_dirs: plugin_dirs(),
        runtime_netns: runtime_ns.clone(),
    };
    // The node's network plugin wrote its config; the installer chains
    // ambit-cni after it and copies the binary where the runtime looks.
    let net_d = scratch.join("net.d");
    let bin_dir = scratch.join("bin");
    std::fs::create_dir_all(&net_d).expect("net.d");
    std::fs::write(
        net_d.join("10-bridge.conf"),
        json!({"cniVersion": "1.0.0", "name": "ambit-test", "type": "bridge",
               "bridge": "ambcni0", "isGateway": true, "ipMasq": false,
               "ipam": {"type": "host-local", "dataDir": scratch.join("ipam"),
                        "ranges": [[{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.10"}]]}})
        .to_string(),
    )
    .expect("primary conf");
    ambit_cni::install::install_binary(Path::new(env!("CARGO_BIN_EXE_ambit-cni")), &bin_dir)
        .expect("install binary");
    let installed = ambit_cni::install::install(
        &net_d,
        &json!({"type": "ambit-cni", "agent_socket": cni_sock, "exclude_namespaces": ["kube-system"]}),
    )
    .expect("install conflist");
    let net = Chain {
        conflist: serde_json::from_str(&std::fs::read_to_string(&installed).expect("read"))
            .expect("conflist"),
        plugin_dirs: vec![bin_dir.clone(), PathBuf::from(DEBIAN_PLUGIN_DIR)],
        runtime_netns: runtime_ns,
    };
    let up = |netns: &TestNetns, ns: &str, name: &str| {
        lo.add(&attachment(netns, ns, name, "lo"))
            .expect("loopback ADD");
        net.add(&attachment(netns, ns, name, "eth0"))
    };

    // VERSION, as a runtime probes it.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_ambit-cni"))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("VERSION");
    let v: serde_json::Value = serde_json::from_slice(&version.stdout).expect("VERSION json");
    assert!(
        v["supportedVersions"]
            .as_array()
            .expect("list")
            .contains(&json!("1.0.0")),
        "{v}"
    );

    // A mesh pod: the chain succeeds only once ztunnel has it, and passes the
    // bridge's result on (the pod's IP from host-local).
    let a = attachment(&pod_a, "demo", "a", "eth0");
    let result_a = up(&pod_a, "demo", "a").expect("ADD demo/a");
    assert_eq!(
        ambit_cni::spec::result_ips(&result_a),
        vec!["10.77.0.10"],
        "{result_a}"
    );
    assert_eq!(z.enrolled(), vec![pod_uid("demo", "a")]);
    net.check(&a, &result_a).expect("CHECK demo/a");

    // A pod outside the mesh: networked, not enrolled.
    let result_b = up(&pod_b, "plain", "b").expect("ADD plain/b");
    assert_eq!(ambit_cni::spec::result_ips(&result_b), vec!["10.77.0.11"]);
    assert_eq!(z.enrolled(), vec![pod_uid("demo", "a")]);

    // A pod the agent does not know: the sandbox fails (the runtime retries),
    // it does not start outside the mesh. The runtime then tears it down.
    let c = attachment(&pod_c, "demo", "c", "eth0");
    let refused = up(&pod_c, "demo", "c").expect_err("unknown pod refused");
    assert_eq!(
        plugin_code(&refused),
        Some(("ambit-cni".into(), ambit_cni::plugin::AGENT_REFUSED)),
        "{refused}"
    );
    net.del(&c, None).expect("DEL after a failed ADD");

    // DEL releases the pod from ztunnel.
    net.del(&a, Some(&result_a)).expect("DEL demo/a");
    assert!(z.enrolled().is_empty(), "{:?}", z.enrolled());

    // The node agent is down: a pod of an ambient namespace cannot start
    // (try again later); kube-system is excluded and still can.
    drop(events);
    let down = up(&pod_d, "demo", "d").expect_err("agent down");
    assert_eq!(
        plugin_code(&down),
        Some(("ambit-cni".into(), codes::TRY_AGAIN_LATER)),
        "{down}"
    );
    net.del(&attachment(&pod_d, "demo", "d", "eth0"), None)
        .expect("DEL demo/d");
    up(&pod_k, "kube-system", "coredns").expect("kube-system passes through");
    // DEL never fails, agent or not.
    net.del(&attachment(&pod_b, "plain", "b", "eth0"), Some(&result_b))
        .expect("DEL with the agent down");

    z.shutdown();
    drop(agent);
    let _ = zds.join();
    let _ = std::fs::remove_dir_all(&scratch);
}
