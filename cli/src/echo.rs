//! `ambit echo`: the built-in test app. On each connection it tells who served
//! and which peer address it saw: as an HTTP/1.1 response when the client speaks
//! HTTP, otherwise as a greeting line followed by a byte-for-byte TCP echo.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use waypoint::rewind::{Rewind, sniff_http};

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
    /// Answer every HTTP request with this status (a broken backend).
    #[arg(long)]
    pub status: Option<u16>,
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
        let forced = args.status;
        tasks.push(tokio::spawn(async move {
            while let Ok((sock, peer)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(sock, peer, &name, forced).await {
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

/// Answers HTTP/1.1 and HTTP/2 (so gRPC-style and keep-alive clients work):
/// the body says who served, the peer, method, path and every request
/// header (`h:name=value` lines), then the request body. `/status/N`
/// answers N, `/delay/MS` waits first; a request asking for an upgrade gets 101 and a byte echo.
async fn echo_http(
    name: Arc<str>,
    forced: Option<u16>,
    peer: SocketAddr,
    mut req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let status = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .or(forced)
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::OK);
    if let Some(ms) = req
        .uri()
        .path()
        .strip_prefix("/delay/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let mut text = format!(
        "pod={name} peer={peer} method={} path={} version={:?}\n",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("h:{k}={}\n", v.to_str().unwrap_or("?")));
    }
    let builder = http::Response::builder().header("x-served-by", name.as_ref());
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(builder
            .status(http::StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = text.into_bytes();
    out.extend_from_slice(&body);
    Ok(builder
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(out)))
        .unwrap_or_default())
}

async fn serve(
    mut sock: TcpStream,
    peer: SocketAddr,
    name: &str,
    forced: Option<u16>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = bytes::BytesMut::new();
    let Some(is_http) = sniff_http(&mut sock, &mut seen).await? else {
        return Ok(());
    };
    if is_http {
        let name: Arc<str> = name.into();
        let io = Rewind::new(seen.freeze(), sock);
        let svc = hyper::service::service_fn(move |req| echo_http(name.clone(), forced, peer, req));
        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc)
            .await;
        return Ok(());
    }
    sock.write_all(format!("{name} saw {peer}\n").as_bytes())
        .await?;
    sock.write_all(&seen).await?;
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return sock.shutdown().await;
        }
        sock.write_all(&buf[..n]).await?;
    }
}
