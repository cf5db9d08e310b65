//! A proxy's process environment, as Istio's proxies read it
//! (docs/wire.md §3.4): where the control plane is and how to trust and
//! authenticate to it (`XDS_ADDRESS`, `CA_ADDRESS`, `XDS_ROOT_CA`,
//! `CA_ROOT_CA`, `ALT_XDS_HOSTNAME`, `AUTH_TOKEN`, `CLUSTER_ID`), the
//! certificate lifetime (`SECRET_TTL`), who the proxy is for its xDS `Node`,
//! and logging (`RUST_LOG`). ztunnel and the waypoint read the same variables
//! the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::control::ControlPlane;
use crate::xds::NodeInfo;

/// An environment variable, set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Istio's default control-plane address (docs/wire.md §3.4): istiod's
/// Service inside Kubernetes, else localhost.
pub fn default_control_plane() -> String {
    if env("KUBERNETES_SERVICE_HOST").is_some() {
        "https://istiod.istio-system.svc:15012".into()
    } else {
        "https://localhost:15012".into()
    }
}

/// A value that is a file path when such a file exists, else the value itself.
fn file_or_literal(v: String) -> anyhow::Result<String> {
    if Path::new(&v).is_file() {
        std::fs::read_to_string(&v).with_context(|| format!("reading {v}"))
    } else {
        Ok(v)
    }
}

/// `SECRET_TTL`: seconds, or an Istio duration (`24h`, `90m`); default 24 h.
pub fn secret_ttl() -> anyhow::Result<Duration> {
    let Some(v) = env("SECRET_TTL") else {
        return Ok(Duration::from_secs(24 * 3600));
    };
    v.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| ambit_api::duration::parse(&v))
        .with_context(|| format!("SECRET_TTL={v:?}: want seconds, or a duration like 24h"))
}

fn with_scheme(a: String) -> String {
    if a.contains("://") {
        a
    } else {
        format!("https://{a}")
    }
}

/// Istio's default locations, relative to the working directory (docs/wire.md §3.4).
const DEFAULT_ROOT: &str = "./var/run/secrets/istio/root-cert.pem";
const DEFAULT_TOKEN: &str = "./var/run/secrets/tokens/istio-token";

fn existing(path: &str) -> Option<String> {
    Path::new(path).is_file().then(|| path.to_string())
}

/// The control plane at `address` as Istio's variables describe it: the
/// root from `root_var` (or `XDS_ROOT_CA`, or the default file), `AUTH_TOKEN`,
/// `ALT_XDS_HOSTNAME`, the cluster id (docs/wire.md §3.4).
pub fn control_plane(address: String, root_var: &str) -> anyhow::Result<ControlPlane> {
    let root_pem = env(root_var)
        .or_else(|| env("XDS_ROOT_CA"))
        .or_else(|| existing(DEFAULT_ROOT))
        .map(file_or_literal)
        .transpose()?;
    Ok(ControlPlane {
        address: with_scheme(address),
        root_pem,
        tls_name: env("ALT_XDS_HOSTNAME"),
        token: env("AUTH_TOKEN").filter(|t| !Path::new(t).is_file()),
        token_file: env("AUTH_TOKEN")
            .or_else(|| existing(DEFAULT_TOKEN))
            .filter(|t| Path::new(t).is_file())
            .map(PathBuf::from),
        cluster_id: env("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
    })
}

/// This proxy's xDS `Node` from Istio's downward-API variables (`NODE_NAME`,
/// `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`), with `pod_name` and
/// `pod_namespace` as the defaults when a variable is unset.
pub fn node_info(pod_name: &str, pod_namespace: &str) -> NodeInfo {
    NodeInfo {
        node_name: env("NODE_NAME").unwrap_or_default(),
        pod_name: env("POD_NAME").unwrap_or_else(|| pod_name.to_string()),
        pod_namespace: env("POD_NAMESPACE").unwrap_or_else(|| pod_namespace.to_string()),
        instance_ip: env("INSTANCE_IP").unwrap_or_else(|| "1.1.1.1".into()),
    }
}

/// Installs a proxy's logging: [`log_filter`] on a fmt layer writing to
/// `writer` (plain text, or JSON with `LOG_FORMAT=json`), `default` when
/// `RUST_LOG` is unset. The `ztunnel` and
/// `waypoint` binaries log to stdout (as Istio's do); `ambit ztunnel` to
/// stderr, like the rest of the CLI.
pub fn init_logging<W>(writer: W, default: tracing::Level)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    // Colours only for a person at a terminal: a container's log (what
    // `kubectl logs` shows) gets plain text.
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal();
    // `LOG_FORMAT=json`: one JSON object per line (Istio ztunnel's setting).
    let json = env("LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        tracing_subscriber::registry()
            .with(
                layer
                    .event_format(crate::json_log::JsonFormat)
                    .with_filter(log_filter(default)),
            )
            .init();
    } else {
        tracing_subscriber::registry()
            .with(layer.with_ansi(ansi).with_filter(log_filter(default)))
            .init();
    }
}

/// The log filter from `RUST_LOG` (`info`, `warn,access=info`,
/// `ztunnel::inbound=debug`: a default level and per-target levels), else
/// `default`. Plain targets only, no span or field filters: that keeps the
/// regex engine out of the proxies' binaries (~0.4 MiB of code resident in
/// every node's memory). An invalid value is reported and `default` is used.
pub fn log_filter(default: tracing::Level) -> tracing_subscriber::filter::Targets {
    parse_log_filter(std::env::var("RUST_LOG").ok().as_deref(), default)
}

fn parse_log_filter(
    value: Option<&str>,
    level: tracing::Level,
) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::Targets;
    let default = || Targets::new().with_default(level);
    match value {
        None => default(),
        Some(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={v:?} is not a valid filter ({e}); logging at {level}");
            default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::parse_log_filter;

    #[test]
    fn log_filter_takes_a_default_and_per_target_levels() {
        let f = parse_log_filter(Some("warn,access=info,ztunnel::inbound=debug"), Level::INFO);
        assert!(f.would_enable("access", &Level::INFO));
        assert!(!f.would_enable("access", &Level::DEBUG));
        assert!(f.would_enable("ztunnel::inbound", &Level::DEBUG));
        assert!(!f.would_enable("ztunnel::outbound", &Level::INFO));
        assert!(f.would_enable("ztunnel::outbound", &Level::WARN));
    }

    #[test]
    fn log_filter_falls_back_to_info() {
        for value in [None, Some("access=loud")] {
            let f = parse_log_filter(value, Level::INFO);
            assert!(f.would_enable("ztunnel", &Level::INFO), "{value:?}");
            assert!(!f.would_enable("ztunnel", &Level::DEBUG), "{value:?}");
        }
    }
}
