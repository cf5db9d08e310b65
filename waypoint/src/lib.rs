//! The waypoint: Ambit's L7 proxy. This crate starts with its sans-IO core,
//! pure functions from (config, request) to decision, tested as tables:
//!
//! * [`route`]: VirtualService route selection over the controller's
//!   `L7Service` (first match wins, weighted destinations);
//! * [`authz`]: L7 AuthorizationPolicy evaluation with Istio's order;
//! * [`jwt`]: RequestAuthentication token validation;
//! * [`balance`]: DestinationRule load balancing;
//! * [`outlier`]: outlier detection (ejection and restore);
//! * [`ratelimit`]: the local token bucket.
//!
//! The HTTP/HBONE data path consumes these; it is not here yet.

pub mod authz;
pub mod balance;
pub mod jwt;
pub mod matcher;
pub mod outlier;
pub mod ratelimit;
pub mod route;
