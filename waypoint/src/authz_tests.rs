use super::*;
use pb::http_policy::Action;

fn policy(name: &str, action: Action, rules: Vec<pb::HttpRule>) -> pb::HttpPolicy {
    pb::HttpPolicy {
        name: name.into(),
        namespace: "bookinfo".into(),
        action: action as i32,
        rules,
        dry_run: false,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cond(key: &str, values: &[&str]) -> pb::Condition {
    pb::Condition {
        key: key.into(),
        values: strings(values),
        not_values: vec![],
    }
}

fn peer(ns: &str, sa: &str) -> Option<SpiffeId> {
    SpiffeId::new("cluster.local", ns, sa).ok()
}

fn req(ns: &str, method: &str, path: &str, token: bool) -> RequestAttributes {
    RequestAttributes {
        peer: peer(ns, "default"),
        method: method.into(),
        path: path.into(),
        authority: Some("reviews:9080".into()),
        port: 9080,
        source_ip: Some("10.1.2.3".parse().unwrap()),
        remote_ip: Some("10.1.2.3".parse().unwrap()),
        headers: if token {
            [("x-token".to_string(), vec!["t".to_string()])].into()
        } else {
            BTreeMap::new()
        },
        ..Default::default()
    }
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
                when: vec![cond("request.headers[X-Token]", &["*"])],
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
            authorize(&p, Mode::Http, &r),
            want,
            "{} {} {:?}",
            r.method,
            r.path,
            r.peer
        );
    }
    // No ALLOW policy: allowed; AUDIT alone changes nothing.
    assert_eq!(
        authorize(&p[1..], Mode::Http, &req("shop", "POST", "/x", false)),
        Decision::Allow(None)
    );
    // An ALLOW with no rules allows nothing.
    let empty = vec![policy("nothing", Action::Allow, vec![])];
    assert_eq!(
        authorize(&empty, Mode::Http, &req("shop", "GET", "/", true)),
        Decision::NoAllowMatched
    );
}

/// Istio's TCP filter chain: an ALLOW rule with an HTTP-only field is
/// dropped, a DENY rule loses only those fields; L4 fields still apply.
#[test]
fn tcp_connections_see_only_l4_fields() {
    let allow_get_from_shop = policy(
        "allow",
        Action::Allow,
        vec![
            pb::HttpRule {
                from: vec![pb::HttpSource {
                    namespaces: strings(&["shop"]),
                    ..Default::default()
                }],
                to: vec![pb::HttpOperation {
                    methods: strings(&["GET"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
            // An L4-only rule survives on TCP.
            pb::HttpRule {
                from: vec![pb::HttpSource {
                    namespaces: strings(&["ops"]),
                    ..Default::default()
                }],
                to: vec![pb::HttpOperation {
                    ports: strings(&["9080"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    );
    let deny_admin_from_evil = policy(
        "deny",
        Action::Deny,
        vec![pb::HttpRule {
            from: vec![pb::HttpSource {
                namespaces: strings(&["evil"]),
                ..Default::default()
            }],
            to: vec![pb::HttpOperation {
                paths: strings(&["/admin*"]),
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let deny_without_jwt = policy(
        "require-jwt",
        Action::Deny,
        vec![pb::HttpRule {
            from: vec![pb::HttpSource {
                not_request_principals: strings(&["*"]),
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let deny_header = policy(
        "deny-header",
        Action::Deny,
        vec![pb::HttpRule {
            when: vec![cond("request.headers[x-evil]", &["1"])],
            ..Default::default()
        }],
    );
    let tcp = |ns: &str| RequestAttributes {
        authority: None,
        method: String::new(),
        path: String::new(),
        ..req(ns, "", "", false)
    };
    let allow = std::slice::from_ref(&allow_get_from_shop);
    // HTTP: shop may GET; TCP: the GET rule is gone, so shop is refused.
    assert!(authorize(allow, Mode::Http, &req("shop", "GET", "/", false)).is_allowed());
    assert_eq!(
        authorize(allow, Mode::Tcp, &tcp("shop")),
        Decision::NoAllowMatched
    );
    assert!(authorize(allow, Mode::Tcp, &tcp("ops")).is_allowed());
    // DENY paths from evil: on TCP every connection from evil is denied.
    let deny = std::slice::from_ref(&deny_admin_from_evil);
    assert!(authorize(deny, Mode::Http, &req("evil", "GET", "/public", false)).is_allowed());
    assert!(!authorize(deny, Mode::Http, &req("evil", "GET", "/admin/x", false)).is_allowed());
    assert!(!authorize(deny, Mode::Tcp, &tcp("evil")).is_allowed());
    assert!(authorize(deny, Mode::Tcp, &tcp("shop")).is_allowed());
    // "Require a JWT" denies every TCP connection (no JWT can be seen).
    let jwt = std::slice::from_ref(&deny_without_jwt);
    assert!(!authorize(jwt, Mode::Tcp, &tcp("shop")).is_allowed());
    assert!(!authorize(jwt, Mode::Http, &req("shop", "GET", "/", false)).is_allowed());
    let mut with_jwt = req("shop", "GET", "/", false);
    with_jwt.request_auth = Some(("https://issuer".into(), "alice".into()));
    assert!(authorize(jwt, Mode::Http, &with_jwt).is_allowed());
    // A header condition counts as matching on TCP.
    let header = std::slice::from_ref(&deny_header);
    assert!(authorize(header, Mode::Http, &req("shop", "GET", "/", false)).is_allowed());
    assert!(!authorize(header, Mode::Tcp, &tcp("shop")).is_allowed());
}

/// Values that cannot be checked never widen what is allowed.
#[test]
fn bad_values_fail_closed() {
    let bad_cidr_rule = |action| {
        policy(
            "p",
            action,
            vec![pb::HttpRule {
                from: vec![pb::HttpSource {
                    ip_blocks: strings(&["10.0.0.0/33"]),
                    namespaces: strings(&["shop"]),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )
    };
    let r = req("shop", "GET", "/", false);
    // ALLOW: the rule is dropped, nothing is allowed.
    assert_eq!(
        authorize(&[bad_cidr_rule(Action::Allow)], Mode::Http, &r),
        Decision::NoAllowMatched
    );
    // DENY: the bad value is left out, the rule still denies `shop`.
    assert!(!authorize(&[bad_cidr_rule(Action::Deny)], Mode::Http, &r).is_allowed());
    let other = req("other", "GET", "/", false);
    assert!(authorize(&[bad_cidr_rule(Action::Deny)], Mode::Http, &other).is_allowed());

    let unknown_key = |action| {
        policy(
            "p",
            action,
            vec![pb::HttpRule {
                when: vec![cond("request.hedaers[x]", &["1"])],
                ..Default::default()
            }],
        )
    };
    assert!(!authorize(&[unknown_key(Action::Deny)], Mode::Http, &r).is_allowed());
    assert!(!authorize(&[unknown_key(Action::Allow)], Mode::Http, &r).is_allowed());

    // An action number this build does not know denies.
    let mut unknown_action = policy("p", Action::Allow, vec![pb::HttpRule::default()]);
    unknown_action.action = 42;
    assert!(!authorize(&[unknown_action], Mode::Http, &r).is_allowed());
}

#[test]
fn dry_run_is_logged_not_enforced() {
    let mut deny_all = policy("dry", Action::Deny, vec![pb::HttpRule::default()]);
    deny_all.dry_run = true;
    let r = req("shop", "GET", "/", false);
    assert_eq!(
        authorize(&[deny_all.clone()], Mode::Http, &r),
        Decision::Allow(None)
    );
    // A dry-run ALLOW does not make "ALLOW policies exist".
    let mut allow_none = policy("dry-allow", Action::Allow, vec![]);
    allow_none.dry_run = true;
    assert_eq!(
        authorize(&[allow_none], Mode::Http, &r),
        Decision::Allow(None)
    );
    deny_all.dry_run = false;
    assert!(!authorize(&[deny_all], Mode::Http, &r).is_allowed());
}

#[test]
fn hosts_compare_the_authority_with_its_port() {
    let allow_hosts = |hosts: &[&str]| {
        vec![policy(
            "h",
            Action::Allow,
            vec![pb::HttpRule {
                to: vec![pb::HttpOperation {
                    hosts: strings(hosts),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )]
    };
    let r = req("shop", "GET", "/", false); // authority reviews:9080
    assert!(!authorize(&allow_hosts(&["reviews"]), Mode::Http, &r).is_allowed());
    assert!(authorize(&allow_hosts(&["reviews:9080"]), Mode::Http, &r).is_allowed());
    assert!(authorize(&allow_hosts(&["REVIEWS*"]), Mode::Http, &r).is_allowed());
    assert!(authorize(&allow_hosts(&["*:9080"]), Mode::Http, &r).is_allowed());
    assert!(authorize(&allow_hosts(&["*"]), Mode::Http, &r).is_allowed());
    let mut no_host = r.clone();
    no_host.authority = None;
    assert!(!authorize(&allow_hosts(&["*"]), Mode::Http, &no_host).is_allowed());
}

#[test]
fn sources_claims_and_conditions() {
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
            request_principals: strings(&["https://issuer/*"]),
            ..Default::default()
        },
        pb::HttpOperation::default(),
        vec![cond("request.auth.claims[groups]", &["admin"])],
    );
    let mut r = req("shop", "GET", "/", false);
    assert!(!authorize(&jwt, Mode::Http, &r).is_allowed(), "no token");
    r.request_auth = Some(("https://issuer".into(), "alice".into()));
    r.claims.insert("groups".into(), strings(&["dev", "admin"]));
    assert!(authorize(&jwt, Mode::Http, &r).is_allowed());
    r.request_auth = Some(("https://other".into(), "alice".into()));
    assert!(!authorize(&jwt, Mode::Http, &r).is_allowed(), "issuer");

    let sa = rule(
        pb::HttpSource {
            service_accounts: strings(&["client", "ops/robot"]),
            ..Default::default()
        },
        pb::HttpOperation::default(),
        vec![],
    );
    let mut r = req("bookinfo", "GET", "/", false);
    assert!(!authorize(&sa, Mode::Http, &r).is_allowed());
    r.peer = peer("bookinfo", "client");
    assert!(authorize(&sa, Mode::Http, &r).is_allowed());
    r.peer = peer("ops", "robot");
    assert!(authorize(&sa, Mode::Http, &r).is_allowed());
    r.peer = peer("ops", "client");
    assert!(!authorize(&sa, Mode::Http, &r).is_allowed());

    let l4 = rule(
        pb::HttpSource {
            not_principals: strings(&["cluster.local/ns/shop/sa/blocked"]),
            ip_blocks: strings(&["10.0.0.0/8"]),
            ..Default::default()
        },
        pb::HttpOperation {
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
    assert!(authorize(&l4, Mode::Http, &r).is_allowed());
    assert!(authorize(&l4, Mode::Tcp, &r).is_allowed(), "all L4");
    r.source_ip = Some("10.9.2.3".parse().unwrap());
    assert!(!authorize(&l4, Mode::Http, &r).is_allowed(), "notValues");
    r.source_ip = Some("192.168.0.1".parse().unwrap());
    assert!(!authorize(&l4, Mode::Http, &r).is_allowed(), "ipBlocks");
    r.source_ip = Some("10.1.2.3".parse().unwrap());
    r.peer = peer("shop", "blocked");
    assert!(
        !authorize(&l4, Mode::Http, &r).is_allowed(),
        "notPrincipals"
    );

    // remoteIpBlocks read the original client, not the peer.
    let remote = rule(
        pb::HttpSource {
            remote_ip_blocks: strings(&["192.0.2.0/24"]),
            ..Default::default()
        },
        pb::HttpOperation::default(),
        vec![],
    );
    let mut r = req("shop", "GET", "/", false);
    assert!(!authorize(&remote, Mode::Http, &r).is_allowed());
    r.remote_ip = Some("192.0.2.7".parse().unwrap());
    assert!(authorize(&remote, Mode::Http, &r).is_allowed());
}

/// A repeated header matches when any one of its values does (Envoy's RBAC
/// header matcher; found by the differential test against Envoy): an ALLOW
/// on `bob` admits `X-User: alice` + `X-User: bob`, and a DENY on `*ce`
/// catches it. One line `X-User: alice,bob` is one value, as for Envoy: the
/// ALLOW on `bob` does not admit it.
#[test]
fn repeated_headers_match_on_any_value() {
    let allow = policy(
        "allow-bob",
        Action::Allow,
        vec![pb::HttpRule {
            when: vec![cond("request.headers[X-User]", &["bob"])],
            ..Default::default()
        }],
    );
    let deny = policy(
        "deny-ce",
        Action::Deny,
        vec![pb::HttpRule {
            when: vec![cond("request.headers[X-User]", &["*ce"])],
            ..Default::default()
        }],
    );
    let mut r = req("bookinfo", "GET", "/", false);
    r.headers
        .insert("x-user".into(), vec!["alice".into(), "bob".into()]);
    assert!(authorize(std::slice::from_ref(&allow), Mode::Http, &r).is_allowed());
    assert!(!authorize(std::slice::from_ref(&deny), Mode::Http, &r).is_allowed());
    let all = policy(
        "allow-joined",
        Action::Allow,
        vec![pb::HttpRule {
            when: vec![cond("request.headers[X-User]", &["alice,bob"])],
            ..Default::default()
        }],
    );
    assert!(
        authorize(&[all], Mode::Http, &r).is_allowed(),
        "the joined form matches too"
    );

    r.headers.insert("x-user".into(), vec!["alice,bob".into()]);
    assert!(
        !authorize(&[allow], Mode::Http, &r).is_allowed(),
        "one line with a comma is one value"
    );
    assert!(authorize(&[deny], Mode::Http, &r).is_allowed());
}

/// A refusal names the policy and the rule as Istio's RBAC config names
/// them (the rule's index in `spec.rules`), or `none` for an ALLOW miss.
#[test]
fn refusal_details_name_policy_and_rule() {
    let deny = policy(
        "deny-writes",
        Action::Deny,
        vec![
            // Rule 0: never matches a GET.
            pb::HttpRule {
                to: vec![pb::HttpOperation {
                    methods: strings(&["DELETE"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
            // Rule 1: from namespace evil.
            pb::HttpRule {
                from: vec![pb::HttpSource {
                    namespaces: strings(&["evil"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    );
    let authz = Authorizer::new(std::slice::from_ref(&deny));
    let r = req("evil", "GET", "/", false);
    let d = authz.authorize(Mode::Http, &r);
    assert_eq!(d, Decision::DeniedBy("bookinfo/deny-writes".into()));
    assert_eq!(
        authz.refusal_details(Mode::Http, &r, &d),
        "rbac_access_denied_matched_policy[ns[bookinfo]-policy[deny-writes]-rule[1]]"
    );
    // On TCP an ALLOW rule with an HTTP-only field is dropped (allows
    // nothing) and a DENY rule loses the field (denies more).
    let allow = policy(
        "allow-get",
        Action::Allow,
        vec![
            pb::HttpRule {
                to: vec![pb::HttpOperation {
                    methods: strings(&["GET"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
            pb::HttpRule {
                from: vec![pb::HttpSource {
                    namespaces: strings(&["shop"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    );
    let both = Authorizer::new(&[allow.clone(), deny]);
    let tcp = req("evil", "", "", false);
    let d = both.authorize(Mode::Tcp, &tcp);
    // On TCP the DENY's rule 0 loses its HTTP-only `methods` and so matches
    // every connection (a DENY can only deny more): it is the one named.
    assert_eq!(
        both.refusal_details(Mode::Tcp, &tcp, &d),
        "rbac_access_denied_matched_policy[ns[bookinfo]-policy[deny-writes]-rule[0]]"
    );
    let allow_only = Authorizer::new(&[allow]);
    let other = req("other", "GET", "/", false);
    let d = allow_only.authorize(Mode::Tcp, &other);
    assert_eq!(d, Decision::NoAllowMatched);
    assert_eq!(
        allow_only.refusal_details(Mode::Tcp, &other, &d),
        "rbac_access_denied_matched_policy[none]"
    );
    assert_eq!(
        super::rule_name("ns/name", 3),
        "ns[ns]-policy[name]-rule[3]"
    );
}
