//! SPIFFE identities as Istio ambient uses them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The URI scheme prefix every SPIFFE id starts with.
pub const SPIFFE_PREFIX: &str = "spiffe://";

/// The trust domain used when a workload does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A trust domain as the SPIFFE spec writes one: lowercase letters, digits,
/// `.`, `-`, `_` (what a mesh config may name; ids read from certificates
/// are parsed more leniently by [`SpiffeId`]).
pub fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// A workload identity. Equality is exact, the way the HBONE client compares
/// the server's SAN against the ids it expects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a SPIFFE id in the Istio form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    /// The string does not start with `spiffe://`.
    #[error("SPIFFE id {0:?} does not start with \"spiffe://\"")]
    MissingScheme(String),
    /// Not exactly `<td>/ns/<ns>/sa/<sa>` after the scheme.
    #[error(
        "SPIFFE id {0:?} must have the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    WrongShape(String),
    /// One of the trust domain, namespace or service account is empty.
    #[error("SPIFFE id {id:?} has an empty {part}")]
    EmptyPart {
        /// The whole input.
        id: String,
        /// Which part was empty.
        part: &'static str,
    },
    /// A part holds a character that cannot appear in a SPIFFE path segment or trust domain.
    #[error("SPIFFE id {id:?}: {part} {value:?} holds a character outside [A-Za-z0-9._-]")]
    BadCharacter {
        /// The whole input.
        id: String,
        /// Which part was bad.
        part: &'static str,
        /// The offending value.
        value: String,
    },
}

impl SpiffeId {
    /// Builds an id from its parts, checking each one.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        id.check()?;
        Ok(id)
    }

    fn check(&self) -> Result<(), SpiffeIdError> {
        for (part, value) in [
            ("trust domain", &self.trust_domain),
            ("namespace", &self.namespace),
            ("service account", &self.service_account),
        ] {
            if value.is_empty() {
                return Err(SpiffeIdError::EmptyPart {
                    id: self.to_string(),
                    part,
                });
            }
            let ok = value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return Err(SpiffeIdError::BadCharacter {
                    id: self.to_string(),
                    part,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The id without `spiffe://`, the form Istio authorization principals use.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_PREFIX}{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| SpiffeIdError::MissingScheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                let id = SpiffeId {
                    trust_domain: (*td).to_string(),
                    namespace: (*ns).to_string(),
                    service_account: (*sa).to_string(),
                };
                id.check().map_err(|e| match e {
                    SpiffeIdError::EmptyPart { part, .. } => SpiffeIdError::EmptyPart {
                        id: s.to_string(),
                        part,
                    },
                    SpiffeIdError::BadCharacter { part, value, .. } => {
                        SpiffeIdError::BadCharacter {
                            id: s.to_string(),
                            part,
                            value,
                        }
                    }
                    other => other,
                })?;
                Ok(id)
            }
            _ => Err(SpiffeIdError::WrongShape(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.service_account(), "client");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/client");
        assert_eq!(id.principal(), "cluster.local/ns/demo/sa/client");
    }

    #[test]
    fn parse_errors_are_named() {
        type Check = fn(&SpiffeIdError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("cluster.local/ns/a/sa/b", |e| {
                matches!(e, SpiffeIdError::MissingScheme(_))
            }),
            ("http://cluster.local/ns/a/sa/b", |e| {
                matches!(e, SpiffeIdError::MissingScheme(_))
            }),
            ("spiffe://cluster.local/ns/a", |e| {
                matches!(e, SpiffeIdError::WrongShape(_))
            }),
            ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
                matches!(e, SpiffeIdError::WrongShape(_))
            }),
            ("spiffe://cluster.local/namespace/a/sa/b", |e| {
                matches!(e, SpiffeIdError::WrongShape(_))
            }),
            ("spiffe://cluster.local/ns/a/serviceaccount/b", |e| {
                matches!(e, SpiffeIdError::WrongShape(_))
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(
                    e,
                    SpiffeIdError::EmptyPart {
                        part: "trust domain",
                        ..
                    }
                )
            }),
            ("spiffe://td/ns//sa/b", |e| {
                matches!(
                    e,
                    SpiffeIdError::EmptyPart {
                        part: "namespace",
                        ..
                    }
                )
            }),
            ("spiffe://td/ns/a/sa/", |e| {
                matches!(
                    e,
                    SpiffeIdError::EmptyPart {
                        part: "service account",
                        ..
                    }
                )
            }),
            ("spiffe://td/ns/a b/sa/c", |e| {
                matches!(
                    e,
                    SpiffeIdError::BadCharacter {
                        part: "namespace",
                        ..
                    }
                )
            }),
        ];
        for (input, is_expected) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err();
            assert!(is_expected(&err), "{input}: unexpected error {err:?}");
            assert!(err.to_string().contains(input), "{err} should name {input}");
        }
    }

    #[test]
    fn new_checks_parts() {
        assert!(SpiffeId::new("cluster.local", "a", "b").is_ok());
        assert!(matches!(
            SpiffeId::new("cluster.local", "", "b"),
            Err(SpiffeIdError::EmptyPart {
                part: "namespace",
                ..
            })
        ));
    }
}
