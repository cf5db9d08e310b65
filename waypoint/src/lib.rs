//! The waypoint: Ambit's L7 proxy. It terminates HBONE from ztunnels, serves
//! HTTP/1.1, HTTP/2 and gRPC on each tunnel, applies the Istio resources the
//! controller compiled into `L7Service`s, and re-originates HBONE to the
//! chosen endpoint's ztunnel.
//!
//! The decisions are sans-IO and tested as tables:
//!
//! * [`route`]: VirtualService route selection (first match wins, weights);
//! * [`authz`]: L7 AuthorizationPolicy evaluation with Istio's order;
//! * [`jwt`]: RequestAuthentication token validation;
//! * [`balance`]: DestinationRule load balancing;
//! * [`outlier`]: outlier detection (ejection and restore);
//! * [`ratelimit`]: the local token bucket;
//! * [`cors`]: CORS preflight and response headers.
//!
//! The data path around them: [`waypoint`] (HBONE in, protocol detection,
//! xDS, admin; the whole `impl Waypoint`), [`proxy`] (one request's stages,
//! in Envoy's filter order), [`forward`] (endpoint, retries, timeouts,
//! mirrors, the response back), [`answer`] (local answers), [`upstream`] (pooled
//! upstream connections and their limits), [`state`] (compiled config with
//! runtime state), [`metrics`] (Istio request metrics).

pub mod admin;
pub mod answer;
pub mod authz;
pub mod balance;
pub mod body;
pub mod cors;
pub mod explain;
pub mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod jwks_fetch;
pub mod jwt;
pub mod matcher;
pub mod mesh;
pub mod metrics;
pub mod normalize;
pub mod outlier;
pub mod proxy;
pub mod ratelimit;
pub mod relays;
pub mod rewind;
pub mod route;
pub mod state;
pub mod sync;
pub mod trace;
pub mod upstream;
pub mod waypoint;

pub use waypoint::{HttpOptions, Waypoint, WaypointConfig};
