//! The API server as the deployer's store: GET, server-side apply (PATCH
//! `application/apply-patch+yaml`, `fieldManager=istio.io/gateway-controller`,
//! `force=true`), DELETE with background propagation, LIST by the managed
//! label, and apply on `gateways/NAME/status`.

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::Value;

use super::render::{FIELD_MANAGER, MANAGED_BY_MESH_CONTROLLER, MANAGED_LABEL, ObjectRef};
use super::store::{ObjectStore, StoreError};

/// Talks to the API server through `client`.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store on `client`.
    pub fn new(client: kube::Client) -> Self {
        KubeStore { client }
    }

    fn resource(at: &ObjectRef) -> ApiResource {
        let (group, version) = at
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", at.api_version));
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, at.kind),
            at.plural,
        )
    }

    fn api(&self, at: &ObjectRef) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &at.namespace, &Self::resource(at))
    }
}

fn failed(at: &ObjectRef, e: kube::Error) -> StoreError {
    StoreError::Api {
        object: at.to_string(),
        message: e.to_string(),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

impl ObjectStore for KubeStore {
    async fn get(&self, at: &ObjectRef) -> Result<Option<Value>, StoreError> {
        let found = self
            .api(at)
            .get_opt(&at.name)
            .await
            .map_err(|e| failed(at, e))?;
        found
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| StoreError::Api {
                object: at.to_string(),
                message: e.to_string(),
            })
    }

    async fn apply(&self, at: &ObjectRef, object: &Value) -> Result<(), StoreError> {
        self.api(at)
            .patch(&at.name, &apply_params(), &Patch::Apply(object))
            .await
            .map(drop)
            .map_err(|e| failed(at, e))
    }

    async fn delete(&self, at: &ObjectRef) -> Result<(), StoreError> {
        match self
            .api(at)
            .delete(&at.name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            // Already gone (the garbage collector got there first).
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(failed(at, e)),
        }
    }

    async fn list_managed(
        &self,
        kind: fn(&str, &str) -> ObjectRef,
    ) -> Result<Vec<ObjectRef>, StoreError> {
        let probe = kind("", "");
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &Self::resource(&probe));
        let selector = format!("{MANAGED_LABEL}={MANAGED_BY_MESH_CONTROLLER}");
        let list = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| failed(&probe, e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| {
                Some(kind(
                    o.metadata.namespace.as_deref()?,
                    o.metadata.name.as_deref()?,
                ))
            })
            .collect())
    }

    async fn apply_status(&self, gateway: &ObjectRef, status: &Value) -> Result<(), StoreError> {
        let body = serde_json::json!({
            "apiVersion": gateway.api_version,
            "kind": gateway.kind,
            "metadata": {"name": gateway.name, "namespace": gateway.namespace},
            "status": status,
        });
        self.api(gateway)
            .patch_status(&gateway.name, &apply_params(), &Patch::Apply(&body))
            .await
            .map(drop)
            .map_err(|e| failed(gateway, e))
    }
}
