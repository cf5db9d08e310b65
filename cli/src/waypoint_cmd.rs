//! `ambit waypoint generate|apply`: declares waypoints the way `istioctl
//! waypoint` does, as a Gateway API `Gateway` of class `istio-waypoint`,
//! written into the directory `ambit up -f DIR` watches (the local
//! cluster's API). `--enroll-namespace` also labels the namespace
//! `istio.io/use-waypoint`; `--service-account SA` makes a waypoint for
//! the pods running as SA (`istio.io/for-service-account`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize as _;

/// What a waypoint is for (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum For {
    /// Traffic to Service VIPs.
    Service,
    /// Traffic to pod IPs.
    Workload,
    /// Both.
    All,
    /// Neither.
    None,
}

impl For {
    fn label(self) -> &'static str {
        match self {
            For::Service => "service",
            For::Workload => "workload",
            For::All => "all",
            For::None => "none",
        }
    }
}

/// Options of `ambit waypoint generate|apply`.
#[derive(clap::Args, Debug, Clone)]
pub struct WaypointArgs {
    /// Namespace of the waypoint.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: String,
    /// Gateway name (default `waypoint`, or `SA-waypoint` with `--service-account`).
    #[arg(long)]
    pub name: Option<String>,
    /// Traffic the waypoint takes.
    #[arg(long = "for", value_enum)]
    pub traffic: Option<For>,
    /// Label the namespace `istio.io/use-waypoint: NAME`.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// One waypoint for the pods running as this service account.
    #[arg(long)]
    pub service_account: Option<String>,
}

impl WaypointArgs {
    fn name(&self) -> String {
        self.name
            .clone()
            .or_else(|| {
                self.service_account
                    .as_ref()
                    .map(|sa| format!("{sa}-waypoint"))
            })
            .unwrap_or_else(|| "waypoint".into())
    }

    fn traffic(&self) -> For {
        self.traffic.unwrap_or(if self.service_account.is_some() {
            For::All
        } else {
            For::Service
        })
    }
}

/// The Gateway YAML.
pub fn generate(args: &WaypointArgs) -> String {
    let annotations = match &args.service_account {
        Some(sa) => format!("\n  annotations:\n    istio.io/for-service-account: {sa}"),
        None => String::new(),
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    istio.io/waypoint-for: {traffic}{annotations}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n",
        name = args.name(),
        ns = args.namespace,
        traffic = args.traffic().label(),
    )
}

/// Writes the Gateway into `dir` (and labels the namespace there); returns
/// the files written.
pub fn apply(dir: &Path, args: &WaypointArgs) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let name = args.name();
    let file = dir.join(format!("waypoint-{}-{name}.yaml", args.namespace));
    std::fs::write(&file, generate(args)).with_context(|| format!("writing {}", file.display()))?;
    let mut written = vec![file];
    if args.enroll_namespace {
        written.push(label_namespace(dir, &args.namespace, &name)?);
    }
    Ok(written)
}

/// Sets `istio.io/use-waypoint` on the Namespace object in `dir` (rewriting
/// that file), or writes a Namespace if none is declared.
fn label_namespace(dir: &Path, namespace: &str, waypoint: &str) -> anyhow::Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let mut docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(serde_yaml::Value::deserialize)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} does not parse", path.display()))?;
        let mut found = false;
        for d in &mut docs {
            let is_ns = d.get("kind").and_then(|k| k.as_str()) == Some("Namespace")
                && d.get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    == Some(namespace);
            if !is_ns {
                continue;
            }
            let meta = d
                .get_mut("metadata")
                .and_then(|m| m.as_mapping_mut())
                .context("Namespace without metadata")?;
            let labels = meta
                .entry("labels".into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            if let Some(l) = labels.as_mapping_mut() {
                l.insert("istio.io/use-waypoint".into(), waypoint.into());
                found = true;
            }
        }
        if found {
            let out = docs
                .iter()
                .map(serde_yaml::to_string)
                .collect::<Result<Vec<_>, _>>()?
                .join("---\n");
            std::fs::write(&path, out)?;
            return Ok(path);
        }
    }
    let path = dir.join(format!("namespace-{namespace}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    istio.io/use-waypoint: {waypoint}\n"
        ),
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(sa: Option<&str>) -> WaypointArgs {
        WaypointArgs {
            namespace: "bookinfo".into(),
            name: None,
            traffic: None,
            enroll_namespace: true,
            service_account: sa.map(String::from),
        }
    }

    #[test]
    fn applies_a_gateway_and_labels_the_namespace_where_it_is_declared() {
        let dir = std::env::temp_dir().join(format!("ambit-wp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("app.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: r, namespace: bookinfo}\n",
        )
        .unwrap();
        let written = apply(&dir, &args(None)).unwrap();
        assert_eq!(written.len(), 2);
        let res = ambit_api::k8s::Resources::from_dir(&dir).unwrap();
        assert_eq!(res.gateways.len(), 1);
        assert_eq!(res.services.len(), 1, "other documents kept");
        let ns = &res.namespaces[0].1;
        let labels = ns.metadata.labels.clone().unwrap();
        assert_eq!(labels["istio.io/use-waypoint"], "waypoint");
        assert_eq!(labels["istio.io/dataplane-mode"], "ambient");
        let y = generate(&args(Some("reviews")));
        assert!(y.contains("name: reviews-waypoint") && y.contains("istio.io/waypoint-for: all"));
        assert!(y.contains("istio.io/for-service-account: reviews"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Which cluster `waypoint list|status|delete` act on: the running local
/// cluster by default, the Kubernetes cluster with `--context` or `--kube`.
#[derive(clap::Args, Debug, Clone)]
pub struct Where {
    /// Namespace (default `default`).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// Every namespace (`list`).
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Kubeconfig context of the Kubernetes cluster.
    #[arg(long)]
    pub context: Option<String>,
    /// The Kubernetes cluster of KUBECONFIG's current context (or in-cluster).
    #[arg(long)]
    pub kube: bool,
    /// Which local cluster (`ambit-<pid>`; default: the newest).
    #[arg(long)]
    pub run: Option<String>,
}

impl Where {
    /// `-n`, else `default`.
    pub fn namespace_or_default(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| "default".into())
    }

    fn kube(&self) -> bool {
        self.kube || self.context.is_some()
    }

    /// The namespace to list (`None`: all).
    fn scope(&self) -> Option<String> {
        (!self.all_namespaces).then(|| self.namespace_or_default())
    }
}

/// The waypoints `at` holds.
pub async fn list(at: &Where) -> anyhow::Result<Vec<crate::live::WaypointRow>> {
    if at.kube() {
        let client = crate::live::client(at.context.as_deref()).await?;
        return crate::live::waypoints(client, at.scope().as_deref()).await;
    }
    let cluster = crate::inspect::local_cluster(at.run.as_deref())?;
    let scope = at.scope();
    Ok(cluster
        .gateways
        .iter()
        .filter_map(crate::live::waypoint_row)
        .filter(|r| scope.as_ref().is_none_or(|ns| *ns == r.namespace))
        .collect())
}

/// Deletes waypoint `name`: the Gateway object (Kubernetes), or the file
/// `waypoint apply` wrote into the local cluster's directory. Returns what
/// was done.
pub async fn delete(at: &Where, name: &str) -> anyhow::Result<String> {
    let ns = at.namespace_or_default();
    if at.kube() {
        let client = crate::live::client(at.context.as_deref()).await?;
        crate::live::delete_waypoint(client, &ns, name).await?;
        return Ok(format!("deleted waypoint {ns}/{name}"));
    }
    let cluster = crate::inspect::local_cluster(at.run.as_deref())?;
    let dir = cluster
        .config_dir
        .as_ref()
        .context("the running cluster did not record its directory")?;
    let file = dir.join(format!("waypoint-{ns}-{name}.yaml"));
    if file.exists() {
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        return Ok(format!(
            "removed {} (the cluster tears the waypoint down)",
            file.display()
        ));
    }
    bail!(
        "no file {} (what `ambit waypoint apply` writes): if the Gateway {ns}/{name} is declared in another file of {}, remove it there",
        file.display(),
        dir.display()
    )
}
