#![allow(dead_code)] // each test binary uses part of it

//! Helpers shared by the local-cluster test binaries.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fails with a clear message unless running as root.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (network namespaces, eBPF): run as root; CI does");
    }
}

/// Points `$AMBIT_BIN` at the built `ambit` binary, so pod processes written
/// `command: [ambit, ...]` run it rather than the test harness.
pub fn set_ambit_bin() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: set once, before any pod process is started; every writer
        // would write the same value.
        unsafe {
            std::env::set_var("AMBIT_BIN", env!("CARGO_BIN_EXE_ambit"))
        };
    });
}

/// Opens a TCP echo connection: the app speaks first, then reads the
/// greeting line and its own bytes back.
#[allow(dead_code)] // not every test binary uses it
pub async fn open_echo(netns: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut conn = ambit_cluster::client::connect_from(netns, to)
        .await
        .expect("connect");
    conn.write_all(b"hello\n").await.expect("hello");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.iter().filter(|b| **b == b'\n').count() < 2 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("greeting in time")
            .expect("greeting");
        assert!(n > 0, "echo closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.ends_with(b"hello\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    conn
}

/// Writes `bytes` from pod namespace `netns` to `to` (nothing: a
/// server-first client) and reads until the peer closes or is quiet for
/// 5 s: `""` when refused without an answer.
#[allow(dead_code)] // not every test binary uses it
pub async fn exchange(netns: &str, to: std::net::SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = ambit_cluster::client::connect_from(netns, to).await else {
        return String::new();
    };
    if !bytes.is_empty() && s.write_all(bytes).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A TCP echo keeps the connection open: what came is the answer.
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of an HTTP/1.1 reply (0 when there is none).
#[allow(dead_code)] // not every test binary uses it
pub fn status_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
pub mod up;
