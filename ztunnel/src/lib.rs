//! ztunnel: Ambit's per-node L4 proxy.
//!
//! Receives pod traffic captured by eBPF (`ambit-ebpf`), carries it in HBONE
//! (`ambit-hbone`) to the destination node, and enforces L4 authorization.

pub mod netns;
pub mod rbac;
pub mod state;
