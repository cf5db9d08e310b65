//! Who is calling: every xDS and CA call carries `authorization: Bearer
//! <token>` (docs/wire.md §3.4). A [`NodeAuthenticator`] maps it to the node the
//! caller runs on; the CA then signs only identities of pods on that node.
//!
//! Local mode uses per-node bootstrap tokens minted by the controller (the
//! local cluster hands each ztunnel its own). Cluster mode reviews the
//! projected service-account token with the Kubernetes TokenReview API.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tonic::Status;
use tonic::metadata::MetadataMap;

/// An authenticated caller: a node proxy, a workload, or both (a node
/// proxy's own token names its service account too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The node it serves, when it is a trusted node proxy: only then may it
    /// ask for certificates on behalf of pods (`ImpersonatedIdentity`).
    pub node: Option<String>,
    /// The Kubernetes service account its credential proves, when it has
    /// one: the identity istiod signs for a caller acting as itself.
    pub service_account: Option<ServiceAccount>,
}

/// A Kubernetes service account, as a TokenReview names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccount {
    /// Reads `system:serviceaccount:NS:NAME`; None for any other user.
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.node, &self.service_account) {
            (Some(node), _) => write!(f, "node {node}"),
            (None, Some(sa)) => write!(f, "serviceaccount {}/{}", sa.namespace, sa.name),
            (None, None) => f.write_str("unknown caller"),
        }
    }
}

/// Authenticates a call by its metadata.
#[tonic::async_trait]
pub trait NodeAuthenticator: Send + Sync + 'static {
    /// The caller, or `Unauthenticated` saying why not.
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status>;
}

/// The bearer token of a call, if any.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no authorization header"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("authorization is not a Bearer token"))
}

/// Local-mode credentials: one random token per node, and (for the local
/// cluster's waypoints) per service account, standing in for the projected
/// tokens a TokenReview would check. Clones share the table: a token minted
/// after the controller started is accepted at once.
#[derive(Clone, Debug, Default)]
pub struct BootstrapTokens {
    by_token: Arc<RwLock<HashMap<String, Caller>>>,
}

impl BootstrapTokens {
    fn add(&self, token: String, caller: Caller) {
        self.by_token
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, caller);
    }

    /// Accepts an existing `token` for `node` (a restarted controller keeps
    /// the tokens it handed out).
    pub fn insert(&self, token: &str, node: &str) {
        self.add(
            token.to_string(),
            Caller {
                node: Some(node.to_string()),
                service_account: None,
            },
        );
    }

    /// Mints a token for `node` (32 random bytes, hex) and returns it.
    pub fn mint(&self, node: &str) -> String {
        let token = hex_token();
        self.insert(&token, node);
        token
    }

    /// Mints a token proving service account `namespace/name` (a caller
    /// acting as itself, as a waypoint does) and returns it.
    pub fn mint_service_account(&self, namespace: &str, name: &str) -> String {
        let token = hex_token();
        self.add(
            token.clone(),
            Caller {
                node: None,
                service_account: Some(ServiceAccount {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }),
            },
        );
        token
    }
}

fn hex_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl NodeAuthenticator for BootstrapTokens {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        self.by_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(t, _)| constant_time_eq(t.as_bytes(), token.as_bytes()))
            .map(|(_, caller)| caller.clone())
            .ok_or_else(|| Status::unauthenticated("unknown bootstrap token"))
    }
}

/// Cluster-mode credentials: the caller's projected service-account token
/// (audience `istio-ca`) reviewed by the API server. Any service account is
/// a caller acting as itself (a waypoint, a dedicated-mode proxy); the
/// configured node accounts (the ztunnel DaemonSet's, Istio's
/// `CA_TRUSTED_NODE_ACCOUNTS`) are node proxies for the node the token is
/// bound to (`authentication.kubernetes.io/node-name`, set for pod-bound
/// tokens since Kubernetes 1.30).
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    node_accounts: Vec<String>,
    audience: String,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("node_accounts", &self.node_accounts)
            .finish_non_exhaustive()
    }
}

/// The extra key naming the node a pod-bound token belongs to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

impl TokenReviewAuthenticator {
    /// Reviews tokens for `audience`; `node_accounts` (e.g.
    /// `system:serviceaccount:istio-system:ztunnel`) are node proxies.
    pub fn new(client: kube::Client, node_accounts: Vec<String>, audience: &str) -> Self {
        TokenReviewAuthenticator {
            client,
            node_accounts,
            audience: audience.to_string(),
        }
    }
}

#[tonic::async_trait]
impl NodeAuthenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let token = bearer_token(metadata)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let result = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview failed: {e}")))?;
        let status = result.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "token not authenticated: {}",
                status.error.unwrap_or_default()
            )));
        }
        let user = status.user.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        let Some(service_account) = ServiceAccount::from_username(&name) else {
            return Err(Status::permission_denied(format!(
                "{name} is not a Kubernetes service account"
            )));
        };
        if !self.node_accounts.contains(&name) {
            // A workload acting as itself: it may only get its own identity.
            return Ok(Caller {
                node: None,
                service_account: Some(service_account),
            });
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|e| e.get(NODE_NAME_EXTRA))
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "token of {name} is not bound to a node ({NODE_NAME_EXTRA} missing)"
                ))
            })?;
        Ok(Caller {
            node: Some(node),
            service_account: Some(service_account),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_name_their_node() {
        let t = BootstrapTokens::default();
        let tok = t.mint("node1");
        let mut md = MetadataMap::new();
        md.insert("authorization", format!("Bearer {tok}").parse().unwrap());
        assert_eq!(
            t.authenticate(&md).await.unwrap().node.as_deref(),
            Some("node1")
        );
        let mut md = MetadataMap::new();
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            t.authenticate(&md).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(t.authenticate(&MetadataMap::new()).await.is_err());
    }

    #[tokio::test]
    async fn service_account_tokens_minted_after_start_are_accepted() {
        let running = BootstrapTokens::default();
        // The controller holds a clone; the local cluster mints later.
        let minter = running.clone();
        let tok = minter.mint_service_account("demo", "waypoint");
        let mut md = MetadataMap::new();
        md.insert("authorization", format!("Bearer {tok}").parse().unwrap());
        let caller = running.authenticate(&md).await.unwrap();
        assert_eq!(caller.node, None, "a service account may not impersonate");
        assert_eq!(
            caller.service_account,
            Some(ServiceAccount {
                namespace: "demo".into(),
                name: "waypoint".into()
            })
        );
    }

    #[test]
    fn service_account_usernames() {
        let sa = ServiceAccount::from_username("system:serviceaccount:shop:web").expect("sa");
        assert_eq!((sa.namespace.as_str(), sa.name.as_str()), ("shop", "web"));
        for not_sa in [
            "system:admin",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:shop:",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(ServiceAccount::from_username(not_sa), None, "{not_sa}");
        }
    }
}
