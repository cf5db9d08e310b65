//! `ambit install`: renders the chart in `deploy/helm/ambit` (compiled into
//! the binary) with the user's values, and applies it with server-side
//! apply, or prints it (`--dry-run`), as `istioctl install` and `helm
//! template` do.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::chart::{Context, merge, set_value};

/// The chart's templates, in the order they are applied: CRDs first, then
/// RBAC, then the workloads.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "templates/crds-ambit.yaml",
        include_str!("../../deploy/helm/ambit/templates/crds-ambit.yaml"),
    ),
    (
        "templates/crds-istio.yaml",
        include_str!("../../deploy/helm/ambit/templates/crds-istio.yaml"),
    ),
    (
        "templates/rbac.yaml",
        include_str!("../../deploy/helm/ambit/templates/rbac.yaml"),
    ),
    (
        "templates/controller.yaml",
        include_str!("../../deploy/helm/ambit/templates/controller.yaml"),
    ),
    (
        "templates/ztunnel.yaml",
        include_str!("../../deploy/helm/ambit/templates/ztunnel.yaml"),
    ),
    (
        "templates/node-agent.yaml",
        include_str!("../../deploy/helm/ambit/templates/node-agent.yaml"),
    ),
];

/// The chart's `values.yaml`.
pub const VALUES: &str = include_str!("../../deploy/helm/ambit/values.yaml");
/// The chart's `Chart.yaml`.
pub const CHART: &str = include_str!("../../deploy/helm/ambit/Chart.yaml");

/// `ambit install`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Values files, merged in order over the chart's (as `helm -f`).
    #[arg(short = 'f', long = "values")]
    pub values: Vec<PathBuf>,
    /// Single values, `KEY=VALUE` (as `helm --set`), after the files.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// The namespace to install into.
    #[arg(short = 'n', long, default_value = "istio-system")]
    pub namespace: String,
}

/// The chart's values with `args`' files and `--set`s merged over them.
pub fn values(args: &InstallArgs) -> anyhow::Result<Value> {
    let mut values: Value = serde_yaml::from_str(VALUES).context("the chart's values.yaml")?;
    for f in &args.values {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let overlay: Value = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a YAML map of values", f.display()))?;
        merge(&mut values, overlay);
    }
    for s in &args.set {
        set_value(&mut values, s).map_err(anyhow::Error::msg)?;
    }
    Ok(values)
}

/// The rendered manifests as one YAML stream: the namespace, then every
/// template (`# Source:` before each, as `helm template` prints).
pub fn render(args: &InstallArgs) -> anyhow::Result<String> {
    let chart: Value = serde_yaml::from_str(CHART).context("Chart.yaml")?;
    let text = |k: &str| chart[k].as_str().unwrap_or_default().to_string();
    let ctx = Context {
        values: values(args)?,
        release_name: "ambit".into(),
        release_namespace: args.namespace.clone(),
        chart_version: text("version"),
        app_version: text("appVersion"),
    };
    let mut out = format!(
        "# Rendered by `ambit install --dry-run` from the ambit chart {}.\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels: {{app.kubernetes.io/part-of: ambit}}\n",
        ctx.chart_version, args.namespace
    );
    for (name, src) in TEMPLATES {
        let rendered = ctx.render(name, src)?;
        if rendered.trim().is_empty() {
            continue;
        }
        out.push_str(&format!("---\n# Source: ambit/{name}\n"));
        out.push_str(rendered.trim_start_matches("---\n"));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The objects of a YAML stream, empty documents left out.
pub fn documents(stream: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(stream).enumerate() {
        let v = <Value as serde::Deserialize>::deserialize(doc)
            .with_context(|| format!("rendered document {}", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Where an object kind lives in the API: (plural, namespaced).
fn resource(api_version: &str, kind: &str) -> Option<(&'static str, bool)> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => ("namespaces", false),
        ("v1", "ServiceAccount") => ("serviceaccounts", true),
        ("v1", "Service") => ("services", true),
        ("v1", "ConfigMap") => ("configmaps", true),
        ("apps/v1", "Deployment") => ("deployments", true),
        ("apps/v1", "DaemonSet") => ("daemonsets", true),
        ("policy/v1", "PodDisruptionBudget") => ("poddisruptionbudgets", true),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => ("clusterroles", false),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => ("clusterrolebindings", false),
        ("rbac.authorization.k8s.io/v1", "Role") => ("roles", true),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => ("rolebindings", true),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            ("customresourcedefinitions", false)
        }
        _ => return None,
    })
}

/// Applies every object in `stream` with server-side apply (field manager
/// `ambit-install`), in order; stops at the first refusal, naming it.
pub async fn apply(client: kube::Client, stream: &str) -> anyhow::Result<Vec<String>> {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let mut applied = Vec::new();
    for doc in documents(stream)? {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let label = format!("{kind} {name}");
        let Some((plural, namespaced)) = resource(api_version, kind) else {
            bail!("{label}: ambit install does not know where {api_version} {kind} lives");
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = if namespaced {
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .with_context(|| format!("{label}: no metadata.namespace"))?;
            Api::namespaced_with(client.clone(), ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        api.patch(
            name,
            &PatchParams::apply("ambit-install").force(),
            &Patch::Apply(&doc),
        )
        .await
        .with_context(|| format!("applying {label}"))?;
        applied.push(label);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(set: &[&str]) -> InstallArgs {
        InstallArgs {
            dry_run: true,
            values: vec![],
            set: set.iter().map(|s| s.to_string()).collect(),
            namespace: "istio-system".into(),
        }
    }

    #[test]
    fn values_change_what_renders() {
        let docs = documents(
            &render(&args(&[
                "trustDomain=example.org",
                "controller.replicas=3",
                "controller.waypointDeployer=false",
                "global.hub=registry.test/mesh",
                "crds.istio=true",
            ]))
            .expect("render"),
        )
        .expect("yaml");
        let controller = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "ambit-controller")
            .expect("controller");
        assert_eq!(controller["spec"]["replicas"], 3);
        let c = &controller["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "registry.test/mesh/controller:0.1.0");
        let args: Vec<&str> = c["args"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            args.windows(2)
                .any(|w| w == ["--trust-domain", "example.org"]),
            "{args:?}"
        );
        assert!(args.contains(&"--no-waypoint-deployer"));
        let crds: Vec<&str> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert!(crds.contains(&"authorizationpolicies.security.istio.io"));
    }

    #[test]
    fn istio_crds_are_opt_in() {
        let docs = documents(&render(&args(&[])).expect("render")).expect("yaml");
        let crds: Vec<&str> = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(crds, ["ratelimitpolicies.ambit.dev"]);
    }

    #[test]
    fn every_rendered_kind_has_a_place() {
        let docs = documents(&render(&args(&["crds.istio=true"])).expect("render")).expect("yaml");
        for d in docs {
            let (v, k) = (
                d["apiVersion"].as_str().unwrap_or_default(),
                d["kind"].as_str().unwrap_or_default(),
            );
            assert!(resource(v, k).is_some(), "{v} {k}");
        }
    }
}
