//! The mesh root shared by every controller replica, kept where istiod's
//! self-signed CA keeps it: Secret `istio-ca-secret` in the control-plane
//! namespace (`ca-cert.pem`, `ca-key.pem`; type `istio.io/ca-root`). The
//! first replica to start creates it; creation is atomic in the API server,
//! so of two replicas racing one wins and the other (409) loads the
//! winner's. A cluster that ran istiod's self-signed CA keeps its root.

use std::time::Duration;

use ambit_hbone::ca::{Authority, Validity};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

/// The Secret's name (istiod's `CASecret`).
pub const CA_SECRET: &str = "istio-ca-secret";

/// Why the shared root could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The API server refused or could not be reached.
    #[error("Secret {namespace}/{CA_SECRET}: {source}")]
    Api {
        /// The control-plane namespace.
        namespace: String,
        /// Why.
        source: kube::Error,
    },
    /// The Secret exists but does not hold a usable root.
    #[error("Secret {namespace}/{CA_SECRET}: {message}")]
    Invalid {
        /// The control-plane namespace.
        namespace: String,
        /// What is wrong with it.
        message: String,
    },
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.trim().is_empty())
}

fn load(secret: &Secret, namespace: &str, trust_domain: &str) -> Result<Authority, CaSecretError> {
    let invalid = |message: String| CaSecretError::Invalid {
        namespace: namespace.to_string(),
        message,
    };
    let cert = text(secret, "ca-cert.pem").ok_or_else(|| invalid("no ca-cert.pem".into()))?;
    let key = text(secret, "ca-key.pem").ok_or_else(|| invalid("no ca-key.pem".into()))?;
    Authority::load_root(trust_domain, &cert, &key).map_err(|e| invalid(e.to_string()))
}

/// A new self-signed mesh root, valid for ten years: what a controller
/// creates when it is given no CA.
pub fn new_mesh_root(trust_domain: &str) -> Result<Authority, ambit_hbone::ca::AuthorityError> {
    Authority::new_root(
        trust_domain,
        "ambit mesh root",
        Validity::starting_now(Duration::from_secs(10 * 365 * 86400)),
    )
}

/// The root in Secret `namespace/istio-ca-secret`, created (with
/// [`new_mesh_root`]) if there is none.
pub async fn shared_root(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<Authority, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let failed = |source| CaSecretError::Api {
        namespace: namespace.to_string(),
        source,
    };
    if let Some(existing) = api.get_opt(CA_SECRET).await.map_err(failed)? {
        tracing::info!(%namespace, secret = CA_SECRET, "mesh root loaded");
        return load(&existing, namespace, trust_domain);
    }
    let authority = new_mesh_root(trust_domain).map_err(|e| CaSecretError::Invalid {
        namespace: namespace.to_string(),
        message: format!("creating a root: {e}"),
    })?;
    let bytes = |s: String| ByteString(s.into_bytes());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(
            [
                ("ca-cert.pem", authority.certificate_pem()),
                ("ca-key.pem", authority.key_pem()),
                ("cert-chain.pem", String::new()),
                ("key.pem", String::new()),
                ("root-cert.pem", String::new()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), bytes(v)))
            .collect(),
        ),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(%namespace, secret = CA_SECRET, "new mesh root created and stored");
            Ok(authority)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let theirs = api.get(CA_SECRET).await.map_err(failed)?;
            tracing::info!(%namespace, secret = CA_SECRET, "mesh root created by another replica; loaded");
            load(&theirs, namespace, trust_domain)
        }
        Err(e) => Err(failed(e)),
    }
}
