//! A real cluster: kube-rs watchers on every kind the model reads (core,
//! Istio, Gateway API), each object converted through the same reader as
//! YAML files, so the same objects give the same model from either source.
//! Watch restarts (410 Gone / resourceVersion too old) relist: the watcher
//! emits `Init … InitDone` and the kind's store is replaced atomically, so
//! objects deleted while the watch was broken disappear. Snapshots start only
//! once every kind has listed (like an informer's HasSynced). An object that
//! stops converting is reported and keeps its last good version.
//!
//! A kind whose API is not served (its CRD is not installed: the list
//! answers 404) counts as listed and empty, so a cluster without the
//! Gateway API, ServiceEntry or Telemetry still gets its config pushed;
//! the watch keeps retrying and picks the kind up once it is installed. A
//! kind that had listed and then answers 404 keeps its last objects (a
//! policy never disappears because its API hiccuped).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use ambit_api::k8s::{LoadError, MESH_CONFIG_NAME, MESH_CONFIG_NAMESPACE, Resources, Source};
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ConfigSource, SourceEvent};

/// The kinds Ambit watches: `(group, version, kind)`.
pub const WATCHED: &[(&str, &str, &str)] = &[
    ("", "v1", "Namespace"),
    ("", "v1", "Pod"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("security.istio.io", "v1", "AuthorizationPolicy"),
    ("security.istio.io", "v1", "PeerAuthentication"),
    ("security.istio.io", "v1", "RequestAuthentication"),
    ("networking.istio.io", "v1", "VirtualService"),
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1", "ServiceEntry"),
    ("telemetry.istio.io", "v1", "Telemetry"),
    ("gateway.networking.k8s.io", "v1", "Gateway"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    ("ambit.dev", "v1alpha1", "RateLimitPolicy"),
    // Only the mesh config, `istio-system/istio` (see `watch_scope`).
    ("", "v1", "ConfigMap"),
];

/// Where a kind is watched: everywhere, except ConfigMaps, of which only
/// the mesh config is read (namespace `istio-system`, name `istio`), and
/// Pods when `pod_fields` narrows them (a node agent's own node).
fn watch_scope(
    client: &kube::Client,
    ar: &ApiResource,
    pod_fields: Option<&str>,
) -> (Api<DynamicObject>, watcher::Config) {
    if ar.group.is_empty() && ar.kind == "ConfigMap" {
        return (
            Api::namespaced_with(client.clone(), MESH_CONFIG_NAMESPACE, ar),
            watcher::Config::default().fields(&format!("metadata.name={MESH_CONFIG_NAME}")),
        );
    }
    let config = match pod_fields {
        Some(fields) if ar.group.is_empty() && ar.kind == "Pod" => {
            watcher::Config::default().fields(fields)
        }
        _ => watcher::Config::default(),
    };
    (Api::all_with(client.clone(), ar), config)
}

/// Watches a cluster through `client`.
pub struct KubeSource {
    client: kube::Client,
    kinds: Vec<ApiResource>,
    /// A field selector for the Pod watch (`spec.nodeName=NODE`).
    pod_fields: Option<String>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("kinds", &self.kinds.len())
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Watches every kind in [`WATCHED`].
    pub fn new(client: kube::Client) -> Self {
        Self::with_kinds(client, WATCHED)
    }

    /// Watches only `kinds` (tests, or clusters without some CRDs).
    pub fn with_kinds(client: kube::Client, kinds: &[(&str, &str, &str)]) -> Self {
        KubeSource {
            client,
            kinds: kinds
                .iter()
                .map(|(g, v, k)| ApiResource::from_gvk(&GroupVersionKind::gvk(g, v, k)))
                .collect(),
            pod_fields: None,
        }
    }

    /// Watches only the pods of node `node` (`spec.nodeName`): what a node
    /// agent needs, without every pod of the cluster in its memory.
    pub fn pods_of_node(mut self, node: &str) -> Self {
        self.pod_fields = Some(format!("spec.nodeName={node}"));
        self
    }
}

/// One kind's objects, converted, by `namespace/name`.
#[derive(Default)]
struct KindStore {
    live: BTreeMap<String, Resources>,
    relisting: Option<BTreeMap<String, Resources>>,
    errors: BTreeMap<String, LoadError>,
    synced: bool,
    /// The kind's API answered 404 (not installed) the last time it listed.
    absent: bool,
}

/// What a kind's watch task reports.
enum KindEvent {
    /// A watch event.
    Watch(Box<Event<DynamicObject>>),
    /// The list answered 404: the kind's API is not served.
    NotServed,
}

/// Whether a watch error says the kind's API is not served.
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

fn key(obj: &DynamicObject) -> String {
    format!(
        "{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().unwrap_or("")
    )
}

/// The object as the file reader sees it (list items carry no apiVersion/kind).
fn convert(ar: &ApiResource, obj: &DynamicObject) -> Result<Resources, LoadError> {
    let source = Source {
        file: format!("kube:{}/{}", ar.kind, key(obj)),
        doc: 0,
    };
    let mut value = serde_json::to_value(obj).map_err(|e| LoadError {
        source_ref: source.clone(),
        object: format!("{} {}", ar.kind, key(obj)),
        message: e.to_string(),
    })?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), ar.api_version.clone().into());
        map.insert("kind".into(), ar.kind.clone().into());
    }
    let mut r = Resources::default();
    r.add_json(value, source)?;
    Ok(r)
}

impl KindStore {
    fn upsert(&mut self, ar: &ApiResource, obj: &DynamicObject, into_relist: bool) {
        let k = key(obj);
        match convert(ar, obj) {
            Ok(r) => {
                self.errors.remove(&k);
                let target = match (&mut self.relisting, into_relist) {
                    (Some(buf), true) => buf,
                    _ => &mut self.live,
                };
                target.insert(k, r);
            }
            Err(e) => {
                warn!(error = %e, "object not applied; its last good version stays");
                // Keep the last good version through a relist too.
                if into_relist
                    && let (Some(buf), Some(old)) = (&mut self.relisting, self.live.get(&k))
                {
                    buf.insert(k.clone(), old.clone());
                }
                self.errors.insert(k, e);
            }
        }
    }

    /// Applies one event; false when it changed nothing (a repeated 404).
    fn apply(&mut self, ar: &ApiResource, event: KindEvent) -> bool {
        let event = match event {
            KindEvent::Watch(e) => *e,
            KindEvent::NotServed => {
                if self.absent {
                    return false;
                }
                if self.synced {
                    warn!(kind = %ar.kind, objects = self.live.len(), "its API answers 404 now; keeping the last objects until it lists again");
                } else {
                    info!(kind = %ar.kind, group = %ar.group, "not installed (404): treated as empty until it is");
                }
                self.absent = true;
                self.relisting = None;
                self.synced = true;
                return true;
            }
        };
        self.absent = false;
        match event {
            Event::Init => self.relisting = Some(BTreeMap::new()),
            Event::InitApply(o) => self.upsert(ar, &o, true),
            Event::InitDone => {
                if let Some(buf) = self.relisting.take() {
                    self.live = buf;
                }
                if !self.synced {
                    info!(kind = %ar.kind, objects = self.live.len(), "listed");
                }
                self.synced = true;
            }
            Event::Apply(o) => self.upsert(ar, &o, false),
            Event::Delete(o) => {
                let k = key(&o);
                self.live.remove(&k);
                self.errors.remove(&k);
            }
        }
        true
    }
}

impl ConfigSource for KubeSource {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<SourceEvent>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let (events_tx, mut events) = mpsc::channel::<(usize, KindEvent)>(1024);
            let mut tasks = Vec::new();
            for (i, ar) in self.kinds.iter().enumerate() {
                let (api, config) = watch_scope(&self.client, ar, self.pod_fields.as_deref());
                let events_tx = events_tx.clone();
                let kind = ar.kind.clone();
                tasks.push(tokio::spawn(async move {
                    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
                    while let Some(ev) = stream.next().await {
                        let event = match ev {
                            Ok(ev) => KindEvent::Watch(Box::new(ev)),
                            Err(e) if not_served(&e) => KindEvent::NotServed,
                            Err(e) => {
                                warn!(%kind, error = %e, "watch failed; restarting");
                                continue;
                            }
                        };
                        if events_tx.send((i, event)).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            drop(events_tx);
            let mut stores: Vec<KindStore> =
                self.kinds.iter().map(|_| KindStore::default()).collect();
            while let Some((i, ev)) = events.recv().await {
                let mut changed = stores[i].apply(&self.kinds[i], ev);
                // Take whatever else is queued before building a snapshot.
                while let Ok((i, ev)) = events.try_recv() {
                    changed |= stores[i].apply(&self.kinds[i], ev);
                }
                if !changed || !stores.iter().all(|s| s.synced) {
                    continue;
                }
                let mut resources = Resources::default();
                let mut errors = Vec::new();
                for s in &stores {
                    for r in s.live.values() {
                        resources.extend(r.clone());
                    }
                    errors.extend(s.errors.values().cloned());
                }
                if tx
                    .send(SourceEvent::Snapshot { resources, errors })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            for t in tasks {
                t.abort();
            }
        })
    }
}
