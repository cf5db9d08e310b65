//! Helpers shared by the tests that run `ambit-controller` as a process.

use std::path::Path;
use std::process::{Child, Command};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `ambit-controller` in directory mode on `port`: YAML from
/// `base/config`, node1's token and the root in `base/tokens`, the CA
/// from `ca_dir`.
pub fn start_controller(base: &Path, port: u16, ca_dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ambit-controller"))
        .arg("--dir")
        .arg(base.join("config"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--nodes", "node1"])
        .args(["--metrics", "127.0.0.1:0"])
        .arg("--ca-dir")
        .arg(ca_dir)
        .arg("--token-dir")
        .arg(base.join("tokens"))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start ambit-controller")
}
