//! Finds the network namespace that holds an IP, for pods that were running
//! before the agent (no CNI event carried their namespace). Candidates are
//! the runtime's named namespaces (`/run/netns/*`, where containerd and
//! CRI-O put pod sandboxes) and every process's (`/proc/*/ns/net`), each
//! looked at once; a namespace holds the IP when a socket in it can bind to
//! it (no netlink needed).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ambit_proxy_core::netns::Netns;
use socket2::{Domain, Socket, Type};

/// Where runtimes keep named namespaces.
pub const RUN_NETNS: &str = "/run/netns";

fn candidates(run_netns: &Path, proc: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(run_netns) {
        out.extend(dir.filter_map(|e| e.ok().map(|e| e.path())));
    }
    if let Ok(dir) = std::fs::read_dir(proc) {
        out.extend(
            dir.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    out
}

/// Does the namespace at `path` have `ip` on one of its interfaces?
fn holds(path: &Path, ip: IpAddr) -> bool {
    let Ok(ns) = Netns::open(path) else {
        return false;
    };
    ns.run(|| {
        Socket::new(
            Domain::for_address(SocketAddr::new(ip, 0)),
            Type::STREAM,
            None,
        )
        .and_then(|s| s.bind(&SocketAddr::new(ip, 0).into()))
        .is_ok()
    })
    .unwrap_or(false)
}

/// The namespace holding `ip` among the runtime's and the processes'
/// (skipping the caller's own: a host-network address is not a pod's).
pub fn find(ip: IpAddr) -> Option<PathBuf> {
    find_in(ip, Path::new(RUN_NETNS), Path::new("/proc"))
}

/// [`find`] over other roots (tests).
pub fn find_in(ip: IpAddr, run_netns: &Path, proc: &Path) -> Option<PathBuf> {
    let own = std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let mut seen = HashSet::new();
    candidates(run_netns, proc).into_iter().find(|path| {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let key = (meta.dev(), meta.ino());
        Some(key) != own && seen.insert(key) && holds(path, ip)
    })
}
