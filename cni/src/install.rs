//! Putting `ambit-cni` into a node's CNI configuration, as istio-cni's
//! installer does: the plugin binary is copied into the runtime's plugin
//! directory, and an `ambit-cni` entry is appended to the node's primary
//! network configuration (the first `*.conflist` or `*.conf` by name, which
//! is the one the runtime uses). A single-plugin `.conf` becomes a
//! `.conflist` with the plugin chained after it. Writes are atomic (a
//! temporary file renamed over), so the runtime never reads half a file;
//! installing twice changes nothing, and [`uninstall`] takes the entry out.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::PLUGIN_TYPE;

/// Why the configuration could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No network configuration to chain onto (the cluster's network plugin
    /// has not written one yet).
    #[error("no *.conflist or *.conf in {0}: the cluster's network plugin writes one first")]
    NoPrimary(PathBuf),
    /// The primary configuration is not what the spec describes.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The runtime's configuration: the first `*.conflist`/`*.conf` by name.
pub fn primary(net_d: &Path) -> Result<PathBuf, InstallError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(net_d)
        .map_err(io(net_d))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary(net_d.to_path_buf()))
}

fn write_atomically(path: &Path, value: &Value) -> Result<(), InstallError> {
    let tmp = path.with_extension("ambit-tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| InstallError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The primary configuration as a list (a `.conf` converted).
fn as_list(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let conf: Value = serde_json::from_str(&text).map_err(|e| InstallError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not JSON: {e}"),
    })?;
    if conf.get("plugins").is_some_and(Value::is_array) {
        return Ok(conf);
    }
    if conf.get("type").is_none() {
        return Err(InstallError::Invalid {
            path: path.to_path_buf(),
            reason: "neither a list (\"plugins\") nor a plugin (\"type\")".into(),
        });
    }
    let mut plugin = conf.clone();
    if let Some(o) = plugin.as_object_mut() {
        o.remove("cniVersion");
        o.remove("name");
    }
    Ok(json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
        "name": conf.get("name").cloned().unwrap_or(json!("k8s-pod-network")),
        "plugins": [plugin],
    }))
}

/// Chains `plugin` (an `ambit-cni` entry: `{"type": "ambit-cni", ...}`)
/// after the primary configuration in `net_d`; returns the file written
/// (a converted `.conf` is written as `<name>.conflist` and the `.conf`
/// removed, so the runtime still picks it first).
pub fn install(net_d: &Path, plugin: &Value) -> Result<PathBuf, InstallError> {
    let path = primary(net_d)?;
    let mut list = as_list(&path)?;
    let plugins = list["plugins"]
        .as_array_mut()
        .ok_or_else(|| InstallError::Invalid {
            path: path.clone(),
            reason: "\"plugins\" is not an array".into(),
        })?;
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(plugin.clone());
    let target = if path.extension().is_some_and(|x| x == "conflist") {
        path.clone()
    } else {
        path.with_extension("conflist")
    };
    write_atomically(&target, &list)?;
    if target != path {
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(target)
}

/// Takes the `ambit-cni` entry out of the primary configuration (nothing to
/// do when it has none).
pub fn uninstall(net_d: &Path) -> Result<(), InstallError> {
    let path = primary(net_d)?;
    let mut list = as_list(&path)?;
    let Some(plugins) = list["plugins"].as_array_mut() else {
        return Ok(());
    };
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    if plugins.len() != before {
        write_atomically(&path, &list)?;
    }
    Ok(())
}

/// Copies the plugin executable `binary` into `bin_dir` as `ambit-cni`
/// (atomically: the runtime may be executing the old one).
pub fn install_binary(binary: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    std::fs::create_dir_all(bin_dir).map_err(io(bin_dir))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    let tmp = bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
    std::fs::copy(binary, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ambit-cni-install-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn chains_after_the_primary_list_once_and_uninstalls() {
        let d = dir("list");
        std::fs::write(
            d.join("10-flannel.conflist"),
            r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#,
        )
        .expect("write");
        std::fs::write(
            d.join("99-other.conf"),
            r#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#,
        )
        .expect("write");
        let ours = json!({"type": "ambit-cni", "agent_socket": "/var/run/ambit/cni.sock"});
        let written = install(&d, &ours).expect("install");
        assert_eq!(written, d.join("10-flannel.conflist"));
        install(&d, &ours).expect("again");
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&written).expect("read")).expect("json");
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["flannel", "portmap", "ambit-cni"]);
        uninstall(&d).expect("uninstall");
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&written).expect("read")).expect("json");
        assert_eq!(list["plugins"].as_array().expect("plugins").len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list_and_nothing_is_no_primary() {
        let d = dir("conf");
        assert!(matches!(
            install(&d, &json!({"type": "ambit-cni"})),
            Err(InstallError::NoPrimary(_))
        ));
        std::fs::write(
            d.join("10-bridge.conf"),
            r#"{"cniVersion":"0.4.0","name":"net","type":"bridge","bridge":"cni0"}"#,
        )
        .expect("write");
        let written = install(&d, &json!({"type": "ambit-cni"})).expect("install");
        assert_eq!(written, d.join("10-bridge.conflist"));
        assert!(!d.join("10-bridge.conf").exists());
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&written).expect("read")).expect("json");
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["plugins"][0]["bridge"], "cni0");
        assert!(list["plugins"][0].get("name").is_none());
        assert_eq!(list["plugins"][1]["type"], "ambit-cni");
        let _ = std::fs::remove_dir_all(&d);
    }
}
