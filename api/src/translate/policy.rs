//! `AuthorizationPolicy` and `PeerAuthentication` → ztunnel's L4 policies, the
//! way Istio translates them for ambient:
//!
//! * no selector → NAMESPACE scope; in the root namespace → GLOBAL; a selector →
//!   WORKLOAD_SELECTOR, listed on the selected workloads;
//! * principals/namespaces with `*` become prefix/suffix/presence matches;
//! * HTTP-only fields cannot be enforced at L4. Like Istio, fail closed: an ALLOW
//!   rule that uses them is dropped (it can never allow), a DENY rule drops only
//!   those fields (it denies more broadly). Each case is reported as a warning.
//! * `PeerAuthentication` STRICT becomes a DENY of peers without an identity.

use std::collections::BTreeMap;

use super::{Finding, Severity, Translation};
use crate::k8s::istio::{self, AuthorizationPolicy, PeerAuthentication};
use crate::k8s::{ROOT_NAMESPACE, Resources, Source, object_ref};
use crate::model::authz::{Cidr, ServiceAccountMatch};
use crate::model::{Action, Authorization, PolicyMatch, PolicyScope, StringMatch};

/// Istio's string wildcard forms: `*`, `prefix*`, `*suffix`, exact.
pub(super) fn string_match(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Presence
    } else if let Some(p) = s.strip_suffix('*') {
        StringMatch::Prefix(p.to_string())
    } else if let Some(p) = s.strip_prefix('*') {
        StringMatch::Suffix(p.to_string())
    } else {
        StringMatch::Exact(s.to_string())
    }
}

struct Ctx<'a> {
    out: &'a mut Translation,
    source: &'a Source,
    object: String,
    /// The policy's namespace (`serviceAccounts` without one).
    namespace: String,
    /// A value of the current rule did not parse (reported already).
    bad_value: bool,
}

impl Ctx<'_> {
    fn find(&mut self, severity: Severity, field: String, message: impl Into<String>) {
        self.out.findings.push(Finding {
            severity,
            code: super::code_for(severity, &field),
            source: self.source.clone(),
            object: self.object.clone(),
            field,
            message: message.into(),
        });
    }

    /// The values that parse; each one that does not is reported and marks
    /// the rule (an ALLOW rule is then dropped, a DENY rule goes on without
    /// it: Istio's `checkError`).
    fn cidrs(&mut self, field: String, list: &[String]) -> Vec<Cidr> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse() {
                Ok(c) => out.push(c),
                Err(e) => {
                    self.bad_value = true;
                    self.find(Severity::Error, format!("{field}[{i}]"), format!("{e}"));
                }
            }
        }
        out
    }

    fn ports(&mut self, field: String, list: &[String]) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse() {
                Ok(p) => out.push(p),
                Err(_) => {
                    self.bad_value = true;
                    self.find(
                        Severity::Error,
                        format!("{field}[{i}]"),
                        format!("{s:?} is not a port"),
                    );
                }
            }
        }
        out
    }
}

/// `ns/sa`, or `sa` in the policy's own namespace (Istio's reading).
fn sa_matches(list: &[String], policy_ns: &str) -> Vec<ServiceAccountMatch> {
    list.iter()
        .map(|s| s.split_once('/').unwrap_or((policy_ns, s)))
        .map(|(ns, sa)| ServiceAccountMatch {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        })
        .collect()
}

/// L4 match for one source; `Err(fields)` lists HTTP-only fields it uses.
fn source_match(
    ctx: &mut Ctx<'_>,
    path: &str,
    s: &istio::Source,
) -> (PolicyMatch, Vec<&'static str>) {
    let mut l7 = vec![];
    if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
        l7.push("requestPrincipals");
    }
    if !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty() {
        l7.push("remoteIpBlocks");
    }
    let m = PolicyMatch {
        principals: s.principals.iter().map(|p| string_match(p)).collect(),
        not_principals: s.not_principals.iter().map(|p| string_match(p)).collect(),
        namespaces: s.namespaces.iter().map(|p| string_match(p)).collect(),
        not_namespaces: s.not_namespaces.iter().map(|p| string_match(p)).collect(),
        source_ips: ctx.cidrs(format!("{path}.ipBlocks"), &s.ip_blocks),
        not_source_ips: ctx.cidrs(format!("{path}.notIpBlocks"), &s.not_ip_blocks),
        service_accounts: sa_matches(&s.service_accounts, &ctx.namespace),
        not_service_accounts: sa_matches(&s.not_service_accounts, &ctx.namespace),
        ..Default::default()
    };
    (m, l7)
}

fn operation_match(
    ctx: &mut Ctx<'_>,
    path: &str,
    o: &istio::Operation,
) -> (PolicyMatch, Vec<&'static str>) {
    let mut l7 = vec![];
    for (name, set) in [
        ("hosts", !o.hosts.is_empty() || !o.not_hosts.is_empty()),
        (
            "methods",
            !o.methods.is_empty() || !o.not_methods.is_empty(),
        ),
        ("paths", !o.paths.is_empty() || !o.not_paths.is_empty()),
    ] {
        if set {
            l7.push(name);
        }
    }
    let m = PolicyMatch {
        destination_ports: ctx.ports(format!("{path}.ports"), &o.ports),
        not_destination_ports: ctx.ports(format!("{path}.notPorts"), &o.not_ports),
        ..Default::default()
    };
    (m, l7)
}

/// The `when` keys Istio defines that only HTTP requests carry.
fn http_only_key(key: &str) -> bool {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|k| k.strip_suffix(']'))
            .is_some_and(|n| !n.is_empty())
    };
    matches!(
        key,
        "remote.ip"
            | "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
            | "connection.sni"
    ) || bracketed("request.headers[")
        || bracketed("request.auth.claims[")
}

/// A condition's L4 match; `Ok(None)` for an HTTP-only key, `Err(())` for a
/// key Istio does not define (reported).
fn condition_match(
    ctx: &mut Ctx<'_>,
    path: &str,
    c: &istio::Condition,
) -> Result<Option<PolicyMatch>, ()> {
    let vals = |v: &[String]| v.iter().map(|s| string_match(s)).collect::<Vec<_>>();
    let m = match c.key.as_str() {
        "source.ip" => PolicyMatch {
            source_ips: ctx.cidrs(format!("{path}.values"), &c.values),
            not_source_ips: ctx.cidrs(format!("{path}.notValues"), &c.not_values),
            ..Default::default()
        },
        "destination.ip" => PolicyMatch {
            destination_ips: ctx.cidrs(format!("{path}.values"), &c.values),
            not_destination_ips: ctx.cidrs(format!("{path}.notValues"), &c.not_values),
            ..Default::default()
        },
        "destination.port" => PolicyMatch {
            destination_ports: ctx.ports(format!("{path}.values"), &c.values),
            not_destination_ports: ctx.ports(format!("{path}.notValues"), &c.not_values),
            ..Default::default()
        },
        "source.namespace" => PolicyMatch {
            namespaces: vals(&c.values),
            not_namespaces: vals(&c.not_values),
            ..Default::default()
        },
        "source.principal" => PolicyMatch {
            principals: vals(&c.values),
            not_principals: vals(&c.not_values),
            ..Default::default()
        },
        key if http_only_key(key) => return Ok(None),
        other => {
            ctx.find(
                Severity::Error,
                format!("{path}.key"),
                format!(
                    "unknown attribute {other:?}: an ALLOW rule using it matches nothing, a DENY rule matches without it"
                ),
            );
            return Err(());
        }
    };
    Ok(Some(m))
}

/// A clause of entries (ORed); `None` when one entry has nothing left to
/// check at L4, so the clause holds for every connection.
fn clause(entries: Vec<PolicyMatch>) -> Option<Vec<PolicyMatch>> {
    if entries.iter().any(|m| *m == PolicyMatch::default()) {
        None
    } else {
        Some(entries)
    }
}

/// One Istio rule → one L4 rule (clauses ANDed), or `None` when it is dropped.
///
/// Istio's rule for fields ztunnel cannot see (HTTP-only fields, values that
/// do not parse, unknown keys): an ALLOW rule that uses one is dropped (it
/// can never allow); a DENY rule is enforced without it, so it denies more.
/// A DENY `from` or `to` entry with nothing left at L4 matches every
/// connection (Istio's ztunnel would read its empty match as "never", which
/// turns "deny requests without a JWT" into "deny nothing").
fn rule(
    ctx: &mut Ctx<'_>,
    i: usize,
    r: &istio::Rule,
    action: Action,
) -> Option<Vec<Vec<PolicyMatch>>> {
    ctx.bad_value = false;
    let mut clauses = Vec::new();
    let mut l7_fields: Vec<String> = vec![];
    let mut unknown_key = false;
    let mut from = Vec::new();
    for (j, f) in r.from.iter().enumerate() {
        let path = format!("spec.rules[{i}].from[{j}].source");
        let (m, l7) = source_match(ctx, &path, &f.source);
        l7_fields.extend(l7.iter().map(|f| format!("{path}.{f}")));
        from.push(m);
    }
    let mut to = Vec::new();
    for (j, t) in r.to.iter().enumerate() {
        let path = format!("spec.rules[{i}].to[{j}].operation");
        let (m, l7) = operation_match(ctx, &path, &t.operation);
        l7_fields.extend(l7.iter().map(|f| format!("{path}.{f}")));
        to.push(m);
    }
    for (j, c) in r.when.iter().enumerate() {
        let path = format!("spec.rules[{i}].when[{j}]");
        match condition_match(ctx, &path, c) {
            Ok(Some(m)) if m != PolicyMatch::default() => clauses.push(vec![m]),
            // Every value was bad: nothing left to check.
            Ok(Some(_)) => {}
            Ok(None) => l7_fields.push(format!("{path} ({})", c.key)),
            Err(()) => unknown_key = true,
        }
    }
    if action == Action::Allow && (ctx.bad_value || unknown_key) {
        return None;
    }
    if !l7_fields.is_empty() {
        let list = l7_fields.join(", ");
        if action == Action::Deny {
            ctx.find(Severity::Warning, format!("spec.rules[{i}]"), format!(
                "HTTP-only fields ({list}) cannot be checked at L4; without a waypoint this DENY rule applies to all traffic its L4 fields match"
            ));
        } else {
            ctx.find(Severity::Warning, format!("spec.rules[{i}]"), format!(
                "HTTP-only fields ({list}) cannot be checked at L4; without a waypoint this rule never matches"
            ));
            return None;
        }
    }
    if action == Action::Deny {
        clauses.extend(clause(from));
        clauses.extend(clause(to));
    } else {
        // An ALLOW entry with no field at all is Istio's "never".
        if !from.is_empty() {
            clauses.push(from);
        }
        if !to.is_empty() {
            clauses.push(to);
        }
    }
    if clauses.is_empty() {
        // `- {}`: matches every connection (an empty clause counts as true).
        clauses.push(vec![]);
    }
    Some(clauses)
}

fn scope_for(ns: &str, selector: Option<&istio::WorkloadSelector>) -> PolicyScope {
    match (selector, ns) {
        (Some(sel), _) if !sel.match_labels.is_empty() => PolicyScope::WorkloadSelector,
        (_, ROOT_NAMESPACE) => PolicyScope::Global,
        _ => PolicyScope::Namespace,
    }
}

/// Lists a selector policy on the workloads it selects.
fn bind_selector(
    out: &mut Translation,
    res: &Resources,
    ns: &str,
    key: &str,
    sel: &BTreeMap<String, String>,
) {
    for (_, pod) in &res.pods {
        let pod_ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        if pod_ns != ns && ns != ROOT_NAMESPACE {
            continue;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let uid = crate::model::pod_uid(pod_ns, pod.metadata.name.as_deref().unwrap_or_default());
        if let Some(w) = out.config.workloads.iter_mut().find(|w| w.uid == uid) {
            w.authorization_policies.push(key.to_string());
        }
    }
}

fn authorization(
    out: &mut Translation,
    res: &Resources,
    source: &Source,
    ap: &AuthorizationPolicy,
) {
    let mut ctx = Ctx {
        out,
        source,
        object: object_ref("AuthorizationPolicy", &ap.metadata),
        namespace: ap
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        bad_value: false,
    };
    let spec = &ap.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        // Bound to a waypoint: enforced there (L7), not by ztunnel.
        return;
    }
    let mut deny_all = false;
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            ctx.find(
                Severity::Error,
                "spec.action".into(),
                "CUSTOM (external authorization) is not supported: the connections its rules match are denied, as Istio does when a CUSTOM provider cannot be used",
            );
            Action::Deny
        }
        other => {
            ctx.find(
                Severity::Error,
                "spec.action".into(),
                format!(
                    "unknown action {other:?} (ALLOW, DENY, AUDIT, CUSTOM): every connection to the workloads it selects is denied until it is fixed"
                ),
            );
            deny_all = true;
            Action::Deny
        }
    };
    let ns = ap
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = ap.metadata.name.clone().unwrap_or_default();
    let mut rules = Vec::new();
    match &spec.rules {
        // One rule with no clause matches every connection.
        _ if deny_all => rules.push(vec![]),
        // ALLOW with no rules allows nothing; DENY with no rules denies nothing.
        None => {}
        Some(list) => {
            for (i, r) in list.iter().enumerate() {
                if let Some(x) = rule(&mut ctx, i, r, action) {
                    rules.push(x);
                }
            }
        }
    }
    let scope = scope_for(&ns, spec.selector.as_ref());
    let dry_run =
        super::l7_policy::dry_run(ap.metadata.annotations.as_ref()).unwrap_or_else(|message| {
            ctx.find(
                Severity::Error,
                super::l7_policy::DRY_RUN_FIELD.to_string(),
                message,
            );
            false
        });
    let policy = Authorization {
        name,
        namespace: ns.clone(),
        scope,
        action,
        dry_run,
        rules,
    };
    let key = policy.key();
    if let (PolicyScope::WorkloadSelector, Some(sel)) = (scope, &spec.selector) {
        bind_selector(out, res, &ns, &key, &sel.match_labels);
    }
    out.config.policies.push(policy);
}

fn peer_authentication(
    out: &mut Translation,
    res: &Resources,
    source: &Source,
    pa: &PeerAuthentication,
) {
    let mode = pa
        .spec
        .mtls
        .as_ref()
        .and_then(|m| m.mode.as_deref())
        .unwrap_or("UNSET");
    let object = object_ref("PeerAuthentication", &pa.metadata);
    if !pa.spec.port_level_mtls.is_empty() {
        out.findings.push(Finding {
            severity: Severity::Warning,
            code: "",
            source: source.clone(),
            object: object.clone(),
            field: "spec.portLevelMtls".into(),
            message: "port-level modes are not applied by ztunnel; the workload-level mode is"
                .into(),
        });
    }
    match mode {
        "STRICT" => {}
        "PERMISSIVE" | "UNSET" => return,
        "DISABLE" => {
            out.findings.push(Finding {
                severity: Severity::Warning,
                code: "",
                source: source.clone(),
                object,
                field: "spec.mtls.mode".into(),
                message:
                    "DISABLE has no effect in ambient: traffic between mesh pods is always mTLS"
                        .into(),
            });
            return;
        }
        other => {
            out.findings.push(Finding {
                severity: Severity::Error,
                code: super::codes::SCHEMA_VALIDATION_ERROR,
                source: source.clone(),
                object,
                field: "spec.mtls.mode".into(),
                message: format!("unknown mode {other:?}"),
            });
            return;
        }
    }
    let ns = pa
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let scope = scope_for(&ns, pa.spec.selector.as_ref());
    let policy = Authorization {
        name: format!(
            "istio_converted_static_strict_{}",
            pa.metadata.name.as_deref().unwrap_or_default()
        ),
        namespace: ns.clone(),
        scope,
        action: Action::Deny,
        dry_run: false,
        rules: vec![vec![vec![PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        }]]],
    };
    let key = policy.key();
    if let (PolicyScope::WorkloadSelector, Some(sel)) = (scope, &pa.spec.selector) {
        bind_selector(out, res, &ns, &key, &sel.match_labels);
    }
    out.config.policies.push(policy);
}

pub(super) fn translate_policies(res: &Resources, out: &mut Translation) {
    for (source, ap) in &res.authorization_policies {
        authorization(out, res, source, ap);
    }
    for (source, pa) in &res.peer_authentications {
        peer_authentication(out, res, source, pa);
    }
}
