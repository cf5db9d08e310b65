//! A test cluster on real network namespaces: nodes joined by one link, pods on
//! a per-node bridge, routes between the nodes' pod CIDRs, and nothing routed
//! anywhere else. Everything is deleted on drop.
//!
//! Addressing: node N is 172.30.0.N on the node link and owns 10.244.N.0/24; its
//! bridge is 10.244.N.1; pods get 10.244.N.M.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::netns::Netns;

use crate::netns::{TestNetns, ip, ip_in};

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Node number (1-based).
    pub index: u8,
    /// Its namespace.
    pub ns: TestNetns,
}

/// One pod.
#[derive(Debug)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Node number.
    pub node: u8,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Its namespace.
    pub ns: TestNetns,
}

impl Pod {
    /// Opens the pod's namespace.
    pub fn netns(&self) -> Netns {
        self.ns.open()
    }
}

/// Nodes and pods.
#[derive(Debug)]
pub struct Cluster {
    /// Nodes by index - 1.
    pub nodes: Vec<Node>,
    /// Pods by name.
    pub pods: HashMap<String, Pod>,
    next_pod: HashMap<u8, u8>,
}

impl Cluster {
    /// `n` nodes on one link (through a bridge in node 1 when n > 2 is not
    /// supported: two nodes are joined point to point).
    pub fn new(n: u8) -> Cluster {
        assert!((1..=2).contains(&n), "test clusters have one or two nodes");
        let mut nodes = Vec::new();
        for i in 1..=n {
            let ns = TestNetns::new(&format!("node{i}"));
            ip_in(ns.name(), &["link", "add", "cni0", "type", "bridge"]);
            ip_in(
                ns.name(),
                &["addr", "add", &format!("10.244.{i}.1/24"), "dev", "cni0"],
            );
            ip_in(ns.name(), &["link", "set", "cni0", "up"]);
            sysctl(ns.name(), "net.ipv4.ip_forward", "1");
            nodes.push(Node { index: i, ns });
        }
        if n == 2 {
            let (a, b) = (
                nodes[0].ns.name().to_string(),
                nodes[1].ns.name().to_string(),
            );
            ip(&[
                "link", "add", "eth0", "netns", &a, "type", "veth", "peer", "name", "eth0",
                "netns", &b,
            ]);
            for (node, other) in [(1u8, 2u8), (2, 1)] {
                let ns = nodes[usize::from(node - 1)].ns.name().to_string();
                ip_in(
                    &ns,
                    &["addr", "add", &format!("172.30.0.{node}/24"), "dev", "eth0"],
                );
                ip_in(&ns, &["link", "set", "eth0", "up"]);
                ip_in(
                    &ns,
                    &[
                        "route",
                        "add",
                        &format!("10.244.{other}.0/24"),
                        "via",
                        &format!("172.30.0.{other}"),
                    ],
                );
            }
        }
        Cluster {
            nodes,
            pods: HashMap::new(),
            next_pod: HashMap::new(),
        }
    }

    /// Adds a pod named `name` on node `node`.
    pub fn add_pod(&mut self, name: &str, node: u8) -> Ipv4Addr {
        let m = self.next_pod.entry(node).or_insert(1);
        *m += 1;
        let addr = Ipv4Addr::new(10, 244, node, *m);
        let ns = TestNetns::new(name);
        let node_ns = self.nodes[usize::from(node - 1)].ns.name().to_string();
        let host_if = format!("vp{}", *m);
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &host_if,
            "netns",
            &node_ns,
        ]);
        ip_in(&node_ns, &["link", "set", &host_if, "master", "cni0", "up"]);
        ip_in(
            ns.name(),
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
        ip_in(ns.name(), &["link", "set", "eth0", "up"]);
        ip_in(
            ns.name(),
            &[
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{node}.1"),
            ],
        );
        self.pods.insert(
            name.to_string(),
            Pod {
                name: name.to_string(),
                node,
                ip: addr,
                ns,
            },
        );
        addr
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Node `i`'s namespace.
    pub fn node_ns(&self, i: u8) -> Netns {
        self.nodes[usize::from(i - 1)].ns.open()
    }
}

fn sysctl(ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let netns = Netns::open(format!("/run/netns/{ns}")).expect("netns");
    netns
        .run(|| std::fs::write(&path, value))
        .expect("setns")
        .unwrap_or_else(|e| panic!("sysctl {key} in {ns}: {e}"));
}

/// Starts an echo app on `port` in `pod`: it first writes `"<name> saw <peer>\n"`,
/// then echoes. Counts accepted connections.
pub async fn echo_app(pod: &Pod, port: u16) -> Arc<AtomicU64> {
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = ztunnel::socket::listen_in(
        &pod.netns(),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    )
    .expect("app listener");
    let name = pod.name.clone();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let name = name.clone();
            tokio::spawn(async move {
                if s.write_all(format!("{name} saw {peer}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    accepted
}

/// What a client got from one connection.
#[derive(Debug)]
pub enum Exchange {
    /// The greeting line and the echo of what was sent.
    Served {
        /// `"<pod> saw <peer>"`.
        greeting: String,
        /// The echoed payload.
        echoed: Vec<u8>,
    },
    /// Connected, but the stream ended (EOF/RST) before any byte came back.
    ClosedEmpty,
    /// The connect itself failed.
    ConnectFailed(String),
}

/// Connects from inside `pod` (an ordinary, unmarked socket: the app's view) to
/// `to`, sends `payload` and reads the greeting and echo.
pub async fn talk(pod: &Pod, to: SocketAddr, payload: &[u8]) -> Exchange {
    let netns = pod.netns();
    let socket = match netns
        .run(|| -> std::io::Result<tokio::net::TcpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
        })
        .expect("setns")
    {
        Ok(s) => s,
        Err(e) => return Exchange::ConnectFailed(e.to_string()),
    };
    let mut s = match tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Exchange::ConnectFailed(e.to_string()),
        Err(_) => return Exchange::ConnectFailed("timeout".into()),
    };
    let _ = s.write_all(payload).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let want = got
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| i + 1 + payload.len());
        if want.is_some_and(|w| got.len() >= w) {
            break;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    match got.iter().position(|b| *b == b'\n') {
        None if got.is_empty() => Exchange::ClosedEmpty,
        None => Exchange::Served {
            greeting: String::from_utf8_lossy(&got).into_owned(),
            echoed: vec![],
        },
        Some(i) => Exchange::Served {
            greeting: String::from_utf8_lossy(&got[..i]).into_owned(),
            echoed: got[i + 1..].to_vec(),
        },
    }
}

/// Records every frame seen on all interfaces of a namespace (AF_PACKET).
#[derive(Clone, Debug)]
pub struct LinkCapture {
    bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl LinkCapture {
    /// Starts capturing in `ns`.
    pub fn start(ns: &Netns) -> LinkCapture {
        let sock = ns
            .run(|| {
                socket2::Socket::new(
                    socket2::Domain::PACKET,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::from(0x0300)),
                )
            })
            .expect("setns")
            .expect("AF_PACKET socket (root)");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let cap = LinkCapture {
            bytes: Arc::default(),
            stop: Arc::default(),
        };
        let (bytes, stop) = (cap.bytes.clone(), cap.stop.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut sock = sock;
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sock.read(&mut buf)
                    && let Ok(mut v) = bytes.lock()
                {
                    v.extend_from_slice(&buf[..n]);
                }
            }
        });
        cap
    }

    /// Stops and returns everything captured.
    pub fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(150));
        self.bytes.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
