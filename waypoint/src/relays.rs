//! TCP relays open through the waypoint and what they were authorized on,
//! so a pushed AuthorizationPolicy closes the ones it now denies (HTTP
//! connections need nothing: every request is checked against the policy in
//! force when it arrives). The registry is the one ztunnel uses
//! ([`ambit_proxy_core::revoke`]).

use std::net::IpAddr;

use ambit_proxy_core::revoke::OpenConnections;

use crate::authz::{Mode, RequestAttributes};
use crate::state::WaypointState;

/// What a TCP relay was authorized on.
#[derive(Debug)]
pub struct Relay {
    /// The original destination (VIP or endpoint).
    pub destination: IpAddr,
    /// The L4 facts the TCP policy check saw.
    pub attrs: RequestAttributes,
}

/// Every open TCP relay.
pub type OpenRelays = OpenConnections<Relay>;

/// Re-checks every relay against `state`; closes (and counts) those whose
/// Service is gone or whose policies now deny them.
pub fn recheck(open: &OpenRelays, state: &WaypointState) -> usize {
    open.recheck(|r| {
        let decision = state
            .for_destination(r.destination)
            .map(|(svc, _)| svc.authz.authorize(Mode::Tcp, &r.attrs));
        let allowed = decision.as_ref().is_some_and(|d| d.is_allowed());
        if !allowed {
            tracing::info!(target: "access", dst_addr = %r.destination, ?decision,
                "tcp relay closed by a policy change");
        }
        allowed
    })
}
