//! `ambit`: the one command users type.

mod analyze;
mod hbone_demo;

use std::path::PathBuf;

use ambit_api::k8s::Resources;
use ambit_cluster::LocalCluster;
use clap::{Parser, Subcommand};

/// Ambit: a sidecarless, ambient-style service mesh.
#[derive(Parser, Debug)]
#[command(name = "ambit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring up a 2-node local cluster, show mesh traffic, a denial, and tear down.
    Demo,
    /// Run a local cluster from a directory of Kubernetes YAML until Ctrl-C.
    Up {
        /// Directory of YAML files.
        #[arg(short = 'f', long = "file")]
        dir: PathBuf,
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Run each node's ztunnel as its own process (`ambit ztunnel`, capture
        /// pinned in bpffs): kill -9 it and start it again, measure its memory.
        #[arg(long)]
        ztunnel_processes: bool,
    },
    /// Validate a directory of Kubernetes/Istio YAML, or without `-f` the
    /// objects of the Kubernetes cluster (KUBECONFIG, `--context`), the way
    /// the controller will (exit 79 on errors, as `istioctl analyze`).
    Analyze {
        /// Directory of YAML files (default: the Kubernetes cluster).
        #[arg(short = 'f', long = "file")]
        dir: Option<PathBuf>,
        /// Kubeconfig context (without `-f`).
        #[arg(long)]
        context: Option<String>,
        /// Output format (istioctl's: `log`, `json`, `yaml`).
        #[arg(short = 'o', long = "output", value_enum, default_value = "log")]
        output: analyze::Output,
    },
    /// Declare waypoints (Gateway `istio-waypoint`), as `istioctl waypoint`.
    Waypoint {
        #[command(subcommand)]
        action: WaypointAction,
    },
    /// The built-in test app (HTTP/1.1 and TCP echo; reports who served).
    Echo(ambit::echo::EchoArgs),
    /// Open an HBONE tunnel between two local endpoints and report what was verified.
    HboneDemo(hbone_demo::DemoArgs),
    /// Run one node's ztunnel, configured by Istio ztunnel's environment
    /// variables (what `ambit up --ztunnel-processes` starts per node).
    Ztunnel,
    /// Install Ambit into the cluster (KUBECONFIG or in-cluster): the chart
    /// in deploy/helm/ambit with your values, by server-side apply.
    /// `--dry-run` prints the manifests instead.
    Install(ambit::install::InstallArgs),
    /// What a ztunnel holds (its `/config_dump`), as `istioctl ztunnel-config`:
    /// workloads, services, policies, certificates (or `all`).
    ZtunnelConfig {
        /// What to show.
        #[arg(value_enum)]
        section: ambit::inspect::ZtunnelSection,
        /// Which node's ztunnel (default: the first).
        #[arg(long)]
        node: Option<String>,
        /// Only what belongs to this namespace.
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[command(flatten)]
        at: ClusterArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: ambit::inspect::Output,
    },
    /// Every proxy of the cluster (ztunnels, waypoints): ready, what config
    /// it holds, its version; as `istioctl proxy-status`.
    ProxyStatus {
        #[command(flatten)]
        at: ClusterArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: ambit::inspect::Output,
    },
    /// A web view of the running local cluster, as Kiali shows it: the live
    /// service graph (rate, errors, p99, mTLS), each workload's policies, the
    /// config findings.
    Dashboard(ambit::dashboard::DashboardArgs),
    /// The client's version and, with a running cluster, each proxy's.
    Version {
        #[command(flatten)]
        at: ClusterArgs,
    },
    /// Experimental commands.
    X {
        #[command(subcommand)]
        action: XAction,
    },
    /// Print a shell completion script, e.g.
    /// `ambit completion bash > /etc/bash_completion.d/ambit`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum XAction {
    /// Check that this node can run Ambit (kernel, cgroup v2, bpffs, BTF,
    /// capabilities, eBPF programs loading) and say what is missing.
    Precheck(ambit::precheck::PrecheckArgs),
    /// Why a request from a pod to a destination is delivered or refused,
    /// hop by hop (source ztunnel, waypoint, destination ztunnel), naming
    /// the policy and rule that decide it.
    Explain(ambit::explain::ExplainArgs),
    /// Which policies apply to a pod and where they are enforced (ztunnel
    /// L4, waypoint L7), as `istioctl x authz check`.
    Authz {
        #[command(subcommand)]
        action: AuthzAction,
    },
    /// A small OpenTelemetry collector: receives OTLP/gRPC spans and
    /// prints each as a JSON line (point a mesh config extensionProvider at it).
    TraceSink(ambit::trace_sink::TraceSinkArgs),
}

/// Which cluster an inspection command reads.
#[derive(clap::Args, Debug, Clone)]
struct ClusterArgs {
    /// Which local cluster (`ambit-<pid>`; default: the newest).
    #[arg(long)]
    run: Option<String>,
    /// The Kubernetes cluster of KUBECONFIG (proxies reached by port-forward).
    #[arg(long)]
    kube: bool,
    /// Kubeconfig context (implies --kube).
    #[arg(long)]
    context: Option<String>,
}

impl ClusterArgs {
    async fn cluster(&self) -> anyhow::Result<ambit::proxies::Cluster> {
        ambit::proxies::Cluster::choose(self.run.as_deref(), self.kube, self.context.as_deref())
            .await
    }
}

#[derive(Subcommand, Debug)]
enum AuthzAction {
    /// The policies that apply to pod `NAMESPACE/POD` (local cluster, or
    /// Kubernetes with `--kube`/`--context`).
    Check {
        /// The pod, `namespace/name`.
        pod: String,
        #[command(flatten)]
        at: ClusterArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: ambit::inspect::Output,
    },
}

#[derive(Subcommand, Debug)]
enum WaypointAction {
    /// Print the Gateway YAML.
    Generate(ambit::waypoint_cmd::WaypointArgs),
    /// Write the Gateway into the directory `ambit up -f DIR` watches.
    Apply {
        /// The directory.
        #[arg(short = 'f', long = "file")]
        dir: PathBuf,
        #[command(flatten)]
        args: ambit::waypoint_cmd::WaypointArgs,
    },
    /// The waypoints (Gateways of class istio-waypoint) and whether each is
    /// programmed: of the running local cluster, or with `--context`/`--kube`
    /// of the Kubernetes cluster.
    List {
        #[command(flatten)]
        at: ambit::waypoint_cmd::Where,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: ambit::inspect::Output,
    },
    /// One waypoint's Programmed condition (reason and message).
    Status {
        /// The waypoint (Gateway) name.
        #[arg(default_value = "waypoint")]
        name: String,
        #[command(flatten)]
        at: ambit::waypoint_cmd::Where,
    },
    /// Delete a waypoint: the Gateway in the Kubernetes cluster, or its file
    /// in the local cluster's directory (as `waypoint apply` wrote it).
    Delete {
        /// The waypoint (Gateway) name.
        name: String,
        #[command(flatten)]
        at: ambit::waypoint_cmd::Where,
    },
}

fn main() -> anyhow::Result<()> {
    // `ambit ztunnel` runs itself as the eBPF loader child (see
    // `ZtunnelConfig::ebpf_loader`): that child does its work and exits here.
    ambit_ebpf::loader::serve_if_asked();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Ztunnel) {
        ztunnel::standalone::tune_allocator();
        // Exactly the `ztunnel` binary's logging (`RUST_LOG` as per-target
        // levels, default `info`), on stderr like the rest of the CLI.
        ambit_proxy_core::environment::init_logging(std::io::stderr, tracing::Level::INFO);
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let workers = if matches!(cli.command, Command::Ztunnel) {
        ztunnel::standalone::worker_threads()
    } else {
        2
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "ambit", &mut std::io::stdout());
            Ok(())
        }
        Command::Demo => rt.block_on(ambit::demo::run()),
        Command::Up {
            dir,
            nodes,
            ztunnel_processes,
        } => rt.block_on(up(dir, nodes, ztunnel_processes)),
        Command::Analyze {
            dir,
            context,
            output,
        } => {
            let code = match dir {
                Some(dir) => analyze::run(&dir, output)?,
                None => rt.block_on(async {
                    let client = ambit::live::client(context.as_deref()).await?;
                    let (resources, errors) = ambit::live::snapshot(client).await?;
                    let findings = analyze::analyze_live(&resources, &errors);
                    analyze::report(&findings, output, "the cluster")
                })?,
            };
            std::process::exit(code)
        }
        Command::Waypoint { action } => match action {
            WaypointAction::Generate(args) => {
                print!("{}", ambit::waypoint_cmd::generate(&args));
                Ok(())
            }
            WaypointAction::Apply { dir, args } => {
                for f in ambit::waypoint_cmd::apply(&dir, &args)? {
                    println!("wrote {}", f.display());
                }
                Ok(())
            }
            WaypointAction::List { at, output } => rt.block_on(async {
                let rows = ambit::waypoint_cmd::list(&at).await?;
                match output {
                    ambit::inspect::Output::Table => {
                        print!("{}", ambit::live::waypoint_table(&rows))
                    }
                    other => print!(
                        "{}",
                        ambit::inspect::render(&serde_json::to_value(&rows)?, other)?
                    ),
                }
                anyhow::Ok(())
            }),
            WaypointAction::Status { name, at } => rt.block_on(async {
                let rows = ambit::waypoint_cmd::list(&at).await?;
                let ns = at.namespace_or_default();
                let row = rows
                    .iter()
                    .find(|r| r.name == name && r.namespace == ns)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "no waypoint {ns}/{name}: `ambit waypoint list -A` lists them"
                        )
                    })?;
                println!(
                    "waypoint {}/{}: Programmed={} {}",
                    row.namespace, row.name, row.programmed, row.message
                );
                if row.programmed != "True" {
                    std::process::exit(1);
                }
                anyhow::Ok(())
            }),
            WaypointAction::Delete { name, at } => rt.block_on(async {
                println!("{}", ambit::waypoint_cmd::delete(&at, &name).await?);
                anyhow::Ok(())
            }),
        },
        Command::Install(args) => {
            let manifests = ambit::install::render(&args)?;
            if args.dry_run {
                print!("{manifests}");
                return Ok(());
            }
            rt.block_on(async {
                let client = kube::Client::try_default().await.map_err(|e| {
                    anyhow::anyhow!("connecting to Kubernetes (KUBECONFIG or in-cluster): {e}; `ambit install --dry-run` prints the manifests without a cluster")
                })?;
                for object in ambit::install::apply(client, &manifests).await? {
                    println!("applied {object}");
                }
                anyhow::Ok(())
            })
        }
        Command::X { action } => match action {
            XAction::Precheck(args) => {
                let report = ambit::precheck::run(&args);
                print!("{}", report.table());
                std::process::exit(if report.ok() { 0 } else { 1 })
            }
            XAction::TraceSink(args) => rt.block_on(ambit::trace_sink::run(args)),
            XAction::Authz {
                action: AuthzAction::Check { pod, at, output },
            } => rt.block_on(async {
                let cluster = at.cluster().await?;
                let report = ambit::dashboard::authz_check(&cluster, &pod).await?;
                match output {
                    ambit::inspect::Output::Table => {
                        print!("{}", ambit::dashboard::authz_table(&report))
                    }
                    other => print!("{}", ambit::inspect::render(&report, other)?),
                }
                anyhow::Ok(())
            }),
            XAction::Explain(args) => {
                let listed = if args.kube || args.context.is_some() {
                    Some(rt.block_on(async {
                        let client = ambit::live::client(args.context.as_deref()).await?;
                        let (resources, errors) = ambit::live::snapshot(client).await?;
                        for e in &errors {
                            eprintln!("not read (left out): {e}");
                        }
                        anyhow::Ok(resources)
                    })?)
                } else {
                    None
                };
                let e = ambit::explain::explain_in(&args, listed)?;
                print!("{}", e.text());
                std::process::exit(if e.delivered { 0 } else { 1 })
            }
        },
        Command::ZtunnelConfig {
            section,
            node,
            namespace,
            at,
            output,
        } => rt.block_on(async {
            let cluster = at.cluster().await?;
            let dump = ambit::inspect::ztunnel_dump_on(&cluster, node.as_deref()).await?;
            print!(
                "{}",
                ambit::inspect::ztunnel_section(&dump, section, output, namespace.as_deref())?
            );
            anyhow::Ok(())
        }),
        Command::ProxyStatus { at, output } => rt.block_on(async {
            let cluster = at.cluster().await?;
            let rows = ambit::inspect::proxy_status(&cluster).await?;
            match output {
                ambit::inspect::Output::Table => {
                    print!("{}", ambit::inspect::proxy_status_table(&rows))
                }
                other => print!(
                    "{}",
                    ambit::inspect::render(&serde_json::to_value(&rows)?, other)?
                ),
            }
            anyhow::Ok(())
        }),
        Command::Dashboard(args) => rt.block_on(ambit::dashboard::run(args)),
        Command::Version { at } => {
            println!("client version: {}", env!("CARGO_PKG_VERSION"));
            let Ok(cluster) = rt.block_on(at.cluster()) else {
                println!(
                    "no cluster to read (data plane versions need `ambit up` running, or --kube)"
                );
                return Ok(());
            };
            for line in rt.block_on(ambit::proxies::control_plane_versions(&cluster))? {
                println!("{line}");
            }
            for p in rt.block_on(ambit::inspect::proxy_status(&cluster))? {
                println!("{} version: {}", p.name, p.version);
            }
            Ok(())
        }
        Command::Echo(args) => rt.block_on(ambit::echo::run(args)),
        Command::HboneDemo(args) => rt.block_on(hbone_demo::run(args)),
        Command::Ztunnel => rt.block_on(ztunnel::standalone::run()),
    }
}

/// A Gateway status's `Programmed` condition as one line, as `istioctl
/// waypoint status` shows it: status, reason, message.
fn condition_line(status: &serde_json::Value) -> String {
    ambit::live::programmed(status)
        .map(|(status, message)| format!("Programmed={status} {message}"))
        .unwrap_or_else(|| "no status".into())
}

async fn up(dir: PathBuf, nodes: u8, ztunnel_processes: bool) -> anyhow::Result<()> {
    let res = Resources::from_dir(&dir)?;
    let opts = ambit_cluster::UpOptions {
        ztunnel_exe: if ztunnel_processes {
            Some(std::env::current_exe()?)
        } else {
            None
        },
        ..Default::default()
    };
    let mut cluster = LocalCluster::up_opts(res, nodes, opts).await?;
    let info = cluster.publish_info(Some(&std::fs::canonicalize(&dir)?))?;
    for p in cluster.pods.values() {
        let mesh = cluster.is_enrolled(p.node, &p.uid);
        println!(
            "pod {:<24} node{} {:<12} {}",
            p.key,
            p.node,
            p.ip,
            if cluster.waypoints.contains_key(&p.key) {
                "waypoint (HBONE :15008, readiness :15021, metrics :15020)"
            } else if mesh {
                "ambient"
            } else {
                "-"
            }
        );
    }
    for (gateway, status) in cluster.deployer.statuses() {
        println!(
            "waypoint {}/{}: {}",
            gateway.namespace,
            gateway.name,
            condition_line(status)
        );
    }
    for f in &cluster.findings {
        println!("note: {f}");
    }
    for n in 1..=nodes {
        if let Some(z) = cluster.ztunnel_process(n) {
            println!(
                "ztunnel node{n}: pid {}, log {}, capture pinned at {}",
                z.pid().unwrap_or_default(),
                z.log().display(),
                z.pin_dir().display()
            );
        }
        println!(
            "ztunnel node{n}: metrics 172.30.0.{n}:15020/metrics, readiness :15021/healthz/ready, \
             admin 127.0.0.1:15000/config_dump (inside netns ambit-{}-node{n})",
            std::process::id()
        );
    }
    println!(
        "local cluster up ({}); `ambit proxy-status`, `ambit ztunnel-config workloads` and \
         `ambit x explain` read it; watching {} for changes; Ctrl-C to tear down",
        info.display(),
        dir.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The controller's directory source watches the files: a file that stops
    // parsing is reported and keeps its last good contents.
    let (tx, mut changes) = tokio::sync::mpsc::channel(4);
    let watcher = tokio::spawn(controller::source::ConfigSource::run(
        Box::new(controller::source::DirSource::new(
            &dir,
            std::time::Duration::from_millis(200),
        )),
        tx,
    ));
    let _first = changes.recv().await; // the state we started from
    // Like the DaemonSet controller: a ztunnel process that died is started
    // again (its pinned capture kept the node's pods failing closed meanwhile).
    let mut supervise = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = supervise.tick() => {
                for n in 1..=nodes {
                    let Some(z) = cluster.ztunnel_process(n) else { continue };
                    if z.is_running() {
                        continue;
                    }
                    match z.restart() {
                        Ok(()) => println!("ztunnel node{n} exited; started again (pid {})", z.pid().unwrap_or_default()),
                        Err(e) => eprintln!("ztunnel node{n} exited and could not be started again: {e:#}"),
                    }
                }
            }
            change = changes.recv() => {
                let Some(controller::source::SourceEvent::Snapshot { resources, errors }) = change else {
                    break;
                };
                for e in &errors {
                    eprintln!("not applied (last good version kept): {e}");
                }
                match cluster.reload(resources) {
                    Ok(notes) => {
                        if let Err(e) = cluster.publish_info(std::fs::canonicalize(&dir).ok().as_deref()) {
                            eprintln!("cluster.json not updated: {e}");
                        }
                        println!("applied changes from {}", dir.display());
                        for n in notes {
                            println!("note: {n}");
                        }
                        for f in &cluster.findings {
                            println!("note: {f}");
                        }
                    }
                    Err(e) => eprintln!("not applied: {e:#}"),
                }
            }
        }
    }
    watcher.abort();
    drop(cluster);
    println!("torn down");
    Ok(())
}
