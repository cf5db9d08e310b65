//! L4 authorization as a pure function: (policies, connection) → decision.
//!
//! Semantics follow Istio's ztunnel (docs/wire.md §4.7): DENY before ALLOW; no
//! ALLOW policy means allow; ALLOW policies present and none matching means deny;
//! dry-run (and AUDIT) policies are only logged. Inside a policy rules are ORed,
//! a rule's clauses ANDed, a clause's matches ORed; inside a match every field
//! that is set must hold, values within a field are ORed, and for `not*` fields
//! none may match. An all-empty match never matches; a policy without rules
//! never matches.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ambit_identity::SpiffeId;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a policy does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Admit matching connections (and, once any ALLOW exists, only those).
    Allow,
    /// Refuse matching connections.
    Deny,
    /// Log matching connections; never changes the decision.
    Audit,
}

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyScope {
    /// Every workload in the mesh (root-namespace policy).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Workloads that list the policy in `authorizationPolicies`.
    WorkloadSelector,
}

/// A string comparison.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Any value at all, as long as there is one.
    Presence,
}

impl StringMatch {
    /// Does `value` (None: absent) match?
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (StringMatch::Exact(s), Some(v)) => v == s,
            (StringMatch::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (StringMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (StringMatch::Presence, Some(v)) => !v.is_empty(),
        }
    }
}

/// An IP network, written `10.0.0.0/8` (a bare address means one host).
/// Host bits may be set (`10.1.2.3/8`), as Istio and Envoy accept them:
/// membership uses the network part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            s.parse().map(Cidr).map_err(|_| CidrError(s.to_string()))
        } else {
            s.parse::<IpAddr>()
                .map(|ip| Cidr(IpNet::from(ip)))
                .map_err(|_| CidrError(s.to_string()))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Cidr {
    /// `addr/prefix`; `None` when the prefix is longer than the family allows.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        IpNet::new(addr, prefix).ok().map(Cidr)
    }

    /// The network address as written.
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Is `ip` inside this network? (Families never mix.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A service account reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

/// One match: every field that is set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyMatch {
    /// Peer namespaces.
    pub namespaces: Vec<StringMatch>,
    /// Peer namespaces that must not match.
    pub not_namespaces: Vec<StringMatch>,
    /// Peer principals (`td/ns/X/sa/Y`, no `spiffe://`).
    pub principals: Vec<StringMatch>,
    /// Principals that must not match.
    pub not_principals: Vec<StringMatch>,
    /// Peer IPs.
    pub source_ips: Vec<Cidr>,
    /// Peer IPs that must not match.
    pub not_source_ips: Vec<Cidr>,
    /// Destination IPs (after service → endpoint).
    pub destination_ips: Vec<Cidr>,
    /// Destination IPs that must not match.
    pub not_destination_ips: Vec<Cidr>,
    /// Destination ports (target ports).
    pub destination_ports: Vec<u16>,
    /// Destination ports that must not match.
    pub not_destination_ports: Vec<u16>,
    /// Peer service accounts.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Peer service accounts that must not match.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// An L4 authorization policy in ztunnel's form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Where it applies.
    pub scope: PolicyScope,
    /// What it does.
    pub action: Action,
    /// Log only.
    #[serde(default)]
    pub dry_run: bool,
    /// rules (ORed) → clauses (ANDed) → matches (ORed).
    #[serde(default)]
    pub rules: Vec<Vec<Vec<PolicyMatch>>>,
}

impl Authorization {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What policy sees of a connection.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The peer's verified identity (None for plaintext).
    pub src_identity: Option<SpiffeId>,
    /// The peer's IP.
    pub src_ip: IpAddr,
    /// The destination workload IP.
    pub dst_ip: IpAddr,
    /// The destination (target) port.
    pub dst_port: u16,
}

/// The outcome, with the reason for logs, access logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `by` names the ALLOW policy that matched, if any.
    Allow {
        /// The matching ALLOW policy, if any.
        by: Option<String>,
    },
    /// Refused by a matching DENY policy.
    DeniedBy(String),
    /// Refused because ALLOW policies exist and none matched.
    NoAllowMatched,
    /// Refused because the destination is no workload the proxy knows, so
    /// no policy (STRICT mTLS included) could be looked up for it (Istio's
    /// ztunnel refuses these too).
    UnknownDestination,
}

impl Decision {
    /// Is the connection admitted?
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { by: Some(p) } => write!(f, "allowed by {p}"),
            Decision::Allow { by: None } => write!(f, "allowed (no ALLOW policy applies)"),
            // The refusals in Istio ztunnel's words, so logs read the same.
            Decision::DeniedBy(p) => write!(f, "explicitly denied by: {p}"),
            Decision::NoAllowMatched => write!(f, "allow policies exist, but none allowed"),
            Decision::UnknownDestination => {
                write!(f, "the destination is not a known workload")
            }
        }
    }
}

fn any_string(list: &[StringMatch], value: Option<&str>) -> bool {
    list.iter().any(|m| m.matches(value))
}

impl PolicyMatch {
    fn is_empty(&self) -> bool {
        *self == PolicyMatch::default()
    }

    /// Does `conn` satisfy this match?
    pub fn matches(&self, conn: &Connection) -> bool {
        if self.is_empty() {
            return false;
        }
        let principal = conn.src_identity.as_ref().map(|id| id.principal());
        let principal = principal.as_deref();
        // Without an identity the namespace is "", so only `not` forms can pass.
        let namespace = Some(conn.src_identity.as_ref().map_or("", |id| id.namespace()));
        let sa_matches = |m: &ServiceAccountMatch| {
            conn.src_identity.as_ref().is_some_and(|id| {
                id.namespace() == m.namespace && id.service_account() == m.service_account
            })
        };
        let checks = [
            self.namespaces.is_empty() || any_string(&self.namespaces, namespace),
            !any_string(&self.not_namespaces, namespace),
            self.principals.is_empty() || any_string(&self.principals, principal),
            !any_string(&self.not_principals, principal),
            self.source_ips.is_empty() || self.source_ips.iter().any(|c| c.contains(conn.src_ip)),
            !self.not_source_ips.iter().any(|c| c.contains(conn.src_ip)),
            self.destination_ips.is_empty()
                || self.destination_ips.iter().any(|c| c.contains(conn.dst_ip)),
            !self
                .not_destination_ips
                .iter()
                .any(|c| c.contains(conn.dst_ip)),
            self.destination_ports.is_empty() || self.destination_ports.contains(&conn.dst_port),
            !self.not_destination_ports.contains(&conn.dst_port),
            self.service_accounts.is_empty() || self.service_accounts.iter().any(sa_matches),
            !self.not_service_accounts.iter().any(sa_matches),
        ];
        checks.iter().all(|c| *c)
    }
}

impl Authorization {
    /// Does any rule match `conn`?
    pub fn matches(&self, conn: &Connection) -> bool {
        self.rules.iter().any(|rule| {
            rule.iter()
                .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(conn)))
        })
    }

    fn enforced(&self) -> bool {
        !self.dry_run && self.action != Action::Audit
    }
}

/// Decides `conn` against the policies that apply to its destination.
pub fn authorize<'a>(
    policies: impl IntoIterator<Item = &'a Authorization> + Clone,
    conn: &Connection,
) -> Decision {
    for p in policies.clone() {
        if !p.enforced() && p.matches(conn) {
            tracing::info!(policy = %p.key(), action = ?p.action, "audit/dry-run policy matched");
        }
    }
    if let Some(deny) = policies
        .clone()
        .into_iter()
        .find(|p| p.enforced() && p.action == Action::Deny && p.matches(conn))
    {
        return Decision::DeniedBy(deny.key());
    }
    let mut allows = policies
        .into_iter()
        .filter(|p| p.enforced() && p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow { by: None };
    }
    match allows.find(|p| p.matches(conn)) {
        Some(p) => Decision::Allow { by: Some(p.key()) },
        None => Decision::NoAllowMatched,
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
