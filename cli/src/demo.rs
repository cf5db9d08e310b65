//! `ambit demo`: brings up the local cluster from `cli/demo/demo.yaml`, sends
//! requests from the client pod to the echo Service and shows which pod served
//! each, the identity ztunnel verified, that the node link carried TLS and not
//! the payload, and one denied attempt; then tears everything down.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_api::k8s::Resources;
use anyhow::{Context, bail};

use ambit_cluster::LocalCluster;
use ambit_cluster::capture::{ALPN_H2_EXT, LinkCapture, contains};
use ambit_cluster::client::{http_get, wait_listening};

/// The demo's resources.
pub const DEMO_YAML: &str = include_str!("../demo/demo.yaml");

/// The echo Service's VIP in the demo.
const ECHO_VIP: &str = "10.96.0.10:80";

/// Runs the demo; any unexpected result is an error (non-zero exit).
pub async fn run() -> anyhow::Result<()> {
    let mut res = Resources::default();
    res.add_yaml(DEMO_YAML, "demo.yaml")?;
    println!(
        "== bringing up a 2-node local cluster (network namespaces, eBPF capture, ztunnel per node)"
    );
    let cluster = LocalCluster::up(res, 2).await?;
    let outcome = exercise(&cluster).await;
    drop(cluster);
    println!("== torn down: namespaces, cgroups and eBPF programs removed");
    outcome
}

fn served_by(body: &str) -> Option<&str> {
    body.lines()
        .find_map(|l| l.strip_prefix("pod="))
        .and_then(|l| l.split_whitespace().next())
}

async fn exercise(cluster: &LocalCluster) -> anyhow::Result<()> {
    for p in cluster.pods.values() {
        let in_mesh = cluster.is_enrolled(p.node, &p.uid);
        println!(
            "   pod {:<14} node{}  {:<12} {}",
            p.key,
            p.node,
            p.ip,
            if in_mesh {
                "ambient (HBONE via ztunnel)"
            } else {
                "not in the mesh"
            }
        );
    }
    for f in &cluster.findings {
        println!("   note: {f}");
    }
    let client = cluster.pod("demo/client")?;
    let legacy = cluster.pod("legacy/legacy")?;
    let vip: SocketAddr = ECHO_VIP.parse()?;
    for echo in ["demo/echo-0", "demo/echo-1"] {
        let p = cluster.pod(echo)?;
        if !wait_listening(&p.netns, 8080, Duration::from_secs(10)).await {
            bail!("{echo} did not start listening");
        }
    }

    println!("== client → echo Service {ECHO_VIP}, 6 requests");
    let node1 = cluster.topology.node(1).context("node1")?.ns.open()?;
    let capture = LinkCapture::start(&node1)?;
    let marker = format!("/secret-{:016x}", rand::random::<u64>());
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for i in 1..=6 {
        let body = http_get(&client.netns, vip, &marker)
            .await
            .with_context(|| format!("request {i}"))?
            .with_context(|| format!("request {i}: connection closed without a response"))?;
        let who = served_by(&body).unwrap_or("?").to_string();
        let node = cluster
            .pods
            .get(&format!("demo/{who}"))
            .map(|p| p.node)
            .unwrap_or(0);
        println!("   request {i}: served by demo/{who} (node{node})");
        *served.entry(who).or_default() += 1;
    }
    let wire = capture.finish();
    let tls = contains(&wire, ALPN_H2_EXT);
    let leaked = contains(&wire, marker.as_bytes());
    println!(
        "== node1's links: TLS ClientHello with ALPN h2 seen: {tls}; request path seen in clear: {leaked}"
    );
    if !tls || leaked {
        bail!("the node link did not carry mTLS only");
    }

    println!("== identities ztunnel verified (destination side)");
    let mut verified = false;
    for (i, z) in cluster.ztunnels.iter().enumerate() {
        for (l, opened, _) in z.metrics().snapshot() {
            if l.reporter == "destination" && opened > 0 {
                println!(
                    "   ztunnel node{}: {} connection(s) from {} to {} ({})",
                    i + 1,
                    opened,
                    l.source.principal,
                    l.destination.workload,
                    l.connection_security_policy
                );
                verified |= l.source.principal == "spiffe://cluster.local/ns/demo/sa/client";
            }
        }
    }
    if !verified {
        bail!("no ztunnel recorded the client's SPIFFE identity");
    }

    println!("== legacy/legacy (not in the mesh, no identity) → echo Service");
    match http_get(&legacy.netns, vip, "/").await {
        Ok(None) | Err(_) => println!(
            "   denied: connection closed without a response (policy demo/echo-allow-client admits only the client's identity)"
        ),
        Ok(Some(body)) => bail!("legacy pod was served: {body}"),
    }
    let denials: u64 = cluster
        .ztunnels
        .iter()
        .map(|z| z.metrics().failed_where(|l| l.response_flags == "DENY"))
        .sum();
    println!("   istio_tcp_connections_failed_total{{response_flags=\"DENY\"}} = {denials}");
    if denials == 0 {
        bail!("the denial was not counted");
    }
    Ok(())
}
