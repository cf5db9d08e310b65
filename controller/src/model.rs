//! The model: resources from a source, validated (a bad object keeps its last
//! good version), translated once by `ambit-api`, and encoded as xDS resources
//! whose version is a hash of their bytes. Equal bytes → equal version, so a
//! push sends only what changed and a restarted controller recognises what a
//! reconnecting proxy already holds.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use ambit_api::k8s::Resources;
use ambit_api::model::LocalConfig;
use ambit_api::translate::{Finding, MeshConfig, Severity, translate_with_defaults};
use ambit_api::xds::{self, convert};
use prost::Message;

/// One encoded resource, shared by every connection that sends it.
#[derive(Debug, PartialEq)]
pub struct XdsResource {
    /// `Resource.name` (workload uid, `ns/hostname`, `ns/name`); shared with
    /// every stream's record of what it sent.
    pub name: Arc<str>,
    /// Content hash of the encoded body (`Resource.version` is its hex form).
    pub version: u64,
    /// The body as `Any`.
    pub body: prost_types::Any,
}

impl XdsResource {
    /// `Resource.version` on the wire.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }

    /// A version a proxy reports back (0, never a real hash here, if it is
    /// not one of ours: the resource is then sent again).
    pub fn parse_version(v: &str) -> u64 {
        u64::from_str_radix(v, 16).unwrap_or(0)
    }
}

/// Resources of one type URL, by name.
pub type ResourceSet = HashMap<String, Arc<XdsResource>>;

/// One published state of the world.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with each publication.
    pub generation: u64,
    /// `Address` resources (workloads and services).
    pub addresses: ResourceSet,
    /// `Authorization` resources.
    pub authorizations: ResourceSet,
    /// `L7Service` resources (waypoint config), by `namespace/hostname`.
    pub l7: ResourceSet,
    /// The translated proxy state the resources were built from.
    pub config: Arc<LocalConfig>,
    /// SPIFFE ids of the mesh pods on each node: what the CA may sign for it.
    pub identities_by_node: HashMap<String, HashSet<String>>,
    /// What validation and translation noticed.
    pub findings: Vec<Finding>,
    /// Names (per type URL) added, changed or removed since generation
    /// `generation - 1`: lets a stream that is up to date send a change
    /// without comparing the whole world.
    pub changed: HashMap<&'static str, Vec<String>>,
}

impl Snapshot {
    /// The resources of `type_url`, if the controller serves that type.
    pub fn resources(&self, type_url: &str) -> Option<&ResourceSet> {
        match type_url {
            xds::ADDRESS_TYPE => Some(&self.addresses),
            xds::AUTHORIZATION_TYPE => Some(&self.authorizations),
            xds::L7_SERVICE_TYPE => Some(&self.l7),
            _ => None,
        }
    }

    /// May a proxy on `node` hold certificates for `identity`?
    pub fn node_may_hold(&self, node: &str, identity: &str) -> bool {
        self.identities_by_node
            .get(node)
            .is_some_and(|ids| ids.contains(identity))
    }
}

fn encode(
    name: String,
    type_url: &str,
    msg: &impl Message,
    previous: Option<&ResourceSet>,
) -> Arc<XdsResource> {
    let bytes = msg.encode_to_vec();
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    let version = h.finish();
    if let Some(old) = previous.and_then(|p| p.get(&name))
        && old.version == version
    {
        return old.clone();
    }
    Arc::new(XdsResource {
        name: Arc::from(name),
        version,
        body: prost_types::Any {
            type_url: type_url.to_string(),
            value: bytes,
        },
    })
}

/// Builds the snapshot for `config`, reusing unchanged entries of `previous`.
pub fn build_snapshot(
    generation: u64,
    config: LocalConfig,
    l7_services: Vec<ambit_api::xds::proto::l7::L7Service>,
    findings: Vec<Finding>,
    previous: Option<&Snapshot>,
) -> Snapshot {
    let prev_addr = previous.map(|p| &p.addresses);
    let prev_auth = previous.map(|p| &p.authorizations);
    let mut addresses = ResourceSet::with_capacity(config.workloads.len() + config.services.len());
    let mut identities_by_node: HashMap<String, HashSet<String>> = HashMap::new();
    for w in &config.workloads {
        let r = encode(
            w.uid.clone(),
            xds::ADDRESS_TYPE,
            &convert::workload_to_proto(w),
            prev_addr,
        );
        addresses.insert(w.uid.clone(), r);
        if w.protocol == ambit_api::model::Protocol::Hbone
            && let Ok(id) = w.identity()
        {
            identities_by_node
                .entry(w.node.clone())
                .or_default()
                .insert(id.to_string());
        }
    }
    for s in &config.services {
        let key = s.key();
        let r = encode(
            key.clone(),
            xds::ADDRESS_TYPE,
            &convert::service_to_proto(s),
            prev_addr,
        );
        addresses.insert(key, r);
    }
    let mut authorizations = ResourceSet::with_capacity(config.policies.len());
    for p in &config.policies {
        let key = p.key();
        let r = encode(
            key.clone(),
            xds::AUTHORIZATION_TYPE,
            &convert::authorization_to_proto(p),
            prev_auth,
        );
        authorizations.insert(key, r);
    }
    let prev_l7 = previous.map(|p| &p.l7);
    let mut l7 = ResourceSet::with_capacity(l7_services.len());
    for s in &l7_services {
        let key = format!("{}/{}", s.namespace, s.hostname);
        let r = encode(key.clone(), xds::L7_SERVICE_TYPE, s, prev_l7);
        l7.insert(key, r);
    }
    let mut changed = HashMap::new();
    if let Some(p) = previous {
        changed.insert(xds::L7_SERVICE_TYPE, changed_names(&p.l7, &l7));
        changed.insert(xds::ADDRESS_TYPE, changed_names(&p.addresses, &addresses));
        changed.insert(
            xds::AUTHORIZATION_TYPE,
            changed_names(&p.authorizations, &authorizations),
        );
    }
    Snapshot {
        generation,
        addresses,
        authorizations,
        l7,
        config: Arc::new(config),
        identities_by_node,
        findings,
        changed,
    }
}

/// Names whose entry differs between `old` and `new` (added, replaced, removed).
fn changed_names(old: &ResourceSet, new: &ResourceSet) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(n, r)| old.get(*n).is_none_or(|o| !Arc::ptr_eq(o, r)))
        .map(|(n, _)| n.clone())
        .collect();
    out.extend(old.keys().filter(|n| !new.contains_key(*n)).cloned());
    out
}

/// Identifies one object across updates: `Kind namespace/name`.
fn object_keys(findings: &[Finding]) -> HashSet<String> {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.object.clone())
        .collect()
}

/// The model: turns each new set of resources into a snapshot, keeping the
/// last good version of any object that fails validation.
#[derive(Debug, Default)]
pub struct Model {
    /// What the last snapshot was built from (objects with errors at their
    /// last good version).
    last_good: Arc<Resources>,
    generation: u64,
    /// The CA's trust domain: a mesh config naming another is refused.
    trust_domain: Option<String>,
}

impl Model {
    /// A model whose mesh config must keep `trust_domain` (the CA's: it
    /// signs no other, so workloads in another could not get certificates).
    pub fn for_trust_domain(trust_domain: &str) -> Self {
        Model {
            trust_domain: Some(trust_domain.to_string()),
            ..Default::default()
        }
    }

    fn mesh_defaults(&self) -> MeshConfig {
        let mut mesh = MeshConfig::default();
        if let Some(td) = &self.trust_domain {
            mesh.trust_domain = td.clone();
        }
        mesh
    }

    /// An Error finding on the mesh config when it names a trust domain
    /// other than the CA's.
    fn check_trust_domain(
        &self,
        res: &Resources,
        translation: &mut ambit_api::translate::Translation,
    ) {
        let Some(ca) = &self.trust_domain else { return };
        if translation.mesh.trust_domain == *ca {
            return;
        }
        let Some((source, cm)) = res.mesh_configs.first() else {
            return;
        };
        translation.findings.push(Finding {
            severity: Severity::Error,
            code: "",
            source: source.clone(),
            object: ambit_api::k8s::object_ref("ConfigMap", &cm.metadata),
            field: "data.mesh.trustDomain".into(),
            message: format!(
                "{:?} is not the CA's trust domain {ca:?} (ambit-controller --trust-domain):                  workloads could not be issued certificates; restart the controller with the new                  trust domain to change it",
                translation.mesh.trust_domain
            ),
        });
    }

    /// The resources the last snapshot was built from, as accepted: what
    /// the waypoint deployer works from.
    pub fn accepted(&self) -> Arc<Resources> {
        self.last_good.clone()
    }

    /// Validates and translates `incoming`; objects with errors are replaced by
    /// their last good version (or left out if they never were good). The
    /// returned snapshot carries every finding, so nothing is silently lost.
    pub fn apply(&mut self, incoming: Resources, previous: Option<&Snapshot>) -> Snapshot {
        let t = std::time::Instant::now();
        let mut translation = translate_with_defaults(&incoming, &self.mesh_defaults());
        self.check_trust_domain(&incoming, &mut translation);
        let translate_ms = t.elapsed().as_millis() as u64;
        let mut findings = ambit_api::validate::cross_checks(&incoming);
        tracing::debug!(
            translate_ms,
            checks_ms = t.elapsed().as_millis() as u64 - translate_ms,
            "model stages"
        );
        let bad = object_keys(&translation.findings);
        let accepted = if bad.is_empty() {
            incoming
        } else {
            // Translate again with the failing objects at their last good version.
            let accepted = ambit_api::validate::keep_last_good(incoming, &self.last_good, &bad);
            let findings_first = std::mem::take(&mut translation.findings);
            translation = translate_with_defaults(&accepted, &self.mesh_defaults());
            translation.findings = findings_first;
            accepted
        };
        findings.extend(translation.findings);
        self.last_good = Arc::new(accepted);
        self.generation += 1;
        build_snapshot(
            self.generation,
            translation.config,
            translation.l7,
            findings,
            previous,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(yaml: &str) -> Resources {
        let mut r = Resources::default();
        r.add_yaml(yaml, "t.yaml").unwrap();
        r
    }

    const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {nodeName: node1, serviceAccountName: sa-a, containers: [{name: c, image: x}]}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: b}}
spec: {nodeName: node2, containers: [{name: c, image: x}]}
status: {podIP: 10.2.0.2}
"#;

    #[test]
    fn unchanged_resources_keep_their_version_and_allocation() {
        let mut m = Model::default();
        let s1 = m.apply(res(BASE), None);
        assert_eq!(s1.addresses.len(), 2);
        let changed = BASE.replace("10.2.0.2", "10.2.0.3");
        let s2 = m.apply(res(&changed), Some(&s1));
        let a1 = &s1.addresses["Kubernetes//Pod/demo/a"];
        let a2 = &s2.addresses["Kubernetes//Pod/demo/a"];
        assert!(Arc::ptr_eq(a1, a2), "unchanged workload re-encoded");
        assert_ne!(
            s1.addresses["Kubernetes//Pod/demo/b"].version,
            s2.addresses["Kubernetes//Pod/demo/b"].version
        );
        assert_eq!(
            s2.changed[ambit_api::xds::ADDRESS_TYPE],
            vec!["Kubernetes//Pod/demo/b".to_string()]
        );
    }

    #[test]
    fn identities_are_scoped_to_nodes() {
        let mut m = Model::default();
        let s = m.apply(res(BASE), None);
        assert!(s.node_may_hold("node1", "spiffe://cluster.local/ns/demo/sa/sa-a"));
        assert!(!s.node_may_hold("node2", "spiffe://cluster.local/ns/demo/sa/sa-a"));
        assert!(s.node_may_hold("node2", "spiffe://cluster.local/ns/demo/sa/default"));
    }

    fn mesh(td: &str) -> String {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\n\
             data:\n  mesh: \"trustDomain: {td}\"\n---\n"
        )
    }

    #[test]
    fn trust_domain_follows_the_ca_and_a_mesh_config_that_leaves_it_is_refused() {
        let mut m = Model::for_trust_domain("example.org");
        let s = m.apply(res(BASE), None);
        assert!(
            s.node_may_hold("node1", "spiffe://example.org/ns/demo/sa/sa-a"),
            "no mesh config: the CA's trust domain"
        );
        let s = m.apply(res(&(mesh("example.org") + BASE)), Some(&s));
        assert!(s.node_may_hold("node1", "spiffe://example.org/ns/demo/sa/sa-a"));
        assert!(
            s.findings.iter().all(|f| f.severity < Severity::Error),
            "{:?}",
            s.findings
        );
        // An edit to another trust domain: refused, the last good stays.
        let s = m.apply(res(&(mesh("other.org") + BASE)), Some(&s));
        assert!(s.node_may_hold("node1", "spiffe://example.org/ns/demo/sa/sa-a"));
        let f = s
            .findings
            .iter()
            .find(|f| f.field == "data.mesh.trustDomain")
            .expect("a finding names the field");
        assert_eq!(
            (f.severity, f.object.as_str()),
            (Severity::Error, "ConfigMap istio-system/istio")
        );
    }
}
