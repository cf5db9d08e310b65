//! `ambit x precheck`: can this node run Ambit? Each check says what it
//! found and, when something is missing, exactly what to do. The last
//! check loads the real capture programs into a throwaway cgroup and
//! detaches them: the kernel's verifier, not a version number, decides.

use std::path::{Path, PathBuf};

/// `ambit x precheck`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct PrecheckArgs {
    /// Skip loading the eBPF programs (only look at the node).
    #[arg(long)]
    pub no_load: bool,
    /// The node's CNI configuration directory (where the node agent
    /// chains `ambit-cni`).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_net_dir: PathBuf,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but something a cluster node usually has is not there.
    Warn,
    /// Ambit cannot run until this is fixed.
    Missing,
    /// Not tried (an earlier check failed, or the user skipped it).
    Skipped,
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, and what to do when it is not fine.
    pub detail: String,
}

/// Every check's result.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when nothing is missing.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Missing)
    }

    /// A table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!("{:<14} {:<8} {}\n", "CHECK", "STATUS", "DETAIL");
        for c in &self.checks {
            let status = match c.outcome {
                Outcome::Ok => "ok",
                Outcome::Warn => "warning",
                Outcome::Missing => "MISSING",
                Outcome::Skipped => "skipped",
            };
            out.push_str(&format!("{:<14} {:<8} {}\n", c.name, status, c.detail));
        }
        out.push_str(if self.ok() {
            "this node can run Ambit\n"
        } else {
            "this node cannot run Ambit yet: fix what is MISSING above\n"
        });
        out
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            outcome,
            detail: detail.into(),
        });
    }
}

/// The oldest kernel with everything capture uses: `sk_lookup` (5.9),
/// netns cookies in cgroup socket programs (5.7), on an LTS line.
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// `major.minor` of a kernel release string (`6.18.44-fc-v1272`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Mount points of filesystems of type `fstype` in a `/proc/mounts` text.
pub fn mounts_of(mounts: &str, fstype: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&fstype)).then(|| PathBuf::from(f.get(1).copied().unwrap_or("")))
        })
        .collect()
}

/// The capabilities Ambit's node components need, with why.
const CAPABILITIES: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load eBPF programs and maps"),
    (
        12,
        "CAP_NET_ADMIN",
        "attach capture, sk_lookup in pod namespaces",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        "cgroup attach, enter pod network namespaces",
    ),
    (13, "CAP_NET_RAW", "transparent sockets for inbound capture"),
    (
        19,
        "CAP_SYS_PTRACE",
        "open running pods' network namespaces",
    ),
];

/// The capability names missing from a `CapEff:` hex mask.
pub fn missing_capabilities(cap_eff_hex: &str) -> Vec<&'static str> {
    let mask = u64::from_str_radix(cap_eff_hex.trim(), 16).unwrap_or(0);
    CAPABILITIES
        .iter()
        .filter(|(bit, _, _)| mask & (1u64 << bit) == 0)
        .map(|(_, name, _)| *name)
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs every check on this node.
pub fn run(args: &PrecheckArgs) -> Report {
    let mut r = Report::default();
    let release = read("/proc/sys/kernel/osrelease").trim().to_string();
    match kernel_version(&release) {
        Some(v) if v >= MIN_KERNEL => r.push("kernel", Outcome::Ok, release.clone()),
        Some(_) => r.push(
            "kernel",
            Outcome::Missing,
            format!(
                "{release}: Ambit needs {}.{} or newer (sk_lookup, netns cookies in cgroup programs); upgrade the node's kernel",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => r.push("kernel", Outcome::Missing, format!("cannot read the kernel version ({release:?})")),
    }
    let mounts = read("/proc/mounts");
    let cgroup2 = mounts_of(&mounts, "cgroup2");
    match cgroup2.first() {
        Some(p) => r.push(
            "cgroup v2",
            Outcome::Ok,
            format!(
                "mounted at {}{}",
                p.display(),
                if p == Path::new("/sys/fs/cgroup") {
                    ""
                } else {
                    " (hybrid layout: capture attaches there)"
                }
            ),
        ),
        None => r.push(
            "cgroup v2",
            Outcome::Missing,
            "not mounted: boot with systemd.unified_cgroup_hierarchy=1, or `mount -t cgroup2 none /sys/fs/cgroup/unified`",
        ),
    }
    let bpffs = mounts_of(&mounts, "bpf");
    if bpffs.iter().any(|p| p == Path::new("/sys/fs/bpf")) {
        r.push("bpffs", Outcome::Ok, "mounted at /sys/fs/bpf");
    } else {
        r.push(
            "bpffs",
            Outcome::Missing,
            "not mounted at /sys/fs/bpf (ztunnel pins capture there to survive restarts): `mount -t bpf bpf /sys/fs/bpf`, and add it to /etc/fstab",
        );
    }
    if Path::new("/sys/kernel/btf/vmlinux").is_file() {
        r.push("BTF", Outcome::Ok, "/sys/kernel/btf/vmlinux");
    } else {
        r.push(
            "BTF",
            Outcome::Missing,
            "no /sys/kernel/btf/vmlinux: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y",
        );
    }
    let cap_eff = read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:").map(str::to_string))
        .unwrap_or_default();
    let missing = missing_capabilities(&cap_eff);
    if missing.is_empty() {
        r.push(
            "capabilities",
            Outcome::Ok,
            "CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE",
        );
    } else {
        let why: Vec<String> = CAPABILITIES
            .iter()
            .filter(|(_, n, _)| missing.contains(n))
            .map(|(_, n, why)| format!("{n} ({why})"))
            .collect();
        r.push(
            "capabilities",
            Outcome::Missing,
            format!(
                "this process lacks {}: run as root, or grant them (the DaemonSets in deploy/ do)",
                why.join(", ")
            ),
        );
    }
    let cni = std::fs::read_dir(&args.cni_net_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".conf") || n.ends_with(".conflist"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if cni.is_empty() {
        r.push(
            "CNI config",
            Outcome::Warn,
            format!(
                "no *.conf or *.conflist in {}: the node agent chains ambit-cni after the node's primary CNI, so install the cluster's network plugin first (not needed for `ambit up`)",
                args.cni_net_dir.display()
            ),
        );
    } else {
        r.push(
            "CNI config",
            Outcome::Ok,
            format!("{} in {}", cni.join(", "), args.cni_net_dir.display()),
        );
    }
    if args.no_load {
        r.push("eBPF load", Outcome::Skipped, "--no-load");
    } else if !r.ok() {
        r.push("eBPF load", Outcome::Skipped, "fix what is missing first");
    } else {
        let (outcome, detail) = load_in_throwaway_cgroup(cgroup2.first().map(PathBuf::as_path));
        r.push("eBPF load", outcome, detail);
    }
    r
}

/// Loads the capture programs (connect4/6, sockops, sk_lookup) attached to
/// a new, empty cgroup, then detaches and removes it: nothing on the node
/// is captured, nothing is left behind.
fn load_in_throwaway_cgroup(cgroup2: Option<&Path>) -> (Outcome, String) {
    let Some(root) = cgroup2 else {
        return (Outcome::Skipped, "no cgroup v2".into());
    };
    let cgroup = root.join(format!("ambit-precheck-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cgroup) {
        return (
            Outcome::Missing,
            format!("cannot create a cgroup under {}: {e}", root.display()),
        );
    }
    let loaded = ambit_ebpf::Capture::load(Some(&cgroup));
    let result = match &loaded {
        Ok(_) => (
            Outcome::Ok,
            "capture programs loaded and attached (in a throwaway cgroup), then removed"
                .to_string(),
        ),
        Err(e) => (
            Outcome::Missing,
            format!("the kernel refused the capture programs: {e}"),
        ),
    };
    drop(loaded);
    let _ = std::fs::remove_dir(&cgroup);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert!(kernel_version("5.4.0") < Some(MIN_KERNEL));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn finds_mounts_by_type() {
        let m = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(
            mounts_of(m, "cgroup2"),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(mounts_of(m, "bpf"), [PathBuf::from("/sys/fs/bpf")]);
        assert!(mounts_of(m, "tmpfs").is_empty());
    }

    #[test]
    fn names_missing_capabilities() {
        // Everything but CAP_SYS_RESOURCE (24): nothing Ambit needs is missing.
        assert!(missing_capabilities("000001fffeffffff").is_empty());
        // No CAP_BPF, no CAP_SYS_ADMIN.
        let mask = 0x000001ffffffffffu64 & !(1 << 39) & !(1 << 21);
        assert_eq!(
            missing_capabilities(&format!("{mask:016x}")),
            ["CAP_BPF", "CAP_SYS_ADMIN"]
        );
        assert_eq!(missing_capabilities("0").len(), CAPABILITIES.len());
    }
}
