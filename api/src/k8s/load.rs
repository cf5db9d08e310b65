//! Reading resources from YAML files (multi-document), with each object
//! attributed to its file and document so errors can point at it.

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use serde::de::DeserializeOwned;

use super::istio::{AuthorizationPolicy, PeerAuthentication};
use super::networking::{
    DestinationRule, Gateway, RateLimitPolicy, RequestAuthentication, VirtualService,
};
use super::telemetry::Telemetry;

/// Where an object came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// File path (or a label for in-memory text).
    pub file: String,
    /// 1-based document number within the file.
    pub doc: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file, self.doc)
    }
}

/// A document that could not be read; names file, document, kind and name.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{source_ref}: {object}: {message}")]
pub struct LoadError {
    /// Where.
    pub source_ref: Source,
    /// `Kind namespace/name` (or what is known of it).
    pub object: String,
    /// What is wrong.
    pub message: String,
}

/// Every resource read, by kind.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// Namespaces.
    pub namespaces: Vec<(Source, Namespace)>,
    /// Pods.
    pub pods: Vec<(Source, Pod)>,
    /// Deployments.
    pub deployments: Vec<(Source, Deployment)>,
    /// Services.
    pub services: Vec<(Source, Service)>,
    /// Service accounts.
    pub service_accounts: Vec<(Source, ServiceAccount)>,
    /// Istio AuthorizationPolicies.
    pub authorization_policies: Vec<(Source, AuthorizationPolicy)>,
    /// Istio PeerAuthentications.
    pub peer_authentications: Vec<(Source, PeerAuthentication)>,
    /// Istio VirtualServices.
    pub virtual_services: Vec<(Source, VirtualService)>,
    /// Istio DestinationRules.
    pub destination_rules: Vec<(Source, DestinationRule)>,
    /// Istio RequestAuthentications.
    pub request_authentications: Vec<(Source, RequestAuthentication)>,
    /// Gateway API Gateways (waypoints).
    pub gateways: Vec<(Source, Gateway)>,
    /// Ambit RateLimitPolicies.
    pub rate_limits: Vec<(Source, RateLimitPolicy)>,
    /// Istio Telemetry resources.
    pub telemetries: Vec<(Source, Telemetry)>,
    /// The mesh config: ConfigMap `istio` in `istio-system`, as istiod reads
    /// it (key `mesh`). Other ConfigMaps are `ignored`.
    pub mesh_configs: Vec<(Source, ConfigMap)>,
    /// Objects of kinds Ambit does not interpret: (`apiVersion/kind`,
    /// `Kind namespace/name`). Each is reported as a finding.
    pub ignored: Vec<(Source, (String, String))>,
}

fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    source: &Source,
    object: &str,
) -> Result<T, LoadError> {
    serde_yaml::from_value(value).map_err(|e| LoadError {
        source_ref: source.clone(),
        object: object.to_string(),
        message: e.to_string(),
    })
}

/// Where istiod's mesh config lives: ConfigMap `istio` in `istio-system`.
pub const MESH_CONFIG_NAMESPACE: &str = "istio-system";
/// The mesh config ConfigMap's name.
pub const MESH_CONFIG_NAME: &str = "istio";

impl Resources {
    /// Appends everything in `other` (used to merge files read separately).
    pub fn extend(&mut self, other: Resources) {
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.deployments.extend(other.deployments);
        self.services.extend(other.services);
        self.service_accounts.extend(other.service_accounts);
        self.authorization_policies
            .extend(other.authorization_policies);
        self.peer_authentications.extend(other.peer_authentications);
        self.virtual_services.extend(other.virtual_services);
        self.destination_rules.extend(other.destination_rules);
        self.request_authentications
            .extend(other.request_authentications);
        self.gateways.extend(other.gateways);
        self.rate_limits.extend(other.rate_limits);
        self.telemetries.extend(other.telemetries);
        self.mesh_configs.extend(other.mesh_configs);
        self.ignored.extend(other.ignored);
    }

    /// Reads every `*.yaml` / `*.yml` file in `dir` (sorted by name).
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let err = |message: String| LoadError {
            source_ref: Source {
                file: dir.display().to_string(),
                doc: 0,
            },
            object: "directory".into(),
            message,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut res = Resources::default();
        for f in files {
            let text =
                std::fs::read_to_string(&f).map_err(|e| err(format!("{}: {e}", f.display())))?;
            res.add_yaml(&text, &f.display().to_string())?;
        }
        Ok(res)
    }

    /// Adds the documents of one YAML text.
    pub fn add_yaml(&mut self, text: &str, file: &str) -> Result<(), LoadError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let source = Source {
                file: file.to_string(),
                doc: i + 1,
            };
            let value =
                serde::Deserialize::deserialize(doc).map_err(|e: serde_yaml::Error| LoadError {
                    source_ref: source.clone(),
                    object: "document".into(),
                    message: e.to_string(),
                })?;
            self.add_value(value, source)?;
        }
        Ok(())
    }

    /// Adds one object given as JSON (what a Kubernetes API server returns),
    /// attributed to `source`; dispatched and checked exactly as YAML is.
    pub fn add_json(&mut self, value: serde_json::Value, source: Source) -> Result<(), LoadError> {
        let value = serde_yaml::to_value(value).map_err(|e| LoadError {
            source_ref: source.clone(),
            object: "object".into(),
            message: e.to_string(),
        })?;
        self.add_value(value, source)
    }

    fn add_value(&mut self, value: serde_yaml::Value, source: Source) -> Result<(), LoadError> {
        if value.is_null() {
            return Ok(()); // empty document (e.g. a trailing `---`)
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("<unnamed>");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let object = format!("{kind} {ns}/{name}");
        if kind.is_empty() || api_version.is_empty() {
            return Err(LoadError {
                source_ref: source,
                object,
                message: "missing apiVersion or kind".into(),
            });
        }
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        match (group, kind.as_str()) {
            ("", "Namespace") => self
                .namespaces
                .push((source.clone(), typed(value, &source, &object)?)),
            ("", "Pod") => self
                .pods
                .push((source.clone(), typed(value, &source, &object)?)),
            ("", "Service") => self
                .services
                .push((source.clone(), typed(value, &source, &object)?)),
            ("", "ConfigMap") if (ns, name) == (MESH_CONFIG_NAMESPACE, MESH_CONFIG_NAME) => self
                .mesh_configs
                .push((source.clone(), typed(value, &source, &object)?)),
            ("", "ServiceAccount") => self
                .service_accounts
                .push((source.clone(), typed(value, &source, &object)?)),
            ("apps", "Deployment") => self
                .deployments
                .push((source.clone(), typed(value, &source, &object)?)),
            ("security.istio.io", "AuthorizationPolicy") => self
                .authorization_policies
                .push((source.clone(), typed(value, &source, &object)?)),
            ("security.istio.io", "PeerAuthentication") => self
                .peer_authentications
                .push((source.clone(), typed(value, &source, &object)?)),
            ("security.istio.io", "RequestAuthentication") => self
                .request_authentications
                .push((source.clone(), typed(value, &source, &object)?)),
            ("networking.istio.io", "VirtualService") => self
                .virtual_services
                .push((source.clone(), typed(value, &source, &object)?)),
            ("networking.istio.io", "DestinationRule") => self
                .destination_rules
                .push((source.clone(), typed(value, &source, &object)?)),
            ("gateway.networking.k8s.io", "Gateway") => self
                .gateways
                .push((source.clone(), typed(value, &source, &object)?)),
            ("telemetry.istio.io", "Telemetry") => self
                .telemetries
                .push((source.clone(), typed(value, &source, &object)?)),
            ("ambit.dev", "RateLimitPolicy") => self
                .rate_limits
                .push((source.clone(), typed(value, &source, &object)?)),
            _ => self
                .ignored
                .push((source, (format!("{api_version}/{kind}"), object))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_yaml_and_names_bad_documents() {
        let mut r = Resources::default();
        r.add_yaml(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: echo, namespace: demo}\n\
             spec: {replicas: 2, selector: {matchLabels: {app: echo}}, template: {metadata: {labels: {app: echo}}, spec: {containers: [{name: echo, image: x}]}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\n---\n",
            "demo.yaml",
        )
        .unwrap();
        assert_eq!(r.namespaces.len(), 1);
        assert_eq!(r.deployments.len(), 1);
        assert_eq!(r.ignored.len(), 1);

        let err = r
            .add_yaml(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\nspec: {actoin: DENY}\n",
                "bad.yaml",
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bad.yaml (document 1)")
                && msg.contains("AuthorizationPolicy demo/p")
                && msg.contains("actoin"),
            "{msg}"
        );
    }
}
