//! Istio ztunnel's local config file (docs/wire.md §5): `workloads`, `services`,
//! `policies`, camelCase keys, unknown keys rejected.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::authz::Authorization;
use super::{Service, Workload};

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    /// Workloads.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// L4 policies.
    #[serde(default)]
    pub policies: Vec<Authorization>,
}

/// A local config that could not be read; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not fit the format (the message carries line and field).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// serde_yaml's message with location.
        message: String,
    },
    /// A workload names a service key without a `/`.
    #[error("{file}: workload {uid}: service key {key:?} must be namespace/hostname")]
    BadServiceKey {
        /// The file.
        file: String,
        /// The workload.
        uid: String,
        /// The key.
        key: String,
    },
}

impl LocalConfig {
    /// Parses `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, LocalConfigError> {
        let cfg: LocalConfig = serde_yaml::from_str(text).map_err(|e| LocalConfigError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        for w in &cfg.workloads {
            if let Some(key) = w.services.keys().find(|k| !k.contains('/')) {
                return Err(LocalConfigError::BadServiceKey {
                    file: file.to_string(),
                    uid: w.uid.clone(),
                    key: key.clone(),
                });
            }
        }
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, LocalConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
workloads:
- uid: k1//v1/Pod/demo/client-0
  name: client-0
  namespace: demo
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: node-a
  services:
    "demo/echo.demo.svc.cluster.local": {8080: 9090}
services:
- {name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, vips: ["/10.96.0.10"], ports: {8080: 9090}}
policies:
- {name: only-client, namespace: demo, scope: Namespace, action: Allow, dryRun: false,
   rules: [[[{principals: [!Exact cluster.local/ns/demo/sa/client]}]]]}
"#;

    #[test]
    fn parses_istio_wire_example() {
        let cfg = LocalConfig::parse(EXAMPLE, "example.yaml").unwrap();
        assert_eq!(
            cfg.workloads[0].identity().unwrap().to_string(),
            "spiffe://cluster.local/ns/demo/sa/client"
        );
        assert_eq!(
            cfg.services[0].vip_addrs().collect::<Vec<_>>(),
            vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(cfg.policies[0].key(), "demo/only-client");
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = LocalConfig::parse("workloads:\n- uid: x\n  namespace: a\n  workloadIps: []\n  services: {}\n  color: blue\n", "bad.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("bad.yaml:") && msg.contains("color"),
            "{msg}"
        );
        let err = LocalConfig::parse(
            "workloads:\n- uid: x\n  namespace: a\n  workloadIps: []\n  services: {nokey: {}}\n",
            "k.yaml",
        )
        .unwrap_err();
        assert!(
            matches!(err, LocalConfigError::BadServiceKey { .. }),
            "{err}"
        );
    }
}
