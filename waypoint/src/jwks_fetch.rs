//! Fetching a `jwksUri`, as a waypoint must in a mesh: the host is a mesh
//! Service (one of its endpoints, reached over HBONE when it is in the mesh,
//! so STRICT mTLS and L4 policy apply as to any other client), an IP, or a
//! name outside the mesh resolved with DNS. `https://` is verified against
//! the system roots plus the mesh root (a JWKS server in the mesh may carry a
//! certificate from the mesh CA).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use ambit_api::model::{Protocol, ProxyState};
use ambit_hbone::bundle::TrustBundle;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::upstream::Target;

/// A parsed `jwksUri`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksLocation {
    /// `https://`.
    pub tls: bool,
    /// Host as written (name or IP).
    pub host: String,
    /// Port (80 / 443 when not written).
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl JwksLocation {
    /// Reads an `http://` or `https://` URI.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let parsed: http::Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
        let tls = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{uri:?} is not an http(s) URL")),
        };
        let host = parsed
            .host()
            .ok_or_else(|| format!("{uri:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(JwksLocation {
            tls,
            port: parsed.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: parsed
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            host,
        })
    }

    /// Where to connect: a mesh Service endpoint (HBONE when it is in the
    /// mesh), a mesh workload by IP, or `None` for a name to look up in DNS.
    pub fn mesh_target(&self, state: &ProxyState) -> Result<Option<Target>, String> {
        let endpoint = |ip, port, w: Option<&ambit_api::model::Workload>| Target {
            addr: SocketAddr::new(ip, port),
            identity: w
                .and_then(|w| w.identity().ok())
                .map(|i| i.to_string())
                .unwrap_or_default(),
            hbone: w.is_some_and(|w| w.protocol == Protocol::Hbone),
            http2: false,
        };
        if let Ok(ip) = self.host.parse() {
            let w = state.workload_by_ip(ip);
            return Ok(Some(endpoint(ip, self.port, w.map(|w| w.as_ref()))));
        }
        let Some(svc) = state.services().find(|s| s.hostname == self.host) else {
            return Ok(None);
        };
        let eps = state.endpoints(svc, self.port);
        let ep = eps
            .first()
            .ok_or_else(|| format!("Service {} has no endpoint", self.host))?;
        Ok(Some(endpoint(
            ep.addr.ip(),
            ep.addr.port(),
            Some(&ep.workload),
        )))
    }

    /// The TLS client for `https://`: system roots and the mesh's.
    pub fn tls_connector(
        &self,
        mesh_roots: Option<&TrustBundle>,
    ) -> Result<tokio_rustls::TlsConnector, String> {
        let mut roots = RootCertStore::empty();
        for c in system_roots().iter() {
            let _ = roots.add(c.clone());
        }
        for c in mesh_roots.map(|b| b.roots()).unwrap_or_default() {
            let _ = roots.add(c.clone());
        }
        if roots.is_empty() {
            return Err("no trusted roots: neither system certificates nor a mesh root".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone()).map_err(|e| format!("{}: {e}", self.host))
    }
}

/// The system's trusted roots (`/etc/ssl/certs` on Debian), read once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "system root certificates: partly unreadable");
        }
        found.certs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = JwksLocation::parse("https://jwks.store.svc.cluster.local/keys?x=1").expect("ok");
        assert_eq!(
            l,
            JwksLocation {
                tls: true,
                host: "jwks.store.svc.cluster.local".into(),
                port: 443,
                path: "/keys?x=1".into(),
            }
        );
        let l = JwksLocation::parse("http://10.0.0.1:8000").expect("ok");
        assert_eq!((l.tls, l.port, l.path.as_str()), (false, 8000, "/"));
        let l = JwksLocation::parse("https://[::1]:8443/k").expect("ok");
        assert_eq!(l.host, "::1");
        assert!(JwksLocation::parse("ftp://x/keys").is_err());
        assert!(JwksLocation::parse("/keys").is_err());
    }
}
