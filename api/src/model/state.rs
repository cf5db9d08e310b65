//! Indexed proxy state: find a workload by IP, a service by VIP, the endpoints of
//! a service and the policies that apply to a workload.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::authz::{Authorization, PolicyScope};
use super::{HealthStatus, LocalConfig, Service, Workload};

/// A snapshot of everything ztunnel routes and authorizes by. Cheap to share;
/// replaced whole on each update so readers never see a half-applied change.
#[derive(Clone, Debug, Default)]
pub struct ProxyState {
    workloads: HashMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    policies: HashMap<String, Arc<Authorization>>,
}

/// One load-balancing candidate of a service.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The backing workload.
    pub workload: Arc<Workload>,
    /// The address to reach it on (workload IP : target port).
    pub addr: SocketAddr,
}

impl ProxyState {
    /// Builds the indexes from a config.
    pub fn from_config(cfg: &LocalConfig) -> Self {
        let mut s = ProxyState::default();
        for w in &cfg.workloads {
            let w = Arc::new(w.clone());
            for ip in &w.workload_ips {
                s.by_ip.insert(*ip, w.clone());
            }
            s.workloads.insert(w.uid.clone(), w);
        }
        for svc in &cfg.services {
            let svc = Arc::new(svc.clone());
            for vip in svc.vip_addrs() {
                s.by_vip.insert(vip, svc.clone());
            }
            s.services.insert(svc.key(), svc);
        }
        for p in &cfg.policies {
            s.policies.insert(p.key(), Arc::new(p.clone()));
        }
        s
    }

    /// All workloads.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// All policies.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    /// The workload with this IP.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// The service with this VIP.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// The service keyed `namespace/hostname`.
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The waypoint endpoints behind `gw`: each waypoint pod's HBONE address
    /// and workload. A hostname destination is the waypoint's Service, whose
    /// endpoints serve `hbone_mtls_port`; an address is a workload IP.
    pub fn waypoint_endpoints(&self, gw: &super::GatewayRef) -> Vec<Endpoint> {
        if let Some(ip) = gw.ip() {
            return self
                .by_ip
                .get(&ip)
                .map(|w| Endpoint {
                    workload: w.clone(),
                    addr: SocketAddr::new(ip, gw.hbone_mtls_port),
                })
                .into_iter()
                .collect();
        }
        match gw.service_key().and_then(|k| self.services.get(k)) {
            Some(svc) => self.endpoints(svc, gw.hbone_mtls_port),
            None => vec![],
        }
    }

    /// Healthy endpoints of `svc` for service port `port`, sorted by uid.
    pub fn endpoints(&self, svc: &Service, port: u16) -> Vec<Endpoint> {
        let key = svc.key();
        let svc_target = svc.ports.get(&port).copied().unwrap_or(0);
        let mut eps: Vec<Endpoint> = self
            .workloads
            .values()
            .filter(|w| w.status == HealthStatus::Healthy)
            .filter_map(|w| {
                let ports = w.services.get(&key)?;
                let target = match ports.get(&port).copied() {
                    Some(t) if t != 0 => t,
                    _ if svc_target != 0 => svc_target,
                    _ => return None,
                };
                let ip = *w.workload_ips.first()?;
                Some(Endpoint {
                    workload: w.clone(),
                    addr: SocketAddr::new(ip, target),
                })
            })
            .collect();
        eps.sort_by(|a, b| a.workload.uid.cmp(&b.workload.uid));
        eps
    }

    /// Policies that apply to `w`: global ones, its namespace's, and the
    /// workload-selector ones it lists.
    pub fn policies_for<'a>(&'a self, w: &'a Workload) -> Vec<&'a Authorization> {
        let mut out: Vec<&Authorization> = self
            .policies
            .values()
            .filter(|p| match p.scope {
                PolicyScope::Global => true,
                PolicyScope::Namespace => p.namespace == w.namespace,
                PolicyScope::WorkloadSelector => false,
            })
            .map(|p| p.as_ref())
            .collect();
        for key in &w.authorization_policies {
            if let Some(p) = self.policies.get(key) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_skip_unhealthy_and_map_ports() {
        let cfg = LocalConfig::parse(
            r#"
workloads:
- {uid: a, namespace: ns, workloadIps: ["10.0.0.1"], services: {"ns/s.ns.svc.cluster.local": {80: 8080}}}
- {uid: b, namespace: ns, workloadIps: ["10.0.0.2"], services: {"ns/s.ns.svc.cluster.local": {}}}
- {uid: c, namespace: ns, workloadIps: ["10.0.0.3"], status: Unhealthy, services: {"ns/s.ns.svc.cluster.local": {80: 8080}}}
services:
- {name: s, namespace: ns, hostname: s.ns.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 9090}}
"#,
            "t.yaml",
        )
        .unwrap();
        let st = ProxyState::from_config(&cfg);
        let svc = st
            .service_by_vip("10.96.0.1".parse().unwrap())
            .unwrap()
            .clone();
        let eps = st.endpoints(&svc, 80);
        let addrs: Vec<String> = eps.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, vec!["10.0.0.1:8080", "10.0.0.2:9090"]);
        assert!(st.endpoints(&svc, 81).is_empty());
    }
}
