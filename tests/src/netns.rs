//! Throwaway network namespaces for tests: created with `ip netns add`, removed on
//! drop (also when the test panics), never routed anywhere outside the test.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ztunnel::netns::Netns;

/// Fails the test with a clear message unless running as root.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "this test needs root (it creates network namespaces and loads eBPF): \
             run `cargo test` as root; CI does"
        );
    }
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` inside namespace `ns` (`ip -n`).
pub fn ip_in(ns: &str, args: &[&str]) {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full);
}

/// A named network namespace with loopback up; deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestNetns {
    /// Creates `ambit-t<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> TestNetns {
        require_root();
        sweep_stale();
        let name = format!(
            "ambit-t{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name };
        ip_in(&ns.name, &["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name (for `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens it for `setns`.
    pub fn open(&self) -> Netns {
        Netns::open(format!("/run/netns/{}", self.name)).expect("open netns")
    }
}

/// Deletes `ambit-t<pid>-*` namespaces of test processes that were killed
/// before their drops ran.
pub fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| ambit_cluster::net::sweep_stale("ambit-t"));
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
