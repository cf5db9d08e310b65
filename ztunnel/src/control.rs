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
    /// Bearer token (node credential), given literally.
    pub token: Option<String>,
    /// A file holding the token, re-read on every call as Istio's ztunnel
    /// does (projected service-account tokens rotate). Wins over `token`.
    pub token_file: Option<std::path::PathBuf>,
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
            token_file: self.token_file.clone(),
            cluster_id: self.cluster_id.parse().ok(),
        }
    }
}

/// Puts `authorization` and `clusterid` on each request.
#[derive(Clone, Debug)]
pub struct CredentialInterceptor {
    token: Option<AsciiMetadataValue>,
    token_file: Option<std::path::PathBuf>,
    cluster_id: Option<AsciiMetadataValue>,
}

impl Interceptor for CredentialInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let token = match &self.token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f).map_err(|e| {
                    tonic::Status::unauthenticated(format!("reading token {}: {e}", f.display()))
                })?;
                Some(format!("Bearer {t}").parse().map_err(|_| {
                    tonic::Status::unauthenticated(format!("token in {} is not ASCII", f.display()))
                })?)
            }
            None => self.token.clone(),
        };
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", t);
            if let Some(c) = &self.cluster_id {
                req.metadata_mut().insert("clusterid", c.clone());
            }
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_read_on_every_call() {
        let f = std::env::temp_dir().join(format!("ambit-token-{}", std::process::id()));
        std::fs::write(&f, "one").unwrap();
        let cp = ControlPlane {
            address: "http://127.0.0.1:1".into(),
            root_pem: None,
            tls_name: None,
            token: None,
            token_file: Some(f.clone()),
            cluster_id: "Kubernetes".into(),
        };
        let mut i = cp.interceptor();
        let auth = |i: &mut CredentialInterceptor| {
            i.call(tonic::Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(auth(&mut i), "Bearer one");
        std::fs::write(&f, "two").unwrap();
        assert_eq!(auth(&mut i), "Bearer two");
        std::fs::remove_file(&f).unwrap();
        assert_eq!(
            i.call(tonic::Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
