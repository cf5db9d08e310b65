//! L7 AuthorizationPolicy evaluation, in the order Istio documents: a
//! matching DENY denies; with no ALLOW policy the request is allowed; with
//! ALLOW policies present one must match, else 403. AUDIT never changes the
//! decision. Inside a policy rules are ORed; a rule's `from`, `to` and
//! `when` are ANDed (each empty part holds); entries inside `from`/`to` are
//! ORed; inside an entry every field given must hold, values ORed, and a
//! `not*` field must match none. A policy with no rules matches nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_api::model::authz::Cidr;
use ambit_api::xds::proto::l7 as pb;

use crate::matcher::wildcard;

/// What an L7 policy can see of a request.
#[derive(Clone, Debug, Default)]
pub struct RequestAttributes {
    /// Peer principal from mTLS, without `spiffe://` (e.g. `cluster.local/ns/a/sa/b`).
    pub principal: Option<String>,
    /// Peer namespace (from the principal).
    pub namespace: Option<String>,
    /// `iss/sub` of a validated JWT.
    pub request_principal: Option<String>,
    /// Validated JWT claims (string values; arrays joined as several).
    pub claims: BTreeMap<String, Vec<String>>,
    /// Peer IP (the connection's source).
    pub source_ip: Option<IpAddr>,
    /// Original client IP (X-Forwarded-For).
    pub remote_ip: Option<IpAddr>,
    /// Host / `:authority` without port.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Headers, names lower-case.
    pub headers: BTreeMap<String, String>,
}

/// The decision and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed (by the named ALLOW policy, or because none applies).
    Allow(Option<String>),
    /// Denied by the named DENY policy.
    DeniedBy(String),
    /// ALLOW policies exist and none matched.
    NoAllowMatched,
}

impl Decision {
    /// 403 unless allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

fn any(patterns: &[String], value: Option<&str>, ci: bool) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| wildcard(p, v, ci)))
}

/// `positive` must match when given; `negative` must not match.
fn field(positive: &[String], negative: &[String], value: Option<&str>, ci: bool) -> bool {
    (positive.is_empty() || any(positive, value, ci)) && !any(negative, value, ci)
}

fn in_blocks(blocks: &[String], ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| {
        blocks
            .iter()
            .filter_map(|b| b.parse::<Cidr>().ok())
            .any(|c| c.contains(ip))
    })
}

fn ip_field(positive: &[String], negative: &[String], ip: Option<IpAddr>) -> bool {
    (positive.is_empty() || in_blocks(positive, ip)) && !in_blocks(negative, ip)
}

fn source_matches(s: &pb::HttpSource, r: &RequestAttributes) -> bool {
    field(
        &s.principals,
        &s.not_principals,
        r.principal.as_deref(),
        false,
    ) && field(
        &s.request_principals,
        &s.not_request_principals,
        r.request_principal.as_deref(),
        false,
    ) && field(
        &s.namespaces,
        &s.not_namespaces,
        r.namespace.as_deref(),
        false,
    ) && ip_field(&s.ip_blocks, &s.not_ip_blocks, r.source_ip)
        && ip_field(
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            r.remote_ip.or(r.source_ip),
        )
}

fn operation_matches(o: &pb::HttpOperation, r: &RequestAttributes) -> bool {
    let port = r.port.to_string();
    field(&o.hosts, &o.not_hosts, Some(&r.host), true)
        && field(&o.ports, &o.not_ports, Some(&port), false)
        && field(&o.methods, &o.not_methods, Some(&r.method), false)
        && field(&o.paths, &o.not_paths, Some(&r.path), false)
}

/// The values a `when` key names, if the request has them.
fn attribute(key: &str, r: &RequestAttributes) -> Vec<String> {
    let bracket = |prefix: &str| key.strip_prefix(prefix).and_then(|k| k.strip_suffix(']'));
    if let Some(h) = bracket("request.headers[") {
        return r
            .headers
            .get(&h.to_ascii_lowercase())
            .cloned()
            .into_iter()
            .collect();
    }
    if let Some(c) = bracket("request.auth.claims[") {
        // Nested claims are written `[a][b]`; they are stored as `a.b`.
        let path = c.replace("][", ".");
        return r.claims.get(&path).cloned().unwrap_or_default();
    }
    let one = |v: Option<String>| v.into_iter().collect();
    match key {
        "source.ip" => one(r.source_ip.map(|i| i.to_string())),
        "remote.ip" => one(r.remote_ip.or(r.source_ip).map(|i| i.to_string())),
        "source.namespace" => one(r.namespace.clone()),
        "source.principal" => one(r.principal.clone()),
        "request.auth.principal" => one(r.request_principal.clone()),
        "request.auth.audiences" => r.claims.get("aud").cloned().unwrap_or_default(),
        "request.auth.presenter" => r.claims.get("azp").cloned().unwrap_or_default(),
        "destination.port" => one(Some(r.port.to_string())),
        _ => vec![],
    }
}

fn condition_holds(c: &pb::Condition, r: &RequestAttributes) -> bool {
    let values = attribute(&c.key, r);
    let is_ip = matches!(c.key.as_str(), "source.ip" | "remote.ip");
    let matches = |patterns: &[String]| {
        values.iter().any(|v| {
            patterns.iter().any(|p| {
                if is_ip {
                    p.parse::<Cidr>()
                        .ok()
                        .zip(v.parse().ok())
                        .is_some_and(|(c, ip)| c.contains(ip))
                } else {
                    wildcard(p, v, false)
                }
            })
        })
    };
    (c.values.is_empty() || matches(&c.values)) && !matches(&c.not_values)
}

fn rule_matches(rule: &pb::HttpRule, r: &RequestAttributes) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, r)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, r)))
        && rule.when.iter().all(|c| condition_holds(c, r))
}

fn policy_matches(p: &pb::HttpPolicy, r: &RequestAttributes) -> bool {
    p.rules.iter().any(|rule| rule_matches(rule, r))
}

fn key(p: &pb::HttpPolicy) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// Decides `r` against the policies bound to the service (or its waypoint).
pub fn authorize(policies: &[pb::HttpPolicy], r: &RequestAttributes) -> Decision {
    use pb::http_policy::Action;
    let action = |p: &pb::HttpPolicy| Action::try_from(p.action).unwrap_or(Action::Allow);
    if let Some(p) = policies
        .iter()
        .find(|p| action(p) == Action::Deny && policy_matches(p, r))
    {
        return Decision::DeniedBy(key(p));
    }
    let mut allows = policies
        .iter()
        .filter(|p| action(p) == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow(None);
    }
    match allows.find(|p| policy_matches(p, r)) {
        Some(p) => Decision::Allow(Some(key(p))),
        None => Decision::NoAllowMatched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::http_policy::Action;

    fn policy(name: &str, action: Action, rules: Vec<pb::HttpRule>) -> pb::HttpPolicy {
        pb::HttpPolicy {
            name: name.into(),
            namespace: "bookinfo".into(),
            action: action as i32,
            rules,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// ALLOW GET /reviews/* with header x-token present; DENY from ns `evil`.
    fn policies() -> Vec<pb::HttpPolicy> {
        vec![
            policy(
                "reviews-get",
                Action::Allow,
                vec![pb::HttpRule {
                    to: vec![pb::HttpOperation {
                        methods: strings(&["GET"]),
                        paths: strings(&["/reviews/*"]),
                        ..Default::default()
                    }],
                    when: vec![pb::Condition {
                        key: "request.headers[X-Token]".into(),
                        values: strings(&["*"]),
                        not_values: vec![],
                    }],
                    ..Default::default()
                }],
            ),
            policy(
                "deny-evil",
                Action::Deny,
                vec![pb::HttpRule {
                    from: vec![pb::HttpSource {
                        namespaces: strings(&["evil"]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            ),
            policy("audit-all", Action::Audit, vec![pb::HttpRule::default()]),
        ]
    }

    fn req(ns: &str, method: &str, path: &str, token: bool) -> RequestAttributes {
        RequestAttributes {
            principal: Some(format!("cluster.local/ns/{ns}/sa/default")),
            namespace: Some(ns.into()),
            method: method.into(),
            path: path.into(),
            host: "reviews".into(),
            port: 9080,
            headers: if token {
                [("x-token".to_string(), "t".to_string())].into()
            } else {
                BTreeMap::new()
            },
            ..Default::default()
        }
    }

    #[test]
    fn istio_order_table() {
        let p = policies();
        let cases = [
            (
                req("shop", "GET", "/reviews/1", true),
                Decision::Allow(Some("bookinfo/reviews-get".into())),
            ),
            (
                req("shop", "GET", "/reviews/1", false),
                Decision::NoAllowMatched,
            ),
            (
                req("shop", "POST", "/reviews/1", true),
                Decision::NoAllowMatched,
            ),
            (
                req("shop", "GET", "/ratings/1", true),
                Decision::NoAllowMatched,
            ),
            // DENY before ALLOW, even when an ALLOW matches.
            (
                req("evil", "GET", "/reviews/1", true),
                Decision::DeniedBy("bookinfo/deny-evil".into()),
            ),
        ];
        for (r, want) in cases {
            assert_eq!(
                authorize(&p, &r),
                want,
                "{} {} {:?}",
                r.method,
                r.path,
                r.namespace
            );
        }
        // No ALLOW policy: allowed; AUDIT alone changes nothing.
        assert_eq!(
            authorize(&p[1..], &req("shop", "POST", "/x", false)),
            Decision::Allow(None)
        );
        // An ALLOW with no rules allows nothing.
        let empty = vec![policy("nothing", Action::Allow, vec![])];
        assert_eq!(
            authorize(&empty, &req("shop", "GET", "/", true)),
            Decision::NoAllowMatched
        );
    }

    #[test]
    fn sources_hosts_and_conditions() {
        let rule = |from: pb::HttpSource, to: pb::HttpOperation, when: Vec<pb::Condition>| {
            vec![policy(
                "p",
                Action::Allow,
                vec![pb::HttpRule {
                    from: vec![from],
                    to: vec![to],
                    when,
                }],
            )]
        };
        let jwt = rule(
            pb::HttpSource {
                request_principals: strings(&["*"]),
                ..Default::default()
            },
            pb::HttpOperation::default(),
            vec![pb::Condition {
                key: "request.auth.claims[groups]".into(),
                values: strings(&["admin"]),
                not_values: vec![],
            }],
        );
        let mut r = req("shop", "GET", "/", false);
        assert!(
            !authorize(&jwt, &r).is_allowed(),
            "no token: requestPrincipals [*] denies"
        );
        r.request_principal = Some("https://issuer/alice".into());
        r.claims.insert("groups".into(), strings(&["dev", "admin"]));
        assert!(authorize(&jwt, &r).is_allowed());

        let hosts = rule(
            pb::HttpSource {
                not_principals: strings(&["cluster.local/ns/shop/sa/blocked"]),
                ip_blocks: strings(&["10.0.0.0/8"]),
                ..Default::default()
            },
            pb::HttpOperation {
                hosts: strings(&["Reviews", "*.example.com"]),
                ports: strings(&["9080"]),
                ..Default::default()
            },
            vec![pb::Condition {
                key: "source.ip".into(),
                values: vec![],
                not_values: strings(&["10.9.0.0/16"]),
            }],
        );
        let mut r = req("shop", "GET", "/", false);
        r.host = "REVIEWS".into();
        r.source_ip = Some("10.1.2.3".parse().unwrap());
        assert!(
            authorize(&hosts, &r).is_allowed(),
            "hosts are case-insensitive"
        );
        r.source_ip = Some("10.9.2.3".parse().unwrap());
        assert!(
            !authorize(&hosts, &r).is_allowed(),
            "notValues on source.ip"
        );
        r.source_ip = Some("192.168.0.1".parse().unwrap());
        assert!(!authorize(&hosts, &r).is_allowed(), "ipBlocks");
        r.source_ip = Some("10.1.2.3".parse().unwrap());
        r.principal = Some("cluster.local/ns/shop/sa/blocked".into());
        assert!(!authorize(&hosts, &r).is_allowed(), "notPrincipals");
    }
}
