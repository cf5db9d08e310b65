//! The access log's `connection complete` line, as Istio's ztunnel writes
//! it when a connection ends: who talked to whom (addresses, SPIFFE
//! identities, the Service when there was one), which side reports
//! (`direction`), the bytes each way and how long it lasted. Target
//! `access`, level info (`RUST_LOG=access=off` silences it).

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Instant;

/// What a connection's log line needs that is not at hand when it ends,
/// kept from when it opened: addresses, the time, and (inbound) the peer's
/// identity or (outbound) the Service. The local pod's identity and the
/// tunnel's peer are passed to [`complete`](Self::complete), so a
/// connection carries no copy of them.
#[derive(Debug)]
pub struct ConnectionLog {
    /// `source` (outbound, this node's client pod) or `destination`.
    reporter: &'static str,
    src: SocketAddr,
    dst: SocketAddr,
    /// Inbound: the client's identity (`None` for plaintext); outbound:
    /// the Service the client asked for (`None` for a pod address).
    detail: Option<String>,
    opened: Instant,
}

impl ConnectionLog {
    /// A connection seen by the destination's ztunnel, from a client with
    /// `src_identity` (`None`: plaintext).
    pub fn inbound(src: SocketAddr, src_identity: Option<String>, dst: SocketAddr) -> Self {
        ConnectionLog {
            reporter: "destination",
            src,
            dst,
            detail: src_identity,
            opened: Instant::now(),
        }
    }

    /// A connection seen by the source's ztunnel, to `dst_service` (when
    /// the client asked for a Service).
    pub fn outbound(src: SocketAddr, dst: SocketAddr, dst_service: Option<String>) -> Self {
        ConnectionLog {
            reporter: "source",
            src,
            dst,
            detail: dst_service,
            opened: Instant::now(),
        }
    }

    /// Writes the `connection complete` line. `local` is this node's pod's
    /// identity, `peer` the other end's when known. Bytes are counted from
    /// the reporting side, as Istio's ztunnel counts them: the source's
    /// `bytes_sent` went towards the destination, the destination's towards
    /// the source. A connection that failed or was refused carries `error`
    /// and is logged at level error, as Istio's ztunnel does (`error="connection
    /// closed due to policy rejection: explicitly denied by: ns/name"`), so
    /// every refusal names the hop (`reporter`) and what decided it.
    pub fn complete(
        &self,
        local: &dyn Display,
        peer: Option<&dyn Display>,
        bytes_sent: u64,
        bytes_recv: u64,
        error: Option<&dyn Display>,
    ) {
        let outbound = self.reporter == "source";
        let peer = peer.map(ToString::to_string);
        let local = local.to_string();
        let (src_identity, dst_identity, service) = if outbound {
            (
                Some(local.as_str()),
                peer.as_deref(),
                self.detail.as_deref(),
            )
        } else {
            (self.detail.as_deref(), Some(local.as_str()), None)
        };
        let duration = format!("{}ms", self.opened.elapsed().as_millis());
        // One field list, at the level the outcome calls for (a tracing
        // callsite's level is fixed, hence the two expansions).
        macro_rules! line {
            ($level:ident $($extra:tt)*) => {
                tracing::$level!(
                    target: "access",
                    reporter = self.reporter,
                    direction = if outbound { "outbound" } else { "inbound" },
                    src.addr = %self.src,
                    src.identity = src_identity.unwrap_or("-"),
                    dst.addr = %self.dst,
                    dst.service = service.unwrap_or("-"),
                    dst.identity = dst_identity.unwrap_or("-"),
                    bytes_sent,
                    bytes_recv,
                    duration = %duration,
                    $($extra)*
                    "connection complete"
                )
            };
        }
        match error {
            None => line!(info),
            Some(e) => line!(error error = %e,),
        }
    }
}

/// The `error` of a connection an AuthorizationPolicy refused, worded as
/// Istio's ztunnel words it (`why` is the decision: `explicitly denied by:
/// ns/name`, `allow policies exist, but none allowed`).
pub fn policy_rejection(why: &dyn Display) -> String {
    format!("connection closed due to policy rejection: {why}")
}

/// The `error` of an open connection closed because the policy changed
/// (Istio's ztunnel: `connection closed due to policy change`).
pub const POLICY_CHANGE: &str = "connection closed due to policy change";
