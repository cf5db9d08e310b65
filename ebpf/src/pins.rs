//! Where a capture's programs and maps live in bpffs, so they outlive the
//! ztunnel process: after a crash or during an upgrade the kernel keeps
//! redirecting enrolled pods to ztunnel's (now absent) listeners, which fails
//! closed, and the next ztunnel picks the same maps up again.
//!
//! Layout under a capture's pin directory:
//! `maps/<map name>`, `progs/<program name>`, `links/connect4`, `links/connect6`, `links/sockops` and
//! `links/sk_lookup-<netns cookie>` (one per enrolled pod namespace).

use std::path::{Path, PathBuf};

/// The bpffs mount point used when none is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where Ambit pins by default: one directory per capture instance below it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/ambit";

/// Why bpffs could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Reading /proc/self/mountinfo failed.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    /// bpffs is not mounted and mounting it failed.
    #[error("bpffs is not mounted at {BPFFS} and mounting it failed: {0}")]
    Mount(String),
    /// The pin directory is not on a bpffs mount.
    #[error("pin directory {0} is not on a bpf filesystem")]
    NotBpffs(PathBuf),
    /// Creating the pin directory failed.
    #[error("creating pin directory {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The pinned paths of one capture instance.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Prepares `root` (mounting bpffs at [`BPFFS`] if nothing is mounted
    /// there and `root` lies below it) and its `maps/` and `links/` folders.
    pub fn prepare(root: &Path) -> Result<Self, PinError> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(PinError::MountInfo)?;
        if bpffs_mount_for(&info, root).is_none() {
            if !root.starts_with(BPFFS) {
                return Err(PinError::NotBpffs(root.to_path_buf()));
            }
            nix::mount::mount(
                Some("bpf"),
                BPFFS,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| PinError::Mount(e.to_string()))?;
        }
        let dir = PinDir {
            root: root.to_path_buf(),
        };
        for sub in ["maps", "links", "progs"].map(|d| dir.root.join(d)) {
            std::fs::create_dir_all(&sub)
                .map_err(|source| PinError::Create { path: sub, source })?;
        }
        Ok(dir)
    }

    /// A view of an existing pin directory (no mount, no creation).
    pub fn existing(root: &Path) -> Self {
        PinDir {
            root: root.to_path_buf(),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Where program `name` (as named in `capture.c`) is pinned: the
    /// long-lived ztunnel attaches sk_lookup to new pod namespaces from here.
    pub fn program(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(name)
    }

    /// Where the link of the cgroup program `name` is pinned.
    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// Where the sk_lookup link of the namespace `netns_cookie` is pinned.
    pub fn inbound_link(&self, netns_cookie: u64) -> PathBuf {
        self.link(&format!("sk_lookup-{netns_cookie}"))
    }

    /// Netns cookies of every pinned sk_lookup link.
    pub fn inbound_links(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(self.root.join("links")) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("sk_lookup-")?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

/// Removes a capture's pins: once no process holds the programs, the kernel
/// detaches them and frees the maps. Capture of every pod it served ends, so
/// this is for uninstalling (or tearing down a local cluster), never for a
/// ztunnel restart. A directory that is not there is not an error.
pub fn remove(root: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The bpffs mount point that holds `path`, if any.
fn bpffs_mount_for(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "bpf")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bpffs_mount_holding_a_path() {
        let info = "22 1 0:5 / /proc rw - proc proc rw\n\
                    40 24 0:33 / /sys/fs/bpf rw,nosuid - bpf bpf rw,mode=700\n";
        assert_eq!(
            bpffs_mount_for(info, Path::new("/sys/fs/bpf/ambit/node1")),
            Some(PathBuf::from("/sys/fs/bpf"))
        );
        assert_eq!(bpffs_mount_for(info, Path::new("/run/ambit")), None);
        assert_eq!(
            bpffs_mount_for(
                "22 1 0:5 / /proc rw - proc proc rw\n",
                Path::new("/sys/fs/bpf/x")
            ),
            None
        );
    }

    #[test]
    fn names_links_by_netns_cookie() {
        let d = PinDir::existing(Path::new("/sys/fs/bpf/ambit/t"));
        assert_eq!(
            d.inbound_link(42),
            PathBuf::from("/sys/fs/bpf/ambit/t/links/sk_lookup-42")
        );
        assert_eq!(
            d.map("enrolled"),
            PathBuf::from("/sys/fs/bpf/ambit/t/maps/enrolled")
        );
    }
}
