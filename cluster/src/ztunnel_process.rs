//! A node's ztunnel as its own process (`ambit ztunnel`), as a DaemonSet pod
//! would run it: its own memory and CPU to measure, and a process that can be
//! killed with SIGKILL and started again while the pods keep running.
//!
//! It runs in the host's network namespace (it reaches the controller on the
//! host's loopback, as the in-process ztunnels do), binds its admin endpoints
//! in the node's namespace (`AMBIT_ADMIN_NETNS`) and its pod listeners in each
//! pod's namespace (from the node agent's netns fds). Capture is pinned in
//! bpffs under the node's pin directory, so it survives the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ambit_proxy_core::control::ControlPlane;
use anyhow::Context;

/// How to start one node's ztunnel process.
#[derive(Clone, Debug)]
pub struct ZtunnelLaunch {
    /// The `ambit` executable (run as `ambit ztunnel`), or a `ztunnel` one.
    pub exe: PathBuf,
    /// Node number.
    pub node: u8,
    /// The controller (xDS and CA).
    pub control: ControlPlane,
    /// Certificate lifetime.
    pub cert_ttl: Duration,
    /// The node agent's ZDS socket.
    pub zds: PathBuf,
    /// Where capture is pinned.
    pub pin_dir: PathBuf,
    /// The node's network namespace (admin endpoints bind there).
    pub node_netns: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

/// A running (or killed) ztunnel process.
#[derive(Debug)]
pub struct ZtunnelProcess {
    launch: ZtunnelLaunch,
    child: Option<Child>,
}

impl ZtunnelLaunch {
    /// The environment Istio's ztunnel reads, plus Ambit's two.
    fn env(&self) -> Vec<(&'static str, String)> {
        let n = self.node;
        let cp = &self.control;
        let mut env = vec![
            ("XDS_ADDRESS", cp.address.clone()),
            ("CLUSTER_ID", cp.cluster_id.clone()),
            ("SECRET_TTL", self.cert_ttl.as_secs().max(1).to_string()),
            ("NODE_NAME", format!("node{n}")),
            ("POD_NAME", format!("ztunnel-node{n}")),
            ("POD_NAMESPACE", "istio-system".into()),
            ("INSTANCE_IP", format!("172.30.0.{n}")),
            ("INPOD_UDS", self.zds.display().to_string()),
            ("AMBIT_BPF_PIN_DIR", self.pin_dir.display().to_string()),
            ("AMBIT_ADMIN_NETNS", self.node_netns.display().to_string()),
        ];
        if let Some(root) = &cp.root_pem {
            env.push(("XDS_ROOT_CA", root.clone()));
        }
        if let Some(name) = &cp.tls_name {
            env.push(("ALT_XDS_HOSTNAME", name.clone()));
        }
        if let Some(token) = &cp.token {
            env.push(("AUTH_TOKEN", token.clone()));
        }
        env
    }
}

impl ZtunnelProcess {
    /// Starts the process.
    pub fn start(launch: ZtunnelLaunch) -> anyhow::Result<Self> {
        let mut p = ZtunnelProcess {
            launch,
            child: None,
        };
        p.restart()?;
        Ok(p)
    }

    /// Starts the process again (after [`kill`](Self::kill) or an exit); a
    /// running one is killed first.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let l = &self.launch;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)
            .with_context(|| format!("opening {}", l.log.display()))?;
        let err = log.try_clone()?;
        let standalone = l.exe.file_name().is_some_and(|n| n == "ztunnel");
        let child = Command::new(&l.exe)
            .args((!standalone).then_some("ztunnel"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("AMBIT_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(l.env())
            .envs(std::env::var("ZTUNNEL_WORKER_THREADS").map(|v| ("ZTUNNEL_WORKER_THREADS", v)))
            .envs(std::env::var("AMBIT_SOCKMAP").map(|v| ("AMBIT_SOCKMAP", v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} ztunnel for node{}", l.exe.display(), l.node))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as the OOM killer or a node problem would: no drain, every
    /// socket closed by the kernel, pinned capture left in place.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as the kubelet does on pod deletion; waits up to `within`
    /// for the drain to finish. Returns whether it exited in time.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// The pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Where it pins capture.
    pub fn pin_dir(&self) -> &Path {
        &self.launch.pin_dir
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.launch.log
    }
}

impl Drop for ZtunnelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One blocking HTTP GET to a ztunnel admin endpoint (`127.0.0.1:port`)
/// inside the namespace `/run/netns/<netns>`: `(status, body)`, `None` when
/// nothing answers.
pub fn admin_get(netns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let ns = ambit_proxy_core::netns::Netns::open(format!("/run/netns/{netns}")).ok()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = ns
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .ok()?
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The workloads, services and policies a ztunnel process holds, from its
/// `/config_dump` on the node's admin port.
pub fn config_dump(node_netns: &str) -> Option<ambit_api::model::LocalConfig> {
    let (status, body) = admin_get(node_netns, 15000, "/config_dump")?;
    if status != 200 {
        return None;
    }
    let mut dump: serde_json::Value = serde_json::from_str(&body).ok()?;
    let held = serde_json::json!({
        "workloads": dump.get_mut("workloads")?.take(),
        "services": dump.get_mut("services")?.take(),
        "policies": dump.get_mut("policies")?.take(),
    });
    serde_json::from_value(held).ok()
}

/// Waits until the ztunnel of the node whose namespace is `node_netns` reports
/// ready on 15021 (xDS synced, ZDS snapshot applied, every local pod enrolled).
pub fn wait_ready(node_netns: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if admin_get(node_netns, 15021, "/healthz/ready").is_some_and(|(s, _)| s == 200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
