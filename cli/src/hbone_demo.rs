//! `ambit demo`: an HBONE tunnel between two local endpoints, with everything a
//! user would want to see verified printed as it happens.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_hbone::ca::{Authority, Validity};
use ambit_hbone::client::TunnelTarget;
use ambit_hbone::request::ConnectHead;
use ambit_hbone::server::InboundRequest;
use ambit_hbone::{
    DirectHandler, HboneConfig, HboneServer, Pool, StaticServerTls, WorkloadCertificate,
};
use ambit_identity::SpiffeId;
use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Options for `ambit demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Trust domain of the demo identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Message sent through the tunnel.
    #[arg(long, default_value = "hello through HBONE")]
    message: String,
}

/// A one-connection-at-a-time echo app that says who it is.
async fn echo_app(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = format!(
                        "{name} (saw peer {peer}) echoes: {}",
                        String::from_utf8_lossy(&buf[..n])
                    );
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Runs the demo; returns an error (non-zero exit) if anything is not as expected.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let td = args.trust_domain.as_str();
    let ca = Authority::new_root(
        td,
        "ambit demo root",
        Validity::starting_now(Duration::from_secs(3600)),
    )
    .context("creating the demo CA")?;
    let client_id = SpiffeId::new(td, "demo", "client")?;
    let server_id = SpiffeId::new(td, "demo", "echo")?;
    let intruder_id = SpiffeId::new(td, "elsewhere", "intruder")?;
    let day = Validity::starting_now(Duration::from_secs(24 * 3600));
    let issue = |id: &SpiffeId| {
        WorkloadCertificate::issue(&ca, id, day).with_context(|| format!("issuing {id}"))
    };
    let (client_cert, server_cert, intruder_cert) =
        (issue(&client_id)?, issue(&server_id)?, issue(&intruder_id)?);
    println!("CA      root for trust domain {td} created; certificates issued (P-256, 24 h):");
    for c in [&client_cert, &server_cert, &intruder_cert] {
        println!("          {}  serial {}", c.identity(), c.serial());
    }

    let app = echo_app("echo-app").await?;
    // Policy on the server side: only the demo namespace may connect.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen_by_policy = seen.clone();
    let handler = DirectHandler::with_policy(Arc::new(move |req: &InboundRequest| {
        let who = req.peer_identity.to_string();
        if let Ok(mut s) = seen_by_policy.lock() {
            s.push(who.clone());
        }
        if req.peer_identity.namespace() == "demo" {
            Ok(())
        } else {
            Err(format!("{who} is not in namespace demo"))
        }
    }));
    let server = HboneServer::new(
        HboneConfig::default(),
        Arc::new(StaticServerTls::new(&server_cert)),
        handler,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hbone_addr = listener.local_addr()?;
    let (stop_accepting, accepting) = ambit_proxy_core::drain::channel();
    tokio::spawn(ambit_proxy_core::accept::serve_hbone(
        listener,
        server.clone(),
        accepting,
    ));
    println!("server  HBONE listener on {hbone_addr} as {server_id}; app on {app}");

    let pool = Pool::new(HboneConfig::default());
    let target = TunnelTarget {
        dial: hbone_addr,
        expected: vec![server_id.clone()],
        src_ip: None,
        head: ConnectHead::to_addr(app),
        socket: None,
    };
    let mut tunnel = pool
        .connect(&client_cert, &target)
        .await
        .context("opening the tunnel")?;
    let tls = tunnel.tls_info().clone();
    println!(
        "client  tunnel open: {} {} ALPN {}; server proved {}",
        tls.version,
        tls.cipher_suite,
        tls.alpn.as_deref().unwrap_or("-"),
        tunnel.peer_identity()
    );
    tunnel.write_all(args.message.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .context("waiting for the reply")??;
    println!("reply   {}", String::from_utf8_lossy(&buf[..n]));
    let verified_client = seen.lock().ok().and_then(|s| s.first().cloned());
    println!(
        "server  verified client identity: {}",
        verified_client.as_deref().unwrap_or("<none>")
    );
    if verified_client.as_deref() != Some(client_id.to_string().as_str()) {
        bail!("the server did not see the client's identity");
    }

    // Refusal 1: policy denies an identity from another namespace (HTTP 401).
    match pool.connect(&intruder_cert, &target).await {
        Ok(_) => bail!("the intruder was let in"),
        Err(e) => println!("denied  {intruder_id}: {e}"),
    }
    // Refusal 2: the client expects another server identity; TLS refuses the peer.
    let impostor = TunnelTarget {
        expected: vec![SpiffeId::new(td, "demo", "not-echo")?],
        ..target.clone()
    };
    match pool.connect(&client_cert, &impostor).await {
        Ok(_) => bail!("a server with the wrong identity was accepted"),
        Err(e) => println!("denied  wrong server identity: {e}"),
    }
    drop(tunnel);
    stop_accepting.start();
    server.drain();
    println!("done    all checks passed");
    Ok(())
}
