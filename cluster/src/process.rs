//! Pod processes: each runs inside its pod's network namespace (via
//! `ip netns exec`) and in a cgroup of its own under the cgroup-v2 root, so the
//! whole pod can be killed at once on teardown.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Why a pod process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("pod {pod}: {message}")]
pub struct ProcessError {
    /// Pod.
    pub pod: String,
    /// What went wrong.
    pub message: String,
}

/// A pod's cgroup; killed and removed on drop.
#[derive(Debug)]
pub struct PodCgroup {
    path: PathBuf,
}

impl PodCgroup {
    /// Creates `<root>/<run>/<pod>`.
    pub fn create(root: &Path, run: &str, pod: &str) -> std::io::Result<Self> {
        let path = root.join("ambit").join(run).join(pod);
        std::fs::create_dir_all(&path)?;
        Ok(PodCgroup { path })
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kills every process in the cgroup.
    pub fn kill(&self) {
        // cgroup.kill exists on kernels >= 5.14; fall back to signalling each pid.
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err()
            && let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs"))
        {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        self.kill();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Remove the run directory when it is the last pod's.
        if let Some(run) = self.path.parent() {
            let _ = std::fs::remove_dir(run);
            if let Some(ambit) = run.parent() {
                let _ = std::fs::remove_dir(ambit);
            }
        }
    }
}

/// A running pod process.
#[derive(Debug)]
pub struct PodProcess {
    /// The pod (`namespace/name`).
    pub pod: String,
    child: Child,
    /// Its cgroup (drop kills it).
    pub cgroup: PodCgroup,
}

impl PodProcess {
    /// Starts `argv` in namespace `netns` with `env`, in a new cgroup.
    /// `ambit` as argv[0] means this very binary (the built-in apps).
    pub fn spawn(
        pod: &str,
        netns: &str,
        argv: &[String],
        env: &[(String, String)],
        cgroup: PodCgroup,
    ) -> Result<Self, ProcessError> {
        let err = |message: String| ProcessError {
            pod: pod.to_string(),
            message,
        };
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| err("empty command".into()))?;
        let prog = if prog == "ambit" {
            // $AMBIT_BIN lets a test harness (whose own executable is not ambit)
            // point at the real binary.
            match std::env::var("AMBIT_BIN") {
                Ok(bin) => bin,
                Err(_) => std::env::current_exe()
                    .map_err(|e| err(format!("locating the ambit binary: {e}")))?
                    .display()
                    .to_string(),
            }
        } else {
            prog.clone()
        };
        let child = Command::new("ip")
            .args(["netns", "exec", netns, &prog])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("starting {prog}: {e}")))?;
        cgroup
            .add(child.id())
            .map_err(|e| err(format!("joining cgroup {}: {e}", cgroup.path().display())))?;
        Ok(PodProcess {
            pod: pod.to_string(),
            child,
            cgroup,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.cgroup.kill();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
