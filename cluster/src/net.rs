//! `ip` (iproute2) and sysctl helpers for building the local cluster's network.
//! The local cluster is a developer tool; ztunnel itself never shells out.

use std::process::Command;

use ambit_proxy_core::netns::Netns;

/// Why a network step failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NetError {
    /// The command or step.
    pub what: String,
    /// Its error output.
    pub message: String,
}

/// Runs `ip args...`.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError {
            what: format!("ip {}", args.join(" ")),
            message: format!("{e} (is iproute2 installed?)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError {
            what: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip -n ns args...`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), NetError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Writes a sysctl inside namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), NetError> {
    let err = |message: String| NetError {
        what: format!("sysctl {key}={value} in {ns}"),
        message,
    };
    let netns = Netns::open(format!("/run/netns/{ns}")).map_err(|e| err(e.to_string()))?;
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    netns
        .run(|| std::fs::write(&path, value))
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// `ip netns add name` and loopback up.
    pub fn create(name: &str) -> Result<Self, NetError> {
        ip(&["netns", "add", name])?;
        let ns = NamedNetns {
            name: name.to_string(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens it for `setns`.
    pub fn open(&self) -> std::io::Result<Netns> {
        Netns::open(format!("/run/netns/{}", self.name))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Namespaces named `<prefix><pid>-...` whose process is gone (left by a run
/// that was killed before it could clean up).
pub fn stale_namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return vec![];
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| of_dead_run(prefix, name))
        .collect()
}

/// Is `name` (`<prefix><pid>` or `<prefix><pid>-...`) left by a run whose
/// process is gone?
pub fn of_dead_run(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes the [`stale_namespaces`] of `prefix`.
pub fn sweep_stale(prefix: &str) {
    for name in stale_namespaces(prefix) {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
}
