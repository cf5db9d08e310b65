//! L7 AuthorizationPolicy, compiled once per config and evaluated per HTTP
//! request or per TCP connection, with the semantics of the Envoy RBAC filter
//! that Istio's pilot builds for a waypoint (`pilot/pkg/security/authz`):
//!
//! * a matching DENY denies; with no enforced ALLOW policy the request is
//!   allowed; with ALLOW policies present one must match. AUDIT and
//!   `istio.io/dry-run` policies are logged, never enforced. A policy with no
//!   rules matches nothing.
//! * A rule matches when its `when` conditions all hold, one `to` entry
//!   holds (or there are none) and one `from` entry holds (or there are none).
//!   Inside an entry every field given must hold: one of its values matches
//!   and none of its `not` values does.
//! * A value that cannot be checked — an HTTP-only field on a TCP
//!   connection, a CIDR or port that does not parse, an attribute this proxy
//!   does not know — makes an ALLOW rule match nothing (the rule is dropped)
//!   and is left out of a DENY or AUDIT rule, which therefore matches more.
//!   Either way the mistake can only deny more, never allow more.
//!
//! See [`compile`] for how each field is matched.

mod compile;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_api::xds::proto::l7 as pb;
use ambit_identity::SpiffeId;

use compile::{Policy, PolicyAction};

/// Which filter chain a decision is for: a policy's HTTP-only fields cannot be
/// checked on a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An HTTP request: every field applies.
    Http,
    /// A connection relayed as bytes: only L4 fields apply.
    Tcp,
}

/// What a policy can see of a request (or, in [`Mode::Tcp`], a connection).
#[derive(Clone, Debug, Default)]
pub struct RequestAttributes {
    /// The peer's verified identity from mTLS.
    pub peer: Option<SpiffeId>,
    /// Issuer and subject of a validated JWT.
    pub request_auth: Option<(String, String)>,
    /// Validated JWT claims (arrays as several values; nested as `a.b`).
    pub claims: BTreeMap<String, Vec<String>>,
    /// The downstream peer's IP (`source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The original client IP (`remote.ip`, `remoteIpBlocks`): the peer
    /// unless trusted proxies put it in `X-Forwarded-For`.
    pub remote_ip: Option<IpAddr>,
    /// The destination address the client asked for.
    pub destination_ip: Option<IpAddr>,
    /// The destination port.
    pub port: u16,
    /// The TLS server name of the client's connection, when the proxy saw
    /// one (the waypoint does not terminate the app's TLS: `None`).
    pub sni: Option<String>,
    /// `Host` / `:authority` as sent, port included (`None` on TCP).
    pub authority: Option<String>,
    /// Method.
    pub method: String,
    /// The normalized path without the query.
    pub path: String,
    /// Headers, names lower-case, each line's value on its own (a header
    /// sent twice has two; one line `a,b` is one value, as Envoy sees it).
    pub headers: BTreeMap<String, Vec<String>>,
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
    /// 403 (or a closed connection) unless allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Allow(Some(p)) => write!(f, "allowed by {p}"),
            Decision::Allow(None) => write!(f, "allowed (no ALLOW policy applies)"),
            Decision::DeniedBy(p) => write!(f, "denied by DENY policy {p}"),
            Decision::NoAllowMatched => write!(f, "denied: no ALLOW policy matched"),
        }
    }
}

/// The AuthorizationPolicies bound to one Service, compiled for both modes.
#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Vec<Policy>,
}

impl Authorizer {
    /// Compiles `policies` (values that do not parse are handled as the
    /// module documentation says, never ignored).
    pub fn new(policies: &[pb::HttpPolicy]) -> Self {
        Authorizer {
            policies: policies.iter().map(Policy::new).collect(),
        }
    }

    /// Are there any policies at all? (Skips building attributes when not.)
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Decides `r` in `mode`.
    pub fn authorize(&self, mode: Mode, r: &RequestAttributes) -> Decision {
        for p in self.policies.iter().filter(|p| !p.enforced()) {
            if p.matches(mode, r) {
                tracing::info!(policy = %p.key, action = ?p.action, dry_run = p.dry_run, ?mode,
                    "audit/dry-run policy matched");
            }
        }
        let enforced = || self.policies.iter().filter(|p| p.enforced());
        if let Some(p) = enforced().find(|p| p.action == PolicyAction::Deny && p.matches(mode, r)) {
            return Decision::DeniedBy(p.key.clone());
        }
        let mut allows = enforced()
            .filter(|p| p.action == PolicyAction::Allow)
            .peekable();
        if allows.peek().is_none() {
            return Decision::Allow(None);
        }
        match allows.find(|p| p.matches(mode, r)) {
            Some(p) => Decision::Allow(Some(p.key.clone())),
            None => Decision::NoAllowMatched,
        }
    }
}

impl Authorizer {
    /// Envoy's response code details for a refusal, naming the policy and
    /// rule as Istio names them in the RBAC filter it builds
    /// (`rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]`,
    /// or `[none]` when ALLOW policies exist and none matched). Computed on
    /// the refusal path only: the allow path never builds it.
    pub fn refusal_details(
        &self,
        mode: Mode,
        r: &RequestAttributes,
        decision: &Decision,
    ) -> String {
        let matched = match decision {
            Decision::DeniedBy(key) => self
                .policies
                .iter()
                .filter(|p| p.enforced() && &p.key == key)
                .find_map(|p| p.matching_rule(mode, r))
                .map(|rule| rule_name(key, rule)),
            Decision::Allow(_) | Decision::NoAllowMatched => None,
        };
        format!(
            "rbac_access_denied_matched_policy[{}]",
            matched.as_deref().unwrap_or("none")
        )
    }
}

/// A policy rule's name in Istio's RBAC config: `ns[NS]-policy[NAME]-rule[N]`
/// for policy `NS/NAME`, rule `N` of `spec.rules`.
pub fn rule_name(key: &str, rule: usize) -> String {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    format!("ns[{ns}]-policy[{name}]-rule[{rule}]")
}

/// Decides `r` against `policies` in one go (tests and one-off checks; the
/// proxy keeps an [`Authorizer`] per Service).
pub fn authorize(policies: &[pb::HttpPolicy], mode: Mode, r: &RequestAttributes) -> Decision {
    Authorizer::new(policies).authorize(mode, r)
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
