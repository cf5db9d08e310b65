//! How ztunnel reaches the control plane (docs/wire.md §3.4): one gRPC channel
//! for xDS and the CA, TLS checked against the mesh root and the dialled name,
//! and on every call `authorization: Bearer <token>` plus `clusterid`.
//!
//! The TLS is ours rather than tonic's: as Istio's ztunnel, TLS 1.3 only with
//! the AES-GCM suites and ALPN `h2` (tonic's would also offer TLS 1.2 and
//! ChaCha20, and its TLS feature compiled rustls' TLS 1.2 into the node proxy).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

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
    /// Bad address.
    #[error("control plane {address}: {source}")]
    Endpoint {
        /// The address.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// Bad TLS settings: the root or the server name.
    #[error("control plane {address}: {why}")]
    Tls {
        /// The address.
        address: String,
        /// What is wrong.
        why: String,
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
        // §3.4: 5 s TCP connect timeout, pings every 30 s (10 s timeout).
        let endpoint = |address: String| {
            Endpoint::from_shared(address).map_err(err).map(|ep| {
                ep.connect_timeout(Duration::from_secs(5))
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
            })
        };
        let uri: http::Uri = self.address.parse().map_err(|e| ControlPlaneError::Tls {
            address: self.address.clone(),
            why: format!("address: {e}"),
        })?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(self.tls(&uri)?),
            _ => None,
        };
        let host = uri.host().unwrap_or_default();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        // One connector for both schemes, returning one type, so tonic's
        // and h2's client code is compiled once (not once per stream type).
        // Dials (host, port), then the TLS handshake for https; tonic calls
        // it for every (re)connect and bounds it with the connect timeout.
        let connect = tower::service_fn(move |_: http::Uri| {
            let (tls, host) = (tls.clone(), host.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let io: Box<dyn ControlIo> = match tls {
                    Some((connector, name)) => Box::new(connector.connect(name, tcp).await?),
                    None => Box::new(tcp),
                };
                Ok::<_, std::io::Error>(TokioIo::new(io))
            }
        });
        // tonic refuses an `https` endpoint unless its own TLS does the
        // connecting, so it is given `http`; the requests still name the
        // real scheme (the origin).
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let ep = endpoint(format!("http://{authority}"))?.origin(uri);
        Ok(ep.connect_with_connector_lazy(connect))
    }

    /// The TLS connector and the name the server's certificate must carry
    /// (`tls_name`, else the host of `uri`, the parsed address).
    fn tls(
        &self,
        uri: &http::Uri,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), ControlPlaneError> {
        let tls_err = |why: String| ControlPlaneError::Tls {
            address: self.address.clone(),
            why,
        };
        let root = self
            .root_pem
            .as_ref()
            .ok_or_else(|| ControlPlaneError::NoRoot(self.address.clone()))?;
        let config = client_tls(root).map_err(tls_err)?;
        let host = uri
            .host()
            .ok_or_else(|| tls_err("the address has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = self.tls_name.clone().unwrap_or_else(|| host.to_string());
        let name = ServerName::try_from(name.clone())
            .map_err(|e| tls_err(format!("server name {name:?}: {e}")))?;
        Ok((tokio_rustls::TlsConnector::from(config), name))
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

/// A connection to the control plane, plain or TLS.
trait ControlIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> ControlIo for T {}

/// The control plane's TLS client settings (docs/wire.md §3.4: the versions and
/// suites of §2.1, ALPN `h2`, server authentication only): the server's
/// certificate must chain to a root in `root_pem`.
fn client_tls(root_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = ambit_hbone::pem::certificates(root_pem)
        .map_err(|e| format!("no root certificate in the PEM: {e}"))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("root certificate: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(ambit_hbone::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ambit_hbone::tls::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
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
    fn control_plane_tls_is_istios_tls13_with_h2() {
        let root = ambit_hbone::ca::Authority::new_root(
            "cluster.local",
            "root",
            ambit_hbone::ca::Validity::starting_now(Duration::from_secs(3600)),
        )
        .expect("root");
        let config = client_tls(&root.certificate_pem()).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let suites: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        // Only TLS 1.3 suites: TLS 1.2 cannot be negotiated.
        assert_eq!(
            suites,
            [
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
        );
        let e = client_tls("not a certificate").expect_err("no root");
        assert!(e.contains("no root certificate"), "{e}");
    }

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
