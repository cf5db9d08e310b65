//! Istio `security.istio.io` resources as users write them (v1 and v1beta1).
//! Unknown fields are rejected so a typo never silently changes a policy.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A namespaced custom resource: metadata and a typed spec (`apiVersion`
/// and `kind` are accepted and ignored; the spec rejects unknown fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: S,
    /// Status as the API server holds it, uninterpreted: translation never
    /// reads it; the waypoint deployer compares the status it would write
    /// with it (Gateway conditions keep their transition times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `spec.selector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a pod must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `spec.targetRef(s)` (waypoint binding; ignored by ztunnel).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// An `AuthorizationPolicy`.
pub type AuthorizationPolicy = Object<AuthorizationPolicySpec>;

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Pods it applies to (none: the whole namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Waypoint binding.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// Waypoint binding.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// ALLOW (default), DENY, AUDIT, CUSTOM.
    #[serde(default)]
    pub action: Option<String>,
    /// CUSTOM provider.
    #[serde(default)]
    pub provider: Option<serde_json::Value>,
    /// Rules (ORed). Absent with ALLOW means allow nothing.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
}

/// One rule: from AND to AND when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources (ORed).
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations (ORed).
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions (ANDed).
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `from:` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// `from.source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`td/ns/N/sa/S`, `*` wildcards).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals (HTTP only).
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Negated (HTTP only).
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Peer IPs/CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Client IPs from X-Forwarded-For (HTTP only).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Negated (HTTP only).
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts (`ns/name`).
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

/// `to:` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// `to.operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (HTTP only).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Negated (HTTP only).
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Ports (as strings, as Istio writes them).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// Methods (HTTP only).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Negated (HTTP only).
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (HTTP only).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Negated (HTTP only).
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `when:` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute, e.g. `source.ip`, `request.headers[x]`.
    pub key: String,
    /// Values (ORed).
    #[serde(default)]
    pub values: Vec<String>,
    /// Negated values.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// A `PeerAuthentication`.
pub type PeerAuthentication = Object<PeerAuthenticationSpec>;

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Pods it applies to.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// `{mode: STRICT|PERMISSIVE|DISABLE|UNSET}`.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
    /// Per-port modes.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, MtlsMode>,
}

/// `mtls:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsMode {
    /// The mode.
    #[serde(default)]
    pub mode: Option<String>,
}
