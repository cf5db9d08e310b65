//! Waypoint-bound `AuthorizationPolicy` (`targetRefs`) → the waypoint's
//! `HttpPolicy`, validated once per object. Nothing is accepted and ignored:
//!
//! * `CUSTOM` needs an external authorizer Ambit does not have. Istio, when a
//!   CUSTOM provider cannot be used, denies what the policy's rules match;
//!   so does Ambit (error finding).
//! * An unknown action cannot be read either way: the policy denies every
//!   request to its targets (error finding) until it is fixed.
//! * A CIDR, port or `when` key that does not parse is an error finding; the
//!   value still travels, and the waypoint compiles it fail-closed (an ALLOW
//!   rule using it matches nothing, a DENY rule matches without it).
//! * `istio.io/dry-run` is carried; a value that is not a boolean is an
//!   error and the policy is enforced (Istio's reading).

use super::l7::Ctx;
use crate::k8s::istio::{self, AuthorizationPolicy};
use crate::model::authz::Cidr;
use crate::xds::proto::l7 as pb;

/// The `when` keys Istio defines (`request.headers[..]` and
/// `request.auth.claims[..]` take a bracketed name).
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// The annotation that makes a policy log-only.
pub const DRY_RUN: &str = "istio.io/dry-run";

/// Where a bad [`DRY_RUN`] value is reported.
pub(super) const DRY_RUN_FIELD: &str = "metadata.annotations[istio.io/dry-run]";

/// A policy's [`DRY_RUN`] annotation as Istio reads it (Go's `ParseBool`):
/// absent is `false`; a value that does not parse is `Err` with the finding's
/// message, and the policy is enforced, as in Istio.
pub(super) fn dry_run(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<bool, String> {
    match annotations.and_then(|a| a.get(DRY_RUN)) {
        None => Ok(false),
        Some(v) => {
            parse_bool(v).ok_or_else(|| format!("{v:?} is not a boolean; the policy is enforced"))
        }
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for `istio.io/dry-run`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn check_cidrs(ctx: &mut Ctx<'_>, field: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if let Err(e) = v.parse::<Cidr>() {
            ctx.error(format!("{field}[{i}]"), e.to_string());
        }
    }
}

fn check_ports(ctx: &mut Ctx<'_>, field: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.parse::<u16>().is_err() {
            ctx.error(format!("{field}[{i}]"), format!("{v:?} is not a port"));
        }
    }
}

fn bracketed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|k| k.strip_suffix(']'))
        .is_some_and(|name| !name.is_empty())
}

fn check_condition(ctx: &mut Ctx<'_>, path: &str, c: &istio::Condition) {
    let key = c.key.as_str();
    let known = WHEN_KEYS.contains(&key)
        || bracketed(key, "request.headers[")
        || bracketed(key, "request.auth.claims[");
    if !known {
        ctx.error(
            format!("{path}.key"),
            format!(
                "unknown attribute {key:?}: an ALLOW rule using it matches nothing, a DENY rule matches without it"
            ),
        );
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        ctx.error(
            path.to_string(),
            "a condition needs values or notValues".to_string(),
        );
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => {
            check_cidrs(ctx, &format!("{path}.values"), &c.values);
            check_cidrs(ctx, &format!("{path}.notValues"), &c.not_values);
        }
        "destination.port" => {
            check_ports(ctx, &format!("{path}.values"), &c.values);
            check_ports(ctx, &format!("{path}.notValues"), &c.not_values);
        }
        _ => {}
    }
}

fn rule(ctx: &mut Ctx<'_>, i: usize, r: &istio::Rule) -> pb::HttpRule {
    for (j, f) in r.from.iter().enumerate() {
        let s = &f.source;
        let path = format!("spec.rules[{i}].from[{j}].source");
        check_cidrs(ctx, &format!("{path}.ipBlocks"), &s.ip_blocks);
        check_cidrs(ctx, &format!("{path}.notIpBlocks"), &s.not_ip_blocks);
        check_cidrs(ctx, &format!("{path}.remoteIpBlocks"), &s.remote_ip_blocks);
        check_cidrs(
            ctx,
            &format!("{path}.notRemoteIpBlocks"),
            &s.not_remote_ip_blocks,
        );
    }
    for (j, t) in r.to.iter().enumerate() {
        let o = &t.operation;
        let path = format!("spec.rules[{i}].to[{j}].operation");
        check_ports(ctx, &format!("{path}.ports"), &o.ports);
        check_ports(ctx, &format!("{path}.notPorts"), &o.not_ports);
    }
    for (j, c) in r.when.iter().enumerate() {
        check_condition(ctx, &format!("spec.rules[{i}].when[{j}]"), c);
    }
    pb::HttpRule {
        from: r
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                pb::HttpSource {
                    principals: s.principals.clone(),
                    not_principals: s.not_principals.clone(),
                    request_principals: s.request_principals.clone(),
                    not_request_principals: s.not_request_principals.clone(),
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    ip_blocks: s.ip_blocks.clone(),
                    not_ip_blocks: s.not_ip_blocks.clone(),
                    remote_ip_blocks: s.remote_ip_blocks.clone(),
                    not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                    service_accounts: s.service_accounts.clone(),
                    not_service_accounts: s.not_service_accounts.clone(),
                }
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|t| {
                let o = &t.operation;
                pb::HttpOperation {
                    hosts: o.hosts.clone(),
                    not_hosts: o.not_hosts.clone(),
                    ports: o.ports.clone(),
                    not_ports: o.not_ports.clone(),
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.clone(),
                    not_paths: o.not_paths.clone(),
                }
            })
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| pb::Condition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}

/// The waypoint form of `p`, with every problem reported through `ctx`.
/// Always returns a policy: a broken one fails closed, it is never dropped.
pub(super) fn http_policy(ctx: &mut Ctx<'_>, p: &AuthorizationPolicy, ns: &str) -> pb::HttpPolicy {
    use pb::http_policy::Action;
    let spec = &p.spec;
    let mut rules: Vec<pb::HttpRule> = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(ctx, i, r))
        .collect();
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            ctx.error(
                "spec.action".into(),
                "CUSTOM (external authorization) is not supported: the requests its rules match are denied, as Istio does when a CUSTOM provider cannot be used",
            );
            Action::Deny
        }
        other => {
            ctx.error(
                "spec.action".into(),
                format!(
                    "unknown action {other:?} (ALLOW, DENY, AUDIT, CUSTOM): every request to this policy's targets is denied until it is fixed"
                ),
            );
            rules = vec![pb::HttpRule::default()];
            Action::Deny
        }
    };
    if spec.provider.is_some() && action != Action::Deny {
        ctx.error(
            "spec.provider".into(),
            "provider is only meaningful with action CUSTOM",
        );
    }
    if spec.selector.is_some() {
        ctx.error(
            "spec.selector".into(),
            "selector and targetRefs cannot be used together; the policy applies to its targetRefs",
        );
    }
    let dry_run = dry_run(p.metadata.annotations.as_ref()).unwrap_or_else(|message| {
        ctx.error(DRY_RUN_FIELD.to_string(), message);
        false
    });
    pb::HttpPolicy {
        name: p.metadata.name.clone().unwrap_or_default(),
        namespace: ns.to_string(),
        action: action as i32,
        rules,
        dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_booleans() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
