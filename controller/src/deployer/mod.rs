//! The waypoint deployer: what istiod's deployment controller does for
//! Gateways of class `istio-waypoint`. For each managed waypoint Gateway it
//! applies a ServiceAccount, a Service on 15008 and a Deployment running
//! the waypoint ([`render`]), and the mesh root its pods mount, never takes over an object it did not create
//! (no `gateway.istio.io/managed` label), deletes the objects of Gateways
//! that are gone or no longer managed, and writes each waypoint Gateway's
//! `status` ([`status`]). The same [`Deployer`] drives the API server
//! ([`KubeStore`]) and the local cluster ([`MemoryStore`]).

mod kube_store;
pub mod render;
pub mod status;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ambit_api::k8s::Resources;
use ambit_api::translate::l7::WAYPOINT_CLASS;
use ambit_api::translate::waypoints::is_managed as gateway_is_managed;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

pub use kube_store::KubeStore;
pub use render::{ObjectRef, WaypointTemplate};
pub use store::{MemoryStore, ObjectStore, StoreError, is_managed};

/// How often everything is applied and listed again, even without a
/// change: repairs objects edited or deleted behind the deployer's back.
pub const RESYNC: Duration = Duration::from_secs(300);

/// What one reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects applied.
    pub applied: Vec<ObjectRef>,
    /// Objects deleted.
    pub deleted: Vec<ObjectRef>,
    /// Gateways whose status was written.
    pub statuses: Vec<ObjectRef>,
    /// Objects left alone because something else owns them.
    pub refused: Vec<String>,
    /// Operations that failed (retried on the next reconcile).
    pub errors: Vec<String>,
}

/// Applies waypoint Gateways; remembers what it applied so an unchanged
/// Gateway costs no API call.
#[derive(Debug)]
pub struct Deployer {
    template: WaypointTemplate,
    /// What was last applied successfully, per object.
    applied: BTreeMap<ObjectRef, Value>,
    /// Whether the store's managed objects must be listed (at start and
    /// after each resync) to find ones left by an earlier run.
    list_pending: bool,
}

/// Now, as Kubernetes writes a condition's `lastTransitionTime`.
fn now() -> String {
    use k8s_openapi::chrono::{SecondsFormat, Utc};
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Deployer {
    /// A deployer rendering with `template`.
    pub fn new(template: WaypointTemplate) -> Self {
        Deployer {
            template,
            applied: BTreeMap::new(),
            list_pending: true,
        }
    }

    /// Forgets what was applied: the next reconcile applies and lists
    /// everything again.
    pub fn resync(&mut self) {
        self.applied.clear();
        self.list_pending = true;
    }

    /// The objects every managed waypoint Gateway in `res` should have, in
    /// the order they are applied (each Gateway's ServiceAccount, Service,
    /// then Deployment).
    pub fn desired(&self, res: &Resources) -> Vec<(ObjectRef, Value)> {
        let managed: Vec<_> = res
            .gateways
            .iter()
            .map(|(_, g)| g)
            .filter(|g| g.spec.gateway_class_name == WAYPOINT_CLASS && gateway_is_managed(g))
            .collect();
        let namespaces: BTreeSet<&str> = managed
            .iter()
            .map(|g| g.metadata.namespace.as_deref().unwrap_or("default"))
            .collect();
        let roots = self.template.root_pem.iter().flat_map(|pem| {
            namespaces
                .iter()
                .map(move |ns| render::root_config_map(ns, pem))
        });
        roots
            .chain(
                managed
                    .iter()
                    .flat_map(|g| render::render(g, &self.template)),
            )
            .filter_map(|o| Some((ObjectRef::of(&o)?, o)))
            .collect()
    }

    /// Brings `store` in line with the waypoint Gateways in `res`.
    pub async fn reconcile<S: ObjectStore>(&mut self, res: &Resources, store: &S) -> Report {
        let mut report = Report::default();
        let desired = self.desired(res);
        for (at, object) in &desired {
            if self.applied.get(at) == Some(object) && !observed_missing(at, res) {
                continue;
            }
            self.apply_one(at, object, store, &mut report).await;
        }
        let wanted: BTreeSet<ObjectRef> = desired.into_iter().map(|(at, _)| at).collect();
        self.delete_stale(&wanted, store, &mut report).await;
        self.write_statuses(res, store, &mut report).await;
        report
    }

    async fn apply_one<S: ObjectStore>(
        &mut self,
        at: &ObjectRef,
        object: &Value,
        store: &S,
        report: &mut Report,
    ) {
        let existing = match store.get(at).await {
            Ok(existing) => existing,
            Err(e) => {
                report.errors.push(e.to_string());
                return;
            }
        };
        let mut object = object.clone();
        if let Some(existing) = &existing {
            if !is_managed(existing) {
                // istiod's canManage: never overwrite what someone else made.
                report.refused.push(format!(
                    "{at} exists without label {}={}: not taken over",
                    render::MANAGED_LABEL,
                    render::MANAGED_BY_MESH_CONTROLLER
                ));
                return;
            }
            // Apply against the version checked above, so an object
            // replaced in between is refused by the API server (409).
            if let Some(version) = existing["metadata"]["resourceVersion"].as_str() {
                object["metadata"]["resourceVersion"] = Value::String(version.into());
            }
        }
        match store.apply(at, &object).await {
            Ok(()) => {
                info!(object = %at, "applied");
                report.applied.push(at.clone());
                let mut clean = object;
                if let Some(meta) = clean["metadata"].as_object_mut() {
                    meta.remove("resourceVersion");
                }
                self.applied.insert(at.clone(), clean);
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }

    /// Deletes what this deployer applied (or, after a list, what carries
    /// its label) that no Gateway wants any more: Deployment first, then
    /// Service, then ServiceAccount.
    async fn delete_stale<S: ObjectStore>(
        &mut self,
        wanted: &BTreeSet<ObjectRef>,
        store: &S,
        report: &mut Report,
    ) {
        let mut candidates: BTreeSet<ObjectRef> = self.applied.keys().cloned().collect();
        if self.list_pending {
            let mut listed_all = true;
            for kind in ObjectRef::managed_kinds() {
                match store.list_managed(kind).await {
                    Ok(found) => candidates.extend(found),
                    Err(e) => {
                        listed_all = false;
                        report.errors.push(e.to_string());
                    }
                }
            }
            self.list_pending = !listed_all;
        }
        let mut stale: Vec<ObjectRef> = candidates
            .into_iter()
            .filter(|at| !wanted.contains(at))
            .collect();
        let order = |at: &ObjectRef| match at.kind {
            "Deployment" => 0,
            "Service" => 1,
            "ServiceAccount" => 2,
            _ => 3,
        };
        stale.sort_by_key(order);
        for at in stale {
            match store.delete(&at).await {
                Ok(()) => {
                    info!(object = %at, "deleted: its waypoint Gateway is gone");
                    self.applied.remove(&at);
                    report.deleted.push(at);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }

    async fn write_statuses<S: ObjectStore>(
        &self,
        res: &Resources,
        store: &S,
        report: &mut Report,
    ) {
        let now = now();
        for (_, g) in &res.gateways {
            if g.spec.gateway_class_name != WAYPOINT_CLASS {
                continue;
            }
            let status = status::gateway_status(g, &res.services, &now);
            if g.status.as_ref() == Some(&status) {
                continue;
            }
            let at = ObjectRef::gateway(
                g.metadata.namespace.as_deref().unwrap_or("default"),
                g.metadata.name.as_deref().unwrap_or_default(),
            );
            match store.apply_status(&at, &status).await {
                Ok(()) => report.statuses.push(at),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
}

/// Whether `res` shows that an object this deployer applied is gone (a
/// watched kind, deleted by someone): applied again at once rather than at
/// the next resync. Deployments and ConfigMaps are not watched.
fn observed_missing(at: &ObjectRef, res: &Resources) -> bool {
    let named = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.name.as_deref() == Some(at.name.as_str())
            && m.namespace.as_deref().unwrap_or("default") == at.namespace
    };
    match at.kind {
        "Service" => !res.services.iter().any(|(_, s)| named(&s.metadata)),
        "ServiceAccount" => !res.service_accounts.iter().any(|(_, s)| named(&s.metadata)),
        _ => false,
    }
}

/// Runs `deployer` against `store`: reconciles on every change of
/// `resources`, retries failures after `retry`, and resyncs every
/// [`RESYNC`]. Ends when `resources` closes.
pub async fn run<S: ObjectStore>(
    mut deployer: Deployer,
    mut resources: watch::Receiver<Arc<Resources>>,
    store: S,
    retry: Duration,
) {
    let mut last_resync = tokio::time::Instant::now();
    loop {
        if last_resync.elapsed() >= RESYNC {
            deployer.resync();
            last_resync = tokio::time::Instant::now();
        }
        let current = resources.borrow_and_update().clone();
        let report = deployer.reconcile(&current, &store).await;
        for r in &report.refused {
            warn!(refused = %r, "waypoint object left alone");
        }
        for e in &report.errors {
            warn!(error = %e, "waypoint deployer: will retry");
        }
        let wait = if report.errors.is_empty() {
            RESYNC
        } else {
            retry
        };
        tokio::select! {
            changed = resources.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn resources(yaml: &str) -> Resources {
        let mut r = Resources::default();
        r.add_yaml(yaml, "test.yaml").expect("yaml");
        r
    }

    const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, uid: u1}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";

    fn reconcile(d: &mut Deployer, res: &Resources, store: &MemoryStore) -> Report {
        d.reconcile(res, store)
            .now_or_never()
            .expect("the memory store never waits")
    }

    #[test]
    fn applies_once_then_nothing_until_a_change() {
        let store = MemoryStore::default();
        let mut d = Deployer::new(WaypointTemplate::default());
        let res = resources(GATEWAY);
        let first = reconcile(&mut d, &res, &store);
        let names: Vec<String> = first.applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "ServiceAccount demo/waypoint",
                "Service demo/waypoint",
                "Deployment demo/waypoint"
            ]
        );
        assert_eq!(first.statuses.len(), 1);
        assert_eq!(store.objects().len(), 3);
        // The watch now shows what was applied: nothing to do.
        let mut watched = res.clone();
        for o in store.objects() {
            watched
                .add_json(o, ambit_api::k8s::Source::default())
                .expect("object");
        }
        let again = reconcile(&mut d, &watched, &store);
        assert!(again.applied.is_empty() && again.deleted.is_empty());
        // Someone deletes the Service: applied again at once.
        watched
            .services
            .retain(|(_, s)| s.metadata.name.as_deref() != Some("waypoint"));
        let repaired = reconcile(&mut d, &watched, &store);
        let names: Vec<String> = repaired.applied.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["Service demo/waypoint"]);
    }

    #[test]
    fn never_takes_over_an_unmanaged_object() {
        let mine = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "waypoint", "namespace": "demo"},
        });
        let store = MemoryStore::with([mine.clone()]);
        let mut d = Deployer::new(WaypointTemplate::default());
        let report = reconcile(&mut d, &resources(GATEWAY), &store);
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert!(report.refused[0].starts_with("Service demo/waypoint exists without label"));
        assert!(store.objects().contains(&mine), "left as it was");
    }

    #[test]
    fn deletes_when_the_gateway_goes_including_leftovers_of_an_earlier_run() {
        let store = MemoryStore::default();
        let mut first_run = Deployer::new(WaypointTemplate::default());
        reconcile(&mut first_run, &resources(GATEWAY), &store);
        // A new process (nothing cached) sees the Gateway deleted.
        let mut d = Deployer::new(WaypointTemplate::default());
        let report = reconcile(&mut d, &Resources::default(), &store);
        let kinds: Vec<&str> = report.deleted.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, ["Deployment", "Service", "ServiceAccount"]);
        assert!(store.objects().is_empty());
    }

    #[test]
    fn unmanaged_gateways_get_status_but_no_objects() {
        let store = MemoryStore::default();
        let mut d = Deployer::new(WaypointTemplate::default());
        let res = resources(&GATEWAY.replace(
            "  listeners:",
            "  addresses: [{type: Hostname, value: existing}]\n  listeners:",
        ));
        let report = reconcile(&mut d, &res, &store);
        assert!(report.applied.is_empty());
        assert_eq!(report.statuses.len(), 1);
    }
}
