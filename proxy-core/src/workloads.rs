//! The workload xDS types both proxies take (docs/wire.md §4.1): `Address`
//! (workloads and services) and, for ztunnel, `Authorization`, collected
//! into one [`ProxyState`] that is rebuilt and handed to the proxy after
//! each response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ambit_api::model::{Authorization, LocalConfig, ProxyState, Service, Workload};
use ambit_api::xds::convert::{self, AddressState};
use ambit_api::xds::proto::{security, workload};

use crate::xds::{Handler, Rejected, Update};

/// The resources received so far, by `Resource.name`.
#[derive(Debug, Default)]
pub struct WorkloadStore {
    workloads: HashMap<String, Workload>,
    services: HashMap<String, Service>,
    policies: HashMap<String, Authorization>,
}

impl WorkloadStore {
    /// Applies `Address` updates.
    pub fn apply_addresses(&mut self, updates: Vec<Update<workload::Address>>) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for u in updates {
            match u {
                Update::Remove(name) => {
                    if self.workloads.remove(&name).is_none() {
                        self.services.remove(&name);
                    }
                }
                Update::Upsert(name, a) => match convert::address_from_proto(&a) {
                    Ok(AddressState::Workload(w)) => {
                        self.services.remove(&name);
                        self.workloads.insert(name, w);
                    }
                    Ok(AddressState::Service(s)) => {
                        self.workloads.remove(&name);
                        self.services.insert(name, s);
                    }
                    Err(e) => rejected.push(Rejected::new(name, e)),
                },
            }
        }
        rejected
    }

    /// Applies `Authorization` updates.
    pub fn apply_authorizations(
        &mut self,
        updates: Vec<Update<security::Authorization>>,
    ) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for u in updates {
            match u {
                Update::Remove(name) => {
                    self.policies.remove(&name);
                }
                Update::Upsert(name, p) => match convert::authorization_from_proto(&p) {
                    Ok(p) => {
                        self.policies.insert(name, p);
                    }
                    Err(e) => rejected.push(Rejected::new(name, e)),
                },
            }
        }
        rejected
    }

    /// The proxy state these resources describe.
    pub fn state(&self) -> ProxyState {
        ProxyState::from_config(&LocalConfig {
            workloads: self.workloads.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        })
    }
}

/// Where a rebuilt state goes (the proxy's swap).
pub type Publish = Arc<dyn Fn(ProxyState) + Send + Sync>;

/// The `Address` handler: applies to the shared store, then publishes.
pub struct AddressHandler {
    store: Arc<Mutex<WorkloadStore>>,
    publish: Publish,
}

/// The `Authorization` handler: applies to the shared store, then publishes.
pub struct AuthorizationHandler {
    store: Arc<Mutex<WorkloadStore>>,
    publish: Publish,
}

/// The two handlers over one store; each publishes the whole state after
/// its response is applied.
pub fn handlers(publish: Publish) -> (AddressHandler, AuthorizationHandler) {
    let store = Arc::new(Mutex::new(WorkloadStore::default()));
    (
        AddressHandler {
            store: store.clone(),
            publish: publish.clone(),
        },
        AuthorizationHandler { store, publish },
    )
}

fn with_store<R>(store: &Mutex<WorkloadStore>, f: impl FnOnce(&mut WorkloadStore) -> R) -> R {
    let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

impl Handler<workload::Address> for AddressHandler {
    fn handle(&mut self, updates: Vec<Update<workload::Address>>) -> Vec<Rejected> {
        let (rejected, state) =
            with_store(&self.store, |s| (s.apply_addresses(updates), s.state()));
        (self.publish)(state);
        rejected
    }
}

impl Handler<security::Authorization> for AuthorizationHandler {
    fn handle(&mut self, updates: Vec<Update<security::Authorization>>) -> Vec<Rejected> {
        let (rejected, state) = with_store(&self.store, |s| {
            (s.apply_authorizations(updates), s.state())
        });
        (self.publish)(state);
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{NodeInfo, XdsClient};
    use ambit_api::xds::ADDRESS_TYPE;
    use ambit_api::xds::proto::discovery::{DeltaDiscoveryResponse, Resource};
    use prost::Message;

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
        let published: Arc<Mutex<Option<ProxyState>>> = Arc::default();
        let sink = published.clone();
        let (addresses, _) = handlers(Arc::new(move |s| {
            *sink.lock().expect("lock") = Some(s);
        }));
        let info = NodeInfo {
            node_name: "n".into(),
            pod_name: "p".into(),
            pod_namespace: "ns".into(),
            instance_ip: "1.1.1.1".into(),
        };
        let mut client = XdsClient::new("ztunnel", info).watch(ADDRESS_TYPE, addresses);
        let errors = client.apply(&resp(
            vec![
                ("u1".into(), good.encode_to_vec()),
                ("u2".into(), bad.encode_to_vec()),
                ("u3".into(), vec![0xff, 0xff]),
            ],
            vec![],
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        let names: Vec<_> = errors.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"u2") && names.contains(&"u3"), "{errors:?}");
        let state = || published.lock().expect("lock").take().expect("published");
        assert!(state().workload("u1").is_some());
        // Only the accepted resource's version is sent after a reconnect.
        assert_eq!(client.versions(ADDRESS_TYPE).len(), 1);
        client.apply(&resp(vec![], vec!["u1"]));
        assert!(state().workload("u1").is_none());
        assert!(client.versions(ADDRESS_TYPE).is_empty());
    }
}
