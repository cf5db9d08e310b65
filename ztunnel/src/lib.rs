//! ztunnel: Ambit's per-node L4 proxy.
//!
//! Receives pod traffic captured by eBPF (`ambit-ebpf`), carries it in HBONE
//! (`ambit-hbone`) to the destination node, and enforces L4 authorization.

pub mod certs;
pub mod inbound;
pub mod metrics;
pub mod netns;
pub mod outbound;
pub mod proxy;
pub mod rbac;
pub mod socket;
pub mod state;

pub use proxy::{Ztunnel, ZtunnelConfig, ZtunnelError};
