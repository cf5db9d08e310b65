//! Where the deployer's objects live. In a cluster that is the API server
//! ([`super::KubeStore`]); in the local cluster, memory ([`MemoryStore`]).
//! The deployer's decisions (what to apply, what not to take over, what
//! to delete, which status to write) are the same for both.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use serde_json::Value;

use super::render::{MANAGED_BY_MESH_CONTROLLER, MANAGED_LABEL, ObjectRef};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API server refused or could not be reached.
    #[error("{object}: {message}")]
    Api {
        /// What was being read or written.
        object: String,
        /// What the API server (or the connection) said.
        message: String,
    },
}

/// The operations the deployer needs, as the API server offers them.
pub trait ObjectStore: Sync {
    /// The object, if it exists.
    fn get(&self, at: &ObjectRef)
    -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Server-side applies `object` (istiod's field manager, forced).
    fn apply(
        &self,
        at: &ObjectRef,
        object: &Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the object (its dependents go in the background).
    fn delete(&self, at: &ObjectRef) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every object of `kind` (any namespace) carrying the deployer's
    /// managed label.
    fn list_managed(
        &self,
        kind: fn(&str, &str) -> ObjectRef,
    ) -> impl Future<Output = Result<Vec<ObjectRef>, StoreError>> + Send;

    /// Server-side applies `status` to the Gateway's status subresource.
    fn apply_status(
        &self,
        gateway: &ObjectRef,
        status: &Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Whether `labels` mark an object as the deployer's.
pub fn is_managed(object: &Value) -> bool {
    object["metadata"]["labels"][MANAGED_LABEL] == MANAGED_BY_MESH_CONTROLLER
}

/// Objects and Gateway statuses held in memory: the local cluster's API.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<ObjectRef, Value>>,
    statuses: Mutex<BTreeMap<ObjectRef, Value>>,
}

impl MemoryStore {
    /// A store holding `objects` (what exists before the deployer runs).
    pub fn with(objects: impl IntoIterator<Item = Value>) -> Self {
        let store = MemoryStore::default();
        if let Ok(mut held) = store.objects.lock() {
            for o in objects {
                if let Some(at) = ObjectRef::of(&o) {
                    held.insert(at, o);
                }
            }
        }
        store
    }

    /// Everything held now.
    pub fn objects(&self) -> Vec<Value> {
        self.objects
            .lock()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The last status written for each Gateway.
    pub fn statuses(&self) -> BTreeMap<ObjectRef, Value> {
        self.statuses.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn poisoned(at: &ObjectRef) -> StoreError {
    StoreError::Api {
        object: at.to_string(),
        message: "memory store lock poisoned".into(),
    }
}

impl ObjectStore for MemoryStore {
    async fn get(&self, at: &ObjectRef) -> Result<Option<Value>, StoreError> {
        let held = self.objects.lock().map_err(|_| poisoned(at))?;
        Ok(held.get(at).cloned())
    }

    async fn apply(&self, at: &ObjectRef, object: &Value) -> Result<(), StoreError> {
        let mut held = self.objects.lock().map_err(|_| poisoned(at))?;
        held.insert(at.clone(), object.clone());
        Ok(())
    }

    async fn delete(&self, at: &ObjectRef) -> Result<(), StoreError> {
        let mut held = self.objects.lock().map_err(|_| poisoned(at))?;
        held.remove(at);
        Ok(())
    }

    async fn list_managed(
        &self,
        kind: fn(&str, &str) -> ObjectRef,
    ) -> Result<Vec<ObjectRef>, StoreError> {
        let probe = kind("", "");
        let held = self.objects.lock().map_err(|_| poisoned(&probe))?;
        Ok(held
            .iter()
            .filter(|(at, o)| at.kind == probe.kind && is_managed(o))
            .map(|(at, _)| at.clone())
            .collect())
    }

    async fn apply_status(&self, gateway: &ObjectRef, status: &Value) -> Result<(), StoreError> {
        let mut held = self.statuses.lock().map_err(|_| poisoned(gateway))?;
        held.insert(gateway.clone(), status.clone());
        Ok(())
    }
}
