//! `ambit x precheck` on this machine: as root with bpffs mounted it passes
//! every check, loading the real capture programs into a throwaway cgroup
//! and leaving nothing behind; as an unprivileged user it exits 1 and names
//! each missing capability and why.

mod common;

use std::process::Command;

fn precheck(prefix: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(
        prefix
            .first()
            .copied()
            .unwrap_or(env!("CARGO_BIN_EXE_ambit")),
    );
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(env!("CARGO_BIN_EXE_ambit"));
    }
    let out = cmd
        .args(["x", "precheck"])
        .output()
        .expect("ambit x precheck");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn leftover_cgroups() -> Vec<String> {
    let root = ambit_ebpf::cgroup2_root().expect("cgroup v2");
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ambit-precheck-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn passes_as_root_and_leaves_nothing() {
    common::require_root();
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        // What precheck tells a user to do when it is missing.
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount bpffs");
    }
    let before = leftover_cgroups();
    let (code, out) = precheck(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("eBPF load      ok"), "{out}");
    assert!(out.contains("this node can run Ambit"), "{out}");
    assert_eq!(
        leftover_cgroups(),
        before,
        "the throwaway cgroup is removed"
    );
}

#[test]
fn names_what_an_unprivileged_user_lacks() {
    common::require_root();
    let (code, out) = precheck(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]);
    assert_eq!(code, 1, "{out}");
    let caps = out
        .lines()
        .find(|l| l.starts_with("capabilities"))
        .unwrap_or_default();
    assert!(caps.contains("MISSING"), "{out}");
    for cap in [
        "CAP_BPF (load eBPF programs and maps)",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
    ] {
        assert!(caps.contains(cap), "{caps}");
    }
    assert!(
        out.contains("eBPF load      skipped  fix what is missing first"),
        "{out}"
    );
    assert!(out.contains("cannot run Ambit yet"), "{out}");
}
