//! Proxy state: the workloads, services and L4 policies ztunnel routes and
//! authorizes by. The local cluster and the controller both translate user
//! resources into it (see `translate`).
//!
//! The shapes follow Istio ztunnel's local config format (docs/wire.md §5), so the
//! same YAML a user would hand Istio's ztunnel for debugging works here, and the
//! xDS types map onto them one to one.

pub mod authz;
mod local;
mod state;

pub use local::{LocalConfig, LocalConfigError};
pub use state::{Endpoint, ProxyState};

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_identity::SpiffeId;
use serde::{Deserialize, Serialize};

/// How a workload receives mesh traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain TCP: not in the mesh.
    #[default]
    Tcp,
    /// HBONE on 15008.
    Hbone,
}

/// Endpoint health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Takes traffic.
    #[default]
    Healthy,
    /// Skipped by load balancing.
    Unhealthy,
}

/// The workload uid of pod `namespace/name`, in Istio's form
/// (`<cluster>//Pod/<namespace>/<name>`, cluster `Kubernetes`): the xDS
/// resource name and the key ZDS enrolment uses. One builder, so the
/// controller, the local cluster and policy binding never disagree.
pub fn pod_uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}

/// A pod (or other workload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Mesh-unique key, e.g. `Kubernetes//Pod/ns/name`.
    pub uid: String,
    /// Pod name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Addresses.
    pub workload_ips: Vec<IpAddr>,
    /// `ns/hostname` → service port → target port.
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    /// TCP or HBONE.
    #[serde(default)]
    pub protocol: Protocol,
    /// Trust domain ("" means `cluster.local`).
    #[serde(default)]
    pub trust_domain: String,
    /// Service account ("" means `default`).
    #[serde(default)]
    pub service_account: String,
    /// Node the workload runs on.
    #[serde(default)]
    pub node: String,
    /// Health.
    #[serde(default)]
    pub status: HealthStatus,
    /// Keys (`ns/name`) of workload-selector policies that apply.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// The `app` label (canonical service) for telemetry.
    #[serde(default)]
    pub canonical_name: String,
    /// The `version` label for telemetry.
    #[serde(default)]
    pub canonical_revision: String,
    /// Deployment (or pod) name for telemetry.
    #[serde(default)]
    pub workload_name: String,
    /// The waypoint for traffic addressed to this workload's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayRef>,
}

/// Where a waypoint is (docs/wire.md §4.6 `GatewayAddress`): `destination` is
/// `namespace/hostname` of the waypoint's Service or `network/IP`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRef {
    /// `namespace/hostname` or `network/IP`.
    pub destination: String,
    /// The waypoint's HBONE port (15008).
    #[serde(default = "default_hbone_port")]
    pub hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    15008
}

impl GatewayRef {
    /// A waypoint reached through its Service `hostname` in `namespace`.
    pub fn service(namespace: &str, hostname: &str) -> Self {
        GatewayRef {
            destination: format!("{namespace}/{hostname}"),
            hbone_mtls_port: 15008,
        }
    }

    /// The IP, when the destination is an address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.destination.rsplit_once('/')?.1.parse().ok()
    }

    /// The `namespace/hostname` key, when the destination is a hostname.
    pub fn service_key(&self) -> Option<&str> {
        self.ip().is_none().then_some(self.destination.as_str())
    }
}

impl Workload {
    /// The workload's SPIFFE identity, with Istio's defaults for empty fields.
    pub fn identity(&self) -> Result<SpiffeId, ambit_identity::SpiffeIdError> {
        let td = if self.trust_domain.is_empty() {
            ambit_identity::DEFAULT_TRUST_DOMAIN
        } else {
            &self.trust_domain
        };
        let sa = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        SpiffeId::new(td, &self.namespace, sa)
    }
}

/// A Kubernetes Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// FQDN, e.g. `echo.demo.svc.cluster.local`.
    pub hostname: String,
    /// VIPs as `network/IP` (`/10.96.0.1` on the default network).
    pub vips: Vec<String>,
    /// Service port → target port (0: use each endpoint's mapping).
    pub ports: BTreeMap<u16, u16>,
    /// Extra server identities accepted for this service.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// The Service's waypoint: traffic to a VIP goes there first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayRef>,
}

impl Service {
    /// `namespace/hostname`, the key workloads use in their `services` map.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The VIP addresses (network prefix dropped).
    pub fn vip_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vips.iter().filter_map(|v| {
            let ip = v.rsplit_once('/').map(|(_, ip)| ip).unwrap_or(v);
            ip.parse().ok()
        })
    }
}

pub use authz::{Action, Authorization, PolicyMatch, PolicyScope, StringMatch};
