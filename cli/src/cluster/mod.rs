//! The local cluster: real network namespaces for nodes and pods, pod processes
//! in their own cgroups, a ztunnel per node with eBPF capture, all built from
//! ordinary Kubernetes YAML and torn down on drop.

pub mod agent;
pub mod capture;
pub mod client;
pub mod net;
pub mod process;
pub mod topology;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::model::ProxyState;
use ambit_api::translate::{Finding, expand_deployments, translate};
use ambit_hbone::HboneConfig;
use ambit_hbone::ca::{Authority, CertificateSigner, Validity};
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::PodStatus;
use ztunnel::{Ztunnel, ZtunnelConfig};

use process::{PodCgroup, PodProcess};
use topology::Topology;

/// Namespace names of every local cluster start with this, then the pid.
pub const PREFIX: &str = "ambit-";

/// One pod as placed in the local cluster.
#[derive(Clone, Debug)]
pub struct PlacedPod {
    /// `namespace/name`.
    pub key: String,
    /// Node number.
    pub node: u8,
    /// Pod IP.
    pub ip: std::net::Ipv4Addr,
    /// Its network namespace's name.
    pub netns: String,
    /// Workload uid.
    pub uid: String,
}

/// A running local cluster. Dropping it stops pods, ztunnels and capture and
/// deletes every namespace and cgroup it made.
pub struct LocalCluster {
    processes: Vec<PodProcess>,
    /// One ztunnel per node, by node index - 1.
    pub ztunnels: Vec<Arc<Ztunnel>>,
    admin_tasks: Vec<tokio::task::JoinHandle<()>>,
    agents: Vec<agent::NodeAgent>,
    zds_threads: Vec<std::thread::JoinHandle<()>>,
    /// Network (dropped last).
    pub topology: Topology,
    /// Resources, pods placed.
    pub resources: Resources,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PlacedPod>,
    /// What translation noticed.
    pub findings: Vec<Finding>,
    /// The mesh CA (in-process signing core).
    pub ca: Arc<Authority>,
    run: String,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("run", &self.run)
            .field("pods", &self.pods)
            .finish()
    }
}

/// Fails with a clear message unless running as root.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the local cluster needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN): \
             it creates network namespaces and loads eBPF programs. Run as root."
        );
    }
    Ok(())
}

/// `(namespace, name)` of an object, `default` namespace when unset.
fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn node_of(pod: &k8s_openapi::api::core::v1::Pod, fallback: u8, nodes: u8) -> u8 {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .and_then(|n| n.strip_prefix("node"))
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|n| (1..=nodes).contains(n))
        .unwrap_or(fallback)
}

impl LocalCluster {
    /// Builds the cluster for `resources` on `nodes` nodes and starts everything.
    pub async fn up(mut resources: Resources, nodes: u8) -> anyhow::Result<Self> {
        require_root()?;
        net::sweep_stale(PREFIX);
        let run = format!("{PREFIX}{}", std::process::id());
        let mut topology = Topology::new(&run, nodes).context("building the node network")?;

        // Place pods: spec.nodeName `nodeN` if given, else round-robin.
        let mut pods = BTreeMap::new();
        let mut placed = Vec::new();
        for (i, (source, mut pod)) in expand_deployments(&resources).into_iter().enumerate() {
            let (ns, name) = ns_name(&pod.metadata);
            let node = node_of(&pod, (i as u8 % nodes) + 1, nodes);
            let key = format!("{ns}/{name}");
            let ip = topology
                .add_pod(&key, node)
                .with_context(|| format!("creating pod {key}"))?;
            pod.spec.get_or_insert_with(Default::default).node_name = Some(format!("node{node}"));
            pod.status = Some(PodStatus {
                pod_ip: Some(ip.to_string()),
                ..Default::default()
            });
            let netns = topology
                .pod(&key)
                .map(|p| p.ns.name().to_string())
                .unwrap_or_default();
            pods.insert(
                key.clone(),
                PlacedPod {
                    key,
                    node,
                    ip,
                    netns,
                    uid: format!("Kubernetes//Pod/{ns}/{name}"),
                },
            );
            placed.push((source, pod));
        }
        resources.pods = placed;
        resources.deployments.clear();

        let translation = translate(&resources);
        let ca = Arc::new(
            Authority::new_root(
                "cluster.local",
                "ambit local cluster",
                Validity::starting_now(Duration::from_secs(7 * 86400)),
            )
            .context("creating the mesh CA")?,
        );
        let mut cluster = LocalCluster {
            processes: vec![],
            ztunnels: vec![],
            admin_tasks: vec![],
            agents: vec![],
            zds_threads: vec![],
            topology,
            resources,
            pods,
            findings: translation.findings,
            ca,
            run,
        };
        for n in 1..=nodes {
            let signer: Arc<dyn CertificateSigner> = cluster.ca.clone();
            let z = Ztunnel::new(
                ZtunnelConfig {
                    node: format!("node{n}"),
                    signer,
                    cert_ttl: Duration::from_secs(24 * 3600),
                    hbone: HboneConfig::default(),
                    cgroup_root: None,
                },
                ProxyState::from_config(&translation.config),
            )
            .with_context(|| format!("starting ztunnel on node{n}"))?;
            let z = Arc::new(z);
            let node_ns = cluster.topology.node(n).context("node")?.ns.open()?;
            cluster.admin_tasks.extend(
                ztunnel::admin::start(&z, &node_ns)
                    .with_context(|| format!("ztunnel endpoints on node{n}"))?,
            );
            // Enrolment reaches ztunnel the way it does on a real node: over ZDS
            // from the node agent, with each pod's netns fd.
            let sock = std::path::PathBuf::from(format!(
                "/run/ambit/{}/node{n}/ztunnel.sock",
                cluster.run
            ));
            cluster
                .agents
                .push(agent::NodeAgent::start(&sock).context("starting the node agent")?);
            cluster.zds_threads.push(ztunnel::zds::run_client(
                z.clone(),
                sock,
                tokio::runtime::Handle::current(),
            ));
            cluster.ztunnels.push(z);
        }
        cluster.apply_enrolment()?;
        cluster.start_processes()?;
        Ok(cluster)
    }

    /// Re-translates the resources, pushes the state to every ztunnel and enrols
    /// or releases pods to match (running pods are never restarted).
    pub fn apply_enrolment(&mut self) -> anyhow::Result<()> {
        let translation = translate(&self.resources);
        let state = ProxyState::from_config(&translation.config);
        for z in &self.ztunnels {
            z.update_state(state.clone());
        }
        for w in &translation.config.workloads {
            let Some(pod) = self.pods.values().find(|p| p.uid == w.uid) else {
                continue;
            };
            let node = usize::from(pod.node - 1);
            let enrolled = self.ztunnels[node].enrolled().contains(&w.uid);
            let wanted = w.protocol == ambit_api::model::Protocol::Hbone;
            // Enrolment reaches ztunnel over ZDS from the node agent, with the
            // pod's netns fd, as on a real node.
            let agent = &self.agents[node];
            if wanted && !enrolled {
                let info = ambit_api::zds::WorkloadInfo {
                    name: w.name.clone(),
                    namespace: w.namespace.clone(),
                    service_account: w.service_account.clone(),
                };
                let netns = std::path::PathBuf::from(format!("/run/netns/{}", pod.netns));
                agent
                    .add(&w.uid, info, netns)
                    .map_err(|e| anyhow::anyhow!("enrolling {}: {e}", pod.key))?;
            }
            if !wanted {
                if enrolled {
                    agent
                        .del(&w.uid)
                        .map_err(|e| anyhow::anyhow!("releasing {}: {e}", pod.key))?;
                }
                // Outside the mesh, but still a client of the Service load balancer.
                let netns = ztunnel::netns::Netns::open(format!("/run/netns/{}", pod.netns))?;
                self.ztunnels[node]
                    .balance_only(&netns)
                    .with_context(|| format!("load balancing for {}", pod.key))?;
            }
        }
        self.findings = translation.findings;
        Ok(())
    }

    /// Applies edited resources to the running cluster: namespace labels,
    /// services and policies take effect at once (pods enrol or leave without a
    /// restart). Pods and Deployments are placed at start only; changes to them
    /// are reported, not applied.
    pub fn reload(&mut self, new: Resources) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        let before: std::collections::BTreeSet<String> = self.pods.keys().cloned().collect();
        let after: std::collections::BTreeSet<String> = expand_deployments(&new)
            .iter()
            .map(|(_, p)| {
                let (ns, name) = ns_name(&p.metadata);
                format!("{ns}/{name}")
            })
            .collect();
        for added in after.difference(&before) {
            notes.push(format!("pod {added} is new: restart `ambit up` to run it"));
        }
        for gone in before.difference(&after) {
            notes.push(format!(
                "pod {gone} was removed from the files: it keeps running until `ambit up` restarts"
            ));
        }
        self.resources.namespaces = new.namespaces;
        self.resources.services = new.services;
        self.resources.service_accounts = new.service_accounts;
        self.resources.authorization_policies = new.authorization_policies;
        self.resources.peer_authentications = new.peer_authentications;
        self.apply_enrolment()?;
        Ok(notes)
    }

    /// Sets `istio.io/dataplane-mode` on a namespace (`None` removes it) and
    /// applies the change to running pods.
    pub fn label_namespace(&mut self, namespace: &str, mode: Option<&str>) -> anyhow::Result<()> {
        let ns = self
            .resources
            .namespaces
            .iter_mut()
            .map(|(_, n)| n)
            .find(|n| n.metadata.name.as_deref() == Some(namespace))
            .with_context(|| format!("no namespace {namespace}"))?;
        let labels = ns.metadata.labels.get_or_insert_with(Default::default);
        match mode {
            Some(m) => {
                labels.insert(ambit_api::k8s::DATAPLANE_MODE.into(), m.into());
            }
            None => {
                labels.remove(ambit_api::k8s::DATAPLANE_MODE);
            }
        }
        self.apply_enrolment()
    }

    fn start_processes(&mut self) -> anyhow::Result<()> {
        let cgroot = ambit_ebpf::cgroup2_root().context("finding cgroup v2")?;
        for (_, pod) in &self.resources.pods {
            let (ns, name) = ns_name(&pod.metadata);
            let key = format!("{ns}/{name}");
            let Some(placed) = self.pods.get(&key) else {
                continue;
            };
            let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
                continue;
            };
            let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
            argv.extend(container.args.clone().unwrap_or_default());
            if argv.is_empty() {
                continue; // no command: the pod exists on the network only
            }
            let env = vec![
                ("POD_NAME".to_string(), name.clone()),
                ("POD_NAMESPACE".to_string(), ns.clone()),
                ("POD_IP".to_string(), placed.ip.to_string()),
            ];
            let cg = PodCgroup::create(&cgroot, &self.run, &format!("{ns}_{name}"))
                .with_context(|| format!("cgroup for {key}"))?;
            self.processes
                .push(PodProcess::spawn(&key, &placed.netns, &argv, &env, cg)?);
        }
        Ok(())
    }

    /// `(pod key, pid)` of every running pod process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.pod.clone(), p.pid()))
            .collect()
    }

    /// The placed pod `namespace/name`.
    pub fn pod(&self, key: &str) -> anyhow::Result<&PlacedPod> {
        self.pods.get(key).with_context(|| format!("no pod {key}"))
    }

    /// The ztunnel of node `n`.
    pub fn ztunnel(&self, n: u8) -> &Ztunnel {
        &self.ztunnels[usize::from(n - 1)]
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.processes.clear();
        for t in &self.admin_tasks {
            t.abort();
        }
        for z in &self.ztunnels {
            z.shutdown();
        }
        for t in self.zds_threads.drain(..) {
            let _ = t.join();
        }
        self.agents.clear();
        for z in &self.ztunnels {
            for uid in z.enrolled() {
                let _ = z.remove_pod(&uid);
            }
        }
        self.ztunnels.clear();
        let _ = std::fs::remove_dir_all(format!("/run/ambit/{}", self.run));
    }
}
