//! The one accept loop every listener of both proxies runs (HBONE, the pod
//! listeners, admin): one error policy, and it ends when the drain starts.
//!
//! Error policy: an accept error (EMFILE, ENFILE, ENOBUFS, ECONNABORTED...) is
//! logged and the loop backs off for [`ACCEPT_BACKOFF`] instead of spinning on
//! a listener that keeps failing; it never ends the loop. Connections already
//! accepted are the handler's: they outlive the loop.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use ambit_hbone::HboneServer;
use ambit_hbone::server::InboundHandler;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::drain;

/// How long the loop waits after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` (named `what` in logs) and hands each connection to
/// `handle` until `drain` starts. `handle` should spawn: it runs on the loop.
pub async fn serve<F>(listener: TcpListener, what: &'static str, drain: drain::Watch, mut handle: F)
where
    F: FnMut(TcpStream, SocketAddr),
{
    loop {
        tokio::select! {
            biased;
            _ = drain.signaled() => {
                debug!(listener = what, "listener closed by the drain");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => handle(tcp, peer),
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Accepts HBONE connections on `listener` for `server` until `drain`
/// starts; each connection is served on its own task (TLS, then HTTP/2).
pub async fn serve_hbone<H: InboundHandler>(
    listener: TcpListener,
    server: Arc<HboneServer<H>>,
    drain: drain::Watch,
) {
    serve(listener, "15008", drain, move |tcp, peer| {
        tokio::spawn(server.clone().serve_tcp(tcp, peer));
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_over_connections_and_stops_on_drain() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (trigger, watch) = drain::channel();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(serve(listener, "test", watch, move |_, peer| {
            let _ = tx.send(peer);
        }));
        let client = TcpStream::connect(addr).await.expect("connect");
        let seen = rx.recv().await.expect("handed over");
        assert_eq!(seen, client.local_addr().expect("local"));
        trigger.start();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends on drain")
            .expect("no panic");
    }
}
