//! Differential test of waypoint authorization against an independent
//! oracle: Envoy's RBAC filter, configured the way Istio's pilot builds it
//! (`pilot/pkg/security/authz/{builder,model,matcher}`) for a waypoint
//! (peer identity in the `io.istio.peer_principal` filter state).
//!
//! Thousands of generated AuthorizationPolicy sets × requests: each policy set
//! becomes one Envoy route (selected by an `x-case` header) whose per-route
//! DENY and ALLOW RBAC configs are what Istio would emit; the same policies go
//! through Ambit's own path (YAML → `ambit_api::translate` → the waypoint's
//! `Authorizer`). Every request is sent to Envoy over real sockets from real
//! source addresses to real destination addresses, and Envoy's answer (200,
//! 403 or 400 for a path it refuses) must equal Ambit's decision.
//!
//! JWT-derived fields (`requestPrincipals`, `request.auth.*`) reach Envoy as
//! the JWT filter leaves them: a Lua filter writes the request's claims into
//! the `envoy.filters.http.jwt_authn` `payload` metadata that Istio's
//! matchers read. `connection.sni` is generated too; the connections are
//! plaintext, as a waypoint's HTTP inside HBONE always is, so the SNI is
//! empty on both sides (values with TLS are in the waypoint's table tests).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::model::authz::{Authorization, Connection};
use ambit_e2e::envoy::{self, Envoy};
use ambit_identity::SpiffeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use waypoint::authz::{Authorizer, Mode, RequestAttributes};
use waypoint::normalize::PathNormalization;

const POLICY_SETS: usize = 300;
const REQUESTS_PER_SET: usize = 12;

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/shop/sa/web",
    "cluster.local/ns/admin/sa/ops",
    "cluster.local/ns/shop/*",
    "*/sa/ops",
    "*",
    "cluster.local/ns/other/sa/x",
];
const NAMESPACES: &[&str] = &["shop", "admin", "sh*", "*", "*min", "other"];
const SERVICE_ACCOUNTS: &[&str] = &["web", "admin/ops", "shop/api", "other/x"];
const CIDRS: &[&str] = &[
    "127.0.0.10",
    "127.0.0.10/31",
    "127.0.0.20/32",
    "127.0.0.0/8",
    "10.0.0.0/8",
];
const DEST_CIDRS: &[&str] = &["127.0.0.1", "127.0.0.2/32", "127.0.0.0/24", "10.1.0.0/16"];
const HOSTS: &[&str] = &[
    "web",
    "web:8080",
    "*.svc.cluster.local",
    "api.*",
    "*",
    "WEB",
];
const METHODS: &[&str] = &["GET", "POST", "*", "P*", "*ETE"];
const PATHS: &[&str] = &[
    "/admin",
    "/admin/*",
    "/public/*",
    "*/info",
    "*",
    "/private",
    "/api/{*}/info",
    "/api/{**}",
];
const HEADER_VALUES: &[&str] = &["alice", "al*", "*ce", "*", "bob"];
const REQUEST_PRINCIPALS: &[&str] = &[
    "https://idp.example/alice",
    "https://idp.example/*",
    "*/bob",
    "*",
    "iss-b*",
    "iss-b/alice",
];
const GROUPS: &[&str] = &["admin", "dev", "*", "ad*"];
const AUDIENCES: &[&str] = &["web", "api", "*"];
const TEAMS: &[&str] = &["blue", "bl*", "red"];
/// `connection.sni`: the waypoint sees HTTP inside HBONE, never a TLS
/// handshake, so the SNI is empty on every path, as for Envoy here.
const SNIS: &[&str] = &["api.example.com", "*.example.com", "*", "api*"];

const PEERS: &[&str] = &[
    "spiffe://cluster.local/ns/shop/sa/web",
    "spiffe://cluster.local/ns/shop/sa/api",
    "spiffe://cluster.local/ns/admin/sa/ops",
    "spiffe://cluster.local/ns/other/sa/x",
];
const SOURCES: &[[u8; 4]] = &[
    [127, 0, 0, 10],
    [127, 0, 0, 11],
    [127, 0, 0, 20],
    [127, 0, 0, 21],
];
const REQ_HOSTS: &[&str] = &[
    "web",
    "web:8080",
    "Web.shop.svc.cluster.local",
    "api.example.com",
];
const REQ_METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT"];
const REQ_PATHS: &[&str] = &[
    "/",
    "/admin",
    "/Admin",
    "/admin/users",
    "/public/../admin",
    "/./admin",
    "/%61dmin",
    "/public/x?y=1",
    "/api/v1/info",
    "/api/v1/v2/info",
    "/private",
    "/public/%2e%2e/admin",
    "/public/a/./b/../info",
];

fn pick(rng: &mut StdRng, pool: &[&str]) -> Vec<String> {
    let n = rng.gen_range(1..=2);
    pool.choose_multiple(rng, n)
        .map(|s| s.to_string())
        .collect()
}

/// The source fields generated (in this order) and the values they draw from.
const SOURCE_FIELDS: &[(&str, &[&str])] = &[
    ("principals", PRINCIPALS),
    ("namespaces", NAMESPACES),
    ("serviceAccounts", SERVICE_ACCOUNTS),
    ("ipBlocks", CIDRS),
    ("remoteIpBlocks", CIDRS),
    ("requestPrincipals", REQUEST_PRINCIPALS),
];

/// The operation fields generated (in this order).
const OPERATION_FIELDS: &[&str] = &["hosts", "ports", "methods", "paths"];

/// The values an operation field draws from (`ports` are the listeners').
fn operation_pool<'a>(field: &str, ports: &'a [&'a str]) -> &'a [&'a str] {
    match field {
        "hosts" => HOSTS,
        "ports" => ports,
        "methods" => METHODS,
        _ => PATHS,
    }
}

/// `principals` → `notPrincipals`.
fn not_field(field: &str) -> String {
    format!("not{}{}", field[..1].to_uppercase(), &field[1..])
}

/// An entry's values and `not` values for `field`.
fn entry_field(entry: &Value, field: &str) -> (Vec<String>, Vec<String>) {
    (
        strings(entry.get(field)),
        strings(entry.get(not_field(field))),
    )
}

/// Sets `field` (and sometimes `notField`) on `obj` from `pool`.
fn maybe_field(
    rng: &mut StdRng,
    obj: &mut serde_json::Map<String, Value>,
    field: &str,
    pool: &[&str],
) {
    if rng.gen_bool(0.3) {
        obj.insert(field.to_string(), json!(pick(rng, pool)));
    }
    if rng.gen_bool(0.15) {
        obj.insert(not_field(field), json!(pick(rng, pool)));
    }
}

fn gen_rule(rng: &mut StdRng, ports: &[&str]) -> Value {
    let mut rule = serde_json::Map::new();
    let froms: Vec<Value> = (0..rng.gen_range(0..=2))
        .map(|_| {
            let mut s = serde_json::Map::new();
            for (field, pool) in SOURCE_FIELDS {
                maybe_field(rng, &mut s, field, pool);
            }
            json!({"source": s})
        })
        .collect();
    let tos: Vec<Value> = (0..rng.gen_range(0..=2))
        .map(|_| {
            let mut o = serde_json::Map::new();
            for field in OPERATION_FIELDS {
                maybe_field(rng, &mut o, field, operation_pool(field, ports));
            }
            json!({"operation": o})
        })
        .collect();
    let whens: Vec<Value> = (0..rng.gen_range(0..=2))
        .map(|_| {
            let (key, pool): (&str, &[&str]) = match rng.gen_range(0..12) {
                11 => ("connection.sni", SNIS),
                7 => ("request.auth.principal", REQUEST_PRINCIPALS),
                8 => ("request.auth.claims[groups]", GROUPS),
                9 => ("request.auth.audiences", AUDIENCES),
                10 => ("request.auth.claims[org][team]", TEAMS),
                0 => ("source.ip", CIDRS),
                1 => ("remote.ip", CIDRS),
                2 => ("destination.ip", DEST_CIDRS),
                3 => ("destination.port", ports),
                4 => ("source.namespace", NAMESPACES),
                5 => ("source.principal", PRINCIPALS),
                _ => ("request.headers[X-User]", HEADER_VALUES),
            };
            let mut w = serde_json::Map::new();
            w.insert("key".into(), json!(key));
            let both = rng.gen_bool(0.3);
            if both || rng.gen_bool(0.6) {
                w.insert("values".into(), json!(pick(rng, pool)));
            }
            if both || !w.contains_key("values") {
                w.insert("notValues".into(), json!(pick(rng, pool)));
            }
            Value::Object(w)
        })
        .collect();
    if !froms.is_empty() {
        rule.insert("from".into(), json!(froms));
    }
    if !tos.is_empty() {
        rule.insert("to".into(), json!(tos));
    }
    if !whens.is_empty() {
        rule.insert("when".into(), json!(whens));
    }
    Value::Object(rule)
}

/// One generated AuthorizationPolicy.
#[derive(Clone, Debug)]
struct Policy {
    name: String,
    action: &'static str,
    dry_run: bool,
    /// `None`: the policy has no `rules` field at all.
    rules: Option<Vec<Value>>,
}

fn gen_policies(rng: &mut StdRng, ports: &[&str]) -> Vec<Policy> {
    (0..rng.gen_range(1..=3))
        .map(|i| {
            let action = *["ALLOW", "ALLOW", "DENY", "DENY", "AUDIT"]
                .choose(rng)
                .expect("non-empty");
            let rules = if rng.gen_bool(0.05) {
                None
            } else {
                Some(
                    (0..rng.gen_range(1..=2))
                        .map(|_| gen_rule(rng, ports))
                        .collect(),
                )
            };
            Policy {
                name: format!("p{i}"),
                action,
                dry_run: rng.gen_bool(0.1),
                rules,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The oracle: Istio's translation to Envoy RBAC, written from pilot's code.

/// `matcher.StringMatcherWithPrefix`: `*` is `.+` (prefix dropped), `*x` a
/// suffix (a regex once a prefix is added), `x*` a prefix, else exact.
fn string_matcher(v: &str, prefix: &str) -> Value {
    if v == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(s) = v.strip_prefix('*') {
        if prefix.is_empty() {
            json!({"suffix": s})
        } else {
            json!({"safe_regex": {"regex": format!("{prefix}.*{s}")}})
        }
    } else if let Some(p) = v.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{p}")})
    } else {
        json!({"exact": format!("{prefix}{v}")})
    }
}

fn cidr(v: &str) -> Value {
    let (addr, len) = v.split_once('/').unwrap_or((v, "32"));
    json!({"address_prefix": addr, "prefix_len": len.parse::<u32>().expect("cidr length")})
}

fn peer_state(m: Value) -> Value {
    json!({"filter_state": {"key": "io.istio.peer_principal", "string_match": m}})
}

fn header_matcher(name: &str, v: &str, ignore_case: bool) -> Value {
    if v == "*" {
        return json!({"header": {"name": name, "present_match": true}});
    }
    let mut m = string_matcher(v, "");
    if ignore_case {
        m["ignore_case"] = json!(true);
    }
    json!({"header": {"name": name, "string_match": m}})
}

/// A principal matcher (`generator.principal`) for one value of `key`.
fn principal_for(key: &str, v: &str, policy_ns: &str) -> Value {
    match key {
        "principals" | "source.principal" => peer_state(string_matcher(v, "spiffe://")),
        "namespaces" | "source.namespace" => peer_state(
            json!({"safe_regex": {"regex": format!(".*/ns/{}/.*", v.replace('*', ".*"))}}),
        ),
        "serviceAccounts" => {
            let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
            peer_state(json!({"safe_regex": {
                "regex": format!("spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?")}}))
        }
        "ipBlocks" | "source.ip" => json!({"direct_remote_ip": cidr(v)}),
        "remoteIpBlocks" | "remote.ip" => json!({"remote_ip": cidr(v)}),
        "request.headers[X-User]" => header_matcher("X-User", v, false),
        "requestPrincipals" | "request.auth.principal" => request_principal(v),
        "request.auth.claims[groups]" => jwt_claim(&["groups"], v),
        "request.auth.audiences" => jwt_claim(&["aud"], v),
        "request.auth.claims[org][team]" => jwt_claim(&["org", "team"], v),
        other => panic!("no principal generator for {other}"),
    }
}

fn jwt_metadata(path: &[&str], value: Value) -> Value {
    let mut segments = vec![json!({"key": "payload"})];
    segments.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": segments, "value": value}})
}

/// `requestPrincipalGenerator.extendedPrincipal`: issuer and subject matched
/// separately, split at the value's last `/`.
fn request_principal(v: &str) -> Value {
    let any = json!({"safe_regex": {"regex": ".+"}});
    let (iss, sub) = match v.rfind('/') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    // Istio trims the `*` from the issuer (leading) or subject (trailing).
    let trim_front = |x: &str| x.trim_start_matches('*').to_string();
    let trim_back = |x: &str| x.trim_end_matches('*').to_string();
    let (mi, ms) = if v == "*" {
        (any.clone(), any)
    } else if v.starts_with('*') {
        match sub {
            Some(sub) if iss == "*" => (any, json!({"exact": sub})),
            Some(sub) => (json!({"suffix": trim_front(iss)}), json!({"exact": sub})),
            None => (any, json!({"suffix": trim_front(v)})),
        }
    } else if v.ends_with('*') {
        match sub {
            Some("*") => (json!({"exact": iss}), any),
            Some(sub) => (json!({"exact": iss}), json!({"prefix": trim_back(sub)})),
            None => (json!({"prefix": trim_back(v)}), any),
        }
    } else {
        (json!({"exact": iss}), json!({"exact": sub.unwrap_or("")}))
    };
    json!({"and_ids": {"ids": [
        jwt_metadata(&["iss"], json!({"string_match": mi})),
        jwt_metadata(&["sub"], json!({"string_match": ms})),
    ]}})
}

/// `MetadataListValueMatcher(..., useExtendedJwt=true)`: a list holding a
/// matching string, or a matching string.
fn jwt_claim(path: &[&str], v: &str) -> Value {
    let m = json!({"string_match": string_matcher(v, "")});
    jwt_metadata(
        path,
        json!({"or_match": {"value_matchers": [{"list_match": {"one_of": m}}, m]}}),
    )
}

/// A permission matcher (`generator.permission`) for one value of `key`.
fn permission_for(key: &str, v: &str) -> Value {
    match key {
        "hosts" => header_matcher(":authority", v, true),
        "methods" => header_matcher(":method", v, false),
        "paths" if v.contains("{*}") || v.contains("{**}") => json!({"uri_template": {
        "name": "uri-template",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": v.replace("{**}", "**").replace("{*}", "*"),
        }}}),
        "paths" => json!({"url_path": {"path": string_matcher(v, "")}}),
        "ports" | "destination.port" => {
            json!({"destination_port": v.parse::<u32>().expect("port")})
        }
        "destination.ip" => json!({"destination_ip": cidr(v)}),
        "connection.sni" => json!({"requested_server_name": string_matcher(v, "")}),
        other => panic!("no permission generator for {other}"),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `rule.principal` / `rule.permission`: an OR of the values, then NOT(OR)
/// of the notValues.
fn field_matchers(
    values: &[String],
    not_values: &[String],
    one: &dyn Fn(&str) -> Value,
    or_key: &str,
    list_key: &str,
    not_key: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    if !values.is_empty() {
        let or: Vec<Value> = values.iter().map(|v| one(v)).collect();
        out.push(json!({ or_key: { list_key: or } }));
    }
    if !not_values.is_empty() {
        let or: Vec<Value> = not_values.iter().map(|v| one(v)).collect();
        out.push(json!({ not_key: { or_key: { list_key: or } } }));
    }
    out
}

fn principal_field(key: &str, values: &[String], not: &[String], ns: &str) -> Vec<Value> {
    field_matchers(
        values,
        not,
        &|v| principal_for(key, v, ns),
        "or_ids",
        "ids",
        "not_id",
    )
}

fn permission_field(key: &str, values: &[String], not: &[String]) -> Vec<Value> {
    field_matchers(
        values,
        not,
        &|v| permission_for(key, v),
        "or_rules",
        "rules",
        "not_rule",
    )
}

const PRINCIPAL_WHEN: &[&str] = &[
    "request.auth.principal",
    "request.auth.claims[groups]",
    "request.auth.audiences",
    "request.auth.claims[org][team]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.headers[X-User]",
];

/// Fields a TCP filter chain cannot check: Istio's generators return an
/// error for them when `forTCP`.
const HTTP_ONLY: &[&str] = &[
    "requestPrincipals",
    "request.auth.principal",
    "request.auth.claims[groups]",
    "request.auth.audiences",
    "request.auth.claims[org][team]",
    "request.headers[X-User]",
    "hosts",
    "methods",
    "paths",
];

/// `rule.checkError` on a TCP chain: an HTTP-only field fails an ALLOW rule
/// (`None`: the rule is skipped) and is left out of a DENY or AUDIT rule.
fn tcp_field(
    key: &str,
    (vals, nots): (&[String], &[String]),
    action: &str,
    chain: Chain,
) -> Option<bool> {
    let given = !vals.is_empty() || !nots.is_empty();
    let http_only = match chain {
        Chain::Http => false,
        Chain::WaypointTcp => HTTP_ONLY.contains(&key),
        // Istio's ambient conversion (`ambient/authorization.go`): ztunnel
        // sees no X-Forwarded-For, so remote addresses are HTTP-only too.
        // So is `connection.sni` (ztunnel's RBAC has no SNI).
        Chain::Ztunnel => {
            HTTP_ONLY.contains(&key)
                || matches!(key, "remoteIpBlocks" | "remote.ip" | "connection.sni")
        }
    };
    if !(given && http_only) {
        return Some(true);
    }
    if action == "ALLOW" { None } else { Some(false) }
}

/// Istio's ztunnel skips an empty match (`RbacMatch::is_empty`), so an
/// ALLOW `from`/`to` entry written as `{}` never matches there, while Envoy
/// reads it as "any". (A DENY entry left empty is broadened by Ambit, as
/// Envoy does, so it still denies.)
fn ztunnel_never(entry: &Value, action: &str, chain: Chain) -> bool {
    chain == Chain::Ztunnel
        && action == "ALLOW"
        && entry.as_object().is_none_or(serde_json::Map::is_empty)
}

/// `model.New` + `Generate` for one rule (`None`: skipped on this chain).
fn istio_rbac_policy(rule: &Value, ns: &str, action: &str, chain: Chain) -> Option<Value> {
    let mut base_principal = Vec::new();
    let mut base_permission = Vec::new();
    for w in rule
        .get("when")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = w["key"].as_str().expect("key");
        let (vals, nots) = (strings(w.get("values")), strings(w.get("notValues")));
        if !tcp_field(key, (&vals, &nots), action, chain)? {
            continue;
        }
        if PRINCIPAL_WHEN.contains(&key) {
            base_principal.extend(principal_field(key, &vals, &nots, ns));
        } else {
            base_permission.extend(permission_field(key, &vals, &nots));
        }
    }
    let and_ids = |ids: Vec<Value>| {
        let ids = if ids.is_empty() {
            vec![json!({"any": true})]
        } else {
            ids
        };
        json!({"and_ids": {"ids": ids}})
    };
    let and_rules = |rules: Vec<Value>| {
        let rules = if rules.is_empty() {
            vec![json!({"any": true})]
        } else {
            rules
        };
        json!({"and_rules": {"rules": rules}})
    };
    let mut principals = Vec::new();
    for from in rule
        .get("from")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = &from["source"];
        if ztunnel_never(s, action, chain) {
            principals.push(json!({"not_id": {"any": true}}));
            continue;
        }
        let mut ids = Vec::new();
        for (key, _) in SOURCE_FIELDS {
            let (vals, nots) = entry_field(s, key);
            if !tcp_field(key, (&vals, &nots), action, chain)? {
                continue;
            }
            ids.extend(principal_field(key, &vals, &nots, ns));
        }
        ids.extend(base_principal.iter().cloned());
        principals.push(and_ids(ids));
    }
    if principals.is_empty() {
        principals.push(and_ids(base_principal.clone()));
    }
    let mut permissions = Vec::new();
    for to in rule
        .get("to")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let o = &to["operation"];
        if ztunnel_never(o, action, chain) {
            permissions.push(json!({"not_rule": {"any": true}}));
            continue;
        }
        let mut rules = Vec::new();
        for key in OPERATION_FIELDS {
            let (vals, nots) = entry_field(o, key);
            if !tcp_field(key, (&vals, &nots), action, chain)? {
                continue;
            }
            rules.extend(permission_field(key, &vals, &nots));
        }
        rules.extend(base_permission.iter().cloned());
        permissions.push(and_rules(rules));
    }
    if permissions.is_empty() {
        permissions.push(and_rules(base_permission.clone()));
    }
    Some(json!({"permissions": permissions, "principals": principals}))
}

/// `Builder.build` for one action: enforced policies go into `rules` (absent
/// when none is enforced: no enforcement); a policy without rules matches
/// nothing; dry-run ones only shadow (no effect on the answer).
fn istio_rbac(policies: &[Policy], action: &str, ns: &str, chain: Chain) -> Value {
    let enforced: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.action == action && !p.dry_run)
        .collect();
    if enforced.is_empty() {
        return json!({});
    }
    let mut map = serde_json::Map::new();
    for p in enforced {
        match &p.rules {
            None => {
                map.insert(
                    format!("ns[{ns}]-policy[{}]-rule[0]", p.name),
                    json!({"permissions": [{"not_rule": {"any": true}}],
                           "principals": [{"not_id": {"any": true}}]}),
                );
            }
            Some(rules) => {
                for (i, r) in rules.iter().enumerate() {
                    if let Some(policy) = istio_rbac_policy(r, ns, action, chain) {
                        map.insert(format!("ns[{ns}]-policy[{}]-rule[{i}]", p.name), policy);
                    }
                }
            }
        }
    }
    json!({"rules": {"action": action, "policies": map}})
}

/// What Envoy's JWT filter leaves in `jwt_authn` metadata for a validated
/// token, rebuilt from the test's `x-test-jwt` header
/// (`iss=..;sub=..;groups=[a,b];aud=x;org.team=y`; `[..]` is a list).
const LUA_PAYLOAD: &str = r#"
function envoy_on_request(h)
  local raw = h:headers():get("x-test-jwt")
  if raw == nil then return end
  local payload = {}
  for pair in string.gmatch(raw, "[^;]+") do
    local k, v = string.match(pair, "^([^=]+)=(.*)$")
    local value = v
    if string.sub(v, 1, 1) == "[" then
      value = {}
      for item in string.gmatch(string.sub(v, 2, -2), "[^,]+") do
        table.insert(value, item)
      end
    end
    local outer, inner = string.match(k, "^([^.]+)%.(.+)$")
    if outer ~= nil then
      payload[outer] = payload[outer] or {}
      payload[outer][inner] = value
    else
      payload[k] = value
    end
  end
  h:streamInfo():dynamicMetadata():set("envoy.filters.http.jwt_authn", "payload", payload)
end
"#;

fn envoy_config(admin: u16, listeners: &[SocketAddr], sets: &[Vec<Policy>]) -> String {
    let per_route = |rbac: Value| {
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
               "rbac": rbac})
    };
    // Each set twice: as Istio builds it for HTTP, and for a TCP chain
    // (`x-case: N-tcp`), where only the L4 fields survive.
    let routes: Vec<Value> = sets
        .iter()
        .enumerate()
        .flat_map(|(i, ps)| {
            [Chain::Http, Chain::WaypointTcp, Chain::Ztunnel].map(|chain| {
                let case = format!("{i}{}", chain.suffix());
                json!({
                    "match": {"prefix": "/", "headers": [{"name": "x-case", "string_match": {"exact": case}}]},
                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                    "typed_per_filter_config": {
                        "istio.authorization.deny": per_route(istio_rbac(ps, "DENY", "shop", chain)),
                        "istio.authorization.allow": per_route(istio_rbac(ps, "ALLOW", "shop", chain)),
                    }
                })
            })
        })
        .collect();
    let rbac = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"});
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "authz",
        // Istio's BASE normalization.
        "normalize_path": true,
        "merge_slashes": false,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        // numTrustedProxies 0: remote.ip is the downstream peer.
        "use_remote_address": true,
        "xff_num_trusted_hops": 0,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {"name": "peer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                "on_request_headers": [{
                    "object_key": "io.istio.peer_principal",
                    "factory_key": "envoy.string",
                    "format_string": {"text_format_source": {"inline_string": "%REQ(x-test-peer)%"}}
                }]}},
            {"name": "jwt-payload", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": LUA_PAYLOAD}}},
            {"name": "istio.authorization.deny", "typed_config": rbac},
            {"name": "istio.authorization.allow", "typed_config": rbac},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ]
    });
    let listeners: Vec<Value> = listeners
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "name": format!("l{i}"),
                "address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]
            })
        })
        .collect();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners}
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// Ambit's side.

/// Translates the policies, bound to Service `web` with `targetRefs` (the
/// waypoint's) or, without, to every workload of `shop` (ztunnel's).
fn ambit_translate(policies: &[Policy], target_refs: bool) -> ambit_api::translate::Translation {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: service}}\n\
         spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{name: http, port: 80}]}\n",
    );
    for p in policies {
        let mut spec = json!({"action": p.action});
        if target_refs {
            spec["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "web"}]);
        }
        if let Some(rules) = &p.rules {
            spec["rules"] = json!(rules);
        }
        let mut meta = json!({"name": p.name, "namespace": "shop"});
        if p.dry_run {
            meta["annotations"] = json!({"istio.io/dry-run": "true"});
        }
        let obj = json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": meta,
            "spec": spec,
        });
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&obj).expect("yaml"));
    }
    let mut res = Resources::default();
    res.add_yaml(&yaml, "differential.yaml")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let t = ambit_api::translate::translate(&res);
    let errors: Vec<String> = t
        .findings
        .iter()
        .filter(|f| f.severity == ambit_api::translate::Severity::Error)
        .map(|f| f.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{yaml}");
    t
}

fn ambit_authorizer(policies: &[Policy]) -> Authorizer {
    let t = ambit_translate(policies, true);
    let svc =
        t.l7.iter()
            .find(|s| s.hostname == "web.shop.svc.cluster.local")
            .unwrap_or_else(|| panic!("web has no L7 config"));
    Authorizer::new(&svc.authorization)
}

/// One generated request.
#[derive(Clone, Debug)]
struct Req {
    case: usize,
    peer: &'static str,
    source: Ipv4Addr,
    listener: SocketAddr,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    users: Vec<&'static str>,
    xff: bool,
    /// The claims of the request's validated JWT, if it carries one.
    jwt: Option<Jwt>,
    /// Which enforcement point decides.
    chain: Chain,
}

/// Where a request meets policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    /// The waypoint's HTTP path.
    Http,
    /// The waypoint's TCP path (only L4 fields apply).
    WaypointTcp,
    /// ztunnel's inbound L4 check (Istio's ambient conversion: also
    /// `remoteIpBlocks`/`remote.ip` are HTTP-only there).
    Ztunnel,
}

impl Chain {
    fn suffix(self) -> &'static str {
        match self {
            Chain::Http => "",
            Chain::WaypointTcp => "-tcp",
            Chain::Ztunnel => "-l4",
        }
    }
}

/// The claims of a validated JWT.
#[derive(Clone, Debug)]
struct Jwt {
    iss: &'static str,
    sub: &'static str,
    groups: Option<Vec<&'static str>>,
    aud: Vec<&'static str>,
    team: Option<&'static str>,
}

impl Jwt {
    fn generate(rng: &mut StdRng) -> Jwt {
        let list = |rng: &mut StdRng, pool: &[&'static str]| -> Vec<&'static str> {
            let n = rng.gen_range(1..=2);
            pool.choose_multiple(rng, n).copied().collect()
        };
        Jwt {
            iss: ["https://idp.example", "iss-b", "iss-c"]
                .choose(rng)
                .copied()
                .expect("issuers"),
            sub: ["alice", "bob"].choose(rng).copied().expect("subjects"),
            groups: rng
                .gen_bool(0.7)
                .then(|| list(rng, &["admin", "dev", "ops"])),
            aud: list(rng, &["web", "api"]),
            team: rng
                .gen_bool(0.5)
                .then(|| *["blue", "red"].choose(rng).expect("teams")),
        }
    }

    /// The `x-test-jwt` header the Lua filter reads.
    fn header(&self) -> String {
        let mut s = format!("iss={};sub={}", self.iss, self.sub);
        if let Some(g) = &self.groups {
            s.push_str(&format!(";groups=[{}]", g.join(",")));
        }
        // One audience as a string, several as a list (both JWT forms).
        if self.aud.len() == 1 {
            s.push_str(&format!(";aud={}", self.aud[0]));
        } else {
            s.push_str(&format!(";aud=[{}]", self.aud.join(",")));
        }
        if let Some(t) = self.team {
            s.push_str(&format!(";org.team={t}"));
        }
        s
    }

    /// The claims as the waypoint's JWT filter flattens them.
    fn claims(&self) -> BTreeMap<String, Vec<String>> {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut c = BTreeMap::new();
        c.insert("iss".to_string(), vec![self.iss.to_string()]);
        c.insert("sub".to_string(), vec![self.sub.to_string()]);
        if let Some(g) = &self.groups {
            c.insert("groups".to_string(), owned(g));
        }
        c.insert("aud".to_string(), owned(&self.aud));
        if let Some(t) = self.team {
            c.insert("org.team".to_string(), vec![t.to_string()]);
        }
        c
    }
}

impl Req {
    fn wire(&self) -> String {
        let mut s = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nx-case: {}{}\r\nx-test-peer: {}\r\nconnection: close\r\ncontent-length: 0\r\n",
            self.method,
            self.path,
            self.host,
            self.case,
            self.chain.suffix(),
            self.peer
        );
        for u in &self.users {
            s.push_str(&format!("X-User: {u}\r\n"));
        }
        if self.xff {
            s.push_str("x-forwarded-for: 127.0.0.20\r\n");
        }
        if let Some(j) = &self.jwt {
            s.push_str(&format!("x-test-jwt: {}\r\n", j.header()));
        }
        s.push_str("\r\n");
        s
    }

    /// What Ambit's waypoint answers: 400 for a path normalization refuses,
    /// else 200 or 403 by its authorizer.
    fn ambit_status(&self, authz: &Authorizer, l4: &[Authorization]) -> u16 {
        let raw = self.path.split('?').next().unwrap_or("/");
        let Ok(path) = PathNormalization::Base.apply(raw) else {
            return 400;
        };
        let mut headers = BTreeMap::new();
        headers.insert("host".to_string(), vec![self.host.to_string()]);
        if !self.users.is_empty() {
            headers.insert(
                "x-user".to_string(),
                self.users.iter().map(|u| u.to_string()).collect(),
            );
        }
        let attrs = RequestAttributes {
            peer: Some(self.peer.parse::<SpiffeId>().expect("peer id")),
            source_ip: Some(IpAddr::V4(self.source)),
            // numTrustedProxies 0: the client-supplied XFF is not trusted.
            remote_ip: Some(IpAddr::V4(self.source)),
            destination_ip: Some(self.listener.ip()),
            port: self.listener.port(),
            authority: Some(self.host.to_string()),
            method: self.method.to_string(),
            path,
            headers,
            request_auth: self
                .jwt
                .as_ref()
                .map(|j| (j.iss.to_string(), j.sub.to_string())),
            claims: self.jwt.as_ref().map(Jwt::claims).unwrap_or_default(),
            ..RequestAttributes::default()
        };
        if self.chain == Chain::Ztunnel {
            let conn = Connection {
                src_identity: attrs.peer,
                src_ip: IpAddr::V4(self.source),
                dst_ip: self.listener.ip(),
                dst_port: self.listener.port(),
            };
            return if ambit_api::model::authz::authorize(l4, &conn).is_allowed() {
                200
            } else {
                403
            };
        }
        if self.chain == Chain::WaypointTcp {
            // What the waypoint's TCP path sees (`tcp_attributes`).
            let l4 = RequestAttributes {
                peer: attrs.peer,
                source_ip: attrs.source_ip,
                remote_ip: attrs.remote_ip,
                destination_ip: attrs.destination_ip,
                port: attrs.port,
                ..RequestAttributes::default()
            };
            return if authz.authorize(Mode::Tcp, &l4).is_allowed() {
                200
            } else {
                403
            };
        }
        if authz.authorize(Mode::Http, &attrs).is_allowed() {
            200
        } else {
            403
        }
    }
}

async fn envoy_status(r: &Req) -> Result<u16, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(IpAddr::V4(r.source), 0))
        .map_err(|e| format!("bind {}: {e}", r.source))?;
    let mut s = sock
        .connect(r.listener)
        .await
        .map_err(|e| format!("connect {}: {e}", r.listener))?;
    s.write_all(r.wire().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the head only: Envoy delays its close after a local reply, so
    // waiting for EOF would cost a second per request.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_authorization_agrees_with_envoy_rbac_as_istio_configures_it() {
    if let Err(e) = envoy::binary() {
        panic!("{e}");
    }
    let seed: u64 = std::env::var("AMBIT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_a11b);
    let mut rng = StdRng::seed_from_u64(seed);
    let (p1, p2) = (envoy::free_port(), envoy::free_port());
    let listeners: Vec<SocketAddr> = [[127, 0, 0, 1], [127, 0, 0, 2]]
        .iter()
        .flat_map(|ip| [p1, p2].map(|p| SocketAddr::from((*ip, p))))
        .collect();
    let (s1, s2) = (p1.to_string(), p2.to_string());
    let ports: Vec<&str> = vec![s1.as_str(), s2.as_str(), "9999"];

    let sets: Vec<Vec<Policy>> = (0..POLICY_SETS)
        .map(|_| gen_policies(&mut rng, &ports))
        .collect();
    let authorizers: Vec<Authorizer> = sets.iter().map(|s| ambit_authorizer(s)).collect();
    let l4_policies: Vec<Vec<Authorization>> = sets
        .iter()
        .map(|s| {
            ambit_translate(s, false)
                .config
                .policies
                .into_iter()
                .filter(|p| p.namespace == "shop")
                .collect()
        })
        .collect();

    let admin = envoy::free_port();
    let config = envoy_config(admin, &listeners, &sets);
    let proxy = Envoy::start(envoy::scratch_dir("authz-diff"), &config, admin).await;

    let mut requests = Vec::new();
    for case in 0..POLICY_SETS {
        for _ in 0..REQUESTS_PER_SET {
            let users = match rng.gen_range(0..5) {
                // One header line holding a comma: one value, not two.
                4 => vec!["alice,bob"],
                0 => vec![],
                1 => vec!["alice"],
                2 => vec!["bob"],
                _ => vec!["alice", "bob"],
            };
            requests.push(Req {
                case,
                peer: PEERS.choose(&mut rng).copied().expect("peers"),
                source: Ipv4Addr::from(*SOURCES.choose(&mut rng).expect("sources")),
                listener: *listeners.choose(&mut rng).expect("listeners"),
                host: REQ_HOSTS.choose(&mut rng).copied().expect("hosts"),
                method: REQ_METHODS.choose(&mut rng).copied().expect("methods"),
                path: REQ_PATHS.choose(&mut rng).copied().expect("paths"),
                users,
                xff: rng.gen_bool(0.2),
                jwt: rng.gen_bool(0.6).then(|| Jwt::generate(&mut rng)),
                chain: Chain::Http,
            });
        }
    }

    let other_chains: Vec<Req> = requests
        .iter()
        .flat_map(|r| [Chain::WaypointTcp, Chain::Ztunnel].map(|chain| Req { chain, ..r.clone() }))
        .collect();
    requests.extend(other_chains);

    let mut disagreements = Vec::new();
    let (mut allowed, mut denied) = (0usize, 0usize);
    for r in &requests {
        let theirs = match envoy_status(r).await {
            Ok(s) => s,
            Err(e) => panic!("request {r:?} to envoy failed: {e}\n{}", proxy.log()),
        };
        let ours = r.ambit_status(&authorizers[r.case], &l4_policies[r.case]);
        match ours {
            200 => allowed += 1,
            403 => denied += 1,
            _ => {}
        }
        if theirs != ours {
            disagreements.push(format!(
                "case {}{} request {} {} host={} peer={} src={} dst={} users={:?} jwt={:?}: envoy {theirs}, ambit {ours}\npolicies: {}",
                r.case,
                r.chain.suffix(),
                r.method,
                r.path,
                r.host,
                r.peer,
                r.source,
                r.listener,
                r.users,
                r.jwt.as_ref().map(Jwt::header),
                serde_json::to_string(
                    &sets[r.case]
                        .iter()
                        .map(|p| json!({"action": p.action, "dryRun": p.dry_run, "rules": p.rules}))
                        .collect::<Vec<_>>()
                )
                .unwrap_or_default()
            ));
        }
    }
    println!(
        "authz differential (seed {seed:#x}): {} policy sets x {} requests x (waypoint HTTP, waypoint TCP, ztunnel L4) = {} cases, {allowed} allowed, {denied} denied, {} disagreements",
        POLICY_SETS,
        REQUESTS_PER_SET,
        requests.len(),
        disagreements.len()
    );
    assert!(
        allowed > requests.len() / 10 && denied > requests.len() / 10,
        "the generator should exercise both outcomes: {allowed} allowed, {denied} denied"
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree with Envoy RBAC; first ones:\n{}",
        disagreements.len(),
        requests.len(),
        disagreements
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
