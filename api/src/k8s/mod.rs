//! The user-facing resources Ambit reads, parsed from ordinary Kubernetes YAML:
//! core types from `k8s-openapi`, Istio security CRDs as our own types
//! ([`istio`]). Every document is attributed to its file so findings can name it.

pub mod istio;
mod load;
pub mod networking;
pub mod telemetry;

pub use load::{LoadError, MESH_CONFIG_NAME, MESH_CONFIG_NAMESPACE, Resources, Source};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label that enrolls a namespace or pod in ambient mode.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Its value that enrolls.
pub const AMBIENT: &str = "ambient";
/// Its value that opts a pod out.
pub const NONE: &str = "none";
/// Istio's root namespace: policies there apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// `kind namespace/name` for messages.
pub fn object_ref(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}
