//! Validation before resources reach a model: every finding names the file,
//! the object (`Kind namespace/name`) and the field. [`keep_last_good`] lets a
//! model keep the previous version of an object that now fails, so one bad
//! edit never takes working config away.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::k8s::{Resources, Source, object_ref};
use crate::translate::{Finding, Severity, translate};

/// Checks `res`: what translation rejects (bad CIDRs, ports, actions, ...) plus
/// the cross-object checks `istioctl analyze` makes (a selector that matches
/// no pod).
pub fn validate(res: &Resources) -> Vec<Finding> {
    let mut findings: Vec<Finding> = translate(res)
        .findings
        .into_iter()
        .filter(|f| f.severity >= Severity::Warning)
        .collect();
    findings.extend(cross_checks(res));
    findings
}

/// The checks that look across objects (what translation alone cannot see).
pub fn cross_checks(res: &Resources) -> Vec<Finding> {
    let mut findings = Vec::new();
    // Labels of every pod, and of the pods each Deployment will make, by reference.
    let empty = BTreeMap::new();
    let pod_labels: Vec<(&str, &BTreeMap<String, String>)> = res
        .pods
        .iter()
        .map(|(_, p)| (&p.metadata, &p.metadata))
        .chain(res.deployments.iter().filter_map(|(_, d)| {
            // A template's pods live in the Deployment's namespace.
            Some((&d.metadata, d.spec.as_ref()?.template.metadata.as_ref()?))
        }))
        .map(|(owner, m)| {
            (
                owner.namespace.as_deref().unwrap_or("default"),
                m.labels.as_ref().unwrap_or(&empty),
            )
        })
        .collect();
    let matches_some = |ns: &str, sel: &BTreeMap<String, String>| {
        pod_labels
            .iter()
            .any(|(pns, l)| *pns == ns && sel.iter().all(|(k, v)| l.get(k) == Some(v)))
    };
    for (source, p) in &res.authorization_policies {
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if let Some(sel) = &p.spec.selector
            && !sel.match_labels.is_empty()
            && !matches_some(&ns, &sel.match_labels)
        {
            findings.push(Finding {
                severity: Severity::Warning,
                code: crate::translate::codes::NO_MATCHING_WORKLOADS_FOUND,
                source: source.clone(),
                object: object_ref("AuthorizationPolicy", &p.metadata),
                field: "spec.selector.matchLabels".into(),
                message: "selects no pod in this namespace".into(),
            });
        }
    }
    for (source, s) in &res.services {
        let ns = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if let Some(sel) = s.spec.as_ref().and_then(|s| s.selector.as_ref())
            && !sel.is_empty()
            && !matches_some(&ns, sel)
        {
            findings.push(Finding {
                severity: Severity::Info,
                code: "",
                source: source.clone(),
                object: object_ref("Service", &s.metadata),
                field: "spec.selector".into(),
                message: "selects no pod yet: the service has no endpoints".into(),
            });
        }
    }
    findings
}

fn replace_bad<T: Clone>(
    kind: &str,
    incoming: Vec<(Source, T)>,
    last_good: &[(Source, T)],
    bad: &HashSet<String>,
    meta: fn(&T) -> &ObjectMeta,
    fail_closed: bool,
) -> Vec<(Source, T)> {
    let mut out = Vec::with_capacity(incoming.len());
    for (source, obj) in incoming {
        let key = object_ref(kind, meta(&obj));
        if !bad.contains(&key) {
            out.push((source, obj));
            continue;
        }
        if let Some(old) = last_good
            .iter()
            .find(|(_, o)| object_ref(kind, meta(o)) == key)
        {
            tracing::warn!(object = %key, "invalid update rejected; keeping the last good version");
            out.push(old.clone());
        } else if fail_closed {
            // Leaving a never-good policy out would drop a DENY: its
            // translation is fail-closed (see translate::policy), so use it.
            tracing::warn!(object = %key, "invalid policy enforced in its fail-closed form");
            out.push((source, obj));
        } else {
            tracing::warn!(object = %key, "invalid object left out");
        }
    }
    out
}

/// `incoming` with every object named in `bad` (`Kind namespace/name`)
/// replaced by its version in `last_good`, or dropped if it has none —
/// except an AuthorizationPolicy, which is kept in its fail-closed form.
pub fn keep_last_good(
    incoming: Resources,
    last_good: &Resources,
    bad: &HashSet<String>,
) -> Resources {
    if bad.is_empty() {
        return incoming;
    }
    Resources {
        namespaces: replace_bad(
            "Namespace",
            incoming.namespaces,
            &last_good.namespaces,
            bad,
            |o| &o.metadata,
            false,
        ),
        pods: replace_bad(
            "Pod",
            incoming.pods,
            &last_good.pods,
            bad,
            |o| &o.metadata,
            false,
        ),
        deployments: replace_bad(
            "Deployment",
            incoming.deployments,
            &last_good.deployments,
            bad,
            |o| &o.metadata,
            false,
        ),
        services: replace_bad(
            "Service",
            incoming.services,
            &last_good.services,
            bad,
            |o| &o.metadata,
            false,
        ),
        service_accounts: replace_bad(
            "ServiceAccount",
            incoming.service_accounts,
            &last_good.service_accounts,
            bad,
            |o| &o.metadata,
            false,
        ),
        authorization_policies: replace_bad(
            "AuthorizationPolicy",
            incoming.authorization_policies,
            &last_good.authorization_policies,
            bad,
            |o| &o.metadata,
            true,
        ),
        peer_authentications: replace_bad(
            "PeerAuthentication",
            incoming.peer_authentications,
            &last_good.peer_authentications,
            bad,
            |o| &o.metadata,
            false,
        ),
        virtual_services: replace_bad(
            "VirtualService",
            incoming.virtual_services,
            &last_good.virtual_services,
            bad,
            |o| &o.metadata,
            false,
        ),
        destination_rules: replace_bad(
            "DestinationRule",
            incoming.destination_rules,
            &last_good.destination_rules,
            bad,
            |o| &o.metadata,
            false,
        ),
        request_authentications: replace_bad(
            "RequestAuthentication",
            incoming.request_authentications,
            &last_good.request_authentications,
            bad,
            |o| &o.metadata,
            false,
        ),
        gateways: replace_bad(
            "Gateway",
            incoming.gateways,
            &last_good.gateways,
            bad,
            |o| &o.metadata,
            false,
        ),
        rate_limits: replace_bad(
            "RateLimitPolicy",
            incoming.rate_limits,
            &last_good.rate_limits,
            bad,
            |o| &o.metadata,
            false,
        ),
        telemetries: replace_bad(
            "Telemetry",
            incoming.telemetries,
            &last_good.telemetries,
            bad,
            |o| &o.metadata,
            false,
        ),
        mesh_configs: replace_bad(
            "ConfigMap",
            incoming.mesh_configs,
            &last_good.mesh_configs,
            bad,
            |o| &o.metadata,
            false,
        ),
        ignored: incoming.ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(yaml: &str) -> Resources {
        let mut r = Resources::default();
        r.add_yaml(yaml, "v.yaml").unwrap();
        r
    }

    const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: p, namespace: demo}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [CIDR]}}]}]}\n";

    #[test]
    fn bad_update_keeps_last_good_version() {
        let good = res(&POLICY.replace("CIDR", "10.0.0.0/8"));
        let bad_res = res(&POLICY.replace("CIDR", "10.0.0.0/99"));
        let findings = validate(&bad_res);
        let f = findings
            .iter()
            .find(|f| f.severity == Severity::Error)
            .expect("an error");
        assert_eq!(f.object, "AuthorizationPolicy demo/p");
        assert!(f.field.contains("ipBlocks"), "{f}");
        assert_eq!(f.source.file, "v.yaml");
        let bad: HashSet<String> = [f.object.clone()].into();
        let kept = keep_last_good(bad_res.clone(), &good, &bad);
        assert_eq!(kept.authorization_policies, good.authorization_policies);
        // Never good before: a policy is kept, and translation enforces it
        // fail-closed (dropping this DENY would allow what it denies).
        let kept = keep_last_good(bad_res.clone(), &Resources::default(), &bad);
        assert_eq!(kept.authorization_policies, bad_res.authorization_policies);
    }

    #[test]
    fn deployment_templates_count_as_pods_of_their_namespace() {
        let r = res(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: demo}\n\
            spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: x}]}}}\n---\n\
            apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
            metadata: {name: p, namespace: demo}\nspec: {selector: {matchLabels: {app: web}}}\n",
        );
        assert!(cross_checks(&r).is_empty(), "{:?}", cross_checks(&r));
    }

    #[test]
    fn selector_matching_nothing_is_reported() {
        let r = res(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
            metadata: {name: p, namespace: demo}\nspec: {selector: {matchLabels: {app: ghost}}}\n",
        );
        let f = validate(&r);
        assert!(
            f.iter().any(|f| f.field == "spec.selector.matchLabels"),
            "{f:?}"
        );
    }
}
