//! Connecting from inside a pod, as its app would (an ordinary socket created in
//! the pod's namespace, so the capture programs see an app connection).

use std::net::SocketAddr;
use std::time::Duration;

use ambit_proxy_core::netns::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects from the namespace `/run/netns/<netns>` to `to`.
pub async fn connect_from(netns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ns = Netns::open(format!("/run/netns/{netns}"))?;
    let socket = ns.run(|| -> std::io::Result<tokio::net::TcpSocket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
    })??;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {to}"))
        })?
}

/// One HTTP/1.1 GET from inside a pod. `Ok(None)` means the connection was
/// closed (or reset) before any response byte arrived — what a denied
/// connection looks like to the app.
pub async fn http_get(netns: &str, to: SocketAddr, path: &str) -> std::io::Result<Option<String>> {
    let mut s = connect_from(netns, to).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await {
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no response",
            ));
        }
        Ok(Err(e)) if out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Ok(None);
        }
        Ok(Err(e)) if out.is_empty() => return Err(e),
        Ok(_) => {}
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

/// Is a TCP socket listening on `port` inside `/run/netns/<netns>`? Reads the
/// namespace's `/proc/net/tcp` instead of connecting, so the check itself is not
/// traffic (a connect from an enrolled pod would go through ztunnel and policy).
pub fn listening(netns: &str, port: u16) -> bool {
    let Ok(ns) = Netns::open(format!("/run/netns/{netns}")) else {
        return false;
    };
    let Ok(Ok(table)) = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/tcp")) else {
        return false;
    };
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
    })
}

/// Waits until something listens on `port` inside `netns`.
pub async fn wait_listening(netns: &str, port: u16, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if listening(netns, port) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
