//! How ztunnel reaches the control plane (istio-wire §3.4): one gRPC channel
//! for xDS and the CA, TLS checked against the mesh root and the dialled name,
//! and on every call `authorization: Bearer <token>` plus `clusterid`.

use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where and how to reach the controller.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `https://host:15012` (or `http://` for plaintext debugging).
    pub address: String,
    /// Root(s) the server certificate must chain to (PEM); required for https.
    pub root_pem: Option<String>,
    /// Name the server certificate must carry (default: the address host).
    pub tls_name: Option<String>,
    /// Bearer token (node credential).
    pub token: Option<String>,
    /// Sent as `clusterid`.
    pub cluster_id: String,
}

/// The control plane configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// Bad address or TLS settings.
    #[error("control plane {address}: {source}")]
    Endpoint {
        /// The address.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// https without a root.
    #[error("control plane {0}: https needs a root certificate (CA_ROOT_CA / XDS_ROOT_CA)")]
    NoRoot(String),
    /// The client could not be started.
    #[error("control plane client: {0}")]
    Client(String),
}

impl ControlPlane {
    /// A lazily connecting channel (reconnects by itself).
    pub fn channel(&self) -> Result<Channel, ControlPlaneError> {
        let err = |source| ControlPlaneError::Endpoint {
            address: self.address.clone(),
            source,
        };
        let mut ep = Endpoint::from_shared(self.address.clone())
            .map_err(err)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if self.address.starts_with("https://") {
            let root = self
                .root_pem
                .as_ref()
                .ok_or_else(|| ControlPlaneError::NoRoot(self.address.clone()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root));
            if let Some(name) = &self.tls_name {
                tls = tls.domain_name(name.clone());
            }
            ep = ep.tls_config(tls).map_err(err)?;
        }
        Ok(ep.connect_lazy())
    }

    /// Adds the credential headers to every call.
    pub fn interceptor(&self) -> CredentialInterceptor {
        CredentialInterceptor {
            token: self
                .token
                .as_ref()
                .and_then(|t| format!("Bearer {t}").parse().ok()),
            cluster_id: self.cluster_id.parse().ok(),
        }
    }
}

/// Puts `authorization` and `clusterid` on each request.
#[derive(Clone, Debug)]
pub struct CredentialInterceptor {
    token: Option<AsciiMetadataValue>,
    cluster_id: Option<AsciiMetadataValue>,
}

impl Interceptor for CredentialInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
            if let Some(c) = &self.cluster_id {
                req.metadata_mut().insert("clusterid", c.clone());
            }
        }
        Ok(req)
    }
}
