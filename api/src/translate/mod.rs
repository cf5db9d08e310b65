//! Kubernetes + Istio resources → proxy state. Written once: the local cluster
//! and the controller both call [`translate`].
//!
//! * A pod is in the mesh (HBONE) when its namespace or itself carries
//!   `istio.io/dataplane-mode=ambient`, it is not opted out with `none`, and it
//!   does not use the host network.
//! * Services become VIPs; pods selected by a Service list it with their port map.
//! * `AuthorizationPolicy` becomes ztunnel's L4 form ([`policy`]); `PeerAuthentication`
//!   STRICT becomes a DENY of peers without an identity, as Istio does.

pub mod l7;
mod l7_policy;
pub mod mesh;
mod policy;
mod telemetry;
mod uninterpreted;
pub mod waypoints;
mod workloads;

use crate::k8s::{Resources, Source};
use crate::model::LocalConfig;

pub use mesh::MeshConfig;
pub use workloads::{expand_deployments, pod_in_mesh};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Applied, but worth knowing.
    Info,
    /// Applied differently from what was written (e.g. an L7 field on L4).
    Warning,
    /// Not applied.
    Error,
}

/// Something the translation noticed about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Istio's analyzer message code (`IST0101`, ...) when Istio has one
    /// for this finding; "" for what only Ambit reports.
    pub code: &'static str,
    /// Where the object came from.
    pub source: Source,
    /// `Kind namespace/name`.
    pub object: String,
    /// Field path, e.g. `spec.rules[0].to[0].operation.methods`.
    pub field: String,
    /// What it means.
    pub message: String,
}

/// Istio analyzer codes Ambit's findings carry
/// (`pkg/config/analysis/msg/messages.yaml`).
pub mod codes {
    /// ReferencedResourceNotFound: a subset, host or object named is absent.
    pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
    /// SchemaValidationError: a field's value is invalid.
    pub const SCHEMA_VALIDATION_ERROR: &str = "IST0106";
    /// InvalidRegexp.
    pub const INVALID_REGEXP: &str = "IST0122";
    /// InvalidAnnotation: an Istio annotation with a bad value.
    pub const INVALID_ANNOTATION: &str = "IST0125";
    /// NoMatchingWorkloadsFound: a selector selects nothing.
    pub const NO_MATCHING_WORKLOADS_FOUND: &str = "IST0127";
}

/// The Istio code a finding about `field` at `severity` carries: a value
/// that does not validate is a schema error (an invalid regex and a bad
/// annotation have codes of their own); what is only Ambit's has none.
pub(crate) fn code_for(severity: Severity, field: &str) -> &'static str {
    if field == l7_policy::DRY_RUN_FIELD {
        codes::INVALID_ANNOTATION
    } else if severity < Severity::Error {
        ""
    } else if field.ends_with(".regex") {
        codes::INVALID_REGEXP
    } else {
        codes::SCHEMA_VALIDATION_ERROR
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = if self.code.is_empty() {
            String::new()
        } else {
            format!("{} ", self.code)
        };
        write!(
            f,
            "{:?} [{}] {} {}: {code}{}",
            self.severity, self.source, self.object, self.field, self.message
        )
    }
}

/// The result: state plus what was noticed along the way.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// The proxy state.
    pub config: LocalConfig,
    /// Findings, in input order.
    pub findings: Vec<Finding>,
    /// L7 config of every Service bound to a waypoint.
    pub l7: Vec<crate::xds::proto::l7::L7Service>,
    /// The mesh config the translation used.
    pub mesh: MeshConfig,
}

/// Translates `res` (pods must carry `spec.nodeName` and `status.podIP`).
pub fn translate(res: &Resources) -> Translation {
    translate_with_defaults(res, &MeshConfig::default())
}

/// [`translate`], with `defaults` for what no mesh config says (the
/// controller's `--trust-domain` when there is no ConfigMap `istio`).
pub fn translate_with_defaults(res: &Resources, defaults: &MeshConfig) -> Translation {
    let mut out = Translation::default();
    out.mesh = mesh::translate_mesh(res, defaults, &mut out);
    let waypoints = waypoints::Waypoints::new(res);
    workloads::translate_services(res, &waypoints, &mut out);
    workloads::translate_pods(res, &waypoints, &mut out);
    policy::translate_policies(res, &mut out);
    l7::translate_l7(res, &waypoints, &mut out);
    mesh::migrate_principals(&mut out.l7, &out.mesh);
    report_ignored(res, &mut out);
    uninterpreted::report(res, &mut out);
    out
}

/// Every object of a kind Ambit does not interpret is a finding: accepted
/// and silently without effect would be worse than refused.
fn report_ignored(res: &Resources, out: &mut Translation) {
    for (source, (kind, object)) in &res.ignored {
        out.findings.push(Finding {
            severity: Severity::Warning,
            code: "",
            source: source.clone(),
            object: object.clone(),
            field: "kind".into(),
            message: format!("{kind} is not interpreted by Ambit: this object has no effect"),
        });
    }
}

#[cfg(test)]
mod tests;
