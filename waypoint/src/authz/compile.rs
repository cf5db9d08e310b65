//! One AuthorizationPolicy compiled into checks, the way Istio's pilot turns
//! each rule value into an Envoy RBAC matcher (`authz/model/generator.go`):
//!
//! | field / `when` key | matched against | on TCP |
//! |---|---|---|
//! | `principals`, `source.principal` | peer SPIFFE id without `spiffe://`; `*` any, `x*` prefix, `*x` suffix | yes |
//! | `namespaces`, `source.namespace` | the peer id's namespace (`*` anywhere) | yes |
//! | `serviceAccounts` | peer id namespace + service account (`sa` alone: the policy's namespace) | yes |
//! | `ipBlocks`, `source.ip` | the downstream peer address | yes |
//! | `remoteIpBlocks`, `remote.ip` | the original client address | yes |
//! | `ports`, `destination.port` | destination port | yes |
//! | `destination.ip` | destination address | yes |
//! | `connection.sni` | the TLS SNI the proxy saw (none here) | yes |
//! | `requestPrincipals`, `request.auth.principal` | JWT `iss` and `sub`, split at the value's last `/` | no |
//! | `request.auth.audiences` / `presenter` / `claims[a][b]` | JWT claim values (any element of a list) | no |
//! | `request.headers[h]` | the header (`*`: present) | no |
//! | `hosts` | `:authority` with its port, case-insensitive | no |
//! | `methods` | method, case-sensitive | no |
//! | `paths` | normalized path; `{*}` / `{**}` templates | no |

use ambit_api::model::authz::Cidr;
use ambit_api::xds::proto::l7 as pb;

use super::{Mode, RequestAttributes};

/// What a compiled policy does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PolicyAction {
    Allow,
    Deny,
    Audit,
}

/// Istio's string forms: `*` any non-empty value, `x*` prefix, `*x` suffix,
/// else exact.
#[derive(Clone, Debug)]
enum Pattern {
    Any,
    Prefix(String),
    Suffix(String),
    Exact(String),
}

impl Pattern {
    fn new(s: &str) -> Self {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    /// Lower-cased, for case-insensitive comparisons.
    fn lower(s: &str) -> Self {
        Pattern::new(&s.to_ascii_lowercase())
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => !v.is_empty(),
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(p) => v.ends_with(p.as_str()),
            Pattern::Exact(p) => v == p,
        }
    }
}

/// A `*`-anywhere glob (Istio turns each `*` of a namespace into `.*`).
#[derive(Clone, Debug)]
struct Glob(Vec<String>);

impl Glob {
    fn new(s: &str) -> Self {
        Glob(s.split('*').map(str::to_string).collect())
    }

    fn matches(&self, v: &str) -> bool {
        let parts = &self.0;
        let [first, middle @ .., last] = parts.as_slice() else {
            return parts.first().is_some_and(|p| p == v);
        };
        let Some(mut rest) = v.strip_prefix(first.as_str()) else {
            return false;
        };
        for m in middle {
            match rest.find(m.as_str()) {
                Some(i) => rest = &rest[i + m.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last.as_str())
    }
}

/// A path value: Istio's string forms, or a template with `{*}` (one
/// segment) and `{**}` (any number of segments).
#[derive(Clone, Debug)]
enum PathPattern {
    Plain(Pattern),
    Template(regex::Regex),
}

impl PathPattern {
    fn new(s: &str) -> Result<Self, String> {
        if !s.contains('{') {
            return Ok(PathPattern::Plain(Pattern::new(s)));
        }
        let mut re = String::from("^");
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            re.push_str(&regex::escape(&rest[..i]));
            let after = &rest[i..];
            if let Some(r) = after.strip_prefix("{**}") {
                re.push_str(".*");
                rest = r;
            } else if let Some(r) = after.strip_prefix("{*}") {
                re.push_str("[^/]+");
                rest = r;
            } else {
                return Err(format!(
                    "path template {s:?}: only {{*}} and {{**}} are operators"
                ));
            }
        }
        re.push_str(&regex::escape(rest));
        re.push('$');
        regex::Regex::new(&re)
            .map(PathPattern::Template)
            .map_err(|e| format!("path template {s:?}: {e}"))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(r) => r.is_match(path),
        }
    }
}

/// One compiled value of one field.
#[derive(Clone, Debug)]
enum Check {
    Principal(Pattern),
    Namespace(Glob),
    ServiceAccount { namespace: String, name: String },
    SourceIp(Cidr),
    RemoteIp(Cidr),
    DestinationIp(Cidr),
    DestinationPort(u16),
    Sni(Pattern),
    RequestPrincipal { iss: Pattern, sub: Pattern },
    Claim { name: String, value: Pattern },
    Header { name: String, value: Pattern },
    HeaderPresent(String),
    Host(Pattern),
    HostPresent,
    Method(Pattern),
    Path(PathPattern),
}

impl Check {
    fn holds(&self, r: &RequestAttributes) -> bool {
        let peer = r.peer.as_ref();
        match self {
            Check::Principal(p) => peer.is_some_and(|id| p.matches(&id.principal())),
            Check::Namespace(g) => peer.is_some_and(|id| g.matches(id.namespace())),
            Check::ServiceAccount { namespace, name } => peer.is_some_and(|id| {
                id.namespace() == namespace.as_str() && id.service_account() == name.as_str()
            }),
            Check::SourceIp(c) => r.source_ip.is_some_and(|ip| c.contains(ip)),
            Check::RemoteIp(c) => r.remote_ip.is_some_and(|ip| c.contains(ip)),
            Check::DestinationIp(c) => r.destination_ip.is_some_and(|ip| c.contains(ip)),
            Check::DestinationPort(p) => r.port == *p,
            Check::Sni(p) => r.sni.as_deref().is_some_and(|s| p.matches(s)),
            Check::RequestPrincipal { iss, sub } => r
                .request_auth
                .as_ref()
                .is_some_and(|(i, s)| iss.matches(i) && sub.matches(s)),
            Check::Claim { name, value } => r
                .claims
                .get(name)
                .is_some_and(|vs| vs.iter().any(|v| value.matches(v))),
            // Envoy's header matcher (as the differential test against it
            // shows) holds when any one of a repeated header's values or
            // the whole value matches; repeated headers arrive here joined
            // with `,` (without one, the split is the whole value: checked
            // once).
            // Envoy's header matcher: any one value, or all of them joined
            // with `,` when the header was sent more than once.
            Check::Header { name, value } => r.headers.get(name).is_some_and(|vs| {
                vs.iter().any(|one| value.matches(one))
                    || (vs.len() > 1 && value.matches(&vs.join(",")))
            }),
            Check::HeaderPresent(name) => r.headers.contains_key(name),
            Check::Host(p) => r
                .authority
                .as_ref()
                .is_some_and(|a| p.matches(&a.to_ascii_lowercase())),
            Check::HostPresent => r.authority.is_some(),
            Check::Method(p) => p.matches(&r.method),
            Check::Path(p) => p.matches(&r.path),
        }
    }
}

/// One field: some value must hold (if any are given), no `not` value may.
#[derive(Clone, Debug, Default)]
struct Field {
    values: Vec<Check>,
    not_values: Vec<Check>,
}

impl Field {
    fn holds(&self, r: &RequestAttributes) -> bool {
        (self.values.is_empty() || self.values.iter().any(|c| c.holds(r)))
            && !self.not_values.iter().any(|c| c.holds(r))
    }
}

/// Every field of one entry must hold.
type Entry = Vec<Field>;

fn entry_holds(e: &Entry, r: &RequestAttributes) -> bool {
    e.iter().all(|f| f.holds(r))
}

/// One compiled rule.
#[derive(Clone, Debug, Default)]
struct Rule {
    when: Entry,
    /// Empty: no `to` given, any operation.
    to: Vec<Entry>,
    /// Empty: no `from` given, any source.
    from: Vec<Entry>,
}

impl Rule {
    fn matches(&self, r: &RequestAttributes) -> bool {
        entry_holds(&self.when, r)
            && (self.to.is_empty() || self.to.iter().any(|e| entry_holds(e, r)))
            && (self.from.is_empty() || self.from.iter().any(|e| entry_holds(e, r)))
    }
}

/// A compiled AuthorizationPolicy.
#[derive(Clone, Debug)]
pub(super) struct Policy {
    pub(super) key: String,
    pub(super) action: PolicyAction,
    pub(super) dry_run: bool,
    /// Compiled rules with their index in `spec.rules` (a rule that cannot
    /// be checked is dropped, so positions differ from indexes).
    http: Vec<(usize, Rule)>,
    tcp: Vec<(usize, Rule)>,
}

impl Policy {
    pub(super) fn new(p: &pb::HttpPolicy) -> Self {
        use pb::http_policy::Action;
        // An action this build does not know is compiled as DENY: the
        // controller reports it; the proxy never lets it allow.
        let action = match Action::try_from(p.action) {
            Ok(Action::Allow) => PolicyAction::Allow,
            Ok(Action::Audit) => PolicyAction::Audit,
            Ok(Action::Deny) | Err(_) => PolicyAction::Deny,
        };
        let key = format!("{}/{}", p.namespace, p.name);
        let compile = |mode| {
            p.rules
                .iter()
                .enumerate()
                .filter_map(|(i, rule)| {
                    let ctx = Compiler {
                        mode,
                        action,
                        namespace: &p.namespace,
                    };
                    ctx.rule(rule)
                        .inspect_err(|e| {
                            tracing::debug!(policy = %key, rule = i, ?mode, "rule skipped: {e}")
                        })
                        .ok()
                        .map(|compiled| (i, compiled))
                })
                .collect()
        };
        Policy {
            http: compile(Mode::Http),
            tcp: compile(Mode::Tcp),
            key: key.clone(),
            action,
            dry_run: p.dry_run,
        }
    }

    /// Enforced: neither AUDIT nor dry-run.
    pub(super) fn enforced(&self) -> bool {
        !self.dry_run && self.action != PolicyAction::Audit
    }

    pub(super) fn matches(&self, mode: Mode, r: &RequestAttributes) -> bool {
        self.matching_rule(mode, r).is_some()
    }

    /// The index in `spec.rules` of the first rule `r` matches.
    pub(super) fn matching_rule(&self, mode: Mode, r: &RequestAttributes) -> Option<usize> {
        let rules = match mode {
            Mode::Http => &self.http,
            Mode::Tcp => &self.tcp,
        };
        rules
            .iter()
            .find(|(_, rule)| rule.matches(r))
            .map(|(i, _)| *i)
    }
}

/// Compiles values for one policy in one mode.
struct Compiler<'a> {
    mode: Mode,
    action: PolicyAction,
    namespace: &'a str,
}

impl Compiler<'_> {
    /// A value that cannot be checked: an ALLOW rule is dropped (`Err`), a
    /// DENY/AUDIT rule goes on without it (`Ok(None)`).
    fn skip(&self, why: String) -> Result<Option<Check>, String> {
        match self.action {
            PolicyAction::Allow => Err(why),
            PolicyAction::Deny | PolicyAction::Audit => Ok(None),
        }
    }

    fn http_only(&self, field: &str, c: Check) -> Result<Option<Check>, String> {
        match self.mode {
            Mode::Http => Ok(Some(c)),
            Mode::Tcp => self.skip(format!("{field} is HTTP only")),
        }
    }

    fn field(
        &self,
        values: &[String],
        not_values: &[String],
        check: impl Fn(&str) -> Result<Option<Check>, String>,
    ) -> Result<Option<Field>, String> {
        if values.is_empty() && not_values.is_empty() {
            return Ok(None);
        }
        let mut f = Field::default();
        for v in values {
            f.values.extend(check(v)?);
        }
        for v in not_values {
            f.not_values.extend(check(v)?);
        }
        Ok(Some(f))
    }

    fn ip(&self, v: &str, make: fn(Cidr) -> Check) -> Result<Option<Check>, String> {
        match v.parse::<Cidr>() {
            Ok(c) => Ok(Some(make(c))),
            Err(e) => self.skip(e.to_string()),
        }
    }

    fn port(&self, v: &str) -> Result<Option<Check>, String> {
        match v.parse::<u16>() {
            Ok(p) => Ok(Some(Check::DestinationPort(p))),
            Err(_) => self.skip(format!("{v:?} is not a port")),
        }
    }

    fn request_principal(&self, v: &str) -> Result<Option<Check>, String> {
        // Istio splits at the last `/` (the issuer may be a URL).
        let (iss, sub) = match v.rsplit_once('/') {
            _ if v == "*" => (Pattern::Any, Pattern::Any),
            Some((i, s)) => (Pattern::new(i), Pattern::new(s)),
            None if v.starts_with('*') => (Pattern::Any, Pattern::new(v)),
            None if v.ends_with('*') => (Pattern::new(v), Pattern::Any),
            None => (Pattern::Exact(v.to_string()), Pattern::Exact(String::new())),
        };
        self.http_only("requestPrincipals", Check::RequestPrincipal { iss, sub })
    }

    fn source(&self, s: &pb::HttpSource) -> Result<Entry, String> {
        let sa = |v: &str| {
            let (ns, name) = v.split_once('/').unwrap_or((self.namespace, v));
            Ok(Some(Check::ServiceAccount {
                namespace: ns.to_string(),
                name: name.to_string(),
            }))
        };
        let fields = [
            self.field(&s.principals, &s.not_principals, |v| {
                Ok(Some(Check::Principal(Pattern::new(v))))
            })?,
            self.field(&s.namespaces, &s.not_namespaces, |v| {
                Ok(Some(Check::Namespace(Glob::new(v))))
            })?,
            self.field(&s.service_accounts, &s.not_service_accounts, sa)?,
            self.field(&s.ip_blocks, &s.not_ip_blocks, |v| {
                self.ip(v, Check::SourceIp)
            })?,
            self.field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |v| {
                self.ip(v, Check::RemoteIp)
            })?,
            self.field(&s.request_principals, &s.not_request_principals, |v| {
                self.request_principal(v)
            })?,
        ];
        Ok(fields.into_iter().flatten().collect())
    }

    fn operation(&self, o: &pb::HttpOperation) -> Result<Entry, String> {
        let fields = [
            self.field(&o.hosts, &o.not_hosts, |v| {
                let c = if v == "*" {
                    Check::HostPresent
                } else {
                    Check::Host(Pattern::lower(v))
                };
                self.http_only("hosts", c)
            })?,
            self.field(&o.ports, &o.not_ports, |v| self.port(v))?,
            self.field(&o.methods, &o.not_methods, |v| {
                self.http_only("methods", Check::Method(Pattern::new(v)))
            })?,
            self.field(&o.paths, &o.not_paths, |v| match PathPattern::new(v) {
                Ok(p) => self.http_only("paths", Check::Path(p)),
                Err(e) => self.skip(e),
            })?,
        ];
        Ok(fields.into_iter().flatten().collect())
    }

    fn condition(&self, c: &pb::Condition) -> Result<Option<Field>, String> {
        let key = c.key.as_str();
        let bracket = |prefix: &str| key.strip_prefix(prefix).and_then(|k| k.strip_suffix(']'));
        let claim = |name: String| {
            move |v: &str| {
                self.http_only(
                    "request.auth.*",
                    Check::Claim {
                        name: name.clone(),
                        value: Pattern::new(v),
                    },
                )
            }
        };
        let (values, not_values) = (&c.values, &c.not_values);
        if let Some(h) = bracket("request.headers[").filter(|h| !h.is_empty()) {
            let name = h.to_ascii_lowercase();
            return self.field(values, not_values, |v| {
                let check = if v == "*" {
                    Check::HeaderPresent(name.clone())
                } else {
                    Check::Header {
                        name: name.clone(),
                        value: Pattern::new(v),
                    }
                };
                self.http_only("request.headers", check)
            });
        }
        if let Some(path) = bracket("request.auth.claims[").filter(|p| !p.is_empty()) {
            // Nested claims are written `[a][b]`; the JWT filter stores `a.b`.
            return self.field(values, not_values, claim(path.replace("][", ".")));
        }
        match key {
            "source.ip" => self.field(values, not_values, |v| self.ip(v, Check::SourceIp)),
            "remote.ip" => self.field(values, not_values, |v| self.ip(v, Check::RemoteIp)),
            "destination.ip" => {
                self.field(values, not_values, |v| self.ip(v, Check::DestinationIp))
            }
            "destination.port" => self.field(values, not_values, |v| self.port(v)),
            "source.namespace" => self.field(values, not_values, |v| {
                Ok(Some(Check::Namespace(Glob::new(v))))
            }),
            "source.principal" => self.field(values, not_values, |v| {
                Ok(Some(Check::Principal(Pattern::new(v))))
            }),
            "connection.sni" => self.field(values, not_values, |v| {
                Ok(Some(Check::Sni(Pattern::new(v))))
            }),
            "request.auth.principal" => {
                self.field(values, not_values, |v| self.request_principal(v))
            }
            "request.auth.audiences" => self.field(values, not_values, claim("aud".into())),
            "request.auth.presenter" => self.field(values, not_values, claim("azp".into())),
            other => {
                // Unknown (or `experimental.envoy.filters.*`, which needs
                // Envoy's metadata): never read as "absent".
                let why = format!("condition key {other:?} is not supported");
                match self.action {
                    PolicyAction::Allow => Err(why),
                    PolicyAction::Deny | PolicyAction::Audit => Ok(None),
                }
            }
        }
    }

    fn rule(&self, r: &pb::HttpRule) -> Result<Rule, String> {
        let mut rule = Rule::default();
        for c in &r.when {
            rule.when.extend(self.condition(c)?);
        }
        for t in &r.to {
            rule.to.push(self.operation(t)?);
        }
        for f in &r.from {
            rule.from.push(self.source(f)?);
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_patterns() {
        assert!(Glob::new("team-*").matches("team-a"));
        assert!(Glob::new("*-prod").matches("shop-prod"));
        assert!(Glob::new("a*c*e").matches("abcde"));
        assert!(!Glob::new("a*c*e").matches("abde"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("shop").matches("shop"));
        assert!(!Glob::new("shop").matches("shops"));
        assert!(!Glob::new("ab*ba").matches("aba"), "parts may not overlap");
        assert!(Pattern::new("*").matches("x"));
        assert!(!Pattern::new("*").matches(""));
    }

    #[test]
    fn path_templates() {
        let one = PathPattern::new("/api/{*}/info").unwrap();
        assert!(one.matches("/api/v1/info"));
        assert!(!one.matches("/api/v1/v2/info"));
        assert!(!one.matches("/api//info"));
        let many = PathPattern::new("/files/{**}").unwrap();
        assert!(many.matches("/files/a/b/c"));
        assert!(!many.matches("/other/a"));
        assert!(PathPattern::new("/x/{id}").is_err());
    }
}
