//! The local cluster: real network namespaces for nodes and pods, pod processes
//! in their own cgroups, the controller serving xDS and the CA, a ztunnel per
//! node with eBPF capture that takes its state and certificates from it, all
//! built from ordinary Kubernetes YAML and torn down on drop.
//!
//! The cluster plays the API server and kubelet: it places pods (node, IP),
//! starts their processes and hands the placed resources to the controller;
//! the node agent (CNI side) enrols pods over ZDS.

pub mod capture;
pub mod client;
pub mod control;
pub mod info;
pub mod net;
pub mod process;
pub mod topology;
pub mod waypoints;
pub mod ztunnel_process;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::{Resources, Source};
use ambit_api::model::{LocalConfig, ProxyState};
use ambit_api::translate::{Finding, Translation, expand_deployments, translate};
use ambit_hbone::HboneConfig;
use ambit_proxy_core::ca_client::CaClient;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
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
    /// One ztunnel per node, by node index - 1 (in-process mode; empty when
    /// ztunnels run as processes).
    pub ztunnels: Vec<Arc<Ztunnel>>,
    /// One ztunnel process per node, by node index - 1 (process mode).
    pub ztunnel_processes: Vec<ztunnel_process::ZtunnelProcess>,
    admin_tasks: Vec<tokio::task::JoinHandle<()>>,
    xds_tasks: Vec<tokio::task::JoinHandle<()>>,
    agents: Vec<ambit_node_agent::zds::NodeAgent>,
    zds_threads: Vec<std::thread::JoinHandle<()>>,
    /// Network (dropped last).
    pub topology: Topology,
    /// Resources, pods placed.
    pub resources: Resources,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PlacedPod>,
    /// What translation noticed.
    pub findings: Vec<Finding>,
    /// The control plane: controller, CA and node credentials.
    pub control: control::ControlSetup,
    nodes: u8,
    placed_count: usize,
    run: String,
    cert_ttl: Duration,
    /// Waypoints running in-process, by pod key.
    pub waypoints: BTreeMap<String, waypoints::RunningWaypoint>,
    /// The controller's waypoint deployer, with this cluster as its API.
    pub deployer: waypoints::LocalDeployer,
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

/// How a local cluster is started.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Workload certificate lifetime (renewed at half of it).
    pub cert_ttl: Duration,
    /// `Some(executable)`: run each node's ztunnel as its own process
    /// (`ambit ztunnel`, or the `ztunnel` binary when the file is named so;
    /// capture pinned in bpffs) instead of in this one.
    pub ztunnel_exe: Option<std::path::PathBuf>,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            cert_ttl: Duration::from_secs(24 * 3600),
            ztunnel_exe: None,
        }
    }
}

/// Where a local cluster pins the capture of its process ztunnels.
fn pin_root(run: &str) -> std::path::PathBuf {
    std::path::Path::new(ambit_ebpf::pins::PIN_ROOT).join(run)
}

/// Removes pin directories of local clusters whose process is gone.
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir(ambit_ebpf::pins::PIN_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        if net::of_dead_run(PREFIX, &e.file_name().to_string_lossy()) {
            let _ = ambit_ebpf::pins::remove(&e.path());
        }
    }
}

/// How long the cluster waits for every ztunnel to hold a new model.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Does `state` hold exactly the workloads, services and policies of `cfg`?
fn converged(state: &ProxyState, cfg: &LocalConfig) -> bool {
    state.workloads().count() == cfg.workloads.len()
        && state.services().count() == cfg.services.len()
        && state.policies().count() == cfg.policies.len()
        && cfg
            .workloads
            .iter()
            .all(|w| state.workload(&w.uid).is_some_and(|s| **s == *w))
        && cfg
            .policies
            .iter()
            .all(|p| state.policies().any(|s| **s == *p))
}

impl LocalCluster {
    /// Builds the cluster for `resources` on `nodes` nodes and starts everything.
    pub async fn up(resources: Resources, nodes: u8) -> anyhow::Result<Self> {
        Self::up_opts(resources, nodes, UpOptions::default()).await
    }

    /// As [`up`](Self::up), with workload certificates of lifetime `cert_ttl`
    /// (renewed at half of it).
    pub async fn up_with(
        resources: Resources,
        nodes: u8,
        cert_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let opts = UpOptions {
            cert_ttl,
            ..UpOptions::default()
        };
        Self::up_opts(resources, nodes, opts).await
    }

    /// As [`up`](Self::up), with options.
    pub async fn up_opts(
        mut resources: Resources,
        nodes: u8,
        opts: UpOptions,
    ) -> anyhow::Result<Self> {
        let cert_ttl = opts.cert_ttl;
        require_root()?;
        net::sweep_stale(PREFIX);
        sweep_stale_pins();
        let run = format!("{PREFIX}{}", std::process::id());
        let topology = Topology::new(&run, nodes).context("building the node network")?;
        let mut deployer = waypoints::LocalDeployer::default();
        for refused in deployer.apply(&mut resources) {
            tracing::warn!(%refused, "waypoint object not created");
        }
        let wanted = expand_deployments(&resources);
        resources.pods.clear();
        resources.deployments.clear();
        // The controller starts empty; the first publish (after placement)
        // fills it. The CA's trust domain is the mesh config's.
        let trust_domain = ambit_api::translate::mesh::mesh_config(
            &resources,
            &ambit_api::translate::MeshConfig::default(),
        )
        .trust_domain;
        let control =
            control::ControlSetup::start(nodes, &trust_domain, Resources::default()).await?;
        let mut cluster = LocalCluster {
            processes: vec![],
            ztunnels: vec![],
            ztunnel_processes: vec![],
            admin_tasks: vec![],
            xds_tasks: vec![],
            agents: vec![],
            zds_threads: vec![],
            topology,
            resources,
            pods: BTreeMap::new(),
            findings: vec![],
            control,
            nodes,
            placed_count: 0,
            run,
            cert_ttl,
            waypoints: BTreeMap::new(),
            deployer,
        };
        for (source, pod) in wanted {
            cluster.place(source, pod)?;
        }
        for n in 1..=nodes {
            // Enrolment reaches ztunnel the way it does on a real node: over ZDS
            // from the node agent, with each pod's netns fd.
            let node_dir = std::path::PathBuf::from(format!("/run/ambit/{}/node{n}", cluster.run));
            let sock = node_dir.join("ztunnel.sock");
            cluster.agents.push(
                ambit_node_agent::zds::NodeAgent::start(&sock)
                    .context("starting the node agent")?,
            );
            let cp = cluster.control.for_node(n);
            if let Some(exe) = &opts.ztunnel_exe {
                let node_ns = cluster
                    .topology
                    .node(n)
                    .context("node")?
                    .ns
                    .name()
                    .to_string();
                cluster
                    .ztunnel_processes
                    .push(ztunnel_process::ZtunnelProcess::start(
                        ztunnel_process::ZtunnelLaunch {
                            exe: exe.clone(),
                            node: n,
                            control: cp,
                            cert_ttl,
                            zds: sock,
                            pin_dir: pin_root(&cluster.run).join(format!("node{n}")),
                            node_netns: std::path::PathBuf::from(format!("/run/netns/{node_ns}")),
                            log: node_dir.join("ztunnel.log"),
                        },
                    )?);
                continue;
            }
            let certs = CaClient::new(&cp).with_context(|| format!("CA client for node{n}"))?;
            let z = Ztunnel::new(
                ZtunnelConfig {
                    node: format!("node{n}"),
                    certs: Arc::new(certs),
                    cert_ttl,
                    hbone: HboneConfig::default(),
                    cgroup_root: None,
                    pin_dir: None,
                    sockmap_splice: false,
                    ebpf_loader: None,
                },
                ProxyState::default(),
            )
            .with_context(|| format!("starting ztunnel on node{n}"))?;
            let z = Arc::new(z);
            z.set_xds_synced(false);
            cluster.xds_tasks.push(tokio::spawn(ztunnel::xds::run(
                z.clone(),
                cp,
                ambit_proxy_core::xds::NodeInfo {
                    node_name: format!("node{n}"),
                    pod_name: format!("ztunnel-node{n}"),
                    pod_namespace: "istio-system".into(),
                    instance_ip: format!("172.30.0.{n}"),
                },
            )));
            let node_ns = cluster.topology.node(n).context("node")?.ns.open()?;
            cluster.admin_tasks.extend(
                ztunnel::admin::start(&z, &node_ns)
                    .with_context(|| format!("ztunnel endpoints on node{n}"))?,
            );
            cluster.zds_threads.push(ztunnel::zds::run_client(
                z.clone(),
                sock,
                tokio::runtime::Handle::current(),
            ));
            cluster.ztunnels.push(z);
        }
        cluster.start_waypoints()?;
        cluster.apply_enrolment()?;
        cluster.start_processes(None)?;
        Ok(cluster)
    }

    /// Places one pod: node (`spec.nodeName: nodeN`, else round-robin), its
    /// namespace and IP, status filled in as a kubelet would.
    fn place(&mut self, source: Source, mut pod: Pod) -> anyhow::Result<String> {
        let (ns, name) = ns_name(&pod.metadata);
        let fallback = (self.placed_count % usize::from(self.nodes)) as u8 + 1;
        self.placed_count += 1;
        let node = node_of(&pod, fallback, self.nodes);
        let key = format!("{ns}/{name}");
        let ip = self
            .topology
            .add_pod(&key, node)
            .with_context(|| format!("creating pod {key}"))?;
        pod.spec.get_or_insert_with(Default::default).node_name = Some(format!("node{node}"));
        pod.status = Some(PodStatus {
            pod_ip: Some(ip.to_string()),
            ..Default::default()
        });
        let netns = self
            .topology
            .pod(&key)
            .map(|p| p.ns.name().to_string())
            .unwrap_or_default();
        self.pods.insert(
            key.clone(),
            PlacedPod {
                key: key.clone(),
                node,
                ip,
                netns,
                uid: ambit_api::model::pod_uid(&ns, &name),
            },
        );
        self.resources.pods.push((source, pod));
        Ok(key)
    }

    /// Hands the resources to the controller and waits until every ztunnel
    /// holds the resulting state (bounded by [`CONVERGE_TIMEOUT`]).
    fn publish_and_wait(&self, translation: &Translation) -> anyhow::Result<Duration> {
        self.control.publish(self.resources.clone());
        let took = self.wait_for(&translation.config, CONVERGE_TIMEOUT).map_err(|e| {
            anyhow::anyhow!(
                "ztunnels did not receive the new config from the controller within {CONVERGE_TIMEOUT:?}: {e}"
            )
        })?;
        self.wait_waypoints(&translation.l7, CONVERGE_TIMEOUT)?;
        Ok(took)
    }

    /// Starts a waypoint for every placed waypoint pod not yet running one.
    fn start_waypoints(&mut self) -> anyhow::Result<()> {
        for (_, pod) in &self.resources.pods {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let Some(gateway) = labels.get(ambit_api::translate::waypoints::GATEWAY_NAME) else {
                continue;
            };
            let (ns, name) = ns_name(&pod.metadata);
            let key = format!("{ns}/{name}");
            if self.waypoints.contains_key(&key) {
                continue;
            }
            let placed = self.pod(&key)?.clone();
            let service_account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let w = waypoints::RunningWaypoint::start(
                &placed,
                self.control.trust_domain(),
                &ns,
                gateway,
                &service_account,
                // Its own service account's token, as in a cluster: the
                // controller signs only that identity (dedicated mode).
                self.control.for_service_account(&ns, &service_account),
                self.cert_ttl,
            )
            .with_context(|| format!("starting waypoint {key}"))?;
            self.waypoints.insert(key, w);
        }
        Ok(())
    }

    /// Waits until every waypoint holds its part of `l7` (what the current
    /// resources translate to).
    fn wait_waypoints(
        &self,
        l7: &[ambit_api::xds::proto::l7::L7Service],
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        loop {
            let done = self.waypoints.values().all(|r| {
                let w = &r.waypoint;
                let mine: Vec<_> = l7
                    .iter()
                    .filter(|s| s.waypoints.iter().any(|n| n == w.name()))
                    .collect();
                let state = w.state();
                w.is_ready()
                    && state.services().count() == mine.len()
                    && mine.iter().all(|s| {
                        state
                            .by_host(&s.hostname)
                            .is_some_and(|h| h.service() == *s)
                    })
            });
            if done {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!("waypoints did not receive their L7 config within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What each node's ztunnel holds now: the in-process state, or a
    /// process's `/config_dump` (`None` while it does not answer).
    fn node_states(&self) -> Vec<Option<Arc<ProxyState>>> {
        if self.ztunnel_processes.is_empty() {
            return self
                .ztunnels
                .iter()
                .map(|z| Some(z.shared().state()))
                .collect();
        }
        (1..=self.nodes)
            .map(|n| {
                let ns = self.topology.node(n)?.ns.name().to_string();
                ztunnel_process::config_dump(&ns).map(|c| Arc::new(ProxyState::from_config(&c)))
            })
            .collect()
    }

    /// Polls until every ztunnel holds `cfg`; returns how long that took.
    fn wait_for(&self, cfg: &LocalConfig, within: Duration) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        loop {
            let states = self.node_states();
            if states
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| converged(s, cfg)))
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                let Some(Some(state)) = states.into_iter().next() else {
                    bail!("node1's ztunnel did not answer within {within:?}");
                };
                let differing: Vec<String> = cfg
                    .workloads
                    .iter()
                    .filter(|w| state.workload(&w.uid).is_none_or(|s| **s != **w))
                    .map(|w| w.uid.clone())
                    .collect();
                bail!(
                    "ztunnels did not converge within {within:?} (node1 differs on workloads {differing:?}; {} vs {} services, {} vs {} policies)",
                    state.services().count(),
                    cfg.services.len(),
                    state.policies().count(),
                    cfg.policies.len()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Re-translates the resources, has the controller push them to every
    /// ztunnel, and enrols or releases pods to match (running pods are never
    /// restarted). Returns how long the push took to reach every ztunnel.
    pub fn apply_enrolment(&mut self) -> anyhow::Result<Duration> {
        let translation = translate(&self.resources);
        let took = self.publish_and_wait(&translation)?;
        for w in &translation.config.workloads {
            let Some(pod) = self.pods.values().find(|p| p.uid == w.uid) else {
                continue;
            };
            let node = usize::from(pod.node - 1);
            let enrolled = self.agents[node].is_enrolled(&w.uid);
            // A waypoint speaks HBONE itself and is never captured.
            if self.waypoints.contains_key(&pod.key) {
                continue;
            }
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
                let netns =
                    ambit_proxy_core::netns::Netns::open(format!("/run/netns/{}", pod.netns))?;
                self.balance_only(node, &netns)
                    .with_context(|| format!("load balancing for {}", pod.key))?;
            }
        }
        self.findings = translation.findings;
        Ok(took)
    }

    /// Applies edited resources to the running cluster: namespace labels,
    /// services and policies take effect at once (pods enrol or leave without
    /// a restart); new pods (or Deployment replicas) are placed and started,
    /// removed ones are stopped and their namespaces deleted. Returns what
    /// happened to pods.
    pub fn reload(&mut self, mut new: Resources) -> anyhow::Result<Vec<String>> {
        let mut notes = self.deployer.apply(&mut new);
        let wanted = expand_deployments(&new);
        let wanted_keys: std::collections::BTreeSet<String> = wanted
            .iter()
            .map(|(_, p)| {
                let (ns, name) = ns_name(&p.metadata);
                format!("{ns}/{name}")
            })
            .collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !wanted_keys.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.delete_pod(key)?;
            notes.push(format!("pod {key} deleted"));
        }
        let mut added = Vec::new();
        for (source, pod) in wanted {
            let (ns, name) = ns_name(&pod.metadata);
            let key = format!("{ns}/{name}");
            if !self.pods.contains_key(&key) {
                self.place(source, pod)?;
                notes.push(format!("pod {key} created"));
                added.push(key);
            }
        }
        // Everything but pods comes from the files as they are now; the placed
        // pods (with node and IP) stay the cluster's.
        self.resources = Resources {
            pods: std::mem::take(&mut self.resources.pods),
            deployments: vec![],
            ..new
        };
        self.start_waypoints()?;
        self.apply_enrolment()?;
        if !added.is_empty() {
            self.start_processes(Some(&added))?;
        }
        Ok(notes)
    }

    /// Stops the controller (every xDS stream ends; ztunnels keep their
    /// last config and certificates).
    pub async fn stop_controller(&mut self) {
        self.control.stop_controller().await;
    }

    /// Starts the controller again on the same address, root and tokens.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        self.control.start_controller().await
    }

    /// Replaces the AuthorizationPolicies and hands the resources to the
    /// controller without waiting for ztunnels (it may be down).
    pub fn set_policies_no_wait(&mut self, new: Resources) {
        self.resources.authorization_policies = new.authorization_policies;
        self.control.publish(self.resources.clone());
    }

    /// Waits until every ztunnel holds the state the current resources
    /// translate to; returns how long that took.
    pub fn wait_converged(&self, within: Duration) -> anyhow::Result<Duration> {
        self.wait_for(&translate(&self.resources).config, within)
    }

    /// Stops and removes pod `key`: released from the mesh, process killed,
    /// namespace deleted, and gone from the controller's model.
    pub fn delete_pod(&mut self, key: &str) -> anyhow::Result<()> {
        let placed = self.pod(key)?.clone();
        let node = usize::from(placed.node - 1);
        if self.agents[node].is_enrolled(&placed.uid) {
            self.agents[node]
                .del(&placed.uid)
                .map_err(|e| anyhow::anyhow!("releasing {key}: {e}"))?;
        }
        self.processes.retain(|p| p.pod != key);
        self.waypoints.remove(key);
        self.resources.pods.retain(|(_, p)| {
            let (ns, name) = ns_name(&p.metadata);
            format!("{ns}/{name}") != key
        });
        self.pods.remove(key);
        self.topology.pods.retain(|p| p.name != key);
        Ok(())
    }

    /// Sets `istio.io/dataplane-mode` on a namespace (`None` removes it) and
    /// applies the change to running pods; returns how long the controller's
    /// push took to reach every ztunnel.
    pub fn label_namespace(
        &mut self,
        namespace: &str,
        mode: Option<&str>,
    ) -> anyhow::Result<Duration> {
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

    /// Starts the processes of the placed pods (`only`: just these keys).
    fn start_processes(&mut self, only: Option<&[String]>) -> anyhow::Result<()> {
        let cgroot = ambit_ebpf::cgroup2_root().context("finding cgroup v2")?;
        for (_, pod) in &self.resources.pods {
            let (ns, name) = ns_name(&pod.metadata);
            let key = format!("{ns}/{name}");
            if only.is_some_and(|o| !o.contains(&key)) {
                continue;
            }
            let Some(placed) = self.pods.get(&key) else {
                continue;
            };
            // A waypoint pod's proxy runs in this process (`waypoints`),
            // not as its container's command.
            if self.waypoints.contains_key(&key) {
                continue;
            }
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

    /// The in-process ztunnel of node `n` (panics in process mode: use
    /// [`ztunnel_process`](Self::ztunnel_process)).
    pub fn ztunnel(&self, n: u8) -> &Ztunnel {
        self.ztunnels
            .get(usize::from(n - 1))
            .expect("in-process ztunnel (the cluster runs ztunnels as processes)")
    }

    /// The ztunnel process of node `n` (process mode).
    pub fn ztunnel_process(&mut self, n: u8) -> Option<&mut ztunnel_process::ZtunnelProcess> {
        self.ztunnel_processes
            .get_mut(usize::from(n.checked_sub(1)?))
    }

    /// What other `ambit` commands need to reach this cluster's proxies
    /// ([`info::ClusterInfo`]); `config_dir` is the directory it follows.
    pub fn info(&self, config_dir: Option<&std::path::Path>) -> info::ClusterInfo {
        let waypoint_of = |key: &str| {
            self.waypoints
                .get(key)
                .map(|w| w.waypoint.name().to_string())
        };
        info::ClusterInfo {
            run: self.run.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_dir: config_dir.map(std::path::Path::to_path_buf),
            nodes: (1..=self.nodes)
                .map(|n| {
                    let on = |port| std::net::SocketAddr::from(([172, 30, 0, n], port));
                    info::NodeInfo {
                        name: format!("node{n}"),
                        netns: self
                            .topology
                            .node(n)
                            .map(|node| node.ns.name().to_string())
                            .unwrap_or_default(),
                        admin: std::net::SocketAddr::from(([127, 0, 0, 1], 15000)),
                        metrics: on(15020),
                        readiness: on(15021),
                    }
                })
                .collect(),
            pods: self
                .pods
                .values()
                .map(|p| info::PodInfo {
                    key: p.key.clone(),
                    node: p.node,
                    ip: p.ip,
                    netns: p.netns.clone(),
                    uid: p.uid.clone(),
                    waypoint_for: waypoint_of(&p.key),
                    ambient: self.is_enrolled(p.node, &p.uid),
                })
                .collect(),
            gateways: self
                .resources
                .gateways
                .iter()
                .filter_map(|(_, g)| {
                    let mut v = serde_json::to_value(g).ok()?;
                    let (ns, name) = ns_name(&g.metadata);
                    let status = self
                        .deployer
                        .statuses()
                        .iter()
                        .find(|(r, _)| r.namespace == ns && r.name == name)
                        .map(|(_, s)| s.clone());
                    if let (Some(map), Some(status)) = (v.as_object_mut(), status) {
                        map.insert("status".into(), status);
                    }
                    Some(v)
                })
                .collect(),
        }
    }

    /// Writes [`Self::info`] into the run directory (`/run/ambit/<run>/cluster.json`),
    /// where `ambit ztunnel-config`, `ambit proxy-status` and the others find it.
    pub fn publish_info(
        &self,
        config_dir: Option<&std::path::Path>,
    ) -> std::io::Result<std::path::PathBuf> {
        self.info(config_dir)
            .write(&std::path::Path::new(info::RUN_ROOT).join(&self.run))
    }

    /// Is the pod `uid` on node `n` enrolled in the mesh?
    pub fn is_enrolled(&self, n: u8, uid: &str) -> bool {
        usize::from(n)
            .checked_sub(1)
            .and_then(|i| self.agents.get(i))
            .is_some_and(|a| a.is_enrolled(uid))
    }

    /// Registers a pod outside the mesh with node `node`'s (0-based) Service
    /// load balancer: through the ztunnel in-process, or in the pinned maps a
    /// ztunnel process shares.
    fn balance_only(
        &self,
        node: usize,
        netns: &ambit_proxy_core::netns::Netns,
    ) -> anyhow::Result<()> {
        if let Some(z) = self.ztunnels.get(node) {
            return Ok(z.balance_only(netns)?);
        }
        let p = self
            .ztunnel_processes
            .get(node)
            .context("no ztunnel on that node")?;
        let cookie = netns.cookie()?;
        // The process loads (and pins) capture at start; wait for the map.
        let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
        loop {
            match ambit_ebpf::balance_only_pinned(p.pin_dir(), cookie) {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.processes.clear();
        self.waypoints.clear();
        for t in self.admin_tasks.iter().chain(&self.xds_tasks) {
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
        self.ztunnel_processes.clear();
        let _ = ambit_ebpf::pins::remove(&pin_root(&self.run));
        let _ = std::fs::remove_dir_all(std::path::Path::new(info::RUN_ROOT).join(&self.run));
    }
}
