//! The commands that read a Kubernetes cluster (KUBECONFIG, `--context`):
//! `ambit analyze` without `-f` (what the controller would report for the
//! cluster's objects), and `ambit waypoint list|status|delete` on the
//! cluster's `istio-waypoint` Gateways, as `istioctl` does.

use std::time::Duration;

use ambit_api::k8s::{LoadError, Resources};
use anyhow::Context;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use serde_json::Value;

/// A client for `context` (default: KUBECONFIG's current context, or
/// in-cluster).
pub async fn client(context: Option<&str>) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match context {
        Some(c) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("kubeconfig context {c:?} (KUBECONFIG or ~/.kube/config)"))?,
        None => kube::Config::infer().await.context(
            "no Kubernetes cluster: set KUBECONFIG or --context, or run in a pod; \
             for the local cluster use -f DIR",
        )?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Every object Ambit reads, listed once, as the controller's source sees
/// them (optional APIs that are not installed count as empty).
pub async fn snapshot(client: kube::Client) -> anyhow::Result<(Resources, Vec<LoadError>)> {
    use controller::source::{ConfigSource, SourceEvent};
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(ConfigSource::run(
        Box::new(controller::source::KubeSource::new(client)),
        tx,
    ));
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
    task.abort();
    match first {
        Ok(Some(SourceEvent::Snapshot { resources, errors })) => Ok((resources, errors)),
        Ok(None) => anyhow::bail!("the cluster source stopped before listing"),
        Err(_) => anyhow::bail!(
            "listing the cluster's objects took over 60 s (is the API server reachable?)"
        ),
    }
}

fn gateway_api() -> ApiResource {
    ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
    ))
}

/// One waypoint as `istioctl waypoint list` shows it.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WaypointRow {
    /// Namespace.
    pub namespace: String,
    /// Gateway name.
    pub name: String,
    /// `istio.io/waypoint-for` (default `service`).
    pub traffic_type: String,
    /// The `Programmed` condition: `True`, `False` or `Unknown`.
    pub programmed: String,
    /// Its reason and message.
    pub message: String,
}

/// A Gateway status's `Programmed` condition: its status (`True`, ...) and
/// `reason: message`, as `istioctl waypoint status` shows them.
pub fn programmed(status: &Value) -> Option<(String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Programmed")?;
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((
        text("status"),
        format!("{}: {}", text("reason"), text("message")),
    ))
}

/// The row of a Gateway object (`None` when it is not a waypoint).
pub fn waypoint_row(gateway: &Value) -> Option<WaypointRow> {
    if gateway["spec"]["gatewayClassName"] != "istio-waypoint" {
        return None;
    }
    let meta = &gateway["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (programmed, message) = programmed(&gateway["status"]).unwrap_or_else(|| {
        (
            "Unknown".into(),
            "no status yet (is the controller running?)".into(),
        )
    });
    Some(WaypointRow {
        namespace: text(&meta["namespace"]),
        name: text(&meta["name"]),
        traffic_type: meta["labels"]["istio.io/waypoint-for"]
            .as_str()
            .unwrap_or("service")
            .to_string(),
        programmed,
        message,
    })
}

/// The waypoints in `namespace` (every namespace when `None`).
pub async fn waypoints(
    client: kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<WaypointRow>> {
    let ar = gateway_api();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "the Gateway API is not installed in this cluster (gateway.networking.k8s.io/v1): install its CRDs"
        ),
        other => anyhow::anyhow!("listing Gateways: {other}"),
    })?;
    let mut rows: Vec<WaypointRow> = list
        .items
        .iter()
        .filter_map(|g| serde_json::to_value(g).ok())
        .filter_map(|g| waypoint_row(&g))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

/// Deletes waypoint `name` in `namespace` (refusing a Gateway of another
/// class: that is not a waypoint).
pub async fn delete_waypoint(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &gateway_api());
    let g = api.get(name).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => {
            anyhow::anyhow!(
                "no Gateway {namespace}/{name}: `ambit waypoint list -n {namespace}` lists them"
            )
        }
        other => anyhow::anyhow!("reading Gateway {namespace}/{name}: {other}"),
    })?;
    let value = serde_json::to_value(&g)?;
    if waypoint_row(&value).is_none() {
        anyhow::bail!(
            "Gateway {namespace}/{name} is not a waypoint (gatewayClassName is not istio-waypoint); not deleted"
        );
    }
    api.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting Gateway {namespace}/{name}"))?;
    Ok(())
}

/// `waypoint list` as a table.
pub fn waypoint_table(rows: &[WaypointRow]) -> String {
    crate::inspect::table(
        &["NAMESPACE", "NAME", "TRAFFIC TYPE", "PROGRAMMED"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.namespace.clone(),
                    r.name.clone(),
                    r.traffic_type.clone(),
                    r.programmed.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_waypoints_only() {
        let w = serde_json::json!({
            "metadata": {"name": "waypoint", "namespace": "shop", "labels": {"istio.io/waypoint-for": "all"}},
            "spec": {"gatewayClassName": "istio-waypoint"},
            "status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok"}]},
        });
        let row = waypoint_row(&w).expect("a waypoint");
        assert_eq!(
            (row.traffic_type.as_str(), row.programmed.as_str()),
            ("all", "True")
        );
        let ingress =
            serde_json::json!({"metadata": {"name": "in"}, "spec": {"gatewayClassName": "istio"}});
        assert_eq!(waypoint_row(&ingress), None);
        let fresh = serde_json::json!({"metadata": {"name": "w", "namespace": "a"}, "spec": {"gatewayClassName": "istio-waypoint"}});
        assert_eq!(
            waypoint_row(&fresh).map(|r| r.programmed),
            Some("Unknown".into())
        );
    }
}
