//! The local cluster's network: one namespace per node and per pod, all nodes on
//! a bridge in a "fabric" namespace, pods on a per-node bridge, routes between
//! the nodes' pod CIDRs, nothing routed anywhere else.
//!
//! Addressing: node N is 172.30.0.N on the node network and owns 10.244.N.0/24
//! (bridge `cni0` = 10.244.N.1); pods get 10.244.N.2 onwards.

use std::net::Ipv4Addr;

use super::net::{NamedNetns, NetError, ip, ip_in, sysctl};

/// Creates a veth pair: `eth0` in namespace `a`, `peer` in namespace `b`.
fn veth_pair(a: &str, peer: &str, b: &str) -> Result<(), NetError> {
    ip(&[
        "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", peer, "netns", b,
    ])
}

/// A node's namespace and number.
#[derive(Debug)]
pub struct NodeNet {
    /// 1-based.
    pub index: u8,
    /// Namespace.
    pub ns: NamedNetns,
}

/// A pod's namespace and address.
#[derive(Debug)]
pub struct PodNet {
    /// Pod name (namespace/name in the cluster's terms is up to the caller).
    pub name: String,
    /// Node number.
    pub node: u8,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Namespace.
    pub ns: NamedNetns,
}

/// The whole network. Pods are dropped before nodes, nodes before the fabric.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    /// Pods (dropped first).
    pub pods: Vec<PodNet>,
    /// Nodes.
    pub nodes: Vec<NodeNet>,
    fabric: Option<NamedNetns>,
    next_host: Vec<u8>,
}

impl Topology {
    /// `nodes` nodes (1..=200) with namespaces named `<prefix>-...`.
    pub fn new(prefix: &str, nodes: u8) -> Result<Self, NetError> {
        let mut t = Topology {
            prefix: prefix.to_string(),
            pods: vec![],
            nodes: vec![],
            fabric: None,
            next_host: vec![1; usize::from(nodes)],
        };
        let fabric = NamedNetns::create(&format!("{prefix}-fabric"))?;
        ip_in(fabric.name(), &["link", "add", "br0", "type", "bridge"])?;
        ip_in(fabric.name(), &["link", "set", "br0", "up"])?;
        for i in 1..=nodes {
            let ns = NamedNetns::create(&format!("{prefix}-node{i}"))?;
            ip_in(ns.name(), &["link", "add", "cni0", "type", "bridge"])?;
            ip_in(
                ns.name(),
                &["addr", "add", &format!("10.244.{i}.1/24"), "dev", "cni0"],
            )?;
            ip_in(ns.name(), &["link", "set", "cni0", "up"])?;
            sysctl(ns.name(), "net.ipv4.ip_forward", "1")?;
            let port = format!("n{i}");
            veth_pair(ns.name(), &port, fabric.name())?;
            ip_in(
                fabric.name(),
                &["link", "set", &port, "master", "br0", "up"],
            )?;
            ip_in(
                ns.name(),
                &["addr", "add", &format!("172.30.0.{i}/24"), "dev", "eth0"],
            )?;
            ip_in(ns.name(), &["link", "set", "eth0", "up"])?;
            t.nodes.push(NodeNet { index: i, ns });
        }
        for a in 1..=nodes {
            for b in (1..=nodes).filter(|b| *b != a) {
                ip_in(
                    t.nodes[usize::from(a - 1)].ns.name(),
                    &[
                        "route",
                        "add",
                        &format!("10.244.{b}.0/24"),
                        "via",
                        &format!("172.30.0.{b}"),
                    ],
                )?;
            }
        }
        t.fabric = Some(fabric);
        Ok(t)
    }

    /// Adds a pod on node `node`; returns its IP.
    pub fn add_pod(&mut self, name: &str, node: u8) -> Result<Ipv4Addr, NetError> {
        let slot = self
            .next_host
            .get_mut(usize::from(node.wrapping_sub(1)))
            .ok_or_else(|| NetError {
                what: format!("pod {name}"),
                message: format!("no node {node}"),
            })?;
        *slot += 1;
        let host = *slot;
        let ip_addr = Ipv4Addr::new(10, 244, node, host);
        let ns = NamedNetns::create(&format!("{}-n{node}-p{host}", self.prefix))?;
        let node_ns = self.nodes[usize::from(node - 1)].ns.name().to_string();
        let host_if = format!("vp{host}");
        veth_pair(ns.name(), &host_if, &node_ns)?;
        ip_in(&node_ns, &["link", "set", &host_if, "master", "cni0", "up"])?;
        ip_in(
            ns.name(),
            &["addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"],
        )?;
        ip_in(ns.name(), &["link", "set", "eth0", "up"])?;
        ip_in(
            ns.name(),
            &[
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{node}.1"),
            ],
        )?;
        self.pods.push(PodNet {
            name: name.to_string(),
            node,
            ip: ip_addr,
            ns,
        });
        Ok(ip_addr)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&PodNet> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Node `i`.
    pub fn node(&self, i: u8) -> Option<&NodeNet> {
        self.nodes.get(usize::from(i.wrapping_sub(1)))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.pods.clear();
        self.nodes.clear();
        self.fabric = None;
    }
}
