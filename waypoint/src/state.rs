//! The waypoint's compiled configuration: one [`ServiceState`] per `L7Service`
//! bound to this waypoint, indexed by VIP and hostname, with the per-subset
//! runtime state (balancer, outlier detector, connection-pool counters) that
//! must survive unrelated config changes. A changed resource rebuilds only
//! its own entry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ambit_api::xds::proto::l7 as pb;
use tokio::sync::Semaphore;

use crate::authz::Authorizer;
use crate::balance::Balancer;
use crate::jwt::JwtRules;
use crate::matcher::MatcherError;
use crate::normalize::UnknownNormalization;
use crate::outlier::OutlierDetector;
use crate::ratelimit::TokenBucket;
use crate::route::Router;
use crate::sync::lock;
use crate::waypoint::HttpOptions;

/// A connection-pool limit of 0 means "unlimited" (Envoy's default is 2^32-1).
fn limit(v: u32) -> usize {
    if v == 0 {
        Semaphore::MAX_PERMITS
    } else {
        v as usize
    }
}

/// Endpoints of one (backend, subset) and what balancing them needs.
pub struct Subset {
    /// The subset's endpoints (all of the backend's for the default subset).
    pub endpoints: Vec<pb::Endpoint>,
    /// DestinationRule `loadBalancer`.
    pub balancer: Balancer,
    /// DestinationRule `outlierDetection`.
    pub outlier: Mutex<OutlierDetector>,
    /// Requests in flight per endpoint (LEAST_REQUEST).
    pub in_flight: Vec<AtomicUsize>,
    /// `tcp.maxConnections`: one permit per open upstream connection.
    pub connections: Arc<Semaphore>,
    /// HTTP/1 requests waiting for a connection (`http1MaxPendingRequests`).
    pub pending: AtomicUsize,
    /// Concurrent requests (`http2MaxRequests`).
    pub requests: Arc<Semaphore>,
    /// `http1MaxPendingRequests` (unlimited when 0).
    pub max_pending: usize,
    /// `maxRequestsPerConnection` (0: unlimited).
    pub max_requests_per_connection: u32,
    /// Requests refused by the connection pool (Envoy's `upstream_rq_pending_overflow`).
    pub overflow: AtomicU64,
    /// The policy these were built from, to keep state across equal configs.
    policy: pb::TrafficPolicy,
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("endpoints", &self.endpoints.len())
            .field("overflow", &self.overflow.load(Ordering::Relaxed))
            .finish()
    }
}

impl Subset {
    fn new(endpoints: Vec<pb::Endpoint>, policy: pb::TrafficPolicy) -> Self {
        let pool = policy.connection_pool.unwrap_or_default();
        let n = endpoints.len();
        Subset {
            balancer: Balancer::new(policy.load_balancer.as_ref()),
            outlier: Mutex::new(OutlierDetector::new(
                &policy.outlier_detection.unwrap_or_default(),
                n,
            )),
            in_flight: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            connections: Arc::new(Semaphore::new(limit(pool.max_connections))),
            pending: AtomicUsize::new(0),
            requests: Arc::new(Semaphore::new(limit(pool.http2_max_requests))),
            max_pending: limit(pool.http1_max_pending_requests),
            max_requests_per_connection: pool.max_requests_per_connection,
            overflow: AtomicU64::new(0),
            endpoints,
            policy,
        }
    }

    /// Picks an endpoint: healthy ones (outlier detection), then the
    /// balancer. `None` when the subset has no endpoint.
    pub fn pick(&self, hash_value: Option<&str>, random: u64) -> Option<usize> {
        let available = lock(&self.outlier).available(Instant::now());
        let candidates: Vec<usize> = available
            .into_iter()
            .filter(|i| self.endpoints[*i].healthy)
            .collect();
        let loads: Vec<usize> = candidates
            .iter()
            .map(|i| self.in_flight[*i].load(Ordering::Relaxed))
            .collect();
        let k = self.balancer.pick(&loads, hash_value, random)?;
        candidates.get(k).copied()
    }

    /// Records a request's outcome for outlier detection.
    pub fn record(&self, endpoint: usize, status: Option<u16>) {
        lock(&self.outlier).record(endpoint, status, Instant::now());
    }
}

/// A Service the waypoint can send to, with its subsets.
#[derive(Debug)]
pub struct Backend {
    /// FQDN.
    pub hostname: String,
    /// Service port → target port (0: per endpoint).
    pub ports: HashMap<u16, u16>,
    /// By subset name; `""` is every endpoint.
    pub subsets: HashMap<String, Arc<Subset>>,
}

impl Backend {
    /// The target port on `ep` for service port `port`.
    pub fn target_port(&self, ep: &pb::Endpoint, port: u16) -> Option<u16> {
        let own = ep.ports.get(&u32::from(port)).copied().unwrap_or(0);
        let svc = self.ports.get(&port).copied().unwrap_or(0);
        match (own, svc) {
            (0, 0) => None,
            (0, s) => Some(s),
            (o, _) => u16::try_from(o).ok(),
        }
    }
}

/// A local rate limit and its bucket.
#[derive(Debug)]
pub struct Limit {
    /// The policy.
    pub config: pb::RateLimit,
    /// Its bucket.
    pub bucket: Mutex<TokenBucket>,
}

/// Everything the waypoint applies to one Service's traffic.
pub struct ServiceState {
    /// Routes (and the `L7Service` itself).
    pub router: Router,
    /// RequestAuthentication; JWKS from `jwksUri` are filled in later.
    pub jwt: RwLock<JwtRules>,
    /// AuthorizationPolicies bound to the Service, compiled.
    pub authz: Authorizer,
    /// Local rate limits.
    pub limits: Vec<Limit>,
    /// By hostname.
    pub backends: HashMap<String, Backend>,
    /// The mesh config's HTTP options for this Service; `None` when the
    /// control plane sent none (Istio's defaults apply: BASE, 0).
    pub http_options: Option<HttpOptions>,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("service", &self.router.service().hostname)
            .field("backends", &self.backends.len())
            .finish()
    }
}

/// The effective policy of a subset: its own fields override the Service's.
fn merged(base: &pb::TrafficPolicy, own: Option<&pb::TrafficPolicy>) -> pb::TrafficPolicy {
    let Some(own) = own else {
        return base.clone();
    };
    pb::TrafficPolicy {
        load_balancer: own
            .load_balancer
            .clone()
            .or_else(|| base.load_balancer.clone()),
        connection_pool: own.connection_pool.or(base.connection_pool),
        outlier_detection: own.outlier_detection.or(base.outlier_detection),
    }
}

impl ServiceState {
    /// Compiles `svc`, keeping runtime state of subsets whose endpoints and
    /// policy did not change in `previous`.
    pub fn new(svc: pb::L7Service, previous: Option<&ServiceState>) -> Result<Self, MatcherError> {
        let now = Instant::now();
        let limits = svc
            .rate_limits
            .iter()
            .filter_map(|r| {
                Some(Limit {
                    config: r.clone(),
                    bucket: Mutex::new(TokenBucket::new(r, now)?),
                })
            })
            .collect();
        let jwt = RwLock::new(JwtRules::new(&svc.authentication));
        let base = svc.traffic_policy.clone().unwrap_or_default();
        let mut backends = HashMap::new();
        for b in &svc.backends {
            // DestinationRules apply to the Service they name: this
            // L7Service's own rule covers its own host.
            let own_host = b.hostname == svc.hostname;
            let mut sets: Vec<(String, Vec<pb::Endpoint>, pb::TrafficPolicy)> = vec![(
                String::new(),
                b.endpoints.clone(),
                if own_host {
                    base.clone()
                } else {
                    Default::default()
                },
            )];
            if own_host {
                for s in &svc.subsets {
                    let eps = b
                        .endpoints
                        .iter()
                        .filter(|e| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                        .cloned()
                        .collect();
                    sets.push((
                        s.name.clone(),
                        eps,
                        merged(&base, s.traffic_policy.as_ref()),
                    ));
                }
            }
            let subsets = sets
                .into_iter()
                .map(|(name, eps, policy)| {
                    let kept = previous
                        .and_then(|p| p.backends.get(&b.hostname))
                        .and_then(|pb| pb.subsets.get(&name))
                        .filter(|s| s.endpoints == eps && s.policy == policy)
                        .cloned();
                    let subset = kept.unwrap_or_else(|| Arc::new(Subset::new(eps, policy)));
                    (name, subset)
                })
                .collect();
            backends.insert(
                b.hostname.clone(),
                Backend {
                    hostname: b.hostname.clone(),
                    ports: b
                        .ports
                        .iter()
                        .filter_map(|p| {
                            Some((
                                u16::try_from(p.port).ok()?,
                                u16::try_from(p.target_port).ok()?,
                            ))
                        })
                        .collect(),
                    subsets,
                },
            );
        }
        let http_options = if svc.path_normalization.is_empty() {
            None
        } else {
            let path_normalization =
                svc.path_normalization
                    .parse()
                    .map_err(|e: UnknownNormalization| MatcherError {
                        pattern: format!("pathNormalization {}", svc.path_normalization),
                        message: e.to_string(),
                    })?;
            Some(HttpOptions {
                path_normalization,
                num_trusted_proxies: svc.num_trusted_proxies,
            })
        };
        Ok(ServiceState {
            http_options,
            authz: Authorizer::new(&svc.authorization),
            router: Router::new(svc)?,
            jwt,
            limits,
            backends,
        })
    }

    /// The L7 config this was built from.
    pub fn service(&self) -> &pb::L7Service {
        self.router.service()
    }

    /// The backend and subset a route destination names (`None`: the
    /// Service itself, every endpoint), and the service port to send to:
    /// the destination's, else `port`.
    pub fn resolve(
        &self,
        destination: Option<&pb::Destination>,
        port: u16,
    ) -> Option<(&Backend, &Arc<Subset>, u16)> {
        let (host, subset, port) = match destination {
            Some(d) => (
                d.host.as_str(),
                d.subset.as_str(),
                u16::try_from(d.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .unwrap_or(port),
            ),
            None => (self.service().hostname.as_str(), "", port),
        };
        let backend = self.backends.get(host)?;
        Some((backend, backend.subsets.get(subset)?, port))
    }
}

/// Every Service this waypoint serves.
#[derive(Debug, Default, Clone)]
pub struct WaypointState {
    by_name: HashMap<String, Arc<ServiceState>>,
    by_vip: HashMap<IpAddr, Arc<ServiceState>>,
    by_host: HashMap<String, Arc<ServiceState>>,
    by_endpoint: HashMap<IpAddr, Arc<ServiceState>>,
    /// Bumped by every change: a connection's resolved Service is current
    /// while the state it came from is.
    generation: u64,
}

impl WaypointState {
    /// Which version of the config this is (every applied change bumps it).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies one resource: `Some` adds or replaces, `None` removes.
    /// Resources for other waypoints are ignored (`Ok(false)`).
    pub fn apply(
        &mut self,
        waypoint: &str,
        name: &str,
        svc: Option<pb::L7Service>,
    ) -> Result<bool, MatcherError> {
        match svc.filter(|s| s.waypoints.iter().any(|w| w == waypoint)) {
            // Removed, or no longer bound to this waypoint.
            None => {
                let removed = self.by_name.remove(name).is_some();
                self.reindex();
                self.generation += u64::from(removed);
                Ok(removed)
            }
            Some(s) => {
                let previous = self.by_name.get(name).cloned();
                let state = ServiceState::new(s, previous.as_deref())?;
                self.by_name.insert(name.to_string(), Arc::new(state));
                self.reindex();
                self.generation += 1;
                Ok(true)
            }
        }
    }

    fn reindex(&mut self) {
        self.by_vip.clear();
        self.by_host.clear();
        self.by_endpoint.clear();
        for s in self.by_name.values() {
            let svc = s.service();
            for vip in &svc.vips {
                let ip = vip.rsplit_once('/').map_or(vip.as_str(), |(_, ip)| ip);
                if let Ok(ip) = ip.parse() {
                    self.by_vip.insert(ip, s.clone());
                }
            }
            self.by_host.insert(svc.hostname.clone(), s.clone());
            let own = s
                .backends
                .get(&svc.hostname)
                .and_then(|b| b.subsets.get(""));
            for ep in own.iter().flat_map(|all| &all.endpoints) {
                if let Ok(ip) = ep.address.parse() {
                    self.by_endpoint.insert(ip, s.clone());
                }
            }
        }
    }

    /// The Service whose VIP is `ip`, or (workload-addressed traffic) the
    /// Service that `ip` is an endpoint of.
    pub fn for_destination(&self, ip: IpAddr) -> Option<(&Arc<ServiceState>, bool)> {
        self.by_vip
            .get(&ip)
            .map(|s| (s, true))
            .or_else(|| self.by_endpoint.get(&ip).map(|s| (s, false)))
    }

    /// The Service from resource `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ServiceState>> {
        self.by_name.get(name)
    }

    /// The Service with this hostname.
    pub fn by_host(&self, host: &str) -> Option<&Arc<ServiceState>> {
        self.by_host.get(host)
    }

    /// Every served Service (for `/config_dump`).
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceState>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::PathNormalization;

    fn service(normalization: &str, trusted: u32) -> pb::L7Service {
        pb::L7Service {
            name: "api".into(),
            namespace: "shop".into(),
            hostname: "api.shop.svc.cluster.local".into(),
            path_normalization: normalization.into(),
            num_trusted_proxies: trusted,
            ..Default::default()
        }
    }

    #[test]
    fn mesh_http_options_travel_with_the_service() {
        let s = ServiceState::new(service("MERGE_SLASHES", 2), None).expect("compiles");
        assert_eq!(
            s.http_options,
            Some(HttpOptions {
                path_normalization: PathNormalization::MergeSlashes,
                num_trusted_proxies: 2,
            })
        );
        let s = ServiceState::new(service("", 0), None).expect("compiles");
        assert_eq!(s.http_options, None, "unset: the waypoint's defaults apply");
        let err = ServiceState::new(service("MERGE", 0), None).expect_err("unknown value");
        assert!(err.to_string().contains("MERGE"), "{err}");
    }
}
