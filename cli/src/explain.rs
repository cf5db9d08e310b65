//! `ambit x explain`: why a request from one pod to a destination is
//! delivered or refused, hop by hop, decided by the proxies' own code on the
//! config: the source ztunnel's path choice, the waypoint's stages
//! ([`waypoint::explain`]: RequestAuthentication, AuthorizationPolicy with
//! the deciding policy and rule, routing) and the destination ztunnel's L4
//! admission ([`ztunnel::inbound::admit`]).
//!
//! The config is the running local cluster's (its directory and where its
//! pods were placed) or a directory given with `-f`; pods that have no
//! address there get one as `ambit up` would assign it, and the output says
//! so.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ambit_api::k8s::Resources;
use ambit_api::model::authz::Connection;
use ambit_api::model::{ProxyState, Workload};
use ambit_api::translate::{expand_deployments, translate};
use ambit_identity::SpiffeId;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::PodStatus;

/// The request to explain.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The client pod, `namespace/name`.
    #[arg(long)]
    pub from: String,
    /// The destination: `host:port` (a Service: `web`, `web.shop`,
    /// `web.shop.svc.cluster.local`), `namespace/pod:port`, or `IP:port`.
    #[arg(long)]
    pub to: String,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// HTTP path (with query).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Request header `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Treat the traffic as TCP bytes (no HTTP request at the waypoint).
    #[arg(long)]
    pub tcp: bool,
    /// Directory of YAML (default: the running local cluster's).
    #[arg(short = 'f', long = "file")]
    pub dir: Option<PathBuf>,
    /// Which local cluster's placement (`ambit-<pid>`; default: the newest).
    #[arg(long)]
    pub run: Option<String>,
    /// The Kubernetes cluster of KUBECONFIG: its objects as the controller
    /// lists them (pods as they are placed there).
    #[arg(long)]
    pub kube: bool,
    /// Kubeconfig context (implies --kube).
    #[arg(long)]
    pub context: Option<String>,
}

/// One hop of the trace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Hop {
    /// Which proxy: `ztunnel node1 (source)`, `waypoint shop/waypoint`, ...
    pub proxy: String,
    /// What it does with the traffic.
    pub action: String,
    /// `None`: passes it on; `Some(why)`: refuses it here.
    pub refused: Option<String>,
}

/// The whole trace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    /// The client, with its identity.
    pub source: String,
    /// The destination as resolved.
    pub destination: String,
    /// Hops in order; the last is where it was delivered or refused.
    pub hops: Vec<Hop>,
    /// Delivered to the app?
    pub delivered: bool,
    /// Things the reader should know (assumed addresses, undecided chance).
    pub notes: Vec<String>,
}

impl Explanation {
    /// The human form.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "source       {}", self.source);
        let _ = writeln!(out, "destination  {}", self.destination);
        for (i, h) in self.hops.iter().enumerate() {
            let _ = writeln!(out, "hop {}  {}: {}", i + 1, h.proxy, h.action);
            if let Some(why) = &h.refused {
                let _ = writeln!(out, "       REFUSED: {why}");
            }
        }
        let verdict = match self
            .hops
            .iter()
            .enumerate()
            .find(|(_, h)| h.refused.is_some())
        {
            Some((i, h)) => format!("DENIED at hop {} ({})", i + 1, h.proxy),
            None if self.delivered => "DELIVERED".to_string(),
            None => "NOT DELIVERED".to_string(),
        };
        let _ = writeln!(out, "verdict      {verdict}");
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// The config and placement explain works on.
struct World {
    state: ProxyState,
    l7: Vec<ambit_api::xds::proto::l7::L7Service>,
    notes: Vec<String>,
}

/// Loads the config (running cluster or `dir`) and places every pod.
fn world(
    dir: Option<&PathBuf>,
    run: Option<&str>,
    listed: Option<Resources>,
) -> anyhow::Result<World> {
    if let Some(res) = listed {
        // A Kubernetes cluster's objects: pods carry their node and IP, and
        // waypoints run as the deployer made them.
        return Ok(world_of(&res, vec![]));
    }
    let cluster = match run {
        Some(_) => Some(crate::inspect::local_cluster(run)?),
        None => crate::inspect::local_cluster(None).ok(),
    };
    let mut notes = Vec::new();
    let dir = match (dir, &cluster) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => c
            .config_dir
            .clone()
            .context("the running cluster did not record its directory: pass -f DIR")?,
        (None, None) => bail!(
            "no local cluster is running and no -f DIR given: `ambit x explain -f DIR ...` explains a directory of YAML"
        ),
    };
    let (res, placement_notes) = placed(&dir, cluster.as_ref())?;
    notes.extend(placement_notes);
    Ok(world_of(&res, notes))
}

/// Translates `res` as the controller does, its errors as notes.
fn world_of(res: &Resources, mut notes: Vec<String>) -> World {
    let t = translate(res);
    for f in t
        .findings
        .iter()
        .filter(|f| f.severity == ambit_api::translate::Severity::Error)
    {
        notes.push(format!("config error (fails closed): {f}"));
    }
    World {
        state: ProxyState::from_config(&t.config),
        l7: t.l7,
        notes,
    }
}

/// The resources of `dir` as the cluster runs them: waypoint objects added
/// (as the deployer makes them), Deployments expanded into pods, and every
/// pod placed where `cluster` placed it, else at the address `ambit up`
/// would give it (the notes say so). Findings about missing pod addresses
/// then do not drown the real ones.
pub fn placed(
    dir: &std::path::Path,
    cluster: Option<&ambit_cluster::info::ClusterInfo>,
) -> anyhow::Result<(Resources, Vec<String>)> {
    let mut notes = Vec::new();
    let mut res = Resources::from_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut deployer = ambit_cluster::waypoints::LocalDeployer::default();
    for refused in deployer.apply(&mut res) {
        notes.push(format!("waypoint object not created: {refused}"));
    }
    let mut pods = expand_deployments(&res);
    res.deployments.clear();
    let mut next_host = [1u8; 256];
    let mut assumed = 0;
    for (i, (_, pod)) in pods.iter_mut().enumerate() {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = format!("{ns}/{}", pod.metadata.name.clone().unwrap_or_default());
        let placed = cluster.and_then(|c| c.pod(&key));
        let has_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .is_some();
        let spec = pod.spec.get_or_insert_with(Default::default);
        let (node, ip) = match placed {
            Some(p) => (p.node, p.ip.to_string()),
            None if has_ip => continue,
            None => {
                let node = spec
                    .node_name
                    .as_deref()
                    .and_then(|n| n.strip_prefix("node"))
                    .and_then(|n| n.parse::<u8>().ok())
                    .unwrap_or((i % 2) as u8 + 1);
                let host = &mut next_host[usize::from(node)];
                *host = host.saturating_add(1);
                assumed += 1;
                (node, Ipv4Addr::new(10, 244, node, *host).to_string())
            }
        };
        spec.node_name = Some(format!("node{node}"));
        pod.status = Some(PodStatus {
            pod_ip: Some(ip),
            ..Default::default()
        });
    }
    if assumed > 0 {
        notes.push(format!(
            "{assumed} pod(s) have no address in the config; addresses were assumed as `ambit up` assigns them (only ipBlocks rules depend on them)"
        ));
    }
    res.pods = pods;
    Ok((res, notes))
}

/// Where the client sends to.
enum Target {
    Service(std::sync::Arc<ambit_api::model::Service>, u16),
    Workload(std::sync::Arc<Workload>, u16),
    Unknown(SocketAddr),
}

fn resolve_target(state: &ProxyState, to: &str, client_ns: &str) -> anyhow::Result<Target> {
    let (host, port) = to
        .rsplit_once(':')
        .with_context(|| format!("--to {to}: give a port, e.g. {to}:80"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--to {to}: port {port:?} is not a number"))?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        if let Some(s) = state.service_by_vip(ip) {
            return Ok(Target::Service(s.clone(), port));
        }
        if let Some(w) = state.workload_by_ip(ip) {
            return Ok(Target::Workload(w.clone(), port));
        }
        return Ok(Target::Unknown(SocketAddr::new(ip, port)));
    }
    if let Some((ns, pod)) = host.split_once('/') {
        let uid = ambit_api::model::pod_uid(ns, pod);
        let w = state
            .workload(&uid)
            .with_context(|| format!("--to {to}: no pod {ns}/{pod} in the config"))?;
        return Ok(Target::Workload(w.clone(), port));
    }
    // Service names as DNS resolves them from the client's namespace.
    let parts: Vec<&str> = host.split('.').collect();
    let fqdn = match parts.len() {
        1 => format!("{host}.{client_ns}.svc.cluster.local"),
        2 => format!("{host}.svc.cluster.local"),
        _ => host.to_string(),
    };
    let ns = fqdn.split('.').nth(1).unwrap_or(client_ns);
    let svc = state
        .service(&format!("{ns}/{fqdn}"))
        .with_context(|| format!("--to {to}: no Service {fqdn} in the config"))?;
    Ok(Target::Service(svc.clone(), port))
}

/// A workload's identity, or an error naming it.
fn identity_of(w: &Workload) -> anyhow::Result<SpiffeId> {
    w.identity()
        .with_context(|| format!("pod {}/{} has no valid identity", w.namespace, w.name))
}

fn first_ip(w: &Workload) -> IpAddr {
    w.workload_ips
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Explains `args`.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<Explanation> {
    explain_in(args, None)
}

/// Explains `args` on `listed` (a Kubernetes cluster's objects) when given,
/// else on the local cluster or `-f DIR`.
pub fn explain_in(args: &ExplainArgs, listed: Option<Resources>) -> anyhow::Result<Explanation> {
    let World {
        state,
        l7,
        mut notes,
    } = world(args.dir.as_ref(), args.run.as_deref(), listed)?;
    let (client_ns, client_name) = args
        .from
        .split_once('/')
        .with_context(|| format!("--from {}: write namespace/pod", args.from))?;
    let client = state
        .workload(&ambit_api::model::pod_uid(client_ns, client_name))
        .with_context(|| format!("--from {}: no such pod in the config", args.from))?
        .clone();
    let meshed = client.protocol == ambit_api::model::Protocol::Hbone;
    let client_id = identity_of(&client)?;
    let client_ip = first_ip(&client);
    let source = format!(
        "{}/{} on {} ({}{})",
        client.namespace,
        client.name,
        client.node,
        client_id,
        if meshed { "" } else { ", not in the mesh" }
    );
    let target = resolve_target(&state, &args.to, client_ns)?;
    let mut hops = Vec::new();
    let out = |destination: String, hops: Vec<Hop>, delivered: bool, notes: Vec<String>| {
        Ok(Explanation {
            source: source.clone(),
            destination,
            hops,
            delivered,
            notes,
        })
    };
    // What the client connects to, and the waypoint in the way.
    let (destination, dst_addr, waypoint, service) = match &target {
        Target::Service(s, port) => {
            let vip = s
                .vip_addrs()
                .next()
                .with_context(|| format!("Service {} has no VIP", s.hostname))?;
            (
                format!("Service {} port {port} (VIP {vip})", s.hostname),
                SocketAddr::new(vip, *port),
                s.waypoint.clone(),
                Some(s.clone()),
            )
        }
        Target::Workload(w, port) => (
            format!("pod {}/{} {}:{port}", w.namespace, w.name, first_ip(w)),
            SocketAddr::new(first_ip(w), *port),
            w.waypoint.clone(),
            None,
        ),
        Target::Unknown(a) => {
            hops.push(Hop {
                proxy: format!("ztunnel {} (source)", client.node),
                action: format!(
                    "{a} is no workload or Service of the mesh: passthrough, no policy applies"
                ),
                refused: None,
            });
            return out(format!("{a} (outside the mesh)"), hops, true, notes);
        }
    };
    if !meshed {
        notes.push(
            "the client is not in the mesh: its traffic is plaintext, not tunnelled; the destination's ztunnel sees no identity".into(),
        );
    }
    // Hop: the waypoint (when the destination has one and the client's
    // ztunnel captures the traffic).
    let mut peer_id = meshed.then(|| client_id.clone());
    let mut peer_ip = client_ip;
    let mut endpoint_target = target_endpoint(&state, &target);
    if let (Some(gw), true) = (&waypoint, meshed) {
        let wp_eps = state.waypoint_endpoints(gw);
        let wp = wp_eps.first().map(|e| e.workload.clone());
        let gw_name = gateway_name(&gw.destination);
        hops.push(Hop {
            proxy: format!("ztunnel {} (source)", client.node),
            action: format!(
                "HBONE as {client_id} to waypoint {gw_name}{}",
                wp.as_ref()
                    .map(|w| format!(" ({}:{})", first_ip(w), gw.hbone_mtls_port))
                    .unwrap_or_default()
            ),
            refused: None,
        });
        let Some(wp) = wp else {
            hops.push(Hop {
                proxy: format!("waypoint {gw_name}"),
                action: "no running waypoint pod".into(),
                refused: Some(
                    "the waypoint has no endpoint: the connection fails (no healthy upstream)"
                        .into(),
                ),
            });
            return out(destination, hops, false, notes);
        };
        let mut wstate = waypoint::state::WaypointState::default();
        // The Gateway (`ns/name`) the target's L7 config is bound to.
        let key = service
            .as_ref()
            .and_then(|s| l7.iter().find(|x| x.hostname == s.hostname))
            .and_then(|x| x.waypoints.first().cloned())
            .unwrap_or_else(|| gw_name.clone());
        for (i, svc) in l7.iter().enumerate() {
            if let Err(e) = wstate.apply(&key, &format!("{i}"), Some(svc.clone())) {
                notes.push(format!("waypoint config for {} refused: {e}", svc.hostname));
            }
        }
        let conn = waypoint::explain::connection(
            peer_id.clone(),
            SocketAddr::new(client_ip, 40000),
            dst_addr,
            waypoint::metrics::Peer {
                workload: client.workload_name.clone(),
                namespace: client.namespace.clone(),
                principal: client_id.to_string(),
                ..Default::default()
            },
        );
        let wp_id = identity_of(&wp)?;
        let proxy = format!("waypoint {gw_name} ({wp_id})");
        if args.tcp {
            hops.push(Hop {
                proxy,
                action: "TCP relay (L4 fields of its AuthorizationPolicies apply)".into(),
                refused: None,
            });
        } else {
            let request = waypoint::explain::ExplainRequest {
                method: args.method.clone(),
                path: args.path.clone(),
                authority: args.to.clone(),
                headers: parse_headers(&args.headers)?,
            };
            let v = waypoint::explain::explain(&wstate, &conn, &request);
            notes.extend(v.notes.iter().cloned());
            if let Some(status) = v.local_status {
                hops.push(Hop {
                    proxy,
                    action: format!(
                        "{} {}: {}{}",
                        args.method,
                        args.path,
                        v.authorization,
                        v.route
                            .as_ref()
                            .map(|r| format!("; route {r}"))
                            .unwrap_or_default()
                    ),
                    refused: Some(format!(
                        "answers {status} itself, response_flags {}, details {}",
                        v.flags, v.details
                    )),
                });
                return out(destination, hops, false, notes);
            }
            hops.push(Hop {
                proxy,
                action: format!(
                    "{} {}: {}; route {}; to {}",
                    args.method,
                    args.path,
                    v.authorization,
                    v.route.as_deref().unwrap_or("(the Service itself)"),
                    v.upstream.as_deref().unwrap_or("-")
                ),
                refused: None,
            });
            if let Some(host) = v.upstream_host.as_deref() {
                let port = dst_addr.port();
                if let Some(s) = state.service(&format!(
                    "{}/{host}",
                    host.split('.').nth(1).unwrap_or_default()
                )) {
                    endpoint_target = target_endpoint(&state, &Target::Service(s.clone(), port));
                }
            }
        }
        peer_id = Some(wp_id);
        peer_ip = first_ip(&wp);
    } else if meshed {
        hops.push(Hop {
            proxy: format!("ztunnel {} (source)", client.node),
            action: format!(
                "HBONE as {client_id} to {}",
                endpoint_target
                    .as_ref()
                    .map(|(w, a)| format!("{}/{} {a}", w.namespace, w.name))
                    .unwrap_or_else(|| "no endpoint".into())
            ),
            refused: None,
        });
    }
    // Hop: the destination's ztunnel, L4 admission.
    let Some((dst_w, dst)) = endpoint_target else {
        hops.push(Hop {
            proxy: "ztunnel (destination)".into(),
            action: "no healthy endpoint".into(),
            refused: Some("no endpoint serves this port: the connection fails".into()),
        });
        return out(destination, hops, false, notes);
    };
    let conn = Connection {
        src_identity: peer_id.clone(),
        src_ip: peer_ip,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    };
    let policies: Vec<String> = state
        .policies_for(&dst_w)
        .iter()
        .map(|p| format!("{} ({:?})", p.key(), p.action))
        .collect();
    let proxy = format!(
        "ztunnel {} (destination, pod {}/{})",
        dst_w.node, dst_w.namespace, dst_w.name
    );
    let from = peer_id
        .as_ref()
        .map_or_else(|| "plaintext".to_string(), ToString::to_string);
    let applying = if policies.is_empty() {
        "no L4 policy applies".to_string()
    } else {
        format!("L4 policies {}", policies.join(", "))
    };
    match ztunnel::inbound::admit(&state, &dst_w.uid, &conn) {
        Ok(()) => {
            hops.push(Hop {
                proxy,
                action: format!("from {from} to {dst}: {applying}; admitted, delivered to the app"),
                refused: None,
            });
            out(destination, hops, true, notes)
        }
        Err(why) => {
            hops.push(Hop {
                proxy,
                action: format!("from {from} to {dst}: {applying}"),
                refused: Some(ztunnel::access::policy_rejection(&why)),
            });
            out(destination, hops, false, notes)
        }
    }
}

/// The first endpoint (and its address) the traffic reaches.
fn target_endpoint(
    state: &ProxyState,
    t: &Target,
) -> Option<(std::sync::Arc<Workload>, SocketAddr)> {
    match t {
        Target::Service(s, port) => state
            .endpoints(s, *port)
            .into_iter()
            .next()
            .map(|e| (e.workload, e.addr)),
        Target::Workload(w, port) => Some((w.clone(), SocketAddr::new(first_ip(w), *port))),
        Target::Unknown(_) => None,
    }
}

/// `ns/name` of the Gateway behind a waypoint destination
/// (`ns/waypoint.ns.svc.cluster.local` → `ns/waypoint`).
fn gateway_name(destination: &str) -> String {
    match destination.split_once('/') {
        Some((ns, host)) => format!("{ns}/{}", host.split('.').next().unwrap_or(host)),
        None => destination.to_string(),
    }
}

fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .with_context(|| format!("-H {h:?}: write name: value"))
        })
        .collect()
}
