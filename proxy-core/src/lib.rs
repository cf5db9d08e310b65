//! What Ambit's two proxies, ztunnel and the waypoint, share: the connection
//! to the control plane, the CA client and certificate manager, the
//! delta-ADS client with a handler per type, the admin/readiness/metrics
//! server, the accept loop, the drain signal, network namespaces and the
//! sockets made in them. Neither proxy depends on the other; both sit on
//! this crate (README, "Layout").

pub mod accept;
pub mod admin;
pub mod ca_client;
pub mod certs;
pub mod control;
pub mod drain;
pub mod environment;
pub mod json_log;
pub mod netns;
pub mod revoke;
pub mod socket;
pub mod workloads;
pub mod xds;
pub mod zds;
