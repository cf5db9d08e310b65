//! HBONE for Ambit: SPIFFE identity, certificate issuance and the HTTP/2 CONNECT
//! over mutual TLS tunnel that ztunnels and waypoints speak, wire-compatible with
//! Istio ambient's ztunnel.
//!
//! * [`identity`]: SPIFFE ids.
//! * [`csr`], [`ca`], [`cert`], [`bundle`]: keys, CSRs, the signing core, workload
//!   certificates and trust bundles.
//! * [`tls`]: rustls configs and verifiers.
//! * [`client`] and [`server`]: the tunnel itself.

pub mod bundle;
pub mod ca;
pub mod cert;
pub mod client;
pub mod config;
pub mod csr;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod keepalive;
pub mod pem;
pub mod relay;
pub mod request;
pub mod server;
pub mod stream;
pub mod tls;

pub use cert::WorkloadCertificate;
pub use client::{Pool, Tunnel, TunnelTarget};
pub use config::HboneConfig;
pub use server::{DirectHandler, HboneServer, InboundHandler, StaticServerTls};
