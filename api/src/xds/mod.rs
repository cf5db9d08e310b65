//! Workload xDS on the wire: the protobuf types generated from `proto/` (Istio's
//! `istio.workload` / `istio.security`, Envoy's delta ADS, Istio's CA API and
//! Ambit's L7 type for waypoints), the type URLs, and the translation between
//! them and the proxy state in [`crate::model`].
//!
//! The controller encodes with [`convert`]; ztunnel decodes with it, so both
//! ends agree by construction and an Istio ztunnel sees upstream field numbers.

pub mod convert;

/// Generated protobuf and gRPC code (prost + tonic).
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod proto {
    /// `istio.workload`: Address = Workload | Service.
    pub mod workload {
        tonic::include_proto!("istio.workload");
    }
    /// `istio.security`: L4 Authorization.
    pub mod security {
        tonic::include_proto!("istio.security");
    }
    /// `envoy.service.discovery.v3`: delta ADS.
    pub mod discovery {
        tonic::include_proto!("envoy.service.discovery.v3");
    }
    /// `istio.v1.auth`: CreateCertificate.
    pub mod ca {
        tonic::include_proto!("istio.v1.auth");
    }
    /// `ambit.l7.v1`: the waypoint's L7 configuration.
    pub mod l7 {
        tonic::include_proto!("ambit.l7.v1");
    }
}

/// Type URL of workloads and services (both travel as `Address`).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of L4 authorization policies.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
/// Type URL of the waypoint L7 configuration (one resource per Service).
pub const L7_SERVICE_TYPE: &str = "type.googleapis.com/ambit.l7.v1.L7Service";
