//! HTTP/2 PING keepalive: a connection whose peer stops answering is dropped.

use std::time::Duration;

use h2::{Ping, PingPong};

/// Why the keepalive loop ended.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveError {
    /// No PONG arrived in time.
    #[error("no PING ack within {0:?}")]
    Timeout(Duration),
    /// The connection failed while pinging.
    #[error("ping failed: {0}")]
    H2(#[from] h2::Error),
}

/// Pings every `interval` (first after `interval`) and returns when a PONG does not
/// come back within `timeout`. Runs until then; cancel it by dropping the future.
pub async fn run(mut pp: PingPong, interval: Duration, timeout: Duration) -> KeepaliveError {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pp.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return KeepaliveError::H2(e),
            Err(_) => return KeepaliveError::Timeout(timeout),
        }
    }
}
