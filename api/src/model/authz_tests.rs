//! Table tests for L4 authorization.

use super::*;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

fn conn(src: Option<SpiffeId>, src_ip: &str, dst_port: u16) -> Connection {
    Connection {
        src_identity: src,
        src_ip: src_ip.parse().unwrap(),
        dst_ip: "10.244.2.5".parse().unwrap(),
        dst_port,
    }
}

fn policy(name: &str, action: Action, rules: Vec<Vec<Vec<PolicyMatch>>>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: PolicyScope::Namespace,
        action,
        dry_run: false,
        rules,
    }
}

fn one(m: PolicyMatch) -> Vec<Vec<Vec<PolicyMatch>>> {
    vec![vec![vec![m]]]
}

fn principals(p: &[&str]) -> PolicyMatch {
    PolicyMatch {
        principals: p.iter().map(|s| StringMatch::Exact((*s).into())).collect(),
        ..Default::default()
    }
}

const A: &str = "cluster.local/ns/shop/sa/a";

#[test]
fn decision_table() {
    let a = || Some(id("shop", "a"));
    let c = || Some(id("other", "c"));
    let allow_a = policy("allow-a", Action::Allow, one(principals(&[A])));
    let deny_a = policy("deny-a", Action::Deny, one(principals(&[A])));
    let deny_port = policy(
        "deny-9000",
        Action::Deny,
        one(PolicyMatch {
            destination_ports: vec![9000],
            ..Default::default()
        }),
    );
    let allow_not_other_ns = policy(
        "allow-not-other",
        Action::Allow,
        one(PolicyMatch {
            not_namespaces: vec![StringMatch::Exact("other".into())],
            ..Default::default()
        }),
    );
    let allow_ipblock = policy(
        "allow-ipblock",
        Action::Allow,
        one(PolicyMatch {
            source_ips: vec!["10.244.1.0/24".parse().unwrap()],
            not_source_ips: vec!["10.244.1.66".parse().unwrap()],
            ..Default::default()
        }),
    );
    let mut dry_deny = deny_a.clone();
    dry_deny.dry_run = true;
    dry_deny.name = "dry-deny".into();
    let audit_all = policy(
        "audit",
        Action::Audit,
        one(PolicyMatch {
            namespaces: vec![StringMatch::Presence],
            ..Default::default()
        }),
    );
    let empty_rules = policy("no-rules", Action::Allow, vec![]);
    let empty_match = policy("empty-match", Action::Allow, one(PolicyMatch::default()));
    let empty_clause = policy("empty-clause", Action::Allow, vec![vec![vec![]]]);
    let two_clauses = policy(
        "a-and-port-80",
        Action::Allow,
        vec![vec![
            vec![principals(&[A])],
            vec![PolicyMatch {
                destination_ports: vec![80],
                ..Default::default()
            }],
        ]],
    );
    let sa_match = policy(
        "sa-a",
        Action::Allow,
        one(PolicyMatch {
            service_accounts: vec![ServiceAccountMatch {
                namespace: "shop".into(),
                service_account: "a".into(),
            }],
            ..Default::default()
        }),
    );
    let prefix = policy(
        "prefix-shop",
        Action::Allow,
        one(PolicyMatch {
            principals: vec![StringMatch::Prefix("cluster.local/ns/shop/".into())],
            ..Default::default()
        }),
    );

    use Decision::*;
    let allow = |p: &str| Allow {
        by: Some(p.to_string()),
    };
    let cases: Vec<(&str, Vec<&Authorization>, Connection, Decision)> = vec![
        (
            "no policies: allow",
            vec![],
            conn(c(), "10.244.1.9", 80),
            Allow { by: None },
        ),
        (
            "allow a admits a",
            vec![&allow_a],
            conn(a(), "10.244.1.9", 80),
            allow("shop/allow-a"),
        ),
        (
            "allow a refuses c",
            vec![&allow_a],
            conn(c(), "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "allow a refuses plaintext",
            vec![&allow_a],
            conn(None, "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "deny before allow",
            vec![&allow_a, &deny_a],
            conn(a(), "10.244.1.9", 80),
            DeniedBy("shop/deny-a".into()),
        ),
        (
            "deny only: others allowed",
            vec![&deny_a],
            conn(c(), "10.244.1.9", 80),
            Allow { by: None },
        ),
        (
            "deny port",
            vec![&deny_port],
            conn(a(), "10.244.1.9", 9000),
            DeniedBy("shop/deny-9000".into()),
        ),
        (
            "deny port, other port",
            vec![&deny_port],
            conn(a(), "10.244.1.9", 80),
            Allow { by: None },
        ),
        (
            "notNamespaces admits shop",
            vec![&allow_not_other_ns],
            conn(a(), "10.244.1.9", 80),
            allow("shop/allow-not-other"),
        ),
        (
            "notNamespaces refuses other",
            vec![&allow_not_other_ns],
            conn(c(), "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "notNamespaces admits plaintext (namespace \"\")",
            vec![&allow_not_other_ns],
            conn(None, "10.244.1.9", 80),
            allow("shop/allow-not-other"),
        ),
        (
            "ipBlock inside",
            vec![&allow_ipblock],
            conn(None, "10.244.1.9", 80),
            allow("shop/allow-ipblock"),
        ),
        (
            "ipBlock notIpBlock",
            vec![&allow_ipblock],
            conn(None, "10.244.1.66", 80),
            NoAllowMatched,
        ),
        (
            "ipBlock outside",
            vec![&allow_ipblock],
            conn(None, "10.244.3.9", 80),
            NoAllowMatched,
        ),
        (
            "dry-run deny does not deny",
            vec![&dry_deny],
            conn(a(), "10.244.1.9", 80),
            Allow { by: None },
        ),
        (
            "audit never decides",
            vec![&audit_all, &allow_a],
            conn(c(), "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "audit alone allows",
            vec![&audit_all],
            conn(c(), "10.244.1.9", 80),
            Allow { by: None },
        ),
        (
            "policy without rules never matches",
            vec![&empty_rules],
            conn(a(), "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "all-empty match never matches",
            vec![&empty_match],
            conn(a(), "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "empty clause counts as true",
            vec![&empty_clause],
            conn(c(), "10.244.1.9", 80),
            allow("shop/empty-clause"),
        ),
        (
            "clauses AND: both hold",
            vec![&two_clauses],
            conn(a(), "10.244.1.9", 80),
            allow("shop/a-and-port-80"),
        ),
        (
            "clauses AND: port fails",
            vec![&two_clauses],
            conn(a(), "10.244.1.9", 81),
            NoAllowMatched,
        ),
        (
            "service account match",
            vec![&sa_match],
            conn(a(), "10.244.1.9", 80),
            allow("shop/sa-a"),
        ),
        (
            "service account plaintext fails",
            vec![&sa_match],
            conn(None, "10.244.1.9", 80),
            NoAllowMatched,
        ),
        (
            "principal prefix",
            vec![&prefix],
            conn(Some(id("shop", "zz")), "10.244.1.9", 80),
            allow("shop/prefix-shop"),
        ),
    ];
    for (name, policies, c, want) in cases {
        let got = authorize(policies.iter().copied(), &c);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn cidr_parsing_and_containment() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("1.2.3.4".parse().unwrap()));
    let host: Cidr = "fd00::1".parse().unwrap();
    assert!(host.contains("fd00::1".parse().unwrap()));
    assert!(!host.contains("fd00::2".parse().unwrap()));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("nope".parse::<Cidr>().is_err());
    assert!("10.0.0.0/".parse::<Cidr>().is_err());
    // Host bits set: the network part decides, and it prints as written.
    let loose: Cidr = "10.1.2.3/8".parse().unwrap();
    assert!(loose.contains("10.200.0.1".parse().unwrap()));
    assert_eq!(loose.to_string(), "10.1.2.3/8");
    assert_eq!(host.to_string(), "fd00::1/128");
}

#[test]
fn local_format_yaml_with_tags() {
    let yaml = r#"
name: only-a
namespace: shop
scope: Namespace
action: Allow
dryRun: false
rules: [[[{principals: [!Exact cluster.local/ns/shop/sa/a], sourceIps: ["10.0.0.0/8"]}]]]
"#;
    let p: Authorization = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(
        p.rules[0][0][0].principals,
        vec![StringMatch::Exact(A.into())]
    );
    assert!(
        serde_yaml::from_str::<Authorization>(
            "name: x\nnamespace: y\nscope: Namespace\naction: Allow\nbogus: 1\n"
        )
        .is_err()
    );
}
