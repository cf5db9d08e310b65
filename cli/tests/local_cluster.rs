//! The local cluster as a user meets it: `ambit demo` end to end, and teardown
//! that leaves nothing behind even when a test fails inside a running cluster.
//! Needs root (network namespaces, eBPF).

use std::path::Path;
use std::process::Command;

use ambit::cluster::LocalCluster;
use ambit_api::k8s::Resources;

fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (network namespaces, eBPF): run as root; CI does");
    }
}

/// Namespaces and cgroups a run of process `pid` would own.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("ambit-{pid}-");
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(root) = ambit_ebpf::cgroup2_root() {
        let cg = root.join("ambit").join(format!("ambit-{pid}"));
        if Path::new(&cg).exists() {
            out.push(cg.display().to_string());
        }
    }
    out
}

#[test]
fn ambit_demo_shows_mesh_traffic_and_a_denial_then_cleans_up() {
    require_root();
    let child = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .arg("demo")
        .output()
        .expect("run ambit demo");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "ambit demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(stdout.contains("served by demo/echo-"), "{stdout}");
    assert!(
        stdout
            .contains("TLS ClientHello with ALPN h2 seen: true; request path seen in clear: false"),
        "{stdout}"
    );
    assert!(
        stdout.contains("from spiffe://cluster.local/ns/demo/sa/client"),
        "{stdout}"
    );
    assert!(stdout.contains("denied:"), "{stdout}");
    assert!(stdout.contains("torn down"), "{stdout}");
    // The demo ran in its own process: nothing of it may remain.
    let left = leftovers(std::process::id());
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Deliberately fails inside a running cluster; run by the next test in a child
/// process (so the failure is observed, not suffered).
#[test]
#[ignore]
fn deliberately_failing_test_inside_a_cluster() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut res = Resources::default();
        res.add_yaml(ambit::demo::DEMO_YAML, "demo.yaml")
            .expect("demo yaml");
        let cluster = LocalCluster::up(res, 2).await.expect("cluster up");
        assert!(!cluster.pods.is_empty());
        panic!("failing on purpose with the cluster running");
    });
}

#[test]
fn a_failing_test_leaves_no_namespaces_cgroups_or_programs() {
    require_root();
    let running = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "deliberately_failing_test_inside_a_cluster",
            "--test-threads=1",
        ])
        .env("AMBIT_BIN", env!("CARGO_BIN_EXE_ambit"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the failing test");
    let child_pid = running.id();
    let child = running.wait_with_output().expect("failing test output");
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        !child.status.success(),
        "the deliberate failure must fail:\n{out}"
    );
    assert!(
        out.contains("failing on purpose")
            || String::from_utf8_lossy(&child.stderr).contains("failing on purpose")
    );
    // The child is gone; look for anything it would have left, by its pid.
    let left = leftovers(child_pid);
    assert!(left.is_empty(), "left behind: {left:?}");
    // And nothing under any ambit prefix whose process is dead.
    let stale: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let dead: Vec<&String> = stale
        .iter()
        .filter(|n| {
            n.strip_prefix("ambit-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    assert!(dead.is_empty(), "namespaces of dead runs: {dead:?}");
}
