//! Throwaway network namespaces for tests: created with `ip netns add`, removed on
//! drop (also when the test panics), never routed anywhere outside the test.
//! The namespace itself and the `ip` helpers are the local cluster's
//! (`ambit_cluster::net`); here they panic with the command's error instead
//! of returning it.

use std::sync::atomic::{AtomicU32, Ordering};

use ambit_cluster::net::NamedNetns;
use ambit_proxy_core::netns::Netns;

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
    ambit_cluster::net::ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `ip` inside namespace `ns` (`ip -n`).
pub fn ip_in(ns: &str, args: &[&str]) {
    ambit_cluster::net::ip_in(ns, args).unwrap_or_else(|e| panic!("{e}"));
}

/// A named network namespace with loopback up; deleted on drop.
#[derive(Debug)]
pub struct TestNetns(NamedNetns);

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
        TestNetns(NamedNetns::create(&name).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The namespace name (for `ip -n`).
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Opens it for `setns`.
    pub fn open(&self) -> Netns {
        self.0.open().expect("open netns")
    }
}

/// Deletes `ambit-t<pid>-*` namespaces of test processes that were killed
/// before their drops ran.
pub fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| ambit_cluster::net::sweep_stale("ambit-t"));
}
