//! Proxy state ⇄ xDS messages. Encoding never fails; decoding names the field
//! that is wrong so a NACK can say it (`"<name>: <reason>"`, docs/wire.md §4.4).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::proto::{security as pb_sec, workload as pb};
use crate::model::authz::{Cidr, ServiceAccountMatch};
use crate::model::{
    Action, Authorization, GatewayRef, HealthStatus, PolicyMatch, PolicyScope, Protocol, Service,
    StringMatch, Workload,
};

/// A resource that cannot be turned into proxy state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DecodeError {
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from_bytes(b: &[u8], field: &str) -> Result<IpAddr, DecodeError> {
    match b.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(b).map_err(|_| bad(field, "bad length"))?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(b).map_err(|_| bad(field, "bad length"))?,
        )),
        n => Err(bad(field, format!("address of {n} bytes (want 4 or 16)"))),
    }
}

fn ports_to_proto(ports: &BTreeMap<u16, u16>) -> Vec<pb::Port> {
    ports
        .iter()
        .map(|(s, t)| pb::Port {
            service_port: u32::from(*s),
            target_port: u32::from(*t),
            app_protocol: 0,
        })
        .collect()
}

fn ports_from_proto(ports: &[pb::Port], field: &str) -> Result<BTreeMap<u16, u16>, DecodeError> {
    ports
        .iter()
        .map(|p| {
            let s = u16::try_from(p.service_port)
                .map_err(|_| bad(field, format!("service port {}", p.service_port)))?;
            let t = u16::try_from(p.target_port)
                .map_err(|_| bad(field, format!("target port {}", p.target_port)))?;
            Ok((s, t))
        })
        .collect()
}

/// A workload as `Address{workload}`.
pub fn workload_to_proto(w: &Workload) -> pb::Address {
    let services = w
        .services
        .iter()
        .map(|(k, ports)| {
            (
                k.clone(),
                pb::PortList {
                    ports: ports_to_proto(ports),
                },
            )
        })
        .collect();
    pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            addresses: w.workload_ips.iter().map(|ip| ip_bytes(*ip)).collect(),
            tunnel_protocol: match w.protocol {
                Protocol::Tcp => pb::TunnelProtocol::None as i32,
                Protocol::Hbone => pb::TunnelProtocol::Hbone as i32,
            },
            trust_domain: w.trust_domain.clone(),
            service_account: w.service_account.clone(),
            node: w.node.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_type: pb::WorkloadType::Pod as i32,
            workload_name: w.workload_name.clone(),
            services,
            authorization_policies: w.authorization_policies.clone(),
            status: match w.status {
                HealthStatus::Healthy => pb::WorkloadStatus::Healthy as i32,
                HealthStatus::Unhealthy => pb::WorkloadStatus::Unhealthy as i32,
            },
            cluster_id: "Kubernetes".into(),
            waypoint: w.waypoint.as_ref().map(gateway_to_proto),
            ..Default::default()
        })),
    }
}

/// A service as `Address{service}`.
pub fn service_to_proto(s: &Service) -> pb::Address {
    let addresses = s
        .vips
        .iter()
        .filter_map(|v| {
            let (network, ip) = v.rsplit_once('/').unwrap_or(("", v));
            let ip: IpAddr = ip.parse().ok()?;
            Some(pb::NetworkAddress {
                network: network.to_string(),
                address: ip_bytes(ip),
                length: None,
            })
        })
        .collect();
    pb::Address {
        r#type: Some(pb::address::Type::Service(pb::Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            addresses,
            ports: ports_to_proto(&s.ports),
            subject_alt_names: s.subject_alt_names.clone(),
            waypoint: s.waypoint.as_ref().map(gateway_to_proto),
            ..Default::default()
        })),
    }
}

/// What an `Address` decodes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressState {
    /// A workload.
    Workload(Workload),
    /// A service.
    Service(Service),
}

/// Decodes an `Address` the way ztunnel validates it (docs/wire.md §4.6).
pub fn address_from_proto(a: &pb::Address) -> Result<AddressState, DecodeError> {
    match &a.r#type {
        None => Err(bad("type", "empty Address (neither workload nor service)")),
        Some(pb::address::Type::Workload(w)) => workload_from_proto(w).map(AddressState::Workload),
        Some(pb::address::Type::Service(s)) => service_from_proto(s).map(AddressState::Service),
    }
}

fn workload_from_proto(w: &pb::Workload) -> Result<Workload, DecodeError> {
    let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pb::TunnelProtocol::None) => Protocol::Tcp,
        Ok(pb::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(pb::TunnelProtocol::LegacyIstioMtls) => {
            return Err(bad("tunnel_protocol", "LEGACY_ISTIO_MTLS is not supported"));
        }
        Err(_) => {
            return Err(bad(
                "tunnel_protocol",
                format!("unknown value {}", w.tunnel_protocol),
            ));
        }
    };
    let status = match pb::WorkloadStatus::try_from(w.status) {
        Ok(pb::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(pb::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => return Err(bad("status", format!("unknown value {}", w.status))),
    };
    let workload_ips = w
        .addresses
        .iter()
        .map(|b| ip_from_bytes(b, "addresses"))
        .collect::<Result<_, _>>()?;
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        if !key.contains('/') {
            return Err(bad(
                format!("services[{key:?}]"),
                "key must be namespace/hostname",
            ));
        }
        services.insert(
            key.clone(),
            ports_from_proto(&list.ports, &format!("services[{key:?}]"))?,
        );
    }
    Ok(Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        workload_ips,
        services,
        protocol,
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        node: w.node.clone(),
        status,
        authorization_policies: w.authorization_policies.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_name: w.workload_name.clone(),
        waypoint: w
            .waypoint
            .as_ref()
            .map(|g| gateway_from_proto(g, "waypoint"))
            .transpose()?,
    })
}

fn service_from_proto(s: &pb::Service) -> Result<Service, DecodeError> {
    let vips = s
        .addresses
        .iter()
        .map(|a| {
            let ip = ip_from_bytes(&a.address, "addresses")?;
            Ok(format!("{}/{ip}", a.network))
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips,
        ports: ports_from_proto(&s.ports, "ports")?,
        subject_alt_names: s.subject_alt_names.clone(),
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway_from_proto(g, "waypoint"))
            .transpose()?,
    })
}

fn gateway_to_proto(g: &GatewayRef) -> pb::GatewayAddress {
    let destination = match (g.ip(), g.destination.rsplit_once('/')) {
        (Some(ip), Some((network, _))) => {
            pb::gateway_address::Destination::Address(pb::NetworkAddress {
                network: network.to_string(),
                address: ip_bytes(ip),
                length: None,
            })
        }
        (_, split) => {
            let (namespace, hostname) = split.unwrap_or(("", g.destination.as_str()));
            pb::gateway_address::Destination::Hostname(pb::NamespacedHostname {
                namespace: namespace.to_string(),
                hostname: hostname.to_string(),
            })
        }
    };
    pb::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(g.hbone_mtls_port),
    }
}

fn gateway_from_proto(g: &pb::GatewayAddress, field: &str) -> Result<GatewayRef, DecodeError> {
    let destination = match &g.destination {
        None => return Err(bad(field, "GatewayAddress has no destination")),
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            format!("{}/{}", h.namespace, h.hostname)
        }
        Some(pb::gateway_address::Destination::Address(a)) => {
            let ip = ip_from_bytes(&a.address, &format!("{field}.address"))?;
            format!("{}/{ip}", a.network)
        }
    };
    let hbone_mtls_port = u16::try_from(g.hbone_mtls_port)
        .map_err(|_| bad(format!("{field}.hbone_mtls_port"), "not a port"))?;
    Ok(GatewayRef {
        destination,
        hbone_mtls_port,
    })
}

fn string_match_to_proto(m: &StringMatch) -> pb_sec::StringMatch {
    use pb_sec::string_match::MatchType;
    pb_sec::StringMatch {
        match_type: Some(match m {
            StringMatch::Exact(s) => MatchType::Exact(s.clone()),
            StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
            StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
            StringMatch::Presence => MatchType::Presence(()),
        }),
    }
}

fn string_match_from_proto(m: &pb_sec::StringMatch) -> Option<StringMatch> {
    use pb_sec::string_match::MatchType;
    Some(match m.match_type.as_ref()? {
        MatchType::Exact(s) => StringMatch::Exact(s.clone()),
        MatchType::Prefix(s) => StringMatch::Prefix(s.clone()),
        MatchType::Suffix(s) => StringMatch::Suffix(s.clone()),
        MatchType::Presence(()) => StringMatch::Presence,
    })
}

fn cidr_to_proto(c: &Cidr) -> pb_sec::Address {
    pb_sec::Address {
        address: ip_bytes(c.addr()),
        length: u32::from(c.prefix()),
    }
}

/// Istio drops addresses that do not parse, silently (docs/wire.md §4.7).
fn cidr_from_proto(a: &pb_sec::Address) -> Option<Cidr> {
    let ip = ip_from_bytes(&a.address, "address").ok()?;
    Cidr::new(ip, u8::try_from(a.length).ok()?)
}

fn sa_to_proto(m: &ServiceAccountMatch) -> pb_sec::ServiceAccountMatch {
    pb_sec::ServiceAccountMatch {
        namespace: m.namespace.clone(),
        service_account: m.service_account.clone(),
    }
}

fn sa_from_proto(m: &pb_sec::ServiceAccountMatch) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: m.namespace.clone(),
        service_account: m.service_account.clone(),
    }
}

fn ports_u32(p: &[u16]) -> Vec<u32> {
    p.iter().map(|p| u32::from(*p)).collect()
}

fn ports_u16(p: &[u32]) -> Vec<u16> {
    p.iter().filter_map(|p| u16::try_from(*p).ok()).collect()
}

fn match_to_proto(m: &PolicyMatch) -> pb_sec::Match {
    let sm = |l: &[StringMatch]| l.iter().map(string_match_to_proto).collect();
    let ad = |l: &[Cidr]| l.iter().map(cidr_to_proto).collect();
    pb_sec::Match {
        namespaces: sm(&m.namespaces),
        not_namespaces: sm(&m.not_namespaces),
        principals: sm(&m.principals),
        not_principals: sm(&m.not_principals),
        source_ips: ad(&m.source_ips),
        not_source_ips: ad(&m.not_source_ips),
        destination_ips: ad(&m.destination_ips),
        not_destination_ips: ad(&m.not_destination_ips),
        destination_ports: ports_u32(&m.destination_ports),
        not_destination_ports: ports_u32(&m.not_destination_ports),
        service_accounts: m.service_accounts.iter().map(sa_to_proto).collect(),
        not_service_accounts: m.not_service_accounts.iter().map(sa_to_proto).collect(),
    }
}

fn match_from_proto(m: &pb_sec::Match) -> PolicyMatch {
    let sm = |l: &[pb_sec::StringMatch]| l.iter().filter_map(string_match_from_proto).collect();
    let ad = |l: &[pb_sec::Address]| l.iter().filter_map(cidr_from_proto).collect();
    PolicyMatch {
        namespaces: sm(&m.namespaces),
        not_namespaces: sm(&m.not_namespaces),
        principals: sm(&m.principals),
        not_principals: sm(&m.not_principals),
        source_ips: ad(&m.source_ips),
        not_source_ips: ad(&m.not_source_ips),
        destination_ips: ad(&m.destination_ips),
        not_destination_ips: ad(&m.not_destination_ips),
        destination_ports: ports_u16(&m.destination_ports),
        not_destination_ports: ports_u16(&m.not_destination_ports),
        service_accounts: m.service_accounts.iter().map(sa_from_proto).collect(),
        not_service_accounts: m.not_service_accounts.iter().map(sa_from_proto).collect(),
    }
}

/// A policy as `istio.security.Authorization`. The wire has no AUDIT action:
/// an AUDIT policy travels as a dry-run ALLOW, which is only logged, exactly
/// what AUDIT means at L4.
pub fn authorization_to_proto(p: &Authorization) -> pb_sec::Authorization {
    let (action, dry_run) = match p.action {
        Action::Allow => (pb_sec::Action::Allow, p.dry_run),
        Action::Deny => (pb_sec::Action::Deny, p.dry_run),
        Action::Audit => (pb_sec::Action::Allow, true),
    };
    pb_sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            PolicyScope::Global => pb_sec::Scope::Global,
            PolicyScope::Namespace => pb_sec::Scope::Namespace,
            PolicyScope::WorkloadSelector => pb_sec::Scope::WorkloadSelector,
        } as i32,
        action: action as i32,
        rules: p
            .rules
            .iter()
            .map(|rule| pb_sec::Rule {
                clauses: rule
                    .iter()
                    .map(|clause| pb_sec::Clause {
                        matches: clause.iter().map(match_to_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run,
        extensions: vec![],
    }
}

/// Decodes a policy; unknown enum values reject it (docs/wire.md §4.6).
pub fn authorization_from_proto(p: &pb_sec::Authorization) -> Result<Authorization, DecodeError> {
    let scope = match pb_sec::Scope::try_from(p.scope) {
        Ok(pb_sec::Scope::Global) => PolicyScope::Global,
        Ok(pb_sec::Scope::Namespace) => PolicyScope::Namespace,
        Ok(pb_sec::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
        Err(_) => return Err(bad("scope", format!("unknown value {}", p.scope))),
    };
    let action = match pb_sec::Action::try_from(p.action) {
        Ok(pb_sec::Action::Allow) => Action::Allow,
        Ok(pb_sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(bad("action", format!("unknown value {}", p.action))),
    };
    Ok(Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope,
        action,
        dry_run: p.dry_run,
        rules: p
            .rules
            .iter()
            .map(|r| {
                r.clauses
                    .iter()
                    .map(|c| c.matches.iter().map(match_from_proto).collect())
                    .collect()
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LocalConfig;
    use prost::Message;

    const CFG: &str = r#"
workloads:
- uid: Kubernetes//Pod/demo/a
  name: a
  namespace: demo
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["10.1.0.2"]
  protocol: HBONE
  node: node1
  status: Unhealthy
  authorizationPolicies: [demo/sel]
  services: {"demo/echo.demo.svc.cluster.local": {80: 8080}}
services:
- {name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, vips: ["/10.96.0.10"], ports: {80: 8080, 81: 0}}
policies:
- {name: p, namespace: demo, scope: WorkloadSelector, action: Deny, dryRun: false,
   rules: [[[{principals: [!Prefix cluster.local/ns/x], notNamespaces: [!Presence null],
              sourceIps: ["10.0.0.0/8"], destinationPorts: [80],
              serviceAccounts: [{namespace: a, serviceAccount: b}]}]]]}
"#;

    #[test]
    fn round_trips_through_the_wire() {
        let cfg = LocalConfig::parse(CFG, "t.yaml").unwrap();
        let w = &cfg.workloads[0];
        let bytes = workload_to_proto(w).encode_to_vec();
        let back = address_from_proto(&pb::Address::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, AddressState::Workload(w.clone()));

        let s = &cfg.services[0];
        let back = address_from_proto(&service_to_proto(s)).unwrap();
        assert_eq!(back, AddressState::Service(s.clone()));

        let p = &cfg.policies[0];
        let bytes = authorization_to_proto(p).encode_to_vec();
        let back =
            authorization_from_proto(&pb_sec::Authorization::decode(bytes.as_slice()).unwrap())
                .unwrap();
        assert_eq!(&back, p);
    }

    #[test]
    fn upstream_field_numbers() {
        // Workload.uid is field 20 (tag (20<<3)|2 = 0xa2 0x01), name is 1 (0x0a).
        let w = pb::Workload {
            uid: "u".into(),
            name: "n".into(),
            ..Default::default()
        };
        let b = w.encode_to_vec();
        assert_eq!(&b[..3], &[0x0a, 0x01, b'n']);
        assert_eq!(&b[3..5], &[0xa2, 0x01]);
        // Clause.matches is field 2 (0x12), not 1.
        let c = pb_sec::Clause {
            matches: vec![pb_sec::Match::default()],
        };
        assert_eq!(c.encode_to_vec()[0], 0x12);
    }

    #[test]
    fn rejects_what_ztunnel_rejects() {
        let empty = pb::Address { r#type: None };
        assert_eq!(address_from_proto(&empty).unwrap_err().field, "type");
        let legacy = pb::Address {
            r#type: Some(pb::address::Type::Workload(pb::Workload {
                tunnel_protocol: 2,
                ..Default::default()
            })),
        };
        assert_eq!(
            address_from_proto(&legacy).unwrap_err().field,
            "tunnel_protocol"
        );
        let short_ip = pb::Address {
            r#type: Some(pb::address::Type::Workload(pb::Workload {
                addresses: vec![vec![1, 2, 3]],
                ..Default::default()
            })),
        };
        assert!(address_from_proto(&short_ip).is_err());
        let bad_key = pb::Address {
            r#type: Some(pb::address::Type::Workload(pb::Workload {
                services: [("nokey".to_string(), pb::PortList::default())].into(),
                ..Default::default()
            })),
        };
        assert!(
            address_from_proto(&bad_key)
                .unwrap_err()
                .field
                .contains("nokey")
        );
        let bad_action = pb_sec::Authorization {
            action: 7,
            ..Default::default()
        };
        assert_eq!(
            authorization_from_proto(&bad_action).unwrap_err().field,
            "action"
        );
    }

    #[test]
    fn audit_travels_as_dry_run_allow() {
        let p = Authorization {
            name: "a".into(),
            namespace: "n".into(),
            scope: PolicyScope::Namespace,
            action: Action::Audit,
            dry_run: false,
            rules: vec![],
        };
        let w = authorization_to_proto(&p);
        assert!(w.dry_run);
        assert_eq!(w.action, pb_sec::Action::Allow as i32);
    }
}
