//! Ambit's user-facing resources and wire types.
//!
//! * [`ca`]: the Istio CA API messages.
//! * [`model`]: proxy state (workloads, services, L4 policies) and the pure
//!   L4 authorization function over it.
//! * [`xds`]: workload xDS, CA and L7 protobufs and their mapping to the model.

pub mod ca;
pub mod duration;
pub mod k8s;
pub mod model;
pub mod translate;
pub mod validate;
pub mod xds;
pub mod zds;
