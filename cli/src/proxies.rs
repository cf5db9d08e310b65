//! The proxies of a cluster and how to reach their HTTP endpoints (admin
//! 15000, metrics 15020, readiness 15021): inside the local cluster's
//! network namespaces, or in Kubernetes through a port-forward to the pod
//! (ztunnel's admin listens on the pod's loopback, as Istio's does, so the
//! API server's pod proxy cannot reach it; `kubectl port-forward` and
//! `istioctl` go the same way).

use std::net::SocketAddr;

use ambit_cluster::info::{ClusterInfo, NodeInfo, PodInfo};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// Which cluster the inspection commands read.
pub enum Cluster {
    /// A running `ambit up`.
    Local(ClusterInfo),
    /// A Kubernetes cluster.
    Kube(kube::Client),
}

impl Cluster {
    /// `--kube`/`--context`: Kubernetes; else the local cluster `run` (the
    /// newest when `None`).
    pub async fn choose(
        run: Option<&str>,
        kube: bool,
        context: Option<&str>,
    ) -> anyhow::Result<Self> {
        if kube || context.is_some() {
            return Ok(Cluster::Kube(crate::live::client(context).await?));
        }
        Ok(Cluster::Local(crate::inspect::local_cluster(run)?))
    }
}

/// A proxy's endpoint port.
#[derive(Clone, Copy, Debug)]
pub enum Port {
    /// `/config_dump`.
    Admin,
    /// `/metrics`.
    Metrics,
    /// `/healthz/ready`.
    Readiness,
}

impl Port {
    fn number(self) -> u16 {
        match self {
            Port::Admin => 15000,
            Port::Metrics => 15020,
            Port::Readiness => 15021,
        }
    }
}

/// One proxy.
#[derive(Clone)]
pub struct Proxy {
    /// `ztunnel node1`, `ns/pod`.
    pub name: String,
    /// `ztunnel` or `waypoint`.
    pub kind: &'static str,
    /// The node it runs on.
    pub node: String,
    at: Endpoint,
}

#[derive(Clone)]
enum Endpoint {
    LocalZtunnel(NodeInfo),
    LocalPod(PodInfo),
    Kube {
        client: kube::Client,
        namespace: String,
        pod: String,
    },
}

impl Proxy {
    /// Its `/config_dump`, parsed.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let body = self.get(Port::Admin, "/config_dump").await?;
        serde_json::from_str(&body).with_context(|| format!("{} /config_dump", self.name))
    }

    /// GETs `path` on `port` and returns the body of a 200 answer.
    pub async fn get(&self, port: Port, path: &str) -> anyhow::Result<String> {
        match &self.at {
            Endpoint::LocalZtunnel(n) => {
                let addr = match port {
                    Port::Admin => n.admin,
                    Port::Metrics => n.metrics,
                    Port::Readiness => n.readiness,
                };
                crate::inspect::admin_text(&n.netns, addr, path).await
            }
            Endpoint::LocalPod(p) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port.number()));
                crate::inspect::admin_text(&p.netns, addr, path).await
            }
            Endpoint::Kube {
                client,
                namespace,
                pod,
            } => forwarded_get(client.clone(), namespace, pod, port.number(), path).await,
        }
    }
}

/// Every ztunnel (by node) and waypoint of `cluster`.
pub async fn list(cluster: &Cluster) -> anyhow::Result<Vec<Proxy>> {
    match cluster {
        Cluster::Local(c) => {
            let mut out: Vec<Proxy> = c
                .nodes
                .iter()
                .map(|n| Proxy {
                    name: format!("ztunnel {}", n.name),
                    kind: "ztunnel",
                    node: n.name.clone(),
                    at: Endpoint::LocalZtunnel(n.clone()),
                })
                .collect();
            out.extend(
                c.pods
                    .iter()
                    .filter(|p| p.waypoint_for.is_some())
                    .map(|p| Proxy {
                        name: p.key.clone(),
                        kind: "waypoint",
                        node: format!("node{}", p.node),
                        at: Endpoint::LocalPod(p.clone()),
                    }),
            );
            Ok(out)
        }
        Cluster::Kube(client) => {
            let pods: Api<Pod> = Api::all(client.clone());
            let mut out = Vec::new();
            for (kind, selector) in [
                ("ztunnel", "app=ztunnel"),
                ("waypoint", "gateway.networking.k8s.io/gateway-name"),
            ] {
                let list = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .with_context(|| format!("listing pods {selector}"))?;
                for p in list.items {
                    let namespace = p.metadata.namespace.clone().unwrap_or_default();
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    out.push(Proxy {
                        name: if kind == "ztunnel" {
                            format!("ztunnel {node}")
                        } else {
                            format!("{namespace}/{pod}")
                        },
                        kind,
                        node,
                        at: Endpoint::Kube {
                            client: client.clone(),
                            namespace,
                            pod,
                        },
                    });
                }
            }
            Ok(out)
        }
    }
}

/// The control plane's version: the `ambit up` process's (local), or each
/// controller pod's `istio_build` tag from its `:15014/metrics`
/// (Kubernetes), as `pod: version` lines.
pub async fn control_plane_versions(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    match cluster {
        Cluster::Local(info) => Ok(vec![format!(
            "local control plane ({}): {}",
            info.run, info.version
        )]),
        Cluster::Kube(client) => {
            let pods: Api<Pod> = Api::all(client.clone());
            let list = pods
                .list(&ListParams::default().labels("app=ambit-controller"))
                .await
                .context("listing controller pods (app=ambit-controller)")?;
            let mut out = Vec::new();
            for p in list.items {
                let namespace = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let version =
                    match forwarded_get(client.clone(), &namespace, &name, 15014, "/metrics").await
                    {
                        Ok(text) => crate::dashboard::prom::parse(&text)
                            .into_iter()
                            .find(|s| s.name == "istio_build")
                            .map(|s| s.label("tag").to_string())
                            .unwrap_or_else(|| "unknown (no istio_build metric)".into()),
                        Err(e) => format!("unreachable: {e:#}"),
                    };
                out.push(format!("controller {namespace}/{name}: {version}"));
            }
            Ok(out)
        }
    }
}

/// `GET path` to `pod`'s `port` through a port-forward.
async fn forwarded_get(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut forward = pods.portforward(pod, &[port]).await.with_context(|| {
        format!("port-forward to {namespace}/{pod}:{port} (RBAC: pods/portforward create)")
    })?;
    let stream = forward
        .take_stream(port)
        .with_context(|| format!("port-forward to {namespace}/{pod}:{port}: no stream"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("GET {path} on {namespace}/{pod}:{port}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    forward.abort();
    if !status.is_success() {
        anyhow::bail!(
            "GET {path} on {namespace}/{pod}:{port}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
