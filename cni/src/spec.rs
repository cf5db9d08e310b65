//! The CNI specification's wire types (version 1.0.0,
//! <https://www.cni.dev/docs/spec/>): what a runtime hands a plugin (the
//! network configuration on stdin, the `CNI_*` environment variables) and
//! what a plugin answers (a result, or an error, on stdout).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The spec versions this plugin speaks (`VERSION`).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Error codes the spec reserves (§ "Error").
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: a transient condition (the node agent is not up).
    pub const TRY_AGAIN_LATER: u32 = 11;
}

/// The operation a runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it (must succeed when already gone).
    Del,
    /// Is it still attached as configured?
    Check,
    /// Which spec versions the plugin supports.
    Version,
}

impl Command {
    /// `ADD`, `DEL`, `CHECK`, `VERSION`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADD" => Some(Command::Add),
            "DEL" => Some(Command::Del),
            "CHECK" => Some(Command::Check),
            "VERSION" => Some(Command::Version),
            _ => None,
        }
    }

    /// The spec's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: a path to the container's network namespace (may be
    /// empty on DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`): the kubelet passes `K8S_POD_NAMESPACE`,
    /// `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where plugins are.
    pub path: String,
}

impl Invocation {
    /// Reads the variables the spec requires for `command` through `var`.
    pub fn from_env(
        command: Command,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CniError> {
        let required = |name: &str| {
            var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                CniError::new(codes::INVALID_ENVIRONMENT, format!("{name} is not set"))
            })
        };
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        // The netns may be gone at DEL; the spec lets it be empty then.
        let netns = match command {
            Command::Del => var("CNI_NETNS").unwrap_or_default(),
            _ => required("CNI_NETNS")?,
        };
        Ok(Invocation {
            container_id,
            netns,
            ifname,
            args: parse_args(&var("CNI_ARGS").unwrap_or_default()),
            path: var("CNI_PATH").unwrap_or_default(),
        })
    }

    /// The pod's `namespace/name` from `CNI_ARGS`, when a kubelet called.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?.as_str(),
            self.args.get("K8S_POD_NAME")?.as_str(),
        ))
    }
}

/// `K=V;K=V` into a map (entries without `=` are dropped).
pub fn parse_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The common part of every plugin's network configuration; the rest of the
/// object is the plugin's own.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NetConf {
    /// `cniVersion`.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugin (`type` is the executable's name).
    #[serde(rename = "type")]
    pub plugin: String,
    /// The previous plugin's result, in a chain (ADD, CHECK, DEL).
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<serde_json::Value>,
    /// The plugin's own fields.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// The IPs in a result (`ips[].address`, CIDR form), without prefixes.
pub fn result_ips(result: &serde_json::Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(|a| a.as_str()))
        .map(|a| a.split_once('/').map_or(a, |(ip, _)| ip).to_string())
        .collect()
}

/// A plugin's error answer (printed on stdout, exit status non-zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// `cniVersion` of the answer.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// A spec code (1–99 reserved) or a plugin's own (100+).
    pub code: u32,
    /// What went wrong.
    pub msg: String,
    /// More detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` saying `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: "1.0.0".into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_and_args_as_the_kubelet_passes_them() {
        let env: BTreeMap<&str, &str> = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=abc",
            ),
        ]
        .into();
        let var = |k: &str| env.get(k).map(|v| v.to_string());
        let inv = Invocation::from_env(Command::Add, var).expect("env");
        assert_eq!(inv.pod(), Some(("demo", "a")));
        let missing = Invocation::from_env(Command::Add, |k: &str| {
            (k != "CNI_NETNS")
                .then(|| env.get(k).map(|v| v.to_string()))
                .flatten()
        })
        .expect_err("netns required on ADD");
        assert_eq!(missing.code, codes::INVALID_ENVIRONMENT);
        // DEL tolerates a namespace that is already gone.
        assert!(
            Invocation::from_env(Command::Del, |k: &str| {
                (k != "CNI_NETNS")
                    .then(|| env.get(k).map(|v| v.to_string()))
                    .flatten()
            })
            .is_ok()
        );
    }

    #[test]
    fn config_keeps_the_plugins_own_fields_and_prev_result() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","agent_socket":"/s",
                "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.88.0.2/16"}]}}"#,
        )
        .expect("conf");
        assert_eq!(conf.rest["agent_socket"], "/s");
        assert_eq!(
            result_ips(conf.prev_result.as_ref().expect("prev")),
            vec!["10.88.0.2"]
        );
    }
}
