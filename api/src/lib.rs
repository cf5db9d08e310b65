//! Ambit's user-facing resources and wire types.
//!
//! Today this holds the Istio CA API messages ([`ca`]); the Kubernetes/Istio
//! resource types, their validation and translation, and the xDS types join it
//! with the ztunnel and controller work.

pub mod ca;
