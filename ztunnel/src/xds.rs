//! ztunnel's workload xDS client (docs/wire.md §4): one delta ADS stream with
//! wildcard subscriptions to `Address` and `Authorization`, each response
//! ACKed or NACKed (`"<name>: <reason>"`; good resources in a NACKed response
//! still apply), the state rebuilt and swapped in whole after each response.
//! Reconnects with backoff (10 ms doubling to 15 s) and sends
//! `initial_resource_versions` so the controller resends only what changed.
//! While disconnected the last state keeps serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_api::model::{Authorization, LocalConfig, Service, Workload};
use ambit_api::xds::convert::{self, AddressState};
use ambit_api::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_api::xds::proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status,
};
use ambit_api::xds::proto::{security, workload};
use ambit_api::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::control::ControlPlane;
use crate::proxy::Ztunnel;
use ambit_api::model::ProxyState;

/// The resources received so far, by `Resource.name`.
#[derive(Debug, Default)]
pub struct XdsCache {
    workloads: HashMap<String, Workload>,
    services: HashMap<String, Service>,
    policies: HashMap<String, Authorization>,
    versions: HashMap<String, HashMap<String, String>>,
}

impl XdsCache {
    /// Applies one response; returns the per-resource errors (for a NACK).
    pub fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Vec<String> {
        let mut errors = Vec::new();
        let versions = self.versions.entry(resp.type_url.clone()).or_default();
        for name in &resp.removed_resources {
            versions.remove(name);
            match resp.type_url.as_str() {
                ADDRESS_TYPE if self.workloads.remove(name).is_none() => {
                    self.services.remove(name);
                }
                AUTHORIZATION_TYPE => {
                    self.policies.remove(name);
                }
                _ => {}
            }
        }
        for r in &resp.resources {
            let Some(body) = &r.resource else {
                errors.push(format!("{}: resource has no body", r.name));
                continue;
            };
            let applied = match resp.type_url.as_str() {
                ADDRESS_TYPE => workload::Address::decode(body.value.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|a| convert::address_from_proto(&a).map_err(|e| e.to_string()))
                    .map(|a| match a {
                        AddressState::Workload(w) => {
                            self.services.remove(&r.name);
                            self.workloads.insert(r.name.clone(), w);
                        }
                        AddressState::Service(s) => {
                            self.workloads.remove(&r.name);
                            self.services.insert(r.name.clone(), s);
                        }
                    }),
                AUTHORIZATION_TYPE => security::Authorization::decode(body.value.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|p| convert::authorization_from_proto(&p).map_err(|e| e.to_string()))
                    .map(|p| {
                        self.policies.insert(r.name.clone(), p);
                    }),
                other => Err(format!("type {other} is not handled")),
            };
            match applied {
                Ok(()) => {
                    versions.insert(r.name.clone(), r.version.clone());
                }
                Err(e) => errors.push(format!("{}: {e}", r.name)),
            }
        }
        errors
    }

    /// The proxy state these resources describe.
    pub fn state(&self) -> ProxyState {
        ProxyState::from_config(&LocalConfig {
            workloads: self.workloads.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        })
    }

    /// Versions of accepted resources of `type_url` (sent after a reconnect).
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.versions.get(type_url).cloned().unwrap_or_default()
    }
}

/// Who this ztunnel is, for `Node` (docs/wire.md §4.2).
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Kubernetes node name.
    pub node_name: String,
    /// This ztunnel's pod name.
    pub pod_name: String,
    /// Its namespace.
    pub pod_namespace: String,
    /// Its IP.
    pub instance_ip: String,
}

fn node(info: &NodeInfo, kind: &str) -> Node {
    let s = |v: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
    };
    let metadata = prost_types::Struct {
        fields: [
            ("NAME".to_string(), s(&info.pod_name)),
            ("NAMESPACE".to_string(), s(&info.pod_namespace)),
            ("INSTANCE_IPS".to_string(), s(&info.instance_ip)),
            ("NODE_NAME".to_string(), s(&info.node_name)),
        ]
        .into(),
    };
    Node {
        id: format!(
            "{kind}~{}~{}.{}~{}.svc.cluster.local",
            info.instance_ip, info.pod_name, info.pod_namespace, info.pod_namespace
        ),
        cluster: String::new(),
        metadata: Some(metadata),
        user_agent_name: String::new(),
    }
}

/// What one xDS client subscribes to and does with each response. ztunnel
/// and the waypoint share the stream handling (ACK/NACK, reconnect with
/// versions, readiness) and differ only here.
pub trait XdsConsumer: Send {
    /// The type URLs subscribed to (wildcard).
    fn type_urls(&self) -> &'static [&'static str];
    /// The proxy kind in `Node.id` (`ztunnel`, `waypoint`).
    fn proxy_kind(&self) -> &'static str;
    /// Versions of accepted resources of `type_url`, sent after a reconnect.
    fn versions(&self, type_url: &str) -> HashMap<String, String>;
    /// Applies one response; returns the per-resource errors (for a NACK).
    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Vec<String>;
    /// Every subscribed type has been answered at least once.
    fn synced(&mut self);
    /// Stop reconnecting.
    fn is_shutting_down(&self) -> bool;
}

/// Runs an xDS client for `consumer` until it shuts down; while disconnected
/// the last applied state keeps serving.
pub async fn run_client<C: XdsConsumer>(consumer: &mut C, cp: &ControlPlane, info: &NodeInfo) {
    let mut backoff = Duration::from_millis(10);
    while !consumer.is_shutting_down() {
        match session(consumer, cp, info).await {
            Ok(()) => {
                info!("xDS stream ended; reconnecting");
                backoff = Duration::from_millis(10);
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "xDS stream failed; serving the last config")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

/// ztunnel's consumer: addresses and authorizations into the proxy state.
struct ZtunnelXds {
    z: Arc<Ztunnel>,
    cache: XdsCache,
}

impl XdsConsumer for ZtunnelXds {
    fn type_urls(&self) -> &'static [&'static str] {
        &[ADDRESS_TYPE, AUTHORIZATION_TYPE]
    }
    fn proxy_kind(&self) -> &'static str {
        "ztunnel"
    }
    fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.cache.versions(type_url)
    }
    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Vec<String> {
        let errors = self.cache.apply(resp);
        self.z.update_state(self.cache.state());
        self.z.metrics().xds_message(&resp.type_url);
        errors
    }
    fn synced(&mut self) {
        self.z.set_xds_synced(true);
    }
    fn is_shutting_down(&self) -> bool {
        self.z.is_shutting_down()
    }
}

/// Runs ztunnel's xDS client until the ztunnel shuts down.
pub async fn run(z: Arc<Ztunnel>, cp: ControlPlane, info: NodeInfo) {
    let mut consumer = ZtunnelXds {
        z,
        cache: XdsCache::default(),
    };
    run_client(&mut consumer, &cp, &info).await
}

async fn session<C: XdsConsumer>(
    consumer: &mut C,
    cp: &ControlPlane,
    info: &NodeInfo,
) -> Result<(), String> {
    let channel = cp.channel().map_err(|e| e.to_string())?;
    let mut client = AggregatedDiscoveryServiceClient::with_interceptor(channel, cp.interceptor())
        .max_decoding_message_size(200 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(16);
    let types = consumer.type_urls();
    for type_url in types {
        let req = DeltaDiscoveryRequest {
            node: Some(node(info, consumer.proxy_kind())),
            type_url: type_url.to_string(),
            initial_resource_versions: consumer.versions(type_url),
            ..Default::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    info!(address = %cp.address, "xDS stream connected");
    let mut acked = std::collections::HashSet::new();
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
        };
        let errors = consumer.apply(&resp);
        let error_detail = (!errors.is_empty()).then(|| {
            warn!(type_url = %resp.type_url, errors = %errors.join("; "), "NACK");
            Status {
                code: 0,
                message: errors.join("; "),
                details: vec![],
            }
        });
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        acked.insert(resp.type_url.clone());
        if types.iter().all(|t| acked.contains(*t)) {
            consumer.synced();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_api::xds::proto::discovery::Resource;

    fn resp(resources: Vec<(String, Vec<u8>)>, removed: Vec<&str>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE.into(),
            nonce: "1".into(),
            resources: resources
                .into_iter()
                .map(|(name, value)| Resource {
                    name,
                    version: "v1".into(),
                    resource: Some(prost_types::Any {
                        type_url: ADDRESS_TYPE.into(),
                        value,
                    }),
                    aliases: vec![],
                })
                .collect(),
            removed_resources: removed.into_iter().map(String::from).collect(),
            system_version_info: String::new(),
        }
    }

    #[test]
    fn good_resources_apply_even_when_others_are_rejected() {
        let good = workload::Address {
            r#type: Some(workload::address::Type::Workload(workload::Workload {
                uid: "u1".into(),
                name: "a".into(),
                namespace: "n".into(),
                addresses: vec![vec![10, 0, 0, 1]],
                ..Default::default()
            })),
        };
        let bad = workload::Address { r#type: None };
        let mut c = XdsCache::default();
        let errors = c.apply(&resp(
            vec![
                ("u1".into(), good.encode_to_vec()),
                ("u2".into(), bad.encode_to_vec()),
            ],
            vec![],
        ));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("u2: "), "{errors:?}");
        assert!(c.state().workload("u1").is_some());
        assert_eq!(c.versions(ADDRESS_TYPE).len(), 1);
        c.apply(&resp(vec![], vec!["u1"]));
        assert!(c.state().workload("u1").is_none());
        assert!(c.versions(ADDRESS_TYPE).is_empty());
    }
}
