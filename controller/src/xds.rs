//! The delta ADS server (docs/wire.md §4): per connection, per type URL, what
//! the proxy holds (name → version) and what it subscribed to. Each new
//! snapshot sends only resources whose version differs and removals of what
//! went away, so one pod change is one resource on the wire. The first
//! request of a type is always answered, even with nothing, so a fresh
//! ztunnel becomes ready; `initial_resource_versions` lets a reconnecting
//! proxy skip what it already has.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ambit_api::xds::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use ambit_api::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::NodeAuthenticator;
use crate::model::{Snapshot, XdsResource};

/// What a proxy asked for, per type.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subscription {
    /// Everything (legacy wildcard or `*`).
    Wildcard,
    /// Only these names (on-demand).
    Names(HashSet<String>),
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(n) => n.contains(name),
        }
    }
}

#[derive(Debug)]
struct TypeState {
    sub: Subscription,
    /// Name → version the proxy holds (names shared with the snapshot).
    sent: HashMap<Arc<str>, u64>,
    /// Names subscribed since the last push (answered even when unknown).
    newly_subscribed: Vec<String>,
    /// Generation this type was last reconciled against (0: never).
    generation: u64,
}

/// Counters for the controller's own metrics and tests.
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Connected streams.
    pub connections: AtomicU64,
    /// Responses sent.
    pub responses: AtomicU64,
    /// Resources sent (upserts).
    pub resources_sent: AtomicU64,
    /// NACKs received.
    pub nacks: AtomicU64,
}

/// The ADS service.
pub struct XdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Arc<dyn NodeAuthenticator>,
    stats: Arc<XdsStats>,
    stop: watch::Receiver<bool>,
}

impl XdsServer {
    /// Serves `snapshots`; every stream must authenticate with `auth`. Streams
    /// end when `stop` turns true.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        auth: Arc<dyn NodeAuthenticator>,
        stats: Arc<XdsStats>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        XdsServer {
            snapshots,
            auth,
            stats,
            stop,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = self
            .auth
            .authenticate(request.metadata())
            .await?
            .to_string();
        let (tx, rx) = mpsc::channel(4);
        let conn = Connection {
            peer,
            types: HashMap::new(),
            nonce: 0,
            stats: self.stats.clone(),
            tx,
        };
        tokio::spawn(conn.run(
            request.into_inner(),
            self.snapshots.clone(),
            self.stop.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Connection {
    peer: String,
    types: HashMap<String, TypeState>,
    nonce: u64,
    stats: Arc<XdsStats>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(0);

impl Connection {
    async fn run(
        mut self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        info!(conn = id, peer = %self.peer, "xDS stream opened");
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let snap = snapshots.borrow().clone();
                        if !self.on_request(req, &snap).await {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(conn = id, error = %e, "xDS stream error");
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    for t in types {
                        if !self.push(&t, &snap, false).await {
                            break;
                        }
                    }
                }
                _ = stop.changed() => {
                    let _ = self.tx.send(Err(Status::unavailable("controller shutting down"))).await;
                    break;
                }
            }
        }
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        info!(conn = id, peer = %self.peer, "xDS stream closed");
    }

    /// Handles one request; false when the stream is gone.
    async fn on_request(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> bool {
        let type_url = req.type_url.clone();
        if snap.resources(&type_url).is_none() {
            warn!(peer = %self.peer, %type_url, "request for a type this controller does not serve");
        }
        if !req.response_nonce.is_empty() {
            if let Some(err) = &req.error_detail {
                self.stats.nacks.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %self.peer, %type_url, nonce = %req.response_nonce, error = %err.message, "NACK");
            } else {
                debug!(peer = %self.peer, %type_url, nonce = %req.response_nonce, "ACK");
            }
        }
        let subscribe_all = req.resource_names_subscribe.iter().any(|n| n == "*");
        let unsubscribe_all = req.resource_names_unsubscribe.iter().any(|n| n == "*");
        match self.types.get_mut(&type_url) {
            None => {
                let sub = if req.resource_names_subscribe.is_empty()
                    && req.resource_names_unsubscribe.is_empty()
                    || subscribe_all && !unsubscribe_all
                {
                    Subscription::Wildcard
                } else {
                    Subscription::Names(
                        req.resource_names_subscribe
                            .iter()
                            .filter(|n| *n != "*")
                            .cloned()
                            .collect(),
                    )
                };
                let newly_subscribed = match &sub {
                    Subscription::Names(n) => n.iter().cloned().collect(),
                    Subscription::Wildcard => vec![],
                };
                self.types.insert(
                    type_url.clone(),
                    TypeState {
                        sub,
                        sent: req
                            .initial_resource_versions
                            .iter()
                            .map(|(n, v)| (Arc::from(n.as_str()), XdsResource::parse_version(v)))
                            .collect(),
                        newly_subscribed,
                        generation: 0,
                    },
                );
                // Always answer the first request of a type (readiness).
                self.push(&type_url, snap, true).await
            }
            Some(st) => {
                let mut changed = false;
                if subscribe_all && !unsubscribe_all {
                    changed |= st.sub != Subscription::Wildcard;
                    st.sub = Subscription::Wildcard;
                } else if let Subscription::Names(names) = &mut st.sub {
                    for n in &req.resource_names_subscribe {
                        if n != "*" && names.insert(n.clone()) {
                            st.newly_subscribed.push(n.clone());
                            changed = true;
                        }
                    }
                    for n in &req.resource_names_unsubscribe {
                        changed |= names.remove(n);
                    }
                }
                if changed {
                    self.push(&type_url, snap, false).await
                } else {
                    true
                }
            }
        }
    }

    /// Sends what `type_url`'s subscriber lacks; false when the stream is gone.
    async fn push(&mut self, type_url: &str, snap: &Snapshot, force: bool) -> bool {
        let Some(st) = self.types.get_mut(type_url) else {
            return true;
        };
        let empty = HashMap::new();
        let current = snap.resources(type_url).unwrap_or(&empty);
        let mut resources: Vec<Arc<XdsResource>> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let incremental = st.generation != 0
            && st.generation + 1 == snap.generation
            && st.newly_subscribed.is_empty();
        match snap.changed.get(type_url) {
            // Up to date with the previous snapshot: look at what changed only.
            Some(names) if incremental => {
                for name in names {
                    match current.get(name) {
                        Some(r)
                            if st.sub.wants(name)
                                && st.sent.get(name.as_str()) != Some(&r.version) =>
                        {
                            resources.push(r.clone())
                        }
                        None if st.sent.contains_key(name.as_str()) => removed.push(name.clone()),
                        _ => {}
                    }
                }
            }
            _ => {
                for (name, r) in current {
                    if st.sub.wants(name) && st.sent.get(name.as_str()) != Some(&r.version) {
                        resources.push(r.clone());
                    }
                }
                removed = st
                    .sent
                    .keys()
                    .filter(|n| !current.contains_key(&***n) || !st.sub.wants(n))
                    .map(|n| n.to_string())
                    .collect();
            }
        }
        st.generation = snap.generation;
        for n in st.newly_subscribed.drain(..) {
            if !current.contains_key(&n) && !removed.contains(&n) {
                removed.push(n); // an unknown on-demand name is answered as removed
            }
        }
        if resources.is_empty() && removed.is_empty() && !force {
            return true;
        }
        for r in &resources {
            st.sent.insert(r.name.clone(), r.version);
        }
        for n in &removed {
            st.sent.remove(n.as_str());
        }
        self.stats
            .resources_sent
            .fetch_add(resources.len() as u64, Ordering::Relaxed);
        debug!(peer = %self.peer, type_url, upserts = resources.len(), removed = removed.len(), "push");
        // One response per push, as istiod sends it: a proxy's state is then
        // all-or-nothing at every ACK, so "ready" (every type ACKed once)
        // never means "partly synced".
        self.nonce += 1;
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        let resp = DeltaDiscoveryResponse {
            system_version_info: snap.generation.to_string(),
            resources: resources
                .iter()
                .map(|r| Resource {
                    name: r.name.to_string(),
                    aliases: vec![],
                    version: r.version_string(),
                    resource: Some(r.body.clone()),
                })
                .collect(),
            type_url: type_url.to_string(),
            nonce: self.nonce.to_string(),
            removed_resources: removed,
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }
}
