//! The delta-ADS client both proxies run (docs/wire.md §4): one stream to the
//! control plane with a wildcard subscription per registered type, a handler
//! per type (as Istio's ztunnel registers one per type URL), each response
//! ACKed or NACKed (`"<name>: <reason>"`; good resources in a NACKed response
//! still apply). Reconnects with backoff (10 ms doubling to 15 s) and sends
//! `initial_resource_versions` so the control plane resends only what
//! changed. While disconnected the last applied config keeps serving; the
//! client stops once the drain starts.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::time::Duration;

use ambit_api::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_api::xds::proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::control::ControlPlane;
use crate::drain;

/// Who this proxy is, for `Node` (docs/wire.md §4.2).
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Kubernetes node name.
    pub node_name: String,
    /// This proxy's pod name.
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

/// One change a response carries for a resource of type `T`.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<T> {
    /// The resource named so is now this.
    Upsert(String, T),
    /// The resource named so is gone.
    Remove(String),
}

/// A resource the handler refused, and why (it goes into the NACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `Resource.name`.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Rejected {
    /// `name` refused for `reason`.
    pub fn new(name: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Rejected {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// What a proxy does with one type's resources. The client decodes them;
/// the handler applies a whole response's updates (removals first) and
/// returns those it refused. A refused resource keeps whatever the handler
/// had for it before.
pub trait Handler<T>: Send {
    /// Applies one response's updates.
    fn handle(&mut self, updates: Vec<Update<T>>) -> Vec<Rejected>;
}

impl<T, F> Handler<T> for F
where
    F: FnMut(Vec<Update<T>>) -> Vec<Rejected> + Send,
{
    fn handle(&mut self, updates: Vec<Update<T>>) -> Vec<Rejected> {
        self(updates)
    }
}

/// A handler with its type erased: decodes, then hands over.
trait TypeHandler: Send {
    fn type_url(&self) -> &'static str;
    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> (Vec<Rejected>, HashSet<String>);
}

struct Typed<T, H> {
    type_url: &'static str,
    handler: H,
    resource: PhantomData<fn() -> T>,
}

impl<T, H> TypeHandler for Typed<T, H>
where
    T: Message + Default,
    H: Handler<T>,
{
    fn type_url(&self) -> &'static str {
        self.type_url
    }

    /// The handler's rejections (decode failures included) and the names
    /// that did not apply.
    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> (Vec<Rejected>, HashSet<String>) {
        let mut rejected = Vec::new();
        let mut updates: Vec<Update<T>> = resp
            .removed_resources
            .iter()
            .map(|n| Update::Remove(n.clone()))
            .collect();
        for r in &resp.resources {
            let decoded = r
                .resource
                .as_ref()
                .ok_or_else(|| "resource has no body".to_string())
                .and_then(|body| T::decode(body.value.as_slice()).map_err(|e| e.to_string()));
            match decoded {
                Ok(t) => updates.push(Update::Upsert(r.name.clone(), t)),
                Err(e) => rejected.push(Rejected::new(&r.name, e)),
            }
        }
        rejected.extend(self.handler.handle(updates));
        let failed = rejected.iter().map(|r| r.name.clone()).collect();
        (rejected, failed)
    }
}

type Hook = Box<dyn FnMut(&str) + Send>;

/// A delta-ADS client: build it with a handler per type, then [`run`](Self::run) it.
pub struct XdsClient {
    kind: &'static str,
    info: NodeInfo,
    handlers: Vec<Box<dyn TypeHandler>>,
    /// Versions of accepted resources, by type URL then name.
    versions: HashMap<String, HashMap<String, String>>,
    on_synced: Option<Box<dyn FnMut() + Send>>,
    on_response: Option<Hook>,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("kind", &self.kind)
            .field("info", &self.info)
            .field(
                "types",
                &self
                    .handlers
                    .iter()
                    .map(|h| h.type_url())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl XdsClient {
    /// A client for a proxy of `kind` (`ztunnel`, `waypoint`: the first part
    /// of `Node.id`) described by `info`, with no types yet.
    pub fn new(kind: &'static str, info: NodeInfo) -> Self {
        XdsClient {
            kind,
            info,
            handlers: Vec::new(),
            versions: HashMap::new(),
            on_synced: None,
            on_response: None,
        }
    }

    /// Subscribes to `type_url` (wildcard), decoding its resources as `T`
    /// and handing them to `handler`.
    pub fn watch<T, H>(mut self, type_url: &'static str, handler: H) -> Self
    where
        T: Message + Default + 'static,
        H: Handler<T> + 'static,
    {
        self.handlers.push(Box::new(Typed {
            type_url,
            handler,
            resource: PhantomData,
        }));
        self
    }

    /// Called each time every subscribed type has been answered once on a
    /// stream (readiness waits for it, docs/wire.md §4.4).
    pub fn on_synced(mut self, f: impl FnMut() + Send + 'static) -> Self {
        self.on_synced = Some(Box::new(f));
        self
    }

    /// Called with the type URL of every response applied (metrics).
    pub fn on_response(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_response = Some(Box::new(f));
        self
    }

    /// Applies one response; returns the rejections for its NACK. Exposed
    /// for tests that drive a client without a control plane.
    pub fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> Vec<Rejected> {
        let Some(handler) = self
            .handlers
            .iter_mut()
            .find(|h| h.type_url() == resp.type_url)
        else {
            return vec![Rejected::new(
                resp.type_url.clone(),
                "type is not subscribed",
            )];
        };
        let (rejected, failed) = handler.apply(resp);
        let versions = self.versions.entry(resp.type_url.clone()).or_default();
        for name in &resp.removed_resources {
            versions.remove(name);
        }
        for r in resp.resources.iter().filter(|r| !failed.contains(&r.name)) {
            versions.insert(r.name.clone(), r.version.clone());
        }
        if let Some(hook) = &mut self.on_response {
            hook(&resp.type_url);
        }
        rejected
    }

    /// Versions of the accepted resources of `type_url`.
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.versions.get(type_url).cloned().unwrap_or_default()
    }

    /// Runs until `drain` starts, reconnecting to `cp` as needed.
    pub async fn run(mut self, cp: ControlPlane, drain: drain::Watch) {
        let mut backoff = Duration::from_millis(10);
        while !drain.is_draining() {
            let result = tokio::select! {
                r = self.session(&cp) => r,
                _ = drain.signaled() => return,
            };
            match result {
                Ok(()) => {
                    info!("xDS stream ended; reconnecting");
                    backoff = Duration::from_millis(10);
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "xDS stream failed; serving the last config")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = drain.signaled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
    }

    async fn session(&mut self, cp: &ControlPlane) -> Result<(), String> {
        let channel = cp.channel().map_err(|e| e.to_string())?;
        let mut client =
            AggregatedDiscoveryServiceClient::with_interceptor(channel, cp.interceptor())
                .max_decoding_message_size(200 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let types: Vec<&'static str> = self.handlers.iter().map(|h| h.type_url()).collect();
        for type_url in &types {
            let req = DeltaDiscoveryRequest {
                node: Some(node(&self.info, self.kind)),
                type_url: type_url.to_string(),
                initial_resource_versions: self.versions(type_url),
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
        let mut answered = HashSet::new();
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
            };
            let rejected = self.apply(&resp);
            let error_detail = (!rejected.is_empty()).then(|| {
                let message = rejected
                    .iter()
                    .map(Rejected::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(type_url = %resp.type_url, errors = %message, "NACK");
                Status {
                    code: 0,
                    message,
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
            let first_answer = answered.insert(resp.type_url.clone());
            if first_answer
                && types.iter().all(|t| answered.contains(*t))
                && let Some(f) = &mut self.on_synced
            {
                f();
            }
        }
    }
}
