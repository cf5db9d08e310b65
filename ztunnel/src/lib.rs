//! ztunnel: Ambit's per-node L4 proxy.
//!
//! Receives pod traffic captured by eBPF (`ambit-ebpf`), carries it in HBONE
//! (`ambit-hbone`) to the destination node, and enforces L4 authorization.

pub mod access;
pub mod admin;
pub mod inbound;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod proxy;
pub mod standalone;
pub mod xds;
pub mod zds;

pub use proxy::{Ztunnel, ZtunnelConfig, ZtunnelError};
