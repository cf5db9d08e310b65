//! `ambit echo`: the built-in test app. On each connection it tells who served
//! and which peer address it saw: as an HTTP/1.1 response when the client speaks
//! HTTP, otherwise as a greeting line followed by a byte-for-byte TCP echo.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Options for `ambit echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// Ports to listen on (all addresses).
    #[arg(long = "port", default_values_t = [8080u16])]
    pub ports: Vec<u16>,
    /// Name to report (default: $POD_NAME, else the hostname).
    #[arg(long)]
    pub name: Option<String>,
}

fn pod_name(args: &EchoArgs) -> String {
    args.name
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "echo".into())
}

/// Serves until killed.
pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let name = pod_name(&args);
    let mut tasks = Vec::new();
    for port in &args.ports {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], *port))).await?;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((sock, peer)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(sock, peer, &name).await {
                        tracing::debug!(error = %e, "echo connection ended");
                    }
                });
            }
        }));
    }
    eprintln!("ambit echo: {name} listening on {:?}", args.ports);
    for t in tasks {
        t.await?;
    }
    Ok(())
}

const METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
];

async fn serve(mut sock: TcpStream, peer: SocketAddr, name: &str) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let n = sock.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    if METHODS.iter().any(|m| buf[..n].starts_with(m)) {
        // HTTP/1.1: answer each request on the connection (keep-alive).
        let mut pending = buf[..n].to_vec();
        loop {
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + 4);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = format!("pod={name} peer={peer} path={path}\n");
                let close = head.to_ascii_lowercase().contains("connection: close");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: {name}\r\n{}\r\n{body}",
                    body.len(),
                    if close { "connection: close\r\n" } else { "" }
                );
                sock.write_all(resp.as_bytes()).await?;
                if close {
                    return Ok(());
                }
            }
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        }
    }
    sock.write_all(format!("{name} saw {peer}\n").as_bytes())
        .await?;
    sock.write_all(&buf[..n]).await?;
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return sock.shutdown().await;
        }
        sock.write_all(&buf[..n]).await?;
    }
}
