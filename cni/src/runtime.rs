//! A CNI runtime: runs a network configuration list's plugins the way
//! libcni does for a container runtime (spec §"Network configuration lists"
//! and §"Execution protocol"). ADD runs the plugins in order, each given the
//! previous one's result as `prevResult`; CHECK and DEL give every plugin the
//! list's final result, DEL in reverse order. Each plugin is an executable
//! found in the plugin directories, called with the `CNI_*` variables and its
//! configuration (the list's `cniVersion` and `name` added) on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::spec::{CniError, Command};

/// A network configuration list and where its plugins are.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The list: `{"cniVersion", "name", "plugins": [...]}`.
    pub conflist: Value,
    /// Directories searched for plugin executables (`CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Run the plugins inside this named network namespace (`ip netns
    /// exec`): the "host" side of a test node. `None`: this process's.
    pub runtime_netns: Option<String>,
}

/// One sandbox's attachment to the network.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The sandbox's container id.
    pub container_id: String,
    /// Its network namespace's path.
    pub netns: PathBuf,
    /// The interface to create in it.
    pub ifname: String,
    /// `CNI_ARGS` pairs (the kubelet's `K8S_POD_NAMESPACE`, `K8S_POD_NAME`...).
    pub args: Vec<(String, String)>,
}

/// Why a chain did not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The list is not a list.
    #[error("network configuration list: {0}")]
    Config(String),
    /// No executable for a plugin type.
    #[error("plugin {plugin:?} not found in {dirs}")]
    NotFound {
        /// The `type`.
        plugin: String,
        /// Where it was looked for.
        dirs: String,
    },
    /// The executable could not be run.
    #[error("running plugin {plugin}: {source}")]
    Exec {
        /// The `type`.
        plugin: String,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin answered with an error.
    #[error("plugin {plugin} {command}: {error}")]
    Plugin {
        /// The `type`.
        plugin: String,
        /// The command.
        command: &'static str,
        /// Its error object.
        error: CniError,
    },
    /// The plugin's answer is not JSON.
    #[error("plugin {plugin} {command} answered {output:?}")]
    BadOutput {
        /// The `type`.
        plugin: String,
        /// The command.
        command: &'static str,
        /// What it printed.
        output: String,
    },
}

impl Chain {
    fn plugins(&self) -> Result<&Vec<Value>, RuntimeError> {
        self.conflist
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| RuntimeError::Config("no \"plugins\" array".into()))
    }

    fn locate(&self, plugin: &str) -> Result<PathBuf, RuntimeError> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| RuntimeError::NotFound {
                plugin: plugin.into(),
                dirs: self.cni_path(),
            })
    }

    fn cni_path(&self) -> String {
        self.plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// One plugin's config: its object with the list's version and name,
    /// and `prevResult` when there is one.
    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn invoke(
        &self,
        command: Command,
        plugin: &Value,
        conf: &Value,
        at: &Attachment,
    ) -> Result<Value, RuntimeError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| RuntimeError::Config("a plugin has no \"type\"".into()))?
            .to_string();
        let exe = self.locate(&kind)?;
        let mut process = match &self.runtime_netns {
            Some(ns) => {
                let mut p = Process::new("ip");
                p.args(["netns", "exec", ns]).arg(&exe);
                p
            }
            None => Process::new(&exe),
        };
        let args = at
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let mut child = process
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &at.container_id)
            .env("CNI_NETNS", &at.netns)
            .env("CNI_IFNAME", &at.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| RuntimeError::Exec {
                plugin: kind.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|source| RuntimeError::Exec {
                    plugin: kind.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| RuntimeError::Exec {
                plugin: kind.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(match serde_json::from_str::<CniError>(&text) {
                Ok(error) => RuntimeError::Plugin {
                    plugin: kind,
                    command: command.as_str(),
                    error,
                },
                Err(_) => RuntimeError::BadOutput {
                    plugin: kind,
                    command: command.as_str(),
                    output: text,
                },
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| RuntimeError::BadOutput {
            plugin: kind,
            command: command.as_str(),
            output: text,
        })
    }

    /// ADD: every plugin in order; returns the final result (to keep for
    /// CHECK and DEL).
    pub fn add(&self, at: &Attachment) -> Result<Value, RuntimeError> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins()? {
            let conf = self.plugin_conf(plugin, prev.as_ref());
            prev = Some(self.invoke(Command::Add, plugin, &conf, at)?);
        }
        prev.ok_or_else(|| RuntimeError::Config("the list has no plugins".into()))
    }

    /// CHECK: every plugin in order, each given the final ADD `result`.
    pub fn check(&self, at: &Attachment, result: &Value) -> Result<(), RuntimeError> {
        for plugin in self.plugins()? {
            let conf = self.plugin_conf(plugin, Some(result));
            self.invoke(Command::Check, plugin, &conf, at)?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, each given the final ADD `result`
    /// when the runtime still has it.
    pub fn del(&self, at: &Attachment, result: Option<&Value>) -> Result<(), RuntimeError> {
        for plugin in self.plugins()?.iter().rev() {
            let conf = self.plugin_conf(plugin, result);
            self.invoke(Command::Del, plugin, &conf, at)?;
        }
        Ok(())
    }
}

/// Where Debian's `containernetworking-plugins` puts the reference plugins.
pub const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Is `dir` holding the reference plugins a chain needs?
pub fn has_plugins(dir: &Path, names: &[&str]) -> bool {
    names.iter().all(|n| dir.join(n).is_file())
}
