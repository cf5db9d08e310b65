//! Ambit's control plane.
//!
//! * [`source`]: where resources come from (a watched YAML directory, an
//!   in-memory feed from the local cluster), behind one trait.
//! * [`model`]: validated resources → proxy state → versioned xDS resources.
//! * [`xds`]: the delta ADS server (Istio's `Address` and `Authorization` types,
//!   Ambit's L7 type for waypoints).
//! * [`ca`]: `IstioCertificateService/CreateCertificate`, scoped to the caller's node.
//! * [`auth`]: how a caller proves which node it is.
//! * [`deployer`]: waypoint Gateways → ServiceAccount, Deployment, Service,
//!   and the Gateway's status.
//! * [`images`]: image names and tags (`deploy/images.env`).
//! * [`lease`]: leader election (what only one replica may do).
//! * [`ca_secret`]: the mesh root shared by replicas (`istio-ca-secret`).
//! * [`metrics`]: the `/metrics` endpoint (15014).
//! * [`run`]: the listeners and the update loop that tie them together.

// tonic's `Status` is the error type of every gRPC handler; boxing it would
// only add an allocation per refusal.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod ca;
pub mod ca_secret;
pub mod deployer;
pub mod images;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod run;
pub mod source;
pub mod xds;

pub use run::{Controller, ControllerConfig};
