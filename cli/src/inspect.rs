//! `ambit ztunnel-config`, `ambit proxy-status` and `ambit version`, shaped
//! like `istioctl`'s: they read the admin endpoints the proxies expose
//! (ztunnel's and the waypoint's `/config_dump`, readiness) on a running
//! local cluster (found through the `cluster.json` that `ambit up` writes)
//! and print a table, JSON or YAML.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ambit_cluster::info::ClusterInfo;
use anyhow::{Context, bail};
use serde_json::Value;

/// Output format, as `istioctl -o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// The admin endpoint's JSON.
    Json,
    /// The same as YAML.
    Yaml,
}

/// What `ztunnel-config` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ZtunnelSection {
    /// Workloads ztunnel knows (every pod of the mesh and outside it).
    Workloads,
    /// Services with their VIPs, waypoints and endpoint counts.
    Services,
    /// L4 AuthorizationPolicies in ztunnel's form.
    Policies,
    /// The workload certificates this ztunnel holds.
    Certificates,
    /// Open inbound connections and what they were admitted on.
    Connections,
    /// Everything (`-o json|yaml` only).
    All,
}

/// Which local cluster (`--run ambit-<pid>`; the newest when not given).
pub fn local_cluster(run: Option<&str>) -> anyhow::Result<ClusterInfo> {
    let running = ambit_cluster::info::running();
    match run {
        Some(r) => running.into_iter().find(|c| c.run == r).with_context(|| {
            format!("no running local cluster named {r}: `ambit proxy-status` lists them")
        }),
        None => running.into_iter().next().context(
            "no local cluster is running: start one with `sudo ambit up -f DIR` \
             (the commands read /run/ambit/*/cluster.json, written by `ambit up`; run them as root)",
        ),
    }
}

/// GETs `path` from `addr` inside the network namespace `netns` and returns
/// the body of a 200 answer.
pub async fn admin_text(netns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let reply = ambit_cluster::client::http_get(netns, addr, path)
        .await
        .with_context(|| format!("GET {addr}{path} in netns {netns}"))?
        .with_context(|| format!("GET {addr}{path} in netns {netns}: closed without an answer"))?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {addr}{path}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("GET {addr}{path}: {status}");
    }
    Ok(body.to_string())
}

/// Prints `value` as JSON or YAML.
pub fn render(value: &Value, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json | Output::Table => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_yaml::to_string(value)?,
    })
}

/// Aligned columns, istioctl's style (two spaces between columns).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null | Value::String(_) => "None".into(),
        other => other.to_string(),
    }
}

/// The waypoint named in a workload's or service's `waypoint` field.
fn waypoint_name(v: &Value) -> String {
    v["waypoint"]["destination"]
        .as_str()
        .map(|d| {
            d.split_once('/')
                .map_or(d, |(_, host)| host.split('.').next().unwrap_or(host))
        })
        .unwrap_or("None")
        .to_string()
}

/// `ambit ztunnel-config SECTION` from one node's dump, only what belongs
/// to `namespace` when given (`-n`).
pub fn ztunnel_section(
    dump: &Value,
    section: ZtunnelSection,
    output: Output,
    namespace: Option<&str>,
) -> anyhow::Result<String> {
    let key = match section {
        ZtunnelSection::Workloads => "workloads",
        ZtunnelSection::Services => "services",
        ZtunnelSection::Policies => "policies",
        ZtunnelSection::Certificates => "certificates",
        ZtunnelSection::Connections => "connections",
        ZtunnelSection::All => {
            if output == Output::Table {
                bail!("`ztunnel-config all` prints the whole dump: use -o json or -o yaml");
            }
            return render(dump, output);
        }
    };
    let in_namespace = |item: &Value| {
        let Some(ns) = namespace else { return true };
        match section {
            ZtunnelSection::Certificates => item["identity"]
                .as_str()
                .is_some_and(|id| id.contains(&format!("/ns/{ns}/"))),
            ZtunnelSection::Connections => item["workload"]
                .as_str()
                .is_some_and(|w| w.starts_with(&format!("Kubernetes//Pod/{ns}/"))),
            _ => item["namespace"] == ns,
        }
    };
    let items: Vec<Value> = dump[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| in_namespace(i))
        .cloned()
        .collect();
    if output != Output::Table {
        return render(&Value::Array(items), output);
    }
    let (header, rows): (&[&str], Vec<Vec<String>>) = match section {
        ZtunnelSection::Workloads => (
            &[
                "NAMESPACE",
                "POD NAME",
                "ADDRESS",
                "NODE",
                "WAYPOINT",
                "PROTOCOL",
            ],
            items
                .iter()
                .map(|w| {
                    vec![
                        text(&w["namespace"]),
                        text(&w["name"]),
                        w["workloadIps"]
                            .as_array()
                            .and_then(|a| a.first())
                            .map_or_else(String::new, text),
                        text(&w["node"]),
                        waypoint_name(w),
                        text(&w["protocol"]),
                    ]
                })
                .collect(),
        ),
        ZtunnelSection::Services => {
            let endpoints_of = |key: &str| {
                dump["workloads"].as_array().map_or(0, |ws| {
                    ws.iter()
                        .filter(|w| w["services"].get(key).is_some())
                        .count()
                })
            };
            (
                &[
                    "NAMESPACE",
                    "SERVICE NAME",
                    "SERVICE VIP",
                    "WAYPOINT",
                    "ENDPOINTS",
                ],
                items
                    .iter()
                    .map(|s| {
                        let key = format!("{}/{}", text(&s["namespace"]), text(&s["hostname"]));
                        vec![
                            text(&s["namespace"]),
                            text(&s["name"]),
                            s["vips"]
                                .as_array()
                                .and_then(|a| a.first())
                                .and_then(Value::as_str)
                                .map(|v| v.rsplit('/').next().unwrap_or(v).to_string())
                                .unwrap_or_default(),
                            waypoint_name(s),
                            endpoints_of(&key).to_string(),
                        ]
                    })
                    .collect(),
            )
        }
        ZtunnelSection::Policies => (
            &["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"],
            items
                .iter()
                .map(|p| {
                    let mut action = text(&p["action"]);
                    if p["dryRun"].as_bool() == Some(true) {
                        action.push_str(" (dry-run)");
                    }
                    vec![
                        text(&p["namespace"]),
                        text(&p["name"]),
                        action,
                        text(&p["scope"]),
                    ]
                })
                .collect(),
        ),
        ZtunnelSection::Certificates => (
            &[
                "CERTIFICATE NAME",
                "TYPE",
                "STATUS",
                "VALID CERT",
                "SERIAL NUMBER",
                "NOT AFTER",
                "NOT BEFORE",
            ],
            items
                .iter()
                .map(|c| {
                    let leaf = &c["certChain"][0];
                    vec![
                        text(&c["identity"]),
                        "Leaf".into(),
                        text(&c["state"]),
                        (c["state"] == "Available").to_string(),
                        text(&leaf["serialNumber"]),
                        text(&leaf["expirationTime"]),
                        text(&leaf["validFrom"]),
                    ]
                })
                .collect(),
        ),
        ZtunnelSection::Connections => (
            &[
                "WORKLOAD",
                "DIRECTION",
                "LOCAL",
                "REMOTE",
                "REMOTE IDENTITY",
            ],
            items
                .iter()
                .map(|c| {
                    let workload = c["workload"].as_str().unwrap_or_default();
                    vec![
                        workload
                            .strip_prefix("Kubernetes//Pod/")
                            .unwrap_or(workload)
                            .to_string(),
                        text(&c["direction"]),
                        text(&c["dst"]),
                        text(&c["src"]),
                        text(&c["srcIdentity"]),
                    ]
                })
                .collect(),
        ),
        ZtunnelSection::All => unreachable!("handled above"),
    };
    Ok(table(header, &rows))
}

/// One proxy's line in `proxy-status`.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `ztunnel node1` or the waypoint's pod `ns/name`.
    pub name: String,
    /// `ztunnel` or `waypoint`.
    pub kind: &'static str,
    /// The node.
    pub node: String,
    /// Its readiness endpoint said ready.
    pub ready: bool,
    /// What it holds: workloads/services/policies (ztunnel) or services
    /// (waypoint), or the error reading it.
    pub config: String,
    /// The proxy's version.
    pub version: String,
}

/// Reads every proxy of `cluster`.
pub async fn proxy_status(cluster: &crate::proxies::Cluster) -> anyhow::Result<Vec<ProxyStatus>> {
    use crate::proxies::Port;
    let mut out = Vec::new();
    for p in crate::proxies::list(cluster).await? {
        let ready = p.get(Port::Readiness, "/healthz/ready").await.is_ok();
        let (config, version) = match p.config_dump().await {
            Ok(d) if p.kind == "ztunnel" => {
                let n = |k: &str| d[k].as_array().map_or(0, Vec::len);
                (
                    format!(
                        "{} workloads, {} services, {} policies, {} certificates",
                        n("workloads"),
                        n("services"),
                        n("policies"),
                        n("certificates")
                    ),
                    text(&d["version"]["version"]),
                )
            }
            Ok(d) => (
                format!(
                    "{} services (waypoint {})",
                    d["services"].as_array().map_or(0, Vec::len),
                    text(&d["waypoint"])
                ),
                text(&d["version"]["version"]),
            ),
            Err(e) => (format!("unreachable: {e:#}"), "-".into()),
        };
        out.push(ProxyStatus {
            name: p.name.clone(),
            kind: p.kind,
            node: p.node.clone(),
            ready,
            config,
            version,
        });
    }
    Ok(out)
}

/// The `/config_dump` of the ztunnel on `node` (`None`: the first one).
pub async fn ztunnel_dump_on(
    cluster: &crate::proxies::Cluster,
    node: Option<&str>,
) -> anyhow::Result<Value> {
    ztunnel_dump_in(&crate::proxies::list(cluster).await?, node).await
}

/// [`ztunnel_dump_on`] among proxies already listed.
pub async fn ztunnel_dump_in(
    proxies: &[crate::proxies::Proxy],
    node: Option<&str>,
) -> anyhow::Result<Value> {
    let ztunnels: Vec<_> = proxies.iter().filter(|p| p.kind == "ztunnel").collect();
    let chosen = match node {
        Some(n) => ztunnels.iter().find(|p| p.node == n).ok_or_else(|| {
            let names: Vec<&str> = ztunnels.iter().map(|p| p.node.as_str()).collect();
            anyhow::anyhow!("no ztunnel on node {n}: nodes are {}", names.join(", "))
        })?,
        None => ztunnels
            .first()
            .ok_or_else(|| anyhow::anyhow!("no ztunnel found (pods labelled app=ztunnel)"))?,
    };
    chosen.config_dump().await
}

/// `proxy-status` as a table.
pub fn proxy_status_table(rows: &[ProxyStatus]) -> String {
    table(
        &["NAME", "TYPE", "NODE", "READY", "CONFIG", "VERSION"],
        &rows
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.kind.into(),
                    p.node.clone(),
                    if p.ready { "READY" } else { "NOT READY" }.into(),
                    p.config.clone(),
                    p.version.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_sections_read_the_dump() {
        let dump = serde_json::json!({
            "workloads": [{"uid": "u", "name": "web-0", "namespace": "shop", "workloadIps": ["10.244.2.2"],
                "node": "node2", "protocol": "HBONE", "services": {"shop/web.shop.svc.cluster.local": {"8080": 8080}},
                "waypoint": {"destination": "shop/waypoint.shop.svc.cluster.local", "hbone_mtls_port": 15008}}],
            "services": [{"name": "web", "namespace": "shop", "hostname": "web.shop.svc.cluster.local",
                "vips": ["/10.96.0.60"]}],
            "policies": [{"name": "no-7000", "namespace": "shop", "action": "Deny", "scope": "WorkloadSelector", "dryRun": false}],
            "certificates": [],
        });
        let w = ztunnel_section(&dump, ZtunnelSection::Workloads, Output::Table, None).unwrap();
        let other =
            ztunnel_section(&dump, ZtunnelSection::Workloads, Output::Table, Some("x")).unwrap();
        assert_eq!(other.lines().count(), 1, "only the header: {other}");
        assert_eq!(
            w,
            "NAMESPACE  POD NAME  ADDRESS     NODE   WAYPOINT  PROTOCOL\n\
             shop       web-0     10.244.2.2  node2  waypoint  HBONE\n"
        );
        let s =
            ztunnel_section(&dump, ZtunnelSection::Services, Output::Table, Some("shop")).unwrap();
        assert!(
            s.lines()
                .nth(1)
                .unwrap()
                .ends_with("10.96.0.60   None      1"),
            "{s}"
        );
        let p = ztunnel_section(&dump, ZtunnelSection::Policies, Output::Table, None).unwrap();
        assert!(
            p.contains("shop       no-7000      Deny    WorkloadSelector"),
            "{p}"
        );
        let j = ztunnel_section(&dump, ZtunnelSection::Policies, Output::Json, None).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&j).unwrap(), dump["policies"]);
        assert!(ztunnel_section(&dump, ZtunnelSection::All, Output::Table, None).is_err());
    }
}
