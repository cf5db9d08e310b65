//! In-process apps for ztunnel tests on the local cluster's network
//! (`ambit_cluster::topology`): an echo server inside a pod's namespace and a
//! client that connects from inside another, as their apps would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use ambit_cluster::capture::{ALPN_H2_EXT, LinkCapture, contains};
pub use ambit_cluster::topology::{PodNet as Pod, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A topology of `nodes` nodes with a name prefix unique to this test process.
pub fn topology(tag: &str, nodes: u8) -> Topology {
    crate::netns::require_root();
    ambit_cluster::net::sweep_stale("ambit-t");
    Topology::new(&format!("ambit-t{}-{tag}", std::process::id()), nodes).expect("topology")
}

/// Starts an echo app on `port` in `pod`: it first writes `"<name> saw <peer>\n"`,
/// then echoes. Counts accepted connections.
pub async fn echo_app(pod: &Pod, port: u16) -> Arc<AtomicU64> {
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = ambit_proxy_core::socket::listen_in(
        &pod.ns.open().expect("pod netns"),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    )
    .expect("app listener");
    let name = pod.name.clone();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let name = name.clone();
            tokio::spawn(async move {
                if s.write_all(format!("{name} saw {peer}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    accepted
}

/// What a client got from one connection.
#[derive(Debug)]
pub enum Exchange {
    /// The greeting line and the echo of what was sent.
    Served {
        /// `"<pod> saw <peer>"`.
        greeting: String,
        /// The echoed payload.
        echoed: Vec<u8>,
    },
    /// Connected, but the stream ended (EOF/RST) before any byte came back.
    ClosedEmpty,
    /// The connect itself failed.
    ConnectFailed(String),
}

/// Connects from inside `pod` (an ordinary, unmarked socket: the app's view) to
/// `to`, sends `payload` and reads the greeting and echo.
pub async fn talk(pod: &Pod, to: SocketAddr, payload: &[u8]) -> Exchange {
    let netns = pod.ns.open().expect("pod netns");
    let socket = match netns
        .run(|| -> std::io::Result<tokio::net::TcpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
        })
        .expect("setns")
    {
        Ok(s) => s,
        Err(e) => return Exchange::ConnectFailed(e.to_string()),
    };
    let mut s = match tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Exchange::ConnectFailed(e.to_string()),
        Err(_) => return Exchange::ConnectFailed("timeout".into()),
    };
    let _ = s.write_all(payload).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let want = got
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| i + 1 + payload.len());
        if want.is_some_and(|w| got.len() >= w) {
            break;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    match got.iter().position(|b| *b == b'\n') {
        None if got.is_empty() => Exchange::ClosedEmpty,
        None => Exchange::Served {
            greeting: String::from_utf8_lossy(&got).into_owned(),
            echoed: vec![],
        },
        Some(i) => Exchange::Served {
            greeting: String::from_utf8_lossy(&got[..i]).into_owned(),
            echoed: got[i + 1..].to_vec(),
        },
    }
}
