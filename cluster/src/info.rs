//! What a running local cluster tells other `ambit` commands: its nodes'
//! and pods' network namespaces and the proxies' admin addresses, written by
//! `ambit up` to `cluster.json` in the cluster's run directory and found
//! again by [`running`]. The file goes with the run directory at teardown.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where every local cluster's run directory lives.
pub const RUN_ROOT: &str = "/run/ambit";
/// The file in a run directory.
pub const INFO_FILE: &str = "cluster.json";

/// One running local cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// The run's name (namespace prefix), `ambit-<pid>`.
    pub run: String,
    /// The `ambit up` process.
    pub pid: u32,
    /// The version of `ambit up`, whose process runs the control plane.
    #[serde(default)]
    pub version: String,
    /// The directory of YAML it was started from and watches.
    pub config_dir: Option<PathBuf>,
    /// Nodes, in order.
    pub nodes: Vec<NodeInfo>,
    /// Pods, waypoints included.
    pub pods: Vec<PodInfo>,
    /// The Gateway objects, each with the status the waypoint deployer
    /// gave it (what `kubectl get gateway -o yaml` shows).
    #[serde(default)]
    pub gateways: Vec<serde_json::Value>,
}

/// One node: its namespace and its ztunnel's endpoints (inside it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// `node1`, ...
    pub name: String,
    /// The node's network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// ztunnel's admin endpoint (`/config_dump`), loopback in the namespace.
    pub admin: SocketAddr,
    /// ztunnel's metrics endpoint.
    pub metrics: SocketAddr,
    /// ztunnel's readiness endpoint.
    pub readiness: SocketAddr,
}

/// One pod.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// Node number (1-based).
    pub node: u8,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// The pod's network namespace.
    pub netns: String,
    /// Workload uid.
    pub uid: String,
    /// `Some("ns/gateway")` when the pod is that waypoint's proxy (admin
    /// 15000, metrics 15020, readiness 15021 on its IP).
    pub waypoint_for: Option<String>,
    /// Enrolled in the mesh (ztunnel captures its traffic).
    pub ambient: bool,
}

impl ClusterInfo {
    /// Writes `cluster.json` into `run_dir` (atomically: a reader never sees
    /// half a file).
    pub fn write(&self, run_dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(run_dir)?;
        let path = run_dir.join(INFO_FILE);
        let tmp = run_dir.join(format!("{INFO_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// The node numbered `n` (1-based).
    pub fn node(&self, n: u8) -> Option<&NodeInfo> {
        usize::from(n)
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.key == key)
    }
}

/// The local clusters running now (their `ambit up` process alive), newest
/// process first. Files of clusters whose process is gone are skipped.
pub fn running() -> Vec<ClusterInfo> {
    running_in(Path::new(RUN_ROOT))
}

fn running_in(root: &Path) -> Vec<ClusterInfo> {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut out: Vec<ClusterInfo> = dirs
        .flatten()
        .filter_map(|d| std::fs::read(d.path().join(INFO_FILE)).ok())
        .filter_map(|bytes| serde_json::from_slice::<ClusterInfo>(&bytes).ok())
        .filter(|c| Path::new(&format!("/proc/{}", c.pid)).exists())
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.pid));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32) -> ClusterInfo {
        ClusterInfo {
            run: format!("ambit-{pid}"),
            pid,
            version: "0.1.0".into(),
            config_dir: Some("/tmp/x".into()),
            nodes: vec![NodeInfo {
                name: "node1".into(),
                netns: format!("ambit-{pid}-node1"),
                admin: "127.0.0.1:15000".parse().unwrap(),
                metrics: "172.30.0.1:15020".parse().unwrap(),
                readiness: "172.30.0.1:15021".parse().unwrap(),
            }],
            pods: vec![PodInfo {
                key: "shop/web-0".into(),
                node: 1,
                ip: Ipv4Addr::new(10, 244, 1, 2),
                netns: format!("ambit-{pid}-shop-web-0"),
                uid: "Kubernetes//Pod/shop/web-0".into(),
                waypoint_for: None,
                ambient: true,
            }],
            gateways: vec![],
        }
    }

    /// Written files are found again while their process lives; a dead
    /// process's file is skipped.
    #[test]
    fn written_then_found_only_while_running() {
        let root = std::env::temp_dir().join(format!("ambit-info-test-{}", std::process::id()));
        let live = info(std::process::id());
        live.write(&root.join(&live.run)).unwrap();
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = info(u32::MAX - 1);
        dead.write(&root.join(&dead.run)).unwrap();
        let found = running_in(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, vec![live.clone()]);
        assert_eq!(live.node(1).map(|n| n.name.as_str()), Some("node1"));
        assert!(live.node(0).is_none() && live.node(2).is_none());
        assert!(live.pod("shop/web-0").is_some_and(|p| p.ambient));
    }
}
