//! Finding (or mounting) the cgroup-v2 hierarchy the outbound programs attach to.

use std::path::PathBuf;

/// Where Ambit mounts its own cgroup2 when the host has none mounted.
pub const FALLBACK_MOUNT: &str = "/run/ambit/cgroup2";

/// Why no cgroup v2 hierarchy is available.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading /proc/self/mountinfo failed.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    /// Mounting a cgroup2 filesystem failed.
    #[error("no cgroup2 mounted and mounting one at {FALLBACK_MOUNT} failed: {0}")]
    Mount(String),
}

/// The mount point of the cgroup-v2 hierarchy: `/sys/fs/cgroup` on most nodes,
/// `/sys/fs/cgroup/unified` on hybrid hosts; mounted at [`FALLBACK_MOUNT`] if absent.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    if let Some(p) = find_cgroup2(&info) {
        return Ok(p);
    }
    std::fs::create_dir_all(FALLBACK_MOUNT).map_err(|e| CgroupError::Mount(e.to_string()))?;
    nix::mount::mount(
        Some("none"),
        FALLBACK_MOUNT,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| CgroupError::Mount(e.to_string()))?;
    Ok(PathBuf::from(FALLBACK_MOUNT))
}

/// The first cgroup2 mount point in a mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <src> <opts>"
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_cgroup2("22 1 0:5 / /proc rw - proc proc rw\n"), None);
    }
}
